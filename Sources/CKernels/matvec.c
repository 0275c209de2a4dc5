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
//
// The 4- and 5-bit kernels (Q4_0/1, Q5_0/1, Q4_K, Q5_K) hold a block's 32 quants in one register, elements 0..15
// in the low 128-bit lane and 16..31 in the high one, and widen them to floats with in-lane byte shuffles:
// register k takes elements 4k..4k+3 and 16+4k..16+4k+3. x is laid out in that order once per token
// (permute_32), so the widening needs no lane-crossing instruction; widening each half with vpmovzxbd instead
// ran 20-35 % slower (lorakit-bench matvec).

#include "CKernels.h"
#include "blocks.h"

#include <pthread.h>
#include <stdlib.h>

#if defined(__x86_64__)
// The 8 signed bytes at p as floats (Q8_0): the widening reads memory itself, no shuffle to reach the upper bytes.
LK_AVX2 static inline __m256 signed_bytes_at(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

// x in the kernels' order: within each block of 32, register k holds x[4k..4k+3] and x[16+4k..16+4k+3].
// (Whole blocks only: the float types, whose columns need not fill a block, read x itself.)
static void permute_32(const float *x, int cols, float *xp) {
    for (int b = 0; b + 32 <= cols; b += 32) {
        for (int k = 0; k < 4; k++) {
            for (int i = 0; i < 4; i++) {
                xp[b + 8 * k + i] = x[b + 4 * k + i];
                xp[b + 8 * k + 4 + i] = x[b + 16 + 4 * k + i];
            }
        }
    }
}

// Σ_j q_j·x_j over 32 quants, one per byte of q (elements 0..15 in the low lane, 16..31 in the high one), with
// x in permute_32's order.
LK_AVX2 static inline __m256 dot_32_lanes(__m256i q, const float *xp) {
    const __m256i s0 = _mm256_setr_epi8(0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1,
                                        0, -1, -1, -1, 1, -1, -1, -1, 2, -1, -1, -1, 3, -1, -1, -1);
    const __m256i four = _mm256_set1_epi32(4);
    const __m256i s1 = _mm256_add_epi32(s0, four), s2 = _mm256_add_epi32(s1, four), s3 = _mm256_add_epi32(s2, four);
    __m256 acc = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, s0)), _mm256_loadu_ps(xp));
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, s1)), _mm256_loadu_ps(xp + 8), acc);
    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, s2)), _mm256_loadu_ps(xp + 16), acc);
    return _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_shuffle_epi8(q, s3)), _mm256_loadu_ps(xp + 24), acc);
}

// The 32 nibbles of 16 bytes: low nibbles (elements 0..15) in the low lane, high nibbles (16..31) in the high one.
// (The int8 kernels build the same register with vinserti128; each form measured faster in its own kernel.)
LK_AVX2 static inline __m256i nibbles_32(const uint8_t *qs) {
    __m256i b = _mm256_broadcastsi128_si256(_mm_loadu_si128((const __m128i *)qs));
    return _mm256_and_si256(_mm256_srlv_epi32(b, _mm256_setr_epi32(0, 0, 0, 0, 4, 4, 4, 4)), _mm256_set1_epi8(0x0F));
}

// f16 → f32 by table: a block's scale and minimum are read once per 32 weights, and the table (one load) costs
// less than F16C's conversion (three vector instructions from a general register).
static float half_table[65536];
static pthread_once_t half_table_once = PTHREAD_ONCE_INIT;
LK_AVX2 static void fill_half_table(void) {
    for (int h = 0; h < 65536; h++) half_table[h] = _cvtsh_ss((unsigned short)h);
}
static inline float half_from_table(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return half_table[h];
}

