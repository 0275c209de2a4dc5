// Element-wise ops built on e^x, 8 lanes at a time with AVX2 + FMA: Σ e^(x − shift) (softmax, cross-entropy) and
// SwiGLU's forward and backward. VectorMath (Swift, 16-lane SIMD) computes the same things on every CPU and stays
// the path where AVX2 is missing; on x86 Swift splits its 16-lane vectors into 128-bit halves, blends through
// memory and never fuses a multiply-add, so these loops ran several times slower there (BENCHMARKS.md).
//
// e^x is Cephes' expf, as VectorMath.exp: x = n·ln 2 + r with |r| ≤ ln 2 / 2, a degree-6 polynomial in r, 2ⁿ built
// in the exponent bits; 0 below −87.34, +∞ above 88.72, NaN stays NaN (the NaN guard of training relies on it).
//
// Shapes: x, out, gate, up, d, d_gate, d_up [count], element-wise.

#include "CKernels.h"
#include "blocks.h"

#if defined(__x86_64__)
LK_AVX2 static inline __m256 exp8(__m256 x) {
    const __m256 low = _mm256_set1_ps(-87.33654f), high = _mm256_set1_ps(88.3762626647949f);
    // max/min return their second operand when either is NaN: x itself, so NaN flows through.
    const __m256 clamped = _mm256_min_ps(high, _mm256_max_ps(low, x));
    const __m256 magic = _mm256_set1_ps(12582912.0f);  // 1.5·2²³: adding it rounds to an integer in the low bits
    const __m256 shifted = _mm256_fmadd_ps(clamped, _mm256_set1_ps(1.44269504088896341f), magic);
    const __m256 n = _mm256_sub_ps(shifted, magic);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), clamped);  // ln 2 in two parts, n·ln2₁ exact
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_fmadd_ps(r, _mm256_set1_ps(1.9875691500e-4f), _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    const __m256 y = _mm256_add_ps(_mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r), _mm256_set1_ps(1.0f));
    const __m256i exponent = _mm256_add_epi32(_mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(magic)),
                                              _mm256_set1_epi32(127));
    __m256 e = _mm256_mul_ps(y, _mm256_castsi256_ps(_mm256_slli_epi32(exponent, 23)));
    e = _mm256_andnot_ps(_mm256_cmp_ps(x, low, _CMP_LT_OQ), e);
    return _mm256_blendv_ps(e, _mm256_set1_ps(__builtin_inff()), _mm256_cmp_ps(x, _mm256_set1_ps(88.72283f), _CMP_GT_OQ));
}

// Lanes [0, left) of a vector: the mask for loads and stores of a row's tail.
LK_AVX2 static inline __m256i first_lanes(int left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The 8 floats at p, or the first `left` of them (the rest 0) at a row's end.
LK_AVX2 static inline __m256 load_up_to_8(const float *p, int left) {
    return left >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, first_lanes(left));
}

LK_AVX2 static inline void store_up_to_8(float *p, int left, __m256 v) {
    if (left >= 8) _mm256_storeu_ps(p, v); else _mm256_maskstore_ps(p, first_lanes(left), v);
}

LK_AVX2 static double exp_sum_avx2(const float *x, int count, float shift, float *out) {
    const __m256 s = _mm256_set1_ps(shift);
    double total = 0;
    int i = 0;
    // Float sums over blocks of 64, added in Double: tens of thousands of terms (a vocabulary) stay exact enough.
    while (i < count) {
        __m256 block = _mm256_setzero_ps();
        const int end = i + 64 < count ? i + 64 : count;
        for (; i + 8 <= end; i += 8) {
            __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), s));
            if (out) _mm256_storeu_ps(out + i, e);
            block = _mm256_add_ps(block, e);
        }
        if (i < end) {
            const __m256i lanes = first_lanes(end - i);
            // Lanes past the end read −∞: e^−∞ = 0 adds nothing.
            __m256 v = _mm256_blendv_ps(_mm256_set1_ps(-__builtin_inff()), _mm256_maskload_ps(x + i, lanes),
                                        _mm256_castsi256_ps(lanes));
            __m256 e = exp8(_mm256_sub_ps(v, s));
            if (out) _mm256_maskstore_ps(out + i, lanes, e);
            block = _mm256_add_ps(block, e);
            i = end;
        }
        total += horizontal_sum(block);
    }
    return total;
}

// silu(g) = g·σ(g), its derivative σ(g)·(1 + g·(1 − σ(g))).
LK_AVX2 static inline __m256 sigmoid8(__m256 g) {
    const __m256 one = _mm256_set1_ps(1.0f);
    return _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
}

LK_AVX2 static void swiglu_forward_avx2(const float *gate, const float *up, float *out, int count) {
    for (int i = 0; i < count; i += 8) {
        const int left = count - i;
        const __m256 g = load_up_to_8(gate + i, left), u = load_up_to_8(up + i, left);
        store_up_to_8(out + i, left, _mm256_mul_ps(_mm256_mul_ps(g, sigmoid8(g)), u));
    }
}

