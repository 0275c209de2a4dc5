/// SwiGLU: a = silu(g) · u, silu(g) = g · sigmoid(g).
///
/// Shapes: g, u, a, da, dg, du [n] (any layout, element-wise).
///   forward:  a = g·σ(g)·u
///   backward: dg = da·u·σ(g)·(1 + g·(1 − σ(g))),  du = da·g·σ(g)
/// Float runs the vector kernels (`forwardFast`, `backwardFast`); `forwardReference` and `backwardReference`
/// are the plain loops they are tested against, and what Double uses.
public enum SwiGLU {
    @inlinable
    public static func forward<T: KernelScalar>(gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                out: UnsafeMutablePointer<T>, count: Int) {
        Parallel.forEachRange(count) { range in
            if T.self == Float.self {
                forwardFast(gate: gate.asFloat + range.lowerBound, up: up.asFloat + range.lowerBound,
                            out: out.asMutableFloat + range.lowerBound, count: range.count)
            } else {
                forwardReference(gate: gate + range.lowerBound, up: up + range.lowerBound,
                                 out: out + range.lowerBound, count: range.count)
            }
        }
    }

    @inlinable
    public static func backward<T: KernelScalar>(dOut: UnsafePointer<T>, gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                 dGate: UnsafeMutablePointer<T>, dUp: UnsafeMutablePointer<T>,
                                                 count: Int) {
        Parallel.forEachRange(count) { range in
            let o = range.lowerBound
            if T.self == Float.self {
                backwardFast(dOut: dOut.asFloat + o, gate: gate.asFloat + o, up: up.asFloat + o,
                             dGate: dGate.asMutableFloat + o, dUp: dUp.asMutableFloat + o, count: range.count)
            } else {
                backwardReference(dOut: dOut + o, gate: gate + o, up: up + o, dGate: dGate + o, dUp: dUp + o,
                                  count: range.count)
            }
        }
    }

    @inlinable
    public static func forwardReference<T: KernelScalar>(gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                         out: UnsafeMutablePointer<T>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            out[i] = g / (1 + T.exp(-g)) * up[i]
        }
    }

    @inlinable
    public static func backwardReference<T: KernelScalar>(dOut: UnsafePointer<T>, gate: UnsafePointer<T>,
                                                          up: UnsafePointer<T>, dGate: UnsafeMutablePointer<T>,
                                                          dUp: UnsafeMutablePointer<T>, count: Int) {
        for i in 0..<count {
            let g = gate[i]
            let s = 1 / (1 + T.exp(-g))
            let d = dOut[i]
            dGate[i] = d * up[i] * s * (1 + g * (1 - s))
            dUp[i] = d * g * s
        }
    }

    @inlinable
    public static func forwardFast(gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i < count {
            let left = count - i
            let g = VectorMath.load(gate + i, left, padding: 0)
            let u = VectorMath.load(up + i, left, padding: 0)
            VectorMath.store(g / (1 + VectorMath.exp(-g)) * u, out + i, left)
            i += VectorMath.width
        }
    }

    @inlinable
    public static func backwardFast(dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                    dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        var i = 0
        while i < count {
            let left = count - i
            let g = VectorMath.load(gate + i, left, padding: 0)
            let u = VectorMath.load(up + i, left, padding: 0)
            let d = VectorMath.load(dOut + i, left, padding: 0)
            let s = 1 / (1 + VectorMath.exp(-g))
            VectorMath.store(d * u * s * (1 + g * (1 - s)), dGate + i, left)
            VectorMath.store(d * g * s, dUp + i, left)
            i += VectorMath.width
        }
    }
}
