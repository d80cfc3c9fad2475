/* Tests of the strided views (src/device/views.c): the view algebra, which kernels of a plan
 * are read in place, and, against the reference kernels, that every product reads (and
 * writes) through its views exactly the elements the plan means. No GPU needed: the CUDA
 * device runs these very views, and tests/test_device_cuda.c checks its numbers on a GPU. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "device/views.h"
#include "ref_kernels.h"
#include "plan_builder.h"
#include "attention_plan.h"

/* ---- The algebra ---- */

static void contiguous_merges_to_one_atom_and_permute_splits(void **state)
{
    (void)state;
    struct etf__view v, t, r;
    etf__view_contiguous(&v, 7, &SH(2, 3, 4));
    assert_int_equal(v.base, 7);
    assert_int_equal(v.ndim, 3);
    assert_int_equal(v.n_atoms, 3);
    /* [2,3,4] -> [3,2,4]: dim 0 walks 4 apart, dim 1 12 apart */
    etf__view_permute(&v, (int[]){1, 0, 2}, &t);
    assert_int_equal(t.size[0], 3);
    assert_int_equal(t.stride[0], 4);
    assert_int_equal(t.stride[1], 12);
    assert_int_equal(t.stride[2], 1);
    /* A reshape merging the permuted dims keeps two atoms in one dimension... */
    assert_true(etf__view_reshape(&t, &SH(6, 4), &r));
    assert_int_equal(r.group_end[0], 2);
    /* ...and one of a contiguous tensor merges them into one. */
    assert_true(etf__view_reshape(&v, &SH(6, 4), &r));
    assert_int_equal(r.group_end[0], 1);
    assert_int_equal(r.size[0], 6);
    assert_int_equal(r.stride[0], 4);
}

static void reshape_splits_an_atom_or_refuses(void **state)
{
    (void)state;
    struct etf__view v, t, r;
    etf__view_contiguous(&v, 0, &SH(4, 6));
    etf__view_permute(&v, (int[]){1, 0}, &t); /* [6,4]: strides 1, 6 */
    /* 6 = 2 x 3 splits the stride-1 atom into (2, 3) and (3, 1) */
    assert_true(etf__view_reshape(&t, &SH(2, 3, 4), &r));
    assert_int_equal(r.stride[0], 3);
    assert_int_equal(r.stride[1], 1);
    assert_int_equal(r.stride[2], 6);
    /* [6,4] read as [4,6] row-major would need atoms cut at 4 inside 6: not strided */
    assert_false(etf__view_reshape(&t, &SH(4, 6), &r));
    /* different element counts */
    assert_false(etf__view_reshape(&t, &SH(5, 5), &r));
}

static void select_offsets_and_strides(void **state)
{
    (void)state;
    struct etf__view v, s;
    etf__view_contiguous(&v, 0, &SH(3, 10));
    assert_true(etf__view_select(&v, 0, 2, 1, 1, &s));
    assert_int_equal(s.offset, 20);
    assert_true(etf__view_select(&v, 1, 1, 3, 3, &s)); /* columns 1, 4, 7 */
    assert_int_equal(s.offset, 1);
    assert_int_equal(s.size[1], 3);
    assert_int_equal(s.stride[1], 3);
    assert_false(etf__view_select(&v, 1, 8, 3, 3, &s)); /* past the end */
    assert_false(etf__view_select(&v, 2, 0, 1, 1, &s));
}

static void matrices_normal_transposed_and_per_batch(void **state)
{
    (void)state;
    struct etf__view v, t;
    struct etf__view_matrix m;
    bool oom;
    etf__view_contiguous(&v, 0, &SH(2, 3, 4));
    assert_true(etf__view_as_matrix(&v, 3, (int64_t[]){2}, &m, &oom));
    assert_false(m.transposed);
    assert_int_equal(m.ld, 4);
    assert_null(m.offset);
    assert_int_equal(m.batch_stride, 12);
    etf__view_permute(&v, (int[]){0, 2, 1}, &t); /* [2,4,3], each matrix transposed */
    assert_true(etf__view_as_matrix(&t, 3, (int64_t[]){2}, &m, &oom));
    assert_true(m.transposed);
    assert_int_equal(m.ld, 4);
    /* a batch of 2x2 from [2 (stride 12), 2 (stride 4)] heads: uneven, one offset each */
    struct etf__view r;
    assert_true(etf__view_reshape(&v, &SH(2, 3, 2, 2), &r));
    etf__view_permute(&r, (int[]){0, 2, 1, 3}, &t); /* [2,2,3,2] */
    assert_true(etf__view_as_matrix(&t, 4, (int64_t[]){2, 2}, &m, &oom));
    assert_non_null(m.offset);
    assert_int_equal(m.offset[1], 2);
    assert_int_equal(m.offset[2], 12);
    assert_int_equal(m.offset[3], 14);
    assert_int_equal(m.ld, 4);
    etf__view_matrix_free(&m);
    /* a matrix dimension of two atoms is no matrix: the [2,2,3,2] permutation's first two
     * dims (strides 2 and 12) become the 4 rows of [4,6], which no single stride walks */
    etf__view_permute(&r, (int[]){2, 0, 1, 3}, &t);
    struct etf__view flat;
    assert_true(etf__view_reshape(&t, &SH(4, 6), &flat));
    assert_false(etf__view_as_matrix(&flat, 2, NULL, &m, &oom));
    assert_false(oom);
}

