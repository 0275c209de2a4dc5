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

    /// Whether there are whole (sequence, key/value head) units enough for every thread (two each): then each
    /// thread takes whole units. Otherwise (one long row, few key/value heads, many threads) tiles are the parts:
    /// forward and dq by query tile, dk and dv by key tile. Either way each value is computed by one thread in one
    /// order, so the results are the same bits on any count of threads.
    @inlinable
    var splitsByUnit: Bool { batch * kvHeads >= 2 * Parallel.threads }

    /// Query tile `index` from the end (the longest first, so that the parts that finish last are short) and the
    /// unit of part `part` of `units × tiles` parts.
    @inlinable
    func tilePart(_ part: Int, units: Int, tiles: Int, tile: Int, longestFirst: Bool) -> (unit: Int, start: Int) {
        let index = part / units
        return (part % units, (longestFirst ? tiles - 1 - index : index) * tile)
    }

    // MARK: Forward

    /// out and the per-row log-sum-exp `lse` [batch, H, T].
    @inlinable
    public func tiledForward(q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>, out: UnsafeMutablePointer<T>,
                             lse: UnsafeMutablePointer<T>, tile: Int) {
        let units = batch * kvHeads, tiles = (length + tile - 1) / tile
        let parts = splitsByUnit ? Parallel.threads : units * tiles
        Parallel.run(parts: parts) { part in
            let scratch = ForwardScratch(rows: heads / kvHeads * tile, tile: tile, headDim: headDim)
            defer { scratch.deallocate() }
            if splitsByUnit {
                for unit in part * units / parts ..< (part + 1) * units / parts {
                    for i0 in stride(from: 0, to: length, by: tile) {
                        forwardTile(unit: unit, i0: i0, tile: tile, q: q, k: k, v: v, out: out, lse: lse, scratch)
                    }
                }
            } else {
                let (unit, i0) = tilePart(part, units: units, tiles: tiles, tile: tile, longestFirst: true)
                forwardTile(unit: unit, i0: i0, tile: tile, q: q, k: k, v: v, out: out, lse: lse, scratch)
            }
        }
    }

    /// One part's buffers for forward: a tile's stacked query rows, scores and accumulators.
    @usableFromInline
    struct ForwardScratch {
        @usableFromInline let qg, s, acc: UnsafeMutablePointer<T>
        @usableFromInline let maximum, sum: UnsafeMutablePointer<Double>
        @inlinable
        init(rows: Int, tile: Int, headDim d: Int) {
            qg = .allocate(capacity: rows * d)
            s = .allocate(capacity: rows * tile)
            acc = .allocate(capacity: rows * d)
            maximum = .allocate(capacity: rows)
            sum = .allocate(capacity: rows)
        }
        @inlinable
        func deallocate() { qg.deallocate(); s.deallocate(); acc.deallocate(); maximum.deallocate(); sum.deallocate() }
    }

    /// Query tile [i0, i0 + tile) of one (sequence, key/value head) unit, its query heads stacked, over every key
    /// tile it sees: out and lse of its rows.
    @inlinable
    func forwardTile(unit: Int, i0: Int, tile: Int, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                     out: UnsafeMutablePointer<T>, lse: UnsafeMutablePointer<T>, _ scratch: ForwardScratch) {
        let L = length, d = headDim, group = heads / kvHeads
        let (qg, s, acc, maximum, sum) = (scratch.qg, scratch.s, scratch.acc, scratch.maximum, scratch.sum)
        let b = unit / kvHeads, h0 = unit % kvHeads * group, kvOffset = b * L * kvStride + unit % kvHeads * d
        let tq = min(tile, L - i0), stacked = group * tq
        gatherHeads(q, b: b, h0: h0, group: group, i0: i0, tq: tq, into: qg)
        acc.update(repeating: 0, count: stacked * d)
        maximum.update(repeating: -.infinity, count: stacked)
        sum.update(repeating: 0, count: stacked)
        for j0 in keyTiles(i0, i0 + tq, tile: tile) {
            let tk = min(tile, L - j0)
            product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: scale, a: qg, lda: d,
                    b: k + kvOffset + j0 * kvStride, ldb: kvStride, beta: 0, c: s, ldc: tk)
            for r in 0..<stacked {
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

    // MARK: Backward

    /// Writes dq and accumulates into dk, dv (which the caller zeroes), from forward's `out` and `lse`.
    @inlinable
    public func tiledBackward(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>,
                              out: UnsafePointer<T>, lse: UnsafePointer<T>, dq: UnsafeMutablePointer<T>,
                              dk: UnsafeMutablePointer<T>, dv: UnsafeMutablePointer<T>, tile: Int) {
        let units = batch * kvHeads, tiles = (length + tile - 1) / tile
        let inputs = BackwardInputs(dOut: dOut, q: q, k: k, v: v, out: out, lse: lse)
        if splitsByUnit {
            // The query heads of one key/value head add into the same dk, dv rows: each thread takes whole units,
            // one query tile after another, each tile's dq, dk and dv at once.
            let parts = Parallel.threads
            Parallel.run(parts: parts) { part in
                let scratch = BackwardScratch(rows: heads / kvHeads * tile, tile: tile, headDim: headDim)
                defer { scratch.deallocate() }
                for unit in part * units / parts ..< (part + 1) * units / parts {
                    for i0 in stride(from: 0, to: length, by: tile) {
                        backwardQueryTile(unit: unit, i0: i0, tile: tile, inputs, scratch, dq: dq, dk: dk, dv: dv)
                    }
                }
            }
            return
        }
        // Fewer units than threads want: dq by query tile, then dk and dv by key tile over the query tiles that see
        // it, in the same order as above (each tile's P and dS computed twice, for parts that never share a row).
        Parallel.run(parts: units * tiles) { part in
            let scratch = BackwardScratch(rows: heads / kvHeads * tile, tile: tile, headDim: headDim)
            defer { scratch.deallocate() }
            let (unit, i0) = tilePart(part, units: units, tiles: tiles, tile: tile, longestFirst: true)
            backwardQueryTile(unit: unit, i0: i0, tile: tile, inputs, scratch, dq: dq, dk: nil, dv: nil)
        }
        Parallel.run(parts: units * tiles) { part in
            let scratch = BackwardScratch(rows: heads / kvHeads * tile, tile: tile, headDim: headDim)
            defer { scratch.deallocate() }
            let (unit, j0) = tilePart(part, units: units, tiles: tiles, tile: tile, longestFirst: false)
            backwardKeyTile(unit: unit, j0: j0, tile: tile, inputs, scratch, dk: dk, dv: dv)
        }
    }

    /// What backward reads.
    @usableFromInline
    struct BackwardInputs {
        @usableFromInline let dOut, q, k, v, out, lse: UnsafePointer<T>
        @inlinable
        init(dOut: UnsafePointer<T>, q: UnsafePointer<T>, k: UnsafePointer<T>, v: UnsafePointer<T>, out: UnsafePointer<T>, lse: UnsafePointer<T>) {
            (self.dOut, self.q, self.k, self.v, self.out, self.lse) = (dOut, q, k, v, out, lse)
        }
    }

    /// One part's buffers for backward: a query tile's stacked q, dOut, dq rows and D, and a tile's P and dP (dS).
    @usableFromInline
    struct BackwardScratch {
        @usableFromInline let qg, dOutG, dqG, p, dP, delta: UnsafeMutablePointer<T>
        @inlinable
        init(rows: Int, tile: Int, headDim d: Int) {
            qg = .allocate(capacity: rows * d)
            dOutG = .allocate(capacity: rows * d)
            dqG = .allocate(capacity: rows * d)
            p = .allocate(capacity: rows * tile)
            dP = .allocate(capacity: rows * tile)
            delta = .allocate(capacity: rows)
        }
        @inlinable
        func deallocate() { qg.deallocate(); dOutG.deallocate(); dqG.deallocate(); p.deallocate(); dP.deallocate(); delta.deallocate() }
    }

    /// Gathers query tile [i0, i0 + tq)'s stacked q and dOut rows and their D = rowsum(dOut ⊙ out).
    @inlinable
    func gatherQueryTile(b: Int, h0: Int, i0: Int, tq: Int, _ x: BackwardInputs, _ scratch: BackwardScratch) {
        let d = headDim, group = heads / kvHeads
        gatherHeads(x.q, b: b, h0: h0, group: group, i0: i0, tq: tq, into: scratch.qg)
        gatherHeads(x.dOut, b: b, h0: h0, group: group, i0: i0, tq: tq, into: scratch.dOutG)
        for r in 0..<(group * tq) {
            let o = x.out + (b * length + i0 + r % tq) * qStride + (h0 + r / tq) * d
            var dot: T = 0
            for c in 0..<d { dot += scratch.dOutG[r * d + c] * o[c] }
            scratch.delta[r] = dot
        }
    }

    /// P = e^(S − lse) and dS = P ⊙ (dP − D) (⊙ the cap's derivative) of query tile i0 against key tile j0, into
    /// the scratch's p and dP, from its gathered rows.
    @inlinable
    func tileGradient(b: Int, h0: Int, i0: Int, tq: Int, j0: Int, tk: Int, kvOffset: Int, _ x: BackwardInputs,
                      _ scratch: BackwardScratch) {
        let d = headDim, stacked = heads / kvHeads * tq, jOffset = kvOffset + j0 * kvStride
        let (p, dP, delta) = (scratch.p, scratch.dP, scratch.delta)
        product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: scale, a: scratch.qg, lda: d,
                b: x.k + jOffset, ldb: kvStride, beta: 0, c: p, ldc: tk)
        product(transA: false, transB: true, m: stacked, n: tk, k: d, alpha: 1, a: scratch.dOutG, lda: d,
                b: x.v + jOffset, ldb: kvStride, beta: 0, c: dP, ldc: tk)
        for r in 0..<stacked {
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
                                       minus: Double(x.lse[(b * heads + h0 + r / tq) * length + i]))
            for j in cols { dr[j] = pr[j] * (dr[j] - delta[r]) }
            if let capped, let cap = scoring.softCap {
                for (n, j) in cols.enumerated() { let t = capped[n] / cap; dr[j] *= 1 - t * t }
            }
            (pr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
            (dr + cols.upperBound).update(repeating: 0, count: tk - cols.upperBound)
        }
    }

    /// Query tile [i0, i0 + tile) of one unit over the key tiles it sees: its dq rows, and (when given) its
    /// additions to dk and dv.
    @inlinable
    func backwardQueryTile(unit: Int, i0: Int, tile: Int, _ x: BackwardInputs, _ scratch: BackwardScratch,
                           dq: UnsafeMutablePointer<T>, dk: UnsafeMutablePointer<T>?, dv: UnsafeMutablePointer<T>?) {
        let L = length, d = headDim, group = heads / kvHeads
        let b = unit / kvHeads, h0 = unit % kvHeads * group, kvOffset = b * L * kvStride + unit % kvHeads * d
        let tq = min(tile, L - i0), stacked = group * tq
        gatherQueryTile(b: b, h0: h0, i0: i0, tq: tq, x, scratch)
        scratch.dqG.update(repeating: 0, count: stacked * d)
        for j0 in keyTiles(i0, i0 + tq, tile: tile) {
            let tk = min(tile, L - j0), jOffset = kvOffset + j0 * kvStride
            tileGradient(b: b, h0: h0, i0: i0, tq: tq, j0: j0, tk: tk, kvOffset: kvOffset, x, scratch)
            if let dv {
                product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: 1, a: scratch.p, lda: tk,
                        b: scratch.dOutG, ldb: d, beta: 1, c: dv + jOffset, ldc: kvStride)
            }
            product(transA: false, transB: false, m: stacked, n: d, k: tk, alpha: scale, a: scratch.dP, lda: tk,
                    b: x.k + jOffset, ldb: kvStride, beta: 1, c: scratch.dqG, ldc: d)
            if let dk {
                product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: scale, a: scratch.dP, lda: tk,
                        b: scratch.qg, ldb: d, beta: 1, c: dk + jOffset, ldc: kvStride)
            }
        }
        for r in 0..<stacked {
            (dq + (b * L + i0 + r % tq) * qStride + (h0 + r / tq) * d).update(from: scratch.dqG + r * d, count: d)
        }
    }

    /// Key tile [j0, j0 + tile) of one unit: its dk and dv rows from every query tile that sees it, in the order
    /// `backwardQueryTile` adds them.
    @inlinable
    func backwardKeyTile(unit: Int, j0: Int, tile: Int, _ x: BackwardInputs, _ scratch: BackwardScratch,
                         dk: UnsafeMutablePointer<T>, dv: UnsafeMutablePointer<T>) {
        let L = length, d = headDim, group = heads / kvHeads
        let b = unit / kvHeads, h0 = unit % kvHeads * group, kvOffset = b * L * kvStride + unit % kvHeads * d
        let tk = min(tile, L - j0), jOffset = kvOffset + j0 * kvStride
        // Query tiles before j0 cannot see it (causal); from j0 on, until the window has moved past it.
        for i0 in stride(from: j0, to: L, by: tile) {
            guard scoring.firstVisible(i0) / tile * tile <= j0 else { break }
            let tq = min(tile, L - i0), stacked = group * tq
            gatherQueryTile(b: b, h0: h0, i0: i0, tq: tq, x, scratch)
            tileGradient(b: b, h0: h0, i0: i0, tq: tq, j0: j0, tk: tk, kvOffset: kvOffset, x, scratch)
            product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: 1, a: scratch.p, lda: tk,
                    b: scratch.dOutG, ldb: d, beta: 1, c: dv + jOffset, ldc: kvStride)
            product(transA: true, transB: false, m: tk, n: d, k: stacked, alpha: scale, a: scratch.dP, lda: tk,
                    b: scratch.qg, ldb: d, beta: 1, c: dk + jOffset, ldc: kvStride)
        }
    }
}
