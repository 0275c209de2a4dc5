import CKernels
import Dispatch

/// Splits element-wise work across threads (the BLAS runs its own threads for products).
public enum Parallel {
    /// Threads for element-wise kernels; `BLAS.setThreads` sets it too.
    nonisolated(unsafe) public static var threads = 1

    /// Calls `body` on disjoint ranges covering 0..<count, in parallel when the work is large enough.
    @inlinable
    public static func forEachRange(_ count: Int, minimumPerThread: Int = 4096, _ body: (Range<Int>) -> Void) {
        let parts = max(1, min(threads, count / max(1, minimumPerThread)))
        if parts == 1 { body(0..<count); return }
        let per = (count + parts - 1) / parts
        DispatchQueue.concurrentPerform(iterations: parts) { p in
            let start = p * per, end = min(count, start + per)
            if start < end { body(start..<end) }
        }
    }
}

extension Parallel {
    /// Threads of the per-token pool (CKernels' `lk_set_threads`, set by generation's products).
    @inlinable
    public static var tokenPoolThreads: Int { Int(lk_threads()) }

    /// Runs `body(part)` for part in 0..<parts on the per-token pool, whose workers spin between a token's products:
    /// for work of microseconds, where waking dispatch threads would cost more than the work.
    @inlinable
    public static func onTokenPool(parts: Int, _ body: (Int) -> Void) {
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
