/* Tests of the CUDA device (cuDNN, cuBLAS and the kernels of cuda_kernels.cu): small plans
 * built by hand, run kernel by kernel through the device contract and compared with the
 * naive reference of ref_kernels.h, the same kinds of plans as test_device_cpu.c.
 *
 * On a machine without a GPU (cudaGetDeviceCount fails or finds none) opening the device
 * must fail with ETF_EDEVICE and say so, the registry must not list it, and every test that
 * needs a GPU is skipped.
 *
 * Every plan runs twice with different inputs, so that state left by the first task (the
 * arena, the warm-up) cannot pass for a right answer in the second. Outputs match when every
 * element is within 1e-4 * max|ref| of the reference: fp32 without TF32.
 */
#include "support.h"

#include "device/device.h"
#include "model/plan.h"
#include "ref_kernels.h"

#include <cuda_runtime_api.h>

static bool have_gpu;

/* Skips the calling test on a machine without a GPU. */
#define NEED_GPU()                                                                                 \
    do {                                                                                           \
        if (!have_gpu)                                                                             \
            skip();                                                                                \
    } while (0)

#include "plan_builder.h"
#include "attention_plan.h"

/* ---- Running plans ---- */

static struct etf_device *open_cuda(void)
{
    struct etf_device *d = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_device_open("cuda", NULL, &d, &diag);
    if (rc)
        fail_msg("open: %s", diag.msg);
    return d;
}

static struct etf_dmodel *load_plan(struct etf_device *d, const struct etf_plan *p)
{
    struct etf_model_desc desc = {.name = "test", .plan = p};
    struct etf_dmodel *dm = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf__device_load(d, &desc, &dm, &diag);
    if (rc)
        fail_msg("load: %s (%s)", diag.msg, etf_strerror(rc));
    return dm;
}

/* Runs every kernel of the loaded model once, as one task with io. */
static void run_task(struct etf_device *d, struct etf_dmodel *dm, const struct etf_plan *p,
                     const struct etf_task_io *io)
{
    for (size_t k = 0; k < p->n_kernels; k++) {
        struct etf_kernel_run run = {.dm = dm, .kernel = k, .io = io};
        assert_int_equal(etf__device_launch(d, &run), 0);
        assert_true(run.busy_ns > 0);
    }
}

static void expect_close(const float *got, const float *ref, size_t n, const char *what)
{
    float maxabs = 0.f;
    for (size_t i = 0; i < n; i++)
        maxabs = fmaxf(maxabs, fabsf(ref[i]));
    float tol = 1e-4f * fmaxf(maxabs, 1e-6f);
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(got[i] - ref[i]) <= tol))
            fail_msg("%s: element %zu is %.7g, reference %.7g (tolerance %.3g)", what, i,
                     (double)got[i], (double)ref[i], (double)tol);
}

/* Loads p on a cuda device, runs it twice on random inputs and compares every output with
 * the reference. */
static void check_plan_on(struct pb *b, struct etf_device *d)
{
    const struct etf_plan *p = &b->p;
    pb_liveness(b);
    struct etf_dmodel *dm = load_plan(d, p);
    float **in = calloc(p->n_inputs + 1, sizeof *in);
    float **out = calloc(p->n_outputs + 1, sizeof *out);
    float **ref = calloc(p->n_outputs + 1, sizeof *ref);
    uint32_t seed = 12345u;
    for (int rep = 0; rep < 2; rep++) {
        for (size_t i = 0; i < p->n_inputs; i++) {
            size_t n = ref_elems(&p->values[p->inputs[i]].shape);
            in[i] = realloc(in[i], n * sizeof(float));
            for (size_t j = 0; j < n; j++)
                in[i][j] = pb_rand(&seed);
        }
        for (size_t i = 0; i < p->n_outputs; i++) {
            size_t n = ref_elems(&p->values[p->outputs[i]].shape);
            out[i] = realloc(out[i], n * sizeof(float));
            ref[i] = realloc(ref[i], n * sizeof(float));
            for (size_t j = 0; j < n; j++)
                out[i][j] = NAN;
        }
        ref_run_plan(p, (const float *const *)in, ref);
        struct etf_task_io io = {.inputs = (const float *const *)in, .outputs = out};
        run_task(d, dm, p, &io);
        for (size_t i = 0; i < p->n_outputs; i++) {
            char what[64];
            snprintf(what, sizeof what, "output %zu, task %d", i, rep);
            expect_close(out[i], ref[i], ref_elems(&p->values[p->outputs[i]].shape), what);
        }
    }
    for (size_t i = 0; i < p->n_inputs; i++)
        free(in[i]);
    for (size_t i = 0; i < p->n_outputs; i++) {
        free(out[i]);
        free(ref[i]);
    }
    free(in);
    free(out);
    free(ref);
    etf__device_unload(d, dm);
}

static void check_plan(struct pb *b)
{
    struct etf_device *d = open_cuda();
    check_plan_on(b, d);
    etf_device_close(d);
    pb_free(b);
}

/* ---- The device without and with a GPU ---- */

static bool listed(const char *name)
{
    for (const char *const *n = etf_device_names(); *n; n++)
        if (strcmp(*n, name) == 0)
            return true;
    return false;
}

static void open_reports_the_gpu_or_its_absence(void **state)
{
    struct etf_diag diag = {{0}};
    struct etf_device *d = NULL;
    /* Built in, so an unknown name's message lists it. */
    assert_int_equal(etf_device_open("tpu", NULL, &d, &diag), ETF_ENOTSUP);
    assert_non_null(strstr(diag.msg, "cuda"));
    memset(&diag, 0, sizeof diag);
    int rc = etf_device_open("cuda", NULL, &d, &diag);
    if (!have_gpu) {
        assert_int_equal(rc, ETF_EDEVICE);
        assert_null(d);
        assert_non_null(strstr(diag.msg, "no CUDA device"));
        assert_false(listed("cuda"));
        print_message("no GPU here (%s): the GPU tests are skipped\n", diag.msg);
        return;
    }
    if (rc)
        fail_msg("open: %s", diag.msg);
    assert_string_equal(etf_device_name(d), "cuda");
    assert_true(listed("cuda"));
    etf_device_close(d);
}

/* ---- Convolutions ---- */

