/* Properties of the ETF slice allocation (src/sched/alloc.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "etf/etf.h"
#include "sched/alloc.h"
#include "sched/share_tree.h"

#include <math.h>
#include <stdlib.h>

#define Q 40e6 /* 40 ms in ns */

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static double uniform(void)
{
    /* xorshift64*: fixed sequence, so every run checks the same instances */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return (double)((rng_state * 2685821657736338717u) >> 11) / 9007199254740992.0;
}

static void random_entities(struct etf_alloc_input *in, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        in[i].weight = etf_nice_to_weight((int)(uniform() * 40) - 20);
        in[i].power_mw = 100 + uniform() * 5000;
    }
}

static double sum(const double *v, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += v[i];
    return s;
}

static void allocate(const struct etf_alloc_input *in, size_t n, double phi, double *slices)
{
    struct etf_alloc_rank *rank = malloc(n * sizeof *rank);
    assert_non_null(rank);
    assert_int_equal(etf__alloc_slices(in, n, phi, Q, slices, rank), 0);
    free(rank);
}

static void slices_sum_to_quantum_and_respect_floors(void **state)
{
    (void)state;
    static const size_t sizes[] = {1, 2, 3, 10, 1000, 10000};
    static const double phis[] = {0, 0.1, 0.5, 0.7, 0.99, 1};
    for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
        size_t n = sizes[si];
        struct etf_alloc_input *in = malloc(n * sizeof *in);
        double *slices = malloc(n * sizeof *slices);
        random_entities(in, n);
        double w = 0;
        for (size_t i = 0; i < n; i++)
            w += in[i].weight;
        for (size_t pi = 0; pi < sizeof phis / sizeof *phis; pi++) {
            allocate(in, n, phis[pi], slices);
            assert_true(fabs(sum(slices, n) - Q) <= 1e-9 * Q);
            for (size_t i = 0; i < n; i++) {
                double floor = phis[pi] * Q * in[i].weight / w;
                assert_true(slices[i] >= floor * (1 - 1e-12));
                assert_true(slices[i] > 0);
            }
        }
        free(in);
        free(slices);
    }
}

static void phi_one_is_weighted_time_fair(void **state)
{
    (void)state;
    struct etf_alloc_input in[50];
    double slices[50];
    random_entities(in, 50);
    allocate(in, 50, 1, slices);
    for (size_t i = 1; i < 50; i++)
        assert_true(fabs(slices[i] / in[i].weight - slices[0] / in[0].weight) <
                    1e-9 * slices[0] / in[0].weight);
}

static void phi_zero_is_weighted_energy_fair(void **state)
{
    (void)state;
    struct etf_alloc_input in[50];
    double slices[50];
    random_entities(in, 50);
    allocate(in, 50, 0, slices);
    double e0 = in[0].power_mw * slices[0] / in[0].weight;
    for (size_t i = 1; i < 50; i++)
        assert_true(fabs(in[i].power_mw * slices[i] / in[i].weight - e0) < 1e-9 * e0);
}

/* Water-filling: the raised entities end at one normalised energy, the level; every other
 * entity keeps its floor and sits at or above the level. */
static void remainder_raises_the_lowest_energies_first(void **state)
{
    (void)state;
    enum { N = 200 };
    struct etf_alloc_input in[N];
    double slices[N];
    random_entities(in, N);
    double w = 0;
    for (size_t i = 0; i < N; i++)
        w += in[i].weight;
    allocate(in, N, 0.6, slices);
    double level = 0;
    for (size_t i = 0; i < N; i++) {
        double floor = 0.6 * Q * in[i].weight / w;
        if (slices[i] > floor * (1 + 1e-9))
            level = fmax(level, in[i].power_mw * slices[i] / in[i].weight);
    }
    assert_true(level > 0);
    for (size_t i = 0; i < N; i++) {
        double floor = 0.6 * Q * in[i].weight / w;
        double energy = in[i].power_mw * slices[i] / in[i].weight;
        if (slices[i] > floor * (1 + 1e-9))
            assert_true(fabs(energy - level) < 1e-9 * level);
        else
            assert_true(energy >= level * (1 - 1e-9));
    }
}

