import GGUF

/// The token table of a model, read from `tokenizer.ggml.*` metadata as llama.cpp reads it.
public struct Vocabulary: Sendable {
    /// llama.cpp's token types (`tokenizer.ggml.token_type`).
    public enum TokenType: Int32, Sendable {
        case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public enum Model: String, Sendable {
        case sentencePiece = "llama"
        case bytePairEncoding = "gpt2"
    }

    public let model: Model
    /// Token texts as raw bytes (byte-level BPE texts use GPT-2's byte→code point map).
    public let tokens: [[UInt8]]
    public let scores: [Float]
    public let types: [TokenType]
    /// Merges as (left, right) texts in rank order (BPE only).
    public let merges: [([UInt8], [UInt8])]
    public let textToID: [[UInt8]: Int32]

    public let bos: Int32?
    public let eos: Int32?
    public let eot: Int32?
    public let eom: Int32?
    public let unknown: Int32?
    public let padding: Int32?
    public let addBOS: Bool
    public let addEOS: Bool
    public let addSpacePrefix: Bool
    /// Undo spaces before punctuation when decoding (the BPE default; off for several pre-tokenizers).
    public let cleanSpaces: Bool
    /// A whole pre-tokenized word that is a token is used as is (LLaMA 3, Tekken).
    public let ignoreMerges: Bool
    public let preTokenizer: PreTokenizer?
    /// Tokens that end generation: EOS, EOT, EOM and the usual end-of-turn texts.
    public let endOfGeneration: Set<Int32>
    /// Whitespace after these tokens is dropped when they are matched in text (llama.cpp's RSTRIP attribute).
    public let rightStripped: Set<Int32>

    public var count: Int { tokens.count }

    public func type(of id: Int32) -> TokenType { types[Int(id)] }

