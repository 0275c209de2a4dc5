// Per-token matrix-vector products with activations rounded to 8 bits, as llama.cpp computes them: x is cut into
// blocks of 32, each stored as int8 q with one float scale d = max|x|/127 (x̂ = d·q), and every weight block is
// multiplied with q in integers (AVX2 `vpmaddubsw`), so a block costs a few instructions instead of expanding 32
// quants to floats. The result is W·x̂, not W·x: opt-in, the exact kernels of matvec.c stay the default.
//
// With q_w the stored quants, a block's product is d_w·d_x·Σ q_w·q + offset·d_x·Σ q, where the offset is −8·d_w
// (Q4_0), −16·d_w (Q5_0) or the minimum m (Q4_1, Q5_1); K-quants scale each sub-block (layouts in matvec.c).
// d_x·Σ q is computed once per product, per half block (16 values) for Q6_K's sub-blocks of 16.

#include "CKernels.h"
#include "blocks.h"

#include <math.h>
#include <stdlib.h>

static void quantize_activations_reference(const float *x, int cols, int8_t *q, float *scales, float *half_sums) {
    for (int b = 0; b < cols / 32; b++) {
        const float *xb = x + 32 * b;
        float amax = 0;
        for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(xb[j]));
        const float d = amax / 127, id = d > 0 ? 1 / d : 0;
        scales[b] = d;
        for (int half = 0; half < 2; half++) {
            int32_t sum = 0;
            for (int j = 16 * half; j < 16 * half + 16; j++) {
                q[32 * b + j] = (int8_t)roundf(xb[j] * id);
                sum += q[32 * b + j];
            }
            half_sums[2 * b + half] = d * (float)sum;
        }
    }
}

#if defined(__x86_64__)
// The same rounding 8 lanes at a time: roundf's halves away from zero (not the vector unit's ties to even), so the
// result equals the reference bit for bit.
LK_AVX2 static inline __m256i round_away_8(__m256 v) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 up = _mm256_cmp_ps(_mm256_andnot_ps(sign_bit, _mm256_sub_ps(v, t)), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    __m256 step = _mm256_or_ps(_mm256_and_ps(v, sign_bit), _mm256_set1_ps(1.0f));
    return _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)));
}

LK_AVX2 static void quantize_activations_avx2(const float *x, int cols, int8_t *q, float *scales, float *half_sums) {
    const __m256 sign_bit = _mm256_set1_ps(-0.0f);
    for (int b = 0; b < cols / 32; b++) {
        const float *xb = x + 32 * b;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = _mm256_loadu_ps(xb + 8 * i);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign_bit, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        const float d = _mm_cvtss_f32(m4) / 127, id = d > 0 ? 1 / d : 0;
        scales[b] = d;
        __m256i r[4];
        for (int i = 0; i < 4; i++) r[i] = round_away_8(_mm256_mul_ps(v[i], _mm256_set1_ps(id)));
        for (int half = 0; half < 2; half++) {
            __m256i s = _mm256_add_epi32(r[2 * half], r[2 * half + 1]);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
            half_sums[2 * b + half] = d * (float)_mm_cvtsi128_si32(s4);
        }
        // int32 → int8 with saturating packs; packs interleave 128-bit lanes, the permute puts them back in order.
        __m256i p16a = _mm256_packs_epi32(r[0], r[1]), p16b = _mm256_packs_epi32(r[2], r[3]);
        __m256i p8 = _mm256_packs_epi16(p16a, p16b);
        p8 = _mm256_permutevar8x32_epi32(p8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256((__m256i *)(q + 32 * b), p8);
    }
}
#endif

void lk_quantize_activations(const float *x, int cols, int8_t *q, float *scales, float *half_sums) {
#if defined(__x86_64__)
    if (has_avx2()) {
        quantize_activations_avx2(x, cols, q, scales, half_sums);
        return;
    }
#endif
    quantize_activations_reference(x, cols, q, scales, half_sums);
}

#if defined(__x86_64__)
// 8 int32 partial sums of Σ u·s over 32 byte pairs (u unsigned ≤ 128, s signed; no pair sum can saturate int16).
LK_AVX2 static inline __m256i dot_u8_s8(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

// Element j < 16: low nibble of qs[j]; j ≥ 16: high nibble of qs[j − 16]. (The exact kernels build the same register
// from a broadcast and a variable shift; each form measured faster in its own kernel.)
LK_AVX2 static inline __m256i nibbles_32(const uint8_t *qs) {
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(b, 4), b), _mm256_set1_epi8(0x0F));
}

// One Q4_0/1 or Q5_0/1 block: adds d_w·d_x·Σ q_w·q to *total and offset·d_x·Σ q to *offsets.
LK_AVX2 static inline void block_q4_q5(int five, int with_minimum, const uint8_t *block, const int8_t *q, float dx,
                                       const float *hs, __m256 *total, float *offsets) {
    const int header = with_minimum ? 4 : 2, quants = header + (five ? 4 : 0);
    const float d = half_to_float(block);
    __m256i w = nibbles_32(block + quants);
    if (five) {
        uint32_t qh;
        memcpy(&qh, block + header, 4);
        w = _mm256_or_si256(w, fifth_bits_32(qh));
    }
    __m256 p = _mm256_cvtepi32_ps(dot_u8_s8(w, _mm256_loadu_si256((const __m256i *)q)));
    *total = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), p, *total);
    *offsets += (with_minimum ? half_to_float(block + 2) : (five ? -16 : -8) * d) * (hs[0] + hs[1]);
}

