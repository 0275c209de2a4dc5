/// Conversions between Float and the 16-bit float formats stored in GGUF (IEEE half and bfloat16).
public enum HalfPrecision {
    /// Exact IEEE half → Float conversion by bit manipulation (reference; also used to build the table).
    @inlinable
    public static func floatFromHalfBits(_ h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exponent = Int((h >> 10) & 0x1F)
        let mantissa = UInt32(h & 0x3FF)
        if exponent == 0 {
            // Zero or subnormal: mantissa · 2^-24.
            let magnitude = Float(mantissa) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign == 0 ? magnitude : -magnitude
        }
        if exponent == 31 { return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13)) }
        return Float(bitPattern: sign | (UInt32(exponent + 112) << 23) | (mantissa << 13))
    }

    /// All 65 536 half values as Float, for fast table look-ups.
    public static let halfTable: [Float] = (0...0xFFFF).map { floatFromHalfBits(UInt16($0)) }

    /// Float → IEEE half bits, round to nearest even (as numpy's astype(float16) and ggml's F16C path).
    @inlinable
    public static func halfBits(from x: Float) -> UInt16 {
        #if arch(x86_64) || arch(arm64)
        return Float16(x).bitPattern
        #else
        return softwareHalfBits(from: x)
        #endif
    }

    /// Portable Float → half with round-to-nearest-even, for platforms without a native Float16.
    public static func softwareHalfBits(from x: Float) -> UInt16 {
        let bits = x.bitPattern
        let sign = UInt16((bits >> 16) & 0x8000)
        let exponent = Int((bits >> 23) & 0xFF)
        var mantissa = bits & 0x7F_FFFF
        if exponent == 0xFF { return sign | 0x7C00 | (mantissa != 0 ? 0x200 : 0) }
        var e = exponent - 127 + 15
        if e >= 31 { return sign | 0x7C00 }
        if e <= 0 {
            if e < -10 { return sign }
            mantissa |= 0x80_0000
            let shift = UInt32(14 - e)
            let half = UInt32(1) << (shift - 1)
            var result = mantissa >> shift
            let rest = mantissa & ((UInt32(1) << shift) - 1)
            if rest > half || (rest == half && (result & 1) == 1) { result += 1 }
            return sign | UInt16(result)
        }
        var result = mantissa >> 13
        let rest = mantissa & 0x1FFF
        if rest > 0x1000 || (rest == 0x1000 && (result & 1) == 1) {
            result += 1
            if result == 0x400 { result = 0; e += 1 }
            if e >= 31 { return sign | 0x7C00 }
        }
        return sign | UInt16(e << 10) | UInt16(result)
    }

    @inlinable
    public static func floatFromBFloat16Bits(_ b: UInt16) -> Float { Float(bitPattern: UInt32(b) << 16) }

    /// Float → bfloat16 bits as ggml does it: NaN made quiet, otherwise round to nearest even.
    @inlinable
    public static func bfloat16Bits(from x: Float) -> UInt16 {
        let u = x.bitPattern
        if (u & 0x7FFF_FFFF) > 0x7F80_0000 { return UInt16(truncatingIfNeeded: (u >> 16) | 64) }
        return UInt16(truncatingIfNeeded: (UInt64(u) + UInt64(0x7FFF + ((u >> 16) & 1))) >> 16)
    }
}
