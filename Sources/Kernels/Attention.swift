import CKernels

/// How attention scores are formed and which keys a query sees: S = q·kᵀ·scale, optionally soft-capped
/// (S ← cap·tanh(S/cap), Gemma 2), over the keys at most `window − 1` positions back (sliding-window layers of
/// Gemma 2/3) or all earlier keys.
public struct AttentionScoring<T: KernelScalar>: Sendable {
    public var scale: T
    public var softCap: T?
    public var window: Int?

    @inlinable
    public init(scale: T, softCap: T? = nil, window: Int? = nil) {
        self.scale = scale
        self.softCap = softCap
        self.window = window
    }

    /// 1/√d, no cap, no window: llama's attention.
    @inlinable
    public static func standard(headDim: Int) -> AttentionScoring { AttentionScoring(scale: 1 / T(headDim).squareRoot()) }

    /// The first key position query position `i` sees (it sees keys up to `i` itself).
    @inlinable
    public func firstVisible(_ i: Int) -> Int { window.map { max(0, i - $0 + 1) } ?? 0 }

    /// Soft-caps raw scores in place.
    @inlinable
    public func cap(_ row: UnsafeMutablePointer<T>, count: Int) {
        guard let c = softCap else { return }
        for j in 0..<count { row[j] = c * T.tanh(row[j] / c) }
    }
}

/// Causal multi-head attention with grouped key/value heads, per sequence of a batch.
///
/// Shapes (N = batch · T tokens, rows of each sequence contiguous):
///   q, dq, out, dOut [N, H·d]; k, v, dk, dv [N, KV·d]; saved for backward: the probabilities P [batch, H, T, T],
///   or with `tile` (TiledAttention.swift) only each row's log-sum-exp [batch, H, T].
///   Query head h reads key/value head h / (H / KV).
///   S = q·kᵀ·scale (then soft-capped, see `AttentionScoring`), causal (and windowed), P = softmax(S), out = P·v
public struct Attention<T: KernelScalar> {
    public let batch: Int
    public let length: Int
    public let heads: Int
    public let kvHeads: Int
    public let headDim: Int
    public let scoring: AttentionScoring<T>
    /// Queries and keys per tile of the tiled path; nil: the plain path, which keeps P.
    public var tile: Int?
    /// Whether q·kᵀ, P·v and backward's products multiply operands rounded to bf16 (float32 accumulation), as the
    /// bf16 precision does for the frozen weights and PyTorch's bf16 autocast does for attention; softmax, its
    /// backward and the log-sum-exp stay float32.
    public var bf16Products = false

