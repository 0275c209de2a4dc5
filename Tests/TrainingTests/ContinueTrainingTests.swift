import Foundation
import GGUF
import Llama
import LoRA
import TestSupport
import Tokenizer
import Training
import XCTest

/// `--lora-in`: training continues an existing adapter of any format. Step 0 (the validation before the first update)
/// scores exactly what the adapter gives at run time, and training lowers it.
final class ContinueTrainingTests: XCTestCase {
    /// The validation loss of `model` with `adapter` applied at run time, on the rows the trainer validates on.
    func runtimeLoss(model path: String, adapter: AdapterLoader.Loaded, validation: String, context: Int, batch: Int) throws -> Double {
        let file = try GGUFFile(path: path)
        let model = try LlamaModel<Float>(file: file)
        try model.attach(adapter.adapter)
        let tokenizer = try Tokenizer(file: file)
        let data = TrainingData(tokenizer: tokenizer, chatTemplate: nil)
        let stream = try data.load(validation, context: context).stream
        let rows = Batcher(stream: stream, length: context, seed: 0, options: SamplingOptions(), bos: tokenizer.vocabulary.bos,
                           eos: tokenizer.vocabulary.eos).evaluationRows()
        var sum = 0.0, count = 0
        for start in stride(from: 0, to: rows.count, by: batch) {
            let part = rows[start..<min(rows.count, start + batch)]
            let (s, n) = try model.loss(tokens: part.flatMap(\.tokens), targets: part.flatMap(\.targets), batch: part.count)
            sum += s
            count += n
        }
        return sum / Double(count)
    }

    /// Runs `configuration`, returning the validation losses in order.
    func validations(_ c: TrainingConfiguration) throws -> [Double] {
        var losses: [Double] = []
        _ = try Trainer(configuration: c).run { event in
            if case let .validation(_, loss, _) = event { losses.append(loss) }
            return true
        }
        return losses
    }

    func check(model: String, adapter path: String, data: String, context: Int, steps: Int, lr: Float, file: StaticString = #filePath,
               line: UInt = #line) throws {
        let dir = temporaryDirectory("lorakit-continue")
        var c = TrainingConfiguration(model: model, trainData: data, adapterOut: dir + "/out.gguf")
        c.validationData = data
        c.adapterIn = path
        c.context = context
        c.batch = 2
        c.iterations = steps
        c.adam.learningRate = lr
        c.saveEvery = 0
        c.checkpointOut = nil
        c.threads = 2
        let heads: PEFT.Heads? = try {
            let m = try LlamaModel<Float>(file: GGUFFile(path: model))
            return PEFT.Heads(heads: m.config.heads, kvHeads: m.config.kvHeads)
        }()
        let loaded = try AdapterLoader.load(path, heads: heads)
        let expected = try runtimeLoss(model: model, adapter: loaded, validation: data, context: context, batch: 2)
        let losses = try validations(c)
        // Equal up to float32 rounding: the products may be split over another number of threads.
        XCTAssertEqual(losses.first ?? .nan, expected, accuracy: 1e-6 * max(1, expected), "step 0 is the adapter as given", file: file, line: line)
        XCTAssertLessThan(losses.last ?? .infinity, losses.first ?? -.infinity, "training lowers it", file: file, line: line)
        // The written adapter keeps the targets and ranks it was given.
        let written = try AdapterLoader.load(dir + "/out.gguf")
        XCTAssertEqual(Set(written.adapter.order), Set(loaded.adapter.order), file: file, line: line)
        XCTAssertEqual(written.adapter.order.map { written.adapter[$0]!.rank }, written.adapter.order.map { loaded.adapter[$0]!.rank },
                       file: file, line: line)
    }

    func testContinuesOurGGUFAdapter() throws {
        let (dir, _, _) = try tinyModelAndText("lorakit-continue", repeats: 30)
        var first = TrainingConfiguration(model: dir + "/m.gguf", trainData: dir + "/d.txt", adapterOut: dir + "/a.gguf")
        first.context = 16
        first.iterations = 4
        first.rank = 4
        first.targets = [.attnQ, .attnV, .ffnDown]
        first.adam.learningRate = 1e-2
        first.checkpointOut = nil
        _ = try Trainer(configuration: first).run { _ in true }
        try check(model: dir + "/m.gguf", adapter: dir + "/a.gguf", data: dir + "/d.txt", context: 16, steps: 6, lr: 1e-2)
    }

    func testContinuesARealPEFTAdapter() throws {
        let text = try Data(contentsOf: URL(fileURLWithPath: try TestData.shared("data/shakespeare.txt"))).prefix(6000)
        let data = temporaryDirectory("lorakit-continue") + "/s.txt"
        try text.write(to: URL(fileURLWithPath: data))
        try check(model: try TestData.smolLM2(), adapter: try TestData.shared("testdata/peft/smollm2-shakespeare-r8"), data: data,
                  context: 64, steps: 3, lr: 1e-3)
    }

    func testContinuesTheFinetunesFile() throws {
        let text = try Data(contentsOf: URL(fileURLWithPath: try TestData.shared("data/shakespeare.txt"))).prefix(6000)
        let data = temporaryDirectory("lorakit-continue") + "/s.txt"
        try text.write(to: URL(fileURLWithPath: data))
        try check(model: try TestData.smolLM2(), adapter: try TestData.shared("testdata/seed/seed-lora-smollm2-shakespeare-12.bin"),
                  data: data, context: 64, steps: 3, lr: 1e-3)
    }
}
