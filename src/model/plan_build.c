/* Plan building: the inferred graph -> struct etf_plan (plan.h).
 *
 * Two stages. Rewrites on the graph first, each replacing a pattern by fewer nodes:
 * BatchNormalization folded into the Conv before it, x * sigmoid(x) into one swish node,
 * the erf form of GELU into one node, a constant Pad folded into the Conv or pooling after
 * it, and a Slice of a MatMul's last axis (attention's fused QKV projection) into a MatMul
 * with sliced weights. Dead nodes are then dropped.
 *
 * Lowering second, in node order (so kernel order and names are deterministic): views become
 * aliases, and every other node a kernel, unless it can be attached to the kernel that
 * produced its input as a post-op. That is allowed for CONV, MATMUL and BATCHNORM (whose
 * scale and shift are as pointwise as its post-ops: DenseNet's BatchNorm-ReLU pairs become
 * one kernel), when nothing else reads the intermediate tensor; unary post-ops may look
 * through views and transposes (an elementwise function commutes with both), a residual sum
 * through views.
 *
 * Slices and gathers of computed tensors have no kernel of their own: they become a MATMUL
 * with a constant 0/1 selection matrix, which every device already runs.
 */
#include "model/graph.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static size_t elems(const struct etf_shape *s)
{
    return etf__shape_elems(s);
}

/* ---- graph rewrites ---- */

static bool live(const struct etf__graph *g, int node)
{
    return node >= 0 && !g->nodes[node].dead;
}

static int producer(const struct etf__graph *g, int t, enum etf__op op)
{
    if (t < 0)
        return -1;
    int p = g->t[t].producer;
    return live(g, p) && g->nodes[p].op == op ? p : -1;
}

/* The one node reading t, when exactly one does and t is not a model output. cons[t] holds
 * a reader of every tensor. */
static int sole_reader(const struct etf__graph *g, const int *cons, int t)
{
    if (t < 0 || g->t[t].uses != 1 || g->t[t].is_output)
        return -1;
    return live(g, cons[t]) ? cons[t] : -1;
}

/* A reader of every tensor (-1 for none), freshly allocated; NULL when out of memory. */
static int *find_readers(const struct etf__graph *g)
{
    int *cons = malloc((g->n_t ? g->n_t : 1) * sizeof *cons);
    if (!cons)
        return NULL;
    for (size_t i = 0; i < g->n_t; i++)
        cons[i] = -1;
    for (size_t i = 0; i < g->n_nodes; i++)
        if (!g->nodes[i].dead)
            for (int k = 0; k < g->nodes[i].n_in; k++)
                if (g->nodes[i].in[k] >= 0)
                    cons[g->nodes[i].in[k]] = (int)i;
    return cons;
}

static bool scalar_is(const struct etf__graph *g, int t, float want)
{
    if (t < 0)
        return false;
    const struct etf__tensor *T = &g->t[t];
    if (!T->data || T->dtype != ETF__DT_FLOAT || elems(&T->shape) != 1)
        return false;
    float v = *(const float *)T->data;
    return fabsf(v - want) <= 1e-3f * fabsf(want);
}

/* The other input of a two-input node when one of them is t; -1 otherwise. */
static int other_input(const struct etf__node *n, int t)
{
    if (n->n_in != 2)
        return -1;
    if (n->in[0] == t)
        return n->in[1];
    if (n->in[1] == t)
        return n->in[0];
    return -1;
}

/* A new float constant tensor of shape s (zeroed), counted against the budget. */
static int new_const_tensor(struct etf__graph *g, const char *name, const struct etf_shape *s,
                            float **data, struct etf_diag *diag)
{
    if (!name)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    int t = etf__graph_add_tensor(g, name);
    if (t < 0)
        return etf_diagf(diag, t, "%s: out of memory", g->origin);
    g->t[t].dtype = ETF__DT_FLOAT;
    g->t[t].shape = *s;
    int rc = etf__graph_alloc_const(g, t, diag);
    if (rc)
        return rc;
    *data = g->t[t].data;
    return t;
}

/* Conv -> BatchNormalization: w' = w * s, b' = b * s + (beta - mean * s) with
 * s = gamma / sqrt(var + eps), per output channel. */
static int rw_batchnorm(struct etf__graph *g, struct etf_diag *diag)
{
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *bn = &g->nodes[i];
        if (bn->dead || bn->op != ETF__OP_BATCHNORM)
            continue;
        int x = bn->in[0], c = producer(g, x, ETF__OP_CONV);
        if (c < 0 || g->t[x].uses != 1 || g->t[x].is_output)
            continue;
        struct etf__node *conv = &g->nodes[c];
        int wt = conv->in[1], bt = conv->n_in > 2 ? conv->in[2] : -1;
        const struct etf__tensor *W = &g->t[wt];
        int64_t O = W->shape.d[0];
        size_t per = elems(&W->shape) / (size_t)(O ? O : 1);
        const float *gam = g->t[bn->in[1]].data, *beta = g->t[bn->in[2]].data,
                    *mean = g->t[bn->in[3]].data, *var = g->t[bn->in[4]].data;
        float *w, *b;
        int nw = wt;
        if (etf__graph_const_private(g, wt)) {
            w = g->t[wt].data; /* the conv's own weights: scaled where they are */
        } else {
            struct etf_shape ws = W->shape;
            nw = new_const_tensor(g, etf__graph_strf(g, "%s:bn", W->name), &ws, &w, diag);
            if (nw < 0)
                return nw;
            memcpy(w, g->t[wt].data, elems(&ws) * sizeof *w);
        }
        struct etf_shape bs = {.ndim = 1, .d = {O}};
        const char *xname = g->t[x].name;
        int nb = new_const_tensor(g, etf__graph_strf(g, "%s:bias", xname), &bs, &b, diag);
        if (nb < 0)
            return nb;
        const float *old_b = bt >= 0 ? g->t[bt].data : NULL;
        for (int64_t o = 0; o < O; o++) {
            float s = gam[o] / sqrtf(var[o] + bn->a.epsilon);
            for (size_t j = 0; j < per; j++)
                w[(size_t)o * per + j] *= s;
            b[o] = (old_b ? old_b[o] : 0.0f) * s + beta[o] - mean[o] * s;
        }
        conv = &g->nodes[c];
        bn = &g->nodes[i];
        conv->in[1] = nw;
        conv->in[2] = nb;
        conv->n_in = 3;
        conv->out[0] = bn->out[0];
        g->t[bn->out[0]].producer = c;
        bn->dead = true;
        etf__graph_count_uses(g);
    }
    return 0;
}

/* Mul(x, Sigmoid(x)) -> Swish(x) */
static int rw_swish(struct etf__graph *g, struct etf_diag *diag)
{
    int *cons = find_readers(g);
    if (!cons)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *m = &g->nodes[i];
        if (m->dead || m->op != ETF__OP_MUL)
            continue;
        for (int side = 0; side < 2; side++) {
            int s = m->in[side], x = m->in[1 - side], p = producer(g, s, ETF__OP_SIGMOID);
            if (p < 0 || g->nodes[p].in[0] != x || sole_reader(g, cons, s) != (int)i)
                continue;
            g->nodes[p].dead = true;
            m->op = ETF__OP_SWISH;
            m->op_type = "Swish";
            m->in[0] = x;
            m->n_in = 1;
            break;
        }
    }
    free(cons);
    etf__graph_count_uses(g);
    return 0;
}