/* One conv of x [1,C,H,W] with weights [O,C/g,k,k]; its output is the model output. */
static void conv_case(int64_t C, int64_t H, int64_t O, int64_t ksz, int64_t stride, int64_t pad,
                      int64_t dil, int64_t groups, bool bias)
{
    struct pb b = {.seed = 7};
    int64_t eff = dil * (ksz - 1) + 1, OH = (H + 2 * pad - eff) / stride + 1;
    int x = pb_in(&b, SH(1, C, H, H));
    int w = pb_const(&b, SH(O, C / groups, ksz, ksz));
    int bi = bias ? pb_const(&b, SH(O)) : -1;
    int y = pb_act(&b, SH(1, O, OH, OH));
    pb_conv(&b, y, x, w, bi, stride, pad, dil, groups);
    pb_out(&b, y);
    check_plan(&b);
}

static void conv_3x3_stride1_pad1_bias(void **state)
{
    NEED_GPU();
    conv_case(16, 12, 32, 3, 1, 1, 1, 1, true);
}

static void conv_3x3_stride2_pad1(void **state)
{
    NEED_GPU();
    conv_case(8, 13, 16, 3, 2, 1, 1, 1, false);
}

static void conv_1x1(void **state)
{
    NEED_GPU();
    conv_case(32, 7, 48, 1, 1, 0, 1, 1, true);
}

static void conv_first_layer_7x7_stride2(void **state)
{
    NEED_GPU();
    conv_case(3, 32, 16, 7, 2, 3, 1, 1, true);
}

static void conv_grouped(void **state)
{
    NEED_GPU();
    conv_case(16, 9, 32, 3, 1, 1, 1, 4, true);
}

static void conv_depthwise(void **state)
{
    NEED_GPU();
    conv_case(32, 10, 32, 3, 2, 1, 1, 32, true);
}

static void conv_dilated(void **state)
{
    NEED_GPU();
    conv_case(8, 15, 8, 3, 1, 2, 2, 1, true);
}

