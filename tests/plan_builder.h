/* Kernel plans built by hand for the device tests (CPU and CUDA): values, kernels, post-ops
 * and the plan that owns them, without the model loader. */
#ifndef ETF_TESTS_PLAN_BUILDER_H
#define ETF_TESTS_PLAN_BUILDER_H

#include "model/plan.h"

#include <stdlib.h>
#include <string.h>

#define SH(...)                                                                                    \
    ((struct etf_shape){.ndim = (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)),         \
                        .d = {__VA_ARGS__}})
#define IDS(...) (int[]){__VA_ARGS__}, (int)(sizeof((int[]){__VA_ARGS__}) / sizeof(int))

struct pb {
    struct etf_plan p;
    uint32_t seed;
};

REF_UNUSED static float pb_rand(uint32_t *seed)
{
    *seed = *seed * 1664525u + 1013904223u;
    return (float)((*seed >> 8) & 0xffff) / 32768.f - 1.f; /* [-1, 1) */
}

REF_UNUSED static int pb_value(struct pb *b, enum etf_value_kind kind, struct etf_shape s)
{
    struct etf_plan *p = &b->p;
    p->values = realloc(p->values, (p->n_values + 1) * sizeof *p->values);
    assert_non_null(p->values);
    char name[32];
    snprintf(name, sizeof name, "v%zu", p->n_values);
    p->values[p->n_values] =
        (struct etf_value){.name = strdup(name), .kind = kind, .shape = s, .alias_of = -1};
    return (int)p->n_values++;
}

REF_UNUSED static int pb_act(struct pb *b, struct etf_shape s)
{
    return pb_value(b, ETF_VALUE_ACTIVATION, s);
}

REF_UNUSED static int pb_in(struct pb *b, struct etf_shape s)
{
    int v = pb_value(b, ETF_VALUE_INPUT, s);
    b->p.inputs = realloc(b->p.inputs, (b->p.n_inputs + 1) * sizeof *b->p.inputs);
    b->p.inputs[b->p.n_inputs++] = v;
    return v;
}

/* A constant of random values in [lo, hi). */
REF_UNUSED static int pb_const_range(struct pb *b, struct etf_shape s, float lo, float hi)
{
    int v = pb_value(b, ETF_VALUE_CONSTANT, s);
    size_t n = ref_elems(&s);
    float *d = malloc(n * sizeof *d);
    for (size_t i = 0; i < n; i++)
        d[i] = lo + (hi - lo) * 0.5f * (pb_rand(&b->seed) + 1.f);
    b->p.values[v].data = d;
    return v;
}

REF_UNUSED static int pb_const(struct pb *b, struct etf_shape s)
{
    return pb_const_range(b, s, -1.f, 1.f);
}

REF_UNUSED static int pb_alias(struct pb *b, int of, struct etf_shape s)
{
    int v = pb_act(b, s);
    b->p.values[v].alias_of = of;
    return v;
}

REF_UNUSED static void pb_out(struct pb *b, int v)
{
    b->p.outputs = realloc(b->p.outputs, (b->p.n_outputs + 1) * sizeof *b->p.outputs);
    b->p.outputs[b->p.n_outputs++] = v;
}

/* Appends a kernel; the pointer is good until the next pb_kernel. */
REF_UNUSED static struct etf_kernel *pb_kernel(struct pb *b, enum etf_kernel_op op, int out,
                                               const int *in, int n_in)
{
    struct etf_plan *p = &b->p;
    p->kernels = realloc(p->kernels, (p->n_kernels + 1) * sizeof *p->kernels);
    assert_non_null(p->kernels);
    struct etf_kernel *k = &p->kernels[p->n_kernels];
    memset(k, 0, sizeof *k);
    snprintf(k->name, sizeof k->name, "k%zu", p->n_kernels);
    k->op = op;
    k->output = out;
    if (n_in > ETF_MAX_KERNEL_INPUTS) {
        k->extra_inputs = malloc((size_t)n_in * sizeof(int));
        memcpy(k->extra_inputs, in, (size_t)n_in * sizeof(int));
        k->n_extra_inputs = n_in;
    } else {
        memcpy(k->inputs, in, (size_t)n_in * sizeof(int));
        k->n_inputs = n_in;
    }
    p->n_kernels++;
    return k;
}

REF_UNUSED static struct etf_kernel *pb_conv(struct pb *b, int out, int x, int w, int bias,
                                             int64_t stride, int64_t pad, int64_t dil,
                                             int64_t groups)
{
    struct etf_kernel *k = bias >= 0 ? pb_kernel(b, ETF_K_CONV, out, IDS(x, w, bias))
                                     : pb_kernel(b, ETF_K_CONV, out, IDS(x, w));
    for (int i = 0; i < 2; i++) {
        k->attr.conv.stride[i] = stride;
        k->attr.conv.pad_begin[i] = pad;
        k->attr.conv.pad_end[i] = pad;
        k->attr.conv.dilation[i] = dil;
    }
    k->attr.conv.groups = groups;
    return k;
}

REF_UNUSED static void post_elt(struct etf_kernel *k, enum etf_eltwise_alg alg, float alpha,
                                float beta)
{
    k->post[k->n_post++] = (struct etf_post_op){
        .kind = ETF_POST_ELTWISE, .eltwise = alg, .alpha = alpha, .beta = beta};
}

REF_UNUSED static void post_val(struct etf_kernel *k, int kind, enum etf_binary_alg alg, int v)
{
    k->post[k->n_post++] = (struct etf_post_op){.kind = kind, .binary = alg, .value = v};
}

/* Fills in the liveness the way the model layer does (the device recomputes its own). */
REF_UNUSED static void pb_liveness(struct pb *b)
{
    struct etf_plan *p = &b->p;
    for (size_t v = 0; v < p->n_values; v++) {
        p->values[v].first_use = p->n_kernels;
        p->values[v].last_use = 0;
    }
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        const int *in = kn->n_extra_inputs ? kn->extra_inputs : kn->inputs;
        int n = kn->n_extra_inputs ? kn->n_extra_inputs : kn->n_inputs;
        for (int i = 0; i <= n + kn->n_post; i++) {
            int v = i < n ? in[i] : i < n + kn->n_post ? kn->post[i - n].value : kn->output;
            if (i >= n && i < n + kn->n_post && kn->post[i - n].kind == ETF_POST_ELTWISE)
                continue;
            struct etf_value *x = &p->values[ref_storage(p, v)];
            if (k < x->first_use)
                x->first_use = k;
            if (k > x->last_use)
                x->last_use = k;
        }
    }
    for (size_t i = 0; i < p->n_outputs; i++)
        p->values[ref_storage(p, p->outputs[i])].last_use = p->n_kernels;
}

REF_UNUSED static void pb_free(struct pb *b)
{
    struct etf_plan *p = &b->p;
    for (size_t v = 0; v < p->n_values; v++) {
        free(p->values[v].name);
        free((void *)p->values[v].data);
    }
    for (size_t k = 0; k < p->n_kernels; k++)
        free(p->kernels[k].extra_inputs);
    free(p->values);
    free(p->kernels);
    free(p->inputs);
    free(p->outputs);
    memset(b, 0, sizeof *b);
}

#endif
