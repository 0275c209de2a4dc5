/// RMS normalization of each row, scaled by a weight.
///
/// Shapes: x, y, dy, dx [rows, cols]; weight [cols]; rstd [rows] (saved by forward for backward).
///   y = x · rstd · w,  rstd = 1 / sqrt(mean(x²) + eps)
public enum RMSNorm {
    @inlinable
    public static func forward<T: KernelScalar>(x: UnsafePointer<T>, weight: UnsafePointer<T>,
                                                y: UnsafeMutablePointer<T>, rstd: UnsafeMutablePointer<T>?,
                                                rows: Int, cols: Int, eps: T) {
        Parallel.forEachRange(rows, minimumPerThread: 64) { range in
          for r in range {
            let xr = x + r * cols, yr = y + r * cols
            var sum: T = 0
            for c in 0..<cols { sum += xr[c] * xr[c] }
            let s = 1 / (sum / T(cols) + eps).squareRoot()
            rstd?[r] = s
            for c in 0..<cols { yr[c] = xr[c] * s * weight[c] }
          }
        }
    }

    /// Adds dL/dx to `dx` (the residual stream's gradient accumulates there). The weight is frozen.
    ///   g = dy·w;  dx += rstd·g − x·rstd³·mean(g·x)
    @inlinable
    public static func backward<T: KernelScalar>(dy: UnsafePointer<T>, x: UnsafePointer<T>, weight: UnsafePointer<T>,
                                                 rstd: UnsafePointer<T>, dx: UnsafeMutablePointer<T>,
                                                 rows: Int, cols: Int) {
        Parallel.forEachRange(rows, minimumPerThread: 64) { range in
          for r in range {
            let xr = x + r * cols, dyr = dy + r * cols, dxr = dx + r * cols
            let s = rstd[r]
            var dot: T = 0
            for c in 0..<cols { dot += dyr[c] * weight[c] * xr[c] }
            let k = s * s * s * dot / T(cols)
            for c in 0..<cols { dxr[c] += s * dyr[c] * weight[c] - xr[c] * k }
          }
        }
    }
}

/// SwiGLU: a = silu(g) · u, silu(g) = g · sigmoid(g).
///
/// Shapes: g, u, a, da, dg, du [n] (any layout, element-wise).
public enum SwiGLU {
    @inlinable
    public static func forward<T: KernelScalar>(gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                out: UnsafeMutablePointer<T>, count: Int) {
        Parallel.forEachRange(count) { range in
            for i in range {
                let g = gate[i]
                out[i] = g / (1 + T.exp(-g)) * up[i]
            }
        }
    }

    /// dg = da·u·sigmoid(g)·(1 + g·(1 − sigmoid(g))),  du = da·silu(g)
    @inlinable
    public static func backward<T: KernelScalar>(dOut: UnsafePointer<T>, gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                 dGate: UnsafeMutablePointer<T>, dUp: UnsafeMutablePointer<T>,
                                                 count: Int) {
        Parallel.forEachRange(count) { range in
            for i in range {
                let g = gate[i]
                let s = 1 / (1 + T.exp(-g))
                let d = dOut[i]
                dGate[i] = d * up[i] * s * (1 + g * (1 - s))
                dUp[i] = d * g * s
            }
        }
    }
}

/// Rotary position embedding on rows of heads, rotating adjacent pairs (GGUF's row order for Q and K).
///
/// Shapes: x [tokens, heads · headDim]; the table holds cos θ and sin θ [tokens, headDim / 2].
///   (x₂ᵢ, x₂ᵢ₊₁) ← (x₂ᵢ cos θ − x₂ᵢ₊₁ sin θ, x₂ᵢ sin θ + x₂ᵢ₊₁ cos θ),  θ = position · frequencyᵢ
public struct RoPE<T: KernelScalar> {
    public let cosines: [T]
    public let sines: [T]
    public let half: Int

    /// Frequencies base^(−2i/d) · scale, divided by per-dimension `factors` (LLaMA 3.1's `rope_freqs`) if given.
    @inlinable
    public static func frequencies(headDim: Int, base: Double, scale: Double = 1, factors: [Float]? = nil) -> [Double] {
        (0..<(headDim / 2)).map { i in
            let f = scale / LibM.pow(base, Double(2 * i) / Double(headDim))
            return factors.map { f / Double($0[i]) } ?? f
        }
    }

    /// The cos/sin table for `positions` (computed in Double, once per batch, shared by all layers).
    @inlinable
    public init(positions: [Int32], frequencies: [Double]) {
        half = frequencies.count
        var c = [T](repeating: 0, count: positions.count * half), s = c
        for (t, p) in positions.enumerated() {
            for i in 0..<half {
                let angle = Double(p) * frequencies[i]
                c[t * half + i] = T(LibM.cos(angle))
                s[t * half + i] = T(LibM.sin(angle))
            }
        }
        cosines = c
        sines = s
    }

    /// Rotates in place; `inverse` rotates by −θ (the backward of the forward rotation).
    @inlinable
    public func apply(_ x: UnsafeMutablePointer<T>, tokens: Int, heads: Int, inverse: Bool = false) {
        let headDim = 2 * half
        cosines.withUnsafeBufferPointer { cs in
            sines.withUnsafeBufferPointer { ss in
                for t in 0..<tokens {
                    let c = cs.baseAddress! + t * half, s = ss.baseAddress! + t * half
                    for h in 0..<heads {
                        let v = x + (t * heads + h) * headDim
                        for i in 0..<half {
                            let a = v[2 * i], b = v[2 * i + 1]
                            let sn = inverse ? -s[i] : s[i]
                            v[2 * i] = a * c[i] - b * sn
                            v[2 * i + 1] = a * sn + b * c[i]
                        }
                    }
                }
            }
        }
    }
}

/// Softmax cross-entropy of rows of logits against target ids, with the gradient in place.
///
/// Shapes: logits [rows, vocab] (overwritten by dL/dlogits · scale when `gradient`); targets [rows] (−1 = not
/// scored); losses [rows] (0 for unscored rows).
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
                        sums[p] = rowsForwardBackward(logits: logits, targets: targets, rows: lo..<hi, vocab: vocab,
                                                      gradientScale: gradientScale, gradient: gradient, losses: losses)
                    }
                }
            }
        }
        return partial.reduce(0, +)
    }

    @inlinable
    public static func rowsForwardBackward<T: KernelScalar>(logits: UnsafeMutablePointer<T>, targets: UnsafePointer<Int32>,
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
}