/* A batch of two and a wide layer: more than one block per image. */
static void conv_batch_of_two_wide(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 4};
    int x = pb_in(&b, SH(2, 64, 14, 14));
    int w = pb_const(&b, SH(128, 64, 3, 3)), bi = pb_const(&b, SH(128));
    int y = pb_act(&b, SH(2, 128, 14, 14));
    post_elt(pb_conv(&b, y, x, w, bi, 1, 1, 1, 1), ETF_ELT_RELU, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

/* cuDNN pads symmetrically: asymmetric pads go through a padded temporary. */
static void conv_asymmetric_pads(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 3};
    int x = pb_in(&b, SH(1, 8, 10, 10));
    int w = pb_const(&b, SH(16, 8, 3, 3));
    int y = pb_act(&b, SH(1, 16, 5, 5)); /* (10 + 0 + 1 - 3) / 2 + 1 */
    struct etf_kernel *k = pb_conv(&b, y, x, w, -1, 2, 0, 1, 1);
    k->attr.conv.pad_end[0] = k->attr.conv.pad_end[1] = 1;
    post_elt(k, ETF_ELT_RELU, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

/* conv -> conv with an eltwise post-op on each. */
static void conv_pair_with_post(enum etf_eltwise_alg alg, float alpha, float beta)
{
    struct pb b = {.seed = 11};
    int x = pb_in(&b, SH(1, 16, 8, 8));
    int w1 = pb_const(&b, SH(32, 16, 3, 3)), b1 = pb_const(&b, SH(32));
    int w2 = pb_const(&b, SH(32, 32, 1, 1)), b2 = pb_const(&b, SH(32));
    int h = pb_act(&b, SH(1, 32, 8, 8)), y = pb_act(&b, SH(1, 32, 8, 8));
    post_elt(pb_conv(&b, h, x, w1, b1, 1, 1, 1, 1), alg, alpha, beta);
    post_elt(pb_conv(&b, y, h, w2, b2, 1, 0, 1, 1), alg, alpha, beta);
    pb_out(&b, y);
    check_plan(&b);
}

static void conv_relu(void **state)
{
    NEED_GPU();
    conv_pair_with_post(ETF_ELT_RELU, 0.f, 0.f);
}

static void conv_clip(void **state)
{
    NEED_GPU();
    conv_pair_with_post(ETF_ELT_CLIP, 0.f, 0.5f);
}

static void conv_swish(void **state)
{
    NEED_GPU();
    conv_pair_with_post(ETF_ELT_SWISH, 0.f, 0.f);
}

/* Two ResNet basic blocks, y = relu(conv(relu(conv(r))) + r), the residual r read last by
 * the summing conv or also later; a conv without bias feeding them; a sum without relu. */
static void residual_blocks(bool residual_read_later)
{
    struct pb b = {.seed = 5};
    int x = pb_in(&b, SH(1, 16, 6, 6));
    int w0 = pb_const(&b, SH(16, 16, 3, 3));
    int r = pb_act(&b, SH(1, 16, 6, 6));
    post_elt(pb_conv(&b, r, x, w0, -1, 1, 1, 1, 1), ETF_ELT_RELU, 0, 0);
    int first_r = r;
    for (int blk = 0; blk < 2; blk++) {
        int w1 = pb_const(&b, SH(16, 16, 3, 3)), b1 = pb_const(&b, SH(16));
        int w2 = pb_const(&b, SH(16, 16, 3, 3)), b2 = pb_const(&b, SH(16));
        int h = pb_act(&b, SH(1, 16, 6, 6)), y = pb_act(&b, SH(1, 16, 6, 6));
        post_elt(pb_conv(&b, h, r, w1, b1, 1, 1, 1, 1), ETF_ELT_RELU, 0, 0);
        struct etf_kernel *k = pb_conv(&b, y, h, w2, b2, 1, 1, 1, 1);
        post_val(k, ETF_POST_SUM, 0, r);
        if (blk == 0)
            post_elt(k, ETF_ELT_RELU, 0, 0);
        r = y;
    }
    int z = pb_act(&b, SH(1, 16, 3, 3));
    struct etf_kernel *k = pb_kernel(&b, ETF_K_POOL, z, IDS(r));
    k->attr.pool.alg = ETF_POOL_MAX;
    for (int i = 0; i < 2; i++)
        k->attr.pool.kernel[i] = k->attr.pool.stride[i] = 2;
    pb_out(&b, z);
    int zx = pb_act(&b, SH(1, 16, 6, 6));
    pb_kernel(&b, ETF_K_BINARY, zx, IDS(x, x))->attr.binary.alg = ETF_BIN_MUL;
    pb_out(&b, zx);
    if (residual_read_later) {
        int z2 = pb_act(&b, SH(1, 16, 6, 6));
        pb_kernel(&b, ETF_K_BINARY, z2, IDS(r, first_r))->attr.binary.alg = ETF_BIN_MUL;
        pb_out(&b, z2);
    }
    check_plan(&b);
}

static void conv_sum_relu_residual(void **state)
{
    NEED_GPU();
    residual_blocks(false);
}

static void conv_sum_relu_residual_read_later(void **state)
{
    NEED_GPU();
    residual_blocks(true);
}

/* The same plans with cuDNN's fused epilogue turned off: conv, then the pointwise kernel. */
static void conv_without_fusion(void **state)
{
    NEED_GPU();
    setenv("ETF_CUDA_FUSE", "0", 1);
    residual_blocks(true);
    conv_pair_with_post(ETF_ELT_RELU, 0.f, 0.f);
    unsetenv("ETF_CUDA_FUSE");
}

/* Both convolution paths, whichever is faster here: every convolution through cuDNN's graph
 * API where it has an engine (fused epilogues, a plain graph before the pointwise kernel),
 * then none. */
static void conv_paths_forced(const char *mode)
{
    setenv("ETF_CUDA_CONV_GRAPH", mode, 1);
    conv_case(16, 12, 32, 3, 1, 1, 1, 1, true);
    conv_case(3, 32, 16, 7, 2, 3, 1, 1, true);
    conv_case(32, 10, 32, 3, 2, 1, 1, 32, true);
    conv_case(16, 9, 32, 3, 1, 1, 1, 4, false);
    residual_blocks(true);
    conv_pair_with_post(ETF_ELT_RELU, 0.f, 0.f);
    conv_pair_with_post(ETF_ELT_SWISH, 0.f, 0.f);
    unsetenv("ETF_CUDA_CONV_GRAPH");
}

static void conv_through_the_graph_api(void **state)
{
    NEED_GPU();
    conv_paths_forced("always");
}

static void conv_through_the_legacy_api(void **state)
{
    NEED_GPU();
    conv_paths_forced("0");
}

static void conv_sum_of_model_input(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 8};
    int x = pb_in(&b, SH(1, 8, 5, 5)), res = pb_in(&b, SH(1, 16, 5, 5));
    int w = pb_const(&b, SH(16, 8, 3, 3));
    int y = pb_act(&b, SH(1, 16, 5, 5));
    post_val(pb_conv(&b, y, x, w, -1, 1, 1, 1, 1), ETF_POST_SUM, 0, res);
    pb_out(&b, y);
    check_plan(&b);
}

/* Post-ops cuDNN's epilogue cannot express run in the pointwise kernel, in order. */
static void conv_with_unfused_post_ops(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 9};
    int x = pb_in(&b, SH(1, 8, 6, 6));
    int w = pb_const(&b, SH(16, 8, 3, 3)), s = pb_const(&b, SH(1, 16, 1, 1));
    int y = pb_act(&b, SH(1, 16, 6, 6));
    struct etf_kernel *k = pb_conv(&b, y, x, w, -1, 1, 1, 1, 1);
    post_elt(k, ETF_ELT_LINEAR, 0.5f, 0.f);
    post_elt(k, ETF_ELT_ERF, 0, 0);
    post_val(k, ETF_POST_BINARY, ETF_BIN_MUL, s);
    post_elt(k, ETF_ELT_TANH, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

/* Binary post-ops: a per-channel constant, a same-shaped activation and a broadcast
 * [N,C,1,1] activation (squeeze-excitation). */
static void conv_with_binary_post_ops(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 10};
    int x = pb_in(&b, SH(1, 16, 6, 6)), g = pb_in(&b, SH(1, 32, 1, 1));
    int w0 = pb_const(&b, SH(32, 16, 1, 1)), w1 = pb_const(&b, SH(32, 16, 3, 3));
    int w2 = pb_const(&b, SH(32, 32, 3, 3)), sc = pb_const(&b, SH(32, 1, 1));
    int a = pb_act(&b, SH(1, 32, 6, 6)), h = pb_act(&b, SH(1, 32, 6, 6));
    int y = pb_act(&b, SH(1, 32, 6, 6));
    pb_conv(&b, a, x, w0, -1, 1, 0, 1, 1);
    struct etf_kernel *k = pb_conv(&b, h, x, w1, -1, 1, 1, 1, 1);
    post_val(k, ETF_POST_BINARY, ETF_BIN_MUL, sc);
    post_val(k, ETF_POST_BINARY, ETF_BIN_ADD, a);
    post_elt(k, ETF_ELT_RELU, 0, 0);
    k = pb_conv(&b, y, h, w2, -1, 1, 1, 1, 1);
    post_val(k, ETF_POST_BINARY, ETF_BIN_MUL, g);
    post_val(k, ETF_POST_BINARY, ETF_BIN_SUB, sc);
    pb_out(&b, y);
    check_plan(&b);
}

/* Weights that are an activation: cuDNN takes them like constants. */
static void conv_with_activation_weights(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 12};
    int x = pb_in(&b, SH(1, 4, 5, 5)), w = pb_in(&b, SH(8, 4, 3, 3));
    int y = pb_act(&b, SH(1, 8, 5, 5));
    pb_conv(&b, y, x, w, -1, 1, 1, 1, 1);
    pb_out(&b, y);
    check_plan(&b);
}

/* ---- Matmul ---- */

