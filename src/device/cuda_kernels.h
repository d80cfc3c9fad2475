/* The custom CUDA kernels of the CUDA device (device_cuda.c), compiled by nvcc in
 * cuda_kernels.cu and called from C through this interface.
 *
 * Everything here works on plain row-major fp32 tensors (NCHW for images), the layout the
 * plan's shapes describe. A launcher enqueues its kernel on the given stream and returns the
 * launch status (cudaGetLastError); none allocates, synchronises or creates anything, so that
 * the device can call them between the events that time a plan kernel. Parameter blocks are
 * passed by value to the GPU kernels: they are filled once at load and never change.
 */
#ifndef ETF_DEVICE_CUDA_KERNELS_H
#define ETF_DEVICE_CUDA_KERNELS_H

#include <cuda_runtime_api.h>
#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ETFK_MAX_DIMS 6
#define ETFK_MAX_POST 4

/* Elementwise functions, in the order of enum etf_eltwise_alg (model/plan.h); the device
 * checks the correspondence at compile time. */
enum etfk_elt {
    ETFK_ELT_RELU,
    ETFK_ELT_CLIP, /* min(max(x, alpha), beta) */
    ETFK_ELT_SIGMOID,
    ETFK_ELT_SWISH,
    ETFK_ELT_GELU_ERF,
    ETFK_ELT_ERF,
    ETFK_ELT_TANH,
    ETFK_ELT_EXP,
    ETFK_ELT_SQRT,
    ETFK_ELT_LINEAR, /* alpha * x + beta */
};

/* Binary operations, in the order of enum etf_binary_alg. */
enum etfk_bin {
    ETFK_BIN_ADD,
    ETFK_BIN_SUB,
    ETFK_BIN_MUL,
    ETFK_BIN_DIV,
};

/* How an operand's element for output element i is found. */
enum etfk_bcast {
    ETFK_BC_FULL,    /* the operand has the output's shape: element i */
    ETFK_BC_BLOCK,   /* (i / inner) % count: per-channel vectors, [N,C,1,1], scalars */
    ETFK_BC_GENERIC, /* any other numpy broadcast: unravel i, dot with `strides` */
};

struct etfk_operand {
    const float *ptr;
    int mode; /* enum etfk_bcast */
    int64_t inner, count;
    int64_t strides[ETFK_MAX_DIMS]; /* ETFK_BC_GENERIC: per output axis, 0 where broadcast */
};

enum etfk_post_kind {
    ETFK_POST_ELTWISE, /* v = f(v) */
    ETFK_POST_SUM,     /* v = v + operand */
    ETFK_POST_BINARY,  /* v = v op operand */
};

struct etfk_post {
    int kind; /* enum etfk_post_kind */
    int alg;  /* enum etfk_elt or enum etfk_bin */
    float alpha, beta;
    struct etfk_operand v;
};

/* The main operation of a pointwise kernel, before its post-ops. */
enum etfk_pw_main {
    ETFK_PW_COPY,    /* v = a */
    ETFK_PW_ELTWISE, /* v = f(a) */
    ETFK_PW_BINARY,  /* v = a op b (a bias add is a binary add of a [C] operand) */
    ETFK_PW_AFFINE,  /* v = a * b + c (batch normalisation) */
};

/* y[i] = post_n(... post_1(main(a, b, c)) ...) for i < n. y may be a's bytes (in place):
 * each element is read and written by the same thread. */
struct etfk_pointwise {
    float *y;
    int64_t n;
    int ndim; /* the output's shape, for ETFK_BC_GENERIC operands */
    int64_t dims[ETFK_MAX_DIMS];
    int main; /* enum etfk_pw_main */
    int alg;  /* enum etfk_elt (ELTWISE) or enum etfk_bin (BINARY) */
    float alpha, beta;
    struct etfk_operand a, b, c;
    int n_post;
    struct etfk_post post[ETFK_MAX_POST];
};
cudaError_t etfk_launch_pointwise(const struct etfk_pointwise *p, cudaStream_t s);

