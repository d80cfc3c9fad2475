/* The `sim` controller: a clock that follows every request at once. It keeps the clock in
 * force for the simulated device and counts the switches, so that simulations and tests
 * see the cost structure of per-model DVFS without hardware. */
#include "freq/freq.h"

#include <stdlib.h>

struct freq_sim {
    struct etf_freq base;
    uint64_t current_hz;
};

static int freq_sim_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                         struct etf_diag *diag)
{
    struct freq_sim *f = calloc(1, sizeof *f);
    if (!f)
        return etf_diagf(diag, ETF_ENOMEM, "freq sim: out of memory");
    f->base.ops = &etf__freq_sim_ops;
    f->current_hz = cfg->initial_hz;
    *out = &f->base;
    return 0;
}

static int freq_sim_set(struct etf_freq *base, uint64_t hz)
{
    if (hz == 0)
        return ETF_EINVAL;
    ((struct freq_sim *)base)->current_hz = hz;
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

static void freq_sim_close(struct etf_freq *f)
{
    free(f);
}

const struct etf_freq_ops etf__freq_sim_ops = {
    .name = "sim",
    .caps = ETF_FREQ_CAP_SET,
    .open = freq_sim_open,
    .set = freq_sim_set,
    .get = freq_sim_get,
    .close = freq_sim_close,
};