LK_AVX2 LK_INLINE static inline float row_q4_q5(int type, const uint8_t *row, const float *xp,
                                                                    const float *sums, int blocks) {
    const int five = type == Q5_0 || type == Q5_1, with_minimum = type == Q4_1 || type == Q5_1;
    const int header = with_minimum ? 4 : 2, quants = header + (five ? 4 : 0), bytes = quants + 16;
    const float offset = five ? -16 : -8;
    __m256 total = _mm256_setzero_ps();
    float offsets = 0;
    for (int b = 0; b < blocks; b++, row += bytes) {
        float d = half_from_table(row);
        offsets += (with_minimum ? half_from_table(row + 2) : offset * d) * sums[b];
        __m256i q = nibbles_32(row + quants);
        if (five) {
            uint32_t qh;
            memcpy(&qh, row + header, 4);
            q = _mm256_or_si256(q, fifth_bits_32(qh));
        }
        total = _mm256_fmadd_ps(_mm256_set1_ps(d), dot_32_lanes(q, xp + 32 * b), total);
    }
    return horizontal_sum(total) + offsets;
}

LK_AVX2 LK_INLINE static inline float row_q8_0(const uint8_t *row, const float *x, int blocks) {
    __m256 total = _mm256_setzero_ps();
    for (int b = 0; b < blocks; b++, row += 34) {
        const float *xb = x + 32 * b;
        const int8_t *q = (const int8_t *)(row + 2);
        __m256 acc = _mm256_mul_ps(signed_bytes_at(q), _mm256_loadu_ps(xb));
        acc = _mm256_fmadd_ps(signed_bytes_at(q + 8), _mm256_loadu_ps(xb + 8), acc);
        acc = _mm256_fmadd_ps(signed_bytes_at(q + 16), _mm256_loadu_ps(xb + 16), acc);
        acc = _mm256_fmadd_ps(signed_bytes_at(q + 24), _mm256_loadu_ps(xb + 24), acc);
        total = _mm256_fmadd_ps(_mm256_set1_ps(half_from_table(row)), acc, total);
    }
    return horizontal_sum(total);
}

// Q4_K / Q5_K with x in permute_32's order: sub-block 2g holds the low nibbles of quant bytes [32g, 32g + 32),
// sub-block 2g + 1 their high nibbles, so one 32-byte load serves two sub-blocks in the lanes' layout.
LK_AVX2 LK_INLINE static inline float row_q4_q5_k(int type, const uint8_t *row, const float *xp, const float *sums, int superblocks) {
    const int five = type == Q5_K, bytes = five ? 176 : 144, quants = five ? 48 : 16;
    const __m256i mask = _mm256_set1_epi8(0x0F), sixteen = _mm256_set1_epi8(0x10);
    __m256 total = _mm256_setzero_ps();
    float minimums = 0;
    for (int b = 0; b < superblocks; b++, row += bytes) {
        const float d = half_to_float(row), dmin = half_to_float(row + 2);
        const float *xb = xp + 256 * b;
        const __m256i high_bits = five ? _mm256_loadu_si256((const __m256i *)(row + 16)) : _mm256_setzero_si256();
        for (int g = 0; g < 4; g++) {
            __m256i packed = _mm256_loadu_si256((const __m256i *)(row + quants + 32 * g));
            for (int half = 0; half < 2; half++) {
                int sub = 2 * g + half;
                __m256i q = _mm256_and_si256(half ? _mm256_srli_epi16(packed, 4) : packed, mask);
                if (five) {
                    const __m256i bit = _mm256_set1_epi8((char)(1 << sub));
                    q = _mm256_or_si256(q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(high_bits, bit), bit), sixteen));
                }
                int scale, minimum;
                scale_min_k4(row + 4, sub, &scale, &minimum);
                minimums += dmin * minimum * sums[8 * b + sub];
                total = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), dot_32_lanes(q, xb + 32 * sub), total);
            }
        }
    }
    return horizontal_sum(total) - minimums;
}

