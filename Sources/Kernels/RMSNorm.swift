/// RMS normalization of each row, scaled by a weight.
///
/// Shapes: x, y, dy, dx [rows, cols]; weight [cols]; rstd [rows] (saved by forward for backward).
///   forward:  y = x · rstd · w,  rstd = 1 / sqrt(mean(x²) + eps)
///   backward: g = dy·w;  dx += rstd·g − x·rstd³·mean(g·x)   (the weight is frozen)
/// Float rows run the vector kernels (`forwardRowFast`, `backwardRowFast`); the `…Reference` loops are what they
/// are tested against, and what Double uses.
public enum RMSNorm {
    @inlinable
    public static func forward<T: KernelScalar>(x: UnsafePointer<T>, weight: UnsafePointer<T>,
                                                y: UnsafeMutablePointer<T>, rstd: UnsafeMutablePointer<T>?,
                                                rows: Int, cols: Int, eps: T) {
        Parallel.forEachRange(rows, minimumPerThread: 64) { range in
            for r in range {
                let s: T
                if T.self == Float.self {
                    s = T(forwardRowFast(x: x.asFloat + r * cols, weight: weight.asFloat, y: y.asMutableFloat + r * cols,
                                         cols: cols, eps: Float(eps)))
                } else {
                    s = forwardRowReference(x: x + r * cols, weight: weight, y: y + r * cols, cols: cols, eps: eps)
                }
                rstd?[r] = s
            }
        }
    }

    /// Adds dL/dx to `dx` (the residual stream's gradient accumulates there).
    @inlinable
    public static func backward<T: KernelScalar>(dy: UnsafePointer<T>, x: UnsafePointer<T>, weight: UnsafePointer<T>,
                                                 rstd: UnsafePointer<T>, dx: UnsafeMutablePointer<T>,
                                                 rows: Int, cols: Int) {
        Parallel.forEachRange(rows, minimumPerThread: 64) { range in
            for r in range {
                if T.self == Float.self {
                    backwardRowFast(dy: dy.asFloat + r * cols, x: x.asFloat + r * cols, weight: weight.asFloat,
                                    rstd: Float(rstd[r]), dx: dx.asMutableFloat + r * cols, cols: cols)
                } else {
                    backwardRowReference(dy: dy + r * cols, x: x + r * cols, weight: weight, rstd: rstd[r],
                                         dx: dx + r * cols, cols: cols)
                }
            }
        }
    }

    /// One row; returns its rstd.
    @inlinable
    public static func forwardRowReference<T: KernelScalar>(x: UnsafePointer<T>, weight: UnsafePointer<T>,
                                                            y: UnsafeMutablePointer<T>, cols: Int, eps: T) -> T {
        var sum: T = 0
        for c in 0..<cols { sum += x[c] * x[c] }
        let s = 1 / (sum / T(cols) + eps).squareRoot()
        for c in 0..<cols { y[c] = x[c] * s * weight[c] }
        return s
    }

    @inlinable
    public static func backwardRowReference<T: KernelScalar>(dy: UnsafePointer<T>, x: UnsafePointer<T>,
                                                             weight: UnsafePointer<T>, rstd s: T,
                                                             dx: UnsafeMutablePointer<T>, cols: Int) {
        var dot: T = 0
        for c in 0..<cols { dot += dy[c] * weight[c] * x[c] }
        let k = s * s * s * dot / T(cols)
        for c in 0..<cols { dx[c] += s * dy[c] * weight[c] - x[c] * k }
    }

    @inlinable
    public static func forwardRowFast(x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                      y: UnsafeMutablePointer<Float>, cols: Int, eps: Float) -> Float {
        let s = 1 / (VectorMath.dot(x, x, count: cols) / Float(cols) + eps).squareRoot()
        var c = 0
        while c < cols {
            let left = cols - c
            let v = VectorMath.load(x + c, left, padding: 0) * s * VectorMath.load(weight + c, left, padding: 0)
            VectorMath.store(v, y + c, left)
            c += VectorMath.width
        }
        return s
    }

    @inlinable
    public static func backwardRowFast(dy: UnsafePointer<Float>, x: UnsafePointer<Float>, weight: UnsafePointer<Float>,
                                       rstd s: Float, dx: UnsafeMutablePointer<Float>, cols: Int) {
        var dot = VectorMath.Vector()
        var c = 0
        while c < cols {
            let left = cols - c
            dot += VectorMath.load(dy + c, left, padding: 0) * VectorMath.load(weight + c, left, padding: 0)
                * VectorMath.load(x + c, left, padding: 0)
            c += VectorMath.width
        }
        let k = s * s * s * dot.sum() / Float(cols)
        c = 0
        while c < cols {
            let left = cols - c
            let g = VectorMath.load(dy + c, left, padding: 0) * VectorMath.load(weight + c, left, padding: 0)
            let v = VectorMath.load(dx + c, left, padding: 0) + s * g - VectorMath.load(x + c, left, padding: 0) * k
            VectorMath.store(v, dx + c, left)
            c += VectorMath.width
        }
    }
}
