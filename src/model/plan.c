/* Plans: the model layer's public entry points (etf/model.h) and the plan helpers of
 * plan.h.
 *
 * etf_model_parse ties the stages together: decode and check (onnx_load.c), infer and fold
 * (graph.c), rewrite and lower (plan_build.c). The graph is freed before returning; the plan
 * keeps its values and kernels, and the arena that holds the constants' data (and the dead
 * bytes around it: the file's framing and the decoded message, which dropping the weights
 * gives back, see etf_plan_drop_weights).
 */
#include "model/graph.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

size_t etf__shape_elems(const struct etf_shape *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= (size_t)s->d[i];
    return n;
}

const char *etf__plan_op_name(enum etf_kernel_op op)
{
    static const char *const names[] = {
        [ETF_K_CONV] = "conv",
        [ETF_K_MATMUL] = "matmul",
        [ETF_K_POOL] = "pool",
        [ETF_K_BATCHNORM] = "batchnorm",
        [ETF_K_LAYERNORM] = "layernorm",
        [ETF_K_ELTWISE] = "eltwise",
        [ETF_K_BINARY] = "binary",
        [ETF_K_CONCAT] = "concat",
        [ETF_K_SOFTMAX] = "softmax",
        [ETF_K_TRANSPOSE] = "transpose",
        [ETF_K_REDUCE_MEAN] = "reduce_mean",
        [ETF_K_PAD] = "pad",
    };
    if ((unsigned)op < sizeof names / sizeof names[0] && names[op])
        return names[op];
    return "?";
}

void etf__kernel_inputs(const struct etf_kernel *kn, const int **ids, int *n)
{
    if (kn->n_extra_inputs > 0) {
        *ids = kn->extra_inputs;
        *n = kn->n_extra_inputs;
    } else {
        *ids = kn->inputs;
        *n = kn->n_inputs;
    }
}

int etf__plan_storage(const struct etf_plan *plan, int v)
{
    for (size_t hops = 0; v >= 0 && hops <= plan->n_values; hops++) {
        if (plan->values[v].alias_of < 0)
            return v;
        v = plan->values[v].alias_of;
    }
    return -1; /* a loop of aliases: etf__plan_check rejects it */
}

/* Writes why a product's shapes do not multiply, when the caller wants to know. */
__attribute__((format(printf, 3, 4))) static int no_product(char *why, size_t len, const char *fmt,
                                                            ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return ETF_EINVAL;
}

int etf__plan_matmul_dims(const struct etf_plan *p, const struct etf_kernel *kn, int *nd,
                          int64_t *ad, int64_t *wd, int64_t *yd, char *why, size_t why_len)
{
    if (kn->n_inputs < 2)
        return no_product(why, why_len, "%d inputs, at least 2 expected", kn->n_inputs);
    struct etf_shape as = p->values[kn->inputs[0]].shape, ws = p->values[kn->inputs[1]].shape;
    if (as.ndim < 1 || ws.ndim < 1)
        return no_product(why, why_len, "matmul of scalars");
    if (as.ndim == 1) {
        as.d[1] = as.d[0];
        as.d[0] = 1;
        as.ndim = 2;
    }
    if (ws.ndim == 1) {
        ws.d[1] = 1;
        ws.ndim = 2;
    }
    int n = as.ndim > ws.ndim ? as.ndim : ws.ndim;
    for (int i = 0; i < n; i++) {
        ad[i] = i < n - as.ndim ? 1 : as.d[i - (n - as.ndim)];
        wd[i] = i < n - ws.ndim ? 1 : ws.d[i - (n - ws.ndim)];
    }
    if (ad[n - 1] != wd[n - 2])
        return no_product(why, why_len, "inner dimensions %lld and %lld differ",
                          (long long)ad[n - 1], (long long)wd[n - 2]);
    for (int i = 0; i < n - 2; i++) {
        if (ad[i] != wd[i] && ad[i] != 1 && wd[i] != 1)
            return no_product(why, why_len, "batch dimension %d: %lld and %lld do not broadcast", i,
                              (long long)ad[i], (long long)wd[i]);
        yd[i] = ad[i] > wd[i] ? ad[i] : wd[i];
    }
    yd[n - 2] = ad[n - 2];
    yd[n - 1] = wd[n - 1];
    *nd = n;
    return 0;
}

