/// GPT-2-style byte-level BPE for one pre-tokenized word at a time: merges by rank from
/// `tokenizer.ggml.merges`, lowest rank first, leftmost on ties (llama.cpp's order).
///
/// Every text that can occur as a symbol (the 256 byte characters and every merge result) is interned to an
/// id at load time: vocabulary ids for tokens, ids past the vocabulary for texts that are not tokens.
final class BytePairEncoder: @unchecked Sendable {
    let vocabularySize: Int
    /// Texts of interned symbols that are not tokens, indexed by `id - vocabularySize`.
    private(set) var extraTexts: [[UInt8]] = []
    /// (left, right) → (rank, merged id).
    private var ranks: [UInt64: (rank: Int32, merged: Int32)] = [:]
    private var byteSymbols = [Int32](repeating: 0, count: 256)
    private let textToID: [[UInt8]: Int32]
    private let ignoreMerges: Bool

    init(vocabulary v: Vocabulary) {
        vocabularySize = v.count
        textToID = v.textToID
        ignoreMerges = v.ignoreMerges
        var interned: [[UInt8]: Int32] = [:]
        func intern(_ text: [UInt8]) -> Int32 {
            if let id = v.textToID[text] ?? interned[text] { return id }
            let id = Int32(vocabularySize + extraTexts.count)
            extraTexts.append(text)
            interned[text] = id
            return id
        }
        for b in 0..<256 { byteSymbols[b] = intern(ByteLevel.byteToUTF8[b]) }
        ranks.reserveCapacity(v.merges.count)
        for (rank, merge) in v.merges.enumerated() where !merge.0.isEmpty {
            let key = BytePairEncoder.key(intern(merge.0), intern(merge.1))
            if ranks[key] == nil { ranks[key] = (Int32(rank), intern(merge.0 + merge.1)) }
        }
    }

    @inline(__always)
    static func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b)) }

    /// Token ids of one word given as raw (not byte-encoded) bytes.
    func encode(word: ArraySlice<UInt8>, into out: inout [Int32], queue: inout MergeQueue) {
        if ignoreMerges {
            var encoded: [UInt8] = []
            for b in word { encoded += ByteLevel.byteToUTF8[Int(b)] }
            if let id = textToID[encoded] {
                out.append(id)
                return
            }
        }
        var chain = SymbolChain(ids: word.map { byteSymbols[Int($0)] })
        queue.removeAll()
        func propose(_ l: Int32, _ r: Int32) {
            guard l >= 0, r >= 0, let m = ranks[BytePairEncoder.key(chain.ids[Int(l)], chain.ids[Int(r)])] else { return }
            queue.push(MergeCandidate(priority: Float(m.rank), left: l, right: r,
                                      leftID: chain.ids[Int(l)], rightID: chain.ids[Int(r)]))
        }
        for i in 1..<max(1, chain.ids.count) { propose(Int32(i - 1), Int32(i)) }
        while let c = queue.pop() {
            guard chain.isCurrent(c), let m = ranks[BytePairEncoder.key(c.leftID, c.rightID)] else { continue }
            chain.merge(c, into: m.merged)
            propose(chain.prev[Int(c.left)], c.left)
            propose(c.left, chain.next[Int(c.left)])
        }
        for id in chain.result {
            if Int(id) < vocabularySize {
                out.append(id)
            } else {
                // A merge result that is not a token: llama.cpp falls back to single-byte texts that are tokens.
                for byte in extraTexts[Int(id) - vocabularySize] {
                    if let t = textToID[[byte]] { out.append(t) }
                }
            }
        }
    }
}
