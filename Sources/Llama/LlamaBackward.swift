import Kernels
import LoRA

extension LlamaModel {
    /// One forward and backward pass: accumulates dLoss/d(A, B) of the trainable adapters and returns the summed
    /// loss of the scored targets and their count. The loss is Σ CE · `lossScale` (pass 1 / the number of scored
    /// tokens of the whole optimizer step, so accumulated micro-batches equal one large batch).
    ///
    /// Shapes: tokens, targets [batch · length] (targets −1 = not scored).
    @_specialize(exported: true, where T == Float)
    public func forwardBackward(tokens: [Int32], targets: [Int32], batch: Int, lossScale: T) throws -> (sum: Double, count: Int) {
        let n = tokens.count, C = config.embedding, V = config.vocabulary
        guard targets.count == n else { throw ModelError.invalidInput("\(targets.count) targets for \(n) tokens") }
        let length = n / max(batch, 1)
        var caches: [LayerCache<T>]? = []
        var inputs: [[T]]? = gradientCheckpointing ? [] : nil
        let (x, rstd, hf) = try hidden(tokens: tokens, batch: batch, length: length, caches: &caches, layerInputs: &inputs)

        // Head and loss, chunk by chunk over the scored rows only (unscored rows have no gradient):
        // logits → dlogits in place → dhf.
        var dhf = [T](repeating: 0, count: n * C)
        var total = 0.0
        let head = adaptersFor("output")
        let scoredRows = (0..<n).filter { targets[$0] >= 0 && Int(targets[$0]) < V }
        var rowsH = [T](repeating: 0, count: min(headChunkRows, scoredRows.count) * C)
        var rowsD = rowsH
        weights.head.withUnsafeBufferPointer { w in
            for start in stride(from: 0, to: scoredRows.count, by: headChunkRows) {
                let chunk = scoredRows[start..<min(scoredRows.count, start + headChunkRows)]
                let m = chunk.count
                for (i, r) in chunk.enumerated() { for c in 0..<C { rowsH[i * C + c] = hf[r * C + c] } }
                let chunkTargets = chunk.map { targets[$0] }
                var logits = [T](repeating: 0, count: m * V)
                var saved: [[T]] = []
                LinearLoRA.forward(x: rowsH, n: m, inFeatures: C, outFeatures: V, weight: w.baseAddress!, adapters: head,
                                   y: &logits, saved: &saved)
                total += CrossEntropy.forwardBackward(logits: &logits, targets: chunkTargets, rows: m, vocab: V,
                                                      gradientScale: lossScale, gradient: true)
                rowsD.withUnsafeMutableBufferPointer { d in
                    LinearLoRA.backward(dy: logits, x: rowsH, n: m, inFeatures: C, outFeatures: V, weight: w.baseAddress!,
                                        adapters: head, saved: saved, dx: d.baseAddress!, accumulate: false)
                }
                for (i, r) in chunk.enumerated() { for c in 0..<C { dhf[r * C + c] = rowsD[i * C + c] } }
            }
        }
        var dx = [T](repeating: 0, count: n * C)
        RMSNorm.backward(dy: dhf, x: x, weight: weights.outputNorm, rstd: rstd, dx: &dx, rows: n, cols: C)

        let rope = RoPE<T>(positions: (0..<n).map { Int32($0 % length) }, frequencies: frequencies)
        let attention = Attention<T>(batch: batch, length: length, heads: config.heads, kvHeads: config.kvHeads,
                                     headDim: config.headDim)
        for l in stride(from: config.layers - 1, through: 0, by: -1) {
            let w = try weights.layer(l)
            let cache: LayerCache<T>
            if let inputs {
                cache = LayerCache<T>()
                _ = layerForward(l, x: inputs[l], w: w, rope: rope, attention: attention, cache: cache, keepAll: true)
            } else {
                cache = caches![l]
                caches![l] = LayerCache<T>()  // free as we go
                restore(l, cache, w: w, attention: attention)
            }
            dx = layerBackward(l, dOut: dx, w: w, rope: rope, attention: attention, cache: cache)
        }
        embeddingLoRABackward(tokens: tokens, dx: dx)
        return (total, scoredRows.count)
    }

