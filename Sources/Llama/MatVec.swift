import CKernels
import GGUF
import Kernels

/// How generation's per-token products treat activations. `.exact` multiplies the stored weight blocks with the
/// float activations (the default; equal to dequantize-then-dot up to summation order). `.int8` rounds each block
/// of 32 activations to 8 bits first and multiplies in integers, as llama.cpp does: faster on 4-, 5- and 8-bit
/// weights, at a small cost in perplexity (BENCHMARKS.md). Batched products (prompts, perplexity, training) are
/// exact either way.
public enum TokenActivations: String, Sendable, CaseIterable {
    case exact, int8
}

/// y = W·x for one token, reading the weight's blocks as the file stores them (no dequantized copy of the
/// matrix). F32, F16, BF16, Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K and Q6_K go through CKernels' vector kernels where the
/// CPU has them; otherwise (Q2_K, Q3_K, other CPUs) each row is dequantized into a small buffer and dotted with x.
///
/// With `.int8` activations, x is first rounded to 8 bits per block of 32 and multiplied in integers (llama.cpp's
/// way): y = W·x̂.
///
/// Shapes: W [rows, cols] (GGUF ne = [cols, rows]); x [cols]; y [rows].
enum MatVec {
    /// Makes the kernels' once-per-process choices now (whether to prefetch rows, measured on this CPU in about
    /// 0.1–0.3 s; which build of the exact kernels runs), so that they are not paid inside a prompt's or a token's time.
    static func prepare() {
        lk_decide_prefetching()
        _ = lk_matvec_avx512()
    }

    static func multiply(type: TensorType, data: UnsafeRawBufferPointer, rows: Int, cols: Int,
                         x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, threads: Int,
                         activations: TokenActivations = .exact) {
        let rowBytes = cols / type.blockSize * type.blockBytes
        if activations == .int8 && cols % 32 == 0 {
            if lk_matvec_int8_supported(Int32(type.rawValue)) != 0 {
                if lk_threads() != threads { lk_set_threads(Int32(threads)) }
                lk_matvec_int8(Int32(type.rawValue), data.baseAddress!, rowBytes, Int32(rows), Int32(cols), x, y)
            } else {
                // No integer kernel for this type or CPU: the same numbers from the rounded activations in float.
                let rounded = roundedActivations(x, count: cols)
                multiply(type: type, data: data, rows: rows, cols: cols, x: rounded, y: y, threads: threads)
            }
            return
        }
        if lk_matvec_supported(Int32(type.rawValue)) != 0 && cols % 32 == 0 {
            if lk_threads() != threads { lk_set_threads(Int32(threads)) }
            lk_matvec(Int32(type.rawValue), data.baseAddress!, rowBytes, Int32(rows), Int32(cols), x, y)
            return
        }
        multiplyByDequantizedRows(type: type, data: data, rows: rows, cols: cols, x: x, y: y, threads: threads)
    }

    /// x̂: x rounded to 8 bits per block of 32 as the int8 kernels round it (count a multiple of 32).
    static func roundedActivations(_ x: UnsafePointer<Float>, count: Int) -> [Float] {
        var q = [Int8](repeating: 0, count: count), scales = [Float](repeating: 0, count: count / 32)
        var sums = [Float](repeating: 0, count: count / 16)
        lk_quantize_activations(x, Int32(count), &q, &scales, &sums)
        return (0..<count).map { scales[$0 / 32] * Float(q[$0]) }
    }

    /// The plain path (every type, every CPU), and the reference for the vector kernels: each row dequantized
    /// into a buffer, then dotted with x.
    static func multiplyByDequantizedRows(type: TensorType, data: UnsafeRawBufferPointer, rows: Int, cols: Int,
                                          x: UnsafePointer<Float>, y: UnsafeMutablePointer<Float>, threads: Int) {
        let rowBytes = cols / type.blockSize * type.blockBytes
        // Waking threads costs more than small products gain: only large matrices (the head) are split.
        let parts = rows * cols >= 1 << 22 ? max(1, min(threads, rows / 64)) : 1
        let per = (rows + parts - 1) / parts
        let body = { (part: Int) in
            let start = part * per, end = min(rows, start + per)
            guard start < end else { return }
            let buffer = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { buffer.deallocate() }
            for r in start..<end {
                let row = UnsafeRawBufferPointer(rebasing: data[(r * rowBytes)..<((r + 1) * rowBytes)])
                if type == .f32 {
                    y[r] = VectorMath.dot(row.baseAddress!.assumingMemoryBound(to: Float.self), x, count: cols)
                } else {
                    Dequantize.fast(type, from: row, count: cols, into: buffer)
                    y[r] = VectorMath.dot(buffer, x, count: cols)
                }
            }
        }
        Parallel.run(parts: parts, body)
    }
}
