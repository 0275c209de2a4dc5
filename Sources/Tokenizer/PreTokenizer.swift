/// Splits text into words before byte-level BPE, exactly as llama.cpp does for each `tokenizer.ggml.pre` value:
/// a list of steps, each splitting every piece of the previous step further.
public struct PreTokenizer: Sendable {
    enum Step: @unchecked Sendable {
        /// llama.cpp's hand-written GPT-2 splitter: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`.
        case gpt2
        /// llama.cpp's hand-written LLaMA-3 splitter, with numbers in groups of at most `digits` (3 for LLaMA 3,
        /// 1 for Qwen2, whose regex is otherwise the same).
        case llama3(digits: Int)
        case pattern(Pattern)
    }

    public let name: String
    let steps: [Step]

    /// The names accepted for `tokenizer.ggml.pre`, grouped by the rules they share.
    public static let supportedNames: [String] = [
        "default", "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "jina-es", "jina-de", "jina-v1-en",
        "jina-v2-es", "jina-v2-de", "jina-v2-code", "gigachat", "starcoder", "refact", "command-r", "smollm",
        "codeshell", "exaone", "minerva-7b", "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe",
        "chatglm-bpe", "qwen2", "stablelm2", "megrez", "deepseek-llm", "deepseek-coder", "falcon", "tekken",
        "poro-chat", "bloom", "gpt3-finnish", "viking",
    ]

    public init(name: String) throws {
        self.name = name
        let P = CharClass.self
        let number = Pattern.char(P.number)
        switch name {
        case "default":
            steps = [.pattern(.plus(.any(P.punctuation, P.scalars("$+<=>^~|")))), .gpt2,
                     .pattern(.plus(P.number)), .pattern(.rep(P.asciiDigit, min: 3, max: 3))]
        case "falcon":
            steps = [.pattern(.plus(.any(P.punctuation, P.scalars("$+<=>^~|`")))), .gpt2,
                     .pattern(.rep(P.asciiDigit, min: 3, max: 3))]
        case "gpt-2", "phi-2", "mpt", "olmo", "jais", "roberta-bpe", "jina-es", "jina-de", "jina-v1-en",
             "jina-v2-es", "jina-v2-de", "jina-v2-code", "gigachat":
            steps = [.gpt2]
        case "starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva-7b":
            steps = [.pattern(number), .gpt2]
        case "llama3", "llama-v3", "llama-bpe", "falcon3", "dbrx", "smaug-bpe", "chatglm-bpe":
            steps = [.llama3(digits: 3)]
        case "qwen2", "stablelm2", "megrez":
            steps = [.llama3(digits: 1)]
        case "deepseek-coder":
            steps = [.pattern(.char(P.scalars("\r\n"))),
                     .pattern(.seq([.opt(P.space), .plus(P.letter)])),
                     .pattern(.seq([.opt(P.space), .plus(P.punctuation)])),
                     .pattern(.plus(PreTokenizer.cjk)),
                     .pattern(number)]
        case "deepseek-llm":
            steps = [.pattern(.char(P.scalars("\r\n"))),
                     .pattern(.seq([.opt(P.space), .plus(PreTokenizer.deepseekLetters)])),
                     .pattern(.seq([.opt(P.space), .plus(PreTokenizer.bracket("!-/:-~！-／：-～‘-‟　-。"))])),
                     .pattern(.seq([.plus(P.space), .end])),
                     .pattern(.plus(PreTokenizer.cjk)),
                     .pattern(.plus(P.number))]
        case "poro-chat", "bloom", "gpt3-finnish":
            steps = [.pattern(PreTokenizer.poro)]
        case "viking":
            steps = [.pattern(PreTokenizer.poro), .pattern(number)]
        case "tekken":
            steps = [.pattern(PreTokenizer.tekken)]
        default:
            throw TokenizerError.unsupportedPreTokenizer(name, supported: PreTokenizer.supportedNames)
        }
    }

