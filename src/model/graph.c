/* Graph IR: tensor and node storage, and shape inference with constant folding.
 *
 * etf__graph_infer walks the nodes in topological order. For each it checks the inputs
 * (count, element type, shapes against each other and against the attributes), parses the
 * attributes into struct etf__attrs, sets the output shapes, and computes the outputs when
 * every input is a constant. Folding is what turns the shape arithmetic exporters emit
 * (Shape -> Gather -> Unsqueeze -> Concat -> Reshape) into constants; integers are int64
 * there, and float math is done in float like a device would.
 *
 * Conv and pooling are not folded (a constant input stays a kernel input); everything else
 * is, within the constant budget (max_bytes).
 */
#include "model/graph.h"

#include "util/array.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- ops ---- */

static const struct {
    const char *name;
    enum etf__op op;
} op_table[] = {
    {"Conv", ETF__OP_CONV},
    {"Gemm", ETF__OP_GEMM},
    {"MatMul", ETF__OP_MATMUL},
    {"Relu", ETF__OP_RELU},
    {"Clip", ETF__OP_CLIP},
    {"Sigmoid", ETF__OP_SIGMOID},
    {"Erf", ETF__OP_ERF},
    {"Tanh", ETF__OP_TANH},
    {"Sqrt", ETF__OP_SQRT},
    {"Exp", ETF__OP_EXP},
    {"Add", ETF__OP_ADD},
    {"Sub", ETF__OP_SUB},
    {"Mul", ETF__OP_MUL},
    {"Div", ETF__OP_DIV},
    {"Pow", ETF__OP_POW},
    {"MaxPool", ETF__OP_MAXPOOL},
    {"AveragePool", ETF__OP_AVGPOOL},
    {"GlobalAveragePool", ETF__OP_GLOBALAVGPOOL},
    {"ReduceMean", ETF__OP_REDUCEMEAN},
    {"Concat", ETF__OP_CONCAT},
    {"Flatten", ETF__OP_FLATTEN},
    {"Reshape", ETF__OP_RESHAPE},
    {"Identity", ETF__OP_IDENTITY},
    {"Dropout", ETF__OP_DROPOUT},
    {"Softmax", ETF__OP_SOFTMAX},
    {"Constant", ETF__OP_CONSTANT},
    {"BatchNormalization", ETF__OP_BATCHNORM},
    {"LayerNormalization", ETF__OP_LAYERNORM},
    {"Transpose", ETF__OP_TRANSPOSE},
    {"Shape", ETF__OP_SHAPE},
    {"Gather", ETF__OP_GATHER},
    {"Slice", ETF__OP_SLICE},
    {"Unsqueeze", ETF__OP_UNSQUEEZE},
    {"Squeeze", ETF__OP_SQUEEZE},
    {"Pad", ETF__OP_PAD},
    {"Cast", ETF__OP_CAST},
    {"Expand", ETF__OP_EXPAND},
    {"Equal", ETF__OP_EQUAL},
    {"Mod", ETF__OP_MOD},
    {"Where", ETF__OP_WHERE},
    {"ConstantOfShape", ETF__OP_CONSTANTOFSHAPE},
};

int etf__op_lookup(const char *op_type, enum etf__op *op)
{
    for (size_t i = 0; i < sizeof op_table / sizeof op_table[0]; i++)
        if (!strcmp(op_table[i].name, op_type)) {
            *op = op_table[i].op;
            return 0;
        }
    return ETF_ENOTSUP;
}

/* ---- storage ---- */

struct etf__graph *etf__graph_new(const char *origin, const char *base_dir, size_t max_bytes,
                                  struct etf__arena *a)
{
    struct etf__graph *g = calloc(1, sizeof *g);
    if (!g)
        return NULL;
    g->origin = origin ? origin : "model";
    g->base_dir = base_dir;
    g->max_bytes = max_bytes;
    g->arena = a;
    return g;
}

void etf__graph_free(struct etf__graph *g)
{
    if (!g)
        return;
    for (size_t i = 0; i < g->n_nodes; i++) {
        free(g->nodes[i].in);
        free(g->nodes[i].out);
    }
    free(g->nodes);
    free(g->t);
    free(g->inputs);
    free(g->outputs);
    etf__arena_free(g->arena);
    for (size_t i = 0; i < g->n_strs; i++)
        free(g->strs[i]);
    free(g->strs);
    free(g->ht);
    free(g);
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void ht_insert(int *ht, size_t cap, const struct etf__tensor *t, int id)
{
    size_t i = hash_str(t[id].name) & (cap - 1);
    while (ht[i] >= 0)
        i = (i + 1) & (cap - 1);
    ht[i] = id;
}

int etf__graph_find(const struct etf__graph *g, const char *name)
{
    if (!g->ht_cap)
        return -1;
    size_t i = hash_str(name) & (g->ht_cap - 1);
    while (g->ht[i] >= 0) {
        if (!strcmp(g->t[g->ht[i]].name, name))
            return g->ht[i];
        i = (i + 1) & (g->ht_cap - 1);
    }
    return -1;
}

int etf__graph_add_tensor(struct etf__graph *g, const char *name)
{
    if (g->n_t >= INT_MAX / 4)
        return ETF_ELIMIT;
    if (etf__reserve(&g->t, g->n_t, &g->cap_t, sizeof *g->t, 64))
        return ETF_ENOMEM;
    if ((g->n_t + 1) * 2 > g->ht_cap) {
        size_t cap = g->ht_cap ? 2 * g->ht_cap : 128;
        int *ht = malloc(cap * sizeof *ht);
        if (!ht)
            return ETF_ENOMEM;
        memset(ht, 0xff, cap * sizeof *ht);
        for (size_t i = 0; i < g->n_t; i++)
            ht_insert(ht, cap, g->t, (int)i);
        free(g->ht);
        g->ht = ht;
        g->ht_cap = cap;
    }
    int id = (int)g->n_t++;
    g->t[id] = (struct etf__tensor){.name = name, .producer = -1};
    ht_insert(g->ht, g->ht_cap, g->t, id);
    return id;
}

const char *etf__graph_strf(struct etf__graph *g, const char *fmt, ...)
{
    if (etf__reserve(&g->strs, g->n_strs, &g->cap_strs, sizeof *g->strs, 32))
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (need < 0)
        return NULL;
    char *p = malloc((size_t)need + 1);
    if (!p)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(p, (size_t)need + 1, fmt, ap);
    va_end(ap);
    g->strs[g->n_strs++] = p;
    return p;
}

void etf__graph_set_const(struct etf__graph *g, int t, enum etf__dtype dt, void *data)
{
    struct etf__tensor *T = &g->t[t];
    T->dtype = dt;
    T->data = data;
    T->shaped = true;
}

bool etf__graph_const_private(const struct etf__graph *g, int t)
{
    const struct etf__tensor *T = &g->t[t];
    return T->data && !T->shared && T->uses == 1 && !T->is_output;
}

int etf__graph_const_alloc(struct etf__graph *g, size_t bytes, const char *what, void **out,
                           struct etf_diag *diag)
{
    *out = NULL;
    if (bytes > g->max_bytes || g->const_bytes > g->max_bytes - bytes)
        return etf_diagf(diag, ETF_ELIMIT,
                         "%s: %s: %zu more bytes of constant data would exceed the limit of %zu "
                         "bytes",
                         g->origin, what, bytes, g->max_bytes);
    void *p = etf__arena_alloc(g->arena, bytes);
    if (!p)
        return etf_diagf(diag, ETF_ENOMEM, "%s: %s: out of memory for %zu bytes", g->origin, what,
                         bytes);
    g->const_bytes += bytes;
    *out = p;
    return 0;
}

static size_t dtype_size(enum etf__dtype dt)
{
    return dt == ETF__DT_FLOAT ? 4 : 8;
}

int etf__graph_alloc_const(struct etf__graph *g, int t, struct etf_diag *diag)
{
    struct etf__tensor *T = &g->t[t];
    size_t esz = dtype_size(T->dtype), n;
    char sbuf[128];
    if (!etf__shape_elems_checked(&T->shape, g->max_bytes / esz, &n))
        return etf_diagf(diag, ETF_ELIMIT, "%s: constant '%s' of shape %s exceeds %zu bytes",
                         g->origin, T->name, etf__shape_str(&T->shape, sbuf), g->max_bytes);
    void *p;
    int rc = etf__graph_const_alloc(g, n * esz, T->name, &p, diag);
    if (rc)
        return rc;
    etf__graph_set_const(g, t, g->t[t].dtype, p);
    return 0;
}

void etf__graph_count_uses(struct etf__graph *g)
{
    for (size_t i = 0; i < g->n_t; i++)
        g->t[i].uses = 0;
    for (size_t i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].dead)
            continue;
        for (int k = 0; k < g->nodes[i].n_in; k++)
            if (g->nodes[i].in[k] >= 0)
                g->t[g->nodes[i].in[k]].uses++;
    }
    for (size_t i = 0; i < g->n_outputs; i++)
        g->t[g->outputs[i]].uses++;
}

/* ---- messages and shapes ---- */

int etf__node_err(const struct etf__graph *g, const struct etf__node *n, struct etf_diag *diag,
                  int err, const char *fmt, ...)
{
    if (!diag)
        return err;
    char msg[sizeof diag->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n->name && n->name[0])
        return etf_diagf(diag, err, "%s: node '%s' (%s): %s", g->origin, n->name, n->op_type, msg);
    return etf_diagf(diag, err, "%s: node #%d (%s): %s", g->origin, n->index, n->op_type, msg);
}

const char *etf__shape_str(const struct etf_shape *s, char buf[128])
{
    size_t at = 0;
    buf[at++] = '[';
    for (int i = 0; i < s->ndim && i < ETF_MAX_DIMS; i++)
        at += (size_t)snprintf(buf + at, 128 - at, "%s%lld", i ? ", " : "", (long long)s->d[i]);
    snprintf(buf + at, 128 - at, "]");
    return buf;
}

bool etf__shape_eq(const struct etf_shape *a, const struct etf_shape *b)
{
    if (a->ndim != b->ndim)
        return false;
    for (int i = 0; i < a->ndim; i++)
        if (a->d[i] != b->d[i])
            return false;
    return true;
}

bool etf__shape_elems_checked(const struct etf_shape *s, size_t limit, size_t *out)
{
    size_t n = 1;
    if (s->ndim < 0 || s->ndim > ETF_MAX_DIMS)
        return false;
    for (int i = 0; i < s->ndim; i++) {
        if (s->d[i] < 0)
            return false;
        if (s->d[i] == 0) {
            n = 0;
            continue;
        }
        if (n && (uint64_t)s->d[i] > limit / n)
            return false;
        n *= (size_t)s->d[i];
    }
    /* A zero dim makes the count 0 but every other dim must still be sane. */
    for (int i = 0; i < s->ndim; i++)
        if ((uint64_t)s->d[i] > limit && s->d[i] > 1)
            return false;
    if (n > limit)
        return false;
    *out = n;
    return true;
}