/* Raising phi moves time from low-power entities to high-power ones: the highest-power
 * entity's slice never shrinks, the lowest-power one's never grows, and the spread of
 * normalised energy never narrows. */
static void allocation_is_monotone_in_phi(void **state)
{
    (void)state;
    enum { N = 30 };
    struct etf_alloc_input in[N];
    double slices[N];
    random_entities(in, N);
    size_t lo = 0, hi = 0;
    for (size_t i = 1; i < N; i++) {
        if (in[i].power_mw / in[i].weight < in[lo].power_mw / in[lo].weight)
            lo = i;
        if (in[i].power_mw > in[hi].power_mw)
            hi = i;
    }
    double prev_hi = 0, prev_lo = INFINITY, prev_spread = 0;
    for (int step = 0; step <= 100; step++) {
        allocate(in, N, step / 100.0, slices);
        double emin = INFINITY, emax = 0;
        for (size_t i = 0; i < N; i++) {
            double e = in[i].power_mw * slices[i] / in[i].weight;
            emin = fmin(emin, e);
            emax = fmax(emax, e);
        }
        assert_true(slices[hi] >= prev_hi * (1 - 1e-12));
        assert_true(slices[lo] <= prev_lo * (1 + 1e-12));
        assert_true(emax / emin >= prev_spread * (1 - 1e-12));
        prev_hi = slices[hi];
        prev_lo = slices[lo];
        prev_spread = emax / emin;
    }
}

/* The example of the original ETF: phi 0.7, Q 40 ms, ResNet-50 on a TX2 at 1300.5 MHz
 * (4261 mW) and 726.75 MHz (1717 mW): floors of 14 ms each, the slow one gets the 12 ms
 * remainder because even then its energy stays below the fast one's. */
static void tx2_resnet50_example(void **state)
{
    (void)state;
    struct etf_alloc_input in[2] = {{1024, 4261}, {1024, 1717}};
    double slices[2];
    allocate(in, 2, 0.7, slices);
    assert_true(fabs(slices[0] - 14e6) < 1);
    assert_true(fabs(slices[1] - 26e6) < 1);
}

static void single_entity_gets_the_quantum(void **state)
{
    (void)state;
    struct etf_alloc_input in[1] = {{15, 3000}};
    double slices[1];
    for (int step = 0; step <= 10; step++) {
        allocate(in, 1, step / 10.0, slices);
        assert_true(fabs(slices[0] - Q) < 1e-6);
    }
}

static void equal_power_ties_are_deterministic(void **state)
{
    (void)state;
    struct etf_alloc_input in[4] = {{1024, 500}, {1024, 500}, {335, 500}, {88761, 500}};
    double a[4], b[4];
    allocate(in, 4, 0.3, a);
    allocate(in, 4, 0.3, b);
    for (size_t i = 0; i < 4; i++)
        assert_true(a[i] == b[i]);
    /* equal powers: energy fairness and time fairness agree, for any phi */
    for (size_t i = 1; i < 4; i++)
        assert_true(fabs(a[i] / in[i].weight - a[0] / in[0].weight) < 1e-9 * a[0]);
}

