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

/// y[r] for rows [row_begin, row_end) only, on the calling thread. `block_sums` holds Σ x over each block of 32
/// (lk_block_sums); F32, F16 and BF16 ignore it.
void lk_matvec_rows(int type, const void *data, size_t row_bytes, int cols, const float *x, const float *block_sums,
                    float *y, int row_begin, int row_end);

/// sums[b] = Σ x[32b ..< 32b + 32] for cols / 32 blocks.
void lk_block_sums(const float *x, int cols, float *sums);

/// Runs task(context, part) for part in [0, parts) on the pool's threads and the caller's; returns when all
/// are done. Workers spin briefly between jobs (a token's products come microseconds apart), then sleep.
/// Callers on other threads while a job runs do their parts themselves; a task must not call it again.
typedef void (*lk_task)(void *context, int part);
void lk_parallel_for(int parts, lk_task task, void *context);

/// Threads that lk_parallel_for uses, the caller included (1 = no pool).
void lk_set_threads(int threads);
int lk_threads(void);

#endif