    @inlinable
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int, scoring: AttentionScoring<T>? = nil,
                tile: Int? = nil) {
        self.batch = batch
        self.length = length
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.scoring = scoring ?? .standard(headDim: headDim)
        self.tile = tile
    }

    @usableFromInline var qStride: Int { heads * headDim }
    @usableFromInline var kvStride: Int { kvHeads * headDim }
    @usableFromInline var scale: T { scoring.scale }
    /// Values forward saves for backward: P, or (tiled) the log-sum-exp of each row.
    public var savedCount: Int { batch * heads * length * (tile == nil ? length : 1) }

    @usableFromInline func kvHead(_ h: Int) -> Int { h / (heads / kvHeads) }

    /// One of the attention's products, C = alpha·op(A)·op(B) + beta·C (beta 0 or 1), in T or (`bf16Products`) on
    /// operands rounded to bf16.
    @inlinable
    func product(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: T, a: UnsafePointer<T>, lda: Int,
                 b: UnsafePointer<T>, ldb: Int, beta: T, c: UnsafeMutablePointer<T>, ldc: Int) {
        if bf16Products {
            BFloat16GEMM.gemmOnRoundedOperands(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                               b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        } else {
            T.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b, ldb: ldb,
                   beta: beta, c: c, ldc: ldc)
        }
    }

    @inlinable
    public func forward(q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                        out: UnsafeMutablePointer<T>, saved: UnsafeMutablePointer<T>) {
        if let tile { return tiledForward(q: q, k: k, v: v, out: out, lse: saved, tile: tile) }
        probabilities(q: q, k: k, probs: saved)
        output(probs: saved, v: v, out: out)
    }

    /// Writes dq and accumulates into dk, dv (which the caller zeroes), from what forward saved and its output.
    @inlinable
    public func backward(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                         out: UnsafePointer<T>, saved: UnsafePointer<T>, dq: UnsafeMutablePointer<T>,
                         dk: UnsafeMutablePointer<T>, dv: UnsafeMutablePointer<T>) {
        if let tile { return tiledBackward(dOut: dOut, q: q, k: k, v: v, out: out, lse: saved, dq: dq, dk: dk, dv: dv, tile: tile) }
        backward(dOut: dOut, q: q, k: k, v: v, probs: saved, dq: dq, dk: dk, dv: dv)
    }

    /// P = softmax(S) with the causal (and window) mask.
    @inlinable
    public func probabilities(q: UnsafePointer<T>, k: UnsafePointer<T>, probs: UnsafeMutablePointer<T>) {
        let L = length
        for bh in 0..<(batch * heads) {
            let p = probs + bh * L * L
            scores(q: q, k: k, head: bh, into: p)
            Parallel.forEachRange(L, minimumPerThread: 32) { rows in
                for i in rows {
                    scoring.cap(p + i * L, count: i + 1)
                    Attention.maskedSoftmax(p + i * L, count: L, from: scoring.firstVisible(i), to: i + 1)
                }
            }
        }
    }

    /// Raw scores q·kᵀ·scale [L, L] of head `bh` (= b·H + h), before capping and masking.
    @inlinable
    func scores(q: UnsafePointer<T>, k: UnsafePointer<T>, head bh: Int, into s: UnsafeMutablePointer<T>) {
        let L = length, d = headDim, b = bh / heads, h = bh % heads
        product(transA: false, transB: true, m: L, n: L, k: d, alpha: scale, a: q + b * L * qStride + h * d,
                lda: qStride, b: k + b * L * kvStride + kvHead(h) * d, ldb: kvStride, beta: 0, c: s, ldc: L)
    }

    /// Softmax over entries `from ..< to` of a row; the others become 0.
    @inlinable
    public static func maskedSoftmax(_ row: UnsafeMutablePointer<T>, count: Int, from: Int, to: Int) {
        row.update(repeating: 0, count: from)
        causalSoftmax(row + from, count: count - from, visible: to - from)
    }

    /// out = P·v (also how backward rebuilds the attention output instead of keeping it).
    @inlinable
    public func output(probs: UnsafePointer<T>, v: UnsafePointer<T>, out: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        for bh in 0..<(batch * heads) {
            let b = bh / heads, h = bh % heads
            product(transA: false, transB: false, m: L, n: d, k: L, alpha: 1, a: probs + bh * L * L, lda: L,
                    b: v + b * L * kvStride + kvHead(h) * d, ldb: kvStride, beta: 0,
                    c: out + b * L * qStride + h * d, ldc: qStride)
        }
    }

    /// Softmax over the first `visible` entries of a row; the rest become 0.
    @inlinable
    public static func causalSoftmax(_ row: UnsafeMutablePointer<T>, count: Int, visible: Int) {
        if T.self == Float.self {
            causalSoftmaxFast(row.asMutableFloat, count: count, visible: visible)
        } else {
            causalSoftmaxReference(row, count: count, visible: visible)
        }
    }

    @inlinable
    public static func causalSoftmaxReference(_ row: UnsafeMutablePointer<T>, count: Int, visible: Int) {
        var m = row[0]
        for j in 1..<visible where row[j] > m { m = row[j] }
        var sum: T = 0
        for j in 0..<visible {
            let e = T.exp(row[j] - m)
            row[j] = e
            sum += e
        }
        let inv = 1 / sum
        for j in 0..<visible { row[j] *= inv }
        for j in visible..<count { row[j] = 0 }
    }

    @inlinable
    public static func causalSoftmaxFast(_ row: UnsafeMutablePointer<Float>, count: Int, visible: Int) {
        let m = VectorMath.maximum(row, count: visible)
        let sum = VectorMath.exponentiate(row, count: visible, minus: m)
        VectorMath.scale(row, count: visible, by: Float(1 / sum))
        (row + visible).update(repeating: 0, count: count - visible)
    }

    /// Softmax backward of row i in place: dSⱼ = Pⱼ·(dPⱼ − Σₖ dPₖ·Pₖ) for j ≤ i, 0 after.
    @inlinable
    static func softmaxBackwardRow(p: UnsafePointer<T>, dP: UnsafeMutablePointer<T>, count: Int, visible: Int) {
        if T.self == Float.self {
            let pr = p.asFloat, dr = dP.asMutableFloat
            let dot = VectorMath.dot(pr, dr, count: visible)
            var j = 0
            while j < visible {
                let left = visible - j
                let pv = VectorMath.load(pr + j, left, padding: 0), dv = VectorMath.load(dr + j, left, padding: 0)
                VectorMath.store(pv * (dv - dot), dr + j, left)
                j += VectorMath.width
            }
        } else {
            var dot: T = 0
            for j in 0..<visible { dot += p[j] * dP[j] }
            for j in 0..<visible { dP[j] = p[j] * (dP[j] - dot) }
        }
        (dP + visible).update(repeating: 0, count: count - visible)
    }

    /// The plain path's backward: writes dq and accumulates into dk, dv (which the caller zeroes).
    ///   dP = dOut·vᵀ, dv += Pᵀ·dOut, dS = P ⊙ (dP − rowsum(dP ⊙ P)), with a soft cap dS ⊙= 1 − (S/cap)²,
    ///   dq = dS·k·scale, dk += dSᵀ·q·scale
    @inlinable
    public func backward(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                         probs: UnsafePointer<T>, dq: UnsafeMutablePointer<T>, dk: UnsafeMutablePointer<T>,
                         dv: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        let dP = UnsafeMutablePointer<T>.allocate(capacity: L * L)  // [L, L], then dS in place
        // With a soft cap, the capped scores (rebuilt here rather than kept) give the cap's derivative.
        let capped = scoring.softCap == nil ? nil : UnsafeMutablePointer<T>.allocate(capacity: L * L)
        defer { dP.deallocate(); capped?.deallocate() }
        for b in 0..<batch {
            for h in 0..<heads {
                let p = probs + (b * heads + h) * L * L
                let qOffset = b * L * qStride + h * d
                let kvOffset = b * L * kvStride + kvHead(h) * d
                product(transA: false, transB: true, m: L, n: L, k: d, alpha: 1, a: dOut + qOffset, lda: qStride,
                        b: v + kvOffset, ldb: kvStride, beta: 0, c: dP, ldc: L)
                product(transA: true, transB: false, m: L, n: d, k: L, alpha: 1, a: p, lda: L,
                        b: dOut + qOffset, ldb: qStride, beta: 1, c: dv + kvOffset, ldc: kvStride)
                if let capped { scores(q: q, k: k, head: b * heads + h, into: capped) }
                Parallel.forEachRange(L, minimumPerThread: 32) { rows in
                    for i in rows {
                        let from = scoring.firstVisible(i), row = dP + i * L
                        row.update(repeating: 0, count: from)
                        Attention.softmaxBackwardRow(p: p + i * L + from, dP: row + from, count: L - from, visible: i + 1 - from)
                        if let capped, let cap = scoring.softCap {
                            let s = capped + i * L
                            scoring.cap(s, count: i + 1)
                            for j in from...i { let t = s[j] / cap; row[j] *= 1 - t * t }
                        }
                    }
                }
                product(transA: false, transB: false, m: L, n: d, k: L, alpha: scale, a: dP, lda: L,
                        b: k + kvOffset, ldb: kvStride, beta: 0, c: dq + qOffset, ldc: qStride)
                product(transA: true, transB: false, m: L, n: d, k: L, alpha: scale, a: dP, lda: L,
                        b: q + qOffset, ldb: qStride, beta: 1, c: dk + kvOffset, ldc: kvStride)
            }
        }
    }
}

