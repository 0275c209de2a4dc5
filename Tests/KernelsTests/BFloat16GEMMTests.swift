import CKernels
import Foundation
import GGUF
import Kernels
import XCTest

/// bf16 products (oneDNN on AVX512-BF16/AMX) against their plain reference, the float32 product of the rounded
/// operands, and against float32 itself, on the shapes of SmolLM2's frozen products.
final class BFloat16GEMMTests: XCTestCase {
    /// The vector rounding equals the scalar rule (`HalfPrecision.bfloat16Bits`: nearest even, NaN kept) on ties,
    /// NaNs, infinities, denormals, the largest floats and random values, across whole vectors and their tails.
    func testRoundingMatchesTheScalarRule() {
        var bits: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0x3F80_7FFF, 0x3F80_8001, 0xBF80_8000, 0x7FC0_0001, 0x7F80_0001,
                              0xFF80_0001, 0x7F80_0000, 0xFF80_0000, 0x0000_0001, 0x0000_8000, 0x0001_8000, 0x8000_0000,
                              0x7F7F_FFFF, 0xFF7F_FFFF, 0x0000_0000]
        var state: UInt64 = 12345
        for _ in 0..<4000 {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            bits.append(UInt32(truncatingIfNeeded: state >> 32))
        }
        let values = bits.map { Float(bitPattern: $0) }
        for count in [values.count, 17, 15, 1] {
            let got = BFloat16GEMM.rounded(Array(values.prefix(count)))
            for i in 0..<count {
                XCTAssertEqual(got[i], HalfPrecision.bfloat16Bits(from: values[i]), "value \(String(bits[i], radix: 16))")
            }
        }
    }

    struct Shape { var transB: Bool, m: Int, n: Int, k: Int, accumulate: Bool }

    /// Forward x·Wᵀ of the attention and feed-forward weights, backward dy·W (accumulating, as the fused groups do),
    /// and one product large enough to be split over two threads.
    static let shapes = [Shape(transB: true, m: 48, n: 576, k: 576, accumulate: false),
                         Shape(transB: true, m: 40, n: 1536, k: 576, accumulate: false),
                         Shape(transB: false, m: 40, n: 576, k: 1536, accumulate: true),
                         Shape(transB: false, m: 33, n: 192, k: 576, accumulate: false),
                         Shape(transB: true, m: 256, n: 1536, k: 576, accumulate: false)]

    func testProductsMatchTheReferenceAndStayWithinBf16OfFloat32() throws {
        guard BFloat16GEMM.isAvailable else { throw XCTSkip("no bf16 products here: \(BFloat16GEMM.unavailableReason ?? "")") }
        let savedThreads = Parallel.threads
        defer { Parallel.threads = savedThreads }
        Parallel.threads = 2
        var state: UInt64 = 99
        func value() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23)  // in [-1, 1)
        }
        for s in Self.shapes {
            let x = (0..<(s.m * s.k)).map { _ in value() }
            let w = (0..<(s.n * s.k)).map { _ in value() }  // [n, k] when transposed, [k, n] otherwise
            let start = (0..<(s.m * s.n)).map { _ in s.accumulate ? value() : 0 }
            let xb = BFloat16GEMM.rounded(x), wb = BFloat16GEMM.rounded(w)
            let ldb = s.transB ? s.k : s.n
            var fast = start, reference = start, float32 = start
            BFloat16GEMM.gemm(transA: false, transB: s.transB, m: s.m, n: s.n, k: s.k, a: xb, lda: s.k, b: wb, ldb: ldb,
                              accumulate: s.accumulate, c: &fast, ldc: s.n)
            BFloat16GEMM.referenceGEMM(transA: false, transB: s.transB, m: s.m, n: s.n, k: s.k, a: xb, lda: s.k, b: wb,
                                       ldb: ldb, accumulate: s.accumulate, c: &reference, ldc: s.n)
            ReferenceGEMM.gemm(transA: false, transB: s.transB, m: s.m, n: s.n, k: s.k, alpha: Float(1), a: x, lda: s.k,
                               b: w, ldb: ldb, beta: s.accumulate ? 1 : 0, c: &float32, ldc: s.n)
            var largestChange: Float = 0
            for i in 0..<s.m {
                for j in 0..<s.n {
                    var magnitude: Float = abs(start[i * s.n + j])
                    for p in 0..<s.k {
                        magnitude += abs(x[i * s.k + p] * (s.transB ? w[j * s.k + p] : w[p * s.n + j]))
                    }
                    let at = i * s.n + j
                    // Both add exact products of bf16 values in float32, in different orders: |Δ| ≤ 2·γₖ·Σ|x·w|,
                    // γₖ ≈ k·2⁻²⁴.
                    XCTAssertEqual(fast[at], reference[at], accuracy: 2 * Float(s.k + 1) * 0x1p-24 * magnitude,
                                   "\(s) at (\(i), \(j))")
                    // Against float32: each operand's rounding moves a term by at most (2u + u²), u = 2⁻⁸.
                    XCTAssertLessThanOrEqual(abs(fast[at] - float32[at]), (2 * 0x1p-8 + 0x1p-16 + Float(s.k + 1) * 0x1p-23) * magnitude,
                                             "\(s) at (\(i), \(j))")
                    largestChange = max(largestChange, abs(fast[at] - float32[at]))
                }
            }
            XCTAssertGreaterThan(largestChange, 0, "\(s): the product ran on bf16 operands")
        }
    }

    /// Attention's tile products on rounded operands (`gemmOnRoundedOperands`), with the AVX512-BF16 kernel and
    /// without it, against a Double product of the rounded operands: every transpose it takes (and the one it
    /// leaves to the fallback), strided operands, odd inner sizes (a zero-padded last pair), and row and column
    /// counts on both sides of the kernel's 6 × 64 tile and 16-lane vectors; alpha and accumulation.
    func testRoundedOperandProductsMatchTheirReferenceOnEveryTail() {
        var state: UInt64 = 7
        func value() -> Float {
            state = state &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: state) >> 40) / Float(1 << 23)
        }
        func rounded(_ x: Float) -> Double { Double(HalfPrecision.floatFromBFloat16Bits(HalfPrecision.bfloat16Bits(from: x))) }
        let saved = BFloat16GEMM.tileKernels
        defer { BFloat16GEMM.tileKernels = saved }
        let shapes = [(1, 1, 1), (5, 15, 3), (6, 16, 2), (7, 17, 31), (13, 64, 64), (192, 64, 64), (64, 64, 192),
                      (12, 65, 65), (19, 70, 33), (6, 128, 7)]
        for kernel in BFloat16GEMM.tileKernelsSupported ? [true, false] : [false] {
            BFloat16GEMM.tileKernels = kernel
            XCTAssertEqual(BFloat16GEMM.tileKernels, kernel)
            for (transA, transB) in [(false, true), (false, false), (true, false), (true, true)] {
                for (index, (m, n, k)) in shapes.enumerated() {
                    let alpha: Float = index % 2 == 0 ? 1 : 0.125, accumulate = index % 3 == 1
                    let lda = (transA ? m : k) + index % 3, ldb = (transB ? k : n) + 2 * (index % 2)
                    let a = (0..<((transA ? k : m) * lda)).map { _ in value() }
                    let b = (0..<((transB ? n : k) * ldb)).map { _ in value() }
                    let start = (0..<(m * n)).map { _ in accumulate ? value() : 0 }
                    var c = start, float32 = start
                    BFloat16GEMM.gemmOnRoundedOperands(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha,
                                                       a: a, lda: lda, b: b, ldb: ldb, beta: accumulate ? 1 : 0, c: &c, ldc: n)
                    ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                       b: b, ldb: ldb, beta: accumulate ? 1 : 0, c: &float32, ldc: n)
                    var largestChange: Float = 0
                    for i in 0..<m {
                        for j in 0..<n {
                            var sum = 0.0, magnitude = 0.0
                            for p in 0..<k {
                                let x = rounded(transA ? a[p * lda + i] : a[i * lda + p])
                                let y = rounded(transB ? b[j * ldb + p] : b[p * ldb + j])
                                sum += x * y
                                magnitude += abs(x * y)
                            }
                            let expected = Double(start[i * n + j]) + Double(alpha) * sum
                            magnitude = abs(Double(start[i * n + j])) + Double(alpha) * magnitude
                            // Exact products of bf16 values added in float32: |Δ| ≤ γₖ₊₂·Σ|terms|, γ ≈ (k + 2)·2⁻²⁴.
                            XCTAssertEqual(Double(c[i * n + j]), expected, accuracy: Double(k + 3) * 0x1p-24 * magnitude + 1e-30,
                                           "kernel \(kernel), transA \(transA), transB \(transB), \(m)×\(n)×\(k) at (\(i), \(j))")
                            largestChange = max(largestChange, abs(c[i * n + j] - float32[i * n + j]))
                        }
                    }
                    if k > 1 { XCTAssertGreaterThan(largestChange, 0, "\(m)×\(n)×\(k): the operands were rounded") }
                }
            }
        }
        // An empty inner side: C stays (accumulating) or becomes 0.
        var c: [Float] = [1, 2, 3, 4]
        BFloat16GEMM.gemmOnRoundedOperands(transA: false, transB: false, m: 2, n: 2, k: 0, alpha: 1, a: [], lda: 1, b: [],
                                           ldb: 2, beta: 1, c: &c, ldc: 2)
        XCTAssertEqual(c, [1, 2, 3, 4])
        BFloat16GEMM.gemmOnRoundedOperands(transA: false, transB: false, m: 2, n: 2, k: 0, alpha: 1, a: [], lda: 1, b: [],
                                           ldb: 2, beta: 0, c: &c, ldc: 2)
        XCTAssertEqual(c, [0, 0, 0, 0])
    }

    /// Turned off, bf16 products are unavailable and say why (the float32 fallback's switch).
    func testTurningOffMakesThemUnavailable() {
        let saved = BFloat16GEMM.disabled
        defer { BFloat16GEMM.disabled = saved }
        BFloat16GEMM.disabled = true
        XCTAssertFalse(BFloat16GEMM.isAvailable)
        XCTAssertNil(BFloat16GEMM.engine)
        XCTAssertEqual(BFloat16GEMM.unavailableReason, "bf16 products are turned off (LORAKIT_BF16=off)")
    }

    /// The bf16 register peak that `lorakit-bench step --precision bf16` measures the products against: measured
    /// where the CPU has AVX512-BF16 without AMX, at about twice the float32 one (two bf16 products a lane where a
    /// multiply-add has one; 1.5× leaves room for a noisy host), and 0 elsewhere rather than a wrong ceiling.
    func testBf16PeakIsMeasuredOnlyWhereItBoundsTheProducts() throws {
        let cpuFlags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        let amx = cpuFlags.split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").contains("amx_bf16") ?? false
        let peak = lk_bf16_peak_gflops()
        guard lk_bf16_tiles_supported() != 0, !amx else { return XCTAssertEqual(peak, 0) }
        let float32Peak = lk_float32_peak_gflops()
        XCTAssertGreaterThan(peak, 1.5 * float32Peak, "bf16 \(peak) GFLOP/s against float32 \(float32Peak)")
        XCTAssertLessThan(peak, 3 * float32Peak, "bf16 \(peak) GFLOP/s against float32 \(float32Peak)")
    }
}
