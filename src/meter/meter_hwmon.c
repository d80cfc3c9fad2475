/* The `hwmon` meter: one power rail of the INA3221 monitors of a Jetson Orin, read through
 * hwmon (bus/i2c/devices/<dev>/hwmon/hwmon<n>/: in<k>_label names the rail, in<k>_input is
 * its voltage in mV and curr<k>_input its current in mA).
 *
 * Power is V × I at each sample, integrated over the host clock between consecutive reads
 * (trapezoid rule). hwmon values are signed: a negative reading (the shunt's offset at near
 * zero load) counts as no power.
 */
#include "meter/meter.h"
#include "util/sysfs.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEVICES_DIR "bus/i2c/devices"
#define CHANNELS_MAX 16
/* Above these the readings are garbage, not a rail (and V × I stays far from overflow). */
#define VOLTAGE_MAX_MV 1000000
#define CURRENT_MAX_MA 10000000

extern const struct etf_meter_ops etf__meter_hwmon_ops;

struct meter_hwmon {
    struct etf_meter base;
    struct etf_sysfs fs;
    char volt_rel[ETF_SYSFS_PATH_MAX]; /* in<k>_input */
    char curr_rel[ETF_SYSFS_PATH_MAX]; /* curr<k>_input */
    char rail[64];
    struct etf_power_integrator pi;
    struct etf_diag error; /* why the latest read failed */
};

static const char *const default_rails[] = {"VDD_GPU_SOC", NULL};

static int read_bounded(const struct etf_sysfs *fs, const char *rel, int64_t bound,
                        const char *unit, int64_t *out, struct etf_diag *diag)
{
    int rc = etf__sysfs_read_i64(fs, rel, out, diag);
    if (rc)
        return rc;
    if (*out > bound || *out < -bound) {
        char path[ETF_SYSFS_PATH_MAX + 256];
        etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
        return etf_diagf(diag, ETF_EFORMAT, "%s: %" PRId64 " %s is not a plausible reading", path,
                         *out, unit);
    }
    return 0;
}

static int read_power_uw(const struct meter_hwmon *m, uint64_t *uw, struct etf_diag *diag)
{
    int64_t mv, ma;
    int rc = read_bounded(&m->fs, m->volt_rel, VOLTAGE_MAX_MV, "mV", &mv, diag);
    if (!rc)
        rc = read_bounded(&m->fs, m->curr_rel, CURRENT_MAX_MA, "mA", &ma, diag);
    if (rc)
        return rc;
    *uw = mv > 0 && ma > 0 ? (uint64_t)mv * (uint64_t)ma : 0; /* mV × mA = µW */
    return 0;
}

