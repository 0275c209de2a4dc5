// Float32 products with one side of at most 16: LoRA's rank-r products. Each reads or writes a whole activation or
// gradient (n rows of in or out values) for 2r flops per value, so how that operand streams through memory sets the
// rate: a BLAS packs it into panels first, and walks it in column strips for C = Aᵀ·B. These kernels read it once,
// row after row, a few rows side by side, with the short side in registers or in a small C that stays in cache.
// Three shapes (row-major, C is M×N, r ≤ 16):
//
//   few columns   C[M×r] = A[M×K] · Bᵀ     B [r×K] (or [K×r], copied transposed first)   x·Aᵀ, dy·B
//   few rows      C[r×N] = Aᵀ · B          A [K×r], B [K×N]                                dA = gᵀ·x, dBᵀ = uᵀ·dy
//   short inner   C[M×N] = A[M×r] · B      B [r×N] (or [N×r], copied transposed first)   u·Bᵀ, g·A
//
// each as C = alpha·product, or C += alpha·product when accumulating. AVX-512 only: lk_narrow_sgemm returns nonzero
// for any other shape or CPU and the caller runs the BLAS. ReferenceGEMM (Swift) is the plain loop they are tested
// against.

#include "CKernels.h"
#include "blocks.h"

#include <stdlib.h>

enum { narrow_max = 16 };

#if defined(__x86_64__)
#include <immintrin.h>

