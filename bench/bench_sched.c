/* Scheduler overhead: host nanoseconds per kernel dispatch with 10, 1,000 and 10,000
 * backlogged tenants on the simulated device and a virtual clock, against the same kernels
 * launched back-to-back without the scheduler (the peer), the cost of allocating all slices
 * at once (the closed form, a sort) and of what the scheduler does instead when an entity
 * leaves and returns (two treap updates and a new water level). Prints numbers only. */
#include "etf/sched.h"

#include "device/device.h"
#include "sched/alloc.h"
#include "sched/share_tree.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KERNELS 10
#define KERNEL_US 100

static struct etf_profile *make_profile(void)
{
    char json[4096];
    size_t off = (size_t)snprintf(json, sizeof json, "{\"model_name\": \"bench\", \"kernel_profile\": {");
    for (int k = 0; k < KERNELS; k++)
        off += (size_t)snprintf(json + off, sizeof json - off,
                                "%s\"k%d\": {\"exec_time\": {\"1000000000\": %d}, "
                                "\"gpu_power\": {\"1000000000\": %d}}",
                                k ? ", " : "", k, KERNEL_US, 1000 + 100 * k);
    snprintf(json + off, sizeof json - off, "}}");
    struct etf_profile *p;
    struct etf_diag diag;
    if (etf_profile_parse(json, strlen(json), "bench", &p, &diag)) {
        fprintf(stderr, "bench: %s\n", diag.msg);
        exit(1);
    }
    return p;
}

struct closed_loop {
    struct etf_sched *s;
};

static void resubmit(void *arg, const struct etf_task_record *rec)
{
    struct closed_loop *loop = arg;
    struct etf_request req = {.mid = rec->mid};
    etf_submit(loop->s, &req, NULL, NULL);
}

static int compare_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Host ns per dispatch over `dispatches` kernels with n backlogged tenants. */
static void bench_dispatch(size_t n, uint64_t dispatches, double *ns_per_dispatch,
                           double *kernels_per_turn)
{
    struct etf_vclock vc = {0};
    struct etf_clock clock = etf_vclock_as_clock(&vc);
    struct etf_device_config dcfg = {.vclock = &vc};
    struct etf_device *dev;
    struct etf_freq *freq;
    struct etf_diag diag;
    if (etf_device_open("sim", &dcfg, &dev, &diag) ||
        etf_freq_open("sim", NULL, &freq, &diag)) {
        fprintf(stderr, "bench: %s\n", diag.msg);
        exit(1);
    }
    struct closed_loop loop;
    struct etf_sched_config cfg = {
        .quantum_ns = 40000000, .phi = 0.5, .clock = &clock, .device = dev, .freq = freq,
        .on_done = resubmit, .on_done_arg = &loop, .max_queued_tasks = 4 * n,
    };
    if (etf_sched_create(&cfg, &loop.s, &diag)) {
        fprintf(stderr, "bench: %s\n", diag.msg);
        exit(1);
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t eid, mid;
        struct etf_model_spec spec = {.profile = make_profile()};
        if (etf_entity_create(loop.s, (int64_t)(i % 40) - 20, &eid, &diag) ||
            etf_model_load(loop.s, eid, &spec, &mid, &diag)) {
            fprintf(stderr, "bench: %s\n", diag.msg);
            exit(1);
        }
        for (int j = 0; j < 2; j++)
            etf_submit(loop.s, &(struct etf_request){.mid = mid}, NULL, NULL);
    }
    /* Warm up: the first turns allocate and fault memory in. */
    bool ran;
    struct etf_sched_stats st;
    for (size_t i = 0; i < 2 * n; i++)
        etf_sched_step(loop.s, &ran);
    etf_sched_stats(loop.s, &st);
    uint64_t d0 = st.dispatches, t0 = st.turns, start = etf_host_ns();
    do {
        for (int i = 0; i < 1000; i++)
            etf_sched_step(loop.s, &ran);
        etf_sched_stats(loop.s, &st);
    } while (st.dispatches - d0 < dispatches);
    uint64_t host = etf_host_ns() - start;
    *ns_per_dispatch = (double)host / (double)(st.dispatches - d0);
    *kernels_per_turn = (double)(st.dispatches - d0) / (double)(st.turns - t0);
    etf_sched_destroy(loop.s);
    etf_freq_close(freq);
    etf_device_close(dev);
}

