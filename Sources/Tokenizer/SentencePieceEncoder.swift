/// SentencePiece-style tokenization as llama.cpp does it: start from UTF-8 characters, repeatedly merge the
/// adjacent pair whose concatenation is the token with the highest score (leftmost on ties), then emit
/// characters that formed no token as byte tokens `<0xXX>`.
struct SentencePieceEncoder {
    let vocabulary: Vocabulary

    func encode(_ text: [UInt8], into out: inout [Int32]) {
        guard !text.isEmpty else { return }
        // Symbols are byte ranges; start with one per UTF-8 character.
        var starts: [Int] = []
        var offset = 0
        while offset < text.count {
            starts.append(offset)
            offset += min(text.count - offset, SentencePieceEncoder.utf8Length(text[offset]))
        }
        var lengths = zip(starts, starts.dropFirst() + [text.count]).map { $1 - $0 }
        var chain = SymbolChain(ids: lengths.map { Int32($0) })  // ids hold lengths: a changed length = stale
        var queue = MergeQueue()
        func propose(_ l: Int32, _ r: Int32) {
            guard l >= 0, r >= 0 else { return }
            let start = starts[Int(l)]
            let length = lengths[Int(l)] + lengths[Int(r)]
            guard let id = vocabulary.textToID[Array(text[start..<(start + length)])] else { return }
            queue.push(MergeCandidate(priority: -vocabulary.scores[Int(id)], left: l, right: r,
                                      leftID: Int32(lengths[Int(l)]), rightID: Int32(lengths[Int(r)])))
        }
        for i in 1..<starts.count { propose(Int32(i - 1), Int32(i)) }
        while let c = queue.pop() {
            guard chain.isCurrent(c) else { continue }
            let merged = lengths[Int(c.left)] + lengths[Int(c.right)]
            lengths[Int(c.left)] = merged
            chain.merge(c, into: Int32(merged))
            propose(chain.prev[Int(c.left)], c.left)
            propose(c.left, chain.next[Int(c.left)])
        }
        var i: Int32 = 0
        while i >= 0 {
            let start = starts[Int(i)], piece = Array(text[start..<(start + lengths[Int(i)])])
            if let id = vocabulary.textToID[piece] {
                out.append(id)
            } else {
                for byte in piece { if let id = vocabulary.byteToken(byte) ?? vocabulary.unknown { out.append(id) } }
            }
            i = chain.next[Int(i)]
        }
    }

    static func utf8Length(_ lead: UInt8) -> Int {
        switch lead >> 4 {
        case 0xC, 0xD: return 2
        case 0xE: return 3
        case 0xF: return 4
        default: return 1
        }
    }
}
