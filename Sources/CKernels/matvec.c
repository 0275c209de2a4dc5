// Per-token matrix-vector products on GGUF blocks, with AVX2 + FMA + F16C (chosen at run time, so the package
// needs no compiler flags). Each block of 32 weights is expanded to floats in registers and multiplied with x in
// float: no activation rounding, so the products equal dequantize-then-dot up to summation order.
//
// Block layouts (d, m: f16 scale and minimum; qs: packed quants; qh: the fifth bits):
//   Q4_0 {d, qs[16]}        w = d·(q − 8)       element j < 16: low nibble of qs[j]; j ≥ 16: high nibble of qs[j−16]
//   Q4_1 {d, m, qs[16]}     w = d·q + m
//   Q5_0 {d, qh[4], qs[16]} w = d·(q − 16)      q = nibble | (bit j of qh) << 4
//   Q5_1 {d, m, qh[4], qs[16]} w = d·q + m
//   Q8_0 {d, qs[32] int8}   w = d·q
// With s_b = Σ x over block b, a row's product is Σ_b d_b·(Σ_j q_j·x_j) + offset_b·s_b, offset_b = −8d, −16d or m.
// K-quants (superblocks of 256 in sub-blocks of 32 or 16; layouts as in GGUF's DequantizeReference.swift):
//   Q4_K {d, dmin, scales[12], qs[128]}          w = d·sc_s·q − dmin·m_s   (six-bit sc, m per sub-block of 32)
//   Q5_K {d, dmin, scales[12], qh[32], qs[128]}  the same with q = nibble | (bit s of qh[l]) << 4
//   Q6_K {ql[128], qh[64], scales[16], d}        w = d·sc_s·(q − 32)       (int8 sc per sub-block of 16)

#include "CKernels.h"
#include "blocks.h"

#include <stdlib.h>

#if defined(__x86_64__)
// The low 8 bytes of b as floats: unsigned (quants) or signed (Q8_0).
LK_AVX2 static inline __m256 unsigned_bytes(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b)); }
LK_AVX2 static inline __m256 signed_bytes(__m128i b) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)); }

// Σ_j q_j·x_j over 32 elements whose quants are lo (elements 0..15) and hi (16..31), one byte each.
LK_AVX2 static inline __m256 dot_32(__m128i lo, __m128i hi, const float *x) {
    __m256 acc = _mm256_mul_ps(unsigned_bytes(lo), _mm256_loadu_ps(x));
    acc = _mm256_fmadd_ps(unsigned_bytes(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(x + 8), acc);
    acc = _mm256_fmadd_ps(unsigned_bytes(hi), _mm256_loadu_ps(x + 16), acc);
    return _mm256_fmadd_ps(unsigned_bytes(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(x + 24), acc);
}

LK_AVX2 static inline void split_nibbles(const uint8_t *qs, __m128i *lo, __m128i *hi) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    *lo = _mm_and_si128(b, mask);
    *hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
}

// Byte i = 16 when bit i of `bits` is set, else 0 (the fifth bit of 16 five-bit quants).
LK_AVX2 static inline __m128i fifth_bits(uint16_t bits) {
    const __m128i select = _mm_set_epi8((char)0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01,
                                        (char)0x80, 0x40, 0x20, 0x10, 0x08, 0x04, 0x02, 0x01);
    __m128i v = _mm_shuffle_epi8(_mm_set1_epi16((short)bits), _mm_set_epi8(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0));
    v = _mm_cmpeq_epi8(_mm_and_si128(v, select), select);
    return _mm_and_si128(v, _mm_set1_epi8(0x10));
}

LK_AVX2 static float row_q4_q5(int type, const uint8_t *row, const float *x, const float *sums, int blocks) {
    const int five = type == Q5_0 || type == Q5_1, with_minimum = type == Q4_1 || type == Q5_1;
    const int header = with_minimum ? 4 : 2, quants = header + (five ? 4 : 0), bytes = quants + 16;
    const float offset = five ? -16 : -8;
    __m256 total = _mm256_setzero_ps();
    float offsets = 0;
    for (int b = 0; b < blocks; b++, row += bytes) {
        float d = half_to_float(row);
        offsets += (with_minimum ? half_to_float(row + 2) : offset * d) * sums[b];
        __m128i lo, hi;
        split_nibbles(row + quants, &lo, &hi);
        if (five) {
            uint32_t qh;
            memcpy(&qh, row + header, 4);
            lo = _mm_or_si128(lo, fifth_bits((uint16_t)qh));
            hi = _mm_or_si128(hi, fifth_bits((uint16_t)(qh >> 16)));
        }
        total = _mm256_fmadd_ps(_mm256_set1_ps(d), dot_32(lo, hi, x + 32 * b), total);
    }
    return horizontal_sum(total) + offsets;
}

LK_AVX2 static float row_q8_0(const uint8_t *row, const float *x, int blocks) {
    __m256 total = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++, row += 34) {
        const float *xb = x + 32 * b;
        __m128i lo = _mm_loadu_si128((const __m128i *)(row + 2)), hi = _mm_loadu_si128((const __m128i *)(row + 18));
        __m256 acc = _mm256_mul_ps(signed_bytes(lo), _mm256_loadu_ps(xb));
        acc = _mm256_fmadd_ps(signed_bytes(_mm_srli_si128(lo, 8)), _mm256_loadu_ps(xb + 8), acc);
        acc = _mm256_fmadd_ps(signed_bytes(hi), _mm256_loadu_ps(xb + 16), acc);
        acc = _mm256_fmadd_ps(signed_bytes(_mm_srli_si128(hi, 8)), _mm256_loadu_ps(xb + 24), acc);
        total = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(row)), acc, total);
    }
    return horizontal_sum(total);
}

