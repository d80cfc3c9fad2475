/* ETF slice allocation in closed form (see alloc.h for the policy). */
#include "sched/alloc.h"

#include "etf/etf.h"

#include <math.h>
#include <stdlib.h>

/* Ascending power; ties keep input order so that slices are a pure function of the input. */
static int by_power(const void *a, const void *b)
{
    const struct etf_alloc_rank *x = a, *y = b;
    if (x->power_mw != y->power_mw)
        return x->power_mw < y->power_mw ? -1 : 1;
    return (x->index > y->index) - (x->index < y->index);
}

static bool positive_finite(double v)
{
    return isfinite(v) && v > 0;
}

int etf__alloc_slices(const struct etf_alloc_input *in, size_t n, double phi, double quantum_ns,
                      double *slices_ns, struct etf_alloc_rank *rank)
{
    if (n == 0 || !(phi >= 0 && phi <= 1) || !positive_finite(quantum_ns))
        return ETF_EINVAL;

    double total_weight = 0;
    for (size_t i = 0; i < n; i++) {
        if (!positive_finite(in[i].weight) || !positive_finite(in[i].power_mw))
            return ETF_EINVAL;
        total_weight += in[i].weight;
    }

    double floor_per_weight = phi * quantum_ns / total_weight;
    for (size_t i = 0; i < n; i++)
        slices_ns[i] = floor_per_weight * in[i].weight;
    if (phi == 1)
        return 0;

    for (size_t i = 0; i < n; i++)
        rank[i] = (struct etf_alloc_rank){in[i].power_mw, i};
    qsort(rank, n, sizeof *rank, by_power);

    /* Raise the k lowest-power entities to a common normalised energy `level`:
     * sum_{j<k} level * w_j / P_j + sum_{j>=k} floor_j = Q. The right k is the first for
     * which the level does not exceed the floor energy of entity k (the next one up). */
    double floors_above = phi * quantum_ns; /* sum of floors of entities not yet raised */
    double raised_capacity = 0;             /* sum of w_j / P_j over raised entities */
    double level = 0;
    size_t raised = 0;
    while (raised < n) {
        const struct etf_alloc_input *e = &in[rank[raised].index];
        floors_above -= floor_per_weight * e->weight;
        raised_capacity += e->weight / e->power_mw;
        raised++;
        level = (quantum_ns - floors_above) / raised_capacity;
        if (raised == n)
            break;
        double next_floor_energy = in[rank[raised].index].power_mw * floor_per_weight;
        if (level <= next_floor_energy)
            break;
    }
    for (size_t j = 0; j < raised; j++) {
        size_t i = rank[j].index;
        slices_ns[i] = level * in[i].weight / in[i].power_mw;
    }
    return 0;
}
