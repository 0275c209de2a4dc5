import CKernels

/// GeGLU with the tanh approximation of GELU (Gemma's feed-forward, transformers' `gelu_pytorch_tanh`):
///   f(g) = ½·g·(1 + tanh(z)) = g·σ(2z),  z = √(2/π)·(g + 0.044715·g³)
///   f′(g) = s + 2·g·s·(1 − s)·√(2/π)·(1 + 3·0.044715·g²),  s = σ(2z)
/// The sigmoid form avoids 1 + tanh(z) cancelling for negative g (where f is tiny but must stay accurate).
public enum GeGLU: GatedActivation {
    @usableFromInline static let k0 = 0.7978845608028654  // √(2/π)
    @usableFromInline static let k1 = 0.044715

    @inlinable
    public static func value<T: KernelScalar>(_ g: T) -> T {
        g / (1 + T.exp(-2 * T(k0) * (g + T(k1) * g * g * g)))
    }

    @inlinable
    public static func derivative<T: KernelScalar>(_ g: T) -> T {
        let s = 1 / (1 + T.exp(-2 * T(k0) * (g + T(k1) * g * g * g)))
        return s + 2 * g * s * (1 - s) * T(k0) * (1 + 3 * T(k1) * g * g)
    }

    /// s = σ(2z), shared by the value and the derivative.
    @inlinable
    static func sigmoidOfTwoZ(_ g: VectorMath.Vector, _ g2: VectorMath.Vector) -> VectorMath.Vector {
        let minusTwoZ: VectorMath.Vector = Float(-2 * k0) * (g + Float(k1) * g2 * g)
        return 1 / (1 + VectorMath.exp(minusTwoZ))
    }

    /// The value alone (forward): without the derivative's arithmetic, which the compiler did not drop when the value
    /// was taken from `valueAndDerivative`.
    @inlinable
    public static func value(_ g: VectorMath.Vector) -> VectorMath.Vector { g * sigmoidOfTwoZ(g, g * g) }

    @inlinable
    public static func valueAndDerivative(_ g: VectorMath.Vector) -> (value: VectorMath.Vector, derivative: VectorMath.Vector) {
        let g2: VectorMath.Vector = g * g
        let s = sigmoidOfTwoZ(g, g2)
        let slope: VectorMath.Vector = Float(2 * k0) * (1 + Float(3 * k1) * g2)
        let derivative: VectorMath.Vector = s + g * s * (1 - s) * slope
        return (g * s, derivative)
    }

    public static var nativeKernels: (forward: GatedForwardKernel, backward: GatedBackwardKernel)? {
        (lk_geglu_forward, lk_geglu_backward)
    }
}