/* ---- The plan ---- */

/* Every product of plan p reads through its views what the reference computed for its
 * operands, and writes its result where the reference has it: operand by operand, element
 * by element. */
static void expect_products_read_the_plan(const struct etf_plan *p, const struct etf__views *vw,
                                          float **ref)
{
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        if (kn->op != ETF_K_MATMUL || vw->skip[k])
            continue;
        struct etf__view_product pr;
        bool oom;
        const int values[3] = {kn->inputs[0], kn->inputs[1], kn->output};
        assert_true(etf__view_product(p, kn, &vw->of[values[0]], &vw->of[values[1]],
                                      &vw->of[values[2]], &pr, &oom));
        /* The reference's contiguous operands, broadcast like numpy over the batch. */
        int nd;
        int64_t dims[3][ETF_MAX_DIMS];
        assert_int_equal(etf__plan_matmul_dims(p, kn, &nd, dims[0], dims[1], dims[2], NULL, 0), 0);
        int64_t M = dims[2][nd - 2], Bref = 1;
        for (int i = 0; i < nd - 2; i++)
            Bref *= dims[2][i];
        assert_int_equal(pr.batch * pr.m, Bref * M); /* a split M only regroups rows */
        const struct etf__view_matrix *mats[3] = {&pr.a, &pr.w, &pr.y};
        for (int o = 0; o < 3; o++) {
            const struct etf__view_matrix *m = mats[o];
            const float *want = ref[ref_storage(p, values[o])], *have = ref[vw->of[values[o]].base];
            float scale = o == 2 ? 1.0f : vw->of[values[o]].scale;
            int64_t rows = m->rows, cols = m->cols;
            for (int64_t t = 0; t < pr.batch; t++) {
                for (int64_t r = 0; r < rows; r++) {
                    /* row r of product batch t: row (t * rows + r) of the stacked product,
                     * then that row's batch and row in the reference's broadcast operand */
                    int64_t stacked = t * pr.m + (o == 1 ? 0 : r), bt = stacked / M;
                    int64_t own = 0, rest = bt, mul = 1;
                    for (int i = nd - 3; i >= 0; i--) {
                        int64_t idx = rest % dims[2][i];
                        rest /= dims[2][i];
                        own += (dims[o][i] == 1 ? 0 : idx) * mul;
                        mul *= dims[o][i];
                    }
                    int64_t ref_row = o == 1 ? r : stacked % M;
                    int64_t off = m->offset ? m->offset[t] : m->first + t * m->batch_stride;
                    for (int64_t c = 0; c < cols; c++) {
                        int64_t at = off + (m->transposed ? r + c * m->ld : r * m->ld + c);
                        float w = want[(own * dims[o][nd - 2] + ref_row) * cols + c];
                        float h = scale * have[at];
                        if (fabsf(w - h) > 1e-6f * (1.0f + fabsf(w)))
                            fail_msg("kernel %s operand %d batch %lld (%lld, %lld): %g != %g",
                                     kn->name, o, (long long)t, (long long)r, (long long)c,
                                     (double)h, (double)w);
                    }
                }
            }
        }
        etf__view_product_free(&pr);
    }
}

