import CKernels
import Dispatch
import Foundation
import GGUF
import XCTest

/// CKernels' per-token products on quantized blocks against the plain path: reference dequantization, then a
/// dot product in Double.
final class MatVecKernelTests: XCTestCase {
    static let types: [TensorType] = [.f32, .f16, .bf16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0]

    /// The exact kernels' builds this CPU runs: AVX2 always, AVX-512 too where the CPU has it. Runs `body` with each
    /// forced, then restores the chosen one.
    func forEachBuild(_ body: (String) throws -> Void) rethrows {
        let chosen = lk_matvec_avx512()
        defer { lk_set_matvec_avx512(chosen) }
        let builds: [(String, Int32)] = lk_matvec_avx512_supported() != 0 ? [("AVX2", 0), ("AVX-512", 1)] : [("AVX2", 0)]
        for (name, on) in builds {
            lk_set_matvec_avx512(on)
            XCTAssertEqual(lk_matvec_avx512(), on)
            try body(name)
        }
    }

    func testEveryTypeMatchesDequantizeThenDot() throws {
        var seed: UInt64 = 11
        func next() -> Float {
            seed = seed &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: seed) >> 40) / Float(1 << 23)
        }
        for type in Self.types {
            guard lk_matvec_supported(Int32(type.rawValue)) != 0 else { continue }
            for (rows, cols) in [(1, 32), (37, 64), (300, 576), (64, 1536), (2, 8224)] {  // 8224: x beyond the stack buffer
                let weights = (0..<(rows * cols)).map { _ in next() * 2 }
                let data = try Quantize.quantize(weights, to: type)
                let rowBytes = data.count / rows
                let x = (0..<cols).map { _ in next() }
                let expected: [Double] = data.withUnsafeBytes { raw in
                    let w = DequantizeReference.dequantize(type, from: raw, count: rows * cols)
                    return (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + Double(w[r * cols + $1]) * Double(x[$1]) } }
                }
                let scale = x.reduce(0.0) { $0 + Double(abs($1)) } * 2
                forEachBuild { build in
                    for threads in [1, 2, 3] {
                        lk_set_threads(Int32(threads))
                        var y = [Float](repeating: .nan, count: rows)
                        data.withUnsafeBytes { raw in
                            lk_matvec(Int32(type.rawValue), raw.baseAddress!, rowBytes, Int32(rows), Int32(cols), x, &y)
                        }
                        for r in 0..<rows {
                            XCTAssertEqual(Double(y[r]), expected[r], accuracy: 1e-5 * scale,
                                           "\(type) \(rows)×\(cols) row \(r), \(threads) threads, \(build)")
                        }
                    }
                }
            }
        }
        lk_set_threads(1)
    }

    /// Prefetching rows ahead is decided by measuring both ways (unless LORAKIT_PREFETCH says), and either way
    /// the products are the same bits: it only changes when memory is read.
    func testPrefetchingIsMeasuredAndChangesNoResult() throws {
        guard lk_matvec_supported(Int32(TensorType.q8_0.rawValue)) != 0 else { return }
        var with = 0.0, without = 0.0
        lk_prefetch_timings(&with, &without)
        if ProcessInfo.processInfo.environment["LORAKIT_PREFETCH"] == nil {
            XCTAssertGreaterThan(with, 0)
            XCTAssertGreaterThan(without, 0)
            XCTAssertEqual(lk_prefetching() != 0, with < 0.95 * without, "the faster way is chosen (with a 5 % margin for prefetch)")
        }
        let chosen = lk_prefetching()
        defer { lk_set_prefetching(chosen) }
        let rows = 3000, cols = 512
        let weights = (0..<(rows * cols)).map { Float(($0 * 7919) % 1001) / 500 - 1 }
        let x = (0..<cols).map { Float(($0 * 31) % 17) / 8 - 1 }
        for type in [TensorType.q8_0, .q5_0] {
            let data = try Quantize.quantize(weights, to: type)
            for (name, multiply) in [("exact", lk_matvec), ("int8", lk_matvec_int8)] {
                var results: [[Float]] = []
                for on in [Int32(1), 0] {
                    lk_set_prefetching(on)
                    XCTAssertEqual(lk_prefetching(), on)
                    var y = [Float](repeating: .nan, count: rows)
                    data.withUnsafeBytes { raw in
                        multiply(Int32(type.rawValue), raw.baseAddress!, data.count / rows, Int32(rows), Int32(cols), x, &y)
                    }
                    results.append(y)
                }
                XCTAssertEqual(results[0].map(\.bitPattern), results[1].map(\.bitPattern), "\(type) \(name)")
                XCTAssertFalse(results[0].contains { !$0.isFinite })
            }
        }
    }

    /// K-quant blocks: any bytes are a valid block once the f16 scales are finite, so random superblocks with
    /// small scales test every quant, scale and minimum position.
    func testKQuantsMatchDequantizeThenDot() {
        var seed: UInt64 = 5
        func nextByte() -> UInt8 { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return UInt8(truncatingIfNeeded: seed >> 56) }
        func half(_ v: Float) -> (UInt8, UInt8) { let b = Float16(v).bitPattern; return (UInt8(b & 0xFF), UInt8(b >> 8)) }
        // (type, bytes per superblock, offsets of the f16 scales)
        for (type, bytes, scaleOffsets) in [(TensorType.q4_K, 144, [0, 2]), (.q5_K, 176, [0, 2]), (.q6_K, 210, [208])] {
            XCTAssertEqual(lk_matvec_supported(Int32(type.rawValue)), 1)
            for (rows, cols) in [(3, 256), (37, 512), (64, 1536), (2, 8448)] {  // 8448: x beyond the stack buffer
                var data = (0..<(rows * cols / 256 * bytes)).map { _ in nextByte() }
                for block in 0..<(rows * cols / 256) {
                    for (k, offset) in scaleOffsets.enumerated() {
                        let (lo, hi) = half(Float(nextByte()) / 25_600 + (k == 0 ? 0.001 : 0))
                        data[block * bytes + offset] = lo
                        data[block * bytes + offset + 1] = hi
                    }
                }
                let x = (0..<cols).map { _ in Float(Int(nextByte()) - 128) / 128 }
                let expected: [Double] = data.withUnsafeBytes { raw in
                    let w = DequantizeReference.dequantize(type, from: raw, count: rows * cols)
                    return (0..<rows).map { r in (0..<cols).reduce(0.0) { $0 + Double(w[r * cols + $1]) * Double(x[$1]) } }
                }
                let magnitude: Double = data.withUnsafeBytes { raw in
                    DequantizeReference.dequantize(type, from: raw, count: rows * cols).map { Double(abs($0)) }.max()! * Double(cols)
                }
                forEachBuild { build in
                    var y = [Float](repeating: .nan, count: rows)
                    data.withUnsafeBytes { raw in
                        lk_matvec(Int32(type.rawValue), raw.baseAddress!, cols / 256 * bytes, Int32(rows), Int32(cols), x, &y)
                    }
                    for r in 0..<rows {
                        XCTAssertEqual(Double(y[r]), expected[r], accuracy: 1e-6 * magnitude, "\(type) \(rows)×\(cols) row \(r), \(build)")
                    }
                }
            }
        }
    }

    /// Many small jobs in a row on the pool: every part runs exactly once per job.
    func testPoolRunsEveryPartOnce() {
        lk_set_threads(2)
        defer { lk_set_threads(1) }
        let counts = UnsafeMutablePointer<Int32>.allocate(capacity: 64)
        defer { counts.deallocate() }
        for job in 0..<2000 {
            let parts = 1 + job % 64
            counts.initialize(repeating: 0, count: 64)
            lk_parallel_for(Int32(parts), { context, part in
                let c = context!.assumingMemoryBound(to: Int32.self)
                c[Int(part)] += 1  // each part is one task: no two threads write the same counter
            }, counts)
            for p in 0..<64 { XCTAssertEqual(counts[p], p < parts ? 1 : 0, "job \(job) part \(p)") }
        }
    }

    /// Two threads using the pool at once (two generation sessions in one app): both get every part done.
    func testPoolWithConcurrentCallers() {
        lk_set_threads(2)
        defer { lk_set_threads(1) }
        DispatchQueue.concurrentPerform(iterations: 4) { caller in
            let counts = UnsafeMutablePointer<Int32>.allocate(capacity: 16)
            defer { counts.deallocate() }
            for _ in 0..<500 {
                counts.initialize(repeating: 0, count: 16)
                lk_parallel_for(16, { context, part in context!.assumingMemoryBound(to: Int32.self)[Int(part)] += 1 }, counts)
                for p in 0..<16 where counts[p] != 1 { XCTFail("caller \(caller): part \(p) ran \(counts[p]) times") }
            }
        }
    }
}
