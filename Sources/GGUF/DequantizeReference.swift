/// Plain reference dequantization: each element computed on its own from the block layout, straight from the
/// format's definition. Slow and obvious; `Dequantize.fast` is tested equal to it.
public enum DequantizeReference {
    static let qk = 256

    /// Dequantizes `count` elements of `type` from `data` to Float.
    public static func dequantize(_ type: TensorType, from data: UnsafeRawBufferPointer, count: Int) -> [Float] {
        (0..<count).map { element(type, data, $0) }
    }

    static func byte(_ data: UnsafeRawBufferPointer, _ offset: Int) -> UInt8 { data[offset] }

    static func half(_ data: UnsafeRawBufferPointer, _ offset: Int) -> Float {
        HalfPrecision.floatFromHalfBits(UInt16(data[offset]) | UInt16(data[offset + 1]) << 8)
    }

    /// Element `i` of a tensor of `type`.
    static func element(_ type: TensorType, _ data: UnsafeRawBufferPointer, _ i: Int) -> Float {
        let block = i / type.blockSize * type.blockBytes
        let j = i % type.blockSize
        switch type {
        case .f32:
            return Float(bitPattern: UInt32(data[block]) | UInt32(data[block + 1]) << 8
                         | UInt32(data[block + 2]) << 16 | UInt32(data[block + 3]) << 24)
        case .f16:
            return half(data, block)
        case .bf16:
            return HalfPrecision.floatFromBFloat16Bits(UInt16(data[block]) | UInt16(data[block + 1]) << 8)
        case .q4_0:
            // d: f16, qs[16]: element j is the low nibble of qs[j] (j < 16) or the high nibble of qs[j-16].
            let q = nibble(byte(data, block + 2 + j % 16), high: j >= 16)
            return Float(Int(q) - 8) * half(data, block)
        case .q4_1:
            let q = nibble(byte(data, block + 4 + j % 16), high: j >= 16)
            return half(data, block) * Float(q) + half(data, block + 2)
        case .q5_0:
            // d: f16, qh: 32 high bits (bit j for element j), qs[16] low nibbles as in Q4_0.
            let q = nibble(byte(data, block + 6 + j % 16), high: j >= 16) | highBit(data, block + 2, j) << 4
            return Float(Int(q) - 16) * half(data, block)
        case .q5_1:
            let q = nibble(byte(data, block + 8 + j % 16), high: j >= 16) | highBit(data, block + 4, j) << 4
            return half(data, block) * Float(q) + half(data, block + 2)
        case .q8_0:
            return Float(Int8(bitPattern: byte(data, block + 2 + j))) * half(data, block)
        case .q2_K:
            // scales[16] (low nibble scale, high nibble min), qs[64], d, dmin. Two halves of 128 elements; in each,
            // four 2-bit planes of 32 bytes; one scale per 16 elements.
            let half128 = j / 128, plane = (j % 128) / 32, l = j % 32
            let q = (byte(data, block + 16 + half128 * 32 + l) >> (2 * plane)) & 3
            let sc = byte(data, block + j / 16)
            let dl = half(data, block + 80) * Float(sc & 0xF)
            let ml = half(data, block + 82) * Float(sc >> 4)
            return dl * Float(q) - ml
        case .q3_K:
            // hmask[32], qs[64], scales[12] (16 six-bit scales), d.
            let half128 = j / 128, plane = (j % 128) / 32, l = j % 32
            let low = Int((byte(data, block + 32 + half128 * 32 + l) >> (2 * plane)) & 3)
            let highSet = (byte(data, block + l) >> (half128 * 4 + plane)) & 1 == 1
            let s = j / 16
            let lowScale = s < 8 ? byte(data, block + 96 + s) & 0xF : byte(data, block + 96 + s - 8) >> 4
            let highScale = (byte(data, block + 96 + 8 + s % 4) >> (2 * (s / 4))) & 3
            let scale = Int(lowScale | highScale << 4) - 32
            let dl = half(data, block + 108) * Float(scale)
            return dl * Float(low - (highSet ? 0 : 4))
        case .q4_K:
            // d, dmin, scales[12] (8 six-bit scale/min pairs), qs[128]: groups of 64 = 32 bytes, low then high nibbles.
            let group = j / 64, high = (j % 64) >= 32, l = j % 32
            let q = nibble(byte(data, block + 16 + group * 32 + l), high: high)
            let (sc, m) = scaleMinK4(data, block + 4, 2 * group + (high ? 1 : 0))
            return half(data, block) * Float(sc) * Float(q) - half(data, block + 2) * Float(m)
        case .q5_K:
            // d, dmin, scales[12], qh[32], qs[128].
            let group = j / 64, high = (j % 64) >= 32, l = j % 32
            let sub = 2 * group + (high ? 1 : 0)
            let q = nibble(byte(data, block + 48 + group * 32 + l), high: high)
                | ((byte(data, block + 16 + l) >> sub) & 1) << 4
            let (sc, m) = scaleMinK4(data, block + 4, sub)
            return half(data, block) * Float(sc) * Float(q) - half(data, block + 2) * Float(m)
        case .q6_K:
            // ql[128], qh[64], scales[16] (int8), d. Halves of 128; quarters of 32 take low/high nibbles of ql.
            let half128 = j / 128, quarter = (j % 128) / 32, l = j % 32
            let qlByte = byte(data, block + half128 * 64 + l + (quarter % 2) * 32)
            let low = quarter < 2 ? qlByte & 0xF : qlByte >> 4
            let highBits = (byte(data, block + 128 + half128 * 32 + l) >> (2 * quarter)) & 3
            let q = Int(low | highBits << 4) - 32
            let scale = Int8(bitPattern: byte(data, block + 192 + half128 * 8 + l / 16 + 2 * quarter))
            return half(data, block + 208) * Float(scale) * Float(q)
        case .q8_1, .q8_K, .i8, .i16, .i32, .i64, .f64:
            return .nan
        }
    }

    static func nibble(_ b: UInt8, high: Bool) -> UInt8 { high ? b >> 4 : b & 0xF }

    static func highBit(_ data: UnsafeRawBufferPointer, _ offset: Int, _ j: Int) -> UInt8 {
        (data[offset + j / 8] >> (j % 8)) & 1
    }

    /// The six-bit scale and min number `j` (0..<8) of a Q4_K/Q5_K block.
    static func scaleMinK4(_ data: UnsafeRawBufferPointer, _ offset: Int, _ j: Int) -> (UInt8, UInt8) {
        let q = { data[offset + $0] }
        if j < 4 { return (q(j) & 63, q(j + 4) & 63) }
        return ((q(j + 4) & 0xF) | ((q(j - 4) >> 6) << 4), (q(j + 4) >> 4) | ((q(j) >> 6) << 4))
    }
}
