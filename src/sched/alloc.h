/* ETF slice allocation: pure arithmetic, no locks, no state.
 *
 * Every runnable entity i (weight w_i, power P_i) gets a floor of phi * Q * w_i / W, its
 * weighted time share. The remaining (1 - phi) * Q is water-filled: the weight-normalised
 * energy e_i = P_i * s_i / w_i of the lowest entities is raised until they meet, so that
 * with phi = 0 every entity ends at the same e_i (weighted energy fairness) and with
 * phi = 1 slices are proportional to weights (weighted time fairness). Between the two,
 * phi is a floor, not a blend.
 *
 * Because every floor is proportional to the weight, the entities' energies at their
 * floors are ordered by power alone: e_i = P_i * phi * Q / W. Sorting by power and walking
 * the prefix sums gives the water level in closed form, O(n log n), exactly (no 1 ms
 * units as in the original).
 */
#ifndef ETF_SCHED_ALLOC_H
#define ETF_SCHED_ALLOC_H

#include <stddef.h>

struct etf_alloc_input {
    double weight;   /* > 0 */
    double power_mw; /* > 0 */
};

/* Scratch space: one per entity, so that allocating slices allocates no memory. */
struct etf_alloc_rank {
    double power_mw;
    size_t index;
};

/* Fills slices_ns[0..n) for quantum_ns and phi, using rank[0..n) as scratch.
 * Returns 0, or ETF_EINVAL when n = 0, phi is outside [0, 1], the quantum is not > 0, or a
 * weight or power is not a finite number > 0. The slices sum to quantum_ns (up to
 * floating-point rounding). */
int etf__alloc_slices(const struct etf_alloc_input *in, size_t n, double phi, double quantum_ns,
                      double *slices_ns, struct etf_alloc_rank *rank);

#endif
