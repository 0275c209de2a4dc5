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
        let n = tokens.count, C = config.embedding
        guard targets.count == n else { throw ModelError.invalidInput("\(targets.count) targets for \(n) tokens") }
        let length = n / max(batch, 1)
        var (x, rstd, hf, activations, inputs) = try hidden(tokens: tokens, batch: batch, length: length,
                                                            keep: gradientCheckpointing ? .inputs : .activations)
        let (total, dhf, scored) = try headBackward(hf: hf, targets: targets, lossScale: lossScale)
        hf = []
        var dx = [T](repeating: 0, count: n * C)
        RMSNorm.backward(dy: dhf, x: x, weight: weights.outputNorm, rstd: rstd, dx: &dx, rows: n, cols: C)
        x = []

        let rotations = causalRotations(tokens: n, length: length)
        for l in stride(from: config.layers - 1, through: 0, by: -1) {
            try checkCancelled()
            let block = try self.block(l, rotations: rotations)
            let attention = causalAttention(batch: batch, length: length, layer: l)
            let kept: BlockActivations<T>
            if gradientCheckpointing {
                kept = BlockActivations<T>()
                _ = block.forward(inputs[l], attention: .causal(attention), keep: kept, everything: true)
                inputs[l] = []
            } else {
                kept = activations[l]
                activations[l] = BlockActivations<T>()  // free as we go
                block.restore(kept, attention: attention)
            }
            dx = block.backward(dx, attention: attention, activations: kept)
        }
        embedBackward(tokens: tokens, dx: dx)
        return (total, scored)
    }

    /// Head and loss, chunk by chunk over the scored rows only (unscored rows have no gradient):
    /// logits → dlogits in place → dhf [N, C]. Returns the summed loss, dhf and the number of scored rows.
    func headBackward(hf: [T], targets: [Int32], lossScale: T) throws -> (loss: Double, dhf: [T], scored: Int) {
        let n = targets.count, C = config.embedding, V = config.vocabulary
        var dhf = [T](repeating: 0, count: n * C)
        var total = 0.0
        let head = try self.head()
        let scoredRows = (0..<n).filter { targets[$0] >= 0 && Int(targets[$0]) < V }
        var rowsH = [T](repeating: 0, count: min(headChunkRows, scoredRows.count) * C)
        var rowsD = rowsH
        for start in stride(from: 0, to: scoredRows.count, by: headChunkRows) {
            let chunk = scoredRows[start..<min(scoredRows.count, start + headChunkRows)]
            let m = chunk.count
            for (i, r) in chunk.enumerated() { for c in 0..<C { rowsH[i * C + c] = hf[r * C + c] } }
            let chunkTargets = chunk.map { targets[$0] }
            var (logits, saved) = head.forward(rowsH, rows: m)
            capLogits(&logits)
            let capped = config.finalSoftCap == nil ? [] : logits
            total += CrossEntropy.forwardBackward(logits: &logits, targets: chunkTargets, rows: m, vocab: V,
                                                  gradientScale: lossScale, gradient: true)
            capLogitsBackward(&logits, capped: capped)
            rowsD.withUnsafeMutableBufferPointer { d in
                LinearLoRA.backward(dy: logits, x: rowsH, n: m, weight: head, saved: saved, dx: d.baseAddress!, accumulate: false)
            }
            for (i, r) in chunk.enumerated() { for c in 0..<C { dhf[r * C + c] = rowsD[i * C + c] } }
        }
        return (total, dhf, scoredRows.count)
    }
}
