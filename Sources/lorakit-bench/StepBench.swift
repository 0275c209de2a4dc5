import ArgumentParser
import CKernels
import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import Training

/// A LoRA training step (forward, backward, AdamW update) on random tokens, as the model issue defines the
/// benchmark, with the memory plan beside the measured peak.
struct StepBench: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "step", abstract: "Seconds per forward+backward step, tokens/s, GEMM share, peak memory.")

    @Option(name: .shortAndLong) var model = "models/SmolLM2-135M-Instruct.Q4_1.gguf"
    @Option var batch = 4
    @Option var ctx = 256
    @Option var rank = 8
    @Option(help: "Thread counts to measure, comma-separated.") var threads = "1,2"
    @Option var steps = 3
    @Option(help: "Untimed steps first (0 times the first step, page faults of the mapped file included).") var warmup = 1
    @Flag(name: .customLong("checkpointing")) var checkpointing = false
    @Flag(name: .customLong("cache-weights")) var cacheWeights = false
    @Flag(name: .customLong("shapes"), help: "Also print the products' time by shape, every shape, most time first.") var shapes = false
    @Option(help: "Frozen products: fp32, bf16 or auto.") var precision: ProductPrecision = .fp32
    @Option(help: "Tile of the tiled attention; 0: the plain path.") var attentionTile = Attention<Float>.defaultTile
    @Option(help: "Rows of logits the head computes at once.") var headRows = LlamaConfig.headRows
    @Option(help: "LoRA's rank-r products in the narrow kernels (on, where AVX-512) or in the BLAS (off).") var narrowKernels = "on"

    func run() throws {
        let file = try GGUFFile(path: model)
        let llama = try LlamaModel<Float>(file: file, cacheWeights: cacheWeights)
        llama.gradientCheckpointing = checkpointing
        llama.attentionTile = attentionTile
        llama.headChunkRows = headRows
        guard ["on", "off"].contains(narrowKernels) else { throw ValidationError("--narrow-kernels: on or off, not '\(narrowKernels)'") }
        BLAS.narrowKernels = narrowKernels == "on"
        let resolution = precision.apply(to: llama)
        print("precision: \(resolution.note)")
        let adapter = try LoRAAdapter<Float>.initialized(layers: llama.config.layers, shapes: { llama.config.features(of: $0) },
                                                         targets: llama.config.resolve(LoRATarget.defaultTargets), rank: { _ in rank }, alpha: 16,
                                                         rsLoRA: false, seed: 1)
        try llama.attach(adapter, trainable: true)
        let n = batch * ctx
        var rng = SplitMix(seed: 3)
        let tokens = (0..<n).map { _ in Int32(rng.next() % UInt64(llama.config.vocabulary)) }
        let targets = Array(tokens.dropFirst()) + [0]
        print("model \(model): \(batch) × \(ctx) tokens, rank \(rank) on \(LoRATarget.defaultTargets.count) targets, checkpointing \(checkpointing ? "on" : "off"), narrow kernels \(BLAS.narrowKernels ? "on" : "off"), attention \(llama.attentionTile(batch: batch, length: ctx).map { "tiled (\($0))" } ?? "plain"), BLAS \(BLAS.libraryPath ?? "none") (\(BLAS.coreName ?? "?"))")
        let plan = MemoryPlan(MemoryPlan.Inputs(config: llama.config, fileSize: file.fileSize, parameterCount: file.parameterCount,
                                                batch: batch, context: ctx, trainableParameters: adapter.parameterCount,
                                                cacheWeights: cacheWeights, bf16Weights: llama.keepsBF16Weights),
                              checkpointing: checkpointing)
        print(String(format: "memory plan %.0f MB (%@)", Double(plan.total) / 1048576,
                     plan.parts.map { String(format: "%@ %.0f MB", $0.name, Double($0.bytes) / 1048576) }.joined(separator: ", ")))
        // A whole training step: forward, backward and the AdamW update (whose moments the plan counts).
        var moments = adapter.order.map { (AdamMoments(count: adapter[$0]!.a.count), AdamMoments(count: adapter[$0]!.b.count)) }
        var step = 0
        func trainingStep() throws {
            adapter.zeroGradients()
            _ = try llama.forwardBackward(tokens: tokens, targets: targets, batch: batch, lossScale: 1 / Float(n))
            step += 1
            for (i, name) in adapter.order.enumerated() {
                let pair = adapter[name]!
                AdamW.update(params: &pair.a, grads: pair.gradA, moments: &moments[i].0, options: AdamWOptions(), step: step,
                             schedule: 1, clipFactor: 1, decays: true)
                AdamW.update(params: &pair.b, grads: pair.gradB, moments: &moments[i].1, options: AdamWOptions(), step: step,
                             schedule: 1, clipFactor: 1, decays: true)
            }
        }
        // One core's, measured once, before any step: float32's, or bf16's where the frozen products run in bf16.
        let bf16Products = resolution.inputs == .bf16  // resolved to bf16 only where the bf16 products run
        let corePeak = bf16Products ? lk_bf16_peak_gflops() : lk_float32_peak_gflops()
        for t in threads.split(separator: ",").compactMap({ Int($0) }) {
            BLAS.setThreads(t)
            for _ in 0..<warmup { try trainingStep() }
            BLAS.measureGEMM = true
            BLAS.measureShapes = shapes
            BLAS.resetGEMMCounts()
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps { try trainingStep() }
            let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9 / Double(steps)
            BLAS.measureGEMM = false
            let gemm = Double(BLAS.gemmNanoseconds) / 1e9 / Double(steps)
            let issued = Double(BLAS.gemmOperations) / 1e9 / Double(steps)
            print(String(format: "threads %d: %.2f s/step, %.0f tokens/s, GEMM %.0f%% of the step, peak RSS %.0f MB",
                         t, elapsed, Double(n) / elapsed, 100 * gemm / elapsed, peakMemoryMB()))
            let minimum = minimumOperations(llama.config, batch: batch, length: ctx, rank: rank) / 1e9
            print(String(format: "  products: %.0f GFLOP issued per step (the step's minimum %.0f), %.0f GFLOP/s inside them",
                         issued, minimum, issued / gemm))
            printFloor(minimumGFLOP: minimum, productRate: issued / gemm, corePeak: corePeak, bf16: bf16Products, threads: t,
                       stepSeconds: elapsed)
            if shapes { printShapes(steps: steps, stepSeconds: elapsed) }
        }
    }
}