LK_AVX512 static inline __mmask16 first_lanes_16(int left) {
    return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

// Few columns: two rows of A against eight rows of B at a time (16 accumulators), the next rows of A requested
// ahead. Rows of B past r repeat its last row and a missing second row of A repeats the first: computed, never
// stored, so the loop keeps one shape.
LK_AVX512 static void few_columns(int m, int r, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                                  int accumulate, float *c, int ldc) {
    for (int i = 0; i < m; i += 2) {
        const float *a0 = a + (size_t)i * lda, *a1 = i + 1 < m ? a0 + lda : a0;
        const int ahead = i + 5 < m;
        for (int j0 = 0; j0 < r; j0 += 8) {
            const float *bj[8];
            for (int j = 0; j < 8; j++) bj[j] = b + (size_t)(j0 + j < r ? j0 + j : r - 1) * ldb;
            __m512 s0[8], s1[8];
            for (int j = 0; j < 8; j++) s0[j] = s1[j] = _mm512_setzero_ps();
            for (int p = 0; p < k; p += 16) {
                const __mmask16 mask = first_lanes_16(k - p);
                const __m512 x0 = _mm512_maskz_loadu_ps(mask, a0 + p), x1 = _mm512_maskz_loadu_ps(mask, a1 + p);
                if (ahead) {
                    _mm_prefetch((const char *)(a0 + 4 * (size_t)lda + p), _MM_HINT_T0);
                    _mm_prefetch((const char *)(a1 + 4 * (size_t)lda + p), _MM_HINT_T0);
                }
                for (int j = 0; j < 8; j++) {
                    const __m512 w = _mm512_maskz_loadu_ps(mask, bj[j] + p);
                    s0[j] = _mm512_fmadd_ps(x0, w, s0[j]);
                    s1[j] = _mm512_fmadd_ps(x1, w, s1[j]);
                }
            }
            for (int j = 0; j < 8 && j0 + j < r; j++) {
                float *c0 = c + (size_t)i * ldc + j0 + j;
                *c0 = alpha * _mm512_reduce_add_ps(s0[j]) + (accumulate ? *c0 : 0);
                if (i + 1 < m) c0[ldc] = alpha * _mm512_reduce_add_ps(s1[j]) + (accumulate ? c0[ldc] : 0);
            }
        }
    }
}

// Few rows: eight rows of B at a time, streamed left to right; for each 16 columns of them, each of C's r rows
// gains Σ over the eight of alpha·A[p, j]·B[p, cols] (two chains of four multiply-adds). The sum (r × N) stays in
// cache. When accumulating it is formed apart and then added to C, so that C + product rounds as the BLAS's does:
// gradients accumulated over micro-batches then equal, bit for bit, the same micro-batches summed across MPI ranks.
// 1 when out of memory for that sum.
LK_AVX512 static int few_rows(int r, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                              int accumulate, float *c, int ldc) {
    float *sums = c;  // the sum: C itself, or apart when accumulating
    int ld = ldc;
    if (accumulate) {
        if (!(sums = malloc((size_t)r * n * sizeof(float)))) return 1;
        ld = n;
    }
    for (int j = 0; j < r; j++)
        for (int col = 0; col < n; col++) sums[(size_t)j * ld + col] = 0;
    int p = 0;
    for (; p + 8 <= k; p += 8) {
        float g[8][narrow_max];  // alpha·A[p + q, j]
        for (int q = 0; q < 8; q++)
            for (int j = 0; j < r; j++) g[q][j] = alpha * a[(size_t)(p + q) * lda + j];
        const float *x = b + (size_t)p * ldb;
        for (int col = 0; col < n; col += 16) {
            const __mmask16 mask = first_lanes_16(n - col);
            __m512 x0 = _mm512_maskz_loadu_ps(mask, x + col), x1 = _mm512_maskz_loadu_ps(mask, x + (size_t)ldb + col);
            __m512 x2 = _mm512_maskz_loadu_ps(mask, x + 2 * (size_t)ldb + col);
            __m512 x3 = _mm512_maskz_loadu_ps(mask, x + 3 * (size_t)ldb + col);
            __m512 x4 = _mm512_maskz_loadu_ps(mask, x + 4 * (size_t)ldb + col);
            __m512 x5 = _mm512_maskz_loadu_ps(mask, x + 5 * (size_t)ldb + col);
            __m512 x6 = _mm512_maskz_loadu_ps(mask, x + 6 * (size_t)ldb + col);
            __m512 x7 = _mm512_maskz_loadu_ps(mask, x + 7 * (size_t)ldb + col);
            for (int j = 0; j < r; j++) {
                float *sum = sums + (size_t)j * ld + col;
                __m512 s0 = _mm512_mul_ps(_mm512_set1_ps(g[0][j]), x0), s1 = _mm512_mul_ps(_mm512_set1_ps(g[4][j]), x4);
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(g[1][j]), x1, s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(g[5][j]), x5, s1);
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(g[2][j]), x2, s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(g[6][j]), x6, s1);
                s0 = _mm512_fmadd_ps(_mm512_set1_ps(g[3][j]), x3, s0);
                s1 = _mm512_fmadd_ps(_mm512_set1_ps(g[7][j]), x7, s1);
                _mm512_mask_storeu_ps(sum, mask, _mm512_add_ps(_mm512_maskz_loadu_ps(mask, sum), _mm512_add_ps(s0, s1)));
            }
        }
    }
    for (; p < k; p++) {  // the last k mod 8 rows, one at a time
        const float *x = b + (size_t)p * ldb;
        for (int j = 0; j < r; j++) {
            const __m512 g = _mm512_set1_ps(alpha * a[(size_t)p * lda + j]);
            float *sum = sums + (size_t)j * ld;
            for (int col = 0; col < n; col += 16) {
                const __mmask16 mask = first_lanes_16(n - col);
                _mm512_mask_storeu_ps(sum + col, mask, _mm512_fmadd_ps(g, _mm512_maskz_loadu_ps(mask, x + col),
                                                                        _mm512_maskz_loadu_ps(mask, sum + col)));
            }
        }
    }
    if (accumulate) {
        for (int j = 0; j < r; j++)
            for (int col = 0; col < n; col++) c[(size_t)j * ldc + col] += sums[(size_t)j * ld + col];
        free(sums);
    }
    return 0;
}

