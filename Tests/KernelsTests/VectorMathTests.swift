import CKernels
import Foundation
import Kernels
import XCTest

/// Each vector kernel against its plain reference (libm's expf and the scalar loops).
final class VectorMathTests: XCTestCase {
    var seed: UInt64 = 7
    func uniform(_ lo: Float, _ hi: Float) -> Float {
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        return lo + (hi - lo) * Float(seed >> 40) / Float(1 << 24)
    }

    func relativeError(_ a: [Float], _ b: [Float]) -> Float {
        zip(a, b).map { abs($0 - $1) / max(abs($1), 1e-30) }.max() ?? 0
    }

    func testExpWithinTwoULPOfLibm() {
        var worst: Float = 0
        for _ in 0..<20_000 {
            let x = VectorMath.Vector((0..<16).map { _ in uniform(-87, 88) })
            let e = VectorMath.exp(x)
            for i in 0..<16 {
                let exact = expf(x[i])
                worst = max(worst, abs(e[i] - exact) / exact.ulp)
            }
        }
        XCTAssertLessThanOrEqual(worst, 2, "worst error in ulp")
        let special = VectorMath.exp(VectorMath.Vector([0, -.infinity, .infinity, .nan, -100, 100, -87.3, 88.3,
                                                          1, -1, 0.5, -0.5, 1e-8, -1e-8, 10, -10]))
        XCTAssertEqual(special[0], 1)
        XCTAssertEqual(special[1], 0)
        XCTAssertEqual(special[2], .infinity)
        XCTAssertTrue(special[3].isNaN, "NaN must stay NaN")
        XCTAssertEqual(special[4], 0)
        XCTAssertEqual(special[5], .infinity)
        XCTAssertEqual(special[6], expf(-87.3), accuracy: 2 * expf(-87.3).ulp)
        XCTAssertEqual(special[7], expf(88.3), accuracy: 2 * expf(88.3).ulp)
        XCTAssertEqual(special[8], expf(1), accuracy: 2 * expf(1).ulp)
    }

    /// CKernels' e^x (elementwise.c), read through lk_exp_sum's stored terms: the same bound and special values as
    /// VectorMath.exp, and a sum that a NaN poisons.
    func testCKernelExpWithinTwoULPOfLibm() throws {
        guard lk_elementwise_supported() != 0 else { throw XCTSkip("no AVX2 + FMA here") }
        let x = (0..<20_003).map { _ in uniform(-87, 88) }
        var e = [Float](repeating: 0, count: x.count)
        let sum = lk_exp_sum(x, Int32(x.count), 0, &e)
        var worst: Float = 0
        for i in 0..<x.count { worst = max(worst, abs(e[i] - expf(x[i])) / expf(x[i]).ulp) }
        XCTAssertLessThanOrEqual(worst, 2, "worst error in ulp")
        XCTAssertEqual(sum, e.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-6 * sum)
        let special: [Float] = [0, -.infinity, .infinity, -100, 100, 1, 2, -87.3, 88.3, 88.7]
        var out = [Float](repeating: 7, count: special.count + 3)
        _ = lk_exp_sum(special, Int32(special.count), 0, &out)
        XCTAssertEqual(Array(out[0..<5]), [1, 0, .infinity, 0, .infinity])
        XCTAssertEqual(out[5], expf(1), accuracy: 2 * expf(1).ulp)
        XCTAssertEqual(out[8], expf(88.3), accuracy: 2 * expf(88.3).ulp)
        XCTAssertEqual(Array(out[special.count...]), [7, 7, 7], "nothing written past the end")
        XCTAssertEqual(lk_exp_sum([3], 1, 3, nil), 1)
        XCTAssertTrue(lk_exp_sum([1, .nan, 2], 3, 0, nil).isNaN, "NaN must reach the sum")
    }

    /// Runs `body` with the exp-based loops in CKernels' AVX2 versions (where this CPU has them) and in Swift's vectors.
    func forEachElementwisePath(_ body: (String) throws -> Void) rethrows {
        let chosen = VectorMath.elementwiseKernels
        defer { VectorMath.elementwiseKernels = chosen }
        for kernels in lk_elementwise_supported() != 0 ? [true, false] : [false] {
            VectorMath.elementwiseKernels = kernels
            try body(kernels ? "CKernels" : "Swift vectors")
        }
    }

