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

/// LoRA fine-tuning as a library call: events go to a callback that can stop the run; nothing is printed.
public final class Trainer {
    public let configuration: TrainingConfiguration
    public init(configuration: TrainingConfiguration) { self.configuration = configuration }

    public func run(_ report: (TrainingEvent) -> Bool) throws -> TrainingSummary {
        let c = configuration
        guard c.context >= 2, c.batch >= 1, c.iterations >= 0, c.gradientAccumulation >= 1, c.rank >= 1 else {
            throw TrainingError.invalid("context ≥ 2, batch ≥ 1, iterations ≥ 0, grad-acc ≥ 1 and rank ≥ 1 are required")
        }
        if let t = c.threads { BLAS.setThreads(t) }
        let file = try GGUFFile(path: c.model)
        let model = try LlamaModel<Float>(file: file, cacheWeights: c.cacheWeights)
        model.override(rmsEpsilon: c.overrides.rmsEpsilon, ropeBase: c.overrides.ropeBase,
                       ropeScale: c.overrides.ropeScale.map { 1 / $0 })
        let tokenizer = try Tokenizer(file: file)
        let template: ChatTemplate? = try? tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue,
                                                                  override: c.chatTemplate)
        if c.chatTemplate != nil { _ = try tokenizer.chatTemplate(templateText: nil, override: c.chatTemplate) }

        var warnings: [String] = []
        func load(_ path: String) throws -> TokenStream {
            let format = try c.dataFormat ?? (path.hasSuffix(".jsonl") ? JSONLReader.detectFormat(path: path) : .text)
            if format == .text {
                guard let data = FileManager.default.contents(atPath: path) else { throw DataError.unreadable(path: path) }
                guard !data.isEmpty else { throw DataError.empty(path: path, reason: "the file is empty") }
                return TokenStream(text: Array(data), tokenizer: tokenizer, options: c.sampling, context: c.context)
            }
            let reader = JSONLReader(tokenizer: tokenizer, chatTemplate: template, trainOnPrompt: c.trainOnPrompt)
            let stream = TokenStream(examples: try reader.read(path: path, format: format))
            // A mask that hides everything trains nothing; one that hides nothing in prompt/chat data is suspicious.
            let trained = stream.trained.filter { $0 }.count
            if trained == 0 {
                throw DataError.empty(path: path, reason: "no token is learned: every token is prompt (no completions or "
                                      + "assistant messages?); --train-on-prompt learns them all")
            }
            if (format == .completion || format == .chat) && !c.trainOnPrompt && trained == stream.trained.count {
                warnings.append("\(path): every token is learned, although only completions or assistant messages should be")
            }
            return stream
        }
        let trainStream = try load(c.trainData)
        guard trainStream.tokens.count >= 2, trainStream.sampleCount > 0 else {
            throw DataError.empty(path: c.trainData, reason: "no samples (fewer than 2 tokens, or nothing after the --sample-start marks)")
        }
        var batcher = Batcher(stream: trainStream, length: c.context, seed: c.seed, options: c.sampling,
                              bos: tokenizer.vocabulary.bos, eos: tokenizer.vocabulary.eos)
        let validationRows = try c.validationData.map { path in
            Batcher(stream: try load(path), length: c.context, seed: 0, options: SamplingOptions(),
                    bos: tokenizer.vocabulary.bos, eos: tokenizer.vocabulary.eos).evaluationRows()
        } ?? []

        // The adapter: resumed from a checkpoint, or freshly initialized as PEFT does (B = 0).
        var startStep = 0
        var moments: [String: AdamMoments] = [:]
        var bestLoss = Float.infinity, previousLoss = Float.nan, noImprovement = 0, tokensSeen = 0
        let adapter: LoRAAdapter<Float>
        if let path = c.checkpointIn, FileManager.default.fileExists(atPath: path) {
            let cp = try Checkpoint.read(path: path)
            adapter = cp.adapter
            try model.validate(adapter, source: path)
            let expected = try initialAdapter(model)
            guard Set(expected.order) == Set(adapter.order),
                  expected.order.allSatisfy({ expected[$0]!.rank == adapter[$0]!.rank }), cp.alpha == c.alpha, cp.rsLoRA == c.rsLoRA else {
                throw TrainingError.invalid("\(path): the checkpoint's targets, ranks or alpha differ from this run's options")
            }
            moments = cp.moments
            startStep = cp.iteration
            batcher.state = c.forceReshuffle ? Batcher.State(epoch: cp.batcher.epoch + 1, cursor: 0) : cp.batcher
            bestLoss = cp.bestLoss
            previousLoss = cp.previousLoss
            noImprovement = cp.noImprovement
            tokensSeen = cp.tokensSeen
        } else {
            adapter = try initialAdapter(model)
        }
        try model.attach(adapter, trainable: true, source: "training adapter")