LK_AVX2 static void swiglu_backward_avx2(const float *d, const float *gate, const float *up, float *d_gate, float *d_up,
                                         int count) {
    const __m256 one = _mm256_set1_ps(1.0f);
    for (int i = 0; i < count; i += 8) {
        const int left = count - i;
        const __m256 g = load_up_to_8(gate + i, left), u = load_up_to_8(up + i, left), dy = load_up_to_8(d + i, left);
        const __m256 s = sigmoid8(g);
        const __m256 slope = _mm256_mul_ps(s, _mm256_fmadd_ps(g, _mm256_sub_ps(one, s), one));
        store_up_to_8(d_gate + i, left, _mm256_mul_ps(_mm256_mul_ps(dy, u), slope));
        store_up_to_8(d_up + i, left, _mm256_mul_ps(dy, _mm256_mul_ps(g, s)));
    }
}

// GeGLU (tanh-approximated GELU in its sigmoid form, as GeGLU.swift): gelu(g) = g·s, s = σ(2z),
// z = √(2/π)·(g + 0.044715·g³); its derivative s + g·s·(1 − s)·2√(2/π)·(1 + 3·0.044715·g²).
LK_AVX2 static inline __m256 geglu_sigmoid8(__m256 g, __m256 g2) {
    const __m256 two_k0 = _mm256_set1_ps((float)(2 * 0.7978845608028654)), k1 = _mm256_set1_ps(0.044715f);
    return sigmoid8(_mm256_mul_ps(two_k0, _mm256_fmadd_ps(_mm256_mul_ps(k1, g2), g, g)));
}

LK_AVX2 static void geglu_forward_avx2(const float *gate, const float *up, float *out, int count) {
    for (int i = 0; i < count; i += 8) {
        const int left = count - i;
        const __m256 g = load_up_to_8(gate + i, left), u = load_up_to_8(up + i, left);
        store_up_to_8(out + i, left, _mm256_mul_ps(_mm256_mul_ps(g, geglu_sigmoid8(g, _mm256_mul_ps(g, g))), u));
    }
}

LK_AVX2 static void geglu_backward_avx2(const float *d, const float *gate, const float *up, float *d_gate, float *d_up,
                                        int count) {
    const __m256 one = _mm256_set1_ps(1.0f), two_k0 = _mm256_set1_ps((float)(2 * 0.7978845608028654));
    const __m256 three_k1 = _mm256_set1_ps((float)(3 * 0.044715));
    for (int i = 0; i < count; i += 8) {
        const int left = count - i;
        const __m256 g = load_up_to_8(gate + i, left), u = load_up_to_8(up + i, left), dy = load_up_to_8(d + i, left);
        const __m256 g2 = _mm256_mul_ps(g, g), s = geglu_sigmoid8(g, g2);
        const __m256 slope = _mm256_mul_ps(two_k0, _mm256_fmadd_ps(three_k1, g2, one));
        const __m256 derivative = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_mul_ps(g, s), _mm256_sub_ps(one, s)), slope, s);
        store_up_to_8(d_gate + i, left, _mm256_mul_ps(_mm256_mul_ps(dy, u), derivative));
        store_up_to_8(d_up + i, left, _mm256_mul_ps(dy, _mm256_mul_ps(g, s)));
    }
}
#endif

int lk_elementwise_supported(void) {
#if defined(__x86_64__)
    return has_avx2();
#else
    return 0;
#endif
}

double lk_exp_sum(const float *x, int count, float shift, float *out) {
#if defined(__x86_64__)
    return exp_sum_avx2(x, count, shift, out);
#else
    (void)x; (void)count; (void)shift; (void)out;
    return 0;
#endif
}

void lk_swiglu_forward(const float *gate, const float *up, float *out, int count) {
#if defined(__x86_64__)
    swiglu_forward_avx2(gate, up, out, count);
#else
    (void)gate; (void)up; (void)out; (void)count;
#endif
}

void lk_swiglu_backward(const float *d, const float *gate, const float *up, float *d_gate, float *d_up, int count) {
#if defined(__x86_64__)
    swiglu_backward_avx2(d, gate, up, d_gate, d_up, count);
#else
    (void)d; (void)gate; (void)up; (void)d_gate; (void)d_up; (void)count;
#endif
}

void lk_geglu_forward(const float *gate, const float *up, float *out, int count) {
#if defined(__x86_64__)
    geglu_forward_avx2(gate, up, out, count);
#else
    (void)gate; (void)up; (void)out; (void)count;
#endif
}

void lk_geglu_backward(const float *d, const float *gate, const float *up, float *d_gate, float *d_up, int count) {
#if defined(__x86_64__)
    geglu_backward_avx2(d, gate, up, d_gate, d_up, count);
#else
    (void)d; (void)gate; (void)up; (void)d_gate; (void)d_up; (void)count;
#endif
}
