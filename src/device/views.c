/* Strided views of plan values (views.h). */
#include "device/views.h"

#include <stdlib.h>
#include <string.h>

/* ---- One view ---- */

/* Drops atoms of size 1 and merges neighbours of one dimension that walk memory as one
 * (outer stride = inner stride * inner size), so that a dimension that is contiguous in
 * effect is one atom. */
static void normalize(struct etf__view *v)
{
    int out = 0, begin = 0;
    for (int d = 0; d < v->ndim; d++) {
        int end = v->group_end[d], first = out;
        for (int a = begin; a < end; a++) {
            if (v->size[a] == 1)
                continue;
            if (out > first && v->stride[out - 1] == v->stride[a] * v->size[a]) {
                v->size[out - 1] *= v->size[a];
                v->stride[out - 1] = v->stride[a];
                continue;
            }
            v->size[out] = v->size[a];
            v->stride[out++] = v->stride[a];
        }
        begin = end;
        v->group_end[d] = out;
    }
    v->n_atoms = out;
}

static int group_begin(const struct etf__view *v, int d)
{
    return d == 0 ? 0 : v->group_end[d - 1];
}

void etf__view_contiguous(struct etf__view *out, int base, const struct etf_shape *shape)
{
    *out = (struct etf__view){.base = base, .scale = 1.0f, .ndim = shape->ndim};
    int64_t stride = 1;
    for (int i = shape->ndim - 1; i >= 0; i--) {
        out->size[i] = shape->d[i];
        out->stride[i] = stride;
        stride *= shape->d[i];
    }
    for (int i = 0; i < shape->ndim; i++)
        out->group_end[i] = i + 1;
    out->n_atoms = shape->ndim;
    normalize(out);
}

void etf__view_permute(const struct etf__view *x, const int *perm, struct etf__view *y)
{
    struct etf__view r = *x;
    r.n_atoms = 0;
    for (int i = 0; i < x->ndim; i++) {
        for (int a = group_begin(x, perm[i]); a < x->group_end[perm[i]]; a++) {
            r.size[r.n_atoms] = x->size[a];
            r.stride[r.n_atoms++] = x->stride[a];
        }
        r.group_end[i] = r.n_atoms;
    }
    normalize(&r);
    *y = r;
}

bool etf__view_reshape(const struct etf__view *x, const struct etf_shape *shape,
                       struct etf__view *y)
{
    int64_t size[ETF_VIEW_MAX_ATOMS], stride[ETF_VIEW_MAX_ATOMS];
    int n = x->n_atoms, pos = 0;
    memcpy(size, x->size, sizeof size);
    memcpy(stride, x->stride, sizeof stride);
    struct etf__view r = {
        .base = x->base, .scale = x->scale, .offset = x->offset, .ndim = shape->ndim};
    for (int d = 0; d < shape->ndim; d++) {
        int64_t need = shape->d[d];
        while (need > 1) {
            if (pos >= n || r.n_atoms >= ETF_VIEW_MAX_ATOMS)
                return false;
            if (size[pos] <= need) { /* the whole atom belongs to this dimension */
                if (need % size[pos])
                    return false;
                need /= size[pos];
                r.size[r.n_atoms] = size[pos];
                r.stride[r.n_atoms++] = stride[pos++];
            } else { /* the dimension ends inside the atom: its outer part is ours */
                if (size[pos] % need)
                    return false;
                int64_t inner = size[pos] / need;
                r.size[r.n_atoms] = need;
                r.stride[r.n_atoms++] = stride[pos] * inner;
                size[pos] = inner;
                need = 1;
            }
        }
        r.group_end[d] = r.n_atoms;
    }
    if (pos != n)
        return false; /* element counts differ */
    normalize(&r);
    *y = r;
    return true;
}

bool etf__view_select(const struct etf__view *x, int axis, int64_t first, int64_t step, int64_t n,
                      struct etf__view *y)
{
    if (axis < 0 || axis >= x->ndim || n < 1 || first < 0 || step < 1)
        return false;
    int b = group_begin(x, axis), e = x->group_end[axis];
    int64_t dim = 1;
    for (int a = b; a < e; a++)
        dim *= x->size[a];
    if (first + (n - 1) * step >= dim)
        return false;
    struct etf__view r = *x;
    if (n > 1) {
        if (e - b != 1)
            return false;
        r.offset += first * x->stride[b];
        r.size[b] = n;
        r.stride[b] *= step;
    } else { /* one index: its coordinates over the atoms, innermost last */
        int64_t rest = first;
        for (int a = e - 1; a >= b; a--) {
            r.offset += rest % x->size[a] * x->stride[a];
            rest /= x->size[a];
            r.size[a] = 1;
        }
    }
    normalize(&r);
    *y = r;
    return true;
}

