/// Causal attention in tiles (flash-style), forward and backward side by side: the same function as `Attention`'s
/// plain path, which stays the reference, without ever holding the [T, T] probabilities of a head. Forward keeps
/// only each row's log-sum-exp; backward recomputes each tile's probabilities from it.
///
/// Shapes (per sequence b and query head h; a tile is up to `tile` queries × `tile` keys):
///   q, dq, out, dOut [N, H·d]; k, v, dk, dv [N, KV·d]; lse [batch, H, T] (what forward saves)
///   per tile: S, P, dP [tq, tk]; acc [tq, d]; per query row: m (running maximum), l (running sum), D
/// Forward, for each query tile, over the key tiles it can see:
///   S = q·kᵀ·scale (capped, masked);  m′ = max(m, max S);  P = e^(S − m′);  l = l·e^(m − m′) + Σ P;
///   acc = acc·e^(m − m′) + P·v;  after the last tile out = acc / l, lse = m + log l
/// Backward (D = rowsum(dOut ⊙ out)), for each query tile and each key tile it sees:
///   P = e^(S − lse);  dP = dOut·vᵀ;  dv += Pᵀ·dOut;  dS = P ⊙ (dP − D) (⊙ the cap's derivative);
///   dq += dS·k·scale;  dk += dSᵀ·q·scale
extension Attention {
    /// The tile every batched pass uses: measured as fast as the plain path at 256-token rows and faster beyond
    /// (it skips the tiles above the diagonal), with a fraction of its memory (BENCHMARKS.md).
    public static var defaultTile: Int { 128 }

    /// Query rows `rows` of a tile whose keys start at `j0` (`columns` of them): the visible range of each row
    /// within the tile, or nil when the row sees none of its keys.
    @inlinable
    func visible(row i: Int, keys j0: Int, columns: Int) -> Range<Int>? {
        let lo = max(j0, scoring.firstVisible(i)) - j0, hi = min(j0 + columns, i + 1) - j0
        return lo < hi ? lo..<hi : nil
    }

    /// The key tiles query tile [i0, i1) sees, in order.
    @inlinable
    func keyTiles(_ i0: Int, _ i1: Int, tile: Int) -> StrideTo<Int> {
        stride(from: scoring.firstVisible(i0) / tile * tile, to: i1, by: tile)
    }

    /// S = q·kᵀ·scale for a tile [tq, tk], then capped on each row's visible keys.
    @inlinable
    func tileScores(q: UnsafePointer<T>, k: UnsafePointer<T>, b: Int, h: Int, i0: Int, tq: Int, j0: Int, tk: Int,
                    into s: UnsafeMutablePointer<T>) {
        let L = length, d = headDim
        T.gemm(transA: false, transB: true, m: tq, n: tk, k: d, alpha: scale, a: q + (b * L + i0) * qStride + h * d,
               lda: qStride, b: k + (b * L + j0) * kvStride + kvHead(h) * d, ldb: kvStride, beta: 0, c: s, ldc: tk)
        guard scoring.softCap != nil else { return }
        for r in 0..<tq { if let cols = visible(row: i0 + r, keys: j0, columns: tk) { scoring.cap(s + r * tk + cols.lowerBound, count: cols.count) } }
    }

    /// xⱼ ← e^(xⱼ − shift) over a row's visible entries (vector exponentials for Float); returns their sum.
    @inlinable
    static func exponentiate(_ x: UnsafeMutablePointer<T>, count: Int, minus shift: Double) -> Double {
        if T.self == Float.self { return VectorMath.exponentiate(x.asMutableFloat, count: count, minus: Float(shift)) }
        var sum = 0.0
        for j in 0..<count { let e = T.exp(x[j] - T(shift)); x[j] = e; sum += Double(e) }
        return sum
    }

    // MARK: Forward

