/* Plans: the model layer's public entry points (etf/model.h) and the plan helpers of
 * plan.h.
 *
 * etf_model_parse ties the stages together: decode and check (onnx_load.c), infer and fold
 * (graph.c), rewrite and lower (plan_build.c). The graph and the decoded message are freed
 * before returning; the plan keeps only its values, kernels and the constant buffers they
 * use.
 */
#include "model/graph.h"

#include <stdlib.h>
#include <string.h>

size_t etf__shape_elems(const struct etf_shape *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= (size_t)s->d[i];
    return n;
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

#define BAD_ID(p, id) ((id) < 0 || (size_t)(id) >= (p)->n_values)

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
        if (x->kind == ETF_VALUE_CONSTANT && x->alias_of < 0 && !x->data)
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: plan '%.64s': value %zu: a constant without data", who, name, v);
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
        const int *ins = kn->n_extra_inputs > 0 ? kn->extra_inputs : kn->inputs;
        int n = kn->n_extra_inputs > 0 ? kn->n_extra_inputs : kn->n_inputs;
        for (int i = 0; i < n; i++)
            if (BAD_ID(p, ins[i]))
                return etf_diagf(diag, ETF_EINVAL, "%s: kernel '%.64s': input %d: bad value id %d",
                                 who, kn->name, i, ins[i]);
        for (int i = 0; i < kn->n_post; i++)
            if (kn->post[i].kind != ETF_POST_ELTWISE && BAD_ID(p, kn->post[i].value))
                return etf_diagf(diag, ETF_EINVAL,
                                 "%s: kernel '%.64s': post-op %d: bad value id %d", who, kn->name,
                                 i, kn->post[i].value);
    }
    for (size_t i = 0; i < p->n_inputs; i++)
        if (BAD_ID(p, p->inputs[i]) || p->values[p->inputs[i]].kind != ETF_VALUE_INPUT ||
            p->values[p->inputs[i]].alias_of >= 0)
            return etf_diagf(diag, ETF_EINVAL,
                             "%s: plan '%.64s': model input %zu is not an input value", who, name,
                             i);
    for (size_t i = 0; i < p->n_outputs; i++)
        if (BAD_ID(p, p->outputs[i]))
            return etf_diagf(diag, ETF_EINVAL, "%s: plan '%.64s': model output %zu: bad value id",
                             who, name, i);
    return 0;
}

#undef BAD_ID

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
    etf__arena_free(pf->arena);
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
    struct etf__graph *g;
    static const unsigned char empty;
    int rc = etf__onnx_load(bytes ? bytes : &empty, len, origin, base_dir, opts, &g, diag);
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

int etf_model_open(const char *path, const struct etf_model_options *opts, struct etf_plan **out,
                   struct etf_diag *diag)
{
    if (!out)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_open: no place for the plan");
    *out = NULL;
    if (!path || !*path)
        return etf_diagf(diag, ETF_EINVAL, "etf_model_open: no path");
    size_t max = opts && opts->max_bytes ? opts->max_bytes : ETF_MODEL_DEFAULT_MAX_BYTES;
    struct etf__file_buf file;
    int rc = etf__file_read(path, max, &file, diag);
    if (rc)
        return rc;
    /* external data lives next to the model */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, slash == path ? 1 : (size_t)(slash - path)) : strdup(".");
    if (!dir) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
        goto free_file;
    }
    rc = etf_model_parse(file.bytes, file.len, path, dir, opts, out, diag);
    free(dir);
free_file:
    etf__file_release(&file);
    return rc;
}
