import Foundation
import Kernels
import XCTest

final class BLASTests: XCTestCase {
    /// OpenBLAS must run its fast kernels: never the generic Prescott ones on an AVX-512 (or AVX2) machine.
    func testOpenBLASUsesFastKernels() throws {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { throw XCTSkip("no /proc/cpuinfo") }
        XCTAssertNotNil(BLAS.libraryPath, "OpenBLAS should be installed (scripts/install-deps.sh)")
        guard let core = BLAS.coreName else { throw XCTSkip("the BLAS does not report its kernels") }
        if info.contains("avx512f") || info.contains("avx2") {
            XCTAssertNotEqual(core.lowercased(), "prescott", "OpenBLAS fell back to generic kernels")
        }
    }

    func testPreferredCoreType() {
        XCTAssertEqual(BLAS.preferredCoreType(cpuInfo: "vendor_id : GenuineIntel\nflags : fpu avx2 fma avx512f avx512bw"), "SkylakeX")
        XCTAssertEqual(BLAS.preferredCoreType(cpuInfo: "vendor_id : AuthenticAMD\nflags : fpu avx2 fma avx512f avx512bw"), "Haswell")
        XCTAssertNil(BLAS.preferredCoreType(cpuInfo: "flags : fpu sse2"))
    }

    /// The BLAS product equals the plain reference loop for every transpose combination and leading dimension.
    func testGEMMEqualsReference() {
        var seed: UInt64 = 1
        func next() -> Float { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: seed) >> 40) / Float(1 << 23) }
        for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
            let m = 37, n = 29, k = 53, lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 5
            let a = (0..<((transA ? k : m) * lda)).map { _ in next() }
            let b = (0..<((transB ? n : k) * ldb)).map { _ in next() }
            var c1 = (0..<(m * ldc)).map { _ in next() }, c2 = c1
            Float.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 0.5, a: a, lda: lda, b: b, ldb: ldb,
                       beta: 2, c: &c1, ldc: ldc)
            ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: Float(0.5), a: a, lda: lda,
                               b: b, ldb: ldb, beta: 2, c: &c2, ldc: ldc)
            for i in 0..<c1.count { XCTAssertEqual(c1[i], c2[i], accuracy: 1e-4) }
        }
    }
}
