import CKernels

#if canImport(Glibc)
import Glibc
@usableFromInline enum LibM {
    @usableFromInline static func exp(_ x: Double) -> Double { Glibc.exp(x) }
    @usableFromInline static func log(_ x: Double) -> Double { Glibc.log(x) }
    @usableFromInline static func cos(_ x: Double) -> Double { Glibc.cos(x) }
    @usableFromInline static func sin(_ x: Double) -> Double { Glibc.sin(x) }
    @usableFromInline static func pow(_ x: Double, _ y: Double) -> Double { Glibc.pow(x, y) }
    @usableFromInline static func tanh(_ x: Double) -> Double { Glibc.tanh(x) }
}
#elseif canImport(Darwin)
import Darwin
@usableFromInline enum LibM {
    @usableFromInline static func exp(_ x: Double) -> Double { Darwin.exp(x) }
    @usableFromInline static func log(_ x: Double) -> Double { Darwin.log(x) }
    @usableFromInline static func cos(_ x: Double) -> Double { Darwin.cos(x) }
    @usableFromInline static func sin(_ x: Double) -> Double { Darwin.sin(x) }
    @usableFromInline static func pow(_ x: Double, _ y: Double) -> Double { Darwin.pow(x, y) }
    @usableFromInline static func tanh(_ x: Double) -> Double { Darwin.tanh(x) }
}
#endif

