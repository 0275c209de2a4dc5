import ArgumentParser
import Foundation
import GGUF
import Llama
import LoRA
import Tokenizer
import Training

/// Which weights to adapt, and at what rank: trains one adapter per setting on each model and task and prints a
/// table row per run (held-out loss, exact match of greedy answers, tokens/s, adapter size, peak memory, wall
/// time). `scripts/study-targets.sh` runs it and writes docs/TUNING.md's table.
struct StudyBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "study",
        abstract: "Targets × ranks study: held-out loss, exact match, speed, size and memory per setting.")

    @Option(help: "Models, comma-separated.")
    var models = "models/SmolLM2-135M-Instruct.Q4_1.gguf,models/gemma-3-270m-q4_k_m.gguf"
    @Option(help: "Tasks, comma-separated: velmora (the demo's chat facts), wikisql (SQL from questions).")
    var tasks = "velmora,wikisql"
    @Flag(help: "Every target set at every rank (4, 8, 16, 64); without it, the target sets at rank 8 and ranks 4 and 64 on all linear weights.")
    var full = false
    @Option var iterations = 30
    @Option(help: "Questions of the validation set answered for exact match.") var questions = 20
    @Option(help: "Rows of the validation set the held-out loss is measured on.") var validationRows = 40
    @Option var threads = 2
    @Option(help: "Run only the setting with this index (0-based, in the order of the table), without the header: one run per process gives each its own peak memory.")
    var only: Int?
    @Option(help: "Folder of the demo's chat facts (velmora-train/valid.jsonl).") var demoData = "data/demo"
    @Option(help: "Folder of the WikiSQL files (wikisql-train/valid.jsonl).") var wikisqlData = "../shared/data"

    static let targetSets: [(String, [LoRATarget])] = [
        ("q,v", [.attnQ, .attnV]),
        ("q,k,v,o", [.attnQ, .attnK, .attnV, .attnOutput]),
        ("all linear", LoRATarget.defaultTargets),
        ("all + head", LoRATarget.defaultTargets + [.output]),
    ]

    func settings() -> [(String, [LoRATarget], Int)] {
        if full { return Self.targetSets.flatMap { set in [4, 8, 16, 64].map { (set.0, set.1, $0) } } }
        return Self.targetSets.map { ($0.0, $0.1, 8) } + [4, 64].map { ("all linear", LoRATarget.defaultTargets, $0) }
    }

    func run() throws {
        if only == nil {
            print("| model | task | targets | rank | held-out loss (before → after) | exact match | tokens/s | adapter | peak memory | wall |")
            print("|---|---|---|---|---|---|---|---|---|---|")
        }
        for model in models.split(separator: ",").map(String.init) {
            let name = URL(fileURLWithPath: model).deletingPathExtension().lastPathComponent
            for task in tasks.split(separator: ",").map(String.init) {
                for (index, (label, targets, rank)) in settings().enumerated() where only == nil || only == index {
                    let r = try study(model: model, task: task, targets: targets, rank: rank)
                    print(String(format: "| %@ | %@ | %@ | %d | %.3f → %.3f | %d/%d | %.0f | %.1f MB | %.2f GB | %.0f s |",
                                 name, task, label, rank, r.lossBefore, r.lossAfter, r.matches, r.asked, r.tokensPerSecond,
                                 Double(r.adapterBytes) / 1e6, Double(r.peakBytes) / 1e9, r.seconds))
                    fflush(stdout)
                }
            }
        }
    }

    struct Result {
        var lossBefore = 0.0, lossAfter = 0.0, matches = 0, asked = 0, tokensPerSecond = 0.0
        var adapterBytes = 0, peakBytes = 0, seconds = 0.0
    }

    func study(model: String, task: String, targets: [LoRATarget], rank: Int) throws -> Result {
        let out = FileManager.default.temporaryDirectory.appendingPathComponent("lorakit-study-\(getpid())").path
        try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: out) }
        let (train, valid) = task == "velmora"
            ? ("\(demoData)/velmora-train.jsonl", "\(demoData)/velmora-valid.jsonl")
            : ("\(wikisqlData)/wikisql-train.jsonl", "\(wikisqlData)/wikisql-valid.jsonl")
        var c = TrainingConfiguration(model: model, trainData: train, adapterOut: out + "/adapter.gguf")
        let heldOut = try String(contentsOfFile: valid, encoding: .utf8).split(separator: "\n").prefix(validationRows)
        c.validationData = out + "/valid.jsonl"
        try (heldOut.joined(separator: "\n") + "\n").write(toFile: out + "/valid.jsonl", atomically: true, encoding: .utf8)
        c.targets = targets
        c.rank = rank
        c.alpha = Float(2 * rank)
        (c.context, c.batch) = task == "velmora" ? (64, 8) : (128, 4)
        c.iterations = iterations
        c.adam.learningRate = 1e-3
        c.validationEvery = iterations
        c.saveEvery = 0
        c.threads = threads
        let file = try GGUFFile(path: model)
        if file.metadata["tokenizer.chat_template"] == nil && task == "velmora" { c.chatTemplate = "gemma" }
        var result = Result()
        ResidentMemory.resetPeak()
        var speeds: [Double] = []
        result.seconds = try seconds {
            _ = try Trainer(configuration: c).run { event in
                switch event {
                case let .step(s): speeds.append(s.tokensPerSecond)
                case let .validation(step, loss, _):
                    if step == 0 { result.lossBefore = loss } else { result.lossAfter = loss }
                default: break
                }
                return true
            }
        }
        result.peakBytes = ResidentMemory.peakBytes()
        result.tokensPerSecond = speeds.dropFirst().reduce(0, +) / Double(max(1, speeds.count - 1))
        result.adapterBytes = (try FileManager.default.attributesOfItem(atPath: c.adapterOut)[.size] as? Int) ?? 0
        (result.matches, result.asked) = try exactMatch(model: file, adapter: c.adapterOut, task: task, valid: valid,
                                                       chatTemplate: c.chatTemplate)
        return result
    }

    /// Greedy answers to the first `questions` validation rows, compared with the expected answer (trimmed).
    func exactMatch(model file: GGUFFile, adapter: String, task: String, valid: String, chatTemplate: String?) throws -> (Int, Int) {
        let llama = try LlamaModel<Float>(file: file)
        try llama.attach(try AdapterLoader.load(adapter).adapter, trainable: false)
        let tokenizer = try Tokenizer(file: file)
        var sampler = Sampler(seed: 0)
        sampler.temperature = 0
        let generator = Generator(session: InferenceSession(model: llama, capacity: 512, threads: threads),
                                  tokenizer: tokenizer, sampler: sampler, maxTokens: 64)
        generator.stopStrings = ["\n"]
        let lines = try String(contentsOfFile: valid, encoding: .utf8).split(separator: "\n").prefix(questions)
        var matches = 0
        for line in lines {
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any] ?? [:]
            let prompt: String, expected: String
            if task == "velmora" {
                let messages = object["messages"] as? [[String: String]] ?? []
                let template = try tokenizer.chatTemplate(templateText: file.metadata["tokenizer.chat_template"]?.stringValue,
                                                          override: chatTemplate)
                prompt = try template.render([ChatMessage(.user, messages.first?["content"] ?? "")], addGenerationPrompt: true).text
                expected = messages.last?["content"] ?? ""
            } else {
                let text = object["text"] as? String ?? ""
                guard let answer = text.range(of: "\nA: ", options: .backwards) else { continue }
                prompt = String(text[..<answer.upperBound])
                expected = String(text[answer.upperBound...])
            }
            generator.reset()
            let response = try generator.respond(to: tokenizer.encode(prompt, addSpecial: true, parseSpecial: true))
            if response.text.trimmingCharacters(in: .whitespacesAndNewlines) == expected.trimmingCharacters(in: .whitespacesAndNewlines) {
                matches += 1
            }
        }
        return (matches, lines.count)
    }

}
