import Foundation
import GGUF
import Llama
import LoRA
import TestSupport
import Tokenizer
import Training
import XCTest

/// The trainer on a tiny generated model with a 66-token tokenizer: resume, accumulation, determinism, stops.
final class TrainerTests: XCTestCase {
    var dir = ""
    var modelPath = ""
    var dataPath = ""

    override func setUpWithError() throws {
        dir = temporaryDirectory("lorakit-train")
        modelPath = dir + "/tiny.gguf"
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        try tiny.write(to: modelPath)
        dataPath = dir + "/data.txt"
        let text = String(repeating: "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. PACK MY BOX WITH FIVE DOZEN JUGS. ", count: 20)
        try text.write(toFile: dataPath, atomically: true, encoding: .utf8)
    }

    func config(_ out: String, iterations: Int) -> TrainingConfiguration {
        var c = TrainingConfiguration(model: modelPath, trainData: dataPath, adapterOut: dir + "/" + out)
        c.context = 16
        c.batch = 2
        c.iterations = iterations
        c.adam.learningRate = 1e-2
        c.saveEvery = 0
        c.threads = 1
        c.checkpointOut = dir + "/" + out + ".ckpt"
        c.seed = 7
        // A fixed schedule: defaults derive from --adam-iter, which differs between a run and its resumed halves.
        c.warmup = 2
        c.cosineDecaySteps = 6
        return c
    }

    func adapterBytes(_ path: String) throws -> [UInt8] {
        let f = try GGUFFile(path: path)
        return f.tensors.flatMap { Array(f.data(of: $0)) }
    }

    func testLossFallsAndAdapterReloads() throws {
        var losses: [Double] = []
        let summary = try Trainer(configuration: config("a.gguf", iterations: 12)).run { event in
            if case let .step(s) = event { losses.append(s.loss) }
            return true
        }
        XCTAssertEqual(summary.steps, 12)
        XCTAssertLessThan(losses.suffix(3).reduce(0, +) / 3, losses.prefix(3).reduce(0, +) / 3)
        let (adapter, info) = try AdapterFile.read(path: dir + "/a.gguf", as: Float.self)
        XCTAssertEqual(info.alpha, 16)
        XCTAssertEqual(adapter.order.count, 14)
        XCTAssertTrue(adapter[adapter.order[0]]!.b.contains { $0 != 0 }, "B moved away from zero")
    }

    /// On Phi-3 the default targets are the fused weights, and per-weight ranks given for their parts apply to them.
    func testPhi3TrainsTheFusedWeights() throws {
        var tiny = TinyLlama()
        tiny.architecture = "phi3"
        tiny.addTinyTokenizer()
        try tiny.write(to: modelPath)
        var c = config("phi3.gguf", iterations: 8)
        c.ranks[.attnK] = 3
        var losses: [Double] = [], plan: TrainingPlan?
        _ = try Trainer(configuration: c).run { event in
            if case let .step(s) = event { losses.append(s.loss) }
            if case let .plan(p) = event { plan = p }
            return true
        }
        XCTAssertEqual(plan?.targets, [.attnQKV, .attnOutput, .ffnUp, .ffnDown])
        XCTAssertLessThan(losses.suffix(2).reduce(0, +), losses.prefix(2).reduce(0, +))
        let (adapter, _) = try AdapterFile.read(path: dir + "/phi3.gguf", as: Float.self)
        XCTAssertEqual(adapter.order.count, 8)
        XCTAssertEqual(adapter["blk.0.attn_qkv"]?.rank, 3)
        XCTAssertEqual(adapter["blk.1.ffn_up"]?.outFeatures, 2 * tiny.feedForwardLength)
    }