    /// Reads the vocabulary of a GGUF file (models and vocabulary-only files alike).
    public init(metadata md: Metadata) throws {
        let source = md.source
        guard let modelName = try md.stringIfPresent("tokenizer.ggml.model") else {
            throw TokenizerError.missingKey(source: source, key: "tokenizer.ggml.model")
        }
        guard let model = Model(rawValue: modelName) else { throw TokenizerError.unsupportedModel(modelName) }
        self.model = model

        guard case let .array(.string, tokenValues)? = md["tokenizer.ggml.tokens"] else {
            throw TokenizerError.missingKey(source: source, key: "tokenizer.ggml.tokens")
        }
        var tokens = tokenValues.map { Array(($0.stringValue ?? "").utf8) }
        for i in tokens.indices where tokens[i].isEmpty { tokens[i] = Array("[EMPTY_\(i)]".utf8) }
        self.tokens = tokens
        let n = tokens.count

        if md.contains("tokenizer.ggml.scores") {
            let s = try md.floatArray("tokenizer.ggml.scores")
            guard s.count == n else {
                throw TokenizerError.badMetadata(source: source, reason: "tokenizer.ggml.scores has \(s.count) entries for \(n) tokens")
            }
            scores = s
        } else {
            scores = [Float](repeating: 0, count: n)
        }
        var types = [TokenType](repeating: .normal, count: n)
        if md.contains("tokenizer.ggml.token_type") {
            let raw = try md.intArray("tokenizer.ggml.token_type")
            guard raw.count == n else {
                throw TokenizerError.badMetadata(source: source, reason: "tokenizer.ggml.token_type has \(raw.count) entries for \(n) tokens")
            }
            for i in 0..<n { types[i] = TokenType(rawValue: Int32(truncatingIfNeeded: raw[i])) ?? .undefined }
        }

        var textToID: [[UInt8]: Int32] = [:]
        textToID.reserveCapacity(n)
        for (i, t) in tokens.enumerated() { textToID[t] = Int32(i) }
        self.textToID = textToID

        // Defaults per tokenizer model, then the pre-tokenizer's, then explicit keys (llama.cpp's order).
        var bos: Int32?, eos: Int32?, unknown: Int32?
        var addBOS = false, addEOS = false, addSpacePrefix = false, cleanSpaces = false, ignoreMerges = false
        var pre: PreTokenizer?
        var merges: [([UInt8], [UInt8])] = []
        switch model {
        case .sentencePiece:
            bos = 1; eos = 2; unknown = 0
            addBOS = true; addSpacePrefix = true
        case .bytePairEncoding:
            bos = 11; eos = 11
            cleanSpaces = true
            let preName = try md.stringIfPresent("tokenizer.ggml.pre") ?? "default"
            pre = try PreTokenizer(name: preName)
            switch preName {
            case "llama3", "llama-v3", "llama-bpe", "falcon3", "tekken":
                ignoreMerges = true; addBOS = true
            case "chatglm-bpe": bos = nil
            default: break
            }
            if ["deepseek-llm", "deepseek-coder", "command-r", "qwen2", "poro-chat", "viking", "tekken", "smollm"].contains(preName) {
                cleanSpaces = false
            }
            guard md.contains("tokenizer.ggml.merges") else {
                throw TokenizerError.missingKey(source: source, key: "tokenizer.ggml.merges")
            }
            for (index, merge) in try md.stringArray("tokenizer.ggml.merges").enumerated() {
                let bytes = Array(merge.utf8)
                // Split at the first space after the first byte (a merge may start with a space-like text).
                guard let space = bytes.dropFirst().firstIndex(of: 32), space + 1 < bytes.count else {
                    throw TokenizerError.badMetadata(source: source, reason: "tokenizer.ggml.merges[\(index)] is not two pieces "
                                                     + "separated by a space")
                }
                merges.append((Array(bytes[..<space]), Array(bytes[(space + 1)...])))
            }
        }
        self.merges = merges
        self.preTokenizer = pre
        if let v = try md.boolIfPresent("tokenizer.ggml.add_space_prefix") { addSpacePrefix = v }

        func specialID(_ key: String, _ current: Int32?) throws -> Int32? {
            guard let raw = try md.intIfPresent("tokenizer.ggml." + key) else { return current }
            return raw >= 0 && raw < n ? Int32(raw) : current
        }
        self.bos = try specialID("bos_token_id", bos)
        self.eos = try specialID("eos_token_id", eos)
        self.unknown = try specialID("unknown_token_id", unknown)
        self.padding = try specialID("padding_token_id", nil)
        var eot = try specialID("eot_token_id", nil)
        var eom = try specialID("eom_token_id", nil)
        if let v = try md.boolIfPresent("tokenizer.ggml.add_bos_token") { addBOS = v }
        if let v = try md.boolIfPresent("tokenizer.ggml.add_eos_token") { addEOS = v }
        self.addBOS = addBOS
        self.addEOS = addEOS
        self.addSpacePrefix = addSpacePrefix
        self.cleanSpaces = cleanSpaces
        self.ignoreMerges = ignoreMerges

        // End-of-turn tokens recognized by their text, as llama.cpp does when the keys are absent.
        let eotTexts = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "<｜end▁of▁sentence｜>"]
        if eot == nil {
            eot = eotTexts.lazy.compactMap { textToID[Array($0.utf8)] }.first
            if let e = eot { types[Int(e)] = .control }
        }
        if eom == nil, let e = textToID[Array("<|eom_id|>".utf8)] {
            eom = e
            types[Int(e)] = .control
        }
        self.eot = eot
        self.eom = eom
        var eog = Set([self.eos, eot, eom].compactMap { $0 })
        for text in eotTexts + ["<|eom_id|>", "<|return|>", "<|call|>", "<|end_of_text|>"] {
            if let id = textToID[Array(text.utf8)], types[Int(id)] == .control { eog.insert(id) }
        }
        endOfGeneration = eog
        self.types = types

        // Phi-3 models strip white space after their special tokens.
        var rstrip = Set<Int32>()
        let modelName2 = (try md.stringIfPresent("general.name") ?? "").lowercased()
        if modelName2.contains("phi-3") || modelName2.contains("phi3") {
            for i in 0..<n where [.control, .userDefined, .unknown].contains(types[i]) { rstrip.insert(Int32(i)) }
            if let id = textToID[Array("</s>".utf8)] { rstrip.insert(id) }
            for text in ["<unk>", "<s>", "<|endoftext|>"] { if let id = textToID[Array(text.utf8)] { rstrip.remove(id) } }
        }
        rightStripped = rstrip
    }

    /// The id of the SentencePiece byte token `<0xXX>` for `byte`, else the token whose text is that byte.
    public func byteToken(_ byte: UInt8) -> Int32? {
        let hex = Array("0123456789ABCDEF".utf8)
        let text: [UInt8] = Array("<0x".utf8) + [hex[Int(byte >> 4)], hex[Int(byte & 15)], UInt8(ascii: ">")]
        return textToID[text] ?? textToID[[byte]]
    }
}