extension Attention {
    /// Causal attention of `n` new queries over a key/value cache (generation): query t sees cache positions
    /// `scoring.firstVisible(position + t)` ..< position + t + 1. The query heads that share a key/value head go through two small products
    /// together (scores = Q·Kᵀ, out = P·V) and the same causal softmax as the batched pass.
    ///
    /// Shapes: q, out [n, H·d]; keys, values [capacity, KV·d] (rows up to position + n filled);
    /// per group of G = H / KV query heads: scores [G, visible].
    /// Float runs `overCacheFast`; Double (the gradient checks' type) the reference.
    @inlinable
    public static func overCache(q: UnsafePointer<T>, n: Int, keys: UnsafePointer<T>, values: UnsafePointer<T>,
                                 position: Int, heads: Int, kvHeads: Int, headDim d: Int, scoring: AttentionScoring<T>,
                                 out: UnsafeMutablePointer<T>) {
        if n >= batchedCacheRows {
            overCacheBatched(q: q, n: n, keys: keys, values: values, position: position, heads: heads, kvHeads: kvHeads,
                             headDim: d, scoring: scoring, out: out)
        } else if T.self == Float.self {
            Attention<Float>.overCacheFast(q: q.asFloat, n: n, keys: keys.asFloat, values: values.asFloat, position: position,
                                           heads: heads, kvHeads: kvHeads, headDim: d,
                                           scoring: unsafeBitCast(scoring, to: AttentionScoring<Float>.self),
                                           out: out.asMutableFloat)
        } else {
            overCacheReference(q: q, n: n, keys: keys, values: values, position: position, heads: heads, kvHeads: kvHeads,
                               headDim: d, scoring: scoring, out: out)
        }
    }

