/// Fast dequantization: whole blocks at a time through raw pointers, SIMD for the 32-element block types.
/// Results are bit-identical to `DequantizeReference` (same operations in the same order, no fused multiply-add).
public enum Dequantize {
    /// Dequantizes `count` elements (a whole number of blocks) of `type` from `src` into `dst`.
    public static func fast(_ type: TensorType, from src: UnsafeRawBufferPointer, count: Int,
                            into dst: UnsafeMutablePointer<Float>) {
        guard count > 0, let base = src.baseAddress else { return }
        let blocks = count / type.blockSize
        switch type {
        case .f32:
            UnsafeMutableRawPointer(dst).copyMemory(from: base, byteCount: count * 4)
        case .f16:
            #if arch(x86_64) && os(macOS)
            HalfPrecision.halfTable.withUnsafeBufferPointer { table in  // no Float16 on Intel Macs
                for i in 0..<count { dst[i] = table[Int(base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))] }
            }
            #else
            // The hardware conversion (F16C) where the build targets it: exact, like the table.
            for i in 0..<count { dst[i] = Float(Float16(bitPattern: base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))) }
            #endif
        case .bf16:
            for i in 0..<count {
                dst[i] = Float(bitPattern: UInt32(base.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)) << 16)
            }
        case .q4_0: withHalfTable { h in for b in 0..<blocks { q4_0(base + b * 18, dst + b * 32, h) } }
        case .q4_1: withHalfTable { h in for b in 0..<blocks { q4_1(base + b * 20, dst + b * 32, h) } }
        case .q5_0: withHalfTable { h in for b in 0..<blocks { q5(base + b * 22, dst + b * 32, hasMin: false, h) } }
        case .q5_1: withHalfTable { h in for b in 0..<blocks { q5(base + b * 24, dst + b * 32, hasMin: true, h) } }
        case .q8_0: withHalfTable { h in for b in 0..<blocks { q8_0(base + b * 34, dst + b * 32, h) } }
        case .q2_K: for b in 0..<blocks { q2_K(base + b * 84, dst + b * 256) }
        case .q3_K: for b in 0..<blocks { q3_K(base + b * 110, dst + b * 256) }
        case .q4_K: for b in 0..<blocks { q4_K(base + b * 144, dst + b * 256) }
        case .q5_K: for b in 0..<blocks { q5_K(base + b * 176, dst + b * 256) }
        case .q6_K: for b in 0..<blocks { q6_K(base + b * 210, dst + b * 256) }
        case .q8_1, .q8_K, .i8, .i16, .i32, .i64, .f64:
            for i in 0..<count { dst[i] = .nan }
        }
    }

    /// Dequantizes rows `rows` of a 2-D tensor (each `rowLength` elements) into `dst`, contiguous.
    public static func rows(_ type: TensorType, from src: UnsafeRawBufferPointer, rowLength: Int,
                            rows: Range<Int>, into dst: UnsafeMutablePointer<Float>) {
        let rowBytes = rowLength / type.blockSize * type.blockBytes
        let slice = UnsafeRawBufferPointer(rebasing: src[(rows.lowerBound * rowBytes)..<(rows.upperBound * rowBytes)])
        fast(type, from: slice, count: rows.count * rowLength, into: dst)
    }

    @inline(__always)
    static func half(_ p: UnsafeRawPointer) -> Float {
        HalfPrecision.floatFromHalfBits(p.loadUnaligned(as: UInt16.self))
    }

    /// Block scales through the 65 536-entry table: no branches per block.
    @inline(__always)
    static func half(_ p: UnsafeRawPointer, _ table: UnsafePointer<Float>) -> Float {
        table[Int(p.loadUnaligned(as: UInt16.self))]
    }

    @inline(__always)
    static func withHalfTable(_ body: (UnsafePointer<Float>) -> Void) {
        HalfPrecision.halfTable.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    /// Unpacks 16 bytes into their 32 nibbles: low nibbles first, then high nibbles.
    @inline(__always)
    static func nibbles(_ p: UnsafeRawPointer) -> (SIMD16<UInt8>, SIMD16<UInt8>) {
        let bytes = p.loadUnaligned(as: SIMD16<UInt8>.self)
        return (bytes & 0xF, bytes &>> 4)
    }

    @inline(__always)
    static func floats(_ v: SIMD16<UInt8>) -> SIMD16<Float> {
        var out = SIMD16<Float>()
        for i in 0..<16 { out[i] = Float(v[i]) }
        return out
    }

    @inline(__always)
    static func store(_ v: SIMD16<Float>, _ dst: UnsafeMutablePointer<Float>) {
        UnsafeMutableRawPointer(dst).storeBytes(of: v, as: SIMD16<Float>.self)
    }

    @inline(__always)
    static func q4_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ table: UnsafePointer<Float>) {
        let d = half(p, table)
        let (lo, hi) = nibbles(p + 2)
        store((floats(lo) - 8) * d, y)
        store((floats(hi) - 8) * d, y + 16)
    }

    @inline(__always)
    static func q4_1(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ table: UnsafePointer<Float>) {
        let d = half(p, table), m = half(p + 2, table)
        let (lo, hi) = nibbles(p + 4)
        store(d * floats(lo) + m, y)
        store(d * floats(hi) + m, y + 16)
    }

    @inline(__always)
    static func q5(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, hasMin: Bool, _ table: UnsafePointer<Float>) {
        let d = half(p, table)
        let m: Float = hasMin ? half(p + 2, table) : 0
        let qhOffset = hasMin ? 4 : 2
        let qh = p.loadUnaligned(fromByteOffset: qhOffset, as: UInt32.self)
        let (lo, hi) = nibbles(p + qhOffset + 4)
        let highLo = fifthBits(UInt16(truncatingIfNeeded: qh)), highHi = fifthBits(UInt16(truncatingIfNeeded: qh >> 16))
        if hasMin {
            store(d * floats(lo | highLo) + m, y)
            store(d * floats(hi | highHi) + m, y + 16)
        } else {
            store((floats(lo | highLo) - 16) * d, y)
            store((floats(hi | highHi) - 16) * d, y + 16)
        }
    }

    /// Byte j = 16 where bit j of `bits` is set, else 0, through a table of 8 such bytes per byte value.
    @inline(__always)
    static func fifthBits(_ bits: UInt16) -> SIMD16<UInt8> {
        fifthBitTable.withUnsafeBufferPointer { t in
            unsafeBitCast(SIMD2<UInt64>(t[Int(bits & 0xFF)], t[Int(bits >> 8)]), to: SIMD16<UInt8>.self)
        }
    }

    static let fifthBitTable: [UInt64] = (0..<256).map { (byte: Int) -> UInt64 in
        (0..<8).reduce(UInt64(0)) { word, bit in byte >> bit & 1 == 1 ? word | UInt64(16) << (8 * bit) : word }
    }

    @inline(__always)
    static func q8_0(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>, _ table: UnsafePointer<Float>) {
        let d = half(p, table)
        for i in 0..<32 { y[i] = Float(p.load(fromByteOffset: 2 + i, as: Int8.self)) * d }
    }

    static func q2_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let scales = p.assumingMemoryBound(to: UInt8.self)
        let d = half(p + 80), dmin = half(p + 82)
        var out = y
        var q = scales + 16
        var s = 0
        for _ in 0..<2 {
            for shift in stride(from: UInt8(0), to: 8, by: 2) {
                for part in 0..<2 {
                    let sc = scales[s]; s += 1
                    let dl = d * Float(sc & 0xF), ml = dmin * Float(sc >> 4)
                    for l in 0..<16 { out[l] = dl * Float((q[l + 16 * part] >> shift) & 3) - ml }
                    out += 16
                }
            }
            q += 32
        }
    }

    static func q3_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let hmask = p.assumingMemoryBound(to: UInt8.self)
        let packed = hmask + 96
        let d = half(p + 108)
        var scales = SIMD16<Int32>()  // on the stack
        for s in 0..<16 {
            let low = s < 8 ? packed[s] & 0xF : packed[s - 8] >> 4
            let high = (packed[8 + s % 4] >> UInt8(2 * (s / 4))) & 3
            scales[s] = Int32(low | high << 4) - 32
        }
        for half in 0..<2 {
            let q = hmask + 32 + 32 * half
            for plane in 0..<4 {
                // Elements 128·half + 32·plane + l: two bits of q[l], the high bit (mask bit 4·half + plane) of hmask[l].
                let shift = UInt8(2 * plane), bit = UInt8(4 * half + plane)
                let out = y + 128 * half + 32 * plane
                for part in 0..<2 {
                    let dl = d * Float(scales[8 * half + 2 * plane + part])
                    for l in (16 * part)..<(16 * part + 16) {
                        let low = Int32((q[l] >> shift) & 3)
                        let minus = Int32(((hmask[l] >> bit) & 1) ^ 1) << 2  // 4 when the high bit is clear
                        out[l] = dl * Float(low - minus)
                    }
                }
            }
        }
    }

    @inline(__always)
    static func scaleMin(_ q: UnsafePointer<UInt8>, _ j: Int) -> (Float, Float) {
        if j < 4 { return (Float(q[j] & 63), Float(q[j + 4] & 63)) }
        return (Float((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4)), Float((q[j + 4] >> 4) | ((q[j] >> 6) << 4)))
    }

    static func q4_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p), dmin = half(p + 2)
        let scales = (p + 4).assumingMemoryBound(to: UInt8.self)
        var q = (p + 16).assumingMemoryBound(to: UInt8.self)
        var out = y
        for group in 0..<4 {
            let (sc1, m1) = scaleMin(scales, 2 * group), (sc2, m2) = scaleMin(scales, 2 * group + 1)
            let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float(q[l] & 0xF) - min1 }
            for l in 0..<32 { out[32 + l] = d2 * Float(q[l] >> 4) - min2 }
            q += 32
            out += 64
        }
    }

    static func q5_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p), dmin = half(p + 2)
        let scales = (p + 4).assumingMemoryBound(to: UInt8.self)
        let qh = (p + 16).assumingMemoryBound(to: UInt8.self)
        var ql = (p + 48).assumingMemoryBound(to: UInt8.self)
        var out = y
        var u1: UInt8 = 1, u2: UInt8 = 2
        for group in 0..<4 {
            let (sc1, m1) = scaleMin(scales, 2 * group), (sc2, m2) = scaleMin(scales, 2 * group + 1)
            let d1 = d * sc1, min1 = dmin * m1, d2 = d * sc2, min2 = dmin * m2
            for l in 0..<32 { out[l] = d1 * Float((ql[l] & 0xF) + (qh[l] & u1 != 0 ? 16 : 0)) - min1 }
            for l in 0..<32 { out[32 + l] = d2 * Float((ql[l] >> 4) + (qh[l] & u2 != 0 ? 16 : 0)) - min2 }
            ql += 32
            out += 64
            u1 <<= 2
            u2 <<= 2
        }
    }

    static func q6_K(_ p: UnsafeRawPointer, _ y: UnsafeMutablePointer<Float>) {
        let d = half(p + 208)
        let bytes = p.assumingMemoryBound(to: UInt8.self)
        let sc = (p + 192).assumingMemoryBound(to: Int8.self)
        for h in 0..<2 {
            let ql = bytes + 64 * h, qh = bytes + 128 + 32 * h
            for quarter in 0..<4 {
                // Elements 128h + 32·quarter + l: a nibble of ql, two bits of qh, one scale per 16.
                let out = y + 128 * h + 32 * quarter
                let low = ql + 32 * (quarter % 2), lowShift: UInt8 = quarter < 2 ? 0 : 4, highShift = UInt8(2 * quarter)
                for half16 in 0..<2 {
                    let ds = d * Float(sc[8 * h + half16 + 2 * quarter])
                    for l in (16 * half16)..<(16 * half16 + 16) {
                        let q = Int(((low[l] >> lowShift) & 0xF) | (((qh[l] >> highShift) & 3) << 4)) - 32
                        out[l] = ds * Float(q)
                    }
                }
            }
        }
    }
}
