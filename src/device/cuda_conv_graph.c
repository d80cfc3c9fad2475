/* One fp32 NCHW convolution through cuDNN's backend (graph) API: see cuda_conv_graph.h.
 *
 * The descriptors of the operation graph (tensors, operations, the graph) stay alive as long
 * as the plan: the backend API does not say that a finalized plan outlives what it was built
 * from, and they cost a few hundred bytes.
 *
 * Engine choice. Heuristic mode A ranks engine configs by a model of their speed, not a
 * measurement, so the first MAX_CANDIDATES usable configs are each run and timed, as cudnnFind
 * and PyTorch's cudnn.benchmark do. Tensor-core engines
 * run fp32 convolutions in TF32 (about 10 mantissa bits in the products), so they are dropped
 * unless the caller allows TF32; FFT engines and reduced-precision reductions lose accuracy
 * with the problem size and are always dropped, as the legacy path drops the FFT algorithms.
 */
#include "device/cuda_conv_graph.h"
#include "util/try.h"

#include "etf/etf.h"

#include <cuda_runtime_api.h>

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_CANDIDATES 8
/* Heuristics list tens of configs; past this many the rest are never reached anyway. */
#define MAX_HEUR 64
#define MAX_KNOBS 16
#define TIMED_RUNS 3
/* Tensors (5 real, 3 virtual), the convolution and its descriptor, 3 pointwise operations
 * and their descriptors, the graph. */
#define MAX_OWNED 18

/* Variant-pack ids of the real tensors; virtual ones count up from UID_VIRTUAL. */
enum { UID_X = 1, UID_W, UID_Y, UID_B, UID_Z, UID_VIRTUAL = 100 };

struct etf__conv_graph {
    cudnnBackendDescriptor_t owned[MAX_OWNED]; /* the graph and what it is made of */
    int n_owned;
    cudnnBackendDescriptor_t graph, cfg, plan;
    bool bias, residual;
    size_t workspace;
    char what[256]; /* the chosen engine, its time and the planning time, for a log line */
};

/* ---- Errors ---- */

struct cg_err {
    char *buf;
    size_t len;
};

__attribute__((format(printf, 3, 4))) static int fail(struct cg_err *e, int code, const char *fmt,
                                                      ...)
{
    if (e->buf && e->len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(e->buf, e->len, fmt, ap);
        va_end(ap);
    }
    return code;
}

static int fail_cudnn(struct cg_err *e, const char *what, cudnnStatus_t st)
{
    /* cuDNN 9 keeps a readable reason beside the status. */
    char detail[200] = "";
    cudnnGetLastErrorString(detail, sizeof detail);
    int code = CUDNN_STATUS_CATEGORY(st) == CUDNN_STATUS_NOT_SUPPORTED ? ETF_ENOTSUP
               : st == CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED ||
                       st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED
                   ? ETF_ENOMEM
                   : ETF_EDEVICE;
    return fail(e, code, "%s failed: %s%s%.200s%s", what, cudnnGetErrorString(st),
                detail[0] ? " (" : "", detail, detail[0] ? ")" : "");
}

static int fail_cuda(struct cg_err *e, const char *what, cudaError_t st)
{
    return fail(e, st == cudaErrorMemoryAllocation ? ETF_ENOMEM : ETF_EDEVICE, "%s failed: %s",
                what, cudaGetErrorString(st));
}

#define CK(e, what, call)                                                                          \
    do {                                                                                           \
        cudnnStatus_t st_ = (call);                                                                \
        if (st_ != CUDNN_STATUS_SUCCESS)                                                           \
            return fail_cudnn((e), (what), st_);                                                   \
    } while (0)