/* 0.5 x (1 + erf(x / sqrt 2)) in the orders exporters emit -> Gelu(x) */
static int rw_gelu(struct etf__graph *g, struct etf_diag *diag)
{
    int *cons = find_readers(g);
    if (!cons)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *e = &g->nodes[i];
        if (e->dead || e->op != ETF__OP_ERF)
            continue;
        int t1 = e->in[0], x = -1, p;
        if ((p = producer(g, t1, ETF__OP_DIV)) >= 0 && scalar_is(g, g->nodes[p].in[1], 1.41421356f))
            x = g->nodes[p].in[0];
        else if ((p = producer(g, t1, ETF__OP_MUL)) >= 0) {
            for (int side = 0; side < 2 && x < 0; side++)
                if (scalar_is(g, g->nodes[p].in[side], 0.70710678f))
                    x = g->nodes[p].in[1 - side];
        }
        if (x < 0 || g->t[x].data || sole_reader(g, cons, t1) != (int)i)
            continue;
        int t2 = e->out[0], a = sole_reader(g, cons, t2);
        if (a < 0 || g->nodes[a].op != ETF__OP_ADD ||
            !scalar_is(g, other_input(&g->nodes[a], t2), 1.0f))
            continue;
        int t3 = g->nodes[a].out[0], m = sole_reader(g, cons, t3);
        if (m < 0 || g->nodes[m].op != ETF__OP_MUL)
            continue;
        int o = other_input(&g->nodes[m], t3), last = -1, fourth = -1;
        if (o == x) { /* (x * (1 + erf)) * 0.5 */
            int m2 = sole_reader(g, cons, g->nodes[m].out[0]);
            if (m2 >= 0 && g->nodes[m2].op == ETF__OP_MUL &&
                scalar_is(g, other_input(&g->nodes[m2], g->nodes[m].out[0]), 0.5f))
                last = m2, fourth = m;
        } else if (scalar_is(g, o, 0.5f)) { /* x * ((1 + erf) * 0.5) */
            int m2 = sole_reader(g, cons, g->nodes[m].out[0]);
            if (m2 >= 0 && g->nodes[m2].op == ETF__OP_MUL &&
                other_input(&g->nodes[m2], g->nodes[m].out[0]) == x)
                last = m2, fourth = m;
        } else { /* (x * 0.5) * (1 + erf) */
            int h = producer(g, o, ETF__OP_MUL);
            if (h >= 0 && sole_reader(g, cons, o) == m &&
                scalar_is(g, other_input(&g->nodes[h], x), 0.5f))
                last = m, fourth = h;
        }
        if (last < 0 || !etf__shape_eq(&g->t[g->nodes[last].out[0]].shape, &g->t[x].shape))
            continue;
        g->nodes[p].dead = g->nodes[i].dead = g->nodes[a].dead = g->nodes[fourth].dead = true;
        struct etf__node *l = &g->nodes[last];
        l->op = ETF__OP_GELU;
        l->op_type = "Gelu";
        l->in[0] = x;
        l->n_in = 1;
    }
    free(cons);
    etf__graph_count_uses(g);
    return 0;
}

/* Whether tensor t is known to be >= 0 (the output of a Relu or of a Clip at >= 0). */
static bool non_negative(const struct etf__graph *g, int t)
{
    int p = g->t[t].producer;
    if (!live(g, p))
        return false;
    const struct etf__node *n = &g->nodes[p];
    return n->op == ETF__OP_RELU || (n->op == ETF__OP_CLIP && n->a.alpha >= 0);
}

/* Pad -> Conv / AveragePool / MaxPool: spatial pads move into the consumer's own. */
static int rw_pad(struct etf__graph *g, struct etf_diag *diag)
{
    int *cons = find_readers(g);
    if (!cons)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *p = &g->nodes[i];
        if (p->dead || p->op != ETF__OP_PAD)
            continue;
        int x = p->in[0], y = p->out[0], c = sole_reader(g, cons, y);
        if (c < 0 || g->t[x].shape.ndim != 4)
            continue;
        const int64_t *pb = p->a.pads, *pe = p->a.pads + ETF_MAX_DIMS;
        if (pb[0] || pb[1] || pe[0] || pe[1])
            continue;
        struct etf__node *n = &g->nodes[c];
        bool zero = p->a.value == 0.0f, ok;
        switch (n->op) {
        case ETF__OP_CONV:
            ok = zero;
            break;
        case ETF__OP_AVGPOOL:
            /* padded zeros are counted: fine if the pool counts its own pads too */
            ok = zero && (n->a.count_include_pad || !(n->a.pad_begin[0] || n->a.pad_begin[1] ||
                                                      n->a.pad_end[0] || n->a.pad_end[1]));
            break;
        case ETF__OP_MAXPOOL:
            /* max pooling ignores its pads: same as padding with -inf, or with a value no
             * larger than every input element, as long as each window sees the input */
            ok = (isinf(p->a.value) && p->a.value < 0) || (p->a.value <= 0 && non_negative(g, x));
            for (int d = 0; d < 2; d++)
                ok = ok && n->a.pad_begin[d] + pb[2 + d] < n->a.kernel[d] &&
                     n->a.pad_end[d] + pe[2 + d] < n->a.kernel[d];
            break;
        default:
            ok = false;
        }
        if (!ok || n->in[0] != y)
            continue;
        for (int d = 0; d < 2; d++) {
            n->a.pad_begin[d] += pb[2 + d];
            n->a.pad_end[d] += pe[2 + d];
        }
        if (n->op == ETF__OP_AVGPOOL)
            n->a.count_include_pad = true;
        n->in[0] = x;
        p->dead = true;
    }
    free(cons);
    etf__graph_count_uses(g);
    return 0;
}

/* Slice(MatMul(a, W) [+ bias], last axis) -> MatMul(a, W[:, s:e]) [+ bias[s:e]]: attention
 * computes Q, K and V with one MatMul and slices them apart; three MatMuls cost the same and
 * need no slicing kernel. */
static int rw_slice_matmul(struct etf__graph *g, struct etf_diag *diag)
{
    int *cons = find_readers(g);
    if (!cons)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < g->n_nodes; i++) {
        struct etf__node *s = &g->nodes[i];
        if (s->dead || s->op != ETF__OP_SLICE || g->t[s->in[0]].data)
            continue;
        int x = s->in[0];
        const struct etf_shape *xs = &g->t[x].shape, *ys = &g->t[s->out[0]].shape;
        int r = xs->ndim, last = r - 1;
        bool ok = r >= 2 && s->a.steps[last] == 1 && ys->d[last] > 0;
        for (int d = 0; ok && d < last; d++)
            ok = s->a.starts[d] == 0 && s->a.steps[d] == 1 && ys->d[d] == xs->d[d];
        if (!ok)
            continue;
        int bias = -1, mm = producer(g, x, ETF__OP_MATMUL);
        int add = mm < 0 ? producer(g, x, ETF__OP_ADD) : -1;
        if (add >= 0) {
            for (int side = 0; side < 2 && mm < 0; side++) {
                int u = g->nodes[add].in[side];
                int cand = producer(g, u, ETF__OP_MATMUL);
                if (cand >= 0 && sole_reader(g, cons, u) == add) {
                    mm = cand;
                    bias = g->nodes[add].in[1 - side];
                }
            }
        }
        if (mm < 0 || g->nodes[mm].n_in != 2)
            continue;
        int a = g->nodes[mm].in[0], w = g->nodes[mm].in[1];
        const struct etf__tensor *W = &g->t[w];
        if (!W->data || W->shape.ndim != 2 || g->t[a].shape.ndim < 2)
            continue;
        int64_t K = W->shape.d[0], N = W->shape.d[1], s0 = s->a.starts[last], L = ys->d[last];
        if (N != xs->d[last])
            continue;
        if (bias >= 0) {
            const struct etf__tensor *B = &g->t[bias];
            bool vec = B->data && B->dtype == ETF__DT_FLOAT && elems(&B->shape) == (size_t)N &&
                       B->shape.ndim >= 1 && B->shape.d[B->shape.ndim - 1] == N;
            if (!vec)
                continue;
        }
        struct etf_shape wsh = {.ndim = 2, .d = {K, L}}, bsh = {.ndim = 1, .d = {L}};
        const char *sname = g->t[s->out[0]].name;
        float *nw, *nb = NULL;
        int tw = new_const_tensor(g, etf__graph_strf(g, "%s:weight", sname), &wsh, &nw, diag);
        if (tw < 0) {
            free(cons);
            return tw;
        }
        const float *wv = g->t[w].data;
        for (int64_t k = 0; k < K; k++)
            memcpy(nw + k * L, wv + k * N + s0, (size_t)L * sizeof *nw);
        int tb = -1;
        if (bias >= 0) {
            tb = new_const_tensor(g, etf__graph_strf(g, "%s:bias", sname), &bsh, &nb, diag);
            if (tb < 0) {
                free(cons);
                return tb;
            }
            memcpy(nb, (const float *)g->t[bias].data + s0, (size_t)L * sizeof *nb);
        }
        s = &g->nodes[i];
        s->op = ETF__OP_MATMUL;
        s->op_type = "MatMul";
        s->in[0] = a;
        s->in[1] = tw;
        s->n_in = 2;
        if (tb >= 0)
            s->in[s->n_in++] = tb;
        etf__graph_count_uses(g);
        free(cons);
        if (!(cons = find_readers(g))) /* new tensors: the table grew */
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    }
    free(cons);
    return 0;
}

