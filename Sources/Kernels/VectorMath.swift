import CKernels

/// Float building blocks on 16-lane vectors for the element-wise ops (softmax, cross-entropy, SwiGLU, RMSNorm,
/// attention's softmax backward, KV-cache attention's softmax). Each op keeps a plain scalar version (its `…Reference`) that
/// the tests compare the vector one against; Double always takes the scalar path, so the gradient checks exercise
/// the references.
///
/// Rows are processed in whole vectors, and the tail through a vector padded with a neutral value, so every
/// element goes through the same arithmetic whatever its position.
public enum VectorMath {
    public typealias Vector = SIMD16<Float>
    public static let width = 16

    /// Whether the exp-based loops (sums of exponentials, SwiGLU) run CKernels' AVX2 versions (elementwise.c) rather
    /// than the Swift vectors below: on x86 with AVX2 and FMA, unless turned off (the tests compare both).
    nonisolated(unsafe) public static var elementwiseKernels = lk_elementwise_supported() != 0

    @inlinable @inline(__always)
    public static func load(_ p: UnsafePointer<Float>, _ count: Int, padding: Float) -> Vector {
        if count >= width { return UnsafeRawPointer(p).loadUnaligned(as: Vector.self) }
        var v = Vector(repeating: padding)
        for i in 0..<count { v[i] = p[i] }
        return v
    }

    @inlinable @inline(__always)
    public static func store(_ v: Vector, _ p: UnsafeMutablePointer<Float>, _ count: Int) {
        if count >= width { UnsafeMutableRawPointer(p).storeBytes(of: v, as: Vector.self); return }
        for i in 0..<count { p[i] = v[i] }
    }

    /// eˣ on each lane: Cephes' expf (x = n·ln 2 + r, |r| ≤ ln 2 / 2, degree-6 polynomial in r, 2ⁿ built in the
    /// exponent bits); within 2 ulp of `expf` for x in [−87.3, 88.3]. Below −87.3 (results under 2⁻¹²⁶) it
    /// returns 0, above 88.7 +∞; NaN stays NaN (the training run's NaN guard relies on it).
    @inlinable @inline(__always)
    public static func exp(_ x: Vector) -> Vector {
        let low: Float = -87.33654, high: Float = 88.3762626647949
        let clamped = x.replacing(with: low, where: x .< low).replacing(with: high, where: x .> high)
        // Adding 1.5·2²³ rounds x·log₂e to the nearest integer n, which lands in the low mantissa bits.
        let magic: Float = 12_582_912
        let shifted = clamped * 1.44269504088896341 + magic
        let n = shifted - magic
        let r = clamped - n * 0.693359375 - n * -2.12194440e-4  // ln 2 in two parts, exact n·ln2₁
        var p = r * 1.9875691500e-4 + 1.3981999507e-3
        p = p * r + 8.3334519073e-3
        p = p * r + 4.1665795894e-2
        p = p * r + 1.6666665459e-1
        p = p * r + 5.0000001201e-1
        let y = p * (r * r) + r + 1
        let exponent = unsafeBitCast(shifted, to: SIMD16<Int32>.self) &- Int32(bitPattern: magic.bitPattern) &+ 127
        let twoToN = unsafeBitCast(exponent &<< 23, to: Vector.self)
        return (y * twoToN).replacing(with: 0, where: x .< low).replacing(with: .infinity, where: x .> 88.72283)
    }

    /// The largest of `count` values (`count` ≥ 1).
    @inlinable
    public static func maximum(_ p: UnsafePointer<Float>, count: Int) -> Float {
        var m = Vector(repeating: -.infinity)
        var i = 0
        while i < count {
            let v = load(p + i, count - i, padding: -.infinity)
            m = m.replacing(with: v, where: v .> m)
            i += width
        }
        return m.max()
    }

    /// Σ e^(xᵢ − shift), in Float blocks of 64 added in Double (tens of thousands of terms stay exact); each
    /// e^(xᵢ − shift) is also stored to `out` when given.
    @inlinable
    public static func sumOfExponentials(_ p: UnsafePointer<Float>, count: Int, minus shift: Float,
                                         storingTo out: UnsafeMutablePointer<Float>? = nil) -> Double {
        if elementwiseKernels { return lk_exp_sum(p, Int32(count), shift, out) }
        var total = 0.0
        var i = 0
        while i < count {
            var block = Vector()
            let end = min(count, i + 4 * width)
            while i < end {
                let e = exp(load(p + i, count - i, padding: -.infinity) - shift)
                if let out { store(e, out + i, count - i) }
                block += e
                i += width
            }
            total += Double(block.sum())
        }
        return total
    }

    /// xᵢ ← e^(xᵢ − shift); returns their sum.
    @inlinable
    public static func exponentiate(_ p: UnsafeMutablePointer<Float>, count: Int, minus shift: Float) -> Double {
        sumOfExponentials(p, count: count, minus: shift, storingTo: p)
    }

    /// xᵢ ← xᵢ · factor.
    @inlinable
    public static func scale(_ p: UnsafeMutablePointer<Float>, count: Int, by factor: Float) {
        var i = 0
        while i < count {
            store(load(p + i, count - i, padding: 0) * factor, p + i, count - i)
            i += width
        }
    }

    /// Σ xᵢ·yᵢ.
    @inlinable
    public static func dot(_ x: UnsafePointer<Float>, _ y: UnsafePointer<Float>, count: Int) -> Float {
        var sum = Vector()
        var i = 0
        while i < count {
            sum += load(x + i, count - i, padding: 0) * load(y + i, count - i, padding: 0)
            i += width
        }
        return sum.sum()
    }
}

extension UnsafePointer {
    /// The same memory as Float (only called where `Pointee` is Float).
    @inlinable @inline(__always) var asFloat: UnsafePointer<Float> { UnsafeRawPointer(self).assumingMemoryBound(to: Float.self) }
}

extension UnsafeMutablePointer {
    /// The same memory as Float (only called where `Pointee` is Float).
    @inlinable @inline(__always) var asFloat: UnsafePointer<Float> { UnsafeRawPointer(self).assumingMemoryBound(to: Float.self) }
    @inlinable @inline(__always) var asMutableFloat: UnsafeMutablePointer<Float> {
        UnsafeMutableRawPointer(self).assumingMemoryBound(to: Float.self)
    }
}

extension Array where Element: KernelScalar {
    /// Storage for `count` values that the caller writes completely before reading any (a product's output with
    /// beta 0, a kernel's result). Skips the zero-fill of `init(repeating:count:)`, which on these buffers is a
    /// serial pass over memory that the filling kernel then writes again.
    @inlinable
    public init(unfilled count: Int) {
        self.init(unsafeUninitializedCapacity: count) { _, initialized in initialized = count }
    }
}
