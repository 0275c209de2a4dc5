/// Causal multi-head attention with grouped key/value heads, per sequence of a batch.
///
/// Shapes (N = batch · T tokens, rows of each sequence contiguous):
///   q, dq, out, dOut [N, H·d]; k, v, dk, dv [N, KV·d]; probs [batch, H, T, T] (saved for backward).
///   Query head h reads key/value head h / (H / KV).
///   S = q·kᵀ/√d (causal), P = softmax(S), out = P·v
public struct Attention<T: KernelScalar> {
    public let batch: Int
    public let length: Int
    public let heads: Int
    public let kvHeads: Int
    public let headDim: Int

    @inlinable
    public init(batch: Int, length: Int, heads: Int, kvHeads: Int, headDim: Int) {
        self.batch = batch
        self.length = length
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
    }

    @usableFromInline var qStride: Int { heads * headDim }
    @usableFromInline var kvStride: Int { kvHeads * headDim }
    @usableFromInline var scale: T { 1 / T(headDim).squareRoot() }
    public var probsCount: Int { batch * heads * length * length }

    @usableFromInline func kvHead(_ h: Int) -> Int { h / (heads / kvHeads) }

    @inlinable
    public func forward(q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                        out: UnsafeMutablePointer<T>, probs: UnsafeMutablePointer<T>) {
        probabilities(q: q, k: k, probs: probs)
        output(probs: probs, v: v, out: out)
    }

    /// P = softmax(q·kᵀ/√d) with the causal mask.
    @inlinable
    public func probabilities(q: UnsafePointer<T>, k: UnsafePointer<T>, probs: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        for bh in 0..<(batch * heads) {
            let b = bh / heads, h = bh % heads
            let p = probs + bh * L * L
            T.gemm(transA: false, transB: true, m: L, n: L, k: d, alpha: scale, a: q + b * L * qStride + h * d,
                   lda: qStride, b: k + b * L * kvStride + kvHead(h) * d, ldb: kvStride, beta: 0, c: p, ldc: L)
            Parallel.forEachRange(L, minimumPerThread: 32) { rows in
                for i in rows { Attention.causalSoftmax(p + i * L, count: L, visible: i + 1) }
            }
        }
    }

    /// out = P·v (also how backward rebuilds the attention output instead of keeping it).
    @inlinable
    public func output(probs: UnsafePointer<T>, v: UnsafePointer<T>, out: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        for bh in 0..<(batch * heads) {
            let b = bh / heads, h = bh % heads
            T.gemm(transA: false, transB: false, m: L, n: d, k: L, alpha: 1, a: probs + bh * L * L, lda: L,
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

    /// Writes dq and accumulates into dk, dv (which the caller zeroes).
    ///   dP = dOut·vᵀ, dv += Pᵀ·dOut, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS·k/√d, dk += dSᵀ·q/√d
    @inlinable
    public func backward(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                         probs: UnsafePointer<T>, dq: UnsafeMutablePointer<T>, dk: UnsafeMutablePointer<T>,
                         dv: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        let dP = UnsafeMutablePointer<T>.allocate(capacity: L * L)  // [L, L], then dS in place
        defer { dP.deallocate() }
        for b in 0..<batch {
            for h in 0..<heads {
                let p = probs + (b * heads + h) * L * L
                let qOffset = b * L * qStride + h * d
                let kvOffset = b * L * kvStride + kvHead(h) * d
                T.gemm(transA: false, transB: true, m: L, n: L, k: d, alpha: 1, a: dOut + qOffset, lda: qStride,
                       b: v + kvOffset, ldb: kvStride, beta: 0, c: dP, ldc: L)
                T.gemm(transA: true, transB: false, m: L, n: d, k: L, alpha: 1, a: p, lda: L,
                       b: dOut + qOffset, ldb: qStride, beta: 1, c: dv + kvOffset, ldc: kvStride)
                Parallel.forEachRange(L, minimumPerThread: 32) { rows in
                    for i in rows { Attention.softmaxBackwardRow(p: p + i * L, dP: dP + i * L, count: L, visible: i + 1) }
                }
                T.gemm(transA: false, transB: false, m: L, n: d, k: L, alpha: scale, a: dP, lda: L,
                       b: k + kvOffset, ldb: kvStride, beta: 0, c: dq + qOffset, ldc: qStride)
                T.gemm(transA: true, transB: false, m: L, n: d, k: L, alpha: scale, a: dP, lda: L,
                       b: q + qOffset, ldb: qStride, beta: 1, c: dk + kvOffset, ldc: kvStride)
            }
        }
    }
}

extension Attention {
    /// Causal attention of `n` new queries over a key/value cache (generation): query t sees cache positions
    /// 0 ..< position + t + 1. The query heads that share a key/value head go through two small products
    /// together (scores = Q·Kᵀ, out = P·V) and the same causal softmax as the batched pass.
    ///
    /// Shapes: q, out [n, H·d]; keys, values [capacity, KV·d] (rows up to position + n filled);
    /// per group of G = H / KV query heads: scores [G, visible].
    @inlinable
    public static func overCache(q: UnsafePointer<T>, n: Int, keys: UnsafePointer<T>, values: UnsafePointer<T>,
                                 position: Int, heads: Int, kvHeads: Int, headDim d: Int,
                                 out: UnsafeMutablePointer<T>) {
        let group = heads / kvHeads, qStride = heads * d, kvStride = kvHeads * d
        let scale = 1 / T(d).squareRoot()
        let scores = UnsafeMutablePointer<T>.allocate(capacity: group * (position + n))
        defer { scores.deallocate() }
        for t in 0..<n {
            let visible = position + t + 1
            for kvh in 0..<kvHeads {
                let qg = q + t * qStride + kvh * group * d, og = out + t * qStride + kvh * group * d
                T.gemm(transA: false, transB: true, m: group, n: visible, k: d, alpha: scale, a: qg, lda: d,
                       b: keys + kvh * d, ldb: kvStride, beta: 0, c: scores, ldc: visible)
                for h in 0..<group { causalSoftmax(scores + h * visible, count: visible, visible: visible) }
                T.gemm(transA: false, transB: false, m: group, n: d, k: visible, alpha: 1, a: scores, lda: visible,
                       b: values + kvh * d, ldb: kvStride, beta: 0, c: og, ldc: d)
            }
        }
    }
}