    /// From this many new tokens on (a prompt), attention over the cache runs as two products per query head and
    /// chunk of tokens instead of vector dots per (token, head): Gemma 3's 276-token prompt spent ~85 ms in the
    /// dots, a tenth of the prompt.
    public static var batchedCacheRows: Int { 16 }

    /// Attention of n new tokens over the cache as products: for each query head and chunk of up to 128 tokens,
    /// S = scale·Q·Kᵀ over the keys any of them sees, each row capped, masked to its own window and softmaxed, then
    /// O = P·V. The products also score keys a row does not see (the chunk's later tokens, and with a window the
    /// earlier ones); the mask zeroes them before P·V.
    ///   q, out: [n][heads][d]; keys, values: [position + n][kvHeads][d]
    @inlinable
    public static func overCacheBatched(q: UnsafePointer<T>, n: Int, keys: UnsafePointer<T>, values: UnsafePointer<T>,
                                        position: Int, heads: Int, kvHeads: Int, headDim d: Int,
                                        scoring: AttentionScoring<T>, out: UnsafeMutablePointer<T>) {
        let group = heads / kvHeads, qStride = heads * d, kvStride = kvHeads * d, chunk = 128
        let scores = UnsafeMutablePointer<T>.allocate(capacity: min(chunk, n) * (position + n))
        defer { scores.deallocate() }
        for h in 0..<heads {
            let kvh = h / group
            for t0 in stride(from: 0, to: n, by: chunk) {
                let rows = min(chunk, n - t0)
                let low = scoring.firstVisible(position + t0), high = position + t0 + rows, width = high - low
                T.gemm(transA: false, transB: true, m: rows, n: width, k: d, alpha: scoring.scale,
                       a: q + t0 * qStride + h * d, lda: qStride, b: keys + low * kvStride + kvh * d, ldb: kvStride,
                       beta: 0, c: scores, ldc: width)
                for r in 0..<rows {
                    let row = scores + r * width, first = scoring.firstVisible(position + t0 + r) - low
                    let visible = position + t0 + r + 1 - low - first
                    row.update(repeating: 0, count: first)
                    scoring.cap(row + first, count: visible)
                    causalSoftmax(row + first, count: width - first, visible: visible)
                }
                T.gemm(transA: false, transB: false, m: rows, n: d, k: width, alpha: 1, a: scores, lda: width,
                       b: values + low * kvStride + kvh * d, ldb: kvStride, beta: 0, c: out + t0 * qStride + h * d,
                       ldc: qStride)
            }
        }
    }

    @inlinable
    public static func overCacheReference(q: UnsafePointer<T>, n: Int, keys: UnsafePointer<T>, values: UnsafePointer<T>,
                                          position: Int, heads: Int, kvHeads: Int, headDim d: Int,
                                          scoring: AttentionScoring<T>, out: UnsafeMutablePointer<T>) {
        let group = heads / kvHeads, qStride = heads * d, kvStride = kvHeads * d
        let scores = UnsafeMutablePointer<T>.allocate(capacity: group * (position + n))
        defer { scores.deallocate() }
        for t in 0..<n {
            let first = scoring.firstVisible(position + t), visible = position + t + 1 - first
            for kvh in 0..<kvHeads {
                let qg = q + t * qStride + kvh * group * d, og = out + t * qStride + kvh * group * d
                T.gemm(transA: false, transB: true, m: group, n: visible, k: d, alpha: scoring.scale, a: qg, lda: d,
                       b: keys + first * kvStride + kvh * d, ldb: kvStride, beta: 0, c: scores, ldc: visible)
                for h in 0..<group {
                    scoring.cap(scores + h * visible, count: visible)
                    causalSoftmax(scores + h * visible, count: visible, visible: visible)
                }
                T.gemm(transA: false, transB: false, m: group, n: d, k: visible, alpha: 1, a: scores, lda: visible,
                       b: values + first * kvStride + kvh * d, ldb: kvStride, beta: 0, c: og, ldc: d)
            }
        }
    }
}

