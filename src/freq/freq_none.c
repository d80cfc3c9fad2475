/* The `none` controller: ETF never touches the clock. Models run at whatever clock the
 * device has and are charged at their nominal frequency. */
#include "freq/freq.h"

#include <stdlib.h>

static int freq_none_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                          struct etf_diag *diag)
{
    (void)cfg;
    struct etf_freq *f = calloc(1, sizeof *f);
    if (!f)
        return etf_diagf(diag, ETF_ENOMEM, "freq none: out of memory");
    f->ops = &etf__freq_none_ops;
    *out = f;
    return 0;
}

static int freq_none_get(struct etf_freq *f, uint64_t *hz)
{
    (void)f;
    (void)hz;
    return ETF_ENOTSUP;
}

static void freq_none_close(struct etf_freq *f)
{
    free(f);
}

const struct etf_freq_ops etf__freq_none_ops = {
    .name = "none",
    .caps = 0,
    .open = freq_none_open,
    .get = freq_none_get,
    .close = freq_none_close,
};