    /// Splits code points `cps` into word ranges.
    func split(_ cps: [UInt32]) -> [Range<Int>] {
        var pieces = [0..<cps.count]
        if cps.isEmpty { return [] }
        cps.withUnsafeBufferPointer { s in
            for step in steps {
                var next: [Range<Int>] = []
                next.reserveCapacity(pieces.count * 2)
                for piece in pieces {
                    switch step {
                    case .gpt2: PreTokenizer.splitGPT2(s, piece, into: &next)
                    case let .llama3(digits): PreTokenizer.splitLlama3(s, piece, digits: digits, into: &next)
                    case let .pattern(p): p.split(s, piece, into: &next)
                    }
                }
                pieces = next
            }
        }
        return pieces
    }

    // MARK: - Hand-written splitters (the same scanning rules as llama.cpp's unicode.cpp)

    /// Scanning state shared by the two hand-written splitters: `flags` and `cp` answer empty / out-of-range
    /// outside the piece, as the regex would see the end of the text.
    struct Scan {
        let s: UnsafeBufferPointer<UInt32>
        let range: Range<Int>
        var previousEnd: Int

        static let outOfRange: UInt32 = 0xFFFF_FFFF
        func cp(_ i: Int) -> UInt32 { range.contains(i) ? s[i] : Scan.outOfRange }
        func flags(_ i: Int) -> UnicodeFlags { range.contains(i) ? UnicodeFlags.of(s[i]) : [] }

        mutating func add(_ end: Int, _ out: inout [Range<Int>]) {
            if end > previousEnd { out.append(previousEnd..<end) }
            previousEnd = end
        }

        /// `'s|'t|'re|'ve|'m|'ll|'d` at `pos`: the contraction's length, or 0.
        func contraction(at pos: Int, lowercase: Bool) -> Int {
            guard cp(pos) == 0x27, pos + 1 < range.upperBound else { return 0 }
            let fold: (UInt32) -> UInt32 = { lowercase ? PreTokenizer.lowercased($0) : $0 }
            let next = fold(cp(pos + 1))
            if "stmd".unicodeScalars.contains(where: { $0.value == next }) { return 2 }
            guard pos + 2 < range.upperBound else { return 0 }
            let pair = (next, fold(cp(pos + 2)))
            for (a, b) in [("r", "e"), ("v", "e"), ("l", "l")]
            where pair.0 == a.unicodeScalars.first!.value && pair.1 == b.unicodeScalars.first!.value {
                return 3
            }
            return 0
        }

        /// White space run at `pos`: its length and, for LLaMA 3, the end of its last `\r` or `\n`.
        func whitespaceRun(at pos: Int) -> (count: Int, lastNewlineEnd: Int) {
            var n = 0, lastNewlineEnd = 0
            while flags(pos + n).contains(.whitespace) {
                let c = cp(pos + n)
                if c == 13 || c == 10 { lastNewlineEnd = pos + n + 1 }
                n += 1
            }
            return (n, lastNewlineEnd)
        }
    }

    static let wordClasses: UnicodeFlags = [.whitespace, .letter, .number]

    static func splitGPT2(_ s: UnsafeBufferPointer<UInt32>, _ range: Range<Int>, into out: inout [Range<Int>]) {
        var scan = Scan(s: s, range: range, previousEnd: range.lowerBound)
        var pos = range.lowerBound
        while pos < range.upperBound {
            let c = scan.cp(pos)
            let f = scan.flags(pos)
            let contraction = scan.contraction(at: pos, lowercase: false)
            if contraction > 0 {
                pos += contraction
                scan.add(pos, &out)
                continue
            }
            var f2 = c == 32 ? scan.flags(pos + 1) : f
            if f2.contains(.letter) || f2.contains(.number) {
                let kind: UnicodeFlags = f2.contains(.letter) ? .letter : .number
                if c == 32 { pos += 1 }
                while f2.contains(kind) { pos += 1; f2 = scan.flags(pos) }
                scan.add(pos, &out)
                continue
            }
            if f2.isDisjoint(with: wordClasses) && !f2.isEmpty {
                if c == 32 { pos += 1 }
                while f2.isDisjoint(with: wordClasses) && !f2.isEmpty { pos += 1; f2 = scan.flags(pos) }
                scan.add(pos, &out)
                continue
            }
            let run = scan.whitespaceRun(at: pos).count
            if run > 1 && scan.cp(pos + run) != Scan.outOfRange {
                pos += run - 1  // \s+(?!\S): leave the last space for the next word
            } else if run > 0 {
                pos += run
            } else {
                pos += 1
            }
            scan.add(pos, &out)
        }
    }

