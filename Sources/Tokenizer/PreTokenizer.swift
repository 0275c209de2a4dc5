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

    /// DeepSeek LLM's letter class, as written in its tokenizer.
    static let deepseekLetters = bracket(
        "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝὟ-ώᾀ-ᾴᾶ-ᾼιῂ-ῄῆ-ῌῐ-ΐῖ-Ίῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤΩℨK-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄⰀ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")

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
