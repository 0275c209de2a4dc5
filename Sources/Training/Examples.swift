import Foundation
import GGUF
import Tokenizer

/// One training example: tokens and which of them are learned (predicted from the token before).
public struct TrainingExample: Sendable, Equatable {
    public var tokens: [Int32]
    public var trained: [Bool]
    public init(tokens: [Int32], trained: [Bool]) {
        self.tokens = tokens
        self.trained = trained
    }
}

/// How a data file is read.
public enum DataFormat: String, CaseIterable, Sendable {
    /// Plain text, sampled as the 2023 finetune samples it (every token position a sample start, or `--sample-start`).
    case text
    /// JSON Lines with `{"text": …}`: every token learned.
    case jsonlText = "jsonl-text"
    /// JSON Lines with `{"prompt": …, "completion": …}`: only the completion learned (unless train-on-prompt).
    case completion
    /// JSON Lines with `{"messages": [{"role", "content"}, …]}` rendered with the chat template: only assistant
    /// turns learned (unless train-on-prompt).
    case chat
}

public enum DataError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String)
    case line(path: String, line: Int, reason: String)
    case empty(path: String, reason: String)

    public var description: String {
        switch self {
        case let .unreadable(path): return "\(path): cannot read the file"
        case let .line(path, line, reason): return "\(path):\(line): \(reason)"
        case let .empty(path, reason): return "\(path): \(reason)"
        }
    }
}

/// Reads JSON Lines data into examples with loss masks built from token spans.
public struct JSONLReader {
    public let tokenizer: Tokenizer
    public let chatTemplate: ChatTemplate?
    public let trainOnPrompt: Bool

    public init(tokenizer: Tokenizer, chatTemplate: ChatTemplate?, trainOnPrompt: Bool) {
        self.tokenizer = tokenizer
        self.chatTemplate = chatTemplate
        self.trainOnPrompt = trainOnPrompt
    }

    /// The format of a JSONL file, from its first non-empty line.
    public static func detectFormat(path: String) throws -> DataFormat {
        try detectFormat(bytes: try FileReader.readAll(path), path: path)
    }

    /// The format of JSONL `data` read from `path`.
    public static func detectFormat(bytes data: [UInt8], path: String) throws -> DataFormat {
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let object = try parse(line, path: path, line: i + 1)
            if object["messages"] != nil { return .chat }
            if object["prompt"] != nil || object["completion"] != nil { return .completion }
            if object["text"] != nil { return .jsonlText }
            throw DataError.line(path: path, line: i + 1, reason: "expected a \"text\", \"prompt\"/\"completion\" or \"messages\" field")
        }
        throw DataError.empty(path: path, reason: data.isEmpty ? "no examples (the file is empty)" : "no examples (only blank lines)")
    }

    static func parse(_ line: Substring, path: String, line number: Int) throws -> [String: Any] {
        guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] else {
            throw DataError.line(path: path, line: number, reason: "not a valid JSON object")
        }
        return object
    }

    public func read(path: String, format: DataFormat) throws -> [TrainingExample] {
        try read(bytes: try FileReader.readAll(path), path: path, format: format)
    }

    /// The examples of JSONL `data` read from `path`.
    public func read(bytes data: [UInt8], path: String, format: DataFormat) throws -> [TrainingExample] {
        var examples: [TrainingExample] = []
        let lines = String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        for (i, line) in lines.enumerated() where !line.trimmingCharacters(in: .whitespaces).isEmpty {
            let object = try JSONLReader.parse(line, path: path, line: i + 1)
            func field(_ key: String) throws -> String {
                guard let s = object[key] as? String else {
                    throw DataError.line(path: path, line: i + 1, reason: "missing string field \"\(key)\"")
                }
                return s
            }
            switch format {
            case .jsonlText:
                examples.append(example(text: try field("text"), trainedRanges: nil))
            case .completion:
                let prompt = try field("prompt"), completion = try field("completion")
                let start = prompt.utf8.count
                examples.append(example(text: prompt + completion, trainedRanges: [start..<(start + completion.utf8.count)]))
            case .chat:
                guard let template = chatTemplate else {
                    throw DataError.line(path: path, line: i + 1, reason: "chat data needs a chat template: the model has none; \(ChatTemplate.chooseFamily)")
                }
                guard let raw = object["messages"] as? [[String: Any]], !raw.isEmpty else {
                    throw DataError.line(path: path, line: i + 1, reason: "\"messages\" must be a non-empty array of {\"role\", \"content\"}")
                }
                var messages: [ChatMessage] = []
                for m in raw {
                    guard let roleName = m["role"] as? String, let role = ChatMessage.Role(rawValue: roleName),
                          let content = m["content"] as? String else {
                        throw DataError.line(path: path, line: i + 1, reason: "each message needs \"role\" (system, user or assistant) and string \"content\"")
                    }
                    messages.append(ChatMessage(role, content))
                }
                let rendered: RenderedChat
                do { rendered = try template.render(messages) } catch {
                    throw DataError.line(path: path, line: i + 1, reason: String(describing: error))
                }
                examples.append(example(text: rendered.text, trainedRanges: rendered.completionRanges.filter { !$0.isEmpty },
                                        appendEOS: false))
            case .text:
                break
            }
        }
        guard !examples.isEmpty else { throw DataError.empty(path: path, reason: "no examples") }
        return examples
    }

    /// Tokenizes `text` (special token texts parsed) and marks the tokens that start inside `trainedRanges`
    /// (nil: all). Plain text and completions get the EOS token appended and learned, so the model learns to stop.
    func example(text: String, trainedRanges: [Range<Int>]?, appendEOS: Bool = true) -> TrainingExample {
        let bytes = Array(text.utf8)
        var ids = tokenizer.encode(bytes: bytes, addSpecial: true, parseSpecial: true)
        let offsets = tokenizer.byteOffsets(of: ids, in: bytes)
        var trained = offsets.map { offset -> Bool in
            guard let ranges = trainedRanges, !trainOnPrompt else { return true }
            return ranges.contains { $0.contains(offset) }
        }
        if let bos = tokenizer.vocabulary.bos, tokenizer.vocabulary.addBOS, ids.first == bos { trained[0] = false }
        if appendEOS, let eos = tokenizer.vocabulary.eos, ids.last != eos {
            ids.append(eos)
            trained.append(true)
        }
        return TrainingExample(tokens: ids, trained: trained)
    }
}

extension Tokenizer {
    /// The byte offset in `text` where each token starts (exact for byte-level BPE; for SentencePiece the space
    /// it adds in front of a fragment is not counted).
    public func byteOffsets(of ids: [Int32], in text: [UInt8]) -> [Int] {
        var offsets: [Int] = []
        offsets.reserveCapacity(ids.count)
        var at = 0
        for id in ids {
            offsets.append(at)
            let p = piece(id, special: true)
            if at + p.count <= text.count, Array(text[at..<(at + p.count)]) == p {
                at += p.count
            } else if p.first == 32, at + p.count - 1 <= text.count, Array(text[at..<(at + p.count - 1)]) == Array(p.dropFirst()) {
                at += p.count - 1
            } else if [.control, .unknown].contains(vocabulary.type(of: id)) {
                continue  // added by the tokenizer (BOS/EOS): not in the text
            } else {
                at += p.count
            }
        }
        return offsets
    }
}