/* 2-D pooling of x [N,C,H,W] into y [N,C,OH,OW] with any (also asymmetric) padding: what
 * cuDNN's symmetric descriptors cannot express (ceil-mode pooling). Averages that exclude
 * padding divide by the in-bounds count, those that include it by kh*kw. */
enum etfk_pool_alg { ETFK_POOL_MAX, ETFK_POOL_AVG_INCLUDE_PAD, ETFK_POOL_AVG_EXCLUDE_PAD };
struct etfk_pool {
    const float *x;
    float *y;
    int alg;
    int64_t NC;
    int H, W, OH, OW, kh, kw, sh, sw, ph, pw;
};
cudaError_t etfk_launch_pool(const struct etfk_pool *p, cudaStream_t s);

/* y[r] = mean(x[r * len .. r * len + len)) for r < rows: global average pooling and means
 * over trailing axes. One warp per row. */
cudaError_t etfk_launch_row_mean(const float *x, float *y, int64_t rows, int64_t len,
                                 cudaStream_t s);

/* Mean over any set of axes: one thread per output element walks the reduced index space. */
struct etfk_reduce {
    const float *x;
    float *y;
    int ndim;
    int64_t n_out, count;             /* output elements, elements averaged into each */
    int64_t out_dims[ETFK_MAX_DIMS];  /* x's dims with reduced axes set to 1 */
    int64_t red_dims[ETFK_MAX_DIMS];  /* the reduced axes' dims, 1 elsewhere */
    int64_t x_strides[ETFK_MAX_DIMS]; /* row-major strides of x */
};
cudaError_t etfk_launch_reduce_mean(const struct etfk_reduce *p, cudaStream_t s);

/* Softmax of x viewed as [outer, dim, inner] over the middle axis. */
cudaError_t etfk_launch_softmax(const float *x, float *y, int64_t outer, int64_t dim, int64_t inner,
                                cudaStream_t s);

/* Layer normalisation over the last axis of x [rows, D]: y = (x - mean) / sqrt(var + eps) *
 * gamma + beta. One block per row, two passes over the row for an accurate variance. */
cudaError_t etfk_launch_layernorm(const float *x, const float *gamma, const float *beta, float *y,
                                  int64_t rows, int64_t D, float eps, cudaStream_t s);

/* y = permute(x): y's element at index idx (in y's dims) is x at sum(idx[i] * x_strides[i]),
 * x_strides being x's row-major strides taken in the permuted order. */
struct etfk_transpose {
    const float *x;
    float *y;
    int ndim;
    int64_t n;
    int64_t y_dims[ETFK_MAX_DIMS];
    int64_t x_strides[ETFK_MAX_DIMS];
};
cudaError_t etfk_launch_transpose(const struct etfk_transpose *p, cudaStream_t s);

/* Constant padding (negative pads crop): y[idx] = x[idx - begin] inside x, value outside. */
struct etfk_pad {
    const float *x;
    float *y;
    int ndim;
    int64_t n;
    int64_t y_dims[ETFK_MAX_DIMS];
    int64_t x_dims[ETFK_MAX_DIMS];
    int64_t begin[ETFK_MAX_DIMS];
    float value;
};
cudaError_t etfk_launch_pad(const struct etfk_pad *p, cudaStream_t s);

/* One input of a concatenation: x viewed as [outer, len] lands at column `at` of the
 * output viewed as [outer, out_len]. */
struct etfk_concat_src {
    const float *x;
    int64_t len, at;
};
/* Concatenates n inputs whose descriptors lie in device memory (`srcs`, uploaded at load),
 * in one launch: blockIdx.y picks the input. vec4: every len and at, and out_len, are
 * multiples of 4 and every x and y 16-byte aligned, so that the copy moves float4s. */
cudaError_t etfk_launch_concat(const struct etfk_concat_src *srcs, int n, int64_t max_len, float *y,
                               int64_t outer, int64_t out_len, bool vec4, cudaStream_t s);

#ifdef __cplusplus
}
#endif
#endif
