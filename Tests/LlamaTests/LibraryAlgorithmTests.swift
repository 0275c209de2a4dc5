import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import TestSupport
import Tokenizer
import XCTest

/// Perplexity, generation and merging called through the library (no subprocess).
final class LibraryAlgorithmTests: XCTestCase {
    /// llama.cpp's scoring on SmolLM2 against the float32 reference (transformers on the same GGUF, scored as
    /// llama.cpp scores): the first 20 000 bytes of shakespeare.txt, 23 chunks of 256, PPL = 40.5256.
    /// SmolLM2 with its tokenizer, and the tokens of the first `bytes` of shakespeare.txt.
    func smolLM2(textBytes bytes: Int) throws -> (LlamaModel<Float>, Tokenizer, [Int32]) {
        let file = try GGUFFile(path: try Fixtures.model())
        let tokenizer = try Tokenizer(file: file)
        let text = try Data(contentsOf: URL(fileURLWithPath: try Fixtures.shared("data/shakespeare.txt"))).prefix(bytes)
        return (try LlamaModel<Float>(file: file), tokenizer, tokenizer.encode(bytes: Array(text), addSpecial: true, parseSpecial: false))
    }

    func testPerplexityMatchesTheReference() throws {
        let (model, tokenizer, tokens) = try smolLM2(textBytes: 20000)
        let scoring = Perplexity(context: 256, batchTokens: 1024, bos: tokenizer.vocabulary.addBOS ? tokenizer.vocabulary.bos : nil)
        var passes: [Perplexity.Progress] = []
        let result = try scoring.evaluate(model: model, tokens: tokens) { passes.append($0) }
        XCTAssertEqual(result.chunks, 23)
        XCTAssertEqual(result.scoredTokens, 23 * 127)
        XCTAssertEqual(result.perplexity, 40.5256, accuracy: 40.5256 * 0.001)
        XCTAssertGreaterThan(result.uncertainty, 0)
        XCTAssertEqual(passes.count, 6, "4 chunks per pass of 1024 tokens")
        XCTAssertEqual(passes.flatMap(\.runningPerplexity).count, 23)
        XCTAssertEqual(passes.last!.runningPerplexity.last!, result.perplexity, accuracy: 1e-9)
        XCTAssertThrowsError(try Perplexity(context: 256).evaluate(model: model, tokens: Array(tokens.prefix(100))))
    }

    /// Scoring as generation computes: with exact activations, token by token through the KV cache equals the
    /// batched score above; with 8-bit activations it moves (the option is used) by well under 1 %.
    func testTokenByTokenPerplexityAndWhatInt8ActivationsCost() throws {
        let (model, tokenizer, tokens) = try smolLM2(textBytes: 4000)
        var scoring = Perplexity(context: 128, batchTokens: 512, maxChunks: 3, bos: tokenizer.vocabulary.bos)
        scoring.threads = 2
        let batched = try scoring.evaluate(model: model, tokens: tokens).perplexity
        let chunk = [tokenizer.vocabulary.bos!] + tokens[1..<128]
        let exact = try scoring.tokenByTokenLosses(model: model, chunk: chunk)
        let batchedFirst = try model.negativeLogLikelihoods(tokens: chunk, batch: 1, scored: scoring.scoredPositions)
        XCTAssertEqual(exact.count, batchedFirst.count)
        for (a, b) in zip(exact, batchedFirst) { XCTAssertEqual(a, b, accuracy: 1e-4) }
        scoring.activations = .int8
        let int8 = try scoring.evaluate(model: model, tokens: tokens).perplexity
        XCTAssertNotEqual(int8, batched)
        // About ±1 % between builds and thread counts on 192 scored tokens (roundings flip with the activations'
        // last bits); a wrong kernel is off by far more.
        XCTAssertEqual(int8, batched, accuracy: batched * 0.03)
    }

    func tinyModel(tied: Bool = true) throws -> (String, LlamaModel<Float>, Tokenizer) {
        let dir = temporaryDirectory()
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        tiny.tied = tied
        try tiny.write(to: dir + "/base.gguf")
        let file = try GGUFFile(path: dir + "/base.gguf")
        return (dir, try LlamaModel<Float>(file: file), try Tokenizer(file: file))
    }

    func greedySampler() -> Sampler {
        var s = Sampler(seed: 0)
        s.temperature = 0
        return s
    }

