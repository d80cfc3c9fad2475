/* The custom CUDA kernels of the CUDA device: everything cuDNN and cuBLAS do not cover or
 * cover less well (see cuda_kernels.h for each one's contract).
 *
 * These kernels are memory-bound: they favour coalesced accesses and few launches over
 * arithmetic tricks. Grid-stride loops let one grid size serve every tensor; grids are
 * capped so that huge tensors do not ask for millions of blocks. Accumulations that feed a
 * normalisation (means, variances, softmax sums) are done in fp32 with warp shuffles, in an
 * order that keeps the error near that of a pairwise sum.
 */
#include "cuda_kernels.h"

#include <cfloat>
#include <cmath>

namespace
{

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = 132 * 32; /* enough to fill an H100 (132 SMs) many times */

unsigned grid_for(int64_t n, int threads = kThreads)
{
    int64_t b = (n + threads - 1) / threads;
    if (b < 1)
        b = 1;
    if (b > kMaxBlocks)
        b = kMaxBlocks;
    return (unsigned)b;
}

/* ---- Pointwise ---- */

__device__ __forceinline__ float elt(int alg, float alpha, float beta, float x)
{
    switch (alg) {
    case ETFK_ELT_RELU:
        return x > 0.f ? x : 0.f;
    case ETFK_ELT_CLIP:
        return fminf(fmaxf(x, alpha), beta);
    case ETFK_ELT_SIGMOID:
        return 1.f / (1.f + expf(-x));
    case ETFK_ELT_SWISH:
        return x / (1.f + expf(-x));
    case ETFK_ELT_GELU_ERF:
        return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case ETFK_ELT_ERF:
        return erff(x);
    case ETFK_ELT_TANH:
        return tanhf(x);
    case ETFK_ELT_EXP:
        return expf(x);
    case ETFK_ELT_SQRT:
        return sqrtf(x);
    case ETFK_ELT_LINEAR:
        return alpha * x + beta;
    }
    return x;
}

__device__ __forceinline__ float bin(int alg, float a, float b)
{
    switch (alg) {
    case ETFK_BIN_ADD:
        return a + b;
    case ETFK_BIN_SUB:
        return a - b;
    case ETFK_BIN_MUL:
        return a * b;
    case ETFK_BIN_DIV:
        return a / b;
    }
    return a;
}

__device__ __forceinline__ float load(const etfk_operand &o, int64_t i, int ndim,
                                      const int64_t *dims)
{
    switch (o.mode) {
    case ETFK_BC_FULL:
        return o.ptr[i];
    case ETFK_BC_BLOCK:
        return o.ptr[(i / o.inner) % o.count];
    default: {
        int64_t off = 0, rest = i;
        for (int d = ndim - 1; d >= 0; d--) {
            int64_t q = rest / dims[d];
            off += (rest - q * dims[d]) * o.strides[d];
            rest = q;
        }
        return o.ptr[off];
    }
    }
}

__global__ void pointwise_kernel(const struct etfk_pointwise p)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n;
         i += (int64_t)gridDim.x * blockDim.x) {
        float v = load(p.a, i, p.ndim, p.dims);
        switch (p.main) {
        case ETFK_PW_ELTWISE:
            v = elt(p.alg, p.alpha, p.beta, v);
            break;
        case ETFK_PW_BINARY:
            v = bin(p.alg, v, load(p.b, i, p.ndim, p.dims));
            break;
        case ETFK_PW_AFFINE:
            v = fmaf(v, load(p.b, i, p.ndim, p.dims), load(p.c, i, p.ndim, p.dims));
            break;
        default:
            break;
        }
        for (int j = 0; j < p.n_post; j++) {
            const etfk_post &q = p.post[j];
            if (q.kind == ETFK_POST_ELTWISE)
                v = elt(q.alg, q.alpha, q.beta, v);
            else if (q.kind == ETFK_POST_SUM)
                v += load(q.v, i, p.ndim, p.dims);
            else
                v = bin(q.alg, v, load(q.v, i, p.ndim, p.dims));
        }
        p.y[i] = v;
    }
}

/* ---- Pooling ---- */