    func testSoftmaxRowsMatchReference() {
        forEachElementwisePath { path in
            for (count, visible) in [(1, 1), (7, 3), (16, 16), (17, 17), (256, 1), (256, 100), (256, 256), (300, 257)] {
                let row = (0..<count).map { _ in uniform(-30, 30) }
                var fast = row, reference = row
                fast.withUnsafeMutableBufferPointer { Attention<Float>.causalSoftmaxFast($0.baseAddress!, count: count, visible: visible) }
                reference.withUnsafeMutableBufferPointer {
                    Attention<Float>.causalSoftmaxReference($0.baseAddress!, count: count, visible: visible)
                }
                for j in 0..<count { XCTAssertEqual(fast[j], reference[j], accuracy: 2e-6 * max(1, reference[j]), "\(count)/\(visible) at \(j), \(path)") }
                XCTAssertEqual(fast[visible...].reduce(0, +), 0)
            }
        }
    }

    func testCrossEntropyMatchesReference() {
        forEachElementwisePath { path in
            for vocab in [1000, 1007] {  // 1007: rows that end in a partial vector
                let rows = 24
                let logits = (0..<(rows * vocab)).map { _ in uniform(-20, 20) }
                let targets = (0..<rows).map { $0 % 5 == 3 ? Int32(-1) : Int32(($0 * 37) % vocab) }
                for gradient in [false, true] {
                    var fast = logits, reference = logits
                    var fastLosses = [Float](repeating: 9, count: rows), referenceLosses = fastLosses
                    let fastTotal = CrossEntropy.forwardBackward(logits: &fast, targets: targets, rows: rows, vocab: vocab,
                                                                 gradientScale: 0.25, gradient: gradient, losses: &fastLosses)
                    let referenceTotal = CrossEntropy.rowsReference(logits: &reference, targets: targets, rows: 0..<rows, vocab: vocab,
                                                                    gradientScale: Float(0.25), gradient: gradient,
                                                                    losses: &referenceLosses)
                    XCTAssertEqual(fastTotal, referenceTotal, accuracy: 1e-5 * abs(referenceTotal))
                    for r in 0..<rows { XCTAssertEqual(fastLosses[r], referenceLosses[r], accuracy: 1e-5 * max(1, referenceLosses[r])) }
                    if gradient {
                        for i in 0..<fast.count { XCTAssertEqual(fast[i], reference[i], accuracy: 1e-7) }
                    } else {
                        XCTAssertEqual(fast, logits, "without the gradient the logits stay as they were")
                    }
                }
                // A NaN logit makes the loss NaN (the NaN guard depends on it).
                var poisoned = logits
                poisoned[5] = .nan
                let total = CrossEntropy.forwardBackward(logits: &poisoned, targets: targets, rows: rows, vocab: vocab,
                                                         gradientScale: 1, gradient: true)
                XCTAssertTrue(total.isNaN, path)
            }
        }
    }

    func testGatedActivationsMatchReference() {
        forEachElementwisePath { _ in
            checkGated(SwiGLU.self)
            checkGated(GeGLU.self)
        }
    }

    func checkGated<G: GatedActivation>(_ kind: G.Type) {
        let n = 1000 + 13
        let gate = (0..<n).map { _ in uniform(-12, 12) }, up = (0..<n).map { _ in uniform(-3, 3) }
        let dOut = (0..<n).map { _ in uniform(-1, 1) }
        var fast = [Float](repeating: 0, count: n), reference = fast
        G.forwardFast(gate: gate, up: up, out: &fast, count: n)
        G.forwardReference(gate: gate, up: up, out: &reference, count: n)
        XCTAssertLessThan(relativeError(fast, reference), 1e-5, "\(G.self)")
        var dgFast = [Float](repeating: 0, count: n), duFast = dgFast, dgReference = dgFast, duReference = dgFast
        G.backwardFast(dOut: dOut, gate: gate, up: up, dGate: &dgFast, dUp: &duFast, count: n)
        G.backwardReference(dOut: dOut, gate: gate, up: up, dGate: &dgReference, dUp: &duReference, count: n)
        for i in 0..<n {
            XCTAssertEqual(dgFast[i], dgReference[i], accuracy: 1e-5 * max(1, abs(dgReference[i])), "\(G.self)")
            XCTAssertEqual(duFast[i], duReference[i], accuracy: 1e-5 * max(1, abs(duReference[i])), "\(G.self)")
        }
    }