    /// A prompt that extends what the cache holds reuses it: the answer equals the one from a fresh session, and only
    /// the new tokens are fed. Stop strings and the token limit end the response.
    func testGeneratorReusesThePrefixAndStops() throws {
        let (_, model, tokenizer) = try tinyModel()
        let first = tokenizer.encode("HELLO WORLD", addSpecial: true, parseSpecial: false)
        let generator = Generator(session: InferenceSession(model: model, capacity: 96), tokenizer: tokenizer,
                                  sampler: greedySampler(), maxTokens: 6)
        let a = try generator.respond(to: first)
        XCTAssertEqual(a.ids.count, 6)
        XCTAssertEqual(a.reason, "limit")
        XCTAssertEqual(generator.promptTokens, first.count)
        let second = first + a.ids + tokenizer.encode(" AGAIN", addSpecial: false, parseSpecial: false)
        let b = try generator.respond(to: second)
        XCTAssertLessThan(generator.promptTokens, first.count + second.count, "the shared prefix is not fed again")
        let fresh = Generator(session: InferenceSession(model: model, capacity: 96), tokenizer: tokenizer,
                              sampler: greedySampler(), maxTokens: 6)
        XCTAssertEqual(try fresh.respond(to: second).ids, b.ids, "reusing the cache gives the same answer")
        // A different prompt shares only its first tokens; the rest of the cache is forgotten.
        let other = tokenizer.encode("HELP", addSpecial: true, parseSpecial: false)
        let fresh2 = Generator(session: InferenceSession(model: model, capacity: 96), tokenizer: tokenizer,
                               sampler: greedySampler(), maxTokens: 6)
        XCTAssertEqual(try generator.respond(to: other).ids, try fresh2.respond(to: other).ids)

        let full = try fresh.respond(to: first)
        guard let stop = full.text.first.map(String.init) else { return }
        generator.stopStrings = [stop]
        let stopped = try generator.respond(to: first)
        XCTAssertEqual(stopped.reason, "stop")
        XCTAssertEqual(stopped.ids.count, 1)
        var streamed = ""
        generator.stopStrings = []
        let cancelled = try generator.respond(to: first) { streamed += $0; return false }
        XCTAssertEqual(cancelled.reason, "cancelled")
        XCTAssertEqual(streamed, cancelled.text)
    }

    /// The KV-cache step (quantized rows, one token) and the batched pass run the same block: equal logits.
    func testCachedStepsEqualTheBatchedPass() throws {
        let (_, model, _) = try tinyModel(tied: false)
        try checkCachedSteps(model)
    }

    /// The same for every architecture's block, with a window of 3 keys on Gemma's sliding layers (7 positions).
    func testCachedStepsEqualTheBatchedPassEveryArchitecture() throws {
        for arch in ["qwen2", "qwen3", "gemma2", "gemma3", "phi3"] {
            var tiny = TinyLlama()
            tiny.architecture = arch
            if arch == "phi3" { tiny.addLongRoPE(rotatedDimensions: 4, originalContext: 4) }
            if arch == "qwen3" || arch == "gemma3" { tiny.headDimension = 6 }
            if arch.hasPrefix("gemma") { (tiny.slidingWindow, tiny.slidingPattern, tiny.ropeFreqBase, tiny.tied) = (3, 2, 1e6, true) }
            if arch == "gemma2" { (tiny.attentionSoftCap, tiny.finalSoftCap) = (1.5, 2) }
            let path = temporaryDirectory() + "/\(arch).gguf"
            try tiny.write(to: path)
            try checkCachedSteps(try LlamaModel<Float>(file: GGUFFile(path: path)))
        }
    }

    func checkCachedSteps(_ model: LlamaModel<Float>) throws {
        let tokens: [Int32] = [3, 17, 42, 5, 60, 11, 29]
        model.runContext = 16  // the session's capacity (LongRoPE's factors depend on it)
        let all = try model.logits(tokens: tokens)
        let session = InferenceSession(model: model, capacity: 16)
        let V = model.config.vocabulary
        _ = try session.feed(Array(tokens.prefix(3)))
        for t in 3..<tokens.count {
            let step = try session.feed([tokens[t]])
            for i in 0..<V {
                XCTAssertEqual(step[i], all[t * V + i], accuracy: 1e-4, "\(model.config.architecture) position \(t)")
            }
        }
    }

    func randomAdapter(_ model: LlamaModel<Float>, seed: UInt64, targets: [LoRATarget] = LoRATarget.allCases) throws -> LoRAAdapter<Float> {
        let a = try LoRAAdapter<Float>.initialized(layers: model.config.layers, shapes: { model.config.features(of: $0) },
                                                   targets: targets, rank: { _ in 4 }, alpha: 8, rsLoRA: false, seed: seed)
        var rng = SplitMix64(seed: seed)
        for n in a.order { a[n]!.b = a[n]!.b.map { _ in rng.nextSigned() * 0.2 } }
        return a
    }

