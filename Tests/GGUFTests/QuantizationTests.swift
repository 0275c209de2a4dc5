import GGUF
import TestSupport
import XCTest

/// Dequantization and quantization against golden vectors from llama.cpp's reference code (through the `gguf`
/// package's numpy ports; scripts/make-quant-golden.py), and the fast kernels against the reference ones.
final class QuantizationTests: XCTestCase {
    static let golden: GGUFFile? = try? GGUFFile(path: Paths.fixtures + "/quant-golden.bin")

    func goldenFile() throws -> GGUFFile {
        guard let file = Self.golden else {
            return try GGUFFile(path: Paths.fixtures + "/quant-golden.bin")  // throws the real error
        }
        return file
    }

    static let dequantizedTypes: [TensorType] = [.f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q2_K, .q3_K, .q4_K, .q5_K, .q6_K]

    func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

    func testDequantizationMatchesGolden() throws {
        let file = try goldenFile()
        for type in Self.dequantizedTypes {
            let blocks = try file.requireTensor("dequantize.\(type.name).blocks")
            let expected = try file.floats(of: file.requireTensor("dequantize.\(type.name).values"))
            let raw = file.data(of: blocks)
            XCTAssertEqual(type.byteCount(elements: expected.count), raw.count, type.name)

            var fast = [Float](repeating: .nan, count: expected.count)
            fast.withUnsafeMutableBufferPointer { Dequantize.fast(type, from: raw, count: expected.count, into: $0.baseAddress!) }
            XCTAssertEqual(bits(fast), bits(expected), "fast \(type)")

            let reference = DequantizeReference.dequantize(type, from: raw, count: expected.count)
            XCTAssertEqual(bits(reference), bits(expected), "reference \(type)")
        }
    }

    func testQuantizationIsBitIdenticalToLlamaCpp() throws {
        let file = try goldenFile()
        let input = try file.floats(of: file.requireTensor("quantize.input"))
        for type in [TensorType.f16, .bf16, .q8_0, .q4_0, .q4_1, .q5_0, .q5_1] {
            let expected = Array(file.data(of: try file.requireTensor("quantize.\(type.name)")))
            let ours = try Quantize.quantize(input, to: type)
            XCTAssertEqual(ours.count, expected.count, type.name)
            if let i = ours.indices.first(where: { ours[$0] != expected[$0] }) {
                XCTFail("\(type): first difference at byte \(i) (block \(i / type.blockBytes))")
            }
        }
    }

    /// The K-quants against llama.cpp's own reference quantizers compiled from its source (scripts/make-kquant-golden.py),
    /// byte for byte, on sixteen super-blocks of awkward and random values; each decodes to within its grid.
    func testKQuantizationIsBitIdenticalToLlamaCpp() throws {
        let file = try GGUFFile(path: Paths.fixtures + "/kquant-golden.bin")
        let input = try file.floats(of: file.requireTensor("kquant.input"))
        XCTAssertEqual(input.count, 16 * 256)
        for type in [TensorType.q2_K, .q3_K, .q4_K, .q5_K, .q6_K] {
            let expected = Array(file.data(of: try file.requireTensor("kquant.\(type.name)")))
            let ours = try Quantize.quantize(input, to: type)
            XCTAssertEqual(ours.count, expected.count, type.name)
            if let i = ours.indices.first(where: { ours[$0] != expected[$0] }) {
                XCTFail("\(type): first difference at byte \(i) of \(ours.count) (super-block \(i / type.blockBytes), byte \(i % type.blockBytes))")
            }
            // Round trip on the random super-blocks (the last four): the error stays under the type's step.
            let decoded = ours.withUnsafeBytes { DequantizeReference.dequantize(type, from: $0, count: input.count) }
            let tail = (12 * 256)..<input.count
            let rms = (tail.reduce(0.0) { $0 + Double(input[$1] * input[$1]) } / Double(tail.count)).squareRoot()
            let error = (tail.reduce(0.0) { $0 + Double((decoded[$1] - input[$1]) * (decoded[$1] - input[$1])) } / Double(tail.count)).squareRoot()
            let bound: [TensorType: Double] = [.q2_K: 0.45, .q3_K: 0.25, .q4_K: 0.12, .q5_K: 0.06, .q6_K: 0.03]
            XCTAssertLessThan(error / rms, bound[type]!, "\(type) relative RMS error")
        }
    }

