import ArgumentParser
import Foundation
import GGUF
import Llama

struct PerplexityCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Perplexity of a text, scored as llama.cpp's llama-perplexity scores it.",
        discussion: """
        The whole file is tokenized, cut into chunks of CTX tokens (BOS first in each chunk when the model adds \
        BOS), and in each chunk the second half of the positions is scored. Adapters given with --lora and \
        --lora-scaled are applied at run time.
        """
    )

    @OptionGroup var modelOptions: ModelOptions

    @Option(name: [.customShort("f"), .long], help: "The text file.")
    var file: String

    @Option(name: [.customShort("c"), .customLong("ctx")], parsing: .unconditional, help: "Tokens per chunk.")
    var ctx = 512

    @Option(name: [.customShort("b"), .customLong("batch")], parsing: .unconditional, help: "Tokens evaluated together (a multiple of CTX chunks).")
    var batch = 2048

    @Option(name: .customLong("chunks"), parsing: .unconditional, help: "Score at most this many chunks (default: all).")
    var chunks: Int?

    @Option(name: .customLong("activations"), help: ArgumentHelp(
        "exact or int8: int8 scores as generation computes with --activations int8 (each chunk's first half as a prompt, then token by token), to measure what 8-bit activations cost.",
        valueName: "exact|int8")) var activations: TokenActivations = .exact

    @Option(name: .customLong("precision"), help: "Frozen-weight products over whole chunks: fp32, bf16 (on AVX512-BF16/AMX CPUs; float32 elsewhere, said on the first line) or auto (bf16 where it is faster).")
    var precision: ProductPrecision = .fp32

    func validate() throws {
        guard ctx >= 4 else { throw ValidationError("--ctx must be at least 4 (got \(ctx))") }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1 (got \(batch))") }
        if let chunks, chunks < 1 { throw ValidationError("--chunks must be at least 1 (got \(chunks))") }
    }

    func run() throws {
        let (_, model, tokenizer) = try modelOptions.load()
        let resolution = precision.apply(to: model)
        if precision != .fp32 { print("precision: \(resolution.note)") }
        let data: [UInt8]
        do { data = try FileReader.readAll(file) } catch { throw CLIError(String(describing: error)) }
        let tokens = tokenizer.encode(bytes: Array(data), addSpecial: true, parseSpecial: false)
        var scoring = Perplexity(context: ctx, batchTokens: batch, maxChunks: chunks,
                                 bos: tokenizer.vocabulary.addBOS ? tokenizer.vocabulary.bos : nil)
        scoring.activations = activations
        scoring.threads = modelOptions.threads ?? CLI.coreCount
        let count = scoring.chunkCount(tokens: tokens.count)
        guard count > 0 else {
            throw CLIError("\(file): \(tokens.count) tokens is less than one chunk of \(ctx) (use a smaller --ctx)")
        }
        // After the input's errors, which are the one line a failed run prints.
        if let warning = model.config.contextWarning(ctx) { CLI.printError("warning: " + warning) }
        print("perplexity: \(tokens.count) tokens, \(count) chunks of \(ctx), scoring positions \(scoring.scoredPositions) of each")
        var passes = 0, firstChunk = 0
        let result: Perplexity.Result
        do {
            result = try scoring.evaluate(model: model, tokens: tokens) { p in
                if passes == 0 {
                    let perPass = max(1, batch / ctx), total = (count + perPass - 1) / perPass
                    print(String(format: "%.2f seconds per pass - ETA %.1f minutes", p.seconds, p.seconds * Double(total - 1) / 60))
                }
                passes += 1
                print(p.runningPerplexity.enumerated().map { "[\(firstChunk + $0.offset + 1)]" + String(format: "%.4f", $0.element) + "," }.joined())
                firstChunk = p.chunksDone
            }
        } catch { throw CLIError(String(describing: error)) }
        print(String(format: "Final estimate: PPL = %.4f +/- %.5f", result.perplexity, result.uncertainty))
    }
}