/* Dimension d of v as one (size, stride) pair: size 1 (any stride) when it has no atom;
 * false when it has several. */
static bool single_atom(const struct etf__view *v, int d, int64_t *size, int64_t *stride)
{
    int b = group_begin(v, d), e = v->group_end[d];
    if (e - b > 1)
        return false;
    *size = e == b ? 1 : v->size[b];
    *stride = e == b ? 0 : v->stride[b];
    return true;
}

bool etf__view_as_matrix(const struct etf__view *v, int nd, const int64_t *batch_dims,
                         struct etf__view_matrix *m, bool *oom)
{
    *oom = false;
    *m = (struct etf__view_matrix){0};
    if (v->ndim < 2 || v->ndim > nd)
        return false;
    int64_t R, sr, C, sc;
    if (!single_atom(v, v->ndim - 2, &R, &sr) || !single_atom(v, v->ndim - 1, &C, &sc))
        return false;
    m->rows = R;
    m->cols = C;
    int64_t ld_normal = R == 1 ? C : sr, ld_trans = C == 1 ? R : sc;
    if ((C == 1 || sc == 1) && ld_normal >= C && ld_normal > 0) {
        m->ld = ld_normal;
    } else if ((R == 1 || sr == 1) && ld_trans >= R && ld_trans > 0) {
        m->transposed = true;
        m->ld = ld_trans;
    } else {
        return false;
    }
    /* Batch offsets: the product's batch index, row-major over batch_dims, mapped onto v's
     * own batch dimensions (right-aligned; a dimension of size 1 broadcasts). */
    int nb = nd - 2, shift = nd - v->ndim;
    int64_t B = 1;
    for (int j = 0; j < nb; j++) {
        int i = j - shift;
        int64_t own = 1;
        for (int a = i >= 0 ? group_begin(v, i) : 0; i >= 0 && a < v->group_end[i]; a++)
            own *= v->size[a];
        if (own != 1 && own != batch_dims[j])
            return false;
        B *= batch_dims[j];
    }
    m->batch = B;
    int64_t *off = malloc((size_t)(B ? B : 1) * sizeof *off);
    if (!off) {
        *oom = true;
        return false;
    }
    for (int64_t t = 0; t < B; t++) {
        int64_t o = v->offset, rest = t;
        for (int j = nb - 1; j >= 0; j--) {
            int64_t idx = rest % batch_dims[j];
            rest /= batch_dims[j];
            int i = j - shift;
            if (i < 0)
                continue;
            for (int a = v->group_end[i] - 1; a >= group_begin(v, i); a--) {
                o += idx % v->size[a] * v->stride[a];
                idx /= v->size[a];
            }
        }
        off[t] = o;
    }
    bool even = true;
    for (int64_t t = 2; t < B && even; t++)
        even = off[t] - off[t - 1] == off[1] - off[0];
    m->first = off[0];
    m->batch_stride = B > 1 ? off[1] - off[0] : 0;
    if (even)
        free(off);
    else
        m->offset = off;
    return true;
}

void etf__view_matrix_free(struct etf__view_matrix *m)
{
    free(m->offset);
    m->offset = NULL;
}

/* ---- Products ---- */

/* A view as one operand of a product: reshaped to the operand's broadcast dims `dims` (nd of
 * them, the value's own dims behind leading ones), then read as a matrix per batch of the
 * product's batch dims (yd). */
static bool product_operand(const struct etf__view *v, int nd, const int64_t *dims,
                            const int64_t *yd, struct etf__view_matrix *m, bool *oom)
{
    struct etf_shape s = {.ndim = nd};
    for (int i = 0; i < nd; i++)
        s.d[i] = dims[i];
    struct etf__view r;
    if (!etf__view_reshape(v, &s, &r))
        return false;
    return etf__view_as_matrix(&r, nd, yd, m, oom);
}

/* The atoms of the rows of view v read with dims `dims` (nd of them): where to split M
 * when they are several. Returns their count (0 if the reshape fails). */
