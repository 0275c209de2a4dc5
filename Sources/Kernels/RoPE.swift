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
                        if T.self == Float.self && half % 8 == 0 {
                            RoPE.rotateFast(v.asMutableFloat, cos: c.asFloat, sin: s.asFloat, half: half, inverse: inverse)
                        } else {
                            RoPE.rotateReference(v, cos: c, sin: s, half: half, inverse: inverse)
                        }
                    }
                }
            }
        }
    }

    /// One head: pairs (v₂ᵢ, v₂ᵢ₊₁) rotated by θᵢ (−θᵢ when `inverse`).
    @inlinable
    public static func rotateReference(_ v: UnsafeMutablePointer<T>, cos c: UnsafePointer<T>, sin s: UnsafePointer<T>,
                                       half: Int, inverse: Bool) {
        for i in 0..<half {
            let a = v[2 * i], b = v[2 * i + 1]
            let sn = inverse ? -s[i] : s[i]
            v[2 * i] = a * c[i] - b * sn
            v[2 * i + 1] = a * sn + b * c[i]
        }
    }

    /// The same, eight pairs at a time (`half` a multiple of 8).
    @inlinable
    public static func rotateFast(_ v: UnsafeMutablePointer<Float>, cos c: UnsafePointer<Float>, sin s: UnsafePointer<Float>,
                                  half: Int, inverse: Bool) {
        var i = 0
        while i < half {
            var pairs = UnsafeRawPointer(v + 2 * i).loadUnaligned(as: SIMD16<Float>.self)
            let a = pairs.evenHalf, b = pairs.oddHalf
            let cosine = UnsafeRawPointer(c + i).loadUnaligned(as: SIMD8<Float>.self)
            let sine = UnsafeRawPointer(s + i).loadUnaligned(as: SIMD8<Float>.self) * (inverse ? -1 : 1)
            pairs.evenHalf = a * cosine - b * sine
            pairs.oddHalf = a * sine + b * cosine
            UnsafeMutableRawPointer(v + 2 * i).storeBytes(of: pairs, as: SIMD16<Float>.self)
            i += 8
        }
    }
}
