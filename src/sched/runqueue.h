/* The run queue: runnable entities ordered by virtual runtime, least first.
 *
 * A 4-ary min-heap whose slots carry their keys inline, so that sifting compares keys in
 * one cache line instead of chasing entity pointers; push, remove and update are
 * O(log n), peek O(1). The entity running its turn stays in the heap: when its turn ends
 * its key grows and one sift puts it back in order (half the work of pop + push).
 * Ties in vruntime break on a caller-given sequence number (the entity id), so that the
 * order of dispatch is a pure function of the inputs — the simulator relies on this.
 * Not thread-safe: the scheduler calls it under its lock.
 */
#ifndef ETF_SCHED_RUNQUEUE_H
#define ETF_SCHED_RUNQUEUE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Embedded in each entity. The owner writes vruntime, then tells the queue (update). */
struct etf_rq_node {
    double vruntime;
    uint64_t seq;
    size_t index; /* slot in the heap; meaningful only while queued */
};

struct etf_rq_slot {
    double vruntime;
    uint64_t seq;
    struct etf_rq_node *node;
};

struct etf_runqueue {
    struct etf_rq_slot *heap;
    size_t n, cap;
};

void etf__rq_init(struct etf_runqueue *rq);
void etf__rq_fini(struct etf_runqueue *rq);
/* Makes room for `cap` nodes so that pushes up to it cannot fail. Returns 0 or ETF_ENOMEM. */
int etf__rq_reserve(struct etf_runqueue *rq, size_t cap);
/* Inserts a node that is not queued, keyed by its vruntime and seq. 0 or ETF_ENOMEM. */
int etf__rq_push(struct etf_runqueue *rq, struct etf_rq_node *node);
/* The node with the least (vruntime, seq), or NULL when empty. It stays queued. */
struct etf_rq_node *etf__rq_peek(const struct etf_runqueue *rq);
/* Removes and returns the least node, or NULL when empty. */
struct etf_rq_node *etf__rq_pop(struct etf_runqueue *rq);
/* Removes a queued node. */
void etf__rq_remove(struct etf_runqueue *rq, struct etf_rq_node *node);
/* Re-orders a queued node after its owner changed node->vruntime. */
void etf__rq_update(struct etf_runqueue *rq, struct etf_rq_node *node);

#endif
