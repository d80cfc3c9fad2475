/* The CPU device: runs the kernels of a plan (model/plan.h) with oneDNN, one kernel per
 * launch, synchronously on the calling thread and its OpenMP team.
 *
 * Everything that costs more than a pointer copy happens at load: every kernel's oneDNN
 * primitives are created once, weights are reordered once into the layout the primitive
 * asks for, the activation arena is sized, allocated and touched, and the memory objects and
 * argument lists of every execution are prepared. A launch only executes primitives (and a
 * few plain C loops for what oneDNN lacks) and waits for the stream.
 *
 * Layouts. A 4-D activation that is free to take any layout (not a model input or output,
 * not viewed through an alias) takes the layout its producer prefers: convolutions are
 * created with `format_tag_any` for source, weights and destination, and pooling, binary,
 * concat, softmax and eltwise kernels keep the layout of their source. With oneDNN 2.6 on
 * AVX-512 that is channels-last (nhwc) for activations, with the brgemm convolutions, and
 * blocked weights (forcing nChw16c activations measured 10-15% slower on ResNets). A
 * residual stack therefore never reorders between kernels, and broadcast operands
 * (per-channel constants, [N,C,1,1] squeeze-excitation tensors) are given in the same axis
 * order. Everything else is plain row-major in the shape of the plan (NCHW for images):
 * model inputs and outputs (they cross the API with a memcpy), storages viewed through
 * aliases (a reshape reinterprets row-major bytes), and tensors that are not 4-D (matmul,
 * layer norm, transformer tensors). Where a primitive wants a layout its operand lacks, a
 * reorder into a per-kernel temporary runs first; an image kernel whose output must be plain
 * still runs in its preferred layout and reorders its result. Those reorders (the model
 * input's into the first convolution's layout included) are timed with their kernel.
 *
 * Weights. Every constant a kernel reads is copied, or reordered into the layout its
 * primitive asks for, into one buffer of the loaded model (one copy per constant and
 * layout), once every kernel is built: a launch reads none of the plan's constants but
 * constant model outputs (the contract of plan.h). Each constant is reported to the plan as
 * soon as its copies are made, so that a plan whose weights were dropped frees them as this
 * buffer fills and the weights are never resident twice.
 *
 * Memory. One arena per loaded model holds every activation, temporary and primitive
 * scratchpad (oneDNN runs in user-scratchpad mode so that it never allocates while a kernel
 * runs). Offsets come from the liveness of each block, recomputed here from the kernels'
 * reads and writes: blocks whose kernel ranges [first, last] overlap never share bytes
 * (greedy first fit, largest block first). A residual added through a sum post-op is
 * accumulated in place when this kernel is its last reader: the destination takes over the
 * residual's bytes, which saves the copy oneDNN's sum would otherwise need. The arena and
 * the weights are huge-page buffers (util/bigmem.h): with small pages, faulting in
 * ResNet-50's 100 MB of weights took longer than the rest of its load.
 *
 * Threads. oneDNN here uses OpenMP (Debian's build). A configured thread count is applied to
 * the calling thread's OpenMP setting for the duration of each load and launch, and the
 * previous setting is restored afterwards: primitives are created and run with the same
 * count, and the application's other OpenMP code is left alone. libgomp's controls are
 * looked up at run time (it is loaded anyway as oneDNN's dependency), so the build needs no
 * OpenMP flags of its own.
 *
 * Concurrency: loads may run on other threads while a launch runs (the engine is safe for
 * primitive creation; each load reorders its constants on a stream of its own); the device
 * stream is used by launch only, which the dispatcher calls from one thread.
 */
#include "device/arena.h"
#include "device/device.h"
#include "model/plan.h"
#include "util/array.h"
#include "util/bigmem.h"
#include "util/try.h"

#include <oneapi/dnnl/dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

#include <dlfcn.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CPU_ALIGN 64

struct cpu_device {
    struct etf_device base;
    dnnl_engine_t engine;
    dnnl_stream_t stream;
    int threads; /* 0 = OpenMP's own default, left untouched */
    void *gomp;  /* libgomp, for its thread controls; NULL when threads == 0 */
    void (*omp_set_num_threads)(int);
    int (*omp_get_max_threads)(void);
};

enum cpu_step_kind {
    STEP_PRIM,   /* a oneDNN primitive */
    STEP_ERF,    /* dst[i] = erf(src[i]): oneDNN has no erf */
    STEP_FILL,   /* dst[i] = value */
    STEP_EXPAND, /* dst = src broadcast to dst's dims, both plain */
};

/* One argument of a step: a memory descriptor over an arena block or over a weight. */
struct cpu_arg {
    int id; /* DNNL_ARG_* */
    dnnl_memory_desc_t md;
    int block;  /* arena block, or -1 */
    int weight; /* the model's weight (build.weights), or -1 */
};

struct cpu_step {
    enum cpu_step_kind kind;
    dnnl_primitive_desc_t pd;
    dnnl_primitive_t prim;
    struct cpu_arg *args;
    int n_args;
    dnnl_exec_arg_t *exec; /* the args as memory objects, created once the arena is placed */
    /* Loops: element count, fill value, and for EXPAND the shape and source strides. */
    size_t n;
    float value;
    int ndims;
    int64_t dims[ETF_MAX_DIMS], src_strides[ETF_MAX_DIMS];
    float *src, *dst;
};

struct cpu_kernel {
    struct cpu_step *steps;
    size_t n_steps;
};

/* A model input or output as it crosses the API: plain bytes in the arena. */
struct cpu_io {
    float *ptr;
    size_t bytes;
};

struct etf_dmodel {
    const struct etf_plan *plan;
    struct cpu_kernel *kernels;
    size_t n_kernels;
    unsigned char *arena; /* a big buffer (util/bigmem.h) */
    size_t arena_bytes;
    unsigned char *weights; /* every constant, in the layout its primitive wants; a big buffer */
    size_t weights_bytes;
    struct cpu_io *in, *out;
};

/* ---- Load-time state ---- */

struct cpu_val {
    dnnl_memory_desc_t md; /* the layout of a storage value once produced */
    bool has_md;
    bool fixed;  /* must stay plain row-major (see the top comment) */
    int block;   /* arena block, -1 until produced */
    size_t last; /* last kernel that reads the storage (n_kernels for model outputs) */
};

/* A constant as the model keeps it: a plan constant in one layout, copied or reordered into
 * the weights buffer once every kernel is built. */
struct cpu_weight {
    int value;                     /* the plan's storage value */
    dnnl_memory_desc_t have, want; /* its layout in the plan, and in the buffer */
    size_t offset;
};

struct build {
    struct cpu_device *dev;
    const struct etf_plan *plan;
    struct etf_dmodel *dm;
    struct etf_diag *diag;
    dnnl_stream_t stream; /* this load's own stream, for constant reorders */
    struct cpu_val *vals;
    struct etf_arena_block *blocks;
    size_t n_blocks, cap_blocks;
    struct cpu_weight *weights;
    size_t n_weights, cap_weights;
    size_t k; /* the kernel being built */
    const struct etf_kernel *kn;
    struct cpu_kernel *ck;
    /* The destination layout the kernel's binary post-op operands follow (create_pd). */
    dnnl_memory_desc_t po_like;
    bool has_po_like;
};

/* ---- Errors ---- */

/* Fails the kernel being built with err, naming it. */
__attribute__((format(printf, 3, 4))) static int kfail(struct build *b, int err, const char *fmt,
                                                       ...)
{
    char what[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (!b->kn)
        return etf_diagf(b->diag, err, "device cpu: plan '%.64s': %s",
                         b->plan->name ? b->plan->name : "?", what);
    return etf_diagf(b->diag, err, "device cpu: kernel '%.64s' (%s): %s", b->kn->name,
                     etf__plan_op_name(b->kn->op), what);
}

/* oneDNN refusing a combination is a capability this backend lacks; anything else is the
 * library failing. */
static int dnnl_err_code(dnnl_status_t st)
{
    switch (st) {
    case dnnl_unimplemented:
        return ETF_ENOTSUP;
    case dnnl_out_of_memory:
        return ETF_ENOMEM;
    default:
        return ETF_EDEVICE;
    }
}

static int dnnl_fail(struct build *b, dnnl_status_t st, const char *what)
{
    return kfail(b, dnnl_err_code(st), "oneDNN %s failed: %s", what, dnnl_status2str(st));
}

#define TRY_DNNL(b, call, what)                                                                    \
    do {                                                                                           \
        dnnl_status_t st_ = (call);                                                                \
        if (st_ != dnnl_success)                                                                   \
            return dnnl_fail((b), st_, (what));                                                    \
    } while (0)

/* ---- Threads ---- */

/* Applies the device's thread count to the calling thread; returns what to restore. */
static int threads_enter(const struct cpu_device *d)
{
    if (!d->threads)
        return 0;
    int prev = d->omp_get_max_threads();
    if (prev != d->threads)
        d->omp_set_num_threads(d->threads);
    return prev;
}

static void threads_leave(const struct cpu_device *d, int prev)
{
    if (d->threads && prev != d->threads)
        d->omp_set_num_threads(prev);
}

/* ---- Plan helpers ---- */

static size_t dims_elems(int nd, const dnnl_dim_t *dims)
{
    size_t n = 1;
    for (int i = 0; i < nd; i++)
        n *= (size_t)dims[i];
    return n;
}

static const struct etf_value *val(const struct build *b, int v)
{
    return &b->plan->values[v];
}

static int storage(const struct build *b, int v)
{
    return etf__plan_storage(b->plan, v);
}

static bool is_const(const struct build *b, int v)
{
    return val(b, storage(b, v))->kind == ETF_VALUE_CONSTANT;
}

/* ---- Memory descriptors ---- */

static void md_plain(dnnl_memory_desc_t *md, int nd, const dnnl_dim_t *dims)
{
    static const dnnl_format_tag_t tags[] = {dnnl_a,    dnnl_ab,    dnnl_abc,
                                             dnnl_abcd, dnnl_abcde, dnnl_abcdef};
    static const dnnl_dims_t one = {1};
    if (nd == 0) { /* a scalar is a 1-element vector */
        nd = 1;
        dims = one;
    }
    /* Cannot fail for 1..6 dims of f32. */
    dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, tags[nd - 1]);
}

static void md_any(dnnl_memory_desc_t *md, int nd, const dnnl_dim_t *dims)
{
    dnnl_memory_desc_init_by_tag(md, nd, dims, dnnl_f32, dnnl_format_tag_any);
}

static bool md_is_plain(const dnnl_memory_desc_t *md)
{
    dnnl_memory_desc_t p;
    md_plain(&p, md->ndims, md->dims);
    return dnnl_memory_desc_equal(md, &p) == 1;
}

static void shape_dims(const struct etf_shape *s, dnnl_dim_t *dims)
{
    for (int i = 0; i < s->ndim; i++)
        dims[i] = s->d[i];
}

/* s as nd dimensions, aligned on the trailing axes as numpy broadcasting does: ones
 * prepended, or leading ones dropped. */