__global__ void pool_kernel(const struct etfk_pool p)
{
    int64_t n = p.NC * p.OH * p.OW;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int ow = (int)(i % p.OW);
        int oh = (int)(i / p.OW % p.OH);
        int64_t nc = i / ((int64_t)p.OW * p.OH);
        const float *x = p.x + nc * p.H * p.W;
        int h0 = oh * p.sh - p.ph, w0 = ow * p.sw - p.pw;
        float acc = p.alg == ETFK_POOL_MAX ? -INFINITY : 0.f;
        int count = 0;
        for (int a = 0; a < p.kh; a++) {
            int h = h0 + a;
            if (h < 0 || h >= p.H)
                continue;
            for (int b = 0; b < p.kw; b++) {
                int w = w0 + b;
                if (w < 0 || w >= p.W)
                    continue;
                float v = x[h * p.W + w];
                acc = p.alg == ETFK_POOL_MAX ? fmaxf(acc, v) : acc + v;
                count++;
            }
        }
        if (p.alg == ETFK_POOL_AVG_INCLUDE_PAD)
            acc /= (float)(p.kh * p.kw);
        else if (p.alg == ETFK_POOL_AVG_EXCLUDE_PAD)
            acc = count ? acc / (float)count : 0.f;
        p.y[i] = acc;
    }
}

/* ---- Reductions ---- */

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sum over the block; every thread gets the result. `red` holds one float per warp. */
__device__ float block_sum(float v, float *red)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* red may still be read from the previous call */
    if (lane == 0)
        red[warp] = v;
    __syncthreads();
    v = lane < warps ? red[lane] : 0.f;
    return warp_sum(v);
}

__global__ void row_mean_kernel(const float *x, float *y, int64_t rows, int64_t len)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
         r += warps) {
        const float *xr = x + r * len;
        float s = 0.f;
        for (int64_t j = lane; j < len; j += 32)
            s += xr[j];
        s = warp_sum(s);
        if (lane == 0)
            y[r] = s / (float)len;
    }
}

__global__ void reduce_mean_kernel(const etfk_reduce p)
{
    for (int64_t o = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; o < p.n_out;
         o += (int64_t)gridDim.x * blockDim.x) {
        int64_t base = 0, rest = o;
        for (int d = p.ndim - 1; d >= 0; d--) {
            int64_t q = rest / p.out_dims[d];
            base += (rest - q * p.out_dims[d]) * p.x_strides[d];
            rest = q;
        }
        float s = 0.f;
        for (int64_t r = 0; r < p.count; r++) {
            int64_t off = base, rr = r;
            for (int d = p.ndim - 1; d >= 0; d--) {
                int64_t q = rr / p.red_dims[d];
                off += (rr - q * p.red_dims[d]) * p.x_strides[d];
                rr = q;
            }
            s += p.x[off];
        }
        p.y[o] = s / (float)p.count;
    }
}

/* Softmax over contiguous rows (inner == 1): one warp per row, three passes. */
__global__ void softmax_rows_kernel(const float *x, float *y, int64_t rows, int64_t dim)
{
    int lane = threadIdx.x & 31;
    int64_t warps = (int64_t)gridDim.x * (blockDim.x >> 5);
    for (int64_t r = (int64_t)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5); r < rows;
         r += warps) {
        const float *xr = x + r * dim;
        float *yr = y + r * dim;
        float m = -INFINITY;
        for (int64_t j = lane; j < dim; j += 32)
            m = fmaxf(m, xr[j]);
        m = warp_max(m);
        float s = 0.f;
        for (int64_t j = lane; j < dim; j += 32)
            s += expf(xr[j] - m);
        s = warp_sum(s);
        float inv = 1.f / s;
        for (int64_t j = lane; j < dim; j += 32)
            yr[j] = expf(xr[j] - m) * inv;
    }
}

/* Softmax over a strided axis (inner > 1, channels of NCHW): one thread per column; the
 * threads of a warp read neighbouring columns, so every access is coalesced. */
__global__ void softmax_cols_kernel(const float *x, float *y, int64_t outer, int64_t dim,
                                    int64_t inner)
{
    int64_t n = outer * inner;
    for (int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; c < n;
         c += (int64_t)gridDim.x * blockDim.x) {
        int64_t o = c / inner, i = c - o * inner;
        const float *xc = x + o * dim * inner + i;
        float *yc = y + o * dim * inner + i;
        float m = -INFINITY;
        for (int64_t d = 0; d < dim; d++)
            m = fmaxf(m, xc[d * inner]);
        float s = 0.f;
        for (int64_t d = 0; d < dim; d++)
            s += expf(xc[d * inner] - m);
        float inv = 1.f / s;
        for (int64_t d = 0; d < dim; d++)
            yc[d * inner] = expf(xc[d * inner] - m) * inv;
    }
}