// Byte l = 16 where bit `bit` of byte l of v is set.
LK_AVX2 static inline __m128i bit_as_16(__m128i v, int bit) {
    const __m128i mask = _mm_set1_epi8((char)(1 << bit));
    return _mm_and_si128(_mm_cmpeq_epi8(_mm_and_si128(v, mask), mask), _mm_set1_epi8(0x10));
}

LK_AVX2 static float row_q4_q5_k(int type, const uint8_t *row, const float *x, const float *sums, int superblocks) {
    const int five = type == Q5_K, bytes = five ? 176 : 144, quants = five ? 48 : 16;
    __m256 total = _mm256_setzero_ps();
    float minimums = 0;
    for (int b = 0; b < superblocks; b++, row += bytes) {
        const float d = half_to_float(row), dmin = half_to_float(row + 2);
        const float *xb = x + 256 * b;
        __m128i h0 = _mm_setzero_si128(), h1 = _mm_setzero_si128();
        if (five) {
            h0 = _mm_loadu_si128((const __m128i *)(row + 16));
            h1 = _mm_loadu_si128((const __m128i *)(row + 32));
        }
        for (int g = 0; g < 4; g++) {
            const __m128i mask = _mm_set1_epi8(0x0F);
            __m128i b0 = _mm_loadu_si128((const __m128i *)(row + quants + 32 * g));
            __m128i b1 = _mm_loadu_si128((const __m128i *)(row + quants + 32 * g + 16));
            for (int half = 0; half < 2; half++) {
                int sub = 2 * g + half;
                __m128i lo = half ? _mm_and_si128(_mm_srli_epi16(b0, 4), mask) : _mm_and_si128(b0, mask);
                __m128i hi = half ? _mm_and_si128(_mm_srli_epi16(b1, 4), mask) : _mm_and_si128(b1, mask);
                if (five) {
                    lo = _mm_or_si128(lo, bit_as_16(h0, sub));
                    hi = _mm_or_si128(hi, bit_as_16(h1, sub));
                }
                int scale, minimum;
                scale_min_k4(row + 4, sub, &scale, &minimum);
                minimums += dmin * minimum * sums[8 * b + sub];
                total = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), dot_32(lo, hi, xb + 32 * sub), total);
            }
        }
    }
    return horizontal_sum(total) - minimums;
}

// Σ (q_l − 32)·x_l for 16 six-bit quants held one per byte.
LK_AVX2 static inline __m256 dot_16_centered(__m128i q, const float *x) {
    q = _mm_sub_epi8(q, _mm_set1_epi8(32));
    __m256 acc = _mm256_mul_ps(signed_bytes(q), _mm256_loadu_ps(x));
    return _mm256_fmadd_ps(signed_bytes(_mm_srli_si128(q, 8)), _mm256_loadu_ps(x + 8), acc);
}

LK_AVX2 static float row_q6_k(const uint8_t *row, const float *x, int superblocks) {
    const __m128i mask = _mm_set1_epi8(0x0F), three = _mm_set1_epi8(3);
    __m256 total = _mm256_setzero_ps();
    for (int b = 0; b < superblocks; b++, row += 210) {
        const float d = half_to_float(row + 208);
        const int8_t *scales = (const int8_t *)(row + 192);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = row + 64 * h, *qh = row + 128 + 32 * h;
            for (int quarter = 0; quarter < 4; quarter++) {
                const float *xq = x + 256 * b + 128 * h + 32 * quarter;
                for (int part = 0; part < 2; part++) {  // l in [16·part, 16·part + 16): one scale each
                    __m128i low = _mm_loadu_si128((const __m128i *)(ql + 32 * (quarter % 2) + 16 * part));
                    low = quarter < 2 ? _mm_and_si128(low, mask) : _mm_and_si128(_mm_srli_epi16(low, 4), mask);
                    __m128i high = _mm_loadu_si128((const __m128i *)(qh + 16 * part));
                    high = _mm_and_si128(_mm_srli_epi16(high, 2 * quarter), three);
                    __m128i q = _mm_or_si128(low, _mm_slli_epi16(high, 4));
                    float scale = d * scales[8 * h + part + 2 * quarter];
                    total = _mm256_fmadd_ps(_mm256_set1_ps(scale), dot_16_centered(q, xq + 16 * part), total);
                }
            }
        }
    }
    return horizontal_sum(total);
}

