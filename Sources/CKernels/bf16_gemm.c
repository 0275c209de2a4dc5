// Matrix products with bfloat16 operands and float32 results through oneDNN (libdnnl.so.2, oneDNN 2.x), loaded at
// run time: oneDNN chooses AVX512-BF16 or AMX kernels from the CPU it finds (and asks the kernel for AMX's tile
// state itself). Nothing here needs oneDNN's headers at build time; the few declarations used are repeated below
// from oneDNN 2.x's C API, and the library's version is checked before any of them is called.
//
// Shapes (row-major): C [M, N] (= or +=) op(A) [M, K] · op(B) [K, N]; A and B hold bf16 bit patterns.
// Primitives are made once per shape and kept; each thread has its own stream and scratchpad, so products may run
// on several threads at once (the caller splits large products by rows, one single-threaded product per part).

#include "CKernels.h"
#include "blocks.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

// --- oneDNN 2.x C API, as much as used ---
typedef int dnnl_status_t;                   // dnnl_success = 0
typedef int64_t dnnl_dim_t;
typedef dnnl_dim_t dnnl_dims_t[12];
typedef struct { _Alignas(16) unsigned char bytes[1024]; } lk_memory_desc;   // dnnl_memory_desc_t: 696 bytes in 2.6
typedef struct { _Alignas(16) unsigned char bytes[4096]; } lk_matmul_desc;   // dnnl_matmul_desc_t: 2800 bytes in 2.6
typedef void *dnnl_handle;                    // engine, stream, memory, primitive, primitive desc, attr, post ops
typedef struct { int arg; dnnl_handle memory; } dnnl_exec_arg_t;
typedef struct { int major, minor, patch; const char *hash; unsigned cpu_runtime, gpu_runtime; } dnnl_version_t;

enum { DNNL_CPU = 1, DNNL_BF16 = 2, DNNL_F32 = 3, DNNL_STREAM_IN_ORDER = 1, DNNL_SCRATCHPAD_USER = 1,
       DNNL_QUERY_SCRATCHPAD_MD = 136, DNNL_UNIMPLEMENTED = 3 };
enum { ARG_SRC = 1, ARG_DST = 17, ARG_WEIGHTS = 33, ARG_SCRATCHPAD = 80 };

static struct {
    const dnnl_version_t *(*version)(void);
    dnnl_status_t (*engine_create)(dnnl_handle *, int, size_t);
    dnnl_status_t (*stream_create)(dnnl_handle *, dnnl_handle, unsigned);
    dnnl_status_t (*md_init_by_strides)(lk_memory_desc *, int, const dnnl_dims_t, int, const dnnl_dims_t);
    dnnl_status_t (*matmul_desc_init)(lk_matmul_desc *, const lk_memory_desc *, const lk_memory_desc *,
                                      const lk_memory_desc *, const lk_memory_desc *);
    dnnl_status_t (*attr_create)(dnnl_handle *);
    dnnl_status_t (*attr_destroy)(dnnl_handle);
    dnnl_status_t (*attr_set_scratchpad_mode)(dnnl_handle, int);
    dnnl_status_t (*attr_set_post_ops)(dnnl_handle, dnnl_handle);
    dnnl_status_t (*attr_set_output_scales)(dnnl_handle, dnnl_dim_t, int, const float *);
    dnnl_status_t (*post_ops_create)(dnnl_handle *);
    dnnl_status_t (*post_ops_destroy)(dnnl_handle);
    dnnl_status_t (*post_ops_append_sum)(dnnl_handle, float);
    dnnl_status_t (*pd_create)(dnnl_handle *, const void *, dnnl_handle, dnnl_handle, const void *);
    dnnl_status_t (*pd_destroy)(dnnl_handle);
    const lk_memory_desc *(*pd_query_md)(dnnl_handle, int, int);
    size_t (*md_get_size)(const lk_memory_desc *);
    dnnl_status_t (*primitive_create)(dnnl_handle *, dnnl_handle);
    dnnl_status_t (*primitive_destroy)(dnnl_handle);
    dnnl_status_t (*primitive_execute)(dnnl_handle, dnnl_handle, int, const dnnl_exec_arg_t *);
    dnnl_status_t (*memory_create)(dnnl_handle *, const lk_memory_desc *, dnnl_handle, void *);
    dnnl_status_t (*memory_destroy)(dnnl_handle);
    dnnl_status_t (*stream_wait)(dnnl_handle);
    dnnl_handle engine;
    int loaded;          // 1 usable, -1 not, 0 not tried
    char why[256];
    char description[128];
} dnnl;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;