// Q6_K with x in permute_32's order: each (half h, quarter) group of 32 takes its low four bits from 32
// consecutive bytes of ql and its top two from the 32 bytes of qh, elements 0..15 (scale 2·quarter) in the low
// lane and 16..31 (scale 2·quarter + 1) in the high one. The −32 of every quant is applied once per superblock
// from x's sums over 16 (Σ_i sc_i·hs_i, as the scale index of element e is e / 16).
LK_AVX2 LK_INLINE static inline float row_q6_k(const uint8_t *row, const float *xp, const float *half_sums, int superblocks) {
    const __m256i mask = _mm256_set1_epi8(0x0F), top = _mm256_set1_epi8(0x30);
    __m256 total = _mm256_setzero_ps(), centre = _mm256_setzero_ps();
    for (int b = 0; b < superblocks; b++, row += 210) {
        const float d = half_to_float(row + 208);
        const __m128i scale_bytes = _mm_loadu_si128((const __m128i *)(row + 192));
        const __m256 scales_lo = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(scale_bytes)));
        const __m256 scales_hi = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(scale_bytes, 8))));
        centre = _mm256_fmadd_ps(scales_lo, _mm256_loadu_ps(half_sums + 16 * b), centre);
        centre = _mm256_fmadd_ps(scales_hi, _mm256_loadu_ps(half_sums + 16 * b + 8), centre);
        for (int h = 0; h < 2; h++) {
            const uint8_t *ql = row + 64 * h, *qh = row + 128 + 32 * h;
            const __m256 scales = h ? scales_hi : scales_lo;
            const __m256i high_bits = _mm256_loadu_si256((const __m256i *)qh);
            for (int quarter = 0; quarter < 4; quarter++) {
                __m256i low = _mm256_loadu_si256((const __m256i *)(ql + 32 * (quarter % 2)));
                low = _mm256_and_si256(quarter < 2 ? low : _mm256_srli_epi16(low, 4), mask);
                // Bits 2·quarter, 2·quarter + 1 of each qh byte to bits 4, 5 (bits shifted across a byte boundary
                // land outside 0x30).
                __m256i high = quarter < 2 ? _mm256_slli_epi16(high_bits, 4 - 2 * quarter)
                                           : _mm256_srli_epi16(high_bits, 2 * quarter - 4);
                __m256i q = _mm256_or_si256(low, _mm256_and_si256(high, top));
                const __m256i pick = _mm256_setr_epi32(2 * quarter, 2 * quarter, 2 * quarter, 2 * quarter,
                                                       2 * quarter + 1, 2 * quarter + 1, 2 * quarter + 1, 2 * quarter + 1);
                total = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(scales, pick),
                                        dot_32_lanes(q, xp + 256 * b + 128 * h + 32 * quarter), total);
            }
        }
    }
    return horizontal_sum(total) - 32 * horizontal_sum(centre);
}

// F32, F16, BF16 rows: cols is a multiple of 8 (checked by the caller); the tail is summed one by one.
LK_AVX2 LK_INLINE static inline float row_float(int type, const uint8_t *row, const float *x, int cols) {
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

// K-quant rows in a function of their own: sharing one with the 32-element block types made the compiler lay out
// the Q4 and Q8_0 loops 15–50 % slower.
LK_AVX2 LK_INLINE static inline void rows_k(int type, const uint8_t *data, size_t row_bytes, int cols,
                                           const float *sums, const float *half_sums, const float *xp, float *y,
                                           int begin, int end) {
    for (int r = begin; r < end; r++) {
        const uint8_t *row = data + (size_t)r * row_bytes;
        prefetch_ahead(data, row_bytes, r, end);
        y[r] = type == Q6_K ? row_q6_k(row, xp, half_sums, cols / 256) : row_q4_q5_k(type, row, xp, sums, cols / 256);
    }
}

// The 32-element block types in 512-bit registers (the AVX-512 build only): a block's 16 quant bytes widen with one
// vpmovzxbd into 16 lanes, low nibbles (elements 0..15) and high nibbles (16..31) each a register after an and or
// a shift, Q5's fifth bits set under masks read straight from qh, Q8_0's bytes in two signed widenings; x in its own
// order. Fewer instructions per block than the shuffles above: on a Zen 4 (512-bit operations in two halves),
// 5-29 % more weights per ns (lorakit-bench matvec prints both builds).
LK_AVX512 LK_INLINE static inline float row_q4_q5_512(int type, const uint8_t *row, const float *x, const float *sums,
                                                     int blocks) {
    const int five = type == Q5_0 || type == Q5_1, with_minimum = type == Q4_1 || type == Q5_1;
    const int header = with_minimum ? 4 : 2, quants = header + (five ? 4 : 0), bytes = quants + 16;
    const __m512i low_nibble = _mm512_set1_epi32(0x0F), eight = _mm512_set1_epi32(8), sixteen = _mm512_set1_epi32(16);
    __m512 total = _mm512_setzero_ps();
    float minimums = 0;
    for (int b = 0; b < blocks; b++, row += bytes) {
        const float d = half_from_table(row);
        if (with_minimum) minimums += half_from_table(row + 2) * sums[b];
        const __m512i bytes16 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(row + quants)));
        __m512i low = _mm512_and_si512(bytes16, low_nibble), high = _mm512_srli_epi32(bytes16, 4);
        // The symmetric types' quants made signed in the lanes (q − 8; Q5_0's q − 16 as one masked subtraction
        // where the fifth bit is clear), so no per-block offset term remains; Q5_1 sets its fifth bits.
        if (five) {
            uint32_t qh;
            memcpy(&qh, row + header, 4);
            if (with_minimum) {
                low = _mm512_mask_or_epi32(low, (__mmask16)qh, low, sixteen);
                high = _mm512_mask_or_epi32(high, (__mmask16)(qh >> 16), high, sixteen);
            } else {
                low = _mm512_mask_sub_epi32(low, (__mmask16)~qh, low, sixteen);
                high = _mm512_mask_sub_epi32(high, (__mmask16)(~qh >> 16), high, sixteen);
            }
        } else if (!with_minimum) {
            low = _mm512_sub_epi32(low, eight);
            high = _mm512_sub_epi32(high, eight);
        }
        __m512 acc = _mm512_mul_ps(_mm512_cvtepi32_ps(low), _mm512_loadu_ps(x + 32 * b));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(high), _mm512_loadu_ps(x + 32 * b + 16), acc);
        total = _mm512_fmadd_ps(_mm512_set1_ps(d), acc, total);
    }
    return _mm512_reduce_add_ps(total) + minimums;
}