/// Matrix products through the system BLAS (OpenBLAS on Linux, Accelerate on Apple platforms), loaded at run
/// time so that the library can choose OpenBLAS's kernels before OpenBLAS initializes.
///
/// Debian's OpenBLAS 0.3.21 does not recognize recent CPUs and silently falls back to its slow generic
/// `Prescott` kernels. OpenBLAS reads `OPENBLAS_CORETYPE` once, when it loads; because we load it ourselves,
/// we can choose first: `SkylakeX` (AVX-512) or `Haswell` (AVX2) from the CPU's flags. An `OPENBLAS_CORETYPE`
/// inherited from the environment is kept unless it names older kernels than the CPU runs (machines often pin
/// `Haswell` so that every program avoids `Prescott`; AVX-512 CPUs run `SkylakeX` up to 1.4× faster).
/// `LORAKIT_BLAS_CORETYPE` decides outright. Without a BLAS the plain Swift reference GEMM is used.
public enum BLAS {
    typealias SgemmFunction = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Float,
                                              UnsafePointer<Float>?, Int32, UnsafePointer<Float>?, Int32, Float,
                                              UnsafeMutablePointer<Float>?, Int32) -> Void
    typealias DgemmFunction = @convention(c) (Int32, Int32, Int32, Int32, Int32, Int32, Double,
                                              UnsafePointer<Double>?, Int32, UnsafePointer<Double>?, Int32, Double,
                                              UnsafeMutablePointer<Double>?, Int32) -> Void
    typealias SetThreadsFunction = @convention(c) (Int32) -> Void
    typealias GetThreadsFunction = @convention(c) () -> Int32
    typealias CoreNameFunction = @convention(c) () -> UnsafeMutablePointer<CChar>?

    struct Library {
        var sgemm: SgemmFunction?
        var dgemm: DgemmFunction?
        var setThreads: SetThreadsFunction?
        var getThreads: GetThreadsFunction?
        var coreName: CoreNameFunction?
        var path: String?
        var inheritedCoreType: String?
    }

    nonisolated(unsafe) static var library: Library = load()

    /// The loaded BLAS library, or nil when the Swift reference GEMM is used.
    public static var libraryPath: String? { library.path }

    /// OpenBLAS's name for the kernels it chose (`SkylakeX`, `Haswell`, `Prescott`, …), when known.
    public static var coreName: String? {
        guard let f = library.coreName, let name = f() else { return nil }
        return String(cString: name)
    }

    /// OPENBLAS_CORETYPE as the process found it (and as child processes still see it).
    public static var inheritedCoreType: String? { library.inheritedCoreType }

    /// The core type to ask OpenBLAS for on this CPU, or nil to let it decide.
    public static func preferredCoreType(cpuInfo: String) -> String? {
        let flags = Set(cpuInfo.split(whereSeparator: { $0 == " " || $0 == "\n" || $0 == "\t" }).map(String.init))
        if ["avx512f", "avx512bw", "avx512vl", "avx512dq"].allSatisfy(flags.contains) { return "SkylakeX" }
        if flags.contains("avx2") && flags.contains("fma") { return "Haswell" }
        return nil
    }

    /// x86 kernel families OpenBLAS can be asked for, oldest first.
    static let coreGenerations = ["prescott", "core2", "penryn", "dunnington", "nehalem", "sandybridge", "haswell",
                                  "zen", "skylakex"]

    /// The core type to load OpenBLAS with: `explicit` (LORAKIT_BLAS_CORETYPE) wins; an `inherited`
    /// OPENBLAS_CORETYPE stays unless it is an older generation than `preferred`.
    public static func chooseCoreType(explicit: String?, inherited: String?, preferred: String?) -> String? {
        if let explicit, !explicit.isEmpty { return explicit }
        guard let preferred else { return inherited }
        guard let inherited, !inherited.isEmpty else { return preferred }
        guard let old = coreGenerations.firstIndex(of: inherited.lowercased()),
              let new = coreGenerations.firstIndex(of: preferred.lowercased()) else { return inherited }
        return old < new ? preferred : inherited
    }

    static func readCPUInfo() -> String {
        guard let f = fopen("/proc/cpuinfo", "r") else { return "" }
        defer { fclose(f) }
        var text = ""
        var line = [CChar](repeating: 0, count: 4096)
        var lines = 0
        while fgets(&line, Int32(line.count), f) != nil, lines < 64 {  // the first CPU's block is enough
            let s = String(cString: line)
            text += s
            lines += 1
            if s == "\n" { break }
        }
        return text
    }

    static func load() -> Library {
        var lib = Library()
        #if os(Linux)
        // Set for OpenBLAS's constructor only; child processes see the environment as it was.
        let inherited = getenv("OPENBLAS_CORETYPE").map { String(cString: $0) }
        lib.inheritedCoreType = inherited
        let chosen = chooseCoreType(explicit: getenv("LORAKIT_BLAS_CORETYPE").map { String(cString: $0) },
                                    inherited: inherited, preferred: preferredCoreType(cpuInfo: readCPUInfo()))
        if let chosen { setenv("OPENBLAS_CORETYPE", chosen, 1) }
        defer {
            if let inherited { setenv("OPENBLAS_CORETYPE", inherited, 1) } else { unsetenv("OPENBLAS_CORETYPE") }
        }
        let candidates = ["libopenblas.so.0", "libopenblas.so", "libblas.so.3"]
        #else
        let candidates = ["/System/Library/Frameworks/Accelerate.framework/Accelerate"]
        #endif
        for path in candidates {
            guard let handle = dlopen(path, RTLD_NOW | RTLD_LOCAL), let s = dlsym(handle, "cblas_sgemm") else { continue }
            lib.sgemm = unsafeBitCast(s, to: SgemmFunction.self)
            lib.dgemm = dlsym(handle, "cblas_dgemm").map { unsafeBitCast($0, to: DgemmFunction.self) }
            lib.setThreads = dlsym(handle, "openblas_set_num_threads").map { unsafeBitCast($0, to: SetThreadsFunction.self) }
            lib.getThreads = dlsym(handle, "openblas_get_num_threads").map { unsafeBitCast($0, to: GetThreadsFunction.self) }
            lib.coreName = dlsym(handle, "openblas_get_corename").map { unsafeBitCast($0, to: CoreNameFunction.self) }
            lib.path = path
            break
        }
        return lib
    }

    /// Threads for products and element-wise work. Large products are cut into blocks over `Parallel`'s pool, one
    /// single-threaded BLAS call per block, so the BLAS's own threads stay at one: they would spin between products
    /// while the pool runs the element-wise work, two spinning pools taking turns on the same cores (measured 3×
    /// slower with both; BENCHMARKS.md).
    public static func setThreads(_ n: Int) {
        library.setThreads?(1)
        Parallel.threads = max(1, n)
    }

    /// The threads the BLAS's own products use (one), when the library says (OpenBLAS).
    public static var currentThreads: Int? { library.getThreads.map { Int($0()) } }

    /// Products with a side of at most this many (LoRA's: x·Aᵀ, dy·B, dA, dBᵀ, u·Bᵀ, (dy·B)·A) run in kernels of
    /// our own where the CPU has AVX-512 (narrow_gemm.c): they stream the long operand once, row after row, where
    /// a BLAS packs it first. In a one-thread SmolLM2 step they took 0.31–0.40 s against OpenBLAS's 0.51–0.60 (level
    /// with two threads, where the two share the memory's bandwidth; BENCHMARKS.md). `narrowKernels = false` runs
    /// them in the BLAS, to measure against it.
    public static let narrowSide = 16
    public static var narrowKernels: Bool {
        get { lk_narrow_sgemm_enabled() != 0 }
        set { lk_set_narrow_sgemm(newValue ? 1 : 0) }
    }
    /// Whether the CPU has what the narrow kernels need (AVX-512), whether or not they are switched on.
    public static var narrowKernelsSupported: Bool { lk_narrow_sgemm_supported() != 0 }
    /// Where LoRA's products run, in words (for plans and benchmarks).
    public static var narrowProductsDescription: String {
        narrowKernels ? "AVX-512 kernels" : library.sgemm != nil ? "the BLAS" : "the Swift reference GEMM"
    }

    /// Products below this many multiply-adds run whole on the calling thread (a part must outweigh waking a thread).
    public static let splitThreshold = 1 << 21

    /// The parts to split an M×N×K product into: one unless it is large and the pool has threads.
    @inlinable
    static func parts(m: Int, n: Int, k: Int) -> Int {
        m * n * k >= splitThreshold ? Parallel.threads : 1
    }

    /// When set, every Float product adds its time to `gemmNanoseconds` and its 2·M·N·K floating-point operations to
    /// `gemmOperations` (for benchmarks). Products that run inside a parallel job on several threads at once (the
    /// attention's tiles) add the time of the calling thread only, so the total stays wall time.
    nonisolated(unsafe) public static var measureGEMM = false
    /// When set with `measureGEMM`, products are also totalled by shape (`shapeTotals`).
    nonisolated(unsafe) public static var measureShapes = false
    /// Calls and time by product shape since the last reset, most time first.
    public static var shapeTotals: [lk_shape_total] {
        var totals = [lk_shape_total](repeating: lk_shape_total(), count: Int(LK_SHAPE_SLOTS))
        let count = Int(lk_shape_totals(&totals, Int32(totals.count)))
        return totals.prefix(count).sorted { $0.nanoseconds > $1.nanoseconds }
    }
    public static var gemmNanoseconds: UInt64 { lk_counted_nanoseconds() }
    public static var gemmOperations: UInt64 { lk_counted_operations() }
    public static func resetGEMMCounts() { lk_reset_counts() }

    /// Adds a product that started at `start` to the counts, when measuring (`measureGEMM`, `measureShapes`).
    static func count(since start: UInt64, transA: Bool, transB: Bool, m: Int, n: Int, k: Int) {
        guard measureGEMM else { return }
        let elapsed = now() - start
        lk_count_product(UInt64(2 * m * n * k), elapsed)
        if measureShapes { lk_count_shape(transA ? 1 : 0, transB ? 1 : 0, Int32(m), Int32(n), Int32(k), elapsed) }
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }

    /// One part of a split product: its rows and columns of C, and where its A, B and C start (in elements).
    public struct Part { public var m: Int, n: Int, a: Int, b: Int, c: Int }

    /// Runs an M×N×K product as parts over `Parallel`'s pool (one part on the calling thread when it is small): a
    /// grid of blocks of C (`grid`), each part one single-threaded call on its rows of op(A) and columns of op(B).
    public static func forEachPart(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, lda: Int, ldb: Int, ldc: Int,
                                   _ body: (Part) -> Void) {
        let parts = parts(m: m, n: n, k: k)
        if parts == 1 { body(Part(m: m, n: n, a: 0, b: 0, c: 0)); return }
        let g = grid(m: m, n: n, parts: parts)
        Parallel.run(parts: g.rows * g.columns) { p in
            let row = p / g.columns * g.rowsPerPart, column = p % g.columns * g.columnsPerPart
            let rows = min(m, row + g.rowsPerPart) - row, columns = min(n, column + g.columnsPerPart) - column
            guard rows > 0, columns > 0 else { return }
            body(Part(m: rows, n: columns, a: transA ? row : row * lda, b: transB ? column * ldb : column,
                      c: row * ldc + column))
        }
    }

    /// How a split product's C [M, N] is cut: `rows` × `columns` blocks of `rowsPerPart` × `columnsPerPart`
    /// (whole multiples of 16 unless a block spans its side, so that the parts keep the kernels' full tiles; the
    /// last block of each side shorter, and empty where 16-row blocks run out first).
    public struct Grid: Equatable {
        public var rows: Int, columns: Int, rowsPerPart: Int, columnsPerPart: Int
    }

    /// The grid for `parts` threads: of the factor pairs rows × columns = parts, the one whose largest part takes
    /// least. A part of r × c (of M × N × K) does r·c·K multiply-adds and packs its rows of op(A) and its columns of
    /// op(B) whole, (r + c)·K values; a packed value costs about `packingCost` multiply-adds' time. Cutting one side
    /// only (by rows, every thread packing the whole of op(B)) costs more the more threads there are: one thread's
    /// sixteenth of a 1024 × 896 × 4864 product (a feed-forward down projection) runs at 99 GFLOP/s cut 4 × 4
    /// against 88 cut by rows (`lorakit-bench split`, BENCHMARKS.md). With two threads the grid is the cut along
    /// the longer side.
    public static func grid(m: Int, n: Int, parts: Int) -> Grid {
        func block(_ extent: Int, _ count: Int) -> Int { min(extent, ((extent + count - 1) / count + 15) / 16 * 16) }
        var best = Grid(rows: 1, columns: 1, rowsPerPart: m, columnsPerPart: n), bestCost = Int.max
        for rows in 1...max(1, parts) where parts % rows == 0 {
            let columns = parts / rows, r = block(m, rows), c = block(n, columns)
            let cost = r * c + packingCost * (r + c)
            if cost < bestCost {
                best = Grid(rows: rows, columns: columns, rowsPerPart: r, columnsPerPart: c)
                bestCost = cost
            }
        }
        return best
    }

    /// The time of packing one value of a product's operand, in multiply-adds: a sixteenth of 1024 × 896 × 4864 cut
    /// by rows (64 × 896, packing 960 values per step of K for 57 344 multiply-adds) runs at 88 GFLOP/s where the whole
    /// product runs at 105, 0.2 ns more per step of K, as long as about 12 × 960 multiply-adds.
    static let packingCost = 12

    static let rowMajor: Int32 = 101
    static func op(_ transposed: Bool) -> Int32 { transposed ? 112 : 111 }
}

