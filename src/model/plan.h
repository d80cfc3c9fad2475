/* The kernel plan: a model as the devices see it.
 *
 * The model layer turns an ONNX graph into a plan: values (tensors with static shapes) and
 * kernels in execution order. Every kernel is one preemption point of the scheduler and
 * carries a stable, readable name ("conv_bias_relu_3"). By the time a plan exists:
 *   - shapes are static (the batch size was chosen at load) and checked;
 *   - shape arithmetic (Shape, Gather, Slice, Unsqueeze, Concat of constants, ...) is folded
 *     away, and Reshape/Flatten/Squeeze/Unsqueeze/Identity/Dropout are views (aliases);
 *   - BatchNormalization following a Conv is folded into its weights and bias; a standalone
 *     one is a BATCHNORM kernel with per-channel scale and shift;
 *   - Gemm is a MATMUL with a [K, N] weight (transposes and alpha/beta applied to the
 *     constants), and a MatMul with a constant right operand likewise;
 *   - activations and residual adds that follow a kernel are attached as post-ops where the
 *     pattern allows (Relu, Clip, Sigmoid, x*sigmoid(x) = swish, the erf form of GELU;
 *     an Add of a same-shaped tensor = sum).
 * Layout is logical: shapes are in ONNX order (NCHW for images). Each device chooses its
 * own memory layouts and arena offsets from the liveness the plan gives.
 *
 * Plans are immutable once built and may be shared by several loaded models, with one
 * exception: the constants' data (the weights), which the owner may let go once the devices
 * hold copies of their own (etf_plan_drop_weights, etf__plan_weight_taken).
 */
#ifndef ETF_MODEL_PLAN_H
#define ETF_MODEL_PLAN_H

#include "etf/etf.h"

#define ETF_MAX_DIMS 6
#define ETF_MAX_KERNEL_INPUTS 4
#define ETF_MAX_POST_OPS 4

struct etf_shape {
    int ndim;
    int64_t d[ETF_MAX_DIMS];
};

enum etf_value_kind {
    ETF_VALUE_INPUT,      /* a model input: written by the caller before the first kernel */
    ETF_VALUE_ACTIVATION, /* produced by one kernel, read by later ones or returned */
    ETF_VALUE_CONSTANT,   /* weights and other constants: `data` holds them */
};

struct etf_value {
    char *name;
    enum etf_value_kind kind;
    struct etf_shape shape;
    const float *data; /* ETF_VALUE_CONSTANT only: prod(shape) floats owned by the plan */
    /* A view: this value is `alias_of` reinterpreted with another shape (same bytes, same
     * element count, contiguous logical order). -1 when the value has its own storage. */
    int alias_of;
    /* Liveness of the storage, as kernel indices: first kernel that writes or reads it,
     * last kernel that reads it (n_kernels for model outputs, which outlive the run). Set
     * for values with own storage that are not constants. */
    size_t first_use, last_use;
};

enum etf_kernel_op {
    ETF_K_CONV,        /* in: x [N,C,H,W], w [O,C/g,kh,kw], optional b [O] */
    ETF_K_MATMUL,      /* in: a [..., M, K], b [..., K, N] (constant or not), optional bias [N] */
    ETF_K_POOL,        /* in: x [N,C,H,W]; global average pooling is a pool over all of H, W */
    ETF_K_BATCHNORM,   /* in: x [N,C,...], scale [C], shift [C]: y = x * scale + shift */
    ETF_K_LAYERNORM,   /* in: x [..., D], gamma [D], beta [D]; over the last axis */
    ETF_K_ELTWISE,     /* in: x; y = f(x) */
    ETF_K_BINARY,      /* in: a, b (numpy broadcasting to the output shape) */
    ETF_K_CONCAT,      /* in: 1..ETF_MAX_KERNEL_INPUTS tensors, or more via `extra_inputs` */
    ETF_K_SOFTMAX,     /* in: x; over `axis` */
    ETF_K_TRANSPOSE,   /* in: x; y = permute(x, perm) */
    ETF_K_REDUCE_MEAN, /* in: x; over the axes in `axes_mask`, dimensions kept */
    ETF_K_PAD,         /* in: x; constant padding */
};

enum etf_eltwise_alg {
    ETF_ELT_RELU,
    ETF_ELT_CLIP, /* min(max(x, alpha), beta) */
    ETF_ELT_SIGMOID,
    ETF_ELT_SWISH,    /* x * sigmoid(x) */
    ETF_ELT_GELU_ERF, /* 0.5 x (1 + erf(x / sqrt 2)) */
    ETF_ELT_ERF,
    ETF_ELT_TANH,
    ETF_ELT_EXP,
    ETF_ELT_SQRT,
    ETF_ELT_LINEAR, /* alpha * x + beta */
};

enum etf_binary_alg {
    ETF_BIN_ADD,
    ETF_BIN_SUB,
    ETF_BIN_MUL,
    ETF_BIN_DIV,
};

enum etf_pool_alg {
    ETF_POOL_MAX,
    ETF_POOL_AVG_INCLUDE_PAD,
    ETF_POOL_AVG_EXCLUDE_PAD,
};