LK_AVX512 LK_INLINE static inline float row_q8_0_512(const uint8_t *row, const float *x, int blocks) {
    __m512 total = _mm512_setzero_ps();
    for (int b = 0; b < blocks; b++, row += 34) {
        const int8_t *q = (const int8_t *)(row + 2);
        const __m512 low = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)q)));
        const __m512 high = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(q + 16))));
        __m512 acc = _mm512_mul_ps(low, _mm512_loadu_ps(x + 32 * b));
        acc = _mm512_fmadd_ps(high, _mm512_loadu_ps(x + 32 * b + 16), acc);
        total = _mm512_fmadd_ps(_mm512_set1_ps(half_from_table(row)), acc, total);
    }
    return _mm512_reduce_add_ps(total);
}

// Each row loop is compiled twice, with the row kernels inlined into it: for AVX2, and for AVX-512, where the
// block types have the kernels above and the rest (K-quants, float rows) are the AVX2 intrinsics compiled with 32
// vector registers, mask compares and three-input logic (on a Zen 4, 4-10 % more weights per ns on Q5_K/Q6_K,
// level on Q4_K). The int8 kernels measured slower when compiled for AVX-512 and stay AVX2 only.
//
// One row loop for the 32-element block types and the float rows, defined once per build with that build's block
// kernels inlined (one call per type, so that each inlined copy is specialized to its layout); `bx` is the x the
// 4- and 5-bit kernel reads: xp (the lanes' order) for the AVX2 shuffles, x itself for the 512-bit lanes.
#define ROWS_BLOCKS(name, target, q4_q5, bx, q8_0)                                                                    \
    target static void name(int type, const uint8_t *data, size_t row_bytes, int cols, const float *x,                \
                            const float *xp, const float *sums, float *y, int begin, int end) {                       \
        (void)xp;                                                                                                     \
        const int blocks = cols / 32;                                                                                 \
        for (int r = begin; r < end; r++) {                                                                           \
            const uint8_t *row = data + (size_t)r * row_bytes;                                                        \
            prefetch_ahead(data, row_bytes, r, end);                                                                  \
            switch (type) {                                                                                           \
            case Q4_0: y[r] = q4_q5(Q4_0, row, bx, sums, blocks); break;                                              \
            case Q4_1: y[r] = q4_q5(Q4_1, row, bx, sums, blocks); break;                                              \
            case Q5_0: y[r] = q4_q5(Q5_0, row, bx, sums, blocks); break;                                              \
            case Q5_1: y[r] = q4_q5(Q5_1, row, bx, sums, blocks); break;                                              \
            case Q8_0: y[r] = q8_0(row, x, blocks); break;                                                            \
            default: y[r] = row_float(type, row, x, cols); break;                                                     \
            }                                                                                                         \
        }                                                                                                             \
    }
