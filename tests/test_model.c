/* Tests of the model layer: ONNX models built in C with the protobuf-c structs, loaded into
 * plans. Covers folding (BatchNormalization into Conv, Gemm's transB and alpha/beta, shape
 * arithmetic), fusion (bias, ReLU, residual sum, SiLU, GELU), views, the batch option,
 * liveness, and every documented rejection with its code and message.
 *
 * `test_model --write-seeds DIR` writes small valid models for the fuzzer's corpus.
 */
#include "device/device.h"
#include "etf/model.h"
#include "model/plan.h"
#include "onnx.pb-c.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- a small ONNX builder ---- */

#define MAXN 128

struct mb {
    Onnx__ModelProto model;
    Onnx__GraphProto graph;
    Onnx__OperatorSetIdProto opset;
    Onnx__OperatorSetIdProto *opsets[1];
    Onnx__NodeProto *nodes[MAXN];
    Onnx__TensorProto *inits[MAXN];
    Onnx__ValueInfoProto *ins[8], *outs[8];
    void **allocs;
    size_t n_allocs, cap_allocs;
};

static void *mb_alloc(struct mb *m, size_t n)
{
    void *p = calloc(1, n ? n : 1);
    assert_non_null(p);
    if (m->n_allocs == m->cap_allocs) {
        m->cap_allocs = m->cap_allocs ? 2 * m->cap_allocs : 64;
        m->allocs = realloc(m->allocs, m->cap_allocs * sizeof *m->allocs);
        assert_non_null(m->allocs);
    }
    m->allocs[m->n_allocs++] = p;
    return p;
}

static char *mb_str(struct mb *m, const char *s)
{
    char *p = mb_alloc(m, strlen(s) + 1);
    strcpy(p, s);
    return p;
}

static void mb_init(struct mb *m, int64_t opset)
{
    memset(m, 0, sizeof *m);
    onnx__model_proto__init(&m->model);
    onnx__graph_proto__init(&m->graph);
    onnx__operator_set_id_proto__init(&m->opset);
    m->model.has_ir_version = 1;
    m->model.ir_version = 8;
    m->opset.domain = mb_str(m, "");
    m->opset.has_version = 1;
    m->opset.version = opset;
    m->opsets[0] = &m->opset;
    m->model.n_opset_import = 1;
    m->model.opset_import = m->opsets;
    m->model.graph = &m->graph;
    m->graph.name = mb_str(m, "g");
    m->graph.node = m->nodes;
    m->graph.initializer = m->inits;
    m->graph.input = m->ins;
    m->graph.output = m->outs;
}

static void mb_done(struct mb *m)
{
    for (size_t i = 0; i < m->n_allocs; i++)
        free(m->allocs[i]);
    free(m->allocs);
}

/* "a b _" -> {"a", "b", ""} */
static char **mb_split(struct mb *m, const char *s, size_t *n)
{
    char **v = mb_alloc(m, 16 * sizeof *v);
    *n = 0;
    char buf[128];
    while (*s) {
        while (*s == ' ')
            s++;
        if (!*s)
            break;
        size_t len = strcspn(s, " ");
        assert_true(len < sizeof buf && *n < 16);
        memcpy(buf, s, len);
        buf[len] = 0;
        v[(*n)++] = mb_str(m, strcmp(buf, "_") ? buf : "");
        s += len;
    }
    return v;
}

static Onnx__NodeProto *mb_node(struct mb *m, const char *op, const char *name, const char *ins,
                                const char *outs)
{
    assert_true(m->graph.n_node < MAXN);
    Onnx__NodeProto *n = mb_alloc(m, sizeof *n);
    onnx__node_proto__init(n);
    n->op_type = mb_str(m, op);
    n->name = mb_str(m, name);
    n->input = mb_split(m, ins, &n->n_input);
    n->output = mb_split(m, outs, &n->n_output);
    n->attribute = mb_alloc(m, 16 * sizeof *n->attribute);
    m->nodes[m->graph.n_node++] = n;
    return n;
}

static Onnx__AttributeProto *mb_attr(struct mb *m, Onnx__NodeProto *n, const char *name,
                                     Onnx__AttributeProto__AttributeType type)
{
    Onnx__AttributeProto *a = mb_alloc(m, sizeof *a);
    onnx__attribute_proto__init(a);
    a->name = mb_str(m, name);
    a->has_type = 1;
    a->type = type;
    n->attribute[n->n_attribute++] = a;
    return a;
}

static void attr_i(struct mb *m, Onnx__NodeProto *n, const char *name, int64_t v)
{
    Onnx__AttributeProto *a = mb_attr(m, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT);
    a->has_i = 1;
    a->i = v;
}

static void attr_f(struct mb *m, Onnx__NodeProto *n, const char *name, float v)
{
    Onnx__AttributeProto *a = mb_attr(m, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT);
    a->has_f = 1;
    a->f = v;
}

static void attr_ints(struct mb *m, Onnx__NodeProto *n, const char *name, size_t cnt,
                      const int64_t *v)
{
    Onnx__AttributeProto *a = mb_attr(m, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS);
    a->ints = mb_alloc(m, cnt * sizeof *a->ints);
    memcpy(a->ints, v, cnt * sizeof *v);
    a->n_ints = cnt;
}

static void attr_s(struct mb *m, Onnx__NodeProto *n, const char *name, const char *v)
{
    Onnx__AttributeProto *a = mb_attr(m, n, name, ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING);
    a->has_s = 1;
    a->s.data = (uint8_t *)mb_str(m, v);
    a->s.len = strlen(v);
}

#define DIMS(...)                                                                                  \
    (sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[])                              \
    {                                                                                              \
        __VA_ARGS__                                                                                \
    }
#define SCALAR 0, NULL
#define INTS(...) DIMS(__VA_ARGS__)

static size_t count(size_t ndim, const int64_t *dims)
{
    size_t n = 1;
    for (size_t i = 0; i < ndim; i++)
        n *= (size_t)dims[i];
    return n;
}

static Onnx__TensorProto *mb_tensor(struct mb *m, const char *name, int32_t dt, size_t ndim,
                                    const int64_t *dims, const void *raw, size_t raw_len)
{
    Onnx__TensorProto *t = mb_alloc(m, sizeof *t);
    onnx__tensor_proto__init(t);
    t->name = mb_str(m, name);
    t->has_data_type = 1;
    t->data_type = dt;
    t->dims = mb_alloc(m, (ndim ? ndim : 1) * sizeof *t->dims);
    memcpy(t->dims, dims ? dims : (int64_t[]){0}, ndim * sizeof *dims);
    t->n_dims = ndim;
    if (raw) {
        t->has_raw_data = 1;
        t->raw_data.data = mb_alloc(m, raw_len);
        memcpy(t->raw_data.data, raw, raw_len);
        t->raw_data.len = raw_len;
    }
    return t;
}

static Onnx__TensorProto *mb_init_f(struct mb *m, const char *name, size_t ndim,
                                    const int64_t *dims, const float *data)
{
    Onnx__TensorProto *t = mb_tensor(m, name, ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, ndim, dims,
                                     data, count(ndim, dims) * sizeof(float));
    m->inits[m->graph.n_initializer++] = t;
    return t;
}

static Onnx__TensorProto *mb_init_i(struct mb *m, const char *name, size_t ndim,
                                    const int64_t *dims, const int64_t *data)
{
    Onnx__TensorProto *t = mb_tensor(m, name, ONNX__TENSOR_PROTO__DATA_TYPE__INT64, ndim, dims,
                                     data, count(ndim, dims) * sizeof(int64_t));
    m->inits[m->graph.n_initializer++] = t;
    return t;
}

/* A float initializer filled with a deterministic pattern; its data is returned. */
static float *mb_weights(struct mb *m, const char *name, size_t ndim, const int64_t *dims,
                         unsigned seed)
{
    size_t n = count(ndim, dims);
    float *v = mb_alloc(m, n * sizeof *v);
    uint32_t x = seed * 2654435761u + 12345u;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        v[i] = (float)((x >> 8) & 0xffff) / 65536.0f - 0.5f;
    }
    mb_init_f(m, name, ndim, dims, v);
    return v;
}

/* A model input; a negative dim is symbolic ("N"). */
static void mb_input(struct mb *m, const char *name, int32_t elem, size_t ndim, const int64_t *dims)
{
    Onnx__ValueInfoProto *vi = mb_alloc(m, sizeof *vi);
    onnx__value_info_proto__init(vi);
    vi->name = mb_str(m, name);
    Onnx__TypeProto *tp = mb_alloc(m, sizeof *tp);
    onnx__type_proto__init(tp);
    Onnx__TypeProto__Tensor *tt = mb_alloc(m, sizeof *tt);
    onnx__type_proto__tensor__init(tt);
    Onnx__TensorShapeProto *sh = mb_alloc(m, sizeof *sh);
    onnx__tensor_shape_proto__init(sh);
    sh->dim = mb_alloc(m, (ndim ? ndim : 1) * sizeof *sh->dim);
    for (size_t i = 0; i < ndim; i++) {
        Onnx__TensorShapeProto__Dimension *d = mb_alloc(m, sizeof *d);
        onnx__tensor_shape_proto__dimension__init(d);
        if (dims[i] < 0) {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM;
            d->dim_param = mb_str(m, i == 0 ? "N" : "seq");
        } else {
            d->value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
            d->dim_value = dims[i];
        }
        sh->dim[i] = d;
    }
    sh->n_dim = ndim;
    tt->has_elem_type = 1;
    tt->elem_type = elem;
    tt->shape = sh;
    tp->value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    tp->tensor_type = tt;
    vi->type = tp;
    m->ins[m->graph.n_input++] = vi;
}