static size_t elems(const struct etf_shape *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= (size_t)s->d[i];
    return n;
}

static void contiguous_strides(const struct etf_shape *s, int64_t st[ETF_MAX_DIMS])
{
    int64_t acc = 1;
    for (int i = s->ndim - 1; i >= 0; i--) {
        st[i] = acc;
        acc *= s->d[i];
    }
}

/* Numpy broadcasting of two shapes. */
static bool broadcast(const struct etf_shape *a, const struct etf_shape *b, struct etf_shape *out)
{
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    out->ndim = nd;
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        int64_t da = ia >= 0 ? a->d[ia] : 1, db = ib >= 0 ? b->d[ib] : 1;
        if (da == db || db == 1)
            out->d[i] = da;
        else if (da == 1)
            out->d[i] = db;
        else
            return false;
    }
    return true;
}

/* Iterates over the elements of an output shape, tracking the offsets of up to three
 * sources whose strides are given per output dim (0 for broadcast dims). */
struct nd_iter {
    int ndim, n_src;
    int64_t dims[ETF_MAX_DIMS], idx[ETF_MAX_DIMS];
    int64_t st[3][ETF_MAX_DIMS];
    int64_t off[3];
};

static void nd_start(struct nd_iter *it, const struct etf_shape *out, int n_src)
{
    memset(it, 0, sizeof *it);
    it->ndim = out->ndim;
    it->n_src = n_src;
    for (int i = 0; i < out->ndim; i++)
        it->dims[i] = out->d[i];
}

/* Source s is a contiguous tensor of shape src broadcast to the output. */
static void nd_bcast_src(struct nd_iter *it, int s, const struct etf_shape *src)
{
    int64_t cs[ETF_MAX_DIMS];
    contiguous_strides(src, cs);
    for (int i = 0; i < it->ndim; i++) {
        int j = i - (it->ndim - src->ndim);
        it->st[s][i] = (j < 0 || src->d[j] == 1) ? 0 : cs[j];
    }
}

static void nd_next(struct nd_iter *it)
{
    for (int d = it->ndim - 1; d >= 0; d--) {
        it->idx[d]++;
        for (int s = 0; s < it->n_src; s++)
            it->off[s] += it->st[s][d];
        if (it->idx[d] < it->dims[d])
            return;
        for (int s = 0; s < it->n_src; s++)
            it->off[s] -= it->st[s][d] * it->dims[d];
        it->idx[d] = 0;
    }
}

/* ---- node helpers ---- */

#define ERR(err, ...) etf__node_err(g, n, diag, (err), __VA_ARGS__)

static struct etf__tensor *IN(struct etf__graph *g, const struct etf__node *n, int k)
{
    return k < n->n_in && n->in[k] >= 0 ? &g->t[n->in[k]] : NULL;
}

static struct etf__tensor *OUT(struct etf__graph *g, const struct etf__node *n, int k)
{
    return k < n->n_out && n->out[k] >= 0 ? &g->t[n->out[k]] : NULL;
}

static const char *dtype_name(enum etf__dtype dt)
{
    return dt == ETF__DT_FLOAT ? "FLOAT" : "INT64";
}

/* Inputs min..max present (the first `min` required) and all of them known. */
static int check_inputs(struct etf__graph *g, const struct etf__node *n, int min, int max,
                        struct etf_diag *diag)
{
    if (n->n_in < min)
        return ERR(ETF_EFORMAT, "expects at least %d input(s), found %d", min, n->n_in);
    if (n->n_in > max)
        return ERR(ETF_EFORMAT, "expects at most %d input(s), found %d", max, n->n_in);
    for (int k = 0; k < n->n_in; k++) {
        const struct etf__tensor *T = IN(g, n, k);
        if (!T) {
            if (k < min)
                return ERR(ETF_EFORMAT, "required input #%d is missing", k);
            continue;
        }
        if (!T->shaped) {
            const struct etf__node *p = T->producer >= 0 ? &g->nodes[T->producer] : NULL;
            return ERR(ETF_ENOTSUP,
                       "input '%s' is an output of node '%s' (%s) that this build does not "
                       "compute",
                       T->name, p ? p->name : "?", p ? p->op_type : "?");
        }
    }
    return 0;
}

static int need_float(struct etf__graph *g, const struct etf__node *n, int k, struct etf_diag *diag)
{
    const struct etf__tensor *T = IN(g, n, k);
    if (T && T->dtype != ETF__DT_FLOAT)
        return ERR(ETF_ENOTSUP, "input '%s' is %s; fp32 only", T->name, dtype_name(T->dtype));
    return 0;
}

static int need_const(struct etf__graph *g, const struct etf__node *n, int k, const char *what,
                      struct etf_diag *diag)
{
    const struct etf__tensor *T = IN(g, n, k);
    if (T && !T->data)
        return ERR(ETF_ENOTSUP,
                   "input '%s' (%s) must be a constant (an initializer or computed from "
                   "shapes), found a computed tensor",
                   T->name, what);
    return 0;
}

/* A constant 1-D (or scalar) integer input. */
static int const_ints(struct etf__graph *g, const struct etf__node *n, int k, const char *what,
                      const int64_t **v, size_t *cnt, struct etf_diag *diag)
{
    const struct etf__tensor *T = IN(g, n, k);
    int rc = need_const(g, n, k, what, diag);
    if (rc)
        return rc;
    char sbuf[128];
    if (T->dtype != ETF__DT_INT64)
        return ERR(ETF_EFORMAT, "input '%s' (%s) must hold integers, found %s", T->name, what,
                   dtype_name(T->dtype));
    if (T->shape.ndim > 1)
        return ERR(ETF_EFORMAT, "input '%s' (%s) must be 1-D, found shape %s", T->name, what,
                   etf__shape_str(&T->shape, sbuf));
    *v = T->data;
    *cnt = elems(&T->shape);
    return 0;
}

/* A constant with one element, as float. */
static int const_scalar(struct etf__graph *g, const struct etf__node *n, int k, const char *what,
                        float *out, struct etf_diag *diag)
{
    const struct etf__tensor *T = IN(g, n, k);
    int rc = need_const(g, n, k, what, diag);
    if (rc)
        return rc;
    char sbuf[128];
    if (elems(&T->shape) != 1)
        return ERR(ETF_EFORMAT, "input '%s' (%s) must have one element, found shape %s", T->name,
                   what, etf__shape_str(&T->shape, sbuf));
    *out = T->dtype == ETF__DT_FLOAT ? *(const float *)T->data : (float)*(const int64_t *)T->data;
    return 0;
}

static int set_out(struct etf__graph *g, const struct etf__node *n, int k, enum etf__dtype dt,
                   const struct etf_shape *s, struct etf_diag *diag)
{
    struct etf__tensor *T = OUT(g, n, k);
    if (!T)
        return 0;
    size_t cnt;
    char sbuf[128];
    if (s->ndim > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "output '%s' would have %d dims; at most %d are supported", T->name,
                   s->ndim, ETF_MAX_DIMS);
    if (!etf__shape_elems_checked(s, g->max_bytes / dtype_size(dt), &cnt))
        return ERR(ETF_ELIMIT, "output '%s' of shape %s exceeds the size limit of %zu bytes",
                   T->name, etf__shape_str(s, sbuf), g->max_bytes);
    T->dtype = dt;
    T->shape = *s;
    T->shaped = true;
    return 0;
}

/* Output k shares input j's constant data (a view of a constant). */
static void share_const(struct etf__graph *g, const struct etf__node *n, int k, int j)
{
    struct etf__tensor *src = IN(g, n, j);
    if (OUT(g, n, k)) {
        etf__graph_set_const(g, n->out[k], src->dtype, src->data);
        src->shared = g->t[n->out[k]].shared = true;
    }
}

static int fold_alloc(struct etf__graph *g, const struct etf__node *n, int k, void **data,
                      struct etf_diag *diag)
{
    *data = NULL;
    if (!OUT(g, n, k))
        return 0;
    int rc = etf__graph_alloc_const(g, n->out[k], diag);
    if (rc)
        return rc;
    *data = g->t[n->out[k]].data;
    return 0;
}

static bool all_const(struct etf__graph *g, const struct etf__node *n)
{
    for (int k = 0; k < n->n_in; k++) {
        const struct etf__tensor *T = IN(g, n, k);
        if (T && !T->data)
            return false;
    }
    return true;
}

static bool norm_axis(int64_t axis, int rank, int *out)
{
    if (axis < -(int64_t)rank || axis >= rank)
        return false;
    *out = (int)(axis < 0 ? axis + rank : axis);
    return true;
}

/* ---- attributes ---- */

static const Onnx__AttributeProto *attr(const struct etf__node *n, const char *name)
{
    if (!n->pb)
        return NULL;
    for (size_t i = 0; i < n->pb->n_attribute; i++) {
        const Onnx__AttributeProto *a = n->pb->attribute[i];
        if (a->name && !strcmp(a->name, name))
            return a;
    }
    return NULL;
}

/* The attribute's type; files from before IR version 2 leave it out. */
static int attr_type(const Onnx__AttributeProto *a)
{
    if (a->has_type)
        return a->type;
    if (a->has_f)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT;
    if (a->has_i)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT;
    if (a->has_s)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING;
    if (a->t)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__TENSOR;
    if (a->n_floats)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOATS;
    if (a->n_ints)
        return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    return ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED;
}

static int attr_i(struct etf__graph *g, const struct etf__node *n, const char *name, int64_t def,
                  int64_t *out, struct etf_diag *diag)
{
    const Onnx__AttributeProto *a = attr(n, name);
    *out = def;
    if (!a)
        return 0;
    if (attr_type(a) != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INT)
        return ERR(ETF_EFORMAT, "attribute '%s' must be an int", name);
    *out = a->i;
    return 0;
}

static int attr_f(struct etf__graph *g, const struct etf__node *n, const char *name, float def,
                  float *out, struct etf_diag *diag)
{
    const Onnx__AttributeProto *a = attr(n, name);
    *out = def;
    if (!a)
        return 0;
    if (attr_type(a) != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__FLOAT)
        return ERR(ETF_EFORMAT, "attribute '%s' must be a float", name);
    *out = a->f;
    return 0;
}

static int attr_ints(struct etf__graph *g, const struct etf__node *n, const char *name,
                     const int64_t **v, size_t *cnt, bool *present, struct etf_diag *diag)
{
    const Onnx__AttributeProto *a = attr(n, name);
    *v = NULL;
    *cnt = 0;
    *present = a != NULL;
    if (!a)
        return 0;
    int t = attr_type(a);
    if (t != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS &&
        t != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__UNDEFINED)
        return ERR(ETF_EFORMAT, "attribute '%s' must be a list of ints", name);
    *v = a->ints;
    *cnt = a->n_ints;
    return 0;
}