static int bcast_dims(struct build *b, const struct etf_shape *s, int nd, dnnl_dim_t *dims)
{
    int lead = nd - s->ndim;
    for (int i = 0; i < -lead; i++)
        if (s->d[i] != 1)
            return kfail(b, ETF_EINVAL, "an operand of %d dims does not broadcast to %d dims",
                         s->ndim, nd);
    for (int i = 0; i < nd; i++)
        dims[i] = i < lead ? 1 : s->d[i - lead];
    return 0;
}

static bool dims_bcast_to(int nd, const dnnl_dim_t *from, const dnnl_dim_t *to)
{
    for (int i = 0; i < nd; i++)
        if (from[i] != to[i] && from[i] != 1)
            return false;
    return true;
}

static bool dims_equal(int nd, const dnnl_dim_t *a, const dnnl_dim_t *b)
{
    for (int i = 0; i < nd; i++)
        if (a[i] != b[i])
            return false;
    return true;
}

/* Whether value v's bytes are plain row-major, whatever dims it is viewed with. */
static bool reads_plain(const struct build *b, int v)
{
    int s = storage(b, v);
    return val(b, s)->kind == ETF_VALUE_CONSTANT || v != s || b->vals[s].fixed;
}

/* The layout value v's bytes are read in, viewed with dims (same element count). */
static int value_md(struct build *b, int v, int nd, const dnnl_dim_t *dims, dnnl_memory_desc_t *md)
{
    int s = storage(b, v);
    if (dims_elems(nd, dims) != etf__shape_elems(&val(b, v)->shape))
        return kfail(b, ETF_EINVAL, "value '%.64s' has %zu elements, %zu expected",
                     val(b, v)->name ? val(b, v)->name : "?", etf__shape_elems(&val(b, v)->shape),
                     dims_elems(nd, dims));
    if (reads_plain(b, v)) {
        md_plain(md, nd, dims);
        return 0;
    }
    if (!b->vals[s].has_md)
        return kfail(b, ETF_EINVAL, "value '%.64s' is read before a kernel writes it",
                     val(b, v)->name ? val(b, v)->name : "?");
    const dnnl_memory_desc_t *have = &b->vals[s].md;
    if (have->ndims == nd && dims_equal(nd, have->dims, dims)) {
        *md = *have;
        return 0;
    }
    dnnl_status_t st = dnnl_memory_desc_reshape(md, have, nd, dims);
    if (st != dnnl_success)
        return kfail(b, ETF_ENOTSUP, "value '%.64s' cannot be viewed with %d dims in its layout",
                     val(b, v)->name ? val(b, v)->name : "?", nd);
    return 0;
}

/* Whether value v may take whatever layout its producer prefers. */
static bool out_free(const struct build *b, int v)
{
    int s = storage(b, v);
    return s == v && !b->vals[s].fixed;
}

/* The destination layout to ask a primitive for: `any` where the value may take the layout
 * the primitive prefers, and for every image tensor (a fixed one is then written through a
 * temporary and reordered, see finish_out: the preferred layout runs the vectorised
 * kernels); plain row-major otherwise. */
static void out_want(const struct build *b, int v, int nd, const dnnl_dim_t *dims,
                     dnnl_memory_desc_t *md)
{
    if (out_free(b, v) || nd == 4)
        md_any(md, nd, dims);
    else
        md_plain(md, nd, dims);
}

static bool md_strided(const dnnl_memory_desc_t *md)
{
    return md->format_kind == dnnl_blocked && md->format_desc.blocking.inner_nblks == 0;
}

/* Whether two descriptors put every element at the same byte: strides may differ only
 * along dimensions of size 1 (an [N,C,1,1] tensor is the same in nchw and nhwc). */
static bool md_same_bytes(const dnnl_memory_desc_t *a, const dnnl_memory_desc_t *b)
{
    if (a->ndims != b->ndims || !md_strided(a) || !md_strided(b) || a->offset0 != b->offset0 ||
        a->data_type != b->data_type)
        return false;
    for (int i = 0; i < a->ndims; i++) {
        if (a->dims[i] != b->dims[i] || a->padded_dims[i] != b->padded_dims[i] ||
            a->padded_offsets[i] != b->padded_offsets[i])
            return false;
        if (a->dims[i] > 1 &&
            a->format_desc.blocking.strides[i] != b->format_desc.blocking.strides[i])
            return false;
    }
    return true;
}

/* A dense layout of dims whose axes are ordered as in `like` (by decreasing stride); false
 * when `like` is not a strided layout of as many dims. */
static bool md_order_like(dnnl_memory_desc_t *md, int nd, const dnnl_dim_t *dims,
                          const dnnl_memory_desc_t *like)
{
    if (!like || like->ndims != nd || !md_strided(like))
        return false;
    int order[DNNL_MAX_NDIMS];
    const dnnl_dim_t *ls = like->format_desc.blocking.strides;
    for (int i = 0; i < nd; i++) { /* stable: ties keep the logical order */
        int j = i;
        while (j > 0 && ls[order[j - 1]] < ls[i]) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    dnnl_dims_t strides;
    dnnl_dim_t st = 1;
    for (int i = nd - 1; i >= 0; i--) {
        strides[order[i]] = st;
        st *= dims[order[i]];
    }
    return dnnl_memory_desc_init_by_strides(md, nd, dims, dnnl_f32, strides) == dnnl_success;
}

/* How operand v (viewed with dims) is given to a primitive whose main tensor is laid out as
 * `like`: in `have`, the layout its bytes are in, and `want`, the layout to pass. oneDNN's
 * vectorised binary kernels want operands laid out alike, so constants are reordered to
 * `like`'s axis order once at load, broadcast operands whose bytes allow it are described
 * in that order, and full-size activations are reordered into it. */
static int operand_md(struct build *b, int v, int nd, const dnnl_dim_t *dims,
                      const dnnl_memory_desc_t *like, dnnl_memory_desc_t *have,
                      dnnl_memory_desc_t *want)
{
    TRY(value_md(b, v, nd, dims, have));
    *want = *have;
    dnnl_memory_desc_t f;
    if (!md_strided(have) || !md_order_like(&f, nd, dims, like))
        return 0;
    if (md_same_bytes(&f, have))
        *have = *want = f;
    else if (is_const(b, v) || dims_equal(nd, dims, like->dims))
        *want = f;
    return 0;
}

/* ---- Arena blocks ---- */

static int block_new(struct build *b, size_t bytes, size_t first, size_t last)
{
    return etf__arena_add(&b->blocks, &b->n_blocks, &b->cap_blocks, CPU_ALIGN, bytes, first, last);
}

/* A block that lives while the current kernel runs only. */
static int temp_block(struct build *b, size_t bytes, int *block)
{
    *block = block_new(b, bytes, b->k, b->k);
    if (*block < 0)
        return kfail(b, ETF_ENOMEM, "out of memory");
    return 0;
}

/* ---- Steps ---- */

static void step_free(struct cpu_step *st)
{
    if (st->exec) {
        for (int i = 0; i < st->n_args; i++)
            if (st->exec[i].memory)
                dnnl_memory_destroy(st->exec[i].memory);
        free(st->exec);
    }
    if (st->prim)
        dnnl_primitive_destroy(st->prim);
    if (st->pd)
        dnnl_primitive_desc_destroy(st->pd);
    free(st->args);
}

/* Inserts an empty step at position `at` of the current kernel. */
static int step_insert(struct build *b, size_t at, enum cpu_step_kind kind)
{
    struct cpu_kernel *ck = b->ck;
    struct cpu_step *ns = realloc(ck->steps, (ck->n_steps + 1) * sizeof *ns);
    if (!ns)
        return kfail(b, ETF_ENOMEM, "out of memory");
    ck->steps = ns;
    memmove(&ns[at + 1], &ns[at], (ck->n_steps - at) * sizeof *ns);
    ns[at] = (struct cpu_step){.kind = kind};
    ck->n_steps++;
    return 0;
}

static int arg_add(struct build *b, size_t si, int id, const dnnl_memory_desc_t *md, int block,
                   int weight)
{
    struct cpu_step *st = &b->ck->steps[si];
    struct cpu_arg *na = realloc(st->args, (size_t)(st->n_args + 1) * sizeof *na);
    if (!na)
        return kfail(b, ETF_ENOMEM, "out of memory");
    st->args = na;
    na[st->n_args++] = (struct cpu_arg){.id = id, .md = *md, .block = block, .weight = weight};
    return 0;
}

/* Inserts a primitive step at `at` that takes ownership of pd (destroyed on failure too),
 * with its scratchpad in a temporary block. */
static int prim_insert(struct build *b, size_t at, dnnl_primitive_desc_t pd, const char *what)
{
    int rc = step_insert(b, at, STEP_PRIM);
    if (rc) {
        dnnl_primitive_desc_destroy(pd);
        return rc;
    }
    struct cpu_step *st = &b->ck->steps[at];
    st->pd = pd;
    TRY_DNNL(b, dnnl_primitive_create(&st->prim, pd), what);
    const dnnl_memory_desc_t *scratch =
        dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (scratch && dnnl_memory_desc_get_size(scratch) > 0) {
        int blk;
        TRY(temp_block(b, dnnl_memory_desc_get_size(scratch), &blk));
        TRY(arg_add(b, at, DNNL_ARG_SCRATCHPAD, scratch, blk, -1));
    }
    return 0;
}

static int attr_new(struct build *b, dnnl_primitive_attr_t *attr)
{
    TRY_DNNL(b, dnnl_primitive_attr_create(attr), "attribute creation");
    dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(*attr, dnnl_scratchpad_mode_user);
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(*attr);
        return dnnl_fail(b, st, "attribute creation");
    }
    return 0;
}

/* Inserts at *at a reorder from (src md, src block or weight) into (dst md, dst block). */
static int reorder_insert(struct build *b, size_t *at, const dnnl_memory_desc_t *src_md,
                          int src_block, int src_weight, const dnnl_memory_desc_t *dst_md,
                          int dst_block)
{
    dnnl_primitive_attr_t attr;
    TRY(attr_new(b, &attr));
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = dnnl_reorder_primitive_desc_create(&pd, src_md, b->dev->engine, dst_md,
                                                          b->dev->engine, attr);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_fail(b, st, "reorder creation");
    size_t si = *at;
    TRY(prim_insert(b, si, pd, "reorder creation"));
    TRY(arg_add(b, si, DNNL_ARG_FROM, src_md, src_block, src_weight));
    TRY(arg_add(b, si, DNNL_ARG_TO, dst_md, dst_block, -1));
    (*at)++;
    return 0;
}

/* The weight holding storage value s (a constant read in layout `have`) in layout `want`:
 * one per value and layout, however many kernels read it. */
static int weight_of(struct build *b, int s, const dnnl_memory_desc_t *have,
                     const dnnl_memory_desc_t *want, int *w)
{
    if (!val(b, s)->data)
        return kfail(b, ETF_EINVAL, "constant '%.64s' has no data",
                     val(b, s)->name ? val(b, s)->name : "?");
    for (size_t i = 0; i < b->n_weights; i++)
        if (b->weights[i].value == s && dnnl_memory_desc_equal(&b->weights[i].want, want) == 1) {
            *w = (int)i;
            return 0;
        }
    if (etf__reserve(&b->weights, b->n_weights, &b->cap_weights, sizeof *b->weights, 64))
        return kfail(b, ETF_ENOMEM, "out of memory");
    b->weights[b->n_weights] = (struct cpu_weight){.value = s, .have = *have, .want = *want};
    *w = (int)b->n_weights++;
    return 0;
}

