/* The CUDA device: runs the kernels of a plan (model/plan.h) on an NVIDIA GPU with cuDNN,
 * cuBLAS and the custom kernels of cuda_kernels.cu, one plan kernel per launch.
 *
 * Everything that costs more than enqueueing work happens at load: weights are uploaded once,
 * one activation arena is sized and allocated, every cuDNN descriptor is created and every
 * convolution's algorithm chosen (cudnnFindConvolutionForwardAlgorithm, each distinct shape
 * once), the cuDNN workspace (the largest any kernel asks for) is allocated, the pinned
 * staging buffers of the model's inputs and outputs are allocated (two of each, so that a
 * task's inputs can be staged while the previous task of the model still runs), and the
 * whole plan runs once on zeros. That warm-up loads the GPU modules of every kernel (CUDA
 * loads them lazily) and lets cuBLAS and cuDNN set up, so that the first task is timed like
 * the others, and it proves every fused convolution at load: one that cuDNN refuses falls
 * back to a plain convolution and an epilogue kernel. Last, each kernel's steps are captured
 * into a CUDA graph (see capture_graphs).
 *
 * Launches are asynchronous (submit, fence). A submit only enqueues the kernel's work on the
 * device's one stream between a pair of timing events from a ring of MAX_INFLIGHT, and
 * returns; a fence waits for the stop event of the newest kernel it completes, reads each
 * kernel's time between its events, and copies finished tasks' outputs out of their staging
 * buffers. `launch` is a submit and a fence.
 *
 * Layout. Every tensor is plain row-major in its plan shape: NCHW for images, which cuDNN
 * runs well in fp32, and what aliases (reshapes) and the model's inputs and outputs need.
 *
 * Precision. fp32 throughout, with TF32 off by default: convolutions use CUDNN_FMA_MATH
 * (CUDNN_DEFAULT_MATH would let cuDNN use TF32 tensor cores on Ampere and later) and cuBLAS
 * CUBLAS_DEFAULT_MATH, which keeps fp32 products in fp32. The FFT convolution algorithms are
 * never chosen: their error grows with the transform size. The results then stay within
 * 1e-4 of the output's scale of an fp32 reference. ETF_CUDA_TF32=1 in the environment allows
 * TF32 in both libraries (about 10 bits of mantissa in the products: faster, less exact).
 *
 * Kernels.
 *   CONV       cuDNN, by whichever of two paths ran the kernel faster at load (both timed
 *              on the model's buffers, choose_paths): the legacy API,
 *              cudnnConvolutionBiasActivationForward where its epilogue expresses the
 *              post-ops (relu, or a residual sum then relu; identity only with the
 *              IMPLICIT_PRECOMP_GEMM algorithm, the only one cuDNN allows it with), else
 *              cudnnConvolutionForward and one pointwise kernel for bias and post-ops; or the
 *              graph API (cuda_conv_graph.c), whose engines include the fp32 implicit-GEMM
 *              kernels the legacy algorithms do not reach, with bias, residual and relu
 *              fused where it has an engine for them. Asymmetric padding, which cuDNN's
 *              descriptors cannot express, pads the input into a temporary first.
 *   MATMUL     cuBLAS sgemm on row-major data (computing y^T = b^T a^T in column-major
 *              terms): one gemm when the right operand has no batch (batch folded into M),
 *              strided batches, or pointer arrays; operands are read through strided views
 *              (views.h), so that transposes, one-hot gathers and scalings that only products
 *              read run nothing; a bias, then a residual sum, then relu in cuBLASLt's
 *              epilogue (the residual as C with beta 1), other post-ops in one pointwise
 *              kernel after the product.
 *   POOL       cuDNN pooling for symmetric windows, a row mean for global averages, a
 *              custom kernel for asymmetric (ceil-mode) padding.
 *   others     custom kernels: pointwise (batchnorm, eltwise, binary broadcasting and every
 *              post-op chain), layer norm, softmax, concat, transpose, reduce mean, pad.
 * Post-ops that a kernel cannot fuse run as one in-place pointwise kernel after it.
 *
 * Memory. One arena per loaded model holds every activation and temporary; offsets come from
 * the liveness of each block as in the CPU device: blocks whose kernel ranges [first, last]
 * overlap never share bytes (greedy first fit, largest block first).
 *
 * Threads. Launches come from the dispatching thread and use the device's stream and
 * handles. A load may run on another thread at the same time: it works on a stream and
 * handles of its own (cuDNN and cuBLAS handles are not safe to share between threads).
 *
 * Environment: ETF_CUDA_DEVICE (GPU ordinal, default 0), ETF_CUDA_TF32=1 (allow TF32),
 * ETF_CUDA_FUSE=0 (never use cuDNN's fused convolution epilogue, for diagnosis), ETF_CUDA_LOG=1
 * (write each convolution's algorithm (cudnnConvolutionFwdAlgo_t), epilogue and chosen path,
 * and the number of kernels read in place, at load),
 * ETF_CUDA_GRAPHS=0 (enqueue every step with its library call instead of one CUDA graph per
 * kernel), ETF_CUDA_VIEWS=0 (run every transpose, gather and scaling), ETF_CUDA_CONV_GRAPH=0
 * (legacy convolutions only; "always": the graph API wherever it has an engine),
 * ETF_CUDA_LT=0 (products' bias and post-ops in a pointwise kernel, not cuBLASLt's epilogue).
 */
#include "device/arena.h"
#include "device/cuda_conv_graph.h"
#include "device/device.h"
#include "device/cuda_kernels.h"
#include "device/views.h"
#include "model/plan.h"
#include "util/array.h"
#include "util/copier.h"
#include "util/try.h"

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Declared here: device.h lists the backends whose declarations it carries; device.c
 * declares these two beside its registry. */
extern const struct etf_device_ops etf__device_cuda_ops;
bool etf__device_cuda_available(void);

#define CUDA_ALIGN 256
#define MAX_STEPS 4
/* Convolution algorithms that want more workspace than this are passed over. */
#define WORKSPACE_LIMIT ((size_t)256 << 20)
/* cuBLAS's workspace, given at open so that no product allocates one while a launch runs
 * (32 MiB is what cuBLAS recommends for Hopper). */
#define CUBLAS_WORKSPACE ((size_t)32 << 20)

_Static_assert((int)ETFK_ELT_RELU == (int)ETF_ELT_RELU && (int)ETFK_ELT_CLIP == (int)ETF_ELT_CLIP &&
                   (int)ETFK_ELT_SIGMOID == (int)ETF_ELT_SIGMOID &&
                   (int)ETFK_ELT_SWISH == (int)ETF_ELT_SWISH &&
                   (int)ETFK_ELT_GELU_ERF == (int)ETF_ELT_GELU_ERF &&
                   (int)ETFK_ELT_ERF == (int)ETF_ELT_ERF &&
                   (int)ETFK_ELT_TANH == (int)ETF_ELT_TANH &&
                   (int)ETFK_ELT_EXP == (int)ETF_ELT_EXP &&
                   (int)ETFK_ELT_SQRT == (int)ETF_ELT_SQRT &&
                   (int)ETFK_ELT_LINEAR == (int)ETF_ELT_LINEAR,
               "cuda_kernels.h's eltwise codes follow model/plan.h");
_Static_assert((int)ETFK_BIN_ADD == (int)ETF_BIN_ADD && (int)ETFK_BIN_SUB == (int)ETF_BIN_SUB &&
                   (int)ETFK_BIN_MUL == (int)ETF_BIN_MUL && (int)ETFK_BIN_DIV == (int)ETF_BIN_DIV,
               "cuda_kernels.h's binary codes follow model/plan.h");
_Static_assert(ETFK_MAX_DIMS == ETF_MAX_DIMS && ETFK_MAX_POST >= ETF_MAX_POST_OPS,
               "cuda_kernels.h's limits cover the plan's");

/* ---- Errors ---- */

/* Where a failing CUDA, cuDNN or cuBLAS call describes itself. */
struct errbuf {
    char msg[400];
};

__attribute__((format(printf, 3, 4))) static int fail_rec(struct errbuf *e, int code,
                                                          const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    return code;
}

/* The called function's name out of the call's text: "cudnnCreate", not its arguments. */
#define CALL_NAME(expr) (int)strcspn((expr), "("), (expr)

static int cuda_code(cudaError_t st)
{
    return st == cudaErrorMemoryAllocation ? ETF_ENOMEM : ETF_EDEVICE;
}

static int fail_cuda(struct errbuf *e, const char *expr, cudaError_t st)
{
    return fail_rec(e, cuda_code(st), "%.*s failed: %s (%s)", CALL_NAME(expr),
                    cudaGetErrorString(st), cudaGetErrorName(st));
}

static int fail_cudnn(struct errbuf *e, const char *expr, cudnnStatus_t st)
{
    /* cuDNN 9 keeps a readable reason beside the status. */
    char detail[200] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    int code = st == CUDNN_STATUS_NOT_SUPPORTED  ? ETF_ENOTSUP
               : st == CUDNN_STATUS_ALLOC_FAILED ? ETF_ENOMEM
                                                 : ETF_EDEVICE;
    return fail_rec(e, code, "%.*s failed: %s%s%.200s%s", CALL_NAME(expr), cudnnGetErrorString(st),
                    detail[0] ? " (" : "", detail, detail[0] ? ")" : "");
}

static int fail_cublas(struct errbuf *e, const char *expr, cublasStatus_t st)
{
    int code = st == CUBLAS_STATUS_NOT_SUPPORTED  ? ETF_ENOTSUP
               : st == CUBLAS_STATUS_ALLOC_FAILED ? ETF_ENOMEM
                                                  : ETF_EDEVICE;
    return fail_rec(e, code, "%.*s failed: %s (%s)", CALL_NAME(expr), cublasGetStatusName(st),
                    cublasGetStatusString(st));
}

/* Every status is checked: a failure records the call and the library's reason in *e and
 * returns an ETF error code from the enclosing function. */