/* A string attribute compared with `want`; absent = def. */
static int attr_s(struct etf__graph *g, const struct etf__node *n, const char *name,
                  const char *def, char *buf, size_t size, struct etf_diag *diag)
{
    const Onnx__AttributeProto *a = attr(n, name);
    if (!a) {
        snprintf(buf, size, "%s", def);
        return 0;
    }
    if (attr_type(a) != ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__STRING)
        return ERR(ETF_EFORMAT, "attribute '%s' must be a string", name);
    size_t len = a->s.len < size - 1 ? a->s.len : size - 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = a->s.data[i];
        buf[i] = (char)(c >= 32 && c < 127 ? c : '?');
    }
    buf[len] = 0;
    return 0;
}

/* ---- elementwise ---- */

static float sigmoidf(float x)
{
    return 1.0f / (1.0f + expf(-x));
}

static float unary_f(enum etf__op op, float x, const struct etf__attrs *a)
{
    switch (op) {
    case ETF__OP_RELU:
        return x > 0 ? x : 0;
    case ETF__OP_CLIP:
        return x < a->alpha ? a->alpha : x > a->beta ? a->beta : x;
    case ETF__OP_SIGMOID:
        return sigmoidf(x);
    case ETF__OP_ERF:
        return erff(x);
    case ETF__OP_TANH:
        return tanhf(x);
    case ETF__OP_SQRT:
        return sqrtf(x);
    case ETF__OP_EXP:
        return expf(x);
    default:
        return x;
    }
}

static int inf_unary(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, n->op == ETF__OP_CLIP ? 3 : 1, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    if (n->op == ETF__OP_CLIP) {
        n->a.alpha = -INFINITY;
        n->a.beta = INFINITY;
        if (IN(g, n, 1) && (rc = const_scalar(g, n, 1, "min", &n->a.alpha, diag)))
            return rc;
        if (IN(g, n, 2) && (rc = const_scalar(g, n, 2, "max", &n->a.beta, diag)))
            return rc;
    }
    const struct etf__tensor *x = IN(g, n, 0);
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &x->shape, diag)))
        return rc;
    if (!x->data)
        return 0;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    const float *xv = x->data;
    for (size_t i = 0, cnt = elems(&x->shape); i < cnt; i++)
        y[i] = unary_f(n->op, xv[i], &n->a);
    return 0;
}

static int64_t binary_i(enum etf__op op, int64_t a, int64_t b)
{
    /* Wrapping arithmetic: shape math never overflows in a sane model, and an insane one
     * must not be undefined behaviour. */
    switch (op) {
    case ETF__OP_ADD:
        return (int64_t)((uint64_t)a + (uint64_t)b);
    case ETF__OP_SUB:
        return (int64_t)((uint64_t)a - (uint64_t)b);
    case ETF__OP_MUL:
        return (int64_t)((uint64_t)a * (uint64_t)b);
    case ETF__OP_DIV:
        return (a == INT64_MIN && b == -1) ? INT64_MIN : a / b;
    case ETF__OP_EQUAL:
        return a == b;
    case ETF__OP_MOD: {
        /* ONNX Mod with fmod = 0: the result takes the divisor's sign, as in Python */
        if (a == INT64_MIN && b == -1)
            return 0;
        int64_t r = a % b;
        return (r != 0 && ((r < 0) != (b < 0))) ? r + b : r;
    }
    default:
        return 0;
    }
}

static float binary_f(enum etf__op op, float a, float b)
{
    switch (op) {
    case ETF__OP_ADD:
        return a + b;
    case ETF__OP_SUB:
        return a - b;
    case ETF__OP_MUL:
        return a * b;
    case ETF__OP_DIV:
        return a / b;
    case ETF__OP_POW:
        return powf(a, b);
    default:
        return 0;
    }
}

static int inf_binary(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 2, diag);
    if (rc)
        return rc;
    const struct etf__tensor *a = IN(g, n, 0), *b = IN(g, n, 1);
    char sa[128], sb[128];
    struct etf_shape s;
    if (!broadcast(&a->shape, &b->shape, &s))
        return ERR(ETF_EFORMAT,
                   "input '%s' of shape %s and input '%s' of shape %s do not broadcast", a->name,
                   etf__shape_str(&a->shape, sa), b->name, etf__shape_str(&b->shape, sb));
    bool pow_int_exp = n->op == ETF__OP_POW && a->dtype == ETF__DT_FLOAT;
    if (a->dtype != b->dtype && !pow_int_exp)
        return ERR(ETF_EFORMAT, "input '%s' is %s but input '%s' is %s", a->name,
                   dtype_name(a->dtype), b->name, dtype_name(b->dtype));
    if (n->op == ETF__OP_POW && a->dtype != ETF__DT_FLOAT)
        return ERR(ETF_ENOTSUP, "Pow of integers is not supported");
    if (n->op == ETF__OP_MOD && a->dtype == ETF__DT_FLOAT)
        return ERR(ETF_ENOTSUP, "Mod of floats is not supported (integers only)");
    enum etf__dtype odt = n->op == ETF__OP_EQUAL ? ETF__DT_INT64 : a->dtype;
    if (!(a->data && b->data)) {
        if (a->dtype != ETF__DT_FLOAT || n->op == ETF__OP_EQUAL || n->op == ETF__OP_MOD)
            return ERR(ETF_ENOTSUP, "%s is supported on constants only (input '%s' is computed)",
                       n->op_type, a->data ? b->name : a->name);
        if (n->op == ETF__OP_POW) {
            /* Only the squares and square roots exporters emit for norms. */
            if (!b->data)
                return ERR(ETF_ENOTSUP, "Pow needs a constant exponent; '%s' is computed", b->name);
            size_t cnt = elems(&b->shape);
            float e0 = 0;
            for (size_t i = 0; i < cnt; i++) {
                float e = b->dtype == ETF__DT_FLOAT ? ((const float *)b->data)[i]
                                                    : (float)((const int64_t *)b->data)[i];
                if ((i > 0 && e != e0) || (e != 2.0f && e != 0.5f))
                    return ERR(ETF_ENOTSUP, "Pow exponent %g is not supported (only 2 and 0.5)",
                               (double)e);
                e0 = e;
            }
            if (cnt == 0 || !etf__shape_eq(&s, &a->shape))
                return ERR(ETF_ENOTSUP, "Pow exponent '%s' of shape %s changes the shape of '%s'",
                           b->name, etf__shape_str(&b->shape, sb), a->name);
            n->a.exponent = e0;
        }
        return set_out(g, n, 0, odt, &s, diag);
    }
    if ((rc = set_out(g, n, 0, odt, &s, diag)))
        return rc;
    void *y;
    if ((rc = fold_alloc(g, n, 0, &y, diag)) || !y)
        return rc;
    a = IN(g, n, 0);
    b = IN(g, n, 1);
    struct nd_iter it;
    nd_start(&it, &s, 2);
    nd_bcast_src(&it, 0, &a->shape);
    nd_bcast_src(&it, 1, &b->shape);
    size_t cnt = elems(&s);
    for (size_t i = 0; i < cnt; i++, nd_next(&it)) {
        if (a->dtype == ETF__DT_INT64) {
            int64_t x = ((const int64_t *)a->data)[it.off[0]];
            int64_t z = ((const int64_t *)b->data)[it.off[1]];
            if ((n->op == ETF__OP_DIV || n->op == ETF__OP_MOD) && z == 0)
                return ERR(ETF_EFORMAT, "integer division by zero while folding constants");
            ((int64_t *)y)[i] = binary_i(n->op, x, z);
        } else {
            float x = ((const float *)a->data)[it.off[0]];
            float z = b->dtype == ETF__DT_FLOAT ? ((const float *)b->data)[it.off[1]]
                                                : (float)((const int64_t *)b->data)[it.off[1]];
            if (n->op == ETF__OP_EQUAL)
                ((int64_t *)y)[i] = x == z;
            else
                ((float *)y)[i] = binary_f(n->op, x, z);
        }
    }
    return 0;
}

static int inf_where(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 3, 3, diag);
    if (rc)
        return rc;
    const struct etf__tensor *c = IN(g, n, 0), *x = IN(g, n, 1), *y = IN(g, n, 2);
    struct etf_shape s1, s;
    char sb[3][128];
    if (!broadcast(&c->shape, &x->shape, &s1) || !broadcast(&s1, &y->shape, &s))
        return ERR(ETF_EFORMAT, "inputs of shapes %s, %s and %s do not broadcast",
                   etf__shape_str(&c->shape, sb[0]), etf__shape_str(&x->shape, sb[1]),
                   etf__shape_str(&y->shape, sb[2]));
    if (x->dtype != y->dtype || c->dtype != ETF__DT_INT64)
        return ERR(ETF_EFORMAT, "condition must be boolean and both branches of one type");
    if (!all_const(g, n))
        return ERR(ETF_ENOTSUP, "Where is supported on constants only");
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)))
        return rc;
    void *out;
    if ((rc = fold_alloc(g, n, 0, &out, diag)) || !out)
        return rc;
    c = IN(g, n, 0), x = IN(g, n, 1), y = IN(g, n, 2);
    struct nd_iter it;
    nd_start(&it, &s, 3);
    nd_bcast_src(&it, 0, &c->shape);
    nd_bcast_src(&it, 1, &x->shape);
    nd_bcast_src(&it, 2, &y->shape);
    size_t esz = dtype_size(x->dtype);
    for (size_t i = 0, cnt = elems(&s); i < cnt; i++, nd_next(&it)) {
        bool take_x = ((const int64_t *)c->data)[it.off[0]] != 0;
        const char *src = take_x ? (const char *)x->data + (size_t)it.off[1] * esz
                                 : (const char *)y->data + (size_t)it.off[2] * esz;
        memcpy((char *)out + i * esz, src, esz);
    }
    return 0;
}

/* ---- linear algebra ---- */

/* Folding a product is worth it for shape-sized constants only; beyond this many multiply-
 * adds the node stays a kernel (with constant inputs). */
#define FOLD_MAX_MACS ((uint64_t)1 << 24)