static int row_atoms(const struct etf__view *v, int nd, const int64_t *dims, int64_t *sizes)
{
    struct etf_shape s = {.ndim = nd};
    for (int i = 0; i < nd; i++)
        s.d[i] = dims[i];
    struct etf__view r;
    if (!etf__view_reshape(v, &s, &r))
        return 0;
    int b = nd - 2 == 0 ? 0 : r.group_end[nd - 3], n = r.group_end[nd - 2] - b;
    for (int i = 0; i < n; i++)
        sizes[i] = r.size[b + i];
    return n;
}

static bool product_with(const struct etf__view *va, const struct etf__view *vw,
                         const struct etf__view *vy, int nd, const int64_t *ad, const int64_t *wd,
                         const int64_t *yd, struct etf__view_product *out, bool *oom)
{
    struct etf__view_product r = {.m = yd[nd - 2], .n = yd[nd - 1], .k = ad[nd - 1]};
    bool ok = product_operand(va, nd, ad, yd, &r.a, oom) &&
              product_operand(vw, nd, wd, yd, &r.w, oom) &&
              product_operand(vy, nd, yd, yd, &r.y, oom) && !r.y.transposed;
    if (!ok) {
        etf__view_product_free(&r);
        return false;
    }
    r.batch = r.y.batch;
    r.scale = va->scale * vw->scale;
    *out = r;
    return true;
}

bool etf__view_product(const struct etf_plan *p, const struct etf_kernel *kn,
                       const struct etf__view *va, const struct etf__view *vw,
                       const struct etf__view *vy, struct etf__view_product *out, bool *oom)
{
    *oom = false;
    *out = (struct etf__view_product){0};
    int nd;
    int64_t ad[ETF_MAX_DIMS], wd[ETF_MAX_DIMS], yd[ETF_MAX_DIMS];
    if (etf__plan_matmul_dims(p, kn, &nd, ad, wd, yd, NULL, 0) != 0)
        return false;
    if (product_with(va, vw, vy, nd, ad, wd, yd, out, oom) || *oom)
        return !*oom;
    /* Rows that are not evenly spaced in a or y (a product writing a [seq*batch, E] result
     * into a batch-first place): split M where their atoms part, the outer parts becoming
     * batch dimensions of the product (the weights broadcast over them). */
    for (int which = 0; which < 2; which++) {
        int64_t sizes[ETF_VIEW_MAX_ATOMS];
        int n = which == 0 ? row_atoms(va, nd, ad, sizes) : row_atoms(vy, nd, yd, sizes);
        if (n < 2 || nd - 1 + n > ETF_MAX_DIMS)
            continue;
        int64_t a2[ETF_MAX_DIMS], w2[ETF_MAX_DIMS], y2[ETF_MAX_DIMS];
        int at = 0;
        for (int i = 0; i < nd - 2; i++, at++) {
            a2[at] = ad[i];
            w2[at] = wd[i];
            y2[at] = yd[i];
        }
        for (int i = 0; i < n; i++, at++) {
            a2[at] = y2[at] = sizes[i];
            w2[at] = 1;
        }
        w2[at - 1] = wd[nd - 2]; /* K */
        a2[at] = ad[nd - 1];
        w2[at] = wd[nd - 1];
        y2[at] = yd[nd - 1];
        if (product_with(va, vw, vy, at + 1, a2, w2, y2, out, oom) || *oom)
            return !*oom;
    }
    return false;
}

bool etf__view_product_is_one(const struct etf__view_product *pr)
{
    const struct etf__view_matrix *a = &pr->a, *w = &pr->w, *y = &pr->y;
    return pr->batch == 1 ||
           (!a->offset && !w->offset && !y->offset && w->batch_stride == 0 && !a->transposed &&
            a->batch_stride == pr->m * a->ld && y->batch_stride == pr->m * y->ld);
}

void etf__view_product_free(struct etf__view_product *pr)
{
    etf__view_matrix_free(&pr->a);
    etf__view_matrix_free(&pr->w);
    etf__view_matrix_free(&pr->y);
}

/* ---- The plan ---- */

enum skip_kind { KEEP, SKIP_TRANSPOSE, SKIP_SELECT, SKIP_SCALE, WRITE_THROUGH };

/* Readers of a value: (kernel, role) pairs, role = the input's index, or ROLE_POST for a
 * post-op's operand. */
#define ROLE_POST (-1)