#define CK_CUDA(e, call)                                                                           \
    do {                                                                                           \
        cudaError_t st_ = (call);                                                                  \
        if (st_ != cudaSuccess)                                                                    \
            return fail_cuda((e), #call, st_);                                                     \
    } while (0)
#define CK_CUDNN(e, call)                                                                          \
    do {                                                                                           \
        cudnnStatus_t st_ = (call);                                                                \
        if (st_ != CUDNN_STATUS_SUCCESS)                                                           \
            return fail_cudnn((e), #call, st_);                                                    \
    } while (0)
#define CK_CUBLAS(e, call)                                                                         \
    do {                                                                                           \
        cublasStatus_t st_ = (call);                                                               \
        if (st_ != CUBLAS_STATUS_SUCCESS)                                                          \
            return fail_cublas((e), #call, st_);                                                   \
    } while (0)

/* ---- Device and model state ---- */

/* A stream and the library handles bound to it: the device's for launches, a load's own. */
struct exec_ctx {
    cudaStream_t stream;
    cudnnHandle_t cudnn;
    cublasHandle_t cublas;
    cublasLtHandle_t lt;
    void *cublas_ws; /* cuBLAS's workspace, and cuBLASLt's (one stream: never both at once) */
    struct errbuf *err;
};

/* cuBLASLt algorithms timed at load for a product with an epilogue. */
#define LT_CANDIDATES 6

/* Kernels submitted and not yet fenced, each between two timing events (see submit). */
#define MAX_INFLIGHT 512
/* Pinned staging buffers per model input and output: a task's inputs are copied in while
 * the previous task of the same model may still be running. */
#define STAGING_SLOTS 2

struct inflight {
    struct etf_kernel_run *run;
    cudaEvent_t start, stop; /* this entry's own events */
    cudaEvent_t begin;       /* where its time starts: its start event or the previous stop */
    int out_slot; /* a task's last kernel: the staging slot its outputs land in; else -1 */
};

struct cuda_device {
    struct etf_device base;
    int ordinal;
    bool tf32, fuse;
    bool log_algos;   /* each convolution's choice is written to stderr at load */
    bool graphs;      /* kernels are captured into CUDA graphs at load */
    bool views;       /* kernels that only re-index may be read in place (views.h) */
    bool lt_epilogue; /* products run bias, relu and residuals in cuBLASLt's epilogue */
    /* Convolutions through cuDNN's graph API: never, where faster (the default), or always
     * where it has an engine (for tests of that path). */
    enum { CONV_GRAPH_OFF, CONV_GRAPH_FASTER, CONV_GRAPH_ALWAYS } conv_graph;
    struct exec_ctx cx;
    struct inflight inflight[MAX_INFLIGHT]; /* a ring: n_inflight from inflight_head */
    size_t inflight_head, n_inflight;
    struct errbuf err; /* the latest launch failure */
    bool err_reported; /* the first is also written to stderr */
    /* Copies tasks' inputs into the pinned staging buffers and outputs out of them: on a
     * task's critical path, and one thread alone copies a batch of images at a third of the
     * speed of a few. */
    struct etf__copier *copier;
};

/* Host threads that copy a task's inputs and outputs when the configuration names none:
 * half the cores, at most this many (more add little once memory bandwidth is the limit). */
#define DEFAULT_COPY_THREADS 4

enum step_kind {
    STEP_CONV,
    STEP_GEMM,
    STEP_POINTWISE,
    STEP_POOL_CUDNN,
    STEP_POOL,
    STEP_ROW_MEAN,
    STEP_REDUCE,
    STEP_SOFTMAX,
    STEP_LAYERNORM,
    STEP_CONCAT,
    STEP_TRANSPOSE,
    STEP_PAD,
    STEP_COPY,
};

struct conv_step {
    cudnnTensorDescriptor_t x_desc, y_desc, b_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    cudnnActivationDescriptor_t act_desc; /* the fused epilogue's; NULL when not fused */
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws_bytes;
    bool fused;   /* bias, z and activation in cuDNN; else the next step is the epilogue */
    float alpha2; /* 1 with a fused residual z, else 0 */
    const float *x, *w, *bias, *z;
    float *y;
    /* The same convolution planned with cuDNN's graph API (cuda_conv_graph.h), owned by the
     * model; used instead when it ran faster at load (choose_paths). graph_fused: its
     * graph adds the bias (gbias: the plan's, or zeros), the residual gz and the relu, so that
     * the epilogue step does not run. */
    const struct etf__conv_graph *graph;
    bool graph_fused, use_graph;
    const float *gbias, *gz;
};

enum gemm_mode { GEMM_ONE, GEMM_STRIDED, GEMM_POINTERS };

/* y [batch][M,N] = alpha a [M,K] b [K,N], each operand read (y written) through its view
 * (views.h): rows ld apart with adjacent columns, or for a and b transposed (adjacent rows,
 * columns ld apart). alpha carries the scalings read in place. */
struct gemm_step {
    enum gemm_mode mode;
    int m, n, k, batch;
    bool trans_a, trans_b;
    int lda, ldb, ldy;
    float alpha;
    long long sa, sb, sy; /* element strides between batches (GEMM_STRIDED) */
    const float *a, *b;
    float *y;
    /* GEMM_POINTERS: element offsets of each batch from a, b and y (host), and the pointer
     * arrays cuBLAS reads (device, built once the arena is placed). */
    int64_t *a_off, *b_off, *y_off;
    void *ptrs; /* a[batch], b[batch], y[batch] */
    /* GEMM_ONE and GEMM_STRIDED with an epilogue cuBLASLt runs in the product (bias, relu,
     * a residual as C with beta 1): the product, its algorithm and operands. NULL: plain
     * cuBLAS, and a pointwise step after it. */
    cublasLtMatmulDesc_t lt;
    cublasLtMatrixLayout_t lt_a, lt_b, lt_y;
    cublasLtMatmulAlgo_t lt_algo;
    /* The heuristic's candidates, fastest first by its model; the one run is chosen by
     * timing them at load (choose_paths). */
    cublasLtMatmulAlgo_t lt_algos[LT_CANDIDATES];
    int n_lt_algos;
    const float *lt_bias, *lt_c; /* lt_c: the residual, or y itself (beta 0) */
    float lt_beta;
};

struct cudnn_pool_step {
    cudnnPoolingDescriptor_t desc;
    cudnnTensorDescriptor_t x_desc, y_desc;
    const float *x;
    float *y;
};

struct rows_step { /* row mean, softmax, layer norm */
    const float *x, *gamma, *beta;
    float *y;
    int64_t outer, dim, inner;
    float eps;
};

struct concat_step {
    struct etfk_concat_src *srcs; /* host copy, patched with the arena's pointers */
    struct etfk_concat_src *dev;  /* the same in device memory */
    int n;
    int64_t max_len, outer, out_len;
    bool vec4; /* lengths, offsets and pointers allow float4 copies (set once placed) */
    float *y;
};

struct copy_step {
    const float *x;
    float *y;
    size_t bytes;
};

struct cuda_step {
    enum step_kind kind;
    bool unfused_only; /* POINTWISE: the epilogue of a convolution that cuDNN did not fuse */
    union {
        struct conv_step conv;
        struct gemm_step gemm;
        struct etfk_pointwise pw;
        struct cudnn_pool_step cpool;
        struct etfk_pool pool;
        struct rows_step rows;
        struct etfk_reduce reduce;
        struct concat_step concat;
        struct etfk_transpose transpose;
        struct etfk_pad pad;
        struct copy_step copy;
    } u;
};

struct cuda_kernel {
    struct cuda_step steps[MAX_STEPS];
    int n_steps;
    cudaGraphExec_t graph; /* the steps captured at load; NULL = enqueued one by one */
};

/* A model input or output as it crosses the API: arena bytes and pinned staging copies. A
 * constant output is read from the plan. */
struct cuda_io {
    float *dev, *host[STAGING_SLOTS];
    const float *constant;
    size_t bytes;
};

struct etf_dmodel {
    const struct etf_plan *plan;
    struct cuda_kernel *kernels;
    size_t n_kernels;
    void *arena, *weights, *workspace;
    size_t arena_bytes, weights_bytes, ws_bytes;
    /* The load's stream and handles, kept while graphs captured with them exist: cuBLAS
     * kernels in a graph use the workspace of the handle they were captured with. */
    struct exec_ctx capture_ctx;
    size_t n_graphs;
    struct etf__conv_graph **conv_graphs; /* graph-API plans, one per distinct convolution */
    size_t n_conv_graphs, cap_conv_graphs;
    struct cuda_io *in, *out;
    /* A slot is busy from its task's first kernel until the fence after its last. */
    bool slot_busy[STAGING_SLOTS];
    int open_slot; /* the slot of the task being submitted; -1 between tasks */
    /* A free slot may hold the inputs of a task not started yet (prepare): its id, else 0.
     * The task's first submit then uses them as they are; another task may take the slot
     * (the staged copy is dropped: nothing on the GPU reads a slot before its task starts). */
    uint64_t staged_task[STAGING_SLOTS];
};

/* ---- Load-time state ---- */

struct cuda_val {
    int block;        /* arena block of a storage value, -1 until produced */
    size_t last;      /* last kernel that reads the storage (n_kernels for model outputs) */
    size_t const_off; /* constants: offset in the weights buffer; SIZE_MAX while unused */
};

enum patch_target { PATCH_BLOCK, PATCH_CONST, PATCH_ZEROS };

/* A pointer that is known once the buffers exist: slot is a `float *` or `const float *`
 * inside a step, filled by finalize. */
struct patch {
    bool is_const;
    void *slot;
    enum patch_target target;
    int index;       /* block or constant value */
    size_t byte_off; /* into it: a view's first element */
};

/* A convolution's choice of algorithm, kept for the next one of the same shape. */
struct algo_choice {
    int key[17];
    cudnnConvolutionFwdAlgo_t algo;
    size_t ws_bytes;
};

/* A graph-API plan made for a convolution shape (the key of algo_choice) and epilogue, for
 * the next one alike: its index in the model's conv_graphs, or -1 when cuDNN had no engine
 * for it. */
struct graph_choice {
    int key[17];
    bool bias, residual, relu;
    int index;
};

struct build {
    struct cuda_device *dev;
    const struct etf_plan *plan;
    struct etf_dmodel *dm;
    struct etf_diag *diag;
    struct errbuf err; /* a failed library call, reported with the kernel's name */
    struct exec_ctx cx;
    struct cuda_val *vals;
    /* Kernels whose outputs are read in place (views.h): they run nothing, and products
     * read and write through strides. vals are indexed by the views' base values. */
    struct etf__views views;
    struct etf_arena_block *blocks;
    size_t n_blocks, cap_blocks;
    struct patch *patches;
    size_t n_patches, cap_patches;
    struct algo_choice *algos;
    size_t n_algos, cap_algos;
    struct graph_choice *graph_plans;
    size_t n_graph_plans, cap_graph_plans;
    size_t const_bytes, zeros; /* weights buffer size so far; zero floats needed */
    size_t k;
    const struct etf_kernel *kn;
    struct cuda_kernel *ck;
};

/* Fails the kernel being built with err, naming it. */
__attribute__((format(printf, 3, 4))) static int kfail(struct build *b, int err, const char *fmt,
                                                       ...)
{
    char what[420];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    if (!b->kn)
        return etf_diagf(b->diag, err, "device cuda: plan '%.64s': %s",
                         b->plan->name ? b->plan->name : "?", what);
    return etf_diagf(b->diag, err, "device cuda: kernel '%.64s' (%s): %s", b->kn->name,
                     etf__plan_op_name(b->kn->op), what);
}

/* ---- Plan helpers ---- */

static int64_t dims_prod(const int64_t *d, int from, int to)
{
    int64_t n = 1;
    for (int i = from; i < to; i++)
        n *= d[i];
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

static const char *vname(const struct build *b, int v)
{
    return val(b, v)->name ? val(b, v)->name : "?";
}

static size_t elems(const struct build *b, int v)
{
    return etf__shape_elems(&val(b, v)->shape);
}

static bool env_flag(const char *name, bool dflt)
{
    const char *s = getenv(name);
    if (!s || !*s)
        return dflt;
    return strcmp(s, "0") != 0 && strcmp(s, "off") != 0 && strcmp(s, "no") != 0;
}

/* ---- Arena blocks and pointers ---- */

static int block_new(struct build *b, size_t bytes, size_t first, size_t last)
{
    return etf__arena_add(&b->blocks, &b->n_blocks, &b->cap_blocks, CUDA_ALIGN, bytes, first, last);
}

/* A block that lives while the current kernel runs only. */
static int temp_block(struct build *b, size_t bytes, int *block)
{
    *block = block_new(b, bytes, b->k, b->k);
    if (*block < 0)
        return kfail(b, ETF_ENOMEM, "out of memory");
    return 0;
}

static int patch_at(struct build *b, bool is_const, void *slot, enum patch_target target, int index,
                    int64_t elem_off)
{
    if (etf__reserve(&b->patches, b->n_patches, &b->cap_patches, sizeof *b->patches, 256))
        return kfail(b, ETF_ENOMEM, "out of memory");
    b->patches[b->n_patches++] = (struct patch){.is_const = is_const,
                                                .slot = slot,
                                                .target = target,
                                                .index = index,
                                                .byte_off = (size_t)elem_off * sizeof(float)};
    return 0;
}

static int patch_add(struct build *b, bool is_const, void *slot, enum patch_target target,
                     int index)
{
    return patch_at(b, is_const, slot, target, index, 0);
}

/* *slot will point at element elem_off of storage value s: in its arena block, or in its
 * constant data on the GPU. */
static int bind_storage(struct build *b, const float **slot, int s, int64_t elem_off)
{
    struct cuda_val *cv = &b->vals[s];
    if (val(b, s)->kind == ETF_VALUE_CONSTANT) {
        if (cv->const_off == SIZE_MAX) {
            cv->const_off = b->const_bytes;
            b->const_bytes +=
                (etf__shape_elems(&val(b, s)->shape) * sizeof(float) + CUDA_ALIGN - 1) /
                CUDA_ALIGN * CUDA_ALIGN;
        }
        return patch_at(b, true, (void *)slot, PATCH_CONST, s, elem_off);
    }
    if (cv->block < 0)
        return kfail(b, ETF_EINVAL, "value '%.64s' is read before a kernel writes it", vname(b, s));
    return patch_at(b, true, (void *)slot, PATCH_BLOCK, cv->block, elem_off);
}

/* *slot will point at value v's first element. Kernels other than products read values
 * that are not views of anything but their own storage (views.h), contiguous. */
static int bind_in(struct build *b, const float **slot, int v)
{
    const struct etf__view *w = &b->views.of[v];
    return bind_storage(b, slot, w->base, w->offset);
}

static int bind_block(struct build *b, float **slot, int block)
{
    return patch_add(b, false, (void *)slot, PATCH_BLOCK, block);
}

static int bind_block_in(struct build *b, const float **slot, int block)
{
    return patch_add(b, true, (void *)slot, PATCH_BLOCK, block);
}

/* Gives the kernel's output value its arena block, live from this kernel to its last read.
 * A product writing through a transpose's output (views.h) gives that value its block. */
static int out_block_new(struct build *b, int *block)
{
    int v = b->kn->output, s = b->views.of[v].base;
    struct cuda_val *cv = &b->vals[s];
    if (val(b, s)->kind != ETF_VALUE_ACTIVATION)
        return kfail(b, ETF_EINVAL, "output '%.64s' is not an activation", vname(b, v));
    if (cv->block >= 0)
        return kfail(b, ETF_EINVAL, "value '%.64s' is written twice", vname(b, v));
    cv->block = block_new(b, etf__shape_elems(&val(b, s)->shape) * sizeof(float), b->k, cv->last);
    if (cv->block < 0)
        return kfail(b, ETF_ENOMEM, "out of memory");
    *block = cv->block;
    return 0;
}

/* The same, and *slot will point at it. */
static int bind_out(struct build *b, float **slot, int *block)
{
    int blk;
    TRY(out_block_new(b, &blk));
    if (block)
        *block = blk;
    return bind_block(b, slot, blk);
}

static struct cuda_step *step_new(struct build *b, enum step_kind kind)
{
    struct cuda_kernel *ck = b->ck;
    if (ck->n_steps == MAX_STEPS)
        return NULL;
    struct cuda_step *st = &ck->steps[ck->n_steps++];
    memset(st, 0, sizeof *st);
    st->kind = kind;
    return st;
}

#define STEP(b, st, kind)                                                                          \
    do {                                                                                           \
        (st) = step_new((b), (kind));                                                              \
        if (!(st))                                                                                 \
            return kfail((b), ETF_EINVAL, "too many steps");                                       \
    } while (0)

/* ---- Operands and post-ops ---- */

/* The output's shape as dims. */
static int out_shape(struct build *b, int *nd, int64_t *dims)
{
    const struct etf_shape *s = &val(b, b->kn->output)->shape;
    *nd = s->ndim;
    for (int i = 0; i < s->ndim; i++)
        dims[i] = s->d[i];
    return 0;
}

/* Describes how value v broadcasts (numpy rules) to an output of dims yd, and binds it.
 * `exact`: v must have the output's shape (up to leading ones). */
static int operand(struct build *b, int v, int nd, const int64_t *yd, bool exact,
                   struct etfk_operand *o)
{
    const struct etf_shape *s = &val(b, v)->shape;
    if (s->ndim > nd)
        return kfail(b, ETF_EINVAL, "operand '%.64s' of %d dims does not broadcast to %d dims",
                     vname(b, v), s->ndim, nd);
    int64_t od[ETF_MAX_DIMS];
    int lead = nd - s->ndim;
    for (int i = 0; i < nd; i++)
        od[i] = i < lead ? 1 : s->d[i - lead];
    for (int i = 0; i < nd; i++)
        if ((od[i] != yd[i] && od[i] != 1) || (exact && od[i] != yd[i]))
            return kfail(b, ETF_EINVAL, "operand '%.64s' does not match the output's shape",
                         vname(b, v));
    memset(o, 0, sizeof *o);
    int lo = -1, hi = -1;
    for (int i = 0; i < nd; i++)
        if (od[i] > 1) {
            if (lo < 0)
                lo = i;
            hi = i;
        }
    if (lo < 0) { /* one element */
        o->mode = ETFK_BC_BLOCK;
        o->inner = o->count = 1;
    } else {
        bool block = true;
        for (int i = lo; i <= hi; i++)
            block &= od[i] == yd[i];
        if (block) {
            o->inner = dims_prod(yd, hi + 1, nd);
            o->count = dims_prod(od, lo, hi + 1);
            o->mode =
                o->inner == 1 && o->count == dims_prod(yd, 0, nd) ? ETFK_BC_FULL : ETFK_BC_BLOCK;
        } else {
            o->mode = ETFK_BC_GENERIC;
            int64_t st = 1;
            for (int i = nd - 1; i >= 0; i--) {
                o->strides[i] = od[i] == 1 ? 0 : st;
                st *= od[i];
            }
        }
    }
    return bind_in(b, &o->ptr, v);
}

/* An operand that is v's elements one for one. */
static int operand_full(struct build *b, int v, size_t n, struct etfk_operand *o)
{
    if (elems(b, v) != n)
        return kfail(b, ETF_EINVAL, "value '%.64s' has %zu elements, %zu expected", vname(b, v),
                     elems(b, v), n);
    memset(o, 0, sizeof *o);
    o->mode = ETFK_BC_FULL;
    return bind_in(b, &o->ptr, v);
}

/* An operand of one value per channel (axis 1) of dims yd. */
static int operand_channel(struct build *b, int v, int nd, const int64_t *yd,
                           struct etfk_operand *o)
{
    if (nd < 2 || (int64_t)elems(b, v) != yd[1])
        return kfail(b, ETF_EINVAL, "value '%.64s' has %zu elements, not one per channel",
                     vname(b, v), elems(b, v));
    memset(o, 0, sizeof *o);
    o->mode = ETFK_BC_BLOCK;
    o->inner = dims_prod(yd, 2, nd);
    o->count = yd[1];
    if (o->inner == 1 && yd[0] == 1)
        o->mode = ETFK_BC_FULL;
    return bind_in(b, &o->ptr, v);
}

/* A pointwise step writing the kernel's output (dims yd), with the kernel's post-ops from
 * index `from` on. */
static int pointwise_init(struct build *b, struct etfk_pointwise *p, int nd, const int64_t *yd,
                          int from)
{
    p->n = dims_prod(yd, 0, nd);
    p->ndim = nd;
    for (int i = 0; i < nd; i++)
        p->dims[i] = yd[i];
    p->n_post = 0;
    for (int i = from; i < b->kn->n_post; i++) {
        const struct etf_post_op *po = &b->kn->post[i];
        struct etfk_post *q = &p->post[p->n_post++];
        switch (po->kind) {
        case ETF_POST_ELTWISE:
            q->kind = ETFK_POST_ELTWISE;
            q->alg = (int)po->eltwise;
            q->alpha = po->alpha;
            q->beta = po->beta;
            break;
        case ETF_POST_SUM:
            q->kind = ETFK_POST_SUM;
            TRY(operand(b, po->value, nd, yd, true, &q->v));
            break;
        case ETF_POST_BINARY:
            q->kind = ETFK_POST_BINARY;
            q->alg = (int)po->binary;
            TRY(operand(b, po->value, nd, yd, false, &q->v));
            break;
        default:
            return kfail(b, ETF_ENOTSUP, "post-op %d of unknown kind", i);
        }
    }
    return 0;
}

/* The kernel's post-ops as an in-place pass over its output (block out_block), for kernels
 * whose main step cannot apply them. */
static int post_pass(struct build *b, int out_block)
{
    if (b->kn->n_post == 0)
        return 0;
    int nd;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    struct cuda_step *st;
    STEP(b, st, STEP_POINTWISE);
    struct etfk_pointwise *p = &st->u.pw;
    TRY(pointwise_init(b, p, nd, yd, 0));
    p->main = ETFK_PW_COPY;
    p->a.mode = ETFK_BC_FULL;
    TRY(bind_block_in(b, &p->a.ptr, out_block));
    return bind_block(b, &p->y, out_block);
}

/* ---- Convolution ---- */

static int choose_algo(struct build *b, const struct conv_step *c, const int *key,
                       cudnnConvolutionFwdAlgo_t *algo, size_t *ws)
{
    for (size_t i = 0; i < b->n_algos; i++)
        if (memcmp(b->algos[i].key, key, sizeof b->algos[i].key) == 0) {
            *algo = b->algos[i].algo;
            *ws = b->algos[i].ws_bytes;
            return 0;
        }
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int n = 0;
    bool found = false;
    /* Measured, fastest first; the heuristics' ranking if measuring fails (no memory). */
    cudnnStatus_t st =
        cudnnFindConvolutionForwardAlgorithm(b->cx.cudnn, c->x_desc, c->w_desc, c->conv_desc,
                                             c->y_desc, CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf);
    if (st != CUDNN_STATUS_SUCCESS)
        CK_CUDNN(&b->err, cudnnGetConvolutionForwardAlgorithm_v7(
                              b->cx.cudnn, c->x_desc, c->w_desc, c->conv_desc, c->y_desc,
                              CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &n, perf));
    for (int i = 0; i < n && !found; i++) {
        const cudnnConvolutionFwdAlgoPerf_t *p = &perf[i];
        if (p->status != CUDNN_STATUS_SUCCESS || p->algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT ||
            p->algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING)
            continue;
        if (!b->dev->tf32 && (p->mathType == CUDNN_TENSOR_OP_MATH ||
                              p->mathType == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION))
            continue;
        size_t bytes = 0;
        if (cudnnGetConvolutionForwardWorkspaceSize(b->cx.cudnn, c->x_desc, c->w_desc, c->conv_desc,
                                                    c->y_desc, p->algo,
                                                    &bytes) != CUDNN_STATUS_SUCCESS ||
            bytes > WORKSPACE_LIMIT)
            continue;
        *algo = p->algo;
        *ws = bytes;
        found = true;
    }
    if (!found) { /* implicit GEMM runs every convolution without workspace */
        *algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
        CK_CUDNN(&b->err,
                 cudnnGetConvolutionForwardWorkspaceSize(b->cx.cudnn, c->x_desc, c->w_desc,
                                                         c->conv_desc, c->y_desc, *algo, ws));
    }
    if (etf__reserve(&b->algos, b->n_algos, &b->cap_algos, sizeof *b->algos, 32))
        return kfail(b, ETF_ENOMEM, "out of memory");
    struct algo_choice *ac = &b->algos[b->n_algos++];
    memcpy(ac->key, key, sizeof ac->key);
    ac->algo = *algo;
    ac->ws_bytes = *ws;
    return 0;
}

static int int_dim(struct build *b, int64_t d, int *out)
{
    if (d < 1 || d > INT32_MAX)
        return kfail(b, ETF_ENOTSUP, "dimension %lld is out of cuDNN's range", (long long)d);
    *out = (int)d;
    return 0;
}

/* The graph-API plan for desc, made once per distinct shape and epilogue: its index in the
 * model's conv_graphs, or -1 when cuDNN has no engine for it. */
static int graph_plan(struct build *b, const int *key, const struct etf__conv_graph_desc *desc,
                      int *index)
{
    for (size_t i = 0; i < b->n_graph_plans; i++) {
        const struct graph_choice *gc = &b->graph_plans[i];
        if (memcmp(gc->key, key, sizeof gc->key) == 0 && gc->bias == desc->bias &&
            gc->residual == desc->residual && gc->relu == desc->relu) {
            *index = gc->index;
            return 0;
        }
    }
    struct etf_dmodel *dm = b->dm;
    if (etf__reserve(&b->graph_plans, b->n_graph_plans, &b->cap_graph_plans, sizeof *b->graph_plans,
                     32) ||
        etf__reserve(&dm->conv_graphs, dm->n_conv_graphs, &dm->cap_conv_graphs,
                     sizeof *dm->conv_graphs, 32))
        return kfail(b, ETF_ENOMEM, "out of memory");
    struct etf__conv_graph *g = NULL;
    char why[200];
    int rc = etf__conv_graph_create(b->cx.cudnn, desc, b->dev->tf32, WORKSPACE_LIMIT, &g, why,
                                    sizeof why);
    if (rc && rc != ETF_ENOTSUP)
        return kfail(b, rc, "graph-API convolution: %s", why);
    *index = rc ? -1 : (int)dm->n_conv_graphs;
    if (g)
        dm->conv_graphs[dm->n_conv_graphs++] = g;
    struct graph_choice *gc = &b->graph_plans[b->n_graph_plans++];
    memcpy(gc->key, key, sizeof gc->key);
    gc->bias = desc->bias;
    gc->residual = desc->residual;
    gc->relu = desc->relu;
    gc->index = *index;
    return 0;
}

/* Plans convolution c with the graph API too: with the kernel's epilogue when the graph
 * expresses it (bias, then a residual sum, then relu), else plain. */
static int plan_conv_graph(struct build *b, struct conv_step *c, const int *key, const int *xd,
                           const int *wd, const int *yd, const int *pad, const int *stride,
                           const int *dil, int groups, bool sum_first, bool relu_last)
{
    const struct etf_kernel *kn = b->kn;
    struct etf__conv_graph_desc d = {.n = xd[0],
                                     .c = xd[1],
                                     .h = xd[2],
                                     .w = xd[3],
                                     .k = wd[0],
                                     .kh = wd[2],
                                     .kw = wd[3],
                                     .groups = groups,
                                     .pad_h = pad[0],
                                     .pad_w = pad[1],
                                     .stride_h = stride[0],
                                     .stride_w = stride[1],
                                     .dil_h = dil[0],
                                     .dil_w = dil[1],
                                     .out_h = yd[2],
                                     .out_w = yd[3]};
    /* cuDNN fuses relu or a residual only after a bias: a missing bias is zeros. */
    bool expressible = kn->n_post == (int)sum_first + (int)relu_last;
    int index = -1;
    if (expressible) {
        struct etf__conv_graph_desc fused = d;
        fused.bias = true;
        fused.residual = sum_first;
        fused.relu = relu_last;
        TRY(graph_plan(b, key, &fused, &index));
        c->graph_fused = index >= 0;
    }
    if (index < 0)
        TRY(graph_plan(b, key, &d, &index));
    if (index < 0)
        return 0;
    c->graph = b->dm->conv_graphs[index];
    size_t ws = etf__conv_graph_workspace(c->graph);
    if (ws > b->dm->ws_bytes)
        b->dm->ws_bytes = ws;
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
    int64_t g = kn->attr.conv.groups > 0 ? kn->attr.conv.groups : 1;
    int64_t O = ws->d[0], C = xs->d[1];
    if (ws->d[1] * g != C || O % g != 0 || ys->d[1] != O || ys->d[0] != xs->d[0] ||
        (bias >= 0 && elems(b, bias) != (size_t)O))
        return kfail(b, ETF_EINVAL, "shapes of x, w, b and y disagree (groups %lld)", (long long)g);
    for (int i = 0; i < 2; i++)
        if (kn->attr.conv.stride[i] < 1 || kn->attr.conv.dilation[i] < 1 ||
            kn->attr.conv.pad_begin[i] < 0 || kn->attr.conv.pad_end[i] < 0)
            return kfail(b, ETF_EINVAL, "stride and dilation must be at least 1, pads at least 0");

    int xd[4], wd[4], yd[4], pad[2], stride[2], dil[2], groups;
    int64_t x4[4] = {xs->d[0], xs->d[1], xs->d[2], xs->d[3]};
    bool asym = kn->attr.conv.pad_begin[0] != kn->attr.conv.pad_end[0] ||
                kn->attr.conv.pad_begin[1] != kn->attr.conv.pad_end[1];
    if (asym) { /* cuDNN pads symmetrically: pad into a temporary, convolve unpadded */
        x4[2] += kn->attr.conv.pad_begin[0] + kn->attr.conv.pad_end[0];
        x4[3] += kn->attr.conv.pad_begin[1] + kn->attr.conv.pad_end[1];
    }
    for (int i = 0; i < 4; i++) {
        TRY(int_dim(b, x4[i], &xd[i]));
        TRY(int_dim(b, ws->d[i], &wd[i]));
        TRY(int_dim(b, ys->d[i], &yd[i]));
    }
    for (int i = 0; i < 2; i++) {
        pad[i] = asym ? 0 : (int)kn->attr.conv.pad_begin[i];
        stride[i] = (int)kn->attr.conv.stride[i];
        dil[i] = (int)kn->attr.conv.dilation[i];
    }
    groups = (int)g;

    int pad_block = -1;
    if (asym) {
        struct cuda_step *ps;
        STEP(b, ps, STEP_PAD);
        struct etfk_pad *p = &ps->u.pad;
        p->ndim = 4;
        for (int i = 0; i < 4; i++) {
            p->y_dims[i] = x4[i];
            p->x_dims[i] = xs->d[i];
        }
        p->begin[2] = kn->attr.conv.pad_begin[0];
        p->begin[3] = kn->attr.conv.pad_begin[1];
        p->n = dims_prod(x4, 0, 4);
        p->value = 0.f;
        TRY(temp_block(b, (size_t)p->n * sizeof(float), &pad_block));
        TRY(bind_in(b, &p->x, x));
        TRY(bind_block(b, &p->y, pad_block));
    }

    struct cuda_step *st;
    STEP(b, st, STEP_CONV);
    struct conv_step *c = &st->u.conv;
    CK_CUDNN(&b->err, cudnnCreateTensorDescriptor(&c->x_desc));
    CK_CUDNN(&b->err, cudnnCreateTensorDescriptor(&c->y_desc));
    CK_CUDNN(&b->err, cudnnCreateTensorDescriptor(&c->b_desc));
    CK_CUDNN(&b->err, cudnnCreateFilterDescriptor(&c->w_desc));
    CK_CUDNN(&b->err, cudnnCreateConvolutionDescriptor(&c->conv_desc));
    CK_CUDNN(&b->err, cudnnSetTensor4dDescriptor(c->x_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                                 xd[0], xd[1], xd[2], xd[3]));
    CK_CUDNN(&b->err, cudnnSetTensor4dDescriptor(c->y_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                                 yd[0], yd[1], yd[2], yd[3]));
    CK_CUDNN(&b->err, cudnnSetTensor4dDescriptor(c->b_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1,
                                                 yd[1], 1, 1));
    CK_CUDNN(&b->err, cudnnSetFilter4dDescriptor(c->w_desc, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW,
                                                 wd[0], wd[1], wd[2], wd[3]));
    CK_CUDNN(&b->err, cudnnSetConvolution2dDescriptor(c->conv_desc, pad[0], pad[1], stride[0],
                                                      stride[1], dil[0], dil[1],
                                                      CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CK_CUDNN(&b->err, cudnnSetConvolutionGroupCount(c->conv_desc, groups));
    /* FMA math keeps fp32 convolutions off TF32 tensor cores (see the top comment). */
    CK_CUDNN(&b->err, cudnnSetConvolutionMathType(c->conv_desc, b->dev->tf32 ? CUDNN_TENSOR_OP_MATH
                                                                             : CUDNN_FMA_MATH));
    int on, oc, oh, ow;
    CK_CUDNN(&b->err, cudnnGetConvolution2dForwardOutputDim(c->conv_desc, c->x_desc, c->w_desc, &on,
                                                            &oc, &oh, &ow));
    if (on != yd[0] || oc != yd[1] || oh != yd[2] || ow != yd[3])
        return kfail(b, ETF_EINVAL,
                     "the output's shape [%d,%d,%d,%d] is not the convolution's [%d,%d,%d,%d]",
                     yd[0], yd[1], yd[2], yd[3], on, oc, oh, ow);
    int key[17] = {xd[0],  xd[1],     xd[2],     xd[3],  wd[0],  wd[1],  wd[2], wd[3], pad[0],
                   pad[1], stride[0], stride[1], dil[0], dil[1], groups, yd[1], 0};
    TRY(choose_algo(b, c, key, &c->algo, &c->ws_bytes));
    if (c->ws_bytes > b->dm->ws_bytes)
        b->dm->ws_bytes = c->ws_bytes;

    /* Which post-ops cuDNN's epilogue act(conv + alpha2 z + bias) expresses. */
    const struct etf_post_op *po = kn->post;
    bool relu_last = kn->n_post > 0 && po[kn->n_post - 1].kind == ETF_POST_ELTWISE &&
                     po[kn->n_post - 1].eltwise == ETF_ELT_RELU;
    bool sum_first = kn->n_post > 0 && po[0].kind == ETF_POST_SUM &&
                     elems(b, po[0].value) == (size_t)yd[0] * yd[1] * yd[2] * yd[3];
    bool precomp = c->algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
    bool pattern = (kn->n_post == 1 && relu_last) || (kn->n_post == 2 && sum_first && relu_last) ||
                   (kn->n_post == 0 && precomp && bias >= 0) ||
                   (kn->n_post == 1 && sum_first && precomp);
    c->fused = b->dev->fuse && pattern;
    bool need_epilogue = bias >= 0 || kn->n_post > 0;
    if (b->dev->conv_graph)
        TRY(plan_conv_graph(b, c, key, xd, wd, yd, pad, stride, dil, groups, sum_first, relu_last));
    if (b->dev->log_algos)
        fprintf(stderr, "device cuda: %s: algorithm %d, workspace %zu bytes, epilogue %s\n",
                kn->name, (int)c->algo, c->ws_bytes,
                c->fused        ? "fused"
                : need_epilogue ? "separate"
                                : "none");
    if (c->graph_fused) {
        if (bias >= 0) {
            TRY(bind_in(b, &c->gbias, bias));
        } else {
            if ((size_t)O > b->zeros)
                b->zeros = (size_t)O;
            TRY(patch_add(b, true, (void *)&c->gbias, PATCH_ZEROS, 0));
        }
        if (sum_first)
            TRY(bind_in(b, &c->gz, po[0].value));
    }
    if (c->fused) {
        CK_CUDNN(&b->err, cudnnCreateActivationDescriptor(&c->act_desc));
        CK_CUDNN(&b->err, cudnnSetActivationDescriptor(c->act_desc,
                                                       relu_last ? CUDNN_ACTIVATION_RELU
                                                                 : CUDNN_ACTIVATION_IDENTITY,
                                                       CUDNN_NOT_PROPAGATE_NAN, 0.0));
        c->alpha2 = sum_first ? 1.f : 0.f;
        if (bias >= 0) {
            TRY(bind_in(b, &c->bias, bias));
        } else {
            if ((size_t)O > b->zeros)
                b->zeros = (size_t)O;
            TRY(patch_add(b, true, (void *)&c->bias, PATCH_ZEROS, 0));
        }
    }
    if (pad_block >= 0)
        TRY(bind_block_in(b, &c->x, pad_block));
    else
        TRY(bind_in(b, &c->x, x));
    TRY(bind_in(b, &c->w, w));
    int out_block;
    TRY(bind_out(b, &c->y, &out_block));
    if (c->fused) {
        if (sum_first)
            TRY(bind_in(b, &c->z, po[0].value));
        else
            TRY(bind_block_in(b, &c->z, out_block));
    }
    if (!need_epilogue)
        return 0;
    /* The epilogue: always built, run only when the convolution is not fused (cuDNN may
     * refuse the fused call at the warm-up, see load). */
    int64_t y64[4] = {yd[0], yd[1], yd[2], yd[3]};
    struct cuda_step *es;
    STEP(b, es, STEP_POINTWISE);
    es->unfused_only = true; /* skipped when the convolution's path fused it */
    struct etfk_pointwise *p = &es->u.pw;
    TRY(pointwise_init(b, p, 4, y64, 0));
    p->a.mode = ETFK_BC_FULL;
    TRY(bind_block_in(b, &p->a.ptr, out_block));
    if (bias >= 0) {
        p->main = ETFK_PW_BINARY;
        p->alg = ETFK_BIN_ADD;
        TRY(operand_channel(b, bias, 4, y64, &p->b));
    } else {
        p->main = ETFK_PW_COPY;
    }
    return bind_block(b, &p->y, out_block);
}

/* ---- Matmul ---- */

/* The per-batch offsets of one operand: its own when it has them, else first + t * stride
 * (the pointer itself then points at `first`, so the offsets here start at 0). */
static int64_t *batch_offsets(const struct etf__view_matrix *m, int64_t batch)
{
    int64_t *off = malloc((size_t)batch * sizeof *off);
    for (int64_t t = 0; off && t < batch; t++)
        off[t] = m->offset ? m->offset[t] - m->first : t * m->batch_stride;
    return off;
}

/* A cuBLASLt layout: column-major rows x cols with leading dimension ld, batched like g. */
static int lt_layout(struct build *b, const struct gemm_step *g, uint64_t rows, uint64_t cols,
                     int64_t ld, long long batch_stride, cublasLtMatrixLayout_t *out)
{
    CK_CUBLAS(&b->err, cublasLtMatrixLayoutCreate(out, CUDA_R_32F, rows, cols, ld));
    if (g->mode == GEMM_STRIDED) {
        int32_t n = g->batch;
        int64_t stride = batch_stride;
        CK_CUBLAS(&b->err, cublasLtMatrixLayoutSetAttribute(
                               *out, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n));
        CK_CUBLAS(&b->err,
                  cublasLtMatrixLayoutSetAttribute(
                      *out, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
    }
    return 0;
}

/* Gives product g a cuBLASLt epilogue for the kernel's bias and post-ops when cuBLASLt can
 * run them in the product: a bias, then optionally a residual sum (the residual as C, beta
 * 1; y must then be plain), then optionally relu. *done: it does, no pointwise step needed.
 * Saves a pass over the output, a tenth of a transformer layer's time at batch 32. */
static int lt_epilogue(struct build *b, struct gemm_step *g, int bias, bool y_plain, bool *done)
{
    const struct etf_kernel *kn = b->kn;
    *done = false;
    const struct etf_post_op *po = kn->post;
    bool sum = kn->n_post > 0 && po[0].kind == ETF_POST_SUM;
    bool relu = kn->n_post > 0 && po[kn->n_post - 1].kind == ETF_POST_ELTWISE &&
                po[kn->n_post - 1].eltwise == ETF_ELT_RELU;
    if (bias < 0 || g->mode == GEMM_POINTERS || kn->n_post != (int)sum + (int)relu ||
        (sum && (!y_plain || elems(b, po[0].value) != (size_t)g->m * g->n * g->batch)) ||
        !b->dev->lt_epilogue)
        return 0;
    cublasComputeType_t compute = b->dev->tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    CK_CUBLAS(&b->err, cublasLtMatmulDescCreate(&g->lt, compute, CUDA_R_32F));
    cublasOperation_t op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                      op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    cublasLtEpilogue_t epi = relu ? CUBLASLT_EPILOGUE_RELU_BIAS : CUBLASLT_EPILOGUE_BIAS;
    /* Column-major y^T = b^T a^T, as for cuBLAS: Lt's A is our b, its B our a. */
    CK_CUBLAS(&b->err, cublasLtMatmulDescSetAttribute(g->lt, CUBLASLT_MATMUL_DESC_TRANSA, &op_b,
                                                      sizeof op_b));
    CK_CUBLAS(&b->err, cublasLtMatmulDescSetAttribute(g->lt, CUBLASLT_MATMUL_DESC_TRANSB, &op_a,
                                                      sizeof op_a));
    CK_CUBLAS(&b->err, cublasLtMatmulDescSetAttribute(g->lt, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                      sizeof epi));
    TRY(lt_layout(b, g, g->trans_b ? g->k : g->n, g->trans_b ? g->n : g->k, g->ldb, g->sb,
                  &g->lt_a));
    TRY(lt_layout(b, g, g->trans_a ? g->m : g->k, g->trans_a ? g->k : g->m, g->lda, g->sa,
                  &g->lt_b));
    TRY(lt_layout(b, g, g->n, g->m, g->ldy, g->sy, &g->lt_y));
    cublasLtMatmulPreference_t pref;
    CK_CUBLAS(&b->err, cublasLtMatmulPreferenceCreate(&pref));
    size_t ws = CUBLAS_WORKSPACE;
    cublasStatus_t st = cublasLtMatmulPreferenceSetAttribute(
        pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws);
    cublasLtMatmulHeuristicResult_t heur[LT_CANDIDATES];
    int found = 0;
    if (st == CUBLAS_STATUS_SUCCESS)
        st = cublasLtMatmulAlgoGetHeuristic(b->cx.lt, g->lt, g->lt_a, g->lt_b, g->lt_y, g->lt_y,
                                            pref, LT_CANDIDATES, heur, &found);
    cublasLtMatmulPreferenceDestroy(pref);
    g->n_lt_algos = 0;
    for (int i = 0; st == CUBLAS_STATUS_SUCCESS && i < found; i++)
        if (heur[i].state == CUBLAS_STATUS_SUCCESS)
            g->lt_algos[g->n_lt_algos++] = heur[i].algo;
    if (st != CUBLAS_STATUS_SUCCESS || g->n_lt_algos < 1) {
        /* No algorithm for it: the plain product and the pointwise step. */
        cublasLtMatmulDescDestroy(g->lt);
        cublasLtMatrixLayoutDestroy(g->lt_a);
        cublasLtMatrixLayoutDestroy(g->lt_b);
        cublasLtMatrixLayoutDestroy(g->lt_y);
        g->lt = NULL;
        g->lt_a = g->lt_b = g->lt_y = NULL;
        return 0;
    }
    g->lt_algo = g->lt_algos[0];
    TRY(bind_in(b, &g->lt_bias, bias));
    if (sum) {
        g->lt_beta = 1.f;
        TRY(bind_in(b, &g->lt_c, po[0].value));
    } else {
        g->lt_beta = 0.f;
    }
    *done = true;
    return 0;
}

static int build_matmul(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs < 2 || kn->n_inputs > 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 2 or 3 expected", kn->n_inputs);
    int a = kn->inputs[0], w = kn->inputs[1], bias = kn->n_inputs > 2 ? kn->inputs[2] : -1;
    int nd;
    int64_t ad[ETF_MAX_DIMS], wd[ETF_MAX_DIMS], yd[ETF_MAX_DIMS];
    char why[160];
    if (etf__plan_matmul_dims(b->plan, kn, &nd, ad, wd, yd, why, sizeof why))
        return kfail(b, ETF_EINVAL, "%s", why);
    int64_t M = yd[nd - 2], N = yd[nd - 1], K = ad[nd - 1], By = dims_prod(yd, 0, nd - 2);
    if ((size_t)dims_prod(yd, 0, nd) != elems(b, kn->output))
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the inputs'");
    if (bias >= 0 && elems(b, bias) != (size_t)N)
        return kfail(b, ETF_EINVAL, "the bias has %zu elements, %lld expected", elems(b, bias),
                     (long long)N);
    if (M * By > INT32_MAX || N > INT32_MAX || K > INT32_MAX || By > INT32_MAX)
        return kfail(b, ETF_ENOTSUP, "dimensions beyond cuBLAS's int range");
    /* Each operand as a matrix per batch; plain values are contiguous views. */
    const struct etf__view *va = &b->views.of[a], *vw = &b->views.of[w],
                           *vy = &b->views.of[kn->output];
    struct etf__view_product pr;
    bool oom;
    if (!etf__view_product(b->plan, kn, va, vw, vy, &pr, &oom)) {
        etf__view_product_free(&pr);
        return oom ? kfail(b, ETF_ENOMEM, "out of memory")
                   : kfail(b, ETF_EINVAL, "an operand's layout is beyond a BLAS product");
    }
    const struct etf__view_matrix ma = pr.a, mw = pr.w, my = pr.y;
    struct cuda_step *st = NULL;
    int rc = 0;
    if (ma.ld > INT32_MAX || mw.ld > INT32_MAX || my.ld > INT32_MAX || pr.batch > INT32_MAX)
        rc = kfail(b, ETF_ENOTSUP, "dimensions beyond cuBLAS's int range");
    else if (!(st = step_new(b, STEP_GEMM)))
        rc = kfail(b, ETF_EINVAL, "too many steps");
    if (rc) {
        etf__view_product_free(&pr);
        return rc;
    }
    int64_t Mp = pr.m, Bp = pr.batch;
    struct gemm_step *g = &st->u.gemm;
    g->n = (int)N;
    g->k = (int)K;
    g->m = (int)Mp;
    g->batch = (int)Bp;
    g->trans_a = ma.transposed;
    g->trans_b = mw.transposed;
    g->lda = (int)ma.ld;
    g->ldb = (int)mw.ld;
    g->ldy = (int)my.ld;
    g->alpha = pr.scale;
    bool pointers = ma.offset || mw.offset || my.offset;
    if (etf__view_product_is_one(&pr)) {
        /* shared weights and evenly stacked rows: the batch is more rows of one product */
        g->mode = GEMM_ONE;
        g->m = (int)(Mp * Bp);
        g->batch = 1;
    } else if (!pointers) {
        g->mode = GEMM_STRIDED;
        g->sa = ma.batch_stride;
        g->sb = mw.batch_stride;
        g->sy = my.batch_stride;
    } else {
        g->mode = GEMM_POINTERS;
        g->a_off = batch_offsets(&ma, Bp);
        g->b_off = batch_offsets(&mw, Bp);
        g->y_off = batch_offsets(&my, Bp);
    }
    int64_t a_first = ma.first, w_first = mw.first, y_first = my.first;
    etf__view_product_free(&pr);
    if (g->mode == GEMM_POINTERS && (!g->a_off || !g->b_off || !g->y_off))
        return kfail(b, ETF_ENOMEM, "out of memory");
    TRY(bind_storage(b, &g->a, va->base, a_first));
    TRY(bind_storage(b, &g->b, vw->base, w_first));
    int out_block;
    TRY(out_block_new(b, &out_block));
    TRY(patch_at(b, false, &g->y, PATCH_BLOCK, out_block, y_first));
    if (bias < 0 && kn->n_post == 0)
        return 0;
    bool in_product;
    TRY(lt_epilogue(b, g, bias, vy->base == kn->output && y_first == 0 && g->ldy == g->n,
                    &in_product));
    if (in_product) {
        if (g->lt_beta == 0.f)
            TRY(patch_at(b, true, (void *)&g->lt_c, PATCH_BLOCK, out_block, y_first));
        return 0;
    }
    struct cuda_step *es;
    STEP(b, es, STEP_POINTWISE);
    struct etfk_pointwise *p = &es->u.pw;
    TRY(pointwise_init(b, p, nd, yd, 0));
    p->a.mode = ETFK_BC_FULL;
    TRY(bind_block_in(b, &p->a.ptr, out_block));
    if (bias >= 0) {
        p->main = ETFK_PW_BINARY;
        p->alg = ETFK_BIN_ADD;
        p->b.mode = N == p->n ? ETFK_BC_FULL : ETFK_BC_BLOCK;
        p->b.inner = 1;
        p->b.count = N;
        TRY(bind_in(b, &p->b.ptr, bias));
    } else {
        p->main = ETFK_PW_COPY;
    }
    return bind_block(b, &p->y, out_block);
}

/* ---- Pooling ---- */

static int build_pool(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0];
    const struct etf_shape *xs = &val(b, x)->shape, *ys = &val(b, kn->output)->shape;
    if (xs->ndim != 4 || ys->ndim != 4)
        return kfail(b, ETF_ENOTSUP, "only 2-D pooling (4-D tensors) is supported");
    if (xs->d[0] != ys->d[0] || xs->d[1] != ys->d[1])
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the input's");
    const int64_t *kk = kn->attr.pool.kernel, *ss = kn->attr.pool.stride;
    const int64_t *pb = kn->attr.pool.pad_begin, *pe = kn->attr.pool.pad_end;
    for (int i = 0; i < 2; i++)
        if (kk[i] < 1 || ss[i] < 1 || pb[i] < 0 || pe[i] < 0 || kk[i] > INT32_MAX ||
            ss[i] > INT32_MAX || pb[i] > INT32_MAX || xs->d[i + 2] > INT32_MAX)
            return kfail(b, ETF_EINVAL, "window, stride or padding out of range");
    for (int i = 0; i < 2; i++) {
        int64_t want = (xs->d[i + 2] + pb[i] + pe[i] - kk[i]) / ss[i] + 1;
        if (ys->d[i + 2] != want)
            return kfail(b, ETF_EINVAL, "the output's extent %lld along axis %d is not %lld",
                         (long long)ys->d[i + 2], i + 2, (long long)want);
    }
    enum etf_pool_alg alg = kn->attr.pool.alg;
    int out_block;
    struct cuda_step *st;
    bool global = alg != ETF_POOL_MAX && kk[0] == xs->d[2] && kk[1] == xs->d[3] && pb[0] == 0 &&
                  pb[1] == 0 && pe[0] == 0 && pe[1] == 0;
    if (global) { /* global average pooling: a mean per (n, c) row */
        STEP(b, st, STEP_ROW_MEAN);
        st->u.rows.outer = xs->d[0] * xs->d[1];
        st->u.rows.dim = xs->d[2] * xs->d[3];
        TRY(bind_in(b, &st->u.rows.x, x));
        TRY(bind_out(b, &st->u.rows.y, &out_block));
        return post_pass(b, out_block);
    }
    bool symmetric = pb[0] == pe[0] && pb[1] == pe[1];
    if (symmetric) {
        /* cuDNN when its descriptors express the window; a refusal falls through to the
         * custom kernel. */
        STEP(b, st, STEP_POOL_CUDNN);
        struct cudnn_pool_step *c = &st->u.cpool;
        cudnnPoolingMode_t mode = alg == ETF_POOL_MAX ? CUDNN_POOLING_MAX
                                  : alg == ETF_POOL_AVG_INCLUDE_PAD
                                      ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                      : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING;
        CK_CUDNN(&b->err, cudnnCreatePoolingDescriptor(&c->desc));
        CK_CUDNN(&b->err, cudnnCreateTensorDescriptor(&c->x_desc));
        CK_CUDNN(&b->err, cudnnCreateTensorDescriptor(&c->y_desc));
        int n = 0, ch = 0, oh = 0, ow = 0;
        bool ok = cudnnSetPooling2dDescriptor(c->desc, mode, CUDNN_NOT_PROPAGATE_NAN, (int)kk[0],
                                              (int)kk[1], (int)pb[0], (int)pb[1], (int)ss[0],
                                              (int)ss[1]) == CUDNN_STATUS_SUCCESS &&
                  cudnnSetTensor4dDescriptor(c->x_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                             (int)xs->d[0], (int)xs->d[1], (int)xs->d[2],
                                             (int)xs->d[3]) == CUDNN_STATUS_SUCCESS &&
                  cudnnSetTensor4dDescriptor(c->y_desc, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT,
                                             (int)ys->d[0], (int)ys->d[1], (int)ys->d[2],
                                             (int)ys->d[3]) == CUDNN_STATUS_SUCCESS &&
                  cudnnGetPooling2dForwardOutputDim(c->desc, c->x_desc, &n, &ch, &oh, &ow) ==
                      CUDNN_STATUS_SUCCESS &&
                  oh == ys->d[2] && ow == ys->d[3];
        if (ok) {
            TRY(bind_in(b, &c->x, x));
            TRY(bind_out(b, &c->y, &out_block));
            return post_pass(b, out_block);
        }
        cudnnDestroyPoolingDescriptor(c->desc);
        cudnnDestroyTensorDescriptor(c->x_desc);
        cudnnDestroyTensorDescriptor(c->y_desc);
        b->ck->n_steps--;
    }
    STEP(b, st, STEP_POOL);
    struct etfk_pool *p = &st->u.pool;
    p->alg = alg == ETF_POOL_MAX               ? ETFK_POOL_MAX
             : alg == ETF_POOL_AVG_INCLUDE_PAD ? ETFK_POOL_AVG_INCLUDE_PAD
                                               : ETFK_POOL_AVG_EXCLUDE_PAD;
    p->NC = xs->d[0] * xs->d[1];
    p->H = (int)xs->d[2];
    p->W = (int)xs->d[3];
    p->OH = (int)ys->d[2];
    p->OW = (int)ys->d[3];
    p->kh = (int)kk[0];
    p->kw = (int)kk[1];
    p->sh = (int)ss[0];
    p->sw = (int)ss[1];
    p->ph = (int)pb[0];
    p->pw = (int)pb[1];
    TRY(bind_in(b, &p->x, x));
    TRY(bind_out(b, &p->y, &out_block));
    return post_pass(b, out_block);
}

/* ---- Pointwise kernels ---- */

static int check_same_shape(struct build *b, int x, int nd, const int64_t *yd)
{
    const struct etf_shape *s = &val(b, x)->shape;
    bool ok = s->ndim == nd;
    for (int i = 0; ok && i < nd; i++)
        ok = s->d[i] == yd[i];
    if (!ok)
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the input's");
    return 0;
}

/* y = x * scale + shift per channel (axis 1), then the post-ops, in one pointwise kernel. */
static int build_batchnorm(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 3 expected", kn->n_inputs);
    int nd;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    if (nd < 2)
        return kfail(b, ETF_EINVAL, "batchnorm of a tensor without channels");
    TRY(check_same_shape(b, kn->inputs[0], nd, yd));
    struct cuda_step *st;
    STEP(b, st, STEP_POINTWISE);
    struct etfk_pointwise *p = &st->u.pw;
    TRY(pointwise_init(b, p, nd, yd, 0));
    p->main = ETFK_PW_AFFINE;
    TRY(operand_full(b, kn->inputs[0], (size_t)p->n, &p->a));
    TRY(operand_channel(b, kn->inputs[1], nd, yd, &p->b));
    TRY(operand_channel(b, kn->inputs[2], nd, yd, &p->c));
    return bind_out(b, &p->y, NULL);
}

static int build_eltwise(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int nd;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    struct cuda_step *st;
    STEP(b, st, STEP_POINTWISE);
    struct etfk_pointwise *p = &st->u.pw;
    TRY(pointwise_init(b, p, nd, yd, 0));
    p->main = ETFK_PW_ELTWISE;
    p->alg = (int)kn->attr.eltwise.alg;
    p->alpha = kn->attr.eltwise.alpha;
    p->beta = kn->attr.eltwise.beta;
    if ((unsigned)p->alg > ETFK_ELT_LINEAR)
        return kfail(b, ETF_ENOTSUP, "unknown eltwise function %d", p->alg);
    TRY(operand_full(b, kn->inputs[0], (size_t)p->n, &p->a));
    return bind_out(b, &p->y, NULL);
}

static int build_binary(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 2)
        return kfail(b, ETF_EINVAL, "%d inputs, 2 expected", kn->n_inputs);
    int nd;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    struct cuda_step *st;
    STEP(b, st, STEP_POINTWISE);
    struct etfk_pointwise *p = &st->u.pw;
    TRY(pointwise_init(b, p, nd, yd, 0));
    p->main = ETFK_PW_BINARY;
    p->alg = (int)kn->attr.binary.alg;
    if ((unsigned)p->alg > ETFK_BIN_DIV)
        return kfail(b, ETF_ENOTSUP, "unknown binary operation %d", p->alg);
    TRY(operand(b, kn->inputs[0], nd, yd, false, &p->a));
    TRY(operand(b, kn->inputs[1], nd, yd, false, &p->b));
    return bind_out(b, &p->y, NULL);
}

/* ---- Normalisation, softmax, reductions ---- */

static int build_layernorm(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 3)
        return kfail(b, ETF_EINVAL, "%d inputs, 3 expected", kn->n_inputs);
    int nd;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    if (nd < 1)
        return kfail(b, ETF_EINVAL, "layer norm of a scalar");
    TRY(check_same_shape(b, kn->inputs[0], nd, yd));
    int64_t D = yd[nd - 1];
    if (elems(b, kn->inputs[1]) != (size_t)D || elems(b, kn->inputs[2]) != (size_t)D)
        return kfail(b, ETF_EINVAL, "gamma and beta must have %lld elements", (long long)D);
    struct cuda_step *st;
    STEP(b, st, STEP_LAYERNORM);
    struct rows_step *r = &st->u.rows;
    r->outer = dims_prod(yd, 0, nd - 1);
    r->dim = D;
    r->eps = kn->attr.norm.epsilon;
    TRY(bind_in(b, &r->x, kn->inputs[0]));
    TRY(bind_in(b, &r->gamma, kn->inputs[1]));
    TRY(bind_in(b, &r->beta, kn->inputs[2]));
    int out_block;
    TRY(bind_out(b, &r->y, &out_block));
    return post_pass(b, out_block);
}

static int build_softmax(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int nd, axis = kn->attr.axis.axis;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    TRY(check_same_shape(b, kn->inputs[0], nd, yd));
    if (axis < 0 || axis >= nd)
        return kfail(b, ETF_EINVAL, "axis %d of a %d-D tensor", axis, nd);
    struct cuda_step *st;
    STEP(b, st, STEP_SOFTMAX);
    struct rows_step *r = &st->u.rows;
    r->outer = dims_prod(yd, 0, axis);
    r->dim = yd[axis];
    r->inner = dims_prod(yd, axis + 1, nd);
    TRY(bind_in(b, &r->x, kn->inputs[0]));
    int out_block;
    TRY(bind_out(b, &r->y, &out_block));
    return post_pass(b, out_block);
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
    int64_t xd[ETF_MAX_DIMS], rd[ETF_MAX_DIMS], red[ETF_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        xd[i] = xs->d[i];
        bool r = (mask >> i) & 1u;
        rd[i] = r ? 1 : xd[i];
        red[i] = r ? xd[i] : 1;
    }
    int64_t n_out = dims_prod(rd, 0, nd), count = dims_prod(red, 0, nd);
    if ((size_t)n_out != elems(b, kn->output))
        return kfail(b, ETF_EINVAL, "the output's shape does not follow from the input's");
    struct cuda_step *st;
    int out_block;
    if (count == 1) { /* nothing to reduce: a copy */
        STEP(b, st, STEP_COPY);
        st->u.copy.bytes = (size_t)n_out * sizeof(float);
        TRY(bind_in(b, &st->u.copy.x, x));
        TRY(bind_out(b, &st->u.copy.y, &out_block));
        return post_pass(b, out_block);
    }
    /* Reduced axes that trail the kept ones (ignoring axes of one) make x a matrix of
     * [n_out, count]: a mean per row, one warp each. */
    bool trailing = true, seen_reduced = false;
    for (int i = 0; i < nd; i++) {
        if (xd[i] == 1)
            continue;
        if ((mask >> i) & 1u)
            seen_reduced = true;
        else if (seen_reduced)
            trailing = false;
    }
    if (trailing) {
        STEP(b, st, STEP_ROW_MEAN);
        st->u.rows.outer = n_out;
        st->u.rows.dim = count;
        TRY(bind_in(b, &st->u.rows.x, x));
        TRY(bind_out(b, &st->u.rows.y, &out_block));
        return post_pass(b, out_block);
    }
    STEP(b, st, STEP_REDUCE);
    struct etfk_reduce *p = &st->u.reduce;
    p->ndim = nd;
    p->n_out = n_out;
    p->count = count;
    int64_t stride = 1;
    for (int i = nd - 1; i >= 0; i--) {
        p->out_dims[i] = rd[i];
        p->red_dims[i] = red[i];
        p->x_strides[i] = stride;
        stride *= xd[i];
    }
    TRY(bind_in(b, &p->x, x));
    TRY(bind_out(b, &p->y, &out_block));
    return post_pass(b, out_block);
}

/* ---- Data movement ---- */

static int build_concat(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    const int *ins;
    int n;
    etf__kernel_inputs(kn, &ins, &n);
    int nd, axis = kn->attr.axis.axis;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    if (n < 1 || n > 65535 || axis < 0 || axis >= nd)
        return kfail(b, ETF_EINVAL, "%d inputs over axis %d of %d", n, axis, nd);
    struct cuda_step *st;
    STEP(b, st, STEP_CONCAT);
    struct concat_step *c = &st->u.concat;
    c->srcs = calloc((size_t)n, sizeof *c->srcs);
    if (!c->srcs)
        return kfail(b, ETF_ENOMEM, "out of memory");
    c->n = n;
    int64_t inner = dims_prod(yd, axis + 1, nd), along = 0;
    c->outer = dims_prod(yd, 0, axis);
    c->out_len = yd[axis] * inner;
    for (int i = 0; i < n; i++) {
        const struct etf_shape *s = &val(b, ins[i])->shape;
        bool ok = s->ndim == nd;
        for (int j = 0; ok && j < nd; j++)
            ok = j == axis || s->d[j] == yd[j];
        if (!ok)
            return kfail(b, ETF_EINVAL, "input %d does not match the output's shape", i);
        c->srcs[i].len = s->d[axis] * inner;
        c->srcs[i].at = along * inner;
        if (c->srcs[i].len > c->max_len)
            c->max_len = c->srcs[i].len;
        along += s->d[axis];
        TRY(bind_in(b, &c->srcs[i].x, ins[i]));
    }
    if (along != yd[axis])
        return kfail(b, ETF_EINVAL, "the inputs add up to %lld along axis %d, not %lld",
                     (long long)along, axis, (long long)yd[axis]);
    int out_block;
    TRY(bind_out(b, &c->y, &out_block));
    return post_pass(b, out_block);
}

static int build_transpose(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs != 1)
        return kfail(b, ETF_EINVAL, "%d inputs, 1 expected", kn->n_inputs);
    int x = kn->inputs[0], nd;
    const struct etf_shape *xs = &val(b, x)->shape;
    int64_t yd[ETF_MAX_DIMS], xstr[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    if (xs->ndim != nd || nd < 1)
        return kfail(b, ETF_EINVAL, "a %d-D input for a %d-D output", xs->ndim, nd);
    unsigned seen = 0;
    for (int i = 0; i < nd; i++) {
        int p = kn->attr.transpose.perm[i];
        if (p < 0 || p >= nd || (seen & (1u << p)) || yd[i] != xs->d[p])
            return kfail(b, ETF_EINVAL, "perm is not a permutation matching the shapes");
        seen |= 1u << p;
    }
    int64_t stride = 1;
    for (int i = nd - 1; i >= 0; i--) {
        xstr[i] = stride;
        stride *= xs->d[i];
    }
    struct cuda_step *st;
    STEP(b, st, STEP_TRANSPOSE);
    struct etfk_transpose *p = &st->u.transpose;
    p->n = dims_prod(yd, 0, nd);
    /* Fewer dimensions, fewer divisions per element: dimensions of size 1 go, and an
     * output dimension merges into the one before it when the input walks them as one. */
    p->ndim = 0;
    for (int i = 0; i < nd; i++) {
        int64_t str = xstr[kn->attr.transpose.perm[i]];
        if (yd[i] == 1)
            continue;
        int j = p->ndim - 1;
        if (j >= 0 && p->x_strides[j] == str * yd[i]) {
            p->y_dims[j] *= yd[i];
            p->x_strides[j] = str;
        } else {
            p->y_dims[p->ndim] = yd[i];
            p->x_strides[p->ndim++] = str;
        }
    }
    if (p->ndim == 0) { /* one element */
        p->ndim = 1;
        p->y_dims[0] = 1;
        p->x_strides[0] = 1;
    }
    TRY(bind_in(b, &p->x, x));
    int out_block;
    TRY(bind_out(b, &p->y, &out_block));
    return post_pass(b, out_block);
}

static int build_pad(struct build *b)
{
    const struct etf_kernel *kn = b->kn;
    if (kn->n_inputs < 1)
        return kfail(b, ETF_EINVAL, "no input");
    int x = kn->inputs[0], nd;
    const struct etf_shape *xs = &val(b, x)->shape;
    int64_t yd[ETF_MAX_DIMS];
    out_shape(b, &nd, yd);
    if (xs->ndim != nd || nd < 1)
        return kfail(b, ETF_EINVAL, "a %d-D input for a %d-D output", xs->ndim, nd);
    struct cuda_step *st;
    STEP(b, st, STEP_PAD);
    struct etfk_pad *p = &st->u.pad;
    p->ndim = nd;
    p->n = dims_prod(yd, 0, nd);
    p->value = kn->attr.pad.value;
    for (int i = 0; i < nd; i++) {
        if (xs->d[i] + kn->attr.pad.begin[i] + kn->attr.pad.end[i] != yd[i])
            return kfail(b, ETF_EINVAL, "pads of axis %d do not give the output's shape", i);
        p->y_dims[i] = yd[i];
        p->x_dims[i] = xs->d[i];
        p->begin[i] = kn->attr.pad.begin[i];
    }
    TRY(bind_in(b, &p->x, x));
    int out_block;
    TRY(bind_out(b, &p->y, &out_block));
    return post_pass(b, out_block);
}

/* ---- Running steps ---- */

/* Fails a step at run time: the message lands in the context's buffer. */
__attribute__((format(printf, 2, 3))) static int xfail(const struct exec_ctx *cx, const char *fmt,
                                                       ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cx->err->msg, sizeof cx->err->msg, fmt, ap);
    va_end(ap);
    return ETF_EDEVICE;
}

static int run_gemm(const struct exec_ctx *cx, const struct gemm_step *g)
{
    static const float zero = 0.f;
    /* Row-major y = a b is column-major y^T = b^T a^T: b comes first. A row-major operand
     * with rows ld apart is its column-major transpose with leading dimension ld, so it
     * goes in as is (N); one with adjacent rows, columns ld apart, is the column-major
     * matrix itself and goes in transposed (T). */
    cublasOperation_t op_a = g->trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
                      op_b = g->trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
    if (g->lt) {
        CK_CUBLAS(cx->err, cublasLtMatmul(cx->lt, g->lt, &g->alpha, g->b, g->lt_a, g->a, g->lt_b,
                                          &g->lt_beta, g->lt_c, g->lt_y, g->y, g->lt_y, &g->lt_algo,
                                          cx->cublas_ws, CUBLAS_WORKSPACE, cx->stream));
        return 0;
    }
    switch (g->mode) {
    case GEMM_ONE:
        CK_CUBLAS(cx->err, cublasSgemm(cx->cublas, op_b, op_a, g->n, g->m, g->k, &g->alpha, g->b,
                                       g->ldb, g->a, g->lda, &zero, g->y, g->ldy));
        break;
    case GEMM_STRIDED:
        CK_CUBLAS(cx->err, cublasSgemmStridedBatched(cx->cublas, op_b, op_a, g->n, g->m, g->k,
                                                     &g->alpha, g->b, g->ldb, g->sb, g->a, g->lda,
                                                     g->sa, &zero, g->y, g->ldy, g->sy, g->batch));
        break;
    case GEMM_POINTERS: {
        const float *const *pa = (const float *const *)g->ptrs;
        const float *const *pb = pa + g->batch;
        float *const *py = (float *const *)(pa + 2 * g->batch);
        CK_CUBLAS(cx->err, cublasSgemmBatched(cx->cublas, op_b, op_a, g->n, g->m, g->k, &g->alpha,
                                              pb, g->ldb, pa, g->lda, &zero, py, g->ldy, g->batch));
        break;
    }
    }
    return 0;
}

static int run_step(const struct exec_ctx *cx, const struct etf_dmodel *dm,
                    const struct cuda_step *st, bool *conv_fused)
{
    static const float one = 1.f, zero = 0.f;
    cudaStream_t s = cx->stream;
    switch (st->kind) {
    case STEP_CONV: {
        const struct conv_step *c = &st->u.conv;
        if (c->use_graph) {
            *conv_fused = c->graph_fused;
            return etf__conv_graph_run(cx->cudnn, c->graph, c->x, c->w,
                                       c->graph_fused ? c->gbias : NULL, c->gz, c->y, dm->workspace,
                                       cx->err->msg, sizeof cx->err->msg);
        }
        *conv_fused = c->fused;
        if (c->fused)
            CK_CUDNN(cx->err, cudnnConvolutionBiasActivationForward(
                                  cx->cudnn, &one, c->x_desc, c->x, c->w_desc, c->w, c->conv_desc,
                                  c->algo, dm->workspace, c->ws_bytes, &c->alpha2, c->y_desc, c->z,
                                  c->b_desc, c->bias, c->act_desc, c->y_desc, c->y));
        else
            CK_CUDNN(cx->err, cudnnConvolutionForward(cx->cudnn, &one, c->x_desc, c->x, c->w_desc,
                                                      c->w, c->conv_desc, c->algo, dm->workspace,
                                                      c->ws_bytes, &zero, c->y_desc, c->y));
        return 0;
    }
    case STEP_GEMM:
        return run_gemm(cx, &st->u.gemm);
    case STEP_POINTWISE:
        if (st->unfused_only && *conv_fused)
            return 0;
        CK_CUDA(cx->err, etfk_launch_pointwise(&st->u.pw, s));
        return 0;
    case STEP_POOL_CUDNN: {
        const struct cudnn_pool_step *c = &st->u.cpool;
        CK_CUDNN(cx->err, cudnnPoolingForward(cx->cudnn, c->desc, &one, c->x_desc, c->x, &zero,
                                              c->y_desc, c->y));
        return 0;
    }
    case STEP_POOL:
        CK_CUDA(cx->err, etfk_launch_pool(&st->u.pool, s));
        return 0;
    case STEP_ROW_MEAN:
        CK_CUDA(cx->err, etfk_launch_row_mean(st->u.rows.x, st->u.rows.y, st->u.rows.outer,
                                              st->u.rows.dim, s));
        return 0;
    case STEP_REDUCE:
        CK_CUDA(cx->err, etfk_launch_reduce_mean(&st->u.reduce, s));
        return 0;
    case STEP_SOFTMAX:
        CK_CUDA(cx->err, etfk_launch_softmax(st->u.rows.x, st->u.rows.y, st->u.rows.outer,
                                             st->u.rows.dim, st->u.rows.inner, s));
        return 0;
    case STEP_LAYERNORM: {
        const struct rows_step *r = &st->u.rows;
        CK_CUDA(cx->err,
                etfk_launch_layernorm(r->x, r->gamma, r->beta, r->y, r->outer, r->dim, r->eps, s));
        return 0;
    }
    case STEP_CONCAT: {
        const struct concat_step *c = &st->u.concat;
        CK_CUDA(cx->err, etfk_launch_concat(c->dev, c->n, c->max_len, c->y, c->outer, c->out_len,
                                            c->vec4, s));
        return 0;
    }
    case STEP_TRANSPOSE:
        CK_CUDA(cx->err, etfk_launch_transpose(&st->u.transpose, s));
        return 0;
    case STEP_PAD:
        CK_CUDA(cx->err, etfk_launch_pad(&st->u.pad, s));
        return 0;
    case STEP_COPY:
        CK_CUDA(cx->err, cudaMemcpyAsync(st->u.copy.y, st->u.copy.x, st->u.copy.bytes,
                                         cudaMemcpyDeviceToDevice, s));
        return 0;
    }
    return xfail(cx, "unknown step %d", (int)st->kind);
}

/* Enqueues every step of kernel k on cx's stream; waits for nothing. */
static int exec_kernel(const struct exec_ctx *cx, const struct etf_dmodel *dm, size_t k)
{
    const struct cuda_kernel *ck = &dm->kernels[k];
    bool conv_fused = false;
    for (int i = 0; i < ck->n_steps; i++)
        TRY(run_step(cx, dm, &ck->steps[i], &conv_fused));
    return 0;
}

/* ---- Load ---- */

/* The last kernel that reads each storage (n_kernels for model outputs). */
static void analyse(struct build *b)
{
    const struct etf_plan *p = b->plan;
    for (size_t v = 0; v < p->n_values; v++)
        b->vals[v] = (struct cuda_val){.block = -1, .last = 0, .const_off = SIZE_MAX};
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        if (b->views.skip[k]) /* its readers read its input, through the view */
            continue;
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n + kn->n_post + 1; i++) {
            int v = i < n ? ins[i] : i < n + kn->n_post ? kn->post[i - n].value : kn->output;
            if (i >= n && i < n + kn->n_post && kn->post[i - n].kind == ETF_POST_ELTWISE)
                continue;
            struct cuda_val *cv = &b->vals[b->views.of[v].base];
            if (k > cv->last)
                cv->last = k;
        }
    }
    for (size_t i = 0; i < p->n_outputs; i++)
        b->vals[b->views.of[p->outputs[i]].base].last = p->n_kernels;
}

static int build_kernel(struct build *b)
{
    if (b->views.skip[b->k])
        return 0; /* its output is a view of its input: nothing to run */
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

/* Fails a load with a library call's failure recorded in b->err. */
static int lib_fail(struct build *b, int rc)
{
    return kfail(b, rc, "%s", b->err.msg);
}

/* Allocates the buffers, uploads the weights, fills in every pointer and creates the events
 * and staging buffers. Uploads go through the load's stream, ordered before the warm-up. */
static int finalize(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    const struct etf_plan *p = b->plan;
    struct errbuf *e = &b->err;
    cudaStream_t s = b->cx.stream;
    size_t total;
    if (etf__arena_place(b->blocks, b->n_blocks, &total))
        return kfail(b, ETF_ENOMEM, "out of memory");
    dm->arena_bytes = total;
    size_t zeros_off = b->const_bytes;
    dm->weights_bytes = zeros_off + b->zeros * sizeof(float);
    CK_CUDA(e, cudaMalloc(&dm->arena, total ? total : CUDA_ALIGN));
    CK_CUDA(e, cudaMemsetAsync(dm->arena, 0, total ? total : CUDA_ALIGN, s));
    CK_CUDA(e, cudaMalloc(&dm->weights, dm->weights_bytes ? dm->weights_bytes : CUDA_ALIGN));
    if (b->zeros)
        CK_CUDA(e,
                cudaMemsetAsync((char *)dm->weights + zeros_off, 0, b->zeros * sizeof(float), s));
    for (size_t v = 0; v < p->n_values; v++)
        if (b->vals[v].const_off != SIZE_MAX)
            CK_CUDA(e,
                    cudaMemcpyAsync((char *)dm->weights + b->vals[v].const_off, p->values[v].data,
                                    etf__shape_elems(&p->values[v].shape) * sizeof(float),
                                    cudaMemcpyHostToDevice, s));
    if (dm->ws_bytes)
        CK_CUDA(e, cudaMalloc(&dm->workspace, dm->ws_bytes));

    for (size_t i = 0; i < b->n_patches; i++) {
        const struct patch *pt = &b->patches[i];
        char *ptr =
            (pt->target == PATCH_BLOCK   ? (char *)dm->arena + b->blocks[pt->index].offset
             : pt->target == PATCH_CONST ? (char *)dm->weights + b->vals[pt->index].const_off
                                         : (char *)dm->weights + zeros_off) +
            pt->byte_off;
        if (pt->is_const)
            *(const float **)pt->slot = (const float *)ptr;
        else
            *(float **)pt->slot = (float *)ptr;
    }

    /* What steps read from device memory besides tensors: concat descriptors, the pointer
     * arrays of batched products. */
    for (size_t k = 0; k < dm->n_kernels; k++) {
        struct cuda_kernel *ck = &dm->kernels[k];
        b->kn = &p->kernels[k];
        for (int i = 0; i < ck->n_steps; i++) {
            struct cuda_step *st = &ck->steps[i];
            if (st->kind == STEP_CONCAT) {
                struct concat_step *c = &st->u.concat;
                size_t bytes = (size_t)c->n * sizeof *c->srcs;
                c->vec4 = c->out_len % 4 == 0 && (uintptr_t)c->y % 16 == 0;
                for (int j = 0; j < c->n; j++)
                    c->vec4 = c->vec4 && c->srcs[j].len % 4 == 0 && c->srcs[j].at % 4 == 0 &&
                              (uintptr_t)c->srcs[j].x % 16 == 0;
                CK_CUDA(e, cudaMalloc((void **)&c->dev, bytes));
                CK_CUDA(e, cudaMemcpyAsync(c->dev, c->srcs, bytes, cudaMemcpyHostToDevice, s));
            } else if (st->kind == STEP_GEMM && st->u.gemm.lt) {
                /* The bias pointer is known once the buffers are placed. */
                struct gemm_step *g = &st->u.gemm;
                CK_CUBLAS(e,
                          cublasLtMatmulDescSetAttribute(g->lt, CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                                                         &g->lt_bias, sizeof g->lt_bias));
            } else if (st->kind == STEP_GEMM && st->u.gemm.mode == GEMM_POINTERS) {
                struct gemm_step *g = &st->u.gemm;
                size_t n = (size_t)g->batch;
                const float **host = malloc(3 * n * sizeof *host);
                if (!host)
                    return kfail(b, ETF_ENOMEM, "out of memory");
                for (size_t t = 0; t < n; t++) {
                    host[t] = g->a + g->a_off[t];
                    host[n + t] = g->b + g->b_off[t];
                    host[2 * n + t] = g->y + g->y_off[t];
                }
                cudaError_t st1 = cudaMalloc(&g->ptrs, 3 * n * sizeof *host);
                /* A synchronous copy: the host array is freed right after. */
                cudaError_t st2 =
                    st1 == cudaSuccess
                        ? cudaMemcpy(g->ptrs, host, 3 * n * sizeof *host, cudaMemcpyHostToDevice)
                        : st1;
                free(host);
                if (st2 != cudaSuccess)
                    return fail_cuda(e, "cudaMemcpy(pointer arrays)", st2);
            }
        }
    }
    b->kn = NULL;

    dm->in = calloc(p->n_inputs ? p->n_inputs : 1, sizeof *dm->in);
    dm->out = calloc(p->n_outputs ? p->n_outputs : 1, sizeof *dm->out);
    if (!dm->in || !dm->out)
        return kfail(b, ETF_ENOMEM, "out of memory");
    for (size_t i = 0; i < p->n_inputs; i++) {
        int v = p->inputs[i];
        dm->in[i].bytes = etf__shape_elems(&p->values[v].shape) * sizeof(float);
        dm->in[i].dev = (float *)((char *)dm->arena + b->blocks[b->vals[v].block].offset);
        for (int slot = 0; slot < STAGING_SLOTS; slot++)
            CK_CUDA(e, cudaMallocHost((void **)&dm->in[i].host[slot], dm->in[i].bytes));
    }
    for (size_t i = 0; i < p->n_outputs; i++) {
        int v = p->outputs[i], sv = etf__plan_storage(p, v);
        dm->out[i].bytes = etf__shape_elems(&p->values[v].shape) * sizeof(float);
        if (p->values[sv].kind == ETF_VALUE_CONSTANT) {
            dm->out[i].constant = p->values[sv].data;
            continue;
        }
        if (b->vals[sv].block < 0)
            return kfail(b, ETF_EINVAL, "model output %zu is never written", i);
        dm->out[i].dev = (float *)((char *)dm->arena + b->blocks[b->vals[sv].block].offset);
        for (int slot = 0; slot < STAGING_SLOTS; slot++)
            CK_CUDA(e, cudaMallocHost((void **)&dm->out[i].host[slot], dm->out[i].bytes));
    }
    return 0;
}

/* Runs the whole plan once on the load's stream (see the top comment). A fused convolution
 * that cuDNN refuses is rebuilt as a plain one with its epilogue. */
static int warm_up(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    for (size_t k = 0; k < dm->n_kernels; k++) {
        b->kn = &b->plan->kernels[k];
        int rc = exec_kernel(&b->cx, dm, k);
        if (rc) {
            struct cuda_kernel *ck = &dm->kernels[k];
            bool retried = false;
            for (int i = 0; i < ck->n_steps; i++)
                if (ck->steps[i].kind == STEP_CONV && ck->steps[i].u.conv.fused) {
                    ck->steps[i].u.conv.fused = false;
                    retried = true;
                }
            if (retried)
                rc = exec_kernel(&b->cx, dm, k);
        }
        if (rc)
            return lib_fail(b, rc);
    }
    b->kn = NULL;
    cudaError_t st = cudaStreamSynchronize(b->cx.stream);
    if (st != cudaSuccess)
        return kfail(b, cuda_code(st), "the warm-up run failed: %s", cudaGetErrorString(st));
    return 0;
}

/* Kernel k's GPU time in ms, its steps captured into a CUDA graph and replayed (so that
 * host launch costs stay out, as they do once the kernel's own graph runs); a negative
 * value when it cannot be captured or fails. */
static float time_kernel(struct build *b, size_t k)
{
    enum { RUNS = 3 };
    cudaStream_t s = b->cx.stream;
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    float ms = -1.f;
    if (cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
        return ms;
    int rc = exec_kernel(&b->cx, b->dm, k);
    cudaError_t st = cudaStreamEndCapture(s, &graph);
    if (rc == 0 && st == cudaSuccess && graph &&
        cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess &&
        cudaEventCreate(&start) == cudaSuccess && cudaEventCreate(&stop) == cudaSuccess &&
        cudaGraphLaunch(exec, s) == cudaSuccess && cudaEventRecord(start, s) == cudaSuccess) {
        bool ok = true;
        for (int i = 0; i < RUNS && ok; i++)
            ok = cudaGraphLaunch(exec, s) == cudaSuccess;
        if (ok && cudaEventRecord(stop, s) == cudaSuccess &&
            cudaEventSynchronize(stop) == cudaSuccess &&
            cudaEventElapsedTime(&ms, start, stop) == cudaSuccess)
            ms /= RUNS;
        else
            ms = -1.f;
    }
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    cudaStreamSynchronize(s);
    cudaGetLastError(); /* a failed capture or launch leaves its error behind */
    b->err.msg[0] = '\0';
    return ms;
}

/* Each convolution that has a graph-API plan runs the way that was faster here: its whole
 * kernel (padding, convolution, epilogue) timed both ways on the model's own buffers. Neither
 * path wins everywhere (the graph engines are faster on most fp32 shapes of the H100, the
 * legacy Winograd on some 3x3 ones, the legacy kernels on some depthwise ones). Products
 * with a cuBLASLt epilogue likewise run the fastest of the heuristic's candidates. */
static void choose_paths(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    for (size_t k = 0; k < dm->n_kernels; k++) {
        struct cuda_kernel *ck = &dm->kernels[k];
        for (int i = 0; i < ck->n_steps; i++) {
            struct gemm_step *g = &ck->steps[i].u.gemm;
            if (ck->steps[i].kind != STEP_GEMM || g->n_lt_algos < 2)
                continue;
            /* cuBLASLt's heuristic ranks by a model of the GPU; the candidates are timed. */
            float best = -1.f;
            int pick = 0;
            for (int a = 0; a < g->n_lt_algos; a++) {
                g->lt_algo = g->lt_algos[a];
                float ms = time_kernel(b, k);
                if (ms > 0.f && (best < 0.f || ms < best)) {
                    best = ms;
                    pick = a;
                }
            }
            g->lt_algo = g->lt_algos[pick];
            if (b->dev->log_algos)
                fprintf(stderr, "device cuda: %s: cuBLASLt candidate %d of %d, %.4f ms\n",
                        b->plan->kernels[k].name, pick, g->n_lt_algos, (double)best);
        }
        struct conv_step *c = NULL;
        for (int i = 0; i < ck->n_steps && !c; i++)
            if (ck->steps[i].kind == STEP_CONV && ck->steps[i].u.conv.graph)
                c = &ck->steps[i].u.conv;
        if (!c)
            continue;
        float legacy = time_kernel(b, k);
        c->use_graph = true;
        float graph = time_kernel(b, k);
        c->use_graph = graph > 0.f &&
                       (legacy <= 0.f || graph < legacy || b->dev->conv_graph == CONV_GRAPH_ALWAYS);
        if (b->dev->log_algos)
            fprintf(stderr, "device cuda: %s: legacy %.4f ms, graph API %.4f ms%s: %s\n",
                    b->plan->kernels[k].name, (double)legacy, (double)graph,
                    c->graph_fused ? " (epilogue fused)" : "",
                    c->use_graph ? etf__conv_graph_describe(c->graph) : "legacy kept");
    }
}

/* Captures each kernel's steps into a CUDA graph, so that a launch costs one graph launch
 * instead of one library call per step (cuDNN's host-side work per call is several
 * microseconds, more than many batch-1 kernels take on the GPU). A kernel whose capture
 * fails keeps being enqueued step by step. */
static void capture_graphs(struct build *b)
{
    struct etf_dmodel *dm = b->dm;
    for (size_t k = 0; k < dm->n_kernels; k++) {
        struct cuda_kernel *ck = &dm->kernels[k];
        cudaGraph_t graph = NULL;
        if (ck->n_steps == 0)
            continue;
        if (cudaStreamBeginCapture(b->cx.stream, cudaStreamCaptureModeThreadLocal) != cudaSuccess)
            break;
        int rc = exec_kernel(&b->cx, dm, k);
        cudaError_t st = cudaStreamEndCapture(b->cx.stream, &graph);
        if (rc == 0 && st == cudaSuccess && graph &&
            cudaGraphInstantiate(&ck->graph, graph, 0) == cudaSuccess)
            dm->n_graphs++;
        else
            ck->graph = NULL;
        if (graph)
            cudaGraphDestroy(graph);
        cudaGetLastError(); /* a failed capture leaves its error behind */
    }
    b->err.msg[0] = '\0';
}

static void step_free(struct cuda_step *st)
{
    switch (st->kind) {
    case STEP_CONV: {
        struct conv_step *c = &st->u.conv;
        if (c->x_desc)
            cudnnDestroyTensorDescriptor(c->x_desc);
        if (c->y_desc)
            cudnnDestroyTensorDescriptor(c->y_desc);
        if (c->b_desc)
            cudnnDestroyTensorDescriptor(c->b_desc);
        if (c->w_desc)
            cudnnDestroyFilterDescriptor(c->w_desc);
        if (c->conv_desc)
            cudnnDestroyConvolutionDescriptor(c->conv_desc);
        if (c->act_desc)
            cudnnDestroyActivationDescriptor(c->act_desc);
        break;
    }
    case STEP_POOL_CUDNN: {
        struct cudnn_pool_step *c = &st->u.cpool;
        if (c->desc)
            cudnnDestroyPoolingDescriptor(c->desc);
        if (c->x_desc)
            cudnnDestroyTensorDescriptor(c->x_desc);
        if (c->y_desc)
            cudnnDestroyTensorDescriptor(c->y_desc);
        break;
    }
    case STEP_GEMM:
        free(st->u.gemm.a_off);
        free(st->u.gemm.b_off);
        free(st->u.gemm.y_off);
        if (st->u.gemm.lt)
            cublasLtMatmulDescDestroy(st->u.gemm.lt);
        if (st->u.gemm.lt_a)
            cublasLtMatrixLayoutDestroy(st->u.gemm.lt_a);
        if (st->u.gemm.lt_b)
            cublasLtMatrixLayoutDestroy(st->u.gemm.lt_b);
        if (st->u.gemm.lt_y)
            cublasLtMatrixLayoutDestroy(st->u.gemm.lt_y);
        if (st->u.gemm.ptrs)
            cudaFree(st->u.gemm.ptrs);
        break;
    case STEP_CONCAT:
        free(st->u.concat.srcs);
        if (st->u.concat.dev)
            cudaFree(st->u.concat.dev);
        break;
    default:
        break;
    }
}

static void ctx_close(struct exec_ctx *cx);

static void device_cuda_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    struct cuda_device *d = (struct cuda_device *)dev;
    if (!dm)
        return;
    cudaSetDevice(d->ordinal);
    if (dm->kernels) {
        for (size_t k = 0; k < dm->n_kernels; k++) {
            struct cuda_kernel *ck = &dm->kernels[k];
            for (int i = 0; i < ck->n_steps; i++)
                step_free(&ck->steps[i]);
            if (ck->graph)
                cudaGraphExecDestroy(ck->graph);
        }
        free(dm->kernels);
    }
    if (dm->arena)
        cudaFree(dm->arena);
    if (dm->weights)
        cudaFree(dm->weights);
    if (dm->workspace)
        cudaFree(dm->workspace);
    for (int slot = 0; slot < STAGING_SLOTS; slot++) {
        for (size_t i = 0; dm->in && i < dm->plan->n_inputs; i++)
            if (dm->in[i].host[slot])
                cudaFreeHost(dm->in[i].host[slot]);
        for (size_t i = 0; dm->out && i < dm->plan->n_outputs; i++)
            if (dm->out[i].host[slot])
                cudaFreeHost(dm->out[i].host[slot]);
    }
    free(dm->in);
    free(dm->out);
    for (size_t i = 0; i < dm->n_conv_graphs; i++)
        etf__conv_graph_destroy(dm->conv_graphs[i]);
    free(dm->conv_graphs);
    ctx_close(&dm->capture_ctx);
    free(dm);
}

static void ctx_close(struct exec_ctx *cx)
{
    if (cx->cublas)
        cublasDestroy(cx->cublas);
    if (cx->lt)
        cublasLtDestroy(cx->lt);
    if (cx->cublas_ws)
        cudaFree(cx->cublas_ws);
    if (cx->cudnn)
        cudnnDestroy(cx->cudnn);
    if (cx->stream)
        cudaStreamDestroy(cx->stream);
    memset(cx, 0, sizeof *cx);
}

/* A non-blocking stream (no implicit synchronisation with the legacy default stream) and
 * cuDNN and cuBLAS handles bound to it. */
static int ctx_open(struct exec_ctx *cx, bool tf32, struct errbuf *e)
{
    cx->err = e;
    CK_CUDA(e, cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
    CK_CUDNN(e, cudnnCreate(&cx->cudnn));
    CK_CUDNN(e, cudnnSetStream(cx->cudnn, cx->stream));
    CK_CUBLAS(e, cublasCreate(&cx->cublas));
    CK_CUBLAS(e, cublasLtCreate(&cx->lt));
    CK_CUBLAS(e, cublasSetStream(cx->cublas, cx->stream));
    /* After cublasSetStream, which resets the workspace to cuBLAS's own pool. */
    CK_CUDA(e, cudaMalloc(&cx->cublas_ws, CUBLAS_WORKSPACE));
    CK_CUBLAS(e, cublasSetWorkspace(cx->cublas, cx->cublas_ws, CUBLAS_WORKSPACE));
    /* Default math keeps fp32 products in fp32; TF32 only when allowed. */
    CK_CUBLAS(
        e, cublasSetMathMode(cx->cublas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH));
    return 0;
}

static int device_cuda_load(struct etf_device *dev, const struct etf_model_desc *desc,
                            struct etf_dmodel **out, struct etf_diag *diag)
{
    struct cuda_device *d = (struct cuda_device *)dev;
    if (!desc || !desc->plan)
        return etf_diagf(diag, ETF_EINVAL, "device cuda: model '%.64s' has no plan to run",
                         desc && desc->name ? desc->name : "?");
    const struct etf_plan *plan = desc->plan;
    struct etf_dmodel *dm = calloc(1, sizeof *dm);
    if (!dm)
        return etf_diagf(diag, ETF_ENOMEM, "device cuda: out of memory");
    struct build b = {.dev = d, .plan = plan, .dm = dm, .diag = diag};
    dm->plan = plan;
    dm->open_slot = -1;
    dm->n_kernels = plan->n_kernels;
    dm->kernels = calloc(plan->n_kernels ? plan->n_kernels : 1, sizeof *dm->kernels);
    b.vals = calloc(plan->n_values ? plan->n_values : 1, sizeof *b.vals);
    int rc = 0;
    if (!dm->kernels || !b.vals) {
        rc = etf_diagf(diag, ETF_ENOMEM, "device cuda: out of memory");
        goto done;
    }
    cudaError_t st = cudaSetDevice(d->ordinal);
    if (st != cudaSuccess) {
        rc = etf_diagf(diag, ETF_EDEVICE, "device cuda: cudaSetDevice(%d) failed: %s", d->ordinal,
                       cudaGetErrorString(st));
        goto done;
    }
    if ((rc = etf__plan_check(plan, "device cuda", diag)))
        goto done;
    if ((rc = ctx_open(&b.cx, d->tf32, &b.err))) {
        rc = lib_fail(&b, rc);
        goto done;
    }
    if (etf__views_plan(plan, d->views, &b.views)) {
        rc = etf_diagf(diag, ETF_ENOMEM, "device cuda: out of memory");
        goto done;
    }
    if (d->log_algos && b.views.n_skipped)
        fprintf(stderr, "device cuda: %zu of %zu kernels read in place (views)\n",
                b.views.n_skipped, plan->n_kernels);
    analyse(&b);
    for (size_t i = 0; i < plan->n_inputs && rc == 0; i++) {
        int s = plan->inputs[i];
        struct cuda_val *cv = &b.vals[s];
        if (cv->block < 0)
            cv->block = block_new(&b, etf__shape_elems(&plan->values[s].shape) * sizeof(float), 0,
                                  cv->last);
        if (cv->block < 0)
            rc = kfail(&b, ETF_ENOMEM, "out of memory");
    }
    for (size_t k = 0; k < plan->n_kernels && rc == 0; k++) {
        b.k = k;
        b.kn = &plan->kernels[k];
        b.ck = &dm->kernels[k];
        b.err.msg[0] = '\0';
        rc = build_kernel(&b);
        if (rc && b.err.msg[0])
            rc = lib_fail(&b, rc);
    }
    b.kn = NULL;
    if (rc == 0) {
        b.err.msg[0] = '\0';
        rc = finalize(&b);
        if (rc && b.err.msg[0])
            rc = lib_fail(&b, rc);
    }
    if (rc == 0)
        rc = warm_up(&b);
    if (rc == 0)
        choose_paths(&b);
    if (rc == 0 && d->graphs)
        capture_graphs(&b);

done:
    if (b.cx.stream)
        cudaStreamSynchronize(b.cx.stream);
    if (rc == 0 && dm->n_graphs > 0)
        dm->capture_ctx = b.cx; /* the model's now; closed at unload */
    else
        ctx_close(&b.cx);
    free(b.vals);
    etf__views_free(&b.views);
    free(b.blocks);
    free(b.patches);
    free(b.algos);
    free(b.graph_plans);
    if (rc) {
        device_cuda_unload(dev, dm);
        return rc;
    }
    *out = dm;
    return 0;
}

/* ---- Launch ---- */

/* Records a launch failure; the first one is also written to stderr, since the device
 * contract carries no message. */
static int launch_fail(struct cuda_device *d, const struct etf_dmodel *dm, size_t k, int rc)
{
    if (!d->err_reported) {
        d->err_reported = true;
        fprintf(stderr, "device cuda: kernel '%.64s' failed: %s\n", dm->plan->kernels[k].name,
                d->err.msg);
    }
    return rc;
}

/* Enqueues kernel k between the events of fl: the task's inputs before kernel 0, its
 * outputs after the last kernel, both inside the timed region. */
static int launch_enqueue(struct cuda_device *d, const struct etf_dmodel *dm, size_t k,
                          const struct etf_task_io *io, int slot, const struct inflight *fl)
{
    const struct exec_ctx *cx = &d->cx;
    struct errbuf *e = &d->err;
    const struct etf_plan *p = dm->plan;
    bool first = k == 0, last = k + 1 == dm->n_kernels;
    /* The current device is per thread: the dispatcher's may not be ours yet. */
    if (d->ordinal != 0)
        CK_CUDA(e, cudaSetDevice(d->ordinal));
    if (fl->begin == fl->start)
        CK_CUDA(e, cudaEventRecord(fl->start, cx->stream));
    for (size_t i = 0; io && first && i < p->n_inputs; i++)
        CK_CUDA(e, cudaMemcpyAsync(dm->in[i].dev, dm->in[i].host[slot], dm->in[i].bytes,
                                   cudaMemcpyHostToDevice, cx->stream));
    if (dm->kernels[k].graph)
        CK_CUDA(e, cudaGraphLaunch(dm->kernels[k].graph, cx->stream));
    else
        TRY(exec_kernel(cx, dm, k));
    for (size_t i = 0; io && last && i < p->n_outputs; i++)
        if (dm->out[i].dev)
            CK_CUDA(e, cudaMemcpyAsync(dm->out[i].host[slot], dm->out[i].dev, dm->out[i].bytes,
                                       cudaMemcpyDeviceToHost, cx->stream));
    CK_CUDA(e, cudaEventRecord(fl->stop, cx->stream));
    return 0;
}

/* Takes a staging slot for task `task` whose first kernel is being submitted: the one its
 * inputs were prepared in (*staged set), else a free one, preferring one that holds no
 * other task's inputs. ETF_EBUSY when the device must be fenced first. */
static int slot_take(struct cuda_device *d, struct etf_dmodel *dm, uint64_t task, int *slot,
                     bool *staged)
{
    if (dm->open_slot >= 0) {
        /* The model's previous task stopped before its last kernel (it failed): its slot
         * is free once nothing that may read it is in flight. */
        if (d->n_inflight)
            return ETF_EBUSY;
        dm->slot_busy[dm->open_slot] = false;
        dm->open_slot = -1;
    }
    int pick = -1;
    for (int i = 0; i < STAGING_SLOTS; i++) {
        if (dm->slot_busy[i])
            continue;
        if (task && dm->staged_task[i] == task) {
            pick = i;
            break;
        }
        if (pick < 0 || (dm->staged_task[pick] && !dm->staged_task[i]))
            pick = i;
    }
    if (pick < 0)
        return ETF_EBUSY; /* every slot waits for a fence: their last kernels are in flight */
    *staged = task && dm->staged_task[pick] == task;
    dm->staged_task[pick] = 0;
    dm->slot_busy[pick] = true;
    dm->open_slot = *slot = pick;
    return 0;
}

/* Copies the inputs of a task that has not started into a free staging slot, when one holds
 * no other task's inputs; its first submit then skips the copy. */
static void device_cuda_prepare(struct etf_device *dev, const struct etf_kernel_run *run)
{
    struct etf_dmodel *dm = run->dm;
    const struct etf_task_io *io = run->io;
    if (!dm || run->kernel != 0 || !io || !run->task || (dm->plan->n_inputs && !io->inputs))
        return;
    int free_slot = -1;
    for (int i = 0; i < STAGING_SLOTS; i++) {
        if (dm->staged_task[i] == run->task && !dm->slot_busy[i])
            return; /* staged already */
        if (!dm->slot_busy[i] && !dm->staged_task[i] && free_slot < 0)
            free_slot = i;
    }
    if (free_slot < 0)
        return;
    struct cuda_device *d = (struct cuda_device *)dev;
    for (size_t i = 0; i < dm->plan->n_inputs; i++)
        etf__copier_copy(d->copier, dm->in[i].host[free_slot], io->inputs[i], dm->in[i].bytes);
    dm->staged_task[free_slot] = run->task;
}

static int device_cuda_submit(struct etf_device *dev, struct etf_kernel_run *run)
{
    struct cuda_device *d = (struct cuda_device *)dev;
    struct etf_dmodel *dm = run->dm;
    if (!dm || run->kernel >= dm->n_kernels)
        return ETF_EINVAL;
    const struct etf_task_io *io = run->io;
    const struct etf_plan *p = dm->plan;
    size_t k = run->kernel;
    bool first = k == 0, last = k + 1 == dm->n_kernels;
    if (io && ((first && p->n_inputs && !io->inputs) || (last && p->n_outputs && !io->outputs)))
        return ETF_EINVAL;
    /* One entry stays free: the newest kernel's time may start at the stop event of the
     * entry before it, which must not be recorded again meanwhile. */
    if (d->n_inflight == MAX_INFLIGHT - 1)
        return ETF_EBUSY;
    int slot = io ? dm->open_slot : -1;
    bool staged = false;
    if (io && first)
        TRY(slot_take(d, dm, run->task, &slot, &staged));
    if (io && slot < 0)
        return ETF_EINVAL; /* a task with buffers that did not start at kernel 0 */
    /* Host copies into the pinned staging buffers stay outside the timed region: they are
     * CPU work. */
    for (size_t i = 0; io && first && !staged && i < p->n_inputs; i++)
        etf__copier_copy(d->copier, dm->in[i].host[slot], io->inputs[i], dm->in[i].bytes);
    struct inflight *fl = &d->inflight[(d->inflight_head + d->n_inflight) % MAX_INFLIGHT];
    /* While the previous kernel is still queued or running, this one starts on the GPU the
     * moment that one stops: its time is measured from the previous stop event, which saves
     * an event (about a microsecond of GPU time per kernel, a few percent of a batch-1
     * model) and leaves no sliver between kernels uncounted. Once the GPU has caught up, a
     * start event of its own keeps idle time out. */
    const struct inflight *prev =
        d->n_inflight ? &d->inflight[(d->inflight_head + d->n_inflight - 1) % MAX_INFLIGHT] : NULL;
    fl->begin = fl->start;
    if (prev && cudaEventQuery(prev->stop) == cudaErrorNotReady) {
        fl->begin = prev->stop;
        cudaGetLastError(); /* "not ready" is no error for the next launch's check */
    }
    int rc = launch_enqueue(d, dm, k, io, slot, fl);
    if (rc)
        return launch_fail(d, dm, k, rc);
    fl->run = run;
    fl->out_slot = -1;
    if (io && last) {
        fl->out_slot = slot;
        dm->open_slot = -1;
    }
    d->n_inflight++;
    return 0;
}

/* Waits for the stop event of the n-th oldest kernel, then reads each of the n kernels'
 * times between their events and delivers the outputs of the tasks that ended. */
static int device_cuda_fence(struct etf_device *dev, size_t n)
{
    struct cuda_device *d = (struct cuda_device *)dev;
    if (n > d->n_inflight)
        n = d->n_inflight;
    if (n == 0)
        return 0;
    size_t head = d->inflight_head;
    cudaError_t st = cudaEventSynchronize(d->inflight[(head + n - 1) % MAX_INFLIGHT].stop);
    if (st != cudaSuccess)
        n = d->n_inflight; /* the stream is broken: nothing in flight will complete */
    for (size_t i = 0; i < n; i++) {
        const struct inflight *fl = &d->inflight[(head + i) % MAX_INFLIGHT];
        struct etf_kernel_run *run = fl->run;
        struct etf_dmodel *dm = run->dm;
        float ms = 0.f;
        if (st == cudaSuccess)
            st = cudaEventElapsedTime(&ms, fl->begin, fl->stop);
        if (st == cudaSuccess) {
            uint64_t ns = (uint64_t)llround((double)ms * 1e6);
            run->busy_ns = ns ? ns : 1; /* events resolve about half a microsecond */
        }
        if (fl->out_slot < 0)
            continue;
        for (size_t j = 0; st == cudaSuccess && j < dm->plan->n_outputs; j++)
            etf__copier_copy(d->copier, run->io->outputs[j],
                             dm->out[j].dev ? dm->out[j].host[fl->out_slot] : dm->out[j].constant,
                             dm->out[j].bytes);
        dm->slot_busy[fl->out_slot] = false;
    }
    const struct etf_kernel_run *oldest = d->inflight[head].run;
    d->inflight_head = (head + n) % MAX_INFLIGHT;
    d->n_inflight -= n;
    if (st == cudaSuccess)
        return 0;
    /* Every run is lost: the staging slots of those left in flight are free again. */
    for (size_t i = 0; i < d->n_inflight; i++) {
        const struct inflight *fl = &d->inflight[(d->inflight_head + i) % MAX_INFLIGHT];
        if (fl->out_slot >= 0)
            fl->run->dm->slot_busy[fl->out_slot] = false;
    }
    d->n_inflight = 0;
    return launch_fail(d, oldest->dm, oldest->kernel,
                       fail_cuda(&d->err, "cudaEventSynchronize (fence)", st));
}

/* One kernel, synchronously: submitted, then fenced with whatever was in flight. */
static int device_cuda_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    int rc = device_cuda_submit(dev, run);
    if (rc == ETF_EBUSY) {
        TRY(device_cuda_fence(dev, SIZE_MAX));
        rc = device_cuda_submit(dev, run);
    }
    TRY(rc);
    return device_cuda_fence(dev, SIZE_MAX);
}

/* ---- Open and close ---- */

static void device_cuda_close(struct etf_device *dev)
{
    struct cuda_device *d = (struct cuda_device *)dev;
    if (!d)
        return;
    cudaSetDevice(d->ordinal);
    if (d->cx.stream)
        cudaStreamSynchronize(d->cx.stream);
    for (size_t i = 0; i < MAX_INFLIGHT; i++) {
        if (d->inflight[i].start)
            cudaEventDestroy(d->inflight[i].start);
        if (d->inflight[i].stop)
            cudaEventDestroy(d->inflight[i].stop);
    }
    ctx_close(&d->cx);
    etf__copier_destroy(d->copier);
    free(d);
}

/* Whether this machine has a CUDA device at all (cudaGetDeviceCount); *why says why not. */
static bool have_gpu(int *count, const char **why)
{
    int n = 0;
    cudaError_t st = cudaGetDeviceCount(&n);
    if (st != cudaSuccess) {
        *why = cudaGetErrorString(st);
        *count = 0;
        return false;
    }
    *count = n;
    *why = n ? NULL : "cudaGetDeviceCount found no device";
    return n > 0;
}

bool etf__device_cuda_available(void)
{
    int n;
    const char *why;
    return have_gpu(&n, &why);
}

static int device_cuda_open(const struct etf_device_config *cfg, struct etf_device **out,
                            struct etf_diag *diag)
{
    int count;
    const char *why;
    if (!have_gpu(&count, &why))
        return etf_diagf(diag, ETF_EDEVICE, "device cuda: no CUDA device: %s", why);
    int ordinal = 0;
    const char *env = getenv("ETF_CUDA_DEVICE");
    if (env && *env) {
        char *end;
        long v = strtol(env, &end, 10);
        if (*end || v < 0 || v >= count)
            return etf_diagf(diag, ETF_EINVAL,
                             "device cuda: ETF_CUDA_DEVICE='%.32s' is not a device ordinal "
                             "(0..%d)",
                             env, count - 1);
        ordinal = (int)v;
    }
    struct cuda_device *d = calloc(1, sizeof *d);
    if (!d)
        return etf_diagf(diag, ETF_ENOMEM, "device cuda: out of memory");
    d->base.ops = &etf__device_cuda_ops;
    d->ordinal = ordinal;
    d->tf32 = env_flag("ETF_CUDA_TF32", false);
    d->fuse = env_flag("ETF_CUDA_FUSE", true);
    d->log_algos = env_flag("ETF_CUDA_LOG", false);
    d->graphs = env_flag("ETF_CUDA_GRAPHS", true);
    d->views = env_flag("ETF_CUDA_VIEWS", true);
    d->lt_epilogue = env_flag("ETF_CUDA_LT", true);
    const char *cg = getenv("ETF_CUDA_CONV_GRAPH");
    d->conv_graph = cg && strcmp(cg, "always") == 0         ? CONV_GRAPH_ALWAYS
                    : env_flag("ETF_CUDA_CONV_GRAPH", true) ? CONV_GRAPH_FASTER
                                                            : CONV_GRAPH_OFF;
    struct errbuf e = {{0}};
    int rc = 0;
    cudaError_t st = cudaSetDevice(ordinal);
    if (st != cudaSuccess)
        rc = fail_cuda(&e, "cudaSetDevice", st);
    /* cuDNN's legacy API (descriptors, Find) is stable through major version 9. */
    if (rc == 0 && cudnnGetVersion() / 10000 != CUDNN_MAJOR)
        rc = fail_rec(&e, ETF_ENOTSUP, "cuDNN %zu is loaded, version %d.x was built against",
                      cudnnGetVersion(), CUDNN_MAJOR);
    if (rc == 0)
        rc = ctx_open(&d->cx, d->tf32, &e);
    if (rc == 0) {
        /* cfg->threads: the host threads that copy tasks' inputs and outputs */
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        unsigned threads = cfg && cfg->threads > 0             ? (unsigned)cfg->threads
                           : cores >= 2 * DEFAULT_COPY_THREADS ? DEFAULT_COPY_THREADS
                           : cores >= 2                        ? (unsigned)(cores / 2)
                                                               : 1;
        if (threads > ETF_COPIER_MAX_THREADS)
            threads = ETF_COPIER_MAX_THREADS;
        if (etf__copier_create(threads, &d->copier))
            rc = fail_rec(&e, ETF_ENOMEM, "no memory or threads for %u copy threads", threads);
    }
    for (size_t i = 0; i < MAX_INFLIGHT && rc == 0; i++) {
        cudaError_t st1 = cudaEventCreate(&d->inflight[i].start);
        if (st1 == cudaSuccess)
            st1 = cudaEventCreate(&d->inflight[i].stop);
        if (st1 != cudaSuccess)
            rc = fail_cuda(&e, "cudaEventCreate", st1);
    }
    if (rc) {
        device_cuda_close(&d->base);
        return etf_diagf(diag, rc, "device cuda: %s", e.msg);
    }
    d->cx.err = &d->err;
    *out = &d->base;
    return 0;
}

const struct etf_device_ops etf__device_cuda_ops = {
    .name = "cuda",
    .open = device_cuda_open,
    .load = device_cuda_load,
    .launch = device_cuda_launch,
    .submit = device_cuda_submit,
    .fence = device_cuda_fence,
    .prepare = device_cuda_prepare,
    .unload = device_cuda_unload,
    .close = device_cuda_close,
};