    /// GELU(tanh) at points transformers' gelu_pytorch_tanh gives (torch 2.13, float64).
    func testGeGLUValues() {
        let g: [Double] = [-3, -1, -0.5, 0, 0.5, 1, 3]
        let expected: [Double] = [-0.0036373920817729943, -0.15880800939172324, -0.15428599017485606, 0,
                                  0.34571400982514394, 0.8411919906082768, 2.996362607918227]
        for (x, e) in zip(g, expected) { XCTAssertEqual(GeGLU.value(x), e, accuracy: 1e-12) }
    }

    /// The whole attention backward with Float (vector softmax backward) against Double (the reference loops).
    func testAttentionFloatMatchesDouble() {
        let attention = Attention<Float>(batch: 2, length: 37, heads: 4, kvHeads: 2, headDim: 8)
        let reference = Attention<Double>(batch: 2, length: 37, heads: 4, kvHeads: 2, headDim: 8)
        let n = 2 * 37
        let q = (0..<(n * 32)).map { _ in uniform(-1, 1) }, k = (0..<(n * 16)).map { _ in uniform(-1, 1) }
        let v = (0..<(n * 16)).map { _ in uniform(-1, 1) }, dOut = (0..<(n * 32)).map { _ in uniform(-1, 1) }
        var out = [Float](repeating: 0, count: n * 32), probs = [Float](repeating: 0, count: attention.savedCount)
        attention.forward(q: q, k: k, v: v, out: &out, saved: &probs)
        var dq = [Float](repeating: 0, count: n * 32), dk = [Float](repeating: 0, count: n * 16), dv = dk
        attention.backward(dOut: dOut, q: q, k: k, v: v, probs: probs, dq: &dq, dk: &dk, dv: &dv)

        func d(_ x: [Float]) -> [Double] { x.map(Double.init) }
        var outD = [Double](repeating: 0, count: n * 32), probsD = [Double](repeating: 0, count: reference.savedCount)
        reference.forward(q: d(q), k: d(k), v: d(v), out: &outD, saved: &probsD)
        var dqD = [Double](repeating: 0, count: n * 32), dkD = [Double](repeating: 0, count: n * 16), dvD = dkD
        reference.backward(dOut: d(dOut), q: d(q), k: d(k), v: d(v), probs: probsD, dq: &dqD, dk: &dkD, dv: &dvD)
        for (f, r) in [(out, outD), (dq, dqD), (dk, dkD), (dv, dvD)] {
            for i in 0..<f.count { XCTAssertEqual(Double(f[i]), r[i], accuracy: 1e-5) }
        }
    }