static void mb_output(struct mb *m, const char *name)
{
    Onnx__ValueInfoProto *vi = mb_alloc(m, sizeof *vi);
    onnx__value_info_proto__init(vi);
    vi->name = mb_str(m, name);
    m->outs[m->graph.n_output++] = vi;
}

static uint8_t *mb_pack(struct mb *m, size_t *len)
{
    *len = onnx__model_proto__get_packed_size(&m->model);
    uint8_t *buf = malloc(*len ? *len : 1);
    assert_non_null(buf);
    assert_int_equal(onnx__model_proto__pack(&m->model, buf), *len);
    return buf;
}

static int mb_parse_opts(struct mb *m, const char *base_dir, const struct etf_model_options *o,
                         struct etf_plan **p, struct etf_diag *d)
{
    size_t len;
    uint8_t *buf = mb_pack(m, &len);
    memset(d->msg, 0, sizeof d->msg);
    int rc = etf_model_parse(buf, len, "test.onnx", base_dir, o, p, d);
    free(buf);
    if (rc)
        assert_null(*p);
    return rc;
}

static int mb_parse(struct mb *m, size_t batch, struct etf_plan **p, struct etf_diag *d)
{
    struct etf_model_options o = {.batch = batch};
    return mb_parse_opts(m, NULL, &o, p, d);
}

/* ---- plan checks ---- */

static void expect_names(const struct etf_plan *p, size_t n, const char *const *names)
{
    for (size_t k = 0; k < p->n_kernels; k++)
        printf("    kernel %zu: %s\n", k, p->kernels[k].name);
    assert_int_equal(p->n_kernels, n);
    for (size_t k = 0; k < n; k++)
        assert_string_equal(etf_plan_kernel_name(p, k), names[k]);
}

#define NAMES(...)                                                                                 \
    (sizeof((const char *[]){__VA_ARGS__}) / sizeof(const char *)), (const char *[])               \
    {                                                                                              \
        __VA_ARGS__                                                                                \
    }

static const struct etf_value *val(const struct etf_plan *p, int v)
{
    assert_true(v >= 0 && (size_t)v < p->n_values);
    return &p->values[v];
}

static void expect_shape(const struct etf_shape *s, size_t ndim, const int64_t *d)
{
    assert_int_equal(s->ndim, ndim);
    for (size_t i = 0; i < ndim; i++)
        assert_int_equal(s->d[i], d[i]);
}

static void expect_close(float got, float want)
{
    if (!(fabsf(got - want) <= 1e-5f + 1e-5f * fabsf(want)))
        fail_msg("got %.9g, want %.9g", (double)got, (double)want);
}

/* Invariants every plan must satisfy: aliases point at storage of the same size, liveness
 * covers every use, model outputs live to the end, constants have data. */
static void check_plan(const struct etf_plan *p)
{
    for (size_t i = 0; i < p->n_values; i++) {
        const struct etf_value *v = &p->values[i];
        assert_non_null(v->name);
        if (v->alias_of >= 0) {
            const struct etf_value *s = val(p, v->alias_of);
            assert_int_equal(s->alias_of, -1);
            assert_int_equal(etf__shape_elems(&v->shape), etf__shape_elems(&s->shape));
            assert_int_equal(etf__plan_storage(p, (int)i), v->alias_of);
        } else if (v->kind == ETF_VALUE_CONSTANT) {
            assert_non_null(v->data);
        } else {
            assert_true(v->first_use <= v->last_use);
            assert_true(v->last_use <= p->n_kernels);
        }
    }
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *K = &p->kernels[k];
        assert_true(strlen(K->name) > 0);
        const struct etf_value *o = val(p, etf__plan_storage(p, K->output));
        assert_int_equal(o->kind, ETF_VALUE_ACTIVATION);
        assert_true(o->first_use <= k && k <= o->last_use);
        int n_in = K->n_extra_inputs ? K->n_extra_inputs : K->n_inputs;
        const int *in = K->n_extra_inputs ? K->extra_inputs : K->inputs;
        for (int i = 0; i < n_in; i++) {
            const struct etf_value *s = val(p, etf__plan_storage(p, in[i]));
            if (s->kind != ETF_VALUE_CONSTANT)
                assert_true(s->first_use <= k && k <= s->last_use);
        }
        for (int i = 0; i < K->n_post; i++)
            if (K->post[i].kind != ETF_POST_ELTWISE) {
                const struct etf_value *s = val(p, etf__plan_storage(p, K->post[i].value));
                if (s->kind != ETF_VALUE_CONSTANT)
                    assert_true(s->first_use <= k && k <= s->last_use);
            }
    }
    for (size_t i = 0; i < p->n_outputs; i++)
        assert_int_equal(val(p, etf__plan_storage(p, p->outputs[i]))->last_use, p->n_kernels);
    for (size_t i = 0; i < p->n_inputs; i++)
        assert_int_equal(val(p, p->inputs[i])->kind, ETF_VALUE_INPUT);
}

static struct etf_plan *must_parse(struct mb *m, size_t batch)
{
    struct etf_plan *p = NULL;
    struct etf_diag d;
    int rc = mb_parse(m, batch, &p, &d);
    if (rc)
        fail_msg("parse failed (%d): %s", rc, d.msg);
    check_plan(p);
    return p;
}

/* ---- models ---- */

static const float SQRT2 = 1.41421356f;

/* x -> Conv -> BN -> Relu -> Conv(+bias) -> BN -> Add(x) -> Relu: the ResNet basic block. */
struct resblock {
    float *w1, *w2, *cb2, *bn[2][4];
};

static void build_resblock(struct mb *m, struct resblock *r)
{
    mb_init(m, 17);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 4, 6, 6));
    r->w1 = mb_weights(m, "w1", DIMS(4, 4, 3, 3), 1);
    r->w2 = mb_weights(m, "w2", DIMS(4, 4, 3, 3), 2);
    r->cb2 = mb_weights(m, "cb2", DIMS(4), 3);
    static const char *const pn[] = {"gamma", "beta", "mean", "var"};
    for (int b = 0; b < 2; b++)
        for (int i = 0; i < 4; i++) {
            char name[32];
            snprintf(name, sizeof name, "bn%d_%s", b + 1, pn[i]);
            r->bn[b][i] = mb_weights(m, name, DIMS(4), 10 + (unsigned)(b * 4 + i));
            if (i == 3)
                for (int c = 0; c < 4; c++)
                    r->bn[b][i][c] = r->bn[b][i][c] + 1.0f; /* variances > 0 */
            if (i == 0)
                for (int c = 0; c < 4; c++)
                    r->bn[b][i][c] += 1.0f;
        }
    /* the initializers copied the values before the fixes above: rewrite them */
    for (size_t i = 0; i < m->graph.n_initializer; i++) {
        Onnx__TensorProto *t = m->inits[i];
        for (int b = 0; b < 2; b++)
            for (int j = 0; j < 4; j++) {
                char name[32];
                snprintf(name, sizeof name, "bn%d_%s", b + 1, pn[j]);
                if (!strcmp(t->name, name))
                    memcpy(t->raw_data.data, r->bn[b][j], 4 * sizeof(float));
            }
    }
    Onnx__NodeProto *c1 = mb_node(m, "Conv", "conv1", "x w1", "c1");
    attr_ints(m, c1, "pads", INTS(1, 1, 1, 1));
    attr_ints(m, c1, "kernel_shape", INTS(3, 3));
    Onnx__NodeProto *b1 =
        mb_node(m, "BatchNormalization", "bn1", "c1 bn1_gamma bn1_beta bn1_mean bn1_var", "b1");
    attr_f(m, b1, "epsilon", 1e-5f);
    mb_node(m, "Relu", "relu1", "b1", "r1");
    Onnx__NodeProto *c2 = mb_node(m, "Conv", "conv2", "r1 w2 cb2", "c2");
    attr_ints(m, c2, "pads", INTS(1, 1, 1, 1));
    mb_node(m, "BatchNormalization", "bn2", "c2 bn2_gamma bn2_beta bn2_mean bn2_var", "b2");
    mb_node(m, "Add", "add", "b2 x", "s");
    mb_node(m, "Relu", "relu2", "s", "y");
    mb_output(m, "y");
}

