import ArgumentParser
import Distributed
import Foundation
import GGUF
import Llama
import LoRA
import Training

/// Set by SIGINT/SIGTERM; the trainer finishes the current step, saves and stops.
nonisolated(unsafe) var stopRequested: Int32 = 0

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a LoRA adapter on text, JSONL prompt/completion or chat data.",
        discussion: """
        Accepts every option of llama.cpp's 2023 finetune under the same names. Where our defaults differ from \
        the finetune's: LoRA starts as PEFT does (A random, B = 0, so step 0 is the base model) and is scaled by \
        alpha/r in training too; norms are not adapted (llama.cpp adapters cannot express norm deltas); \
        --adam-alpha 2e-4 (was 1e-3), --ctx 256 (was 128), --batch 4 (was 8), --adam-iter 100 (was 256), \
        --warmup min(100, iters/10) (was 100), --cos-decay-steps = iterations (was 1000), the first update uses \
        a non-zero learning rate, no checkpoint is resumed unless --checkpoint-in names one, and the adapter is \
        today's llama.cpp GGUF (the finetune wrote the retired ggla format).
        """
    )

    // Model and files
    @Option(name: [.customShort("m"), .customLong("model"), .customLong("model-base")], help: "Base model (GGUF).")
    var model: String
    @Option(name: .customLong("train-data"), help: "Training data: text, or .jsonl with text, prompt/completion or messages.")
    var trainData: String
    @Option(name: .customLong("val-data"), help: "Validation data (same formats).")
    var valData: String?
    @Option(name: .customLong("data-format"), help: "text, jsonl-text, completion or chat (default: detected).")
    var dataFormat: String?
    @Option(name: .customLong("chat-template"), help: "Chat format family (chatml, llama2, llama3, mistral, zephyr, phi3, gemma) instead of the model's template.")
    var chatTemplate: String?
    @Flag(name: .customLong("train-on-prompt"), help: "Learn prompt and user tokens too (default: only completions / assistant turns).")
    var trainOnPrompt = false
    @Option(name: .customLong("lora-in"), help: "Continue training this adapter (llama.cpp GGUF, PEFT directory, or a 2023 finetune file): its rank, alpha and targets are used.")
    var loraIn: String?
    @OptionGroup(title: "Frozen adapters applied under the one trained") var frozen: AdapterOptions
    @Option(name: .customLong("lora-out"), help: "Adapter output (llama.cpp GGUF); ITERATION in the name gives one file per save plus LATEST.")
    var loraOut = "lora.gguf"
    @Option(name: .customLong("checkpoint-in"), help: "Resume from this checkpoint when it exists.")
    var checkpointIn: String?
    @Option(name: .customLong("checkpoint-out"), help: "Checkpoint output (default: <lora-out>.checkpoint.gguf).")
    var checkpointOut: String?
    @Option(name: .customLong("save-every"), parsing: .unconditional, help: "Save checkpoint and adapter every N steps (0: only at the end).")
    var saveEvery = 10
    @Option(name: .customLong("pattern-fn-it"), help: "Text in output names replaced by the step number.")
    var patternFnIt = "ITERATION"
    @Option(name: .customLong("fn-latest"), help: "Replacement for the pattern in the copy of the latest save.")
    var fnLatest = "LATEST"
    @Flag(name: .customLong("only-write-lora"), help: "Do not train: write the adapter of --checkpoint-in (or a fresh one) and exit.")
    var onlyWriteLora = false
    @Option(name: [.customShort("s"), .long], parsing: .unconditional, help: "Random seed (-1: from the clock).")
    var seed: Int64 = -1

    // LoRA
    @Option(name: [.customLong("lora-r"), .customLong("rank")], parsing: .unconditional, help: "Rank of every adapted weight.")
    var loraR = 8
    @Option(name: [.customLong("lora-alpha"), .customLong("alpha")], parsing: .unconditional, help: "LoRA alpha: the update is scaled by alpha/r.")
    var loraAlpha: Float = 16
    @Flag(name: .customLong("rslora"), help: "Rank-stabilized LoRA: scale alpha/√r.")
    var rsLoRA = false
    @Option(name: .customLong("targets"), help: "Adapted weights: q,k,v,o,gate,up,down (default), output, embed.")
    var targets = "q,k,v,o,gate,up,down"
    @Option(name: .customLong("rank-wq"), parsing: .unconditional) var rankWq: Int?
    @Option(name: .customLong("rank-wk"), parsing: .unconditional) var rankWk: Int?
    @Option(name: .customLong("rank-wv"), parsing: .unconditional) var rankWv: Int?
    @Option(name: .customLong("rank-wo"), parsing: .unconditional) var rankWo: Int?
    @Option(name: .customLong("rank-w1"), parsing: .unconditional, help: "Rank of ffn_gate.") var rankW1: Int?
    @Option(name: .customLong("rank-w2"), parsing: .unconditional, help: "Rank of ffn_down.") var rankW2: Int?
    @Option(name: .customLong("rank-w3"), parsing: .unconditional, help: "Rank of ffn_up.") var rankW3: Int?
    @Option(name: .customLong("rank-out"), parsing: .unconditional, help: "Adapt the output head with this rank.") var rankOut: Int?
    @Option(name: .customLong("rank-tok-embd"), parsing: .unconditional, help: "Adapt the token embeddings with this rank.") var rankTokEmbd: Int?
    @Option(name: .customLong("rank-att-norm"), parsing: .unconditional, help: "Not supported: norm deltas cannot be expressed in adapters.") var rankAttNorm: Int?
    @Option(name: .customLong("rank-ffn-norm"), parsing: .unconditional, help: "Not supported (see --rank-att-norm).") var rankFfnNorm: Int?
    @Option(name: .customLong("rank-out-norm"), parsing: .unconditional, help: "Not supported (see --rank-att-norm).") var rankOutNorm: Int?

    // Data
    @Option(name: [.customShort("c"), .customLong("ctx")], parsing: .unconditional, help: "Tokens per row.") var ctx = 256
    @Option(name: [.customShort("b"), .customLong("batch")], parsing: .unconditional, help: "Rows per micro-batch.") var batch = 4
    @Option(name: .customLong("sample-start"), help: "Text marking the start of each sample in plain-text data.") var sampleStart: String?
    @Flag(name: .customLong("include-sample-start"), help: "Keep the sample-start text in the samples.") var includeSampleStart = false
    @Flag(name: .customLong("escape"), help: "Process \\n \\r \\t \\' \\\" \\\\ in --sample-start.") var escape = false
    @Flag(name: [.customLong("fill-with-next-samples"), .customLong("pack")], help: "Fill each row with following samples instead of padding.") var fill = false
    @Flag(name: .customLong("separate-with-eos"), inversion: .prefixedNo, help: "Put EOS between packed samples.") var separateWithEos = false
    @Flag(name: .customLong("separate-with-bos"), inversion: .prefixedNo, help: "Put BOS between packed samples.") var separateWithBos = true
    @Flag(name: .customLong("sample-random-offsets"), help: "Start each sample at a random offset.") var sampleRandomOffsets = false
    @Flag(name: .customLong("overlapping-samples"), help: "Let samples run past the next --sample-start (up to a full row).") var overlappingSamples = false
    @Flag(name: .customLong("force-reshuffle"), help: "Start a new shuffle instead of the checkpoint's.") var forceReshuffle = false
    @Option(name: .customLong("epochs"), parsing: .unconditional, help: "Stop after this many passes over the data (≤ 0: no limit).") var epochs = -1
    @Flag(name: .customLong("inspect-data"), help: "Show the first samples with learned tokens marked, then exit.") var inspectData = false
    @Option(name: .customLong("dry-run"), parsing: .unconditional, help: ArgumentHelp("Run N steps, print the measured speed and the whole run's time, write nothing.", valueName: "N")) var dryRun: Int?

    // Optimizer and schedule
    @Option(name: [.customLong("adam-iter"), .customLong("iters")], parsing: .unconditional, help: "Optimizer steps in this run.") var adamIter = 100
    @Option(name: [.customLong("adam-alpha"), .customLong("lr")], parsing: .unconditional, help: "Learning rate.") var adamAlpha: Float = 2e-4
    @Option(name: .customLong("adam-min-alpha"), parsing: .unconditional, help: "Learning-rate floor.") var adamMinAlpha: Float = 0
    @Option(name: .customLong("adam-decay"), parsing: .unconditional, help: "AdamW weight decay (multiplied by the learning rate).") var adamDecay: Float = 0.1
    @Option(name: .customLong("adam-decay-min-ndim"), parsing: .unconditional, help: "Decay only tensors with at least this many dimensions.") var adamDecayMinNdim = 2
    @Option(name: .customLong("adam-beta1"), parsing: .unconditional) var adamBeta1: Float = 0.9
    @Option(name: .customLong("adam-beta2"), parsing: .unconditional) var adamBeta2: Float = 0.999
    @Option(name: .customLong("adam-gclip"), parsing: .unconditional, help: "Clip the global gradient norm to this (≤ 0: off).") var adamGclip: Float = 1
    @Option(name: .customLong("adam-epsf"), parsing: .unconditional, help: "Stop when the relative loss change falls below this (≤ 0: off).") var adamEpsf: Float = 0
    @Option(name: .customLong("opt-past"), parsing: .unconditional, help: "Stop when the loss changed by less than --opt-delta (relative) over this many steps (0: off).") var optPast = 0
    @Option(name: .customLong("opt-delta"), parsing: .unconditional, help: "Threshold of the --opt-past test.") var optDelta: Float = 1e-5
    @Option(name: .customLong("opt-max-no-improvement"), parsing: .unconditional, help: "Stop after N steps without a new best loss (0: off).") var optMaxNoImprovement = 0
    @Option(name: .customLong("grad-acc"), parsing: .unconditional, help: "Micro-batches accumulated per step.") var gradAcc = 1
    @Option(name: .customLong("warmup"), parsing: .unconditional, help: "Linear warm-up steps (default: min(100, iters/10)).") var warmup: Int?
    @Option(name: .customLong("cos-decay-steps"), parsing: .unconditional, help: "Cosine decay length (default: the iterations).") var cosDecaySteps: Int?
    @Option(name: .customLong("cos-decay-restart"), parsing: .unconditional, help: "Decay length multiplier after each restart.") var cosDecayRestart: Float = 1.1
    @Option(name: .customLong("cos-decay-min"), parsing: .unconditional, help: "Cosine floor (fraction of the learning rate).") var cosDecayMin: Float = 0.1
    @Flag(name: .customLong("enable-restart"), inversion: .prefixedEnableDisable, help: "Cosine restarts.") var enableRestart = false

    // Validation and records
    @Option(name: .customLong("val-every"), parsing: .unconditional, help: "Evaluate the validation data every N steps (and at the end).") var valEvery = 0
    @Flag(name: .customLong("keep-best"), help: "Also write <lora-out>.best.gguf with the lowest validation loss.") var keepBest = false
    @Option(name: .customLong("early-stop"), parsing: .unconditional, help: "Stop after K evaluations without improvement.") var earlyStop = 0
    @Option(name: .customLong("metrics"), help: "Write one JSON object per step and validation to this file.") var metrics: String?
    @Option(name: .customLong("plot"), help: "Draw the loss curves to this SVG file.") var plot: String?

    // Performance and model overrides
    @Option(name: [.customShort("t"), .long], parsing: .unconditional, help: "Threads (default: all cores).") var threads: Int?
    @Flag(name: .customLong("use-checkpointing"), inversion: .prefixedNo, help: "Gradient checkpointing (default: on when activations would exceed 1 GiB).") var useCheckpointing: Bool?
    @Flag(name: .customLong("cache-weights"), help: "Keep all weights dequantized (faster, more memory).") var cacheWeights = false
    @Option(name: .customLong("precision"), help: "Frozen-weight products: fp32, bf16 (on AVX512-BF16/AMX CPUs; float32 elsewhere, said in the plan) or auto (bf16 where it is faster).") var precision: ProductPrecision = .fp32
    @Option(name: .customLong("norm-rms-eps"), parsing: .unconditional, help: "Override the RMS-norm epsilon.") var normRmsEps: Float?
    @Option(name: .customLong("rope-freq-base"), parsing: .unconditional, help: "Override the RoPE base.") var ropeFreqBase: Float?
    @Option(name: .customLong("rope-freq-scale"), parsing: .unconditional, help: "Override the RoPE frequency scale.") var ropeFreqScale: Float?

    func validate() throws {
        for (name, v) in [("--rank-att-norm", rankAttNorm), ("--rank-ffn-norm", rankFfnNorm), ("--rank-out-norm", rankOutNorm)] where v != nil {
            throw ValidationError("\(name): norm weights are not adapted (llama.cpp and PEFT adapters cannot carry norm deltas)")
        }
        for (name, value, least) in [("--ctx", ctx, 2), ("--batch", batch, 1), ("--grad-acc", gradAcc, 1), ("--lora-r", loraR, 1),
                                     ("--adam-iter", adamIter, 0)] where value < least {
            throw ValidationError("\(name) must be at least \(least) (got \(value))")
        }
        if !(adamAlpha.isFinite && adamAlpha >= 0) { throw ValidationError("--adam-alpha must be a finite, non-negative number") }
        if let f = dataFormat, DataFormat(rawValue: f) == nil {
            throw ValidationError("--data-format: '\(f)' is not one of \(DataFormat.allCases.map(\.rawValue).joined(separator: ", "))")
        }
        for t in targets.split(separator: ",") where LoRATarget(shortName: String(t)) == nil {
            throw ValidationError("--targets: unknown target '\(t)' (q, k, v, o, gate, up, down, output, embed)")
        }
        do { try configuration.validate() } catch { throw ValidationError(String(describing: error)) }
        if loraIn != nil {
            // The adapter decides these; a different value on the command line would be silently ignored.
            let decided = ["--lora-r", "--rank", "--lora-alpha", "--alpha", "--targets", "--rslora", "--rank-wq", "--rank-wk",
                           "--rank-wv", "--rank-wo", "--rank-w1", "--rank-w2", "--rank-w3", "--rank-out", "--rank-tok-embd"]
            let given = LoRAKitCommand.normalizedArguments(Array(CommandLine.arguments.dropFirst())).compactMap { arg in
                decided.first { arg == $0 || arg.hasPrefix($0 + "=") }
            }
            if let option = given.first {
                throw ValidationError("--lora-in takes the rank, alpha and targets from the adapter; drop \(option)")
            }
        }
    }

    var configuration: TrainingConfiguration {
        var c = TrainingConfiguration(model: model, trainData: trainData, adapterOut: loraOut)
        c.validationData = valData
        c.adapterIn = loraIn
        c.frozenAdapters = frozen.list.map { (path: $0.path, multiplier: $0.scale) }
        c.dataFormat = dataFormat.flatMap(DataFormat.init(rawValue:))
        c.chatTemplate = chatTemplate
        c.trainOnPrompt = trainOnPrompt
        c.sampling.sampleStart = sampleStart
        c.sampling.includeSampleStart = includeSampleStart
        c.sampling.escape = escape
        c.sampling.fillWithNextSamples = fill
        c.sampling.separateWithEOS = separateWithEos
        c.sampling.separateWithBOS = separateWithBos
        c.sampling.randomOffsets = sampleRandomOffsets
        c.sampling.overlapping = overlappingSamples
        c.past = optPast
        c.pastDelta = optDelta
        c.context = ctx
        c.batch = batch
        c.iterations = adamIter
        c.gradientAccumulation = gradAcc
        c.epochs = epochs > 0 ? epochs : nil
        var list = targets.split(separator: ",").compactMap { LoRATarget(shortName: String($0)) }
        if rankOut != nil && !list.contains(.output) { list.append(.output) }
        if rankTokEmbd != nil && !list.contains(.tokenEmbedding) { list.append(.tokenEmbedding) }
        c.targets = list
        c.rank = loraR
        let perTarget: [(LoRATarget, Int?)] = [(.attnQ, rankWq), (.attnK, rankWk), (.attnV, rankWv), (.attnOutput, rankWo),
                                               (.ffnGate, rankW1), (.ffnDown, rankW2), (.ffnUp, rankW3),
                                               (.output, rankOut), (.tokenEmbedding, rankTokEmbd)]
        for (t, r) in perTarget { if let r { c.ranks[t] = r } }
        c.alpha = loraAlpha
        c.rsLoRA = rsLoRA
        c.adam.learningRate = adamAlpha
        c.adam.minLearningRate = adamMinAlpha
        c.adam.weightDecay = adamDecay
        c.adam.decayMinDimensions = adamDecayMinNdim
        c.adam.beta1 = adamBeta1
        c.adam.beta2 = adamBeta2
        c.adam.gradientClip = adamGclip
        c.relativeLossTolerance = adamEpsf
        c.maxNoImprovement = optMaxNoImprovement
        c.warmup = warmup
        c.cosineDecaySteps = cosDecaySteps
        c.cosineDecayMin = cosDecayMin
        c.cosineDecayRestart = cosDecayRestart
        c.restarts = enableRestart
        c.seed = seed < 0 ? UInt64(Date().timeIntervalSince1970) : UInt64(seed)
        c.threads = threads ?? CLI.coreCount
        c.gradientCheckpointing = useCheckpointing
        c.cacheWeights = cacheWeights
        c.precision = precision
        c.checkpointIn = checkpointIn
        c.checkpointOut = checkpointOut ?? (loraOut.hasSuffix(".gguf") ? String(loraOut.dropLast(5)) : loraOut) + ".checkpoint.gguf"
        c.saveEvery = saveEvery
        c.iterationPattern = patternFnIt
        c.latestName = fnLatest
        c.onlyWriteAdapter = onlyWriteLora
        c.validationEvery = valEvery
        c.keepBest = keepBest
        c.earlyStop = earlyStop
        c.forceReshuffle = forceReshuffle
        c.overrides = (normRmsEps, ropeFreqBase, ropeFreqScale)
        return c
    }

    func run() throws {
        let config = configuration
        if !inspectData && dryRun == nil {
            // Metrics and plot are the command's own outputs: checked with the run's before any training.
            var (outputs, inputs) = config.files
            if let metrics { outputs.append(OutputGuard.File("--metrics", metrics)) }
            if let plot { outputs.append(OutputGuard.File("--plot", plot)) }
            do { try OutputGuard.check(outputs: outputs, inputs: inputs) } catch { throw CLIError(String(describing: error)) }
        }
        if inspectData {
            try TrainingReport.inspect(config)
            return
        }
        if let n = dryRun {
            guard n >= 1 else { throw ValidationError("--dry-run needs at least 1 step") }
            try measure(config, steps: n)
            return
        }
        // The first Ctrl-C (or SIGTERM) stops within a layer and saves the last completed step; a second one exits
        // at once, writing nothing (the files of the last save stay as they were).
        let onSignal: @convention(c) (Int32) -> Void = { _ in
            if stopRequested != 0 { _exit(130) }
            stopRequested = 1
        }
        signal(SIGINT, onSignal)
        signal(SIGTERM, onSignal)
        do {
            let trainer = Trainer(configuration: config)
            trainer.isCancelled = { stopRequested != 0 }
            // Under mpirun every process is one rank; rank 0 alone prints and writes.
            if MPICommunicator.isLaunchedByMPI { trainer.communicator = try MPICommunicator() }
            let isRankZero = (trainer.communicator?.rank ?? 0) == 0
            var renderer = TrainingReport(metricsPath: isRankZero ? metrics : nil, plotPath: isRankZero ? plot : nil, config: config)
            let summary = try trainer.run { event in
                if isRankZero { renderer.render(event) }
                return stopRequested == 0
            }
            guard isRankZero else {
                if stopRequested != 0 { throw ExitCode(130) }
                return
            }
            try renderer.finish()
            if stopRequested != 0 {
                print("stopped by signal after \(summary.steps) step(s); resume with:\n  \(resumeCommand(config))")
                throw ExitCode(130)
            }
        } catch let e as ValidationError { throw e } catch let e as ExitCode { throw e } catch { throw CLIError(String(describing: error)) }
    }

    /// This command again, reading the checkpoint it saved (and the seed it used): it finishes the planned run.
    func resumeCommand(_ config: TrainingConfiguration) -> String {
        var args = Array(CommandLine.arguments.dropFirst())
        for option in ["--checkpoint-in", "--seed", "-s"] {
            while let i = args.firstIndex(where: { $0 == option || $0.hasPrefix(option + "=") }) {
                args.removeSubrange(i..<min(args.count, args[i].contains("=") ? i + 1 : i + 2))
            }
        }
        args += ["--seed", String(config.seed), "--checkpoint-in", config.checkpointOut ?? ""]
        let quoted = args.map { arg -> String in
            arg.allSatisfy({ $0.isLetter || $0.isNumber || "-_./=,:+@".contains($0) }) ? arg : "'" + arg.replacingOccurrences(of: "'", with: "'\\''") + "'"
        }
        return ([CommandLine.arguments.first ?? "lorakit"] + quoted).joined(separator: " ")
    }

    /// --dry-run: the plan and `steps` real steps (validation included when due), nothing written; then the time of
    /// the whole run from the measured steps (the first, which warms caches, left out when there are more).
    func measure(_ config: TrainingConfiguration, steps: Int) throws {
        var c = config
        c.writeFiles = false
        var renderer = TrainingReport(metricsPath: nil, plotPath: nil, config: c)
        var times: [Double] = []
        var last = 0.0
        do {
            _ = try Trainer(configuration: c).run { event in
                renderer.render(event)
                if case let .step(s) = event {
                    times.append(s.elapsed - last)
                    last = s.elapsed
                }
                return times.count < steps
            }
        } catch let e as ValidationError { throw e } catch { throw CLIError(String(describing: error)) }
        let measured = times.count > 1 ? Array(times.dropFirst()) : times
        guard !measured.isEmpty else { return }
        let perStep = measured.reduce(0, +) / Double(measured.count)
        let tokens = Double(c.batch * c.context * c.gradientAccumulation)
        print(String(format: "dry run: %.2f s/step (%.0f tokens/s) over %d step(s); %d steps would take about %@; nothing was written",
                     perStep, tokens / perStep, measured.count, c.iterations, TrainingReport.duration(perStep * Double(c.iterations))))
    }
}
