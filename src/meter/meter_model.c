/* The `model` meter: no hardware. Each kernel is charged its measured time × the power
 * its profile gives at the clock in force, which the scheduler computes itself; this
 * backend exists so that "model" is a choice by name like any other meter. */
#include "meter/meter.h"

#include <stdlib.h>

static int meter_model_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                            struct etf_diag *diag)
{
    (void)cfg;
    struct etf_meter *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "meter model: out of memory");
    m->ops = &etf__meter_model_ops;
    *out = m;
    return 0;
}

static void meter_model_close(struct etf_meter *m)
{
    free(m);
}

const struct etf_meter_ops etf__meter_model_ops = {
    .name = "model",
    .caps = 0,
    .open = meter_model_open,
    .close = meter_model_close,
};
