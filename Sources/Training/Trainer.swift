import Distributed
import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import Tokenizer

/// LoRA fine-tuning as a library call: events go to a callback that can stop the run; nothing is printed.
///
/// A run is a few named stages: `prepare` (model, data, the memory plan), `start` (the training state, fresh or from
/// a checkpoint, once the plan fits), then `step` after `step` with validation, saves and the stop rules, then the
/// final save. `iterations` counts from step 0, so resuming an interrupted run finishes the planned run.
public final class Trainer {
    public let configuration: TrainingConfiguration
    /// Asked between layers: true ends the step in flight without applying it, then the run saves the last completed
    /// step and stops (as a signal should, within a second or two even at long rows).
    public var isCancelled: () -> Bool = { false }
    /// The processes of a data-parallel run (nil: this process alone). Every rank runs the same trainer with the same
    /// options; rank r computes the micro-batches r, r + N, … of each step, gradients and losses are summed across
    /// ranks, every rank applies the same update, and only rank 0 reports steps and writes files.
    public var communicator: Communicator?
    public init(configuration: TrainingConfiguration) { self.configuration = configuration }

    var ranks: Int { communicator?.size ?? 1 }
    var rank: Int { communicator?.rank ?? 0 }
    var writes: Bool { configuration.writeFiles && rank == 0 }

    /// What `prepare` sets up for the loop.
    struct Run {
        let file: GGUFFile
        let model: LlamaModel<Float>
        var batcher: Batcher
        let validationRows: [(tokens: [Int32], targets: [Int32])]
        var state: TrainingState
        var checkpoint: Checkpoint?
        /// The adapter `--lora-in` continues (nil: a fresh one), and the alpha and rsLoRA the run writes.
        var initial: LoRAAdapter<Float>?
        var alpha: Float
        var rsLoRA: Bool
        let startStep: Int
        let plan: TrainingPlan
        let memory: MemoryPlan
        let memoryInputs: MemoryPlan.Inputs
        let warnings: [String]
    }

    public func run(_ report: (TrainingEvent) -> Bool) throws -> TrainingSummary {
        let c = configuration
        var run = try prepare()
        guard report(.plan(run.plan)) else { return TrainingSummary(steps: 0, adapterPath: c.adapterOut) }
        let limit = c.memoryLimit ?? Trainer.availableMemory()
        if run.memory.total > limit {
            throw TrainingError.invalid(String(format: "the plan needs about %.1f GB, more than the %.1f GB of memory here; try %@",
                                               Double(run.memory.total) / 1e9, Double(limit) / 1e9, memoryAdvice(run, limit: limit)))
        }
        for warning in run.warnings { _ = report(.warning(warning)) }
        try start(&run)
        if c.onlyWriteAdapter {
            guard rank == 0 else { return TrainingSummary(steps: 0, adapterPath: c.adapterOut) }
            for path in try writeAdapter(run, path: c.adapterOut, step: run.startStep) { _ = report(.saved(kind: "adapter", path: path)) }
            return TrainingSummary(steps: 0, adapterPath: c.adapterOut)
        }

        let schedule = LearningSchedule(warmup: c.warmup ?? min(100, c.iterations / 10),
                                        cosineDecaySteps: c.cosineDecaySteps ?? max(1, c.iterations),
                                        cosineDecayMin: c.cosineDecayMin, cosineDecayRestart: c.cosineDecayRestart,
                                        restarts: c.restarts)
        var rules = StopRules(c)
        var stopReason: String?
        let started = Date(), firstEpoch = run.batcher.state.epoch, lastStep = c.iterations
        if run.startStep == 0, let v = try validationLoss(run) {
            rules.bestValidation = v
            _ = report(.validation(step: 0, loss: v, best: false))
        }
        while run.state.step < lastStep {
            if let epochs = c.epochs, epochs > 0, run.batcher.state.epoch - firstEpoch >= epochs {
                stopReason = "reached \(epochs) epoch(s)"
                break
            }
            guard var stepReport = try step(&run, schedule: schedule) else {
                stopReason = "stopped on request"
                break
            }
            let elapsed = Date().timeIntervalSince(started)
            stepReport.elapsed = elapsed
            stepReport.eta = elapsed / Double(run.state.step - run.startStep) * Double(lastStep - run.state.step)
            let keepGoing = try agree(report(.step(stepReport)))
            stopReason = rules.afterStep(loss: stepReport.loss, state: &run.state)
            if c.validationEvery > 0 && run.state.step % c.validationEvery == 0 && run.state.step < lastStep,
               let v = try validationLoss(run) {
                let (best, stop) = rules.afterValidation(v)
                if best && c.keepBest && writes { try writeBest(run) }
                _ = report(.validation(step: run.state.step, loss: v, best: best))
                stopReason = stop ?? stopReason
            }
            if c.saveEvery > 0 && run.state.step % c.saveEvery == 0 { try save(run, report) }
            if !keepGoing { stopReason = "stopped on request"; break }
            if stopReason != nil { break }
        }
        if let v = try validationLoss(run) {
            let best = v < rules.bestValidation
            if best { rules.bestValidation = v; if c.keepBest && writes { try writeBest(run) } }
            _ = report(.validation(step: run.state.step, loss: v, best: best))
        }
        let savedByLastStep = c.saveEvery > 0 && run.state.step % c.saveEvery == 0 && run.state.step > run.startStep
        if !savedByLastStep || stopReason != nil { try save(run, report) }
        if run.batcher.truncated > 0 { _ = report(.warning("\(run.batcher.truncated) samples were longer than --ctx and were cut")) }
        let summary = TrainingSummary(steps: run.state.step - run.startStep, finalLoss: rules.lastLoss,
                                      bestValidationLoss: rules.bestValidation.isFinite ? rules.bestValidation : nil,
                                      stoppedEarly: stopReason, adapterPath: c.adapterOut)
        _ = report(.finished(summary))
        return summary
    }

