import CKernels

/// Splits work across threads: every parallel loop of the library (element-wise kernels, the BLAS's products split
/// by rows, a token's products and attention) runs on one pool (CKernels' threadpool.c), whose workers spin
/// between jobs: a second pool, or the BLAS's own threads, spinning beside it would take turns on the same cores.
public enum Parallel {
    /// Threads of the pool, the caller included; `BLAS.setThreads` sets it.
    @inlinable
    public static var threads: Int {
        get { Int(lk_threads()) }
        set { lk_set_threads(Int32(max(1, newValue))) }
    }

    /// Calls `body` on disjoint ranges covering 0..<count, in parallel when the work is large enough.
    @inlinable
    public static func forEachRange(_ count: Int, minimumPerThread: Int = 4096, _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, count / max(1, minimumPerThread)))
        if parts == 1 { body(0..<count); return }
        let per = (count + parts - 1) / parts
        run(parts: parts) { p in
            let start = p * per, end = min(count, start + per)
            if start < end { body(start..<end) }
        }
    }

    /// Runs `body(part)` for part in 0..<parts on the pool and returns when all are done. A call from inside a part
    /// (or from another thread while a job runs) runs its parts itself, in order.
    @inlinable
    public static func run(parts: Int, _ body: (Int) -> Void) {
        if parts <= 1 {
            if parts == 1 { body(0) }
            return
        }
        withoutActuallyEscaping(body) { body in
            var job = body
            withUnsafeMutablePointer(to: &job) { pointer in
                lk_parallel_for(Int32(parts), { context, part in
                    context!.assumingMemoryBound(to: ((Int) -> Void).self).pointee(Int(part))
                }, pointer)
            }
        }
    }
}