static void test_residual_block(void **state)
{
    (void)state;
    struct mb m;
    struct resblock r;
    build_resblock(&m, &r);
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_bias_relu_0", "conv_bias_sum_relu_1"));
    const struct etf_kernel *k0 = &p->kernels[0], *k1 = &p->kernels[1];
    assert_int_equal(k0->op, ETF_K_CONV);
    assert_int_equal(k0->n_inputs, 3);
    assert_int_equal(k0->inputs[0], p->inputs[0]);
    assert_int_equal(k0->attr.conv.pad_begin[0], 1);
    assert_int_equal(k0->attr.conv.pad_end[1], 1);
    assert_int_equal(k0->attr.conv.stride[0], 1);
    assert_int_equal(k0->attr.conv.groups, 1);
    assert_int_equal(k0->n_post, 1);
    assert_int_equal(k0->post[0].kind, ETF_POST_ELTWISE);
    assert_int_equal(k0->post[0].eltwise, ETF_ELT_RELU);
    /* the residual: conv + bias, then the sum with the block's input, then relu */
    assert_int_equal(k1->n_post, 2);
    assert_int_equal(k1->post[0].kind, ETF_POST_SUM);
    assert_int_equal(etf__plan_storage(p, k1->post[0].value), p->inputs[0]);
    assert_int_equal(k1->post[1].kind, ETF_POST_ELTWISE);
    assert_int_equal(k1->post[1].eltwise, ETF_ELT_RELU);
    assert_int_equal(etf__plan_storage(p, k1->inputs[0]), k0->output);
    assert_int_equal(p->outputs[0], k1->output);
    assert_string_equal(val(p, p->outputs[0])->name, "y");

    /* folded weights: w * gamma / sqrt(var + eps); bias (b - mean) * s + beta */
    for (int conv = 0; conv < 2; conv++) {
        const struct etf_kernel *k = &p->kernels[conv];
        const float *w = val(p, k->inputs[1])->data, *b = val(p, k->inputs[2])->data;
        const float *src = conv ? r.w2 : r.w1;
        float *const *bn = r.bn[conv];
        expect_shape(&val(p, k->inputs[1])->shape, DIMS(4, 4, 3, 3));
        expect_shape(&val(p, k->inputs[2])->shape, DIMS(4));
        for (int o = 0; o < 4; o++) {
            float s = bn[0][o] / sqrtf(bn[3][o] + 1e-5f);
            for (int j = 0; j < 36; j++)
                expect_close(w[o * 36 + j], src[o * 36 + j] * s);
            float cb = conv ? r.cb2[o] : 0.0f;
            expect_close(b[o], (cb - bn[2][o]) * s + bn[1][o]);
        }
    }
    /* liveness: x is read by both kernels, the middle tensor lives from 0 to 1 */
    const struct etf_value *x = val(p, p->inputs[0]), *mid = val(p, k0->output);
    assert_int_equal(x->first_use, 0);
    assert_int_equal(x->last_use, 1);
    assert_int_equal(mid->first_use, 0);
    assert_int_equal(mid->last_use, 1);
    assert_int_equal(val(p, k1->output)->last_use, 2);

    struct etf_tensor_info ti;
    assert_int_equal(etf_plan_input_count(p), 1);
    assert_int_equal(etf_plan_output_count(p), 1);
    assert_int_equal(etf_plan_input(p, 0, &ti), 0);
    assert_string_equal(ti.name, "x");
    assert_int_equal(ti.elems, 144);
    assert_int_equal(etf_plan_output(p, 0, &ti), 0);
    assert_int_equal(ti.ndim, 4);
    assert_int_equal(etf_plan_input(p, 1, &ti), ETF_EINVAL);
    assert_null(etf_plan_kernel_name(p, 2));
    assert_string_equal(etf_plan_name(p), "test");
    etf_plan_free(p);
    mb_done(&m);
}

/* A downsampling block: the Add's operands come from two convs; the sum goes to the later. */
static void test_residual_downsample(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 13);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 4, 8, 8));
    mb_weights(&m, "w1", DIMS(8, 4, 1, 1), 1);
    mb_weights(&m, "b1", DIMS(8), 2);
    mb_weights(&m, "wd", DIMS(8, 4, 1, 1), 3);
    mb_weights(&m, "bd", DIMS(8), 4);
    Onnx__NodeProto *c = mb_node(&m, "Conv", "main", "x w1 b1", "a");
    attr_ints(&m, c, "strides", INTS(2, 2));
    c = mb_node(&m, "Conv", "down", "x wd bd", "d");
    attr_ints(&m, c, "strides", INTS(2, 2));
    mb_node(&m, "Add", "add", "a d", "s");
    mb_node(&m, "Relu", "relu", "s", "y");
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_bias_0", "conv_bias_sum_relu_1"));
    assert_int_equal(p->kernels[1].post[0].value, p->kernels[0].output);
    expect_shape(&val(p, p->outputs[0])->shape, DIMS(1, 8, 4, 4));
    etf_plan_free(p);
    mb_done(&m);
}

static void test_cnn_names(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 3, 8, 8));
    mb_weights(&m, "w", DIMS(4, 3, 3, 3), 1);
    mb_weights(&m, "b", DIMS(4), 2);
    mb_weights(&m, "fw", DIMS(5, 4), 3);
    mb_weights(&m, "fb", DIMS(5), 4);
    Onnx__NodeProto *n = mb_node(&m, "Conv", "conv", "x w b", "c");
    attr_s(&m, n, "auto_pad", "SAME_UPPER");
    mb_node(&m, "Relu", "relu", "c", "r");
    n = mb_node(&m, "MaxPool", "pool", "r", "mp");
    attr_ints(&m, n, "kernel_shape", INTS(3, 3));
    attr_ints(&m, n, "strides", INTS(2, 2));
    attr_i(&m, n, "ceil_mode", 1);
    mb_node(&m, "GlobalAveragePool", "gap", "mp", "g");
    mb_node(&m, "Flatten", "flat", "g", "f");
    n = mb_node(&m, "Gemm", "fc", "f fw fb", "logits");
    attr_i(&m, n, "transB", 1);
    n = mb_node(&m, "Softmax", "sm", "logits", "y");
    attr_i(&m, n, "axis", -1);
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_bias_relu_0", "pool_max_1", "pool_global_avg_2", "matmul_bias_3",
                          "softmax_4"));
    const struct etf_kernel *k = &p->kernels[0];
    assert_int_equal(k->attr.conv.pad_begin[0], 1);
    assert_int_equal(k->attr.conv.pad_end[0], 1);
    k = &p->kernels[1];
    assert_int_equal(k->attr.pool.alg, ETF_POOL_MAX);
    /* 8 with kernel 3, stride 2, ceil: 4 windows, the last one padded at the end */
    expect_shape(&val(p, k->output)->shape, DIMS(1, 4, 4, 4));
    assert_int_equal(k->attr.pool.pad_end[0], 1);
    k = &p->kernels[2];
    assert_int_equal(k->attr.pool.kernel[0], 4);
    expect_shape(&val(p, k->output)->shape, DIMS(1, 4, 1, 1));
    k = &p->kernels[3];
    assert_int_equal(val(p, k->inputs[0])->alias_of, p->kernels[2].output); /* Flatten: a view */
    expect_shape(&val(p, k->inputs[1])->shape, DIMS(4, 5));
    assert_int_equal(p->kernels[4].attr.axis.axis, 1);
    etf_plan_free(p);
    mb_done(&m);
}

static void test_gemm_transb(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 13);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 3));
    float *w = mb_weights(&m, "w", DIMS(4, 3), 1);
    float *b = mb_weights(&m, "b", DIMS(4), 2);
    Onnx__NodeProto *n = mb_node(&m, "Gemm", "fc", "x w b", "y");
    attr_i(&m, n, "transB", 1);
    attr_f(&m, n, "alpha", 2.0f);
    attr_f(&m, n, "beta", 0.5f);
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("matmul_bias_0"));
    const struct etf_kernel *k = &p->kernels[0];
    assert_int_equal(k->op, ETF_K_MATMUL);
    const struct etf_value *wv = val(p, k->inputs[1]), *bv = val(p, k->inputs[2]);
    assert_int_equal(wv->kind, ETF_VALUE_CONSTANT);
    expect_shape(&wv->shape, DIMS(3, 4));
    for (int kk = 0; kk < 3; kk++)
        for (int nn = 0; nn < 4; nn++)
            expect_close(wv->data[kk * 4 + nn], 2.0f * w[nn * 3 + kk]);
    expect_shape(&bv->shape, DIMS(4));
    for (int i = 0; i < 4; i++)
        expect_close(bv->data[i], 0.5f * b[i]);
    expect_shape(&val(p, p->outputs[0])->shape, DIMS(2, 4));
    etf_plan_free(p);
    mb_done(&m);

    /* transA on a computed operand: a TRANSPOSE kernel first */
    mb_init(&m, 13);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(3, 2));
    mb_weights(&m, "w", DIMS(3, 4), 1);
    n = mb_node(&m, "Gemm", "fc", "x w", "y");
    attr_i(&m, n, "transA", 1);
    mb_output(&m, "y");
    p = must_parse(&m, 0);
    expect_names(p, NAMES("transpose_0", "matmul_1"));
    assert_int_equal(p->kernels[1].inputs[0], p->kernels[0].output);
    expect_shape(&val(p, p->outputs[0])->shape, DIMS(2, 4));
    etf_plan_free(p);
    mb_done(&m);
}

static void test_matmul_bias(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 5, 3));
    mb_weights(&m, "w", DIMS(3, 4), 1);
    mb_weights(&m, "b", DIMS(4), 2);
    mb_node(&m, "MatMul", "mm", "x w", "t");
    mb_node(&m, "Add", "add", "b t", "y");
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("matmul_bias_0"));
    const struct etf_kernel *k = &p->kernels[0];
    assert_int_equal(k->n_inputs, 3);
    assert_string_equal(val(p, k->inputs[1])->name, "w");
    assert_string_equal(val(p, k->inputs[2])->name, "b");
    assert_string_equal(val(p, k->output)->name, "y");
    expect_shape(&val(p, k->output)->shape, DIMS(1, 5, 4));
    etf_plan_free(p);
    mb_done(&m);
}

