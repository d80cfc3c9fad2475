/* A naive reference for every op of the kernel plan (src/model/plan.h), for the device
 * tests: plain C loops over row-major tensors in the plan's logical shapes, accumulating in
 * double, written for obviousness rather than speed.
 *
 * ref_run_plan() runs a whole plan: one buffer per storage value (aliases share theirs),
 * kernels in order, post-ops after each kernel. Header-only; every function is static.
 */
#ifndef ETF_TESTS_REF_KERNELS_H
#define ETF_TESTS_REF_KERNELS_H

#include "model/plan.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define REF_UNUSED __attribute__((unused))

static size_t ref_elems(const struct etf_shape *s)
{
    size_t n = 1;
    for (int i = 0; i < s->ndim; i++)
        n *= (size_t)s->d[i];
    return n;
}

static int ref_storage(const struct etf_plan *p, int v)
{
    while (p->values[v].alias_of >= 0)
        v = p->values[v].alias_of;
    return v;
}

/* Advances a row-major index over dims; false once it wraps around. */
static bool ref_next(int nd, const int64_t *dims, int64_t *idx)
{
    for (int i = nd - 1; i >= 0; i--) {
        if (++idx[i] < dims[i])
            return true;
        idx[i] = 0;
    }
    return false;
}

/* Offset in a tensor of shape s of the element that broadcasts (numpy rules: trailing axes
 * aligned, dims of 1 repeat) to index idx of an nd-dim tensor. */
static size_t ref_bcast_off(const struct etf_shape *s, int nd, const int64_t *idx)
{
    size_t off = 0;
    int lead = nd - s->ndim;
    for (int i = 0; i < s->ndim; i++)
        off = off * (size_t)s->d[i] + (size_t)(s->d[i] == 1 ? 0 : idx[lead + i]);
    return off;
}

static float ref_eltwise(enum etf_eltwise_alg alg, float alpha, float beta, float x)
{
    switch (alg) {
    case ETF_ELT_RELU:
        return x > 0.f ? x : 0.f;
    case ETF_ELT_CLIP:
        return x < alpha ? alpha : x > beta ? beta : x;
    case ETF_ELT_SIGMOID:
        return (float)(1.0 / (1.0 + exp(-(double)x)));
    case ETF_ELT_SWISH:
        return (float)((double)x / (1.0 + exp(-(double)x)));
    case ETF_ELT_GELU_ERF:
        return (float)(0.5 * x * (1.0 + erf((double)x / sqrt(2.0))));
    case ETF_ELT_ERF:
        return (float)erf((double)x);
    case ETF_ELT_TANH:
        return (float)tanh((double)x);
    case ETF_ELT_EXP:
        return (float)exp((double)x);
    case ETF_ELT_SQRT:
        return (float)sqrt((double)x);
    case ETF_ELT_LINEAR:
        return alpha * x + beta;
    }
    return x;
}

static float ref_binary(enum etf_binary_alg alg, float a, float b)
{
    switch (alg) {
    case ETF_BIN_ADD:
        return a + b;
    case ETF_BIN_SUB:
        return a - b;
    case ETF_BIN_MUL:
        return a * b;
    case ETF_BIN_DIV:
        return a / b;
    }
    return a;
}

static void ref_conv(const struct etf_kernel *k, const float *x, const struct etf_shape *xs,
                     const float *w, const struct etf_shape *ws, const float *bias, float *y,
                     const struct etf_shape *ys)
{
    int64_t N = ys->d[0], O = ys->d[1], OH = ys->d[2], OW = ys->d[3];
    int64_t C = xs->d[1], H = xs->d[2], W = xs->d[3], KH = ws->d[2], KW = ws->d[3];
    int64_t g = k->attr.conv.groups > 0 ? k->attr.conv.groups : 1, Cg = C / g, Og = O / g;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double acc = bias ? bias[o] : 0.0;
                    int64_t gi = o / Og;
                    for (int64_t c = 0; c < Cg; c++)
                        for (int64_t i = 0; i < KH; i++)
                            for (int64_t j = 0; j < KW; j++) {
                                int64_t ih = oh * k->attr.conv.stride[0] -
                                             k->attr.conv.pad_begin[0] +
                                             i * k->attr.conv.dilation[0];
                                int64_t iw = ow * k->attr.conv.stride[1] -
                                             k->attr.conv.pad_begin[1] +
                                             j * k->attr.conv.dilation[1];
                                if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                    continue;
                                acc += (double)x[((n * C + gi * Cg + c) * H + ih) * W + iw] *
                                       w[((o * Cg + c) * KH + i) * KW + j];
                            }
                    y[((n * O + o) * OH + oh) * OW + ow] = (float)acc;
                }
}