#define BAD_ID(p, id) ((id) < 0 || (size_t)(id) >= (p)->n_values)

/* Whether value v (aliases checked already) is data, or a constant that has some. */
static bool const_has_data(const struct etf_plan *p, int v)
{
    const struct etf_value *s = &p->values[etf__plan_storage(p, v)];
    return s->kind != ETF_VALUE_CONSTANT || s->data;
}

static int no_data(const struct etf_plan *p, int v, const char *who, struct etf_diag *diag)
{
    int s = etf__plan_storage(p, v);
    const char *vn = p->values[s].name ? p->values[s].name : "?";
    if (p->weights) /* the model layer's constants all have data until dropped */
        return etf_diagf(diag, ETF_EINVAL,
                         "%s: plan '%.64s': constant '%.64s' was freed: the plan's weights were "
                         "dropped, so it cannot be loaded again",
                         who, p->name ? p->name : "?", vn);
    return etf_diagf(diag, ETF_EINVAL, "%s: plan '%.64s': constant '%.64s' has no data", who,
                     p->name ? p->name : "?", vn);
}

int etf__plan_check(const struct etf_plan *p, const char *who, struct etf_diag *diag)
{
    const char *name = p->name ? p->name : "?";
    for (size_t v = 0; v < p->n_values; v++) {
        const struct etf_value *x = &p->values[v];
        if (x->alias_of < -1 || x->alias_of >= (int)p->n_values || etf__plan_storage(p, (int)v) < 0)
            return etf_diagf(diag, ETF_EINVAL, "%s: plan '%.64s': value %zu: bad alias_of %d", who,
                             name, v, x->alias_of);
        if (x->shape.ndim < 0 || x->shape.ndim > ETF_MAX_DIMS)
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: plan '%.64s': value %zu: %d dims, expected 0..%d", who, name, v,
                             x->shape.ndim, ETF_MAX_DIMS);
        for (int i = 0; i < x->shape.ndim; i++)
            if (x->shape.d[i] < 1)
                return etf_diagf(diag, ETF_ENOTSUP,
                                 "%s: plan '%.64s': value %zu: dimension %d is %lld, expected "
                                 ">= 1",
                                 who, name, v, i, (long long)x->shape.d[i]);
        if (x->alias_of >= 0 &&
            etf__shape_elems(&x->shape) !=
                etf__shape_elems(&p->values[etf__plan_storage(p, (int)v)].shape))
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: plan '%.64s': value %zu: an alias of another size", who, name, v);
    }
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        if ((unsigned)kn->op > ETF_K_PAD)
            return etf_diagf(diag, ETF_ENOTSUP, "%s: kernel '%.64s': unknown op %d", who, kn->name,
                             (int)kn->op);
        if (kn->n_inputs < 0 || kn->n_inputs > ETF_MAX_KERNEL_INPUTS || kn->n_post < 0 ||
            kn->n_post > ETF_MAX_POST_OPS || kn->n_extra_inputs < 0 ||
            (kn->n_extra_inputs > 0 && !kn->extra_inputs) || BAD_ID(p, kn->output))
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: kernel '%.64s': bad input, output or post-op counts", who,
                             kn->name);
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n; i++) {
            if (BAD_ID(p, ins[i]))
                return etf_diagf(diag, ETF_EINVAL, "%s: kernel '%.64s': input %d: bad value id %d",
                                 who, kn->name, i, ins[i]);
            if (!const_has_data(p, ins[i]))
                return no_data(p, ins[i], who, diag);
        }
        for (int i = 0; i < kn->n_post; i++) {
            if (kn->post[i].kind == ETF_POST_ELTWISE)
                continue;
            if (BAD_ID(p, kn->post[i].value))
                return etf_diagf(diag, ETF_EINVAL,
                                 "%s: kernel '%.64s': post-op %d: bad value id %d", who, kn->name,
                                 i, kn->post[i].value);
            if (!const_has_data(p, kn->post[i].value))
                return no_data(p, kn->post[i].value, who, diag);
        }
    }
    for (size_t i = 0; i < p->n_inputs; i++)
        if (BAD_ID(p, p->inputs[i]) || p->values[p->inputs[i]].kind != ETF_VALUE_INPUT ||
            p->values[p->inputs[i]].alias_of >= 0)
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: plan '%.64s': model input %zu is not an input value", who, name,
                             i);
    for (size_t i = 0; i < p->n_outputs; i++) {
        if (BAD_ID(p, p->outputs[i]))
            return etf_diagf(diag, ETF_EINVAL, "%s: plan '%.64s': model output %zu: bad value id",
                             who, name, i);
        if (!const_has_data(p, p->outputs[i]))
            return no_data(p, p->outputs[i], who, diag);
    }
    return 0;
}