    /// Backward of one block: returns dL/d(block input) and accumulates LoRA gradients.
    func layerBackward(_ l: Int, dOut: [T], w: LayerWeights<T>, rope: RoPE<T>, attention: Attention<T>,
                       cache c: LayerCache<T>) -> [T] {
        let n = dOut.count / config.embedding, C = config.embedding, F = config.feedForward
        let p = "blk.\(l)."
        // x3 = xMid + down(act):  dxMid = dOut + (norm path below)
        var dAct = [T](repeating: 0, count: n * F)
        linearBack(p + "ffn_down", dOut, c.act, n, F, C, w.down, c, &dAct, accumulate: false)
        c.act = []  // release each saved activation after its last use: the first layer's backward sets the peak
        var dGate = [T](repeating: 0, count: n * F), dUp = [T](repeating: 0, count: n * F)
        SwiGLU.backward(dOut: dAct, gate: c.gate, up: c.up, dGate: &dGate, dUp: &dUp, count: n * F)
        (c.gate, c.up, dAct) = ([], [], [])
        var dh2 = [T](repeating: 0, count: n * C)
        linearBack(p + "ffn_gate", dGate, c.h2, n, C, F, w.gate, c, &dh2, accumulate: false)
        linearBack(p + "ffn_up", dUp, c.h2, n, C, F, w.up, c, &dh2, accumulate: true)
        (c.h2, dGate, dUp) = ([], [], [])
        var dxMid = dOut
        RMSNorm.backward(dy: dh2, x: c.xMid, weight: w.ffnNorm, rstd: c.rstd2, dx: &dxMid, rows: n, cols: C)
        // xMid = xIn + o(attn)
        var dAttn = [T](repeating: 0, count: n * config.qDim)
        linearBack(p + "attn_output", dxMid, c.attn, n, config.qDim, C, w.o, c, &dAttn, accumulate: false)
        c.attn = []
        var dq = [T](repeating: 0, count: n * config.qDim)
        var dk = [T](repeating: 0, count: n * config.kvDim), dv = dk
        attention.backward(dOut: dAttn, q: c.q, k: c.k, v: c.v, probs: c.probs, dq: &dq, dk: &dk, dv: &dv)
        (c.probs, dAttn) = ([], [])
        dq.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.heads, inverse: true) }
        dk.withUnsafeMutableBufferPointer { rope.apply($0.baseAddress!, tokens: n, heads: config.kvHeads, inverse: true) }
        var dh1 = [T](repeating: 0, count: n * C)
        linearBack(p + "attn_q", dq, c.h1, n, C, config.qDim, w.q, c, &dh1, accumulate: false)
        linearBack(p + "attn_k", dk, c.h1, n, C, config.kvDim, w.k, c, &dh1, accumulate: true)
        linearBack(p + "attn_v", dv, c.h1, n, C, config.kvDim, w.v, c, &dh1, accumulate: true)
        var dxIn = dxMid
        RMSNorm.backward(dy: dh1, x: c.xIn, weight: w.attnNorm, rstd: c.rstd1, dx: &dxIn, rows: n, cols: C)
        return dxIn
    }

    func linearBack(_ name: String, _ dy: [T], _ x: [T], _ n: Int, _ inF: Int, _ outF: Int, _ w: [T],
                    _ cache: LayerCache<T>, _ dx: inout [T], accumulate: Bool) {
        dx.withUnsafeMutableBufferPointer { d in
            LinearLoRA.backward(dy: dy, x: x, n: n, inFeatures: inF, outFeatures: outF, weight: w,
                                adapters: adaptersFor(name), saved: cache.lora[name] ?? [], dx: d.baseAddress!,
                                accumulate: accumulate)
        }
    }

    /// token_embd LoRA gradients: e[t] += s·B·A[:, token] ⇒ dA[:, token] += s·Bᵀ·de,  dB += s·de·A[:, token]ᵀ.
    func embeddingLoRABackward(tokens: [Int32], dx: [T]) {
        let C = config.embedding, V = config.vocabulary
        for (pair, scale, trainable) in adaptersFor("token_embd").pairs where trainable {
            let r = pair.rank
            for (t, token) in tokens.enumerated() {
                let col = Int(token)
                for j in 0..<r {
                    var sum: T = 0
                    for o in 0..<C { sum += pair.b[o * r + j] * dx[t * C + o] }
                    pair.gradA[j * V + col] += scale * sum
                    let aj = pair.a[j * V + col]
                    for o in 0..<C { pair.gradB[o * r + j] += scale * dx[t * C + o] * aj }
                }
            }
        }
    }
}
