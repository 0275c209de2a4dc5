import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import XCTest

enum Fixtures {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().path
    static let shared = packageRoot + "/../shared"

    static func model() throws -> String {
        let path = packageRoot + "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
        if FileManager.default.fileExists(atPath: path) { return path }
        if ProcessInfo.processInfo.environment["LORAKIT_REQUIRE_MODEL"] == "1" { XCTFail("model missing: \(path)") }
        throw XCTSkip("SmolLM2 not fetched (scripts/fetch-model.sh)")
    }

    static func shared(_ relative: String) throws -> String {
        let path = shared + "/" + relative
        guard FileManager.default.fileExists(atPath: path) else { throw XCTSkip("missing \(path)") }
        return path
    }
}

/// The real model against transformers/PEFT float32 references (../shared/testdata/reference).
final class SmolLM2ReferenceTests: XCTestCase {
    func testLogitsAndLossMatchTransformers() throws {
        let model = try LlamaModel<Float>(file: GGUFFile(path: try Fixtures.model()))
        let ref = try GGUFFile(path: try Fixtures.shared("testdata/reference/smollm2-base-logits.gguf"))
        let ids = try ref.int32s(of: ref.requireTensor("input_ids"))
        let expected = try ref.floats(of: ref.requireTensor("logits"))
        let logits = try model.logits(tokens: ids)
        XCTAssertEqual(logits.count, expected.count)
        var maxDiff: Float = 0
        for i in 0..<logits.count { maxDiff = max(maxDiff, abs(logits[i] - expected[i])) }
        XCTAssertLessThan(maxDiff, 1e-4, "max |logit − reference|")
        let targets = Array(ids.dropFirst()) + [-1]
        let (sum, count) = try model.loss(tokens: ids, targets: targets, batch: 1)
        XCTAssertEqual(count, 63)
        let refLoss = try ref.metadata.float("reference.loss")
        XCTAssertEqual(sum / Double(count), Double(refLoss), accuracy: 5e-5)
    }

    func testLoRAGradientsMatchPEFT() throws {
        let model = try LlamaModel<Float>(file: GGUFFile(path: try Fixtures.model()))
        let (adapter, info) = try AdapterFile.read(path: try Fixtures.shared("testdata/reference/smollm2-lora-init.gguf"), as: Float.self)
        XCTAssertEqual(info.alpha, 16)
        XCTAssertEqual(adapter.order.count, 210)
        try model.attach(adapter, trainable: true)
        let ref = try GGUFFile(path: try Fixtures.shared("testdata/reference/smollm2-base-logits.gguf"))
        let ids = try ref.int32s(of: ref.requireTensor("input_ids"))
        let targets = Array(ids.dropFirst()) + [-1]
        let (sum, count) = try model.forwardBackward(tokens: ids, targets: targets, batch: 1, lossScale: 1 / 63)
        let grads = try GGUFFile(path: try Fixtures.shared("testdata/reference/smollm2-lora-grads.gguf"))
        XCTAssertEqual(sum / Double(count), Double(try grads.metadata.float("reference.loss")), accuracy: 5e-5)
        var worst = 0.0, worstName = ""
        for name in adapter.order {
            let pair = adapter[name]!
            for (suffix, ours, isA) in [("lora_a", pair.gradA, true), ("lora_b", pair.gradB, false)] {
                let expected = try grads.floats(of: grads.requireTensor("\(name).weight.\(suffix).grad"))
                XCTAssertEqual(expected.count, ours.count, name)
                _ = isA
                var diff = 0.0, norm = 0.0
                for i in 0..<ours.count {
                    diff += Double(ours[i] - expected[i]) * Double(ours[i] - expected[i])
                    norm += Double(expected[i]) * Double(expected[i])
                }
                let rel = (diff / max(norm, 1e-30)).squareRoot()
                if rel > worst { worst = rel; worstName = "\(name).\(suffix)" }
            }
        }
        XCTAssertLessThan(worst, 1e-3, "worst relative L2 error at \(worstName)")
    }
}