// One product shape, made once.
typedef struct {
    int type, trans_a, trans_b, m, n, k, lda, ldb, ldc, accumulate;  // type: DNNL_BF16 or DNNL_F32 operands
    float alpha;                                                      // C (+)= alpha · op(A)·op(B)
    lk_memory_desc a, b, c, scratchpad;
    size_t scratchpad_bytes;
    dnnl_handle primitive;
} lk_bf16_shape;

enum { SHAPE_SLOTS = 512 };
static lk_bf16_shape *shapes[SHAPE_SLOTS];
static int shape_count;
static pthread_mutex_t shapes_lock = PTHREAD_MUTEX_INITIALIZER;

static _Thread_local dnnl_handle thread_stream;
static _Thread_local void *thread_scratchpad;
static _Thread_local size_t thread_scratchpad_bytes;

static lk_bf16_shape *make_shape(int type, int trans_a, int trans_b, int m, int n, int k, int lda, int ldb, int ldc,
                                 int accumulate, float alpha, dnnl_status_t *status);

static void load(void) {
    dnnl.loaded = -1;
    // oneDNN runs on OpenMP; one thread per call, as the callers split products over their own threads. libgomp
    // reads OMP_NUM_THREADS once, when it loads, so the variable is set around loading only.
    const char *inherited = getenv("OMP_NUM_THREADS");
    char *saved = inherited ? strdup(inherited) : NULL;
    setenv("OMP_NUM_THREADS", "1", 1);
    void *h = dlopen("libdnnl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (saved) { setenv("OMP_NUM_THREADS", saved, 1); free(saved); } else { unsetenv("OMP_NUM_THREADS"); }
    if (!h) { snprintf(dnnl.why, sizeof dnnl.why, "oneDNN (libdnnl.so.2) is not installed"); return; }
#define LK_SYM(field, name) if (!(*(void **)&dnnl.field = dlsym(h, name))) { \
        snprintf(dnnl.why, sizeof dnnl.why, "libdnnl.so.2 lacks %s", name); return; }
    LK_SYM(version, "dnnl_version")
    const dnnl_version_t *v = dnnl.version();
    if (!v || v->major != 2) {
        snprintf(dnnl.why, sizeof dnnl.why, "oneDNN %d.%d is not the 2.x this build reads", v ? v->major : -1, v ? v->minor : -1);
        return;
    }
    LK_SYM(engine_create, "dnnl_engine_create")
    LK_SYM(stream_create, "dnnl_stream_create")
    LK_SYM(md_init_by_strides, "dnnl_memory_desc_init_by_strides")
    LK_SYM(matmul_desc_init, "dnnl_matmul_desc_init")
    LK_SYM(attr_create, "dnnl_primitive_attr_create")
    LK_SYM(attr_destroy, "dnnl_primitive_attr_destroy")
    LK_SYM(attr_set_scratchpad_mode, "dnnl_primitive_attr_set_scratchpad_mode")
    LK_SYM(attr_set_post_ops, "dnnl_primitive_attr_set_post_ops")
    LK_SYM(attr_set_output_scales, "dnnl_primitive_attr_set_output_scales")
    LK_SYM(post_ops_create, "dnnl_post_ops_create")
    LK_SYM(post_ops_destroy, "dnnl_post_ops_destroy")
    LK_SYM(post_ops_append_sum, "dnnl_post_ops_append_sum")
    LK_SYM(pd_create, "dnnl_primitive_desc_create")
    LK_SYM(pd_destroy, "dnnl_primitive_desc_destroy")
    LK_SYM(pd_query_md, "dnnl_primitive_desc_query_md")
    LK_SYM(md_get_size, "dnnl_memory_desc_get_size")
    LK_SYM(primitive_create, "dnnl_primitive_create")
    LK_SYM(primitive_destroy, "dnnl_primitive_destroy")
    LK_SYM(primitive_execute, "dnnl_primitive_execute")
    LK_SYM(memory_create, "dnnl_memory_create")
    LK_SYM(memory_destroy, "dnnl_memory_destroy")
    LK_SYM(stream_wait, "dnnl_stream_wait")
#undef LK_SYM
    if (dnnl.engine_create(&dnnl.engine, DNNL_CPU, 0) != 0) {
        snprintf(dnnl.why, sizeof dnnl.why, "oneDNN could not create a CPU engine");
        return;
    }
    snprintf(dnnl.description, sizeof dnnl.description, "oneDNN %d.%d.%d", v->major, v->minor, v->patch);
    // Whether this CPU has bf16 products at all: oneDNN answers `unimplemented` where it has no kernel for them
    // (no AVX512-BF16, AVX512 or AMX).
    dnnl_status_t status = 0;
    lk_bf16_shape *probe = make_shape(DNNL_BF16, 0, 1, 64, 64, 64, 64, 64, 64, 0, 1.0f, &status);
    if (!probe) {
        snprintf(dnnl.why, sizeof dnnl.why, "%s has no bf16 matrix product for this CPU%s", dnnl.description,
                 status == DNNL_UNIMPLEMENTED ? "" : " (it reported an error)");
        return;
    }
    shapes[shape_count++] = probe;
    dnnl.loaded = 1;
}

