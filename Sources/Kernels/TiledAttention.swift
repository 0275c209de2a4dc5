/// Causal attention in tiles (flash-style), forward and backward side by side: the same function as `Attention`'s
/// plain path, which stays the reference, without ever holding the [T, T] probabilities of a head. Forward keeps
/// only each row's log-sum-exp; backward recomputes each tile's probabilities from it.
///
/// Shapes (per sequence b and key/value head, whose G = H/KV query heads are stacked; a tile is up to `tile`
/// queries of each of them × `tile` keys):
///   q, dq, out, dOut [N, H·d]; k, v, dk, dv [N, KV·d]; lse [batch, H, T] (what forward saves)
///   per tile: the G heads' q, dOut, dq rows [G·tq, d]; S, P, dP [G·tq, tk]; acc [G·tq, d];
///   per query row: m (running maximum), l (running sum), D
/// Forward, for each query tile, over the key tiles it can see:
///   S = q·kᵀ·scale (capped, masked);  m′ = max(m, max S);  P = e^(S − m′);  l = l·e^(m − m′) + Σ P;
///   acc = acc·e^(m − m′) + P·v;  after the last tile out = acc / l, lse = m + log l
/// Backward (D = rowsum(dOut ⊙ out)), for each query tile and each key tile it sees:
///   P = e^(S − lse);  dP = dOut·vᵀ;  dv += Pᵀ·dOut;  dS = P ⊙ (dP − D) (⊙ the cap's derivative);
///   dq += dS·k·scale;  dk += dSᵀ·q·scale
extension Attention {
    /// The tile every batched pass uses: measured as fast as the plain path at 256-token rows and faster beyond
    /// (it skips the tiles above the diagonal), with a fraction of its memory. 64 rather than 128: at 256-token
    /// rows the diagonal tiles' masked halves were a third of the attention's products, and 64 issues a fifth fewer
    /// and ran faster; at 2048 both measured the same (BENCHMARKS.md).
    public static var defaultTile: Int { 64 }

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

