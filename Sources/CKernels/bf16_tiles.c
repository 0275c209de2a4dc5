// Attention's tile products with bf16 operands and float32 accumulation, on AVX512-BF16 (vdpbf16ps), for the bf16
// precision: S = q·kᵀ, P·v, dP = dOut·vᵀ, dv += Pᵀ·dOut, dq += dS·k, dk += dSᵀ·q, each a few hundred rows by the
// head's size. They are too small for oneDNN (a primitive per call costs more than the arithmetic), and the BLAS
// runs them in float32 at 80–110 GFLOP/s on one core where this runs them at 160–170 (BENCHMARKS.md).
//
// Shapes (row-major): C [M, N] (= or +=) alpha · op(A) [M, K] · op(B) [K, N]; A and B are float32 and are rounded
// to bf16 (nearest even) as they are packed.
// vdpbf16ps adds, in each of 16 float lanes, the products of one pair of bf16 values of A (a broadcast 32-bit pair)
// with one pair of B: A is packed as pairs along K — pair (i, p) = (a[i][2p], a[i][2p+1]) — and B as pairs along K
// for each column — pair (p, j) = (b[2p][j], b[2p+1][j]), 16 columns to a vector; an odd K ends with a zero.
// The kernel computes 6 rows × 64 columns of C at a time (24 accumulators), the tails with the same loop.

#include "CKernels.h"
#include "blocks.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>

#define LK_BF16 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

static int has_avx512_bf16(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = has_avx512() && __builtin_cpu_supports("avx512bf16");
    }
    return cached;
}

// One float rounded to bf16 (nearest even), for the odd element at a row's end.
static inline uint32_t bf16_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return bf16_bits(u);
}

// rows × k floats (row stride ld) → pairs along k: out[r·pairs + p].
LK_BF16 static void pack_pairs_of_rows(const float *x, int ld, int rows, int k, uint32_t *out, int pairs) {
    for (int r = 0; r < rows; r++) {
        const float *s = x + (size_t)r * ld;
        uint32_t *d = out + (size_t)r * pairs;
        int c = 0;
        for (; c + 32 <= k; c += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(s + c + 16), _mm512_loadu_ps(s + c));
            _mm512_storeu_si512((void *)(d + c / 2), (__m512i)v);
        }
        for (; c < k; c += 2) d[c / 2] = bf16_of(s[c]) | (c + 1 < k ? bf16_of(s[c + 1]) << 16 : 0);
    }
}

// k × n floats (row stride ld) → pairs of consecutive rows for each column: out[p·ldo + j], columns n ..< ldo zero,
// nothing written past a row's ldo words.
LK_BF16 static void pack_pairs_of_columns(const float *x, int ld, int k, int n, uint32_t *out, int ldo) {
    const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                                23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int p = 0; p < (k + 1) / 2; p++) {
        const float *r0 = x + (size_t)(2 * p) * ld, *r1 = 2 * p + 1 < k ? r0 + ld : NULL;
        uint32_t *d = out + (size_t)p * ldo;
        for (int j = 0; j < ldo; j += 16) {
            int left = n - j;
            __mmask16 m = left >= 16 ? 0xffff : left > 0 ? (__mmask16)((1u << left) - 1) : 0;
            __m512 a = _mm512_maskz_loadu_ps(m, r0 + j), b = r1 ? _mm512_maskz_loadu_ps(m, r1 + j) : _mm512_setzero_ps();
            __mmask16 room = ldo - j >= 16 ? 0xffff : (__mmask16)((1u << (ldo - j)) - 1);
            _mm512_mask_storeu_epi32(d + j, room, _mm512_permutexvar_epi16(interleave, (__m512i)_mm512_cvtne2ps_pbh(b, a)));
        }
    }
}

// C [rows ≤ 6, columns ≤ 64] (= or +=) alpha · Σ_p pair(A, i, p) · pair(B, p, j). A's pair (i, p) is at
// a[i·row_step + p·pair_step]; B's at b[p·ldb + j].
LK_BF16 static inline __attribute__((always_inline)) void tile_kernel(
    int rows, int vectors, int pairs, const uint32_t *a, size_t row_step, size_t pair_step, const uint32_t *b,
    int ldb, float alpha, int accumulate, float *c, int ldc, int columns) {
    __m512 acc[6][4];
    for (int r = 0; r < 6; r++)
        for (int v = 0; v < 4; v++) acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p++) {
        __m512i bv[4];
        for (int v = 0; v < 4; v++)
            if (v < vectors) bv[v] = _mm512_loadu_si512((const void *)(b + (size_t)p * ldb + 16 * v));
        for (int r = 0; r < 6; r++) {
            if (r >= rows) break;
            __m512i av = _mm512_set1_epi32((int)a[r * row_step + p * pair_step]);
            for (int v = 0; v < 4; v++)
                if (v < vectors) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], (__m512bh)av, (__m512bh)bv[v]);
        }
    }
    const __m512 scale = _mm512_set1_ps(alpha);
    for (int r = 0; r < rows; r++) {
        for (int v = 0; v < vectors; v++) {
            int left = columns - 16 * v;
            __mmask16 m = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
            float *cp = c + (size_t)r * ldc + 16 * v;
            __m512 x = _mm512_mul_ps(acc[r][v], scale);
            if (accumulate) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(m, cp));
            _mm512_mask_storeu_ps(cp, m, x);
        }
    }
}

