import Foundation
import GGUF
import Kernels
import Tokenizer
import Training

/// Renders training events for a terminal, writes metrics as JSON Lines and the loss curves as SVG.
struct TrainingReport {
    let metricsPath: String?
    let plotPath: String?
    let config: TrainingConfiguration
    var metrics: [String] = []
    var trainLoss: [(Int, Double)] = []
    var validationLoss: [(Int, Double)] = []
    /// The plan's total, printed beside the measured peak when the run finishes.
    var plannedBytes: Int?

    init(metricsPath: String?, plotPath: String?, config: TrainingConfiguration) {
        self.metricsPath = metricsPath
        self.plotPath = plotPath
        self.config = config
    }

    static func mb(_ bytes: Int) -> String { String(format: "%.0f MB", Double(bytes) / 1_048_576) }

    static func duration(_ s: Double) -> String {
        let t = Int(s.rounded())
        return t >= 3600 ? String(format: "%dh%02dm", t / 3600, t / 60 % 60) : String(format: "%dm%02ds", t / 60, t % 60)
    }

    mutating func render(_ event: TrainingEvent) {
        defer { fflush(stdout) }  // progress must reach a pipe (tee, a log) as it happens
        switch event {
        case let .plan(p):
            plannedBytes = p.memory.reduce(0) { $0 + $1.1 }
            print("plan: \(p.trainableParameters) trainable parameters (rank \(config.rank), alpha \(config.alpha), \(p.targets.map(\.rawValue).joined(separator: ",")))")
            print("      \(p.tokensPerStep) tokens per step (\(config.batch) × \(config.context)\(config.gradientAccumulation > 1 ? " × \(config.gradientAccumulation) accumulated" : "")\(p.ranks > 1 ? " × \(p.ranks) ranks" : "")), \(p.steps) steps from step \(p.startStep), \(p.samples) samples\(p.validationRows > 0 ? ", \(p.validationRows) validation rows" : "")"
                  + (p.rowLength < config.context ? "; rows end after their last learned token, at most \(p.rowLength) positions (the longest sample)" : ""))
            print("      memory: " + p.memory.map { "\($0.0) \(TrainingReport.mb($0.1))" }.joined(separator: ", ")
                  + "; gradient checkpointing \(p.gradientCheckpointing ? "on" : "off")")
            if p.ranks > 1 {
                print("      data parallel: \(p.ranks) MPI ranks, \(config.batch * config.gradientAccumulation * p.ranks) rows per step "
                      + "(\(config.batch * config.gradientAccumulation) per rank), \(TrainingReport.mb(p.bytesExchangedPerStep)) exchanged per step")
            }
            print("      compute: \(Parallel.threads) thread\(Parallel.threads == 1 ? "" : "s")\(p.ranks > 1 ? " per rank" : ""), BLAS "
                  + (BLAS.libraryPath.map { "\($0) (\(BLAS.coreName ?? "?") kernels)" } ?? "none (Swift reference GEMM)")
                  + "; frozen products: \(p.precision); LoRA products: \(BLAS.narrowProductsDescription)")
            if BLAS.libraryPath == nil {
                CLI.printError("warning: OpenBLAS was not found, so matrix products run in plain Swift, tens of times slower; "
                               + "install it (Debian/Ubuntu: apt-get install libopenblas0)")
            }
        case let .warning(w):
            CLI.printError("warning: " + w)
        case let .step(s):
            trainLoss.append((s.step, s.loss))
            print(String(format: "step %5d  loss %.4f  lr %.2e  |g| %.3f  %.0f tok/s  elapsed %@  eta %@",
                         s.step, s.loss, s.learningRate, s.gradientNorm, s.tokensPerSecond,
                         TrainingReport.duration(s.elapsed), TrainingReport.duration(s.eta)))
            metrics.append(JSON.object([("type", .string("step")), ("step", .int(Int64(s.step))), ("loss", .double(s.loss)),
                                        ("lr", .double(Double(s.learningRate))), ("grad_norm", .double(s.gradientNorm)),
                                        ("tokens_per_second", .double(s.tokensPerSecond)), ("elapsed", .double(s.elapsed)),
                                        ("tokens", .int(Int64(s.scoredTokens))), ("epoch", .int(Int64(s.epoch))),
                                        ("overhead", .double(s.overhead))]).text)
            flushMetrics()
        case let .validation(step, loss, best):
            validationLoss.append((step, loss))
            print(String(format: "validation at step %d: loss %.4f%@", step, loss, best ? " (best)" : ""))
            metrics.append(JSON.object([("type", .string("validation")), ("step", .int(Int64(step))), ("loss", .double(loss))]).text)
            flushMetrics()
        case let .saved(kind, path):
            print("saved \(kind): \(path)")
        case let .finished(summary):
            print("finished: \(summary.steps) steps" + (summary.finalLoss.map { String(format: ", last loss %.4f", $0) } ?? "")
                  + (summary.bestValidationLoss.map { String(format: ", best validation loss %.4f", $0) } ?? "")
                  + (summary.stoppedEarly.map { " (stopped: \($0))" } ?? ""))
            print("peak memory \(TrainingReport.mb(ResidentMemory.peakBytes()))"
                  + (plannedBytes.map { " (memory plan \(TrainingReport.mb($0)))" } ?? ""))
        }
    }

