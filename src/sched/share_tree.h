/* The ETF allocation, maintained incrementally.
 *
 * alloc.h computes all slices at once in O(n log n). The scheduler needs less: the set of
 * runnable entities changes one entity at a time, and it needs one entity's slice at a
 * time. Every slice follows from two numbers shared by all entities — the total weight W
 * and the water level L — and the entity's own weight and power:
 *
 *     s_i = phi * Q * w_i / W                      when phi = 1
 *     s_i = max(phi * Q * w_i / W, L * w_i / P_i)  otherwise
 *
 * The runnable entities are kept in a treap ordered by power, each node carrying the sums
 * of w and w/P over its subtree. Finding L is one descent (entity j is raised above its
 * floor iff its floor energy P_j*phi*Q/W lies below the level that raising only the
 * entities before it would reach), so joining, leaving and re-levelling all cost O(log n)
 * instead of a sort. Results equal alloc.c's to rounding; the tests check that.
 *
 * Treap priorities are a hash of the caller's sequence number: the tree's shape, and so
 * every rounding, is a pure function of the inputs. Not thread-safe: the scheduler locks.
 */
#ifndef ETF_SCHED_SHARE_TREE_H
#define ETF_SCHED_SHARE_TREE_H

#include <stddef.h>
#include <stdint.h>

/* Embedded in each entity. weight and power_mw are the key: change them only while the
 * node is out of the tree. */
struct etf_share_node {
    struct etf_share_node *left, *right;
    double weight;   /* > 0 */
    double power_mw; /* > 0 */
    uint64_t seq;    /* unique; breaks ties in power */
    uint64_t prio;
    double sum_weight, sum_capacity; /* over the subtree: sum of w, sum of w / P */
};

struct etf_share_tree {
    struct etf_share_node *root;
    size_t n;
};

/* What every slice is computed from. */
struct etf_share_level {
    double floor_per_weight; /* phi * Q / W */
    double level;            /* L; 0 when phi = 1 (nothing to water-fill) */
};

void etf__share_init(struct etf_share_tree *t);
void etf__share_insert(struct etf_share_tree *t, struct etf_share_node *node);
void etf__share_remove(struct etf_share_tree *t, struct etf_share_node *node);
/* The level for phi in [0, 1] and quantum_ns > 0 over the entities in the tree (not empty). */
struct etf_share_level etf__share_level(const struct etf_share_tree *t, double phi,
                                        double quantum_ns);
/* The slice of an entity of this weight and power under `lv`. */
double etf__share_slice(const struct etf_share_level *lv, double weight, double power_mw);

#endif