/* Drops nodes nothing reads, last to first so that whole dead chains go in one pass. */
static void rw_dead(struct etf__graph *g)
{
    etf__graph_count_uses(g);
    for (size_t i = g->n_nodes; i-- > 0;) {
        struct etf__node *n = &g->nodes[i];
        if (n->dead)
            continue;
        bool used = false;
        for (int k = 0; k < n->n_out; k++)
            used = used || (n->out[k] >= 0 && g->t[n->out[k]].uses > 0);
        if (used)
            continue;
        n->dead = true;
        for (int k = 0; k < n->n_in; k++)
            if (n->in[k] >= 0)
                g->t[n->in[k]].uses--;
    }
}

/* ---- lowering ---- */

struct builder {
    struct etf__graph *g;
    struct etf_diag *diag;
    struct etf_value *v;
    int *v_writer; /* per value with own storage: the kernel writing it, -1 */
    size_t nv, cap_v;
    struct etf_kernel *k;
    const char **k_base; /* per kernel: the stem of its name */
    int *k_src;          /* per kernel: graph tensor of its main input, -1 */
    size_t nk, cap_k;
    /* per graph tensor */
    int *val;     /* its plan value, -1 while none */
    int *view_of; /* the tensor it is a view of, -1 */
    int *kern_of; /* the kernel whose output value it is, -1 */
    size_t n_t;
};

#define NODE_ERR(err, ...) etf__node_err(b->g, n, b->diag, (err), __VA_ARGS__)

static int oom(struct builder *b)
{
    return etf_diagf(b->diag, ETF_ENOMEM, "%s: out of memory building the plan", b->g->origin);
}

static int new_value(struct builder *b, const char *name, enum etf_value_kind kind,
                     const struct etf_shape *s, const float *data, int alias_of)
{
    if (b->nv == b->cap_v) {
        size_t cap = b->cap_v ? 2 * b->cap_v : 64;
        struct etf_value *v = realloc(b->v, cap * sizeof *v);
        if (!v)
            return oom(b);
        b->v = v;
        int *vw = realloc(b->v_writer, cap * sizeof *vw);
        if (!vw)
            return oom(b);
        b->v_writer = vw;
        b->cap_v = cap;
    }
    char *nm = strdup(name);
    if (!nm)
        return oom(b);
    b->v[b->nv] = (struct etf_value){
        .name = nm, .kind = kind, .shape = *s, .data = data, .alias_of = alias_of};
    b->v_writer[b->nv] = -1;
    return (int)b->nv++;
}

static int storage(const struct builder *b, int v)
{
    while (b->v[v].alias_of >= 0)
        v = b->v[v].alias_of;
    return v;
}

/* A fresh float constant of shape s owned by the plan; *data to fill. */
static int new_const(struct builder *b, const char *name, const struct etf_shape *s, float **data)
{
    void *p;
    int rc = etf__graph_const_alloc(b->g, elems(s) * sizeof(float), name, &p, b->diag);
    if (rc)
        return rc;
    *data = p;
    return new_value(b, name, ETF_VALUE_CONSTANT, s, p, -1);
}

static int value_of(struct builder *b, int t)
{
    if (b->val[t] >= 0)
        return b->val[t];
    const struct etf__tensor *T = &b->g->t[t];
    char sb[128];
    int id;
    if (T->data) {
        if (T->dtype != ETF__DT_FLOAT)
            return etf_diagf(b->diag, ETF_ENOTSUP,
                             "%s: integer tensor '%s' is used as data; fp32 only", b->g->origin,
                             T->name);
        id = new_value(b, T->name, ETF_VALUE_CONSTANT, &T->shape, T->data, -1);
    } else if (b->view_of[t] >= 0) {
        int src = value_of(b, b->view_of[t]);
        if (src < 0)
            return src;
        int st = storage(b, src);
        id = new_value(b, T->name, b->v[st].kind, &T->shape, NULL, st);
    } else {
        return etf_diagf(b->diag, ETF_EFORMAT,
                         "%s: tensor '%s' (shape %s) is used before it is computed", b->g->origin,
                         T->name, etf__shape_str(&T->shape, sb));
    }
    if (id >= 0)
        b->val[t] = id;
    return id;
}

/* Value v seen with shape s: v itself, or an alias (a constant sharing its data). */
static int reshaped(struct builder *b, int v, const struct etf_shape *s)
{
    if (etf__shape_eq(&b->v[v].shape, s))
        return v;
    char name[256];
    snprintf(name, sizeof name, "%s#view", b->v[v].name);
    if (b->v[v].kind == ETF_VALUE_CONSTANT)
        return new_value(b, name, ETF_VALUE_CONSTANT, s, b->v[v].data, -1);
    int st = storage(b, v);
    return new_value(b, name, b->v[st].kind, s, NULL, st);
}

static int add_kernel(struct builder *b, enum etf_kernel_op op, const char *base, int src)
{
    if (b->nk == b->cap_k) {
        size_t cap = b->cap_k ? 2 * b->cap_k : 64;
        struct etf_kernel *k = realloc(b->k, cap * sizeof *k);
        if (!k)
            return oom(b);
        b->k = k;
        const char **kb = realloc(b->k_base, cap * sizeof *kb);
        if (!kb)
            return oom(b);
        b->k_base = kb;
        int *ks = realloc(b->k_src, cap * sizeof *ks);
        if (!ks)
            return oom(b);
        b->k_src = ks;
        b->cap_k = cap;
    }
    struct etf_kernel *k = &b->k[b->nk];
    memset(k, 0, sizeof *k);
    k->op = op;
    k->output = -1;
    for (int i = 0; i < ETF_MAX_KERNEL_INPUTS; i++)
        k->inputs[i] = -1;
    b->k_base[b->nk] = base;
    b->k_src[b->nk] = src;
    return (int)b->nk++;
}

static void kernel_in(struct builder *b, int k, int v)
{
    b->k[k].inputs[b->k[k].n_inputs++] = v;
}

/* Value vi of tensor t (creating it) as kernel k's input. */
static int kernel_in_t(struct builder *b, int k, int t)
{
    int v = value_of(b, t);
    if (v < 0)
        return v;
    kernel_in(b, k, v);
    return 0;
}

static int check_nonempty(struct builder *b, const char *name, const struct etf_shape *s)
{
    char sb[128];
    if (elems(s) == 0)
        return etf_diagf(b->diag, ETF_ENOTSUP, "%s: tensor '%s' of shape %s is empty", b->g->origin,
                         name, etf__shape_str(s, sb));
    return 0;
}

/* Kernel k writes a new activation: graph tensor t's value. */
static int kernel_out_t(struct builder *b, int k, int t)
{
    const struct etf__tensor *T = &b->g->t[t];
    int rc = check_nonempty(b, T->name, &T->shape);
    if (rc)
        return rc;
    int v = new_value(b, T->name, ETF_VALUE_ACTIVATION, &T->shape, NULL, -1);
    if (v < 0)
        return v;
    b->k[k].output = v;
    b->v_writer[v] = k;
    b->val[t] = v;
    b->kern_of[t] = k;
    return 0;
}

/* Kernel k writes an activation that no graph tensor is (a transposed operand, ...). */
static int kernel_out_new(struct builder *b, int k, const char *name, const struct etf_shape *s)
{
    int rc = check_nonempty(b, name, s);
    if (rc)
        return rc;
    int v = new_value(b, name, ETF_VALUE_ACTIVATION, s, NULL, -1);
    if (v < 0)
        return v;
    b->k[k].output = v;
    b->v_writer[v] = k;
    return v;
}

/* After a post-op was attached: tensor y (the node's output) is what tensor x was, whose
 * storage is tensor `last`'s value. */
static int map_output(struct builder *b, int y, int x, int last)
{
    const struct etf__tensor *Y = &b->g->t[y], *L = &b->g->t[last];
    if (x == last && etf__shape_eq(&Y->shape, &L->shape)) {
        int v = b->val[last];
        char *nm = strdup(Y->name);
        if (!nm)
            return oom(b);
        free(b->v[v].name); /* the intermediate is gone: the value is now the node's output */
        b->v[v].name = nm;
        b->val[y] = v;
        b->kern_of[y] = b->kern_of[last];
    } else {
        b->view_of[y] = last;
    }
    return 0;
}

/* The CONV or MATMUL kernel producing tensor x through views (and TRANSPOSE kernels when
 * through_transpose), with nothing else reading any tensor on the way; -1 if none. *last is
 * the nearest kernel output on the way: the storage x is a view of. */
