import ArgumentParser
import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer
import Training

/// bf16's accuracy, measured on any CPU: the same runs with the frozen-weight and attention products' operands in
/// float32 and rounded to bf16 (`FrozenProductInputs`; on a CPU without bf16 instructions the products still run in
/// float32, so the times say nothing about bf16's speed). Prints the base model's perplexity both ways, a training run's loss at every step both ways, and the
/// held-out perplexity of the two adapters it trains.
struct Bf16AccuracyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bf16-accuracy",
        abstract: "Loss and perplexity with the frozen and attention products' operands in float32 and rounded to bf16.")

    @Option(name: .shortAndLong) var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option(help: "Text: the last --held-out bytes are held out, the rest is trained on.")
    var text = "../shared/data/shakespeare.txt"
    @Option(help: "Bytes at the end of --text held out of training.") var heldOut = 30_000
    @Option(help: "Bytes at the start of --text scored for the base model's perplexity.") var baseBytes = 20_000
    @Option var steps = 50
    @Option var ctx = 256
    @Option var batch = 4
    @Option var rank = 8
    @Option var lr: Float = 1e-4
    @Option var threads = 2

    func run() throws {
        guard let data = FileManager.default.contents(atPath: text), data.count > heldOut + baseBytes else {
            throw ValidationError("cannot read \(text), or it is shorter than --held-out + --base-bytes")
        }
        let bytes = Array(data)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("lorakit-bf16-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let trainPath = dir + "/train.txt"
        try Data(bytes[..<(bytes.count - heldOut)]).write(to: URL(fileURLWithPath: trainPath))

        let file = try GGUFFile(path: model)
        let tokenizer = try Tokenizer(file: file)
        func perplexity(_ slice: ArraySlice<UInt8>, inputs: FrozenProductInputs, adapter: String?) throws -> Double {
            let llama = try LlamaModel<Float>(file: file)
            llama.frozenProductInputs = inputs
            if let adapter { try llama.attach(try AdapterLoader.load(adapter).adapter, trainable: false) }
            let tokens = tokenizer.encode(bytes: Array(slice), addSpecial: true, parseSpecial: false)
            var scoring = Perplexity(context: ctx, batchTokens: 1024, bos: tokenizer.vocabulary.addBOS ? tokenizer.vocabulary.bos : nil)
            scoring.threads = threads
            return try scoring.evaluate(model: llama, tokens: tokens).perplexity
        }
        func change(_ a: Double, _ b: Double) -> String { String(format: "%+.3f %%", (b - a) / a * 100) }

        print("model \(model), \(threads) threads; bf16: both operands of every frozen-weight and attention product rounded to nearest even, "
              + (BFloat16GEMM.engine.map { "multiplied on the CPU's bf16 instructions (\($0))" }
                 ?? "multiplied in float32 (\(BFloat16GEMM.unavailableReason ?? "no bf16 products"))"))
        let base32 = try perplexity(bytes[..<baseBytes], inputs: .float32, adapter: nil)
        let base16 = try perplexity(bytes[..<baseBytes], inputs: .bf16, adapter: nil)
        print(String(format: "base perplexity, first %d bytes, -c %d: float32 %.4f, bf16 %.4f (%@)", baseBytes, ctx, base32, base16,
                     change(base32, base16)))

        var losses: [FrozenProductInputs: [Double]] = [:]
        for inputs in FrozenProductInputs.allCases {
            var c = TrainingConfiguration(model: model, trainData: trainPath, adapterOut: "\(dir)/\(inputs.rawValue).gguf")
            (c.context, c.batch, c.rank, c.iterations, c.threads, c.seed) = (ctx, batch, rank, steps, threads, 1)
            c.adam.learningRate = lr
            c.saveEvery = 0
            c.frozenProductInputs = inputs
            var stepLosses: [Double] = []
            _ = try Trainer(configuration: c).run { event in
                if case let .step(s) = event { stepLosses.append(s.loss) }
                return true
            }
            losses[inputs] = stepLosses
        }
        let l32 = losses[.float32]!, l16 = losses[.bf16]!
        print("step  float32 loss  bf16 loss  change")
        var largest = 0.0
        for i in 0..<min(l32.count, l16.count) {
            largest = max(largest, abs(l16[i] - l32[i]) / l32[i])
            print(String(format: "%4d  %12.5f  %9.5f  %@", i + 1, l32[i], l16[i], change(l32[i], l16[i])))
        }
        print(String(format: "largest loss change over %d steps: %.3f %%", min(l32.count, l16.count), largest * 100))

        let held = bytes[(bytes.count - heldOut)...]
        let held32 = try perplexity(held, inputs: .float32, adapter: "\(dir)/float32.gguf")
        let held16 = try perplexity(held, inputs: .float32, adapter: "\(dir)/bf16.gguf")
        let held16in16 = try perplexity(held, inputs: .bf16, adapter: "\(dir)/bf16.gguf")
        print(String(format: "held-out perplexity (last %d bytes), scored in float32: float32 adapter %.4f, bf16 adapter %.4f (%@); bf16 adapter scored in bf16 %.4f (%@)",
                     heldOut, held32, held16, change(held32, held16), held16in16, change(held32, held16in16)))
    }
}
