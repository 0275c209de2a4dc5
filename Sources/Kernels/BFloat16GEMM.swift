import CKernels
#if canImport(Glibc)
import Glibc
#endif

/// Matrix products with bfloat16 operands and float32 accumulation, on the CPU's bf16 instructions (AVX512-BF16,
/// AMX) through oneDNN 2.x, loaded at run time like the BLAS (Debian: `libdnnl2`). Where oneDNN is missing or has
/// no bf16 kernel for the CPU, `isAvailable` is false and `unavailableReason` says why; callers then compute in
/// float32.
///
/// The reference is a float32 product of the operands rounded to bf16 (`BFloat16GEMM.referenceGEMM`): both add
/// exact products of bf16 values in float32 and differ only in the order of the additions.
public enum BFloat16GEMM {
    /// Set to make bf16 products unavailable in this process, as on a CPU without them (tests, comparisons).
    /// `LORAKIT_BF16=off` in the environment does the same.
    nonisolated(unsafe) public static var disabled = getenv("LORAKIT_BF16").map { String(cString: $0) == "off" } ?? false

    /// Whether bf16 products run here (on this CPU's bf16 instructions).
    public static var isAvailable: Bool { !disabled && lk_bf16_gemm_available() != 0 }

    /// What computes them ("oneDNN 2.6.3"), or nil when unavailable.
    public static var engine: String? { isAvailable ? String(cString: lk_bf16_gemm_description()) : nil }

    /// Why bf16 products do not run here, or nil when they do.
    public static var unavailableReason: String? {
        if disabled { return "bf16 products are turned off (LORAKIT_BF16=off)" }
        return lk_bf16_gemm_available() != 0 ? nil : String(cString: lk_bf16_gemm_description())
    }

    /// `values` rounded to bf16 bit patterns (round to nearest even, NaN kept), on all threads.
    public static func rounded(_ values: UnsafePointer<Float>, count: Int) -> [UInt16] {
        [UInt16](unsafeUninitializedCapacity: count) { out, initialized in
            round(values, count: count, into: out.baseAddress!)
            initialized = count
        }
    }

    public static func round(_ values: UnsafePointer<Float>, count: Int, into out: UnsafeMutablePointer<UInt16>) {
        Parallel.forEachRange(count, minimumPerThread: 1 << 16) { part in
            lk_float_to_bf16(values + part.lowerBound, out + part.lowerBound, part.count)
        }
    }

    public static func rounded(_ values: [Float]) -> [UInt16] {
        values.withUnsafeBufferPointer { rounded($0.baseAddress!, count: $0.count) }
    }

