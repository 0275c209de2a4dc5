/// Softmax cross-entropy of rows of logits against target ids, with the gradient in place.
///
/// Shapes: logits [rows, vocab] (overwritten by dL/dlogits · scale when `gradient`); targets [rows] (−1 = not
/// scored); losses [rows] (0 for unscored rows).
///   loss = log Σᵥ e^(zᵥ) − z_target,  dL/dzᵥ = softmax(z)ᵥ − [v = target]
/// Float rows run `rowFast` (vector exponentials, each computed once); `rowsReference` is the plain loop it is
/// tested against, and what Double uses.
public enum CrossEntropy {
    /// Returns the summed loss of the scored rows.
    @inlinable @discardableResult
    public static func forwardBackward<T: KernelScalar>(logits: UnsafeMutablePointer<T>, targets: UnsafePointer<Int32>,
                                                        rows: Int, vocab: Int, gradientScale: T, gradient: Bool,
                                                        losses: UnsafeMutablePointer<T>? = nil) -> Double {
        // Rows are independent: ranges of rows in parallel, partial sums added in range order (deterministic).
        let parts = max(1, min(Parallel.threads, rows / 8))
        var partial = [Double](repeating: 0, count: parts)
        let per = (rows + parts - 1) / parts
        partial.withUnsafeMutableBufferPointer { sums in
            Parallel.forEachRange(parts, minimumPerThread: 1) { range in
                for p in range {
                    let lo = p * per, hi = min(rows, lo + per)
                    if lo < hi {
                        if T.self == Float.self {
                            var sum = 0.0
                            for r in lo..<hi {
                                let loss = rowFast(logits.asMutableFloat + r * vocab, target: Int(targets[r]), vocab: vocab,
                                                   gradientScale: Float(gradientScale), gradient: gradient)
                                losses?[r] = T(loss)
                                sum += Double(loss)
                            }
                            sums[p] = sum
                        } else {
                            sums[p] = rowsReference(logits: logits, targets: targets, rows: lo..<hi, vocab: vocab,
                                                    gradientScale: gradientScale, gradient: gradient, losses: losses)
                        }
                    }
                }
            }
        }
        return partial.reduce(0, +)
    }

    @inlinable
    public static func rowsReference<T: KernelScalar>(logits: UnsafeMutablePointer<T>, targets: UnsafePointer<Int32>,
                                                     rows: Range<Int>, vocab: Int, gradientScale: T, gradient: Bool,
                                                     losses: UnsafeMutablePointer<T>?) -> Double {
        var total = 0.0
        for r in rows {
            let row = logits + r * vocab
            let target = Int(targets[r])
            guard target >= 0 && target < vocab else {
                losses?[r] = 0
                if gradient { for v in 0..<vocab { row[v] = 0 } }
                continue
            }
            var maxValue = row[0]
            for v in 1..<vocab where row[v] > maxValue { maxValue = row[v] }
            // Summing tens of thousands of terms: accumulate in Double, in blocks, to keep the loss exact.
            var sum = 0.0
            var v = 0
            while v < vocab {
                var block: T = 0
                let end = min(vocab, v + 64)
                while v < end { block += T.exp(row[v] - maxValue); v += 1 }
                sum += Double(block)
            }
            let logSum = T(LibM.log(sum)) + maxValue
            let loss = logSum - row[target]
            losses?[r] = loss
            total += Double(loss)
            if gradient {
                for v in 0..<vocab { row[v] = T.exp(row[v] - logSum) * gradientScale }
                row[target] -= gradientScale
            }
        }
        return total
    }

    /// One row: returns its loss (0 for an unscored row); with `gradient`, the row becomes the gradient · scale.
    @inlinable
    public static func rowFast(_ row: UnsafeMutablePointer<Float>, target: Int, vocab: Int, gradientScale: Float,
                               gradient: Bool) -> Float {
        guard target >= 0 && target < vocab else {
            if gradient { row.update(repeating: 0, count: vocab) }
            return 0
        }
        let maxValue = VectorMath.maximum(row, count: vocab)
        let targetLogit = row[target]
        let sum = gradient ? VectorMath.exponentiate(row, count: vocab, minus: maxValue)
                           : VectorMath.sumOfExponentials(row, count: vocab, minus: maxValue)
        let loss = Float(LibM.log(sum)) + maxValue - targetLogit
        if gradient {
            VectorMath.scale(row, count: vocab, by: Float(Double(gradientScale) / sum))
            row[target] -= gradientScale
        }
        return loss
    }
}