/* MatMul + bias followed by the erf form of GELU, in the two orders exporters emit. */
static void build_gelu(struct mb *m, int variant)
{
    mb_init(m, 17);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 4, 8));
    mb_weights(m, "w", DIMS(8, 8), 1);
    mb_weights(m, "b", DIMS(8), 2);
    mb_init_f(m, "sqrt2", SCALAR, (float[]){SQRT2});
    mb_init_f(m, "one", SCALAR, (float[]){1.0f});
    mb_init_f(m, "half", SCALAR, (float[]){0.5f});
    mb_node(m, "MatMul", "mm", "x w", "t");
    mb_node(m, "Add", "bias", "b t", "h");
    mb_node(m, "Div", "div", "h sqrt2", "d");
    mb_node(m, "Erf", "erf", "d", "e");
    mb_node(m, "Add", "add1", "e one", "e1");
    if (variant == 0) {
        mb_node(m, "Mul", "mulx", "h e1", "p");
        mb_node(m, "Mul", "half", "p half", "y");
    } else {
        mb_node(m, "Mul", "halfx", "h half", "hh");
        mb_node(m, "Mul", "mul", "hh e1", "y");
    }
    mb_output(m, "y");
}

static void test_gelu(void **state)
{
    (void)state;
    for (int variant = 0; variant < 2; variant++) {
        struct mb m;
        build_gelu(&m, variant);
        struct etf_plan *p = must_parse(&m, 0);
        expect_names(p, NAMES("matmul_bias_gelu_0"));
        const struct etf_kernel *k = &p->kernels[0];
        assert_int_equal(k->n_post, 1);
        assert_int_equal(k->post[0].kind, ETF_POST_ELTWISE);
        assert_int_equal(k->post[0].eltwise, ETF_ELT_GELU_ERF);
        assert_string_equal(val(p, p->outputs[0])->name, "y");
        etf_plan_free(p);
        mb_done(&m);
    }
}

static void test_silu(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 3, 4, 4));
    mb_weights(&m, "w", DIMS(2, 3, 1, 1), 1);
    mb_node(&m, "Conv", "conv", "x w", "c");
    mb_node(&m, "Sigmoid", "sig", "c", "s");
    mb_node(&m, "Mul", "mul", "c s", "y");
    /* on the model input: no kernel to fuse into, an eltwise kernel of its own */
    mb_node(&m, "Sigmoid", "sig2", "x", "s2");
    mb_node(&m, "Mul", "mul2", "s2 x", "y2");
    mb_output(&m, "y");
    mb_output(&m, "y2");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_swish_0", "swish_1"));
    assert_int_equal(p->kernels[0].post[0].eltwise, ETF_ELT_SWISH);
    assert_int_equal(p->kernels[1].op, ETF_K_ELTWISE);
    assert_int_equal(p->kernels[1].attr.eltwise.alg, ETF_ELT_SWISH);
    assert_int_equal(p->kernels[1].inputs[0], p->inputs[0]);
    etf_plan_free(p);
    mb_done(&m);
}

/* Shape -> Gather -> Unsqueeze -> Concat -> Reshape folds into a view; the batch option
 * flows through it. */
static void build_shape_chain(struct mb *m)
{
    mb_init(m, 15);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(-1, 3, 4, 4));
    mb_init_i(m, "zero", SCALAR, (int64_t[]){0});
    mb_init_i(m, "axes0", DIMS(1), (int64_t[]){0});
    mb_init_i(m, "minus1", DIMS(1), (int64_t[]){-1});
    mb_node(m, "Shape", "shape", "x", "s");
    mb_node(m, "Gather", "gather", "s zero", "n");
    mb_node(m, "Unsqueeze", "unsq", "n axes0", "n1");
    Onnx__NodeProto *c = mb_node(m, "Concat", "cat", "n1 minus1", "shp");
    attr_i(m, c, "axis", 0);
    mb_node(m, "Reshape", "reshape", "x shp", "r");
    mb_node(m, "Relu", "relu", "r", "y");
    mb_output(m, "y");
}

static void test_shape_folding_and_batch(void **state)
{
    (void)state;
    struct mb m;
    build_shape_chain(&m);
    for (int pass = 0; pass < 2; pass++) {
        size_t batch = pass ? 4 : 0;
        struct etf_plan *p = must_parse(&m, batch);
        expect_names(p, NAMES("relu_0"));
        const struct etf_value *in = val(p, p->kernels[0].inputs[0]);
        assert_int_equal(in->alias_of, p->inputs[0]); /* the Reshape is a view */
        expect_shape(&in->shape, DIMS(pass ? 4 : 1, 48));
        expect_shape(&val(p, p->inputs[0])->shape, DIMS(pass ? 4 : 1, 3, 4, 4));
        struct etf_tensor_info ti;
        assert_int_equal(etf_plan_output(p, 0, &ti), 0);
        assert_int_equal(ti.ndim, 2);
        assert_int_equal(ti.dims[0], pass ? 4 : 1);
        assert_int_equal(ti.elems, pass ? 192 : 48);
        etf_plan_free(p);
    }
    mb_done(&m);
}

/* Pad before a Conv moves into the conv's pads; a zero Pad is a view. */
static void test_pad_folding(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 2, 5, 5));
    mb_weights(&m, "w", DIMS(2, 2, 3, 3), 1);
    mb_init_i(&m, "pads", DIMS(8), (int64_t[]){0, 0, 1, 2, 0, 0, 1, 2});
    mb_init_i(&m, "zeros", DIMS(8), (int64_t[]){0, 0, 0, 0, 0, 0, 0, 0});
    mb_node(&m, "Pad", "pad", "x pads", "xp");
    mb_node(&m, "Conv", "conv", "xp w", "c");
    mb_node(&m, "Pad", "pad0", "c zeros", "y");
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_0"));
    const struct etf_kernel *k = &p->kernels[0];
    assert_int_equal(k->attr.conv.pad_begin[0], 1);
    assert_int_equal(k->attr.conv.pad_begin[1], 2);
    assert_int_equal(k->attr.conv.pad_end[1], 2);
    assert_int_equal(k->inputs[0], p->inputs[0]);
    expect_shape(&val(p, p->outputs[0])->shape, DIMS(1, 2, 5, 7));
    assert_int_equal(val(p, p->outputs[0])->alias_of, k->output);
    etf_plan_free(p);
    mb_done(&m);

    /* a Pad in front of a max pool of values that may be negative stays a kernel */
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 2, 4, 4));
    mb_init_i(&m, "pads", DIMS(8), (int64_t[]){0, 0, 1, 1, 0, 0, 1, 1});
    mb_node(&m, "Pad", "pad", "x pads", "xp");
    Onnx__NodeProto *n = mb_node(&m, "MaxPool", "pool", "xp", "y");
    attr_ints(&m, n, "kernel_shape", INTS(2, 2));
    attr_ints(&m, n, "strides", INTS(2, 2));
    mb_output(&m, "y");
    p = must_parse(&m, 0);
    expect_names(p, NAMES("pad_0", "pool_max_1"));
    assert_int_equal(p->kernels[0].attr.pad.begin[2], 1);
    assert_int_equal(p->kernels[0].attr.pad.end[3], 1);
    etf_plan_free(p);
    mb_done(&m);
}

/* Attention's fused projection: slices of one MatMul become MatMuls with sliced weights;
 * a slice of a model input becomes a selection MatMul. */
static void build_slices(struct mb *m, float **w, float **b)
{
    mb_init(m, 17);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 4));
    *w = mb_weights(m, "w", DIMS(4, 6), 1);
    *b = mb_weights(m, "b", DIMS(6), 2);
    mb_init_i(m, "s0", DIMS(1), (int64_t[]){0});
    mb_init_i(m, "s3", DIMS(1), (int64_t[]){3});
    mb_init_i(m, "s6", DIMS(1), (int64_t[]){6});
    mb_init_i(m, "ax", DIMS(1), (int64_t[]){-1});
    mb_init_i(m, "st1", DIMS(1), (int64_t[]){1});
    mb_init_i(m, "st2", DIMS(1), (int64_t[]){2});
    mb_init_i(m, "big", DIMS(1), (int64_t[]){INT64_MAX});
    mb_node(m, "MatMul", "mm", "x w", "t");
    mb_node(m, "Add", "add", "t b", "qkv");
    mb_node(m, "Slice", "q", "qkv s0 s3 ax", "q");
    mb_node(m, "Slice", "k", "qkv s3 s6 ax", "k");
    mb_node(m, "Slice", "xs", "x st1 big st1 st2", "xs"); /* x[:, 1::2] */
    mb_output(m, "q");
    mb_output(m, "k");
    mb_output(m, "xs");
}

static void test_slices(void **state)
{
    (void)state;
    struct mb m;
    float *w, *b;
    build_slices(&m, &w, &b);
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("matmul_bias_0", "matmul_bias_1", "slice_2"));
    for (int s = 0; s < 2; s++) {
        const struct etf_kernel *k = &p->kernels[s];
        const struct etf_value *wv = val(p, k->inputs[1]), *bv = val(p, k->inputs[2]);
        expect_shape(&wv->shape, DIMS(4, 3));
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < 3; c++)
                expect_close(wv->data[r * 3 + c], w[r * 6 + s * 3 + c]);
        for (int c = 0; c < 3; c++)
            expect_close(bv->data[c], b[s * 3 + c]);
        assert_int_equal(k->inputs[0], p->inputs[0]);
    }
    const struct etf_kernel *k = &p->kernels[2];
    const struct etf_value *sel = val(p, k->inputs[1]);
    expect_shape(&sel->shape, DIMS(4, 2));
    for (int r = 0; r < 4; r++)
        for (int c = 0; c < 2; c++)
            expect_close(sel->data[r * 2 + c], r == 1 + 2 * c ? 1.0f : 0.0f);
    expect_shape(&val(p, p->outputs[2])->shape, DIMS(2, 2));
    etf_plan_free(p);
    mb_done(&m);
}