#undef BAD_ID

/* ---- weights ---- */

static size_t const_bytes(const struct etf_value *x)
{
    return etf__shape_elems(&x->shape) * sizeof(float);
}

/* Frees the data of constant v and of the values that share it, unless (with `all` false) a
 * kernel reads one that no device holds yet: their pages, and the pages around them that no
 * other constant uses (framing, the decoded message, folded-away initializers), go back to
 * the system, and their data pointers become NULL. Called with the lock held. */
static void release_group(struct etf_plan *p, int v, bool all)
{
    struct etf__plan_weights *w = p->weights;
    const float *data = p->values[v].data;
    if (!data)
        return;
    size_t bytes = 0;
    for (size_t u = 0; u < p->n_values; u++) {
        if (p->values[u].data != data)
            continue;
        unsigned st = w->state[u];
        if (!all && (st & ETF__W_NEEDED) && !(st & ETF__W_TAKEN))
            return;
        if (const_bytes(&p->values[u]) > bytes)
            bytes = const_bytes(&p->values[u]);
    }
    for (size_t u = 0; u < p->n_values; u++)
        if (p->values[u].data == data)
            p->values[u].data = NULL;
    /* From the end of the live constant below to the start of the one above; nothing when
     * a live one overlaps (its own release covers these bytes then). */
    uintptr_t lo = (uintptr_t)data, hi = lo + bytes, from = 0, to = UINTPTR_MAX;
    for (size_t u = 0; u < p->n_values; u++) {
        if (!p->values[u].data)
            continue;
        uintptr_t ulo = (uintptr_t)p->values[u].data, uhi = ulo + const_bytes(&p->values[u]);
        if (ulo < hi && uhi > lo)
            return;
        if (uhi <= lo && uhi > from)
            from = uhi;
        if (ulo >= hi && ulo < to)
            to = ulo;
    }
    etf__arena_release(w->arena, (const void *)from, (const void *)to);
}

static int cmp_range(const void *a, const void *b)
{
    const uintptr_t *x = a, *y = b;
    return (x[0] > y[0]) - (x[0] < y[0]);
}

/* Gives back the arena's pages that hold no constant's data: the framing of the file, the
 * decoded message, initializers that folding replaced. */
static void release_dead(struct etf_plan *p)
{
    uintptr_t(*live)[2] = malloc((p->n_values ? p->n_values : 1) * sizeof *live);
    if (!live)
        return; /* they are only given back later, as the constants around them go */
    size_t n = 0;
    for (size_t v = 0; v < p->n_values; v++)
        if (p->values[v].data) {
            live[n][0] = (uintptr_t)p->values[v].data;
            live[n][1] = live[n][0] + const_bytes(&p->values[v]);
            n++;
        }
    qsort(live, n, sizeof *live, cmp_range);
    uintptr_t from = 0;
    for (size_t i = 0; i <= n; i++) {
        uintptr_t to = i < n ? live[i][0] : UINTPTR_MAX;
        if (to > from)
            etf__arena_release(p->weights->arena, (const void *)from, (const void *)to);
        if (i < n && live[i][1] > from)
            from = live[i][1];
    }
    free(live);
}