    static func splitLlama3(_ s: UnsafeBufferPointer<UInt32>, _ range: Range<Int>, digits: Int,
                            into out: inout [Range<Int>]) {
        var scan = Scan(s: s, range: range, previousEnd: range.lowerBound)
        var pos = range.lowerBound
        while pos < range.upperBound {
            let c = scan.cp(pos)
            let f = scan.flags(pos)
            let contraction = scan.contraction(at: pos, lowercase: true)
            if contraction > 0 {
                pos += contraction
                scan.add(pos, &out)
                continue
            }
            // [^\r\n\p{L}\p{N}]?\p{L}+
            if !(c == 13 || c == 10 || f.contains(.number)), f.contains(.letter) || scan.flags(pos + 1).contains(.letter) {
                pos += 1
                while scan.flags(pos).contains(.letter) { pos += 1 }
                scan.add(pos, &out)
                continue
            }
            // \p{N}{1,digits}
            if f.contains(.number) {
                var start = pos
                while scan.flags(pos).contains(.number) {
                    pos += 1
                    if pos - start >= digits {
                        scan.add(pos, &out)
                        start = pos
                    }
                }
                scan.add(pos, &out)
                continue
            }
            // <space>?[^\s\p{L}\p{N}]+[\r\n]*
            var f2 = c == 32 ? scan.flags(pos + 1) : f
            if f2.isDisjoint(with: wordClasses) && !f.isEmpty {
                if c == 32 { pos += 1 }
                while f2.isDisjoint(with: wordClasses) && !f2.isEmpty { pos += 1; f2 = scan.flags(pos) }
                while scan.cp(pos) == 13 || scan.cp(pos) == 10 { pos += 1 }
                scan.add(pos, &out)
                continue
            }
            let (run, lastNewlineEnd) = scan.whitespaceRun(at: pos)
            if lastNewlineEnd > 0 {
                pos = lastNewlineEnd  // \s*[\r\n]+
            } else if run > 1 && scan.cp(pos + run) != Scan.outOfRange {
                pos += run - 1
            } else if run > 0 {
                pos += run
            } else {
                pos += 1
            }
            scan.add(pos, &out)
        }
    }

    static func lowercased(_ cp: UInt32) -> UInt32 {
        if (65...90).contains(cp) { return cp + 32 }
        guard cp >= 128, let scalar = Unicode.Scalar(cp) else { return cp }
        let lower = scalar.properties.lowercaseMapping.unicodeScalars
        return lower.count == 1 ? lower.first!.value : cp
    }

    // MARK: - Regex-based rules

    /// `[一-龥ࠀ-一가-퟿]`
    static let cjk = CharClass.ranges([0x4E00...0x9FA5, 0x0800...0x4E00, 0xAC00...0xD7FF])

    /// A bracket expression body such as `A-Za-z` as code point ranges.
    static func bracket(_ body: String) -> CharClass {
        let scalars = Array(body.unicodeScalars)
        var ranges: [ClosedRange<UInt32>] = []
        var i = 0
        while i < scalars.count {
            if i + 2 < scalars.count, scalars[i + 1] == "-" {
                ranges.append(scalars[i].value...scalars[i + 2].value)
                i += 3
            } else {
                ranges.append(scalars[i].value...scalars[i].value)
                i += 1
            }
        }
        return .ranges(ranges)
    }