/* Sets one attribute; a failure names it. */
#define SET(e, desc, name, type, count, value)                                                     \
    CK(e, "setting " #name, cudnnBackendSetAttribute((desc), (name), (type), (count), (value)))

/* ---- The operation graph ---- */

/* A new descriptor that g owns until etf__conv_graph_destroy. */
static int own(struct etf__conv_graph *g, struct cg_err *e, cudnnBackendDescriptorType_t type,
               cudnnBackendDescriptor_t *out)
{
    if (g->n_owned == MAX_OWNED)
        return fail(e, ETF_EINVAL, "conv graph: more than %d descriptors", MAX_OWNED);
    CK(e, "cudnnBackendCreateDescriptor", cudnnBackendCreateDescriptor(type, out));
    g->owned[g->n_owned++] = *out;
    return 0;
}

/* A contiguous fp32 NCHW tensor. 16-byte alignment lets engines use vector loads; run()
 * checks that the pointers keep the promise. */
static int tensor(struct etf__conv_graph *g, struct cg_err *e, int64_t uid, const int64_t dims[4],
                  bool is_virtual, cudnnBackendDescriptor_t *out)
{
    int64_t strides[4] = {dims[1] * dims[2] * dims[3], dims[2] * dims[3], dims[3], 1};
    int64_t align = 16;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    TRY(own(g, e, CUDNN_BACKEND_TENSOR_DESCRIPTOR, out));
    SET(e, *out, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid);
    SET(e, *out, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type);
    SET(e, *out, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align);
    SET(e, *out, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims);
    SET(e, *out, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides);
    SET(e, *out, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &is_virtual);
    CK(e, "finalizing a tensor", cudnnBackendFinalize(*out));
    return 0;
}

/* x (*) w -> y. Groups need no attribute: they follow from c over the filter's channels. */
static int conv_op(struct etf__conv_graph *g, struct cg_err *e,
                   const struct etf__conv_graph_desc *d, cudnnBackendDescriptor_t x,
                   cudnnBackendDescriptor_t w, cudnnBackendDescriptor_t y,
                   cudnnBackendDescriptor_t *op)
{
    int64_t dims = 2, pad[2] = {d->pad_h, d->pad_w}, stride[2] = {d->stride_h, d->stride_w},
            dil[2] = {d->dil_h, d->dil_w};
    cudnnDataType_t comp = CUDNN_DATA_FLOAT;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    cudnnBackendDescriptor_t conv;
    TRY(own(g, e, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, &conv));
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &dims);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &comp);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pad);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, stride);
    SET(e, conv, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, dil);
    CK(e, "finalizing the convolution descriptor", cudnnBackendFinalize(conv));

    float alpha = 1.f, beta = 0.f;
    TRY(own(g, e, CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, op));
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w);
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_TYPE_BACKEND_DESCRIPTOR,
        1, &conv);
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha);
    SET(e, *op, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta);
    CK(e, "finalizing the convolution", cudnnBackendFinalize(*op));
    return 0;
}

/* y = mode(x, b), b NULL for a unary mode; computed in fp32. */
static int pointwise(struct etf__conv_graph *g, struct cg_err *e, cudnnPointwiseMode_t mode,
                     cudnnBackendDescriptor_t x, cudnnBackendDescriptor_t b,
                     cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t *op)
{
    cudnnDataType_t prec = CUDNN_DATA_FLOAT;
    cudnnBackendDescriptor_t pw;
    TRY(own(g, e, CUDNN_BACKEND_POINTWISE_DESCRIPTOR, &pw));
    SET(e, pw, CUDNN_ATTR_POINTWISE_MODE, CUDNN_TYPE_POINTWISE_MODE, 1, &mode);
    SET(e, pw, CUDNN_ATTR_POINTWISE_MATH_PREC, CUDNN_TYPE_DATA_TYPE, 1, &prec);
    CK(e, "finalizing a pointwise descriptor", cudnnBackendFinalize(pw));
    TRY(own(g, e, CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR, op));
    SET(e, *op, CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
        &pw);
    SET(e, *op, CUDNN_ATTR_OPERATION_POINTWISE_XDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x);
    if (b)
        SET(e, *op, CUDNN_ATTR_OPERATION_POINTWISE_BDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &b);
    SET(e, *op, CUDNN_ATTR_OPERATION_POINTWISE_YDESC, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y);
    CK(e, "finalizing a pointwise operation", cudnnBackendFinalize(*op));
    return 0;
}

/* The output of the next node: y for the last one, else a new virtual tensor. */
static int node_out(struct etf__conv_graph *g, struct cg_err *e, int *left, const int64_t dims[4],
                    cudnnBackendDescriptor_t y, cudnnBackendDescriptor_t *out)
{
    if (--*left == 0) {
        *out = y;
        return 0;
    }
    return tensor(g, e, UID_VIRTUAL + *left, dims, true, out);
}