static int find_rail(struct meter_hwmon *m, const char *const *wanted, struct etf_diag *diag)
{
    struct etf_sysfs_names devs, mons;
    char found[240];
    size_t used = 0;
    int best = -1;
    found[0] = '\0';
    int rc = etf__sysfs_list(&m->fs, DEVICES_DIR, "*", &devs, diag);
    if (rc == ETF_ENOENT)
        return etf_diagf(diag, ETF_ENOENT, "hwmon: no I2C devices at %s/" DEVICES_DIR, m->fs.root);
    if (rc)
        return rc;
    for (size_t i = 0; i < devs.n && rc == 0; i++) {
        char rel[ETF_SYSFS_PATH_MAX];
        snprintf(rel, sizeof rel, DEVICES_DIR "/%s/hwmon", devs.v[i]);
        rc = etf__sysfs_list(&m->fs, rel, "hwmon[0-9]*", &mons, diag);
        if (rc == ETF_ENOENT || rc == ETF_EIO) {
            rc = 0; /* an adapter or a device without hwmon */
            continue;
        }
        for (size_t j = 0; j < mons.n && rc == 0; j++) {
            for (int k = 0; k < CHANNELS_MAX; k++) {
                char label[64];
                snprintf(rel, sizeof rel, DEVICES_DIR "/%s/hwmon/%s/in%d_label", devs.v[i],
                         mons.v[j], k);
                rc = etf__sysfs_read_line(&m->fs, rel, label, sizeof label, diag);
                if (rc == ETF_ENOENT) {
                    rc = 0;
                    continue;
                }
                if (rc)
                    break;
                if (used < sizeof found)
                    used += (size_t)snprintf(found + used, sizeof found - used, "%s%s",
                                             used ? ", " : "", label);
                int rank = etf__sysfs_rail_rank(label, wanted);
                if (rank >= 0 && (best < 0 || rank < best)) {
                    best = rank;
                    snprintf(m->rail, sizeof m->rail, "%s", label);
                    snprintf(m->volt_rel, sizeof m->volt_rel, DEVICES_DIR "/%s/hwmon/%s/in%d_input",
                             devs.v[i], mons.v[j], k);
                    snprintf(m->curr_rel, sizeof m->curr_rel,
                             DEVICES_DIR "/%s/hwmon/%s/curr%d_input", devs.v[i], mons.v[j], k);
                }
            }
        }
        etf__sysfs_names_free(&mons);
    }
    etf__sysfs_names_free(&devs);
    if (rc || best >= 0)
        return rc;
    char names[160];
    etf__sysfs_join_names(wanted, names, sizeof names);
    return etf_diagf(diag, ETF_ENOENT,
                     "hwmon: no rail labelled %s (case-insensitive) under %s/" DEVICES_DIR
                     "/*/hwmon; rails found: %s",
                     names, m->fs.root, used ? found : "none");
}

static int meter_hwmon_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                            struct etf_diag *diag)
{
    struct meter_hwmon *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "meter hwmon: out of memory");
    m->base.ops = &etf__meter_hwmon_ops;
    int rc = etf__sysfs_init(&m->fs, &cfg->sysfs, diag);
    if (rc)
        goto free_m;
    if (cfg->rail && (!*cfg->rail || strlen(cfg->rail) >= sizeof m->rail)) {
        rc =
            etf_diagf(diag, ETF_EINVAL, "hwmon: rail name '%.80s' is empty or too long", cfg->rail);
        goto free_m;
    }
    const char *one[] = {cfg->rail, NULL};
    rc = find_rail(m, cfg->rail ? one : default_rails, diag);
    if (rc)
        goto free_m;
    /* The first sample starts the integration: energy counts from open. */
    uint64_t uw;
    rc = read_power_uw(m, &uw, diag);
    if (rc)
        goto free_m;
    etf__power_start(&m->pi, uw, etf_host_ns());
    *out = &m->base;
    return 0;
free_m:
    free(m);
    return rc;
}

static int meter_hwmon_read(struct etf_meter *base, uint64_t *energy_uj, uint64_t *at_ns)
{
    struct meter_hwmon *m = (struct meter_hwmon *)base;
    uint64_t uw;
    int rc = read_power_uw(m, &uw, &m->error);
    if (rc)
        return rc;
    uint64_t now = etf_host_ns();
    *energy_uj = etf__power_add(&m->pi, uw, now);
    *at_ns = now;
    return 0;
}

/* Stateless, unlike read_energy: tools may call it from any thread. */
static int meter_hwmon_power(struct etf_meter *base, double *power_mw)
{
    struct meter_hwmon *m = (struct meter_hwmon *)base;
    uint64_t uw;
    int rc = read_power_uw(m, &uw, NULL);
    if (rc)
        return rc;
    *power_mw = (double)uw / 1000.0;
    return 0;
}

static void meter_hwmon_close(struct etf_meter *base)
{
    free(base);
}

const struct etf_meter_ops etf__meter_hwmon_ops = {
    .name = "hwmon",
    .caps = ETF_METER_CAP_MEASURES,
    .open = meter_hwmon_open,
    .read_energy = meter_hwmon_read,
    .read_power = meter_hwmon_power,
    .close = meter_hwmon_close,
};