static void matmul_2d_bias_gelu(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 13};
    int a = pb_in(&b, SH(5, 24)), w = pb_const(&b, SH(24, 40)), bias = pb_const(&b, SH(40));
    int y = pb_act(&b, SH(5, 40));
    post_elt(pb_kernel(&b, ETF_K_MATMUL, y, IDS(a, w, bias)), ETF_ELT_GELU_ERF, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

static void matmul_batched_3d_bias_gelu(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 14};
    int a = pb_in(&b, SH(3, 7, 16)), w = pb_const(&b, SH(16, 20)), bias = pb_const(&b, SH(20));
    int y = pb_act(&b, SH(3, 7, 20));
    post_elt(pb_kernel(&b, ETF_K_MATMUL, y, IDS(a, w, bias)), ETF_ELT_GELU_ERF, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

/* Products whose bias, relu and residual cuBLASLt runs in the product (one GEMM, strided
 * batches, a write through a transpose), and the same with that off (ETF_CUDA_LT=0). */
static void epilogue_products(void)
{
    struct pb b = {.seed = 15};
    int x = pb_in(&b, SH(2, 5, 16));
    int w1 = pb_const(&b, SH(16, 24)), b1 = pb_const(&b, SH(24));
    int w2 = pb_const(&b, SH(24, 16)), b2 = pb_const(&b, SH(16));
    int w3 = pb_const(&b, SH(2, 16, 8)), b3 = pb_const(&b, SH(8));
    int w4 = pb_const(&b, SH(16, 16)), b4 = pb_const(&b, SH(16));
    int y1 = pb_act(&b, SH(2, 5, 24)), y2 = pb_act(&b, SH(2, 5, 16));
    int y3 = pb_act(&b, SH(2, 5, 8)), y4 = pb_act(&b, SH(2, 5, 16));
    post_elt(pb_kernel(&b, ETF_K_MATMUL, y1, IDS(x, w1, b1)), ETF_ELT_RELU, 0, 0);
    post_val(pb_kernel(&b, ETF_K_MATMUL, y2, IDS(y1, w2, b2)), ETF_POST_SUM, ETF_BIN_ADD, x);
    pb_kernel(&b, ETF_K_MATMUL, y3, IDS(y2, w3, b3));
    struct etf_kernel *k = pb_kernel(&b, ETF_K_MATMUL, y4, IDS(y2, w4, b4));
    post_val(k, ETF_POST_SUM, ETF_BIN_ADD, y2);
    post_elt(k, ETF_ELT_RELU, 0, 0);
    /* a product with a bias written where a transpose puts it */
    int w5 = pb_const(&b, SH(16, 16)), b5 = pb_const(&b, SH(16));
    int y5 = pb_act(&b, SH(2, 5, 16)), t5 = pb_act(&b, SH(5, 2, 16)), s5 = pb_act(&b, SH(5, 2, 16));
    pb_kernel(&b, ETF_K_MATMUL, y5, IDS(y4, w5, b5));
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t5, IDS(y5)), 1, 0, 2, 0);
    pb_kernel(&b, ETF_K_SOFTMAX, s5, IDS(t5))->attr.axis.axis = 2;
    pb_out(&b, y3);
    pb_out(&b, s5);
    check_plan(&b);
}

static void matmul_epilogues_in_the_product(void **state)
{
    NEED_GPU();
    epilogue_products();
    setenv("ETF_CUDA_LT", "0", 1);
    epilogue_products();
    unsetenv("ETF_CUDA_LT");
}

static void matmul_of_two_activations(void **state)
{
    NEED_GPU();
    /* Attention scores: [B,H,S,D] x [B,H,D,S], then a product with a shared left operand. */
    struct pb b = {.seed = 15};
    int q = pb_in(&b, SH(2, 3, 5, 8)), kt = pb_in(&b, SH(2, 3, 8, 5));
    int l = pb_in(&b, SH(4, 5));
    int y = pb_act(&b, SH(2, 3, 5, 5)), y2 = pb_act(&b, SH(2, 3, 4, 5));
    pb_kernel(&b, ETF_K_MATMUL, y, IDS(q, kt));
    pb_kernel(&b, ETF_K_MATMUL, y2, IDS(l, y));
    pb_out(&b, y);
    pb_out(&b, y2);
    check_plan(&b);
}

/* Batch dimensions that broadcast against each other: one pointer per product. */
static void matmul_partial_broadcast(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 16};
    int a = pb_in(&b, SH(2, 1, 5, 8)), w = pb_in(&b, SH(1, 3, 8, 4)), bias = pb_const(&b, SH(4));
    int y = pb_act(&b, SH(2, 3, 5, 4));
    post_elt(pb_kernel(&b, ETF_K_MATMUL, y, IDS(a, w, bias)), ETF_ELT_TANH, 0, 0);
    pb_out(&b, y);
    check_plan(&b);
}

/* ---- Pooling, normalisation ---- */

static void pool_case(enum etf_pool_alg alg, int64_t ksz, int64_t stride, int64_t pad,
                      int64_t pad_extra, int64_t H, bool after_conv)
{
    struct pb b = {.seed = 17};
    int64_t OH = (H + 2 * pad + pad_extra - ksz) / stride + 1;
    int x = pb_in(&b, SH(1, 16, H, H)), src = x;
    if (after_conv) {
        int w = pb_const(&b, SH(16, 16, 1, 1));
        src = pb_act(&b, SH(1, 16, H, H));
        pb_conv(&b, src, x, w, -1, 1, 0, 1, 1);
    }
    int y = pb_act(&b, SH(1, 16, OH, OH));
    struct etf_kernel *k = pb_kernel(&b, ETF_K_POOL, y, IDS(src));
    k->attr.pool.alg = alg;
    for (int i = 0; i < 2; i++) {
        k->attr.pool.kernel[i] = ksz;
        k->attr.pool.stride[i] = stride;
        k->attr.pool.pad_begin[i] = pad;
        k->attr.pool.pad_end[i] = pad + pad_extra;
    }
    post_elt(k, ETF_ELT_LINEAR, 2.f, 0.5f);
    pb_out(&b, y);
    check_plan(&b);
}

static void max_pool_with_padding(void **state)
{
    NEED_GPU();
    pool_case(ETF_POOL_MAX, 3, 2, 1, 0, 12, true);
    pool_case(ETF_POOL_MAX, 3, 2, 1, 0, 11, false);
}

static void avg_pool_include_pad(void **state)
{
    NEED_GPU();
    pool_case(ETF_POOL_AVG_INCLUDE_PAD, 3, 1, 1, 0, 7, true);
}

static void avg_pool_exclude_pad(void **state)
{
    NEED_GPU();
    pool_case(ETF_POOL_AVG_EXCLUDE_PAD, 3, 2, 1, 0, 9, false);
    pool_case(ETF_POOL_AVG_EXCLUDE_PAD, 3, 2, 1, 0, 9, true);
}

/* Ceil-mode pooling (SqueezeNet): one more pad at the end than at the start. */
static void pool_ceil_mode_asymmetric(void **state)
{
    NEED_GPU();
    pool_case(ETF_POOL_MAX, 3, 2, 0, 1, 12, true);
    pool_case(ETF_POOL_AVG_EXCLUDE_PAD, 3, 2, 0, 1, 12, false);
    pool_case(ETF_POOL_AVG_INCLUDE_PAD, 2, 2, 0, 1, 7, false);
}

static void global_avg_pool(void **state)
{
    NEED_GPU();
    pool_case(ETF_POOL_AVG_EXCLUDE_PAD, 7, 1, 0, 0, 7, true);
}

