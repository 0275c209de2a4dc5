import Foundation
import GGUF
import Kernels
import Llama
import LoRA
import TestSupport
import XCTest

/// Backward passes against central finite differences in Double.
final class GradientCheckTests: XCTestCase {
    var rng = SplitMix64(seed: 11)

    func random(_ n: Int, _ scale: Double = 1) -> [Double] { (0..<n).map { _ in Double(rng.nextSigned()) * scale } }

    /// Checks dL/dθ for L = Σ f(θ)·g (a random projection of the op's output) against central differences.
    func check(_ name: String, params: inout [Double], analytic: [Double], tolerance: Double = 1e-6,
               loss: ([Double]) -> Double) {
        let h = 1e-5
        var worst = 0.0
        for i in stride(from: 0, to: params.count, by: max(1, params.count / 40)) {
            let saved = params[i]
            params[i] = saved + h
            let up = loss(params)
            params[i] = saved - h
            let down = loss(params)
            params[i] = saved
            let numeric = (up - down) / (2 * h)
            worst = max(worst, abs(numeric - analytic[i]) / max(1e-3, abs(numeric) + abs(analytic[i])))
        }
        XCTAssertLessThan(worst, tolerance, name)
    }

    func testRMSNorm() {
        let rows = 3, cols = 8
        var x = random(rows * cols), w = random(cols), g = random(rows * cols)
        func f(_ x: [Double], _ w: [Double]) -> Double {
            var y = [Double](repeating: 0, count: rows * cols)
            RMSNorm.forward(x: x, weight: w, y: &y, rstd: nil, rows: rows, cols: cols, eps: 1e-5)
            return zip(y, g).reduce(0) { $0 + $1.0 * $1.1 }
        }
        var y = [Double](repeating: 0, count: rows * cols), rstd = [Double](repeating: 0, count: rows)
        RMSNorm.forward(x: x, weight: w, y: &y, rstd: &rstd, rows: rows, cols: cols, eps: 1e-5)
        var dx = [Double](repeating: 0, count: rows * cols)
        RMSNorm.backward(dy: g, x: x, weight: w, rstd: rstd, dx: &dx, rows: rows, cols: cols)
        check("rmsnorm dx", params: &x, analytic: dx) { f($0, w) }
        _ = w.count; w[0] += 0
    }

    func testGatedActivations() {
        checkGated(SwiGLU.self)
        checkGated(GeGLU.self)
    }

    func checkGated<G: GatedActivation>(_ kind: G.Type) {
        let n = 16
        var gate = random(n, 3), up = random(n)
        let g = random(n)
        func f(_ a: [Double], _ b: [Double]) -> Double {
            var out = [Double](repeating: 0, count: n)
            G.forward(gate: a, up: b, out: &out, count: n)
            return zip(out, g).reduce(0) { $0 + $1.0 * $1.1 }
        }
        var dg = [Double](repeating: 0, count: n), du = dg
        G.backward(dOut: g, gate: gate, up: up, dGate: &dg, dUp: &du, count: n)
        check("\(G.self) gate", params: &gate, analytic: dg) { f($0, up) }
        check("\(G.self) up", params: &up, analytic: du) { f(gate, $0) }
    }

    func testRoPE() {
        for layout in [RoPELayout.adjacentPairs, .halves] { checkRoPE(layout) }
    }