LK_AVX2 static float row_q4_q5(int type, const uint8_t *row, const int8_t *q, const float *dx, const float *hs,
                               int blocks) {
    const int five = type == Q5_0 || type == Q5_1, with_minimum = type == Q4_1 || type == Q5_1;
    const int bytes = (with_minimum ? 4 : 2) + (five ? 4 : 0) + 16;
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    float offsets0 = 0, offsets1 = 0;
    int b = 0;
    // Two blocks a step with two sums, so that consecutive blocks' work overlaps.
    for (; b + 1 < blocks; b += 2, row += 2 * bytes) {
        block_q4_q5(five, with_minimum, row, q + 32 * b, dx[b], hs + 2 * b, &total0, &offsets0);
        block_q4_q5(five, with_minimum, row + bytes, q + 32 * b + 32, dx[b + 1], hs + 2 * b + 2, &total1, &offsets1);
    }
    if (b < blocks) block_q4_q5(five, with_minimum, row, q + 32 * b, dx[b], hs + 2 * b, &total0, &offsets0);
    return horizontal_sum(_mm256_add_ps(total0, total1)) + offsets0 + offsets1;
}

LK_AVX2 static float row_q8_0(const uint8_t *row, const int8_t *q, const float *dx, int blocks) {
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    int b = 0;
    // Two blocks a step with two sums: the 34-byte blocks' loads and the multiply chains overlap.
    for (; b + 1 < blocks; b += 2, row += 68) {
        __m256i w0 = _mm256_loadu2_m128i((const __m128i *)(row + 18), (const __m128i *)(row + 2));
        __m256i w1 = _mm256_loadu2_m128i((const __m128i *)(row + 52), (const __m128i *)(row + 36));
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(q + 32 * b)), x1 = _mm256_loadu_si256((const __m256i *)(q + 32 * b + 32));
        // |w|·(x with w's sign): unsigned × signed; x is never −128, so negating it cannot overflow.
        __m256 p0 = _mm256_cvtepi32_ps(dot_u8_s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0)));
        __m256 p1 = _mm256_cvtepi32_ps(dot_u8_s8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1)));
        total0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(row) * dx[b]), p0, total0);
        total1 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(row + 34) * dx[b + 1]), p1, total1);
    }
    for (; b < blocks; b++, row += 34) {
        __m256i w = _mm256_loadu2_m128i((const __m128i *)(row + 18), (const __m128i *)(row + 2));
        __m256i x = _mm256_loadu_si256((const __m256i *)(q + 32 * b));
        __m256 p = _mm256_cvtepi32_ps(dot_u8_s8(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)));
        total0 = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(row) * dx[b]), p, total0);
    }
    return horizontal_sum(_mm256_add_ps(total0, total1));
}

LK_AVX2 static float row_q4_q5_k(int type, const uint8_t *row, const int8_t *q, const float *dx, const float *hs,
                                 int superblocks) {
    const int five = type == Q5_K, bytes = five ? 176 : 144, quants = five ? 48 : 16;
    const __m256i mask = _mm256_set1_epi8(0x0F);
    __m256 total = _mm256_setzero_ps();
    float minimums = 0;
    for (int b = 0; b < superblocks; b++, row += bytes) {
        const float d = half_to_float(row), dmin = half_to_float(row + 2);
        // Q5_K: element l of sub-block s has its fifth bit in bit s of qh[l].
        const __m256i qh = five ? _mm256_loadu_si256((const __m256i *)(row + 16)) : _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i pair = _mm256_loadu_si256((const __m256i *)(row + quants + 32 * g));
            for (int half = 0; half < 2; half++) {
                const int sub = 2 * g + half, block = 8 * b + sub;
                __m256i w = _mm256_and_si256(half ? _mm256_srli_epi16(pair, 4) : pair, mask);
                if (five) {
                    const __m256i bit = _mm256_set1_epi8((char)(1 << sub));
                    w = _mm256_or_si256(w, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit),
                                                            _mm256_set1_epi8(0x10)));
                }
                int scale, minimum;
                scale_min_k4(row + 4, sub, &scale, &minimum);
                __m256 p = _mm256_cvtepi32_ps(dot_u8_s8(w, _mm256_loadu_si256((const __m256i *)(q + 32 * block))));
                total = _mm256_fmadd_ps(_mm256_set1_ps(d * (float)scale * dx[block]), p, total);
                minimums += dmin * (float)minimum * (hs[2 * block] + hs[2 * block + 1]);
            }
        }
    }
    return horizontal_sum(total) - minimums;
}

