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
    /// Memory the run may plan to use, in bytes; nil: the machine's physical memory or its container's limit. A plan
    /// above it is refused before training starts (and automatic checkpointing turns on above 80 % of it).
    public var memoryLimit: Int?
    /// false: write nothing (no adapter, checkpoint or best adapter), as for a dry run that measures speed.
    public var writeFiles = true

    public var adapterOut: String
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
    public var trainableParameters: Int
    public var tokensPerStep: Int
    public var steps: Int
    public var startStep: Int
    public var samples: Int
    public var validationRows: Int
    public var gradientCheckpointing: Bool
    /// Bytes by part (see `MemoryPlan`).
    public var memory: [(String, Int)]
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