/// How far the step is from what this CPU's arithmetic allows: the products' rate against the register peak of the
/// cores used (bf16's when the frozen products run in bf16: the step's fastest products, so its ceiling, though
/// LoRA's stay float32), and the step's minimum operations at the products' rate and at that peak.
func printFloor(minimumGFLOP: Double, productRate: Double, corePeak: Double, bf16: Bool, threads: Int, stepSeconds: Double) {
    let peak = corePeak * Double(threads)
    guard peak > 0 else { return }
    print(String(format: "  %@ peak %.0f GFLOP/s (one core's register %@ × %d): products at %.0f%% of it; "
                 + "the minimum alone would take %.2f s at the products' rate, %.2f s at the peak (this step %.2f s)",
                 bf16 ? "bf16" : "float32", peak, bf16 ? "vdpbf16ps" : "multiply-adds", threads, 100 * productRate / peak,
                 minimumGFLOP / productRate, minimumGFLOP / peak, stepSeconds))
}

/// Every product shape, most time first, with each call's rate on its own thread (op(A) is M×K, op(B) K×N; T: transposed).
func printShapes(steps: Int, stepSeconds: Double) {
    print("  product shapes by time (per step; rate of one call on its thread):")
    for total in BLAS.shapeTotals {
        let seconds = Double(total.nanoseconds) / 1e9 / Double(steps)
        let rate = 2 * Double(total.m) * Double(total.n) * Double(total.k) * Double(total.calls) / Double(total.nanoseconds)
        print(String(format: "    %@·%@ M %6d N %6d K %6d  %5d calls  %6.3f s (%4.1f%%)  %5.1f GFLOP/s",
                     total.trans_a != 0 ? "Aᵀ" : "A ", total.trans_b != 0 ? "Bᵀ" : "B ", total.m, total.n, total.k,
                     Int(total.calls) / steps, seconds, 100 * seconds / stepSeconds, rate))
    }
}

/// The products one step cannot avoid: each linear weight (and the head) once forward and once for the input
/// gradient, causal attention's two products forward and four backward, and the LoRA products (forward, and
/// backward's gradient of A, of B and of the input), every row scored; the first block's attention products
/// (Q, K, V) have no input gradient, since nothing before them trains.
func minimumOperations(_ config: LlamaConfig, batch: Int, length: Int, rank: Int) -> Double {
    let tokens = Double(batch * length)
    let linear = config.blockTargets.map { config.features(of: $0)! }
    let firstInputs = config.attentionInputTargets.map { config.features(of: $0)! }
    let skipped = firstInputs.reduce(0) { $0 + 2 * tokens * Double($1.in * $1.out + rank * $1.in) }
    let weights = Double(config.layers) * linear.reduce(0) { $0 + Double($1.in * $1.out) } + Double(config.embedding * config.vocabulary)
    let lora = Double(config.layers) * linear.reduce(0) { $0 + Double(rank * ($1.in + $1.out)) }
    let causalPairs = Double(batch) * Double(length) * Double(length + 1) / 2
    let attention = Double(config.layers * config.heads * config.headDim) * causalPairs * 2 * 2
    return 2 * tokens * weights * 2 + 3 * attention + 2 * tokens * lora * 4 - skipped
}

func peakMemoryMB() -> Double { Double(ResidentMemory.peakBytes()) / 1_048_576 }
extension ProductPrecision: ExpressibleByArgument {}