/* Transposes that only move dims of 1 are views; scalar scaling becomes a linear post-op
 * even through a transpose; a constant of the output's shape becomes a binary post-op. */
static void test_views_and_linear(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(3, 1, 4));
    mb_weights(&m, "w", DIMS(4, 4), 1);
    mb_init_f(&m, "four", SCALAR, (float[]){4.0f});
    mb_init_i(&m, "shp", DIMS(3), (int64_t[]){3, 2, 2});
    mb_weights(&m, "cmul", DIMS(2, 3, 2), 3);
    Onnx__NodeProto *n = mb_node(&m, "Transpose", "t0", "x", "xt");
    attr_ints(&m, n, "perm", INTS(1, 0, 2));
    mb_node(&m, "MatMul", "mm", "xt w", "h");       /* [1, 3, 4] */
    mb_node(&m, "Reshape", "rs", "h shp", "hr");    /* [3, 2, 2] */
    n = mb_node(&m, "Transpose", "t1", "hr", "ht"); /* [2, 3, 2]: a real transpose */
    attr_ints(&m, n, "perm", INTS(1, 0, 2));
    mb_node(&m, "Div", "scale", "ht four", "hs");
    mb_node(&m, "Mul", "cm", "hs cmul", "y");
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("matmul_linear_0", "transpose_1", "mul_2"));
    const struct etf_kernel *k = &p->kernels[0];
    assert_int_equal(val(p, k->inputs[0])->alias_of, p->inputs[0]);
    assert_int_equal(k->post[0].eltwise, ETF_ELT_LINEAR);
    expect_close(k->post[0].alpha, 0.25f);
    expect_close(k->post[0].beta, 0.0f);
    assert_int_equal(p->kernels[1].attr.transpose.perm[0], 1);
    assert_int_equal(p->kernels[2].op, ETF_K_BINARY);
    assert_int_equal(p->kernels[2].attr.binary.alg, ETF_BIN_MUL);
    etf_plan_free(p);
    mb_done(&m);

    /* a per-channel constant scale right after a conv: a binary post-op */
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 2, 3, 3));
    mb_weights(&m, "w", DIMS(2, 2, 1, 1), 1);
    mb_weights(&m, "sc", DIMS(2, 1, 1), 2);
    mb_node(&m, "Conv", "conv", "x w", "c");
    mb_node(&m, "Mul", "mul", "sc c", "y");
    mb_output(&m, "y");
    p = must_parse(&m, 0);
    expect_names(p, NAMES("conv_mul_0"));
    k = &p->kernels[0];
    assert_int_equal(k->post[0].kind, ETF_POST_BINARY);
    assert_int_equal(k->post[0].binary, ETF_BIN_MUL);
    expect_shape(&val(p, k->post[0].value)->shape, DIMS(1, 2, 1, 1));
    etf_plan_free(p);
    mb_done(&m);
}

/* Standalone BatchNormalization, LayerNormalization, Concat of many inputs, Clip, ReduceMean. */
static void test_misc_kernels(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 2, 3, 3));
    float *g = mb_weights(&m, "g", DIMS(2), 1), *bb = mb_weights(&m, "bb", DIMS(2), 2);
    float *mu = mb_weights(&m, "mu", DIMS(2), 3);
    mb_init_f(&m, "var", DIMS(2), (float[]){1.0f, 3.0f});
    mb_weights(&m, "lg", DIMS(3), 4);
    mb_init_f(&m, "lo", SCALAR, (float[]){0.0f});
    mb_init_f(&m, "hi", SCALAR, (float[]){6.0f});
    Onnx__NodeProto *n = mb_node(&m, "BatchNormalization", "bn", "x g bb mu var", "b");
    attr_f(&m, n, "epsilon", 0.001f);
    mb_node(&m, "Clip", "clip", "b lo hi", "c");
    n = mb_node(&m, "Concat", "cat", "c x c x c x", "cat");
    attr_i(&m, n, "axis", 1);
    n = mb_node(&m, "LayerNormalization", "ln", "cat lg", "l");
    attr_i(&m, n, "axis", -1);
    n = mb_node(&m, "ReduceMean", "rm", "l", "y");
    attr_ints(&m, n, "axes", INTS(2, 3));
    attr_i(&m, n, "keepdims", 0);
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    /* The Clip is the batchnorm's post-op: one pointwise kernel, not two. */
    expect_names(p, NAMES("batchnorm_clip_0", "concat_1", "layernorm_2", "reduce_mean_3"));
    const struct etf_kernel *k = &p->kernels[0];
    const float *sc = val(p, k->inputs[1])->data, *sh = val(p, k->inputs[2])->data;
    float var[2] = {1.0f, 3.0f};
    for (int c = 0; c < 2; c++) {
        float s = g[c] / sqrtf(var[c] + 0.001f);
        expect_close(sc[c], s);
        expect_close(sh[c], bb[c] - mu[c] * s);
    }
    assert_int_equal(k->n_post, 1);
    assert_int_equal(k->post[0].kind, ETF_POST_ELTWISE);
    assert_int_equal(k->post[0].eltwise, ETF_ELT_CLIP);
    expect_close(k->post[0].alpha, 0.0f);
    expect_close(k->post[0].beta, 6.0f);
    k = &p->kernels[1];
    assert_int_equal(k->n_extra_inputs, 6);
    assert_int_equal(k->extra_inputs[0], p->kernels[0].output);
    assert_int_equal(k->extra_inputs[1], p->inputs[0]);
    assert_int_equal(k->attr.axis.axis, 1);
    k = &p->kernels[2];
    expect_close(k->attr.norm.epsilon, 1e-5f);
    expect_shape(&val(p, k->inputs[2])->shape, DIMS(3)); /* a zero beta made up */
    k = &p->kernels[3];
    assert_int_equal(k->attr.reduce.axes_mask, 12u);
    expect_shape(&val(p, k->output)->shape, DIMS(1, 12, 1, 1));
    expect_shape(&val(p, p->outputs[0])->shape, DIMS(1, 12));
    etf_plan_free(p);
    mb_done(&m);
}

/* ---- weights ---- */

/* Initializers whose names (1 to 20 characters) put their raw data at every alignment in the
 * file: the loader keeps each where it lies, moved onto a boundary of at least 4, and its
 * values intact. */
static void test_weights_in_place(void **state)
{
    (void)state;
    struct mb m;
    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(5));
    float want[20][5];
    char prev[32] = "x";
    for (int i = 0; i < 20; i++) {
        char name[32], out[32];
        memset(name, 0, sizeof name);
        memset(name, 'c', (size_t)i + 1);
        for (int j = 0; j < 5; j++)
            want[i][j] = (float)(i * 10 + j) + 0.25f;
        mb_init_f(&m, name, DIMS(5), want[i]);
        snprintf(out, sizeof out, i == 19 ? "y" : "s%d", i);
        char ins[80];
        snprintf(ins, sizeof ins, "%s %s", prev, name);
        mb_node(&m, "Add", out, ins, out);
        strcpy(prev, out);
    }
    mb_output(&m, "y");
    struct etf_plan *p = must_parse(&m, 0);
    int found = 0;
    for (size_t v = 0; v < p->n_values; v++) {
        const struct etf_value *x = &p->values[v];
        size_t n = strlen(x->name);
        if (x->kind != ETF_VALUE_CONSTANT || n == 0 || n > 20 || strspn(x->name, "c") != n)
            continue;
        assert_int_equal((uintptr_t)x->data % 4, 0);
        for (int j = 0; j < 5; j++)
            assert_true(x->data[j] == want[n - 1][j]);
        found++;
    }
    assert_int_equal(found, 20);
    etf_plan_free(p);
    mb_done(&m);
}

/* x [1,c,8,8] -> Conv(w1, b1) -> Relu -> Conv(w2) -> BN -> Add(x) -> Relu -> y: with c = 64
 * the weights make the file big enough for the loader to keep it in a buffer whose pages it
 * can give back. */
static void build_wide(struct mb *m, int64_t c)
{
    mb_init(m, 17);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, c, 8, 8));
    mb_weights(m, "w1", DIMS(c, c, 3, 3), 1);
    mb_weights(m, "b1", DIMS(c), 2);
    mb_weights(m, "w2", DIMS(c, c, 3, 3), 3);
    float *bn = mb_alloc(m, 4 * (size_t)c * sizeof *bn);
    for (int64_t i = 0; i < c; i++) {
        bn[i] = 1.0f + 0.01f * (float)i;         /* gamma */
        bn[c + i] = 0.1f - 0.002f * (float)i;    /* beta */
        bn[2 * c + i] = 0.05f * (float)(i % 7);  /* mean */
        bn[3 * c + i] = 0.5f + 0.03f * (float)i; /* var */
    }
    static const char *const pn[] = {"gamma", "beta", "mean", "var"};
    for (int i = 0; i < 4; i++)
        mb_init_f(m, pn[i], DIMS(c), bn + i * c);
    Onnx__NodeProto *c1 = mb_node(m, "Conv", "conv1", "x w1 b1", "c1");
    attr_ints(m, c1, "pads", INTS(1, 1, 1, 1));
    mb_node(m, "Relu", "relu1", "c1", "r1");
    Onnx__NodeProto *c2 = mb_node(m, "Conv", "conv2", "r1 w2", "c2");
    attr_ints(m, c2, "pads", INTS(1, 1, 1, 1));
    mb_node(m, "BatchNormalization", "bn", "c2 gamma beta mean var", "b2");
    mb_node(m, "Add", "add", "b2 x", "s");
    mb_node(m, "Relu", "relu2", "s", "y");
    mb_output(m, "y");
}