        let rowsPerStep = c.batch * c.gradientAccumulation
        // Kept per layer: input, q, k, v, gate, up (see LayerCache); the layer in flight also holds its normalized
        // inputs, residual, attention output and probabilities, SwiGLU output and their gradients.
        let mc = model.config, tokens = c.batch * c.context
        let layerBytes = 4 * tokens * (mc.embedding + mc.qDim + 2 * mc.kvDim + 2 * mc.feedForward)
        let workingBytes = 4 * (tokens * (3 * mc.embedding + mc.qDim + 3 * mc.feedForward) + c.batch * mc.heads * c.context * c.context)
        let headBytes = mc.vocabulary * mc.embedding * 4
        // Weights are dequantized one layer at a time, or all kept with --cache-weights.
        let dequantizedBytes = c.cacheWeights ? file.parameterCount * 4 : (file.parameterCount - mc.vocabulary * mc.embedding) / mc.layers * 4
        func memory(checkpointing: Bool) -> [(String, Int)] {
            [("weights (mapped file) + dequantized head and layer", file.fileSize + headBytes + dequantizedBytes),
             ("activations", workingBytes + (checkpointing ? layerBytes + 4 * tokens * mc.embedding * mc.layers
                                                           : layerBytes * mc.layers)),
             ("LoRA, gradients, AdamW moments", adapter.parameterCount * 16)]
        }
        let limit = c.memoryLimit ?? Trainer.availableMemory()
        let total = { (parts: [(String, Int)]) in parts.reduce(0) { $0 + $1.1 } }
        let checkpointing = c.gradientCheckpointing
            ?? (layerBytes * mc.layers > 1 << 30 || total(memory(checkpointing: false)) > limit / 10 * 8)
        model.gradientCheckpointing = checkpointing
        let plan = TrainingPlan(
            trainableParameters: adapter.parameterCount, tokensPerStep: rowsPerStep * c.context, steps: c.iterations,
            startStep: startStep, samples: trainStream.sampleCount, validationRows: validationRows.count,
            gradientCheckpointing: checkpointing, memory: memory(checkpointing: checkpointing))
        guard report(.plan(plan)) else { return TrainingSummary(steps: 0, adapterPath: c.adapterOut) }
        if total(plan.memory) > limit {
            throw TrainingError.invalid(String(format: "the plan needs about %.1f GB, more than the %.1f GB of memory here; "
                + "try %@a smaller --batch or --ctx, a lower rank or fewer --targets", Double(total(plan.memory)) / 1e9,
                Double(limit) / 1e9, checkpointing ? "" : "--use-checkpointing, "))
        }
        for warning in warnings { _ = report(.warning(warning)) }

        let schedule = LearningSchedule(warmup: c.warmup ?? min(100, c.iterations / 10),
                                        cosineDecaySteps: c.cosineDecaySteps ?? max(1, c.iterations),
                                        cosineDecayMin: c.cosineDecayMin, cosineDecayRestart: c.cosineDecayRestart,
                                        restarts: c.restarts)
        func save(step: Int) throws {
            guard c.writeFiles else { return }
            try writeAdapter(adapter, model: model, file: file, path: c.adapterOut, step: step)
            guard let out = c.checkpointOut else { return }
            let cp = Checkpoint(adapter: adapter, moments: moments, iteration: step, batcher: batcher.state, seed: c.seed,
                                alpha: c.alpha, rsLoRA: c.rsLoRA, tokensSeen: tokensSeen, bestLoss: bestLoss,
                                previousLoss: previousLoss, noImprovement: noImprovement)
            for path in Trainer.outputNames(out, step: step, pattern: c.iterationPattern, latest: c.latestName) {
                try cp.write(to: path)
                _ = report(.saved(kind: "checkpoint", path: path))
            }
        }
        if c.onlyWriteAdapter {
            try writeAdapter(adapter, model: model, file: file, path: c.adapterOut, step: startStep)
            _ = report(.saved(kind: "adapter", path: c.adapterOut))
            return TrainingSummary(steps: 0, adapterPath: c.adapterOut)
        }

        func validate(step: Int) throws -> Double? {
            guard !validationRows.isEmpty else { return nil }
            var sum = 0.0, count = 0
            for start in stride(from: 0, to: validationRows.count, by: c.batch) {
                let rows = validationRows[start..<min(validationRows.count, start + c.batch)]
                let (s, n) = try model.loss(tokens: rows.flatMap(\.tokens), targets: rows.flatMap(\.targets), batch: rows.count)
                sum += s
                count += n
            }
            return count > 0 ? sum / Double(count) : nil
        }

