/* The simulated device: runs each kernel for the time its model's profile gives at the
 * clock in force. With a virtual clock it advances that clock (the simulator: no real
 * time passes); without one it sleeps, so that a server can be exercised end to end
 * without real kernels.
 *
 * With a queue depth (etf_device_config) it is asynchronous like a GPU: a submit only
 * queues the kernel (ETF_EBUSY when the queue is full), and a fence runs the oldest ones
 * in order. That exercises the scheduler's asynchronous path without a GPU. */
#include "device/device.h"

#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

struct sim_device {
    struct etf_device base;
    struct etf_vclock *vclock;
    /* Asynchronous: the submitted kernels, a ring of n_queued from head. */
    struct etf_kernel_run **queue;
    size_t depth, head, n_queued;
    /* prepare hints, for tests of the dispatcher: how many came while kernels were queued,
     * the latest one's task, and how many tasks started as the latest hint said */
    uint64_t hints, hinted_task, hits;
};

static const struct etf_device_ops device_sim_queued_ops;

struct etf_dmodel {
    const struct etf_profile *profile;
    /* The last frequency looked up and its index: models run at one clock almost always. */
    uint64_t cached_hz;
    long cached_index;
};

static int device_sim_open(const struct etf_device_config *cfg, struct etf_device **out,
                           struct etf_diag *diag)
{
    struct sim_device *d = calloc(1, sizeof *d);
    if (!d)
        return etf_diagf(diag, ETF_ENOMEM, "device sim: out of memory");
    d->base.ops = cfg->queue_depth ? &device_sim_queued_ops : &etf__device_sim_ops;
    d->vclock = cfg->vclock;
    d->depth = cfg->queue_depth;
    if (d->depth && !(d->queue = calloc(d->depth, sizeof *d->queue))) {
        free(d);
        return etf_diagf(diag, ETF_ENOMEM, "device sim: out of memory");
    }
    *out = &d->base;
    return 0;
}

static int device_sim_load(struct etf_device *dev, const struct etf_model_desc *desc,
                           struct etf_dmodel **out, struct etf_diag *diag)
{
    (void)dev;
    if (!desc->profile)
        return etf_diagf(diag, ETF_EINVAL, "device sim: model '%.64s' has no profile to simulate",
                         desc->name ? desc->name : "?");
    struct etf_dmodel *dm = calloc(1, sizeof *dm);
    if (!dm)
        return etf_diagf(diag, ETF_ENOMEM, "device sim: out of memory");
    dm->profile = desc->profile;
    dm->cached_index = -1;
    *out = dm;
    return 0;
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* The kernel's time at the run's clock, from the profile. */
static int kernel_time(struct etf_dmodel *dm, const struct etf_kernel_run *run, uint64_t *ns)
{
    if (run->kernel >= dm->profile->n_kernels)
        return ETF_EINVAL;
    if (dm->cached_index < 0 || dm->cached_hz != run->freq_hz) {
        long index = etf_profile_freq_index(dm->profile, run->freq_hz);
        if (index < 0)
            return ETF_EDEVICE; /* the profile cannot tell how long the kernel takes here */
        dm->cached_hz = run->freq_hz;
        dm->cached_index = index;
    }
    *ns = (uint64_t)llround(dm->profile->kernels[run->kernel].time_us[dm->cached_index] * 1000.0);
    return 0;
}

/* Lets ns of device time pass and fills busy_ns. */
static void run_for(struct sim_device *d, struct etf_kernel_run *run, uint64_t ns)
{
    if (d->vclock) {
        d->vclock->now_ns += ns;
        run->busy_ns = ns;
    } else {
        uint64_t start = etf_host_ns();
        sleep_ns(ns);
        run->busy_ns = etf_host_ns() - start;
    }
}

static int device_sim_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    uint64_t ns;
    int rc = kernel_time(run->dm, run, &ns);
    if (rc == 0)
        run_for((struct sim_device *)dev, run, ns);
    return rc;
}

static int device_sim_submit(struct etf_device *dev, struct etf_kernel_run *run)
{
    struct sim_device *d = (struct sim_device *)dev;
    uint64_t ns;
    int rc = kernel_time(run->dm, run, &ns); /* what cannot run is refused at once */
    if (rc)
        return rc;
    if (d->n_queued == d->depth)
        return ETF_EBUSY;
    if (run->kernel == 0 && run->task && run->task == d->hinted_task)
        d->hits++;
    d->queue[(d->head + d->n_queued++) % d->depth] = run;
    return 0;
}

/* Nothing to stage in a simulation: records the hint. */
static void device_sim_prepare(struct etf_device *dev, const struct etf_kernel_run *run)
{
    struct sim_device *d = (struct sim_device *)dev;
    if (d->n_queued)
        d->hints++;
    d->hinted_task = run->task;
}

void etf__device_sim_hints(const struct etf_device *dev, uint64_t *hints, uint64_t *hits)
{
    const struct sim_device *d = (const struct sim_device *)dev;
    *hints = d->hints;
    *hits = d->hits;
}

static int device_sim_fence(struct etf_device *dev, size_t n)
{
    struct sim_device *d = (struct sim_device *)dev;
    for (; n > 0 && d->n_queued > 0; n--, d->n_queued--) {
        struct etf_kernel_run *run = d->queue[d->head];
        d->head = (d->head + 1) % d->depth;
        uint64_t ns = 0;
        kernel_time(run->dm, run, &ns); /* checked at submit */
        run_for(d, run, ns);
    }
    return 0;
}

/* Runs one kernel at once, after whatever was queued. */
static int device_sim_queued_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    device_sim_fence(dev, SIZE_MAX);
    return device_sim_launch(dev, run);
}

static void device_sim_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    (void)dev;
    free(dm);
}

static void device_sim_close(struct etf_device *dev)
{
    free(((struct sim_device *)dev)->queue);
    free(dev);
}

const struct etf_device_ops etf__device_sim_ops = {
    .name = "sim",
    .open = device_sim_open,
    .load = device_sim_load,
    .launch = device_sim_launch,
    .unload = device_sim_unload,
    .close = device_sim_close,
};

static const struct etf_device_ops device_sim_queued_ops = {
    .name = "sim",
    .open = device_sim_open,
    .load = device_sim_load,
    .launch = device_sim_queued_launch,
    .submit = device_sim_submit,
    .fence = device_sim_fence,
    .prepare = device_sim_prepare,
    .unload = device_sim_unload,
    .close = device_sim_close,
};