/* conv -> add z -> add b -> relu, with the nodes the desc asks for. The residual comes before
 * the bias because that is the order of the fused pattern cuDNN's engines match, the legacy
 * cudnnConvolutionBiasActivationForward's act(conv + z + bias). */
static int build_graph(struct etf__conv_graph *g, cudnnHandle_t h, struct cg_err *e,
                       const struct etf__conv_graph_desc *d)
{
    const int64_t xd[4] = {d->n, d->c, d->h, d->w}, wd[4] = {d->k, d->c / d->groups, d->kh, d->kw},
                  yd[4] = {d->n, d->k, d->out_h, d->out_w}, bd[4] = {1, d->k, 1, 1};
    const struct {
        bool on;
        int64_t uid;
        const int64_t *dims;
    } adds[2] = {{d->residual, UID_Z, yd}, {d->bias, UID_B, bd}};
    cudnnBackendDescriptor_t x, w, y, t, next, ops[4];
    int n_ops = 0, left = 1 + d->bias + d->residual + d->relu;
    TRY(tensor(g, e, UID_X, xd, false, &x));
    TRY(tensor(g, e, UID_W, wd, false, &w));
    TRY(tensor(g, e, UID_Y, yd, false, &y));
    TRY(node_out(g, e, &left, yd, y, &t));
    TRY(conv_op(g, e, d, x, w, t, &ops[n_ops++]));
    for (int i = 0; i < 2; i++) {
        cudnnBackendDescriptor_t operand;
        if (!adds[i].on)
            continue;
        TRY(tensor(g, e, adds[i].uid, adds[i].dims, false, &operand));
        TRY(node_out(g, e, &left, yd, y, &next));
        TRY(pointwise(g, e, CUDNN_POINTWISE_ADD, t, operand, next, &ops[n_ops++]));
        t = next;
    }
    if (d->relu) {
        TRY(node_out(g, e, &left, yd, y, &next));
        TRY(pointwise(g, e, CUDNN_POINTWISE_RELU_FWD, t, NULL, next, &ops[n_ops++]));
    }
    TRY(own(g, e, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, &g->graph));
    SET(e, g->graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_ops, ops);
    SET(e, g->graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h);
    /* NOT_SUPPORTED here (ETF_ENOTSUP) means no engine at all takes this pattern. */
    CK(e, "finalizing the operation graph", cudnnBackendFinalize(g->graph));
    return 0;
}

/* ---- Candidates ---- */

struct cand {
    cudnnBackendDescriptor_t cfg, plan;
    int64_t engine;
    size_t workspace;
    float ms;
};

/* What the heuristics offered and why each was passed over, for an ENOTSUP message. */
struct planner {
    cudnnHandle_t h;
    bool allow_tf32;
    size_t ws_limit;
    struct cand cand[MAX_CANDIDATES];
    int n_cand, offered, imprecise, too_big, refused;
};

/* Whether cfg's engine keeps fp32 accuracy (see the top of the file); its global index. */
static bool precise_enough(cudnnBackendDescriptor_t cfg, bool allow_tf32, int64_t *engine)
{
    cudnnBackendDescriptor_t eng;
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINE_DESCRIPTOR, &eng))
        return false;
    cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t n = 0, count;
    bool ok =
        cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                 &count, &eng) == 0 &&
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                 CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) == 0 &&
        cudnnBackendGetAttribute(eng, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &count,
                                 engine) == 0;
    for (int64_t i = 0; ok && i < n && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++)
        switch (notes[i]) {
        case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
            ok = allow_tf32;
            break;
        case CUDNN_NUMERICAL_NOTE_FFT:
        case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION:
            ok = false;
            break;
        default:
            break;
        }
    cudnnBackendDestroyDescriptor(eng);
    return ok;
}

/* Makes cfg a candidate if it is precise enough, finalizes into a plan and fits the workspace
 * limit; true when p took it over. */
