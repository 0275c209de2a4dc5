import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import TestSupport
import XCTest

enum Fixtures {
    static func model() throws -> String { try TestData.smolLM2() }
    static func shared(_ relative: String) throws -> String { try TestData.shared(relative) }
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
