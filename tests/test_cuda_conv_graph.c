/* Tests of the graph-API convolution (src/device/cuda_conv_graph.c): one convolution at a
 * time, with and without its epilogue, against a naive CPU reference accumulated in double.
 *
 * Outputs match when every element is within 1e-5 * max|ref| of the reference: fp32 without
 * TF32, which a tensor-core engine would miss by orders of magnitude.
 *
 * A fused graph that cuDNN refuses (ETF_ENOTSUP) is an allowed answer: the test then does
 * what the device does, runs the plain convolution graph and applies the epilogue after it
 * (on the host here), and says so in its output.
 *
 * On a machine without a GPU every test that needs one is skipped; the refusal of bad
 * descriptions runs everywhere, since it comes before any cuDNN call.
 */
#include "support.h"

#include "device/cuda_conv_graph.h"
#include "etf/etf.h"

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include <math.h>

static bool have_gpu;
static cudnnHandle_t handle;
static cudaStream_t stream;

/* Skips the calling test on a machine without a GPU. */
#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!have_gpu)                                                                             \
            skip();                                                                                \
    } while (0)

#define CK_CUDA(call) assert_int_equal((call), cudaSuccess)

/* How a case's plan is run: directly on the planning handle, captured into a CUDA graph and
 * replayed, or through a second handle on a stream of its own. */
enum run_mode { DIRECT, CAPTURED, OTHER_HANDLE };

static float rnd(uint32_t *s)
{
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) & 0xffff) / 32768.f - 1.f;
}

static float *random_buf(size_t n, uint32_t seed)
{
    float *p = malloc(n * sizeof *p);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = rnd(&seed);
    return p;
}

static size_t x_elems(const struct etf__conv_graph_desc *d)
{
    return (size_t)d->n * d->c * d->h * d->w;
}

static size_t w_elems(const struct etf__conv_graph_desc *d)
{
    return (size_t)d->k * (d->c / d->groups) * d->kh * d->kw;
}

static size_t y_elems(const struct etf__conv_graph_desc *d)
{
    return (size_t)d->n * d->k * d->out_h * d->out_w;
}

/* y = conv(x, w) (+ b) (+ z), then relu, as the desc asks; accumulated in double. b and z are
 * used when non-NULL, whatever the desc says, so that the test can apply an epilogue to the
 * output of a plain plan. */
static void ref_conv(const struct etf__conv_graph_desc *d, const float *x, const float *w,
                     const float *b, const float *z, bool relu, float *y)
{
    int cpg = d->c / d->groups, kpg = d->k / d->groups;
    size_t i = 0;
    for (int n = 0; n < d->n; n++)
        for (int k = 0; k < d->k; k++)
            for (int oh = 0; oh < d->out_h; oh++)
                for (int ow = 0; ow < d->out_w; ow++, i++) {
                    double acc = b ? b[k] : 0.;
                    for (int ci = 0; ci < cpg; ci++)
                        for (int r = 0; r < d->kh; r++)
                            for (int s = 0; s < d->kw; s++) {
                                int ih = oh * d->stride_h - d->pad_h + r * d->dil_h;
                                int iw = ow * d->stride_w - d->pad_w + s * d->dil_w;
                                if (ih < 0 || ih >= d->h || iw < 0 || iw >= d->w)
                                    continue;
                                int c = k / kpg * cpg + ci;
                                acc += (double)x[(((size_t)n * d->c + c) * d->h + ih) * d->w + iw] *
                                       w[(((size_t)k * cpg + ci) * d->kh + r) * d->kw + s];
                            }
                    if (z)
                        acc += z[i];
                    y[i] = relu && acc < 0. ? 0.f : (float)acc;
                }
}

/* The device copies of one case's tensors (b, z NULL when the case has none). */
struct dbufs {
    float *x, *w, *b, *z, *y;
    void *ws;
    size_t y_bytes;
};

static float *to_device(const float *h, size_t n)
{
    float *p = NULL;
    if (!h)
        return NULL;
    CK_CUDA(cudaMalloc((void **)&p, n * sizeof *p));
    CK_CUDA(cudaMemcpy(p, h, n * sizeof *p, cudaMemcpyHostToDevice));
    return p;
}