static bool consider(struct planner *p, cudnnBackendDescriptor_t cfg)
{
    struct cand c = {.cfg = cfg};
    int64_t ws = 0, count;
    p->offered++;
    if (!precise_enough(cfg, p->allow_tf32, &c.engine)) {
        p->imprecise++;
        return false;
    }
    if (cudnnBackendCreateDescriptor(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, &c.plan)) {
        p->refused++;
        return false;
    }
    if (cudnnBackendSetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1,
                                 &p->h) ||
        cudnnBackendSetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &cfg) ||
        cudnnBackendFinalize(c.plan) ||
        cudnnBackendGetAttribute(c.plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64,
                                 1, &count, &ws)) {
        p->refused++;
        cudnnBackendDestroyDescriptor(c.plan);
        return false;
    }
    if (ws < 0 || (uint64_t)ws > p->ws_limit) {
        p->too_big++;
        cudnnBackendDestroyDescriptor(c.plan);
        return false;
    }
    c.workspace = (size_t)ws;
    p->cand[p->n_cand++] = c;
    return true;
}

/* Adds the usable configs of one heuristic mode to p's candidates, best ranked first. A mode
 * that cannot rank this graph (the fallback list of a fused one) adds none. */
static int collect(struct planner *p, cudnnBackendDescriptor_t graph, cudnnBackendHeurMode_t mode,
                   struct cg_err *e)
{
    cudnnBackendDescriptor_t heur, cfgs[MAX_HEUR] = {0};
    int64_t n = 0;
    int rc = 0;
    CK(e, "cudnnBackendCreateDescriptor",
       cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, &heur));
    if (cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH,
                                 CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &graph) ||
        cudnnBackendSetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1,
                                 &mode) ||
        cudnnBackendFinalize(heur) ||
        cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 0, &n, NULL))
        goto out_heur;
    if (n > MAX_HEUR)
        n = MAX_HEUR;
    /* The results are copied into descriptors the caller creates. */
    for (int64_t i = 0; i < n; i++) {
        cudnnStatus_t st =
            cudnnBackendCreateDescriptor(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, &cfgs[i]);
        if (st) {
            rc = fail_cudnn(e, "cudnnBackendCreateDescriptor", st);
            goto out_cfgs;
        }
    }
    if (cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                 n, &n, cfgs))
        goto out_cfgs;
    for (int64_t i = 0; i < n && p->n_cand < MAX_CANDIDATES; i++)
        if (consider(p, cfgs[i]))
            cfgs[i] = NULL;
out_cfgs:
    for (int i = 0; i < MAX_HEUR; i++)
        if (cfgs[i])
            cudnnBackendDestroyDescriptor(cfgs[i]);
out_heur:
    cudnnBackendDestroyDescriptor(heur);
    return rc;
}

/* A variant pack binding the n tensors uids to ptrs, and the workspace; the caller destroys
 * it. */
static cudnnStatus_t make_pack(int n, const int64_t *uids, void **ptrs, void *workspace,
                               cudnnBackendDescriptor_t *pack)
{
    cudnnStatus_t st = cudnnBackendCreateDescriptor(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, pack);
    if (st)
        return st;
    if ((st = cudnnBackendSetAttribute(*pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64,
                                       n, uids)) ||
        (st = cudnnBackendSetAttribute(*pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS,
                                       CUDNN_TYPE_VOID_PTR, n, ptrs)) ||
        (st = cudnnBackendSetAttribute(*pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE,
                                       CUDNN_TYPE_VOID_PTR, 1, &workspace)) ||
        (st = cudnnBackendFinalize(*pack)))
        cudnnBackendDestroyDescriptor(*pack);
    return st;
}

/* The ids of the real tensors of g, in the order of their pointers. */
static int graph_uids(const struct etf__conv_graph *g, int64_t uids[5])
{
    int n = 0;
    uids[n++] = UID_X;
    uids[n++] = UID_W;
    uids[n++] = UID_Y;
    if (g->bias)
        uids[n++] = UID_B;
    if (g->residual)
        uids[n++] = UID_Z;
    return n;
}

/* The mean GPU time of one run of plan in ms, INFINITY when it fails to run or to be
 * captured. The runs are captured into a CUDA graph and replayed, as the device replays its
 * kernels: timed as enqueued, a small convolution would measure the host's cost of launching
 * it rather than the kernel's. */