static void run_and_check(struct pb *b, const struct etf__views *vw)
{
    const struct etf_plan *p = &b->p;
    float **in = calloc(p->n_inputs, sizeof *in);
    uint32_t seed = 99;
    for (size_t i = 0; i < p->n_inputs; i++) {
        size_t n = ref_elems(&p->values[p->inputs[i]].shape);
        in[i] = malloc(n * sizeof(float));
        for (size_t j = 0; j < n; j++)
            in[i][j] = pb_rand(&seed);
    }
    float **ref = ref_run_plan_values(p, (const float *const *)in);
    expect_products_read_the_plan(p, vw, ref);
    ref_free_values(p, ref);
    for (size_t i = 0; i < p->n_inputs; i++)
        free(in[i]);
    free(in);
}

static void attention_runs_only_its_products_softmax_and_residual(void **state)
{
    (void)state;
    struct pb b = {.seed = 3};
    struct attention_plan a = attention_plan_build(&b, 2, 5, 2, 4);
    struct etf__views vw;
    assert_int_equal(etf__views_plan(&b.p, true, &vw), 0);
    for (size_t k = 0; k < b.p.n_kernels; k++)
        printf("    %s %s%s\n", b.p.kernels[k].name, etf__plan_op_name(b.p.kernels[k].op),
               vw.skip[k] ? " (read in place)" : "");
    /* The batch-first transposes run: read in place, they would split a one-GEMM projection
     * into a batch of small ones (slower than the transpose it saves). */
    const int skipped[] = {a.k_split,    a.k_pick[0],  a.k_pick[1],  a.k_pick[2],
                           a.k_heads[0], a.k_heads[1], a.k_heads[2], a.k_scale_q,
                           a.k_kt,       a.k_scale_k,  a.k_merge};
    const int kept[] = {a.k_to_seq,  a.k_proj,     a.k_scores,   a.k_softmax,
                        a.k_context, a.k_out_proj, a.k_to_batch, a.k_residual};
    for (size_t i = 0; i < sizeof skipped / sizeof *skipped; i++)
        assert_true(vw.skip[skipped[i]]);
    for (size_t i = 0; i < sizeof kept / sizeof *kept; i++)
        assert_false(vw.skip[kept[i]]);
    assert_int_equal(vw.n_skipped, sizeof skipped / sizeof *skipped);
    /* The scalings ride on the views; the context product writes the merged heads' place. */
    const struct etf_kernel *scores = &b.p.kernels[a.k_scores];
    assert_true(fabsf(vw.of[scores->inputs[0]].scale * vw.of[scores->inputs[1]].scale -
                      1.0f / 2.0f) < 1e-6f);
    int merged = b.p.kernels[a.k_merge].output;
    assert_int_equal(vw.of[b.p.kernels[a.k_context].output].base, merged);
    run_and_check(&b, &vw);
    etf__views_free(&vw);
    pb_free(&b);
}

static void nothing_is_skipped_when_not_allowed(void **state)
{
    (void)state;
    struct pb b = {.seed = 4};
    attention_plan_build(&b, 2, 3, 2, 2);
    struct etf__views vw;
    assert_int_equal(etf__views_plan(&b.p, false, &vw), 0);
    assert_int_equal(vw.n_skipped, 0);
    for (size_t v = 0; v < b.p.n_values; v++)
        assert_int_equal(vw.of[v].base, ref_storage(&b.p, (int)v));
    run_and_check(&b, &vw);
    etf__views_free(&vw);
    pb_free(&b);
}

/* Kernels other than products read contiguous values: a transpose feeding a softmax, or a
 * model output, or a residual sum, runs. */
static void transposes_that_other_kernels_read_run(void **state)
{
    (void)state;
    struct pb b = {.seed = 5};
    int x = pb_in(&b, SH(3, 4)), w = pb_const(&b, SH(3, 2));
    int t1 = pb_act(&b, SH(4, 3)), s = pb_act(&b, SH(4, 3));
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t1, IDS(x)), 1, 0, 0, 0);
    pb_kernel(&b, ETF_K_SOFTMAX, s, IDS(t1))->attr.axis.axis = 1;
    int t2 = pb_act(&b, SH(4, 3)); /* a model output */
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t2, IDS(x)), 1, 0, 0, 0);
    int t3 = pb_act(&b, SH(4, 3)), m = pb_act(&b, SH(4, 2));
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t3, IDS(x)), 1, 0, 0, 0);
    pb_kernel(&b, ETF_K_MATMUL, m, IDS(t3, w)); /* read in place */
    /* a product with a residual writes its own output: the transpose after it runs */
    int r = pb_in(&b, SH(4, 2)), m2 = pb_act(&b, SH(4, 2)), t4 = pb_act(&b, SH(2, 4));
    post_val(pb_kernel(&b, ETF_K_MATMUL, m2, IDS(t3, w)), ETF_POST_SUM, ETF_BIN_ADD, r);
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t4, IDS(m2)), 1, 0, 0, 0);
    pb_out(&b, s);
    pb_out(&b, t2);
    pb_out(&b, m);
    pb_out(&b, t4);
    struct etf__views vw;
    assert_int_equal(etf__views_plan(&b.p, true, &vw), 0);
    assert_false(vw.skip[0]);
    assert_false(vw.skip[2]);
    assert_true(vw.skip[3]);
    assert_false(vw.skip[6]);
    assert_int_equal(vw.n_skipped, 1);
    run_and_check(&b, &vw);
    etf__views_free(&vw);
    pb_free(&b);
}