static void batchnorm_standalone(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 19};
    int x = pb_in(&b, SH(2, 16, 5, 5));
    int w = pb_const(&b, SH(16, 16, 1, 1));
    int sc = pb_const(&b, SH(16)), sh = pb_const(&b, SH(16));
    int sc2 = pb_const(&b, SH(16)), sh2 = pb_const(&b, SH(16));
    int h = pb_act(&b, SH(2, 16, 5, 5)), y1 = pb_act(&b, SH(2, 16, 5, 5));
    int y2 = pb_act(&b, SH(2, 16, 5, 5));
    pb_conv(&b, h, x, w, -1, 1, 0, 1, 1);
    post_elt(pb_kernel(&b, ETF_K_BATCHNORM, y1, IDS(h, sc, sh)), ETF_ELT_RELU, 0, 0);
    pb_kernel(&b, ETF_K_BATCHNORM, y2, IDS(x, sc2, sh2));
    pb_out(&b, y1);
    pb_out(&b, y2);
    check_plan(&b);
}

static void layernorm_last_axis(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 21};
    int x = pb_in(&b, SH(2, 5, 32)), g = pb_const(&b, SH(32)), be = pb_const(&b, SH(32));
    int y = pb_act(&b, SH(2, 5, 32));
    pb_kernel(&b, ETF_K_LAYERNORM, y, IDS(x, g, be))->attr.norm.epsilon = 1e-5f;
    /* Transformer width, with a residual sum as a post-op. */
    int x2 = pb_in(&b, SH(1, 7, 768)), g2 = pb_const(&b, SH(768)), b2 = pb_const(&b, SH(768));
    int r2 = pb_in(&b, SH(1, 7, 768)), y2 = pb_act(&b, SH(1, 7, 768));
    struct etf_kernel *k = pb_kernel(&b, ETF_K_LAYERNORM, y2, IDS(x2, g2, b2));
    k->attr.norm.epsilon = 1e-5f;
    post_val(k, ETF_POST_SUM, 0, r2);
    pb_out(&b, y);
    pb_out(&b, y2);
    check_plan(&b);
}

/* ---- Shapes and elementwise ---- */

static void softmax_axes(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 23};
    int x = pb_in(&b, SH(2, 3, 7)), y = pb_act(&b, SH(2, 3, 7));
    pb_kernel(&b, ETF_K_SOFTMAX, y, IDS(x))->attr.axis.axis = 2;
    pb_out(&b, y);
    int x4 = pb_in(&b, SH(1, 6, 4, 4)), w = pb_const(&b, SH(6, 6, 1, 1));
    int h = pb_act(&b, SH(1, 6, 4, 4)), y4 = pb_act(&b, SH(1, 6, 4, 4));
    pb_conv(&b, h, x4, w, -1, 1, 0, 1, 1);
    pb_kernel(&b, ETF_K_SOFTMAX, y4, IDS(h))->attr.axis.axis = 1;
    pb_out(&b, y4);
    int xl = pb_in(&b, SH(3, 1000)), yl = pb_act(&b, SH(3, 1000));
    pb_kernel(&b, ETF_K_SOFTMAX, yl, IDS(xl))->attr.axis.axis = 1;
    pb_out(&b, yl);
    check_plan(&b);
}

static void concat_three_over_channels(void **state)
{
    NEED_GPU();
    /* Batch 2 and planes of 36 floats: the float4 copy, with rows of the output between
     * each input's two runs. */
    struct pb b = {.seed = 25};
    int x = pb_in(&b, SH(2, 8, 6, 6)), plain = pb_in(&b, SH(2, 5, 6, 6));
    int w1 = pb_const(&b, SH(16, 8, 1, 1)), w2 = pb_const(&b, SH(32, 8, 3, 3));
    int a = pb_act(&b, SH(2, 16, 6, 6)), c = pb_act(&b, SH(2, 32, 6, 6));
    int y = pb_act(&b, SH(2, 53, 6, 6));
    pb_conv(&b, a, x, w1, -1, 1, 0, 1, 1);
    pb_conv(&b, c, x, w2, -1, 1, 1, 1, 1);
    pb_kernel(&b, ETF_K_CONCAT, y, IDS(a, plain, c))->attr.axis.axis = 1;
    pb_out(&b, y);
    check_plan(&b);
}

static void concat_many_inputs(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 26};
    int in[6];
    for (int i = 0; i < 6; i++)
        in[i] = pb_in(&b, SH(2, (int64_t)i + 1, 3));
    int y = pb_act(&b, SH(2, 21, 3));
    pb_kernel(&b, ETF_K_CONCAT, y, in, 6)->attr.axis.axis = 1;
    pb_out(&b, y);
    check_plan(&b);
}

/* The exporter's attention block: eleven of its nineteen kernels are read in place
 * (src/device/views.c), products reading heads, K^T and scalings through strides and
 * writing the merged heads where the transpose would. */
static void attention_block_read_in_place(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 28};
    attention_plan_build(&b, 3, 7, 4, 8);
    check_plan(&b);
}

static void binary_broadcasting(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 27};
    int x = pb_in(&b, SH(2, 16, 5, 5)), s = pb_in(&b, SH(2, 16, 1, 1));
    int w = pb_const(&b, SH(16, 16, 1, 1)), cst = pb_const(&b, SH(16, 1, 1));
    int h = pb_act(&b, SH(2, 16, 5, 5));
    int add = pb_act(&b, SH(2, 16, 5, 5)), mul = pb_act(&b, SH(2, 16, 5, 5));
    int sub = pb_act(&b, SH(2, 16, 5, 5)), div = pb_act(&b, SH(2, 16, 5, 5));
    pb_conv(&b, h, x, w, -1, 1, 0, 1, 1);
    pb_kernel(&b, ETF_K_BINARY, add, IDS(h, s))->attr.binary.alg = ETF_BIN_ADD;
    pb_kernel(&b, ETF_K_BINARY, mul, IDS(s, x))->attr.binary.alg = ETF_BIN_MUL;
    pb_kernel(&b, ETF_K_BINARY, sub, IDS(cst, h))->attr.binary.alg = ETF_BIN_SUB;
    pb_kernel(&b, ETF_K_BINARY, div, IDS(x, cst))->attr.binary.alg = ETF_BIN_DIV;
    /* Both operands broadcast along different axes (the generic index path), a scalar. */
    int p = pb_in(&b, SH(2, 1, 5)), q = pb_in(&b, SH(3, 1)), one = pb_const(&b, SH(1));
    int outer = pb_act(&b, SH(2, 3, 5)), sc = pb_act(&b, SH(2, 3, 5));
    pb_kernel(&b, ETF_K_BINARY, outer, IDS(p, q))->attr.binary.alg = ETF_BIN_MUL;
    pb_kernel(&b, ETF_K_BINARY, sc, IDS(outer, one))->attr.binary.alg = ETF_BIN_ADD;
    pb_out(&b, add);
    pb_out(&b, mul);
    pb_out(&b, sub);
    pb_out(&b, div);
    pb_out(&b, sc);
    check_plan(&b);
}

