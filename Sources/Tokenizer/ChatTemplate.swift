/// One message of a conversation.
public struct ChatMessage: Sendable, Equatable {
    public enum Role: String, Sendable { case system, user, assistant }
    public var role: Role
    public var content: String
    public init(_ role: Role, _ content: String) {
        self.role = role
        self.content = content
    }
}

/// A conversation rendered to text, with the byte range each message produced.
public struct RenderedChat: Sendable, Equatable {
    public var text: String
    /// Byte range (in `text.utf8`) of each message's whole block, headers included.
    public var messageRanges: [Range<Int>]
    /// Byte range of what the model must learn to produce for each message: for assistant messages the content
    /// and the end-of-turn marker after it; empty for other roles.
    public var completionRanges: [Range<Int>]
}

/// Chat formats of the common model families, rendered exactly as their `tokenizer.chat_template`s render them.
///
/// The template text of a model is recognized by its markers (as llama.cpp does); an unrecognized template is
/// an error, never a guess. `ChatTemplate(name:)` picks a family by name (`--chat-template`).
public struct ChatTemplate: Sendable, Equatable {
    public enum Family: String, CaseIterable, Sendable {
        case chatml, llama2, llama3, mistral, zephyr, phi3, gemma
    }

    /// What to do when a model's template is missing or unrecognized, for its error messages.
    public static let chooseFamily = "name its family with --chat-template (\(Family.allCases.map(\.rawValue).joined(separator: ", ")))"

    public let family: Family
    /// ChatML templates such as SmolLM2's insert a default system message when the conversation has none.
    public let defaultSystemMessage: String?
    public let bosText: String
    public let eosText: String

    public init(family: Family, defaultSystemMessage: String? = nil, bosText: String = "<s>", eosText: String = "</s>") {
        self.family = family
        self.defaultSystemMessage = defaultSystemMessage
        self.bosText = bosText
        self.eosText = eosText
    }

    /// Recognizes the family of a Jinja chat template text.
    public init(template: String, bosText: String = "<s>", eosText: String = "</s>") throws {
        let has = { (s: String) in template.contains(s) }
        let family: Family
        if has("<|im_start|>") { family = .chatml }
        else if has("<|start_header_id|>") && has("<|end_header_id|>") { family = .llama3 }
        else if has("[INST]") && has("<<SYS>>") { family = .llama2 }
        else if has("[INST]") { family = .mistral }
        else if has("<start_of_turn>") { family = .gemma }
        else if has("<|assistant|>") && has("<|end|>") { family = .phi3 }
        else if has("<|user|>") && has("<|assistant|>") { family = .zephyr }
        else {
            throw TokenizerError.chatTemplate("unrecognized chat template; \(ChatTemplate.chooseFamily)")
        }
        var defaultSystem: String?
        // A literal default system message, e.g. {{ '<|im_start|>system\nYou are … SmolLM…<|im_end|>\n' }}: the
        // first system header followed by plain text (Qwen's template first writes the header alone, then the
        // literal in the branch without a system message). The newline may be real or the escape \n.
        if family == .chatml {
            let bytes = Array(template.utf8), close = Array("<|im_end|>".utf8)
            search: for header in ["<|im_start|>system\n", "<|im_start|>system\\n"] {
                let h = Array(header.utf8)
                var from = 0
                while let start = Tokenizer.find(h, in: bytes, from..<bytes.count),
                      let end = Tokenizer.find(close, in: bytes, (start + h.count)..<bytes.count) {
                    let text = String(decoding: bytes[(start + h.count)..<end], as: UTF8.self)
                    if !text.contains("{") && !text.contains("'") && !text.contains("+") {
                        defaultSystem = text
                        break search
                    }
                    from = start + h.count
                }
            }
        }
        self.init(family: family, defaultSystemMessage: defaultSystem, bosText: bosText, eosText: eosText)
    }

    /// A family by name, as `--chat-template NAME` gives it.
    public init(name: String) throws {
        guard let family = Family(rawValue: name.lowercased()) else {
            throw TokenizerError.chatTemplate("unknown chat template '\(name)' (supported: \(Family.allCases.map(\.rawValue).joined(separator: ", ")))")
        }
        self.init(family: family, bosText: family == .llama3 ? "<|begin_of_text|>" : family == .gemma ? "<bos>" : "<s>")
    }