struct analysis {
    const struct etf_plan *p;
    size_t nv, nk;
    int *writer;     /* per value: the kernel whose output it is, or -1 */
    size_t *r_start; /* per value + 1: its readers in r_kernel/r_role */
    int *r_kernel, *r_role;
    size_t *c_start; /* per value + 1: the values that alias it, in c_value */
    int *c_value;
    bool *is_output;             /* per value: a model output, or aliased by one */
    enum skip_kind *cand, *kind; /* per kernel: what it could be, what it is */
    struct {
        int x;
        int axis;
        int64_t first, step, n;
    } * sel;            /* SKIP_SELECT candidates */
    signed char *state; /* per value: 0 not computed, 1 view ok, -1 no view */
    struct etf__view *view;
    int *through; /* per value: the transpose a product writes through, or -1 */
};

/* The input a skippable kernel re-indexes. */
static int data_input(const struct analysis *an, size_t k)
{
    return an->cand[k] == SKIP_SELECT ? an->sel[k].x : an->p->kernels[k].inputs[0];
}

/* A constant 0/1 selection matrix of lower_select (plan_build.c): S [D, L] read as x @ S
 * with a single 1 in each column (right), or S [L, D] read as S @ x with a single 1 in each
 * row; the picked indexes must step evenly. */
static bool selection(const struct analysis *an, size_t k)
{
    const struct etf_plan *p = an->p;
    const struct etf_kernel *kn = &p->kernels[k];
    if (kn->op != ETF_K_MATMUL || kn->n_inputs != 2 || kn->n_post)
        return false;
    for (int right = 0; right < 2; right++) {
        int sv = etf__plan_storage(p, kn->inputs[right ? 1 : 0]), x = kn->inputs[right ? 0 : 1];
        const struct etf_value *S = &p->values[sv];
        const struct etf_shape *xs = &p->values[x].shape;
        if (S->kind != ETF_VALUE_CONSTANT || !S->data || S->shape.ndim != 2 || xs->ndim < 2)
            continue;
        int64_t L = right ? S->shape.d[1] : S->shape.d[0],
                D = right ? S->shape.d[0] : S->shape.d[1];
        int axis = right ? xs->ndim - 1 : xs->ndim - 2;
        if (xs->d[axis] != D || L < 1)
            continue;
        int64_t first = -1, step = 1;
        bool ok = true;
        for (int64_t i = 0; i < L && ok; i++) {
            int64_t pick = -1;
            for (int64_t j = 0; j < D && ok; j++) {
                float s = right ? S->data[j * L + i] : S->data[i * D + j];
                if (s == 1.0f && pick < 0)
                    pick = j;
                else if (s != 0.0f)
                    ok = false;
            }
            if (!ok || pick < 0)
                ok = false;
            else if (i == 0)
                first = pick;
            else if (i == 1)
                step = pick - first;
            ok = ok && step >= 1 && pick == first + i * step;
        }
        if (!ok)
            continue;
        an->sel[k].x = x;
        an->sel[k].axis = axis;
        an->sel[k].first = first;
        an->sel[k].step = step;
        an->sel[k].n = L;
        return true;
    }
    return false;
}

static enum skip_kind candidate(struct analysis *an, size_t k)
{
    const struct etf_kernel *kn = &an->p->kernels[k];
    if (kn->n_post)
        return KEEP;
    if (kn->op == ETF_K_TRANSPOSE && kn->n_inputs == 1)
        return SKIP_TRANSPOSE;
    if (kn->op == ETF_K_ELTWISE && kn->n_inputs == 1 && kn->attr.eltwise.alg == ETF_ELT_LINEAR &&
        kn->attr.eltwise.beta == 0.0f)
        return SKIP_SCALE;
    return selection(an, k) ? SKIP_SELECT : KEEP;
}

static bool view_of(struct analysis *an, int v);

/* The view of a skipped kernel's output, from its input's. */
static bool skipped_view(struct analysis *an, size_t k, int y)
{
    const struct etf_kernel *kn = &an->p->kernels[k];
    int x = data_input(an, k);
    if (!view_of(an, x))
        return false;
    const struct etf__view *xv = &an->view[x];
    struct etf__view *yv = &an->view[y];
    switch (an->kind[k]) {
    case SKIP_TRANSPOSE:
        etf__view_permute(xv, kn->attr.transpose.perm, yv);
        return true;
    case SKIP_SCALE:
        *yv = *xv;
        yv->scale *= kn->attr.eltwise.alpha;
        return true;
    case SKIP_SELECT: {
        struct etf__view picked;
        return etf__view_select(xv, an->sel[k].axis, an->sel[k].first, an->sel[k].step,
                                an->sel[k].n, &picked) &&
               etf__view_reshape(&picked, &an->p->values[y].shape, yv);
    }
    default:
        return false;
    }
}