// F32, F16, BF16 rows: cols is a multiple of 8 (checked by the caller); the tail is summed one by one.
LK_AVX2 static float row_float(int type, const uint8_t *row, const float *x, int cols) {
    __m256 acc = _mm256_setzero_ps();
    int c = 0;
    for (; c + 8 <= cols; c += 8) {
        __m256 w;
        if (type == F32) {
            w = _mm256_loadu_ps((const float *)row + c);
        } else if (type == F16) {
            w = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
        } else {
            __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + c)));
            w = _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
        }
        acc = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + c), acc);
    }
    float sum = horizontal_sum(acc);
    for (; c < cols; c++) {
        float w;
        if (type == F32) {
            w = ((const float *)row)[c];
        } else {
            uint16_t h;
            memcpy(&h, (const uint16_t *)row + c, 2);
            uint32_t bits = (uint32_t)h << 16;  // BF16: the high half of a float
            if (type == F16) w = _cvtsh_ss(h); else memcpy(&w, &bits, 4);
        }
        sum += w * x[c];
    }
    return sum;
}

LK_AVX2 static void rows_avx2(int type, const uint8_t *data, size_t row_bytes, int cols, const float *x,
                              const float *sums, float *y, int begin, int end) {
    const int blocks = cols / 32;
    for (int r = begin; r < end; r++) {
        const uint8_t *row = data + (size_t)r * row_bytes;
        switch (type) {
        case Q4_0: case Q4_1: case Q5_0: case Q5_1: y[r] = row_q4_q5(type, row, x, sums, blocks); break;
        case Q8_0: y[r] = row_q8_0(row, x, blocks); break;
        default: y[r] = row_float(type, row, x, cols); break;
        }
    }
}

// K-quant rows in a function of their own: sharing one with the 32-element block types made the compiler lay out
// the Q4 and Q8_0 loops 15–50 % slower.
LK_AVX2 static void rows_k_avx2(int type, const uint8_t *data, size_t row_bytes, int cols, const float *sums,
                                const float *x, float *y, int begin, int end) {
    for (int r = begin; r < end; r++) {
        const uint8_t *row = data + (size_t)r * row_bytes;
        y[r] = type == Q6_K ? row_q6_k(row, x, cols / 256) : row_q4_q5_k(type, row, x, sums, cols / 256);
    }
}
#endif

int lk_matvec_supported(int type) {
#if defined(__x86_64__)
    switch (type) {
    case F32: case F16: case BF16: case Q4_0: case Q4_1: case Q5_0: case Q5_1: case Q8_0: case Q4_K: case Q5_K: case Q6_K:
        return has_avx2();
    default: return 0;
    }
#else
    (void)type;
    return 0;
#endif
}

void lk_block_sums(const float *x, int cols, float *sums) {
    for (int b = 0; b < cols / 32; b++) {
        float s = 0;
        for (int j = 0; j < 32; j++) s += x[32 * b + j];
        sums[b] = s;
    }
}

void lk_matvec_rows(int type, const void *data, size_t row_bytes, int cols, const float *x, const float *block_sums,
                    float *y, int row_begin, int row_end) {
#if defined(__x86_64__)
    if (type == Q4_K || type == Q5_K || type == Q6_K) {
        rows_k_avx2(type, (const uint8_t *)data, row_bytes, cols, block_sums, x, y, row_begin, row_end);
    } else {
        rows_avx2(type, (const uint8_t *)data, row_bytes, cols, x, block_sums, y, row_begin, row_end);
    }
#else
    (void)type; (void)data; (void)row_bytes; (void)cols; (void)x; (void)block_sums; (void)y; (void)row_begin; (void)row_end;
#endif
}

static void matvec_range(const void *context, int begin, int end) {
    const lk_product *job = context;
    lk_matvec_rows(job->type, job->data, job->row_bytes, job->cols, job->x, job->sums, job->y, begin, end);
}

void lk_matvec(int type, const void *data, size_t row_bytes, int rows, int cols, const float *x, float *y) {
    float stack_sums[512];
    int blocks = cols / 32;
    float *sums = blocks <= 512 ? stack_sums : malloc(sizeof(float) * (size_t)blocks);
    lk_block_sums(x, cols, sums);
    lk_product job = {.type = type, .data = data, .row_bytes = row_bytes, .cols = cols, .x = x, .sums = sums, .y = y};
    lk_split_rows(rows, cols, matvec_range, &job);
    if (sums != stack_sums) free(sums);
}