/* Makes value v (read in layout `have`, see value_md) argument `id` of step *si in layout
 * `want`: as it is when the layouts agree, else through a reorder inserted before the step
 * into a temporary; a constant through the weight that holds it in `want`. */
static int bind_in(struct build *b, size_t *si, int id, int v, const dnnl_memory_desc_t *have,
                   const dnnl_memory_desc_t *want)
{
    if (!want)
        want = have;
    int s = storage(b, v);
    bool same = dnnl_memory_desc_equal(have, want) == 1;
    if (val(b, s)->kind == ETF_VALUE_CONSTANT) {
        int w;
        TRY(weight_of(b, s, have, want, &w));
        return arg_add(b, *si, id, want, -1, w);
    }
    if (b->vals[s].block < 0)
        return kfail(b, ETF_EINVAL, "value '%.64s' is read before a kernel writes it",
                     val(b, v)->name ? val(b, v)->name : "?");
    if (same)
        return arg_add(b, *si, id, have, b->vals[s].block, -1);
    int tmp;
    TRY(temp_block(b, dnnl_memory_desc_get_size(want), &tmp));
    TRY(reorder_insert(b, si, have, b->vals[s].block, -1, want, tmp));
    return arg_add(b, *si, id, want, tmp, -1);
}

/* Inserts at *si a reorder of value v (read in layout `have`) into (dst md, dst block). */
static int reorder_value(struct build *b, size_t *si, int v, const dnnl_memory_desc_t *have,
                         const dnnl_memory_desc_t *dst, int dst_block)
{
    int s = storage(b, v);
    if (val(b, s)->kind == ETF_VALUE_CONSTANT) {
        int w;
        TRY(weight_of(b, s, have, have, &w));
        return reorder_insert(b, si, have, -1, w, dst, dst_block);
    }
    if (b->vals[s].block < 0)
        return kfail(b, ETF_EINVAL, "value '%.64s' is read before a kernel writes it",
                     val(b, v)->name ? val(b, v)->name : "?");
    return reorder_insert(b, si, have, b->vals[s].block, -1, dst, dst_block);
}

/* ---- Post-ops ---- */

/* oneDNN's eltwise algorithm for alg; 0 for erf, which oneDNN lacks. */
static dnnl_alg_kind_t elt_alg(enum etf_eltwise_alg alg, float *alpha, float *beta)
{
    switch (alg) {
    case ETF_ELT_RELU:
        *alpha = 0.f;
        *beta = 0.f;
        return dnnl_eltwise_relu;
    case ETF_ELT_CLIP:
        return dnnl_eltwise_clip_v2;
    case ETF_ELT_SIGMOID:
        return dnnl_eltwise_logistic;
    case ETF_ELT_SWISH:
        *alpha = 1.f; /* x * sigmoid(alpha x) */
        return dnnl_eltwise_swish;
    case ETF_ELT_GELU_ERF:
        return dnnl_eltwise_gelu_erf;
    case ETF_ELT_TANH:
        return dnnl_eltwise_tanh;
    case ETF_ELT_EXP:
        return dnnl_eltwise_exp;
    case ETF_ELT_SQRT:
        return dnnl_eltwise_sqrt;
    case ETF_ELT_LINEAR:
        return dnnl_eltwise_linear;
    case ETF_ELT_ERF:
        break;
    }
    return (dnnl_alg_kind_t)0;
}

static dnnl_alg_kind_t bin_alg(enum etf_binary_alg alg)
{
    switch (alg) {
    case ETF_BIN_ADD:
        return dnnl_binary_add;
    case ETF_BIN_SUB:
        return dnnl_binary_sub;
    case ETF_BIN_MUL:
        return dnnl_binary_mul;
    case ETF_BIN_DIV:
        return dnnl_binary_div;
    }
    return dnnl_binary_add;
}

/* The layout of a post-op's operand, broadcast against the destination's dims. */
static int post_md(struct build *b, const struct etf_post_op *po, int nd, const dnnl_dim_t *dims,
                   const dnnl_memory_desc_t *like, dnnl_memory_desc_t *have,
                   dnnl_memory_desc_t *want)
{
    dnnl_dims_t vd;
    /* A full-size operand is viewed with the destination's dims, which may be a reshape of
     * the output's shape (a matmul folding batch dims into rows). */
    if (etf__shape_elems(&val(b, po->value)->shape) == dims_elems(nd, dims))
        memcpy(vd, dims, (size_t)nd * sizeof *dims);
    else
        TRY(bcast_dims(b, &val(b, po->value)->shape, nd, vd));
    if (po->kind == ETF_POST_SUM ? !dims_equal(nd, vd, dims) : !dims_bcast_to(nd, vd, dims))
        return kfail(b, ETF_EINVAL, "post-op operand '%.64s' does not match the output's shape",
                     val(b, po->value)->name ? val(b, po->value)->name : "?");
    return operand_md(b, po->value, nd, vd, like, have, want);
}

/* A binary post-op that leads the kernel's own: BATCHNORM's shift. */
struct lead_op {
    dnnl_alg_kind_t alg;
    dnnl_memory_desc_t md;
};

/* How many of the kernel's post-ops oneDNN can express: those before the first erf. */
static int fusable_post_ops(const struct etf_kernel *kn)
{
    int n = 0;
    while (n < kn->n_post &&
           !(kn->post[n].kind == ETF_POST_ELTWISE && kn->post[n].eltwise == ETF_ELT_ERF))
        n++;
    return n;
}

static int attr_with_post(struct build *b, int n_fused, const struct lead_op *lead, int nd,
                          const dnnl_dim_t *dims, dnnl_primitive_attr_t *out)
{
    dnnl_primitive_attr_t attr;
    TRY(attr_new(b, &attr));
    if (n_fused == 0 && !lead) {
        *out = attr;
        return 0;
    }
    int rc = 0;
    dnnl_post_ops_t po;
    dnnl_status_t st = dnnl_post_ops_create(&po);
    if (st != dnnl_success) {
        dnnl_primitive_attr_destroy(attr);
        return dnnl_fail(b, st, "post-op creation");
    }
    if (lead)
        st = dnnl_post_ops_append_binary(po, lead->alg, &lead->md);
    for (int i = 0; st == dnnl_success && rc == 0 && i < n_fused; i++) {
        const struct etf_post_op *p = &b->kn->post[i];
        switch (p->kind) {
        case ETF_POST_ELTWISE: {
            float alpha = p->alpha, beta = p->beta;
            dnnl_alg_kind_t alg = elt_alg(p->eltwise, &alpha, &beta);
            st = dnnl_post_ops_append_eltwise(po, 1.f, alg, alpha, beta);
            break;
        }
        case ETF_POST_SUM:
            st = dnnl_post_ops_append_sum(po, 1.f);
            break;
        case ETF_POST_BINARY: {
            dnnl_memory_desc_t have, want;
            rc = post_md(b, p, nd, dims, b->has_po_like ? &b->po_like : NULL, &have, &want);
            if (rc == 0)
                st = dnnl_post_ops_append_binary(po, bin_alg(p->binary), &want);
            break;
        }
        }
    }
    if (st == dnnl_success && rc == 0)
        st = dnnl_primitive_attr_set_post_ops(attr, po);
    dnnl_post_ops_destroy(po);
    if (st != dnnl_success && rc == 0)
        rc = dnnl_fail(b, st, "post-op creation");
    if (rc) {
        dnnl_primitive_attr_destroy(attr);
        return rc;
    }
    *out = attr;
    return 0;
}

/* Creates the primitive descriptor of op_desc with the longest prefix of the kernel's
 * post-ops that oneDNN fuses without giving up its preferred implementation: at most those
 * before the first it cannot express (erf). The rest run as steps of their own. */
static int create_pd(struct build *b, const void *op_desc, const struct lead_op *lead, int nd,
                     const dnnl_dim_t *dims, dnnl_primitive_desc_t *pd, int *n_fused,
                     const char *what)
{
    int n = fusable_post_ops(b->kn);
    b->has_po_like = false;
    bool binary_post = false;
    for (int i = 0; i < n; i++)
        binary_post |= b->kn->post[i].kind == ETF_POST_BINARY;
    if (binary_post) {
        /* Binary operands are laid out like the destination: learn which it is first. */
        dnnl_primitive_attr_t attr;
        TRY(attr_with_post(b, 0, lead, nd, dims, &attr));
        dnnl_status_t st = dnnl_primitive_desc_create(pd, op_desc, attr, b->dev->engine, NULL);
        dnnl_primitive_attr_destroy(attr);
        if (st != dnnl_success)
            return dnnl_fail(b, st, what);
        b->po_like = *dnnl_primitive_desc_query_md(*pd, dnnl_query_dst_md, 0);
        b->has_po_like = true;
        dnnl_primitive_desc_destroy(*pd);
    }
    for (;;) {
        dnnl_primitive_attr_t attr;
        TRY(attr_with_post(b, n, lead, nd, dims, &attr));
        dnnl_status_t st = dnnl_primitive_desc_create(pd, op_desc, attr, b->dev->engine, NULL);
        dnnl_primitive_attr_destroy(attr);
        if (st == dnnl_success && n > 0 && b->has_po_like &&
            dnnl_memory_desc_equal(dnnl_primitive_desc_query_md(*pd, dnnl_query_dst_md, 0),
                                   &b->po_like) != 1) {
            /* Only a slower implementation in another layout fuses these (a gemm
             * convolution on nchw for a full-tensor operand): keep the preferred one and
             * run the post-ops after it. */
            dnnl_primitive_desc_destroy(*pd);
            n--;
            continue;
        }
        if (st == dnnl_success) {
            *n_fused = n;
            return 0;
        }
        if (st != dnnl_unimplemented || n == 0)
            return dnnl_fail(b, st, what);
        n--;
    }
}

static int pd_create_plain(struct build *b, const void *op_desc, dnnl_primitive_desc_t *pd,
                           const char *what)
{
    dnnl_primitive_attr_t attr;
    TRY(attr_new(b, &attr));
    dnnl_status_t st = dnnl_primitive_desc_create(pd, op_desc, attr, b->dev->engine, NULL);
    dnnl_primitive_attr_destroy(attr);
    if (st != dnnl_success)
        return dnnl_fail(b, st, what);
    return 0;
}

/* Records that the kernel's output v is written in layout md; returns its block. A residual
 * that this kernel reads last through a fused sum lends its bytes to the output (the sum
 * then accumulates in place). */
