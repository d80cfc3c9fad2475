/* The energy-meter registry. */
#include "meter/meter.h"

#include <string.h>

extern const struct etf_meter_ops etf__meter_ina3221_ops;
extern const struct etf_meter_ops etf__meter_hwmon_ops;
extern const struct etf_meter_ops etf__meter_rapl_ops;

static const struct etf_meter_ops *const meter_backends[] = {
    &etf__meter_model_ops,
    &etf__meter_nvml_ops, /* opens by name; unlisted, as it opens only where NVML and a GPU are */
    /* Sensors read through sysfs (meter_ina3221.c, meter_hwmon.c, meter_rapl.c); unlisted
     * likewise, as they open only where their sensors are. */
    &etf__meter_ina3221_ops,
    &etf__meter_hwmon_ops,
    &etf__meter_rapl_ops,
    NULL,
};

static const char *const meter_backend_names[] = {
    "model",
    NULL,
};

const char *const *etf_meter_names(void)
{
    return meter_backend_names;
}

int etf_meter_open(const char *name, const struct etf_meter_config *cfg, struct etf_meter **out,
                   struct etf_diag *diag)
{
    static const struct etf_meter_config defaults;
    if (!name || !out)
        return etf_diagf(diag, ETF_EINVAL, "meter: no backend name given");
    for (size_t i = 0; meter_backends[i]; i++) {
        if (strcmp(meter_backends[i]->name, name) == 0)
            return meter_backends[i]->open(cfg ? cfg : &defaults, out, diag);
    }
    return etf_diagf(diag, ETF_ENOTSUP, "meter '%.64s' is not available in this build (have: model)",
                     name);
}

void etf_meter_close(struct etf_meter *m)
{
    if (m)
        m->ops->close(m);
}

const char *etf_meter_name(const struct etf_meter *m)
{
    return m->ops->name;
}

bool etf__meter_measures(const struct etf_meter *m)
{
    return m && (m->ops->caps & ETF_METER_CAP_MEASURES);
}

int etf__meter_read_energy(struct etf_meter *m, uint64_t *energy_uj, uint64_t *at_ns)
{
    return m->ops->read_energy(m, energy_uj, at_ns);
}
