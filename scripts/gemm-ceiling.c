// How fast float32 products can be on this core, beside what the BLAS reaches (BENCHMARKS.md, "The float32
// products' ceiling on this core"). Prints, for one thread:
//   - a loop of independent 512-bit FMAs (the register peak),
//   - a register-blocked AVX-512 micro-kernel (MR × NR tile, A packed in 16-float columns, B broadcast from memory)
//     over operands already packed and in L2, for several tile shapes: a GEMM of our own could not beat this,
//   - cblas_sgemm of the BLAS named on the command line on a training step's shapes (best of six).
//
//   gcc -O3 -march=native scripts/gemm-ceiling.c -o /tmp/gemm-ceiling -ldl
//   OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=1 /tmp/gemm-ceiling libopenblas.so.0
#include <dlfcn.h>
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static double fma_peak(void) {
    __m512 acc[12];
    const __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_ps((float)i);
    const long iterations = 50000000;
    double best = 0;
    for (int round = 0; round < 3; round++) {
        double t = now();
        for (long it = 0; it < iterations; it++) {
#pragma GCC unroll 12
            for (int i = 0; i < 12; i++) acc[i] = _mm512_fmadd_ps(acc[i], x, y);
        }
        t = now() - t;
        if (iterations * 12 * 32 / t * 1e-9 > best) best = iterations * 12 * 32 / t * 1e-9;
    }
    float sink = 0;
    for (int i = 0; i < 12; i++) sink += _mm512_reduce_add_ps(acc[i]);
    if (sink == 1.0f) printf(" ");  // keeps the loop
    return best;
}

// C[MR × NR] += A (k columns of MR) · B (k rows of NR); MR = 16 · MRV.
#define MICRO_KERNEL(MRV, NR)                                                                                   \
    __attribute__((noinline)) static void kernel_##MRV##_##NR(int k, const float *a, const float *b, float *c,   \
                                                               int ldc) {                                      \
        __m512 acc[MRV][NR];                                                                                    \
        for (int j = 0; j < NR; j++)                                                                            \
            for (int i = 0; i < MRV; i++) acc[i][j] = _mm512_setzero_ps();                                      \
        for (int p = 0; p < k; p++) {                                                                           \
            __m512 column[MRV];                                                                                 \
            for (int i = 0; i < MRV; i++) column[i] = _mm512_load_ps(a + 16 * i);                             \
            _mm_prefetch((const char *)(a + 16 * MRV * 8), _MM_HINT_T0);                                        \
            for (int j = 0; j < NR; j++) {                                                                      \
                const __m512 broadcast = _mm512_set1_ps(b[j]);                                                  \
                for (int i = 0; i < MRV; i++) acc[i][j] = _mm512_fmadd_ps(column[i], broadcast, acc[i][j]);    \
            }                                                                                                   \
            a += 16 * MRV;                                                                                      \
            b += NR;                                                                                            \
        }                                                                                                       \
        for (int j = 0; j < NR; j++)                                                                            \
            for (int i = 0; i < MRV; i++) {                                                                     \
                float *q = c + j * ldc + 16 * i;                                                                \
                _mm512_storeu_ps(q, _mm512_add_ps(_mm512_loadu_ps(q), acc[i][j]));                             \
            }                                                                                                   \
    }                                                                                                           \
    static double rate_##MRV##_##NR(void) {                                                                     \
        const int K = 256, MR = 16 * MRV, MC = MR * (384 / MR), NC = NR * (1200 / NR);                          \
        float *A = aligned_alloc(64, sizeof(float) * MC * K), *B = aligned_alloc(64, sizeof(float) * K * NC);   \
        float *C = aligned_alloc(64, sizeof(float) * MC * NC);                                                  \
        for (long i = 0; i < (long)MC * K; i++) A[i] = 1e-3f * (float)(i % 13);                                 \
        for (long i = 0; i < (long)K * NC; i++) B[i] = 1e-3f * (float)(i % 11);                                 \
        for (long i = 0; i < (long)MC * NC; i++) C[i] = 0;                                                      \
        double best = 0;                                                                                        \
        for (int round = 0; round < 5; round++) {                                                               \
            double t = now(), flops = 0;                                                                        \
            for (int repeat = 0; repeat < 10; repeat++)                                                         \
                for (int jn = 0; jn < NC; jn += NR)                                                             \
                    for (int im = 0; im < MC; im += MR) {                                                       \
                        kernel_##MRV##_##NR(K, A + (long)im * K, B + (long)jn * K, C + (long)jn * MC + im, MC); \
                        flops += 2.0 * MR * NR * K;                                                             \
                    }                                                                                           \
            t = now() - t;                                                                                      \
            if (flops / t * 1e-9 > best) best = flops / t * 1e-9;                                               \
        }                                                                                                       \
        free(A);                                                                                                \
        free(B);                                                                                                \
        free(C);                                                                                                \
        return best;                                                                                            \
    }