    func checkRoPE(_ layout: RoPELayout) {
        let tokens = 5, heads = 2, d = 8
        var x = random(tokens * heads * d), g = random(tokens * heads * d)
        let rope = RoPE<Double>(positions: [0, 1, 2, 7, 30], frequencies: RoPE<Double>.frequencies(headDim: d, base: 10000),
                                layout: layout)
        func f(_ x: [Double]) -> Double {
            var y = x
            y.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: tokens, heads: heads) }
            return zip(y, g).reduce(0) { $0 + $1.0 * $1.1 }
        }
        var dx = g
        dx.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: tokens, heads: heads, inverse: true) }
        check("rope", params: &x, analytic: dx, loss: f)
        _ = g.count; g[0] += 0
    }

    func testAttentionWithGroupedKeys() {
        // Plain, and tiled in tiles of 2 and 3 over 5 positions (a partial last tile).
        for tile in [nil, 2, 3] {
            checkAttention(scoring: nil, tile: tile)
            // Gemma's scoring: another scale, soft-capped scores, a window of 2 keys.
            checkAttention(scoring: AttentionScoring(scale: 0.7, softCap: 1.5, window: 2), tile: tile)
        }
    }

    func checkAttention(scoring: AttentionScoring<Double>?, tile: Int?) {
        let batch = 2, L = 5, H = 4, KV = 2, d = 4
        let att = Attention<Double>(batch: batch, length: L, heads: H, kvHeads: KV, headDim: d, scoring: scoring, tile: tile)
        var q = random(batch * L * H * d), k = random(batch * L * KV * d), v = random(batch * L * KV * d)
        let g = random(batch * L * H * d)
        func f(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            var out = [Double](repeating: 0, count: q.count), p = [Double](repeating: 0, count: att.savedCount)
            att.forward(q: q, k: k, v: v, out: &out, saved: &p)
            return zip(out, g).reduce(0) { $0 + $1.0 * $1.1 }
        }
        var out = [Double](repeating: 0, count: q.count), p = [Double](repeating: 0, count: att.savedCount)
        att.forward(q: q, k: k, v: v, out: &out, saved: &p)
        var dq = [Double](repeating: 0, count: q.count), dk = [Double](repeating: 0, count: k.count), dv = dk
        att.backward(dOut: g, q: q, k: k, v: v, out: out, saved: p, dq: &dq, dk: &dk, dv: &dv)
        check("attention q", params: &q, analytic: dq) { f($0, k, v) }
        check("attention k", params: &k, analytic: dk) { f(q, $0, v) }
        check("attention v", params: &v, analytic: dv) { f(q, k, $0) }
        // Causality: the first position's output only sees the first key.
        var k2 = k
        for i in (KV * d)..<(L * KV * d) { k2[i] += 1 }
        var out2 = out
        att.forward(q: q, k: k2, v: v, out: &out2, saved: &p)
        for i in 0..<(H * d) { XCTAssertEqual(out2[i], out[i], accuracy: 1e-12) }
        guard let window = scoring?.window else { return }
        // The window: the last position does not see the keys more than window − 1 positions back.
        var k3 = k
        for i in 0..<((L - window) * KV * d) { k3[i] += 1 }
        var out3 = out
        att.forward(q: q, k: k3, v: v, out: &out3, saved: &p)
        for i in ((L - 1) * H * d)..<(L * H * d) { XCTAssertEqual(out3[i], out[i], accuracy: 1e-12) }
        XCTAssertNotEqual(Array(out3[(H * d)..<(2 * H * d)]), Array(out[(H * d)..<(2 * H * d)]), "position 1 sees key 0")
    }

    func testCrossEntropy() {
        let rows = 3, vocab = 7
        var logits = random(rows * vocab, 2)
        let targets: [Int32] = [2, -1, 6]
        func f(_ l: [Double]) -> Double {
            var copy = l
            return CrossEntropy.forwardBackward(logits: &copy, targets: targets, rows: rows, vocab: vocab, gradientScale: 1, gradient: false)
        }
        var grad = logits
        CrossEntropy.forwardBackward(logits: &grad, targets: targets, rows: rows, vocab: vocab, gradientScale: 1, gradient: true)
        check("cross-entropy", params: &logits, analytic: grad, loss: f)
    }

    /// The whole tiny model's LoRA gradients (every target, GQA, tied and untied heads) against finite differences;
    /// untied, also with tiles of 4 over rows of 6 and with the plain attention (the default is one tile).
    func testWholeModelLoRAGradients() throws {
        for tied in [false, true] {
            var tiny = TinyLlama()
            tiny.tied = tied
            try checkWholeModel(tiny)
            if !tied { for tile in [4, 0] { try checkWholeModel(tiny, attentionTile: tile) } }
        }
    }

    /// The same for every other architecture's block: Qwen2's biases, Qwen3's Q/K norms with a head size that is
    /// not embedding / heads, Gemma 2's GeGLU, post-norms, embedding scale, soft caps and sliding window, Gemma 3's
    /// Q/K norms and sliding layers with their own RoPE base, Phi-3's fused QKV and gate+up with partial rotary and
    /// LongRoPE's long factors and attention factor. Windows of 3 keys over sequences of 6 tokens.
    func testWholeModelLoRAGradientsEveryArchitecture() throws {
        for arch in ["qwen2", "qwen3", "gemma2", "gemma3", "phi3"] {
            var tiny = TinyLlama()
            tiny.architecture = arch
            if arch == "phi3" { tiny.addLongRoPE(rotatedDimensions: 2, originalContext: 4) }
            tiny.tied = arch.hasPrefix("gemma")
            if arch == "qwen3" || arch == "gemma3" { tiny.headDimension = 6 }
            if arch.hasPrefix("gemma") { (tiny.slidingWindow, tiny.slidingPattern, tiny.ropeFreqBase) = (3, 2, 1e6) }
            if arch == "gemma2" { (tiny.attentionSoftCap, tiny.finalSoftCap) = (1.5, 2) }
            try checkWholeModel(tiny, attentionTile: arch == "gemma2" ? 4 : Attention<Double>.defaultTile)  // Gemma 2: tiles with caps and windows
        }
    }

    /// A head computed in chunks of vocabulary rows (as for large vocabularies) gives the same loss and the same
    /// gradients, with and without a final soft cap, tied and untied: with a trainable head adapter (two passes)
    /// and with a frozen one (one pass).
    func testWholeModelLoRAGradientsWithChunkedHead() throws {
        for (arch, tied) in [("llama", false), ("llama", true), ("gemma2", true)] {
            var tiny = TinyLlama()
            tiny.architecture = arch
            tiny.tied = tied
            if arch == "gemma2" { (tiny.slidingWindow, tiny.attentionSoftCap, tiny.finalSoftCap) = (3, 1.5, 2) }
            try checkWholeModel(tiny, chunkedHead: true)
            try checkWholeModel(tiny, chunkedHead: true, frozenHead: true)
        }
    }

    /// A head that fits dense is computed in vocabulary chunks in training when no trainable adapter adapts it, and
    /// stays dense with a trainable head adapter or without training.
    func testTrainingWithoutAHeadAdapterChunksTheHead() throws {
        let path = temporaryDirectory() + "/tiny.gguf"
        try TinyLlama().write(to: path)
        let model = try LlamaModel<Double>(file: GGUFFile(path: path))
        func adapter(_ targets: [LoRATarget]) throws -> LoRAAdapter<Double> {
            try LoRAAdapter<Double>.initialized(layers: model.config.layers, shapes: { model.config.features(of: $0) },
                                                targets: targets, rank: { _ in 2 }, alpha: 4, rsLoRA: false, seed: 1)
        }
        XCTAssertFalse(model.headIsChunked, "no adapter")
        try model.attach(adapter([.output]), multiplier: 0.5)
        XCTAssertFalse(model.headIsChunked, "a head adapter applied, nothing trained")
        try model.attach(adapter([.attnQ]), trainable: true)
        XCTAssertTrue(model.headIsChunked, "training the blocks only")
        model.trainsFrozenHeadInChunks = false
        XCTAssertFalse(model.headIsChunked)
        model.trainsFrozenHeadInChunks = true
        try model.attach(adapter([.output]), trainable: true)
        XCTAssertFalse(model.headIsChunked, "training the head")
    }

    func checkWholeModel(_ base: TinyLlama, chunkedHead: Bool = false, frozenHead: Bool = false,
                         attentionTile: Int = Attention<Double>.defaultTile) throws {
        do {
            var tiny = base
            let tied = tiny.tied
            tiny.vocabularySize = 48
            tiny.embeddingLength = 16
            tiny.headCount = 4
            tiny.kvHeadCount = 2
            tiny.feedForwardLength = 24
            let path = temporaryDirectory() + "/tiny.gguf"
            try tiny.write(to: path)
            let model = try LlamaModel<Double>(file: GGUFFile(path: path))
            model.headChunkRows = 5  // several chunks
            model.runContext = 8  // beyond a LongRoPE model's original context: the long factors
            model.attentionTile = attentionTile
            if chunkedHead {
                (model.denseHeadLimit, model.vocabularyChunk) = (0, 7)  // 7 chunks of the 48 rows
                XCTAssertTrue(model.headIsChunked)
            }
            let adapter = try LoRAAdapter<Double>.initialized(
                layers: model.config.layers, shapes: { model.config.features(of: $0) },
                targets: LoRATarget.allCases.filter { !frozenHead || $0 != .output },
                rank: { $0 == .ffnDown ? 3 : 2 }, alpha: 4, rsLoRA: false, seed: 5)
            for name in adapter.order { adapter[name]!.b = random(adapter[name]!.b.count, 0.3) }  // B ≠ 0 so A gets gradient
            if frozenHead {
                let head = try LoRAAdapter<Double>.initialized(layers: model.config.layers, shapes: { model.config.features(of: $0) },
                                                               targets: [.output], rank: { _ in 2 }, alpha: 4, rsLoRA: false, seed: 9)
                head["output"]!.b = random(head["output"]!.b.count, 0.3)
                try model.attach(head, multiplier: 0.7)
            }
            try model.attach(adapter, trainable: true)
            let tokens: [Int32] = [3, 17, 5, 9, 40, 2, 11, 30, 7, 7, 1, 45]
            let targets: [Int32] = [17, 5, 9, 40, -1, 11, 30, 7, 7, 1, 45, 0]
            if chunkedHead {
                // The chunked head's logits and gradients equal the dense head's.
                let chunked = try model.logits(tokens: tokens, batch: 2)
                adapter.zeroGradients()
                _ = try model.forwardBackward(tokens: tokens, targets: targets, batch: 2, lossScale: 1.0 / 11)
                let chunkedGradients = adapter.order.map { adapter[$0]!.gradA + adapter[$0]!.gradB }
                (model.denseHeadLimit, model.trainsFrozenHeadInChunks) = (.max, false)
                XCTAssertFalse(model.headIsChunked)
                let dense = try model.logits(tokens: tokens, batch: 2)
                for i in dense.indices { XCTAssertEqual(chunked[i], dense[i], accuracy: 1e-12) }
                adapter.zeroGradients()
                _ = try model.forwardBackward(tokens: tokens, targets: targets, batch: 2, lossScale: 1.0 / 11)
                for (name, g) in zip(adapter.order, chunkedGradients) {
                    let d = adapter[name]!.gradA + adapter[name]!.gradB
                    for i in d.indices { XCTAssertEqual(g[i], d[i], accuracy: 1e-12, name) }
                }
                (model.denseHeadLimit, model.trainsFrozenHeadInChunks) = (0, true)
            }
            var withoutCheckpointing: [[Double]] = []
            for checkpointing in [false, true] {
                model.gradientCheckpointing = checkpointing
                adapter.zeroGradients()
                let (sum, count) = try model.forwardBackward(tokens: tokens, targets: targets, batch: 2, lossScale: 1.0 / 11)
                XCTAssertEqual(count, 11)
                // The recomputed forward (which skips what backward does not read) gives the same gradients.
                let gradients = adapter.order.map { adapter[$0]!.gradA + adapter[$0]!.gradB }
                if checkpointing {
                    let largestChange = zip(gradients.joined(), withoutCheckpointing.joined()).map { abs($0 - $1) }.max() ?? .infinity
                    XCTAssertEqual(gradients.map(\.count), withoutCheckpointing.map(\.count))
                    XCTAssertEqual(largestChange, 0, "\(tiny.architecture): checkpointing changes no gradient")
                } else {
                    withoutCheckpointing = gradients
                }
                let lossOnly = try model.loss(tokens: tokens, targets: targets, batch: 2)
                XCTAssertEqual(sum, lossOnly.sum, accuracy: 1e-10)
                // Positions after the last scored one change no loss and no gradient (the trainer cuts rows there):
                // the same rows with four unscored positions appended to each.
                let padded: [Int32] = Array(tokens[0..<6]) + [2, 2, 2, 2] + Array(tokens[6..<12]) + [2, 2, 2, 2]
                let paddedTargets: [Int32] = Array(targets[0..<6]) + [-1, -1, -1, -1] + Array(targets[6..<12]) + [-1, -1, -1, -1]
                adapter.zeroGradients()
                let (paddedSum, paddedCount) = try model.forwardBackward(tokens: padded, targets: paddedTargets, batch: 2, lossScale: 1.0 / 11)
                XCTAssertEqual(paddedCount, 11)
                XCTAssertEqual(paddedSum, sum, accuracy: 1e-12 * abs(sum), "\(tiny.architecture): padded rows' loss")
                let paddedGradients = adapter.order.map { adapter[$0]!.gradA + adapter[$0]!.gradB }
                let largestPaddingChange = zip(paddedGradients.joined(), gradients.joined()).map { abs($0 - $1) }.max() ?? .infinity
                XCTAssertLessThan(largestPaddingChange, 1e-12, "\(tiny.architecture): padded rows' gradients")
                adapter.zeroGradients()
                _ = try model.forwardBackward(tokens: tokens, targets: targets, batch: 2, lossScale: 1.0 / 11)
                for name in adapter.order {
                    let pair = adapter[name]!
                    func loss() -> Double { (try! model.loss(tokens: tokens, targets: targets, batch: 2).sum) / 11 }
                    let originalA = pair.a, originalB = pair.b
                    var a = originalA
                    check("\(tiny.architecture) \(name).A tied=\(tied) tile=\(attentionTile)", params: &a, analytic: pair.gradA, tolerance: 1e-5) { v in
                        pair.a = v; defer { pair.a = originalA }; return loss()
                    }
                    var b = originalB
                    check("\(tiny.architecture) \(name).B tied=\(tied) tile=\(attentionTile)", params: &b, analytic: pair.gradB, tolerance: 1e-5) { v in
                        pair.b = v; defer { pair.b = originalB }; return loss()
                    }
                }
            }
        }
    }
}
