/* What the scheduler costs in throughput: the same models run back-to-back on the device
 * without it, then as backlogged tenants through it.
 *
 *   bench-overhead --device NAME [--threads N] [--seconds S] MODEL.onnx:BATCH [...]
 *
 * Back-to-back: each model alone for S seconds, its kernels handed straight to the device
 * (an asynchronous device keeps two tasks in flight, fencing each at its end), which gives
 * its best time per task t_i. Scheduled: one tenant per model, equal priorities, phi 1,
 * each a closed loop of two outstanding requests, the dispatcher thread serving them for S
 * seconds; tenant i completes n_i tasks. Back-to-back runs again after the scheduled one,
 * and t_i is the mean of the two times: a GPU's time per task drifts by several percent
 * from one run to the next (clocks follow power and temperature), and a drift between the
 * phases would pass for overhead (or for a gain). The scheduled run did the work of
 * sum(n_i * t_i) seconds of back-to-back running in S: the overhead is 1 minus that over
 * S. Also printed: the device busy time (the sum of the kernels' measured times) over wall
 * time in every run. Prints numbers only; no target is judged here.
 */
#include "etf/model.h"
#include "etf/sched.h"

#include "cli.h"
#include "device/device.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MODELS 8
#define IN_FLIGHT 2 /* tasks per tenant, and tasks in flight back-to-back */

struct tensor_set {
    float **inputs, **outputs;
    struct etf_task_io io;
};

struct bench_model {
    const char *path;
    size_t batch;
    struct etf_plan *plan;
    struct tensor_set sets[IN_FLIGHT];
    double task_s; /* back-to-back seconds per task: the mean of the runs before and after */
    double busy_share;
    /* Scheduled run. */
    uint64_t mid;
    atomic_ulong done_in_window;
};

struct bench {
    struct bench_model models[MAX_MODELS];
    size_t n_models;
    struct etf_sched *sched;
    atomic_bool counting, stopping;
    uint64_t window_start_ns, window_end_ns;
};

#define PROG "bench-overhead"

static int fail(const char *what, const struct etf_diag *diag)
{
    return etf_cli_fail(PROG, 1, "%s: %s", what, diag->msg);
}

static int tensors_alloc(struct bench_model *bm)
{
    struct etf_tensor_info info;
    size_t n_in = etf_plan_input_count(bm->plan), n_out = etf_plan_output_count(bm->plan);
    for (int s = 0; s < IN_FLIGHT; s++) {
        struct tensor_set *ts = &bm->sets[s];
        ts->inputs = calloc(n_in + 1, sizeof *ts->inputs);
        ts->outputs = calloc(n_out + 1, sizeof *ts->outputs);
        if (!ts->inputs || !ts->outputs)
            return ETF_ENOMEM;
        for (size_t i = 0; i < n_in; i++) {
            etf_plan_input(bm->plan, i, &info);
            if (!(ts->inputs[i] = malloc(info.elems * sizeof(float))))
                return ETF_ENOMEM;
            for (size_t j = 0; j < info.elems; j++)
                ts->inputs[i][j] = (float)((j * 2654435761u) % 2001) / 1000.0f - 1.0f;
        }
        for (size_t i = 0; i < n_out; i++) {
            etf_plan_output(bm->plan, i, &info);
            if (!(ts->outputs[i] = calloc(info.elems, sizeof(float))))
                return ETF_ENOMEM;
        }
        ts->io.inputs = (const float *const *)ts->inputs;
        ts->io.outputs = ts->outputs;
    }
    return 0;
}

static void tensors_free(struct bench_model *bm)
{
    for (int s = 0; s < IN_FLIGHT; s++) {
        struct tensor_set *ts = &bm->sets[s];
        for (size_t i = 0; ts->inputs && ts->inputs[i]; i++)
            free(ts->inputs[i]);
        for (size_t i = 0; ts->outputs && ts->outputs[i]; i++)
            free(ts->outputs[i]);
        free(ts->inputs);
        free(ts->outputs);
    }
}

