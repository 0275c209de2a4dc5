import Foundation
import CKernels
import Kernels
import XCTest

final class BLASTests: XCTestCase {
    /// OpenBLAS must run its fast kernels: AVX-512 ones on an AVX-512 machine (whatever older core the
    /// environment's OPENBLAS_CORETYPE names), never the generic Prescott ones on an AVX2 machine.
    func testOpenBLASUsesFastKernels() throws {
        guard let info = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { throw XCTSkip("no /proc/cpuinfo") }
        XCTAssertNotNil(BLAS.libraryPath, "OpenBLAS should be installed (scripts/install-deps.sh)")
        guard let core = BLAS.coreName else { throw XCTSkip("the BLAS does not report its kernels") }
        if ProcessInfo.processInfo.environment["LORAKIT_BLAS_CORETYPE"] == nil,
           BLAS.preferredCoreType(cpuInfo: info) == "SkylakeX" {
            XCTAssertEqual(core.lowercased(), "skylakex", "OpenBLAS should run its AVX-512 kernels on this CPU")
        }
        if info.contains("avx512f") || info.contains("avx2") {
            XCTAssertNotEqual(core.lowercased(), "prescott", "OpenBLAS fell back to generic kernels")
        }
    }

    /// The core is chosen for OpenBLAS only: the process environment (what child processes inherit) is as it was.
    func testEnvironmentIsLeftAsItWas() {
        _ = BLAS.coreName  // loads the library
        XCTAssertEqual(getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }, BLAS.inheritedCoreType)
    }

    func testPreferredCoreType() {
        let avx512 = "flags : fpu avx2 fma avx512f avx512dq avx512bw avx512vl"
        XCTAssertEqual(BLAS.preferredCoreType(cpuInfo: "vendor_id : GenuineIntel\n" + avx512), "SkylakeX")
        XCTAssertEqual(BLAS.preferredCoreType(cpuInfo: "vendor_id : AuthenticAMD\n" + avx512), "SkylakeX")
        XCTAssertEqual(BLAS.preferredCoreType(cpuInfo: "flags : fpu avx2 fma avx512f"), "Haswell")
        XCTAssertNil(BLAS.preferredCoreType(cpuInfo: "flags : fpu sse2"))
    }

    func testChooseCoreType() {
        // An older inherited core is raised; a same or newer one, or one we do not know, is kept.
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: "Haswell", preferred: "SkylakeX"), "SkylakeX")
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: "PRESCOTT", preferred: "Haswell"), "Haswell")
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: "SkylakeX", preferred: "Haswell"), "SkylakeX")
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: "CooperLake", preferred: "SkylakeX"), "CooperLake")
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: nil, preferred: "SkylakeX"), "SkylakeX")
        XCTAssertEqual(BLAS.chooseCoreType(explicit: nil, inherited: "Haswell", preferred: nil), "Haswell")
        XCTAssertNil(BLAS.chooseCoreType(explicit: nil, inherited: nil, preferred: nil))
        // LORAKIT_BLAS_CORETYPE decides outright.
        XCTAssertEqual(BLAS.chooseCoreType(explicit: "Haswell", inherited: "Haswell", preferred: "SkylakeX"), "Haswell")
    }

    /// The BLAS product equals the plain reference loop for every transpose combination and leading dimension,
    /// on shapes from tiny (OpenBLAS's small-matrix paths) to the LoRA ranks and model widths a step uses.
    func testGEMMEqualsReference() {
        checkAgainstReference([(37, 29, 53), (1, 1, 1), (3, 5, 2), (8, 8, 8), (16, 8, 576), (64, 576, 8), (200, 96, 64), (130, 1, 77)])
    }

    /// Products with a side of at most 16 (LoRA's) run in the narrow kernels where the CPU has AVX-512, else in the
    /// BLAS: both equal the reference on LoRA's shapes and on shapes that are not multiples of a register tile — ranks above
    /// 8 (a second block of eight), row counts not multiples of the kernels' 2, 4 or 8 rows, columns not multiples
    /// of 16.
    func testNarrowProductsEqualTheReference() {
        let shapes = [(1024, 8, 576), (8, 576, 1024), (300, 16, 40), (16, 300, 40), (5, 7, 3), (37, 5, 300),
                      (13, 100, 77), (50, 130, 3), (9, 3, 17), (31, 12, 45), (12, 45, 31), (45, 31, 12), (3, 1, 2),
                      (1, 17, 16), (17, 16, 1), (16, 16, 16)]
        defer { BLAS.narrowKernels = true }
        for on in [true, false] {
            BLAS.narrowKernels = on
            checkAgainstReference(shapes)
        }
    }

    /// On a CPU with AVX-512 the narrow kernels take every product with N ≤ 16 (A not transposed), M ≤ 16 (A
    /// transposed, B not) or K ≤ 16 (A not transposed), and refuse the rest, which the BLAS then runs.
    func testNarrowKernelsTakeTheirShapesAndOnlyThose() throws {
        try XCTSkipUnless(lk_narrow_sgemm_supported() != 0, "no AVX-512 on this CPU: the BLAS runs these products")
        XCTAssertTrue(BLAS.narrowKernels, "on by default where supported")
        let a = [Float](repeating: 1, count: 64 * 64), b = a
        var c = [Float](repeating: 0, count: 64 * 64)
        func status(_ ta: Int32, _ tb: Int32, _ m: Int32, _ n: Int32, _ k: Int32) -> Int32 {
            lk_narrow_sgemm(ta, tb, m, n, k, 1, a, 64, b, 64, 0, &c, 64)
        }
        for (ta, tb, m, n, k) in [(0, 1, 64, 16, 64), (0, 0, 64, 8, 64), (1, 0, 16, 64, 64), (0, 0, 64, 64, 16),
                                  (0, 1, 64, 64, 1)] as [(Int32, Int32, Int32, Int32, Int32)] {
            XCTAssertEqual(status(ta, tb, m, n, k), 0, "taken: transA \(ta) transB \(tb) \(m)×\(n)×\(k)")
        }
        for (ta, tb, m, n, k) in [(0, 0, 64, 17, 64), (1, 1, 8, 64, 64), (1, 0, 17, 64, 64), (1, 0, 64, 8, 64),
                                  (1, 1, 64, 64, 8), (0, 0, 17, 17, 17)] as [(Int32, Int32, Int32, Int32, Int32)] {
            XCTAssertNotEqual(status(ta, tb, m, n, k), 0, "refused: transA \(ta) transB \(tb) \(m)×\(n)×\(k)")
        }
        BLAS.narrowKernels = false
        defer { BLAS.narrowKernels = true }
        XCTAssertNotEqual(status(0, 1, 64, 16, 64), 0, "switched off")
    }

    /// Accumulating a second product into C (beta = 1) rounds as adding the two products formed apart: gradients
    /// accumulated over micro-batches in one process then equal, bit for bit, the same micro-batches on two MPI ranks
    /// summed. Checked on LoRA's shapes (dA = gᵀ·x and the other narrow ones) with whichever kernels run here.
    func testAccumulatingEqualsAddingProductsFormedApart() {
        var seed: UInt64 = 7
        func next() -> Float { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: seed) >> 40) / Float(1 << 23) }
        for (transA, m, n, k) in [(true, 8, 576, 1024), (true, 12, 100, 37), (false, 1024, 8, 576), (false, 300, 96, 8)] {
            let aCount = m * k, bCount = k * n
            let a1 = (0..<aCount).map { _ in next() }, a2 = (0..<aCount).map { _ in next() }, b1 = (0..<bCount).map { _ in next() }
            let b2 = (0..<bCount).map { _ in next() }
            let lda = transA ? m : k
            func product(_ a: [Float], _ b: [Float], into c: inout [Float], beta: Float) {
                Float.gemm(transA: transA, transB: false, m: m, n: n, k: k, alpha: 2, a: a, lda: lda, b: b, ldb: n, beta: beta, c: &c, ldc: n)
            }
            var accumulated = [Float](repeating: 0, count: m * n), first = accumulated, second = accumulated
            product(a1, b1, into: &accumulated, beta: 1)
            product(a2, b2, into: &accumulated, beta: 1)
            product(a1, b1, into: &first, beta: 0)
            product(a2, b2, into: &second, beta: 0)
            XCTAssertEqual(accumulated, zip(first, second).map { $0 + $1 }, "transA \(transA) \(m)×\(n)×\(k)")
        }
    }

    /// Products above `BLAS.splitThreshold` are split over the pool's threads into a grid of blocks of C, each part
    /// one single-threaded BLAS call: the parts together equal the reference, whatever the transposes, leading
    /// dimensions, grids (one-sided for most of these shapes; 2 × 2 and 3 × 2 for the last two) and uneven part
    /// sizes, and the BLAS's own threads stay at one.
    func testSplitProductsEqualTheReference() {
        defer { BLAS.setThreads(1) }
        let shapes = [(301, 200, 64), (100, 701, 40), (20, 2003, 100), (1000, 8, 576), (8, 1000, 576), (1000, 700, 8),
                      (512, 448, 16)]
        for (m, n, k) in shapes { XCTAssertGreaterThanOrEqual(m * n * k, BLAS.splitThreshold) }
        for threads in [4, 6] {
            BLAS.setThreads(threads)
            if let blasThreads = BLAS.currentThreads { XCTAssertEqual(blasThreads, 1) }
            checkAgainstReference(shapes)
        }
        for (m, n, parts, expected) in [(512, 448, 4, [2, 2, 256, 224]), (1000, 700, 6, [3, 2, 336, 352])] {
            let g = BLAS.grid(m: m, n: n, parts: parts)
            XCTAssertEqual([g.rows, g.columns, g.rowsPerPart, g.columnsPerPart], expected, "the products above were cut in two dimensions")
        }
    }

    /// The grid weighs a part's multiply-adds against the values it packs: with two threads a product is cut along
    /// its longer side, as a one-sided split would; with more, a product with N ≤ M (a feed-forward down projection)
    /// is cut both ways, one with few rows (LoRA's dA, a head's chunk) by columns only, a side shorter than 16 never.
    func testGridsBalanceWorkAndPacking() {
        func grid(_ m: Int, _ n: Int, _ parts: Int) -> String {
            let g = BLAS.grid(m: m, n: n, parts: parts)
            return "\(g.rows)x\(g.columns) \(g.rowsPerPart)x\(g.columnsPerPart)"
        }
        XCTAssertEqual(grid(1024, 896, 1), "1x1 1024x896")
        XCTAssertEqual(grid(1024, 896, 2), "2x1 512x896")
        XCTAssertEqual(grid(1024, 4864, 2), "1x2 1024x2432")
        XCTAssertEqual(grid(1024, 896, 4), "2x2 512x448")
        XCTAssertEqual(grid(1024, 896, 16), "4x4 256x224")
        XCTAssertEqual(grid(1024, 4864, 16), "2x8 512x608")
        XCTAssertEqual(grid(8, 4864, 16), "1x16 8x304")
        XCTAssertEqual(grid(1024, 8, 16), "16x1 64x8")
        XCTAssertEqual(grid(160, 49152, 4), "1x4 160x12288")
        XCTAssertEqual(grid(1024, 896, 7), "1x7 1024x128")
        // The blocks cover C, in whole tiles of 16 unless a block spans its side, for every part count up to 24.
        for (m, n) in [(1, 1), (17, 33), (301, 200), (1000, 8), (48, 4096)] {
            for parts in 1...24 {
                let g = BLAS.grid(m: m, n: n, parts: parts)
                XCTAssertEqual(g.rows * g.columns, parts)
                XCTAssertGreaterThanOrEqual(g.rowsPerPart * g.rows, m, "\(m)×\(n) in \(parts)")
                XCTAssertGreaterThanOrEqual(g.columnsPerPart * g.columns, n, "\(m)×\(n) in \(parts)")
                XCTAssertTrue(g.rowsPerPart % 16 == 0 || g.rowsPerPart == m, "\(m)×\(n) in \(parts)")
                XCTAssertTrue(g.columnsPerPart % 16 == 0 || g.columnsPerPart == n, "\(m)×\(n) in \(parts)")
            }
        }
    }

    /// The benchmark counters add every thread's operations but only the calling thread's time, so that products
    /// running on two threads at once (the attention's tiles) do not count their wall time twice.
    func testProductCountersAddOperationsFromEveryThreadAndWallTimeOnce() {
        Parallel.threads = 2
        defer { Parallel.threads = 1; BLAS.measureGEMM = false }
        let n = 96, a = [Float](repeating: 0.5, count: n * n)
        BLAS.measureGEMM = true
        BLAS.resetGEMMCounts()
        let start = DispatchTime.now().uptimeNanoseconds
        Parallel.run(parts: 2) { _ in
            var c = [Float](repeating: 0, count: n * n)
            for _ in 0..<20 {
                Float.gemm(transA: false, transB: false, m: n, n: n, k: n, alpha: 1, a: a, lda: n, b: a, ldb: n, beta: 0, c: &c, ldc: n)
            }
        }
        let wall = DispatchTime.now().uptimeNanoseconds - start
        XCTAssertEqual(BLAS.gemmOperations, UInt64(2 * 20 * 2 * n * n * n))
        XCTAssertGreaterThan(BLAS.gemmNanoseconds, 0)
        XCTAssertLessThanOrEqual(BLAS.gemmNanoseconds, wall)
    }

    func checkAgainstReference(_ shapes: [(Int, Int, Int)]) {
        var seed: UInt64 = 1
        func next() -> Float { seed = seed &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: seed) >> 40) / Float(1 << 23) }
        for (m, n, k) in shapes {
            for (transA, transB) in [(false, false), (false, true), (true, false), (true, true)] {
                for (alpha, beta): (Float, Float) in [(0.5, 2), (1, 0), (2, 1), (0.25, 0)] {
                    let lda = (transA ? m : k) + 3, ldb = (transB ? k : n) + 2, ldc = n + 5
                    let a = (0..<((transA ? k : m) * lda)).map { _ in next() }
                    let b = (0..<((transB ? n : k) * ldb)).map { _ in next() }
                    let c0 = (0..<(m * ldc)).map { _ in next() }
                    var c1 = c0, c2 = c0
                    Float.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda, b: b,
                               ldb: ldb, beta: beta, c: &c1, ldc: ldc)
                    ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                                       b: b, ldb: ldb, beta: beta, c: &c2, ldc: ldc)
                    // Float sums in any order differ by at most about (k + 2)·u·(|α|·Σ|a||b| + |β|·|c|) (u = 2⁻²⁴);
                    // a wrong element, index or transpose is off by far more.
                    var magnitude = [Float](repeating: 0, count: m * ldc)
                    ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: abs(alpha), a: a.map(abs),
                                       lda: lda, b: b.map(abs), ldb: ldb, beta: 0, c: &magnitude, ldc: ldc)
                    let u = Float(1) / Float(1 << 24)
                    for i in 0..<(m * ldc) where i % ldc < n {
                        let bound = Float(k + 2) * u * (magnitude[i] + abs(beta * c0[i])) + 1e-7
                        XCTAssertLessThanOrEqual(abs(c1[i] - c2[i]), bound, "\(m)×\(n)×\(k) transA \(transA) transB \(transB) beta \(beta), element \(i)")
                    }
                    XCTAssertNotEqual(c1, c0, "the product was written")
                    for i in 0..<(m * ldc) where i % ldc >= n && c1[i] != c0[i] {
                        XCTFail("\(m)×\(n)×\(k) transA \(transA) transB \(transB): element \(i) past the row's end was written")
                        break
                    }
                }
            }
        }
    }

}