ROWS_BLOCKS(rows_blocks_avx2, LK_AVX2, row_q4_q5, xp, row_q8_0)
ROWS_BLOCKS(rows_blocks_avx512, LK_AVX512, row_q4_q5_512, x, row_q8_0_512)

LK_AVX2 static void rows_k_avx2(int type, const uint8_t *data, size_t row_bytes, int cols, const float *sums,
                                const float *half_sums, const float *xp, float *y, int begin, int end) {
    rows_k(type, data, row_bytes, cols, sums, half_sums, xp, y, begin, end);
}
LK_AVX512 static void rows_k_avx512(int type, const uint8_t *data, size_t row_bytes, int cols, const float *sums,
                                    const float *half_sums, const float *xp, float *y, int begin, int end) {
    rows_k(type, data, row_bytes, cols, sums, half_sums, xp, y, begin, end);
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


// -1 until the first product: then whether the CPU has AVX-512 (F, BW, VL, DQ) and LORAKIT_AVX512 is not "off".
static int avx512_kernels = -1;

int lk_matvec_avx512(void) {
#if defined(__x86_64__)
    if (avx512_kernels < 0) avx512_kernels = avx512_kernels_allowed();
    return avx512_kernels;
#else
    return 0;
#endif
}

int lk_matvec_avx512_supported(void) {
#if defined(__x86_64__)
    return has_avx512();
#else
    return 0;
#endif
}

void lk_set_matvec_avx512(int on) {
#if defined(__x86_64__)
    avx512_kernels = on && has_avx512();
#else
    (void)on;
#endif
}

static void matvec_range(const void *context, int begin, int end) {
#if defined(__x86_64__)
    const lk_product *job = context;
    const int wide = avx512_kernels > 0;
    if (job->type == Q4_K || job->type == Q5_K || job->type == Q6_K) {
        (wide ? rows_k_avx512 : rows_k_avx2)(job->type, job->data, job->row_bytes, job->cols, job->sums,
                                             job->half_sums, job->xp, job->y, begin, end);
    } else {
        (wide ? rows_blocks_avx512 : rows_blocks_avx2)(job->type, job->data, job->row_bytes, job->cols, job->x,
                                                       job->xp, job->sums, job->y, begin, end);
    }
#else
    (void)context; (void)begin; (void)end;
#endif
}

void lk_matvec(int type, const void *data, size_t row_bytes, int rows, int cols, const float *x, float *y) {
    pthread_once(&half_table_once, fill_half_table);
    lk_decide_prefetching();
    lk_matvec_avx512();
    // x in the lanes' order, its sums over halves of 16 (Q6_K's scale groups) and over blocks of 32.
    enum { stack_cols = 8192 };
    float stack[stack_cols + stack_cols / 32 * 3];
    const int blocks = cols / 32;
    float *xp = cols <= stack_cols ? stack : malloc(sizeof(float) * ((size_t)cols + (size_t)blocks * 3));
    float *half_sums = xp + cols, *sums = half_sums + 2 * blocks;
    permute_32(x, cols, xp);
    for (int h = 0; h < 2 * blocks; h++) {
        float s = 0;
        for (int j = 0; j < 16; j++) s += x[16 * h + j];
        half_sums[h] = s;
    }
    for (int b = 0; b < blocks; b++) sums[b] = half_sums[2 * b] + half_sums[2 * b + 1];
    lk_product job = {.type = type, .data = data, .row_bytes = row_bytes, .cols = cols, .x = x, .xp = xp, .sums = sums,
                      .half_sums = half_sums, .y = y};
    lk_split_rows(rows, cols, matvec_range, &job);
    if (xp != stack) free(xp);
}