/* Runs g once on db in the given mode and waits for it. y is filled with NaNs first, so that
 * a run that writes nothing cannot pass. */
static void run_plan(const struct etf__conv_graph *g, enum run_mode mode, const struct dbufs *db)
{
    char err[300] = "";
    int rc = 0;
    CK_CUDA(cudaMemset(db->y, 0xff, db->y_bytes));
    CK_CUDA(cudaDeviceSynchronize()); /* before work on streams that do not wait for it */
    if (mode == DIRECT) {
        rc = etf__conv_graph_run(handle, g, db->x, db->w, db->b, db->z, db->y, db->ws, err,
                                 sizeof err);
        CK_CUDA(cudaStreamSynchronize(stream));
    } else if (mode == CAPTURED) {
        cudaGraph_t graph;
        cudaGraphExec_t exec;
        CK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
        rc = etf__conv_graph_run(handle, g, db->x, db->w, db->b, db->z, db->y, db->ws, err,
                                 sizeof err);
        CK_CUDA(cudaStreamEndCapture(stream, &graph));
        if (rc)
            fail_msg("run under capture: %s (%s)", err, etf_strerror(rc));
        CK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
        /* Twice: a replay must not depend on what the capture or the first replay left. */
        CK_CUDA(cudaGraphLaunch(exec, stream));
        CK_CUDA(cudaGraphLaunch(exec, stream));
        CK_CUDA(cudaStreamSynchronize(stream));
        CK_CUDA(cudaGraphExecDestroy(exec));
        CK_CUDA(cudaGraphDestroy(graph));
    } else {
        cudnnHandle_t h2;
        cudaStream_t s2;
        assert_int_equal(cudnnCreate(&h2), CUDNN_STATUS_SUCCESS);
        CK_CUDA(cudaStreamCreateWithFlags(&s2, cudaStreamNonBlocking));
        assert_int_equal(cudnnSetStream(h2, s2), CUDNN_STATUS_SUCCESS);
        rc = etf__conv_graph_run(h2, g, db->x, db->w, db->b, db->z, db->y, db->ws, err, sizeof err);
        CK_CUDA(cudaStreamSynchronize(s2));
        cudnnDestroy(h2);
        CK_CUDA(cudaStreamDestroy(s2));
    }
    if (rc)
        fail_msg("run: %s (%s)", err, etf_strerror(rc));
}

static struct etf__conv_graph *plan(const struct etf__conv_graph_desc *d, int *rc, char *err,
                                    size_t errlen)
{
    struct etf__conv_graph *g = NULL;
    *rc = etf__conv_graph_create(handle, d, false, (size_t)256 << 20, &g, err, errlen);
    assert_true(*rc == 0 ? g != NULL : g == NULL);
    return g;
}

/* Largest |got - ref| over max|ref|; fails past 1e-5. */
static double expect_close(const float *got, const float *ref, size_t n, const char *what)
{
    double maxabs = 0., maxerr = 0.;
    for (size_t i = 0; i < n; i++)
        maxabs = fmax(maxabs, fabs(ref[i]));
    maxabs = fmax(maxabs, 1e-6);
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        if (!(err <= 1e-5 * maxabs))
            fail_msg("%s: element %zu is %.7g, reference %.7g (tolerance %.3g)", what, i,
                     (double)got[i], (double)ref[i], 1e-5 * maxabs);
        maxerr = fmax(maxerr, err);
    }
    return maxerr / maxabs;
}