    /// The options that would make the plan fit in `limit`, as the command line spells them.
    func memoryAdvice(_ run: Run, limit: Int) -> String {
        let c = configuration
        guard let fit = MemoryPlan.suggestion(run.memoryInputs, limit: limit) else { return "a lower rank or fewer --targets" }
        var parts: [String] = []
        if fit.checkpointing && !run.memory.gradientCheckpointing { parts.append("--use-checkpointing") }
        if fit.batch != c.batch { parts.append("--batch \(fit.batch) --grad-acc \(c.gradientAccumulation * c.batch / fit.batch)") }
        if fit.context != c.context { parts.append("--ctx \(fit.context)") }
        return parts.isEmpty ? "a lower rank or fewer --targets" : parts.joined(separator: " ") + " (which fits)"
    }

    // MARK: Stages

    /// Opens the model and data, creates or resumes the training state, and plans memory.
    func prepare() throws -> Run {
        let c = configuration
        try c.validate()
        let files = c.files
        try OutputGuard.check(outputs: files.outputs, inputs: files.inputs)
        if let t = c.threads { BLAS.setThreads(t) }
        let file = try GGUFFile(path: c.model)
        let model = try LlamaModel<Float>(file: file, cacheWeights: c.cacheWeights)
        model.override(rmsEpsilon: c.overrides.rmsEpsilon, ropeBase: c.overrides.ropeBase,
                       ropeScale: c.overrides.ropeScale.map { 1 / $0 })
        model.runContext = c.context
        let precision = c.frozenProductInputs.map(ProductPrecision.Resolution.forced)
            ?? c.precision.resolved(embedding: model.config.embedding, hidden: model.config.feedForward)
        model.frozenProductInputs = precision.inputs
        let tokenizer = try Tokenizer(file: file)
        try model.check(tokenizer: tokenizer)
        let data = try Trainer.data(c, file: file, tokenizer: tokenizer)
        let (trainStream, warnings) = try data.load(c.trainData, context: c.context)
        guard trainStream.tokens.count >= 2, trainStream.sampleCount > 0 else {
            throw DataError.empty(path: c.trainData, reason: "no samples (fewer than 2 tokens, or nothing after the --sample-start marks)")
        }
        let batcher = Batcher(stream: trainStream, length: c.context, seed: c.seed, options: c.sampling,
                              bos: tokenizer.vocabulary.bos, eos: tokenizer.vocabulary.eos)
        var validationWarnings: [String] = []
        let validationRows: [(tokens: [Int32], targets: [Int32])] = try c.validationData.map { path in
            let (stream, w) = try data.load(path, context: c.context)
            validationWarnings += w
            return Batcher(stream: stream, length: c.context, seed: 0, options: SamplingOptions(),
                           bos: tokenizer.vocabulary.bos, eos: tokenizer.vocabulary.eos).evaluationRows()
        } ?? []

        // The plan comes before any LoRA memory is allocated (a huge rank is refused, not attempted).
        let checkpoint = try c.checkpointIn.flatMap { FileManager.default.fileExists(atPath: $0) ? try Checkpoint.read(path: $0) : nil }
        let heads = PEFT.Heads(config: model.config)
        for frozen in c.frozenAdapters {
            let loaded = try AdapterLoader.load(frozen.path, heads: heads)
            try model.attach(loaded.adapter, multiplier: frozen.multiplier, source: frozen.path)
        }
        var notes: [String] = []
        if let warning = model.config.contextWarning(c.context) { notes.append(warning) }
        if let cp = checkpoint, let was = cp.frozenProducts, was != precision.inputs.rawValue, let path = c.checkpointIn {
            notes.append("\(path): trained with \(was) frozen products, continued in \(precision.inputs.rawValue) (--precision): "
                         + "the run goes on, but not bit for bit as an uninterrupted one would")
        }
        let continued = try c.adapterIn.map { path -> AdapterLoader.Loaded in
            let loaded = try AdapterLoader.load(path, heads: heads)
            try model.validate(loaded.adapter, source: path)
            if !loaded.normDeltas.isEmpty {
                notes.append("\(path): its \(loaded.normDeltas.count) norm deltas are neither trained nor written (no adapter format holds them)")
            }
            return loaded
        }
        let targets = c.adaptedTargets(model.config)
        let trainable = continued?.adapter.parameterCount ?? targets.reduce(0) { sum, target in
            let (inF, outF) = model.config.features(of: target)!, r = c.rank(of: target, in: model.config)
            return sum + r * (inF + outF) * (target.isPerLayer ? model.config.layers : 1)
        }
        // Rows are cut after their last scored position (`Batcher.cutAfterLastScored`): the plan is for the longest.
        let validationLongest = validationRows.map { Batcher.positionsUsed($0.targets[...]) }.max() ?? 1
        let rowLength = max(batcher.longestRow, validationLongest)
        let inputs = MemoryPlan.Inputs(config: model.config, fileSize: file.fileSize, parameterCount: file.parameterCount,
                                       batch: c.batch, context: rowLength, trainableParameters: trainable,
                                       cacheWeights: c.cacheWeights, bf16Weights: model.keepsBF16Weights,
                                       trainsHead: targets.contains(.output))
        let memory = MemoryPlan.choose(inputs, checkpointing: c.gradientCheckpointing,
                                       limit: c.memoryLimit ?? Trainer.availableMemory())
        model.gradientCheckpointing = memory.gradientCheckpointing
        let startStep = checkpoint?.iteration ?? 0
        let plan = TrainingPlan(
            targets: targets, trainableParameters: trainable, tokensPerStep: c.batch * c.gradientAccumulation * ranks * c.context,
            rowLength: batcher.longestRow,
            steps: max(0, c.iterations - startStep), startStep: startStep, samples: trainStream.sampleCount,
            validationRows: validationRows.count, gradientCheckpointing: memory.gradientCheckpointing, precision: precision.note,
            memory: memory.parts.map { ($0.name, $0.bytes) }, ranks: ranks,
            bytesExchangedPerStep: ranks > 1 ? 4 * trainable + 8 * 3 : 0)
        return Run(file: file, model: model, batcher: batcher, validationRows: validationRows,
                   state: TrainingState(adapter: LoRAAdapter<Float>()), checkpoint: checkpoint,
                   initial: continued?.adapter, alpha: continued?.alpha ?? c.alpha, rsLoRA: continued?.rsLoRA ?? c.rsLoRA,
                   startStep: startStep,
                   plan: plan, memory: memory, memoryInputs: inputs, warnings: notes + warnings + validationWarnings)
    }