    /// A run whose frozen products take bf16-rounded operands reaches them (its losses differ from float32's) and
    /// follows float32's run closely, step by step.
    func testBf16OperandsFollowTheFloat32Run() throws {
        func losses(_ inputs: FrozenProductInputs) throws -> [Double] {
            var c = config("p-\(inputs.rawValue).gguf", iterations: 6)
            c.frozenProductInputs = inputs
            var losses: [Double] = []
            _ = try Trainer(configuration: c).run { event in
                if case let .step(s) = event { losses.append(s.loss) }
                return true
            }
            return losses
        }
        let float32 = try losses(.float32), bf16 = try losses(.bf16)
        XCTAssertEqual(float32.count, 6)
        XCTAssertEqual(bf16.count, 6)
        XCTAssertNotEqual(float32, bf16)
        for (a, b) in zip(float32, bf16) { XCTAssertEqual(b, a, accuracy: 0.02 * a) }
    }

    /// A bf16 run resumes bit for bit in bf16; resumed in float32 it goes on and says that it is no longer bit-exact.
    /// A row longer than the model's training context (the tiny model's 128) is trained, with a warning that says so;
    /// within it, no warning.
    func testContextBeyondTheModelsIsWarnedAbout() throws {
        func warnings(context: Int) throws -> [String] {
            var c = config("ctx\(context).gguf", iterations: 1)
            c.context = context
            c.batch = 1
            var said: [String] = []
            _ = try Trainer(configuration: c).run { event in
                if case let .warning(w) = event { said.append(w) }
                return true
            }
            return said
        }
        XCTAssertEqual(try warnings(context: 160).filter { $0.contains("beyond the 128 tokens the model was trained on") }.count, 1)
        XCTAssertEqual(try warnings(context: 128).filter { $0.contains("trained on") }, [])
    }

    func testBf16ResumeIsBitExactAndAChangeOfPrecisionIsSaid() throws {
        func bf16(_ out: String, _ iterations: Int) -> TrainingConfiguration {
            var c = config(out, iterations: iterations)
            c.frozenProductInputs = .bf16
            return c
        }
        _ = try Trainer(configuration: bf16("bf-full.gguf", 6)).run { _ in true }
        _ = try Trainer(configuration: bf16("bf-half.gguf", 3)).run { _ in true }
        XCTAssertEqual(try Checkpoint.read(path: dir + "/bf-half.gguf.ckpt").frozenProducts, "bf16")
        var second = bf16("bf-half.gguf", 6)
        second.checkpointIn = dir + "/bf-half.gguf.ckpt"
        var warnings: [String] = []
        _ = try Trainer(configuration: second).run { event in
            if case let .warning(w) = event { warnings.append(w) }
            return true
        }
        XCTAssertEqual(warnings.filter { $0.contains("bit for bit") }, [])
        XCTAssertTrue(try adapterBytes(dir + "/bf-full.gguf") == adapterBytes(dir + "/bf-half.gguf"), "resumed bf16 run differs")

        _ = try Trainer(configuration: bf16("bf-other.gguf", 3)).run { _ in true }
        var float32 = config("bf-other.gguf", iterations: 6)
        float32.checkpointIn = dir + "/bf-other.gguf.ckpt"
        warnings = []
        let summary = try Trainer(configuration: float32).run { event in
            if case let .warning(w) = event { warnings.append(w) }
            return true
        }
        XCTAssertEqual(summary.steps, 3)
        XCTAssertTrue(warnings.contains { $0.contains("trained with bf16 frozen products, continued in float32") }, "\(warnings)")
    }

    func testDeterminism() throws {
        _ = try Trainer(configuration: config("d1.gguf", iterations: 4)).run { _ in true }
        _ = try Trainer(configuration: config("d2.gguf", iterations: 4)).run { _ in true }
        XCTAssertTrue(try adapterBytes(dir + "/d1.gguf") == adapterBytes(dir + "/d2.gguf"), "same seed, same result")
    }