static int set_out(struct build *b, int v, const dnnl_memory_desc_t *md, int n_fused, int *block)
{
    int s = storage(b, v);
    struct cpu_val *cv = &b->vals[s];
    if (val(b, s)->kind != ETF_VALUE_ACTIVATION)
        return kfail(b, ETF_EINVAL, "output '%.64s' is not an activation",
                     val(b, v)->name ? val(b, v)->name : "?");
    if (cv->block >= 0)
        return kfail(b, ETF_EINVAL, "value '%.64s' is written twice",
                     val(b, v)->name ? val(b, v)->name : "?");
    size_t bytes = dnnl_memory_desc_get_size(md);
    if (v == s && !cv->fixed) {
        cv->md = *md;
    } else {
        dnnl_dims_t dims;
        shape_dims(&val(b, s)->shape, dims);
        md_plain(&cv->md, val(b, s)->shape.ndim, dims);
        if (bytes != etf__shape_elems(&val(b, s)->shape) * sizeof(float))
            return kfail(b, ETF_EINVAL, "output '%.64s' does not hold the result",
                         val(b, v)->name ? val(b, v)->name : "?");
    }
    cv->has_md = true;

    for (int i = 0; i < n_fused; i++) {
        const struct etf_post_op *p = &b->kn->post[i];
        if (p->kind != ETF_POST_SUM)
            continue;
        int r = storage(b, p->value);
        const struct cpu_val *rv = &b->vals[r];
        if (val(b, r)->kind != ETF_VALUE_ACTIVATION || rv->block < 0 || v != s ||
            b->blocks[rv->block].last != b->k)
            break;
        /* The residual's bytes must already be laid out as the output's (a plain residual
         * of another shape, a reshape's storage, is the same plain bytes). */
        bool same_layout = dnnl_memory_desc_equal(&rv->md, md) == 1 ||
                           (md_is_plain(&rv->md) && md_is_plain(md) &&
                            dnnl_memory_desc_get_size(&rv->md) == bytes);
        if (!same_layout)
            break;
        /* Nothing else in this kernel may read the residual's bytes while they are
         * overwritten. */
        const int *ins;
        int n_in;
        etf__kernel_inputs(b->kn, &ins, &n_in);
        bool shared = false;
        for (int j = 0; j < n_in; j++)
            shared |= storage(b, ins[j]) == r;
        for (int j = 0; j < b->kn->n_post; j++)
            shared |= j != i && b->kn->post[j].kind != ETF_POST_ELTWISE &&
                      storage(b, b->kn->post[j].value) == r;
        if (shared)
            break;
        cv->block = rv->block;
        if (b->blocks[cv->block].last < cv->last)
            b->blocks[cv->block].last = cv->last;
        *block = cv->block;
        return 0;
    }
    cv->block = block_new(b, bytes, b->k, cv->last);
    if (cv->block < 0)
        return kfail(b, ETF_ENOMEM, "out of memory");
    *block = cv->block;
    return 0;
}

/* The post-ops not fused, as steps of their own on the destination, appended to the
 * kernel (whose main step is the last one so far). */
static int post_steps(struct build *b, int from, int nd, const dnnl_dim_t *dims,
                      const dnnl_memory_desc_t *dst, int dst_block)
{
    for (int i = from; i < b->kn->n_post; i++) {
        const struct etf_post_op *p = &b->kn->post[i];
        size_t at = b->ck->n_steps;
        if (p->kind == ETF_POST_ELTWISE && p->eltwise == ETF_ELT_ERF) {
            TRY(step_insert(b, at, STEP_ERF));
            b->ck->steps[at].n = dnnl_memory_desc_get_size(dst) / sizeof(float);
            TRY(arg_add(b, at, DNNL_ARG_SRC, dst, dst_block, -1));
            TRY(arg_add(b, at, DNNL_ARG_DST, dst, dst_block, -1));
        } else if (p->kind == ETF_POST_ELTWISE) {
            float alpha = p->alpha, beta = p->beta;
            dnnl_alg_kind_t alg = elt_alg(p->eltwise, &alpha, &beta);
            dnnl_eltwise_desc_t ed;
            TRY_DNNL(
                b,
                dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, dst, alpha, beta),
                "post-op eltwise creation");
            dnnl_primitive_desc_t pd;
            TRY(pd_create_plain(b, &ed, &pd, "post-op eltwise creation"));
            TRY(prim_insert(b, at, pd, "post-op eltwise creation"));
            TRY(arg_add(b, at, DNNL_ARG_SRC, dst, dst_block, -1));
            TRY(arg_add(b, at, DNNL_ARG_DST, dst, dst_block, -1));
        } else {
            dnnl_memory_desc_t have, want;
            TRY(post_md(b, p, nd, dims, dst, &have, &want));
            dnnl_alg_kind_t alg = p->kind == ETF_POST_SUM ? dnnl_binary_add : bin_alg(p->binary);
            dnnl_binary_desc_t bd;
            TRY_DNNL(b, dnnl_binary_desc_init(&bd, alg, dst, &want, dst),
                     "post-op binary creation");
            dnnl_primitive_desc_t pd;
            TRY(pd_create_plain(b, &bd, &pd, "post-op binary creation"));
            TRY(prim_insert(b, at, pd, "post-op binary creation"));
            TRY(arg_add(b, at, DNNL_ARG_SRC_0, dst, dst_block, -1));
            TRY(bind_in(b, &at, DNNL_ARG_SRC_1, p->value, &have, &want));
            TRY(arg_add(b, at, DNNL_ARG_DST, dst, dst_block, -1));
        }
    }
    return 0;
}

/* Finishes the main step *si of the kernel, whose primitive writes layout dst: the
 * destination, the operands of its fused post-ops (attribute indices after `lead` leading
 * ones), the residual copy a fused sum needs, and the post-ops left unfused. An output that
 * must stay plain but that the primitive writes in another layout goes through a temporary
 * and a final reorder. */
static int finish_out(struct build *b, size_t *si, const dnnl_memory_desc_t *dst, int n_fused,
                      int lead, int nd, const dnnl_dim_t *dims)
{
    int v = b->kn->output, blk, out_blk = -1;
    dnnl_memory_desc_t plain;
    md_plain(&plain, nd, dims);
    if (out_free(b, v) || md_same_bytes(dst, &plain)) {
        TRY(set_out(b, v, dst, n_fused, &blk));
    } else {
        TRY(set_out(b, v, &plain, 0, &out_blk));
        TRY(temp_block(b, dnnl_memory_desc_get_size(dst), &blk));
    }
    TRY(arg_add(b, *si, DNNL_ARG_DST, dst, blk, -1));
    for (int i = 0; i < n_fused; i++) {
        const struct etf_post_op *p = &b->kn->post[i];
        if (p->kind == ETF_POST_ELTWISE)
            continue;
        dnnl_memory_desc_t have, want;
        if (p->kind == ETF_POST_BINARY) {
            TRY(post_md(b, p, nd, dims, b->has_po_like ? &b->po_like : NULL, &have, &want));
            TRY(bind_in(b, si, DNNL_ARG_ATTR_MULTIPLE_POST_OP(i + lead) | DNNL_ARG_SRC_1, p->value,
                        &have, &want));
            continue;
        }
        /* Sum: oneDNN adds what the destination holds, so the residual goes there first. */
        int r = storage(b, p->value);
        if (val(b, r)->kind == ETF_VALUE_ACTIVATION && b->vals[r].block == blk)
            continue; /* accumulating in place */
        TRY(post_md(b, p, nd, dims, NULL, &have, &want));
        TRY(reorder_value(b, si, p->value, &have, dst, blk));
    }
    TRY(post_steps(b, n_fused, nd, dims, dst, blk));
    if (out_blk >= 0) {
        size_t at = b->ck->n_steps;
        TRY(reorder_insert(b, &at, dst, blk, -1, &plain, out_blk));
    }
    return 0;
}

/* ---- Kernels ---- */

static int out_dims(struct build *b, int *nd, dnnl_dim_t *dims)
{
    const struct etf_shape *s = &val(b, b->kn->output)->shape;
    *nd = s->ndim;
    shape_dims(s, dims);
    return 0;
}

static int check_out_dims(struct build *b, int nd, const dnnl_dim_t *dims)
{
    const struct etf_shape *s = &val(b, b->kn->output)->shape;
    bool ok = s->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = s->d[i] == dims[i];
    if (!ok)
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the inputs'");
    return 0;
}

static int build_conv(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs < 2 || kn->n_inputs > 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 2 or 3 expected", kn->n_inputs);
    int x = kn->inputs[0], w = kn->inputs[1], bias = kn->n_inputs > 2 ? kn->inputs[2] : -1;
    const struct etf_shape *xs = &val(b, x)->shape, *ws = &val(b, w)->shape;
    const struct etf_shape *ys = &val(b, kn->output)->shape;
    if (xs->ndim != 4 || ws->ndim != 4 || ys->ndim != 4)
        return kfail(b, ETF_ENOTSUP, "only 2-D convolutions (4-D tensors) are supported");
    if (!is_const(b, w))
        return kfail(b, ETF_ENOTSUP, "weights that are not constants are not supported");
    if (bias >= 0 && !is_const(b, bias))
        return kfail(b, ETF_ENOTSUP, "a bias that is not a constant is not supported");
    int64_t g = kn->attr.conv.groups > 0 ? kn->attr.conv.groups : 1;
    int64_t O = ws->d[0], C = xs->d[1];
    if (ws->d[1] * g != C || O % g != 0 || ys->d[1] != O || ys->d[0] != xs->d[0] ||
        (bias >= 0 && etf__shape_elems(&val(b, bias)->shape) != (size_t)O))
        return kfail(b, ETF_EINVAL, "shapes of x, w, b and y disagree (groups %lld)", (long long)g);
    for (int i = 0; i < 2; i++)
        if (kn->attr.conv.stride[i] < 1 || kn->attr.conv.dilation[i] < 1)
            return kfail(b, ETF_EINVAL, "stride and dilation must be at least 1");

    dnnl_dims_t xd, yd, wd, bd = {O};
    shape_dims(xs, xd);
    shape_dims(ys, yd);
    int wnd = g > 1 ? 5 : 4;
    if (g > 1) {
        wd[0] = g;
        wd[1] = O / g;
        wd[2] = ws->d[1];
        wd[3] = ws->d[2];
        wd[4] = ws->d[3];
    } else {
        shape_dims(ws, wd);
    }
    dnnl_dims_t strides, dil, pl, pr;
    for (int i = 0; i < 2; i++) {
        strides[i] = kn->attr.conv.stride[i];
        dil[i] = kn->attr.conv.dilation[i] - 1; /* oneDNN counts the gaps */
        pl[i] = kn->attr.conv.pad_begin[i];
        pr[i] = kn->attr.conv.pad_end[i];
    }
    dnnl_memory_desc_t src_any, wei_any, bias_md, dst_want;
    md_any(&src_any, 4, xd);
    md_any(&wei_any, wnd, wd);
    md_plain(&bias_md, 1, bd);
    out_want(b, kn->output, 4, yd, &dst_want);
    dnnl_convolution_desc_t cd;
    TRY_DNNL(b,
             dnnl_dilated_convolution_forward_desc_init(
                 &cd, dnnl_forward_inference, dnnl_convolution_direct, &src_any, &wei_any,
                 bias >= 0 ? &bias_md : NULL, &dst_want, strides, dil, pl, pr),
             "convolution setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &cd, NULL, 4, yd, &pd, &n_fused, "convolution creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "convolution creation"));

    dnnl_memory_desc_t have;
    TRY(value_md(b, x, 4, xd, &have));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &have,
                dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0)));
    md_plain(&have, wnd, wd);
    TRY(bind_in(b, &si, DNNL_ARG_WEIGHTS, w, &have,
                dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0)));
    if (bias >= 0)
        TRY(bind_in(b, &si, DNNL_ARG_BIAS, bias, &bias_md, NULL));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 0, 4, yd);
}