static float time_plan(cudnnHandle_t h, cudaStream_t s, cudnnBackendDescriptor_t plan,
                       cudnnBackendDescriptor_t pack, cudaEvent_t start, cudaEvent_t stop)
{
    cudaGraph_t graph = NULL;
    cudaGraphExec_t exec = NULL;
    float ms = INFINITY;
    /* The first run loads the kernel's module and proves that the plan runs. */
    if (cudnnBackendExecute(h, plan, pack) || cudaStreamSynchronize(s) ||
        cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal))
        goto out;
    bool ran = true;
    for (int r = 0; r < TIMED_RUNS && ran; r++)
        ran = cudnnBackendExecute(h, plan, pack) == CUDNN_STATUS_SUCCESS;
    if (cudaStreamEndCapture(s, &graph) || !ran || cudaGraphInstantiate(&exec, graph, 0) ||
        cudaGraphLaunch(exec, s) /* warm-up */ || cudaEventRecord(start, s) ||
        cudaGraphLaunch(exec, s) || cudaEventRecord(stop, s) || cudaEventSynchronize(stop) ||
        cudaEventElapsedTime(&ms, start, stop))
        ms = INFINITY;
    else
        ms /= TIMED_RUNS;
out:
    if (exec)
        cudaGraphExecDestroy(exec);
    if (graph)
        cudaGraphDestroy(graph);
    cudaGetLastError(); /* a failed capture leaves its error behind */
    return ms;
}

/* Times every candidate on zero-filled scratch buffers (FFMA kernels' speed does not depend
 * on the values). Needs a stream that can be captured: not the legacy default stream. */
static int time_candidates(struct planner *p, const struct etf__conv_graph *g,
                           const struct etf__conv_graph_desc *d, struct cg_err *e)
{
    size_t y_elems = (size_t)d->n * d->k * d->out_h * d->out_w, ws = 0;
    size_t bytes[6] = {(size_t)d->n * d->c * d->h * d->w * sizeof(float),
                       (size_t)d->k * (d->c / d->groups) * d->kh * d->kw * sizeof(float),
                       y_elems * sizeof(float), d->bias ? d->k * sizeof(float) : 0,
                       d->residual ? y_elems * sizeof(float) : 0};
    for (int i = 0; i < p->n_cand; i++)
        ws = p->cand[i].workspace > ws ? p->cand[i].workspace : ws;
    bytes[5] = ws;
    void *buf[6] = {0};
    cudaEvent_t start = NULL, stop = NULL;
    cudaStream_t stream;
    cudnnBackendDescriptor_t pack = NULL;
    int64_t uids[5];
    int n = graph_uids(g, uids), rc = 0;
    cudnnStatus_t cst = cudnnGetStream(p->h, &stream);
    if (cst)
        return fail_cudnn(e, "cudnnGetStream", cst);
    cudaError_t st = cudaSuccess;
    for (int i = 0; i < 6 && !st; i++)
        if (bytes[i] && !(st = cudaMalloc(&buf[i], bytes[i])))
            st = cudaMemsetAsync(buf[i], 0, bytes[i], stream);
    if (!st)
        st = cudaEventCreate(&start);
    if (!st)
        st = cudaEventCreate(&stop);
    if (st) {
        rc = fail_cuda(e, "allocating the timing buffers", st);
        goto out;
    }
    /* Pointers in uid order: x, w, y, then b and z where the graph has them. */
    void *ptrs[5] = {buf[0], buf[1], buf[2], g->bias ? buf[3] : buf[4], buf[4]};
    if ((cst = make_pack(n, uids, ptrs, buf[5], &pack))) {
        rc = fail_cudnn(e, "making a variant pack", cst);
        pack = NULL;
        goto out;
    }
    for (int i = 0; i < p->n_cand; i++)
        p->cand[i].ms = time_plan(p->h, stream, p->cand[i].plan, pack, start, stop);
    if ((st = cudaStreamSynchronize(stream)))
        rc = fail_cuda(e, "running the candidate plans", st);
out:
    if (pack)
        cudnnBackendDestroyDescriptor(pack);
    if (stop)
        cudaEventDestroy(stop);
    if (start)
        cudaEventDestroy(start);
    for (int i = 0; i < 6; i++)
        cudaFree(buf[i]);
    return rc;
}