    func testResumeIsBitExact() throws {
        _ = try Trainer(configuration: config("full.gguf", iterations: 6)).run { _ in true }
        _ = try Trainer(configuration: config("half.gguf", iterations: 3)).run { _ in true }
        // --adam-iter counts from step 0: resuming runs the steps left of the planned 6.
        var second = config("half.gguf", iterations: 6)
        second.checkpointIn = dir + "/half.gguf.ckpt"
        let summary = try Trainer(configuration: second).run { _ in true }
        XCTAssertEqual(summary.steps, 3)
        let done = try Trainer(configuration: second).run { _ in true }
        XCTAssertEqual(done.steps, 0, "a finished run has nothing left to do")
        XCTAssertTrue(try adapterBytes(dir + "/full.gguf") == adapterBytes(dir + "/half.gguf"), "resumed run differs")
    }

    func testStopRequestSavesAndResumes() throws {
        var steps = 0
        let summary = try Trainer(configuration: config("stop.gguf", iterations: 6)).run { event in
            if case .step = event { steps += 1; return steps < 2 }
            return true
        }
        XCTAssertEqual(summary.steps, 2)
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/stop.gguf.ckpt"))
        XCTAssertTrue(FileManager.default.fileExists(atPath: dir + "/stop.gguf"))
        var rest = config("stop.gguf", iterations: 6)
        rest.checkpointIn = dir + "/stop.gguf.ckpt"
        _ = try Trainer(configuration: rest).run { _ in true }
        _ = try Trainer(configuration: config("nostop.gguf", iterations: 6)).run { _ in true }
        XCTAssertTrue(try adapterBytes(dir + "/stop.gguf") == adapterBytes(dir + "/nostop.gguf"), "stopped and resumed run differs")
    }

    func testGradientAccumulationEqualsLargerBatch() throws {
        var big = config("big.gguf", iterations: 1)
        big.batch = 4
        var acc = config("acc.gguf", iterations: 1)
        acc.batch = 2
        acc.gradientAccumulation = 2
        var gBig = 0.0, gAcc = 0.0, lBig = 0.0, lAcc = 0.0
        _ = try Trainer(configuration: big).run { if case let .step(s) = $0 { gBig = s.gradientNorm; lBig = s.loss }; return true }
        _ = try Trainer(configuration: acc).run { if case let .step(s) = $0 { gAcc = s.gradientNorm; lAcc = s.loss }; return true }
        XCTAssertEqual(lBig, lAcc, accuracy: 1e-6)
        XCTAssertEqual(gBig, gAcc, accuracy: 1e-6 * max(1, gBig))
        let a = try AdapterFile.read(path: dir + "/big.gguf", as: Float.self).0
        let b = try AdapterFile.read(path: dir + "/acc.gguf", as: Float.self).0
        for name in a.order {
            for (x, y) in zip(a[name]!.b, b[name]!.b) { XCTAssertEqual(x, y, accuracy: 1e-6) }
        }
    }

    func testNonFiniteStopsWithoutOverwritingTheAdapter() throws {
        _ = try Trainer(configuration: config("good.gguf", iterations: 2)).run { _ in true }
        let before = try adapterBytes(dir + "/good.gguf")
        var poisoned = config("good.gguf", iterations: 3)
        poisoned.adam.learningRate = 1e38
        poisoned.adam.gradientClip = 0
        poisoned.adam.epsilon = 0
        poisoned.checkpointOut = nil
        XCTAssertThrowsError(try Trainer(configuration: poisoned).run { _ in true }) { error in
            let text = String(describing: error)
            XCTAssertTrue(text.contains("not finite"), text)
            XCTAssertTrue(text.contains("step"), text)
        }
        XCTAssertTrue(try adapterBytes(dir + "/good.gguf") == before, "the good adapter was overwritten")
    }

    func testConvergenceTestsStopTheRun() throws {
        var c = config("past.gguf", iterations: 10)
        c.past = 2
        c.pastDelta = 10  // any change is "small": stops as soon as two past losses exist
        var summary = try Trainer(configuration: c).run { _ in true }
        XCTAssertEqual(summary.steps, 3)
        XCTAssertNotNil(summary.stoppedEarly)
        c = config("noimp.gguf", iterations: 10)
        c.adam.learningRate = 0  // no learning: the loss never beats its best for long
        c.maxNoImprovement = 2
        summary = try Trainer(configuration: c).run { _ in true }
        XCTAssertLessThan(summary.steps, 10)
    }

