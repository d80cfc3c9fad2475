/* The `ina3221` meter: one power rail of the INA3221 monitors of a Jetson TX2 or Xavier,
 * read through the iio driver (bus/i2c/drivers/ina3221x/<dev>/iio:device<n>/in_power<k>_input,
 * mW, named by rail_name_<k>).
 *
 * The sensor gives power, not energy: read_energy samples it and integrates over the host
 * clock between consecutive reads (trapezoid rule), so the counter is as good as the
 * sampling is dense. The rail is the GPU's unless the configuration names another.
 */
#include "meter/meter.h"
#include "util/sysfs.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DRIVER_DIR "bus/i2c/drivers/ina3221x"
#define CHANNELS_MAX 16
/* Above this the reading is garbage, not a Jetson rail (and the arithmetic stays far from
 * overflow). */
#define POWER_MAX_MW 10000000ull

extern const struct etf_meter_ops etf__meter_ina3221_ops;

struct meter_ina3221 {
    struct etf_meter base;
    struct etf_sysfs fs;
    char power_rel[ETF_SYSFS_PATH_MAX]; /* the rail's in_power<k>_input */
    char rail[64];                      /* its name as the driver spells it */
    struct etf_power_integrator pi;
    struct etf_diag error; /* why the latest read failed */
};

static const char *const default_rails[] = {"GPU", "VDD_GPU", "VDD_SYS_GPU", NULL};

/* Rails seen while searching, for the message when the one wanted is missing. */
struct found {
    char text[240];
    size_t used;
};

static void found_add(struct found *f, const char *name)
{
    if (f->used < sizeof f->text)
        f->used += (size_t)snprintf(f->text + f->used, sizeof f->text - f->used, "%s%s",
                                    f->used ? ", " : "", name);
}

static int read_power_uw(const struct etf_sysfs *fs, const char *rel, uint64_t *uw,
                         struct etf_diag *diag)
{
    uint64_t mw;
    int rc = etf__sysfs_read_u64(fs, rel, &mw, diag);
    if (rc)
        return rc;
    if (mw > POWER_MAX_MW) {
        char path[ETF_SYSFS_PATH_MAX + 256];
        etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
        return etf_diagf(diag, ETF_EFORMAT, "%s: %" PRIu64 " mW is not a plausible reading", path,
                         mw);
    }
    *uw = mw * 1000;
    return 0;
}

/* Finds the rail among every iio device of the driver. The best match is the earliest name
 * in `wanted`; between equals, the first in natural order. */
static int find_rail(struct meter_ina3221 *m, const char *const *wanted, struct found *found,
                     struct etf_diag *diag)
{
    struct etf_sysfs_names devs, iios;
    int best = -1;
    int rc = etf__sysfs_list(&m->fs, DRIVER_DIR, "*-*", &devs, diag);
    if (rc == ETF_ENOENT)
        return etf_diagf(diag, ETF_ENOENT, "ina3221: no INA3221 driver at %s/" DRIVER_DIR,
                         m->fs.root);
    if (rc)
        return rc;
    for (size_t i = 0; i < devs.n && rc == 0; i++) {
        char rel[ETF_SYSFS_PATH_MAX];
        snprintf(rel, sizeof rel, DRIVER_DIR "/%s", devs.v[i]);
        rc = etf__sysfs_list(&m->fs, rel, "iio:device*", &iios, diag);
        if (rc == ETF_ENOENT || rc == ETF_EIO) {
            rc = 0; /* not a device directory (a driver attribute) */
            continue;
        }
        for (size_t j = 0; j < iios.n && rc == 0; j++) {
            for (int k = 0; k < CHANNELS_MAX; k++) {
                char name[64];
                snprintf(rel, sizeof rel, DRIVER_DIR "/%s/%s/rail_name_%d", devs.v[i], iios.v[j],
                         k);
                rc = etf__sysfs_read_line(&m->fs, rel, name, sizeof name, diag);
                if (rc == ETF_ENOENT) {
                    rc = 0;
                    continue;
                }
                if (rc)
                    break;
                found_add(found, name);
                int rank = etf__sysfs_rail_rank(name, wanted);
                if (rank >= 0 && (best < 0 || rank < best)) {
                    best = rank;
                    snprintf(m->rail, sizeof m->rail, "%s", name);
                    snprintf(m->power_rel, sizeof m->power_rel,
                             DRIVER_DIR "/%s/%s/in_power%d_input", devs.v[i], iios.v[j], k);
                }
            }
        }
        etf__sysfs_names_free(&iios);
    }
    etf__sysfs_names_free(&devs);
    if (rc || best >= 0)
        return rc;
    char names[160];
    etf__sysfs_join_names(wanted, names, sizeof names);
    return etf_diagf(diag, ETF_ENOENT,
                     "ina3221: no rail named %s (case-insensitive) under %s/" DRIVER_DIR
                     "; rails found: %s",
                     names, m->fs.root, found->used ? found->text : "none");
}

static int meter_ina3221_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                              struct etf_diag *diag)
{
    struct meter_ina3221 *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "meter ina3221: out of memory");
    m->base.ops = &etf__meter_ina3221_ops;
    int rc = etf__sysfs_init(&m->fs, &cfg->sysfs, diag);
    if (rc)
        goto free_m;
    const char *one[] = {cfg->rail, NULL};
    const char *const *wanted = cfg->rail ? one : default_rails;
    if (cfg->rail && (!*cfg->rail || strlen(cfg->rail) >= sizeof m->rail)) {
        rc = etf_diagf(diag, ETF_EINVAL, "ina3221: rail name '%.80s' is empty or too long",
                       cfg->rail);
        goto free_m;
    }
    struct found found = {.used = 0};
    rc = find_rail(m, wanted, &found, diag);
    if (rc)
        goto free_m;
    /* The first sample starts the integration: energy counts from open. */
    uint64_t uw;
    rc = read_power_uw(&m->fs, m->power_rel, &uw, diag);
    if (rc)
        goto free_m;
    etf__power_start(&m->pi, uw, etf_host_ns());
    *out = &m->base;
    return 0;
free_m:
    free(m);
    return rc;
}

static int meter_ina3221_read(struct etf_meter *base, uint64_t *energy_uj, uint64_t *at_ns)
{
    struct meter_ina3221 *m = (struct meter_ina3221 *)base;
    uint64_t uw;
    int rc = read_power_uw(&m->fs, m->power_rel, &uw, &m->error);
    if (rc)
        return rc;
    uint64_t now = etf_host_ns();
    *energy_uj = etf__power_add(&m->pi, uw, now);
    *at_ns = now;
    return 0;
}

/* Stateless, unlike read_energy: tools may call it from any thread. */
static int meter_ina3221_power(struct etf_meter *base, double *power_mw)
{
    struct meter_ina3221 *m = (struct meter_ina3221 *)base;
    uint64_t uw;
    int rc = read_power_uw(&m->fs, m->power_rel, &uw, NULL);
    if (rc)
        return rc;
    *power_mw = (double)uw / 1000.0;
    return 0;
}

static void meter_ina3221_close(struct etf_meter *base)
{
    free(base);
}

const struct etf_meter_ops etf__meter_ina3221_ops = {
    .name = "ina3221",
    .caps = ETF_METER_CAP_MEASURES,
    .open = meter_ina3221_open,
    .read_energy = meter_ina3221_read,
    .read_power = meter_ina3221_power,
    .close = meter_ina3221_close,
};