static int inf_matmul(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 2, diag);
    if (rc || (rc = need_float(g, n, 0, diag)) || (rc = need_float(g, n, 1, diag)))
        return rc;
    const struct etf__tensor *a = IN(g, n, 0), *b = IN(g, n, 1);
    char sa[128], sb[128];
    if (a->shape.ndim < 1 || b->shape.ndim < 1)
        return ERR(ETF_EFORMAT, "inputs must have at least 1 dim; '%s' is %s, '%s' is %s", a->name,
                   etf__shape_str(&a->shape, sa), b->name, etf__shape_str(&b->shape, sb));
    /* 1-D operands: a is a row, b a column, the dim removed from the result. */
    struct etf_shape A = a->shape, B = b->shape;
    if (A.ndim == 1)
        A = (struct etf_shape){.ndim = 2, .d = {1, a->shape.d[0]}};
    if (B.ndim == 1)
        B = (struct etf_shape){.ndim = 2, .d = {b->shape.d[0], 1}};
    int64_t M = A.d[A.ndim - 2], K = A.d[A.ndim - 1], K2 = B.d[B.ndim - 2], N = B.d[B.ndim - 1];
    if (K != K2)
        return ERR(ETF_EFORMAT,
                   "inner dims differ: input '%s' of shape %s has %lld columns, input '%s' of "
                   "shape %s has %lld rows",
                   a->name, etf__shape_str(&a->shape, sa), (long long)K, b->name,
                   etf__shape_str(&b->shape, sb), (long long)K2);
    struct etf_shape ba = {.ndim = A.ndim - 2}, bb = {.ndim = B.ndim - 2}, bo;
    memcpy(ba.d, A.d, sizeof(int64_t) * (size_t)ba.ndim);
    memcpy(bb.d, B.d, sizeof(int64_t) * (size_t)bb.ndim);
    if (!broadcast(&ba, &bb, &bo))
        return ERR(ETF_EFORMAT,
                   "batch dims of input '%s' of shape %s and input '%s' of shape %s "
                   "do not broadcast",
                   a->name, etf__shape_str(&a->shape, sa), b->name, etf__shape_str(&b->shape, sb));
    struct etf_shape s = bo;
    if (a->shape.ndim > 1)
        s.d[s.ndim++] = M;
    if (b->shape.ndim > 1)
        s.d[s.ndim++] = N;
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &s, diag)))
        return rc;
    size_t batches = elems(&bo);
    if (!a->data || !b->data ||
        (uint64_t)batches * (uint64_t)M >
            FOLD_MAX_MACS / ((uint64_t)(K ? K : 1) * (uint64_t)(N ? N : 1)))
        return 0;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    a = IN(g, n, 0);
    b = IN(g, n, 1);
    struct nd_iter it;
    nd_start(&it, &bo, 2);
    nd_bcast_src(&it, 0, &ba);
    nd_bcast_src(&it, 1, &bb);
    const float *av = a->data, *bv = b->data;
    for (size_t i = 0; i < batches; i++, nd_next(&it)) {
        const float *x = av + (size_t)it.off[0] * (size_t)(M * K);
        const float *w = bv + (size_t)it.off[1] * (size_t)(K * N);
        float *o = y + i * (size_t)(M * N);
        for (int64_t r = 0; r < M; r++)
            for (int64_t c = 0; c < N; c++) {
                float acc = 0;
                for (int64_t k = 0; k < K; k++)
                    acc += x[r * K + k] * w[k * N + c];
                o[r * N + c] = acc;
            }
    }
    return 0;
}

static int inf_gemm(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 3, diag);
    for (int k = 0; k < 3 && !rc; k++)
        rc = need_float(g, n, k, diag);
    if (rc)
        return rc;
    int64_t ta, tb;
    if ((rc = attr_i(g, n, "transA", 0, &ta, diag)) ||
        (rc = attr_i(g, n, "transB", 0, &tb, diag)) ||
        (rc = attr_f(g, n, "alpha", 1.0f, &n->a.alpha, diag)) ||
        (rc = attr_f(g, n, "beta", 1.0f, &n->a.beta, diag)))
        return rc;
    n->a.trans_a = ta != 0;
    n->a.trans_b = tb != 0;
    const struct etf__tensor *a = IN(g, n, 0), *b = IN(g, n, 1), *c = IN(g, n, 2);
    char sa[128], sb[128];
    if (a->shape.ndim != 2 || b->shape.ndim != 2)
        return ERR(ETF_EFORMAT, "inputs must be 2-D; '%s' is %s, '%s' is %s", a->name,
                   etf__shape_str(&a->shape, sa), b->name, etf__shape_str(&b->shape, sb));
    int64_t M = a->shape.d[ta ? 1 : 0], K = a->shape.d[ta ? 0 : 1];
    int64_t K2 = b->shape.d[tb ? 1 : 0], N = b->shape.d[tb ? 0 : 1];
    if (K != K2)
        return ERR(ETF_EFORMAT,
                   "inner dims differ: input '%s' of shape %s gives K=%lld (transA=%d), input "
                   "'%s' of shape %s gives K=%lld (transB=%d)",
                   a->name, etf__shape_str(&a->shape, sa), (long long)K, (int)n->a.trans_a, b->name,
                   etf__shape_str(&b->shape, sb), (long long)K2, (int)n->a.trans_b);
    struct etf_shape s = {.ndim = 2, .d = {M, N}};
    if (c) {
        struct etf_shape bs;
        if (c->shape.ndim > 2 || !broadcast(&s, &c->shape, &bs) || !etf__shape_eq(&bs, &s))
            return ERR(ETF_EFORMAT, "input '%s' of shape %s does not broadcast to the result %s",
                       c->name, etf__shape_str(&c->shape, sa), etf__shape_str(&s, sb));
    }
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &s, diag)))
        return rc;
    if (!all_const(g, n) ||
        (uint64_t)M > FOLD_MAX_MACS / ((uint64_t)(K ? K : 1) * (uint64_t)(N ? N : 1)))
        return 0;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    a = IN(g, n, 0), b = IN(g, n, 1), c = IN(g, n, 2);
    const float *av = a->data, *bv = b->data;
    struct nd_iter it;
    nd_start(&it, &s, 1);
    if (c)
        nd_bcast_src(&it, 0, &c->shape);
    for (int64_t r = 0; r < M; r++)
        for (int64_t col = 0; col < N; col++, nd_next(&it)) {
            float acc = 0;
            for (int64_t k = 0; k < K; k++)
                acc += av[ta ? k * M + r : r * K + k] * bv[tb ? col * K + k : k * N + col];
            y[r * N + col] =
                n->a.alpha * acc + (c ? n->a.beta * ((const float *)c->data)[it.off[0]] : 0);
        }
    return 0;
}

/* ---- convolution and pooling ---- */

/* Largest kernel, stride, dilation or pad accepted: keeps every product below in range. */
#define SPATIAL_MAX ((int64_t)1 << 24)

/* Output size along one spatial axis, resolving auto_pad and ceil_mode into explicit pads
 * (ceil_mode becomes extra end padding that a window never reads alone). */
static int spatial(struct etf__graph *g, const struct etf__node *n, const char *auto_pad, int axis,
                   int64_t in, int64_t k, int64_t s, int64_t d, bool ceil_mode, int64_t *pb,
                   int64_t *pe, int64_t *out, struct etf_diag *diag)
{
    int64_t ke = (k - 1) * d + 1;
    int64_t o;
    if (!strcmp(auto_pad, "SAME_UPPER") || !strcmp(auto_pad, "SAME_LOWER")) {
        o = (in + s - 1) / s;
        int64_t total = (o - 1) * s + ke - in;
        if (total < 0)
            total = 0;
        if (!strcmp(auto_pad, "SAME_UPPER"))
            *pb = total / 2, *pe = total - total / 2;
        else
            *pb = total - total / 2, *pe = total / 2;
    } else if (!strcmp(auto_pad, "VALID")) {
        *pb = *pe = 0;
    } else if (strcmp(auto_pad, "NOTSET")) {
        return ERR(ETF_ENOTSUP, "auto_pad '%s' is not supported", auto_pad);
    }
    int64_t span = in + *pb + *pe - ke;
    if (span < 0)
        return ERR(ETF_EFORMAT,
                   "spatial axis %d: the window (%lld with dilation) is larger than the padded "
                   "input (%lld)",
                   axis, (long long)ke, (long long)(in + *pb + *pe));
    o = span / s + 1;
    if (ceil_mode && span % s) {
        o = span / s + 2;
        if ((o - 1) * s >= in + *pb) /* the last window must start inside the input */
            o--;
        int64_t need = (o - 1) * s + ke - in - *pb;
        if (need > *pe)
            *pe = need;
    }
    *out = o;
    return 0;
}

/* strides, dilations, pads, auto_pad for Conv and pooling */
static int spatial_attrs(struct etf__graph *g, struct etf__node *n, const struct etf_shape *x,
                         bool ceil_mode, bool allow_dilation, struct etf_shape *s,
                         struct etf_diag *diag)
{
    const int64_t *v;
    size_t cnt;
    bool present;
    int rc;
    for (int i = 0; i < 2; i++) {
        n->a.stride[i] = 1;
        n->a.dilation[i] = 1;
        n->a.pad_begin[i] = n->a.pad_end[i] = 0;
    }
    if ((rc = attr_ints(g, n, "strides", &v, &cnt, &present, diag)))
        return rc;
    if (present && cnt != 2)
        return ERR(ETF_EFORMAT, "attribute 'strides' has %zu values, expected 2", cnt);
    for (size_t i = 0; i < cnt && i < 2; i++)
        n->a.stride[i] = v[i];
    if ((rc = attr_ints(g, n, "dilations", &v, &cnt, &present, diag)))
        return rc;
    if (present && cnt != 2)
        return ERR(ETF_EFORMAT, "attribute 'dilations' has %zu values, expected 2", cnt);
    for (size_t i = 0; i < cnt && i < 2; i++)
        n->a.dilation[i] = v[i];
    if ((rc = attr_ints(g, n, "pads", &v, &cnt, &present, diag)))
        return rc;
    if (present && cnt != 4)
        return ERR(ETF_EFORMAT, "attribute 'pads' has %zu values, expected 4", cnt);
    for (size_t i = 0; i < cnt && i < 4; i++)
        (i < 2 ? n->a.pad_begin : n->a.pad_end)[i % 2] = v[i];
    for (int i = 0; i < 2; i++) {
        if (n->a.stride[i] < 1 || n->a.stride[i] > SPATIAL_MAX || n->a.dilation[i] < 1 ||
            n->a.dilation[i] > SPATIAL_MAX || n->a.pad_begin[i] < 0 ||
            n->a.pad_begin[i] > SPATIAL_MAX || n->a.pad_end[i] < 0 ||
            n->a.pad_end[i] > SPATIAL_MAX || n->a.kernel[i] < 1 || n->a.kernel[i] > SPATIAL_MAX)
            return ERR(
                ETF_EFORMAT,
                "kernel %lldx%lld, strides %lldx%lld, dilations %lldx%lld, pads "
                "%lld,%lld,%lld,%lld: every value must be positive (pads non-negative) "
                "and at most %lld",
                (long long)n->a.kernel[0], (long long)n->a.kernel[1], (long long)n->a.stride[0],
                (long long)n->a.stride[1], (long long)n->a.dilation[0], (long long)n->a.dilation[1],
                (long long)n->a.pad_begin[0], (long long)n->a.pad_begin[1],
                (long long)n->a.pad_end[0], (long long)n->a.pad_end[1], (long long)SPATIAL_MAX);
        if (!allow_dilation && n->a.dilation[i] != 1)
            return ERR(ETF_ENOTSUP, "dilations other than 1 are not supported for pooling");
    }
    char auto_pad[32];
    if ((rc = attr_s(g, n, "auto_pad", "NOTSET", auto_pad, sizeof auto_pad, diag)))
        return rc;
    *s = *x;
    for (int i = 0; i < 2; i++)
        if ((rc = spatial(g, n, auto_pad, i, x->d[2 + i], n->a.kernel[i], n->a.stride[i],
                          n->a.dilation[i], ceil_mode, &n->a.pad_begin[i], &n->a.pad_end[i],
                          &s->d[2 + i], diag)))
            return rc;
    return 0;
}