/* a [..., M, K] x b [..., K, N] (both at least 2-D here), batch dims broadcast. */
static void ref_matmul(const float *a, const struct etf_shape *as, const float *b,
                       const struct etf_shape *bs, const float *bias, float *y,
                       const struct etf_shape *ys)
{
    int nd = ys->ndim;
    int64_t M = ys->d[nd - 2], N = ys->d[nd - 1], K = as->d[as->ndim - 1];
    struct etf_shape ab = *as, bb = *bs, yb = *ys;
    ab.ndim -= 2;
    bb.ndim -= 2;
    yb.ndim -= 2;
    int64_t idx[ETF_MAX_DIMS] = {0};
    size_t batch = 0;
    do {
        size_t ao = ref_bcast_off(&ab, yb.ndim, idx), bo = ref_bcast_off(&bb, yb.ndim, idx);
        const float *ap = a + ao * (size_t)(M * K);
        const float *bp = b + bo * (size_t)(K * N);
        float *yp = y + batch * (size_t)(M * N);
        for (int64_t m = 0; m < M; m++)
            for (int64_t n = 0; n < N; n++) {
                double acc = bias ? bias[n] : 0.0;
                for (int64_t kk = 0; kk < K; kk++)
                    acc += (double)ap[m * K + kk] * bp[kk * N + n];
                yp[m * N + n] = (float)acc;
            }
        batch++;
    } while (yb.ndim > 0 && ref_next(yb.ndim, yb.d, idx));
}

static void ref_pool(const struct etf_kernel *k, const float *x, const struct etf_shape *xs,
                     float *y, const struct etf_shape *ys)
{
    int64_t N = ys->d[0], C = ys->d[1], OH = ys->d[2], OW = ys->d[3], H = xs->d[2], W = xs->d[3];
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double acc = k->attr.pool.alg == ETF_POOL_MAX ? -DBL_MAX : 0.0;
                    int64_t count = 0;
                    for (int64_t i = 0; i < k->attr.pool.kernel[0]; i++)
                        for (int64_t j = 0; j < k->attr.pool.kernel[1]; j++) {
                            int64_t ih =
                                oh * k->attr.pool.stride[0] - k->attr.pool.pad_begin[0] + i;
                            int64_t iw =
                                ow * k->attr.pool.stride[1] - k->attr.pool.pad_begin[1] + j;
                            if (ih < 0 || ih >= H || iw < 0 || iw >= W)
                                continue;
                            double v = x[((n * C + c) * H + ih) * W + iw];
                            if (k->attr.pool.alg == ETF_POOL_MAX)
                                acc = v > acc ? v : acc;
                            else
                                acc += v;
                            count++;
                        }
                    if (k->attr.pool.alg == ETF_POOL_AVG_INCLUDE_PAD)
                        acc /= (double)(k->attr.pool.kernel[0] * k->attr.pool.kernel[1]);
                    else if (k->attr.pool.alg == ETF_POOL_AVG_EXCLUDE_PAD)
                        acc /= (double)count;
                    y[((n * C + c) * OH + oh) * OW + ow] = (float)acc;
                }
}

/* Splits a shape around axis: outer * dim * inner. */
static void ref_split(const struct etf_shape *s, int axis, size_t *outer, size_t *dim,
                      size_t *inner)
{
    *outer = *inner = 1;
    for (int i = 0; i < axis; i++)
        *outer *= (size_t)s->d[i];
    for (int i = axis + 1; i < s->ndim; i++)
        *inner *= (size_t)s->d[i];
    *dim = (size_t)s->d[axis];
}

static void ref_softmax(const float *x, float *y, const struct etf_shape *s, int axis)
{
    size_t outer, dim, inner;
    ref_split(s, axis, &outer, &dim, &inner);
    for (size_t o = 0; o < outer; o++)
        for (size_t i = 0; i < inner; i++) {
            const float *xp = x + o * dim * inner + i;
            float *yp = y + o * dim * inner + i;
            double mx = -DBL_MAX, sum = 0.0;
            for (size_t d = 0; d < dim; d++)
                mx = xp[d * inner] > mx ? xp[d * inner] : mx;
            for (size_t d = 0; d < dim; d++)
                sum += exp(xp[d * inner] - mx);
            for (size_t d = 0; d < dim; d++)
                yp[d * inner] = (float)(exp(xp[d * inner] - mx) / sum);
        }
}

static void ref_layernorm(const float *x, const float *g, const float *b, float *y,
                          const struct etf_shape *s, float eps)
{
    size_t D = (size_t)s->d[s->ndim - 1], rows = ref_elems(s) / D;
    for (size_t r = 0; r < rows; r++) {
        double mean = 0.0, var = 0.0;
        for (size_t i = 0; i < D; i++)
            mean += x[r * D + i];
        mean /= (double)D;
        for (size_t i = 0; i < D; i++)
            var += (x[r * D + i] - mean) * (x[r * D + i] - mean);
        var /= (double)D;
        for (size_t i = 0; i < D; i++)
            y[r * D + i] = (float)((x[r * D + i] - mean) / sqrt(var + eps) * g[i] + b[i]);
    }
}