static dnnl_status_t matrix_desc(lk_memory_desc *md, int rows, int cols, int transposed, int ld, int type) {
    dnnl_dims_t dims = {rows, cols}, strides = {0};
    if (transposed) { strides[0] = 1; strides[1] = ld; } else { strides[0] = ld; strides[1] = 1; }
    return dnnl.md_init_by_strides(md, 2, dims, type, strides);
}

static lk_bf16_shape *make_shape(int type, int trans_a, int trans_b, int m, int n, int k, int lda, int ldb, int ldc,
                                 int accumulate, float alpha, dnnl_status_t *status) {
    lk_bf16_shape *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    *s = (lk_bf16_shape){type, trans_a, trans_b, m, n, k, lda, ldb, ldc, accumulate, alpha};
    lk_matmul_desc desc;
    dnnl_handle attr = NULL, post_ops = NULL, pd = NULL;
    dnnl_status_t st;
    if ((st = matrix_desc(&s->a, m, k, trans_a, lda, type)) || (st = matrix_desc(&s->b, k, n, trans_b, ldb, type)) ||
        (st = matrix_desc(&s->c, m, n, 0, ldc, DNNL_F32)) || (st = dnnl.matmul_desc_init(&desc, &s->a, &s->b, NULL, &s->c)) ||
        (st = dnnl.attr_create(&attr)) || (st = dnnl.attr_set_scratchpad_mode(attr, DNNL_SCRATCHPAD_USER)))
        goto fail;
    if (alpha != 1.0f && (st = dnnl.attr_set_output_scales(attr, 1, 0, &alpha))) goto fail;  // before the sum
    if (accumulate) {  // C += A·B as a sum post-op
        if ((st = dnnl.post_ops_create(&post_ops)) || (st = dnnl.post_ops_append_sum(post_ops, 1.0f)) ||
            (st = dnnl.attr_set_post_ops(attr, post_ops)))
            goto fail;
    }
    if ((st = dnnl.pd_create(&pd, &desc, attr, dnnl.engine, NULL))) goto fail;
    const lk_memory_desc *scratch = dnnl.pd_query_md(pd, DNNL_QUERY_SCRATCHPAD_MD, 0);
    if (scratch) { s->scratchpad = *scratch; s->scratchpad_bytes = dnnl.md_get_size(scratch); }
    if ((st = dnnl.primitive_create(&s->primitive, pd))) goto fail;
    dnnl.pd_destroy(pd);
    if (post_ops) dnnl.post_ops_destroy(post_ops);
    dnnl.attr_destroy(attr);
    return s;
fail:
    *status = st;
    if (pd) dnnl.pd_destroy(pd);
    if (post_ops) dnnl.post_ops_destroy(post_ops);
    if (attr) dnnl.attr_destroy(attr);
    free(s);
    return NULL;
}

int lk_bf16_gemm_available(void) {
    pthread_once(&load_once, load);
    return dnnl.loaded == 1;
}

const char *lk_bf16_gemm_description(void) {
    pthread_once(&load_once, load);
    return dnnl.loaded == 1 ? dnnl.description : dnnl.why;
}

static lk_bf16_shape *find_shape(int type, int trans_a, int trans_b, int m, int n, int k, int lda, int ldb, int ldc,
                                 int accumulate, float alpha, dnnl_status_t *status) {
    pthread_mutex_lock(&shapes_lock);
    lk_bf16_shape *found = NULL;
    for (int i = 0; i < shape_count && !found; i++) {
        lk_bf16_shape *s = shapes[i];
        if (s->type == type && s->trans_a == trans_a && s->trans_b == trans_b && s->m == m && s->n == n && s->k == k && s->lda == lda &&
            s->ldb == ldb && s->ldc == ldc && s->accumulate == accumulate && s->alpha == alpha)
            found = s;
    }
    if (!found) {
        found = make_shape(type, trans_a, trans_b, m, n, k, lda, ldb, ldc, accumulate, alpha, status);
        if (found && shape_count < SHAPE_SLOTS) shapes[shape_count++] = found;
        // Past SHAPE_SLOTS the shape is made for this call and kept anyway (a leak bounded by the shapes a run
        // meets, which are few: a model has a handful of products and batches of one or two lengths).
    }
    pthread_mutex_unlock(&shapes_lock);
    return found;
}