/// The same softmax for rows whose logits arrive in chunks of vocabulary columns (a head too large to compute at
/// once): running statistics per row, then the softmax of each chunk from the finished statistics.
///
/// Shapes: z [rows, c] (one chunk); maximum, sum, rescale [rows]; maximum and sum start at −∞ and 0.
///   m′ = max(m, maxⱼ zⱼ),  rescale = e^(m − m′),  s′ = s·rescale + Σⱼ e^(zⱼ − m′);  log Σ e^z = m + log s at the end
///   with `exponentiate`, zⱼ ← e^(zⱼ − m′) (what a single pass accumulates, rescaled as the maximum grows)
///   softmax chunk: zⱼ ← scale · e^(zⱼ − m) / s
/// Float rows use the vector exponentials of `rowFast`; `…Reference` are the plain loops (and what Double uses).
extension CrossEntropy {
    @inlinable
    public static func accumulateChunk<T: KernelScalar>(_ z: UnsafeMutablePointer<T>, rows: Int, columns c: Int,
                                                         maximum: UnsafeMutablePointer<Double>, sum: UnsafeMutablePointer<Double>,
                                                         exponentiate: Bool = false, rescale: UnsafeMutablePointer<Double>? = nil) {
        Parallel.forEachRange(rows, minimumPerThread: 4) { range in
            for r in range {
                let row = z + r * c
                let factor: Double
                if T.self == Float.self {
                    let m = max(maximum[r], Double(VectorMath.maximum(row.asFloat, count: c)))
                    factor = LibM.exp(maximum[r] - m)
                    sum[r] = sum[r] * factor + VectorMath.sumOfExponentials(row.asFloat, count: c, minus: Float(m),
                                                                             storingTo: exponentiate ? row.asMutableFloat : nil)
                    maximum[r] = m
                } else {
                    factor = accumulateRowReference(row, columns: c, maximum: &maximum[r], sum: &sum[r], exponentiate: exponentiate)
                }
                rescale?[r] = factor
            }
        }
    }

    /// Returns the factor e^(m − m′) of the earlier terms.
    @inlinable @discardableResult
    public static func accumulateRowReference<T: KernelScalar>(_ row: UnsafeMutablePointer<T>, columns c: Int,
                                                                maximum: inout Double, sum: inout Double,
                                                                exponentiate: Bool = false) -> Double {
        var m = maximum
        for j in 0..<c { m = max(m, Double(row[j])) }
        let factor = LibM.exp(maximum - m)
        var s = sum * factor
        for j in 0..<c {
            let e = LibM.exp(Double(row[j]) - m)
            s += e
            if exponentiate { row[j] = T(e) }
        }
        (maximum, sum) = (m, s)
        return factor
    }

    @inlinable
    public static func softmaxChunk<T: KernelScalar>(_ z: UnsafeMutablePointer<T>, rows: Int, columns c: Int,
                                                     maximum: UnsafePointer<Double>, sum: UnsafePointer<Double>, scale: T) {
        Parallel.forEachRange(rows, minimumPerThread: 4) { range in
            for r in range {
                let row = z + r * c
                if T.self == Float.self {
                    _ = VectorMath.exponentiate(row.asMutableFloat, count: c, minus: Float(maximum[r]))
                    VectorMath.scale(row.asMutableFloat, count: c, by: Float(Double(scale) / sum[r]))
                } else {
                    softmaxRowReference(row, columns: c, maximum: maximum[r], sum: sum[r], scale: scale)
                }
            }
        }
    }

    @inlinable
    public static func softmaxRowReference<T: KernelScalar>(_ row: UnsafeMutablePointer<T>, columns c: Int,
                                                             maximum: Double, sum: Double, scale: T) {
        for j in 0..<c { row[j] = T(LibM.exp(Double(row[j]) - maximum) / sum) * scale }
    }
}