    /// The training state: resumed from the checkpoint, or fresh (the adapter initialized as PEFT does, B = 0).
    func start(_ run: inout Run) throws {
        let c = configuration
        var state = TrainingState(adapter: try run.initial ?? initialAdapter(run.model))
        if let cp = run.checkpoint, let path = c.checkpointIn {
            try run.model.validate(cp.adapter, source: path)
            let expected = state.adapter
            guard Set(expected.order) == Set(cp.adapter.order),
                  expected.order.allSatisfy({ expected[$0]!.rank == cp.adapter[$0]!.rank }), cp.alpha == run.alpha,
                  cp.rsLoRA == run.rsLoRA else {
                throw TrainingError.invalid("\(path): the checkpoint's targets, ranks or alpha differ from this run's options")
            }
            state = TrainingState(checkpoint: cp)
            if c.forceReshuffle { state.data = Batcher.State(epoch: cp.batcher.epoch + 1, cursor: 0) }
        }
        run.batcher.state = state.data
        try run.model.attach(state.adapter, trainable: true, source: "training adapter")
        // Under MPI a step stops only where every rank agrees (a rank leaving mid-step would leave the others waiting).
        if communicator == nil { run.model.isCancelled = isCancelled }
        run.state = state
        run.checkpoint = nil
    }
    /// One optimizer step: the micro-batches' forward and backward (loss normalized by the scored tokens of the
    /// whole step, so accumulation equals a larger batch), then AdamW. nil when cancelled: nothing of the step is
    /// applied, and the data cursor stays where the step began.
    func step(_ run: inout Run, schedule: LearningSchedule) throws -> StepReport? {
        let c = configuration, start = Date()
        let cursor = run.batcher.state
        // Every rank draws the whole global step (the same batches in the same order) and computes its share.
        let micro = (0..<(c.gradientAccumulation * ranks)).map { _ in
            let mb = run.batcher.next(rows: c.batch)
            return Batcher.cutAfterLastScored(tokens: mb.tokens, targets: mb.targets, rows: c.batch)
        }
        let scored = micro.reduce(0) { $0 + $1.targets.filter { $0 >= 0 }.count }
        run.state.adapter.zeroGradients()
        var lossSum = 0.0
        let computeStart = Date()
        do {
            for (index, mb) in micro.enumerated() where scored > 0 && index % ranks == rank {
                lossSum += try run.model.forwardBackward(tokens: mb.tokens, targets: mb.targets, batch: c.batch,
                                                         lossScale: 1 / Float(scored)).sum
            }
        } catch ModelError.cancelled {
            run.batcher.state = cursor
            return nil
        }
        if let communicator { lossSum = try reduce(run.state.adapter, lossSum: lossSum, communicator) }
        let loss = scored > 0 ? lossSum / Double(scored) : 0
        let computeSeconds = Date().timeIntervalSince(computeStart)
        guard loss.isFinite else { throw TrainingError.nonFinite(step: run.state.step + 1, what: "the loss") }
        let factor = schedule.factor(step: run.state.step + 1,
                                     minFraction: c.adam.learningRate > 0 ? c.adam.minLearningRate / c.adam.learningRate : 0)
        let norm = try run.state.update(options: c.adam, schedule: factor)
        run.state.data = run.batcher.state
        run.state.tokensSeen += scored
        let seconds = Date().timeIntervalSince(start)
        return StepReport(step: run.state.step, loss: loss, learningRate: c.adam.learningRate * factor, gradientNorm: norm,
                          tokensPerSecond: Double(micro.reduce(0) { $0 + $1.tokens.count }) / seconds, elapsed: 0,
                          eta: 0, scoredTokens: scored, epoch: run.batcher.state.epoch,
                          overhead: max(0, 1 - computeSeconds / seconds))
    }