LK_BF16 static void full_tile(int pairs, const uint32_t *a, size_t row_step, size_t pair_step, const uint32_t *b, int ldb,
                              float alpha, int accumulate, float *c, int ldc) {
    tile_kernel(6, 4, pairs, a, row_step, pair_step, b, ldb, alpha, accumulate, c, ldc, 64);
}

LK_BF16 static void tail_tile(int rows, int vectors, int pairs, const uint32_t *a, size_t row_step, size_t pair_step,
                              const uint32_t *b, int ldb, float alpha, int accumulate, float *c, int ldc, int columns) {
    tile_kernel(rows, vectors, pairs, a, row_step, pair_step, b, ldb, alpha, accumulate, c, ldc, columns);
}

// Per-thread packing space, grown as needed (products run on several threads at once).
static __thread uint32_t *packed;
static __thread size_t packed_capacity;

static uint32_t *packing_space(size_t words) {
    if (words > packed_capacity) {
        free(packed);
        packed = malloc(words * sizeof(uint32_t));
        packed_capacity = packed ? words : 0;
    }
    return packed;
}

LK_BF16 static int tiles(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                         const float *b, int ldb, int accumulate, float *c, int ldc) {
    const int pairs = (k + 1) / 2, width = (n + 15) / 16 * 16;
    const size_t a_words = (size_t)m * pairs, b_words = (size_t)pairs * width;
    // B transposed [N, K] is packed as pairs of its rows first, then turned column-wise.
    const size_t turn_words = trans_b ? (size_t)n * pairs : 0;
    uint32_t *space = packing_space(a_words + b_words + turn_words);
    if (!space) return 1;
    uint32_t *ap = space, *bp = space + a_words;
    size_t row_step, pair_step;
    if (trans_a) {  // A stored [K, M]: pairs of its rows
        pack_pairs_of_columns(a, lda, k, m, ap, m);
        row_step = 1;
        pair_step = (size_t)m;
    } else {
        pack_pairs_of_rows(a, lda, m, k, ap, pairs);
        row_step = (size_t)pairs;
        pair_step = 1;
    }
    if (trans_b) {
        uint32_t *turn = bp + b_words;
        pack_pairs_of_rows(b, ldb, n, k, turn, pairs);
        for (int p = 0; p < pairs; p++) {
            uint32_t *d = bp + (size_t)p * width;
            for (int j = 0; j < n; j++) d[j] = turn[(size_t)j * pairs + p];
            for (int j = n; j < width; j++) d[j] = 0;
        }
    } else {
        pack_pairs_of_columns(b, ldb, k, n, bp, width);
    }
    for (int j0 = 0; j0 < n; j0 += 64) {
        const int columns = n - j0 < 64 ? n - j0 : 64, vectors = (columns + 15) / 16;
        for (int i0 = 0; i0 < m; i0 += 6) {
            const int rows = m - i0 < 6 ? m - i0 : 6;
            const uint32_t *at = ap + (size_t)i0 * row_step;
            float *ct = c + (size_t)i0 * ldc + j0;
            if (rows == 6 && columns == 64) full_tile(pairs, at, row_step, pair_step, bp + j0, width, alpha, accumulate, ct, ldc);
            else tail_tile(rows, vectors, pairs, at, row_step, pair_step, bp + j0, width, alpha, accumulate, ct, ldc, columns);
        }
    }
    return 0;
}
#endif

int lk_bf16_tiles_supported(void) {
#if defined(__x86_64__)
    return has_avx512_bf16();
#else
    return 0;
#endif
}

static int tiles_enabled = -1;

int lk_bf16_tiles_enabled(void) {
#if defined(__x86_64__)
    if (tiles_enabled < 0) tiles_enabled = has_avx512_bf16() && avx512_kernels_allowed();
    return tiles_enabled;
#else
    return 0;
#endif
}

void lk_set_bf16_tiles(int on) { tiles_enabled = on && lk_bf16_tiles_supported(); }

int lk_bf16_tile_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
                      const float *b, int ldb, int accumulate, float *c, int ldc) {
#if defined(__x86_64__)
    if (!lk_bf16_tiles_enabled() || (trans_a && trans_b) || m <= 0 || n <= 0 || k <= 0) return 1;
    return tiles(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, accumulate, c, ldc);
#else
    (void)trans_a; (void)trans_b; (void)m; (void)n; (void)k; (void)alpha; (void)a; (void)lda; (void)b; (void)ldb;
    (void)accumulate; (void)c; (void)ldc;
    return 1;
#endif
}
