/// Float → GGUF tensor types, bit-identical to llama.cpp's reference quantizers (`quantize_row_*_ref`; the
/// K-quants in QuantizeK.swift).
public enum Quantize {
    /// The types `quantize` can produce.
    public static let supportedTypes: [TensorType] = [.f32, .f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1,
                                                       .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

    /// Quantizes `values` (a whole number of blocks) to `type`.
    public static func quantize(_ values: UnsafeBufferPointer<Float>, to type: TensorType) throws -> [UInt8] {
        guard supportedTypes.contains(type) else {
            throw GGUFError.unsupported(what: "quantizing to \(type) is not supported (supported: \(supportedTypes.map(\.name).joined(separator: ", ")))")
        }
        guard let bytes = type.byteCount(elements: values.count) else {
            throw GGUFError.unsupported(what: "\(values.count) values are not a whole number of \(type) blocks of \(type.blockSize)")
        }
        var out = [UInt8](repeating: 0, count: bytes)
        out.withUnsafeMutableBytes { dst in
            let blocks = values.count / type.blockSize
            switch type {
            case .f32:
                for (i, v) in values.enumerated() { dst.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self) }
            case .f16:
                for (i, v) in values.enumerated() { dst.storeBytes(of: HalfPrecision.halfBits(from: v), toByteOffset: 2 * i, as: UInt16.self) }
            case .bf16:
                for (i, v) in values.enumerated() { dst.storeBytes(of: HalfPrecision.bfloat16Bits(from: v), toByteOffset: 2 * i, as: UInt16.self) }
            default:
                guard let block = blockQuantizer(type) else { break }
                for b in 0..<blocks { block(values.baseAddress! + type.blockSize * b, dst.baseAddress! + type.blockBytes * b) }
            }
        }
        return out
    }

    /// The quantizer of one block of `type` (32 values, or 256 for the K-quants).
    static func blockQuantizer(_ type: TensorType) -> ((UnsafePointer<Float>, UnsafeMutableRawPointer) -> Void)? {
        switch type {
        case .q8_0: return q8_0
        case .q4_0: return q4_0
        case .q4_1: return q4_1
        case .q5_0: return q5_0
        case .q5_1: return q5_1
        case .q2_K: return q2_K
        case .q3_K: return q3_K
        case .q4_K: return q4_K
        case .q5_K: return q5_K
        case .q6_K: return q6_K
        default: return nil
        }
    }

    public static func quantize(_ values: [Float], to type: TensorType) throws -> [UInt8] {
        try values.withUnsafeBufferPointer { try quantize($0, to: type) }
    }

    static func storeHalf(_ x: Float, _ p: UnsafeMutableRawPointer) {
        p.storeBytes(of: HalfPrecision.halfBits(from: x), as: UInt16.self)
    }

    /// The element of largest magnitude, keeping its sign (the first one on ties).
    static func signedMaxMagnitude(_ x: UnsafePointer<Float>) -> Float {
        var amax: Float = 0, max: Float = 0
        for j in 0..<32 where amax < abs(x[j]) {
            amax = abs(x[j])
            max = x[j]
        }
        return max
    }

    static func minMax(_ x: UnsafePointer<Float>) -> (Float, Float) {
        var lo = Float.greatestFiniteMagnitude, hi = -Float.greatestFiniteMagnitude
        for j in 0..<32 {
            lo = Swift.min(lo, x[j])
            hi = Swift.max(hi, x[j])
        }
        return (lo, hi)
    }

    /// C's `(int8_t)` conversion of a value known to lie in [0, 128): truncation toward zero.
    @inline(__always)
    /// NaN (from a damaged input) becomes 0 instead of trapping.
    static func truncated(_ v: Float) -> Int { v >= 0 ? Int(Swift.min(v, 255).rounded(.towardZero)) : 0 }

    /// C's `roundf` to Int8 for values in [-127, 127]; NaN becomes 0.
    @inline(__always)
    static func roundedInt8(_ v: Float) -> Int8 {
        guard v.isFinite else { return 0 }
        return Int8(Swift.max(-128, Swift.min(127, v.rounded(.toNearestOrAwayFromZero))))
    }

    static func q8_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        var amax: Float = 0
        for j in 0..<32 { amax = Swift.max(amax, abs(x[j])) }
        let d = amax / 127
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y)
        for j in 0..<32 {
            y.storeBytes(of: roundedInt8(x[j] * id), toByteOffset: 2 + j, as: Int8.self)
        }
    }

    static func q4_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedMaxMagnitude(x) / -8
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y)
        for j in 0..<16 {
            let lo = Swift.min(15, truncated(x[j] * id + 8.5))
            let hi = Swift.min(15, truncated(x[j + 16] * id + 8.5))
            y.storeBytes(of: UInt8(lo | hi << 4), toByteOffset: 2 + j, as: UInt8.self)
        }
    }

    static func q4_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (lo, hi) = minMax(x)
        let d = (hi - lo) / 15
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y)
        storeHalf(lo, y + 2)
        for j in 0..<16 {
            let a = Swift.min(15, truncated((x[j] - lo) * id + 0.5))
            let b = Swift.min(15, truncated((x[j + 16] - lo) * id + 0.5))
            y.storeBytes(of: UInt8(a | b << 4), toByteOffset: 4 + j, as: UInt8.self)
        }
    }

    static func q5_0(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let d = signedMaxMagnitude(x) / -16
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let a = Swift.min(31, truncated(x[j] * id + 16.5))
            let b = Swift.min(31, truncated(x[j + 16] * id + 16.5))
            y.storeBytes(of: UInt8((a & 0xF) | (b & 0xF) << 4), toByteOffset: 6 + j, as: UInt8.self)
            qh |= UInt32((a & 0x10) >> 4) << UInt32(j) | UInt32((b & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 2, as: UInt32.self)
    }

    static func q5_1(_ x: UnsafePointer<Float>, _ y: UnsafeMutableRawPointer) {
        let (lo, hi) = minMax(x)
        let d = (hi - lo) / 31
        let id: Float = d != 0 ? 1 / d : 0
        storeHalf(d, y)
        storeHalf(lo, y + 2)
        var qh: UInt32 = 0
        for j in 0..<16 {
            let a = Swift.min(31, truncated((x[j] - lo) * id + 0.5))
            let b = Swift.min(31, truncated((x[j + 16] - lo) * id + 0.5))
            y.storeBytes(of: UInt8((a & 0xF) | (b & 0xF) << 4), toByteOffset: 8 + j, as: UInt8.self)
            qh |= UInt32((a & 0x10) >> 4) << UInt32(j) | UInt32((b & 0x10) >> 4) << UInt32(j + 16)
        }
        y.storeBytes(of: qh.littleEndian, toByteOffset: 4, as: UInt32.self)
    }
}
