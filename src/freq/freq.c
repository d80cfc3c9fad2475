/* The frequency-controller registry and dispatch functions. */
#include "freq/freq.h"
#include "freq/journal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct etf_freq_ops *const freq_backends[] = {
    &etf__freq_none_ops,
    &etf__freq_sim_ops,
    /* Open by name; unlisted, as they open only where their sysfs nodes are. */
    &etf__freq_devfreq_ops,
    &etf__freq_cpufreq_ops,
    /* Off unless the configuration allows clock changes (freq_nvml.c). */
    &etf__freq_nvml_ops,
    NULL,
};

static const char *const freq_backend_names[] = {
    "none",
    "sim",
    NULL,
};

const char *const *etf_freq_names(void)
{
    return freq_backend_names;
}

int etf_freq_open(const char *name, const struct etf_freq_config *cfg, struct etf_freq **out,
                  struct etf_diag *diag)
{
    static const struct etf_freq_config defaults;
    if (!name || !out)
        return etf_diagf(diag, ETF_EINVAL, "freq: no backend name given");
    for (size_t i = 0; freq_backends[i]; i++) {
        if (strcmp(freq_backends[i]->name, name) == 0)
            return freq_backends[i]->open(cfg ? cfg : &defaults, out, diag);
    }
    return etf_diagf(diag, ETF_ENOTSUP,
                     "frequency controller '%.64s' is not available in this build (have: none, sim, devfreq, cpufreq, nvml)",
                     name);
}

void etf_freq_close(struct etf_freq *f)
{
    if (f)
        f->ops->close(f);
}

const char *etf_freq_name(const struct etf_freq *f)
{
    return f->ops->name;
}

int etf_freq_current(struct etf_freq *f, uint64_t *hz)
{
    return etf__freq_get(f, hz);
}

uint64_t etf_freq_switches(const struct etf_freq *f)
{
    return f->switches;
}

bool etf__freq_can_set(const struct etf_freq *f)
{
    return f && (f->ops->caps & ETF_FREQ_CAP_SET);
}

int etf__freq_set(struct etf_freq *f, uint64_t hz)
{
    int rc = f->ops->set(f, hz);
    if (rc == 0)
        f->switches++;
    return rc;
}

int etf__freq_get(struct etf_freq *f, uint64_t *hz)
{
    return f->ops->get(f, hz);
}

int etf__freq_list(struct etf_freq *f, uint64_t *hz, size_t cap, size_t *n)
{
    return f->ops->list ? f->ops->list(f, hz, cap, n) : ETF_ENOTSUP;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

size_t etf__freq_sort_unique(uint64_t *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_u64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || v[i] != v[k - 1])
            v[k++] = v[i];
    return k;
}

bool etf__freq_listed(const uint64_t *list, size_t n, uint64_t v)
{
    return bsearch(&v, list, n, sizeof *list, cmp_u64) != NULL;
}

void etf__freq_format_list(const uint64_t *list, size_t n, uint64_t scale, char *out, size_t cap)
{
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < n && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%" PRIu64, i ? " " : "",
                                 list[i] * scale);
}

int etf__freq_list_copy(const uint64_t *list, size_t n_list, uint64_t scale, uint64_t *hz,
                        size_t cap, size_t *n)
{
    for (size_t i = 0; i < n_list && i < cap; i++)
        hz[i] = list[i] * scale;
    *n = n_list;
    return 0;
}
