/* One fp32 NCHW 2-D convolution, with an optional bias / residual / relu epilogue, planned and
 * run through cuDNN's backend (graph) API instead of its legacy convolution API.
 *
 * Why: cudnnFindConvolutionForwardAlgorithm only reaches the legacy algorithms. cuDNN 9's
 * graph engines include the FFMA implicit-GEMM kernels that PyTorch runs on Hopper, 1.5-1.8x
 * faster than the legacy choice on most ResNet shapes in fp32 without TF32 (not all: a 3x3
 * convolution of 512 channels at 7x7 runs faster in the legacy WINOGRAD_NONFUSED algorithm
 * on the H100, so the CUDA device times both paths and keeps the faster). A caller plans each
 * distinct shape once at load, runs the plan on its own buffers, and falls back to the legacy path
 * on ETF_ENOTSUP.
 *
 * Threads: a plan is immutable once created; calls on one handle must come from one thread,
 * as for any cuDNN handle.
 */
#ifndef ETF_DEVICE_CUDA_CONV_GRAPH_H
#define ETF_DEVICE_CUDA_CONV_GRAPH_H

#include <cudnn.h>

#include <stdbool.h>
#include <stddef.h>

struct etf__conv_graph_desc {
    int n, c, h, w;                                     /* input x [n, c, h, w], contiguous NCHW */
    int k, kh, kw, groups;                              /* weights [k, c/groups, kh, kw] */
    int pad_h, pad_w, stride_h, stride_w, dil_h, dil_w; /* symmetric padding */
    int out_h, out_w;                                   /* y [n, k, out_h, out_w] */
    bool bias;                                          /* y += b[k] broadcast over n, h, w */
    bool residual;                                      /* y += z, z shaped like y */
    bool relu;                                          /* y = max(y, 0), last */
};

struct etf__conv_graph;

/* Builds the operation graph of *d (the convolution, then add-bias, add-z and relu nodes as
 * asked), takes the engine configs of heuristic mode A (the fallback list when A offers
 * nothing usable), drops those whose numerical notes break fp32 (tensor cores, down-converted
 * inputs, unless allow_tf32; FFT and reduced-precision reductions always) or that want more
 * than ws_limit bytes of workspace, times up to 8 finalized plans on scratch buffers of its
 * own and keeps the fastest. The timing captures each plan into a CUDA graph on h's stream
 * and synchronizes it: that stream must be one that can be captured (not the legacy default
 * stream), and a plan that cannot be captured is never chosen.
 *
 * Fused graphs: cuDNN 9.14 on the H100 runs conv + bias, + bias + relu, + z + bias and
 * + z + bias + relu (as fast as the plain convolution) and refuses relu or z without a bias;
 * a zero bias makes those fusable.
 *
 * Returns 0 with *out owned by the caller (etf__conv_graph_destroy), ETF_EINVAL for a NULL or
 * inconsistent desc, ETF_ENOTSUP when no engine runs this graph (a fused one may still have a
 * plain twin that runs), or ETF_ENOMEM / ETF_EDEVICE; every failure writes a reason to err
 * (errlen bytes, may be 0). */
int etf__conv_graph_create(cudnnHandle_t h, const struct etf__conv_graph_desc *d, bool allow_tf32,
                           size_t ws_limit, struct etf__conv_graph **out, char *err, size_t errlen);

/* Bytes of device workspace that etf__conv_graph_run needs (0: it may be NULL). */
size_t etf__conv_graph_workspace(const struct etf__conv_graph *g);

/* Enqueues the convolution on h's stream: y = relu(conv(x, w) + b + z) with the parts the
 * desc asked for (b and z NULL otherwise). Every pointer is device memory aligned to 16 bytes.
 * h may be another handle than the one that planned, on the same GPU. Never synchronizes, so
 * it may be captured into a CUDA graph. Returns 0, ETF_EINVAL for missing or misaligned
 * pointers, or ETF_EDEVICE with err filled. */
int etf__conv_graph_run(cudnnHandle_t h, const struct etf__conv_graph *g, const float *x,
                        const float *w, const float *b, const float *z, float *y, void *workspace,
                        char *err, size_t errlen);

/* Frees g and its cuDNN descriptors; NULL is a no-op. */
void etf__conv_graph_destroy(struct etf__conv_graph *g);

/* The chosen engine (global index and knob choices), its measured time and how long planning
 * took, for a log line; owned by g. */
const char *etf__conv_graph_describe(const struct etf__conv_graph *g);

#endif