/* Plans base with batch n and the given epilogue, runs it and compares with the reference. */
static void check(const char *name, struct etf__conv_graph_desc d, int n, bool bias, bool residual,
                  bool relu, enum run_mode mode)
{
    d.n = n;
    d.bias = bias;
    d.residual = residual;
    d.relu = relu;
    char what[160], err[400] = "";
    snprintf(what, sizeof what, "%s n=%d%s%s%s%s", name, n, bias ? " +bias" : "",
             residual ? " +z" : "", relu ? " relu" : "",
             mode == CAPTURED       ? " (captured)"
             : mode == OTHER_HANDLE ? " (other handle)"
                                    : "");
    float *x = random_buf(x_elems(&d), 1u), *w = random_buf(w_elems(&d), 2u),
          *b = bias ? random_buf((size_t)d.k, 3u) : NULL,
          *z = residual ? random_buf(y_elems(&d), 4u) : NULL, *ref = malloc(y_elems(&d) * 4),
          *got = malloc(y_elems(&d) * 4);
    assert_non_null(ref);
    assert_non_null(got);
    ref_conv(&d, x, w, b, z, relu, ref);

    int rc;
    struct etf__conv_graph *g = plan(&d, &rc, err, sizeof err);
    /* A refused fused graph: the plain one must run, and the epilogue follows it. */
    bool fused_refused = rc == ETF_ENOTSUP && (bias || residual || relu);
    if (fused_refused) {
        print_message("%s: fused graph refused (%s); checking the plain graph + epilogue\n", what,
                      err);
        struct etf__conv_graph_desc plain = d;
        plain.bias = plain.residual = plain.relu = false;
        g = plan(&plain, &rc, err, sizeof err);
    }
    if (rc)
        fail_msg("%s: create: %s (%s)", what, err, etf_strerror(rc));

    struct dbufs db = {.x = to_device(x, x_elems(&d)),
                       .w = to_device(w, w_elems(&d)),
                       .b = fused_refused ? NULL : to_device(b, (size_t)d.k),
                       .z = fused_refused ? NULL : to_device(z, y_elems(&d)),
                       .y_bytes = y_elems(&d) * sizeof(float)};
    CK_CUDA(cudaMalloc((void **)&db.y, db.y_bytes));
    if (etf__conv_graph_workspace(g))
        CK_CUDA(cudaMalloc(&db.ws, etf__conv_graph_workspace(g)));
    run_plan(g, mode, &db);
    CK_CUDA(cudaMemcpy(got, db.y, db.y_bytes, cudaMemcpyDeviceToHost));
    if (fused_refused)
        for (size_t i = 0; i < y_elems(&d); i++) {
            float v = got[i] + (b ? b[i / ((size_t)d.out_h * d.out_w) % (size_t)d.k] : 0.f) +
                      (z ? z[i] : 0.f);
            got[i] = relu && v < 0.f ? 0.f : v;
        }
    double rel = expect_close(got, ref, y_elems(&d), what);
    print_message("%s: %s; max error %.2g of max|ref|\n", what, etf__conv_graph_describe(g), rel);

    etf__conv_graph_destroy(g);
    cudaFree(db.x);
    cudaFree(db.w);
    cudaFree(db.b);
    cudaFree(db.z);
    cudaFree(db.y);
    cudaFree(db.ws);
    free(x);
    free(w);
    free(b);
    free(z);
    free(ref);
    free(got);
}

/* A desc of x [1, c, hw, hw] and k filters of ksz x ksz; no epilogue. */
static struct etf__conv_graph_desc conv(int c, int hw, int k, int ksz, int stride, int pad,
                                        int groups)
{
    int out = (hw + 2 * pad - ksz) / stride + 1;
    return (struct etf__conv_graph_desc){.n = 1,
                                         .c = c,
                                         .h = hw,
                                         .w = hw,
                                         .k = k,
                                         .kh = ksz,
                                         .kw = ksz,
                                         .groups = groups,
                                         .pad_h = pad,
                                         .pad_w = pad,
                                         .stride_h = stride,
                                         .stride_w = stride,
                                         .dil_h = 1,
                                         .dil_w = 1,
                                         .out_h = out,
                                         .out_w = out};
}

/* Batch 1 and 4, each plain and with bias + relu. */
static void check_shape(const char *name, struct etf__conv_graph_desc d)
{
    for (int n = 1; n <= 4; n += 3) {
        check(name, d, n, false, false, false, DIRECT);
        check(name, d, n, true, false, true, DIRECT);
    }
}

/* ---- Shapes ---- */