static int fusion_target(struct builder *b, int x, bool through_transpose, int *last)
{
    int t = x;
    *last = -1;
    for (size_t guard = 0; guard <= b->n_t; guard++) {
        const struct etf__tensor *T = &b->g->t[t];
        if (T->uses != 1 || T->is_output || T->data)
            return -1;
        int k = b->kern_of[t];
        if (k >= 0) {
            if (*last < 0)
                *last = t;
            const struct etf_kernel *K = &b->k[k];
            if ((K->op == ETF_K_CONV || K->op == ETF_K_MATMUL || K->op == ETF_K_BATCHNORM) &&
                K->n_post < ETF_MAX_POST_OPS)
                return k;
            if (K->op == ETF_K_TRANSPOSE && through_transpose && b->k_src[k] >= 0) {
                t = b->k_src[k];
                continue;
            }
            return -1;
        }
        if (b->view_of[t] < 0)
            return -1;
        t = b->view_of[t];
    }
    return -1;
}

static const char *eltwise_name(enum etf_eltwise_alg a)
{
    static const char *const names[] = {
        [ETF_ELT_RELU] = "relu",     [ETF_ELT_CLIP] = "clip",     [ETF_ELT_SIGMOID] = "sigmoid",
        [ETF_ELT_SWISH] = "swish",   [ETF_ELT_GELU_ERF] = "gelu", [ETF_ELT_ERF] = "erf",
        [ETF_ELT_TANH] = "tanh",     [ETF_ELT_EXP] = "exp",       [ETF_ELT_SQRT] = "sqrt",
        [ETF_ELT_LINEAR] = "linear",
    };
    return names[a];
}

static int lower_unary(struct builder *b, const struct etf__node *n, enum etf_eltwise_alg alg,
                       float alpha, float beta, int x)
{
    int y = n->out[0], last, k = fusion_target(b, x, true, &last);
    if (k >= 0) {
        struct etf_post_op *p = &b->k[k].post[b->k[k].n_post++];
        *p = (struct etf_post_op){
            .kind = ETF_POST_ELTWISE, .eltwise = alg, .alpha = alpha, .beta = beta, .value = -1};
        return map_output(b, y, x, last);
    }
    k = add_kernel(b, ETF_K_ELTWISE, eltwise_name(alg), x);
    if (k < 0)
        return k;
    b->k[k].attr.eltwise.alg = alg;
    b->k[k].attr.eltwise.alpha = alpha;
    b->k[k].attr.eltwise.beta = beta;
    int rc = kernel_in_t(b, k, x);
    return rc ? rc : kernel_out_t(b, k, y);
}

static bool is_scalar_const(const struct etf__graph *g, int t, float *v)
{
    const struct etf__tensor *T = &g->t[t];
    if (!T->data || T->dtype != ETF__DT_FLOAT || elems(&T->shape) != 1)
        return false;
    *v = *(const float *)T->data;
    return true;
}

/* MatMul + Add(constant [N]) -> bias; Conv + Add(constant [O, 1, 1]) likewise. */
static int try_bias(struct builder *b, const struct etf__node *n, int x, int c)
{
    struct etf__graph *g = b->g;
    const struct etf__tensor *X = &g->t[x], *C = &g->t[c];
    int k = b->kern_of[x];
    if (k < 0 || X->uses != 1 || X->is_output || !C->data || C->dtype != ETF__DT_FLOAT ||
        !etf__shape_eq(&g->t[n->out[0]].shape, &X->shape))
        return 0;
    struct etf_kernel *K = &b->k[k];
    if (K->n_post || K->n_inputs != 2 || (K->op != ETF_K_MATMUL && K->op != ETF_K_CONV))
        return 0;
    int axis = K->op == ETF_K_MATMUL ? X->shape.ndim - 1 : 1;
    int64_t N = X->shape.d[axis];
    /* the constant must vary along `axis` only: right-aligned, 1 elsewhere */
    int off = X->shape.ndim - C->shape.ndim;
    if (off < 0 || elems(&C->shape) != (size_t)N)
        return 0;
    for (int i = 0; i < C->shape.ndim; i++)
        if (C->shape.d[i] != 1 && i + off != axis)
            return 0;
    int v = value_of(b, c);
    if (v < 0)
        return v;
    struct etf_shape bs = {.ndim = 1, .d = {N}};
    int bv = reshaped(b, v, &bs);
    if (bv < 0)
        return bv;
    kernel_in(b, k, bv);
    int rc = map_output(b, n->out[0], x, x);
    return rc ? rc : 1;
}

/* Add of two tensors of the output's shape, one produced by a CONV/MATMUL: a residual sum.
 * Attached to the later of the two kernels, which must run after the other operand exists. */
static int try_sum(struct builder *b, const struct etf__node *n, int ta, int tb)
{
    struct etf__graph *g = b->g;
    const struct etf_shape *ys = &g->t[n->out[0]].shape;
    if (!etf__shape_eq(&g->t[ta].shape, ys) || !etf__shape_eq(&g->t[tb].shape, ys))
        return 0;
    int best = -1, bx = -1, bs = -1, blast = -1;
    for (int side = 0; side < 2; side++) {
        int x = side ? tb : ta, s = side ? ta : tb, last;
        int k = fusion_target(b, x, false, &last);
        if (k < 0 || k <= best)
            continue;
        int sv = value_of(b, s);
        if (sv < 0)
            return sv;
        if (b->v_writer[storage(b, sv)] >= k)
            continue; /* computed by or after kernel k */
        best = k, bx = x, bs = sv, blast = last;
    }
    if (best < 0)
        return 0;
    struct etf_kernel *K = &b->k[best];
    int sv = reshaped(b, bs, &b->v[K->output].shape);
    if (sv < 0)
        return sv;
    K = &b->k[best];
    K->post[K->n_post++] = (struct etf_post_op){.kind = ETF_POST_SUM, .value = sv};
    int rc = map_output(b, n->out[0], bx, blast);
    return rc ? rc : 1;
}

/* x (op) constant c broadcast against x, right after a CONV/MATMUL: a binary post-op. */
static int try_post_binary(struct builder *b, const struct etf__node *n, int x, int c,
                           enum etf_binary_alg alg)
{
    struct etf__graph *g = b->g;
    const struct etf__tensor *X = &g->t[x], *C = &g->t[c];
    int k = b->kern_of[x];
    if (k < 0 || X->uses != 1 || X->is_output || !C->data || C->dtype != ETF__DT_FLOAT ||
        C->shape.ndim > X->shape.ndim || !etf__shape_eq(&g->t[n->out[0]].shape, &X->shape))
        return 0;
    struct etf_kernel *K = &b->k[k];
    if ((K->op != ETF_K_MATMUL && K->op != ETF_K_CONV) || K->n_post >= ETF_MAX_POST_OPS)
        return 0;
    struct etf_shape cs = {.ndim = X->shape.ndim};
    int off = X->shape.ndim - C->shape.ndim;
    for (int i = 0; i < cs.ndim; i++)
        cs.d[i] = i < off ? 1 : C->shape.d[i - off];
    int v = value_of(b, c);
    if (v < 0)
        return v;
    int cv = reshaped(b, v, &cs);
    if (cv < 0)
        return cv;
    K = &b->k[k];
    K->post[K->n_post++] =
        (struct etf_post_op){.kind = ETF_POST_BINARY, .binary = alg, .value = cv};
    int rc = map_output(b, n->out[0], x, x);
    return rc ? rc : 1;
}