static int inf_conv(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 3, diag);
    for (int k = 0; k < 3 && !rc; k++)
        rc = need_float(g, n, k, diag);
    if (rc || (rc = need_const(g, n, 1, "weights", diag)) ||
        (rc = need_const(g, n, 2, "bias", diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0), *w = IN(g, n, 1), *b = IN(g, n, 2);
    char sx[128], sw[128];
    if (x->shape.ndim != 4)
        return ERR(ETF_ENOTSUP,
                   "only 2-D convolutions are supported: input '%s' is %s, expected "
                   "4 dims [N, C, H, W]",
                   x->name, etf__shape_str(&x->shape, sx));
    if (w->shape.ndim != 4)
        return ERR(ETF_EFORMAT, "weights '%s' are %s, expected 4 dims [O, C/group, kH, kW]",
                   w->name, etf__shape_str(&w->shape, sw));
    if ((rc = attr_i(g, n, "group", 1, &n->a.group, diag)))
        return rc;
    int64_t C = x->shape.d[1], O = w->shape.d[0], G = n->a.group;
    if (G < 1 || G > C || C % G || O % G || w->shape.d[1] != C / G)
        return ERR(ETF_EFORMAT,
                   "channel mismatch: input '%s' of shape %s has %lld channels, weights '%s' of "
                   "shape %s expect %lld per group x %lld group(s) and %lld outputs",
                   x->name, etf__shape_str(&x->shape, sx), (long long)C, w->name,
                   etf__shape_str(&w->shape, sw), (long long)w->shape.d[1], (long long)G,
                   (long long)O);
    if (b && (b->shape.ndim != 1 || b->shape.d[0] != O))
        return ERR(ETF_EFORMAT, "bias '%s' is %s, expected [%lld]", b->name,
                   etf__shape_str(&b->shape, sx), (long long)O);
    const int64_t *ks;
    size_t cnt;
    bool present;
    if ((rc = attr_ints(g, n, "kernel_shape", &ks, &cnt, &present, diag)))
        return rc;
    if (present && (cnt != 2 || ks[0] != w->shape.d[2] || ks[1] != w->shape.d[3]))
        return ERR(ETF_EFORMAT, "attribute kernel_shape disagrees with weights '%s' of shape %s",
                   w->name, etf__shape_str(&w->shape, sw));
    n->a.kernel[0] = w->shape.d[2];
    n->a.kernel[1] = w->shape.d[3];
    struct etf_shape s;
    if ((rc = spatial_attrs(g, n, &x->shape, false, true, &s, diag)))
        return rc;
    s.d[1] = O;
    return set_out(g, n, 0, ETF__DT_FLOAT, &s, diag);
}

static int inf_pool(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    char sx[128];
    if (n->op == ETF__OP_GLOBALAVGPOOL) {
        if (x->shape.ndim < 3)
            return ERR(ETF_EFORMAT, "input '%s' is %s, expected at least 3 dims [N, C, ...]",
                       x->name, etf__shape_str(&x->shape, sx));
        struct etf_shape s = x->shape;
        for (int i = 2; i < s.ndim; i++)
            s.d[i] = 1;
        n->a.axes_mask = 0;
        for (int i = 2; i < s.ndim; i++)
            n->a.axes_mask |= 1u << i;
        n->a.keepdims = true;
        return set_out(g, n, 0, ETF__DT_FLOAT, &s, diag);
    }
    if (x->shape.ndim != 4)
        return ERR(ETF_ENOTSUP, "only 2-D pooling is supported: input '%s' is %s, expected 4 dims",
                   x->name, etf__shape_str(&x->shape, sx));
    const int64_t *ks;
    size_t cnt;
    bool present;
    if ((rc = attr_ints(g, n, "kernel_shape", &ks, &cnt, &present, diag)))
        return rc;
    if (cnt != 2)
        return ERR(ETF_EFORMAT, "attribute kernel_shape has %zu values, expected 2", cnt);
    n->a.kernel[0] = ks[0];
    n->a.kernel[1] = ks[1];
    int64_t ceil_mode, cip = 0, order;
    if ((rc = attr_i(g, n, "ceil_mode", 0, &ceil_mode, diag)) ||
        (rc = attr_i(g, n, "storage_order", 0, &order, diag)))
        return rc;
    if (n->op == ETF__OP_AVGPOOL && (rc = attr_i(g, n, "count_include_pad", 0, &cip, diag)))
        return rc;
    if (order != 0)
        return ERR(ETF_ENOTSUP, "storage_order %lld is not supported", (long long)order);
    n->a.count_include_pad = cip != 0;
    struct etf_shape s;
    int64_t pe0[2];
    if ((rc = spatial_attrs(g, n, &x->shape, false, false, &s, diag)))
        return rc;
    pe0[0] = n->a.pad_end[0];
    pe0[1] = n->a.pad_end[1];
    if (ceil_mode && (rc = spatial_attrs(g, n, &x->shape, true, false, &s, diag)))
        return rc;
    for (int i = 0; i < 2; i++) {
        if (n->op == ETF__OP_MAXPOOL &&
            (n->a.pad_begin[i] >= n->a.kernel[i] || pe0[i] >= n->a.kernel[i]))
            return ERR(ETF_EFORMAT, "pads (%lld, %lld) must be smaller than the kernel (%lld)",
                       (long long)n->a.pad_begin[i], (long long)pe0[i], (long long)n->a.kernel[i]);
        if (n->a.count_include_pad && n->a.pad_end[i] != pe0[i])
            return ERR(ETF_ENOTSUP, "ceil_mode with count_include_pad is not supported when it "
                                    "adds a partial window");
    }
    return set_out(g, n, 0, ETF__DT_FLOAT, &s, diag);
}

/* ---- normalization and reductions ---- */

static int inf_reducemean(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    const int64_t *axes;
    size_t cnt;
    bool present;
    int64_t keep;
    if ((rc = attr_ints(g, n, "axes", &axes, &cnt, &present, diag)) ||
        (rc = attr_i(g, n, "keepdims", 1, &keep, diag)))
        return rc;
    unsigned mask = 0;
    for (size_t i = 0; i < cnt; i++) {
        int ax;
        if (!norm_axis(axes[i], x->shape.ndim, &ax))
            return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axes[i],
                       x->shape.ndim);
        if (mask & (1u << ax))
            return ERR(ETF_EFORMAT, "axis %lld is listed twice", (long long)axes[i]);
        mask |= 1u << ax;
    }
    if (cnt == 0)
        mask = (1u << x->shape.ndim) - 1;
    n->a.axes_mask = mask;
    n->a.keepdims = keep != 0;
    struct etf_shape kept = x->shape, s = {0};
    for (int i = 0; i < x->shape.ndim; i++) {
        if (mask & (1u << i))
            kept.d[i] = 1;
        if (!(mask & (1u << i)) || keep)
            s.d[s.ndim++] = kept.d[i];
    }
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &s, diag)) || !x->data)
        return rc;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    size_t cnt_in = elems(&x->shape), cnt_out = elems(&kept);
    struct nd_iter it;
    nd_start(&it, &x->shape, 1);
    nd_bcast_src(&it, 0, &kept);
    for (size_t i = 0; i < cnt_in; i++, nd_next(&it))
        y[it.off[0]] += ((const float *)x->data)[i];
    float div = cnt_out ? (float)(cnt_in / cnt_out) : 1.0f;
    for (size_t i = 0; i < cnt_out; i++)
        y[i] /= div;
    return 0;
}

static int inf_softmax(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int64_t axis;
    if ((rc = attr_i(g, n, "axis", -1, &axis, diag)))
        return rc;
    if (!norm_axis(axis, x->shape.ndim, &n->a.axis))
        return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axis,
                   x->shape.ndim);
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &x->shape, diag)) || !x->data)
        return rc;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    size_t outer = 1, inner = 1, D = (size_t)x->shape.d[n->a.axis];
    for (int i = 0; i < n->a.axis; i++)
        outer *= (size_t)x->shape.d[i];
    for (int i = n->a.axis + 1; i < x->shape.ndim; i++)
        inner *= (size_t)x->shape.d[i];
    const float *xv = x->data;
    for (size_t o = 0; o < outer; o++)
        for (size_t in = 0; in < inner; in++) {
            size_t base = o * D * inner + in;
            float mx = -INFINITY, sum = 0;
            for (size_t d = 0; d < D; d++)
                mx = fmaxf(mx, xv[base + d * inner]);
            for (size_t d = 0; d < D; d++)
                sum += y[base + d * inner] = expf(xv[base + d * inner] - mx);
            for (size_t d = 0; d < D; d++)
                y[base + d * inner] /= sum;
        }
    return 0;
}

/* A constant float input with exactly `count` elements (per-channel parameters). */
static int channel_param(struct etf__graph *g, const struct etf__node *n, int k, const char *what,
                         int64_t count, struct etf_diag *diag)
{
    const struct etf__tensor *T = IN(g, n, k);
    int rc = need_const(g, n, k, what, diag);
    if (rc || (rc = need_float(g, n, k, diag)))
        return rc;
    char sb[128];
    if (elems(&T->shape) != (size_t)count)
        return ERR(ETF_EFORMAT, "input '%s' (%s) is %s, expected %lld values", T->name, what,
                   etf__shape_str(&T->shape, sb), (long long)count);
    return 0;
}

static int inf_batchnorm(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 5, 5, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    char sx[128];
    if (x->shape.ndim < 2)
        return ERR(ETF_EFORMAT, "input '%s' is %s, expected at least 2 dims [N, C, ...]", x->name,
                   etf__shape_str(&x->shape, sx));
    int64_t C = x->shape.d[1], training;
    static const char *const what[] = {"", "scale", "bias", "mean", "var"};
    for (int k = 1; k < 5; k++)
        if ((rc = channel_param(g, n, k, what[k], C, diag)))
            return rc;
    if ((rc = attr_f(g, n, "epsilon", 1e-5f, &n->a.epsilon, diag)) ||
        (rc = attr_i(g, n, "training_mode", 0, &training, diag)))
        return rc;
    if (training)
        return ERR(ETF_ENOTSUP, "training_mode is not supported (inference only)");
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &x->shape, diag)) || !x->data)
        return rc;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    const float *sc = IN(g, n, 1)->data, *bi = IN(g, n, 2)->data, *mu = IN(g, n, 3)->data,
                *var = IN(g, n, 4)->data;
    size_t inner = 1, outer = (size_t)x->shape.d[0];
    for (int i = 2; i < x->shape.ndim; i++)
        inner *= (size_t)x->shape.d[i];
    const float *xv = x->data;
    for (size_t o = 0; o < outer; o++)
        for (size_t c = 0; c < (size_t)C; c++) {
            float s = sc[c] / sqrtf(var[c] + n->a.epsilon), sh = bi[c] - mu[c] * s;
            for (size_t i = 0; i < inner; i++) {
                size_t at = (o * (size_t)C + c) * inner + i;
                y[at] = xv[at] * s + sh;
            }
        }
    return 0;
}