    /// A K-quant base (the Q4_K_M files people use): `.keep` requantizes each merged tensor into its own K-quant,
    /// exactly the requantized W + ΔW, and the merged logits follow the adapter's change to within that rounding; the
    /// default (`.widened`) writes them as F16, as close to the runtime adapter as float32 allows.
    func testMergingAKQuantBase() throws {
        let dir = temporaryDirectory()
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        (tiny.embeddingLength, tiny.feedForwardLength, tiny.headCount, tiny.kvHeadCount) = (256, 512, 4, 2)
        tiny.weightType = .q4_K
        try tiny.write(to: dir + "/base.gguf")
        let baseFile = try GGUFFile(path: dir + "/base.gguf")
        let base = try LlamaModel<Float>(file: baseFile)
        let adapter = try randomAdapter(base, seed: 3, targets: [.attnQ, .attnV, .ffnDown])
        BLAS.setThreads(2)  // ffn_down's rows are quantized in two parts
        defer { BLAS.setThreads(1) }
        let result = try Merger(storage: .keep).merge(model: base, inputs: [Merger.Input(adapter: adapter)], to: dir + "/m.gguf")
        XCTAssertEqual(result.mergedTensors, 2 * 3)
        XCTAssertTrue(result.fallbacks.isEmpty, "\(result.fallbacks)")
        let merged = try GGUFFile(path: dir + "/m.gguf")
        for name in ["blk.0.attn_q.weight", "blk.1.ffn_down.weight"] {
            let t = try merged.requireTensor(name), b = try baseFile.requireTensor(name)
            XCTAssertEqual(t.type, .q4_K, name)
            XCTAssertNotEqual(Array(merged.data(of: t)), Array(baseFile.data(of: b)), "\(name) changed")
            var w = try baseFile.floats(of: b)
            let pair = adapter[String(name.dropLast(".weight".count))]!
            for (i, d) in pair.delta().enumerated() { w[i] += d }
            XCTAssertEqual(Array(merged.data(of: t)), try Quantize.quantize(w, to: .q4_K), "\(name) is W + ΔW requantized")
        }
        XCTAssertEqual(try merged.requireTensor("blk.0.attn_k.weight").type, .q4_K, "untouched tensors are copied")
        let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 12]
        func logits(_ path: String, _ adapters: [LoRAAdapter<Float>] = []) throws -> [Float] {
            let m = try LlamaModel<Float>(file: GGUFFile(path: path))
            for a in adapters { try m.attach(a, multiplier: 1) }
            return try m.logits(tokens: tokens)
        }
        let runtime = try logits(dir + "/base.gguf", [adapter]), plain = try logits(dir + "/base.gguf")
        let change = zip(runtime, plain).map { abs($0 - $1) }.max()!, mergedLogits = try logits(dir + "/m.gguf")
        XCTAssertLessThan(zip(runtime, mergedLogits).map { abs($0 - $1) }.max()!, 0.5 * change,
                          "the merged model carries most of the adapter's change (\(change))")
        _ = try Merger().merge(model: base, inputs: [Merger.Input(adapter: adapter)], to: dir + "/f16.gguf")
        let widened = try GGUFFile(path: dir + "/f16.gguf")
        XCTAssertEqual(try widened.requireTensor("blk.0.attn_q.weight").type, .f16, "the default widens merged K-quants")
        XCTAssertEqual(try widened.requireTensor("blk.0.attn_k.weight").type, .q4_K, "and copies the rest")
        XCTAssertEqual(try widened.requireTensor("blk.0.attn_norm.weight").type, .f32)
        XCTAssertLessThan(zip(runtime, try logits(dir + "/f16.gguf")).map { abs($0 - $1) }.max()!, 0.01 * change, "F16 keeps it")
        // Rows of 32 are not whole K-quant blocks: as llama-quantize does, Q4_K falls back to Q5_0 and Q6_K to Q8_0
        // (rows of 16 fit neither: F16), each tensor listed with its row length.
        let (smallDir, small, _) = try tinyModel()
        let smallAdapter = try randomAdapter(small, seed: 4, targets: [.attnQ])
        let fallback = try Merger(outputType: .q4_K).merge(model: small, inputs: [Merger.Input(adapter: smallAdapter)], to: smallDir + "/k.gguf")
        XCTAssertEqual(fallback.fallbacks.map { "\($0.tensor) \($0.requested.name) \($0.rowLength) \($0.written.name)" },
                       ["blk.0.attn_q.weight Q4_K 32 Q5_0", "blk.1.attn_q.weight Q4_K 32 Q5_0"])
        XCTAssertEqual(try GGUFFile(path: smallDir + "/k.gguf").requireTensor("blk.0.attn_q.weight").type, .q5_0)
        XCTAssertEqual(Merger.fallback(for: .q6_K, rowLength: 896), .q8_0)
        XCTAssertEqual(Merger.fallback(for: .q3_K, rowLength: 640), .q4_0)
        XCTAssertEqual(Merger.fallback(for: .q5_K, rowLength: 96), .q5_1)
        XCTAssertEqual(Merger.fallback(for: .q4_K, rowLength: 16), .f16)
    }

    /// Merged weights give the runtime adapter's logits; multiplier 0 reproduces the base; 0.5 + 0.5 merges the
    /// average of the two deltas.
    func testMergerEqualsRuntimeAdapters() throws {
        let (dir, base, _) = try tinyModel(tied: true)
        let a = try randomAdapter(base, seed: 1), b = try randomAdapter(base, seed: 2)
        let tokens: [Int32] = [1, 5, 9, 33, 2, 60, 12]
        func logits(_ path: String, _ adapters: [(LoRAAdapter<Float>, Float)] = []) throws -> [Float] {
            let m = try LlamaModel<Float>(file: GGUFFile(path: path))
            for (adapter, s) in adapters { try m.attach(adapter, multiplier: s) }
            return try m.logits(tokens: tokens)
        }
        let merger = try Merger(outputType: .f32)
        let result = try merger.merge(model: base, inputs: [Merger.Input(adapter: a)], to: dir + "/m.gguf")
        XCTAssertEqual(result.mergedTensors, 2 * 7 + 2, "every linear, the embedding and the untied head")
        XCTAssertNotNil(try GGUFFile(path: dir + "/m.gguf").tensor(named: "output.weight"), "the head adapter unties the head")
        let runtime = try logits(dir + "/base.gguf", [(a, 1)])
        XCTAssertLessThan(zip(runtime, try logits(dir + "/m.gguf")).map { abs($0 - $1) }.max()!, 1e-4)
        _ = try merger.merge(model: base, inputs: [Merger.Input(adapter: a, multiplier: 0)], to: dir + "/zero.gguf")
        XCTAssertEqual(try logits(dir + "/zero.gguf"), try logits(dir + "/base.gguf"), "multiplier 0 is the base exactly")
        _ = try merger.merge(model: base, inputs: [Merger.Input(adapter: a, multiplier: 0.5), Merger.Input(adapter: b, multiplier: 0.5)],
                             to: dir + "/ab.gguf")
        _ = try merger.merge(model: base, inputs: [Merger.Input(adapter: b)], to: dir + "/mb.gguf")
        let ab = try GGUFFile(path: dir + "/ab.gguf"), ma = try GGUFFile(path: dir + "/m.gguf"), mb = try GGUFFile(path: dir + "/mb.gguf")
        for t in ab.tensors where t.name.contains("attn_q") || t.name.contains("ffn_down") || t.name == "token_embd.weight" {
            let x = try ab.floats(of: t), y = try ma.floats(of: ma.requireTensor(t.name)), z = try mb.floats(of: mb.requireTensor(t.name))
            for i in stride(from: 0, to: x.count, by: 7) { XCTAssertEqual(x[i], (y[i] + z[i]) / 2, accuracy: 1e-5, t.name) }
        }
        // ΔW = s·B·A, the rule the runtime product applies.
        let pair = a["blk.1.attn_v"]!
        let delta = pair.delta(multiplier: 2)
        var expected: Float = 0
        for j in 0..<pair.rank { expected += pair.b[3 * pair.rank + j] * pair.a[j * pair.inFeatures + 5] }
        XCTAssertEqual(delta[3 * pair.inFeatures + 5], 2 * pair.scale * expected, accuracy: 1e-6)
        XCTAssertThrowsError(try Merger(outputType: .q8_K))
        // ‖ΔW‖ from two r × r products equals the norm of the formed ΔW.
        let formed = pair.delta(multiplier: 2).reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
        XCTAssertEqual(pair.deltaNorm(multiplier: 2), formed, accuracy: 1e-5 * formed)
    }
}
