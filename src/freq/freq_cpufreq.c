/* The `cpufreq` controller: the clock of CPU policies through Linux cpufreq, for devices
 * that run on the CPU. All selected policies (every one, or those covering a configured
 * CPU set) switch together.
 *
 * Under the userspace governor a clock is set through scaling_setspeed; under any other it
 * is pinned through scaling_min_freq = scaling_max_freq. cpufreq speaks kHz and this API Hz:
 * a frequency must be a whole number of kHz on offer on every selected policy. The settings
 * found at open are journaled first and put back at close (journal.h).
 *
 * scaling_cur_freq must then read the clock asked for. Drivers that report a measured
 * frequency there (x86 with APERF/MPERF) never read exactly the setting and are not
 * supported by this controller.
 */
#include "freq/journal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AVAILABLE_MAX 256
#define CPUS_MAX 4096

struct cpufreq_policy {
    char dir[160]; /* devices/system/cpu/cpufreq/policyN or devices/system/cpu/cpuN/cpufreq */
    bool userspace;
    uint64_t cur_min, cur_max; /* kHz, when limits_known */
    bool limits_known;
};

struct freq_cpufreq {
    struct etf_clk_ctl ctl; /* first: the journal head, itself starting with etf_freq */
    struct cpufreq_policy *pol;
    size_t n_pol;
    uint64_t avail[AVAILABLE_MAX]; /* kHz on offer on every policy, ascending */
    size_t n_avail;
};

struct cpuset {
    unsigned char bits[CPUS_MAX / 8];
};

static bool cpuset_has(const struct cpuset *s, uint64_t cpu)
{
    return cpu < CPUS_MAX && (s->bits[cpu / 8] >> (cpu % 8) & 1);
}

static void cpuset_add(struct cpuset *s, uint64_t cpu)
{
    s->bits[cpu / 8] |= (unsigned char)(1u << (cpu % 8));
}

/* "0-3,6": ranges and single CPUs separated by commas, strictly. */
static int parse_cpus(const char *text, struct cpuset *out, struct etf_diag *diag)
{
    memset(out, 0, sizeof *out);
    char buf[256];
    if (strlen(text) >= sizeof buf || !*text)
        return etf_diagf(diag, ETF_EINVAL, "cpufreq: CPU list '%.100s' is empty or too long", text);
    snprintf(buf, sizeof buf, "%s", text);
    char *save = NULL;
    size_t commas = 0, items = 0;
    for (const char *p = buf; *p; p++)
        commas += *p == ',';
    for (char *item = strtok_r(buf, ",", &save); item; item = strtok_r(NULL, ",", &save)) {
        uint64_t lo, hi;
        char *dash = strchr(item, '-');
        if (dash)
            *dash = '\0';
        bool ok = etf__parse_u64(item, &lo) && strchr(item, '\n') == NULL;
        hi = lo;
        if (ok && dash)
            ok = etf__parse_u64(dash + 1, &hi) && strchr(dash + 1, '\n') == NULL;
        if (!ok || lo > hi || hi >= CPUS_MAX)
            return etf_diagf(diag, ETF_EINVAL,
                             "cpufreq: CPU list '%.100s': expected CPUs and ranges below %d "
                             "separated by commas (\"0-3,6\")",
                             text, CPUS_MAX);
        for (uint64_t c = lo; c <= hi; c++)
            cpuset_add(out, c);
        items++;
    }
    if (items != commas + 1)
        return etf_diagf(diag, ETF_EINVAL, "cpufreq: CPU list '%.100s' has an empty item", text);
    return 0;
}

