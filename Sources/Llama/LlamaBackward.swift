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
        // dL/d(embedding) is only wanted for the embedding's own trainable adapters.
        let embeddingTrains = adaptersFor("token_embd").hasTrainable
        for l in stride(from: config.layers - 1, through: 0, by: -1) {
            try checkCancelled()
            let block = try self.block(l, rotations: rotations)
            let attention = causalAttention(batch: batch, length: length, layer: l)
            let kept: BlockActivations<T>
            if gradientCheckpointing {
                kept = BlockActivations<T>()
                _ = block.forward(inputs[l], attention: .causal(attention), keep: kept, everything: true, output: false)
                inputs[l] = []
            } else {
                kept = activations[l]
                activations[l] = BlockActivations<T>()  // free as we go
                block.restore(kept)
            }
            dx = block.backward(dx, attention: attention, activations: kept, inputGradient: l > 0 || embeddingTrains)
        }
        if embeddingTrains { embedBackward(tokens: tokens, dx: dx) }
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
        let scoredRows = scoredPositions(targets)
        var rowsD = [T](repeating: 0, count: min(headChunkRows, scoredRows.count) * C)
        for start in stride(from: 0, to: scoredRows.count, by: headChunkRows) {
            let chunk = scoredRows[start..<min(scoredRows.count, start + headChunkRows)]
            let m = chunk.count
            let rowsH = LlamaModel.rows(chunk, of: hf, width: C)
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

    /// The same for a head too large to dequantize whole, chunk by chunk of vocabulary rows (each chunk dequantized
    /// once, every scored row at once).
    ///
    /// Without trainable head adapters, one pass, like flash attention: dH = s·(Σ_v e^(z_v − m)·W_v)/Σ e^(z − m)
    /// − s·W_target, where the first sum is accumulated chunk by chunk as the head's backward of the chunk's
    /// e^(z − m), rescaled by e^(m − m′) whenever a row's running maximum m grows, and the target term is one
    /// backward through the gathered target rows. With trainable head adapters, whose B rows need each chunk's
    /// exact dlogits, two passes: the first finds each row's log-sum-exp, the second forms dlogits = s·(softmax −
    /// onehot) chunk by chunk and runs the head's backward (LoRA gradients included) on it.
    ///
    /// Shapes: H, dH, acc [R, C] (the R scored rows); per chunk of c vocabulary rows: z, dz [R, c]; maximum, sum,
    /// rescale, target [R] (`CrossEntropy.accumulateChunk`); the target rows' dz [R, u] (u distinct targets).
    func chunkedHeadBackward(hf: [T], targets: [Int32], lossScale: T) throws -> (loss: Double, dhf: [T], scored: Int) {
        let n = targets.count, C = config.embedding
        let scoredRows = scoredPositions(targets)
        let R = scoredRows.count
        var dhf = [T](repeating: 0, count: n * C)
        guard R > 0 else { return (0, dhf, 0) }
        let h = LlamaModel.rows(scoredRows, of: hf, width: C)
        let rowTargets = scoredRows.map { Int(targets[$0]) }
        var maximum = [Double](repeating: -.infinity, count: R), sum = [Double](repeating: 0, count: R)
        var targetLogit = [T](repeating: 0, count: R)
        func recordTargets(_ z: [T], _ range: Range<Int>) {
            for r in 0..<R where range.contains(rowTargets[r]) { targetLogit[r] = z[r * range.count + rowTargets[r] - range.lowerBound] }
        }
        var dh = [T](repeating: 0, count: R * C)
        let onePass = !adaptersFor("output").hasTrainable
        if onePass {
            var rescale = [Double](repeating: 0, count: R)
            for range in vocabularyRanges {
                let slice = try headSlice(range), c = range.count
                var (z, saved) = slice.forward(h, rows: R)
                capLogits(&z)
                recordTargets(z, range)
                let capped = config.finalSoftCap == nil ? [] : z
                CrossEntropy.accumulateChunk(&z, rows: R, columns: c, maximum: &maximum, sum: &sum, exponentiate: true, rescale: &rescale)
                capLogitsBackward(&z, capped: capped)
                for r in 0..<R where rescale[r] != 1 {
                    let f = T(rescale[r])
                    for j in 0..<C { dh[r * C + j] *= f }
                }
                dh.withUnsafeMutableBufferPointer { d in
                    LinearLoRA.backward(dy: z, x: h, n: R, weight: slice, saved: saved, dx: d.baseAddress!, accumulate: true)
                }
            }
            for r in 0..<R {
                let f = lossScale / T(sum[r])
                for j in 0..<C { dh[r * C + j] *= f }
            }
            // − s·W_target (through the cap's derivative at the target), one product over the distinct targets.
            let distinct = Array(Set(rowTargets)).sorted()
            let column = Dictionary(uniqueKeysWithValues: distinct.enumerated().map { ($1, $0) })
            let gathered = try headSlice(rows: distinct), u = distinct.count
            var dz = [T](repeating: 0, count: R * u), capped = dz
            for r in 0..<R {
                dz[r * u + column[rowTargets[r]]!] = -lossScale
                capped[r * u + column[rowTargets[r]]!] = targetLogit[r]
            }
            capLogitsBackward(&dz, capped: config.finalSoftCap == nil ? [] : capped)
            let saved = gathered.adapters.isEmpty ? [] : gathered.forward(h, rows: R).saved  // the adapters' x·Aᵀ only
            dh.withUnsafeMutableBufferPointer { d in
                LinearLoRA.backward(dy: dz, x: h, n: R, weight: gathered, saved: saved, dx: d.baseAddress!, accumulate: true)
            }
        } else {
            for range in vocabularyRanges {
                var z = try headSlice(range).forward(h, rows: R).y
                capLogits(&z)
                recordTargets(z, range)
                CrossEntropy.accumulateChunk(&z, rows: R, columns: range.count, maximum: &maximum, sum: &sum)
            }
            let adapters = adaptersFor("output")
            for (index, range) in vocabularyRanges.enumerated() {
                let slice = try headSlice(range), c = range.count
                var (z, saved) = slice.forward(h, rows: R)
                capLogits(&z)
                let capped = config.finalSoftCap == nil ? [] : z
                CrossEntropy.softmaxChunk(&z, rows: R, columns: c, maximum: maximum, sum: sum, scale: lossScale)
                for r in 0..<R where range.contains(rowTargets[r]) { z[r * c + rowTargets[r] - range.lowerBound] -= lossScale }
                capLogitsBackward(&z, capped: capped)
                dh.withUnsafeMutableBufferPointer { d in
                    LinearLoRA.backward(dy: z, x: h, n: R, weight: slice, saved: saved, dx: d.baseAddress!, accumulate: index > 0)
                }
                adapters.addGradients(of: slice.adapters, outputs: range)
            }
        }
        let total = (0..<R).reduce(0.0) { $0 + maximum[$1] + Foundation.log(sum[$1]) - Double(targetLogit[$1]) }
        for (i, r) in scoredRows.enumerated() { for c in 0..<C { dhf[r * C + c] = dh[i * C + c] } }
        return (total, dhf, R)
    }
}
