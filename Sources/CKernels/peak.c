// The float32 and bf16 arithmetic peaks of one core: independent multiply-add chains on registers only, no memory
// traffic. Benchmarks compare the products' rate with them, so that "the step runs at N % of what the CPU can do" is
// a measured figure, not a data-sheet one.

#include "CKernels.h"
#include "blocks.h"

#include <time.h>

#if defined(__x86_64__)
#include <cpuid.h>
#endif

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

// Twelve chains of vdpbf16ps on 512-bit registers: each adds 16 lanes × 2 bf16 products (64 operations).
__attribute__((target("avx2,fma,avx512f,avx512bf16"))) static double bf16_loop(long iterations) {
    __m512 c0 = _mm512_setzero_ps(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0, c6 = c0, c7 = c0, c8 = c0, c9 = c0,
           c10 = c0, c11 = c0;
    const __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f7f3f7f), b = (__m512bh)_mm512_set1_epi32(0x3a833a83);
    const double start = seconds_now();
    for (long i = 0; i < iterations; i++) {
        c0 = _mm512_dpbf16_ps(c0, a, b); c1 = _mm512_dpbf16_ps(c1, a, b); c2 = _mm512_dpbf16_ps(c2, a, b);
        c3 = _mm512_dpbf16_ps(c3, a, b); c4 = _mm512_dpbf16_ps(c4, a, b); c5 = _mm512_dpbf16_ps(c5, a, b);
        c6 = _mm512_dpbf16_ps(c6, a, b); c7 = _mm512_dpbf16_ps(c7, a, b); c8 = _mm512_dpbf16_ps(c8, a, b);
        c9 = _mm512_dpbf16_ps(c9, a, b); c10 = _mm512_dpbf16_ps(c10, a, b); c11 = _mm512_dpbf16_ps(c11, a, b);
        __asm__ volatile("" : "+v"(c0), "+v"(c1), "+v"(c2), "+v"(c3), "+v"(c4), "+v"(c5), "+v"(c6), "+v"(c7),
                         "+v"(c8), "+v"(c9), "+v"(c10), "+v"(c11));
    }
    return seconds_now() - start;
}
#endif

// The best of five timed rounds of `loop`, as operations per second.
static double best_rate(double (*loop)(long), long iterations, double operations_per_iteration) {
    double best = 1e30;
    for (int round = 0; round < 5; round++) {
        const double t = loop(iterations);
        if (t < best) best = t;
    }
    return operations_per_iteration * (double)iterations / best / 1e9;
}

double lk_bf16_peak_gflops(void) {
#if defined(__x86_64__)
    if (!lk_bf16_tiles_supported()) return 0;  // the CPU check of the bf16 tile kernel
    // AMX's tiles (CPUID leaf 7, EDX bit 22: AMX-BF16) multiply faster than vdpbf16ps, so this is no ceiling there.
    unsigned int eax, ebx, ecx, edx;
    if (__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx & (1u << 22))) return 0;
    return best_rate(bf16_loop, 10000000, 12.0 * 64.0);  // 7.7 GFLOP: about 35 ms at 220 GFLOP/s
#else
    return 0;
#endif
}

double lk_float32_peak_gflops(void) {
#if defined(__x86_64__)
    if (!has_avx2()) return 0;
    return best_rate(fma_loop, 20000000, 10.0 * 16.0);  // 3.2 GFLOP: about 30 ms at 100 GFLOP/s
#else
    return 0;
#endif
}