    /// Renders `messages`; with `addGenerationPrompt` the text ends with the header of the assistant's turn.
    public func render(_ messages: [ChatMessage], addGenerationPrompt: Bool = false) throws -> RenderedChat {
        var b = Builder()
        switch family {
        case .chatml:
            if messages.first?.role != .system, let system = defaultSystemMessage, !messages.isEmpty {
                b.text += "<|im_start|>system\n" + system + "<|im_end|>\n"
            }
            for m in messages {
                b.message(m) { b in
                    b.text += "<|im_start|>" + m.role.rawValue + "\n"
                    b.completion(m, m.content + "<|im_end|>")
                    b.text += "\n"
                }
            }
            if addGenerationPrompt { b.text += "<|im_start|>assistant\n" }
        case .llama3:
            b.text += bosText
            for m in messages {
                b.message(m) { b in
                    b.text += "<|start_header_id|>" + m.role.rawValue + "<|end_header_id|>\n\n"
                    b.completion(m, ChatTemplate.trimmed(m.content) + "<|eot_id|>")
                }
            }
            if addGenerationPrompt { b.text += "<|start_header_id|>assistant<|end_header_id|>\n\n" }
        case .llama2, .mistral:
            let (system, rest) = ChatTemplate.splitSystem(messages)
            try ChatTemplate.requireAlternation(rest)
            for (i, m) in rest.enumerated() {
                var content = m.content
                if i == 0, let system {
                    content = family == .llama2 ? "<<SYS>>\n" + system + "\n<</SYS>>\n\n" + content : system + "\n\n" + content
                }
                b.message(m) { b in
                    if m.role == .user {
                        if family == .llama2 {
                            b.text += bosText + "[INST] " + ChatTemplate.trimmed(content) + " [/INST]"
                        } else {
                            b.text += (i == 0 ? bosText : "") + "[INST] " + content + " [/INST]"
                        }
                    } else if family == .llama2 {
                        b.text += " "
                        b.completion(m, ChatTemplate.trimmed(content) + " " + eosText)
                    } else {
                        b.completion(m, content + eosText)
                    }
                }
            }
        case .zephyr, .phi3:
            let end = family == .zephyr ? eosText : "<|end|>"
            for m in messages {
                b.message(m) { b in
                    b.text += "<|" + m.role.rawValue + "|>\n"
                    b.completion(m, m.content + end)
                    b.text += "\n"
                }
            }
            if addGenerationPrompt { b.text += "<|assistant|>\n" }
        case .gemma:
            let (system, rest) = ChatTemplate.splitSystem(messages)
            try ChatTemplate.requireAlternation(rest)
            b.text += bosText
            for (i, m) in rest.enumerated() {
                b.message(m) { b in
                    let role = m.role == .assistant ? "model" : "user"
                    // Gemma 3's template puts the system text, untrimmed, before the first user turn's trimmed text.
                    let prefix = i == 0 ? system.map { $0 + "\n\n" } ?? "" : ""
                    b.text += "<start_of_turn>" + role + "\n"
                    b.completion(m, prefix + ChatTemplate.trimmed(m.content) + "<end_of_turn>")
                    b.text += "\n"
                }
            }
            if addGenerationPrompt { b.text += "<start_of_turn>model\n" }
        }
        return b.result(messageCount: messages.count, leadingSystemFolded: family.foldsSystem && messages.first?.role == .system)
    }

    static func trimmed(_ s: String) -> String {
        let scalars = s.unicodeScalars
        let isSpace = { (u: Unicode.Scalar) in u.properties.isWhitespace }
        guard let first = scalars.firstIndex(where: { !isSpace($0) }), let last = scalars.lastIndex(where: { !isSpace($0) }) else { return "" }
        return String(scalars[first...last])
    }

    static func splitSystem(_ messages: [ChatMessage]) -> (String?, [ChatMessage]) {
        if messages.first?.role == .system { return (messages[0].content, Array(messages.dropFirst())) }
        return (nil, messages)
    }

    static func requireAlternation(_ messages: [ChatMessage]) throws {
        for (i, m) in messages.enumerated() where m.role != (i % 2 == 0 ? .user : .assistant) || m.role == .system {
            throw TokenizerError.chatTemplate("this chat format needs user and assistant messages alternating, starting with the user (message \(i + 1) is \(m.role.rawValue))")
        }
    }

    /// Accumulates text and the byte ranges of messages and completions.
    struct Builder {
        var text = ""
        var messageRanges: [Range<Int>] = []
        var completionRanges: [Range<Int>] = []
        var bytes: Int { text.utf8.count }

        mutating func message(_ m: ChatMessage, _ body: (inout Builder) -> Void) {
            let start = bytes
            let completionsBefore = completionRanges.count
            body(&self)
            if completionRanges.count == completionsBefore { completionRanges.append(bytes..<bytes) }
            messageRanges.append(start..<bytes)
        }

        mutating func completion(_ m: ChatMessage, _ s: String) {
            let start = bytes
            text += s
            if m.role == .assistant { completionRanges.append(start..<bytes) }
        }

        /// Families that fold the system message into the first user turn report it with an empty range.
        func result(messageCount: Int, leadingSystemFolded: Bool) -> RenderedChat {
            var messages = messageRanges, completions = completionRanges
            if leadingSystemFolded {
                messages.insert(0..<0, at: 0)
                completions.insert(0..<0, at: 0)
            }
            return RenderedChat(text: text, messageRanges: messages, completionRanges: completions)
        }
    }
}

extension ChatTemplate.Family {
    var foldsSystem: Bool { self == .llama2 || self == .mistral || self == .gemma }
}

extension Tokenizer {
    /// The model's chat template (from `tokenizer.chat_template`), or the named family when `override` is given.
    public func chatTemplate(templateText: String?, override: String? = nil) throws -> ChatTemplate {
        let bos = vocabulary.bos.map(tokenText) ?? "<s>"
        let eos = vocabulary.eos.map(tokenText) ?? "</s>"
        if let override {
            let named = try ChatTemplate(name: override)
            return ChatTemplate(family: named.family, defaultSystemMessage: nil, bosText: bos, eosText: eos)
        }
        guard let templateText else {
            throw TokenizerError.chatTemplate("the model has no chat template (tokenizer.chat_template); \(ChatTemplate.chooseFamily)")
        }
        return try ChatTemplate(template: templateText, bosText: bos, eosText: eos)
    }
}