/* A batched product writing [S*B, E] rows into a [B, S, E] place: its rows are not evenly
 * spaced there, so M splits into S batches of B rows. */
static void rows_split_into_batches_to_write_through(void **state)
{
    (void)state;
    struct pb b = {.seed = 7};
    int x = pb_in(&b, SH(2, 12, 5)), w = pb_const(&b, SH(2, 5, 5));
    int y = pb_act(&b, SH(2, 12, 5)), t = pb_act(&b, SH(2, 4, 3, 5)),
        s = pb_act(&b, SH(2, 4, 3, 5));
    pb_kernel(&b, ETF_K_MATMUL, y, IDS(x, w));
    int y4 = pb_alias(&b, y, SH(2, 3, 4, 5));
    attention_perm(pb_kernel(&b, ETF_K_TRANSPOSE, t, IDS(y4)), 0, 2, 1, 3);
    pb_kernel(&b, ETF_K_SOFTMAX, s, IDS(t))->attr.axis.axis = 3;
    pb_out(&b, s);
    struct etf__views vw;
    assert_int_equal(etf__views_plan(&b.p, true, &vw), 0);
    assert_true(vw.skip[1]);
    assert_int_equal(vw.of[y].base, t);
    struct etf__view_product pr;
    bool oom;
    assert_true(
        etf__view_product(&b.p, &b.p.kernels[0], &vw.of[x], &vw.of[w], &vw.of[y], &pr, &oom));
    assert_int_equal(pr.batch, 6);
    assert_int_equal(pr.m, 4);
    etf__view_product_free(&pr);
    run_and_check(&b, &vw);
    etf__views_free(&vw);
    pb_free(&b);
}

/* A product by a 0/1 matrix that picks no evenly spaced indexes is a real product. */
static void uneven_picks_are_products(void **state)
{
    (void)state;
    struct pb b = {.seed = 6};
    int x = pb_in(&b, SH(5, 4)), sel = pb_const(&b, SH(4, 3)), y = pb_act(&b, SH(5, 3));
    float *d = (float *)b.p.values[sel].data;
    memset(d, 0, 12 * sizeof *d);
    d[0 * 3 + 0] = d[1 * 3 + 1] = d[3 * 3 + 2] = 1.0f; /* columns 0, 1, 3 */
    pb_kernel(&b, ETF_K_MATMUL, y, IDS(x, sel));
    int z = pb_act(&b, SH(5, 3));
    pb_kernel(&b, ETF_K_SOFTMAX, z, IDS(y))->attr.axis.axis = 1;
    pb_out(&b, z);
    struct etf__views vw;
    assert_int_equal(etf__views_plan(&b.p, true, &vw), 0);
    assert_int_equal(vw.n_skipped, 0);
    etf__views_free(&vw);
    d[3 * 3 + 2] = 0.0f;
    d[2 * 3 + 2] = 1.0f; /* columns 0, 1, 2: a slice, but read by a softmax: still run */
    assert_int_equal(etf__views_plan(&b.p, true, &vw), 0);
    assert_int_equal(vw.n_skipped, 0);
    etf__views_free(&vw);
    pb_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(contiguous_merges_to_one_atom_and_permute_splits),
        cmocka_unit_test(reshape_splits_an_atom_or_refuses),
        cmocka_unit_test(select_offsets_and_strides),
        cmocka_unit_test(matrices_normal_transposed_and_per_batch),
        cmocka_unit_test(attention_runs_only_its_products_softmax_and_residual),
        cmocka_unit_test(nothing_is_skipped_when_not_allowed),
        cmocka_unit_test(transposes_that_other_kernels_read_run),
        cmocka_unit_test(rows_split_into_batches_to_write_through),
        cmocka_unit_test(uneven_picks_are_products),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