struct etf_post_op {
    enum { ETF_POST_ELTWISE, ETF_POST_SUM, ETF_POST_BINARY } kind;
    enum etf_eltwise_alg eltwise; /* ETF_POST_ELTWISE */
    float alpha, beta;            /* ETF_POST_ELTWISE parameters (CLIP, LINEAR) */
    enum etf_binary_alg binary;   /* ETF_POST_BINARY */
    /* ETF_POST_SUM: a value of the output's shape added to the result (a residual);
     * ETF_POST_BINARY: a value broadcast against the output. */
    int value;
};

struct etf_kernel {
    char name[64];
    enum etf_kernel_op op;
    int inputs[ETF_MAX_KERNEL_INPUTS];
    int n_inputs;
    int *extra_inputs; /* CONCAT with more than ETF_MAX_KERNEL_INPUTS inputs: all of them */
    int n_extra_inputs;
    int output;
    union {
        struct {
            int64_t stride[2], dilation[2], pad_begin[2], pad_end[2], groups;
        } conv;
        struct {
            enum etf_pool_alg alg;
            int64_t kernel[2], stride[2], pad_begin[2], pad_end[2];
        } pool;
        struct {
            float epsilon;
        } norm; /* LAYERNORM (BATCHNORM's epsilon is folded into scale) */
        struct {
            enum etf_eltwise_alg alg;
            float alpha, beta;
        } eltwise;
        struct {
            enum etf_binary_alg alg;
        } binary;
        struct {
            int axis; /* non-negative */
        } axis;       /* CONCAT, SOFTMAX */
        struct {
            int perm[ETF_MAX_DIMS];
        } transpose;
        struct {
            unsigned axes_mask; /* bit i: reduce over axis i */
        } reduce;
        struct {
            int64_t begin[ETF_MAX_DIMS], end[ETF_MAX_DIMS];
            float value;
        } pad;
    } attr;
    struct etf_post_op post[ETF_MAX_POST_OPS];
    int n_post;
};

struct etf__plan_weights; /* the model layer's bookkeeping of the constants' data (plan.c) */

struct etf_plan {
    char *name;
    struct etf_value *values;
    size_t n_values;
    struct etf_kernel *kernels;
    size_t n_kernels;
    int *inputs; /* value ids of the model inputs, in ONNX order */
    size_t n_inputs;
    int *outputs; /* value ids of the model outputs (may be aliases) */
    size_t n_outputs;
    /* NULL in plans built by hand (tests), whose builder owns the constants' data. */
    struct etf__plan_weights *weights;
};

/* Elements of a shape (product of dims; 1 for a scalar). */
size_t etf__shape_elems(const struct etf_shape *s);

/* A kernel operation's name for messages ("conv", ...; "?" for an unknown one). */
const char *etf__plan_op_name(enum etf_kernel_op op);

/* Every input of kernel kn: its extra_inputs when it has them, else its inputs. */
void etf__kernel_inputs(const struct etf_kernel *kn, const int **ids, int *n);

/* A MATMUL kernel's operand dims as numpy broadcasts them: a vector a is a row [1, K], a
 * vector b a column [K, 1], and both get leading dims of 1 up to the larger rank *nd; ad,
 * wd and the output's yd have ETF_MAX_DIMS room. Returns 0, or ETF_EINVAL with why (when
 * not NULL: why_len bytes) saying what does not multiply, with the dims found. */
int etf__plan_matmul_dims(const struct etf_plan *p, const struct etf_kernel *kn, int *nd,
                          int64_t *ad, int64_t *wd, int64_t *yd, char *why, size_t why_len);

/* The value that owns the storage of v (follows alias_of); -1 when the aliases loop. */
int etf__plan_storage(const struct etf_plan *plan, int v);

/* Checks what a device relies on before it reads a plan: value ids in range, aliases that
 * end at a value of the same size, shapes within ETF_MAX_DIMS and not empty, data for every
 * constant that a kernel reads or that is a model output, known ops, input/output/post-op
 * counts within their arrays. `who` prefixes the message ("device cpu"). Returns 0, ETF_EINVAL
 * (inconsistent, or weights dropped) or ETF_ENOTSUP (an op or an empty dimension the devices
 * do not run). */
int etf__plan_check(const struct etf_plan *plan, const char *who, struct etf_diag *diag);

/* The weights contract of device loads. A load reads the constants' data (values[v].data)
 * while it runs only: a loaded model keeps its own copy of every constant it uses (the CPU
 * device reorders them, the GPU uploads them); only a constant model output may be read from
 * the plan later, and only plans built by hand have those (the model layer refuses them).
 * Once a load holds its copy of storage value v and will not read values[v].data again, it
 * reports it here. If the owner let this load take the weights
 * (etf_plan_drop_weights_on_load), v's data is freed then, so that the plan's weights shrink
 * as the device's copy grows and are never resident twice; values[v].data (and that of the
 * values sharing it) becomes NULL. Safe against loads of the plan on other threads; a no-op
 * for plans built by hand. */
void etf__plan_weight_taken(const struct etf_plan *plan, int v);

#endif