    /// C [M, N] = op(A)·op(B) (+ C when `accumulate`), row-major; A and B are bf16, C float32. Large products are
    /// split over `Parallel`'s pool like the float32 ones. Requires `isAvailable`.
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int,
                            a: UnsafePointer<UInt16>, lda: Int, b: UnsafePointer<UInt16>, ldb: Int,
                            accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        let start = BLAS.measureGEMM ? BLAS.now() : 0
        defer { BLAS.count(since: start, transA: transA, transB: transB, m: m, n: n, k: k) }
        BLAS.forEachPart(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc) { p in
            let status = lk_bf16_gemm(transA ? 1 : 0, transB ? 1 : 0, Int32(p.m), Int32(p.n), Int32(k), a + p.a, Int32(lda),
                                      b + p.b, Int32(ldb), accumulate ? 1 : 0, c + p.c, Int32(ldc))
            // oneDNN refusing a product (out of memory for a new kernel) costs speed, not the run: the same numbers
            // in float32 on the widened operands.
            if status != 0 {
                referenceGEMM(transA: transA, transB: transB, m: p.m, n: p.n, k: k, a: a + p.a, lda: lda, b: b + p.b, ldb: ldb,
                            accumulate: accumulate, c: c + p.c, ldc: ldc)
            }
        }
    }

    /// Whether small products on rounded operands (`gemmOnRoundedOperands`: attention's tiles) run on the CPU's
    /// AVX512-BF16 kernel of ours; on where the CPU has it, unless `LORAKIT_AVX512=off`. Off, they run in float32 on
    /// rounded copies (the same numbers, added in another order); so they do while `disabled`, as on a CPU without
    /// bf16 instructions.
    public static var tileKernels: Bool {
        get { !disabled && lk_bf16_tiles_enabled() != 0 }
        set { lk_set_bf16_tiles(newValue ? 1 : 0) }
    }
    public static var tileKernelsSupported: Bool { lk_bf16_tiles_supported() != 0 }

    /// `values` rounded to bf16 and widened back (round to nearest even, NaN kept), on all threads: the numbers a
    /// bf16 product multiplies, for computing it in float32.
    public static func roundedValues<T: KernelScalar>(_ values: UnsafePointer<T>, count: Int) -> [T] {
        [T](unsafeUninitializedCapacity: count) { out, initialized in
            Parallel.forEachRange(count, minimumPerThread: 1 << 16) { part in
                var bits = [UInt16](repeating: 0, count: part.count)
                if T.self == Float.self {
                    lk_float_to_bf16(UnsafeRawPointer(values + part.lowerBound).assumingMemoryBound(to: Float.self), &bits, part.count)
                } else {
                    let floats = part.map { Float(values[$0]) }
                    lk_float_to_bf16(floats, &bits, part.count)
                }
                for (i, b) in zip(part, bits) { out[i] = T(Float(bitPattern: UInt32(b) << 16)) }
            }
            initialized = count
        }
    }

    /// C [M, N] = alpha·op(A)·op(B) + beta·C (beta 0 or 1) on float operands rounded to bf16, float32 accumulation:
    /// on the CPU's AVX512-BF16 for small products (attention's tiles; `bf16_tiles.c`) where it has it, else the
    /// same numbers in T on rounded copies. Runs on the calling thread.
    public static func gemmOnRoundedOperands<T: KernelScalar>(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: T,
                                                             a: UnsafePointer<T>, lda: Int, b: UnsafePointer<T>, ldb: Int,
                                                             beta: T, c: UnsafeMutablePointer<T>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        precondition(beta == 0 || beta == 1, "bf16 products add into C or overwrite it")
        guard k > 0 else {  // an empty sum: C stays, or becomes 0
            if beta == 0 { for i in 0..<m { (c + i * ldc).update(repeating: 0, count: n) } }
            return
        }
        if T.self == Float.self, !disabled {
            let start = BLAS.measureGEMM ? BLAS.now() : 0
            func float(_ p: UnsafePointer<T>) -> UnsafePointer<Float> { UnsafeRawPointer(p).assumingMemoryBound(to: Float.self) }
            if lk_bf16_tile_gemm(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), Float(alpha), float(a), Int32(lda),
                                 float(b), Int32(ldb), beta == 1 ? 1 : 0,
                                 UnsafeMutableRawPointer(c).assumingMemoryBound(to: Float.self), Int32(ldc)) == 0 {
                BLAS.count(since: start, transA: transA, transB: transB, m: m, n: n, k: k)
                return
            }
        }
        // The last row of a strided operand ends at its last column.
        func extent(rows: Int, cols: Int, ld: Int) -> Int { (rows - 1) * ld + cols }
        let ra = roundedValues(a, count: transA ? extent(rows: k, cols: m, ld: lda) : extent(rows: m, cols: k, ld: lda))
        let rb = roundedValues(b, count: transB ? extent(rows: n, cols: k, ld: ldb) : extent(rows: k, cols: n, ld: ldb))
        T.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: ra, lda: lda, b: rb, ldb: ldb,
               beta: beta, c: c, ldc: ldc)
    }

    /// The reference, and the fallback when oneDNN refuses a product: the same product in float32 on the bf16
    /// operands widened (exactly), through the BLAS.
    public static func referenceGEMM(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, a: UnsafePointer<UInt16>, lda: Int,
                            b: UnsafePointer<UInt16>, ldb: Int, accumulate: Bool, c: UnsafeMutablePointer<Float>, ldc: Int) {
        func widened(_ p: UnsafePointer<UInt16>, rows: Int, cols: Int, ld: Int) -> [Float] {
            (0..<(rows * ld)).map { $0 % ld < cols ? Float(bitPattern: UInt32(p[$0]) << 16) : 0 }
        }
        let wa = widened(a, rows: transA ? k : m, cols: transA ? m : k, ld: lda)
        let wb = widened(b, rows: transB ? n : k, cols: transB ? k : n, ld: ldb)
        Float.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: 1, a: wa, lda: lda, b: wb, ldb: ldb,
                   beta: accumulate ? 1 : 0, c: c, ldc: ldc)
    }

}

extension BFloat16GEMM {
    /// GFLOP/s of one M×N×K product (x·Wᵀ) in bf16, rounding of x included, and in float32, on the calling thread
    /// with the pool's threads: the best of a few runs each. For choosing between them (`auto`); requires `isAvailable`.
    public static func compareWithFloat32(m: Int, n: Int, k: Int) -> (bf16: Double, float32: Double) {
        var rng = UInt64(0x9E3779B97F4A7C15)
        func value() -> Float { rng = rng &* 6364136223846793005 &+ 1442695040888963407; return Float(Int64(bitPattern: rng >> 11) % 2001 - 1000) / 1000 }
        let x = (0..<(m * k)).map { _ in value() }, w = (0..<(n * k)).map { _ in value() }
        let wBits = rounded(w)
        var c = [Float](repeating: 0, count: m * n)
        func best(_ body: () -> Void) -> Double {
            var fastest = UInt64.max
            for _ in 0..<4 {
                let start = BLAS.now()
                body()
                fastest = min(fastest, BLAS.now() - start)
            }
            return 2 * Double(m * n * k) / Double(max(1, fastest))
        }
        let bf16 = best {
            let xBits = rounded(x)
            gemm(transA: false, transB: true, m: m, n: n, k: k, a: xBits, lda: k, b: wBits, ldb: k, accumulate: false, c: &c, ldc: n)
        }
        let float32 = best {
            Float.gemm(transA: false, transB: true, m: m, n: n, k: k, alpha: 1, a: x, lda: k, b: w, ldb: k, beta: 0, c: &c, ldc: n)
        }
        return (bf16, float32)
    }
}