static void ref_transpose(const float *x, const struct etf_shape *xs, float *y,
                          const struct etf_shape *ys, const int *perm)
{
    int nd = ys->ndim;
    int64_t idx[ETF_MAX_DIMS] = {0}, xstr[ETF_MAX_DIMS];
    int64_t st = 1;
    for (int i = nd - 1; i >= 0; i--) {
        xstr[i] = st;
        st *= xs->d[i];
    }
    size_t o = 0;
    do {
        int64_t off = 0;
        for (int i = 0; i < nd; i++)
            off += idx[i] * xstr[perm[i]];
        y[o++] = x[off];
    } while (ref_next(nd, ys->d, idx));
}

static void ref_reduce_mean(const float *x, const struct etf_shape *xs, float *y, unsigned mask)
{
    struct etf_shape rs = *xs;
    size_t count = 1;
    for (int i = 0; i < xs->ndim; i++)
        if ((mask >> i) & 1u) {
            count *= (size_t)xs->d[i];
            rs.d[i] = 1;
        }
    size_t n = ref_elems(&rs);
    double *acc = calloc(n, sizeof *acc);
    int64_t idx[ETF_MAX_DIMS] = {0};
    size_t o = 0;
    do {
        acc[ref_bcast_off(&rs, xs->ndim, idx)] += x[o++];
    } while (ref_next(xs->ndim, xs->d, idx));
    for (size_t i = 0; i < n; i++)
        y[i] = (float)(acc[i] / (double)count);
    free(acc);
}

static void ref_pad(const struct etf_kernel *k, const float *x, const struct etf_shape *xs,
                    float *y, const struct etf_shape *ys)
{
    int nd = ys->ndim;
    int64_t idx[ETF_MAX_DIMS] = {0};
    size_t o = 0;
    do {
        bool inside = true;
        size_t off = 0;
        for (int i = 0; i < nd; i++) {
            int64_t xi = idx[i] - k->attr.pad.begin[i];
            inside &= xi >= 0 && xi < xs->d[i];
            off = off * (size_t)xs->d[i] + (size_t)(inside ? xi : 0);
        }
        y[o++] = inside ? x[off] : k->attr.pad.value;
    } while (ref_next(nd, ys->d, idx));
}

/* Runs plan p on the inputs (in plan order) and returns the contents of every value with
 * storage of its own (NULL for aliases; constants are copies), to be freed with
 * ref_free_values. */
