/// Rotary position embedding on rows of heads.
///
/// Shapes: x [tokens, heads · headDim]; the table holds m·cos θ and m·sin θ [tokens, rotated / 2], where the first
/// `rotated` dimensions of each head turn (all of them, or Phi-3's partial rotary share; the rest pass through) and
/// m is the attention factor of LongRoPE-scaled models (1 otherwise).
///   adjacent pairs (llama's GGUF row order for Q and K; the converter permutes the rows for it):
///     (x₂ᵢ, x₂ᵢ₊₁) ← (x₂ᵢ cos θᵢ − x₂ᵢ₊₁ sin θᵢ, x₂ᵢ sin θᵢ + x₂ᵢ₊₁ cos θᵢ),  θᵢ = position · frequencyᵢ
///   halves (Qwen, Gemma, Phi-3: llama.cpp's "NeoX" order, as the checkpoints store it):
///     (xᵢ, xᵢ₊d/2) ← (xᵢ cos θᵢ − xᵢ₊d/2 sin θᵢ, xᵢ sin θᵢ + xᵢ₊d/2 cos θᵢ)
public enum RoPELayout: Sendable, Equatable { case adjacentPairs, halves }

public struct RoPE<T: KernelScalar> {
    public typealias Layout = RoPELayout
    public let cosines: [T]
    public let sines: [T]
    /// Half the rotated dimensions of a head.
    public let half: Int
    /// The distance between heads (≥ 2 · half).
    public let headDim: Int
    public let layout: Layout

    /// Frequencies base^(−2i/d) · scale, divided by per-dimension `factors` (LLaMA 3.1's `rope_freqs`) if given.
    @inlinable
    public static func frequencies(headDim: Int, base: Double, scale: Double = 1, factors: [Float]? = nil) -> [Double] {
        (0..<(headDim / 2)).map { i in
            let f = scale / LibM.pow(base, Double(2 * i) / Double(headDim))
            return factors.map { f / Double($0[i]) } ?? f
        }
    }

    /// The cos/sin table for `positions` (computed in Double, once per batch, shared by all layers): one
    /// frequency per rotated pair; heads `headDim` apart (nil: exactly the rotated dimensions); both scaled by
    /// `magnitude` (LongRoPE's attention factor).
    @inlinable
    public init(positions: [Int32], frequencies: [Double], layout: Layout = .adjacentPairs, headDim: Int? = nil,
                magnitude: Double = 1) {
        self.layout = layout
        half = frequencies.count
        self.headDim = headDim ?? 2 * frequencies.count
        precondition(self.headDim >= 2 * half, "RoPE rotates more dimensions than a head has")
        var c = [T](repeating: 0, count: positions.count * half), s = c
        for (t, p) in positions.enumerated() {
            for i in 0..<half {
                let angle = Double(p) * frequencies[i]
                c[t * half + i] = T(magnitude * LibM.cos(angle))
                s[t * half + i] = T(magnitude * LibM.sin(angle))
            }
        }
        cosines = c
        sines = s
    }

    /// Rotates in place; `inverse` rotates by −θ (with the factor m, the backward of the forward rotation).
    @inlinable
    public func apply(_ x: UnsafeMutablePointer<T>, tokens: Int, heads: Int, inverse: Bool = false) {
        cosines.withUnsafeBufferPointer { cs in
            sines.withUnsafeBufferPointer { ss in
                // Tokens split over the pool: a training pass rotates thousands, a generated token stays on its thread.
                Parallel.forEachRange(tokens, minimumPerThread: max(1, 16384 / max(1, heads * headDim))) { range in
                    for t in range {
                        let c = cs.baseAddress! + t * half, s = ss.baseAddress! + t * half
                        for h in 0..<heads {
                            let v = x + (t * heads + h) * headDim
                            switch (layout, T.self == Float.self && half % 8 == 0) {
                            case (.adjacentPairs, true):
                                RoPE.rotateFast(v.asMutableFloat, cos: c.asFloat, sin: s.asFloat, half: half, inverse: inverse)
                            case (.adjacentPairs, false):
                                RoPE.rotateReference(v, cos: c, sin: s, half: half, inverse: inverse)
                            case (.halves, true):
                                RoPE.rotateHalvesFast(v.asMutableFloat, cos: c.asFloat, sin: s.asFloat, half: half, inverse: inverse)
                            case (.halves, false):
                                RoPE.rotateHalvesReference(v, cos: c, sin: s, half: half, inverse: inverse)
                            }
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

    /// One head in the halves layout: (vᵢ, vᵢ₊half) rotated by θᵢ (−θᵢ when `inverse`).
    @inlinable
    public static func rotateHalvesReference(_ v: UnsafeMutablePointer<T>, cos c: UnsafePointer<T>, sin s: UnsafePointer<T>,
                                             half: Int, inverse: Bool) {
        for i in 0..<half {
            let a = v[i], b = v[i + half]
            let sn = inverse ? -s[i] : s[i]
            v[i] = a * c[i] - b * sn
            v[i + half] = a * sn + b * c[i]
        }
    }

    /// The same, eight pairs at a time (`half` a multiple of 8).
    @inlinable
    public static func rotateHalvesFast(_ v: UnsafeMutablePointer<Float>, cos c: UnsafePointer<Float>,
                                        sin s: UnsafePointer<Float>, half: Int, inverse: Bool) {
        var i = 0
        while i < half {
            let a = UnsafeRawPointer(v + i).loadUnaligned(as: SIMD8<Float>.self)
            let b = UnsafeRawPointer(v + half + i).loadUnaligned(as: SIMD8<Float>.self)
            let cosine = UnsafeRawPointer(c + i).loadUnaligned(as: SIMD8<Float>.self)
            let sine = UnsafeRawPointer(s + i).loadUnaligned(as: SIMD8<Float>.self) * (inverse ? -1 : 1)
            UnsafeMutableRawPointer(v + i).storeBytes(of: a * cosine - b * sine, as: SIMD8<Float>.self)
            UnsafeMutableRawPointer(v + half + i).storeBytes(of: a * sine + b * cosine, as: SIMD8<Float>.self)
            i += 8
        }
    }
}