static int build_matmul(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs < 2 || kn->n_inputs > 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 2 or 3 expected", kn->n_inputs);
    int a = kn->inputs[0], w = kn->inputs[1], bias = kn->n_inputs > 2 ? kn->inputs[2] : -1;
    int nd;
    dnnl_dims_t ad, wd, yd, bd;
    char why[160];
    if (etf__plan_matmul_dims(b->plan, kn, &nd, ad, wd, yd, why, sizeof why))
        return kfail(b, ETF_EINVAL, "%s", why);
    if (dims_elems(nd, yd) != etf__shape_elems(&val(b, kn->output)->shape))
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the inputs'");
    for (int i = 0; i < nd - 1; i++)
        bd[i] = 1;
    bd[nd - 1] = yd[nd - 1];
    if (bias >= 0 && etf__shape_elems(&val(b, bias)->shape) != (size_t)yd[nd - 1])
        return kfail(b, ETF_EINVAL, "the bias has %zu elements, %lld expected",
                     etf__shape_elems(&val(b, bias)->shape), (long long)yd[nd - 1]);

    /* Weights shared by every batch (their batch dims all 1) make the batch part of the
     * rows: a plain [..., M, K] is a [B*M, K] matrix, and oneDNN then packs the weights
     * and runs one GEMM instead of B small ones ([S,1,D] activations of seq-first
     * transformers are S products of one row otherwise). Post-op operands must allow
     * the same view: full-size, or broadcast along all but the last axis. */
    bool fold = nd > 2 && reads_plain(b, a);
    for (int i = 0; i < nd - 2; i++)
        fold &= wd[i] == 1;
    for (int i = 0; fold && i < kn->n_post; i++) {
        const struct etf_post_op *p = &kn->post[i];
        if (p->kind == ETF_POST_ELTWISE)
            continue;
        const struct etf_shape *ps = &val(b, p->value)->shape;
        bool rows_broadcast = true;
        for (int j = 0; j + 1 < ps->ndim; j++)
            rows_broadcast &= ps->d[j] == 1;
        fold &= reads_plain(b, p->value) &&
                (rows_broadcast || etf__shape_elems(ps) == dims_elems(nd, yd));
    }
    if (fold) {
        dnnl_dim_t rows = (dnnl_dim_t)(dims_elems(nd, ad) / (size_t)ad[nd - 1]);
        dnnl_dim_t K = ad[nd - 1], N = wd[nd - 1];
        ad[0] = rows;
        ad[1] = K;
        wd[0] = K;
        wd[1] = N;
        yd[0] = rows;
        yd[1] = N;
        bd[0] = 1;
        bd[1] = N;
        nd = 2;
    }

    /* Activations are plain (non-4-D values always are); constant weights take the
     * layout the primitive prefers. */
    dnnl_memory_desc_t a_md, w_md, b_md, dst_want;
    md_plain(&a_md, nd, ad);
    if (is_const(b, w))
        md_any(&w_md, nd, wd);
    else
        md_plain(&w_md, nd, wd);
    md_plain(&b_md, nd, bd);
    out_want(b, kn->output, nd, yd, &dst_want);
    if (dst_want.format_kind == dnnl_format_kind_any)
        md_plain(&dst_want, nd, yd);
    dnnl_matmul_desc_t md;
    TRY_DNNL(b, dnnl_matmul_desc_init(&md, &a_md, &w_md, bias >= 0 ? &b_md : NULL, &dst_want),
             "matmul setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &md, NULL, nd, yd, &pd, &n_fused, "matmul creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "matmul creation"));
    dnnl_memory_desc_t have;
    TRY(value_md(b, a, nd, ad, &have));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, a, &have, &a_md));
    TRY(value_md(b, w, nd, wd, &have));
    TRY(bind_in(b, &si, DNNL_ARG_WEIGHTS, w, &have,
                dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0)));
    if (bias >= 0) {
        TRY(value_md(b, bias, nd, bd, &have));
        TRY(bind_in(b, &si, DNNL_ARG_BIAS, bias, &have, &b_md));
    }
    return finish_out(b, &si, &dst_want, n_fused, 0, nd, yd);
}

/* Pooling of x [N,C,H,W] into the kernel's output, windows given per spatial axis. */
static int pool_of(struct build *b, int x, dnnl_alg_kind_t alg, const dnnl_dim_t *kernel,
                   const dnnl_dim_t *strides, const dnnl_dim_t *pad_l, const dnnl_dim_t *pad_r)
{
    const struct etf_shape *xs = &val(b, x)->shape;
    int nd;
    dnnl_dims_t xd, yd, k, st, pl, pr, dil = {0, 0};
    TRY(out_dims(b, &nd, yd));
    if (xs->ndim != 4 || nd != 4)
        return kfail(b, ETF_ENOTSUP, "only 2-D pooling (4-D tensors) is supported");
    shape_dims(xs, xd);
    for (int i = 0; i < 2; i++) {
        k[i] = kernel[i];
        st[i] = strides[i];
        pl[i] = pad_l[i];
        pr[i] = pad_r[i];
    }
    dnnl_memory_desc_t src, dst_want;
    TRY(value_md(b, x, 4, xd, &src));
    out_want(b, b->kn->output, 4, yd, &dst_want);
    dnnl_pooling_v2_desc_t pdsc;
    TRY_DNNL(b,
             dnnl_pooling_v2_forward_desc_init(&pdsc, dnnl_forward_inference, alg, &src, &dst_want,
                                               st, k, dil, pl, pr),
             "pooling setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &pdsc, NULL, 4, yd, &pd, &n_fused, "pooling creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "pooling creation"));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &src, NULL));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 0, 4, yd);
}

static int build_pool(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    dnnl_alg_kind_t alg = kn->attr.pool.alg == ETF_POOL_MAX ? dnnl_pooling_max
                          : kn->attr.pool.alg == ETF_POOL_AVG_INCLUDE_PAD
                              ? dnnl_pooling_avg_include_padding
                              : dnnl_pooling_avg_exclude_padding;
    return pool_of(b, kn->inputs[0], alg, kn->attr.pool.kernel, kn->attr.pool.stride,
                   kn->attr.pool.pad_begin, kn->attr.pool.pad_end);
}

/* y = x * scale + shift per channel: a binary multiply with the shift as a leading
 * binary-add post-op, so that any layout of x works and the kernel's own post-ops fuse. */
static int build_batchnorm(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 3 expected", kn->n_inputs);
    int x = kn->inputs[0], scale = kn->inputs[1], shift = kn->inputs[2];
    int nd;
    dnnl_dims_t xd, cd;
    TRY(out_dims(b, &nd, xd));
    if (nd < 2)
        return kfail(b, ETF_EINVAL, "batchnorm of a tensor without channels");
    TRY(check_out_dims(b, val(b, x)->shape.ndim, xd));
    for (int i = 0; i < nd; i++)
        cd[i] = i == 1 ? xd[1] : 1;
    struct lead_op lead = {.alg = dnnl_binary_add};
    dnnl_memory_desc_t src, sc_have, sc, sh_have, dst_want;
    TRY(value_md(b, x, nd, xd, &src));
    TRY(operand_md(b, scale, nd, cd, &src, &sc_have, &sc));
    TRY(operand_md(b, shift, nd, cd, &src, &sh_have, &lead.md));
    out_want(b, kn->output, nd, xd, &dst_want);
    dnnl_binary_desc_t bd;
    TRY_DNNL(b, dnnl_binary_desc_init(&bd, dnnl_binary_mul, &src, &sc, &dst_want),
             "batchnorm setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &bd, &lead, nd, xd, &pd, &n_fused, "batchnorm creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "batchnorm creation"));
    TRY(bind_in(b, &si, DNNL_ARG_SRC_0, x, &src, NULL));
    TRY(bind_in(b, &si, DNNL_ARG_SRC_1, scale, &sc_have, &sc));
    TRY(bind_in(b, &si, DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, shift, &sh_have,
                &lead.md));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 1, nd, xd);
}

static int build_layernorm(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 3 expected", kn->n_inputs);
    int x = kn->inputs[0], gamma = kn->inputs[1], beta = kn->inputs[2];
    int nd;
    dnnl_dims_t xd;
    TRY(out_dims(b, &nd, xd));
    if (nd < 1)
        return kfail(b, ETF_EINVAL, "layer norm of a scalar");
    TRY(check_out_dims(b, val(b, x)->shape.ndim, xd));
    dnnl_dims_t dd = {xd[nd - 1]};
    dnnl_memory_desc_t data, have, pmd;
    md_plain(&data, nd, xd);
    md_plain(&pmd, 1, dd);
    dnnl_layer_normalization_desc_t ld;
    TRY_DNNL(b,
             dnnl_layer_normalization_forward_desc_init(&ld, dnnl_forward_inference, &data, NULL,
                                                        kn->attr.norm.epsilon,
                                                        dnnl_use_scale | dnnl_use_shift),
             "layer norm setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &ld, NULL, nd, xd, &pd, &n_fused, "layer norm creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "layer norm creation"));
    TRY(value_md(b, x, nd, xd, &have));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &have, &data));
    TRY(value_md(b, gamma, 1, dd, &have));
    TRY(bind_in(b, &si, DNNL_ARG_SCALE, gamma, &have, &pmd));
    TRY(value_md(b, beta, 1, dd, &have));
    TRY(bind_in(b, &si, DNNL_ARG_SHIFT, beta, &have, &pmd));
    return finish_out(b, &si, &data, n_fused, 0, nd, xd);
}

static int build_eltwise(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0];
    int nd;
    dnnl_dims_t yd;
    TRY(out_dims(b, &nd, yd));
    /* Source and destination share one layout: the source's when the output is free to
     * take it, plain otherwise. */
    dnnl_memory_desc_t have, md;
    TRY(value_md(b, x, nd, yd, &have));
    out_want(b, kn->output, nd, yd, &md);
    if (md.format_kind == dnnl_format_kind_any)
        md = have;
    size_t si = b->ck->n_steps;
    int n_fused = 0;
    if (kn->attr.eltwise.alg == ETF_ELT_ERF) {
        TRY(step_insert(b, si, STEP_ERF));
        b->ck->steps[si].n = dnnl_memory_desc_get_size(&md) / sizeof(float);
    } else {
        float alpha = kn->attr.eltwise.alpha, beta = kn->attr.eltwise.beta;
        dnnl_alg_kind_t alg = elt_alg(kn->attr.eltwise.alg, &alpha, &beta);
        dnnl_eltwise_desc_t ed;
        TRY_DNNL(b,
                 dnnl_eltwise_forward_desc_init(&ed, dnnl_forward_inference, alg, &md, alpha, beta),
                 "eltwise setup");
        dnnl_primitive_desc_t pd;
        TRY(create_pd(b, &ed, NULL, nd, yd, &pd, &n_fused, "eltwise creation"));
        TRY(prim_insert(b, si, pd, "eltwise creation"));
    }
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &have, &md));
    return finish_out(b, &si, &md, n_fused, 0, nd, yd);
}

