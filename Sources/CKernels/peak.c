// The float32 arithmetic peak of one core: independent multiply-add chains on registers only, no memory traffic.
// Benchmarks compare the products' rate with it, so that "the step runs at N % of what the CPU can do" is a
// measured figure, not a data-sheet one.

#include "CKernels.h"
#include "blocks.h"

#include <time.h>

static double seconds_now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

#if defined(__x86_64__)
// Ten chains: enough to cover the multiply-add latency (4-5 cycles) on two ports on every AVX2 CPU so far.
LK_AVX2 static double fma_loop(long iterations) {
    __m256 c0 = _mm256_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0;
    const __m256 a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
    const double start = seconds_now();
    for (long i = 0; i < iterations; i++) {
        c0 = _mm256_fmadd_ps(a, c0, b); c1 = _mm256_fmadd_ps(a, c1, b); c2 = _mm256_fmadd_ps(a, c2, b);
        c3 = _mm256_fmadd_ps(a, c3, b); c4 = _mm256_fmadd_ps(a, c4, b); c5 = _mm256_fmadd_ps(a, c5, b);
        c6 = _mm256_fmadd_ps(a, c6, b); c7 = _mm256_fmadd_ps(a, c7, b); c8 = _mm256_fmadd_ps(a, c8, b);
        c9 = _mm256_fmadd_ps(a, c9, b);
        // Keeps the chains in registers and the loop from being folded away.
        __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7),
                         "+x"(c8), "+x"(c9));
    }
    return seconds_now() - start;
}
#endif

double lk_float32_peak_gflops(void) {
#if defined(__x86_64__)
    if (!has_avx2()) return 0;
    const long iterations = 20000000;  // 3.2 GFLOP: about 30 ms at 100 GFLOP/s
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        const double t = fma_loop(iterations);
        if (t < best) best = t;
    }
    return 10.0 * 16.0 * (double)iterations / best / 1e9;
#else
    return 0;
#endif
}