static int inf_layernorm(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 3, diag);
    if (rc || (rc = need_float(g, n, 0, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int64_t axis;
    if ((rc = attr_i(g, n, "axis", -1, &axis, diag)) ||
        (rc = attr_f(g, n, "epsilon", 1e-5f, &n->a.epsilon, diag)))
        return rc;
    int ax;
    if (!norm_axis(axis, x->shape.ndim, &ax))
        return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axis,
                   x->shape.ndim);
    if (ax != x->shape.ndim - 1)
        return ERR(ETF_ENOTSUP,
                   "axis %lld: only normalization over the last axis (-1) is "
                   "supported",
                   (long long)axis);
    n->a.axis = ax;
    int64_t D = x->shape.d[ax];
    if ((rc = channel_param(g, n, 1, "scale", D, diag)) ||
        (IN(g, n, 2) && (rc = channel_param(g, n, 2, "bias", D, diag))))
        return rc;
    if ((rc = set_out(g, n, 0, ETF__DT_FLOAT, &x->shape, diag)) || !x->data)
        return rc;
    float *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    const float *xv = x->data, *ga = IN(g, n, 1)->data;
    const float *be = IN(g, n, 2) ? IN(g, n, 2)->data : NULL;
    size_t rows = D ? elems(&x->shape) / (size_t)D : 0;
    for (size_t r = 0; r < rows; r++) {
        const float *xr = xv + r * (size_t)D;
        float mean = 0, var = 0;
        for (int64_t i = 0; i < D; i++)
            mean += xr[i];
        mean /= (float)D;
        for (int64_t i = 0; i < D; i++)
            var += (xr[i] - mean) * (xr[i] - mean);
        var /= (float)D;
        float inv = 1.0f / sqrtf(var + n->a.epsilon);
        for (int64_t i = 0; i < D; i++)
            y[r * (size_t)D + (size_t)i] = (xr[i] - mean) * inv * ga[i] + (be ? be[i] : 0);
    }
    return 0;
}

/* ---- data movement ---- */

static int inf_concat(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, n->n_in > 0 ? n->n_in : 1, diag);
    if (rc)
        return rc;
    const struct etf__tensor *x0 = IN(g, n, 0);
    int64_t axis;
    if ((rc = attr_i(g, n, "axis", INT64_MIN, &axis, diag)))
        return rc;
    if (axis == INT64_MIN)
        return ERR(ETF_EFORMAT, "attribute 'axis' is required");
    if (!norm_axis(axis, x0->shape.ndim, &n->a.axis))
        return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axis,
                   x0->shape.ndim);
    struct etf_shape s = x0->shape;
    s.d[n->a.axis] = 0;
    char s0[128], sk[128];
    for (int k = 0; k < n->n_in; k++) {
        const struct etf__tensor *x = IN(g, n, k);
        if (!x)
            return ERR(ETF_EFORMAT, "input #%d is missing", k);
        bool ok = x->shape.ndim == x0->shape.ndim && x->dtype == x0->dtype;
        for (int i = 0; ok && i < s.ndim; i++)
            ok = i == n->a.axis || x->shape.d[i] == x0->shape.d[i];
        if (!ok)
            return ERR(ETF_EFORMAT,
                       "input '%s' of shape %s (%s) does not match input '%s' of shape %s (%s) "
                       "outside axis %d",
                       x->name, etf__shape_str(&x->shape, sk), dtype_name(x->dtype), x0->name,
                       etf__shape_str(&x0->shape, s0), dtype_name(x0->dtype), n->a.axis);
        s.d[n->a.axis] += x->shape.d[n->a.axis];
    }
    if ((rc = set_out(g, n, 0, x0->dtype, &s, diag)) || !all_const(g, n))
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    size_t esz = dtype_size(x0->dtype), outer = 1, inner = 1;
    for (int i = 0; i < n->a.axis; i++)
        outer *= (size_t)s.d[i];
    for (int i = n->a.axis + 1; i < s.ndim; i++)
        inner *= (size_t)s.d[i];
    for (size_t o = 0; o < outer; o++)
        for (int k = 0; k < n->n_in; k++) {
            const struct etf__tensor *x = IN(g, n, k);
            size_t chunk = (size_t)x->shape.d[n->a.axis] * inner * esz;
            memcpy(y, (const char *)x->data + o * chunk, chunk);
            y += chunk;
        }
    return 0;
}

/* Identity-like ops: output = input with another shape. */
static int view_out(struct etf__graph *g, struct etf__node *n, const struct etf_shape *s,
                    struct etf_diag *diag)
{
    const struct etf__tensor *x = IN(g, n, 0);
    int rc = set_out(g, n, 0, x->dtype, s, diag);
    if (rc)
        return rc;
    if (x->data)
        share_const(g, n, 0, 0);
    return 0;
}

static int inf_identity(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, n->op == ETF__OP_DROPOUT ? 3 : 1, diag);
    if (rc)
        return rc;
    if (n->op == ETF__OP_DROPOUT && IN(g, n, 2)) {
        float training;
        if ((rc = const_scalar(g, n, 2, "training_mode", &training, diag)))
            return rc;
        if (training != 0)
            return ERR(ETF_ENOTSUP, "training_mode is not supported (inference only)");
    }
    return view_out(g, n, &IN(g, n, 0)->shape, diag);
}

static int inf_flatten(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc)
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int64_t axis;
    if ((rc = attr_i(g, n, "axis", 1, &axis, diag)))
        return rc;
    int r = x->shape.ndim;
    if (axis < -r || axis > r)
        return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axis, r);
    if (axis < 0)
        axis += r;
    struct etf_shape s = {.ndim = 2, .d = {1, 1}};
    for (int i = 0; i < r; i++)
        s.d[i < axis ? 0 : 1] *= x->shape.d[i];
    return view_out(g, n, &s, diag);
}

static int inf_reshape(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 2, diag);
    if (rc)
        return rc;
    const int64_t *v;
    size_t cnt;
    int64_t allowzero;
    if ((rc = const_ints(g, n, 1, "shape", &v, &cnt, diag)) ||
        (rc = attr_i(g, n, "allowzero", 0, &allowzero, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    char sx[128];
    if (cnt > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "target shape has %zu dims; at most %d are supported", cnt,
                   ETF_MAX_DIMS);
    struct etf_shape s = {.ndim = (int)cnt};
    int infer = -1;
    size_t total = elems(&x->shape), known = 1;
    for (size_t i = 0; i < cnt; i++) {
        int64_t d = v[i];
        if (d == -1) {
            if (infer >= 0)
                return ERR(ETF_EFORMAT, "target shape has more than one -1");
            infer = (int)i;
            continue;
        }
        if (d == 0 && !allowzero) {
            if ((int)i >= x->shape.ndim)
                return ERR(ETF_EFORMAT, "target dim %zu is 0 (copy) but input '%s' is %s", i,
                           x->name, etf__shape_str(&x->shape, sx));
            d = x->shape.d[i];
        }
        if (d < 0)
            return ERR(ETF_EFORMAT, "target dim %zu is %lld", i, (long long)d);
        s.d[i] = d;
        if (d && known > (size_t)(SIZE_MAX / 8) / (size_t)d)
            return ERR(ETF_ELIMIT, "target shape overflows");
        known *= (size_t)d;
    }
    if (infer >= 0) {
        if (known == 0 || total % known)
            return ERR(ETF_EFORMAT,
                       "cannot infer the -1 in the target shape: input '%s' of shape "
                       "%s has %zu elements, the other dims give %zu",
                       x->name, etf__shape_str(&x->shape, sx), total, known);
        s.d[infer] = (int64_t)(total / known);
        known = total;
    }
    char ss[128];
    if (known != total)
        return ERR(ETF_EFORMAT, "cannot reshape input '%s' of shape %s (%zu elements) to %s",
                   x->name, etf__shape_str(&x->shape, sx), total, etf__shape_str(&s, ss));
    return view_out(g, n, &s, diag);
}

static int inf_squeeze(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    bool un = n->op == ETF__OP_UNSQUEEZE;
    int rc = check_inputs(g, n, un ? 2 : 1, 2, diag);
    if (rc)
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    const int64_t *axes = NULL;
    size_t cnt = 0;
    if (IN(g, n, 1) && (rc = const_ints(g, n, 1, "axes", &axes, &cnt, diag)))
        return rc;
    if (cnt > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "%zu axes; at most %d are supported", cnt, ETF_MAX_DIMS);
    int r = x->shape.ndim, out_r = un ? r + (int)cnt : r;
    if (out_r > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "the result would have more than %d dims", ETF_MAX_DIMS);
    unsigned mask = 0;
    for (size_t i = 0; i < cnt; i++) {
        int ax;
        if (!norm_axis(axes[i], out_r, &ax))
            return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axes[i],
                       out_r);
        if (mask & (1u << ax))
            return ERR(ETF_EFORMAT, "axis %lld is listed twice", (long long)axes[i]);
        mask |= 1u << ax;
    }
    struct etf_shape s = {0};
    char sx[128];
    if (un) {
        for (int i = 0, j = 0; i < out_r; i++)
            s.d[s.ndim++] = (mask & (1u << i)) ? 1 : x->shape.d[j++];
    } else {
        for (int i = 0; i < r; i++) {
            bool sq = axes ? (mask & (1u << i)) != 0 : x->shape.d[i] == 1;
            if (sq && x->shape.d[i] != 1)
                return ERR(ETF_EFORMAT, "cannot squeeze axis %d of input '%s' of shape %s", i,
                           x->name, etf__shape_str(&x->shape, sx));
            if (!sq)
                s.d[s.ndim++] = x->shape.d[i];
        }
    }
    return view_out(g, n, &s, diag);
}

static int inf_transpose(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc)
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int r = x->shape.ndim;
    const int64_t *perm;
    size_t cnt;
    bool present;
    if ((rc = attr_ints(g, n, "perm", &perm, &cnt, &present, diag)))
        return rc;
    if (present && cnt != (size_t)r)
        return ERR(ETF_EFORMAT, "perm has %zu values for %d dims", cnt, r);
    unsigned seen = 0;
    struct etf_shape s = {.ndim = r};
    for (int i = 0; i < r; i++) {
        int64_t p = present ? perm[i] : r - 1 - i;
        if (p < 0 || p >= r || (seen & (1u << p)))
            return ERR(ETF_EFORMAT, "perm is not a permutation of 0..%d", r - 1);
        seen |= 1u << p;
        n->a.perm[i] = (int)p;
        s.d[i] = x->shape.d[p];
    }
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)) || !x->data)
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    int64_t cs[ETF_MAX_DIMS];
    contiguous_strides(&x->shape, cs);
    struct nd_iter it;
    nd_start(&it, &s, 1);
    for (int i = 0; i < r; i++)
        it.st[0][i] = cs[n->a.perm[i]];
    size_t esz = dtype_size(x->dtype);
    for (size_t i = 0, c = elems(&s); i < c; i++, nd_next(&it))
        memcpy(y + i * esz, (const char *)x->data + (size_t)it.off[0] * esz, esz);
    return 0;
}

