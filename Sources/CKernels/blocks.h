// What the per-token kernels (matvec.c, matvec_int8.c) share: GGUF's type numbers, the run-time AVX2 check, and
// reading the blocks' f16 scales and K-quant sub-block scales.
#ifndef LORAKIT_BLOCKS_H
#define LORAKIT_BLOCKS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q4_K = 12, Q5_K = 13, Q6_K = 14, BF16 = 30 };

// One product's operands: x with its sums over 32 and 16 and its lanes' order (exact kernels, matvec.c), or x
// rounded to 8 bits (int8 kernels).
typedef struct {
    int type;
    const void *data;
    size_t row_bytes;
    int cols;
    const float *x, *xp, *sums;
    const int8_t *q;
    const float *scales;
    const float *half_sums;
    float *y;
} lk_product;

// A float's bits rounded to bf16: nearest even, NaN kept (made quiet); the one scalar rounding rule of the kernels.
static inline uint16_t bf16_bits(uint32_t u) {
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Runs run(context, begin, end) over rows [0, rows) of a product with `cols` columns: on the calling thread for
// small products, else in parts of whole 16-row groups across the pool's threads (threadpool.c).
typedef void (*lk_row_range)(const void *context, int begin, int end);
void lk_split_rows(int rows, int cols, lk_row_range run, const void *context);

// The six-bit scale and minimum of sub-block j (0..<8) of a Q4_K/Q5_K superblock.
static inline void scale_min_k4(const uint8_t *q, int j, int *scale, int *minimum) {
    if (j < 4) {
        *scale = q[j] & 63;
        *minimum = q[j + 4] & 63;
    } else {
        *scale = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *minimum = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>

#define LK_AVX2 __attribute__((target("avx2,fma,f16c")))
#define LK_AVX512 __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq")))
// For a kernel written once with AVX2 intrinsics and compiled into both an AVX2 and an AVX-512 caller.
#define LK_INLINE __attribute__((always_inline))

static inline int has_avx2(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return cached;
}

static inline int has_avx512(void) {
    static int cached = -1;
    if (cached < 0) {
        __builtin_cpu_init();
        cached = has_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    }
    return cached;
}

// Whether our AVX-512 kernels may run: the CPU has AVX-512 and LORAKIT_AVX512 is not "off" (which keeps every
// kernel of ours on AVX2 or the BLAS).
static inline int avx512_kernels_allowed(void) {
    const char *setting = getenv("LORAKIT_AVX512");
    return has_avx512() && !(setting && strcmp(setting, "off") == 0);
}

LK_AVX2 static inline float half_to_float(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// Byte j = 16 where bit j of `bits` is set: the fifth bits of a Q5_0/Q5_1 block's 32 quants, element j in byte j
// (elements 0..15 in the low 128-bit lane, 16..31 in the high one).
LK_AVX2 static inline __m256i fifth_bits_32(uint32_t bits) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i select = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), spread);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, select), select);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x10));
}

// Whether the per-token kernels ask for rows ahead: decided once per process by lk_decide_prefetching (prefetch.c),
// which measures both ways on this CPU.
extern int lk_prefetching_rows;

// Asks for the row that starts about 4 KB after row r (within the part's rows [.., end)) while row r is computed.
// A token's product streams the whole matrix from memory once. On a Zen 3 EPYC the hardware's own prefetch left a
// Q8_0 head of 262 144 × 640 at 5-7 weights/ns on one core where this reaches 8.8-10; on a Zen 4 the hardware does
// better alone (15.4-15.7 against 10.6-11.6 at 65 536 × 1024), hence the measurement.
static inline void prefetch_ahead(const uint8_t *data, size_t row_bytes, int r, int end) {
    if (!lk_prefetching_rows) return;
    const int ahead = (int)((4096 + row_bytes - 1) / row_bytes);
    if (r + ahead >= end) return;
    const uint8_t *p = data + (size_t)(r + ahead) * row_bytes;
    for (size_t offset = 0; offset < row_bytes; offset += 64) _mm_prefetch((const char *)p + offset, _MM_HINT_T0);
}

LK_AVX2 static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

#endif