    func testScheduleFollowsTheFinetuneFormulas() {
        let s = LearningSchedule(warmup: 10, cosineDecaySteps: 100, cosineDecayMin: 0.1, cosineDecayRestart: 1.1, restarts: false)
        XCTAssertEqual(s.factor(step: 0, minFraction: 0), 0)
        XCTAssertEqual(s.factor(step: 5, minFraction: 0), 0.5)
        // No restarts: the raw step (not step − warmup) enters the cosine.
        let c50 = Float((1 - 0.1) * 0.5 * (1 + cos(Double.pi * 50 / 100)) + 0.1)
        XCTAssertEqual(s.factor(step: 50, minFraction: 0), c50, accuracy: 1e-6)
        XCTAssertEqual(s.factor(step: 500, minFraction: 0), 0.1, accuracy: 1e-6)
        XCTAssertEqual(s.factor(step: 500, minFraction: 0.5), 0.55, accuracy: 1e-6)
        let r = LearningSchedule(warmup: 10, cosineDecaySteps: 20, cosineDecayMin: 0, cosineDecayRestart: 2, restarts: true)
        // step 35: 25 after warmup; 25 > 20 → 5 into a cycle of 40.
        let expected = Float(0.5 * (1 + cos(Double.pi * 5 / 40)))
        XCTAssertEqual(r.factor(step: 35, minFraction: 0), expected, accuracy: 1e-6)
    }

    func testSamplingOptions() throws {
        let tokenizer = try Tokenizer(file: GGUFFile(path: modelPath))
        var o = SamplingOptions()
        o.sampleStart = "\\n>>"
        o.escape = true
        XCTAssertEqual(o.pattern, "\n>>")
        // As the finetune: samples start at each occurrence of the pattern; text before the first is no sample.
        o.sampleStart = "##"
        o.escape = false
        let text = Array("A##BC##DEF".utf8)
        let stream = TokenStream(text: text, tokenizer: tokenizer, options: o)
        func decode(_ s: (start: Int, count: Int)) -> String { tokenizer.decode(Array(stream.tokens[s.start..<(s.start + s.count)])) }
        XCTAssertEqual(stream.samples.map(decode), ["BC", "DEF"])
        o.includeSampleStart = true
        let included = TokenStream(text: text, tokenizer: tokenizer, options: o)
        XCTAssertEqual(included.samples.map { s in tokenizer.decode(Array(included.tokens[s.start..<(s.start + s.count)])) },
                       ["##BC", "##DEF"])
        var overlapping = o
        overlapping.includeSampleStart = false
        overlapping.overlapping = true
        let over = TokenStream(text: text, tokenizer: tokenizer, options: overlapping, context: 6)
        XCTAssertEqual(over.samples.map { s in tokenizer.decode(Array(over.tokens[s.start..<(s.start + s.count)])) },
                       ["BC##DEF", "DEF"], "overlapping samples run past the next sample start")
        // Rows: padded with EOS (not learned) without fill; packed with a BOS separator with fill.
        var b = Batcher(stream: stream, length: 6, seed: 1, options: SamplingOptions(), bos: 64, eos: 65)
        let rows = b.evaluationRows()
        XCTAssertEqual(rows[0].tokens, tokenizer.encode("BC", addSpecial: false) + [65, 65, 65, 65])
        XCTAssertEqual(rows[0].targets, [tokenizer.encode("C", addSpecial: false)[0], -1, -1, -1, -1, -1])
        var fillOptions = SamplingOptions()
        fillOptions.fillWithNextSamples = true
        b = Batcher(stream: stream, length: 6, seed: 1, options: fillOptions, bos: 64, eos: 65)
        let packed = b.next(rows: 1)
        XCTAssertTrue(packed.tokens.contains(64), "samples separated by BOS")
        XCTAssertFalse(packed.tokens.contains(65), "no padding when filled")
    }

