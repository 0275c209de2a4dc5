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
    @Option(name: [.customShort("n"), .customLong("n-predict")], parsing: .unconditional, help: "Tokens to generate at most (-1: until the end of generation or a full context).")
    var nPredict = 128
    @Option(name: [.customShort("c"), .customLong("ctx")], parsing: .unconditional, help: "Context size (prompt + generated tokens).")
    var ctx = 2048
    @Option(name: .customLong("temp"), parsing: .unconditional, help: "Temperature; 0 or less is greedy.") var temperature: Float = 0.8
    @Option(name: .customLong("top-k"), parsing: .unconditional, help: "Keep the K most likely tokens (0 or less: all).") var topK = 40
    @Option(name: .customLong("top-p"), parsing: .unconditional, help: "Keep the most likely tokens up to this total probability (1: off).") var topP: Float = 0.95
    @Option(name: .customLong("min-p"), parsing: .unconditional, help: "Drop tokens less likely than this fraction of the most likely one (0: off).") var minP: Float = 0.05
    @Option(name: .customLong("repeat-penalty"), parsing: .unconditional, help: "Penalize the tokens of the last --repeat-last-n: positive logits divided by this, negative ones multiplied (1: off).") var repeatPenalty: Float = 1.0
    @Option(name: .customLong("repeat-last-n"), parsing: .unconditional, help: "Tokens the repeat penalty looks back over (-1: the whole context).") var repeatLastN = 64
    @Option(name: [.customShort("s"), .long], parsing: .unconditional, help: "Sampling seed (-1: from the clock).") var seed: Int64 = -1
    @Option(name: .customLong("stop"), help: "Stop when the output contains this text; repeatable.") var stop: [String] = []
    @Flag(name: .customLong("chat"), help: "Chat with the model through its chat template.") var chat = false
    @Option(name: .customLong("system"), help: "System message for --chat.") var system: String?
    @Option(name: .customLong("chat-template"), help: "Chat format family instead of the model's template.") var chatTemplate: String?
    @Flag(name: .customLong("ids"), help: "Also print the generated token ids (to standard error).") var printIDs = false
    @Option(name: .customLong("activations"), help: ArgumentHelp(
        "exact or int8: int8 rounds each generated token's activations to 8 bits per block of 32 and multiplies the 4-, 5- and 8-bit weights in integers, as llama.cpp does (faster; perplexity cost in BENCHMARKS.md).",
        valueName: "exact|int8")) var activations: TokenActivations = .exact
    @Option(name: .customLong("precision"), help: "The prompt's frozen-weight products (several tokens at once): fp32, bf16 (on AVX512-BF16/AMX CPUs; float32 elsewhere, said on standard error) or auto (bf16 where it is faster).")
    var precision: ProductPrecision = .fp32

    func validate() throws {
        if !chat && prompt == nil { throw ValidationError("give a prompt with -p, or use --chat") }
        if nPredict < -1 { throw ValidationError("-n must be at least 0, or -1 for no limit (got \(nPredict))") }
        if ctx < 8 { throw ValidationError("--ctx must be at least 8 (got \(ctx))") }
        guard temperature.isFinite else { throw ValidationError("--temp must be a finite number (got \(temperature))") }
        guard topP.isFinite, (0...1).contains(topP) else { throw ValidationError("--top-p must be between 0 and 1 (got \(topP))") }
        guard minP.isFinite, (0...1).contains(minP) else { throw ValidationError("--min-p must be between 0 and 1 (got \(minP))") }
        guard repeatPenalty.isFinite, repeatPenalty > 0 else {
            throw ValidationError("--repeat-penalty must be a positive number (got \(repeatPenalty))")
        }
        guard repeatLastN >= -1 else { throw ValidationError("--repeat-last-n must be at least 0, or -1 for the whole context (got \(repeatLastN))") }
    }

    func run() throws {
        let (file, model, tokenizer) = try modelOptions.load()
        let resolution = precision.apply(to: model)
        if precision != .fp32 { CLI.printError("precision: \(resolution.note)") }
        if let warning = model.config.contextWarning(ctx) { CLI.printError("warning: " + warning) }
        var sampler = Sampler(seed: seed < 0 ? UInt64(Date().timeIntervalSince1970 * 1000) : UInt64(seed))
        sampler.temperature = temperature
        sampler.topK = topK
        sampler.topP = topP
        sampler.minP = minP
        sampler.repeatPenalty = repeatPenalty
        sampler.repeatLastN = repeatLastN
        let session = InferenceSession(model: model, capacity: ctx, threads: modelOptions.threads ?? CLI.coreCount,
                                       activations: activations)
        let generator = Generator(session: session, tokenizer: tokenizer, sampler: sampler, maxTokens: nPredict < 0 ? Int.max : nPredict)
        generator.stopStrings = stop
        func respond(_ ids: [Int32]) throws -> Generator.Response {
            let response: Generator.Response
            do {
                response = try generator.respond(to: ids) { chunk in
                    print(chunk, terminator: "")
                    fflush(stdout)
                    return true
                }
            } catch { throw CLIError(String(describing: error)) }
            print()  // the text's line ends before anything goes to standard error
            if printIDs { CLI.printError("ids: " + response.ids.map(String.init).joined(separator: " ")) }
            return response
        }
        if !chat {
            print(prompt!, terminator: "")
            _ = try respond(tokenizer.encode(prompt!, addSpecial: true, parseSpecial: true))
            reportSpeed(generator)
            return
        }
        let template: ChatTemplate
        do { template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue, override: chatTemplate) }
        catch { throw CLIError(String(describing: error)) }
        var messages: [ChatMessage] = system.map { [ChatMessage(.system, $0)] } ?? []
        func turn(_ text: String) throws {
            messages.append(ChatMessage(.user, text))
            let rendered = try template.render(messages, addGenerationPrompt: true)
            // The generator keeps what the cache holds of the conversation and feeds only what follows.
            let answer = try respond(tokenizer.encode(rendered.text, addSpecial: true, parseSpecial: true))
            messages.append(ChatMessage(.assistant, answer.text))
        }
        if let prompt {
            try turn(prompt)
            reportSpeed(generator)
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
                generator.reset()
                continue
            }
            if text.isEmpty { continue }
            try turn(text)
        }
        reportSpeed(generator)
    }

    func reportSpeed(_ g: Generator) {
        CLI.printError(String(format: "prompt: %d tokens in %.2f s (%.1f tokens/s); generation: %d tokens in %.2f s (%.1f tokens/s)",
                              g.promptTokens, g.promptSeconds, Double(g.promptTokens) / max(g.promptSeconds, 1e-9),
                              g.generatedTokens, g.generatedSeconds, Double(g.generatedTokens) / max(g.generatedSeconds, 1e-9)))
    }
}

extension TokenActivations: ExpressibleByArgument {}
extension ProductPrecision: ExpressibleByArgument {}