/// Element types the kernels compute in: Float for real work, Double for gradient checks.
public protocol KernelScalar: BinaryFloatingPoint, SIMDScalar, Sendable, Codable {
    /// C = alpha · op(A) · op(B) + beta · C, row-major; op(A) is M×K, op(B) is K×N.
    static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Self,
                     a: UnsafePointer<Self>, lda: Int, b: UnsafePointer<Self>, ldb: Int,
                     beta: Self, c: UnsafeMutablePointer<Self>, ldc: Int)
    func squareRoot() -> Self
    static func exp(_ x: Self) -> Self
    static func log(_ x: Self) -> Self
    static func cos(_ x: Self) -> Self
    static func sin(_ x: Self) -> Self
    static func pow(_ x: Self, _ y: Self) -> Self
    static func tanh(_ x: Self) -> Self
}

extension Float: KernelScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Float,
                            a: UnsafePointer<Float>, lda: Int, b: UnsafePointer<Float>, ldb: Int,
                            beta: Float, c: UnsafeMutablePointer<Float>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        let start = BLAS.measureGEMM ? BLAS.now() : 0
        defer { BLAS.count(since: start, transA: transA, transB: transB, m: m, n: n, k: k) }
        let narrow = BLAS.narrowKernels && (beta == 0 || beta == 1) && min(m, n, k) <= BLAS.narrowSide
        guard narrow || BLAS.library.sgemm != nil else {
            ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                               b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
            return
        }
        BLAS.forEachPart(transA: transA, transB: transB, m: m, n: n, k: k, lda: lda, ldb: ldb, ldc: ldc) { p in
            if narrow, lk_narrow_sgemm(transA ? 1 : 0, transB ? 1 : 0, Int32(p.m), Int32(p.n), Int32(k), alpha, a + p.a,
                                       Int32(lda), b + p.b, Int32(ldb), beta == 1 ? 1 : 0, c + p.c, Int32(ldc)) == 0 {
                return
            }
            if let f = BLAS.library.sgemm {
                f(BLAS.rowMajor, BLAS.op(transA), BLAS.op(transB), Int32(p.m), Int32(p.n), Int32(k), alpha, a + p.a,
                  Int32(lda), b + p.b, Int32(ldb), beta, c + p.c, Int32(ldc))
            } else {
                ReferenceGEMM.gemm(transA: transA, transB: transB, m: p.m, n: p.n, k: k, alpha: alpha, a: a + p.a,
                                   lda: lda, b: b + p.b, ldb: ldb, beta: beta, c: c + p.c, ldc: ldc)
            }
        }
    }
    public static func exp(_ x: Float) -> Float { expf(x) }
    public static func log(_ x: Float) -> Float { logf(x) }
    public static func cos(_ x: Float) -> Float { cosf(x) }
    public static func sin(_ x: Float) -> Float { sinf(x) }
    public static func pow(_ x: Float, _ y: Float) -> Float { powf(x, y) }
    public static func tanh(_ x: Float) -> Float { tanhf(x) }
}

