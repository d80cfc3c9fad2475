/* The energy-meter contract.
 *
 * The scheduler always models each kernel's energy as its measured time × the profiled
 * power of that kernel at the clock in force. A meter says whether hardware measures more
 * than that: a measuring meter exposes a cumulative energy counter that a sampler thread
 * reads, and the scheduler splits each measured interval among the entities that ran in it
 * in proportion to their modelled energy. The `model` meter measures nothing: modelled
 * energy is what is charged.
 *
 * One backend per file (meter_model.c, ...), registered by name in meter.c. A backend's
 * struct starts with `struct etf_meter`.
 */
#ifndef ETF_METER_METER_H
#define ETF_METER_METER_H

#include "etf/sched.h"

/* The meter reads real energy through `read_energy`. */
#define ETF_METER_CAP_MEASURES (1u << 0)

struct etf_meter_ops {
    const char *name;
    unsigned caps;
    /* Opens the meter. May block (library load, first read). */
    int (*open)(const struct etf_meter_config *cfg, struct etf_meter **out,
                struct etf_diag *diag);
    /* Cumulative energy since open in µJ, and the time of the reading on the host clock.
     * Present only with ETF_METER_CAP_MEASURES. May block (milliseconds on some hardware):
     * call it from a sampler thread, never from the dispatch path. */
    int (*read_energy)(struct etf_meter *m, uint64_t *energy_uj, uint64_t *at_ns);
    /* Optional (NULL when the meter cannot tell): the power drawn now, in mW, for tools and
     * diagnostics; the scheduler attributes energy from read_energy only. */
    int (*read_power)(struct etf_meter *m, double *power_mw);
    void (*close)(struct etf_meter *m);
};

struct etf_meter {
    const struct etf_meter_ops *ops;
};

extern const struct etf_meter_ops etf__meter_model_ops;
/* An NVIDIA GPU's energy counter through NVML, loaded at run time (meter_nvml.c). */
extern const struct etf_meter_ops etf__meter_nvml_ops;

/* True when the meter measures energy itself (NULL = the model meter: false). */
bool etf__meter_measures(const struct etf_meter *m);
/* read_energy of a meter that measures. */
int etf__meter_read_energy(struct etf_meter *m, uint64_t *energy_uj, uint64_t *at_ns);

#endif
