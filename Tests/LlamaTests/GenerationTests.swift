import Foundation
import GGUF
import Llama
import LoRA
import XCTest

/// The KV-cache path (per-token quantized products) against transformers' greedy ids and the full forward.
final class GenerationTests: XCTestCase {
    static var cached: LlamaModel<Float>?
    func model() throws -> LlamaModel<Float> {
        if let m = Self.cached { return m }
        let m = try LlamaModel<Float>(file: GGUFFile(path: try Fixtures.model()))
        Self.cached = m
        return m
    }

    func greedy(_ model: LlamaModel<Float>, _ prompt: [Int32], _ n: Int, threads: Int = 2) throws -> [Int32] {
        let session = InferenceSession(model: model, capacity: 256, threads: threads)
        var sampler = Sampler(seed: 0)
        sampler.temperature = 0
        var logits = try session.feed(prompt)
        var out: [Int32] = []
        for _ in 0..<n {
            let id = sampler.sample(logits, history: prompt + out)
            out.append(id)
            logits = try session.feed([id])
        }
        return out
    }

    func fullForwardGreedy(_ model: LlamaModel<Float>, _ prompt: [Int32], _ n: Int) throws -> [Int32] {
        var ids = prompt
        for _ in 0..<n {
            let logits = try model.logits(tokens: ids)
            let row = logits[((ids.count - 1) * model.config.vocabulary)...]
            ids.append(Int32(row.indices.max { row[$0] < row[$1] }! - (ids.count - 1) * model.config.vocabulary))
        }
        return Array(ids[prompt.count...])
    }

    /// Expected ids from Hugging Face transformers 5.24 with torch 2.13 (CPU, float32) on the same GGUF:
    /// `/tmp/refenv/bin/python scripts/reference-greedy-ids.py models/SmolLM2-135M-Instruct.Q4_1.gguf`
    static let transformersGreedy: [(prompt: [Int32], continuation: [Int32])] = [
        // "The capital of France is"
        ([504, 3575, 282, 4649, 314], [7042, 30, 198, 198, 504, 2988, 314, 42, 216, 34, 32, 33, 40, 29, 32, 33]),
        // "Once upon a time"
        ([6403, 1980, 253, 655], [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228, 28, 351, 25854, 41658, 284, 14055]),
        // "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        ([1, 4093, 198, 26843, 665, 2, 198, 1, 520, 9531, 198],
         [26843, 665, 28, 339, 5248, 1535, 288, 724, 346, 351, 3534, 346, 2316, 3012, 327, 30]),
    ]

    func testGreedyMatchesTransformers() throws {
        let m = try model()
        for (prompt, expected) in Self.transformersGreedy {
            for threads in [1, 2] {
                XCTAssertEqual(try greedy(m, prompt, 16, threads: threads), expected, "prompt \(prompt), \(threads) threads")
            }
        }
        // The full forward (the training path) agrees too.
        let (prompt, expected) = Self.transformersGreedy[0]
        XCTAssertEqual(try fullForwardGreedy(m, prompt, 8), Array(expected.prefix(8)))
    }

    func testAdapterChangesGreedyTextAndScaleZeroIsTheBase() throws {
        let file = try GGUFFile(path: try Fixtures.model())
        let (adapter, _) = try AdapterFile.read(path: try Fixtures.shared("testdata/reference/smollm2-lora-init.gguf"), as: Float.self)
        let prompt: [Int32] = [6403, 1980, 253, 655]  // "Once upon a time"
        let base = try greedy(try model(), prompt, 48)
        let adapted = try LlamaModel<Float>(file: file)
        try adapted.attach(adapter, multiplier: 1)
        XCTAssertNotEqual(try greedy(adapted, prompt, 48), base)
        let zero = try LlamaModel<Float>(file: file)
        try zero.attach(adapter, multiplier: 0)
        XCTAssertEqual(try greedy(zero, prompt, 48), base)
        // Runtime LoRA in the KV-cache path equals the full forward with the adapter.
        let a = try adapted.logits(tokens: prompt)
        let session = InferenceSession(model: adapted, capacity: 16)
        let last = try session.feed(prompt)
        let V = adapted.config.vocabulary, t = prompt.count - 1
        for i in stride(from: 0, to: V, by: 97) { XCTAssertEqual(last[i], a[t * V + i], accuracy: 2e-3) }
    }
}