/* Inserts at *si a step broadcasting value v (viewed with dims `from`) to plain `to` in a
 * temporary; returns the temporary's block. */
static int expand_insert(struct build *b, size_t *si, int v, int nd, const dnnl_dim_t *from,
                         const dnnl_dim_t *to, int *block)
{
    dnnl_memory_desc_t have, plain_from, plain_to;
    TRY(value_md(b, v, nd, from, &have));
    md_plain(&plain_from, nd, from);
    md_plain(&plain_to, nd, to);
    TRY(temp_block(b, dnnl_memory_desc_get_size(&plain_to), block));
    size_t at = *si;
    TRY(step_insert(b, at, STEP_EXPAND));
    struct cpu_step *st = &b->ck->steps[at];
    st->ndims = nd;
    int64_t stride = 1;
    for (int i = nd - 1; i >= 0; i--) {
        st->dims[i] = to[i];
        st->src_strides[i] = from[i] == 1 ? 0 : stride;
        stride *= from[i];
    }
    st->n = dims_elems(nd, to);
    TRY(bind_in(b, &at, DNNL_ARG_SRC, v, &have, &plain_from));
    TRY(arg_add(b, at, DNNL_ARG_DST, &plain_to, *block, -1));
    *si = at + 1;
    return 0;
}

static int build_binary(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 2)
        return kfail(b, ETF_EINVAL, "%d inputs, 2 expected", kn->n_inputs);
    int a = kn->inputs[0], c = kn->inputs[1];
    int nd;
    dnnl_dims_t yd, ad, cd;
    TRY(out_dims(b, &nd, yd));
    TRY(bcast_dims(b, &val(b, a)->shape, nd, ad));
    TRY(bcast_dims(b, &val(b, c)->shape, nd, cd));
    if (!dims_bcast_to(nd, ad, yd) || !dims_bcast_to(nd, cd, yd))
        return kfail(b, ETF_EINVAL, "the operands do not broadcast to the output's shape");
    enum etf_binary_alg alg = kn->attr.binary.alg;
    /* oneDNN broadcasts the second operand only: swap when that is the full one and the
     * operation commutes, else materialise the broadcast of the first. */
    if (!dims_equal(nd, ad, yd) && dims_equal(nd, cd, yd) &&
        (alg == ETF_BIN_ADD || alg == ETF_BIN_MUL)) {
        int t = a;
        a = c;
        c = t;
        dnnl_dims_t td;
        memcpy(td, ad, sizeof td);
        memcpy(ad, cd, sizeof td);
        memcpy(cd, td, sizeof td);
    }
    size_t si = b->ck->n_steps;
    int expanded = -1;
    dnnl_memory_desc_t src0, src1, dst_want;
    if (!dims_equal(nd, ad, yd)) {
        TRY(expand_insert(b, &si, a, nd, ad, yd, &expanded));
        md_plain(&src0, nd, yd);
    } else {
        TRY(value_md(b, a, nd, ad, &src0));
    }
    dnnl_memory_desc_t src1_have;
    TRY(operand_md(b, c, nd, cd, &src0, &src1_have, &src1));
    out_want(b, kn->output, nd, yd, &dst_want);
    dnnl_binary_desc_t bd;
    TRY_DNNL(b, dnnl_binary_desc_init(&bd, bin_alg(alg), &src0, &src1, &dst_want), "binary setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &bd, NULL, nd, yd, &pd, &n_fused, "binary creation"));
    TRY(prim_insert(b, si, pd, "binary creation"));
    if (expanded >= 0)
        TRY(arg_add(b, si, DNNL_ARG_SRC_0, &src0, expanded, -1));
    else
        TRY(bind_in(b, &si, DNNL_ARG_SRC_0, a, &src0, NULL));
    TRY(bind_in(b, &si, DNNL_ARG_SRC_1, c, &src1_have, &src1));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 0, nd, yd);
}

static int build_concat(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    const int *ins;
    int n;
    etf__kernel_inputs(kn, &ins, &n);
    int nd, axis = kn->attr.axis.axis;
    dnnl_dims_t yd;
    TRY(out_dims(b, &nd, yd));
    if (n < 1 || axis < 0 || axis >= nd)
        return kfail(b, ETF_EINVAL, "%d inputs over axis %d of %d", n, axis, nd);
    dnnl_memory_desc_t *srcs = calloc((size_t)n, sizeof *srcs);
    if (!srcs)
        return kfail(b, ETF_ENOMEM, "out of memory");
    int rc = 0;
    int64_t along = 0;
    for (int i = 0; rc == 0 && i < n; i++) {
        const struct etf_shape *s = &val(b, ins[i])->shape;
        dnnl_dims_t d;
        shape_dims(s, d);
        bool ok = s->ndim == nd;
        for (int j = 0; ok && j < nd; j++)
            ok = j == axis || d[j] == yd[j];
        if (!ok)
            rc = kfail(b, ETF_EINVAL, "input %d does not match the output's shape", i);
        else
            rc = value_md(b, ins[i], nd, d, &srcs[i]);
        along += s->d[axis];
    }
    if (rc == 0 && along != yd[axis])
        rc = kfail(b, ETF_EINVAL, "the inputs add up to %lld along axis %d, not %lld",
                   (long long)along, axis, (long long)yd[axis]);
    dnnl_primitive_desc_t pd = NULL;
    if (rc == 0) {
        dnnl_memory_desc_t dst_want;
        out_want(b, kn->output, nd, yd, &dst_want);
        dnnl_primitive_attr_t attr;
        rc = attr_new(b, &attr);
        if (rc == 0) {
            dnnl_status_t st = dnnl_concat_primitive_desc_create(&pd, &dst_want, n, axis, srcs,
                                                                 attr, b->dev->engine);
            dnnl_primitive_attr_destroy(attr);
            if (st != dnnl_success)
                rc = dnnl_fail(b, st, "concat creation");
        }
    }
    size_t si = b->ck->n_steps;
    if (rc == 0)
        rc = prim_insert(b, si, pd, "concat creation");
    for (int i = 0; rc == 0 && i < n; i++)
        rc = bind_in(b, &si, DNNL_ARG_MULTIPLE_SRC + i, ins[i], &srcs[i], NULL);
    free(srcs);
    if (rc)
        return rc;
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, 0, 0, nd, yd);
}

static int build_softmax(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0], nd, axis = kn->attr.axis.axis;
    dnnl_dims_t yd;
    TRY(out_dims(b, &nd, yd));
    TRY(check_out_dims(b, val(b, x)->shape.ndim, yd));
    if (axis < 0 || axis >= nd)
        return kfail(b, ETF_EINVAL, "axis %d of a %d-D tensor", axis, nd);
    dnnl_memory_desc_t src, dst_want;
    TRY(value_md(b, x, nd, yd, &src));
    out_want(b, kn->output, nd, yd, &dst_want);
    dnnl_softmax_v2_desc_t sd;
    TRY_DNNL(b,
             dnnl_softmax_v2_forward_desc_init(&sd, dnnl_forward_inference, dnnl_softmax_accurate,
                                               &src, &dst_want, axis),
             "softmax setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &sd, NULL, nd, yd, &pd, &n_fused, "softmax creation"));
    size_t si = b->ck->n_steps;
    TRY(prim_insert(b, si, pd, "softmax creation"));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &src, NULL));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 0, nd, yd);
}

/* A reorder from x into a strided view of y's plain bytes: y[i...] = x[perm...]. */
static int build_transpose(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0], nd;
    const struct etf_shape *xs = &val(b, x)->shape;
    dnnl_dims_t yd, xd, ystr, vstr;
    TRY(out_dims(b, &nd, yd));
    if (xs->ndim != nd || nd < 1)
        return kfail(b, ETF_EINVAL, "a %d-D input for a %d-D output", xs->ndim, nd);
    shape_dims(xs, xd);
    unsigned seen = 0;
    for (int i = 0; i < nd; i++) {
        int p = kn->attr.transpose.perm[i];
        if (p < 0 || p >= nd || (seen & (1u << p)) || yd[i] != xd[p])
            return kfail(b, ETF_EINVAL, "perm is not a permutation matching the shapes");
        seen |= 1u << p;
    }
    dnnl_dim_t stride = 1;
    for (int i = nd - 1; i >= 0; i--) {
        ystr[i] = stride;
        stride *= yd[i];
    }
    for (int i = 0; i < nd; i++)
        vstr[kn->attr.transpose.perm[i]] = ystr[i];
    dnnl_memory_desc_t src, view, dst;
    TRY(value_md(b, x, nd, xd, &src));
    TRY_DNNL(b, dnnl_memory_desc_init_by_strides(&view, nd, xd, dnnl_f32, vstr), "transpose setup");
    md_plain(&dst, nd, yd);
    int blk;
    TRY(set_out(b, kn->output, &dst, 0, &blk));
    size_t si = b->ck->n_steps;
    TRY(reorder_value(b, &si, x, &src, &view, blk));
    return post_steps(b, 0, nd, yd, &dst, blk);
}

static int build_reduce_mean(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0];
    const struct etf_shape *xs = &val(b, x)->shape;
    int nd = xs->ndim;
    unsigned mask = kn->attr.reduce.axes_mask;
    if (nd < 1 || (mask >> nd) != 0)
        return kfail(b, ETF_EINVAL, "axes mask 0x%x for a %d-D tensor", mask, nd);
    dnnl_dims_t xd, rd;
    shape_dims(xs, xd);
    for (int i = 0; i < nd; i++)
        rd[i] = (mask >> i) & 1u ? 1 : xd[i];
    if (dims_elems(nd, rd) != etf__shape_elems(&val(b, kn->output)->shape))
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the inputs'");
    const struct etf_shape *ys0 = &val(b, kn->output)->shape;
    if (nd == 4 && mask == 0xcu && ys0->ndim == 4) {
        /* The mean over H and W is a global average pooling, which oneDNN vectorises in
         * every layout (its reduction falls back to reference code on nhwc). */
        dnnl_dims_t one = {1, 1}, zero = {0, 0};
        return pool_of(b, x, dnnl_pooling_avg_exclude_padding, &xd[2], one, zero, zero);
    }
    /* The plan keeps the reduced dimensions; an output of another rank is a plain view. */
    const struct etf_shape *ys = &val(b, kn->output)->shape;
    bool same_rank = ys->ndim == nd;
    dnnl_memory_desc_t src, dst_want;
    TRY(value_md(b, x, nd, xd, &src));
    if (same_rank)
        out_want(b, kn->output, nd, rd, &dst_want);
    else
        md_plain(&dst_want, nd, rd);
    size_t si = b->ck->n_steps;
    if (dims_equal(nd, xd, rd)) { /* nothing to reduce: a copy */
        dnnl_memory_desc_t dst;
        if (same_rank && out_free(b, kn->output))
            dst = src;
        else
            md_plain(&dst, nd, rd);
        int blk;
        TRY(set_out(b, kn->output, &dst, 0, &blk));
        TRY(reorder_value(b, &si, x, &src, &dst, blk));
        return post_steps(b, 0, nd, rd, &dst, blk);
    }
    dnnl_reduction_desc_t rdsc;
    TRY_DNNL(b, dnnl_reduction_desc_init(&rdsc, dnnl_reduction_mean, &src, &dst_want, 0.f, 0.f),
             "reduction setup");
    dnnl_primitive_desc_t pd;
    int n_fused;
    TRY(create_pd(b, &rdsc, NULL, nd, rd, &pd, &n_fused, "reduction creation"));
    TRY(prim_insert(b, si, pd, "reduction creation"));
    TRY(bind_in(b, &si, DNNL_ARG_SRC, x, &src, NULL));
    dnnl_memory_desc_t dst = *dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0);
    return finish_out(b, &si, &dst, n_fused, 0, nd, rd);
}