static int inf_shape(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc)
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int64_t r = x->shape.ndim, start, end;
    if ((rc = attr_i(g, n, "start", 0, &start, diag)) || (rc = attr_i(g, n, "end", r, &end, diag)))
        return rc;
    if (start < 0)
        start += r;
    if (end < 0)
        end += r;
    start = start < 0 ? 0 : start > r ? r : start;
    end = end < 0 ? 0 : end > r ? r : end;
    struct etf_shape s = {.ndim = 1, .d = {end > start ? end - start : 0}};
    if ((rc = set_out(g, n, 0, ETF__DT_INT64, &s, diag)))
        return rc;
    int64_t *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    for (int64_t i = start; i < end; i++)
        y[i - start] = x->shape.d[i];
    return 0;
}

static int inf_gather(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 2, diag);
    if (rc || (rc = need_const(g, n, 1, "indices", diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0), *ix = IN(g, n, 1);
    int64_t axis;
    if ((rc = attr_i(g, n, "axis", 0, &axis, diag)))
        return rc;
    if (!norm_axis(axis, x->shape.ndim, &n->a.axis))
        return ERR(ETF_EFORMAT, "axis %lld is out of range for %d dims", (long long)axis,
                   x->shape.ndim);
    if (ix->dtype != ETF__DT_INT64)
        return ERR(ETF_EFORMAT, "indices '%s' must be integers", ix->name);
    int ax = n->a.axis;
    int64_t D = x->shape.d[ax];
    size_t ni = elems(&ix->shape);
    const int64_t *iv = ix->data;
    for (size_t i = 0; i < ni; i++)
        if (iv[i] < -D || iv[i] >= D)
            return ERR(ETF_EFORMAT, "index %lld is out of range for axis %d of size %lld",
                       (long long)iv[i], ax, (long long)D);
    struct etf_shape s = {0};
    if (x->shape.ndim - 1 + ix->shape.ndim > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "the result would have more than %d dims", ETF_MAX_DIMS);
    for (int i = 0; i < ax; i++)
        s.d[s.ndim++] = x->shape.d[i];
    for (int i = 0; i < ix->shape.ndim; i++)
        s.d[s.ndim++] = ix->shape.d[i];
    for (int i = ax + 1; i < x->shape.ndim; i++)
        s.d[s.ndim++] = x->shape.d[i];
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)) || !x->data)
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    iv = IN(g, n, 1)->data;
    size_t esz = dtype_size(x->dtype), outer = 1, inner = esz;
    for (int i = 0; i < ax; i++)
        outer *= (size_t)x->shape.d[i];
    for (int i = ax + 1; i < x->shape.ndim; i++)
        inner *= (size_t)x->shape.d[i];
    for (size_t o = 0; o < outer; o++)
        for (size_t i = 0; i < ni; i++) {
            int64_t j = iv[i] < 0 ? iv[i] + D : iv[i];
            memcpy(y, (const char *)x->data + (o * (size_t)D + (size_t)j) * inner, inner);
            y += inner;
        }
    return 0;
}

static int inf_slice(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 3, 5, diag);
    if (rc)
        return rc;
    const int64_t *st, *en, *ax = NULL, *sp = NULL;
    size_t ns, ne, na = 0, np = 0;
    if ((rc = const_ints(g, n, 1, "starts", &st, &ns, diag)) ||
        (rc = const_ints(g, n, 2, "ends", &en, &ne, diag)) ||
        (IN(g, n, 3) && (rc = const_ints(g, n, 3, "axes", &ax, &na, diag))) ||
        (IN(g, n, 4) && (rc = const_ints(g, n, 4, "steps", &sp, &np, diag))))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int r = x->shape.ndim;
    if (ne != ns || (ax && na != ns) || (sp && np != ns) || ns > (size_t)r)
        return ERR(ETF_EFORMAT,
                   "starts, ends, axes and steps must have the same length (at most "
                   "%d); found %zu, %zu, %zu, %zu",
                   r, ns, ne, na, np);
    struct etf_shape s = x->shape;
    unsigned seen = 0;
    for (int i = 0; i < r; i++) {
        n->a.starts[i] = 0;
        n->a.steps[i] = 1;
    }
    for (size_t i = 0; i < ns; i++) {
        int a;
        if (!norm_axis(ax ? ax[i] : (int64_t)i, r, &a) || (seen & (1u << a)))
            return ERR(ETF_EFORMAT, "axis %lld is out of range or repeated",
                       (long long)(ax ? ax[i] : (int64_t)i));
        seen |= 1u << a;
        int64_t d = x->shape.d[a], step = sp ? sp[i] : 1, b = st[i], e = en[i];
        if (step == 0)
            return ERR(ETF_EFORMAT, "step 0 on axis %d", a);
        /* ONNX clamping: negative indices count from the end, then clamp to the axis. */
        if (b < 0)
            b = b < -d ? 0 : b + d;
        if (e < 0)
            e = e < -d ? -1 : e + d;
        int64_t len;
        if (step > 0) {
            b = b > d ? d : b;
            e = e < 0 ? 0 : e > d ? d : e;
            len = e > b ? (e - b - 1) / step + 1 : 0;
        } else {
            b = b > d - 1 ? d - 1 : b;
            e = e > d - 1 ? d - 1 : e;
            if (step == INT64_MIN) /* -step would overflow; one element at most */
                len = b > e ? 1 : 0;
            else
                len = b > e ? (b - e - 1) / -step + 1 : 0;
        }
        n->a.starts[a] = len ? b : 0;
        n->a.steps[a] = len > 1 ? step : 1; /* a huge step picking one element: no overflow */
        s.d[a] = len;
    }
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)) || !x->data)
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    int64_t cs[ETF_MAX_DIMS], base = 0;
    contiguous_strides(&x->shape, cs);
    struct nd_iter it;
    nd_start(&it, &s, 1);
    for (int i = 0; i < r; i++) {
        it.st[0][i] = cs[i] * n->a.steps[i];
        base += cs[i] * n->a.starts[i];
    }
    it.off[0] = base;
    size_t esz = dtype_size(x->dtype);
    for (size_t i = 0, c = elems(&s); i < c; i++, nd_next(&it))
        memcpy(y + i * esz, (const char *)x->data + (size_t)it.off[0] * esz, esz);
    return 0;
}

static int inf_pad(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 4, diag);
    if (rc)
        return rc;
    char mode[32];
    if ((rc = attr_s(g, n, "mode", "constant", mode, sizeof mode, diag)))
        return rc;
    if (strcmp(mode, "constant"))
        return ERR(ETF_ENOTSUP, "mode '%s' is not supported (only 'constant')", mode);
    if (IN(g, n, 3))
        return ERR(ETF_ENOTSUP, "the axes input is not supported");
    const int64_t *p;
    size_t np;
    if ((rc = const_ints(g, n, 1, "pads", &p, &np, diag)))
        return rc;
    const struct etf__tensor *x = IN(g, n, 0);
    int r = x->shape.ndim;
    if (np != 2 * (size_t)r)
        return ERR(ETF_EFORMAT, "pads has %zu values, expected %d for %d dims", np, 2 * r, r);
    n->a.value = 0;
    if (IN(g, n, 2) && (rc = const_scalar(g, n, 2, "constant_value", &n->a.value, diag)))
        return rc;
    struct etf_shape s = x->shape;
    for (int i = 0; i < r; i++) {
        if (p[i] < 0 || p[r + i] < 0)
            return ERR(ETF_ENOTSUP, "negative pads (cropping) are not supported");
        if (p[i] > SPATIAL_MAX || p[r + i] > SPATIAL_MAX)
            return ERR(ETF_ELIMIT, "pads larger than %lld", (long long)SPATIAL_MAX);
        n->a.pads[i] = p[i];
        n->a.pads[ETF_MAX_DIMS + i] = p[r + i];
        s.d[i] += p[i] + p[r + i];
    }
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)) || !x->data)
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    if (x->dtype == ETF__DT_INT64 && !(n->a.value > -9.2e18f && n->a.value < 9.2e18f))
        return ERR(ETF_EFORMAT, "cannot pad integers with %g", (double)n->a.value);
    size_t esz = dtype_size(x->dtype), total = elems(&s);
    for (size_t i = 0; i < total; i++) {
        if (x->dtype == ETF__DT_FLOAT)
            ((float *)y)[i] = n->a.value;
        else
            ((int64_t *)y)[i] = (int64_t)n->a.value;
    }
    int64_t os[ETF_MAX_DIMS], base = 0;
    contiguous_strides(&s, os);
    struct nd_iter it;
    nd_start(&it, &x->shape, 1);
    for (int i = 0; i < r; i++) {
        it.st[0][i] = os[i];
        base += os[i] * n->a.pads[i];
    }
    it.off[0] = base;
    for (size_t i = 0, c = elems(&x->shape); i < c; i++, nd_next(&it))
        memcpy(y + (size_t)it.off[0] * esz, (const char *)x->data + i * esz, esz);
    return 0;
}

