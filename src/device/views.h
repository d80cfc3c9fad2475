/* Strided views: which kernels of a plan a device may skip by reading their outputs in
 * place, and how a matrix product then reads and writes its operands.
 *
 * An exported attention block moves data more than it computes: at batch 32 the
 * transformer's transposes (batch-first to sequence-first and back, heads out of the
 * embedding and back, K to K^T), the gathers that split the fused Q/K/V projection and the
 * scalings of Q and K took a third of its GPU time. Each of them only re-indexes its input,
 * and a BLAS product reads any matrix whose rows are evenly spaced and whose columns are
 * adjacent (or the transpose of one), one pointer per batch. So when every reader of such a
 * kernel's output is a product that can read it in place, the kernel need not run: its
 * output is a view of its input. A transpose after a product without residual can go the
 * other way: the product writes its result in the transposed place.
 *
 * A view describes a value's elements as `scale` times the elements of storage value `base`
 * at `offset + sum(index_i * stride_i)` over its atoms: (size, stride) pairs, outermost
 * first, grouped into the value's logical dimensions. Atoms, not one stride per dimension,
 * because a reshape of a permuted tensor need not have one (splitting heads out of a
 * sequence-first embedding does not), and a product only needs its two matrix dimensions to
 * be single atoms; batch dimensions may be anything, the product taking a pointer per batch.
 *
 * The analysis (etf__views_plan) is the device's business: plans are unchanged, and the
 * device decides which kernels become views (plan.h: "each device chooses its own memory
 * layouts"). Pure C, no GPU: tests/test_views.c covers it on every machine.
 */
#ifndef ETF_DEVICE_VIEWS_H
#define ETF_DEVICE_VIEWS_H

#include "model/plan.h"

#include <stdbool.h>
#include <stdint.h>

#define ETF_VIEW_MAX_ATOMS (2 * ETF_MAX_DIMS)

struct etf__view {
    int base;       /* the storage value whose bytes hold the elements */
    float scale;    /* elements are scale times the stored ones */
    int64_t offset; /* in elements */
    int n_atoms;
    int64_t size[ETF_VIEW_MAX_ATOMS], stride[ETF_VIEW_MAX_ATOMS];
    int ndim;
    int group_end[ETF_MAX_DIMS]; /* dimension i is atoms [group_end[i-1], group_end[i]) */
};

/* Value v's storage read contiguously: one atom per dimension of `shape`. */
void etf__view_contiguous(struct etf__view *out, int base, const struct etf_shape *shape);

/* y = permute(x, perm): the dimensions' atom groups reordered. */
void etf__view_permute(const struct etf__view *x, const int *perm, struct etf__view *y);

/* x's elements in row-major order regrouped into `shape` (same element count), splitting
 * atoms where a new dimension ends inside one. false when that needs a split an atom cannot
 * take (a dimension whose size is not a multiple of the part asked for). */
bool etf__view_reshape(const struct etf__view *x, const struct etf_shape *shape,
                       struct etf__view *y);

/* Picks n indexes first, first + step, ... along dimension `axis` of x (the dimension stays,
 * of size n). false when that dimension is not one atom and n > 1. */
bool etf__view_select(const struct etf__view *x, int axis, int64_t first, int64_t step, int64_t n,
                      struct etf__view *y);

/* How a product reads (or writes) one operand whose logical shape is [batch..., rows, cols],
 * broadcast to `batch` dims of the product (sizes in `batch_dims`, 1 = broadcast when the
 * operand's own dimension is 1 or missing): element (t, r, c) of batch t is at
 * offset[t] + r * row_stride + c * col_stride. One of the two strides is 1 (the operand is
 * read as is, or as the transpose of a row-major matrix); ld is the other, at least the
 * length of the contiguous side. */
struct etf__view_matrix {
    int64_t rows, cols;
    bool transposed; /* row_stride == 1: rows are adjacent, columns ld apart */
    int64_t ld;
    int64_t batch;               /* product of batch_dims */
    int64_t *offset;             /* batch entries, malloc'd; NULL when batch_stride says it all */
    int64_t first, batch_stride; /* offset[t] = first + t * batch_stride when offset is NULL */
};

/* Describes view v (its logical dims: batch..., rows, cols, after numpy's broadcasting of a
 * product's operands to nd dims, dims missing in v counting as 1) as a product's operand.
 * false when the two matrix dimensions are not single atoms with one of them adjacent
 * (stride 1), or when malloc fails (*oom set). m->offset is malloc'd when not NULL. */
bool etf__view_as_matrix(const struct etf__view *v, int nd, const int64_t *batch_dims,
                         struct etf__view_matrix *m, bool *oom);
void etf__view_matrix_free(struct etf__view_matrix *m);

/* A product y = scale * a w read and written through views: per batch, a [m, k], w [k, n]
 * and y [m, n] as etf__view_as_matrix describes them (y never transposed). */
struct etf__view_product {
    int64_t m, n, k, batch;
    float scale;
    struct etf__view_matrix a, w, y;
};

/* Product kernel kn with operands va, vw and output vy. Rows of a or y that are not evenly
 * spaced (an [S*B, E] result written into a batch-first [B, S, E] place) split M into batch
 * dimensions. false when no such reading exists, or malloc failed (*oom). Free with
 * etf__view_product_free (also after false). */
bool etf__view_product(const struct etf_plan *p, const struct etf_kernel *kn,
                       const struct etf__view *va, const struct etf__view *vw,
                       const struct etf__view *vy, struct etf__view_product *out, bool *oom);
void etf__view_product_free(struct etf__view_product *pr);

/* Whether the product is one GEMM: one batch, or batches that are more rows of one product
 * (weights shared, a and y stacked evenly, a not transposed). */
bool etf__view_product_is_one(const struct etf__view_product *pr);

/* What a device does with a plan's kernels and values. */
struct etf__views {
    struct etf__view *of; /* per value: where its elements are */
    bool *skip;           /* per kernel: its output is a view, the kernel runs nothing */
    size_t n_skipped;
};

/* Which kernels of plan p can be skipped, and every value's view (values with storage of
 * their own and plain reshapes of them included). Products (MATMUL) read views whose
 * matrices etf__view_as_matrix accepts; every other kernel reads contiguous values only, so
 * a kernel is skipped only when each reader of its output can take the view. Skipped:
 * TRANSPOSE; MATMUL by a constant 0/1 selection matrix (the plan's gathers and slices of
 * computed tensors); ELTWISE LINEAR without offset (a scaling, folded into the product's
 * alpha). And a TRANSPOSE whose input only a product without SUM or BINARY post-ops
 * produces, when its permutation keeps the last axis (so that a bias still adds along it):
 * that product's output then is a view of the transpose's output. Model inputs and outputs
 * are never views. allow = false skips nothing (every value its own contiguous view).
 * Returns 0 or ETF_ENOMEM. */
int etf__views_plan(const struct etf_plan *p, bool allow, struct etf__views *out);
void etf__views_free(struct etf__views *v);

#endif