/* Constant padding (negative pads crop): fill the output, then reorder the kept part of
 * the input into the window of the output it lands in, both plain. */
static int build_pad(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs < 1)
        return kfail(b, ETF_EINVAL, "no input");
    int x = kn->inputs[0], nd;
    const struct etf_shape *xs = &val(b, x)->shape;
    dnnl_dims_t xd, yd, ext, soff, doff;
    TRY(out_dims(b, &nd, yd));
    if (xs->ndim != nd || nd < 1)
        return kfail(b, ETF_EINVAL, "a %d-D input for a %d-D output", xs->ndim, nd);
    shape_dims(xs, xd);
    bool copy = true, fill = false;
    for (int i = 0; i < nd; i++) {
        int64_t lo = kn->attr.pad.begin[i], hi = kn->attr.pad.end[i];
        if (xd[i] + lo + hi != yd[i])
            return kfail(b, ETF_EINVAL, "pads of axis %d do not give the output's shape", i);
        soff[i] = lo < 0 ? -lo : 0;
        doff[i] = lo > 0 ? lo : 0;
        ext[i] = xd[i] - soff[i] - (hi < 0 ? -hi : 0);
        copy &= ext[i] > 0;
        fill |= lo > 0 || hi > 0;
    }
    dnnl_memory_desc_t dst, src_plain, have;
    md_plain(&dst, nd, yd);
    md_plain(&src_plain, nd, xd);
    int blk;
    TRY(set_out(b, kn->output, &dst, 0, &blk));
    size_t si = b->ck->n_steps;
    if (fill || !copy) {
        TRY(step_insert(b, si, STEP_FILL));
        b->ck->steps[si].n = dims_elems(nd, yd);
        b->ck->steps[si].value = kn->attr.pad.value;
        TRY(arg_add(b, si, DNNL_ARG_DST, &dst, blk, -1));
        si++;
    }
    if (copy) {
        TRY(value_md(b, x, nd, xd, &have));
        int s = storage(b, x), src_blk = -1, src_weight = -1;
        if (val(b, s)->kind == ETF_VALUE_CONSTANT) {
            TRY(weight_of(b, s, &have, &have, &src_weight));
        } else if (md_is_plain(&have)) {
            src_blk = b->vals[s].block;
            if (src_blk < 0)
                return kfail(b, ETF_EINVAL, "value '%.64s' is read before a kernel writes it",
                             val(b, x)->name ? val(b, x)->name : "?");
        } else {
            TRY(temp_block(b, dnnl_memory_desc_get_size(&src_plain), &src_blk));
            TRY(reorder_value(b, &si, x, &have, &src_plain, src_blk));
        }
        dnnl_memory_desc_t sub_src, sub_dst;
        TRY_DNNL(b, dnnl_memory_desc_init_submemory(&sub_src, &src_plain, ext, soff), "pad setup");
        TRY_DNNL(b, dnnl_memory_desc_init_submemory(&sub_dst, &dst, ext, doff), "pad setup");
        TRY(reorder_insert(b, &si, &sub_src, src_blk, src_weight, &sub_dst, blk));
    }
    return post_steps(b, 0, nd, yd, &dst, blk);
}

/* ---- Load ---- */

/* Which storages must stay plain, and the last kernel that reads each. */
static void analyse(struct build *b)
{
    const struct etf_plan *p = b->plan;
    for (size_t v = 0; v < p->n_values; v++) {
        struct cpu_val *cv = &b->vals[v];
        cv->block = -1;
        cv->last = 0;
        const struct etf_value *x = &p->values[v];
        if (x->kind != ETF_VALUE_ACTIVATION || x->shape.ndim != 4)
            cv->fixed = true;
        if (x->alias_of >= 0)
            b->vals[etf__plan_storage(p, (int)v)].fixed = true;
    }
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n + kn->n_post + 1; i++) {
            int v = i < n ? ins[i] : i < n + kn->n_post ? kn->post[i - n].value : kn->output;
            if (i >= n && i < n + kn->n_post && kn->post[i - n].kind == ETF_POST_ELTWISE)
                continue;
            struct cpu_val *cv = &b->vals[etf__plan_storage(p, v)];
            if (k > cv->last)
                cv->last = k;
        }
    }
    for (size_t i = 0; i < p->n_outputs; i++) {
        struct cpu_val *cv = &b->vals[etf__plan_storage(p, p->outputs[i])];
        cv->fixed = true;
        cv->last = p->n_kernels; /* outputs outlive the run */
    }
    /* Model inputs are live from kernel 0, where they are copied in (see load). */
}

static int build_kernel(struct build *b)
{
    switch (b->kn->op) {
    case ETF_K_CONV:
        return build_conv(b);
    case ETF_K_MATMUL:
        return build_matmul(b);
    case ETF_K_POOL:
        return build_pool(b);
    case ETF_K_BATCHNORM:
        return build_batchnorm(b);
    case ETF_K_LAYERNORM:
        return build_layernorm(b);
    case ETF_K_ELTWISE:
        return build_eltwise(b);
    case ETF_K_BINARY:
        return build_binary(b);
    case ETF_K_CONCAT:
        return build_concat(b);
    case ETF_K_SOFTMAX:
        return build_softmax(b);
    case ETF_K_TRANSPOSE:
        return build_transpose(b);
    case ETF_K_REDUCE_MEAN:
        return build_reduce_mean(b);
    case ETF_K_PAD:
        return build_pad(b);
    }
    return kfail(b, ETF_ENOTSUP, "unknown op");
}

static float *arg_ptr(const struct etf_dmodel *dm, const struct build *b, const struct cpu_arg *a)
{
    if (a->weight >= 0)
        return (float *)(dm->weights + b->weights[a->weight].offset);
    return (float *)(dm->arena + b->blocks[a->block].offset);
}

static const struct cpu_arg *find_arg(const struct cpu_step *st, int id)
{
    for (int i = 0; i < st->n_args; i++)
        if (st->args[i].id == id)
            return &st->args[i];
    return NULL;
}

/* Fills weight w from the plan's constant: a copy where the layouts agree, else a reorder
 * (run on the load's stream, on the load's threads). */
static int weight_fill(struct build *b, const struct cpu_weight *w)
{
    const struct etf_value *x = val(b, w->value);
    void *dst = b->dm->weights + w->offset;
    size_t bytes = dnnl_memory_desc_get_size(&w->want);
    if (dnnl_memory_desc_equal(&w->have, &w->want) == 1 &&
        bytes == etf__shape_elems(&x->shape) * sizeof(float)) {
        memcpy(dst, x->data, bytes);
        return 0;
    }
    int rc = 0;
    dnnl_memory_t src = NULL, to = NULL;
    dnnl_primitive_desc_t pd = NULL;
    dnnl_primitive_t prim = NULL;
    dnnl_status_t st = dnnl_memory_create(&src, &w->have, b->dev->engine, (void *)x->data);
    if (st == dnnl_success)
        st = dnnl_memory_create(&to, &w->want, b->dev->engine, dst);
    if (st == dnnl_success)
        st = dnnl_reorder_primitive_desc_create(&pd, &w->have, b->dev->engine, &w->want,
                                                b->dev->engine, NULL);
    if (st == dnnl_success)
        st = dnnl_primitive_create(&prim, pd);
    if (st == dnnl_success) {
        dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, src}, {DNNL_ARG_TO, to}};
        st = dnnl_primitive_execute(prim, b->stream, 2, args);
    }
    if (st == dnnl_success)
        st = dnnl_stream_wait(b->stream);
    if (st != dnnl_success)
        rc = dnnl_fail(b, st, "weight reorder");
    if (prim)
        dnnl_primitive_destroy(prim);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (to)
        dnnl_memory_destroy(to);
    if (src)
        dnnl_memory_destroy(src);
    return rc;
}

/* Lays the weights out in one buffer and fills it, in the order the kernels read them.
 * Each plan constant is reported taken (plan.h) as soon as its last weight is filled: a plan
 * whose weights the owner dropped then frees it at once, so that the plan's copy shrinks as
 * this one grows. The buffer is a big one, not populated: each page is faulted in by the
 * fill that writes it first, and blocked layouts' padding reads as the zeros it must be. */
static int weights_load(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    const struct etf_plan *p = b->plan;
    size_t total = 0;
    for (size_t i = 0; i < b->n_weights; i++) {
        b->weights[i].offset = total;
        size_t bytes = dnnl_memory_desc_get_size(&b->weights[i].want);
        total += (bytes + CPU_ALIGN - 1) / CPU_ALIGN * CPU_ALIGN;
    }
    if (total == 0)
        return 0;
    dm->weights = etf__bigmem_alloc(total, false);
    if (!dm->weights)
        return kfail(b, ETF_ENOMEM, "out of memory for %zu bytes of weights", total);
    dm->weights_bytes = total;
    size_t *last = malloc(p->n_values * sizeof *last); /* the last weight of each value */
    if (!last)
        return kfail(b, ETF_ENOMEM, "out of memory");
    for (size_t i = 0; i < b->n_weights; i++)
        last[b->weights[i].value] = i;
    int rc = 0;
    for (size_t i = 0; i < b->n_weights && rc == 0; i++) {
        rc = weight_fill(b, &b->weights[i]);
        if (rc == 0 && last[b->weights[i].value] == i)
            etf__plan_weight_taken(p, b->weights[i].value);
    }
    free(last);
    return rc;
}

/* Places the arena, allocates it with every page faulted in (now, not during the first
 * inference), and turns every step's arguments into memory objects over it and the
 * weights. */
