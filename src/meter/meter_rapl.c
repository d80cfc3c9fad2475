/* The `rapl` meter: the energy counters of Intel RAPL (and AMD's, which Linux exposes the
 * same way) through powercap: class/powercap/intel-rapl:<n>[:<m>]/energy_uj, named by
 * `name` ("package-0", "core", "dram", "psys").
 *
 * The counter is energy already, in µJ, but it wraps at max_energy_range_uj. One wrap
 * between two reads is told apart from none by the counter going down; two wraps cannot
 * be, so reads must come more often than a wrap period (max_energy_range_uj / power: about
 * 262 kJ / 200 W = 22 minutes on a desktop package, less on big servers). The sampler's
 * period is far shorter.
 *
 * Since Linux 5.10 (CVE-2020-8694) energy_uj is readable by root only.
 */
#include "meter/meter.h"
#include "util/sysfs.h"

#include <errno.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define POWERCAP_DIR "class/powercap"
#define ZONES_MAX 64

extern const struct etf_meter_ops etf__meter_rapl_ops;

struct rapl_zone {
    char dir[128];  /* class/powercap/intel-rapl:N[:M] */
    uint64_t range; /* max_energy_range_uj: the counter runs over [0, range] */
    uint64_t last;  /* counter at the latest read */
};

struct meter_rapl {
    struct etf_meter base;
    struct etf_sysfs fs;
    struct rapl_zone zones[ZONES_MAX];
    size_t n_zones;
    uint64_t total_uj;     /* since open, over all zones */
    struct etf_diag error; /* why the latest read failed */
};

static int read_counter(const struct etf_sysfs *fs, const char *dir, const char *file,
                        uint64_t *out, struct etf_diag *diag)
{
    char rel[ETF_SYSFS_PATH_MAX], text[64];
    int e;
    snprintf(rel, sizeof rel, "%s/%s", dir, file);
    int rc = etf__sysfs_read(fs, rel, text, sizeof text, &e, diag);
    if (rc && (e == EACCES || e == EPERM)) {
        char path[ETF_SYSFS_PATH_MAX + 256];
        etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
        return etf_diagf(diag, rc,
                         "rapl: cannot read %s: %s; RAPL counters are readable by root only "
                         "(Linux 5.10+, CVE-2020-8694): run as root or grant read access to "
                         "energy_uj (a udev rule or chmod)",
                         path, e == EACCES ? "permission denied" : "operation not permitted");
    }
    if (rc)
        return rc;
    if (!etf__parse_u64(text, out)) {
        char path[ETF_SYSFS_PATH_MAX + 256], q[48];
        etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
        etf__sysfs_quote(text, q, sizeof q);
        return etf_diagf(diag, ETF_EFORMAT, "%s: expected an unsigned integer, found '%s'", path,
                         q);
    }
    return 0;
}

/* Reads a zone's counter and checks it against its range. */
static int read_energy_uj(const struct etf_sysfs *fs, const struct rapl_zone *z, uint64_t *out,
                          struct etf_diag *diag)
{
    int rc = read_counter(fs, z->dir, "energy_uj", out, diag);
    if (rc)
        return rc;
    if (*out > z->range)
        return etf_diagf(diag, ETF_EFORMAT,
                         "%s/%s/energy_uj: %" PRIu64 " is above max_energy_range_uj %" PRIu64,
                         fs->root, z->dir, *out, z->range);
    return 0;
}

/* Does the zone (id, name) answer to the configured domain? */
static bool zone_matches(const char *domain, const char *id, const char *name)
{
    if (!domain)
        return fnmatch("package-*", name, 0) == 0;
    if (strncmp(domain, "intel-rapl:", 11) == 0)
        return strcmp(domain, id) == 0;
    return strcmp(domain, name) == 0;
}