static int lower_binary(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int ta = n->in[0], tb = n->in[1], y = n->out[0], rc;
    const struct etf_shape *ys = &g->t[y].shape;
    float c;
    /* a constant scalar: alpha * x + beta */
    for (int side = 0; side < 2; side++) {
        int x = side ? tb : ta, s = side ? ta : tb;
        if (!is_scalar_const(g, s, &c) || g->t[x].data || !etf__shape_eq(&g->t[x].shape, ys))
            continue;
        bool x_first = side == 0;
        switch (n->op) {
        case ETF__OP_MUL:
            return lower_unary(b, n, ETF_ELT_LINEAR, c, 0, x);
        case ETF__OP_ADD:
            return lower_unary(b, n, ETF_ELT_LINEAR, 1, c, x);
        case ETF__OP_SUB:
            return lower_unary(b, n, ETF_ELT_LINEAR, x_first ? 1 : -1, x_first ? -c : c, x);
        case ETF__OP_DIV:
            if (x_first && c != 0)
                return lower_unary(b, n, ETF_ELT_LINEAR, 1.0f / c, 0, x);
            break;
        default:
            break;
        }
    }
    static const enum etf_binary_alg algs[] = {
        [ETF__OP_ADD] = ETF_BIN_ADD,
        [ETF__OP_SUB] = ETF_BIN_SUB,
        [ETF__OP_MUL] = ETF_BIN_MUL,
        [ETF__OP_DIV] = ETF_BIN_DIV,
    };
    enum etf_binary_alg alg = algs[n->op];
    if (n->op == ETF__OP_ADD) {
        for (int side = 0; side < 2; side++)
            if ((rc = try_bias(b, n, side ? tb : ta, side ? ta : tb)))
                return rc < 0 ? rc : 0;
        if ((rc = try_sum(b, n, ta, tb)))
            return rc < 0 ? rc : 0;
    }
    /* a constant second operand (either one when the op commutes) */
    for (int side = 0; side < 2; side++) {
        if (side == 1 && (n->op == ETF__OP_SUB || n->op == ETF__OP_DIV))
            break;
        if ((rc = try_post_binary(b, n, side ? tb : ta, side ? ta : tb, alg)))
            return rc < 0 ? rc : 0;
    }
    static const char *const names[] = {
        [ETF_BIN_ADD] = "add", [ETF_BIN_SUB] = "sub", [ETF_BIN_MUL] = "mul", [ETF_BIN_DIV] = "div"};
    int k = add_kernel(b, ETF_K_BINARY, names[alg], ta);
    if (k < 0)
        return k;
    b->k[k].attr.binary.alg = alg;
    if ((rc = kernel_in_t(b, k, ta)) || (rc = kernel_in_t(b, k, tb)))
        return rc;
    return kernel_out_t(b, k, y);
}

static int lower_conv(struct builder *b, const struct etf__node *n)
{
    int k = add_kernel(b, ETF_K_CONV, "conv", n->in[0]), rc;
    if (k < 0)
        return k;
    struct etf_kernel *K = &b->k[k];
    for (int i = 0; i < 2; i++) {
        K->attr.conv.stride[i] = n->a.stride[i];
        K->attr.conv.dilation[i] = n->a.dilation[i];
        K->attr.conv.pad_begin[i] = n->a.pad_begin[i];
        K->attr.conv.pad_end[i] = n->a.pad_end[i];
    }
    K->attr.conv.groups = n->a.group;
    for (int i = 0; i < n->n_in && i < 3; i++)
        if (n->in[i] >= 0 && (rc = kernel_in_t(b, k, n->in[i])))
            return rc;
    return kernel_out_t(b, k, n->out[0]);
}

/* A transposed 2-D operand: a constant transposed now (scaled by `scale`), or a TRANSPOSE
 * kernel. */
static int transposed_2d(struct builder *b, int t, float scale, const char *suffix)
{
    const struct etf__tensor *T = &b->g->t[t];
    struct etf_shape s = {.ndim = 2, .d = {T->shape.d[1], T->shape.d[0]}};
    char name[256];
    snprintf(name, sizeof name, "%s:%s", T->name, suffix);
    if (T->data) {
        float *d;
        int v = new_const(b, name, &s, &d);
        if (v < 0)
            return v;
        const float *src = b->g->t[t].data;
        int64_t R = s.d[0], C = s.d[1];
        /* in tiles: a column walk over a big matrix misses the cache on every element */
        for (int64_t r0 = 0; r0 < R; r0 += 32)
            for (int64_t c0 = 0; c0 < C; c0 += 32)
                for (int64_t r = r0; r < R && r < r0 + 32; r++)
                    for (int64_t c = c0; c < C && c < c0 + 32; c++)
                        d[r * C + c] = src[c * R + r] * scale;
        return v;
    }
    int k = add_kernel(b, ETF_K_TRANSPOSE, "transpose", t);
    if (k < 0)
        return k;
    b->k[k].attr.transpose.perm[0] = 1;
    b->k[k].attr.transpose.perm[1] = 0;
    int rc = kernel_in_t(b, k, t);
    return rc ? rc : kernel_out_new(b, k, name, &s);
}

/* A float constant times `scale`, copied unless it may change in place. */
static int scaled_const(struct builder *b, int t, float scale, const char *suffix)
{
    if (scale == 1.0f)
        return value_of(b, t);
    const struct etf__tensor *T = &b->g->t[t];
    char name[256];
    snprintf(name, sizeof name, "%s:%s", T->name, suffix);
    float *d;
    int v = new_const(b, name, &T->shape, &d);
    if (v < 0)
        return v;
    const float *src = b->g->t[t].data;
    for (size_t i = 0, c = elems(&T->shape); i < c; i++)
        d[i] = src[i] * scale;
    return v;
}

static int lower_gemm(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int ta = n->in[0], tb = n->in[1], tc = n->n_in > 2 ? n->in[2] : -1, y = n->out[0];
    const struct etf_shape *ys = &g->t[y].shape;
    int64_t N = ys->d[1];
    if (!g->t[tb].data && n->a.alpha != 1.0f)
        return NODE_ERR(ETF_ENOTSUP, "alpha %g with computed weights '%s' is not supported",
                        (double)n->a.alpha, g->t[tb].name);
    int av = n->a.trans_a ? transposed_2d(b, ta, 1.0f, "T") : value_of(b, ta);
    if (av < 0)
        return av;
    int wv = n->a.trans_b
                 ? transposed_2d(b, tb, n->a.alpha, "KxN")
                 : (g->t[tb].data ? scaled_const(b, tb, n->a.alpha, "alpha") : value_of(b, tb));
    if (wv < 0)
        return wv;
    int bias = -1;
    struct etf_post_op post = {.kind = ETF_POST_ELTWISE, .value = -1};
    bool has_post = false;
    if (tc >= 0) {
        const struct etf__tensor *C = &g->t[tc];
        size_t ce = elems(&C->shape);
        bool row = ce == (size_t)N && (C->shape.ndim == 1 || C->shape.d[0] == 1);
        if (C->data && (row || ce == 1)) {
            struct etf_shape bs = {.ndim = 1, .d = {N}};
            float *d;
            if (ce == (size_t)N && n->a.beta == 1.0f) {
                int cv = value_of(b, tc);
                bias = cv < 0 ? cv : reshaped(b, cv, &bs);
            } else {
                char name[256];
                snprintf(name, sizeof name, "%s:bias", C->name);
                bias = new_const(b, name, &bs, &d);
                for (int64_t i = 0; bias >= 0 && i < N; i++)
                    d[i] = n->a.beta * ((const float *)g->t[tc].data)[ce == 1 ? 0 : i];
            }
            if (bias < 0)
                return bias;
        } else if (C->data) {
            int cv = scaled_const(b, tc, n->a.beta, "beta");
            if (cv < 0)
                return cv;
            struct etf_shape cs = {
                .ndim = 2,
                .d = {C->shape.ndim == 2 ? C->shape.d[0] : 1, C->shape.d[C->shape.ndim - 1]}};
            cv = reshaped(b, cv, &cs);
            if (cv < 0)
                return cv;
            post =
                (struct etf_post_op){.kind = ETF_POST_BINARY, .binary = ETF_BIN_ADD, .value = cv};
            has_post = true;
        } else if (n->a.beta == 1.0f && etf__shape_eq(&C->shape, ys)) {
            int cv = value_of(b, tc);
            if (cv < 0)
                return cv;
            post = (struct etf_post_op){.kind = ETF_POST_SUM, .value = cv};
            has_post = true;
        } else {
            return NODE_ERR(ETF_ENOTSUP,
                            "computed input C '%s' must have the result's shape and "
                            "beta 1",
                            C->name);
        }
    }
    int k = add_kernel(b, ETF_K_MATMUL, "matmul", ta);
    if (k < 0)
        return k;
    kernel_in(b, k, av);
    kernel_in(b, k, wv);
    if (bias >= 0)
        kernel_in(b, k, bias);
    if (has_post)
        b->k[k].post[b->k[k].n_post++] = post;
    return kernel_out_t(b, k, y);
}

