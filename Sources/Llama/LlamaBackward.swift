import Foundation
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
        if headIsChunked { return try chunkedHeadBackward(hf: hf, targets: targets, lossScale: lossScale) }
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

    /// The same for a head too large to dequantize whole, in two passes over chunks of vocabulary rows (each chunk
    /// dequantized once per pass, every scored row at once): the first finds each row's log-sum-exp and target
    /// logit, the second forms dlogits = lossScale·(softmax − onehot) chunk by chunk and runs the head's backward
    /// (LoRA gradients included) on it.
    ///
    /// Shapes: H, dH [R, C] (the R scored rows); per chunk of c vocabulary rows: z, dz [R, c]; lse, target [R].
    func chunkedHeadBackward(hf: [T], targets: [Int32], lossScale: T) throws -> (loss: Double, dhf: [T], scored: Int) {
        let n = targets.count, C = config.embedding, V = config.vocabulary
        let scoredRows = (0..<n).filter { targets[$0] >= 0 && Int(targets[$0]) < V }
        let R = scoredRows.count
        var dhf = [T](repeating: 0, count: n * C)
        guard R > 0 else { return (0, dhf, 0) }
        var h = [T](repeating: 0, count: R * C)
        for (i, r) in scoredRows.enumerated() { for c in 0..<C { h[i * C + c] = hf[r * C + c] } }
        let rowTargets = scoredRows.map { Int(targets[$0]) }
        // Pass 1: running maximum and sum of exponentials per row, and the target's logit.
        var maximum = [Double](repeating: -.infinity, count: R), sum = [Double](repeating: 0, count: R)
        var targetLogit = [Double](repeating: 0, count: R)
        for range in vocabularyRanges {
            var z = try headSlice(range).forward(h, rows: R).y
            capLogits(&z)
            let c = range.count
            for r in 0..<R {
                var m = maximum[r]
                for j in 0..<c { m = max(m, Double(z[r * c + j])) }
                var s = sum[r] * Foundation.exp(maximum[r] - m)
                for j in 0..<c { s += Foundation.exp(Double(z[r * c + j]) - m) }
                (maximum[r], sum[r]) = (m, s)
                if range.contains(rowTargets[r]) { targetLogit[r] = Double(z[r * c + rowTargets[r] - range.lowerBound]) }
            }
        }
        let lse = (0..<R).map { maximum[$0] + Foundation.log(sum[$0]) }
        let total = (0..<R).reduce(0.0) { $0 + lse[$1] - targetLogit[$1] }
        // Pass 2: dlogits chunk by chunk, through the head's backward.
        var dh = [T](repeating: 0, count: R * C)
        let adapters = adaptersFor("output")
        for (index, range) in vocabularyRanges.enumerated() {
            let slice = try headSlice(range), c = range.count
            var (z, saved) = slice.forward(h, rows: R)
            capLogits(&z)
            let capped = config.finalSoftCap == nil ? [] : z
            for r in 0..<R {
                for j in 0..<c { z[r * c + j] = T(Foundation.exp(Double(z[r * c + j]) - lse[r])) * lossScale }
                if range.contains(rowTargets[r]) { z[r * c + rowTargets[r] - range.lowerBound] -= lossScale }
            }
            capLogitsBackward(&z, capped: capped)
            dh.withUnsafeMutableBufferPointer { d in
                LinearLoRA.backward(dy: z, x: h, n: R, weight: slice, saved: saved, dx: d.baseAddress!, accumulate: index > 0)
            }
            adapters.addGradients(of: slice.adapters, outputs: range)
        }
        for (i, r) in scoredRows.enumerated() { for c in 0..<C { dhf[r * C + c] = dh[i * C + c] } }
        return (total, dhf, R)
    }
}