/* "engine 12 {2=3,24=71}" from the chosen config's engine and knob choices. */
static void describe_cfg(struct etf__conv_graph *g, int64_t engine, float ms, int timed,
                         double plan_ms)
{
    cudnnBackendDescriptor_t knobs[MAX_KNOBS] = {0};
    int64_t n = 0, count;
    size_t len = (size_t)snprintf(g->what, sizeof g->what, "engine %lld {", (long long)engine);
    bool made = true;
    for (int i = 0; i < MAX_KNOBS && made; i++)
        made = cudnnBackendCreateDescriptor(CUDNN_BACKEND_KNOB_CHOICE_DESCRIPTOR, &knobs[i]) ==
               CUDNN_STATUS_SUCCESS;
    if (made && cudnnBackendGetAttribute(g->cfg, CUDNN_ATTR_ENGINECFG_KNOB_CHOICES,
                                         CUDNN_TYPE_BACKEND_DESCRIPTOR, MAX_KNOBS, &n, knobs) == 0)
        for (int64_t i = 0; i < n && i < MAX_KNOBS && len < sizeof g->what; i++) {
            cudnnBackendKnobType_t type;
            int64_t value;
            if (cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_TYPE,
                                         CUDNN_TYPE_KNOB_TYPE, 1, &count, &type) == 0 &&
                cudnnBackendGetAttribute(knobs[i], CUDNN_ATTR_KNOB_CHOICE_KNOB_VALUE,
                                         CUDNN_TYPE_INT64, 1, &count, &value) == 0)
                len += (size_t)snprintf(g->what + len, sizeof g->what - len, "%s%d=%lld",
                                        i ? "," : "", (int)type, (long long)value);
        }
    for (int i = 0; i < MAX_KNOBS; i++)
        if (knobs[i])
            cudnnBackendDestroyDescriptor(knobs[i]);
    if (len < sizeof g->what)
        snprintf(g->what + len, sizeof g->what - len,
                 "} %.1f us, fastest of %d timed, planned in %.0f ms", ms * 1e3, timed, plan_ms);
}

/* ---- The interface ---- */

/* The output extent of a convolution along one axis (cuDNN's floor rule). */
static long long out_size(int in, int pad, int k, int dil, int stride)
{
    return ((long long)in + 2LL * pad - ((long long)dil * (k - 1) + 1)) / stride + 1;
}

static bool desc_valid(const struct etf__conv_graph_desc *d, struct cg_err *e)
{
    if (d->n < 1 || d->c < 1 || d->h < 1 || d->w < 1 || d->k < 1 || d->kh < 1 || d->kw < 1 ||
        d->groups < 1 || d->pad_h < 0 || d->pad_w < 0 || d->stride_h < 1 || d->stride_w < 1 ||
        d->dil_h < 1 || d->dil_w < 1) {
        fail(e, ETF_EINVAL,
             "conv graph: sizes, strides, dilations and groups must be >= 1 and "
             "paddings >= 0");
        return false;
    }
    if (d->c % d->groups || d->k % d->groups) {
        fail(e, ETF_EINVAL, "conv graph: %d groups do not divide %d input and %d output channels",
             d->groups, d->c, d->k);
        return false;
    }
    long long oh = out_size(d->h, d->pad_h, d->kh, d->dil_h, d->stride_h),
              ow = out_size(d->w, d->pad_w, d->kw, d->dil_w, d->stride_w);
    if (oh < 1 || ow < 1 || oh != d->out_h || ow != d->out_w) {
        fail(e, ETF_EINVAL, "conv graph: the output is %dx%d, the convolution makes %lldx%lld",
             d->out_h, d->out_w, oh, ow);
        return false;
    }
    return true;
}