    /// Generation's attention over the cache (vector dots, heads split over the per-token pool; CKernels' AVX2
    /// kernels where the CPU has them and the Swift vector code) equals the BLAS reference: head sizes with and
    /// without a partial vector, with and without a partial group of 64, several new tokens at once, Gemma's soft
    /// cap and window, and 1–3 threads.
    func testCacheAttentionEqualsReference() {
        for (headDim, position, n, softCap, window) in [(40, 70, 3, nil, nil), (64, 300, 1, Float(50), 128), (256, 9, 1, nil, nil),
                                                         (72, 90, 2, nil, 32), (36, 20, 1, nil, nil)] as [(Int, Int, Int, Float?, Int?)] {
            let heads = 6, kvHeads = 2, length = position + n
            let scoring = AttentionScoring<Float>(scale: 1 / Float(headDim).squareRoot(), softCap: softCap, window: window)
            let q = (0..<(n * heads * headDim)).map { _ in uniform(-2, 2) }
            let keys = (0..<(length * kvHeads * headDim)).map { _ in uniform(-2, 2) }
            let values = (0..<(length * kvHeads * headDim)).map { _ in uniform(-1, 1) }
            var expected = [Float](repeating: 0, count: q.count)
            Attention<Float>.overCacheReference(q: q, n: n, keys: keys, values: values, position: position, heads: heads,
                                                kvHeads: kvHeads, headDim: headDim, scoring: scoring, out: &expected)
            for threads in 1...3 {
                lk_set_threads(Int32(threads))
                for native in [true, false] {
                    var out = [Float](repeating: .nan, count: q.count)
                    Attention<Float>.overCacheFast(q: q, n: n, keys: keys, values: values, position: position, heads: heads,
                                                   kvHeads: kvHeads, headDim: headDim, scoring: scoring, out: &out,
                                                   nativeKernels: native)
                    for i in 0..<out.count {
                        XCTAssertEqual(out[i], expected[i], accuracy: 1e-5 * max(1, abs(expected[i])),
                                       "d \(headDim), position \(position), \(threads) threads, native \(native), element \(i)")
                    }
                }
            }
            lk_set_threads(1)
        }
    }

    /// A prompt's attention over the cache as products equals the reference: chunks of 128 tokens with a partial
    /// last one, an empty and a filled cache, Gemma's soft cap and a window shorter and longer than a chunk; and
    /// `overCache` takes that path for many tokens.
    func testBatchedCacheAttentionEqualsReference() {
        for (headDim, position, n, softCap, window) in [(64, 0, 300, nil, nil), (40, 70, 131, Float(50), 32),
                                                         (72, 9, 40, nil, 200), (16, 150, 16, nil, 7)] as [(Int, Int, Int, Float?, Int?)] {
            let heads = 6, kvHeads = 2, length = position + n
            let scoring = AttentionScoring<Float>(scale: 1 / Float(headDim).squareRoot(), softCap: softCap, window: window)
            let q = (0..<(n * heads * headDim)).map { _ in uniform(-2, 2) }
            let keys = (0..<(length * kvHeads * headDim)).map { _ in uniform(-2, 2) }
            let values = (0..<(length * kvHeads * headDim)).map { _ in uniform(-1, 1) }
            var expected = [Float](repeating: 0, count: q.count), batched = [Float](repeating: .nan, count: q.count)
            var dispatched = batched
            Attention<Float>.overCacheReference(q: q, n: n, keys: keys, values: values, position: position, heads: heads,
                                                kvHeads: kvHeads, headDim: headDim, scoring: scoring, out: &expected)
            Attention<Float>.overCacheBatched(q: q, n: n, keys: keys, values: values, position: position, heads: heads,
                                              kvHeads: kvHeads, headDim: headDim, scoring: scoring, out: &batched)
            Attention<Float>.overCache(q: q, n: n, keys: keys, values: values, position: position, heads: heads,
                                       kvHeads: kvHeads, headDim: headDim, scoring: scoring, out: &dispatched)
            XCTAssertGreaterThanOrEqual(n, Attention<Float>.batchedCacheRows)
            for i in 0..<q.count {
                XCTAssertEqual(batched[i], expected[i], accuracy: 1e-5 * max(1, abs(expected[i])),
                               "d \(headDim), position \(position), n \(n), element \(i)")
                XCTAssertEqual(dispatched[i], batched[i])
            }
        }
    }

