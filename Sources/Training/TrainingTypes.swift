import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer

/// Everything a training run is told.
public struct TrainingConfiguration: Sendable {
    public var model: String
    public var trainData: String
    public var validationData: String?
    /// nil: detected from the file (`.jsonl` → its fields; otherwise plain text).
    public var dataFormat: DataFormat?
    public var chatTemplate: String?
    public var trainOnPrompt = false
    public var sampling = SamplingOptions()

    public var context = 256
    public var batch = 4
    public var iterations = 100
    public var gradientAccumulation = 1
    public var epochs: Int?

    public var targets = LoRATarget.defaultTargets
    public var rank = 8
    public var ranks: [LoRATarget: Int] = [:]
    public var alpha: Float = 16

    /// The weights of `model` these options adapt (on Phi-3, Q/K/V and gate/up are fused tensors).
    public func adaptedTargets(_ model: LlamaConfig) -> [LoRATarget] {
        model.resolve(targets).filter { model.features(of: $0) != nil }
    }

    /// The rank of `target`: its own --rank-… option, on a fused tensor the largest one given to its parts, else
    /// --lora-r.
    public func rank(of target: LoRATarget, in model: LlamaConfig) -> Int {
        if let r = ranks[target] { return r }
        let parts: [LoRATarget] = target == .attnQKV ? [.attnQ, .attnK, .attnV] : target == .ffnUp && model.fusedGateUp ? [.ffnGate] : []
        return parts.compactMap { ranks[$0] }.max() ?? rank
    }
    public var rsLoRA = false

    public var adam = AdamWOptions()
    public var warmup: Int?
    public var cosineDecaySteps: Int?
    public var cosineDecayMin: Float = 0.1
    public var cosineDecayRestart: Float = 1.1
    public var restarts = false
    /// Stop when |Δloss|/loss < this (≤ 0: off), as the finetune's --adam-epsf.
    public var relativeLossTolerance: Float = 0
    /// Stop after this many steps without a new best training loss (≤ 0: off).
    public var maxNoImprovement = 0
    /// The finetune's delta test: stop when |loss(now − past) − loss(now)| / loss(now) < `pastDelta` (past ≤ 0: off).
    /// The window of past losses starts empty after a resume.
    public var past = 0
    public var pastDelta: Float = 1e-5

    public var seed: UInt64 = 1
    public var threads: Int?
    /// nil: automatic (on when keeping every layer's activations would take more than 1 GiB).
    public var gradientCheckpointing: Bool?
    public var cacheWeights = false
    /// The precision of the frozen-weight products (`--precision`): float32 (the default), bf16 on the CPU's bf16
    /// instructions, or auto; resolved against the CPU when the run starts (`TrainingPlan.precision` says what runs).
    /// A resumed run is bit-exact when it runs in the same precision.
    public var precision: ProductPrecision = .fp32
    /// Overrides `precision` with what the frozen products multiply, whatever the CPU: `.bf16` on a CPU without
    /// bf16 products computes bf16's numbers in float32 (for measuring bf16's accuracy anywhere; no speed-up).
    public var frozenProductInputs: FrozenProductInputs?
    /// Memory the run may plan to use, in bytes; nil: the machine's physical memory or its container's limit. A plan
    /// above it is refused before training starts (and automatic checkpointing turns on above 80 % of it).
    public var memoryLimit: Int?
    /// false: write nothing (no adapter, checkpoint or best adapter), as for a dry run that measures speed.
    public var writeFiles = true

    public var adapterOut: String
    /// Continue training this adapter (any format `AdapterLoader` opens) instead of a fresh one: its targets, ranks
    /// and alpha replace `targets`, `rank`, `ranks` and `alpha`; AdamW starts fresh unless a checkpoint is resumed.
    public var adapterIn: String?
    /// Adapters applied, frozen, under the one being trained (path, multiplier).
    public var frozenAdapters: [(path: String, multiplier: Float)] = []
    public var checkpointIn: String?
    public var checkpointOut: String?
    public var saveEvery = 10
    public var iterationPattern = "ITERATION"
    public var latestName = "LATEST"
    public var onlyWriteAdapter = false