    /// DeepSeek LLM's letter class, as written in its tokenizer. Code points, not a string literal: several of
    /// them (U+1F7D, U+1FBE, U+1FD3, U+1FDB, U+2126, U+212A) have canonical equivalents that text normalization
    /// would substitute, silently changing the class.
    static let deepseekLetters = CharClass.ranges([
        0x41...0x5A, 0x61...0x7A, 0xB5...0xB5, 0xC0...0xD6, 0xD8...0xF6, 0xF8...0x1BA, 0x1BC...0x1BF, 0x1C4...0x293,
        0x295...0x2AF, 0x370...0x373, 0x376...0x376, 0x377...0x377, 0x37B...0x37D, 0x37F...0x37F, 0x386...0x386,
        0x388...0x38A, 0x38C...0x38C, 0x38E...0x3A1, 0x3A3...0x3F5, 0x3F7...0x481, 0x48A...0x52F, 0x531...0x556,
        0x10A0...0x10C5, 0x13A0...0x13F5, 0x13F8...0x13FD, 0x1C90...0x1CBA, 0x1CBD...0x1CBF, 0x1D00...0x1D2B,
        0x1D6B...0x1D77, 0x1D79...0x1D9A, 0x1E00...0x1F15, 0x1F18...0x1F1D, 0x1F20...0x1F45, 0x1F48...0x1F4D,
        0x1F50...0x1F57, 0x1F59...0x1F59, 0x1F5B...0x1F5B, 0x1F5D...0x1F5D, 0x1F5F...0x1F7D, 0x1F80...0x1FB4,
        0x1FB6...0x1FBC, 0x1FBE...0x1FBE, 0x1FC2...0x1FC4, 0x1FC6...0x1FCC, 0x1FD0...0x1FD3, 0x1FD6...0x1FDB,
        0x1FE0...0x1FEC, 0x1FF2...0x1FF4, 0x1FF6...0x1FFC, 0x2102...0x2102, 0x2107...0x2107, 0x210A...0x2113,
        0x2115...0x2115, 0x2119...0x211D, 0x2124...0x2124, 0x2126...0x2126, 0x2128...0x2128, 0x212A...0x212D,
        0x212F...0x2134, 0x2139...0x2139, 0x213C...0x213F, 0x2145...0x2149, 0x214E...0x214E, 0x2183...0x2183,
        0x2184...0x2184, 0x2C00...0x2C7B, 0x2C7E...0x2CE4, 0x2CEB...0x2CEE, 0x2CF2...0x2CF2, 0x2CF3...0x2CF3,
        0xA640...0xA66D, 0xA680...0xA69B, 0xA722...0xA76F, 0xA771...0xA787, 0xA78B...0xA78E, 0xAB70...0xABBF,
        0xFB00...0xFB06, 0xFB13...0xFB17, 0xFF21...0xFF3A, 0xFF41...0xFF5A, 0x10400...0x1044F, 0x104B0...0x104D3,
        0x104D8...0x104FB, 0x10C80...0x10CB2, 0x10CC0...0x10CF2, 0x118A0...0x118DF, 0x1E900...0x1E943
    ])

    /// ` ?[^(\s|.,!?…。，、।۔،)]+`
    static let poro: Pattern = .seq([
        .opt(CharClass.scalars(" ")),
        .plus(.not(.any(CharClass.space, CharClass.scalars("(|.,!?…。，、।۔،)")))),
    ])

    /// Mistral's Tekken rule with upper/lower-case letter runs (as llama.cpp rewrites it for std::regex).
    static let tekken: Pattern = {
        let P = CharClass.self
        let notLineOrWord = P.not(.any(P.scalars("\r\n"), P.letter, P.number))
        let upperish = CharClass { P.letter.test($0) && !(97...122).contains($0) }
        let lowerish = CharClass { P.letter.test($0) && !(65...90).contains($0) }
        return .alt([
            .seq([.opt(notLineOrWord), .star(upperish), .plus(lowerish)]),
            .seq([.opt(notLineOrWord), .plus(upperish), .star(lowerish)]),
            .char(P.number),
            .seq([.opt(P.scalars(" ")), .plus(.not(.any(P.space, P.letter, P.number))), .star(P.scalars("\r\n/"))]),
            .seq([.star(P.space), .plus(P.scalars("\r\n"))]),
            .seq([.plus(P.space), .notFollowedBy(.not(P.space))]),
            .plus(P.space),
        ])
    }()
}