/* The peer: the same kernels launched straight on the simulated device. */
static double bench_device_only(uint64_t dispatches)
{
    struct etf_vclock vc = {0};
    struct etf_device_config dcfg = {.vclock = &vc};
    struct etf_device *dev;
    etf_device_open("sim", &dcfg, &dev, NULL);
    struct etf_profile *p = make_profile();
    struct etf_model_desc desc = {.name = "bench", .profile = p};
    struct etf_dmodel *dm;
    etf__device_load(dev, &desc, &dm, NULL);
    uint64_t start = etf_host_ns();
    for (uint64_t i = 0; i < dispatches; i++) {
        struct etf_kernel_run run = {.dm = dm, .kernel = i % KERNELS, .freq_hz = 1000000000};
        etf__device_launch(dev, &run);
    }
    double ns = (double)(etf_host_ns() - start) / (double)dispatches;
    etf__device_unload(dev, dm);
    etf_profile_free(p);
    etf_device_close(dev);
    return ns;
}

/* Median host µs of one allocation of all n slices at once (alloc.c, a sort). */
static double bench_alloc(size_t n)
{
    struct etf_alloc_input *in = malloc(n * sizeof *in);
    struct etf_alloc_rank *rank = malloc(n * sizeof *rank);
    double *slices = malloc(n * sizeof *slices);
    for (size_t i = 0; i < n; i++)
        in[i] = (struct etf_alloc_input){etf_nice_to_weight((int)(i % 40) - 20),
                                         100.0 + (double)((i * 2654435761u) % 5000)};
    enum { REPS = 51 };
    uint64_t t[REPS];
    for (int r = 0; r < REPS; r++) {
        uint64_t start = etf_host_ns();
        etf__alloc_slices(in, n, 0.5, 40e6, slices, rank);
        t[r] = etf_host_ns() - start;
    }
    qsort(t, REPS, sizeof *t, compare_u64);
    free(in);
    free(rank);
    free(slices);
    return (double)t[REPS / 2] / 1000.0;
}

/* Host ns of what the scheduler does when one of n runnable entities leaves and comes
 * back: two treap updates and a new water level. */
static double bench_share_tree(size_t n)
{
    struct etf_share_node *nodes = calloc(n, sizeof *nodes);
    struct etf_share_tree tree;
    etf__share_init(&tree);
    for (size_t i = 0; i < n; i++) {
        nodes[i] = (struct etf_share_node){.seq = i,
                                           .weight = etf_nice_to_weight((int)(i % 40) - 20),
                                           .power_mw = 100.0 + (double)((i * 2654435761u) % 5000)};
        etf__share_insert(&tree, &nodes[i]);
    }
    enum { REPS = 200000 };
    double sink = 0;
    uint64_t start = etf_host_ns();
    for (size_t r = 0; r < REPS; r++) {
        struct etf_share_node *node = &nodes[(r * 7919) % n];
        etf__share_remove(&tree, node);
        etf__share_insert(&tree, node);
        struct etf_share_level lv = etf__share_level(&tree, 0.5, 40e6);
        sink += lv.level;
    }
    double ns = (double)(etf_host_ns() - start) / REPS;
    free(nodes);
    return sink > 0 ? ns : ns; /* sink keeps the loop from being optimised away */
}

int main(int argc, char **argv)
{
    uint64_t dispatches = argc > 1 ? strtoull(argv[1], NULL, 10) : 2000000;
    static const size_t sizes[] = {10, 1000, 10000};
    double peer = bench_device_only(dispatches);
    printf("ETF scheduler overhead (simulated device, virtual clock, %d kernels of %d us, "
           "Q 40 ms, phi 0.5)\n",
           KERNELS, KERNEL_US);
    printf("device alone: %.1f ns per kernel launch\n\n", peer);
    printf("%8s  %12s  %9s  %13s  %17s  %18s\n", "tenants", "ns/dispatch", "x device",
           "kernels/turn", "full alloc us", "leave+join+level ns");
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        double ns, per_turn;
        bench_dispatch(sizes[i], dispatches, &ns, &per_turn);
        printf("%8zu  %12.1f  %9.2f  %13.2f  %17.2f  %18.1f\n", sizes[i], ns, ns / peer, per_turn,
               bench_alloc(sizes[i]), bench_share_tree(sizes[i]));
    }
    return 0;
}