static size_t ref_bytes(const struct etf_value *x)
{
    return etf__shape_elems(&x->shape) * sizeof(float);
}

/* The constants kernels read (storage values), and a copy of their data. */
struct consts {
    int v[16];
    float *copy[16];
    size_t n;
};

static void consts_of(const struct etf_plan *p, struct consts *c)
{
    c->n = 0;
    for (size_t k = 0; k < p->n_kernels; k++)
        for (int i = 0; i < p->kernels[k].n_inputs; i++) {
            int s = etf__plan_storage(p, p->kernels[k].inputs[i]);
            const struct etf_value *x = val(p, s);
            bool seen = false;
            for (size_t j = 0; j < c->n; j++)
                seen |= c->v[j] == s;
            if (x->kind != ETF_VALUE_CONSTANT || seen)
                continue;
            assert_true(c->n < 16);
            size_t bytes = ref_bytes(x);
            c->copy[c->n] = malloc(bytes);
            memcpy(c->copy[c->n], x->data, bytes);
            c->v[c->n++] = s;
        }
}

/* Every constant not yet freed still holds its data. */
static void expect_consts(const struct etf_plan *p, const struct consts *c)
{
    for (size_t j = 0; j < c->n; j++) {
        const struct etf_value *x = val(p, c->v[j]);
        if (x->data)
            assert_memory_equal(x->data, c->copy[j], ref_bytes(x));
    }
}

static void consts_free(struct consts *c)
{
    for (size_t j = 0; j < c->n; j++)
        free(c->copy[j]);
}

/* Dropping weights on load frees each weight as a device takes it, and nothing else: the
 * weights still to be taken keep their values while the pages around them go. Dropping them
 * frees all at once. */
static void test_drop_weights(void **state)
{
    (void)state;
    struct mb m;
    build_wide(&m, 64);
    struct etf_plan *p = must_parse(&m, 0);
    struct consts c;
    consts_of(p, &c);
    assert_true(c.n >= 3); /* w1, b1, the folded w2 and its bias */
    struct etf_diag d;
    etf__plan_weight_taken(p, c.v[0]); /* held by a load: nothing goes */
    assert_non_null(val(p, c.v[0])->data);
    etf_plan_drop_weights_on_load(p); /* that load was not the last one */
    for (size_t j = 0; j < c.n; j++)
        assert_non_null(val(p, c.v[j])->data);
    expect_consts(p, &c);
    assert_int_equal(etf__plan_check(p, "test", &d), 0);

    etf__plan_weight_taken(p, c.v[0]); /* the last load */
    assert_null(val(p, c.v[0])->data);
    expect_consts(p, &c);
    assert_int_equal(etf__plan_check(p, "test", &d), ETF_EINVAL);
    printf("    %s\n", d.msg);
    assert_non_null(strstr(d.msg, "dropped"));
    for (size_t j = 1; j < c.n; j++) {
        assert_non_null(val(p, c.v[j])->data);
        etf__plan_weight_taken(p, c.v[j]);
        assert_null(val(p, c.v[j])->data);
        expect_consts(p, &c);
    }
    /* the plan still describes itself */
    struct etf_tensor_info ti;
    assert_int_equal(etf_plan_output(p, 0, &ti), 0);
    assert_int_equal(ti.elems, 64 * 64);
    consts_free(&c);
    etf_plan_free(p);

    p = must_parse(&m, 0);
    consts_of(p, &c);
    etf_plan_drop_weights(p);
    for (size_t j = 0; j < c.n; j++)
        assert_null(val(p, c.v[j])->data);
    assert_int_equal(etf__plan_check(p, "test", &d), ETF_EINVAL);
    consts_free(&c);
    etf_plan_free(p);
    etf_plan_drop_weights(NULL);
    etf_plan_drop_weights_on_load(NULL);

    mb_done(&m);
}

/* Runs every kernel of a loaded model on x into y. */
static void run_wide(struct etf_device *dev, struct etf_dmodel *dm, size_t n_kernels,
                     const float *x, float *y)
{
    struct etf_task_io io = {.inputs = &x, .outputs = &y};
    for (size_t k = 0; k < n_kernels; k++) {
        struct etf_kernel_run run = {.dm = dm, .kernel = k, .io = &io};
        assert_int_equal(etf__device_launch(dev, &run), 0);
    }
}

static struct etf_dmodel *load_wide(struct etf_device *dev, const struct etf_plan *p)
{
    struct etf_model_desc desc = {.name = "wide", .plan = p};
    struct etf_dmodel *dm = NULL;
    struct etf_diag d;
    if (etf__device_load(dev, &desc, &dm, &d))
        fail_msg("load: %s", d.msg);
    return dm;
}

/* The last load on the CPU device of a plan loaded twice takes its weights: both models run
 * as one loaded from a plan that keeps them (the first as well, which took its copy before),
 * and the plan cannot be loaded again. */
static void test_drop_weights_on_load(void **state)
{
    (void)state;
    struct etf_device *dev = NULL;
    struct etf_diag d;
    struct etf_device_config cfg = {.threads = 1};
    if (etf_device_open("cpu", &cfg, &dev, &d) == ETF_ENOTSUP)
        skip(); /* a build without oneDNN */
    struct mb m;
    build_wide(&m, 64);
    struct etf_plan *kept = must_parse(&m, 0), *p = must_parse(&m, 0);
    mb_done(&m);
    float *x = malloc(64 * 64 * sizeof *x), *y[3];
    for (int i = 0; i < 64 * 64; i++)
        x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
    for (int i = 0; i < 3; i++)
        y[i] = calloc(64 * 64, sizeof *y[i]);
    struct etf_dmodel *ref = load_wide(dev, kept), *first = load_wide(dev, p);
    etf_plan_drop_weights_on_load(p);
    struct etf_dmodel *last = load_wide(dev, p);
    struct consts c;
    consts_of(kept, &c);
    for (size_t j = 0; j < c.n; j++) {
        assert_non_null(val(kept, c.v[j])->data);
        assert_null(val(p, c.v[j])->data);
    }
    consts_free(&c);
    run_wide(dev, ref, kept->n_kernels, x, y[0]);
    run_wide(dev, first, p->n_kernels, x, y[1]);
    run_wide(dev, last, p->n_kernels, x, y[2]);
    assert_memory_equal(y[0], y[1], 64 * 64 * sizeof(float));
    assert_memory_equal(y[0], y[2], 64 * 64 * sizeof(float));
    struct etf_model_desc desc = {.name = "wide", .plan = p};
    struct etf_dmodel *dm = NULL;
    assert_int_equal(etf__device_load(dev, &desc, &dm, &d), ETF_EINVAL);
    printf("    %s\n", d.msg);
    assert_non_null(strstr(d.msg, "dropped"));
    etf__device_unload(dev, ref);
    etf__device_unload(dev, first);
    etf__device_unload(dev, last);
    free(x);
    for (int i = 0; i < 3; i++)
        free(y[i]);
    etf_plan_free(kept);
    etf_plan_free(p);
    etf_device_close(dev);
}

/* ---- rejections ---- */

static void expect_reject(struct mb *m, const char *base_dir, int code, const char *substr)
{
    struct etf_plan *p = NULL;
    struct etf_diag d;
    struct etf_model_options o = {0};
    int rc = mb_parse_opts(m, base_dir, &o, &p, &d);
    printf("    [%d] %s\n", rc, d.msg);
    if (rc != code)
        fail_msg("expected %d, got %d: %s", code, rc, d.msg);
    if (!strstr(d.msg, substr))
        fail_msg("message '%s' lacks '%s'", d.msg, substr);
    assert_null(p);
    mb_done(m);
}

/* x [1, 2, 4, 4] -> Relu -> y, with room for more */
static void tiny(struct mb *m, int64_t opset)
{
    mb_init(m, opset);
    mb_input(m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, 2, 4, 4));
    mb_output(m, "y");
}

static void test_reject_bytes(void **state)
{
    (void)state;
    struct etf_plan *p = NULL;
    struct etf_diag d;
    static const char garbage[] = "\xff\xff\xff\xff this is not a protobuf at all";
    char *g = malloc(sizeof garbage - 1);
    memcpy(g, garbage, sizeof garbage - 1);
    assert_int_equal(etf_model_parse(g, sizeof garbage - 1, "junk.bin", NULL, NULL, &p, &d),
                     ETF_EFORMAT);
    assert_non_null(strstr(d.msg, "junk.bin: not an ONNX model"));
    assert_null(p);
    free(g);
    assert_int_equal(etf_model_parse(NULL, 0, NULL, NULL, NULL, &p, &d), ETF_EFORMAT);
    assert_int_equal(etf_model_parse("x", 1, NULL, NULL, NULL, NULL, NULL), ETF_EINVAL);

    /* truncated at several lengths */
    struct mb m;
    struct resblock r;
    build_resblock(&m, &r);
    size_t len;
    uint8_t *buf = mb_pack(&m, &len);
    size_t cuts[] = {1, 2, 7, len / 3, len / 2, len - 100, len - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        uint8_t *cut = malloc(cuts[i]);
        memcpy(cut, buf, cuts[i]);
        int rc = etf_model_parse(cut, cuts[i], "cut.onnx", NULL, NULL, &p, &d);
        printf("    cut at %zu: [%d] %s\n", cuts[i], rc, d.msg);
        assert_true(rc == ETF_EFORMAT);
        assert_null(p);
        free(cut);
    }

    /* a second graph field: protobuf would merge the two, ONNX has one */
    uint8_t *two = malloc(len + 2);
    memcpy(two, buf, len);
    memcpy(two + len, "\x3a\x00", 2);
    assert_int_equal(etf_model_parse(two, len + 2, "two.onnx", NULL, NULL, &p, &d), ETF_EFORMAT);
    assert_non_null(strstr(d.msg, "2 graphs"));
    assert_null(p);
    free(two);
    free(buf);
    mb_done(&m);
}