int etf__conv_graph_create(cudnnHandle_t h, const struct etf__conv_graph_desc *d, bool allow_tf32,
                           size_t ws_limit, struct etf__conv_graph **out, char *err, size_t errlen)
{
    struct cg_err e = {err, errlen};
    if (!d || !out)
        return fail(&e, ETF_EINVAL, "conv graph: no %s", d ? "place for the plan" : "desc");
    *out = NULL;
    if (!desc_valid(d, &e))
        return ETF_EINVAL;
    if (!h)
        return fail(&e, ETF_EINVAL, "conv graph: no cuDNN handle");
    uint64_t t0 = etf_host_ns();
    struct etf__conv_graph *g = calloc(1, sizeof *g);
    struct planner *p = calloc(1, sizeof *p);
    int rc = ETF_ENOMEM;
    if (!g || !p) {
        fail(&e, rc, "conv graph: out of memory");
        goto out;
    }
    g->bias = d->bias;
    g->residual = d->residual;
    *p = (struct planner){.h = h, .allow_tf32 = allow_tf32, .ws_limit = ws_limit};
    if ((rc = build_graph(g, h, &e, d)) || (rc = collect(p, g->graph, CUDNN_HEUR_MODE_A, &e)))
        goto out;
    if (p->n_cand == 0 && (rc = collect(p, g->graph, CUDNN_HEUR_MODE_FALLBACK, &e)))
        goto out;
    if (p->n_cand && (rc = time_candidates(p, g, d, &e)))
        goto out;
    int best = -1, timed = 0;
    for (int i = 0; i < p->n_cand; i++) {
        timed += isfinite(p->cand[i].ms);
        if (isfinite(p->cand[i].ms) && (best < 0 || p->cand[i].ms < p->cand[best].ms))
            best = i;
    }
    if (best < 0) {
        rc = fail(&e, ETF_ENOTSUP,
                  "conv graph: no engine runs it: %d configs offered, %d too imprecise for fp32, "
                  "%d over the workspace limit, %d refused, %d failed to run or be captured",
                  p->offered, p->imprecise, p->too_big, p->refused, p->n_cand);
        goto out;
    }
    struct cand c = p->cand[best];
    p->cand[best] = (struct cand){0}; /* g owns it now */
    g->cfg = c.cfg;
    g->plan = c.plan;
    g->workspace = c.workspace;
    describe_cfg(g, c.engine, c.ms, timed, (double)(etf_host_ns() - t0) / 1e6);
    *out = g;
    g = NULL;
    rc = 0;
out:
    for (int i = 0; p && i < p->n_cand; i++) {
        if (p->cand[i].plan)
            cudnnBackendDestroyDescriptor(p->cand[i].plan);
        if (p->cand[i].cfg)
            cudnnBackendDestroyDescriptor(p->cand[i].cfg);
    }
    free(p);
    etf__conv_graph_destroy(g);
    return rc;
}

size_t etf__conv_graph_workspace(const struct etf__conv_graph *g)
{
    return g->workspace;
}

int etf__conv_graph_run(cudnnHandle_t h, const struct etf__conv_graph *g, const float *x,
                        const float *w, const float *b, const float *z, float *y, void *workspace,
                        char *err, size_t errlen)
{
    struct cg_err e = {err, errlen};
    void *ptrs[5] = {(void *)x, (void *)w, y, g->bias ? (void *)b : (void *)z, (void *)z};
    int64_t uids[5];
    int n = graph_uids(g, uids);
    if (!x || !w || !y || (g->bias && !b) || (g->residual && !z) || (g->workspace && !workspace))
        return fail(&e, ETF_EINVAL, "conv graph: a pointer that the plan needs is NULL");
    for (int i = 0; i < n; i++)
        if ((uintptr_t)ptrs[i] % 16)
            return fail(&e, ETF_EINVAL, "conv graph: tensor %lld is not 16-byte aligned",
                        (long long)uids[i]);
    /* A pack per call costs a few microseconds of host time, and the device captures each
     * kernel once: no cache of packs. */
    cudnnBackendDescriptor_t pack;
    cudnnStatus_t st = make_pack(n, uids, ptrs, workspace, &pack);
    if (st)
        return fail_cudnn(&e, "making a variant pack", st) == ETF_ENOMEM ? ETF_ENOMEM : ETF_EDEVICE;
    st = cudnnBackendExecute(h, g->plan, pack);
    cudnnBackendDestroyDescriptor(pack);
    if (st)
        return fail_cudnn(&e, "cudnnBackendExecute", st) == ETF_ENOMEM ? ETF_ENOMEM : ETF_EDEVICE;
    return 0;
}

void etf__conv_graph_destroy(struct etf__conv_graph *g)
{
    if (!g)
        return;
    if (g->plan)
        cudnnBackendDestroyDescriptor(g->plan);
    if (g->cfg)
        cudnnBackendDestroyDescriptor(g->cfg);
    while (g->n_owned > 0)
        cudnnBackendDestroyDescriptor(g->owned[--g->n_owned]);
    free(g);
}

const char *etf__conv_graph_describe(const struct etf__conv_graph *g)
{
    return g->what;
}
