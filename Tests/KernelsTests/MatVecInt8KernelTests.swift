import CKernels
import GGUF
import XCTest

/// The 8-bit-activation products against the plain path: the activations rounded by lk_quantize_activations,
/// reference dequantization of the weights, a dot product in Double. Random bytes are valid blocks of every type
/// once the f16 scales are finite, so every quant value (Q8_0's −128 too), scale and minimum position is covered.
final class MatVecInt8KernelTests: XCTestCase {
    var seed: UInt64 = 21
    func nextByte() -> UInt8 {
        seed = seed &* 6364136223846793005 &+ 1442695040888963407
        return UInt8(truncatingIfNeeded: seed >> 56)
    }

    /// x̂ from the kernels' own rounding, checked against its definition.
    func rounded(_ x: [Float]) -> (q: [Int8], scales: [Float], halfSums: [Float], values: [Float]) {
        var q = [Int8](repeating: 0, count: x.count), scales = [Float](repeating: 0, count: x.count / 32)
        var sums = [Float](repeating: 0, count: x.count / 16)
        lk_quantize_activations(x, Int32(x.count), &q, &scales, &sums)
        return (q, scales, sums, (0..<x.count).map { scales[$0 / 32] * Float(q[$0]) })
    }

    func testActivationRoundingFollowsItsDefinition() {
        var x = (0..<256).map { _ in Float(Int(nextByte()) - 128) / 37 }
        for j in 64..<96 { x[j] = 0 }  // a block of zeros: scale 0, quants 0
        x[5] = 100                     // one large value sets its block's scale
        // Scale exactly 1 in block 4: halves round away from zero, as roundf does (the vector unit's default is
        // ties to even).
        x.replaceSubrange(128..<136, with: [127, 2.5, -2.5, 0.5, -0.5, 1.5, -126.5, 3.5])
        let (q, scales, sums, values) = rounded(x)
        XCTAssertEqual(Array(q[128..<136]), [127, 3, -3, 1, -1, 2, -127, 4])
        for b in 0..<8 {
            let block = x[(32 * b)..<(32 * b + 32)]
            let amax = block.map(abs).max()!
            XCTAssertEqual(scales[b], amax / 127, accuracy: 1e-7 * max(amax, 1), "block \(b)")
            let inverse: Float = scales[b] > 0 ? 1 / scales[b] : 0
            for j in (32 * b)..<(32 * b + 32) {
                XCTAssertEqual(q[j], Int8((x[j] * inverse).rounded()), "element \(j)")
                XCTAssertLessThanOrEqual(abs(values[j] - x[j]), scales[b] / 2 * 1.0001, "element \(j)")
            }
            if amax > 0 { XCTAssertTrue(q[(32 * b)..<(32 * b + 32)].contains { abs(Int($0)) == 127 }, "block \(b)") }
            for h in 0..<2 {
                let start = 32 * b + 16 * h
                XCTAssertEqual(sums[2 * b + h], scales[b] * Float(q[start..<(start + 16)].reduce(0) { $0 + Int($1) }))
            }
        }
        XCTAssertEqual(scales[2], 0)
        XCTAssertTrue(q[64..<96].allSatisfy { $0 == 0 })
        XCTAssertEqual(q[5], 127)
    }

    func testEveryTypeMatchesDequantizeThenDotOfRoundedActivations() {
        // (type, bytes per block, elements per block, offsets of the f16 scales)
        let layouts: [(TensorType, Int, Int, [Int])] = [
            (.q4_0, 18, 32, [0]), (.q4_1, 20, 32, [0, 2]), (.q5_0, 22, 32, [0]), (.q5_1, 24, 32, [0, 2]),
            (.q8_0, 34, 32, [0]), (.q4_K, 144, 256, [0, 2]), (.q5_K, 176, 256, [0, 2]), (.q6_K, 210, 256, [208]),
        ]
        for (type, bytes, elements, scaleOffsets) in layouts {
            XCTAssertEqual(lk_matvec_int8_supported(Int32(type.rawValue)), 1, "\(type)")
            for (rows, cols) in [(1, 256), (37, 512), (300, 768), (64, 1536)] {
                let blocks = rows * cols / elements
                var data = (0..<(blocks * bytes)).map { _ in nextByte() }
                for block in 0..<blocks {
                    for (k, offset) in scaleOffsets.enumerated() {
                        let bits = Float16(Float(nextByte()) / 25_600 + (k == 0 ? 0.001 : 0)).bitPattern
                        data[block * bytes + offset] = UInt8(bits & 0xFF)
                        data[block * bytes + offset + 1] = UInt8(bits >> 8)
                    }
                }
                let x = (0..<cols).map { _ in Float(Int(nextByte()) - 128) / 64 }
                let xHat = rounded(x).values
                let w: [Float] = data.withUnsafeBytes { DequantizeReference.dequantize(type, from: $0, count: rows * cols) }
                func product(_ v: [Float], _ r: Int) -> Double { (0..<cols).reduce(0.0) { $0 + Double(w[r * cols + $1]) * Double(v[$1]) } }
                for threads in [1, 2, 3] {
                    lk_set_threads(Int32(threads))
                    var y = [Float](repeating: .nan, count: rows)
                    data.withUnsafeBytes { lk_matvec_int8(Int32(type.rawValue), $0.baseAddress!, cols / elements * bytes, Int32(rows), Int32(cols), x, &y) }
                    for r in 0..<rows {
                        let magnitude = (0..<cols).reduce(0.0) { $0 + Double(abs(w[r * cols + $1] * xHat[$1])) }
                        XCTAssertEqual(Double(y[r]), product(xHat, r), accuracy: 1e-5 * magnitude + 1e-30,
                                       "\(type) \(rows)×\(cols) row \(r), \(threads) threads")
                        // And within the rounding's own bound of the exact product W·x: Σ |w|·scale/2.
                        if threads == 1 {
                            let scales = rounded(x).scales
                            let bound = (0..<cols).reduce(0.0) { $0 + Double(abs(w[r * cols + $1]) * scales[$1 / 32] / 2) }
                            XCTAssertLessThanOrEqual(abs(Double(y[r]) - product(x, r)), bound * 1.001 + 1e-5 * magnitude, "\(type) row \(r)")
                        }
                    }
                }
            }
        }
        lk_set_threads(1)
    }
}