static int finalize(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    const struct etf_plan *p = b->plan;
    size_t total;
    if (etf__arena_place(b->blocks, b->n_blocks, &total))
        return kfail(b, ETF_ENOMEM, "out of memory");
    dm->arena_bytes = total ? total : CPU_ALIGN;
    dm->arena = etf__bigmem_alloc(dm->arena_bytes, true);
    if (!dm->arena)
        return kfail(b, ETF_ENOMEM, "out of memory for an arena of %zu bytes", total);

    for (size_t k = 0; k < dm->n_kernels; k++) {
        b->kn = &p->kernels[k];
        struct cpu_kernel *ck = &dm->kernels[k];
        for (size_t i = 0; i < ck->n_steps; i++) {
            struct cpu_step *st = &ck->steps[i];
            if (st->kind != STEP_PRIM) {
                const struct cpu_arg *src = find_arg(st, DNNL_ARG_SRC);
                const struct cpu_arg *dst = find_arg(st, DNNL_ARG_DST);
                st->src = src ? arg_ptr(dm, b, src) : NULL;
                st->dst = dst ? arg_ptr(dm, b, dst) : NULL;
                continue;
            }
            st->exec = calloc((size_t)st->n_args, sizeof *st->exec);
            if (!st->exec)
                return kfail(b, ETF_ENOMEM, "out of memory");
            for (int j = 0; j < st->n_args; j++) {
                st->exec[j].arg = st->args[j].id;
                TRY_DNNL(b,
                         dnnl_memory_create(&st->exec[j].memory, &st->args[j].md, b->dev->engine,
                                            arg_ptr(dm, b, &st->args[j])),
                         "memory creation");
            }
        }
    }
    b->kn = NULL;

    dm->in = calloc(p->n_inputs ? p->n_inputs : 1, sizeof *dm->in);
    dm->out = calloc(p->n_outputs ? p->n_outputs : 1, sizeof *dm->out);
    if (!dm->in || !dm->out)
        return kfail(b, ETF_ENOMEM, "out of memory");
    for (size_t i = 0; i < p->n_inputs; i++) {
        int s = p->inputs[i];
        dm->in[i].ptr = (float *)(dm->arena + b->blocks[b->vals[s].block].offset);
        dm->in[i].bytes = etf__shape_elems(&p->values[s].shape) * sizeof(float);
    }
    for (size_t i = 0; i < p->n_outputs; i++) {
        int v = p->outputs[i], s = etf__plan_storage(p, v);
        if (p->values[s].kind == ETF_VALUE_CONSTANT)
            dm->out[i].ptr = (float *)p->values[s].data;
        else if (b->vals[s].block >= 0)
            dm->out[i].ptr = (float *)(dm->arena + b->blocks[b->vals[s].block].offset);
        else
            return kfail(b, ETF_EINVAL, "model output %zu is never written", i);
        dm->out[i].bytes = etf__shape_elems(&p->values[v].shape) * sizeof(float);
    }
    return 0;
}

static void device_cpu_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    (void)dev;
    if (!dm)
        return;
    if (dm->kernels) {
        for (size_t k = 0; k < dm->n_kernels; k++) {
            for (size_t i = 0; i < dm->kernels[k].n_steps; i++)
                step_free(&dm->kernels[k].steps[i]);
            free(dm->kernels[k].steps);
        }
        free(dm->kernels);
    }
    etf__bigmem_free(dm->weights, dm->weights_bytes);
    etf__bigmem_free(dm->arena, dm->arena_bytes);
    free(dm->in);
    free(dm->out);
    free(dm);
}

static int device_cpu_load(struct etf_device *dev, const struct etf_model_desc *desc,
                           struct etf_dmodel **out, struct etf_diag *diag)
{
    struct cpu_device *d = (struct cpu_device *)dev;
    if (!desc || !desc->plan)
        return etf_diagf(diag, ETF_EINVAL, "device cpu: model '%.64s' has no plan to run",
                         desc && desc->name ? desc->name : "?");
    const struct etf_plan *plan = desc->plan;
    struct etf_dmodel *dm = calloc(1, sizeof *dm);
    struct build b = {.dev = d, .plan = plan, .dm = dm, .diag = diag};
    if (!dm)
        return etf_diagf(diag, ETF_ENOMEM, "device cpu: out of memory");
    dm->plan = plan;
    dm->n_kernels = plan->n_kernels;
    dm->kernels = calloc(plan->n_kernels ? plan->n_kernels : 1, sizeof *dm->kernels);
    b.vals = calloc(plan->n_values ? plan->n_values : 1, sizeof *b.vals);
    if (!dm->kernels || !b.vals) {
        free(b.vals);
        device_cpu_unload(dev, dm);
        return etf_diagf(diag, ETF_ENOMEM, "device cpu: out of memory");
    }

    int prev_threads = threads_enter(d);
    int rc = etf__plan_check(plan, "device cpu", diag);
    if (rc)
        goto free_build;
    dnnl_status_t st = dnnl_stream_create(&b.stream, d->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        rc = dnnl_fail(&b, st, "stream creation");
        goto free_build;
    }
    analyse(&b);
    for (size_t i = 0; i < plan->n_inputs; i++) {
        int s = plan->inputs[i];
        struct cpu_val *cv = &b.vals[s];
        dnnl_dims_t dims;
        shape_dims(&plan->values[s].shape, dims);
        md_plain(&cv->md, plan->values[s].shape.ndim, dims);
        cv->has_md = true;
        if (cv->block < 0)
            cv->block = block_new(&b, dnnl_memory_desc_get_size(&cv->md), 0, cv->last);
        if (cv->block < 0) {
            rc = kfail(&b, ETF_ENOMEM, "out of memory");
            goto destroy_stream;
        }
    }
    for (size_t k = 0; k < plan->n_kernels && rc == 0; k++) {
        b.k = k;
        b.kn = &plan->kernels[k];
        b.ck = &dm->kernels[k];
        rc = build_kernel(&b);
    }
    b.kn = NULL;
    if (rc == 0)
        rc = weights_load(&b);
    if (rc == 0)
        rc = finalize(&b);

destroy_stream:
    dnnl_stream_destroy(b.stream);
free_build:
    threads_leave(d, prev_threads);
    free(b.vals);
    free(b.blocks);
    free(b.weights);
    if (rc) {
        device_cpu_unload(dev, dm);
        return rc;
    }
    *out = dm;
    return 0;
}

/* ---- Launch ---- */

static void run_loop(const struct cpu_step *st)
{
    switch (st->kind) {
    case STEP_ERF:
        for (size_t i = 0; i < st->n; i++)
            st->dst[i] = erff(st->src[i]);
        break;
    case STEP_FILL:
        for (size_t i = 0; i < st->n; i++)
            st->dst[i] = st->value;
        break;
    case STEP_EXPAND: {
        int64_t idx[ETF_MAX_DIMS] = {0};
        int64_t off = 0;
        for (size_t i = 0; i < st->n; i++) {
            st->dst[i] = st->src[off];
            for (int d = st->ndims - 1; d >= 0; d--) {
                off += st->src_strides[d];
                if (++idx[d] < st->dims[d])
                    break;
                off -= st->src_strides[d] * st->dims[d];
                idx[d] = 0;
            }
        }
        break;
    }
    case STEP_PRIM:
        break;
    }
}

static int device_cpu_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    struct cpu_device *d = (struct cpu_device *)dev;
    struct etf_dmodel *dm = run->dm;
    if (!dm || run->kernel >= dm->n_kernels)
        return ETF_EINVAL;
    const struct etf_task_io *io = run->io;
    const struct etf_plan *p = dm->plan;
    bool first = run->kernel == 0, last = run->kernel + 1 == dm->n_kernels;
    if (io && ((first && p->n_inputs && !io->inputs) || (last && p->n_outputs && !io->outputs)))
        return ETF_EINVAL;

    int prev_threads = threads_enter(d);
    uint64_t start = etf_host_ns();
    int rc = 0;
    if (io && first)
        for (size_t i = 0; i < p->n_inputs; i++)
            memcpy(dm->in[i].ptr, io->inputs[i], dm->in[i].bytes);
    const struct cpu_kernel *ck = &dm->kernels[run->kernel];
    for (size_t i = 0; i < ck->n_steps && rc == 0; i++) {
        const struct cpu_step *st = &ck->steps[i];
        if (st->kind == STEP_PRIM) {
            if (dnnl_primitive_execute(st->prim, d->stream, st->n_args, st->exec) != dnnl_success)
                rc = ETF_EDEVICE;
        } else {
            /* The loops read what the primitives before them wrote. */
            if (dnnl_stream_wait(d->stream) != dnnl_success)
                rc = ETF_EDEVICE;
            else
                run_loop(st);
        }
    }
    if (rc == 0 && dnnl_stream_wait(d->stream) != dnnl_success)
        rc = ETF_EDEVICE;
    if (rc == 0 && io && last)
        for (size_t i = 0; i < p->n_outputs; i++)
            memcpy(io->outputs[i], dm->out[i].ptr, dm->out[i].bytes);
    run->busy_ns = etf_host_ns() - start;
    threads_leave(d, prev_threads);
    return rc;
}

/* ---- Open and close ---- */

static void device_cpu_close(struct etf_device *dev)
{
    struct cpu_device *d = (struct cpu_device *)dev;
    if (!d)
        return;
    if (d->stream)
        dnnl_stream_destroy(d->stream);
    if (d->engine)
        dnnl_engine_destroy(d->engine);
    if (d->gomp)
        dlclose(d->gomp);
    free(d);
}

/* Finds libgomp's thread controls: oneDNN loaded the library already; this only takes a
 * reference to it. */
static int find_omp(struct cpu_device *d, struct etf_diag *diag)
{
#if DNNL_CPU_RUNTIME == DNNL_RUNTIME_OMP
    d->gomp = dlopen("libgomp.so.1", RTLD_LAZY | RTLD_LOCAL);
    if (!d->gomp)
        return etf_diagf(diag, ETF_ENOTSUP, "device cpu: cannot set the thread count: %s",
                         dlerror());
    void *set = dlsym(d->gomp, "omp_set_num_threads");
    void *get = dlsym(d->gomp, "omp_get_max_threads");
    if (!set || !get)
        return etf_diagf(diag, ETF_ENOTSUP,
                         "device cpu: cannot set the thread count: libgomp lacks omp controls");
    /* Object to function pointer, the way POSIX allows it. */
    memcpy(&d->omp_set_num_threads, &set, sizeof set);
    memcpy(&d->omp_get_max_threads, &get, sizeof get);
    return 0;
#else
    (void)d;
    return etf_diagf(diag, ETF_ENOTSUP,
                     "device cpu: this oneDNN build does not use OpenMP; the thread count "
                     "cannot be set");
#endif
}

static int device_cpu_open(const struct etf_device_config *cfg, struct etf_device **out,
                           struct etf_diag *diag)
{
    if (cfg->threads < 0)
        return etf_diagf(diag, ETF_EINVAL, "device cpu: threads must be 0 or more, not %d",
                         cfg->threads);
    struct cpu_device *d = calloc(1, sizeof *d);
    if (!d)
        return etf_diagf(diag, ETF_ENOMEM, "device cpu: out of memory");
    d->base.ops = &etf__device_cpu_ops;
    int rc = 0;
    if (cfg->threads > 0) {
        rc = find_omp(d, diag);
        if (rc)
            goto close_device;
        d->threads = cfg->threads;
    }
    dnnl_status_t st = dnnl_engine_create(&d->engine, dnnl_cpu, 0);
    if (st == dnnl_success)
        st = dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
        rc = etf_diagf(diag, dnnl_err_code(st), "device cpu: oneDNN engine start failed: %s",
                       dnnl_status2str(st));
        goto close_device;
    }
    *out = &d->base;
    return 0;

close_device:
    device_cpu_close(&d->base);
    return rc;
}

const struct etf_device_ops etf__device_cpu_ops = {
    .name = "cpu",
    .open = device_cpu_open,
    .load = device_cpu_load,
    .launch = device_cpu_launch,
    .unload = device_cpu_unload,
    .close = device_cpu_close,
};