static void transpose_bshd_to_bhsd(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 29};
    int x = pb_in(&b, SH(2, 5, 3, 8)), y = pb_act(&b, SH(2, 3, 5, 8));
    struct etf_kernel *k = pb_kernel(&b, ETF_K_TRANSPOSE, y, IDS(x));
    int perm[] = {0, 2, 1, 3};
    memcpy(k->attr.transpose.perm, perm, sizeof perm);
    int y2 = pb_act(&b, SH(8, 2, 3, 5));
    k = pb_kernel(&b, ETF_K_TRANSPOSE, y2, IDS(y));
    int perm2[] = {3, 0, 1, 2};
    memcpy(k->attr.transpose.perm, perm2, sizeof perm2);
    pb_out(&b, y);
    pb_out(&b, y2);
    check_plan(&b);
}

static void reduce_mean_axes(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 31};
    int x = pb_in(&b, SH(2, 16, 5, 6)), w = pb_const(&b, SH(16, 16, 1, 1));
    int h = pb_act(&b, SH(2, 16, 5, 6));
    int y = pb_act(&b, SH(2, 16, 1, 1)), y2 = pb_act(&b, SH(2, 1, 5, 6));
    int y3 = pb_act(&b, SH(1, 16, 1, 6)), y4 = pb_act(&b, SH(2, 16, 5, 1));
    pb_conv(&b, h, x, w, -1, 1, 0, 1, 1);
    pb_kernel(&b, ETF_K_REDUCE_MEAN, y, IDS(h))->attr.reduce.axes_mask = 0xc;
    pb_kernel(&b, ETF_K_REDUCE_MEAN, y2, IDS(x))->attr.reduce.axes_mask = 0x2;
    pb_kernel(&b, ETF_K_REDUCE_MEAN, y3, IDS(x))->attr.reduce.axes_mask = 0x5;
    pb_kernel(&b, ETF_K_REDUCE_MEAN, y4, IDS(x))->attr.reduce.axes_mask = 0x8;
    pb_out(&b, y);
    pb_out(&b, y2);
    pb_out(&b, y3);
    pb_out(&b, y4);
    check_plan(&b);
}

static void pad_and_crop(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 33};
    int x = pb_in(&b, SH(1, 4, 5, 5)), w = pb_const(&b, SH(16, 4, 1, 1));
    int h = pb_act(&b, SH(1, 16, 5, 5));
    int y = pb_act(&b, SH(1, 16, 8, 6)), y2 = pb_act(&b, SH(1, 5, 3, 6));
    pb_conv(&b, h, x, w, -1, 1, 0, 1, 1);
    struct etf_kernel *k = pb_kernel(&b, ETF_K_PAD, y, IDS(h));
    k->attr.pad.begin[2] = 1;
    k->attr.pad.end[2] = 2;
    k->attr.pad.end[3] = 1;
    k->attr.pad.value = 0.25f;
    k = pb_kernel(&b, ETF_K_PAD, y2, IDS(x)); /* channels +1, H cropped, W padded */
    k->attr.pad.begin[1] = 1;
    k->attr.pad.begin[2] = -1;
    k->attr.pad.end[2] = -1;
    k->attr.pad.end[3] = 1;
    pb_out(&b, y);
    pb_out(&b, y2);
    check_plan(&b);
}

static void eltwise_erf_sigmoid_tanh_and_more(void **state)
{
    NEED_GPU();
    static const enum etf_eltwise_alg algs[] = {ETF_ELT_ERF,   ETF_ELT_SIGMOID, ETF_ELT_TANH,
                                                ETF_ELT_EXP,   ETF_ELT_RELU,    ETF_ELT_GELU_ERF,
                                                ETF_ELT_SWISH, ETF_ELT_LINEAR,  ETF_ELT_CLIP};
    struct pb b = {.seed = 35};
    int x = pb_in(&b, SH(1, 16, 4, 4)), w = pb_const(&b, SH(16, 16, 1, 1));
    int h = pb_act(&b, SH(1, 16, 4, 4));
    pb_conv(&b, h, x, w, -1, 1, 0, 1, 1);
    for (size_t i = 0; i < sizeof algs / sizeof algs[0]; i++) {
        int y = pb_act(&b, SH(1, 16, 4, 4));
        struct etf_kernel *k = pb_kernel(&b, ETF_K_ELTWISE, y, IDS(i % 2 ? h : x));
        k->attr.eltwise.alg = algs[i];
        k->attr.eltwise.alpha = -0.5f;
        k->attr.eltwise.beta = 0.75f;
        pb_out(&b, y);
    }
    int pos = pb_const_range(&b, SH(3, 7), 0.1f, 4.f), y = pb_act(&b, SH(3, 7));
    pb_kernel(&b, ETF_K_ELTWISE, y, IDS(pos))->attr.eltwise.alg = ETF_ELT_SQRT;
    pb_out(&b, y);
    check_plan(&b);
}

/* conv -> relu -> reshape (alias) -> matmul -> softmax -> binary: values die and their bytes
 * are reused while others stay live; an output that is an alias. */
static void chain_with_alias_reuses_arena_safely(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 37};
    int x = pb_in(&b, SH(1, 8, 4, 4));
    int w = pb_const(&b, SH(16, 8, 3, 3)), wm = pb_const(&b, SH(256, 32));
    int bm = pb_const(&b, SH(32));
    int c = pb_act(&b, SH(1, 16, 4, 4)), r = pb_act(&b, SH(1, 16, 4, 4));
    int flat = pb_alias(&b, r, SH(1, 256));
    int m = pb_act(&b, SH(1, 32)), s = pb_act(&b, SH(1, 32)), y = pb_act(&b, SH(1, 32));
    pb_conv(&b, c, x, w, -1, 1, 1, 1, 1);
    pb_kernel(&b, ETF_K_ELTWISE, r, IDS(c))->attr.eltwise.alg = ETF_ELT_RELU;
    pb_kernel(&b, ETF_K_MATMUL, m, IDS(flat, wm, bm));
    pb_kernel(&b, ETF_K_SOFTMAX, s, IDS(m))->attr.axis.axis = 1;
    pb_kernel(&b, ETF_K_BINARY, y, IDS(s, m))->attr.binary.alg = ETF_BIN_ADD;
    pb_out(&b, y);
    pb_out(&b, flat);
    check_plan(&b);
}

