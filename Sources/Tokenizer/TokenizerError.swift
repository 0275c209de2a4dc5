/// Errors from building or using a tokenizer; each description is one line.
public enum TokenizerError: Error, CustomStringConvertible, Equatable {
    case missingKey(source: String, key: String)
    case badMetadata(source: String, reason: String)
    case unsupportedModel(String)
    case unsupportedPreTokenizer(String, supported: [String])
    case tokenOutOfRange(Int32, vocabularySize: Int)
    case chatTemplate(String)

    public var description: String {
        switch self {
        case let .missingKey(source, key):
            return "\(source): tokenizer key '\(key)' is missing"
        case let .badMetadata(source, reason):
            return "\(source): \(reason)"
        case let .unsupportedModel(name):
            return "unsupported tokenizer model '\(name)' (supported: llama (SentencePiece), gpt2 (byte-level BPE))"
        case let .unsupportedPreTokenizer(name, supported):
            return "unknown pre-tokenizer '\(name)' (tokenizer.ggml.pre); supported: \(supported.joined(separator: ", "))"
        case let .tokenOutOfRange(id, size):
            return "token id \(id) is out of range (vocabulary size \(size))"
        case let .chatTemplate(reason):
            return reason
        }
    }
}