/* Runs bm alone on dev for `seconds`, tasks back to back, and sets *task_s, its time per
 * task. */
static int back_to_back(struct etf_device *dev, struct bench_model *bm, double seconds,
                        double *task_s)
{
    struct etf_diag diag = {0};
    struct etf_model_desc desc = {.name = bm->path, .plan = bm->plan};
    struct etf_dmodel *dm;
    if (etf__device_load(dev, &desc, &dm, &diag))
        return fail(bm->path, &diag);
    size_t nk = etf_plan_kernel_count(bm->plan);
    struct etf_kernel_run *runs = calloc(IN_FLIGHT * nk, sizeof *runs);
    if (!runs) {
        etf__device_unload(dev, dm);
        return 1;
    }
    bool async = etf__device_async(dev);
    uint64_t start = etf_host_ns(), end = start + (uint64_t)(seconds * 1e9), busy = 0;
    unsigned long submitted = 0, completed = 0;
    int rc = 0;
    while (rc == 0) {
        /* A slot's previous task was completed before the slot comes round again. */
        struct etf_kernel_run *r = &runs[(submitted % IN_FLIGHT) * nk];
        const struct etf_task_io *io = &bm->sets[submitted % IN_FLIGHT].io;
        for (size_t k = 0; k < nk && rc == 0; k++) {
            r[k] = (struct etf_kernel_run){.dm = dm, .kernel = k, .io = io};
            rc = async ? etf__device_submit(dev, &r[k]) : etf__device_launch(dev, &r[k]);
        }
        submitted++;
        /* Asynchronous: the oldest task is completed while the newest stays in flight. */
        if (rc == 0 && async && submitted - completed == IN_FLIGHT)
            rc = etf__device_fence(dev, nk);
        while (rc == 0 && completed < submitted - (async ? 1 : 0)) {
            for (size_t k = 0; k < nk; k++)
                busy += runs[(completed % IN_FLIGHT) * nk + k].busy_ns;
            completed++;
        }
        if (etf_host_ns() >= end)
            break;
    }
    if (rc == 0 && async && (rc = etf__device_fence(dev, SIZE_MAX)) == 0)
        for (; completed < submitted; completed++)
            for (size_t k = 0; k < nk; k++)
                busy += runs[(completed % IN_FLIGHT) * nk + k].busy_ns;
    unsigned long tasks = completed;
    uint64_t wall = etf_host_ns() - start;
    etf__device_unload(dev, dm);
    free(runs);
    if (rc) {
        fprintf(stderr, "bench-overhead: %s: a kernel failed: %s\n", bm->path, etf_strerror(rc));
        return 1;
    }
    *task_s = (double)wall / 1e9 / (double)tasks;
    bm->busy_share = (double)busy / (double)wall;
    printf("  %-40s batch %3zu  %9.3f ms per task  device busy %5.1f%%\n", bm->path, bm->batch,
           *task_s * 1e3, 100 * bm->busy_share);
    return 0;
}

static void on_done(void *arg, const struct etf_task_record *rec)
{
    struct bench *b = arg;
    struct bench_model *bm = &b->models[(uintptr_t)rec->user / IN_FLIGHT];
    if (rec->status) {
        fprintf(stderr, "bench-overhead: a task failed: %s\n", etf_strerror(rec->status));
        return;
    }
    if (atomic_load(&b->counting) && rec->end_ns >= b->window_start_ns &&
        rec->end_ns <= b->window_end_ns)
        atomic_fetch_add(&bm->done_in_window, 1);
    if (atomic_load(&b->stopping))
        return;
    struct etf_request req = {
        .mid = bm->mid, .io = &bm->sets[(uintptr_t)rec->user % IN_FLIGHT].io, .user = rec->user};
    etf_submit(b->sched, &req, NULL, NULL);
}

struct b2b_job {
    struct etf_device *dev;
    struct bench_model *bm;
    double seconds, *task_s;
    int rc;
};

static void *b2b_main(void *arg)
{
    struct b2b_job *j = arg;
    j->rc = back_to_back(j->dev, j->bm, j->seconds, j->task_s);
    return NULL;
}

