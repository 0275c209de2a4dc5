import Foundation
import GGUF
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
        try format(of: path, bytes: nil)
    }

    func format(of path: String, bytes: [UInt8]?) throws -> DataFormat {
        if let format { return format }
        guard path.hasSuffix(".jsonl") else { return .text }
        return try JSONLReader.detectFormat(bytes: try bytes ?? FileReader.readAll(path), path: path)
    }

    /// The tokens of `path` with their loss masks, and warnings about them (`context`: the row length, which the
    /// text sampler needs).
    public func load(_ path: String, context: Int) throws -> (stream: TokenStream, warnings: [String]) {
        // Read once: a pipe or /dev/stdin cannot be read twice.
        let data = try FileReader.readAll(path)
        let format = try format(of: path, bytes: data)
        if format == .text {
            guard !data.isEmpty else { throw DataError.empty(path: path, reason: "the file is empty") }
            return (TokenStream(text: data, tokenizer: tokenizer, options: sampling, context: context), [])
        }
        let reader = JSONLReader(tokenizer: tokenizer, chatTemplate: chatTemplate, trainOnPrompt: trainOnPrompt)
        let stream = TokenStream(examples: try reader.read(bytes: data, path: path, format: format))
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