    /// Start a new shuffle instead of the checkpoint's.
    public var forceReshuffle = false
    /// Overrides of the model's RMS epsilon, RoPE base and RoPE frequency scale.
    public var overrides: (rmsEpsilon: Float?, ropeBase: Float?, ropeScale: Float?) = (nil, nil, nil)

    public var validationEvery = 0
    public var keepBest = false
    public var earlyStop = 0

    public init(model: String, trainData: String, adapterOut: String) {
        self.model = model
        self.trainData = trainData
        self.adapterOut = adapterOut
    }
}

/// What the trainer reports while it runs. The callback returns false to stop (the trainer then saves).
public enum TrainingEvent: Sendable {
    case plan(TrainingPlan)
    case warning(String)
    case step(StepReport)
    case validation(step: Int, loss: Double, best: Bool)
    case saved(kind: String, path: String)
    case finished(TrainingSummary)
}

public struct TrainingPlan: Sendable {
    /// The model's weights being adapted.
    public var targets: [LoRATarget] = []
    public var trainableParameters: Int
    public var tokensPerStep: Int
    /// The most positions a training row runs: the context, or less where every sample is shorter (rows end after
    /// their last scored position).
    public var rowLength: Int
    public var steps: Int
    public var startStep: Int
    public var samples: Int
    public var validationRows: Int
    public var gradientCheckpointing: Bool
    /// What the frozen products compute in, in a line (`ProductPrecision.Resolution.note`).
    public var precision = "float32"
    /// Bytes by part (see `MemoryPlan`).
    public var memory: [(String, Int)]
    /// Processes sharing each step (MPI ranks; 1 alone) and what each sends per step in the gradient exchange.
    public var ranks = 1
    public var bytesExchangedPerStep = 0
}

public struct StepReport: Sendable {
    public var step: Int
    public var loss: Double
    public var learningRate: Float
    public var gradientNorm: Double
    public var tokensPerSecond: Double
    public var elapsed: Double
    public var eta: Double
    public var scoredTokens: Int
    public var epoch: Int
    /// Share of the step spent outside forward/backward (data, optimizer, checks).
    public var overhead: Double
}

public struct TrainingSummary: Sendable {
    public var steps: Int
    public var finalLoss: Double?
    public var bestValidationLoss: Double?
    public var stoppedEarly: String?
    public var adapterPath: String
}

public enum TrainingError: Error, CustomStringConvertible {
    case nonFinite(step: Int, what: String)
    case invalid(String)

    public var description: String {
        switch self {
        case let .nonFinite(step, what): return "step \(step): \(what) is not finite; stopped without writing the adapter (try a lower --lr)"
        case let .invalid(reason): return reason
        }
    }
}