static void test_reject_opsets(void **state)
{
    (void)state;
    struct mb m;
    tiny(&m, 12);
    mb_node(&m, "Relu", "r", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "opset 12");
    tiny(&m, 18);
    mb_node(&m, "Relu", "r", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "opset 18");
    tiny(&m, 17);
    m.model.has_ir_version = 0;
    mb_node(&m, "Relu", "r", "x", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "no ir_version");
    tiny(&m, 17);
    m.model.graph = NULL;
    expect_reject(&m, NULL, ETF_EFORMAT, "no graph");
}

static void test_reject_graph(void **state)
{
    (void)state;
    struct mb m;
    tiny(&m, 17);
    mb_node(&m, "FooBar", "my_foo", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP,
                  "node 'my_foo' (FooBar): operator 'FooBar' is not supported");

    tiny(&m, 17);
    mb_node(&m, "Relu", "r0", "x", "a");
    mb_node(&m, "Add", "", "a nope", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "node #1 (Add): input 'nope' is not defined");

    tiny(&m, 17);
    mb_node(&m, "Conv", "conv_7", "x weights", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "node 'conv_7' (Conv): input 'weights' is not defined");

    tiny(&m, 17);
    mb_node(&m, "Add", "a1", "x b", "a");
    mb_node(&m, "Relu", "r1", "a", "b");
    mb_node(&m, "Relu", "r2", "b", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "cycle");

    tiny(&m, 17);
    mb_node(&m, "Relu", "r1", "x", "y");
    mb_node(&m, "Relu", "r2", "x", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "output 'y' is already defined");

    tiny(&m, 17);
    mb_node(&m, "Relu", "r1", "x", "z");
    expect_reject(&m, NULL, ETF_EFORMAT, "graph output 'y' is not defined");

    /* nodes out of order are sorted */
    tiny(&m, 17);
    mb_node(&m, "Relu", "second", "a", "y");
    mb_node(&m, "Sigmoid", "first", "x", "a");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("sigmoid_0", "relu_1"));
    etf_plan_free(p);
    mb_done(&m);
}

static void test_reject_tensors(void **state)
{
    (void)state;
    struct mb m;
    int8_t q[16] = {0};
    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] =
        mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__INT8, DIMS(2, 2, 2, 2), q, sizeof q);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "initializer 'w': fp32 only, found INT8");

    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] =
        mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 2, 1, 1), q, 12);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "raw_data has 12 bytes, expected 16");

    tiny(&m, 17);
    Onnx__TensorProto *t =
        mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 2, 1, 1), NULL, 0);
    t->float_data = (float[]){1, 2, 3};
    t->n_float_data = 3;
    m.inits[m.graph.n_initializer++] = t;
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "has 3 values, expected 4");

    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] =
        mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, -2, 1, 1), NULL, 0);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "negative dim");

    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] = mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT,
                                                 DIMS(1ll << 40, 1ll << 40, 1ll << 40), NULL, 0);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_ELIMIT, "overflow");

    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] = mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT,
                                                 DIMS(1ll << 20, 1ll << 20), NULL, 0);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_ELIMIT, "over the limit");

    tiny(&m, 17);
    m.inits[m.graph.n_initializer++] = mb_tensor(&m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT,
                                                 DIMS(1, 1, 1, 1, 1, 1, 1), NULL, 0);
    mb_node(&m, "Conv", "c", "x w", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "has 7 dims");

    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(1, -1, 4));
    mb_output(&m, "y");
    mb_node(&m, "Relu", "r", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "symbolic dim 'seq' at index 1");

    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__INT64, DIMS(1, 4));
    mb_output(&m, "y");
    mb_node(&m, "Relu", "r", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "input 'x' is INT64; fp32 only");
}

static void test_reject_shapes(void **state)
{
    (void)state;
    struct mb m;
    tiny(&m, 17);
    mb_weights(&m, "w", DIMS(4, 3, 3, 3), 1);
    mb_node(&m, "Conv", "conv_12", "x w", "y");
    expect_reject(&m, NULL, ETF_EFORMAT,
                  "node 'conv_12' (Conv): channel mismatch: input 'x' of shape [1, 2, 4, 4] has 2 "
                  "channels, weights 'w' of shape [4, 3, 3, 3] expect 3");

    mb_init(&m, 17);
    mb_input(&m, "x", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 5));
    mb_output(&m, "y");
    mb_weights(&m, "w", DIMS(4, 3), 1);
    mb_node(&m, "MatMul", "mm", "x w", "y");
    expect_reject(&m, NULL, ETF_EFORMAT,
                  "inner dims differ: input 'x' of shape [2, 5] has 5 columns, input 'w' of shape "
                  "[4, 3] has 4 rows");

    tiny(&m, 17);
    mb_init_i(&m, "shp", DIMS(2), (int64_t[]){-1, -1});
    mb_node(&m, "Reshape", "rs", "x shp", "y");
    expect_reject(&m, NULL, ETF_EFORMAT, "more than one -1");

    tiny(&m, 17);
    mb_init_i(&m, "shp", DIMS(2), (int64_t[]){5, 7});
    mb_node(&m, "Reshape", "rs", "x shp", "y");
    expect_reject(&m, NULL, ETF_EFORMAT,
                  "cannot reshape input 'x' of shape [1, 2, 4, 4] (32 elements) to [5, 7]");

    tiny(&m, 17);
    mb_weights(&m, "g", DIMS(1), 1);
    Onnx__NodeProto *n = mb_node(&m, "LayerNormalization", "ln", "x g", "y");
    attr_i(&m, n, "axis", 0);
    expect_reject(&m, NULL, ETF_ENOTSUP, "axis 0: only normalization over the last axis");

    tiny(&m, 17);
    mb_weights(&m, "v", DIMS(3), 1);
    mb_node(&m, "Add", "add", "x v", "y");
    expect_reject(&m, NULL, ETF_EFORMAT,
                  "input 'x' of shape [1, 2, 4, 4] and input 'v' of shape [3] do not broadcast");

    tiny(&m, 17);
    mb_init_f(&m, "three", SCALAR, (float[]){3.0f});
    mb_node(&m, "Pow", "pow", "x three", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "Pow exponent 3 is not supported");

    tiny(&m, 17);
    mb_init_i(&m, "pads", DIMS(8), (int64_t[]){0, 0, 1, 1, 0, 0, 1, 1});
    n = mb_node(&m, "Pad", "pad", "x pads", "y");
    attr_s(&m, n, "mode", "reflect");
    expect_reject(&m, NULL, ETF_ENOTSUP, "mode 'reflect' is not supported");

    tiny(&m, 17);
    mb_node(&m, "Shape", "sh", "x", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "graph output 'y' is a constant");

    tiny(&m, 17);
    n = mb_node(&m, "MaxPool", "mp", "x", "y ind");
    attr_ints(&m, n, "kernel_shape", INTS(2, 2));
    mb_node(&m, "Relu", "r", "ind", "z");
    mb_output(&m, "z");
    expect_reject(&m, NULL, ETF_ENOTSUP, "that this build does not compute");

    tiny(&m, 17);
    mb_weights(&m, "w", DIMS(2, 2, 3, 3), 1);
    mb_node(&m, "Relu", "r", "x", "a");
    mb_node(&m, "Conv", "c", "x a", "y");
    expect_reject(&m, NULL, ETF_ENOTSUP, "must be a constant");
}

/* Inputs the fuzzer found: huge steps and group counts must not overflow. */
static void test_fold_edge_cases(void **state)
{
    (void)state;
    struct mb m;
    tiny(&m, 17);
    mb_weights(&m, "c", DIMS(6), 1);
    mb_init_i(&m, "s1", DIMS(1), (int64_t[]){1});
    mb_init_i(&m, "e", DIMS(1), (int64_t[]){6});
    mb_init_i(&m, "ax", DIMS(1), (int64_t[]){0});
    mb_init_i(&m, "huge", DIMS(1), (int64_t[]){6917529027641081858});
    mb_init_i(&m, "minstep", DIMS(1), (int64_t[]){INT64_MIN});
    mb_node(&m, "Slice", "s", "c s1 e ax huge", "one");      /* [c[1]] */
    mb_node(&m, "Slice", "sb", "c e s1 ax minstep", "back"); /* [c[5]] */
    mb_node(&m, "Add", "a", "one back", "two");
    mb_node(&m, "Mul", "m", "x two", "y");
    struct etf_plan *p = must_parse(&m, 0);
    expect_names(p, NAMES("linear_0"));
    const float *c = m.inits[0]->raw_data.data ? (const float *)m.inits[0]->raw_data.data : NULL;
    assert_non_null(c);
    expect_close(p->kernels[0].attr.eltwise.alpha, c[1] + c[5]);
    etf_plan_free(p);
    mb_done(&m);

    tiny(&m, 17);
    mb_weights(&m, "w", DIMS(2, 1, 1, 1), 1);
    Onnx__NodeProto *n = mb_node(&m, "Conv", "c", "x w", "y");
    attr_i(&m, n, "group", INT64_MAX / 2);
    expect_reject(&m, NULL, ETF_EFORMAT, "channel mismatch");
}