    func testSeparatorsRandomOffsetsAndReshuffle() throws {
        let tokenizer = try Tokenizer(file: GGUFFile(path: modelPath))
        var o = SamplingOptions()
        o.sampleStart = "##"
        let stream = TokenStream(text: Array("##AB##CD##EF##GH".utf8), tokenizer: tokenizer, options: o)
        XCTAssertEqual(stream.samples.count, 4)
        // Filled rows: sample, EOS, BOS, next sample … (both separators on).
        var fill = o
        fill.fillWithNextSamples = true
        fill.separateWithEOS = true
        fill.separateWithBOS = true
        var b = Batcher(stream: stream, length: 9, seed: 3, options: fill, bos: 64, eos: 65)
        let row = b.next(rows: 1).tokens
        XCTAssertEqual(Array(row[2...3]), [65, 64], "EOS then BOS between samples: \(row)")
        XCTAssertEqual(Array(row[6...7]), [65, 64])
        // Random offsets: some rows start inside their sample, never past its last token.
        var offsets = o
        offsets.randomOffsets = true
        let long = TokenStream(text: Array("##ABCDEFGHIJ##KLMNOPQRST".utf8), tokenizer: tokenizer, options: offsets)
        b = Batcher(stream: long, length: 4, seed: 11, options: offsets, bos: 64, eos: 65)
        let starts = (0..<20).map { _ in b.next(rows: 1).tokens[0] }
        let sampleStarts = Set(tokenizer.encode("AK", addSpecial: false))
        XCTAssertTrue(starts.contains { !sampleStarts.contains($0) }, "some rows start at a random offset")
        // --force-reshuffle: resuming with a new shuffle gives other batches than resuming the saved one.
        _ = try Trainer(configuration: config("r1.gguf", iterations: 2)).run { _ in true }
        try FileManager.default.copyItem(atPath: dir + "/r1.gguf.ckpt", toPath: dir + "/r2.ckpt")
        var resume = config("r1.gguf", iterations: 4)
        resume.checkpointIn = dir + "/r1.gguf.ckpt"
        _ = try Trainer(configuration: resume).run { _ in true }
        var reshuffled = config("r2.gguf", iterations: 4)
        reshuffled.checkpointIn = dir + "/r2.ckpt"
        reshuffled.forceReshuffle = true
        _ = try Trainer(configuration: reshuffled).run { _ in true }
        XCTAssertFalse(try adapterBytes(dir + "/r1.gguf") == adapterBytes(dir + "/r2.gguf"), "a new shuffle gives other batches")
    }

    /// A plan larger than the memory there is stops before training, with the plan reported first; automatic
    /// checkpointing turns on when it would fit only with it.
    func testPlanAboveMemoryIsRefused() throws {
        var c = config("m.gguf", iterations: 1)
        var plans: [TrainingPlan] = []
        c.memoryLimit = 1000  // bytes: less than any plan
        XCTAssertThrowsError(try Trainer(configuration: c).run { event in
            if case let .plan(p) = event { plans.append(p) }
            return true
        }) { XCTAssertTrue(String(describing: $0).hasPrefix("the plan needs about"), String(describing: $0)) }
        XCTAssertEqual(plans.count, 1)
        XCTAssertEqual(plans.first?.gradientCheckpointing, true, "over 80 % of the limit, checkpointing turns on by itself")
        XCTAssertFalse(FileManager.default.fileExists(atPath: c.adapterOut))
        c.memoryLimit = nil
        XCTAssertEqual(try Trainer(configuration: c).run { _ in true }.steps, 1)
        // A rank far too large is refused from the plan, before its tensors are allocated (about 1 GB here).
        var huge = config("h.gguf", iterations: 1)
        huge.rank = 60000
        huge.memoryLimit = 1 << 29
        var planned = 0
        let start = Date()
        XCTAssertThrowsError(try Trainer(configuration: huge).run { event in
            if case let .plan(p) = event { planned = p.trainableParameters }
            return true
        }) { XCTAssertTrue(String(describing: $0).hasPrefix("the plan needs about"), String(describing: $0)) }
        XCTAssertEqual(planned, 60000 * (2 * (32 + 32) + 2 * (32 + 16) + 3 * (32 + 64)) * 2)
        XCTAssertLessThan(Date().timeIntervalSince(start), 2, "refused without filling the adapter")
    }