extension TrainingConfiguration {
    /// Checks every number the run will use, so that the engine never sees one it cannot use (no overflow, no NaN);
    /// the error names the option.
    public func validate() throws {
        func require(_ ok: Bool, _ message: String) throws { if !ok { throw TrainingError.invalid(message) } }
        try require((2...(1 << 20)).contains(context), "--ctx must be between 2 and 1048576")
        try require((1...(1 << 16)).contains(batch), "--batch must be between 1 and 65536")
        try require(context * batch <= 1 << 26, "--ctx × --batch = \(context * batch) tokens per micro-batch is more than 67 million")
        try require((1...(1 << 16)).contains(gradientAccumulation), "--grad-acc must be between 1 and 65536")
        try require((0...(1 << 31)).contains(iterations), "--adam-iter must be between 0 and 2147483648")
        try require(epochs.map { $0 >= 0 } ?? true, "--epochs must not be negative")
        for r in [rank] + Array(ranks.values) { try require((1...(1 << 16)).contains(r), "LoRA ranks must be between 1 and 65536") }
        try require(!targets.isEmpty, "--targets names no weight")
        try require(alpha.isFinite && alpha >= 0, "--lora-alpha must be a finite, non-negative number")
        let a = adam
        try require(a.learningRate.isFinite && a.learningRate >= 0, "--adam-alpha must be a finite, non-negative number")
        try require(a.minLearningRate.isFinite && a.minLearningRate >= 0, "--adam-min-alpha must be a finite, non-negative number")
        try require(a.weightDecay.isFinite && a.weightDecay >= 0, "--adam-decay must be a finite, non-negative number")
        try require(a.beta1.isFinite && (0..<1).contains(a.beta1), "--adam-beta1 must be at least 0 and less than 1")
        try require(a.beta2.isFinite && (0..<1).contains(a.beta2), "--adam-beta2 must be at least 0 and less than 1")
        try require(a.epsilon.isFinite && a.epsilon >= 0, "the AdamW epsilon must be a finite, non-negative number")
        try require(a.gradientClip.isFinite, "--adam-gclip must be a finite number (0 or less: no clipping)")
        try require(warmup.map { $0 >= 0 } ?? true, "--warmup must not be negative")
        try require(cosineDecaySteps.map { $0 >= 1 } ?? true, "--cos-decay-steps must be at least 1")
        try require(cosineDecayMin.isFinite && (0...1).contains(cosineDecayMin), "--cos-decay-min must be between 0 and 1")
        try require(cosineDecayRestart.isFinite && cosineDecayRestart > 0, "--cos-decay-restart must be a finite, positive number")
        try require(relativeLossTolerance.isFinite, "--adam-epsf must be a finite number")
        try require(pastDelta.isFinite && past >= 0, "--opt-past must not be negative and --opt-delta must be finite")
        for (name, value, zero) in [("--opt-max-no-improvement", maxNoImprovement, "off"), ("--save-every", saveEvery, "only at the end"),
                                    ("--val-every", validationEvery, "only at the end"), ("--early-stop", earlyStop, "off")] {
            try require(value >= 0, "\(name) must not be negative (0: \(zero))")
        }
        try require(threads.map { (1...1024).contains($0) } ?? true, "--threads must be between 1 and 1024")
        try require(frozenAdapters.allSatisfy { $0.multiplier.isFinite }, "an adapter's scale must be a finite number")
        for (name, value) in [("--norm-rms-eps", overrides.rmsEpsilon), ("--rope-freq-base", overrides.ropeBase),
                              ("--rope-freq-scale", overrides.ropeScale)] {
            try require(value.map { $0.isFinite && $0 > 0 } ?? true, "\(name) must be a finite, positive number")
        }
    }
}

extension TrainingConfiguration {
    /// The files this run reads and writes, for `OutputGuard` (a resumed checkpoint may be overwritten: that is
    /// how a run continues).
    public var files: (outputs: [OutputGuard.File], inputs: [OutputGuard.File]) {
        var outputs: [OutputGuard.File] = []
        if writeFiles {
            outputs.append(OutputGuard.File("--lora-out", Trainer.outputNames(adapterOut, step: 0, pattern: iterationPattern, latest: latestName).last!))
            if let out = checkpointOut, !onlyWriteAdapter {
                outputs.append(OutputGuard.File("--checkpoint-out", Trainer.outputNames(out, step: 0, pattern: iterationPattern, latest: latestName).last!))
            }
            if keepBest { outputs.append(OutputGuard.File("the best adapter", Trainer.bestName(adapterOut))) }
        }
        var inputs = [OutputGuard.File("the model", model), OutputGuard.File("--train-data", trainData)]
        let peftFiles = ["adapter_config.json", "adapter_model.safetensors"]
        if let a = adapterIn { inputs.append(OutputGuard.File("--lora-in", a, contents: peftFiles)) }
        inputs += frozenAdapters.map { OutputGuard.File("the frozen adapter", $0.path, contents: peftFiles) }
        if let v = validationData { inputs.append(OutputGuard.File("--val-data", v)) }
        return (outputs, inputs)
    }
}