static void conv_3x3_pad1(void **state)
{
    NEED_GPU();
    check_shape("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1));
}

static void conv_1x1(void **state)
{
    NEED_GPU();
    check_shape("1x1", conv(32, 7, 48, 1, 1, 0, 1));
}

static void conv_7x7_stride2_rgb(void **state)
{
    NEED_GPU();
    check_shape("7x7 stride 2 c=3", conv(3, 32, 16, 7, 2, 3, 1));
}

static void conv_depthwise_3x3(void **state)
{
    NEED_GPU();
    check_shape("depthwise 3x3", conv(32, 14, 32, 3, 1, 1, 32));
}

static void conv_grouped_stride2(void **state)
{
    NEED_GPU();
    check_shape("grouped stride 2", conv(16, 13, 32, 3, 2, 1, 4));
}

static void conv_residual_relu(void **state)
{
    NEED_GPU();
    check("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1), 1, false, true, true, DIRECT);
    check("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1), 4, true, true, true, DIRECT);
}

/* Every subset of the epilogue: which ones cuDNN fuses shows in the output. */
static void every_epilogue(void **state)
{
    NEED_GPU();
    for (int m = 0; m < 8; m++)
        check("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1), 2, m & 1, m & 2, m & 4, DIRECT);
}

/* ---- How a plan runs ---- */

static void run_captured_into_cuda_graph(void **state)
{
    NEED_GPU();
    check("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1), 1, false, false, false, CAPTURED);
    check("3x3 pad 1", conv(16, 12, 32, 3, 1, 1, 1), 4, true, false, true, CAPTURED);
}

static void run_on_another_handle(void **state)
{
    NEED_GPU();
    check("1x1", conv(32, 7, 48, 1, 1, 0, 1), 1, true, false, true, OTHER_HANDLE);
}

/* ---- Refusals ---- */

static void bad_descs_are_refused(void **state)
{
    /* Without a GPU there is no handle, and the desc is checked before the handle. */
    char err[300];
    struct etf__conv_graph *g = (struct etf__conv_graph *)&err;
    struct etf__conv_graph_desc ok = conv(16, 12, 32, 3, 1, 1, 1), d;
    assert_int_equal(etf__conv_graph_create(handle, NULL, false, 0, &g, err, sizeof err),
                     ETF_EINVAL);
    assert_int_equal(etf__conv_graph_create(handle, &ok, false, 0, NULL, err, sizeof err),
                     ETF_EINVAL);
    d = ok;
    d.groups = 3; /* divides neither 16 nor 32 */
    assert_int_equal(etf__conv_graph_create(handle, &d, false, 0, &g, err, sizeof err), ETF_EINVAL);
    assert_null(g);
    assert_non_null(strstr(err, "groups"));
    d = ok;
    d.out_h = 11;
    assert_int_equal(etf__conv_graph_create(handle, &d, false, 0, &g, NULL, 0), ETF_EINVAL);
    d = ok;
    d.stride_w = 0;
    assert_int_equal(etf__conv_graph_create(handle, &d, false, 0, &g, err, sizeof err), ETF_EINVAL);
    if (!have_gpu)
        return;

    /* A plan refuses pointers that its graph needs but are missing, or misaligned. */
    d = ok;
    d.bias = true;
    int rc;
    g = plan(&d, &rc, err, sizeof err);
    if (rc == ETF_ENOTSUP) {
        print_message("conv + bias refused (%s): pointer checks on the plain graph\n", err);
        d.bias = false;
        g = plan(&d, &rc, err, sizeof err);
    }
    assert_int_equal(rc, 0);
    float *buf;
    CK_CUDA(cudaMalloc((void **)&buf, y_elems(&d) * sizeof(float) + 64));
    void *ws = NULL;
    if (etf__conv_graph_workspace(g))
        CK_CUDA(cudaMalloc(&ws, etf__conv_graph_workspace(g)));
    if (d.bias)
        assert_int_equal(
            etf__conv_graph_run(handle, g, buf, buf, NULL, NULL, buf, ws, err, sizeof err),
            ETF_EINVAL);
    assert_int_equal(
        etf__conv_graph_run(handle, g, buf + 1, buf, buf, NULL, buf, ws, err, sizeof err),
        ETF_EINVAL);
    assert_non_null(strstr(err, "aligned"));
    assert_int_equal(etf__conv_graph_run(handle, g, NULL, buf, buf, NULL, buf, ws, err, sizeof err),
                     ETF_EINVAL);
    etf__conv_graph_destroy(g);
    cudaFree(buf);
    cudaFree(ws);
}

/* ---- Against the legacy API, for the log (no timing is asserted) ---- */

/* What the CUDA device runs today: the fastest fp32 (FMA math, no FFT) algorithm of
 * cudnnFindConvolutionForwardAlgorithm (*algo, with the time Find measured in *find_ms), and
 * its time in ms when replayed from a CUDA graph, returned. */
static float legacy_ms(const struct etf__conv_graph_desc *d, int *algo, float *find_ms)
{
    cudnnTensorDescriptor_t xd, yd;
    cudnnFilterDescriptor_t wd;
    cudnnConvolutionDescriptor_t cd;
    cudnnConvolutionFwdAlgoPerf_t perf[8];
    int n = 0;
    float best = INFINITY;
    assert_int_equal(cudnnCreateTensorDescriptor(&xd), 0);
    assert_int_equal(cudnnCreateTensorDescriptor(&yd), 0);
    assert_int_equal(cudnnCreateFilterDescriptor(&wd), 0);
    assert_int_equal(cudnnCreateConvolutionDescriptor(&cd), 0);
    assert_int_equal(
        cudnnSetTensor4dDescriptor(xd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, d->n, d->c, d->h, d->w),
        0);
    assert_int_equal(cudnnSetTensor4dDescriptor(yd, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, d->n, d->k,
                                                d->out_h, d->out_w),
                     0);
    assert_int_equal(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, d->k,
                                                d->c / d->groups, d->kh, d->kw),
                     0);
    assert_int_equal(cudnnSetConvolution2dDescriptor(cd, d->pad_h, d->pad_w, d->stride_h,
                                                     d->stride_w, d->dil_h, d->dil_w,
                                                     CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                     0);
    assert_int_equal(cudnnSetConvolutionGroupCount(cd, d->groups), 0);
    assert_int_equal(cudnnSetConvolutionMathType(cd, CUDNN_FMA_MATH), 0);
    assert_int_equal(cudnnFindConvolutionForwardAlgorithm(handle, xd, wd, cd, yd, 8, &n, perf), 0);
    for (int i = 0; i < n; i++)
        if (perf[i].status == CUDNN_STATUS_SUCCESS &&
            perf[i].algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT &&
            perf[i].algo != CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING && perf[i].time < best) {
            best = perf[i].time;
            *algo = (int)perf[i].algo;
        }
    assert_int_not_equal(*algo, -1);
    *find_ms = best;

    /* The chosen algorithm timed as the device runs it: three runs in one CUDA graph. */
    size_t ws_bytes = 0;
    void *x, *w, *y, *ws = NULL;
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cudaEvent_t ev[2];
    const float one = 1.f, zero = 0.f;
    assert_int_equal(cudnnGetConvolutionForwardWorkspaceSize(
                         handle, xd, wd, cd, yd, (cudnnConvolutionFwdAlgo_t)*algo, &ws_bytes),
                     0);
    CK_CUDA(cudaMalloc(&x, x_elems(d) * sizeof(float)));
    CK_CUDA(cudaMalloc(&w, w_elems(d) * sizeof(float)));
    CK_CUDA(cudaMalloc(&y, y_elems(d) * sizeof(float)));
    if (ws_bytes)
        CK_CUDA(cudaMalloc(&ws, ws_bytes));
    CK_CUDA(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal));
    for (int r = 0; r < 3; r++)
        assert_int_equal(cudnnConvolutionForward(handle, &one, xd, x, wd, w, cd,
                                                 (cudnnConvolutionFwdAlgo_t)*algo, ws, ws_bytes,
                                                 &zero, yd, y),
                         0);
    CK_CUDA(cudaStreamEndCapture(stream, &graph));
    CK_CUDA(cudaGraphInstantiate(&exec, graph, 0));
    CK_CUDA(cudaEventCreate(&ev[0]));
    CK_CUDA(cudaEventCreate(&ev[1]));
    CK_CUDA(cudaGraphLaunch(exec, stream));
    CK_CUDA(cudaEventRecord(ev[0], stream));
    CK_CUDA(cudaGraphLaunch(exec, stream));
    CK_CUDA(cudaEventRecord(ev[1], stream));
    CK_CUDA(cudaEventSynchronize(ev[1]));
    float ms = 0.f;
    CK_CUDA(cudaEventElapsedTime(&ms, ev[0], ev[1]));
    cudaEventDestroy(ev[0]);
    cudaEventDestroy(ev[1]);
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    cudaFree(x);
    cudaFree(w);
    cudaFree(y);
    cudaFree(ws);
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(xd);
    return ms / 3;
}

static void compare_with_legacy(void **state)
{
    NEED_GPU();
    const struct {
        const char *name;
        struct etf__conv_graph_desc d;
    } shapes[] = {
        {"resnet 7x7/2 c3 224", conv(3, 224, 64, 7, 2, 3, 1)},
        {"resnet 3x3 c64 56", conv(64, 56, 64, 3, 1, 1, 1)},
        {"resnet 1x1 c256 56", conv(256, 56, 64, 1, 1, 0, 1)},
        {"resnet 3x3 c128 28", conv(128, 28, 128, 3, 1, 1, 1)},
        {"resnet 3x3 c256 14", conv(256, 14, 256, 3, 1, 1, 1)},
        {"resnet 3x3 c512 7", conv(512, 7, 512, 3, 1, 1, 1)},
        {"mobilenet dw 3x3 c144 56", conv(144, 56, 144, 3, 1, 1, 144)},
    };
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
        struct etf__conv_graph_desc d = shapes[i].d;
        int algo = -1;
        float find_ms, legacy = legacy_ms(&d, &algo, &find_ms);
        print_message("%s: legacy algo %d %.1f us (Find said %.1f us)\n", shapes[i].name, algo,
                      (double)legacy * 1e3, (double)find_ms * 1e3);
        /* Plain, fused with bias + relu, plain with TF32 allowed. */
        static const char *const variant[] = {"", " +bias relu", " tf32"};
        for (int v = 0; v < 3; v++) {
            char err[400] = "";
            struct etf__conv_graph *g = NULL;
            d.bias = d.relu = v == 1;
            int rc =
                etf__conv_graph_create(handle, &d, v == 2, (size_t)256 << 20, &g, err, sizeof err);
            print_message("%s%s: graph %s\n", shapes[i].name, variant[v],
                          rc ? err : etf__conv_graph_describe(g));
            assert_true(rc == 0 || (v == 1 && rc == ETF_ENOTSUP));
            etf__conv_graph_destroy(g);
        }
    }
}

int main(void)
{
    int count = 0;
    /* Line by line, so that a run cut short still shows what it printed. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    have_gpu = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
    if (have_gpu) {
        if (cudnnCreate(&handle) != CUDNN_STATUS_SUCCESS ||
            cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
            cudnnSetStream(handle, stream) != CUDNN_STATUS_SUCCESS) {
            fprintf(stderr, "a GPU but no cuDNN handle\n");
            return 1;
        }
        print_message("cuDNN %zu\n", cudnnGetVersion());
    } else {
        print_message("no GPU here: the GPU tests are skipped\n");
    }
    /* clang-format off */
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(bad_descs_are_refused),
        cmocka_unit_test(conv_3x3_pad1),
        cmocka_unit_test(conv_residual_relu),
        cmocka_unit_test(every_epilogue),
        cmocka_unit_test(run_captured_into_cuda_graph),
        cmocka_unit_test(run_on_another_handle),
        cmocka_unit_test(conv_1x1),
        cmocka_unit_test(conv_7x7_stride2_rgb),
        cmocka_unit_test(conv_depthwise_3x3),
        cmocka_unit_test(conv_grouped_stride2),
        cmocka_unit_test(compare_with_legacy),
    };
    /* clang-format on */
    int failed = cmocka_run_group_tests(tests, NULL, NULL);
    if (have_gpu) {
        cudnnDestroy(handle);
        cudaStreamDestroy(stream);
    }
    return failed;
}