/* Intersects the offer of one more policy into f->avail. */
static int add_available(struct freq_cpufreq *f, const char *dir, bool first, struct etf_diag *diag)
{
    char rel[ETF_SYSFS_PATH_MAX];
    uint64_t v[AVAILABLE_MAX];
    size_t n;
    snprintf(rel, sizeof rel, "%s/scaling_available_frequencies", dir);
    int rc = etf__sysfs_read_u64_list(&f->ctl.fs, rel, v, AVAILABLE_MAX, &n, diag);
    if (rc)
        return rc;
    if (first) {
        memcpy(f->avail, v, n * sizeof v[0]);
        f->n_avail = n;
    } else {
        size_t k = 0;
        for (size_t i = 0; i < f->n_avail; i++)
            for (size_t j = 0; j < n; j++)
                if (f->avail[i] == v[j]) {
                    f->avail[k++] = f->avail[i];
                    break;
                }
        f->n_avail = k;
    }
    return 0;
}

/* The candidate policy directories: policy* (kernels since 4.3), else cpu*\/cpufreq. */
static int list_policies(struct freq_cpufreq *f, struct etf_sysfs_names *names, bool *per_cpu,
                         struct etf_diag *diag)
{
    *per_cpu = false;
    int rc = etf__sysfs_list(&f->ctl.fs, "devices/system/cpu/cpufreq", "policy[0-9]*", names, diag);
    if (rc == 0 && names->n > 0)
        return 0;
    if (rc == 0)
        etf__sysfs_names_free(names);
    else if (rc != ETF_ENOENT)
        return rc;
    *per_cpu = true;
    rc = etf__sysfs_list(&f->ctl.fs, "devices/system/cpu", "cpu[0-9]*", names, diag);
    if (rc == ETF_ENOENT || (rc == 0 && names->n == 0)) {
        if (rc == 0)
            etf__sysfs_names_free(names);
        return etf_diagf(diag, ETF_ENOENT, "cpufreq: no policies under %s/devices/system/cpu",
                         f->ctl.fs.root);
    }
    return rc;
}

/* Does the policy in dir cover a CPU of the set? Marks the CPUs it covers. */
static int policy_covers(struct freq_cpufreq *f, const char *name, bool per_cpu,
                         const struct cpuset *want, struct cpuset *covered, bool *hit,
                         struct etf_diag *diag)
{
    *hit = false;
    if (per_cpu) {
        uint64_t cpu;
        if (!etf__parse_u64(name + 3, &cpu))
            return 0;
        *hit = cpuset_has(want, cpu);
        if (*hit)
            cpuset_add(covered, cpu);
        return 0;
    }
    char rel[ETF_SYSFS_PATH_MAX];
    uint64_t cpus[CPUS_MAX];
    size_t n;
    snprintf(rel, sizeof rel, "devices/system/cpu/cpufreq/%s/related_cpus", name);
    int rc = etf__sysfs_read_u64_list(&f->ctl.fs, rel, cpus, CPUS_MAX, &n, diag);
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        if (cpuset_has(want, cpus[i])) {
            *hit = true;
            cpuset_add(covered, cpus[i]);
        }
    }
    return 0;
}