    /// out and the per-row log-sum-exp `lse` [batch, H, T].
    @inlinable
    public func tiledForward(q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>, out: UnsafeMutablePointer<T>,
                             lse: UnsafeMutablePointer<T>, tile: Int) {
        let L = length, d = headDim
        // (sequence, head) pairs are independent: split over the pool when there are enough of them; otherwise
        // each tile's rows are.
        let units = batch * heads, parts = units >= 2 * Parallel.threads ? Parallel.threads : 1
        Parallel.run(parts: parts) { part in
            let s = UnsafeMutablePointer<T>.allocate(capacity: tile * tile)
            let acc = UnsafeMutablePointer<T>.allocate(capacity: tile * d)
            let maximum = UnsafeMutablePointer<Double>.allocate(capacity: tile)
            let sum = UnsafeMutablePointer<Double>.allocate(capacity: tile)
            defer { s.deallocate(); acc.deallocate(); maximum.deallocate(); sum.deallocate() }
            for unit in part * units / parts ..< (part + 1) * units / parts {
                let b = unit / heads, h = unit % heads
                for i0 in stride(from: 0, to: L, by: tile) {
                    let tq = min(tile, L - i0)
                    acc.update(repeating: 0, count: tq * d)
                    maximum.update(repeating: -.infinity, count: tq)
                    sum.update(repeating: 0, count: tq)
                    for j0 in keyTiles(i0, i0 + tq, tile: tile) {
                        let tk = min(tile, L - j0)
                        tileScores(q: q, k: k, b: b, h: h, i0: i0, tq: tq, j0: j0, tk: tk, into: s)
                        Parallel.forEachRange(tq, minimumPerThread: 16) { rows in
                            for r in rows {
                                let row = s + r * tk
                                guard let cols = visible(row: i0 + r, keys: j0, columns: tk) else {
                                    row.update(repeating: 0, count: tk)
                                    continue
                                }
                                var m = maximum[r]
                                for j in cols { m = max(m, Double(row[j])) }
                                let factor = LibM.exp(maximum[r] - m)
                                row.update(repeating: 0, count: cols.lowerBound)
                                let e = Attention.exponentiate(row + cols.lowerBound, count: cols.count, minus: m)
                                (row + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
                                (maximum[r], sum[r]) = (m, sum[r] * factor + e)
                                if factor != 1 { for c in 0..<d { acc[r * d + c] *= T(factor) } }
                            }
                        }
                        T.gemm(transA: false, transB: false, m: tq, n: d, k: tk, alpha: 1, a: s, lda: tk,
                               b: v + (b * L + j0) * kvStride + kvHead(h) * d, ldb: kvStride, beta: 1, c: acc, ldc: d)
                    }
                    for r in 0..<tq {
                        let o = out + (b * L + i0 + r) * qStride + h * d, inverse = T(1 / sum[r])
                        for c in 0..<d { o[c] = acc[r * d + c] * inverse }
                        lse[(b * heads + h) * L + i0 + r] = T(maximum[r] + LibM.log(sum[r]))
                    }
                }
            }
        }
    }

    // MARK: Backward

    /// Writes dq and accumulates into dk, dv (which the caller zeroes), from forward's `out` and `lse`.
    @inlinable
    public func tiledBackward(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                              out: UnsafePointer<T>, lse: UnsafePointer<T>, dq: UnsafeMutablePointer<T>,
                              dk: UnsafeMutablePointer<T>, dv: UnsafeMutablePointer<T>, tile: Int) {
        let L = length, d = headDim, group = heads / kvHeads
        // The query heads of one key/value head add into the same dk, dv rows: (sequence, key/value head) groups
        // are independent and split over the pool when there are enough of them; otherwise each tile's rows are.
        let units = batch * kvHeads, parts = units >= 2 * Parallel.threads ? Parallel.threads : 1
        Parallel.run(parts: parts) { part in
            let p = UnsafeMutablePointer<T>.allocate(capacity: tile * tile)
            let dP = UnsafeMutablePointer<T>.allocate(capacity: tile * tile)
            let delta = UnsafeMutablePointer<T>.allocate(capacity: tile)
            defer { p.deallocate(); dP.deallocate(); delta.deallocate() }
            for unit in part * units / parts ..< (part + 1) * units / parts {
                let b = unit / kvHeads
                for h in (unit % kvHeads) * group ..< (unit % kvHeads + 1) * group {
                    let kvOffset = b * L * kvStride + kvHead(h) * d
                    for i0 in stride(from: 0, to: L, by: tile) {
                        let tq = min(tile, L - i0), qOffset = (b * L + i0) * qStride + h * d
                        for r in 0..<tq {
                            var dot: T = 0
                            for c in 0..<d { dot += dOut[qOffset + r * qStride + c] * out[qOffset + r * qStride + c] }
                            delta[r] = dot
                        }
                        for r in 0..<tq { (dq + qOffset + r * qStride).update(repeating: 0, count: d) }
                        for j0 in keyTiles(i0, i0 + tq, tile: tile) {
                            let tk = min(tile, L - j0), jOffset = j0 * kvStride
                            tileScores(q: q, k: k, b: b, h: h, i0: i0, tq: tq, j0: j0, tk: tk, into: p)
                            T.gemm(transA: false, transB: true, m: tq, n: tk, k: d, alpha: 1, a: dOut + qOffset, lda: qStride,
                                   b: v + kvOffset + jOffset, ldb: kvStride, beta: 0, c: dP, ldc: tk)
                            Parallel.forEachRange(tq, minimumPerThread: 16) { rows in
                                for r in rows {
                                    let pr = p + r * tk, dr = dP + r * tk
                                    guard let cols = visible(row: i0 + r, keys: j0, columns: tk) else {
                                        pr.update(repeating: 0, count: tk)
                                        dr.update(repeating: 0, count: tk)
                                        continue
                                    }
                                    let capped = scoring.softCap.map { _ in Array(UnsafeBufferPointer(start: pr + cols.lowerBound, count: cols.count)) }
                                    pr.update(repeating: 0, count: cols.lowerBound)
                                    dr.update(repeating: 0, count: cols.lowerBound)
                                    _ = Attention.exponentiate(pr + cols.lowerBound, count: cols.count,
                                                               minus: Double(lse[(b * heads + h) * L + i0 + r]))
                                    for j in cols { dr[j] = pr[j] * (dr[j] - delta[r]) }
                                    if let capped, let cap = scoring.softCap {
                                        for (n, j) in cols.enumerated() { let t = capped[n] / cap; dr[j] *= 1 - t * t }
                                    }
                                    (pr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
                                    (dr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
                                }
                            }
                            T.gemm(transA: true, transB: false, m: tk, n: d, k: tq, alpha: 1, a: p, lda: tk,
                                   b: dOut + qOffset, ldb: qStride, beta: 1, c: dv + kvOffset + jOffset, ldc: kvStride)
                            T.gemm(transA: false, transB: false, m: tq, n: d, k: tk, alpha: scale, a: dP, lda: tk,
                                   b: k + kvOffset + jOffset, ldb: kvStride, beta: 1, c: dq + qOffset, ldc: qStride)
                            T.gemm(transA: true, transB: false, m: tk, n: d, k: tq, alpha: scale, a: dP, lda: tk,
                                   b: q + qOffset, ldb: qStride, beta: 1, c: dk + kvOffset + jOffset, ldc: kvStride)
                        }
                    }
                }
            }
        }
    }
}