    /// A micro-batch is cut after the last position any row scores (the model test shows those positions change
    /// nothing), so short prompt/completion samples run their own length: the plan says so and sizes memory for it.
    func testRowsEndAfterTheirLastScoredPosition() throws {
        let cut = Batcher.cutAfterLastScored(tokens: [1, 2, 3, 4, 5, 6, 11, 12, 13, 14, 15, 16],
                                             targets: [2, -1, 4, -1, -1, -1, -1, 13, -1, -1, -1, -1], rows: 2)
        XCTAssertEqual(cut.tokens, [1, 2, 3, 11, 12, 13], "row 0 scores position 2 last, row 1 position 1: three kept")
        XCTAssertEqual(cut.targets, [2, -1, 4, -1, 13, -1])
        let whole = Batcher.cutAfterLastScored(tokens: [1, 2, 3, 4], targets: [-1, -1, -1, 9], rows: 1)
        XCTAssertEqual(whole.tokens, [1, 2, 3, 4], "a row scored to its end stays whole")
        XCTAssertEqual(Batcher.cutAfterLastScored(tokens: [1, 2, 3, 4], targets: [-1, -1, -1, -1], rows: 2).tokens, [1, 3],
                       "nothing scored: one position a row")

        let path = dir + "/pairs.jsonl"
        try (0..<6).map { i in "{\"prompt\": \"THE FOX \(i)\", \"completion\": \" JUMPS OVER\"}" }.joined(separator: "\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        func plan(_ context: Int, fill: Bool = false) throws -> TrainingPlan {
            var c = config("p\(context)\(fill).gguf", iterations: 2)
            c.trainData = path
            c.context = context
            c.sampling.fillWithNextSamples = fill
            var plan: TrainingPlan?
            _ = try Trainer(configuration: c).run { event in
                if case let .plan(p) = event { plan = p }
                return true
            }
            return try XCTUnwrap(plan)
        }
        let short = try plan(64), longer = try plan(128), packed = try plan(64, fill: true)
        XCTAssertLessThan(short.rowLength, 64, "samples shorter than the context")
        XCTAssertEqual(longer.rowLength, short.rowLength, "the longest sample decides, not the context")
        XCTAssertEqual(packed.rowLength, 64, "packed rows run the whole context")
        func activations(_ p: TrainingPlan) -> Int { p.memory.first { $0.0.hasPrefix("activations") }!.1 }
        XCTAssertEqual(activations(longer), activations(short))
        XCTAssertLessThan(activations(short), activations(packed))
    }

    func testBadJSONLLineNamesFileAndLine() throws {
        let path = dir + "/bad.jsonl"
        try "{\"text\": \"OK\"}\n{\"text\": oops}\n".write(toFile: path, atomically: true, encoding: .utf8)
        var c = config("j.gguf", iterations: 1)
        c.trainData = path
        XCTAssertThrowsError(try Trainer(configuration: c).run { _ in true }) {
            XCTAssertEqual(String(describing: $0), "\(path):2: not a valid JSON object")
        }
        try "{\"prompt\": \"A\"}\n".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Trainer(configuration: c).run { _ in true }) {
            XCTAssertEqual(String(describing: $0), "\(path):1: missing string field \"completion\"")
        }
        try "".write(toFile: path, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try Trainer(configuration: c).run { _ in true })
    }
}
