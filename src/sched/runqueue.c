/* The vruntime-ordered run queue as a 4-ary min-heap with inline keys. */
#include "sched/runqueue.h"

#include "etf/etf.h"

#include <stdlib.h>

#define ARITY 4

static bool before(const struct etf_rq_slot *a, const struct etf_rq_slot *b)
{
    if (a->vruntime != b->vruntime)
        return a->vruntime < b->vruntime;
    return a->seq < b->seq;
}

static void place(struct etf_runqueue *rq, size_t i, struct etf_rq_slot slot)
{
    rq->heap[i] = slot;
    slot.node->index = i;
}

static void sift_up(struct etf_runqueue *rq, size_t i, struct etf_rq_slot slot)
{
    while (i > 0) {
        size_t parent = (i - 1) / ARITY;
        if (!before(&slot, &rq->heap[parent]))
            break;
        place(rq, i, rq->heap[parent]);
        i = parent;
    }
    place(rq, i, slot);
}

static void sift_down(struct etf_runqueue *rq, size_t i, struct etf_rq_slot slot)
{
    for (;;) {
        size_t first = ARITY * i + 1;
        if (first >= rq->n)
            break;
        size_t last = first + ARITY < rq->n ? first + ARITY : rq->n;
        size_t best = first;
        for (size_t c = first + 1; c < last; c++) {
            if (before(&rq->heap[c], &rq->heap[best]))
                best = c;
        }
        if (!before(&rq->heap[best], &slot))
            break;
        place(rq, i, rq->heap[best]);
        i = best;
    }
    place(rq, i, slot);
}

/* Puts slot at position i, moving it up or down as its key requires. */
static void settle(struct etf_runqueue *rq, size_t i, struct etf_rq_slot slot)
{
    if (i > 0 && before(&slot, &rq->heap[(i - 1) / ARITY]))
        sift_up(rq, i, slot);
    else
        sift_down(rq, i, slot);
}

static struct etf_rq_slot slot_of(struct etf_rq_node *node)
{
    return (struct etf_rq_slot){node->vruntime, node->seq, node};
}

void etf__rq_init(struct etf_runqueue *rq)
{
    *rq = (struct etf_runqueue){0};
}

void etf__rq_fini(struct etf_runqueue *rq)
{
    free(rq->heap);
    etf__rq_init(rq);
}

int etf__rq_reserve(struct etf_runqueue *rq, size_t cap)
{
    if (cap <= rq->cap)
        return 0;
    size_t grown = rq->cap ? rq->cap : 16;
    while (grown < cap)
        grown *= 2;
    struct etf_rq_slot *heap = realloc(rq->heap, grown * sizeof *heap);
    if (!heap)
        return ETF_ENOMEM;
    rq->heap = heap;
    rq->cap = grown;
    return 0;
}

int etf__rq_push(struct etf_runqueue *rq, struct etf_rq_node *node)
{
    int rc = etf__rq_reserve(rq, rq->n + 1);
    if (rc)
        return rc;
    sift_up(rq, rq->n++, slot_of(node));
    return 0;
}

struct etf_rq_node *etf__rq_peek(const struct etf_runqueue *rq)
{
    return rq->n ? rq->heap[0].node : NULL;
}

struct etf_rq_node *etf__rq_pop(struct etf_runqueue *rq)
{
    struct etf_rq_node *top = etf__rq_peek(rq);
    if (top)
        etf__rq_remove(rq, top);
    return top;
}

void etf__rq_remove(struct etf_runqueue *rq, struct etf_rq_node *node)
{
    size_t i = node->index;
    struct etf_rq_slot last = rq->heap[--rq->n];
    if (i < rq->n)
        settle(rq, i, last);
}

void etf__rq_update(struct etf_runqueue *rq, struct etf_rq_node *node)
{
    settle(rq, node->index, slot_of(node));
}
