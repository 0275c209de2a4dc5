// Whether the per-token kernels prefetch rows ahead, decided by measuring on this CPU: software prefetch made a
// Zen 3's products over a large matrix 1.3-1.5× faster and a Zen 4's 1.3-1.5× slower (BENCHMARKS.md), so neither
// choice can be fixed in the code. The measurement streams a Q8_0 matrix twice the size of the last-level cache
// through the int8 kernel (the same row loop as every per-token kernel), alternating with and without, best of two.

#include "CKernels.h"
#include "blocks.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

int lk_prefetching_rows = 1;
static double measured_with = 0, measured_without = 0;
static pthread_once_t decided = PTHREAD_ONCE_INIT;

static double now_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

// The last-level cache one core can use: Linux's description of cpu0's level-3 cache ("32768K"), which counts one
// instance; sysconf's figure may add up every instance on the host (320 MB under a 32 MB VM), which made the
// measurement stream 256 MB where 64 MB do.
static size_t last_level_cache_bytes(void) {
    FILE *file = fopen("/sys/devices/system/cpu/cpu0/cache/index3/size", "r");
    if (file) {
        unsigned long long value = 0;
        char unit = 0;
        const int fields = fscanf(file, "%llu%c", &value, &unit);
        fclose(file);
        if (fields >= 1 && value > 0) {
            const unsigned long long scale = unit == 'K' ? 1ull << 10 : unit == 'M' ? 1ull << 20 : unit == 'G' ? 1ull << 30 : 1;
            return (size_t)(value * scale);
        }
    }
#ifdef _SC_LEVEL3_CACHE_SIZE
    long bytes = sysconf(_SC_LEVEL3_CACHE_SIZE);
    if (bytes > 0) return (size_t)bytes;
#endif
    return 32u << 20;
}

static void measure(void) {
#if defined(__x86_64__)
    if (!lk_matvec_int8_supported(Q8_0)) return;
    enum { cols = 1024, row_bytes = cols / 32 * 34 };
    size_t bytes = 2 * last_level_cache_bytes();
    if (bytes < (32u << 20)) bytes = 32u << 20;
    if (bytes > (256u << 20)) bytes = 256u << 20;
    const int rows = (int)(bytes / row_bytes);
    // Mapped and unmapped rather than malloc'd, so that the memory goes back to the system at once.
    uint8_t *matrix = mmap(NULL, (size_t)rows * row_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    float *y = malloc(sizeof(float) * (size_t)rows);
    if (matrix == MAP_FAILED || !y) {
        if (matrix != MAP_FAILED) munmap(matrix, (size_t)rows * row_bytes);
        free(y);
        return;
    }
    memset(matrix, 0x11, (size_t)rows * row_bytes);  // every page present, scales small and finite
    int8_t q[cols];
    float scales[cols / 32], half_sums[cols / 16];
    memset(q, 1, sizeof q);
    for (int b = 0; b < cols / 32; b++) scales[b] = 1;
    for (int h = 0; h < cols / 16; h++) half_sums[h] = 16;
    double best[2] = {1e30, 1e30};
    for (int round = 0; round < 5; round++) {
        const int on = round % 2;  // the first round (without) also warms the code and the page tables
        lk_prefetching_rows = on;
        const double start = now_seconds();
        lk_matvec_int8_rows(Q8_0, matrix, row_bytes, cols, q, scales, half_sums, y, 0, rows);
        const double seconds = now_seconds() - start;
        if (round > 0 && seconds < best[on]) best[on] = seconds;
    }
    munmap(matrix, (size_t)rows * row_bytes);
    free(y);
    measured_with = best[1];
    measured_without = best[0];
    // Prefetch only where it clearly helps: it costs instructions, and the hardware's own prefetch is free.
    lk_prefetching_rows = best[1] < 0.95 * best[0];
#endif
}

static void decide(void) {
    const char *setting = getenv("LORAKIT_PREFETCH");
    if (setting && strcmp(setting, "on") == 0) {
        lk_prefetching_rows = 1;
    } else if (setting && strcmp(setting, "off") == 0) {
        lk_prefetching_rows = 0;
    } else {
        measure();
    }
}

void lk_decide_prefetching(void) { pthread_once(&decided, decide); }

int lk_prefetching(void) {
    lk_decide_prefetching();
    return lk_prefetching_rows;
}

void lk_set_prefetching(int on) {
    lk_decide_prefetching();
    lk_prefetching_rows = on != 0;
}

void lk_prefetch_timings(double *with_prefetch, double *without_prefetch) {
    lk_decide_prefetching();
    *with_prefetch = measured_with;
    *without_prefetch = measured_without;
}