static int lower_matmul(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int ta = n->in[0], tb = n->in[1], y = n->out[0], rc;
    int av = value_of(b, ta), bv = av < 0 ? av : value_of(b, tb);
    if (bv < 0)
        return bv;
    const struct etf_shape *as = &g->t[ta].shape, *bs = &g->t[tb].shape;
    /* 1-D operands are matrices with one row or column, the dim dropped from the result */
    struct etf_shape a2 = {.ndim = 2, .d = {1, as->d[0]}}, b2 = {.ndim = 2, .d = {bs->d[0], 1}};
    if (as->ndim == 1 && (av = reshaped(b, av, &a2)) < 0)
        return av;
    if (bs->ndim == 1 && (bv = reshaped(b, bv, &b2)) < 0)
        return bv;
    int k = add_kernel(b, ETF_K_MATMUL, "matmul", ta);
    if (k < 0)
        return k;
    kernel_in(b, k, av);
    kernel_in(b, k, bv);
    if (n->n_in > 2 && (rc = kernel_in_t(b, k, n->in[2])))
        return rc;
    if (as->ndim > 1 && bs->ndim > 1)
        return kernel_out_t(b, k, y);
    /* the kernel writes the 2-D form; the node's output views it */
    struct etf_shape full = g->t[y].shape;
    if (full.ndim + (as->ndim == 1) + (bs->ndim == 1) > ETF_MAX_DIMS)
        return NODE_ERR(ETF_ENOTSUP, "the result would have more than %d dims", ETF_MAX_DIMS);
    if (as->ndim == 1 && bs->ndim == 1) {
        full.d[full.ndim++] = 1;
        full.d[full.ndim++] = 1;
    } else if (as->ndim == 1) {
        full.d[full.ndim] = full.d[full.ndim - 1];
        full.d[full.ndim - 1] = 1;
        full.ndim++;
    } else {
        full.d[full.ndim++] = 1;
    }
    char name[256];
    snprintf(name, sizeof name, "%s#2d", g->t[y].name);
    int v = kernel_out_new(b, k, name, &full);
    if (v < 0)
        return v;
    b->val[y] = new_value(b, g->t[y].name, ETF_VALUE_ACTIVATION, &g->t[y].shape, NULL, v);
    return b->val[y] < 0 ? b->val[y] : 0;
}

static int lower_pool(struct builder *b, const struct etf__node *n)
{
    const struct etf_shape *xs = &b->g->t[n->in[0]].shape;
    bool global = n->op == ETF__OP_GLOBALAVGPOOL;
    const char *base = n->op == ETF__OP_MAXPOOL ? "pool_max"
                       : global                 ? "pool_global_avg"
                                                : "pool_avg";
    int k = add_kernel(b, ETF_K_POOL, base, n->in[0]), rc;
    if (k < 0)
        return k;
    struct etf_kernel *K = &b->k[k];
    K->attr.pool.alg = n->op == ETF__OP_MAXPOOL ? ETF_POOL_MAX
                       : n->a.count_include_pad ? ETF_POOL_AVG_INCLUDE_PAD
                                                : ETF_POOL_AVG_EXCLUDE_PAD;
    for (int i = 0; i < 2; i++) {
        K->attr.pool.kernel[i] = global ? xs->d[2 + i] : n->a.kernel[i];
        K->attr.pool.stride[i] = global ? 1 : n->a.stride[i];
        K->attr.pool.pad_begin[i] = global ? 0 : n->a.pad_begin[i];
        K->attr.pool.pad_end[i] = global ? 0 : n->a.pad_end[i];
    }
    if ((rc = kernel_in_t(b, k, n->in[0])))
        return rc;
    return kernel_out_t(b, k, n->out[0]);
}

static int lower_reduce(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int x = n->in[0], y = n->out[0], rc;
    int k = add_kernel(b, ETF_K_REDUCE_MEAN, "reduce_mean", x);
    if (k < 0)
        return k;
    b->k[k].attr.reduce.axes_mask = n->a.axes_mask;
    if ((rc = kernel_in_t(b, k, x)))
        return rc;
    struct etf_shape kept = g->t[x].shape;
    for (int i = 0; i < kept.ndim; i++)
        if (n->a.axes_mask & (1u << i))
            kept.d[i] = 1;
    if (etf__shape_eq(&kept, &g->t[y].shape))
        return kernel_out_t(b, k, y);
    char name[256];
    snprintf(name, sizeof name, "%s#keepdims", g->t[y].name);
    int v = kernel_out_new(b, k, name, &kept);
    if (v < 0)
        return v;
    b->val[y] = new_value(b, g->t[y].name, ETF_VALUE_ACTIVATION, &g->t[y].shape, NULL, v);
    return b->val[y] < 0 ? b->val[y] : 0;
}

static int lower_batchnorm(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int x = n->in[0], rc;
    int64_t C = g->t[x].shape.d[1];
    struct etf_shape cs = {.ndim = 1, .d = {C}};
    const float *gam = g->t[n->in[1]].data, *beta = g->t[n->in[2]].data,
                *mean = g->t[n->in[3]].data, *var = g->t[n->in[4]].data;
    char name[256];
    float *sc, *sh;
    snprintf(name, sizeof name, "%s:scale", g->t[n->out[0]].name);
    int vs = new_const(b, name, &cs, &sc);
    if (vs < 0)
        return vs;
    snprintf(name, sizeof name, "%s:shift", g->t[n->out[0]].name);
    int vh = new_const(b, name, &cs, &sh);
    if (vh < 0)
        return vh;
    for (int64_t c = 0; c < C; c++) {
        sc[c] = gam[c] / sqrtf(var[c] + n->a.epsilon);
        sh[c] = beta[c] - mean[c] * sc[c];
    }
    int k = add_kernel(b, ETF_K_BATCHNORM, "batchnorm", x);
    if (k < 0)
        return k;
    if ((rc = kernel_in_t(b, k, x)))
        return rc;
    kernel_in(b, k, vs);
    kernel_in(b, k, vh);
    return kernel_out_t(b, k, n->out[0]);
}

static int lower_layernorm(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int x = n->in[0], rc;
    int64_t D = g->t[x].shape.d[g->t[x].shape.ndim - 1];
    struct etf_shape ds = {.ndim = 1, .d = {D}};
    int gv = value_of(b, n->in[1]);
    if (gv < 0 || (gv = reshaped(b, gv, &ds)) < 0)
        return gv;
    int bv;
    if (n->n_in > 2 && n->in[2] >= 0) {
        bv = value_of(b, n->in[2]);
        if (bv < 0 || (bv = reshaped(b, bv, &ds)) < 0)
            return bv;
    } else {
        float *z;
        char name[256];
        snprintf(name, sizeof name, "%s:beta", g->t[n->out[0]].name);
        if ((bv = new_const(b, name, &ds, &z)) < 0)
            return bv;
    }
    int k = add_kernel(b, ETF_K_LAYERNORM, "layernorm", x);
    if (k < 0)
        return k;
    b->k[k].attr.norm.epsilon = n->a.epsilon;
    if ((rc = kernel_in_t(b, k, x)))
        return rc;
    kernel_in(b, k, gv);
    kernel_in(b, k, bv);
    return kernel_out_t(b, k, n->out[0]);
}

static int lower_concat(struct builder *b, const struct etf__node *n)
{
    int k = add_kernel(b, ETF_K_CONCAT, "concat", -1), rc;
    if (k < 0)
        return k;
    b->k[k].attr.axis.axis = n->a.axis;
    if (n->n_in > ETF_MAX_KERNEL_INPUTS) {
        int *all = malloc((size_t)n->n_in * sizeof *all);
        if (!all)
            return oom(b);
        b->k[k].extra_inputs = all;
        for (int i = 0; i < n->n_in; i++) {
            int v = value_of(b, n->in[i]);
            if (v < 0)
                return v;
            all[b->k[k].n_extra_inputs++] = v;
            if (i < ETF_MAX_KERNEL_INPUTS)
                b->k[k].inputs[i] = v;
        }
    } else {
        for (int i = 0; i < n->n_in; i++)
            if ((rc = kernel_in_t(b, k, n->in[i])))
                return rc;
    }
    return kernel_out_t(b, k, n->out[0]);
}

/* Whether a transpose keeps the elements in the same flat order (it only moves dims of 1). */
static bool transpose_is_view(const struct etf_shape *xs, const int *perm)
{
    int prev = -1;
    for (int i = 0; i < xs->ndim; i++) {
        if (xs->d[perm[i]] == 1)
            continue;
        if (perm[i] < prev)
            return false;
        prev = perm[i];
    }
    return true;
}

static int lower_transpose(struct builder *b, const struct etf__node *n)
{
    int x = n->in[0], rc;
    if (transpose_is_view(&b->g->t[x].shape, n->a.perm)) {
        b->view_of[n->out[0]] = x;
        return 0;
    }
    int k = add_kernel(b, ETF_K_TRANSPOSE, "transpose", x);
    if (k < 0)
        return k;
    memcpy(b->k[k].attr.transpose.perm, n->a.perm, sizeof n->a.perm);
    if ((rc = kernel_in_t(b, k, x)))
        return rc;
    return kernel_out_t(b, k, n->out[0]);
}