/* Computes value v's view (memoized in state); false when it has none (an alias that cannot
 * reshape its base's view). */
static bool view_of(struct analysis *an, int v)
{
    if (an->state[v])
        return an->state[v] > 0;
    an->state[v] = -1; /* a loop of aliases (refused by etf__plan_check) ends here */
    const struct etf_value *val = &an->p->values[v];
    bool ok;
    if (val->alias_of >= 0) {
        ok = view_of(an, val->alias_of) &&
             etf__view_reshape(&an->view[val->alias_of], &val->shape, &an->view[v]);
    } else if (an->writer[v] >= 0 && an->kind[an->writer[v]] != KEEP &&
               an->kind[an->writer[v]] != WRITE_THROUGH) {
        ok = skipped_view(an, (size_t)an->writer[v], v);
    } else if (an->through[v] >= 0) {
        /* A product's output written where the transpose after it puts its result: the
         * inverse permutation of that contiguous output. */
        const struct etf_kernel *t = &an->p->kernels[an->through[v]];
        int y = t->output, x = t->inputs[0], inv[ETF_MAX_DIMS];
        for (int d = 0; d < an->p->values[y].shape.ndim; d++)
            inv[t->attr.transpose.perm[d]] = d;
        struct etf__view yv, xv;
        etf__view_contiguous(&yv, y, &an->p->values[y].shape);
        etf__view_permute(&yv, inv, &xv);
        ok = etf__view_reshape(&xv, &an->p->values[x].shape, &xv) &&
             etf__view_reshape(&xv, &val->shape, &an->view[v]);
    } else {
        etf__view_contiguous(&an->view[v], v, &val->shape);
        ok = true;
    }
    an->state[v] = ok ? 1 : -1;
    return ok;
}

/* Whether product kernel k can read its operands and write its output through their
 * current views. */
static bool product_takes(struct analysis *an, size_t k, bool *oom)
{
    const struct etf_plan *p = an->p;
    const struct etf_kernel *kn = &p->kernels[k];
    int a = kn->inputs[0], w = kn->inputs[1], y = kn->output;
    if (!view_of(an, a) || !view_of(an, w) || !view_of(an, y))
        return false;
    struct etf__view_product pr, plain;
    bool ok = etf__view_product(p, kn, &an->view[a], &an->view[w], &an->view[y], &pr, oom);
    /* A product that is one GEMM on contiguous operands stays one: split into batches of a
     * few rows (a sequence-first view of a batch-first input) it loses more time than the
     * transpose it saves (measured on the H100: 0.22 against 0.19 + 0.02 ms). */
    if (ok) {
        struct etf__view va, vw, vy;
        etf__view_contiguous(&va, a, &p->values[a].shape);
        etf__view_contiguous(&vw, w, &p->values[w].shape);
        etf__view_contiguous(&vy, y, &p->values[y].shape);
        if (etf__view_product(p, kn, &va, &vw, &vy, &plain, oom) &&
            etf__view_product_is_one(&plain))
            ok = etf__view_product_is_one(&pr);
        etf__view_product_free(&plain);
    }
    etf__view_product_free(&pr);
    return ok && !*oom;
}

/* Whether every reader of value v (and of the values aliasing it) can read its view:
 * kernels skipped themselves (they pass the view on), and products' two operands. */
static bool readers_take(struct analysis *an, int v, bool *oom)
{
    if (an->is_output[v] || !view_of(an, v))
        return false;
    for (size_t r = an->r_start[v]; r < an->r_start[v + 1]; r++) {
        size_t k = (size_t)an->r_kernel[r];
        int role = an->r_role[r];
        bool passes = an->kind[k] != KEEP && an->kind[k] != WRITE_THROUGH &&
                      data_input(an, k) == v && role >= 0;
        if (passes)
            continue;
        if (an->p->kernels[k].op != ETF_K_MATMUL || role < 0 || role > 1 ||
            !product_takes(an, k, oom))
            return false;
    }
    for (size_t c = an->c_start[v]; c < an->c_start[v + 1]; c++)
        if (!readers_take(an, an->c_value[c], oom))
            return false;
    return true;
}