        var bestValidation = Double.infinity, evaluationsWithoutImprovement = 0
        var pastLosses: [Double] = []
        var lastLoss: Double?
        var stopReason: String?
        let started = Date()
        var step = startStep
        let firstEpoch = batcher.state.epoch
        if startStep == 0, let v = try validate(step: 0) {
            bestValidation = v
            _ = report(.validation(step: 0, loss: v, best: false))
        }
        while step < startStep + c.iterations {
            if let epochs = c.epochs, epochs > 0, batcher.state.epoch - firstEpoch >= epochs {
                stopReason = "reached \(epochs) epoch(s)"
                break
            }
            let stepStart = Date()
            // Build the whole step first: the loss is normalized by the scored tokens of all its micro-batches.
            let micro = (0..<c.gradientAccumulation).map { _ in batcher.next(rows: c.batch) }
            let scored = micro.reduce(0) { $0 + $1.targets.filter { $0 >= 0 }.count }
            adapter.zeroGradients()
            var lossSum = 0.0
            let computeStart = Date()
            for mb in micro where scored > 0 {
                lossSum += try model.forwardBackward(tokens: mb.tokens, targets: mb.targets, batch: c.batch,
                                                     lossScale: 1 / Float(scored)).sum
            }
            let loss = scored > 0 ? lossSum / Double(scored) : 0
            let computeSeconds = Date().timeIntervalSince(computeStart)
            step += 1
            guard loss.isFinite else { throw TrainingError.nonFinite(step: step, what: "the loss") }
            for name in adapter.order {
                let p = adapter[name]!
                if !p.gradA.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the gradient of \(name).lora_a") }
                if !p.gradB.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the gradient of \(name).lora_b") }
            }
            let gnorm = AdamW.gradientNorm(adapter.order.flatMap { [adapter[$0]!.gradA, adapter[$0]!.gradB] })
            let clip: Float = c.adam.gradientClip > 0 && gnorm > Double(c.adam.gradientClip) ? c.adam.gradientClip / Float(gnorm) : 1
            let sched = schedule.factor(step: step, minFraction: c.adam.learningRate > 0 ? c.adam.minLearningRate / c.adam.learningRate : 0)
            for name in adapter.order {
                let p = adapter[name]!
                var m = moments[name] ?? AdamMoments(count: p.parameterCount)
                var params = p.a + p.b
                AdamW.update(params: &params, grads: p.gradA + p.gradB, moments: &m, options: c.adam, step: step,
                             schedule: sched, clipFactor: clip, decays: 2 >= c.adam.decayMinDimensions)
                if !params.allSatisfy({ $0.isFinite }) { throw TrainingError.nonFinite(step: step, what: "the update of \(name)") }
                p.a = Array(params[0..<p.a.count])
                p.b = Array(params[p.a.count...])
                moments[name] = m
            }
            tokensSeen += scored
            let elapsed = Date().timeIntervalSince(started)
            let perStep = elapsed / Double(step - startStep)
            let keepGoing = report(.step(StepReport(
                step: step, loss: loss, learningRate: c.adam.learningRate * sched, gradientNorm: gnorm,
                tokensPerSecond: Double(rowsPerStep * c.context) / Date().timeIntervalSince(stepStart), elapsed: elapsed,
                eta: perStep * Double(startStep + c.iterations - step), scoredTokens: scored, epoch: batcher.state.epoch,
                overhead: max(0, 1 - computeSeconds / Date().timeIntervalSince(stepStart)))))
            // Convergence tests of the finetune.
            if c.relativeLossTolerance > 0, let last = lastLoss, abs(last - loss) / max(loss, 1e-12) < Double(c.relativeLossTolerance) {
                stopReason = "loss changed by less than --adam-epsf"
            }
            if Float(loss) < bestLoss { bestLoss = Float(loss); noImprovement = 0 } else { noImprovement += 1 }
            if c.maxNoImprovement > 0 && noImprovement >= c.maxNoImprovement { stopReason = "no improvement for \(noImprovement) steps" }
            if c.past > 0 {
                if pastLosses.count >= c.past, abs(pastLosses[pastLosses.count - c.past] - loss) / max(loss, 1e-12) < Double(c.pastDelta) {
                    stopReason = "loss changed by less than --opt-delta over --opt-past steps"
                }
                pastLosses.append(loss)
            }
            previousLoss = Float(loss)
            lastLoss = loss
            if c.validationEvery > 0 && step % c.validationEvery == 0 && step < startStep + c.iterations, let v = try validate(step: step) {
                let isBest = v < bestValidation
                if isBest {
                    bestValidation = v
                    evaluationsWithoutImprovement = 0
                    if c.keepBest && c.writeFiles { try writeBest(adapter, model: model, file: file) }
                } else {
                    evaluationsWithoutImprovement += 1
                }
                _ = report(.validation(step: step, loss: v, best: isBest))
                if c.earlyStop > 0 && evaluationsWithoutImprovement >= c.earlyStop {
                    stopReason = "validation loss did not improve for \(c.earlyStop) evaluations"
                }
            }
            if c.saveEvery > 0 && step % c.saveEvery == 0 { try save(step: step) }
            if !keepGoing { stopReason = "stopped on request"; break }
            if stopReason != nil { break }
        }
        if let v = try validate(step: step) {
            let isBest = v < bestValidation
            if isBest { bestValidation = v; if c.keepBest && c.writeFiles { try writeBest(adapter, model: model, file: file) } }
            _ = report(.validation(step: step, loss: v, best: isBest))
        }
        if !(c.saveEvery > 0 && step % c.saveEvery == 0 && step > startStep) || stopReason != nil {
            try save(step: step)
        }
        if c.writeFiles { _ = report(.saved(kind: "adapter", path: c.adapterOut)) }
        if batcher.truncated > 0 { _ = report(.warning("\(batcher.truncated) samples were longer than --ctx and were cut")) }
        let summary = TrainingSummary(steps: step - startStep, finalLoss: lastLoss,
                                      bestValidationLoss: bestValidation.isFinite ? bestValidation : nil,
                                      stoppedEarly: stopReason, adapterPath: c.adapterOut)
        _ = report(.finished(summary))
        return summary
    }

    func initialAdapter(_ model: LlamaModel<Float>) throws -> LoRAAdapter<Float> {
        let c = configuration
        return try LoRAAdapter<Float>.initialized(
            layers: model.config.layers,
            shapes: { model.config.features(of: $0) },
            targets: c.targets, rank: { c.ranks[$0] ?? c.rank }, alpha: c.alpha, rsLoRA: c.rsLoRA, seed: c.seed)
    }

    func description(model: LlamaModel<Float>, file: GGUFFile, step: Int) -> AdapterFile.Description {
        var d = AdapterFile.Description(alpha: configuration.alpha)
        d.rsLoRA = configuration.rsLoRA
        d.baseModelName = file.metadata["general.name"]?.stringValue
        d.baseModelFingerprint = AdapterFile.fingerprint(of: file)
        d.heads = (model.config.heads, model.config.kvHeads)
        d.extra = [("training.steps", .uint32(UInt32(step))), ("training.data", .string(configuration.trainData)),
                   ("training.context", .uint32(UInt32(configuration.context)))]
        return d
    }

    /// The machine's memory, or a container's limit when lower (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`).
    static func availableMemory() -> Int {
        var limit = Int(clamping: ProcessInfo.processInfo.physicalMemory)
        for path in ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"] {
            if let text = try? String(contentsOfFile: path, encoding: .utf8),
               let bytes = Int(text.trimmingCharacters(in: .whitespacesAndNewlines)), bytes > 0 {
                limit = min(limit, bytes)  // "max" (no limit) does not parse
            }
        }
        return limit
    }

    func writeAdapter(_ adapter: LoRAAdapter<Float>, model: LlamaModel<Float>, file: GGUFFile, path: String, step: Int) throws {
        for out in Trainer.outputNames(path, step: step, pattern: configuration.iterationPattern, latest: configuration.latestName) {
            try AdapterFile.write(adapter, description: description(model: model, file: file, step: step), to: out)
        }
    }

    func writeBest(_ adapter: LoRAAdapter<Float>, model: LlamaModel<Float>, file: GGUFFile) throws {
        let path = Trainer.bestName(configuration.adapterOut)
        try AdapterFile.write(adapter, description: description(model: model, file: file, step: 0), to: path)
    }

    /// `out.gguf` → `out.best.gguf`.
    public static func bestName(_ path: String) -> String {
        path.hasSuffix(".gguf") ? String(path.dropLast(5)) + ".best.gguf" : path + ".best"
    }

    /// The files a save writes: with the pattern in the name, one with the step number and one with `latest`.
    public static func outputNames(_ path: String, step: Int, pattern: String, latest: String) -> [String] {
        guard !pattern.isEmpty, path.contains(pattern) else { return [path] }
        return [path.replacingOccurrences(of: pattern, with: String(step)), path.replacingOccurrences(of: pattern, with: latest)]
    }
}
