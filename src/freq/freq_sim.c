/* The `sim` controller: a clock that follows every request at once. It keeps the clock in
 * force for the simulated device and counts the switches, so that simulations and tests
 * see the cost structure of per-model DVFS without hardware. Given a list of frequencies
 * it offers those only, like a real controller (a simulated device offers the frequencies
 * its profiles cover). */
#include "freq/freq.h"

#include <stdlib.h>
#include <string.h>

struct freq_sim {
    struct etf_freq base;
    uint64_t current_hz;
    uint64_t *avail; /* ascending, distinct; NULL = any frequency */
    size_t n_avail;
};

static void freq_sim_close(struct etf_freq *base)
{
    struct freq_sim *f = (struct freq_sim *)base;
    free(f->avail);
    free(f);
}

static int freq_sim_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                         struct etf_diag *diag)
{
    struct freq_sim *f = calloc(1, sizeof *f);
    if (!f)
        return etf_diagf(diag, ETF_ENOMEM, "freq sim: out of memory");
    f->base.ops = &etf__freq_sim_ops;
    f->current_hz = cfg->initial_hz;
    if (cfg->available_hz && cfg->n_available_hz) {
        f->avail = malloc(cfg->n_available_hz * sizeof *f->avail);
        if (!f->avail) {
            freq_sim_close(&f->base);
            return etf_diagf(diag, ETF_ENOMEM, "freq sim: out of memory");
        }
        memcpy(f->avail, cfg->available_hz, cfg->n_available_hz * sizeof *f->avail);
        f->n_avail = etf__freq_sort_unique(f->avail, cfg->n_available_hz);
        if (f->avail[0] == 0) {
            freq_sim_close(&f->base);
            return etf_diagf(diag, ETF_EINVAL, "freq sim: a frequency of 0 Hz is on offer");
        }
    }
    *out = &f->base;
    return 0;
}

static int freq_sim_set(struct etf_freq *base, uint64_t hz)
{
    struct freq_sim *f = (struct freq_sim *)base;
    if (hz == 0 || (f->avail && !etf__freq_listed(f->avail, f->n_avail, hz)))
        return ETF_EINVAL;
    f->current_hz = hz;
    return 0;
}

static int freq_sim_get(struct etf_freq *base, uint64_t *hz)
{
    uint64_t current = ((struct freq_sim *)base)->current_hz;
    if (current == 0)
        return ETF_ENOTSUP;
    *hz = current;
    return 0;
}

static int freq_sim_list(struct etf_freq *base, uint64_t *hz, size_t cap, size_t *n)
{
    const struct freq_sim *f = (const struct freq_sim *)base;
    if (!f->avail)
        return ETF_ENOTSUP; /* any frequency: there is no list to give */
    return etf__freq_list_copy(f->avail, f->n_avail, 1, hz, cap, n);
}

const struct etf_freq_ops etf__freq_sim_ops = {
    .name = "sim",
    .caps = ETF_FREQ_CAP_SET,
    .open = freq_sim_open,
    .set = freq_sim_set,
    .get = freq_sim_get,
    .list = freq_sim_list,
    .close = freq_sim_close,
};