    /// The tiled (flash-style) attention equals the plain one, forward and backward, within 1e-5 relative: lengths
    /// that are and are not multiples of the tile, grouped keys, and Gemma's scale, soft cap and window.
    func testTiledAttentionEqualsPlain() {
        let H = 4, KV = 2, d = 16
        for (L, tile) in [(1, 4), (5, 4), (37, 8), (64, 16), (130, 32)] {
            for scoring in [nil, AttentionScoring<Float>(scale: 0.3, softCap: 2, window: 9)] {
                let batch = 3, n = batch * L
                let q = (0..<(n * H * d)).map { _ in uniform(-1, 1) }, k = (0..<(n * KV * d)).map { _ in uniform(-1, 1) }
                let v = (0..<(n * KV * d)).map { _ in uniform(-1, 1) }, dOut = (0..<(n * H * d)).map { _ in uniform(-1, 1) }
                var results: [[[Float]]] = []
                // The plain path, then the tiles on 1–5 threads: 2 and 3 take whole (sequence, key/value head) units,
                // 4 and 5 (fewer than two units each) query tiles, then key tiles for dk and dv.
                for (t, threads) in [(nil, 1), (tile, 1), (tile, 2), (tile, 3), (tile, 4), (tile, 5)] {
                    Parallel.threads = threads
                    defer { Parallel.threads = 1 }
                    let attention = Attention<Float>(batch: batch, length: L, heads: H, kvHeads: KV, headDim: d, scoring: scoring, tile: t)
                    var out = [Float](repeating: 0, count: n * H * d), saved = [Float](repeating: 0, count: attention.savedCount)
                    attention.forward(q: q, k: k, v: v, out: &out, saved: &saved)
                    var dq = [Float](repeating: 9, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
                    attention.backward(dOut: dOut, q: q, k: k, v: v, out: out, saved: saved, dq: &dq, dk: &dk, dv: &dv)
                    results.append([out, dq, dk, dv])
                }
                XCTAssertLessThan(Attention<Float>(batch: batch, length: L, heads: H, kvHeads: KV, headDim: d, tile: tile).savedCount,
                                  batch * H * L * L + (L == 1 ? 1 : 0), "the tiled path keeps one value per row")
                for (name, (plain, tiled)) in zip(["out", "dq", "dk", "dv"], zip(results[0], results[1])) {
                    let scale = max(plain.map(abs).max()!, 0.1)  // one position: dq, dk are 0, the tiles give rounding (~1e-7)
                    let worst = zip(plain, tiled).map { abs($0 - $1) }.max()!
                    XCTAssertLessThan(worst, 1e-5 * scale, "\(name), L \(L), tile \(tile), capped \(scoring != nil)")
                }
                // Each value is computed by one thread in a fixed order, whichever split: the same bits on any count.
                for threads in 2...5 { XCTAssertTrue(results[threads] == results[1], "\(threads) threads, L \(L): not the same bits") }
            }
        }
    }

    /// With `bf16Products` the attention's products multiply bf16-rounded operands: on the tiled and the plain path,
    /// the AVX512-BF16 kernel agrees with float32 products of rounded copies far inside bf16's rounding, and both
    /// differ from float32 attention by bf16's rounding (more than 1e-5, less than 2 % of the scale).
    func testBf16AttentionProductsAgreeOnEveryPathAndStayWithinBf16OfFloat32() {
        let H = 6, KV = 2, d = 64, batch = 2, L = 70, tile = 32, n = batch * L
        let q = (0..<(n * H * d)).map { _ in uniform(-1, 1) }, k = (0..<(n * KV * d)).map { _ in uniform(-1, 1) }
        let v = (0..<(n * KV * d)).map { _ in uniform(-1, 1) }, dOut = (0..<(n * H * d)).map { _ in uniform(-1, 1) }
        let saved = BFloat16GEMM.tileKernels
        defer { BFloat16GEMM.tileKernels = saved }
        func run(tile: Int?, bf16: Bool, kernel: Bool) -> [[Float]] {
            BFloat16GEMM.tileKernels = kernel
            var attention = Attention<Float>(batch: batch, length: L, heads: H, kvHeads: KV, headDim: d, tile: tile)
            attention.bf16Products = bf16
            var out = [Float](repeating: 0, count: n * H * d), kept = [Float](repeating: 0, count: attention.savedCount)
            attention.forward(q: q, k: k, v: v, out: &out, saved: &kept)
            var dq = [Float](repeating: 0, count: q.count), dk = [Float](repeating: 0, count: k.count), dv = dk
            attention.backward(dOut: dOut, q: q, k: k, v: v, out: out, saved: kept, dq: &dq, dk: &dk, dv: &dv)
            return [out, dq, dk, dv]
        }
        // Each path rounds what it multiplies: the tiles round P before normalizing it, the plain path after, so
        // the two differ by bf16's rounding, and each is compared with its own rounded copies in float32.
        let kernels = BFloat16GEMM.tileKernelsSupported ? [false, true] : [false]
        for path in [tile, nil] as [Int?] {
            let float32 = run(tile: path, bf16: false, kernel: false), copies = run(tile: path, bf16: true, kernel: false)
            let kernel = kernels.count > 1 ? run(tile: path, bf16: true, kernel: true) : nil
            for (index, name) in ["out", "dq", "dk", "dv"].enumerated() {
                let scale = float32[index].map(abs).max()!
                let change = zip(copies[index], float32[index]).map { abs($0 - $1) }.max()!
                XCTAssertGreaterThan(change, 1e-5 * scale, "\(name): the operands were rounded")
                XCTAssertLessThan(change, 0.02 * scale, "\(name): within bf16's rounding of float32")
                if let kernel {
                    // The same rounded operands added in another order. Backward's dS = P ⊙ (dP − D) cancels, so
                    // float32's rounding moves some dS across a bf16 rounding boundary before dS·k and dSᵀ·q: a few
                    // values one bf16 step apart (measured 0.05 of bf16's whole change), far below a wrong product.
                    let worst = zip(copies[index], kernel[index]).map { abs($0 - $1) }.max()!
                    XCTAssertLessThan(worst, 0.1 * change, "\(name), tile \(String(describing: path)): the kernel against rounded copies")
                }
            }
        }
    }

    func testRMSNormRowsMatchReference() {
        for cols in [16, 37, 576] {
            let x = (0..<cols).map { _ in uniform(-3, 3) }, w = (0..<cols).map { _ in uniform(0.5, 1.5) }
            let dy = (0..<cols).map { _ in uniform(-1, 1) }
            var yFast = [Float](repeating: 0, count: cols), yReference = yFast
            let sFast = RMSNorm.forwardRowFast(x: x, weight: w, y: &yFast, cols: cols, eps: 1e-5)
            let sReference = RMSNorm.forwardRowReference(x: x, weight: w, y: &yReference, cols: cols, eps: Float(1e-5))
            XCTAssertEqual(sFast, sReference, accuracy: 1e-6 * sReference)
            XCTAssertLessThan(relativeError(yFast, yReference), 1e-5)
            var dxFast = (0..<cols).map { _ in uniform(-1, 1) }, dxReference = dxFast
            RMSNorm.backwardRowFast(dy: dy, x: x, weight: w, rstd: sReference, dx: &dxFast, cols: cols)
            RMSNorm.backwardRowReference(dy: dy, x: x, weight: w, rstd: sReference, dx: &dxReference, cols: cols)
            for c in 0..<cols { XCTAssertEqual(dxFast[c], dxReference[c], accuracy: 1e-5) }
        }
    }

    /// The chunked statistics and softmax (a head computed in vocabulary chunks) give, with vector exponentials,
    /// the reference loops' values and the whole-row cross-entropy's loss and gradient.
    func testChunkedSoftmaxMatchesReferenceAndWholeRows() {
        let vocab = 1000, rows = 12, chunk = 300, scale: Float = 0.25
        let logits = (0..<(rows * vocab)).map { _ in uniform(-20, 20) }
        let targets = (0..<rows).map { Int32(($0 * 37) % vocab) }
        var whole = logits
        let wholeLoss = CrossEntropy.forwardBackward(logits: &whole, targets: targets, rows: rows, vocab: vocab,
                                                     gradientScale: scale, gradient: true)
        let chunks = stride(from: 0, to: vocab, by: chunk).map { $0..<min(vocab, $0 + chunk) }
        func part(_ range: Range<Int>) -> [Float] { (0..<rows).flatMap { r in logits[(r * vocab + range.lowerBound)..<(r * vocab + range.upperBound)] } }
        var maximum = [Double](repeating: -.infinity, count: rows), sum = [Double](repeating: 0, count: rows)
        var refMaximum = maximum, refSum = sum
        for range in chunks {
            var z = part(range), exponentials = z, reference = z
            var rescale = [Double](repeating: 0, count: rows), refRescale = rescale
            var (m, s) = (maximum, sum)
            CrossEntropy.accumulateChunk(&z, rows: rows, columns: range.count, maximum: &maximum, sum: &sum)
            XCTAssertEqual(z, part(range), "without `exponentiate` the chunk stays as it was")
            CrossEntropy.accumulateChunk(&exponentials, rows: rows, columns: range.count, maximum: &m, sum: &s,
                                         exponentiate: true, rescale: &rescale)
            reference.withUnsafeMutableBufferPointer { zp in
                for r in 0..<rows {
                    refRescale[r] = CrossEntropy.accumulateRowReference(zp.baseAddress! + r * range.count, columns: range.count,
                                                                        maximum: &refMaximum[r], sum: &refSum[r], exponentiate: true)
                }
            }
            XCTAssertEqual(m, maximum)
            for r in 0..<rows {
                XCTAssertEqual(s[r], sum[r], accuracy: 1e-12 * sum[r])
                XCTAssertEqual(rescale[r], refRescale[r], accuracy: 1e-12)
            }
            for i in z.indices { XCTAssertEqual(exponentials[i], reference[i], accuracy: 1e-5 * max(reference[i], 1e-30)) }  // z − m rounded to Float
        }
        for r in 0..<rows {
            XCTAssertEqual(maximum[r], refMaximum[r])
            XCTAssertEqual(sum[r], refSum[r], accuracy: 1e-6 * refSum[r])
        }
        let loss = (0..<rows).reduce(0.0) { $0 + maximum[$1] + log(sum[$1]) - Double(logits[$1 * vocab + Int(targets[$1])]) }
        XCTAssertEqual(loss, wholeLoss, accuracy: 1e-5 * wholeLoss)
        for range in chunks {
            var z = part(range), reference = z
            CrossEntropy.softmaxChunk(&z, rows: rows, columns: range.count, maximum: maximum, sum: sum, scale: scale)
            reference.withUnsafeMutableBufferPointer { zp in
                for r in 0..<rows {
                    CrossEntropy.softmaxRowReference(zp.baseAddress! + r * range.count, columns: range.count,
                                                     maximum: maximum[r], sum: sum[r], scale: scale)
                }
            }
            for r in 0..<rows {
                for j in 0..<range.count {
                    let onehot: Float = range.lowerBound + j == Int(targets[r]) ? scale : 0
                    XCTAssertEqual(z[r * range.count + j], reference[r * range.count + j], accuracy: 1e-7)
                    XCTAssertEqual(z[r * range.count + j] - onehot, whole[r * vocab + range.lowerBound + j], accuracy: 1e-7)
                }
            }
        }
    }

    /// The vector rotation equals the reference one, on one thread and with a pass's tokens split over three.
    func testRoPEMatchesReference() {
        for layout in [RoPELayout.adjacentPairs, .halves] {
            for threads in [1, 3] {
                Parallel.threads = threads
                checkRoPE(layout)
            }
        }
        Parallel.threads = 1
    }

    func checkRoPE(_ layout: RoPELayout) {
        let half = 32, tokens = 300, heads = 3
        let rope = RoPE<Float>(positions: (0..<tokens).map { Int32($0 * 7 % 1000) }, frequencies: RoPE<Float>.frequencies(headDim: 64, base: 100_000),
                               layout: layout)
        let rotate = layout == .halves ? RoPE<Float>.rotateHalvesReference : RoPE<Float>.rotateReference
        let x = (0..<(tokens * heads * 64)).map { _ in uniform(-2, 2) }
        for inverse in [false, true] {
            var fast = x, reference = x
            fast.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: tokens, heads: heads, inverse: inverse) }
            rope.cosines.withUnsafeBufferPointer { c in
                rope.sines.withUnsafeBufferPointer { s in
                    for t in 0..<tokens {
                        for h in 0..<heads {
                            reference.withUnsafeMutableBufferPointer {
                                rotate($0.baseAddress! + (t * heads + h) * 64, c.baseAddress! + t * half,
                                       s.baseAddress! + t * half, half, inverse)
                            }
                        }
                    }
                }
            }
            XCTAssertEqual(fast, reference, "the vector rotation does the same arithmetic (\(layout), \(Parallel.threads) threads)")
            XCTAssertNotEqual(fast, x)
        }
    }
}