static int lower_pad(struct builder *b, const struct etf__node *n)
{
    int x = n->in[0], r = b->g->t[x].shape.ndim, rc;
    bool zero = true;
    for (int i = 0; i < r; i++)
        zero = zero && !n->a.pads[i] && !n->a.pads[ETF_MAX_DIMS + i];
    if (zero) {
        b->view_of[n->out[0]] = x;
        return 0;
    }
    int k = add_kernel(b, ETF_K_PAD, "pad", x);
    if (k < 0)
        return k;
    for (int i = 0; i < r; i++) {
        b->k[k].attr.pad.begin[i] = n->a.pads[i];
        b->k[k].attr.pad.end[i] = n->a.pads[ETF_MAX_DIMS + i];
    }
    b->k[k].attr.pad.value = n->a.value;
    if ((rc = kernel_in_t(b, k, x)))
        return rc;
    return kernel_out_t(b, k, n->out[0]);
}

/* Slice or Gather of a computed tensor along one axis: x viewed as [outer, D, inner], rows
 * picked by a constant 0/1 matrix S with S[i][pick[i]] = 1. inner == 1: x [outer, D] @ S^T;
 * otherwise S [L, D] @ x [outer, D, inner]. */
static int lower_select(struct builder *b, const struct etf__node *n, const char *base, int axis,
                        const int64_t *pick, int64_t L)
{
    struct etf__graph *g = b->g;
    int x = n->in[0], y = n->out[0];
    const struct etf_shape *xs = &g->t[x].shape;
    int64_t outer = 1, inner = 1, D = xs->d[axis];
    for (int i = 0; i < axis; i++)
        outer *= xs->d[i];
    for (int i = axis + 1; i < xs->ndim; i++)
        inner *= xs->d[i];
    int xv = value_of(b, x);
    if (xv < 0)
        return xv;
    char name[256];
    snprintf(name, sizeof name, "%s:select", g->t[y].name);
    struct etf_shape ss, xv_s, out_s;
    bool right = inner == 1;
    if (right) {
        ss = (struct etf_shape){.ndim = 2, .d = {D, L}};
        xv_s = (struct etf_shape){.ndim = 2, .d = {outer, D}};
        out_s = (struct etf_shape){.ndim = 2, .d = {outer, L}};
    } else {
        ss = (struct etf_shape){.ndim = 2, .d = {L, D}};
        xv_s = outer == 1 ? (struct etf_shape){.ndim = 2, .d = {D, inner}}
                          : (struct etf_shape){.ndim = 3, .d = {outer, D, inner}};
        out_s = outer == 1 ? (struct etf_shape){.ndim = 2, .d = {L, inner}}
                           : (struct etf_shape){.ndim = 3, .d = {outer, L, inner}};
    }
    float *s;
    int sv = new_const(b, name, &ss, &s);
    if (sv < 0)
        return sv;
    for (int64_t i = 0; i < L; i++) {
        if (right)
            s[pick[i] * L + i] = 1.0f;
        else
            s[i * D + pick[i]] = 1.0f;
    }
    if ((xv = reshaped(b, xv, &xv_s)) < 0)
        return xv;
    int k = add_kernel(b, ETF_K_MATMUL, base, x);
    if (k < 0)
        return k;
    kernel_in(b, k, right ? xv : sv);
    kernel_in(b, k, right ? sv : xv);
    if (etf__shape_eq(&out_s, &g->t[y].shape))
        return kernel_out_t(b, k, y);
    snprintf(name, sizeof name, "%s#2d", g->t[y].name);
    int v = kernel_out_new(b, k, name, &out_s);
    if (v < 0)
        return v;
    b->val[y] = new_value(b, g->t[y].name, ETF_VALUE_ACTIVATION, &g->t[y].shape, NULL, v);
    return b->val[y] < 0 ? b->val[y] : 0;
}

static int lower_slice(struct builder *b, const struct etf__node *n)
{
    const struct etf_shape *xs = &b->g->t[n->in[0]].shape, *ys = &b->g->t[n->out[0]].shape;
    int axis = -1;
    for (int i = 0; i < xs->ndim; i++) {
        bool same = n->a.starts[i] == 0 && n->a.steps[i] == 1 && ys->d[i] == xs->d[i];
        if (same)
            continue;
        if (axis >= 0)
            return NODE_ERR(ETF_ENOTSUP, "slicing a computed tensor along more than one axis "
                                         "is not supported");
        axis = i;
    }
    if (axis < 0) {
        b->view_of[n->out[0]] = n->in[0];
        return 0;
    }
    int64_t L = ys->d[axis];
    int64_t *pick = malloc((size_t)(L ? L : 1) * sizeof *pick);
    if (!pick)
        return oom(b);
    for (int64_t i = 0; i < L; i++)
        pick[i] = n->a.starts[axis] + i * n->a.steps[axis];
    int rc = lower_select(b, n, "slice", axis, pick, L);
    free(pick);
    return rc;
}

static int lower_gather(struct builder *b, const struct etf__node *n)
{
    const struct etf__tensor *I = &b->g->t[n->in[1]];
    const struct etf_shape *xs = &b->g->t[n->in[0]].shape;
    int64_t D = xs->d[n->a.axis], L = (int64_t)elems(&I->shape);
    if (D == 1 && L == 1) {
        b->view_of[n->out[0]] = n->in[0];
        return 0;
    }
    int64_t *pick = malloc((size_t)(L ? L : 1) * sizeof *pick);
    if (!pick)
        return oom(b);
    for (int64_t i = 0; i < L; i++) {
        int64_t j = ((const int64_t *)I->data)[i];
        pick[i] = j < 0 ? j + D : j;
    }
    int rc = lower_select(b, n, "gather", n->a.axis, pick, L);
    free(pick);
    return rc;
}

static int lower_node(struct builder *b, const struct etf__node *n)
{
    struct etf__graph *g = b->g;
    int x = n->n_in > 0 ? n->in[0] : -1, y = n->out[0], rc;
    switch (n->op) {
    case ETF__OP_IDENTITY:
    case ETF__OP_DROPOUT:
    case ETF__OP_RESHAPE:
    case ETF__OP_FLATTEN:
    case ETF__OP_SQUEEZE:
    case ETF__OP_UNSQUEEZE:
    case ETF__OP_CAST:
    case ETF__OP_EXPAND:
        b->view_of[y] = x;
        return 0;
    case ETF__OP_CONCAT:
        if (n->n_in == 1) {
            b->view_of[y] = x;
            return 0;
        }
        return lower_concat(b, n);
    case ETF__OP_CONV:
        return lower_conv(b, n);
    case ETF__OP_GEMM:
        return lower_gemm(b, n);
    case ETF__OP_MATMUL:
        return lower_matmul(b, n);
    case ETF__OP_RELU:
        return lower_unary(b, n, ETF_ELT_RELU, 0, 0, x);
    case ETF__OP_CLIP:
        return lower_unary(b, n, ETF_ELT_CLIP, n->a.alpha, n->a.beta, x);
    case ETF__OP_SIGMOID:
        return lower_unary(b, n, ETF_ELT_SIGMOID, 0, 0, x);
    case ETF__OP_ERF:
        return lower_unary(b, n, ETF_ELT_ERF, 0, 0, x);
    case ETF__OP_TANH:
        return lower_unary(b, n, ETF_ELT_TANH, 0, 0, x);
    case ETF__OP_SQRT:
        return lower_unary(b, n, ETF_ELT_SQRT, 0, 0, x);
    case ETF__OP_EXP:
        return lower_unary(b, n, ETF_ELT_EXP, 0, 0, x);
    case ETF__OP_SWISH:
        return lower_unary(b, n, ETF_ELT_SWISH, 0, 0, x);
    case ETF__OP_GELU:
        return lower_unary(b, n, ETF_ELT_GELU_ERF, 0, 0, x);
    case ETF__OP_POW:
        if (n->a.exponent == 0.5f)
            return lower_unary(b, n, ETF_ELT_SQRT, 0, 0, x);
        {
            int k = add_kernel(b, ETF_K_BINARY, "mul", x);
            if (k < 0)
                return k;
            b->k[k].attr.binary.alg = ETF_BIN_MUL;
            if ((rc = kernel_in_t(b, k, x)))
                return rc;
            kernel_in(b, k, b->k[k].inputs[0]);
            return kernel_out_t(b, k, y);
        }
    case ETF__OP_ADD:
    case ETF__OP_SUB:
    case ETF__OP_MUL:
    case ETF__OP_DIV:
        return lower_binary(b, n);
    case ETF__OP_MAXPOOL:
    case ETF__OP_AVGPOOL:
        return lower_pool(b, n);
    case ETF__OP_GLOBALAVGPOOL:
        return g->t[x].shape.ndim == 4 ? lower_pool(b, n) : lower_reduce(b, n);
    case ETF__OP_REDUCEMEAN:
        return lower_reduce(b, n);
    case ETF__OP_SOFTMAX: {
        int k = add_kernel(b, ETF_K_SOFTMAX, "softmax", x);
        if (k < 0)
            return k;
        b->k[k].attr.axis.axis = n->a.axis;
        if ((rc = kernel_in_t(b, k, x)))
            return rc;
        return kernel_out_t(b, k, y);
    }
    case ETF__OP_BATCHNORM:
        return lower_batchnorm(b, n);
    case ETF__OP_LAYERNORM:
        return lower_layernorm(b, n);
    case ETF__OP_TRANSPOSE:
        return lower_transpose(b, n);
    case ETF__OP_PAD:
        return lower_pad(b, n);
    case ETF__OP_SLICE:
        return lower_slice(b, n);
    case ETF__OP_GATHER:
        return lower_gather(b, n);
    default:
        break;
    }
    return NODE_ERR(ETF_ENOTSUP, "is supported on constants only");
}