/* A transpose whose input only a product writes: that product may write through it. */
static bool try_write_through(struct analysis *an, size_t t, bool *oom)
{
    const struct etf_plan *p = an->p;
    const struct etf_kernel *tk = &p->kernels[t];
    if (an->cand[t] != SKIP_TRANSPOSE || an->kind[t] != KEEP)
        return false;
    int x = tk->inputs[0], xs = etf__plan_storage(p, x);
    if (xs < 0 || an->writer[xs] < 0 || an->is_output[xs])
        return false;
    size_t m = (size_t)an->writer[xs];
    const struct etf_kernel *mk = &p->kernels[m];
    if (mk->op != ETF_K_MATMUL || an->kind[m] != KEEP)
        return false;
    /* Elementwise post-ops run over the output in any order. A bias is added as element i
     * getting bias[i % N]: still right in the transposed place, since the product writes
     * each row's N columns adjacent (product_takes), so that, the place being a permutation
     * of a contiguous tensor, every other stride is a multiple of N. Residuals are not. */
    for (int i = 0; i < mk->n_post; i++)
        if (mk->post[i].kind != ETF_POST_ELTWISE)
            return false;
    /* Only the transpose reads the product's output, through any chain of aliases. */
    size_t n_read = 0;
    int stack[64], top = 0;
    stack[top++] = xs;
    while (top) {
        int v = stack[--top];
        if (an->is_output[v])
            return false;
        for (size_t r = an->r_start[v]; r < an->r_start[v + 1]; r++) {
            if ((size_t)an->r_kernel[r] != t || an->r_role[r] != 0)
                return false;
            n_read++;
        }
        for (size_t c = an->c_start[v]; c < an->c_start[v + 1]; c++) {
            if (top == 64)
                return false;
            stack[top++] = an->c_value[c];
        }
    }
    if (n_read != 1)
        return false;
    /* Try it: views of the product's output family, then the product's writing. */
    an->through[xs] = (int)t;
    memset(an->state, 0, an->nv);
    bool ok = view_of(an, xs) && product_takes(an, m, oom);
    if (ok) {
        an->kind[t] = WRITE_THROUGH;
        return true;
    }
    an->through[xs] = -1;
    memset(an->state, 0, an->nv);
    return false;
}

static int build_index(struct analysis *an)
{
    const struct etf_plan *p = an->p;
    size_t nv = an->nv, nk = an->nk, n_reads = 0;
    an->r_start = calloc(nv + 1, sizeof *an->r_start);
    an->c_start = calloc(nv + 1, sizeof *an->c_start);
    if (!an->r_start || !an->c_start)
        return ETF_ENOMEM;
    for (size_t k = 0; k < nk; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n; i++)
            an->r_start[ins[i] + 1]++;
        for (int i = 0; i < kn->n_post; i++)
            if (kn->post[i].kind != ETF_POST_ELTWISE)
                an->r_start[kn->post[i].value + 1]++;
        an->writer[kn->output] = (int)k;
    }
    for (size_t v = 0; v < nv; v++) {
        an->r_start[v + 1] += an->r_start[v];
        if (p->values[v].alias_of >= 0)
            an->c_start[p->values[v].alias_of + 1]++;
    }
    for (size_t v = 0; v < nv; v++)
        an->c_start[v + 1] += an->c_start[v];
    n_reads = an->r_start[nv];
    an->r_kernel = malloc((n_reads ? n_reads : 1) * sizeof *an->r_kernel);
    an->r_role = malloc((n_reads ? n_reads : 1) * sizeof *an->r_role);
    an->c_value = malloc((an->c_start[nv] ? an->c_start[nv] : 1) * sizeof *an->c_value);
    size_t *r_fill = calloc(nv, sizeof *r_fill), *c_fill = calloc(nv, sizeof *c_fill);
    int rc = 0;
    if (!an->r_kernel || !an->r_role || !an->c_value || !r_fill || !c_fill) {
        rc = ETF_ENOMEM;
        goto out;
    }
    for (size_t k = 0; k < nk; k++) {
        const struct etf_kernel *kn = &p->kernels[k];
        const int *ins;
        int n;
        etf__kernel_inputs(kn, &ins, &n);
        for (int i = 0; i < n + kn->n_post; i++) {
            if (i >= n && kn->post[i - n].kind == ETF_POST_ELTWISE)
                continue;
            int v = i < n ? ins[i] : kn->post[i - n].value;
            size_t at = an->r_start[v] + r_fill[v]++;
            an->r_kernel[at] = (int)k;
            an->r_role[at] = i < n ? i : ROLE_POST;
        }
    }
    for (size_t v = 0; v < nv; v++)
        if (p->values[v].alias_of >= 0) {
            int base = p->values[v].alias_of;
            an->c_value[an->c_start[base] + c_fill[base]++] = (int)v;
        }
    /* Model outputs (and what they alias) keep storage of their own, contiguous. */
    for (size_t i = 0; i < p->n_outputs; i++)
        for (int v = p->outputs[i], hops = 0; v >= 0 && (size_t)hops <= nv; hops++) {
            an->is_output[v] = true;
            v = p->values[v].alias_of;
        }