static void invalid_inputs_are_refused(void **state)
{
    (void)state;
    struct etf_alloc_input ok[2] = {{1024, 100}, {1024, 200}};
    struct etf_alloc_input zero_w[2] = {{0, 100}, {1024, 200}};
    struct etf_alloc_input zero_p[2] = {{1024, 0}, {1024, 200}};
    struct etf_alloc_input nan_p[2] = {{1024, NAN}, {1024, 200}};
    struct etf_alloc_input inf_w[2] = {{INFINITY, 1}, {1024, 200}};
    double slices[2];
    struct etf_alloc_rank rank[2];
    assert_int_equal(etf__alloc_slices(ok, 0, 0.5, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(ok, 2, -0.01, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(ok, 2, 1.01, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(ok, 2, NAN, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(ok, 2, 0.5, 0, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(ok, 2, 0.5, -1, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(zero_w, 2, 0.5, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(zero_p, 2, 0.5, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(nan_p, 2, 0.5, Q, slices, rank), ETF_EINVAL);
    assert_int_equal(etf__alloc_slices(inf_w, 2, 0.5, Q, slices, rank), ETF_EINVAL);
}

static void nice_levels_map_to_the_cfs_table(void **state)
{
    (void)state;
    assert_int_equal(etf_nice_to_weight(-20), 88761);
    assert_int_equal(etf_nice_to_weight(0), 1024);
    assert_int_equal(etf_nice_to_weight(19), 15);
    for (int nice = -20; nice < 19; nice++) {
        double ratio = (double)etf_nice_to_weight(nice) / etf_nice_to_weight(nice + 1);
        assert_true(ratio > 1.19 && ratio < 1.31); /* small weights are rounded */
    }
    assert_false(etf_nice_valid(-21));
    assert_false(etf_nice_valid(20));
    assert_true(etf_nice_valid(-20));
    assert_true(etf_nice_valid(19));
}

/* The scheduler's incremental allocation (share_tree.c) must give the closed form's slices
 * as entities join, leave and change weight or power in any order. */
static void incremental_tree_matches_closed_form(void **state)
{
    (void)state;
    enum { N = 300 };
    static struct etf_share_node nodes[N];
    static bool present[N];
    struct etf_share_tree tree;
    etf__share_init(&tree);
    struct etf_alloc_input in[N];
    double expected[N];
    struct etf_alloc_rank rank[N];
    size_t index[N];
    static const double phis[] = {0, 0.3, 0.7, 1};
    for (int op = 0; op < 3000; op++) {
        size_t i = (size_t)(uniform() * N);
        if (present[i]) {
            etf__share_remove(&tree, &nodes[i]);
            present[i] = false;
        }
        if (uniform() < 0.6) { /* (re)join with a new weight and power */
            nodes[i].seq = i;
            nodes[i].weight = etf_nice_to_weight((int)(uniform() * 40) - 20);
            /* few distinct powers, so that ties in the tree's order are common */
            nodes[i].power_mw = 100.0 * (1 + (int)(uniform() * 20));
            etf__share_insert(&tree, &nodes[i]);
            present[i] = true;
        }
        if (op % 100 != 99 || tree.n == 0)
            continue;
        size_t n = 0;
        for (size_t j = 0; j < N; j++) {
            if (present[j]) {
                in[n] = (struct etf_alloc_input){nodes[j].weight, nodes[j].power_mw};
                index[n++] = j;
            }
        }
        assert_int_equal(n, tree.n);
        for (size_t p = 0; p < sizeof phis / sizeof *phis; p++) {
            assert_int_equal(etf__alloc_slices(in, n, phis[p], Q, expected, rank), 0);
            struct etf_share_level lv = etf__share_level(&tree, phis[p], Q);
            double total = 0;
            for (size_t k = 0; k < n; k++) {
                const struct etf_share_node *node = &nodes[index[k]];
                double got = etf__share_slice(&lv, node->weight, node->power_mw);
                assert_true(fabs(got - expected[k]) <= 1e-9 * expected[k]);
                total += got;
            }
            assert_true(fabs(total - Q) <= 1e-9 * Q);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(slices_sum_to_quantum_and_respect_floors),
        cmocka_unit_test(phi_one_is_weighted_time_fair),
        cmocka_unit_test(phi_zero_is_weighted_energy_fair),
        cmocka_unit_test(remainder_raises_the_lowest_energies_first),
        cmocka_unit_test(allocation_is_monotone_in_phi),
        cmocka_unit_test(tx2_resnet50_example),
        cmocka_unit_test(single_entity_gets_the_quantum),
        cmocka_unit_test(equal_power_ties_are_deterministic),
        cmocka_unit_test(invalid_inputs_are_refused),
        cmocka_unit_test(nice_levels_map_to_the_cfs_table),
        cmocka_unit_test(incremental_tree_matches_closed_form),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