static int find_zones(struct meter_rapl *m, const char *domain, struct etf_diag *diag)
{
    struct etf_sysfs_names ids;
    char found[240];
    size_t used = 0;
    found[0] = '\0';
    int rc = etf__sysfs_list(&m->fs, POWERCAP_DIR, "intel-rapl:*", &ids, diag);
    if (rc == ETF_ENOENT)
        return etf_diagf(diag, ETF_ENOENT, "rapl: no powercap at %s/" POWERCAP_DIR, m->fs.root);
    if (rc)
        return rc;
    for (size_t i = 0; i < ids.n; i++) {
        char rel[ETF_SYSFS_PATH_MAX], name[64];
        snprintf(rel, sizeof rel, POWERCAP_DIR "/%s/name", ids.v[i]);
        rc = etf__sysfs_read_word(&m->fs, rel, name, sizeof name, diag);
        if (rc == ETF_ENOENT) {
            rc = 0;
            continue;
        }
        if (rc)
            goto free_ids;
        if (used < sizeof found)
            used += (size_t)snprintf(found + used, sizeof found - used, "%s%s (%s)",
                                     used ? ", " : "", ids.v[i], name);
        if (!zone_matches(domain, ids.v[i], name))
            continue;
        if (m->n_zones == ZONES_MAX) {
            rc = etf_diagf(diag, ETF_ELIMIT, "rapl: more than %d zones match", ZONES_MAX);
            goto free_ids;
        }
        struct rapl_zone *z = &m->zones[m->n_zones];
        snprintf(z->dir, sizeof z->dir, POWERCAP_DIR "/%s", ids.v[i]);
        rc = read_counter(&m->fs, z->dir, "max_energy_range_uj", &z->range, diag);
        if (rc)
            goto free_ids;
        if (z->range == 0) {
            rc = etf_diagf(diag, ETF_EFORMAT, "%s/%s/max_energy_range_uj: reads 0", m->fs.root,
                           z->dir);
            goto free_ids;
        }
        rc = read_energy_uj(&m->fs, z, &z->last, diag);
        if (rc)
            goto free_ids;
        m->n_zones++;
    }
    if (m->n_zones == 0)
        rc = etf_diagf(diag, ETF_ENOENT,
                       "rapl: no zone %s%.64s under %s/" POWERCAP_DIR "; zones found: %s",
                       domain ? "named " : "named package-*", domain ? domain : "", m->fs.root,
                       used ? found : "none");
free_ids:
    etf__sysfs_names_free(&ids);
    return rc;
}

static int meter_rapl_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                           struct etf_diag *diag)
{
    struct meter_rapl *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "meter rapl: out of memory");
    m->base.ops = &etf__meter_rapl_ops;
    int rc = etf__sysfs_init(&m->fs, &cfg->sysfs, diag);
    if (rc)
        goto free_m;
    if (cfg->domain && !etf__sysfs_name_ok(cfg->domain)) {
        rc = etf_diagf(diag, ETF_EINVAL, "rapl: '%.80s' is not a zone name", cfg->domain);
        goto free_m;
    }
    rc = find_zones(m, cfg->domain, diag);
    if (rc)
        goto free_m;
    *out = &m->base;
    return 0;
free_m:
    free(m);
    return rc;
}

static int meter_rapl_read(struct etf_meter *base, uint64_t *energy_uj, uint64_t *at_ns)
{
    struct meter_rapl *m = (struct meter_rapl *)base;
    uint64_t now[ZONES_MAX], add = 0;
    /* All zones or none: a failed read leaves the state as it was. */
    for (size_t i = 0; i < m->n_zones; i++) {
        int rc = read_energy_uj(&m->fs, &m->zones[i], &now[i], &m->error);
        if (rc)
            return rc;
    }
    uint64_t at = etf_host_ns();
    for (size_t i = 0; i < m->n_zones; i++) {
        struct rapl_zone *z = &m->zones[i];
        /* Going down means the counter wrapped once past range back to 0. */
        add += now[i] >= z->last ? now[i] - z->last : z->range - z->last + now[i];
        z->last = now[i];
    }
    m->total_uj += add;
    *energy_uj = m->total_uj;
    *at_ns = at;
    return 0;
}

static void meter_rapl_close(struct etf_meter *base)
{
    free(base);
}

const struct etf_meter_ops etf__meter_rapl_ops = {
    .name = "rapl",
    .caps = ETF_METER_CAP_MEASURES,
    .open = meter_rapl_open,
    .read_energy = meter_rapl_read,
    .close = meter_rapl_close,
};
