#ifndef LORAKIT_CKERNELS_H
#define LORAKIT_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

/// Matrix-vector products that read GGUF's quantized blocks directly (generation's per-token path), and the
/// small thread pool that splits them.
///
/// Shapes: W [rows, cols], `row_bytes` bytes per row as the file stores it; x [cols]; y [rows].
/// Types use GGUF's numbering: 0 F32, 1 F16, 2 Q4_0, 3 Q4_1, 6 Q5_0, 7 Q5_1, 8 Q8_0, 12 Q4_K, 13 Q5_K, 14 Q6_K,
/// 30 BF16.

/// 1 when `type` has a vector kernel on this CPU (AVX2 + FMA + F16C); otherwise the caller dequantizes rows.
int lk_matvec_supported(int type);

/// y = W·x with the vector kernel (the CPU must support it), rows split across the pool's threads.
void lk_matvec(int type, const void *data, size_t row_bytes, int rows, int cols, const float *x, float *y);
/// Whether lk_matvec runs its kernels' AVX-512 build (the same source compiled with AVX-512 available; same
/// results up to summation order): chosen on the first product when the CPU has AVX512F/BW/VL/DQ, unless
/// LORAKIT_AVX512=off. lk_set_matvec_avx512 overrides (on is ignored on a CPU without AVX-512).
int lk_matvec_avx512(void);
void lk_set_matvec_avx512(int on);
/// 1 where the AVX-512 build can run (the CPU has AVX512F/BW/VL/DQ), whatever is chosen.
int lk_matvec_avx512_supported(void);

/// The same product with x rounded to 8 bits per block of 32 first (llama.cpp's activation rounding), multiplied
/// in integers: y = W·x̂, x̂ = d_b·q (lk_quantize_activations). Q4_0/1, Q5_0/1, Q8_0, Q4_K, Q5_K and Q6_K.
int lk_matvec_int8_supported(int type);
void lk_matvec_int8(int type, const void *data, size_t row_bytes, int rows, int cols, const float *x, float *y);

/// Rows [row_begin, row_end) of W·x̂ from x's rounded form, on the calling thread.
void lk_matvec_int8_rows(int type, const void *data, size_t row_bytes, int cols, const int8_t *q, const float *scales,
                         const float *half_sums, float *y, int row_begin, int row_end);

/// Whether the per-token kernels (lk_matvec, lk_matvec_int8) ask for the rows ahead of the one they compute. Decided
/// once per process, before the first product: LORAKIT_PREFETCH=on|off when set, else by timing a product over a
/// matrix twice the size of the last-level cache both ways (some CPUs' hardware prefetch crosses pages well, others'
/// does not). lk_prefetch_timings gives the seconds measured (0 when not measured); lk_set_prefetching overrides.
void lk_decide_prefetching(void);
int lk_prefetching(void);
void lk_set_prefetching(int on);
void lk_prefetch_timings(double *with_prefetch, double *without_prefetch);

/// x [cols] (a multiple of 32) as int8 q [cols] with scales[b] = max|x_b|/127 per block of 32 (x̂ = scales[b]·q,
/// q = round(x/scale)), and half_sums[2b + h] = scales[b]·Σ q over the block's half h (16 values).
void lk_quantize_activations(const float *x, int cols, int8_t *q, float *scales, float *half_sums);

/// Generation's attention of one query head over the key/value cache (rows `stride` floats apart, d [head size]
/// floats each): scores out[j] = scale·(q·K_j) for j < count, and the weighted sum out [d] = Σ_j p_j·V_j.
/// Only where lk_cache_attention_supported(d) (AVX2 + FMA, d a multiple of 8).
int lk_cache_attention_supported(int d);
void lk_cache_scores(const float *q, const float *keys, size_t stride, int count, int d, float scale, float *out);
void lk_cache_weighted(const float *p, const float *values, size_t stride, int count, int d, float *out);

/// Runs task(context, part) for part in [0, parts) on the pool's threads and the caller's; returns when all
/// are done. Workers spin briefly between jobs (a token's products come microseconds apart), then sleep.
/// Callers on other threads while a job runs do their parts themselves; a task must not call it again.
typedef void (*lk_task)(void *context, int part);
void lk_parallel_for(int parts, lk_task task, void *context);

/// Threads that lk_parallel_for uses, the caller included (1 = no pool).
void lk_set_threads(int threads);
int lk_threads(void);

/// Benchmark counters of the BLAS's products, safe from every thread: all operations are added; time only from
/// threads outside the pool's workers (a worker's time inside a job overlaps the caller's, which spans the job).
void lk_count_product(uint64_t operations, uint64_t nanoseconds);
uint64_t lk_counted_operations(void);
uint64_t lk_counted_nanoseconds(void);
void lk_reset_counts(void);

