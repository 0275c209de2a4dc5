import CKernels

/// A gated feed-forward activation a = f(g)·u, with backward dg = da·u·f′(g), du = da·f(g).
///
/// Shapes: g, u, a, da, dg, du [n] (any layout, element-wise).
/// A conforming type gives f and f′ per scalar (the plain reference, also what Double uses) and per vector (the
/// fast path, tested against it); the loops, and the split of the work over threads, live here once.
public protocol GatedActivation {
    static func value<T: KernelScalar>(_ g: T) -> T
    static func derivative<T: KernelScalar>(_ g: T) -> T
    static func value(_ g: VectorMath.Vector) -> VectorMath.Vector
    static func valueAndDerivative(_ g: VectorMath.Vector) -> (value: VectorMath.Vector, derivative: VectorMath.Vector)
    /// The activation's CKernels loops (forward, backward), if it has them; they run where the CPU has AVX2.
    static var nativeKernels: (forward: GatedForwardKernel, backward: GatedBackwardKernel)? { get }
}

public typealias GatedForwardKernel = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?,
                                                      UnsafeMutablePointer<Float>?, Int32) -> Void
public typealias GatedBackwardKernel = @convention(c) (UnsafePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Float>?,
                                                       UnsafeMutablePointer<Float>?, UnsafeMutablePointer<Float>?, Int32) -> Void

extension GatedActivation {
    public static var nativeKernels: (forward: GatedForwardKernel, backward: GatedBackwardKernel)? { nil }

    /// Runs the fast forward (backward) in the CKernels loop where one exists for this activation on this CPU;
    /// false leaves it to the Swift vectors.
    public static func forwardKernel(gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                     out: UnsafeMutablePointer<Float>, count: Int) -> Bool {
        guard VectorMath.elementwiseKernels, let kernels = nativeKernels else { return false }
        kernels.forward(gate, up, out, Int32(count))
        return true
    }

    public static func backwardKernel(dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                      dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>,
                                      count: Int) -> Bool {
        guard VectorMath.elementwiseKernels, let kernels = nativeKernels else { return false }
        kernels.backward(dOut, gate, up, dGate, dUp, Int32(count))
        return true
    }

    @inlinable
    public static func forward<T: KernelScalar>(gate: UnsafePointer<T>, up: UnsafePointer<T>,
                                                out: UnsafeMutablePointer<T>, count: Int) {
        Parallel.forEachRange(count) { range in
            let o = range.lowerBound
            if T.self == Float.self {
                forwardFast(gate: gate.asFloat + o, up: up.asFloat + o, out: out.asMutableFloat + o, count: range.count)
            } else {
                forwardReference(gate: gate + o, up: up + o, out: out + o, count: range.count)
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
        for i in 0..<count { out[i] = value(gate[i]) * up[i] }
    }

    @inlinable
    public static func backwardReference<T: KernelScalar>(dOut: UnsafePointer<T>, gate: UnsafePointer<T>,
                                                          up: UnsafePointer<T>, dGate: UnsafeMutablePointer<T>,
                                                          dUp: UnsafeMutablePointer<T>, count: Int) {
        for i in 0..<count {
            let g = gate[i], d = dOut[i]
            dGate[i] = d * up[i] * derivative(g)
            dUp[i] = d * value(g)
        }
    }

    @inlinable
    public static func forwardFast(gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                   out: UnsafeMutablePointer<Float>, count: Int) {
        if forwardKernel(gate: gate, up: up, out: out, count: count) { return }
        var i = 0
        while i < count {
            let left = count - i
            let g = VectorMath.load(gate + i, left, padding: 0), u = VectorMath.load(up + i, left, padding: 0)
            VectorMath.store(value(g) * u, out + i, left)
            i += VectorMath.width
        }
    }

    @inlinable
    public static func backwardFast(dOut: UnsafePointer<Float>, gate: UnsafePointer<Float>, up: UnsafePointer<Float>,
                                    dGate: UnsafeMutablePointer<Float>, dUp: UnsafeMutablePointer<Float>, count: Int) {
        if backwardKernel(dOut: dOut, gate: gate, up: up, dGate: dGate, dUp: dUp, count: count) { return }
        var i = 0
        while i < count {
            let left = count - i
            let g = VectorMath.load(gate + i, left, padding: 0), u = VectorMath.load(up + i, left, padding: 0)
            let d = VectorMath.load(dOut + i, left, padding: 0)
            let (f, slope) = valueAndDerivative(g)
            VectorMath.store(d * u * slope, dGate + i, left)
            VectorMath.store(d * f, dUp + i, left)
            i += VectorMath.width
        }
    }
}

/// SwiGLU (llama, Qwen): f(g) = silu(g) = g·σ(g),  f′(g) = σ(g)·(1 + g·(1 − σ(g))).
public enum SwiGLU: GatedActivation {
    @inlinable
    public static func value<T: KernelScalar>(_ g: T) -> T { g / (1 + T.exp(-g)) }

    @inlinable
    public static func derivative<T: KernelScalar>(_ g: T) -> T {
        let s = 1 / (1 + T.exp(-g))
        return s * (1 + g * (1 - s))
    }

    @inlinable
    public static func value(_ g: VectorMath.Vector) -> VectorMath.Vector { g / (1 + VectorMath.exp(-g)) }

    @inlinable
    public static func valueAndDerivative(_ g: VectorMath.Vector) -> (value: VectorMath.Vector, derivative: VectorMath.Vector) {
        let s = 1 / (1 + VectorMath.exp(-g))
        return (g * s, s * (1 + g * (1 - s)))
    }

    public static var nativeKernels: (forward: GatedForwardKernel, backward: GatedBackwardKernel)? {
        (lk_swiglu_forward, lk_swiglu_backward)
    }
}
