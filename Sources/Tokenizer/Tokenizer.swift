import GGUF

/// Text ⇄ token ids with a model's own tokenizer, giving exactly llama.cpp's ids.
public final class Tokenizer: @unchecked Sendable {
    public let vocabulary: Vocabulary
    private let bpe: BytePairEncoder?
    /// Control, user-defined and unknown tokens, longest text first: the texts matched as single tokens.
    private let specialTokens: [Int32]

    public init(vocabulary: Vocabulary) {
        self.vocabulary = vocabulary
        bpe = vocabulary.model == .bytePairEncoding ? BytePairEncoder(vocabulary: vocabulary) : nil
        let special = (0..<Int32(vocabulary.count)).filter {
            [.control, .userDefined, .unknown].contains(vocabulary.types[Int($0)])
        }
        specialTokens = special.enumerated().sorted {
            let a = vocabulary.tokens[Int($0.element)].count, b = vocabulary.tokens[Int($1.element)].count
            return a != b ? a > b : $0.offset < $1.offset
        }.map(\.element)
    }

    /// Reads the tokenizer of a GGUF file.
    public convenience init(file: GGUFFile) throws {
        try self.init(vocabulary: Vocabulary(metadata: file.metadata))
    }

    // MARK: - Encoding

    /// Token ids of `text`.
    /// - Parameters:
    ///   - addSpecial: add BOS/EOS as the model's metadata asks (`add_bos_token`, `add_eos_token`).
    ///   - parseSpecial: special token texts written in `text` (`<|im_start|>`) become their single ids.
    public func encode(_ text: String, addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int32] {
        encode(bytes: Array(text.utf8), addSpecial: addSpecial, parseSpecial: parseSpecial)
    }

    public func encode(bytes: [UInt8], addSpecial: Bool = true, parseSpecial: Bool = false) -> [Int32] {
        let v = vocabulary
        var out: [Int32] = []
        out.reserveCapacity(bytes.count / 3 + 2)
        let fragments = bytes.isEmpty ? [] : partition(bytes, parseSpecial: parseSpecial)
        if addSpecial, v.addBOS, let bos = v.bos { out.append(bos) }
        switch v.model {
        case .sentencePiece:
            let spm = SentencePieceEncoder(vocabulary: v)
            var previousWasSpecial = true
            for fragment in fragments {
                switch fragment {
                case let .token(id):
                    out.append(id)
                    previousWasSpecial = true
                case let .text(range):
                    var text: [UInt8] = v.addSpacePrefix && previousWasSpecial ? [0xE2, 0x96, 0x81] : []
                    for b in bytes[range] { if b == 32 { text += [0xE2, 0x96, 0x81] } else { text.append(b) } }
                    spm.encode(text, into: &out)
                    previousWasSpecial = false
                }
            }
        case .bytePairEncoding:
            var cache: [ArraySlice<UInt8>: [Int32]] = [:]
            var queue = MergeQueue()
            for fragment in fragments {
                switch fragment {
                case let .token(id): out.append(id)
                case let .text(range): encodeBPE(bytes, range, into: &out, cache: &cache, queue: &queue)
                }
            }
        }
        if addSpecial, v.addEOS, let eos = v.eos { out.append(eos) }
        return out
    }

    enum Fragment: Equatable {
        case text(Range<Int>)
        case token(Int32)
    }

    /// Splits `bytes` at occurrences of special token texts (llama.cpp's `tokenizer_st_partition`). Without
    /// `parseSpecial` only user-defined tokens are matched.
    func partition(_ bytes: [UInt8], parseSpecial: Bool) -> [Fragment] {
        var fragments: [Fragment] = [.text(0..<bytes.count)]
        for id in specialTokens {
            let type = vocabulary.types[Int(id)]
            if !parseSpecial && (type == .control || type == .unknown) { continue }
            let needle = vocabulary.tokens[Int(id)]
            let stripRight = vocabulary.rightStripped.contains(id)
            var next: [Fragment] = []
            for fragment in fragments {
                guard case var .text(range) = fragment else { next.append(fragment); continue }
                while let match = Tokenizer.find(needle, in: bytes, range) {
                    if match > range.lowerBound { next.append(.text(range.lowerBound..<match)) }
                    next.append(.token(id))
                    var rest = match + needle.count
                    if stripRight { while rest < range.upperBound, Tokenizer.isCSpace(bytes[rest]) { rest += 1 } }
                    range = rest..<range.upperBound
                }
                if !range.isEmpty { next.append(.text(range)) }
            }
            fragments = next
        }
        return fragments
    }

    static func isCSpace(_ b: UInt8) -> Bool { b == 32 || (9...13).contains(b) }