extension Double: KernelScalar {
    public static func gemm(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: Double,
                            a: UnsafePointer<Double>, lda: Int, b: UnsafePointer<Double>, ldb: Int,
                            beta: Double, c: UnsafeMutablePointer<Double>, ldc: Int) {
        guard m > 0, n > 0 else { return }
        if let f = BLAS.library.dgemm {
            f(BLAS.rowMajor, BLAS.op(transA), BLAS.op(transB), Int32(m), Int32(n), Int32(k), alpha, a, Int32(lda),
              b, Int32(ldb), beta, c, Int32(ldc))
        } else {
            ReferenceGEMM.gemm(transA: transA, transB: transB, m: m, n: n, k: k, alpha: alpha, a: a, lda: lda,
                               b: b, ldb: ldb, beta: beta, c: c, ldc: ldc)
        }
    }
    public static func exp(_ x: Double) -> Double { LibM.exp(x) }
    public static func log(_ x: Double) -> Double { LibM.log(x) }
    public static func cos(_ x: Double) -> Double { LibM.cos(x) }
    public static func sin(_ x: Double) -> Double { LibM.sin(x) }
    public static func pow(_ x: Double, _ y: Double) -> Double { LibM.pow(x, y) }
    public static func tanh(_ x: Double) -> Double { LibM.tanh(x) }
}

/// The plain triple loop, the reference the BLAS path is tested against (and the fallback without a BLAS).
public enum ReferenceGEMM {
    public static func gemm<T: BinaryFloatingPoint>(transA: Bool, transB: Bool, m: Int, n: Int, k: Int, alpha: T,
                                                   a: UnsafePointer<T>, lda: Int, b: UnsafePointer<T>, ldb: Int,
                                                   beta: T, c: UnsafeMutablePointer<T>, ldc: Int) {
        for i in 0..<m {
            for j in 0..<n {
                var sum: T = 0
                for p in 0..<k {
                    let x = transA ? a[p * lda + i] : a[i * lda + p]
                    let y = transB ? b[j * ldb + p] : b[p * ldb + j]
                    sum += x * y
                }
                c[i * ldc + j] = alpha * sum + (beta == 0 ? 0 : beta * c[i * ldc + j])
            }
        }
    }
}
