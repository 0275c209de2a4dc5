import ArgumentParser
import Foundation
import Llama
import Tokenizer

struct GenerateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "generate",
        abstract: "Generate text or chat with a model, adapters applied at run time.",
        discussion: "With --chat, talks through the model's chat template (type /reset to start over, /quit to leave); with --chat and -p it answers one message and exits. Speeds go to standard error."
    )

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("p"), .long], help: "The prompt (or the user message with --chat).")
    var prompt: String?
    @Option(name: [.customShort("n"), .customLong("n-predict")], help: "Tokens to generate at most.")
    var nPredict = 128
    @Option(name: [.customShort("c"), .customLong("ctx")], help: "Context size (prompt + generated tokens).")
    var ctx = 2048
    @Option(name: .customLong("temp"), help: "Temperature; 0 is greedy.") var temperature: Float = 0.8
    @Option(name: .customLong("top-k")) var topK = 40
    @Option(name: .customLong("top-p")) var topP: Float = 0.95
    @Option(name: .customLong("min-p")) var minP: Float = 0.05
    @Option(name: .customLong("repeat-penalty")) var repeatPenalty: Float = 1.0
    @Option(name: .customLong("repeat-last-n")) var repeatLastN = 64
    @Option(name: [.customShort("s"), .long], help: "Sampling seed (-1: from the clock).") var seed: Int64 = -1
    @Option(name: .customLong("stop"), help: "Stop when the output contains this text; repeatable.") var stop: [String] = []
    @Flag(name: .customLong("chat"), help: "Chat with the model through its chat template.") var chat = false
    @Option(name: .customLong("system"), help: "System message for --chat.") var system: String?
    @Option(name: .customLong("chat-template"), help: "Chat format family instead of the model's template.") var chatTemplate: String?
    @Flag(name: .customLong("ids"), help: "Also print the generated token ids (to standard error).") var printIDs = false

    func validate() throws {
        if !chat && prompt == nil { throw ValidationError("give a prompt with -p, or use --chat") }
        if nPredict < 0 || ctx < 8 { throw ValidationError("-n must be ≥ 0 and --ctx ≥ 8") }
    }

    func run() throws {
        let (file, model, tokenizer) = try modelOptions.load()
        var sampler = Sampler(seed: seed < 0 ? UInt64(Date().timeIntervalSince1970 * 1000) : UInt64(seed))
        sampler.temperature = temperature
        sampler.topK = topK
        sampler.topP = topP
        sampler.minP = minP
        sampler.repeatPenalty = repeatPenalty
        sampler.repeatLastN = repeatLastN
        let session = InferenceSession(model: model, capacity: ctx, threads: modelOptions.threads ?? CLI.coreCount)
        var generator = Generator(session: session, tokenizer: tokenizer, sampler: sampler, stops: stop, limit: nPredict, printIDs: printIDs)
        if !chat {
            let ids = tokenizer.encode(prompt!, addSpecial: true, parseSpecial: true)
            print(prompt!, terminator: "")
            _ = try generator.respond(to: ids)
            print()
            generator.reportSpeed()
            return
        }
        let template: ChatTemplate
        do { template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue, override: chatTemplate) }
        catch { throw CLIError(String(describing: error)) }
        var messages: [ChatMessage] = system.map { [ChatMessage(.system, $0)] } ?? []
        var fed: [Int32] = []
        func turn(_ text: String) throws {
            messages.append(ChatMessage(.user, text))
            let rendered = try template.render(messages, addGenerationPrompt: true)
            let ids = tokenizer.encode(rendered.text, addSpecial: true, parseSpecial: true)
            // The conversation so far is in the KV cache: feed only what follows the shared prefix.
            var shared = 0
            while shared < min(ids.count, fed.count) - 1 && ids[shared] == fed[shared] { shared += 1 }
            session.rewind(to: shared)
            let answer = try generator.respond(to: Array(ids[shared...]))
            fed = Array(ids[..<shared]) + Array(ids[shared...]) + answer.ids
            messages.append(ChatMessage(.assistant, answer.text))
            print()
        }
        if let prompt {
            try turn(prompt)
            generator.reportSpeed()
            return
        }
        CLI.printError("chat: type a message; /reset starts over, /quit leaves")
        while true {
            print("> ", terminator: "")
            fflush(stdout)
            guard let line = readLine() else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text == "/quit" { break }
            if text == "/reset" {
                messages = system.map { [ChatMessage(.system, $0)] } ?? []
                fed = []
                session.rewind(to: 0)
                continue
            }
            if text.isEmpty { continue }
            try turn(text)
        }
        generator.reportSpeed()
    }
}

/// Streams one response: feeds the prompt tokens, then samples until end of generation, the limit or a stop text.
struct Generator {
    let session: InferenceSession
    let tokenizer: Tokenizer
    var sampler: Sampler
    let stops: [String]
    let limit: Int
    let printIDs: Bool
    var promptTokens = 0, promptSeconds = 0.0, generatedTokens = 0, generateSeconds = 0.0
    var history: [Int32] = []

    init(session: InferenceSession, tokenizer: Tokenizer, sampler: Sampler, stops: [String], limit: Int, printIDs: Bool) {
        self.session = session
        self.tokenizer = tokenizer
        self.sampler = sampler
        self.stops = stops
        self.limit = limit
        self.printIDs = printIDs
    }

    mutating func respond(to prompt: [Int32]) throws -> (ids: [Int32], text: String) {
        var start = Date()
        var logits: [Float]
        do { logits = try session.feed(prompt) } catch { throw CLIError(String(describing: error)) }
        promptSeconds += Date().timeIntervalSince(start)
        promptTokens += prompt.count
        history += prompt
        var decoder = StreamingDecoder(tokenizer: tokenizer)
        var text = "", ids: [Int32] = []
        start = Date()
        defer { generateSeconds += Date().timeIntervalSince(start) }
        for _ in 0..<limit {
            let id = sampler.sample(logits, history: history)
            if tokenizer.isEndOfGeneration(id) { break }
            ids.append(id)
            history.append(id)
            generatedTokens += 1
            let chunk = decoder.append(id)
            text += chunk
            print(chunk, terminator: "")
            fflush(stdout)
            if stops.contains(where: { text.contains($0) }) { break }
            if session.position >= session.capacity { break }
            do { logits = try session.feed([id]) } catch { throw CLIError(String(describing: error)) }
        }
        let rest = decoder.finish()
        text += rest
        print(rest, terminator: "")
        if printIDs { CLI.printError("ids: " + ids.map(String.init).joined(separator: " ")) }
        return (ids, text)
    }

    func reportSpeed() {
        CLI.printError(String(format: "prompt: %d tokens in %.2f s (%.1f tokens/s); generation: %d tokens in %.2f s (%.1f tokens/s)",
                              promptTokens, promptSeconds, Double(promptTokens) / max(promptSeconds, 1e-9),
                              generatedTokens, generateSeconds, Double(generatedTokens) / max(generateSeconds, 1e-9)))
    }
}