    func flushMetrics() {
        guard let metricsPath else { return }
        do { try AtomicFile.write(Array((metrics.joined(separator: "\n") + "\n").utf8), to: metricsPath) } catch {
            CLI.printError("warning: \(error)")
        }
    }

    func finish() throws {
        flushMetrics()
        guard let plotPath else { return }
        try AtomicFile.write(Array(LossPlot.svg(train: trainLoss, validation: validationLoss).utf8), to: plotPath)
        print("loss plot: \(plotPath)")
    }

    /// `--inspect-data`: the first rows as the trainer sees them, learned tokens in [brackets].
    static func inspect(_ config: TrainingConfiguration) throws {
        let data = try Trainer.data(for: config)
        let tokenizer = data.tokenizer
        let format = try data.format(of: config.trainData)
        let stream = try data.load(config.trainData, context: config.context).stream
        print("format \(format.rawValue): \(stream.sampleCount) samples, \(stream.tokens.count) tokens, \(stream.trained.filter { $0 }.count) learned; learned tokens are shown in [brackets]")
        let rows = Batcher(stream: stream, length: config.context, seed: config.seed, options: config.sampling,
                           bos: tokenizer.vocabulary.bos, eos: tokenizer.vocabulary.eos).evaluationRows().prefix(3)
        for (i, row) in rows.enumerated() {
            var text = ""
            var inLearned = false
            let learned = [false] + row.targets.map { $0 >= 0 }
            var tokens = row.tokens + [row.targets.last.map { $0 >= 0 ? $0 : -1 } ?? -1]
            // Padding after the sample: the trailing run of unlearned EOS tokens, summarized.
            var padding = 0
            while let last = tokens.dropLast().last, last == tokenizer.vocabulary.eos, !learned[tokens.count - 2],
                  tokens.count >= 2, padding < row.tokens.count - 1 {
                tokens.removeLast()
                padding += 1
            }
            for (t, id) in tokens.enumerated() where id >= 0 && t < tokens.count - (padding > 0 ? 1 : 0) {
                if learned[t] != inLearned { text += learned[t] ? "[" : "]"; inLearned = learned[t] }
                text += String(decoding: tokenizer.piece(id, special: true), as: UTF8.self)
            }
            if inLearned { text += "]" }
            if padding > 0 { text += "\n(\(padding) padding tokens, not learned)" }
            print("--- sample \(i + 1) ---\n" + text)
        }
    }
}

/// The training and validation loss curves as a small standalone SVG.
enum LossPlot {
    static func svg(train: [(Int, Double)], validation: [(Int, Double)]) -> String {
        let w = 720.0, h = 360.0, left = 60.0, bottom = 40.0, top = 20.0, right = 20.0
        let all = train + validation
        guard let maxStep = all.map(\.0).max(), let lo = all.map(\.1).min(), let hi = all.map(\.1).max() else {
            return "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"720\" height=\"360\"><text x=\"20\" y=\"40\">no data</text></svg>"
        }
        let span = max(hi - lo, 1e-6)
        func x(_ s: Int) -> Double { left + (w - left - right) * Double(s) / Double(max(maxStep, 1)) }
        func y(_ v: Double) -> Double { top + (h - top - bottom) * (1 - (v - lo) / span) }
        func line(_ pts: [(Int, Double)], _ color: String) -> String {
            guard !pts.isEmpty else { return "" }
            let d = pts.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
            let dots = pts.count < 60 ? pts.map { String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%@\"/>", x($0.0), y($0.1), color) }.joined() : ""
            return "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"2\" points=\"\(d)\"/>" + dots
        }
        var s = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(w))\" height=\"\(Int(h))\" font-family=\"sans-serif\" font-size=\"12\">"
        s += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>", left, h - bottom, w - right, h - bottom)
        s += String(format: "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"black\"/>", left, top, left, h - bottom)
        for i in 0...4 {
            let v = lo + span * Double(i) / 4
            s += String(format: "<text x=\"5\" y=\"%.0f\">%.3f</text>", y(v) + 4, v)
        }
        s += String(format: "<text x=\"%.0f\" y=\"%.0f\">step %d</text>", w - right - 60, h - 10, maxStep)
        s += line(train, "#1f77b4") + line(validation, "#d62728")
        s += "<text x=\"\(Int(left) + 10)\" y=\"\(Int(top) + 12)\" fill=\"#1f77b4\">training loss</text>"
        if !validation.isEmpty { s += "<text x=\"\(Int(left) + 120)\" y=\"\(Int(top) + 12)\" fill=\"#d62728\">validation loss</text>" }
        return s + "</svg>\n"
    }
}