/* ---- names and liveness ---- */

static void name_kernels(struct builder *b)
{
    static const char *const bin[] = {
        [ETF_BIN_ADD] = "add", [ETF_BIN_SUB] = "sub", [ETF_BIN_MUL] = "mul", [ETF_BIN_DIV] = "div"};
    for (size_t i = 0; i < b->nk; i++) {
        struct etf_kernel *K = &b->k[i];
        char *p = K->name;
        size_t cap = sizeof K->name, at = 0;
        at += (size_t)snprintf(p + at, cap - at, "%s", b->k_base[i]);
        bool bias = (K->op == ETF_K_CONV || K->op == ETF_K_MATMUL) && K->n_inputs == 3;
        if (bias && at < cap)
            at += (size_t)snprintf(p + at, cap - at, "_bias");
        for (int j = 0; j < K->n_post && at < cap; j++) {
            const struct etf_post_op *o = &K->post[j];
            const char *part = o->kind == ETF_POST_SUM      ? "sum"
                               : o->kind == ETF_POST_BINARY ? bin[o->binary]
                                                            : eltwise_name(o->eltwise);
            at += (size_t)snprintf(p + at, cap - at, "_%s", part);
        }
        if (at < cap)
            snprintf(p + at, cap - at, "_%zu", i);
    }
}

static void touch(struct builder *b, int v, size_t k)
{
    if (v < 0)
        return;
    struct etf_value *s = &b->v[storage(b, v)];
    if (s->kind == ETF_VALUE_CONSTANT)
        return;
    if (k < s->first_use)
        s->first_use = k;
    if (k > s->last_use)
        s->last_use = k;
}

static void liveness(struct builder *b, const int *outputs, size_t n_outputs)
{
    for (size_t i = 0; i < b->nv; i++) {
        b->v[i].first_use = b->v[i].kind == ETF_VALUE_INPUT ? 0 : SIZE_MAX;
        b->v[i].last_use = 0;
    }
    for (size_t k = 0; k < b->nk; k++) {
        const struct etf_kernel *K = &b->k[k];
        for (int i = 0; i < K->n_inputs; i++)
            touch(b, K->inputs[i], k);
        for (int i = 0; i < K->n_extra_inputs; i++)
            touch(b, K->extra_inputs[i], k);
        for (int i = 0; i < K->n_post; i++)
            if (K->post[i].kind != ETF_POST_ELTWISE)
                touch(b, K->post[i].value, k);
        touch(b, K->output, k);
    }
    for (size_t i = 0; i < n_outputs; i++)
        touch(b, outputs[i], b->nk);
    for (size_t i = 0; i < b->nv; i++)
        if (b->v[i].first_use == SIZE_MAX)
            b->v[i].first_use = 0;
}

static void builder_free(struct builder *b)
{
    for (size_t i = 0; i < b->nv; i++)
        free(b->v[i].name);
    free(b->v);
    for (size_t i = 0; i < b->nk; i++)
        free(b->k[i].extra_inputs);
    free(b->k);
    free(b->v_writer);
    free(b->k_base);
    free(b->k_src);
    free(b->val);
    free(b->view_of);
    free(b->kern_of);
}

/* Moves the builder's values and kernels, and the arena holding the constants, into a
 * plan. */
static int assemble(struct builder *b, const char *name, struct etf_plan **out)
{
    struct etf__graph *g = b->g;
    struct etf__plan_full *pf = calloc(1, sizeof *pf);
    if (!pf)
        return oom(b);
    struct etf_plan *p = &pf->plan;
    p->name = strdup(name);
    p->inputs = calloc(g->n_inputs ? g->n_inputs : 1, sizeof *p->inputs);
    p->outputs = calloc(g->n_outputs ? g->n_outputs : 1, sizeof *p->outputs);
    pf->weights.state = calloc(b->nv ? b->nv : 1, 1);
    if (!p->name || !p->inputs || !p->outputs || !pf->weights.state ||
        pthread_mutex_init(&pf->weights.lock, NULL) != 0) {
        free(pf->weights.state);
        free(p->outputs);
        free(p->inputs);
        free(p->name);
        free(pf);
        return oom(b);
    }
    pf->weights.arena = g->arena;
    g->arena = NULL;
    p->weights = &pf->weights;
    for (size_t i = 0; i < g->n_inputs; i++)
        p->inputs[p->n_inputs++] = b->val[g->inputs[i]];
    for (size_t i = 0; i < g->n_outputs; i++)
        p->outputs[p->n_outputs++] = b->val[g->outputs[i]];
    p->values = b->v;
    p->n_values = b->nv;
    p->kernels = b->k;
    p->n_kernels = b->nk;
    b->v = NULL;
    b->nv = 0;
    b->k = NULL;
    b->nk = 0;
    *out = p;
    return 0;
}

int etf__plan_build(struct etf__graph *g, const char *name, struct etf_plan **out,
                    struct etf_diag *diag)
{
    *out = NULL;
    int rc;
    struct builder b = {.g = g, .diag = diag};
    etf__graph_count_uses(g);
    if ((rc = rw_batchnorm(g, diag)) || (rc = rw_swish(g, diag)) || (rc = rw_gelu(g, diag)) ||
        (rc = rw_pad(g, diag)) || (rc = rw_slice_matmul(g, diag)))
        return rc;
    rw_dead(g);

    b.n_t = g->n_t;
    b.val = malloc((b.n_t ? b.n_t : 1) * sizeof *b.val);
    b.view_of = malloc((b.n_t ? b.n_t : 1) * sizeof *b.view_of);
    b.kern_of = malloc((b.n_t ? b.n_t : 1) * sizeof *b.kern_of);
    if (!b.val || !b.view_of || !b.kern_of) {
        rc = oom(&b);
        goto free_builder;
    }
    for (size_t i = 0; i < b.n_t; i++)
        b.val[i] = b.view_of[i] = b.kern_of[i] = -1;
    for (size_t i = 0; i < g->n_inputs; i++) {
        const struct etf__tensor *T = &g->t[g->inputs[i]];
        int v = new_value(&b, T->name, ETF_VALUE_INPUT, &T->shape, NULL, -1);
        if (v < 0) {
            rc = v;
            goto free_builder;
        }
        b.val[g->inputs[i]] = v;
    }
    for (size_t i = 0; i < g->n_nodes; i++) {
        if (g->nodes[i].dead)
            continue;
        if ((rc = lower_node(&b, &g->nodes[i])) < 0)
            goto free_builder;
    }
    int *outs = malloc(g->n_outputs * sizeof *outs);
    if (!outs) {
        rc = oom(&b);
        goto free_builder;
    }
    for (size_t i = 0; i < g->n_outputs; i++) {
        int v = value_of(&b, g->outputs[i]);
        if (v < 0) {
            free(outs);
            rc = v;
            goto free_builder;
        }
        outs[i] = v;
    }
    name_kernels(&b);
    liveness(&b, outs, g->n_outputs);
    free(outs);
    rc = assemble(&b, name, out);
free_builder:
    builder_free(&b);
    return rc;
}