/// Per-shape totals of the counted products (row-major C = op(A)·op(B), op(A) M×K); each call's time is its own
/// thread's. Cleared by lk_reset_counts. At most LK_SHAPE_SLOTS distinct shapes are kept.
#define LK_SHAPE_SLOTS 512
typedef struct {
    int trans_a, trans_b, m, n, k;
    uint64_t calls, nanoseconds;
} lk_shape_total;
void lk_count_shape(int trans_a, int trans_b, int m, int n, int k, uint64_t nanoseconds);
int lk_shape_totals(lk_shape_total *out, int capacity);

/// GFLOP/s of one core's float32 multiply-adds on registers alone (AVX2 + FMA; the best of five ~30 ms runs), the
/// ceiling that benchmarks compare the products' rate with; 0 where there is no such kernel.
double lk_float32_peak_gflops(void);
/// GFLOP/s of one core's bf16 products on registers alone (AVX512-BF16's vdpbf16ps, two multiply-adds a lane), the
/// ceiling of the bf16 precision's products; 0 where the CPU has no AVX512-BF16, and where it has AMX (whose tiles
/// oneDNN uses, faster than this).
double lk_bf16_peak_gflops(void);

// --- bf16 products (bf16_gemm.c): oneDNN 2.x loaded at run time ---
/// Whether bf16 products can run here: oneDNN 2.x is installed and has a bf16 kernel for this CPU.
int lk_bf16_gemm_available(void);
/// "oneDNN 2.6.3" when available, otherwise why not, in a few words.
const char *lk_bf16_gemm_description(void);
/// C [m, n] (= or, with `accumulate`, +=) op(A)·op(B), row-major, A and B bf16 bit patterns, float32 accumulation.
/// Returns 0, or oneDNN's status (or -1) when the product could not run.
int lk_bf16_gemm(int trans_a, int trans_b, int m, int n, int k, const uint16_t *a, int lda, const uint16_t *b, int ldb,
                 int accumulate, float *c, int ldc);
// --- attention's tile products in bf16 (bf16_tiles.c): float32 operands rounded to bf16, AVX512-BF16 ---
/// Whether the CPU has AVX512-BF16; whether the kernel is on (it is where supported, unless LORAKIT_AVX512=off).
int lk_bf16_tiles_supported(void);
int lk_bf16_tiles_enabled(void);
void lk_set_bf16_tiles(int on);
/// C [m, n] (= or, with `accumulate`, +=) alpha·op(A)·op(B), row-major, float32 operands rounded to bf16 (nearest
/// even), float32 accumulation. Returns nonzero, computing nothing, where unsupported (or both transposed).
int lk_bf16_tile_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, int accumulate, float *c, int ldc);
// --- float32 products with one side of at most 16 (narrow_gemm.c): LoRA's rank-r products ---
/// C (= or, with `accumulate`, +=) alpha · op(A)·op(B), row-major, when N ≤ 16 (A not transposed), M ≤ 16 (A
/// transposed, B not) or K ≤ 16 (A not transposed), on a CPU with AVX-512; returns nonzero, computing nothing, for
/// any other product or CPU, or when switched off.
int lk_narrow_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, int accumulate, float *c, int ldc);
/// Whether the CPU has what the kernels need; whether they run (default: where supported, unless
/// LORAKIT_AVX512=off); switch them (tests, benchmarks: on is ignored where unsupported).
int lk_narrow_sgemm_supported(void);
int lk_narrow_sgemm_enabled(void);
void lk_set_narrow_sgemm(int on);

/// y = x rounded to bf16 (nearest even; NaN stays NaN).
void lk_float_to_bf16(const float *x, uint16_t *y, size_t count);

// --- element-wise ops on e^x (elementwise.c): AVX2 + FMA; VectorMath computes the same elsewhere ---
/// 1 where these kernels run (AVX2 + FMA + F16C); the callers use VectorMath's Swift loops otherwise.
int lk_elementwise_supported(void);
/// Σ e^(xᵢ − shift) over `count` values, summed in float over blocks of 64 and in double across them; each term is
/// also stored to `out` when it is not NULL (`out` may be `x`).
double lk_exp_sum(const float *x, int count, float shift, float *out);
/// SwiGLU: out = silu(gate)·up; backward d_gate = d·up·silu′(gate), d_up = d·silu(gate).
void lk_swiglu_forward(const float *gate, const float *up, float *out, int count);
void lk_swiglu_backward(const float *d, const float *gate, const float *up, float *d_gate, float *d_up, int count);
/// GeGLU (tanh GELU): out = gelu(gate)·up; backward d_gate = d·up·gelu′(gate), d_up = d·gelu(gate).
void lk_geglu_forward(const float *gate, const float *up, float *out, int count);
void lk_geglu_backward(const float *d, const float *gate, const float *up, float *d_gate, float *d_up, int count);

#endif