__global__ void layernorm_kernel(const float *x, const float *gamma, const float *beta, float *y,
                                 int64_t rows, int64_t D, float eps)
{
    __shared__ float red[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        float s = 0.f;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            s += xr[j];
        float mean = block_sum(s, red) / (float)D;
        float v = 0.f;
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x) {
            float d = xr[j] - mean;
            v += d * d;
        }
        float rstd = rsqrtf(block_sum(v, red) / (float)D + eps);
        for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
            yr[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
    }
}

/* ---- Data movement ---- */

/* A permutation copy. T is float or float4 (when the innermost output dimension is a
 * contiguous run of the input whose length is a multiple of 4: then every dimension and
 * stride is counted in float4s); I is the index type, 32-bit whenever the tensor allows,
 * since 64-bit divisions cost several times as much on the GPU. */
template <typename T, typename I> struct transpose_args {
    const T *x;
    T *y;
    int ndim;
    I n;
    I y_dims[ETFK_MAX_DIMS];
    I x_strides[ETFK_MAX_DIMS];
};

template <typename T, typename I> __global__ void transpose_kernel(const transpose_args<T, I> p)
{
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += (I)gridDim.x * blockDim.x) {
        I off = 0, rest = i;
        for (int d = p.ndim - 1; d >= 0; d--) {
            I q = rest / p.y_dims[d];
            off += (rest - q * p.y_dims[d]) * p.x_strides[d];
            rest = q;
        }
        p.y[i] = p.x[off];
    }
}

template <typename T, typename I>
cudaError_t transpose_launch(const struct etfk_transpose *p, int vec, cudaStream_t s)
{
    transpose_args<T, I> a;
    a.x = (const T *)p->x;
    a.y = (T *)p->y;
    a.ndim = p->ndim;
    a.n = (I)(p->n / vec);
    for (int d = 0; d < p->ndim; d++) {
        bool inner = d == p->ndim - 1;
        a.y_dims[d] = (I)(inner ? p->y_dims[d] / vec : p->y_dims[d]);
        a.x_strides[d] = (I)(inner ? p->x_strides[d] : p->x_strides[d] / vec);
    }
    transpose_kernel<T, I><<<grid_for(a.n), kThreads, 0, s>>>(a);
    return cudaGetLastError();
}

__global__ void pad_kernel(const struct etfk_pad p)
{
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < p.n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t off = 0, stride = 1, rest = i;
        bool inside = true;
        for (int d = p.ndim - 1; d >= 0; d--) {
            int64_t q = rest / p.y_dims[d];
            int64_t xi = rest - q * p.y_dims[d] - p.begin[d];
            inside = inside && xi >= 0 && xi < p.x_dims[d];
            off += xi * stride;
            stride *= p.x_dims[d];
            rest = q;
        }
        p.y[i] = inside ? p.x[off] : p.value;
    }
}

/* T is float, or float4 when every length and offset is a multiple of 4 floats and every
 * pointer 16-byte aligned (then all are counted in float4s); I is the index type, 32-bit
 * whenever the output allows. blockIdx.y picks the input. */
template <typename T, typename I>
__global__ void concat_kernel(const etfk_concat_src *srcs, T *y, I outer, I out_len, int vec)
{
    const etfk_concat_src src = srcs[blockIdx.y];
    const T *x = (const T *)src.x;
    I len = (I)(src.len / vec), at = (I)(src.at / vec), n = outer * len;
    for (I i = (I)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (I)gridDim.x * blockDim.x) {
        I o = i / len, j = i - o * len;
        y[o * out_len + at + j] = x[i];
    }
}

template <typename T, typename I>
void concat_launch(const etfk_concat_src *srcs, int n, int64_t max_len, float *y, int64_t outer,
                   int64_t out_len, int vec, cudaStream_t s)
{
    /* The grid's x covers the largest input; smaller ones leave blocks idle. */
    dim3 grid(grid_for(outer * max_len / vec), (unsigned)n);
    concat_kernel<T, I><<<grid, kThreads, 0, s>>>(srcs, (T *)y, (I)outer, (I)(out_len / vec), vec);
}

} // namespace