// Short inner side: four rows of C, 16 columns at a time, each the sum over r of a broadcast A value times a row
// of B; C is read and written once.
LK_AVX512 static void short_inner(int m, int n, int r, float alpha, const float *a, int lda, const float *b, int ldb,
                                  int accumulate, float *c, int ldc) {
    const __m512 scale = _mm512_set1_ps(alpha);
    int i = 0;
    for (; i + 4 <= m; i += 4) {
        const float *a0 = a + (size_t)i * lda;
        float *c0 = c + (size_t)i * ldc;
        for (int col = 0; col < n; col += 16) {
            const __mmask16 mask = first_lanes_16(n - col);
            __m512 s[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (int j = 0; j < r; j++) {
                const __m512 w = _mm512_maskz_loadu_ps(mask, b + (size_t)j * ldb + col);
                for (int row = 0; row < 4; row++) s[row] = _mm512_fmadd_ps(_mm512_set1_ps(a0[(size_t)row * lda + j]), w, s[row]);
            }
            for (int row = 0; row < 4; row++) {
                float *out = c0 + (size_t)row * ldc + col;
                const __m512 old = accumulate ? _mm512_maskz_loadu_ps(mask, out) : _mm512_setzero_ps();
                _mm512_mask_storeu_ps(out, mask, _mm512_fmadd_ps(scale, s[row], old));
            }
        }
    }
    for (; i < m; i++) {  // the last m mod 4 rows, one at a time
        const float *a0 = a + (size_t)i * lda;
        float *c0 = c + (size_t)i * ldc;
        for (int col = 0; col < n; col += 16) {
            const __mmask16 mask = first_lanes_16(n - col);
            __m512 s = _mm512_setzero_ps();
            for (int j = 0; j < r; j++)
                s = _mm512_fmadd_ps(_mm512_set1_ps(a0[j]), _mm512_maskz_loadu_ps(mask, b + (size_t)j * ldb + col), s);
            const __m512 old = accumulate ? _mm512_maskz_loadu_ps(mask, c0 + col) : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(c0 + col, mask, _mm512_fmadd_ps(scale, s, old));
        }
    }
}

typedef void (*narrow_kernel)(int m, int n, int k, float alpha, const float *a, int lda, const float *b, int ldb,
                              int accumulate, float *c, int ldc);

// Runs a kernel that reads B as rows of its short side ([r × long]): B itself when it is laid out so, else a
// transposed copy of its [long × r] (r·long values, a small fraction of the product's work). 1 when out of memory.
static int with_short_rows_of_b(narrow_kernel kernel, int transpose, int long_side, int short_side, int m, int n, int k,
                                float alpha, const float *a, int lda, const float *b, int ldb, int accumulate, float *c,
                                int ldc) {
    float *copy = 0;
    if (transpose) {
        if (!(copy = malloc((size_t)long_side * short_side * sizeof(float)))) return 1;
        for (int i = 0; i < long_side; i++)
            for (int j = 0; j < short_side; j++) copy[(size_t)j * long_side + i] = b[(size_t)i * ldb + j];
    }
    kernel(m, n, k, alpha, a, lda, copy ? copy : b, copy ? long_side : ldb, accumulate, c, ldc);
    free(copy);
    return 0;
}
#endif

static int narrow_enabled = -1;

int lk_narrow_sgemm_supported(void) {
#if defined(__x86_64__)
    return has_avx512();
#else
    return 0;
#endif
}

int lk_narrow_sgemm_enabled(void) {
#if defined(__x86_64__)
    if (narrow_enabled < 0) narrow_enabled = avx512_kernels_allowed();
    return narrow_enabled;
#else
    return 0;
#endif
}

void lk_set_narrow_sgemm(int on) { narrow_enabled = on && lk_narrow_sgemm_supported(); }

int lk_narrow_sgemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                    const float *b, int ldb, int accumulate, float *c, int ldc) {
#if defined(__x86_64__)
    if (!lk_narrow_sgemm_enabled() || m <= 0 || n <= 0 || k <= 0) return 1;
    if (!trans_a && n <= narrow_max)  // B is [r×K] when transposed, else [K×r]
        return with_short_rows_of_b(few_columns, !trans_b, k, n, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
    if (trans_a && !trans_b && m <= narrow_max) return few_rows(m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
    if (!trans_a && k <= narrow_max)  // B is [r×N], or [N×r] when transposed
        return with_short_rows_of_b(short_inner, trans_b, n, k, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
#else
    (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b; (void)ldb;
    (void)accumulate; (void)c; (void)ldc;
#endif
    return 1;
}