/* Random small networks on 6x6 images: convs from any earlier value, residual sums, binary
 * adds and poolings, several outputs, many overlapping lifetimes in one arena. */
static void random_networks_match_the_reference(void **state)
{
    NEED_GPU();
    struct etf_device *d = open_cuda();
    for (uint32_t net = 0; net < 24; net++) {
        struct pb b = {.seed = 1000 + net};
        uint32_t r = 77 + net * 13;
        int vals[16], ch[16], n = 0;
        int64_t c0 = 8 + 8 * (int64_t)(net % 2);
        vals[n] = pb_in(&b, SH(1, c0, 6, 6));
        ch[n++] = (int)c0;
        while (n < 12) {
            int src = (int)((pb_rand(&r) + 1.f) * 0.5f * (float)n);
            int op = (int)((pb_rand(&r) + 1.f) * 2.f); /* 0..3 */
            int same = -1;
            for (int j = n - 1; j >= 0; j--)
                if (ch[j] == ch[src] && j != src && (pb_rand(&r) > -0.3f)) {
                    same = j;
                    break;
                }
            int y;
            if (op <= 1 || (op == 2 && same < 0)) {
                int64_t oc = op == 0 && same >= 0 ? ch[same]
                                                  : 8 * (1 + (int64_t)((pb_rand(&r) + 1.f) * 1.5f));
                int64_t ksz = pb_rand(&r) > 0.f ? 3 : 1;
                int w = pb_const(&b, SH(oc, ch[src], ksz, ksz));
                y = pb_act(&b, SH(1, oc, 6, 6));
                struct etf_kernel *k = pb_conv(&b, y, vals[src], w, -1, 1, ksz / 2, 1, 1);
                if (op == 0 && same >= 0)
                    post_val(k, ETF_POST_SUM, 0, vals[same]);
                post_elt(k, ETF_ELT_RELU, 0, 0);
                ch[n] = (int)oc;
            } else if (op == 2) {
                y = pb_act(&b, SH(1, ch[src], 6, 6));
                pb_kernel(&b, ETF_K_BINARY, y, IDS(vals[src], vals[same]))->attr.binary.alg =
                    ETF_BIN_ADD;
                ch[n] = ch[src];
            } else {
                y = pb_act(&b, SH(1, ch[src], 6, 6));
                struct etf_kernel *k = pb_kernel(&b, ETF_K_POOL, y, IDS(vals[src]));
                k->attr.pool.alg = ETF_POOL_MAX;
                for (int i = 0; i < 2; i++) {
                    k->attr.pool.kernel[i] = 3;
                    k->attr.pool.stride[i] = 1;
                    k->attr.pool.pad_begin[i] = k->attr.pool.pad_end[i] = 1;
                }
                ch[n] = ch[src];
            }
            vals[n++] = y;
        }
        pb_out(&b, vals[n - 1]);
        pb_out(&b, vals[1 + net % (uint32_t)(n - 2)]);
        check_plan_on(&b, d);
        pb_free(&b);
    }
    etf_device_close(d);
}

/* ---- Device behaviour ---- */

static void unsupported_plan_is_enotsup_naming_the_kernel(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 43};
    int x = pb_in(&b, SH(1, 4, 5, 5, 5)), w = pb_const(&b, SH(8, 4, 3, 3, 3));
    int y = pb_act(&b, SH(1, 8, 5, 5, 5));
    pb_conv(&b, y, x, w, -1, 1, 1, 1, 1);
    snprintf(b.p.kernels[0].name, sizeof b.p.kernels[0].name, "conv3d_7");
    pb_out(&b, y);
    pb_liveness(&b);
    struct etf_device *d = open_cuda();
    struct etf_model_desc desc = {.name = "bad", .plan = &b.p};
    struct etf_dmodel *dm = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf__device_load(d, &desc, &dm, &diag), ETF_ENOTSUP);
    assert_null(dm);
    assert_non_null(strstr(diag.msg, "conv3d_7"));
    assert_non_null(strstr(diag.msg, "2-D"));
    desc.plan = NULL;
    assert_int_equal(etf__device_load(d, &desc, &dm, &diag), ETF_EINVAL);
    etf_device_close(d);
    pb_free(&b);
}

static void launch_without_io_runs_and_keeps_buffers(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 45};
    int x = pb_in(&b, SH(1, 8, 8, 8)), w = pb_const(&b, SH(8, 8, 3, 3));
    int h = pb_act(&b, SH(1, 8, 8, 8)), y = pb_act(&b, SH(1, 8, 4, 4));
    post_elt(pb_conv(&b, h, x, w, -1, 1, 1, 1, 1), ETF_ELT_RELU, 0, 0);
    struct etf_kernel *k = pb_kernel(&b, ETF_K_POOL, y, IDS(h));
    k->attr.pool.alg = ETF_POOL_MAX;
    for (int i = 0; i < 2; i++)
        k->attr.pool.kernel[i] = k->attr.pool.stride[i] = 2;
    pb_out(&b, y);
    pb_liveness(&b);
    struct etf_device *d = open_cuda();
    struct etf_dmodel *dm = load_plan(d, &b.p);
    /* Two models loaded at once keep separate arenas. */
    struct etf_dmodel *dm2 = load_plan(d, &b.p);
    for (int rep = 0; rep < 3; rep++)
        run_task(d, dm, &b.p, NULL);
    float in[512], out[128], ref[128], out2[128];
    uint32_t seed = 1;
    for (size_t i = 0; i < 512; i++)
        in[i] = pb_rand(&seed);
    const float *ins[] = {in};
    float *outs[] = {out}, *refs[] = {ref}, *outs2[] = {out2};
    ref_run_plan(&b.p, ins, refs);
    struct etf_task_io io = {.inputs = ins, .outputs = outs};
    run_task(d, dm, &b.p, &io);
    expect_close(out, ref, 128, "after io-less runs");
    struct etf_task_io io2 = {.inputs = ins, .outputs = outs2};
    run_task(d, dm2, &b.p, &io2);
    expect_close(out2, ref, 128, "second model");
    struct etf_kernel_run run = {.dm = dm, .kernel = 2};
    assert_int_equal(etf__device_launch(d, &run), ETF_EINVAL);
    etf__device_unload(d, dm);
    etf__device_unload(d, dm2);
    etf_device_close(d);
    pb_free(&b);
}

