import Foundation
import Tokenizer

/// Loads a training or validation file as the trainer sees it: plain text (sampled by the finetune's options) or
/// JSONL (text, prompt/completion or chat, with loss masks). The one data loader (training, `--inspect-data`).
public struct TrainingData {
    public let tokenizer: Tokenizer
    /// The chat template for chat data (nil when the model has none and none was named).
    public let chatTemplate: ChatTemplate?
    public var format: DataFormat?
    public var trainOnPrompt = false
    public var sampling = SamplingOptions()

    public init(tokenizer: Tokenizer, chatTemplate: ChatTemplate?, format: DataFormat? = nil) {
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.format = format
    }

    /// The format of `path`: the one given, or detected (`.jsonl` → from its fields; anything else is text).
    public func format(of path: String) throws -> DataFormat {
        try format ?? (path.hasSuffix(".jsonl") ? JSONLReader.detectFormat(path: path) : .text)
    }

    /// The tokens of `path` with their loss masks, and warnings about them (`context`: the row length, which the
    /// text sampler needs).
    public func load(_ path: String, context: Int) throws -> (stream: TokenStream, warnings: [String]) {
        let format = try format(of: path)
        if format == .text {
            guard let data = FileManager.default.contents(atPath: path) else { throw DataError.unreadable(path: path) }
            guard !data.isEmpty else { throw DataError.empty(path: path, reason: "the file is empty") }
            return (TokenStream(text: Array(data), tokenizer: tokenizer, options: sampling, context: context), [])
        }
        let reader = JSONLReader(tokenizer: tokenizer, chatTemplate: chatTemplate, trainOnPrompt: trainOnPrompt)
        let stream = TokenStream(examples: try reader.read(path: path, format: format))
        // A mask that hides everything trains nothing; one that hides nothing in prompt/chat data is suspicious.
        let trained = stream.trained.filter { $0 }.count
        if trained == 0 {
            throw DataError.empty(path: path, reason: "no token is learned: every token is prompt (no completions or "
                                  + "assistant messages?); --train-on-prompt learns them all")
        }
        var warnings: [String] = []
        if (format == .completion || format == .chat) && !trainOnPrompt && trained == stream.trained.count {
            warnings.append("\(path): every token is learned, although only completions or assistant messages should be")
        }
        return (stream, warnings)
    }
}
