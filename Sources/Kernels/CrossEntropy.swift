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