    /// First occurrence of `needle` inside `range` of `haystack`.
    public static func find(_ needle: [UInt8], in haystack: [UInt8], _ range: Range<Int>) -> Int? {
        guard let first = needle.first, needle.count <= range.count else { return nil }
        var i = range.lowerBound
        let last = range.upperBound - needle.count
        while i <= last {
            if haystack[i] == first {
                var j = 1
                while j < needle.count && haystack[i + j] == needle[j] { j += 1 }
                if j == needle.count { return i }
            }
            i += 1
        }
        return nil
    }

    private func encodeBPE(_ bytes: [UInt8], _ range: Range<Int>, into out: inout [Int32],
                           cache: inout [ArraySlice<UInt8>: [Int32]], queue: inout MergeQueue) {
        guard let bpe, let pre = vocabulary.preTokenizer else { return }
        // Code points with the byte offset where each starts (invalid UTF-8 bytes become U+FFFD, one per byte).
        var cps: [UInt32] = []
        var offsets: [Int] = []
        cps.reserveCapacity(range.count)
        offsets.reserveCapacity(range.count + 1)
        var i = range.lowerBound
        while i < range.upperBound {
            offsets.append(i)
            let (cp, length) = Tokenizer.decodeScalar(bytes, i, range.upperBound)
            cps.append(cp)
            i += length
        }
        offsets.append(range.upperBound)
        for word in pre.split(cps) {
            let slice = bytes[offsets[word.lowerBound]..<offsets[word.upperBound]]
            if let ids = cache[slice] {
                out += ids
                continue
            }
            var ids: [Int32] = []
            bpe.encode(word: slice, into: &ids, queue: &queue)
            if cache.count > 200_000 { cache.removeAll(keepingCapacity: true) }
            cache[slice] = ids
            out += ids
        }
    }

    /// Decodes one UTF-8 scalar at `i`; an invalid or truncated sequence gives U+FFFD for one byte.
    @inline(__always)
    static func decodeScalar(_ b: [UInt8], _ i: Int, _ end: Int) -> (UInt32, Int) {
        let lead = b[i]
        if lead < 0x80 { return (UInt32(lead), 1) }
        let length: Int
        var cp: UInt32
        switch lead {
        case 0xC2...0xDF: length = 2; cp = UInt32(lead & 0x1F)
        case 0xE0...0xEF: length = 3; cp = UInt32(lead & 0x0F)
        case 0xF0...0xF4: length = 4; cp = UInt32(lead & 0x07)
        default: return (0xFFFD, 1)
        }
        guard i + length <= end else { return (0xFFFD, 1) }
        for k in 1..<length {
            let c = b[i + k]
            guard c & 0xC0 == 0x80 else { return (0xFFFD, 1) }
            cp = cp << 6 | UInt32(c & 0x3F)
        }
        return (cp, length)
    }

    // MARK: - Decoding

    /// The token's text as stored in the vocabulary (`Ġworld`, `▁the`, `<|im_start|>`).
    public func tokenText(_ id: Int32) -> String {
        guard id >= 0, Int(id) < vocabulary.count else { return "" }
        return String(decoding: vocabulary.tokens[Int(id)], as: UTF8.self)
    }

    /// The bytes a token stands for. Control and unknown tokens give their text only with `special`.
    public func piece(_ id: Int32, special: Bool = true) -> [UInt8] {
        guard id >= 0, Int(id) < vocabulary.count else { return [] }
        let text = vocabulary.tokens[Int(id)]
        switch vocabulary.types[Int(id)] {
        case .control, .unknown: return special ? text : []
        case .userDefined: return text
        case .normal:
            if vocabulary.model == .sentencePiece { return Tokenizer.unescapeSpaces(text) }
            var out: [UInt8] = []
            var i = 0
            while i < text.count {
                let (cp, length) = Tokenizer.decodeScalar(text, i, text.count)
                if let b = ByteLevel.scalarToByte[cp] { out.append(b) } else { out += text[i..<(i + length)] }
                i += length
            }
            return out
        case .byte:
            guard vocabulary.model == .sentencePiece, text.count == 6,
                  let b = UInt8(String(decoding: text[3..<5], as: UTF8.self), radix: 16) else { return [] }
            return [b]
        case .unused, .undefined:
            return []
        }
    }

    static func unescapeSpaces(_ text: [UInt8]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var i = 0
        while i < text.count {
            if i + 2 < text.count, text[i] == 0xE2, text[i + 1] == 0x96, text[i + 2] == 0x81 {
                out.append(32)
                i += 3
            } else {
                out.append(text[i])
                i += 1
            }
        }
        return out
    }

