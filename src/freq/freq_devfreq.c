/* The `devfreq` controller: the GPU clock of a Jetson through Linux devfreq
 * (class/devfreq/17000000.gp10b on TX2, .gv11b on Xavier, .ga10b on Orin).
 *
 * A clock is put in force by pinning the node's limits, min_freq = max_freq = hz, which
 * works under whatever governor runs (the governor is left alone), and is known to be in
 * force once cur_freq reads it. The settings found at open are journaled first and put back
 * at close (journal.h).
 */
#include "freq/journal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AVAILABLE_MAX 256

struct freq_devfreq {
    struct etf_clk_ctl ctl;        /* first: the journal head, itself starting with etf_freq */
    char dir[160];                 /* class/devfreq/<node> */
    uint64_t avail[AVAILABLE_MAX]; /* Hz, ascending, distinct */
    size_t n_avail;
    uint64_t cur_min, cur_max; /* the limits in force, when limits_known */
    bool limits_known;
};

/* The Jetson GPUs, oldest first. */
static const char *const gpu_nodes[] = {"17000000.gp10b", "17000000.gv11b", "17000000.ga10b"};

static int read_available(struct freq_devfreq *d, struct etf_diag *diag)
{
    char rel[ETF_SYSFS_PATH_MAX];
    snprintf(rel, sizeof rel, "%s/available_frequencies", d->dir);
    int rc = etf__sysfs_read_u64_list(&d->ctl.fs, rel, d->avail, AVAILABLE_MAX, &d->n_avail, diag);
    if (rc)
        return rc;
    /* Kernels list them ascending or descending; keep one sorted copy of each. */
    d->n_avail = etf__freq_sort_unique(d->avail, d->n_avail);
    if (d->avail[0] == 0) {
        char path[ETF_SYSFS_PATH_MAX + 256];
        etf__sysfs_abspath(&d->ctl.fs, rel, path, sizeof path, NULL);
        return etf_diagf(diag, ETF_EFORMAT, "%s: lists a frequency of 0 Hz", path);
    }
    return 0;
}

/* Finds the node: the configured one, else the first Jetson GPU present. */
static int find_node(struct freq_devfreq *d, const char *node, struct etf_diag *diag)
{
    if (node) {
        if (!etf__sysfs_name_ok(node))
            return etf_diagf(diag, ETF_EINVAL, "devfreq: '%.100s' is not a node name", node);
        snprintf(d->dir, sizeof d->dir, "class/devfreq/%s", node);
        return read_available(d, diag);
    }
    for (size_t i = 0; i < sizeof gpu_nodes / sizeof gpu_nodes[0]; i++) {
        snprintf(d->dir, sizeof d->dir, "class/devfreq/%s", gpu_nodes[i]);
        int rc = read_available(d, diag);
        if (rc != ETF_ENOENT)
            return rc;
    }
    /* Say what is there, so that the node can be named in the configuration. */
    struct etf_sysfs_names names;
    char found[200] = "";
    if (etf__sysfs_list(&d->ctl.fs, "class/devfreq", "*", &names, NULL) == 0) {
        size_t used = 0;
        for (size_t i = 0; i < names.n && used < sizeof found; i++)
            used += (size_t)snprintf(found + used, sizeof found - used, "%s%s", i ? ", " : "",
                                     names.v[i]);
        etf__sysfs_names_free(&names);
    }
    return etf_diagf(diag, ETF_ENOENT,
                     "devfreq: no Jetson GPU under %s/class/devfreq (looked for %s, %s, %s; "
                     "found: %s); name the node in the configuration",
                     d->ctl.fs.root, gpu_nodes[0], gpu_nodes[1], gpu_nodes[2],
                     found[0] ? found : "none");
}