    /// Mean loss over the validation rows (nil without validation data, or when cancelled; under MPI every rank
    /// takes part, since the others wait for its sums).
    func validationLoss(_ run: Run) throws -> Double? {
        guard !run.validationRows.isEmpty, communicator != nil || !isCancelled() else { return nil }
        let rows = run.validationRows, batch = configuration.batch
        var sum = 0.0, count = 0
        // Rank r scores the batches r, r + N, …; the sums are added across ranks.
        for start in stride(from: rank * batch, to: rows.count, by: batch * ranks) {
            let part = rows[start..<min(rows.count, start + batch)]
            let cut = Batcher.cutAfterLastScored(tokens: part.flatMap(\.tokens), targets: part.flatMap(\.targets), rows: part.count)
            let (s, n): (Double, Int)
            do { (s, n) = try run.model.loss(tokens: cut.tokens, targets: cut.targets, batch: part.count) }
            catch ModelError.cancelled { return nil }
            sum += s
            count += n
        }
        if let communicator {
            var totals = [sum, Double(count)]
            try communicator.sum(&totals)
            (sum, count) = (totals[0], Int(totals[1]))
        }
        return count > 0 ? sum / Double(count) : nil
    }

    /// Sums every rank's LoRA gradients (one exchange of one buffer) and loss; returns the summed loss.
    func reduce(_ adapter: LoRAAdapter<Float>, lossSum: Double, _ communicator: Communicator) throws -> Double {
        var buffer = [Float]()
        buffer.reserveCapacity(adapter.parameterCount)
        for name in adapter.order { buffer += adapter[name]!.gradA; buffer += adapter[name]!.gradB }
        try communicator.sum(&buffer)
        var offset = 0
        for name in adapter.order {
            let p = adapter[name]!
            p.gradA = Array(buffer[offset..<(offset + p.gradA.count)])
            offset += p.gradA.count
            p.gradB = Array(buffer[offset..<(offset + p.gradB.count)])
            offset += p.gradB.count
        }
        var loss = [lossSum]
        try communicator.sum(&loss)
        return loss[0]
    }