    /// Bytes of a token sequence, as llama.cpp's detokenizer gives them.
    /// - Parameters:
    ///   - removeSpecial: drop a leading BOS and trailing EOS that the tokenizer adds itself.
    ///   - special: render control tokens' texts.
    public func decodeBytes(_ ids: [Int32], removeSpecial: Bool = false, special: Bool = false) -> [UInt8] {
        var ids = ids[...]
        var removeSpace = vocabulary.addSpacePrefix
        if removeSpecial, vocabulary.addBOS, ids.first == vocabulary.bos, ids.first != nil {
            removeSpace = false
            ids = ids.dropFirst()
        }
        if removeSpecial, vocabulary.addEOS, ids.last == vocabulary.eos, ids.last != nil { ids = ids.dropLast() }
        var text: [UInt8] = []
        for id in ids {
            var p = piece(id, special: special)
            if removeSpace, p.first == 32 { p.removeFirst() }
            removeSpace = false
            text += p
        }
        return vocabulary.cleanSpaces ? Tokenizer.cleanSpaces(text) : text
    }

    /// Text of a token sequence (invalid UTF-8 is replaced).
    public func decode(_ ids: [Int32], removeSpecial: Bool = false, special: Bool = false) -> String {
        String(decoding: decodeBytes(ids, removeSpecial: removeSpecial, special: special), as: UTF8.self)
    }

    /// llama.cpp's `clean_up_tokenization_spaces`: " ?", " !", " .", " ,", " ' " and " 's"-style contractions.
    static func cleanSpaces(_ input: [UInt8]) -> [UInt8] {
        func pass(_ t: [UInt8], _ body: (inout [UInt8], [UInt8], inout Int) -> Void) -> [UInt8] {
            guard !t.isEmpty else { return t }
            var out: [UInt8] = [t[0]]
            var i = 1
            while i < t.count {
                body(&out, t, &i)
                i += 1
            }
            return out
        }
        let q = UInt8(ascii: "'")
        var t = pass(input) { out, t, i in
            if t[i - 1] == 32, [UInt8(ascii: "?"), UInt8(ascii: "!"), UInt8(ascii: "."), UInt8(ascii: ",")].contains(t[i]) {
                out.removeLast()
            }
            out.append(t[i])
        }
        t = pass(t) { out, t, i in
            if t[i] == q, i + 1 < t.count, t[i - 1] == 32, t[i + 1] == 32 {
                out.removeLast()
                out.append(t[i])
                i += 1  // the space after is dropped too
                return
            }
            out.append(t[i])
        }
        t = pass(t) { out, t, i in
            if t[i - 1] == 32, t[i] == q, i + 1 < t.count {
                let x1 = t[i + 1]
                if x1 == UInt8(ascii: "s") || x1 == UInt8(ascii: "m") {
                    out.removeLast()
                } else if i + 2 < t.count {
                    let x2 = t[i + 2]
                    if (x1 == UInt8(ascii: "r") || x1 == UInt8(ascii: "v")) && x2 == UInt8(ascii: "e") { out.removeLast() }
                }
            }
            out.append(t[i])
        }
        return t
    }

    /// Whether `id` ends generation (EOS, end of turn).
    public func isEndOfGeneration(_ id: Int32) -> Bool { vocabulary.endOfGeneration.contains(id) }
}

/// Turns a stream of token ids into text without ever splitting a UTF-8 character: bytes of an incomplete
/// character wait for the next token.
public struct StreamingDecoder {
    private let tokenizer: Tokenizer
    private var pending: [UInt8] = []
    private var first = true

    public init(tokenizer: Tokenizer) { self.tokenizer = tokenizer }

    /// The complete characters available after `id` (possibly empty).
    public mutating func append(_ id: Int32) -> String {
        var p = tokenizer.piece(id, special: false)
        if first, tokenizer.vocabulary.addSpacePrefix, p.first == 32 { p.removeFirst() }
        first = false
        pending += p
        let complete = StreamingDecoder.completePrefixLength(pending)
        let text = String(decoding: pending[..<complete], as: UTF8.self)
        pending.removeFirst(complete)
        return text
    }

    /// Whatever is left (an incomplete character becomes U+FFFD).
    public mutating func finish() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the longest prefix that does not end inside a UTF-8 sequence.
    static func completePrefixLength(_ b: [UInt8]) -> Int {
        var i = b.count
        var back = 0
        while i > 0 && back < 4 {
            let c = b[i - 1]
            if c & 0xC0 == 0x80 { i -= 1; back += 1; continue }
            let need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1
            return need > back + 1 ? i - 1 : b.count
        }
        return b.count  // no lead byte in reach: invalid bytes, let decoding replace them
    }
}
