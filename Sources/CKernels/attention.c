// Generation's attention of one query head over a layer's key/value cache, with AVX2 + FMA chosen at run time.
// Both products read cache rows that are `stride` floats apart (the cache interleaves the key/value heads):
//
//   scores:   out[j] = scale · (q · K_j)      for j < count     q [d], K_j = rows + j·stride [d]
//   weighted: out    = Σ_j p_j · V_j                            p [count], V_j [d], out [d]
//
// d is a multiple of 8. Swift's vector code for the same (Attention.rowDots/weightedRows, the path of other CPUs)
// compiled to separate multiplies and adds, a horizontal sum per row and stack spills; here eight rows' dot
// products are summed in registers and reduced together, and the weighted sum keeps 64 outputs in eight registers.

#include "CKernels.h"
#include "blocks.h"

int lk_cache_attention_supported(int d) {
#if defined(__x86_64__)
    return d > 0 && d % 8 == 0 && has_avx2();
#else
    (void)d;
    return 0;
#endif
}

#if defined(__x86_64__)
// [Σ a0, Σ a1, …, Σ a7]: the eight registers' horizontal sums in one register.
LK_AVX2 static inline __m256 sums_of_eight(__m256 a0, __m256 a1, __m256 a2, __m256 a3,
                                          __m256 a4, __m256 a5, __m256 a6, __m256 a7) {
    __m256 s01 = _mm256_hadd_ps(a0, a1), s23 = _mm256_hadd_ps(a2, a3);
    __m256 s45 = _mm256_hadd_ps(a4, a5), s67 = _mm256_hadd_ps(a6, a7);
    __m256 s0123 = _mm256_hadd_ps(s01, s23), s4567 = _mm256_hadd_ps(s45, s67);
    // Each 128-bit lane now holds partial sums of rows 0-3 (first register) or 4-7 (second): add the lanes.
    __m256 low = _mm256_permute2f128_ps(s0123, s4567, 0x20), high = _mm256_permute2f128_ps(s0123, s4567, 0x31);
    return _mm256_add_ps(low, high);
}

LK_AVX2 static void row_dots(const float *q, const float *rows, size_t stride, int count, int d, float scale,
                             float *out) {
    const __m256 s = _mm256_set1_ps(scale);
    int j = 0;
    for (; j + 8 <= count; j += 8) {
        const float *r = rows + (size_t)j * stride;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int c = 0; c < d; c += 8) {
            __m256 x = _mm256_loadu_ps(q + c);
            a0 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + c), a0);
            a1 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + stride + c), a1);
            a2 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 2 * stride + c), a2);
            a3 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 3 * stride + c), a3);
            a4 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 4 * stride + c), a4);
            a5 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 5 * stride + c), a5);
            a6 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 6 * stride + c), a6);
            a7 = _mm256_fmadd_ps(x, _mm256_loadu_ps(r + 7 * stride + c), a7);
        }
        _mm256_storeu_ps(out + j, _mm256_mul_ps(s, sums_of_eight(a0, a1, a2, a3, a4, a5, a6, a7)));
    }
    for (; j < count; j++) {
        const float *r = rows + (size_t)j * stride;
        __m256 a = _mm256_setzero_ps();
        for (int c = 0; c < d; c += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + c), _mm256_loadu_ps(r + c), a);
        out[j] = scale * horizontal_sum(a);
    }
}

LK_AVX2 static void weighted_rows(const float *p, const float *rows, size_t stride, int count, int d, float *out) {
    int c = 0;
    for (; c + 64 <= d; c += 64) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0, a4 = a0, a5 = a0, a6 = a0, a7 = a0;
        for (int j = 0; j < count; j++) {
            const float *r = rows + (size_t)j * stride + c;
            __m256 w = _mm256_broadcast_ss(p + j);
            a0 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r), a0);
            a1 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 8), a1);
            a2 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 16), a2);
            a3 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 24), a3);
            a4 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 32), a4);
            a5 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 40), a5);
            a6 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 48), a6);
            a7 = _mm256_fmadd_ps(w, _mm256_loadu_ps(r + 56), a7);
        }
        _mm256_storeu_ps(out + c, a0);
        _mm256_storeu_ps(out + c + 8, a1);
        _mm256_storeu_ps(out + c + 16, a2);
        _mm256_storeu_ps(out + c + 24, a3);
        _mm256_storeu_ps(out + c + 32, a4);
        _mm256_storeu_ps(out + c + 40, a5);
        _mm256_storeu_ps(out + c + 48, a6);
        _mm256_storeu_ps(out + c + 56, a7);
    }
    // The last d mod 64 outputs (fewer than eight registers).
    for (; c < d; c += 8) {
        __m256 a = _mm256_setzero_ps();
        for (int j = 0; j < count; j++)
            a = _mm256_fmadd_ps(_mm256_broadcast_ss(p + j), _mm256_loadu_ps(rows + (size_t)j * stride + c), a);
        _mm256_storeu_ps(out + c, a);
    }
}
#endif

void lk_cache_scores(const float *q, const float *keys, size_t stride, int count, int d, float scale, float *out) {
#if defined(__x86_64__)
    row_dots(q, keys, stride, count, d, scale, out);
#else
    (void)q; (void)keys; (void)stride; (void)count; (void)d; (void)scale; (void)out;
#endif
}

void lk_cache_weighted(const float *p, const float *values, size_t stride, int count, int d, float *out) {
#if defined(__x86_64__)
    weighted_rows(p, values, stride, count, d, out);
#else
    (void)p; (void)values; (void)stride; (void)count; (void)d; (void)out;
#endif
}
