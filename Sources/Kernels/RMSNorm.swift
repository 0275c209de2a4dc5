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