static void mark_needed(struct etf_plan *p, int v)
{
    p->weights->state[etf__plan_storage(p, v)] |= ETF__W_NEEDED;
}

/* Which constants kernels read. (None is a model output: the model layer refuses those.) */
static void mark_roles(struct etf_plan *p)
{
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n; i++)
            mark_needed(p, ins[i]);
        for (int i = 0; i < kn->n_post; i++)
            if (kn->post[i].kind != ETF_POST_ELTWISE)
                mark_needed(p, kn->post[i].value);
    }
}

void etf_plan_drop_weights(struct etf_plan *plan)
{
    struct etf__plan_weights *w = plan ? plan->weights : NULL;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    mark_roles(plan);
    release_dead(plan);
    for (size_t v = 0; v < plan->n_values; v++)
        release_group(plan, (int)v, true);
    pthread_mutex_unlock(&w->lock);
}

void etf_plan_drop_weights_on_load(struct etf_plan *plan)
{
    struct etf__plan_weights *w = plan ? plan->weights : NULL;
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    mark_roles(plan);
    for (size_t v = 0; v < plan->n_values; v++) /* what earlier loads took is theirs */
        w->state[v] &= (unsigned char)~ETF__W_TAKEN;
    w->on_load = true;
    release_dead(plan);
    for (size_t v = 0; v < plan->n_values; v++) /* constants no kernel reads */
        release_group(plan, (int)v, false);
    pthread_mutex_unlock(&w->lock);
}

void etf__plan_weight_taken(const struct etf_plan *plan, int v)
{
    struct etf__plan_weights *w = plan->weights;
    if (!w || v < 0 || (size_t)v >= plan->n_values)
        return;
    pthread_mutex_lock(&w->lock);
    w->state[v] |= ETF__W_TAKEN;
    /* The plan's bookkeeping is the one part of it a load may change: every plan with
     * weights was allocated by the model layer as a mutable object (plan_build.c). */
    if (w->on_load)
        release_group((struct etf_plan *)plan, v, false);
    pthread_mutex_unlock(&w->lock);
}

void etf_plan_free(struct etf_plan *plan)
{
    if (!plan)
        return;
    /* every plan is the first member of an etf__plan_full (plan_build.c allocates them) */
    struct etf__plan_full *pf = (struct etf__plan_full *)plan;
    for (size_t i = 0; i < plan->n_values; i++)
        free(plan->values[i].name);
    free(plan->values);
    for (size_t i = 0; i < plan->n_kernels; i++)
        free(plan->kernels[i].extra_inputs);
    free(plan->kernels);
    free(plan->inputs);
    free(plan->outputs);
    free(plan->name);
    pthread_mutex_destroy(&pf->weights.lock);
    free(pf->weights.state);
    etf__arena_free(pf->weights.arena);
    free(pf);
}

const char *etf_plan_name(const struct etf_plan *plan)
{
    return plan->name;
}

size_t etf_plan_kernel_count(const struct etf_plan *plan)
{
    return plan->n_kernels;
}

const char *etf_plan_kernel_name(const struct etf_plan *plan, size_t k)
{
    return k < plan->n_kernels ? plan->kernels[k].name : NULL;
}

size_t etf_plan_input_count(const struct etf_plan *plan)
{
    return plan->n_inputs;
}

size_t etf_plan_output_count(const struct etf_plan *plan)
{
    return plan->n_outputs;
}

static int tensor_info(const struct etf_plan *plan, int v, struct etf_tensor_info *out)
{
    const struct etf_value *val = &plan->values[v];
    out->name = val->name;
    out->ndim = val->shape.ndim;
    out->dims = val->shape.d;
    out->elems = etf__shape_elems(&val->shape);
    return 0;
}

int etf_plan_input(const struct etf_plan *plan, size_t i, struct etf_tensor_info *out)
{
    if (i >= plan->n_inputs || !out)
        return ETF_EINVAL;
    return tensor_info(plan, plan->inputs[i], out);
}

int etf_plan_output(const struct etf_plan *plan, size_t i, struct etf_tensor_info *out)
{
    if (i >= plan->n_outputs || !out)
        return ETF_EINVAL;
    return tensor_info(plan, plan->outputs[i], out);
}