static int select_policies(struct freq_cpufreq *f, const char *cpus, struct etf_diag *diag)
{
    struct cpuset want, covered;
    memset(&covered, 0, sizeof covered);
    if (cpus) {
        int rc = parse_cpus(cpus, &want, diag);
        if (rc)
            return rc;
    }
    struct etf_sysfs_names names;
    bool per_cpu;
    int rc = list_policies(f, &names, &per_cpu, diag);
    if (rc)
        return rc;
    f->pol = calloc(names.n, sizeof *f->pol);
    if (!f->pol) {
        rc = etf_diagf(diag, ETF_ENOMEM, "freq cpufreq: out of memory");
        goto free_names;
    }
    for (size_t i = 0; i < names.n; i++) {
        char dir[160];
        if (per_cpu)
            snprintf(dir, sizeof dir, "devices/system/cpu/%s/cpufreq", names.v[i]);
        else
            snprintf(dir, sizeof dir, "devices/system/cpu/cpufreq/%s", names.v[i]);
        if (!etf__clk_dir_ok(ETF_CLK_CPUFREQ, dir))
            continue; /* "cpu0abc" and the like */
        if (cpus) {
            bool hit;
            rc = policy_covers(f, names.v[i], per_cpu, &want, &covered, &hit, diag);
            if (rc)
                goto free_names;
            if (!hit)
                continue;
        }
        int arc = add_available(f, dir, f->n_pol == 0, diag);
        /* Per-CPU layout: an offline CPU or one without cpufreq has no files. */
        if (arc == ETF_ENOENT && per_cpu && !cpus)
            continue;
        if (arc) {
            rc = arc;
            goto free_names;
        }
        snprintf(f->pol[f->n_pol++].dir, sizeof f->pol[0].dir, "%s", dir);
    }
    if (cpus) {
        for (uint64_t c = 0; c < CPUS_MAX; c++) {
            if (cpuset_has(&want, c) && !cpuset_has(&covered, c)) {
                rc = etf_diagf(diag, ETF_EINVAL,
                               "cpufreq: CPU %" PRIu64 " (of '%.100s') has no policy under %s", c,
                               cpus, f->ctl.fs.root);
                goto free_names;
            }
        }
    }
    if (f->n_pol == 0) {
        rc = etf_diagf(diag, ETF_ENOENT, "cpufreq: no usable policy under %s/devices/system/cpu",
                       f->ctl.fs.root);
        goto free_names;
    }
    if (f->n_avail == 0) {
        rc = etf_diagf(diag, ETF_EINVAL,
                       "cpufreq: no frequency is on offer on every selected policy");
        goto free_names;
    }
    f->n_avail = etf__freq_sort_unique(f->avail, f->n_avail);
    if (f->avail[0] == 0) /* no clock to set */
        memmove(f->avail, f->avail + 1, --f->n_avail * sizeof f->avail[0]);
    rc = 0;
free_names:
    etf__sysfs_names_free(&names);
    return rc;
}

static int freq_cpufreq_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                             struct etf_diag *diag)
{
    struct etf_clk_node *nodes = NULL;
    struct freq_cpufreq *f = calloc(1, sizeof *f);
    if (!f)
        return etf_diagf(diag, ETF_ENOMEM, "freq cpufreq: out of memory");
    int rc = etf__clk_ctl_setup(&f->ctl, &etf__freq_cpufreq_ops, cfg, diag);
    if (rc)
        goto free_f;
    /* The policies first: without one, nothing (not even /run/etf) is touched. */
    rc = select_policies(f, cfg->cpus, diag);
    if (rc)
        goto free_pol;
    /* Takes the journal lock and puts back what a crashed controller left pinned. */
    rc = etf__clk_ctl_begin(&f->ctl, diag);
    if (rc)
        goto free_pol;
    nodes = calloc(f->n_pol, sizeof *nodes);
    if (!nodes) {
        rc = etf_diagf(diag, ETF_ENOMEM, "freq cpufreq: out of memory");
        goto end_ctl;
    }
    for (size_t i = 0; i < f->n_pol; i++) {
        struct cpufreq_policy *p = &f->pol[i];
        rc = etf__clk_read_node(&f->ctl.fs, ETF_CLK_CPUFREQ, p->dir, &nodes[i], diag);
        if (rc)
            goto free_nodes;
        p->userspace = nodes[i].has_setspeed;
        p->cur_min = nodes[i].min;
        p->cur_max = nodes[i].max;
        p->limits_known = true;
    }
    rc = etf__clk_ctl_save(&f->ctl, nodes, f->n_pol, diag);
    if (rc)
        goto free_nodes;
    free(nodes);
    *out = &f->ctl.base;
    return 0;
free_nodes:
    free(nodes);
end_ctl:
    etf__clk_ctl_end(&f->ctl, NULL);
free_pol:
    free(f->pol);
free_f:
    free(f);
    return rc;
}

static int not_available(struct freq_cpufreq *f, uint64_t hz)
{
    char list[400];
    etf__freq_format_list(f->avail, f->n_avail, 1000, list, sizeof list);
    return etf_diagf(&f->ctl.error, ETF_EINVAL,
                     "cpufreq: %" PRIu64 " Hz is not available on every policy (have: %s)", hz,
                     list);
}