extern "C" {

cudaError_t etfk_launch_pointwise(const struct etfk_pointwise *p, cudaStream_t s)
{
    if (p->n > 0)
        pointwise_kernel<<<grid_for(p->n), kThreads, 0, s>>>(*p);
    return cudaGetLastError();
}

cudaError_t etfk_launch_pool(const struct etfk_pool *p, cudaStream_t s)
{
    int64_t n = p->NC * p->OH * p->OW;
    if (n > 0)
        pool_kernel<<<grid_for(n), kThreads, 0, s>>>(*p);
    return cudaGetLastError();
}

cudaError_t etfk_launch_row_mean(const float *x, float *y, int64_t rows, int64_t len,
                                 cudaStream_t s)
{
    if (rows > 0)
        row_mean_kernel<<<grid_for(rows * 32), kThreads, 0, s>>>(x, y, rows, len);
    return cudaGetLastError();
}

cudaError_t etfk_launch_reduce_mean(const struct etfk_reduce *p, cudaStream_t s)
{
    if (p->n_out > 0)
        reduce_mean_kernel<<<grid_for(p->n_out), kThreads, 0, s>>>(*p);
    return cudaGetLastError();
}

cudaError_t etfk_launch_softmax(const float *x, float *y, int64_t outer, int64_t dim, int64_t inner,
                                cudaStream_t s)
{
    if (outer * dim * inner > 0) {
        if (inner == 1)
            softmax_rows_kernel<<<grid_for(outer * 32), kThreads, 0, s>>>(x, y, outer, dim);
        else
            softmax_cols_kernel<<<grid_for(outer * inner), kThreads, 0, s>>>(x, y, outer, dim,
                                                                             inner);
    }
    return cudaGetLastError();
}

cudaError_t etfk_launch_layernorm(const float *x, const float *gamma, const float *beta, float *y,
                                  int64_t rows, int64_t D, float eps, cudaStream_t s)
{
    /* Rows of transformer width (hundreds to a few thousand) keep 128..512 threads busy. */
    int threads = D >= 2048 ? 512 : D >= 512 ? 256 : 128;
    if (rows > 0)
        layernorm_kernel<<<(unsigned)(rows < kMaxBlocks ? rows : kMaxBlocks), threads, 0, s>>>(
            x, gamma, beta, y, rows, D, eps);
    return cudaGetLastError();
}

cudaError_t etfk_launch_transpose(const struct etfk_transpose *p, cudaStream_t s)
{
    if (p->n <= 0 || p->ndim < 1)
        return cudaSuccess;
    int last = p->ndim - 1;
    /* Every other stride is a multiple of the contiguous run's length (the run is the
     * input's innermost dimension), hence of 4. */
    bool vec4 = p->x_strides[last] == 1 && p->y_dims[last] % 4 == 0 &&
                (uintptr_t)p->x % 16 == 0 && (uintptr_t)p->y % 16 == 0;
    bool small = p->n < INT32_MAX;
    if (vec4)
        return small ? transpose_launch<float4, int32_t>(p, 4, s)
                     : transpose_launch<float4, int64_t>(p, 4, s);
    return small ? transpose_launch<float, int32_t>(p, 1, s) : transpose_launch<float, int64_t>(p, 1, s);
}

cudaError_t etfk_launch_pad(const struct etfk_pad *p, cudaStream_t s)
{
    if (p->n > 0)
        pad_kernel<<<grid_for(p->n), kThreads, 0, s>>>(*p);
    return cudaGetLastError();
}

cudaError_t etfk_launch_concat(const struct etfk_concat_src *srcs, int n, int64_t max_len, float *y,
                               int64_t outer, int64_t out_len, bool vec4, cudaStream_t s)
{
    if (n <= 0 || outer * max_len <= 0)
        return cudaSuccess;
    bool small = outer * out_len < INT32_MAX;
    if (vec4 && small)
        concat_launch<float4, int32_t>(srcs, n, max_len, y, outer, out_len, 4, s);
    else if (vec4)
        concat_launch<float4, int64_t>(srcs, n, max_len, y, outer, out_len, 4, s);
    else if (small)
        concat_launch<float, int32_t>(srcs, n, max_len, y, outer, out_len, 1, s);
    else
        concat_launch<float, int64_t>(srcs, n, max_len, y, outer, out_len, 1, s);
    return cudaGetLastError();
}

} // extern "C"
