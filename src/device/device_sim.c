/* The simulated device: runs each kernel for the time its model's profile gives at the
 * clock in force. With a virtual clock it advances that clock (the simulator: no real
 * time passes); without one it sleeps, so that a server can be exercised end to end
 * without real kernels. */
#include "device/device.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <time.h>

struct sim_device {
    struct etf_device base;
    struct etf_vclock *vclock;
};

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
    d->base.ops = &etf__device_sim_ops;
    d->vclock = cfg->vclock;
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
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int device_sim_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    struct sim_device *d = (struct sim_device *)dev;
    struct etf_dmodel *dm = run->dm;
    if (run->kernel >= dm->profile->n_kernels)
        return ETF_EINVAL;
    if (dm->cached_index < 0 || dm->cached_hz != run->freq_hz) {
        long index = etf_profile_freq_index(dm->profile, run->freq_hz);
        if (index < 0)
            return ETF_EDEVICE; /* the profile cannot tell how long the kernel takes here */
        dm->cached_hz = run->freq_hz;
        dm->cached_index = index;
    }
    double us = dm->profile->kernels[run->kernel].time_us[dm->cached_index];
    uint64_t ns = (uint64_t)llround(us * 1000.0);
    if (d->vclock) {
        d->vclock->now_ns += ns;
        run->busy_ns = ns;
    } else {
        uint64_t start = etf_host_ns();
        sleep_ns(ns);
        run->busy_ns = etf_host_ns() - start;
    }
    return 0;
}

static void device_sim_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    (void)dev;
    free(dm);
}

static void device_sim_close(struct etf_device *dev)
{
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