extension Attention where T == Float {
    /// The same attention one query head at a time, with vector dot products instead of BLAS calls (a token's
    /// products are a few thousand multiply-adds, less than a BLAS call costs to set up), and the (token, head)
    /// pairs split over the pool, whose threads are spinning between the token's weight products. The products run
    /// in CKernels' AVX2 kernels where the CPU has them (`nativeKernels: false` forces the Swift vector code that
    /// other CPUs run).
    @inlinable
    public static func overCacheFast(q: UnsafePointer<Float>, n: Int, keys: UnsafePointer<Float>,
                                     values: UnsafePointer<Float>, position: Int, heads: Int, kvHeads: Int,
                                     headDim d: Int, scoring: AttentionScoring<Float>, out: UnsafeMutablePointer<Float>,
                                     nativeKernels: Bool = true) {
        let group = heads / kvHeads, qStride = heads * d, kvStride = kvHeads * d
        let native = nativeKernels && lk_cache_attention_supported(Int32(d)) != 0
        let units = n * heads
        // Below ~32 K multiply-adds a part is too small to pay for waking a thread.
        let parts = units * (position + n) * d < 1 << 15 ? 1 : min(units, Parallel.threads)
        Parallel.run(parts: parts) { part in
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: position + n)
            defer { scores.deallocate() }
            for unit in part * units / parts ..< (part + 1) * units / parts {
                let t = unit / heads, h = unit % heads, kvh = h / group
                let first = scoring.firstVisible(position + t), visible = position + t + 1 - first
                let qh = q + t * qStride + h * d, oh = out + t * qStride + h * d
                let k0 = keys + first * kvStride + kvh * d, v0 = values + first * kvStride + kvh * d
                if native {
                    lk_cache_scores(qh, k0, kvStride, Int32(visible), Int32(d), scoring.scale, scores)
                } else {
                    rowDots(qh, rows: k0, stride: kvStride, count: visible, width: d, scale: scoring.scale, into: scores)
                }
                scoring.cap(scores, count: visible)
                causalSoftmaxFast(scores, count: visible, visible: visible)
                if native {
                    lk_cache_weighted(scores, v0, kvStride, Int32(visible), Int32(d), oh)
                } else {
                    weightedRows(scores, rows: v0, stride: kvStride, count: visible, width: d, into: oh)
                }
            }
        }
    }

    /// out[j] = scale · (x · rows[j·stride ..< j·stride + width]) for j < count, four rows at a time (independent
    /// sums, one load of x for four rows).
    @inlinable
    static func rowDots(_ x: UnsafePointer<Float>, rows: UnsafePointer<Float>, stride: Int, count: Int, width: Int,
                        scale: Float, into out: UnsafeMutablePointer<Float>) {
        typealias V = VectorMath.Vector
        var j = 0
        while j + 4 <= count {
            let r = rows + j * stride
            var a0 = V(), a1 = V(), a2 = V(), a3 = V()
            var c = 0
            while c < width {
                let left = width - c, xv = VectorMath.load(x + c, left, padding: 0)
                a0 += xv * VectorMath.load(r + c, left, padding: 0)
                a1 += xv * VectorMath.load(r + stride + c, left, padding: 0)
                a2 += xv * VectorMath.load(r + 2 * stride + c, left, padding: 0)
                a3 += xv * VectorMath.load(r + 3 * stride + c, left, padding: 0)
                c += VectorMath.width
            }
            out[j] = scale * a0.sum()
            out[j + 1] = scale * a1.sum()
            out[j + 2] = scale * a2.sum()
            out[j + 3] = scale * a3.sum()
            j += 4
        }
        while j < count {
            out[j] = scale * VectorMath.dot(x, rows + j * stride, count: width)
            j += 1
        }
    }

    /// out[0 ..< width] = Σⱼ weights[j] · rows[j·stride ..< j·stride + width], four vectors of the row at a time.
    @inlinable
    static func weightedRows(_ weights: UnsafePointer<Float>, rows: UnsafePointer<Float>, stride: Int, count: Int,
                             width: Int, into out: UnsafeMutablePointer<Float>) {
        typealias V = VectorMath.Vector
        let w = VectorMath.width
        var c = 0
        while c < width {
            let left = width - c
            var a0 = V(), a1 = V(), a2 = V(), a3 = V()
            for j in 0..<count {
                let p = weights[j], row = rows + j * stride + c
                a0 += p * VectorMath.load(row, left, padding: 0)
                if left > w { a1 += p * VectorMath.load(row + w, left - w, padding: 0) }
                if left > 2 * w { a2 += p * VectorMath.load(row + 2 * w, left - 2 * w, padding: 0) }
                if left > 3 * w { a3 += p * VectorMath.load(row + 3 * w, left - 3 * w, padding: 0) }
            }
            VectorMath.store(a0, out + c, left)
            if left > w { VectorMath.store(a1, out + c + w, left - w) }
            if left > 2 * w { VectorMath.store(a2, out + c + 2 * w, left - 2 * w) }
            if left > 3 * w { VectorMath.store(a3, out + c + 3 * w, left - 3 * w) }
            c += 4 * w
        }
    }
}