/* The plan's name: the file's stem ("resnet50.onnx" -> "resnet50"), or the folder's name
 * for the conventional "<name>/model.onnx". */
static char *plan_name(const char *origin)
{
    const char *slash = strrchr(origin, '/');
    const char *base = slash ? slash + 1 : origin;
    const char *dot = strrchr(base, '.');
    size_t len = dot && dot > base ? (size_t)(dot - base) : strlen(base);
    if (len == 5 && !strncmp(base, "model", 5) && slash && slash > origin) {
        const char *dir_end = slash, *dir = slash;
        while (dir > origin && dir[-1] != '/')
            dir--;
        if (dir_end > dir && !(dir_end - dir == 1 && *dir == '.'))
            return strndup(dir, (size_t)(dir_end - dir));
    }
    return strndup(base, len ? len : strlen(base));
}

/* The first chunk of a model's arena: the decoded message without the weights (nodes, names,
 * shapes) takes kilobytes; the file's bytes get a chunk of their own. */
#define MODEL_ARENA_FIRST ((size_t)64 << 10)

/* Loads the model whose bytes are in arena a, taking a over. */
static int parse_in(struct etf__arena *a, uint8_t *bytes, size_t len, const char *origin,
                    const char *base_dir, const struct etf_model_options *opts,
                    struct etf_plan **out, struct etf_diag *diag)
{
    struct etf__graph *g;
    int rc = etf__onnx_load(a, bytes, len, origin, base_dir, opts, &g, diag);
    if (rc)
        return rc;
    char *name = plan_name(origin);
    if (!name) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", origin);
        goto free_graph;
    }
    if ((rc = etf__graph_infer(g, diag)))
        goto free_name;
    rc = etf__plan_build(g, name, out, diag);
free_name:
    free(name);
free_graph:
    etf__graph_free(g);
    return rc;
}

int etf_model_parse(const void *bytes, size_t len, const char *origin, const char *base_dir,
                    const struct etf_model_options *opts, struct etf_plan **out,
                    struct etf_diag *diag)
{
    if (!out)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_parse: no place for the plan");
    *out = NULL;
    if (!bytes && len)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_parse: no bytes");
    if (!origin || !*origin)
        origin = "model";
    size_t max = opts && opts->max_bytes ? opts->max_bytes : ETF_MODEL_DEFAULT_MAX_BYTES;
    if (len > max)
        return etf_diagf(diag, ETF_ELIMIT, "%s: the model is %zu bytes, over the limit of %zu",
                         origin, len, max);
    /* A copy the loader may rewrite and the plan keep: the caller's bytes are borrowed. */
    struct etf__arena *a = etf__arena_new(MODEL_ARENA_FIRST);
    uint8_t *copy = a ? etf__arena_alloc(a, len) : NULL;
    if (!copy) {
        etf__arena_free(a);
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory for %zu bytes", origin, len);
    }
    if (len)
        memcpy(copy, bytes, len);
    return parse_in(a, copy, len, origin, base_dir, opts, out, diag);
}

int etf_model_open(const char *path, const struct etf_model_options *opts, struct etf_plan **out,
                   struct etf_diag *diag)
{
    if (!out)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_open: no place for the plan");
    *out = NULL;
    if (!path || !*path)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_open: no path");
    size_t max = opts && opts->max_bytes ? opts->max_bytes : ETF_MODEL_DEFAULT_MAX_BYTES;
    /* external data lives next to the model */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    struct etf__arena *a = etf__arena_new(MODEL_ARENA_FIRST);
    int rc = 0;
    if (!dir || !a) {
        etf__arena_free(a);
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
        goto free_dir;
    }
    void *bytes;
    size_t len;
    if ((rc = etf__file_read_arena(path, max, a, &bytes, &len, diag))) {
        etf__arena_free(a);
        goto free_dir;
    }
    rc = parse_in(a, bytes, len, path, dir, opts, out, diag);
free_dir:
    free(dir);
    return rc;
}
