/* A self-attention block laid out the way PyTorch's ONNX export of a batch-first
 * nn.MultiheadAttention comes out of the model layer: transposes to sequence-first and
 * back, the fused Q/K/V projection split by gathers (products by one-hot constants), heads
 * split out of the embedding by reshapes and transposes, Q and K scaled separately, K
 * transposed for Q K^T. The plan the views analysis (src/device/views.c) was written for:
 * tests/test_views.c checks what it skips, tests/test_device_cuda.c that the GPU computes
 * the same as the reference with those kernels skipped.
 *
 * Needs plan_builder.h. Kernel indexes are in struct attention_plan. */
#ifndef ETF_TESTS_ATTENTION_PLAN_H
#define ETF_TESTS_ATTENTION_PLAN_H

struct attention_plan {
    int x, out; /* input [B,S,E], output [B,S,E] */
    int k_to_seq, k_proj, k_split, k_pick[3], k_heads[3], k_scale_q, k_kt, k_scale_k;
    int k_scores, k_softmax, k_context, k_merge, k_out_proj, k_to_batch, k_residual;
};

static void attention_perm(struct etf_kernel *k, int p0, int p1, int p2, int p3)
{
    k->attr.transpose.perm[0] = p0;
    k->attr.transpose.perm[1] = p1;
    k->attr.transpose.perm[2] = p2;
    k->attr.transpose.perm[3] = p3; /* unused by 3-D transposes */
}

/* One-hot rows: S [1, 3] picking index i, the way plan_build.c lowers a Gather. */
static int attention_pick(struct pb *b, int i)
{
    int s = pb_const(b, SH(1, 3));
    float *d = (float *)b->p.values[s].data;
    for (int j = 0; j < 3; j++)
        d[j] = j == i ? 1.0f : 0.0f;
    return s;
}

static struct attention_plan attention_plan_build(struct pb *b, int64_t B, int64_t S, int64_t H,
                                                  int64_t D)
{
    struct attention_plan a;
    int64_t E = H * D;
    int k = 0;
    a.x = pb_in(b, SH(B, S, E));
    int seq = pb_act(b, SH(S, B, E));
    a.k_to_seq = k++;
    attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, seq, IDS(a.x)), 1, 0, 2, 0);
    int w_qkv = pb_const(b, SH(E, 3 * E)), b_qkv = pb_const(b, SH(3 * E));
    int proj = pb_act(b, SH(S, B, 3 * E));
    a.k_proj = k++;
    pb_kernel(b, ETF_K_MATMUL, proj, IDS(seq, w_qkv, b_qkv));
    int proj4 = pb_alias(b, proj, SH(S, B, 3, E));
    int split = pb_act(b, SH(3, S, B, E));
    a.k_split = k++;
    attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, split, IDS(proj4)), 2, 0, 1, 3);
    int split2 = pb_alias(b, split, SH(3, S * B * E));
    int heads[3];
    for (int i = 0; i < 3; i++) {
        int sel = attention_pick(b, i);
        int picked = pb_act(b, SH(1, S * B * E));
        a.k_pick[i] = k++;
        pb_kernel(b, ETF_K_MATMUL, picked, IDS(sel, split2));
        int seq_heads = pb_alias(b, picked, SH(S, B * H, D));
        int by_head = pb_act(b, SH(B * H, S, D));
        a.k_heads[i] = k++;
        attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, by_head, IDS(seq_heads)), 1, 0, 2, 0);
        heads[i] = pb_alias(b, by_head, SH(B, H, S, D));
    }
    /* Q and K scaled by D^-1/4 each, as the exporter writes scaled_dot_product_attention. */
    float scale = 1.0f / sqrtf(sqrtf((float)D));
    int q = pb_act(b, SH(B, H, S, D));
    a.k_scale_q = k++;
    struct etf_kernel *kn = pb_kernel(b, ETF_K_ELTWISE, q, IDS(heads[0]));
    kn->attr.eltwise.alg = ETF_ELT_LINEAR;
    kn->attr.eltwise.alpha = scale;
    int kt = pb_act(b, SH(B, H, D, S));
    a.k_kt = k++;
    attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, kt, IDS(heads[1])), 0, 1, 3, 2);
    int kts = pb_act(b, SH(B, H, D, S));
    a.k_scale_k = k++;
    kn = pb_kernel(b, ETF_K_ELTWISE, kts, IDS(kt));
    kn->attr.eltwise.alg = ETF_ELT_LINEAR;
    kn->attr.eltwise.alpha = scale;
    int scores = pb_act(b, SH(B, H, S, S));
    a.k_scores = k++;
    pb_kernel(b, ETF_K_MATMUL, scores, IDS(q, kts));
    int attn = pb_act(b, SH(B, H, S, S));
    a.k_softmax = k++;
    pb_kernel(b, ETF_K_SOFTMAX, attn, IDS(scores))->attr.axis.axis = 3;
    int context = pb_act(b, SH(B, H, S, D));
    a.k_context = k++;
    pb_kernel(b, ETF_K_MATMUL, context, IDS(attn, heads[2]));
    int merged = pb_act(b, SH(S, B, H, D));
    a.k_merge = k++;
    attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, merged, IDS(context)), 2, 0, 1, 3);
    int rows = pb_alias(b, merged, SH(S * B, E));
    int w_o = pb_const(b, SH(E, E)), b_o = pb_const(b, SH(E));
    int o = pb_act(b, SH(S * B, E));
    a.k_out_proj = k++;
    pb_kernel(b, ETF_K_MATMUL, o, IDS(rows, w_o, b_o));
    int o3 = pb_alias(b, o, SH(S, B, E));
    int back = pb_act(b, SH(B, S, E));
    a.k_to_batch = k++;
    attention_perm(pb_kernel(b, ETF_K_TRANSPOSE, back, IDS(o3)), 1, 0, 2, 0);
    a.out = pb_act(b, SH(B, S, E));
    a.k_residual = k++;
    pb_kernel(b, ETF_K_BINARY, a.out, IDS(back, a.x))->attr.binary.alg = ETF_BIN_ADD;
    pb_out(b, a.out);
    return a;
}

#endif