MICRO_KERNEL(2, 12)
MICRO_KERNEL(2, 14)
MICRO_KERNEL(2, 10)
MICRO_KERNEL(3, 8)
MICRO_KERNEL(3, 9)
MICRO_KERNEL(4, 6)
MICRO_KERNEL(1, 24)

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int, float, float *,
                         int);

static void blas_rates(const char *path) {
    void *handle = dlopen(path, RTLD_NOW);
    sgemm_fn sgemm = handle ? (sgemm_fn)dlsym(handle, "cblas_sgemm") : NULL;
    if (!sgemm) {
        printf("%s: no cblas_sgemm\n", path);
        return;
    }
    const int shapes[][5] = {{0, 1, 1024, 1536, 576}, {0, 0, 1024, 576, 1536}, {1, 0, 576, 1536, 1024},
                             {0, 1, 1024, 4864, 896}, {0, 0, 1024, 896, 4864}, {0, 1, 1024, 4096, 576}};
    for (int s = 0; s < 6; s++) {
        const int ta = shapes[s][0], tb = shapes[s][1], M = shapes[s][2], N = shapes[s][3], K = shapes[s][4];
        float *A = malloc(sizeof(float) * M * K), *B = malloc(sizeof(float) * K * N), *C = malloc(sizeof(float) * M * N);
        for (long i = 0; i < (long)M * K; i++) A[i] = 0.1f * (float)(i % 7);
        for (long i = 0; i < (long)K * N; i++) B[i] = 0.1f * (float)(i % 5);
        double best = 1e9;
        for (int round = 0; round < 6; round++) {
            double t = now();
            sgemm(101, ta ? 112 : 111, tb ? 112 : 111, M, N, K, 1, A, ta ? M : K, B, tb ? K : N, 0, C, N);
            t = now() - t;
            if (t < best) best = t;
        }
        printf("  %s: %s%s %4d × %4d × %4d  %.1f GFLOP/s\n", path, ta ? "T" : "N", tb ? "T" : "N", M, N, K,
               2.0 * M * N * K / best * 1e-9);
        free(A);
        free(B);
        free(C);
    }
}

int main(int argc, char **argv) {
    printf("register peak (independent 512-bit FMAs): %.1f GFLOP/s\n", fma_peak());
    printf("micro-kernel on packed operands in L2, MR × NR:\n");
    printf("  32 × 12 %.1f, 32 × 14 %.1f, 32 × 10 %.1f, 48 × 8 %.1f, 48 × 9 %.1f, 64 × 6 %.1f, 16 × 24 %.1f GFLOP/s\n",
           rate_2_12(), rate_2_14(), rate_2_10(), rate_3_8(), rate_3_9(), rate_4_6(), rate_1_24());
    for (int i = 1; i < argc; i++) blas_rates(argv[i]);
    return 0;
}