static int freq_devfreq_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                             struct etf_diag *diag)
{
    struct freq_devfreq *d = calloc(1, sizeof *d);
    if (!d)
        return etf_diagf(diag, ETF_ENOMEM, "freq devfreq: out of memory");
    int rc = etf__clk_ctl_setup(&d->ctl, &etf__freq_devfreq_ops, cfg, diag);
    if (rc)
        goto free_d;
    /* The node first: without one, nothing (not even /run/etf) is touched. */
    rc = find_node(d, cfg->node, diag);
    if (rc)
        goto free_d;
    /* Takes the journal lock and puts back what a crashed controller left pinned. */
    rc = etf__clk_ctl_begin(&d->ctl, diag);
    if (rc)
        goto free_d;
    struct etf_clk_node node;
    rc = etf__clk_read_node(&d->ctl.fs, ETF_CLK_DEVFREQ, d->dir, &node, diag);
    if (rc)
        goto end_ctl;
    d->cur_min = node.min;
    d->cur_max = node.max;
    d->limits_known = true;
    rc = etf__clk_ctl_save(&d->ctl, &node, 1, diag);
    if (rc)
        goto end_ctl;
    *out = &d->ctl.base;
    return 0;
end_ctl:
    etf__clk_ctl_end(&d->ctl, NULL);
free_d:
    free(d);
    return rc;
}

static int not_available(struct freq_devfreq *d, uint64_t hz)
{
    char list[400];
    etf__freq_format_list(d->avail, d->n_avail, 1, list, sizeof list);
    return etf_diagf(&d->ctl.error, ETF_EINVAL, "%s: %" PRIu64 " Hz is not available (have: %s)",
                     d->dir, hz, list);
}

static int read_limits(struct freq_devfreq *d)
{
    char rel[ETF_SYSFS_PATH_MAX];
    snprintf(rel, sizeof rel, "%s/min_freq", d->dir);
    int rc = etf__sysfs_read_u64(&d->ctl.fs, rel, &d->cur_min, &d->ctl.error);
    if (rc)
        return rc;
    snprintf(rel, sizeof rel, "%s/max_freq", d->dir);
    rc = etf__sysfs_read_u64(&d->ctl.fs, rel, &d->cur_max, &d->ctl.error);
    if (rc)
        return rc;
    d->limits_known = true;
    return 0;
}

static int freq_devfreq_set(struct etf_freq *base, uint64_t hz)
{
    struct freq_devfreq *d = (struct freq_devfreq *)base;
    d->ctl.error.msg[0] = '\0';
    if (!etf__freq_listed(d->avail, d->n_avail, hz))
        return not_available(d, hz);
    /* After a failed write the limits in force are unknown: read them again. */
    if (!d->limits_known) {
        int rc = read_limits(d);
        if (rc)
            return rc;
    }
    int rc = etf__clk_pin(&d->ctl.fs, d->dir, ETF_CLK_DEVFREQ, &d->cur_min, &d->cur_max, hz,
                          &d->ctl.error);
    if (rc) {
        d->limits_known = false;
        return rc;
    }
    return etf__clk_wait(&d->ctl.fs, d->dir, ETF_CLK_DEVFREQ, hz, d->ctl.timeout_ns, &d->ctl.error);
}

static int freq_devfreq_get(struct etf_freq *base, uint64_t *hz)
{
    struct freq_devfreq *d = (struct freq_devfreq *)base;
    char rel[ETF_SYSFS_PATH_MAX];
    uint64_t v;
    snprintf(rel, sizeof rel, "%s/cur_freq", d->dir);
    /* Any thread may ask: no error text, which belongs to the switching thread. */
    int rc = etf__sysfs_read_u64(&d->ctl.fs, rel, &v, NULL);
    if (rc)
        return rc;
    if (v == 0)
        return ETF_EFORMAT;
    *hz = v;
    return 0;
}

static int freq_devfreq_list(struct etf_freq *base, uint64_t *hz, size_t cap, size_t *n)
{
    const struct freq_devfreq *d = (const struct freq_devfreq *)base;
    return etf__freq_list_copy(d->avail, d->n_avail, 1, hz, cap, n);
}

static void freq_devfreq_close(struct etf_freq *base)
{
    struct freq_devfreq *d = (struct freq_devfreq *)base;
    /* A failed restore leaves the journal for etfd --restore-clocks. */
    etf__clk_ctl_end(&d->ctl, NULL);
    free(d);
}

const struct etf_freq_ops etf__freq_devfreq_ops = {
    .name = "devfreq",
    .caps = ETF_FREQ_CAP_SET,
    .open = freq_devfreq_open,
    .set = freq_devfreq_set,
    .get = freq_devfreq_get,
    .list = freq_devfreq_list,
    .close = freq_devfreq_close,
};