static int run_product(int type, int trans_a, int trans_b, int m, int n, int k, float alpha, const void *a, int lda,
                       const void *b, int ldb, int accumulate, float *c, int ldc) {
    if (!lk_bf16_gemm_available()) return -1;
    dnnl_status_t st = 0;
    lk_bf16_shape *s = find_shape(type, trans_a, trans_b, m, n, k, lda, ldb, ldc, accumulate, alpha, &st);
    if (!s) return st ? st : -1;
    if (!thread_stream && (st = dnnl.stream_create(&thread_stream, dnnl.engine, DNNL_STREAM_IN_ORDER))) return st;
    if (s->scratchpad_bytes > thread_scratchpad_bytes) {
        free(thread_scratchpad);
        thread_scratchpad = aligned_alloc(64, (s->scratchpad_bytes + 63) / 64 * 64);
        thread_scratchpad_bytes = thread_scratchpad ? s->scratchpad_bytes : 0;
        if (!thread_scratchpad) return -1;
    }
    dnnl_handle am = NULL, bm = NULL, cm = NULL, sm = NULL;
    if ((st = dnnl.memory_create(&am, &s->a, dnnl.engine, (void *)a)) ||
        (st = dnnl.memory_create(&bm, &s->b, dnnl.engine, (void *)b)) ||
        (st = dnnl.memory_create(&cm, &s->c, dnnl.engine, c)) ||
        (s->scratchpad_bytes && (st = dnnl.memory_create(&sm, &s->scratchpad, dnnl.engine, thread_scratchpad))))
        goto done;
    dnnl_exec_arg_t args[4] = {{ARG_SRC, am}, {ARG_WEIGHTS, bm}, {ARG_DST, cm}, {ARG_SCRATCHPAD, sm}};
    if (!(st = dnnl.primitive_execute(s->primitive, thread_stream, sm ? 4 : 3, args))) st = dnnl.stream_wait(thread_stream);
done:
    if (am) dnnl.memory_destroy(am);
    if (bm) dnnl.memory_destroy(bm);
    if (cm) dnnl.memory_destroy(cm);
    if (sm) dnnl.memory_destroy(sm);
    return st;
}

int lk_bf16_gemm(int trans_a, int trans_b, int m, int n, int k, const uint16_t *a, int lda, const uint16_t *b, int ldb,
                 int accumulate, float *c, int ldc) {
    return run_product(DNNL_BF16, trans_a, trans_b, m, n, k, 1.0f, a, lda, b, ldb, accumulate, c, ldc);
}

#if defined(__x86_64__)
// The same rounding 16 lanes at a time, in integers (the CPU's own conversion would flush denormals to zero).
__attribute__((target("avx512f,avx512bw"))) static void float_to_bf16_avx512(const float *x, uint16_t *y, size_t count) {
    const __m512i bias = _mm512_set1_epi32(0x7fff), one = _mm512_set1_epi32(1), quiet = _mm512_set1_epi32(64);
    const __m512i magnitude = _mm512_set1_epi32(0x7fffffff), infinity = _mm512_set1_epi32(0x7f800000);
    size_t i = 0;
    for (; i + 16 <= count; i += 16) {
        __m512i u = _mm512_loadu_si512((const void *)(x + i));
        __m512i rounded = _mm512_srli_epi32(
            _mm512_add_epi32(_mm512_add_epi32(u, bias), _mm512_and_si512(_mm512_srli_epi32(u, 16), one)), 16);
        __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, magnitude), infinity);
        rounded = _mm512_mask_mov_epi32(rounded, nan, _mm512_or_si512(_mm512_srli_epi32(u, 16), quiet));
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtepi32_epi16(rounded));
    }
    for (; i < count; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        y[i] = bf16_bits(u);
    }
}
#endif

void lk_float_to_bf16(const float *x, uint16_t *y, size_t count) {
#if defined(__x86_64__)
    static int avx512 = -1;
    if (avx512 < 0) { __builtin_cpu_init(); avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"); }
    if (avx512) { float_to_bf16_avx512(x, y, count); return; }
#endif
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        y[i] = bf16_bits(u);
    }
}