static char tmpdir[] = "/tmp/etf_test_model_XXXXXX";

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
}

/* x [1, 2, 4, 4] -> Conv(w external at `location`) -> y */
static void external_model(struct mb *m, const char *location, size_t offset)
{
    tiny(m, 17);
    Onnx__TensorProto *t =
        mb_tensor(m, "w", ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT, DIMS(2, 2, 1, 1), NULL, 0);
    t->has_data_location = 1;
    t->data_location = ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL;
    t->external_data = mb_alloc(m, 3 * sizeof *t->external_data);
    const char *kv[3][2] = {{"location", location}, {"offset", NULL}, {"length", "16"}};
    char off[32];
    snprintf(off, sizeof off, "%zu", offset);
    kv[1][1] = off;
    for (int i = 0; i < 3; i++) {
        Onnx__StringStringEntryProto *e = mb_alloc(m, sizeof *e);
        onnx__string_string_entry_proto__init(e);
        e->key = mb_str(m, kv[i][0]);
        e->value = mb_str(m, kv[i][1]);
        t->external_data[t->n_external_data++] = e;
    }
    m->inits[m->graph.n_initializer++] = t;
    mb_node(m, "Conv", "c", "x w", "y");
}

static void test_external_data(void **state)
{
    (void)state;
    char path[512], outside[600];
    float w[6] = {9, 1, 2, 3, 4, 9};
    snprintf(path, sizeof path, "%s/w.bin", tmpdir);
    write_file(path, w, sizeof w);
    snprintf(path, sizeof path, "%s/sub", tmpdir);
    mkdir(path, 0700);
    snprintf(path, sizeof path, "%s/sub/link.bin", tmpdir);
    snprintf(outside, sizeof outside, "%s.outside", tmpdir);
    write_file(outside, w, sizeof w);
    unlink(path);
    assert_int_equal(symlink(outside, path), 0);
    snprintf(path, sizeof path, "%s/sub/inside.bin", tmpdir);
    unlink(path);
    assert_int_equal(symlink("../w.bin", path), 0); /* a symlink that stays inside is fine */

    struct mb m;
    for (int i = 0; i < 2; i++) {
        external_model(&m, i ? "sub/inside.bin" : "w.bin", 4);
        struct etf_plan *p = NULL;
        struct etf_diag d;
        int rc = mb_parse_opts(&m, tmpdir, NULL, &p, &d);
        if (rc)
            fail_msg("%s", d.msg);
        const float *wd = val(p, p->kernels[0].inputs[1])->data;
        for (int j = 0; j < 4; j++)
            expect_close(wd[j], w[1 + j]);
        etf_plan_free(p);
        mb_done(&m);
    }

    /* etf_model_open reads external data from the model's folder */
    external_model(&m, "w.bin", 4);
    size_t len;
    uint8_t *buf = mb_pack(&m, &len);
    snprintf(path, sizeof path, "%s/model.onnx", tmpdir);
    write_file(path, buf, len);
    free(buf);
    mb_done(&m);
    struct etf_plan *p = NULL;
    struct etf_diag d;
    assert_int_equal(etf_model_open(path, NULL, &p, &d), 0);
    assert_int_equal(p->n_kernels, 1);
    assert_string_equal(etf_plan_name(p), strrchr(tmpdir, '/') + 1);
    etf_plan_free(p);
    struct etf_model_options small = {.max_bytes = 64};
    assert_int_equal(etf_model_open(path, &small, &p, &d), ETF_ELIMIT);
    assert_non_null(strstr(d.msg, "over the limit of 64"));
    assert_null(p);
    snprintf(path, sizeof path, "%s/missing.onnx", tmpdir);
    assert_int_equal(etf_model_open(path, NULL, &p, &d), ETF_ENOENT);

    external_model(&m, "w.bin", 0);
    expect_reject(&m, NULL, ETF_ENOTSUP, "external file");
    external_model(&m, "../w.bin", 0);
    expect_reject(&m, tmpdir, ETF_EFORMAT, "contains '..'");
    external_model(&m, "sub/../../etc/passwd", 0);
    expect_reject(&m, tmpdir, ETF_EFORMAT, "contains '..'");
    external_model(&m, "/etc/passwd", 0);
    expect_reject(&m, tmpdir, ETF_EFORMAT, "is absolute");
    external_model(&m, "sub/link.bin", 0);
    expect_reject(&m, tmpdir, ETF_EFORMAT, "outside the model's folder");
    external_model(&m, "w.bin", 12);
    expect_reject(&m, tmpdir, ETF_EFORMAT, "16 are needed at offset 12");
    external_model(&m, "nothere.bin", 0);
    expect_reject(&m, tmpdir, ETF_ENOENT, "nothere.bin");
    unlink(outside);
}

/* Every prefix of a valid model is refused cleanly (run under ASan, this also checks that
 * nothing reads past the end). */
static void test_every_prefix(void **state)
{
    (void)state;
    struct mb m;
    build_shape_chain(&m);
    size_t len;
    uint8_t *buf = mb_pack(&m, &len);
    mb_done(&m);
    for (size_t n = 0; n < len; n++) {
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        struct etf_plan *p = NULL;
        struct etf_diag d;
        int rc = etf_model_parse(cut, n, "prefix", NULL, NULL, &p, &d);
        if (rc == 0) {
            check_plan(p);
            etf_plan_free(p);
        } else {
            assert_null(p);
            assert_true(strlen(d.msg) > 0);
        }
        free(cut);
    }
    free(buf);
}

static void test_real_models_if_present(void **state)
{
    (void)state;
    /* scripts/export_models.py output, when a developer made it; the integration test runs
     * them for real */
    const char *dir = getenv("ETF_TEST_MODELS");
    if (!dir)
        skip();
    static const char *const names[] = {"tiny_cnn",    "tiny_transformer", "resnet18",
                                        "resnet50",    "mobilenet_v2",     "squeezenet1_1",
                                        "densenet121", "efficientnet_b0",  "transformer"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s/model.onnx", dir, names[i]);
        if (access(path, R_OK))
            continue;
        struct etf_plan *p = NULL;
        struct etf_diag d;
        int rc = etf_model_open(path, NULL, &p, &d);
        if (rc)
            fail_msg("%s: %s", path, d.msg);
        check_plan(p);
        printf("    %s: %zu kernels\n", names[i], p->n_kernels);
        etf_plan_free(p);
    }
}

static int setup(void **state)
{
    (void)state;
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Small valid models for the fuzzer's seed corpus. */
static int write_seeds(const char *dir)
{
    struct mb m;
    struct resblock r;
    char path[512];
    size_t len;
    build_resblock(&m, &r);
    uint8_t *buf = mb_pack(&m, &len);
    snprintf(path, sizeof path, "%s/resblock.onnx", dir);
    write_file(path, buf, len);
    free(buf);
    mb_done(&m);
    build_shape_chain(&m);
    buf = mb_pack(&m, &len);
    snprintf(path, sizeof path, "%s/shape_chain.onnx", dir);
    write_file(path, buf, len);
    free(buf);
    mb_done(&m);
    build_gelu(&m, 0);
    buf = mb_pack(&m, &len);
    snprintf(path, sizeof path, "%s/gelu.onnx", dir);
    write_file(path, buf, len);
    free(buf);
    mb_done(&m);
    float *w, *b;
    build_slices(&m, &w, &b);
    buf = mb_pack(&m, &len);
    snprintf(path, sizeof path, "%s/slices.onnx", dir);
    write_file(path, buf, len);
    free(buf);
    mb_done(&m);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "--write-seeds"))
        return write_seeds(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_residual_block),
        cmocka_unit_test(test_residual_downsample),
        cmocka_unit_test(test_cnn_names),
        cmocka_unit_test(test_gemm_transb),
        cmocka_unit_test(test_matmul_bias),
        cmocka_unit_test(test_gelu),
        cmocka_unit_test(test_silu),
        cmocka_unit_test(test_shape_folding_and_batch),
        cmocka_unit_test(test_pad_folding),
        cmocka_unit_test(test_slices),
        cmocka_unit_test(test_views_and_linear),
        cmocka_unit_test(test_misc_kernels),
        cmocka_unit_test(test_reject_bytes),
        cmocka_unit_test(test_reject_opsets),
        cmocka_unit_test(test_reject_graph),
        cmocka_unit_test(test_reject_tensors),
        cmocka_unit_test(test_reject_shapes),
        cmocka_unit_test(test_fold_edge_cases),
        cmocka_unit_test(test_external_data),
        cmocka_unit_test(test_every_prefix),
        cmocka_unit_test(test_weights_in_place),
        cmocka_unit_test(test_drop_weights),
        cmocka_unit_test(test_drop_weights_on_load),
        cmocka_unit_test(test_real_models_if_present),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