static int inf_cast(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc)
        return rc;
    int64_t to;
    if ((rc = attr_i(g, n, "to", -1, &to, diag)))
        return rc;
    enum etf__dtype dt;
    switch (to) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
        dt = ETF__DT_FLOAT;
        break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL:
        dt = ETF__DT_INT64;
        break;
    default:
        return ERR(ETF_ENOTSUP, "cast to %s is not supported", etf__onnx_type_name((int32_t)to));
    }
    const struct etf__tensor *x = IN(g, n, 0);
    if (!x->data) {
        if (dt != ETF__DT_FLOAT || x->dtype != ETF__DT_FLOAT)
            return ERR(ETF_ENOTSUP, "cast of the computed tensor '%s' to %s (only float to float)",
                       x->name, etf__onnx_type_name((int32_t)to));
        return set_out(g, n, 0, dt, &x->shape, diag);
    }
    if ((rc = set_out(g, n, 0, dt, &x->shape, diag)))
        return rc;
    void *y;
    if ((rc = fold_alloc(g, n, 0, &y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    for (size_t i = 0, c = elems(&x->shape); i < c; i++) {
        if (dt == ETF__DT_FLOAT) {
            ((float *)y)[i] = x->dtype == ETF__DT_FLOAT ? ((const float *)x->data)[i]
                                                        : (float)((const int64_t *)x->data)[i];
            continue;
        }
        int64_t v;
        if (x->dtype == ETF__DT_INT64) {
            v = ((const int64_t *)x->data)[i];
        } else {
            float f = ((const float *)x->data)[i];
            if (!(f > -9.2e18f && f < 9.2e18f))
                return ERR(ETF_EFORMAT, "cannot cast %g to an integer", (double)f);
            v = (int64_t)f;
        }
        if (to == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL)
            v = v != 0;
        else if (to == ONNX__TENSOR_PROTO__DATA_TYPE__INT32)
            v = (int32_t)(uint32_t)(uint64_t)v;
        ((int64_t *)y)[i] = v;
    }
    return 0;
}

static int inf_expand(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 2, 2, diag);
    if (rc)
        return rc;
    const int64_t *v;
    size_t cnt;
    if ((rc = const_ints(g, n, 1, "shape", &v, &cnt, diag)))
        return rc;
    if (cnt > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "shape has %zu dims; at most %d are supported", cnt, ETF_MAX_DIMS);
    struct etf_shape want = {.ndim = (int)cnt}, s;
    for (size_t i = 0; i < cnt; i++) {
        if (v[i] < 0)
            return ERR(ETF_EFORMAT, "shape has a negative dim %lld", (long long)v[i]);
        want.d[i] = v[i];
    }
    const struct etf__tensor *x = IN(g, n, 0);
    char sx[128], sw[128];
    if (!broadcast(&x->shape, &want, &s))
        return ERR(ETF_EFORMAT, "input '%s' of shape %s does not broadcast to %s", x->name,
                   etf__shape_str(&x->shape, sx), etf__shape_str(&want, sw));
    if (!x->data) {
        if (!etf__shape_eq(&s, &x->shape))
            return ERR(ETF_ENOTSUP,
                       "Expand of the computed tensor '%s' is supported only when it "
                       "keeps the shape",
                       x->name);
        return set_out(g, n, 0, x->dtype, &s, diag);
    }
    if ((rc = set_out(g, n, 0, x->dtype, &s, diag)))
        return rc;
    char *y;
    if ((rc = fold_alloc(g, n, 0, (void **)&y, diag)) || !y)
        return rc;
    x = IN(g, n, 0);
    struct nd_iter it;
    nd_start(&it, &s, 1);
    nd_bcast_src(&it, 0, &x->shape);
    size_t esz = dtype_size(x->dtype);
    for (size_t i = 0, c = elems(&s); i < c; i++, nd_next(&it))
        memcpy(y + i * esz, (const char *)x->data + (size_t)it.off[0] * esz, esz);
    return 0;
}

static int inf_constant_of_shape(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 1, 1, diag);
    if (rc)
        return rc;
    const int64_t *v;
    size_t cnt;
    if ((rc = const_ints(g, n, 0, "shape", &v, &cnt, diag)))
        return rc;
    if (cnt > ETF_MAX_DIMS)
        return ERR(ETF_ENOTSUP, "shape has %zu dims; at most %d are supported", cnt, ETF_MAX_DIMS);
    struct etf_shape s = {.ndim = (int)cnt};
    for (size_t i = 0; i < cnt; i++) {
        if (v[i] < 0)
            return ERR(ETF_EFORMAT, "shape has a negative dim %lld", (long long)v[i]);
        s.d[i] = v[i];
    }
    enum etf__dtype dt = ETF__DT_FLOAT;
    float fv = 0;
    int64_t iv = 0;
    const Onnx__AttributeProto *a = attr(n, "value");
    if (a) {
        const Onnx__TensorProto *t = a->t;
        if (!t || t->n_dims > 1 || (t->n_dims == 1 && t->dims[0] != 1))
            return ERR(ETF_EFORMAT, "attribute 'value' must be a one-element tensor");
        int32_t tdt = t->has_data_type ? t->data_type : 0;
        bool raw = t->raw_data.len > 0;
        if (tdt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT) {
            if (raw ? t->raw_data.len != 4 : t->n_float_data != 1)
                return ERR(ETF_EFORMAT, "attribute 'value' must hold one float");
            if (raw)
                memcpy(&fv, t->raw_data.data, 4);
            else
                fv = t->float_data[0];
        } else if (tdt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64) {
            dt = ETF__DT_INT64;
            if (raw ? t->raw_data.len != 8 : t->n_int64_data != 1)
                return ERR(ETF_EFORMAT, "attribute 'value' must hold one int64");
            if (raw)
                memcpy(&iv, t->raw_data.data, 8);
            else
                iv = t->int64_data[0];
        } else {
            return ERR(ETF_ENOTSUP, "attribute 'value' of type %s is not supported",
                       etf__onnx_type_name(tdt));
        }
    }
    if ((rc = set_out(g, n, 0, dt, &s, diag)))
        return rc;
    void *y;
    if ((rc = fold_alloc(g, n, 0, &y, diag)) || !y)
        return rc;
    for (size_t i = 0, c = elems(&s); i < c; i++) {
        if (dt == ETF__DT_FLOAT)
            ((float *)y)[i] = fv;
        else
            ((int64_t *)y)[i] = iv;
    }
    return 0;
}

static int inf_constant(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    int rc = check_inputs(g, n, 0, 0, diag);
    if (rc)
        return rc;
    if (!OUT(g, n, 0))
        return 0;
    const Onnx__AttributeProto *a = NULL;
    int found = 0;
    static const char *const names[] = {"value",         "value_float", "value_floats",
                                        "value_int",     "value_ints",  "value_string",
                                        "value_strings", "sparse_value"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const Onnx__AttributeProto *x = attr(n, names[i]);
        if (x) {
            found++;
            a = x;
            if (i >= 5)
                return ERR(ETF_ENOTSUP, "attribute '%s' is not supported", names[i]);
        }
    }
    if (found != 1)
        return ERR(ETF_EFORMAT, "needs exactly one value attribute, found %d", found);
    int t = n->out[0];
    const char *an = a->name;
    if (!strcmp(an, "value")) {
        if (!a->t)
            return ERR(ETF_EFORMAT, "attribute 'value' holds no tensor");
        const char *what = etf__graph_strf(g, "constant '%s'", g->t[t].name);
        if (!what)
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
        return etf__tensor_from_proto(g, t, a->t, what, diag);
    }
    bool is_float = !strcmp(an, "value_float") || !strcmp(an, "value_floats");
    bool list = !strcmp(an, "value_floats") || !strcmp(an, "value_ints");
    size_t cnt = list ? (is_float ? a->n_floats : a->n_ints) : 1;
    struct etf_shape s = {.ndim = list ? 1 : 0, .d = {(int64_t)cnt}};
    if ((rc = set_out(g, n, 0, is_float ? ETF__DT_FLOAT : ETF__DT_INT64, &s, diag)))
        return rc;
    void *y;
    if ((rc = fold_alloc(g, n, 0, &y, diag)) || !y)
        return rc;
    for (size_t i = 0; i < cnt; i++) {
        if (is_float)
            ((float *)y)[i] = list ? a->floats[i] : a->f;
        else
            ((int64_t *)y)[i] = list ? a->ints[i] : a->i;
    }
    return 0;
}

static int infer_node(struct etf__graph *g, struct etf__node *n, struct etf_diag *diag)
{
    switch (n->op) {
    case ETF__OP_CONV:
        return inf_conv(g, n, diag);
    case ETF__OP_GEMM:
        return inf_gemm(g, n, diag);
    case ETF__OP_MATMUL:
        return inf_matmul(g, n, diag);
    case ETF__OP_RELU:
    case ETF__OP_CLIP:
    case ETF__OP_SIGMOID:
    case ETF__OP_ERF:
    case ETF__OP_TANH:
    case ETF__OP_SQRT:
    case ETF__OP_EXP:
        return inf_unary(g, n, diag);
    case ETF__OP_ADD:
    case ETF__OP_SUB:
    case ETF__OP_MUL:
    case ETF__OP_DIV:
    case ETF__OP_POW:
    case ETF__OP_EQUAL:
    case ETF__OP_MOD:
        return inf_binary(g, n, diag);
    case ETF__OP_WHERE:
        return inf_where(g, n, diag);
    case ETF__OP_MAXPOOL:
    case ETF__OP_AVGPOOL:
    case ETF__OP_GLOBALAVGPOOL:
        return inf_pool(g, n, diag);
    case ETF__OP_REDUCEMEAN:
        return inf_reducemean(g, n, diag);
    case ETF__OP_CONCAT:
        return inf_concat(g, n, diag);
    case ETF__OP_FLATTEN:
        return inf_flatten(g, n, diag);
    case ETF__OP_RESHAPE:
        return inf_reshape(g, n, diag);
    case ETF__OP_IDENTITY:
    case ETF__OP_DROPOUT:
        return inf_identity(g, n, diag);
    case ETF__OP_SOFTMAX:
        return inf_softmax(g, n, diag);
    case ETF__OP_CONSTANT:
        return inf_constant(g, n, diag);
    case ETF__OP_BATCHNORM:
        return inf_batchnorm(g, n, diag);
    case ETF__OP_LAYERNORM:
        return inf_layernorm(g, n, diag);
    case ETF__OP_TRANSPOSE:
        return inf_transpose(g, n, diag);
    case ETF__OP_SHAPE:
        return inf_shape(g, n, diag);
    case ETF__OP_GATHER:
        return inf_gather(g, n, diag);
    case ETF__OP_SLICE:
        return inf_slice(g, n, diag);
    case ETF__OP_UNSQUEEZE:
    case ETF__OP_SQUEEZE:
        return inf_squeeze(g, n, diag);
    case ETF__OP_PAD:
        return inf_pad(g, n, diag);
    case ETF__OP_CAST:
        return inf_cast(g, n, diag);
    case ETF__OP_EXPAND:
        return inf_expand(g, n, diag);
    case ETF__OP_CONSTANTOFSHAPE:
        return inf_constant_of_shape(g, n, diag);
    case ETF__OP_SWISH:
    case ETF__OP_GELU:
        break;
    }
    return ERR(ETF_ENOTSUP, "operator is not supported");
}

int etf__graph_infer(struct etf__graph *g, struct etf_diag *diag)
{
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *n = &g->nodes[i];
        if (n->n_out < 1)
            return ERR(ETF_EFORMAT, "has no outputs");
        int rc = infer_node(g, n, diag);
        if (rc)
            return rc;
        /* A node whose outputs all became constants is folded away. */
        bool folded = true;
        for (int k = 0; k < n->n_out; k++) {
            const struct etf__tensor *o = OUT(g, n, k);
            if (o && o->shaped && !o->data)
                folded = false;
        }
        n->dead = folded;
    }
    char sbuf[128];
    for (size_t i = 0; i < g->n_outputs; i++) {
        const struct etf__tensor *o = &g->t[g->outputs[i]];
        if (!o->shaped)
            return etf_diagf(diag, ETF_ENOTSUP,
                             "%s: graph output '%s' is an output this build does not compute",
                             g->origin, o->name);
        if (o->data)
            return etf_diagf(diag, ETF_ENOTSUP,
                             "%s: graph output '%s' is a constant (shape %s); nothing to run",
                             g->origin, o->name, etf__shape_str(&o->shape, sbuf));
    }
    etf__graph_count_uses(g);
    return 0;
}