/* back_to_back on a thread of its own that ends with it. A CPU device's OpenMP runtime
 * keeps a team of workers per calling thread, spinning between parallel regions, and a
 * team left behind takes cores from the dispatcher thread's. On a 2-core machine this took
 * the overhead read for the CPU device from 14% to 7.5%; with OMP_WAIT_POLICY=passive it
 * reads about 0 (-2.9% to 0.3%), so spinning teams are still most of what remains there. */
static int back_to_back_alone(struct etf_device *dev, struct bench_model *bm, double seconds,
                              double *task_s)
{
    struct b2b_job j = {.dev = dev, .bm = bm, .seconds = seconds, .task_s = task_s};
    pthread_t t;
    if (pthread_create(&t, NULL, b2b_main, &j) != 0) {
        fprintf(stderr, "bench-overhead: no thread for the back-to-back run\n");
        return 1;
    }
    pthread_join(t, NULL);
    return j.rc;
}

static int scheduled(struct bench *b, struct etf_device *dev, double seconds)
{
    struct etf_diag diag = {0};
    struct etf_freq *freq = NULL;
    if (etf_freq_open("none", NULL, &freq, &diag))
        return fail("freq", &diag);
    struct etf_sched_config cfg = {.quantum_ns = 40000000,
                                   .phi = 1,
                                   .device = dev,
                                   .freq = freq,
                                   .on_done = on_done,
                                   .on_done_arg = b};
    int rc = 1;
    if (etf_sched_create(&cfg, &b->sched, &diag)) {
        fail("scheduler", &diag);
        goto out_freq;
    }
    for (size_t i = 0; i < b->n_models; i++) {
        uint64_t eid;
        struct etf_model_spec spec = {.plan = b->models[i].plan};
        if (etf_entity_create(b->sched, 0, &eid, &diag) ||
            etf_model_load(b->sched, eid, &spec, &b->models[i].mid, &diag)) {
            fail(b->models[i].path, &diag);
            goto out_sched;
        }
    }
    if (etf_sched_start(b->sched)) {
        fprintf(stderr, "bench-overhead: cannot start the dispatcher\n");
        goto out_sched;
    }
    /* One second of warm-up teaches the scheduler every kernel's time. */
    uint64_t now = etf_host_ns();
    b->window_start_ns = now + 1000000000ull;
    b->window_end_ns = b->window_start_ns + (uint64_t)(seconds * 1e9);
    atomic_store(&b->counting, true);
    for (size_t i = 0; i < b->n_models; i++)
        for (uintptr_t s = 0; s < IN_FLIGHT; s++) {
            struct etf_request req = {.mid = b->models[i].mid,
                                      .io = &b->models[i].sets[s].io,
                                      .user = (void *)(i * IN_FLIGHT + s)};
            if (etf_submit(b->sched, &req, NULL, &diag)) {
                fail("submit", &diag);
                goto out_sched;
            }
        }
    struct timespec pause = {1, 0};
    nanosleep(&pause, NULL);
    struct etf_sched_stats before, after;
    etf_sched_stats(b->sched, &before);
    uint64_t t0 = etf_host_ns();
    pause.tv_sec = (time_t)seconds;
    pause.tv_nsec = (long)((seconds - (double)pause.tv_sec) * 1e9);
    nanosleep(&pause, NULL);
    etf_sched_stats(b->sched, &after);
    uint64_t wall = etf_host_ns() - t0;
    atomic_store(&b->stopping, true);
    etf_sched_stop(b->sched, 10000000000ull);

    for (size_t i = 0; i < b->n_models; i++) {
        unsigned long n = atomic_load(&b->models[i].done_in_window);
        printf("  %-40s %8lu tasks  %8.1f per s\n", b->models[i].path, n, (double)n / seconds);
    }
    double busy = (double)(after.busy_ns - before.busy_ns) / (double)wall;
    uint64_t turns = after.turns - before.turns, fences = after.fences - before.fences;
    uint64_t prepares = after.prepares - before.prepares;
    printf("scheduled: device busy %.1f%% of wall time, %.1f turns/s, %.1f fences/s, "
           "%.1f prepares/s\n",
           100 * busy, (double)turns * 1e9 / (double)wall, (double)fences * 1e9 / (double)wall,
           (double)prepares * 1e9 / (double)wall);
    rc = 0;
out_sched:
    etf_sched_destroy(b->sched);
out_freq:
    etf_freq_close(freq);
    return rc;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: bench-overhead --device NAME [--threads N] [--seconds S] "
               "MODEL.onnx:BATCH [...]\n");
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {{"device", required_argument, NULL, 'd'},
                                          {"threads", required_argument, NULL, 't'},
                                          {"seconds", required_argument, NULL, 's'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    const char *device = NULL;
    int threads = 0;
    double seconds = 10;
    int c;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            device = optarg;
            break;
        case 't':
            if (!etf_cli_threads(PROG, optarg, &threads))
                return 2;
            break;
        case 's':
            if (!etf_cli_double(optarg, 0.1, 3600, &seconds))
                return etf_cli_fail(PROG, 2, "--seconds: expected 0.1..3600, found '%s'", optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    static struct bench b;
    b.n_models = (size_t)(argc - optind);
    if (!device || b.n_models == 0 || b.n_models > MAX_MODELS) {
        usage(stderr);
        return 2;
    }
    struct etf_diag diag = {0};
    int rc = 1;
    for (size_t i = 0; i < b.n_models; i++) {
        struct bench_model *bm = &b.models[i];
        char *spec = argv[optind + (int)i], *colon = strrchr(spec, ':');
        uint64_t batch = 1;
        if (colon) {
            *colon = '\0';
            if (!etf_cli_u64(colon + 1, 1, 65536, &batch)) {
                rc = etf_cli_fail(PROG, 2, "%s: batch: expected 1..65536, found '%s'", spec,
                                  colon + 1);
                goto out;
            }
        }
        bm->batch = (size_t)batch;
        bm->path = spec;
        struct etf_model_options opts = {.batch = bm->batch};
        if (etf_model_open(spec, &opts, &bm->plan, &diag)) {
            rc = fail(spec, &diag);
            goto out;
        }
        if (tensors_alloc(bm)) {
            fprintf(stderr, "bench-overhead: out of memory\n");
            goto out;
        }
    }
    struct etf_device_config dcfg = {.threads = threads};
    struct etf_device *dev;
    if (etf_device_open(device, &dcfg, &dev, &diag)) {
        rc = fail("device", &diag);
        goto out;
    }
    printf("back-to-back, %.0f s per model (device %s):\n", seconds, device);
    rc = 0;
    double before[MAX_MODELS], after[MAX_MODELS];
    for (size_t i = 0; i < b.n_models && rc == 0; i++)
        rc = back_to_back_alone(dev, &b.models[i], seconds, &before[i]);
    if (rc == 0) {
        printf("scheduled, %zu tenants, %.0f s:\n", b.n_models, seconds);
        rc = scheduled(&b, dev, seconds);
    }
    if (rc == 0)
        printf("back-to-back again:\n");
    for (size_t i = 0; i < b.n_models && rc == 0; i++)
        rc = back_to_back_alone(dev, &b.models[i], seconds, &after[i]);
    if (rc == 0) {
        double work = 0;
        for (size_t i = 0; i < b.n_models; i++) {
            b.models[i].task_s = (before[i] + after[i]) / 2;
            work += (double)atomic_load(&b.models[i].done_in_window) * b.models[i].task_s;
        }
        printf("throughput against back-to-back (mean of both runs): %.3f (overhead %.2f%%)\n",
               work / seconds, 100 * (1 - work / seconds));
    }
    etf_device_close(dev);
out:
    for (size_t i = 0; i < b.n_models; i++) {
        tensors_free(&b.models[i]);
        etf_plan_free(b.models[i].plan);
    }
    return rc;
}