    /// Whether every rank goes on: one rank's stop (a signal, the callback) stops them all at the same step.
    func agree(_ keepGoing: Bool) throws -> Bool {
        guard let communicator else { return keepGoing }
        var stops = [keepGoing ? 0.0 : 1.0]
        try communicator.sum(&stops)
        return stops[0] == 0
    }

    /// Writes the adapter and, when asked, the checkpoint (each through a temporary file and a rename).
    func save(_ run: Run, _ report: (TrainingEvent) -> Bool) throws {
        let c = configuration
        guard writes else { return }
        for path in try writeAdapter(run, path: c.adapterOut, step: run.state.step) { _ = report(.saved(kind: "adapter", path: path)) }
        guard let out = c.checkpointOut else { return }
        let cp = run.state.checkpoint(seed: c.seed, alpha: run.alpha, rsLoRA: run.rsLoRA,
                                      frozenProducts: run.model.frozenProductInputs.rawValue)
        for path in Trainer.outputNames(out, step: run.state.step, pattern: c.iterationPattern, latest: c.latestName) {
            try cp.write(to: path)
            _ = report(.saved(kind: "checkpoint", path: path))
        }
    }

    // MARK: Pieces

    /// The data loader for this run's model and options.
    static func data(_ c: TrainingConfiguration, file: GGUFFile, tokenizer: Tokenizer) throws -> TrainingData {
        if c.chatTemplate != nil { _ = try tokenizer.chatTemplate(templateText: nil, override: c.chatTemplate) }
        let template = try? tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue,
                                                   override: c.chatTemplate)
        var data = TrainingData(tokenizer: tokenizer, chatTemplate: template, format: c.dataFormat)
        data.trainOnPrompt = c.trainOnPrompt
        data.sampling = c.sampling
        return data
    }

    /// The data loader `--inspect-data` shows: the same as training's.
    public static func data(for c: TrainingConfiguration) throws -> TrainingData {
        let file = try GGUFFile(path: c.model)
        return try data(c, file: file, tokenizer: try Tokenizer(file: file))
    }

    func initialAdapter(_ model: LlamaModel<Float>) throws -> LoRAAdapter<Float> {
        let c = configuration
        return try LoRAAdapter<Float>.initialized(
            layers: model.config.layers,
            shapes: { model.config.features(of: $0) },
            targets: c.adaptedTargets(model.config), rank: { c.rank(of: $0, in: model.config) }, alpha: c.alpha,
            rsLoRA: c.rsLoRA, seed: c.seed)
    }

    func description(_ run: Run, step: Int) -> AdapterFile.Description {
        var d = AdapterFile.Description(alpha: run.alpha)
        d.rsLoRA = run.rsLoRA
        d.baseModelName = run.file.metadata["general.name"]?.stringValue
        d.baseModelFingerprint = AdapterFile.fingerprint(of: run.file)
        d.heads = (run.model.config.heads, run.model.config.kvHeads)
        d.architecture = run.model.config.architecture
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

    /// Writes the adapter (with the step in its name when the pattern asks) and returns the paths written.
    @discardableResult
    func writeAdapter(_ run: Run, path: String, step: Int) throws -> [String] {
        let paths = Trainer.outputNames(path, step: step, pattern: configuration.iterationPattern, latest: configuration.latestName)
        for out in paths { try AdapterFile.write(run.state.adapter, description: description(run, step: step), to: out) }
        return paths
    }

    func writeBest(_ run: Run) throws {
        try AdapterFile.write(run.state.adapter, description: description(run, step: 0), to: Trainer.bestName(configuration.adapterOut))
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