    /// Fast and reference kernels agree on arbitrary bytes, scale fields included (NaN and infinity as well).
    func testFastEqualsReferenceOnRandomBytes() {
        var rng = SplitMix64(seed: 42)
        for type in Self.dequantizedTypes + [.f32] {
            let count = type.blockSize * 9
            let bytes = (0..<type.byteCount(elements: count)!).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            let raw = FileBytes(copying: bytes)
            var fast = [Float](repeating: 0, count: count)
            fast.withUnsafeMutableBufferPointer { Dequantize.fast(type, from: raw.bytes, count: count, into: $0.baseAddress!) }
            let reference = DequantizeReference.dequantize(type, from: raw.bytes, count: count)
            withExtendedLifetime(raw) {}  // raw.bytes points into it: kept until both have read
            XCTAssertEqual(bits(fast), bits(reference), type.name)
        }
    }

    func testRowsDequantizesASlice() throws {
        var rng = SplitMix64(seed: 3)
        let values = (0..<(64 * 5)).map { _ in rng.nextSigned() }
        let bytes = try Quantize.quantize(values, to: .q4_1)
        let raw = FileBytes(copying: bytes)
        var all = [Float](repeating: 0, count: values.count)
        all.withUnsafeMutableBufferPointer { Dequantize.fast(.q4_1, from: raw.bytes, count: values.count, into: $0.baseAddress!) }
        var two = [Float](repeating: 0, count: 128)
        two.withUnsafeMutableBufferPointer { Dequantize.rows(.q4_1, from: raw.bytes, rowLength: 64, rows: 2..<4, into: $0.baseAddress!) }
        withExtendedLifetime(raw) {}
        XCTAssertEqual(two, Array(all[128..<256]))
        // Q4_1 error is at most half a step per block: (max-min)/15/2.
        for (a, b) in zip(all, values) { XCTAssertEqual(a, b, accuracy: 2.0 / 15) }
    }

    func testHalfConversions() {
        XCTAssertEqual(HalfPrecision.halfTable.count, 65536)
        for bits in [UInt16(0x3C00), 0xC000, 0x0001, 0x03FF, 0x7BFF, 0x7C00, 0x8000] {
            let f = HalfPrecision.floatFromHalfBits(bits)
            XCTAssertEqual(HalfPrecision.halfBits(from: f), bits)
            XCTAssertEqual(HalfPrecision.softwareHalfBits(from: f), bits)
        }
        var rng = SplitMix64(seed: 9)
        for _ in 0..<20000 {
            let f = Float(bitPattern: UInt32(truncatingIfNeeded: rng.next()))
            if f.isNaN { continue }
            XCTAssertEqual(HalfPrecision.softwareHalfBits(from: f), HalfPrecision.halfBits(from: f), "\(f)")
        }
        XCTAssertEqual(HalfPrecision.bfloat16Bits(from: 1.0), 0x3F80)
        XCTAssertEqual(HalfPrecision.bfloat16Bits(from: Float(bitPattern: 0x3F80_8000)), 0x3F80, "ties to even")
        XCTAssertEqual(HalfPrecision.bfloat16Bits(from: Float(bitPattern: 0x3F81_8000)), 0x3F82, "ties to even")
    }

    func testQuantizeRejectsPartialBlocksAndUnsupportedTypes() {
        XCTAssertThrowsError(try Quantize.quantize([Float](repeating: 1, count: 31), to: .q4_0))
        XCTAssertThrowsError(try Quantize.quantize([Float](repeating: 1, count: 255), to: .q4_K))
        XCTAssertThrowsError(try Quantize.quantize([Float](repeating: 1, count: 256), to: .q8_K))
        let nan = [Float](repeating: .nan, count: 32)
        XCTAssertNoThrow(try Quantize.quantize(nan, to: .q4_1), "NaN input must not trap")
        XCTAssertNoThrow(try Quantize.quantize(nan, to: .q8_0))
        for type in [TensorType.q2_K, .q3_K, .q4_K, .q5_K, .q6_K] {
            XCTAssertNoThrow(try Quantize.quantize([Float](repeating: .nan, count: 256), to: type), "NaN input must not trap: \(type)")
            XCTAssertNoThrow(try Quantize.quantize([Float](repeating: .infinity, count: 256), to: type), "infinity must not trap: \(type)")
        }
    }
}