    /// The rows of the query heads h0 ..< h0 + group at positions i0 ..< i0 + tq of sequence b, stacked head after
    /// head: row g·tq + r of `into` [group·tq, d] is position i0 + r of head h0 + g. Stacked, the heads that share a
    /// key/value head make one product with each key and value tile instead of `group` small ones.
    @inlinable
    func gatherHeads(_ x: UnsafePointer<T>, b: Int, h0: Int, group: Int, i0: Int, tq: Int, into: UnsafeMutablePointer<T>) {
        let d = headDim
        for g in 0..<group {
            for r in 0..<tq { (into + (g * tq + r) * d).update(from: x + (b * length + i0 + r) * qStride + (h0 + g) * d, count: d) }
        }
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
        let L = length, d = headDim, group = heads / kvHeads
        // (sequence, key/value head) pairs are independent: split over the pool when there are enough of them;
        // otherwise each tile's rows are. Each takes its `group` query heads stacked (`gatherHeads`).
        let units = batch * kvHeads, parts = units >= 2 * Parallel.threads ? Parallel.threads : 1
        Parallel.run(parts: parts) { part in
            let most = group * tile
            let qg = UnsafeMutablePointer<T>.allocate(capacity: most * d)
            let s = UnsafeMutablePointer<T>.allocate(capacity: most * tile)
            let acc = UnsafeMutablePointer<T>.allocate(capacity: most * d)
            let maximum = UnsafeMutablePointer<Double>.allocate(capacity: most)
            let sum = UnsafeMutablePointer<Double>.allocate(capacity: most)
            defer { qg.deallocate(); s.deallocate(); acc.deallocate(); maximum.deallocate(); sum.deallocate() }
            for unit in part * units / parts ..< (part + 1) * units / parts {
                let b = unit / kvHeads, h0 = unit % kvHeads * group, kvOffset = b * L * kvStride + unit % kvHeads * d
                for i0 in stride(from: 0, to: L, by: tile) {
                    let tq = min(tile, L - i0), stacked = group * tq
                    gatherHeads(q, b: b, h0: h0, group: group, i0: i0, tq: tq, into: qg)
                    acc.update(repeating: 0, count: stacked * d)
                    maximum.update(repeating: -.infinity, count: stacked)
                    sum.update(repeating: 0, count: stacked)
                    for j0 in keyTiles(i0, i0 + tq, tile: tile) {
                        let tk = min(tile, L - j0)
                        product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: scale, a: qg, lda: d,
                                b: k + kvOffset + j0 * kvStride, ldb: kvStride, beta: 0, c: s, ldc: tk)
                        Parallel.forEachRange(stacked, minimumPerThread: 16) { rows in
                            for r in rows {
                                let row = s + r * tk
                                guard let cols = visible(row: i0 + r % tq, keys: j0, columns: tk) else {
                                    row.update(repeating: 0, count: tk)
                                    continue
                                }
                                if scoring.softCap != nil { scoring.cap(row + cols.lowerBound, count: cols.count) }
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
                        product(transA: false, transB: false, m: stacked, n: d, k: tk, alpha: 1, a: s, lda: tk,
                                b: v + kvOffset + j0 * kvStride, ldb: kvStride, beta: 1, c: acc, ldc: d)
                    }
                    for r in 0..<stacked {
                        let h = h0 + r / tq, i = i0 + r % tq
                        let o = out + (b * L + i) * qStride + h * d, inverse = T(1 / sum[r])
                        for c in 0..<d { o[c] = acc[r * d + c] * inverse }
                        lse[(b * heads + h) * L + i] = T(maximum[r] + LibM.log(sum[r]))
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
        // Each group's query heads are stacked (`gatherHeads`), so Pᵀ·dOut and dSᵀ·q sum over them in one product.
        let units = batch * kvHeads, parts = units >= 2 * Parallel.threads ? Parallel.threads : 1
        Parallel.run(parts: parts) { part in
            let most = group * tile
            let qg = UnsafeMutablePointer<T>.allocate(capacity: most * d)
            let dOutG = UnsafeMutablePointer<T>.allocate(capacity: most * d)
            let dqG = UnsafeMutablePointer<T>.allocate(capacity: most * d)
            let p = UnsafeMutablePointer<T>.allocate(capacity: most * tile)
            let dP = UnsafeMutablePointer<T>.allocate(capacity: most * tile)
            let delta = UnsafeMutablePointer<T>.allocate(capacity: most)
            defer { qg.deallocate(); dOutG.deallocate(); dqG.deallocate(); p.deallocate(); dP.deallocate(); delta.deallocate() }
            for unit in part * units / parts ..< (part + 1) * units / parts {
                let b = unit / kvHeads, h0 = unit % kvHeads * group, kvOffset = b * L * kvStride + unit % kvHeads * d
                for i0 in stride(from: 0, to: L, by: tile) {
                    let tq = min(tile, L - i0), stacked = group * tq
                    gatherHeads(q, b: b, h0: h0, group: group, i0: i0, tq: tq, into: qg)
                    gatherHeads(dOut, b: b, h0: h0, group: group, i0: i0, tq: tq, into: dOutG)
                    for r in 0..<stacked {
                        let o = out + (b * L + i0 + r % tq) * qStride + (h0 + r / tq) * d
                        var dot: T = 0
                        for c in 0..<d { dot += dOutG[r * d + c] * o[c] }
                        delta[r] = dot
                    }
                    dqG.update(repeating: 0, count: stacked * d)
                    for j0 in keyTiles(i0, i0 + tq, tile: tile) {
                        let tk = min(tile, L - j0), jOffset = kvOffset + j0 * kvStride
                        product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: scale, a: qg, lda: d,
                                b: k + jOffset, ldb: kvStride, beta: 0, c: p, ldc: tk)
                        product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: 1, a: dOutG, lda: d,
                                b: v + jOffset, ldb: kvStride, beta: 0, c: dP, ldc: tk)
                        Parallel.forEachRange(stacked, minimumPerThread: 16) { rows in
                            for r in rows {
                                let pr = p + r * tk, dr = dP + r * tk, i = i0 + r % tq
                                guard let cols = visible(row: i, keys: j0, columns: tk) else {
                                    pr.update(repeating: 0, count: tk)
                                    dr.update(repeating: 0, count: tk)
                                    continue
                                }
                                if scoring.softCap != nil { scoring.cap(pr + cols.lowerBound, count: cols.count) }
                                let capped = scoring.softCap.map { _ in Array(UnsafeBufferPointer(start: pr + cols.lowerBound, count: cols.count)) }
                                pr.update(repeating: 0, count: cols.lowerBound)
                                dr.update(repeating: 0, count: cols.lowerBound)
                                _ = Attention.exponentiate(pr + cols.lowerBound, count: cols.count,
                                                           minus: Double(lse[(b * heads + h0 + r / tq) * L + i]))
                                for j in cols { dr[j] = pr[j] * (dr[j] - delta[r]) }
                                if let capped, let cap = scoring.softCap {
                                    for (n, j) in cols.enumerated() { let t = capped[n] / cap; dr[j] *= 1 - t * t }
                                }
                                (pr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
                                (dr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
                            }
                        }
                        product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: 1, a: p, lda: tk,
                                b: dOutG, ldb: d, beta: 1, c: dv + jOffset, ldc: kvStride)
                        product(transA: false, transB: false, m: stacked, n: d, k: tk, alpha: scale, a: dP, lda: tk,
                                b: k + jOffset, ldb: kvStride, beta: 1, c: dqG, ldc: d)
                        product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: scale, a: dP, lda: tk,
                                b: qg, ldb: d, beta: 1, c: dk + jOffset, ldc: kvStride)
                    }
                    for r in 0..<stacked {
                        (dq + (b * L + i0 + r % tq) * qStride + (h0 + r / tq) * d).update(from: dqG + r * d, count: d)
                    }
                }
            }
        }
    }
}
