/* The device registry and the dispatch functions in front of the backends. */
#include "device/device.h"

#include <string.h>

static const struct etf_device_ops *const device_backends[] = {
    &etf__device_sim_ops,
    NULL,
};

static const char *const device_backend_names[] = {
    "sim",
    NULL,
};

const char *const *etf_device_names(void)
{
    return device_backend_names;
}

int etf_device_open(const char *name, const struct etf_device_config *cfg,
                    struct etf_device **out, struct etf_diag *diag)
{
    static const struct etf_device_config defaults;
    if (!name || !out)
        return etf_diagf(diag, ETF_EINVAL, "device: no backend name given");
    for (size_t i = 0; device_backends[i]; i++) {
        if (strcmp(device_backends[i]->name, name) == 0)
            return device_backends[i]->open(cfg ? cfg : &defaults, out, diag);
    }
    return etf_diagf(diag, ETF_ENOTSUP, "device '%.64s' is not available in this build (have: sim)",
                     name);
}

void etf_device_close(struct etf_device *dev)
{
    if (dev)
        dev->ops->close(dev);
}

const char *etf_device_name(const struct etf_device *dev)
{
    return dev->ops->name;
}

int etf__device_load(struct etf_device *dev, const struct etf_model_desc *desc,
                     struct etf_dmodel **out, struct etf_diag *diag)
{
    return dev->ops->load(dev, desc, out, diag);
}

int etf__device_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    return dev->ops->launch(dev, run);
}

void etf__device_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    dev->ops->unload(dev, dm);
}