/* Tasks whose inputs were staged ahead by `prepare`: one whose staging another task took
 * over (staged again at its submit), one run from its staged slot, and a hint for a task
 * that never comes; each computes from its own inputs. */
static void prepared_inputs_feed_their_own_task(void **state)
{
    NEED_GPU();
    struct pb b = {.seed = 46};
    int x = pb_in(&b, SH(1, 8, 6, 6)), w = pb_const(&b, SH(4, 8, 3, 3));
    int y = pb_act(&b, SH(1, 4, 6, 6));
    pb_conv(&b, y, x, w, -1, 1, 1, 1, 1);
    pb_out(&b, y);
    pb_liveness(&b);
    struct etf_device *d = open_cuda();
    struct etf_dmodel *dm = load_plan(d, &b.p);
    enum { TASKS = 4, IN = 288, OUT = 144 };
    float in[TASKS][IN], out[TASKS][OUT], ref[TASKS][OUT];
    const float *ins[TASKS][1];
    float *outs[TASKS][1];
    struct etf_task_io io[TASKS];
    uint32_t seed = 3;
    for (int t = 0; t < TASKS; t++) {
        for (int i = 0; i < IN; i++)
            in[t][i] = pb_rand(&seed);
        ins[t][0] = in[t];
        outs[t][0] = out[t];
        float *refs[] = {ref[t]};
        ref_run_plan(&b.p, ins[t], refs);
        io[t] = (struct etf_task_io){.inputs = ins[t], .outputs = outs[t]};
    }
    struct etf_kernel_run runs[TASKS];
    for (int t = 0; t < TASKS; t++)
        runs[t] = (struct etf_kernel_run){.dm = dm, .kernel = 0, .io = &io[t], .task = 100 + t};
    assert_true(etf__device_can_prepare(d));
    etf__device_prepare(d, &runs[1]);
    etf__device_prepare(d, &runs[2]); /* both slots hold staged inputs now */
    /* Task 0 takes task 1's slot (dropping its staging), task 1 is staged again at its
     * submit in the slot task 0 freed, task 2 runs from its own staged slot. */
    assert_int_equal(etf__device_submit(d, &runs[0]), 0);
    assert_int_equal(etf__device_fence(d, SIZE_MAX), 0);
    assert_int_equal(etf__device_submit(d, &runs[1]), 0);
    assert_int_equal(etf__device_submit(d, &runs[2]), 0);
    assert_int_equal(etf__device_submit(d, &runs[3]), ETF_EBUSY); /* both slots in flight */
    assert_int_equal(etf__device_fence(d, SIZE_MAX), 0);
    etf__device_prepare(d, &runs[3]); /* never submitted: its slot is taken as any free one */
    for (int t = 0; t < 3; t++) {
        char what[32];
        snprintf(what, sizeof what, "task %d", t);
        expect_close(out[t], ref[t], OUT, what);
    }
    etf__device_unload(d, dm);
    etf_device_close(d);
    pb_free(&b);
}

int main(void)
{
    int count = 0;
    have_gpu = cudaGetDeviceCount(&count) == cudaSuccess && count > 0;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(open_reports_the_gpu_or_its_absence),
        cmocka_unit_test(conv_3x3_stride1_pad1_bias),
        cmocka_unit_test(conv_3x3_stride2_pad1),
        cmocka_unit_test(conv_1x1),
        cmocka_unit_test(conv_first_layer_7x7_stride2),
        cmocka_unit_test(conv_grouped),
        cmocka_unit_test(conv_depthwise),
        cmocka_unit_test(conv_dilated),
        cmocka_unit_test(conv_batch_of_two_wide),
        cmocka_unit_test(conv_asymmetric_pads),
        cmocka_unit_test(conv_relu),
        cmocka_unit_test(conv_clip),
        cmocka_unit_test(conv_swish),
        cmocka_unit_test(conv_sum_relu_residual),
        cmocka_unit_test(conv_sum_relu_residual_read_later),
        cmocka_unit_test(conv_without_fusion),
        cmocka_unit_test(conv_through_the_graph_api),
        cmocka_unit_test(conv_through_the_legacy_api),
        cmocka_unit_test(conv_sum_of_model_input),
        cmocka_unit_test(conv_with_unfused_post_ops),
        cmocka_unit_test(conv_with_binary_post_ops),
        cmocka_unit_test(conv_with_activation_weights),
        cmocka_unit_test(matmul_2d_bias_gelu),
        cmocka_unit_test(matmul_batched_3d_bias_gelu),
        cmocka_unit_test(matmul_epilogues_in_the_product),
        cmocka_unit_test(matmul_of_two_activations),
        cmocka_unit_test(matmul_partial_broadcast),
        cmocka_unit_test(max_pool_with_padding),
        cmocka_unit_test(avg_pool_include_pad),
        cmocka_unit_test(avg_pool_exclude_pad),
        cmocka_unit_test(pool_ceil_mode_asymmetric),
        cmocka_unit_test(global_avg_pool),
        cmocka_unit_test(batchnorm_standalone),
        cmocka_unit_test(layernorm_last_axis),
        cmocka_unit_test(softmax_axes),
        cmocka_unit_test(concat_three_over_channels),
        cmocka_unit_test(concat_many_inputs),
        cmocka_unit_test(attention_block_read_in_place),
        cmocka_unit_test(binary_broadcasting),
        cmocka_unit_test(transpose_bshd_to_bhsd),
        cmocka_unit_test(reduce_mean_axes),
        cmocka_unit_test(pad_and_crop),
        cmocka_unit_test(eltwise_erf_sigmoid_tanh_and_more),
        cmocka_unit_test(chain_with_alias_reuses_arena_safely),
        cmocka_unit_test(random_networks_match_the_reference),
        cmocka_unit_test(unsupported_plan_is_enotsup_naming_the_kernel),
        cmocka_unit_test(launch_without_io_runs_and_keeps_buffers),
        cmocka_unit_test(prepared_inputs_feed_their_own_task),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