// Q6_K: 16 sub-blocks of 16 with int8 scales; w = d·sc·(q − 32), q six bits (low four in ql, high two in qh).
LK_AVX2 static float row_q6_k(const uint8_t *row, const int8_t *q, const float *dx, const float *hs, int superblocks) {
    const __m256i mask = _mm256_set1_epi8(0x0F), three = _mm256_set1_epi8(3);
    __m256 total = _mm256_setzero_ps();
    float offsets = 0;
    for (int b = 0; b < superblocks; b++, row += 210) {
        const float d = half_to_float(row + 208);
        const int8_t *scales = (const int8_t *)(row + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = row + 64 * h, *qhp = row + 128 + 32 * h;
            const __m256i high_bits = _mm256_loadu_si256((const __m256i *)qhp);
            for (int quarter = 0; quarter < 4; quarter++) {
                const int block = 8 * b + 4 * h + quarter;
                __m256i low = _mm256_loadu_si256((const __m256i *)(ql + 32 * (quarter % 2)));
                low = _mm256_and_si256(quarter < 2 ? low : _mm256_srli_epi16(low, 4), mask);
                __m256i high = _mm256_and_si256(_mm256_srli_epi16(high_bits, 2 * quarter), three);
                __m256i w = _mm256_or_si256(low, _mm256_slli_epi16(high, 4));
                // Elements 0..15 and 16..31 have a scale each: weight the int16 pair sums by them.
                const int first = scales[8 * h + 2 * quarter], second = scales[8 * h + 2 * quarter + 1];
                __m256i pairs = _mm256_maddubs_epi16(w, _mm256_loadu_si256((const __m256i *)(q + 32 * block)));
                __m256i weighted = _mm256_madd_epi16(pairs, _mm256_set_m128i(_mm_set1_epi16((short)second),
                                                                           _mm_set1_epi16((short)first)));
                const float scale = d * dx[block];
                total = _mm256_fmadd_ps(_mm256_set1_ps(scale), _mm256_cvtepi32_ps(weighted), total);
                offsets -= 32 * d * ((float)first * hs[2 * block] + (float)second * hs[2 * block + 1]);
            }
        }
    }
    return horizontal_sum(total) + offsets;
}

LK_AVX2 static void rows_int8_avx2(int type, const uint8_t *data, size_t row_bytes, int cols, const int8_t *q,
                                   const float *dx, const float *hs, float *y, int begin, int end) {
    for (int r = begin; r < end; r++) {
        const uint8_t *row = data + (size_t)r * row_bytes;
        prefetch_ahead(data, row_bytes, r, end);
        switch (type) {
        case Q8_0: y[r] = row_q8_0(row, q, dx, cols / 32); break;
        case Q4_K: case Q5_K: y[r] = row_q4_q5_k(type, row, q, dx, hs, cols / 256); break;
        case Q6_K: y[r] = row_q6_k(row, q, dx, hs, cols / 256); break;
        default: y[r] = row_q4_q5(type, row, q, dx, hs, cols / 32); break;
        }
    }
}
#endif

int lk_matvec_int8_supported(int type) {
#if defined(__x86_64__)
    switch (type) {
    case Q4_0: case Q4_1: case Q5_0: case Q5_1: case Q8_0: case Q4_K: case Q5_K: case Q6_K: return has_avx2();
    default: return 0;
    }
#else
    (void)type;
    return 0;
#endif
}

void lk_matvec_int8_rows(int type, const void *data, size_t row_bytes, int cols, const int8_t *q, const float *scales,
                         const float *half_sums, float *y, int row_begin, int row_end) {
#if defined(__x86_64__)
    rows_int8_avx2(type, (const uint8_t *)data, row_bytes, cols, q, scales, half_sums, y, row_begin, row_end);
#else
    (void)type; (void)data; (void)row_bytes; (void)cols; (void)q; (void)scales; (void)half_sums; (void)y;
    (void)row_begin; (void)row_end;
#endif
}

static void int8_range(const void *context, int begin, int end) {
    const lk_product *job = context;
    lk_matvec_int8_rows(job->type, job->data, job->row_bytes, job->cols, job->q, job->scales, job->half_sums, job->y,
                        begin, end);
}

void lk_matvec_int8(int type, const void *data, size_t row_bytes, int rows, int cols, const float *x, float *y) {
    enum { stack_blocks = 512 };
    int8_t stack_q[32 * stack_blocks];
    float stack_scales[stack_blocks];
    float stack_sums[2 * stack_blocks];
    const int blocks = cols / 32, on_stack = blocks <= stack_blocks;
    lk_decide_prefetching();
    int8_t *q = on_stack ? stack_q : malloc((size_t)cols);
    float *scales = on_stack ? stack_scales : malloc(sizeof(float) * (size_t)blocks);
    float *sums = on_stack ? stack_sums : malloc(sizeof(float) * 2 * (size_t)blocks);
    lk_quantize_activations(x, cols, q, scales, sums);
    lk_product job = {.type = type, .data = data, .row_bytes = row_bytes, .cols = cols, .q = q, .scales = scales,
                      .half_sums = sums, .y = y};
    lk_split_rows(rows, cols, int8_range, &job);
    if (!on_stack) {
        free(q);
        free(scales);
        free(sums);
    }
}
