// A minimal thread pool for per-token work: generating one token runs ~200 small products a few microseconds
// apart, too short for dispatch queues to wake threads each time. Workers spin on a job counter for a while
// after each job, then sleep on a condition variable.

#include "CKernels.h"
#include "blocks.h"

#include <pthread.h>
#include <stdatomic.h>

enum { max_workers = 63, spin_rounds = 200000 };

static struct {
    pthread_mutex_t mutex;
    pthread_cond_t wake;
    int threads;  // including the caller
    int started;  // workers created so far
    // One word: generation << 40 | parts << 20 | next part. Claiming a part is one compare-and-swap on it, so a
    // worker late from the previous job can never take a part of the next one.
    _Atomic uint64_t ticket;
    _Atomic int pending;
    _Atomic int busy;  // a job is running: a second caller runs its parts itself
    lk_task task;
    void *context;
} pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 1, 0, 0, 0, 0, 0, 0};

static inline void relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

static void run_parts(uint64_t generation) {
    for (;;) {
        uint64_t t = atomic_load_explicit(&pool.ticket, memory_order_acquire);
        if (t >> 40 != generation) return;
        uint64_t parts = (t >> 20) & 0xFFFFF, next = t & 0xFFFFF;
        if (next >= parts) return;
        if (!atomic_compare_exchange_weak_explicit(&pool.ticket, &t, t + 1, memory_order_acq_rel, memory_order_acquire)) continue;
        pool.task(pool.context, (int)next);
        atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_release);
    }
}

// Set on the pool's own threads: the caller's thread spans a job's wall time, a worker's overlaps it.
static _Thread_local int on_worker;

static void *worker(void *unused) {
    (void)unused;
    on_worker = 1;
    uint64_t seen = atomic_load(&pool.ticket) >> 40;
    for (;;) {
        uint64_t now;
        int spins = 0;
        while ((now = atomic_load_explicit(&pool.ticket, memory_order_acquire) >> 40) == seen) {
            if (++spins < spin_rounds) {
                relax();
                continue;
            }
            pthread_mutex_lock(&pool.mutex);
            while (atomic_load(&pool.ticket) >> 40 == seen) pthread_cond_wait(&pool.wake, &pool.mutex);
            pthread_mutex_unlock(&pool.mutex);
        }
        seen = now;
        run_parts(now);
    }
    return 0;
}

void lk_set_threads(int threads) {
    pthread_mutex_lock(&pool.mutex);
    pool.threads = threads < 1 ? 1 : threads > max_workers + 1 ? max_workers + 1 : threads;
    pthread_mutex_unlock(&pool.mutex);
}

int lk_threads(void) { return pool.threads; }

void lk_parallel_for(int parts, lk_task task, void *context) {
    if (pool.threads <= 1 || parts <= 1 || parts > 0xFFFFF || atomic_exchange(&pool.busy, 1)) {
        for (int p = 0; p < parts; p++) task(context, p);
        return;
    }
    pthread_mutex_lock(&pool.mutex);
    while (pool.started < pool.threads - 1) {
        pthread_t thread;
        if (pthread_create(&thread, 0, worker, 0) != 0) break;
        pthread_detach(thread);
        pool.started++;
    }
    pthread_mutex_unlock(&pool.mutex);
    if (pool.started == 0) {
        for (int p = 0; p < parts; p++) task(context, p);
        atomic_store(&pool.busy, 0);
        return;
    }
    pool.task = task;
    pool.context = context;
    atomic_store_explicit(&pool.pending, parts, memory_order_relaxed);
    pthread_mutex_lock(&pool.mutex);
    uint64_t generation = ((atomic_load(&pool.ticket) >> 40) + 1) & 0xFFFFFF;
    atomic_store_explicit(&pool.ticket, generation << 40 | (uint64_t)parts << 20, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.mutex);
    run_parts(generation);
    while (atomic_load_explicit(&pool.pending, memory_order_acquire) > 0) relax();
    atomic_store_explicit(&pool.busy, 0, memory_order_release);
}

typedef struct {
    int rows, parts;
    lk_row_range run;
    const void *context;
} split_job;

static void split_part(void *context, int part) {
    const split_job *job = context;
    // Parts of whole 16-row groups, so that neighbouring threads never write the same cache line of y.
    int groups = (job->rows + 15) / 16, per = (groups + job->parts - 1) / job->parts;
    int begin = part * per * 16, end = begin + per * 16;
    if (end > job->rows) end = job->rows;
    if (begin < end) job->run(job->context, begin, end);
}

void lk_split_rows(int rows, int cols, lk_row_range run, const void *context) {
    // Below ~64 K weights a part is too small to pay for waking a thread. Above it, four parts a thread: the
    // worker starts later than the caller, and parts claimed as threads come free even out the finish.
    int parts = (long long)rows * cols < (1 << 16) ? 1 : lk_threads() == 1 ? 1 : 4 * lk_threads();
    if (parts > (rows + 15) / 16) parts = (rows + 15) / 16;
    split_job job = {rows, parts, run, context};
    if (parts <= 1) split_part(&job, 0);
    else lk_parallel_for(parts, split_part, &job);
}

static _Atomic uint64_t counted_operations, counted_nanoseconds;

void lk_count_product(uint64_t operations, uint64_t nanoseconds) {
    atomic_fetch_add_explicit(&counted_operations, operations, memory_order_relaxed);
    if (!on_worker) atomic_fetch_add_explicit(&counted_nanoseconds, nanoseconds, memory_order_relaxed);
}

uint64_t lk_counted_operations(void) { return atomic_load(&counted_operations); }
uint64_t lk_counted_nanoseconds(void) { return atomic_load(&counted_nanoseconds); }

// Per-shape totals, kept only while shape counting is on (a profiling aid: one mutex per product).
static lk_shape_total shape_totals[LK_SHAPE_SLOTS];
static int shape_count;
static pthread_mutex_t shape_lock = PTHREAD_MUTEX_INITIALIZER;

void lk_count_shape(int trans_a, int trans_b, int m, int n, int k, uint64_t nanoseconds) {
    pthread_mutex_lock(&shape_lock);
    int i = 0;
    while (i < shape_count && !(shape_totals[i].trans_a == trans_a && shape_totals[i].trans_b == trans_b &&
                                shape_totals[i].m == m && shape_totals[i].n == n && shape_totals[i].k == k)) i++;
    if (i == shape_count && shape_count < LK_SHAPE_SLOTS) {
        shape_totals[i] = (lk_shape_total){trans_a, trans_b, m, n, k, 0, 0};
        shape_count++;
    }
    if (i < shape_count) {
        shape_totals[i].calls++;
        shape_totals[i].nanoseconds += nanoseconds;
    }
    pthread_mutex_unlock(&shape_lock);
}

int lk_shape_totals(lk_shape_total *out, int capacity) {
    pthread_mutex_lock(&shape_lock);
    int count = shape_count < capacity ? shape_count : capacity;
    for (int i = 0; i < count; i++) out[i] = shape_totals[i];
    pthread_mutex_unlock(&shape_lock);
    return count;
}

void lk_reset_counts(void) {
    atomic_store(&counted_operations, 0);
    atomic_store(&counted_nanoseconds, 0);
    pthread_mutex_lock(&shape_lock);
    shape_count = 0;
    pthread_mutex_unlock(&shape_lock);
}
