import ArgumentParser
import Foundation
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

    @Option(name: [.customShort("c"), .customLong("ctx")], help: "Tokens per chunk.")
    var ctx = 512

    @Option(name: [.customShort("b"), .customLong("batch")], help: "Tokens evaluated together (a multiple of CTX chunks).")
    var batch = 2048

    @Option(name: .customLong("chunks"), help: "Score at most this many chunks (default: all).")
    var chunks: Int?

    func validate() throws {
        guard ctx >= 4 else { throw ValidationError("--ctx must be at least 4") }
        guard batch >= 1 else { throw ValidationError("--batch must be positive") }
    }

    func run() throws {
        let (_, model, tokenizer) = try modelOptions.load()
        guard let data = FileManager.default.contents(atPath: file) else { throw CLIError("\(file): cannot read") }
        let tokens = tokenizer.encode(bytes: Array(data), addSpecial: true, parseSpecial: false)
        let addBOS = tokenizer.vocabulary.addBOS
        var count = tokens.count / ctx
        if let chunks { count = min(count, chunks) }
        guard count > 0 else {
            throw CLIError("\(file): \(tokens.count) tokens is less than one chunk of \(ctx) (use a smaller --ctx)")
        }
        let perBatch = max(1, batch / ctx)
        print("perplexity: \(tokens.count) tokens, \(count) chunks of \(ctx), scoring positions \(ctx / 2)..<\(ctx - 1) of each")
        var nll = 0.0, nll2 = 0.0, scored = 0
        let start = Date()
        var line = ""
        for first in stride(from: 0, to: count, by: perBatch) {
            let group = first..<min(count, first + perBatch)
            var input: [Int32] = []
            for c in group {
                var chunk = Array(tokens[(c * ctx)..<((c + 1) * ctx)])
                if addBOS, let bos = tokenizer.vocabulary.bos { chunk[0] = bos }
                input += chunk
            }
            let losses: [Double]
            do {
                losses = try model.negativeLogLikelihoods(tokens: input, batch: group.count, scored: (ctx / 2)..<(ctx - 1))
            } catch { throw CLIError(String(describing: error)) }
            for (i, l) in losses.enumerated() {
                nll += l
                nll2 += l * l
                scored += 1
                if (i + 1) % (ctx - 1 - ctx / 2) == 0 {
                    let chunkNumber = first + (i + 1) / (ctx - 1 - ctx / 2)
                    line += "[\(chunkNumber)]" + String(format: "%.4f", exp(nll / Double(scored))) + ","
                }
            }
            if first == 0 {
                let seconds = Date().timeIntervalSince(start)
                print(String(format: "%.2f seconds per pass - ETA %.1f minutes", seconds,
                             seconds * Double((count + perBatch - 1) / perBatch - 1) / 60))
            }
            print(line)
            line = ""
        }
        let mean = nll / Double(scored)
        let variance = nll2 / Double(scored) - mean * mean
        let ppl = exp(mean)
        let uncertainty = variance > 0 && scored > 1 ? ppl * (variance / Double(scored - 1)).squareRoot() : 0
        print(String(format: "Final estimate: PPL = %.4f +/- %.5f", ppl, uncertainty))
    }
}