static int read_limits(struct freq_cpufreq *f, struct cpufreq_policy *p)
{
    char rel[ETF_SYSFS_PATH_MAX];
    snprintf(rel, sizeof rel, "%s/scaling_min_freq", p->dir);
    int rc = etf__sysfs_read_u64(&f->ctl.fs, rel, &p->cur_min, &f->ctl.error);
    if (rc)
        return rc;
    snprintf(rel, sizeof rel, "%s/scaling_max_freq", p->dir);
    rc = etf__sysfs_read_u64(&f->ctl.fs, rel, &p->cur_max, &f->ctl.error);
    if (rc)
        return rc;
    p->limits_known = true;
    return 0;
}

static int freq_cpufreq_set(struct etf_freq *base, uint64_t hz)
{
    struct freq_cpufreq *f = (struct freq_cpufreq *)base;
    f->ctl.error.msg[0] = '\0';
    uint64_t khz = hz / 1000;
    if (hz % 1000 != 0 || !etf__freq_listed(f->avail, f->n_avail, khz))
        return not_available(f, hz);
    /* Every policy first, then wait for all: their transitions overlap. */
    for (size_t i = 0; i < f->n_pol; i++) {
        struct cpufreq_policy *p = &f->pol[i];
        int rc;
        if (p->userspace) {
            char rel[ETF_SYSFS_PATH_MAX];
            snprintf(rel, sizeof rel, "%s/scaling_setspeed", p->dir);
            rc = etf__sysfs_write_u64(&f->ctl.fs, rel, khz, NULL, &f->ctl.error);
            if (rc == ETF_EIO || rc == ETF_ENOENT)
                rc = ETF_EDEVICE;
        } else {
            rc = p->limits_known ? 0 : read_limits(f, p);
            if (!rc)
                rc = etf__clk_pin(&f->ctl.fs, p->dir, ETF_CLK_CPUFREQ, &p->cur_min, &p->cur_max,
                                  khz, &f->ctl.error);
            if (rc)
                p->limits_known = false;
        }
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < f->n_pol; i++) {
        int rc = etf__clk_wait(&f->ctl.fs, f->pol[i].dir, ETF_CLK_CPUFREQ, khz, f->ctl.timeout_ns,
                               &f->ctl.error);
        if (rc)
            return rc;
    }
    return 0;
}

static int freq_cpufreq_get(struct etf_freq *base, uint64_t *hz)
{
    struct freq_cpufreq *f = (struct freq_cpufreq *)base;
    char rel[ETF_SYSFS_PATH_MAX];
    uint64_t khz;
    snprintf(rel, sizeof rel, "%s/scaling_cur_freq", f->pol[0].dir);
    /* Any thread may ask: no error text, which belongs to the switching thread. */
    int rc = etf__sysfs_read_u64(&f->ctl.fs, rel, &khz, NULL);
    if (rc)
        return rc;
    if (khz == 0 || khz > UINT64_MAX / 1000)
        return ETF_EFORMAT;
    *hz = khz * 1000;
    return 0;
}

static int freq_cpufreq_list(struct etf_freq *base, uint64_t *hz, size_t cap, size_t *n)
{
    const struct freq_cpufreq *f = (const struct freq_cpufreq *)base;
    return etf__freq_list_copy(f->avail, f->n_avail, 1000, hz, cap, n);
}

static void freq_cpufreq_close(struct etf_freq *base)
{
    struct freq_cpufreq *f = (struct freq_cpufreq *)base;
    /* A failed restore leaves the journal for etfd --restore-clocks. */
    etf__clk_ctl_end(&f->ctl, NULL);
    free(f->pol);
    free(f);
}

const struct etf_freq_ops etf__freq_cpufreq_ops = {
    .name = "cpufreq",
    .caps = ETF_FREQ_CAP_SET,
    .open = freq_cpufreq_open,
    .set = freq_cpufreq_set,
    .get = freq_cpufreq_get,
    .list = freq_cpufreq_list,
    .close = freq_cpufreq_close,
};