REF_UNUSED static float **ref_run_plan_values(const struct etf_plan *p, const float *const *inputs)
{
    float **buf = calloc(p->n_values, sizeof *buf);
    for (size_t v = 0; v < p->n_values; v++) {
        const struct etf_value *x = &p->values[v];
        if (x->alias_of >= 0)
            continue;
        buf[v] = calloc(ref_elems(&x->shape), sizeof(float));
        if (x->kind == ETF_VALUE_CONSTANT)
            memcpy(buf[v], x->data, ref_elems(&x->shape) * sizeof(float));
    }
    for (size_t i = 0; i < p->n_inputs; i++)
        memcpy(buf[p->inputs[i]], inputs[i],
               ref_elems(&p->values[p->inputs[i]].shape) * sizeof(float));
#define REF_BUF(v) buf[ref_storage(p, (v))]
#define REF_SHAPE(v) (&p->values[(v)].shape)
    for (size_t ki = 0; ki < p->n_kernels; ki++) {
        const struct etf_kernel *k = &p->kernels[ki];
        const int *in = k->n_extra_inputs > 0 ? k->extra_inputs : k->inputs;
        int n_in = k->n_extra_inputs > 0 ? k->n_extra_inputs : k->n_inputs;
        const struct etf_shape *ys = REF_SHAPE(k->output);
        size_t n = ref_elems(ys);
        float *y = calloc(n, sizeof *y);
        switch (k->op) {
        case ETF_K_CONV:
            ref_conv(k, REF_BUF(in[0]), REF_SHAPE(in[0]), REF_BUF(in[1]), REF_SHAPE(in[1]),
                     n_in > 2 ? REF_BUF(in[2]) : NULL, y, ys);
            break;
        case ETF_K_MATMUL:
            ref_matmul(REF_BUF(in[0]), REF_SHAPE(in[0]), REF_BUF(in[1]), REF_SHAPE(in[1]),
                       n_in > 2 ? REF_BUF(in[2]) : NULL, y, ys);
            break;
        case ETF_K_POOL:
            ref_pool(k, REF_BUF(in[0]), REF_SHAPE(in[0]), y, ys);
            break;
        case ETF_K_BATCHNORM: {
            size_t outer, C, inner;
            ref_split(ys, 1, &outer, &C, &inner);
            const float *x = REF_BUF(in[0]), *sc = REF_BUF(in[1]), *sh = REF_BUF(in[2]);
            for (size_t i = 0; i < n; i++) {
                size_t c = i / inner % C;
                y[i] = x[i] * sc[c] + sh[c];
            }
            break;
        }
        case ETF_K_LAYERNORM:
            ref_layernorm(REF_BUF(in[0]), REF_BUF(in[1]), REF_BUF(in[2]), y, ys,
                          k->attr.norm.epsilon);
            break;
        case ETF_K_ELTWISE: {
            const float *x = REF_BUF(in[0]);
            for (size_t i = 0; i < n; i++)
                y[i] = ref_eltwise(k->attr.eltwise.alg, k->attr.eltwise.alpha, k->attr.eltwise.beta,
                                   x[i]);
            break;
        }
        case ETF_K_BINARY: {
            int64_t idx[ETF_MAX_DIMS] = {0};
            const float *a = REF_BUF(in[0]), *b = REF_BUF(in[1]);
            size_t o = 0;
            do {
                y[o++] = ref_binary(k->attr.binary.alg,
                                    a[ref_bcast_off(REF_SHAPE(in[0]), ys->ndim, idx)],
                                    b[ref_bcast_off(REF_SHAPE(in[1]), ys->ndim, idx)]);
            } while (ref_next(ys->ndim, ys->d, idx));
            break;
        }
        case ETF_K_CONCAT: {
            size_t outer, dim, inner, at = 0;
            ref_split(ys, k->attr.axis.axis, &outer, &dim, &inner);
            for (int j = 0; j < n_in; j++) {
                size_t o2, d2, i2;
                ref_split(REF_SHAPE(in[j]), k->attr.axis.axis, &o2, &d2, &i2);
                const float *x = REF_BUF(in[j]);
                for (size_t o = 0; o < outer; o++)
                    memcpy(y + (o * dim + at) * inner, x + o * d2 * inner,
                           d2 * inner * sizeof(float));
                at += d2;
            }
            break;
        }
        case ETF_K_SOFTMAX:
            ref_softmax(REF_BUF(in[0]), y, ys, k->attr.axis.axis);
            break;
        case ETF_K_TRANSPOSE:
            ref_transpose(REF_BUF(in[0]), REF_SHAPE(in[0]), y, ys, k->attr.transpose.perm);
            break;
        case ETF_K_REDUCE_MEAN:
            ref_reduce_mean(REF_BUF(in[0]), REF_SHAPE(in[0]), y, k->attr.reduce.axes_mask);
            break;
        case ETF_K_PAD:
            ref_pad(k, REF_BUF(in[0]), REF_SHAPE(in[0]), y, ys);
            break;
        }
        for (int j = 0; j < k->n_post; j++) {
            const struct etf_post_op *po = &k->post[j];
            if (po->kind == ETF_POST_ELTWISE) {
                for (size_t i = 0; i < n; i++)
                    y[i] = ref_eltwise(po->eltwise, po->alpha, po->beta, y[i]);
                continue;
            }
            const float *v = REF_BUF(po->value);
            int64_t idx[ETF_MAX_DIMS] = {0};
            size_t o = 0;
            do {
                float r = v[ref_bcast_off(REF_SHAPE(po->value), ys->ndim, idx)];
                y[o] = po->kind == ETF_POST_SUM ? y[o] + r : ref_binary(po->binary, y[o], r);
                o++;
            } while (ref_next(ys->ndim, ys->d, idx));
        }
        memcpy(REF_BUF(k->output), y, n * sizeof *y);
        free(y);
    }
#undef REF_BUF
#undef REF_SHAPE
    return buf;
}

REF_UNUSED static void ref_free_values(const struct etf_plan *p, float **buf)
{
    for (size_t v = 0; v < p->n_values; v++)
        free(buf[v]);
    free(buf);
}

/* Runs plan p on the inputs (in plan order) and writes its outputs. */
REF_UNUSED static void ref_run_plan(const struct etf_plan *p, const float *const *inputs,
                                    float *const *outputs)
{
    float **buf = ref_run_plan_values(p, inputs);
    for (size_t i = 0; i < p->n_outputs; i++)
        memcpy(outputs[i], buf[ref_storage(p, p->outputs[i])],
               ref_elems(&p->values[p->outputs[i]].shape) * sizeof(float));
    ref_free_values(p, buf);
}

#endif