out:
    free(r_fill);
    free(c_fill);
    return rc;
}

static void analysis_free(struct analysis *an)
{
    free(an->writer);
    free(an->r_start);
    free(an->r_kernel);
    free(an->r_role);
    free(an->c_start);
    free(an->c_value);
    free(an->is_output);
    free(an->cand);
    free(an->kind);
    free(an->sel);
    free(an->state);
    free(an->through);
}

int etf__views_plan(const struct etf_plan *p, bool allow, struct etf__views *out)
{
    *out = (struct etf__views){0};
    struct analysis an = {.p = p, .nv = p->n_values, .nk = p->n_kernels};
    size_t nv = an.nv ? an.nv : 1, nk = an.nk ? an.nk : 1;
    an.writer = malloc(nv * sizeof *an.writer);
    an.is_output = calloc(nv, sizeof *an.is_output);
    an.cand = calloc(nk, sizeof *an.cand);
    an.kind = calloc(nk, sizeof *an.kind);
    an.sel = calloc(nk, sizeof *an.sel);
    an.state = calloc(nv, sizeof *an.state);
    an.view = calloc(nv, sizeof *an.view);
    an.through = malloc(nv * sizeof *an.through);
    int rc = ETF_ENOMEM;
    if (!an.writer || !an.is_output || !an.cand || !an.kind || !an.sel || !an.state || !an.view ||
        !an.through)
        goto fail;
    for (size_t v = 0; v < an.nv; v++)
        an.writer[v] = an.through[v] = -1;
    if ((rc = build_index(&an)))
        goto fail;
    bool oom = false;
    if (allow) {
        for (size_t k = 0; k < an.nk; k++)
            an.kind[k] = an.cand[k] = candidate(&an, k);
        /* Drop the candidates some reader cannot follow until none is left to drop: each
         * drop makes the dropped kernel's output contiguous again, which may let other
         * kernels' readers take their views, or not. */
        for (bool changed = true; changed && !oom;) {
            changed = false;
            memset(an.state, 0, an.nv);
            for (size_t k = 0; k < an.nk && !oom; k++) {
                if (an.kind[k] == KEEP || readers_take(&an, an.p->kernels[k].output, &oom))
                    continue;
                an.kind[k] = KEEP;
                changed = true;
                memset(an.state, 0, an.nv);
            }
        }
        for (size_t k = 0; k < an.nk && !oom; k++)
            try_write_through(&an, k, &oom);
    }
    rc = ETF_ENOMEM;
    if (oom)
        goto fail;
    memset(an.state, 0, an.nv);
    out->skip = calloc(nk, sizeof *out->skip);
    if (!out->skip)
        goto fail;
    bool all = true;
    for (size_t v = 0; v < an.nv; v++)
        all = view_of(&an, (int)v) && all;
    if (!all) {
        /* The checks above ran every view a reader needs; one failing now is a value no
         * kernel reads behind a skipped one. Run the plan as it is rather than guess. */
        free(an.view);
        analysis_free(&an);
        free(out->skip);
        out->skip = NULL;
        return etf__views_plan(p, false, out);
    }
    for (size_t k = 0; k < an.nk; k++)
        if (an.kind[k] != KEEP) {
            out->skip[k] = true;
            out->n_skipped++;
        }
    out->of = an.view;
    an.view = NULL;
    analysis_free(&an);
    return 0;
fail:
    free(an.view);
    analysis_free(&an);
    etf__views_free(out);
    return rc;
}

void etf__views_free(struct etf__views *v)
{
    free(v->of);
    free(v->skip);
    *v = (struct etf__views){0};
}
