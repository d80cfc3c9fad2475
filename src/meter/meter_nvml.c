/* The `nvml` meter: an NVIDIA GPU's energy counter through NVML, loaded at run time
 * (util/nvml.h). Only reading functions are used: this meter never changes a setting of the
 * GPU.
 *
 * The counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded) moves about
 * every 100 ms on an H100 and a read costs ~3 ms, which is why the scheduler reads it from a
 * sampler thread and splits each step among the turns that ran in it (sched/ledger.h).
 * read_energy reports the energy since open in µJ and the host time half way through the
 * call. read_power gives the instant power (field NVML_FI_DEV_POWER_INSTANT), falling back
 * to nvmlDeviceGetPowerUsage, a one-second average on Ampere and later.
 */
#include "meter/meter.h"

#include "util/nvml.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- The part of NVML's ABI only this meter uses (nvml.h, NVML 12/13) ---- */

#define NVML_FI_DEV_POWER_INSTANT 186u

enum {
    NVML_VALUE_TYPE_DOUBLE = 0,
    NVML_VALUE_TYPE_UNSIGNED_INT = 1,
    NVML_VALUE_TYPE_UNSIGNED_LONG = 2,
    NVML_VALUE_TYPE_UNSIGNED_LONG_LONG = 3,
    NVML_VALUE_TYPE_SIGNED_LONG_LONG = 4,
    NVML_VALUE_TYPE_SIGNED_INT = 5,
    NVML_VALUE_TYPE_UNSIGNED_SHORT = 6,
};

typedef union {
    double dVal;
    int siVal;
    unsigned int uiVal;
    unsigned long ulVal;
    unsigned long long ullVal;
    signed long long sllVal;
    unsigned short usVal;
} nvmlValue_t;

typedef struct {
    unsigned int fieldId;
    unsigned int scopeId; /* for power fields: 0 = the GPU */
    long long timestamp;  /* µs since 1970 */
    long long latencyUsec;
    int valueType; /* nvmlValueType_t */
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

_Static_assert(sizeof(nvmlFieldValue_t) == 40, "nvmlFieldValue_t must match NVML's layout");

struct nvml_meter {
    struct etf_meter base;
    struct etf_nvml nvml;
    nvmlReturn_t (*total_energy)(nvmlDevice_t dev, unsigned long long *mj);
    /* Optional: NULL where the library lacks them. */
    nvmlReturn_t (*field_values)(nvmlDevice_t dev, int count, nvmlFieldValue_t *values);
    nvmlReturn_t (*power_usage)(nvmlDevice_t dev, unsigned int *mw);
    uint64_t start_mj; /* the counter at open */
};

#define WHO "meter nvml"

static void nvml_close(struct etf_meter *base)
{
    struct nvml_meter *m = (struct nvml_meter *)base;
    if (!m)
        return;
    etf__nvml_close(&m->nvml);
    free(m);
}

static int nvml_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                     struct etf_diag *diag)
{
    struct nvml_meter *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, WHO ": out of memory");
    m->base.ops = &etf__meter_nvml_ops;
    int rc = etf__nvml_open(&m->nvml, cfg->library_path, cfg->device_index, WHO, diag);
    if (!rc)
        rc = etf__nvml_require(&m->nvml, "nvmlDeviceGetTotalEnergyConsumption", &m->total_energy,
                               WHO, diag);
    if (rc) {
        nvml_close(&m->base);
        return rc;
    }
    /* Optional: power readings. */
    etf__nvml_symbol(&m->nvml, "nvmlDeviceGetFieldValues", &m->field_values);
    etf__nvml_symbol(&m->nvml, "nvmlDeviceGetPowerUsage", &m->power_usage);

    unsigned long long mj = 0;
    nvmlReturn_t nrc = m->total_energy(m->nvml.dev, &mj);
    if (nrc != NVML_SUCCESS) {
        rc = nrc == NVML_ERROR_NOT_SUPPORTED ? ETF_ENOTSUP : ETF_EDEVICE;
        etf_diagf(diag, rc, WHO ": %s (index %u) gives no energy counter: %.200s", m->nvml.gpu,
                  m->nvml.index, etf__nvml_error(&m->nvml, nrc));
        nvml_close(&m->base);
        return rc;
    }
    m->start_mj = mj;
    *out = &m->base;
    return 0;
}

static int nvml_read_energy(struct etf_meter *base, uint64_t *energy_uj, uint64_t *at_ns)
{
    struct nvml_meter *m = (struct nvml_meter *)base;
    unsigned long long mj = 0;
    uint64_t before = etf_host_ns();
    nvmlReturn_t rc = m->total_energy(m->nvml.dev, &mj);
    uint64_t after = etf_host_ns();
    if (rc != NVML_SUCCESS)
        return ETF_EDEVICE;
    /* The counter only grows while the driver stays loaded; one that went back means the
     * driver was reloaded under us. */
    if (mj < m->start_mj)
        return ETF_EDEVICE;
    *energy_uj = (uint64_t)(mj - m->start_mj) * 1000u;
    *at_ns = before + (after - before) / 2;
    return 0;
}

static int nvml_read_power(struct etf_meter *base, double *power_mw)
{
    struct nvml_meter *m = (struct nvml_meter *)base;
    if (m->field_values) {
        nvmlFieldValue_t v;
        memset(&v, 0, sizeof v);
        v.fieldId = NVML_FI_DEV_POWER_INSTANT;
        if (m->field_values(m->nvml.dev, 1, &v) == NVML_SUCCESS && v.nvmlReturn == NVML_SUCCESS) {
            switch (v.valueType) {
            case NVML_VALUE_TYPE_DOUBLE:
                *power_mw = v.value.dVal;
                return 0;
            case NVML_VALUE_TYPE_UNSIGNED_INT:
                *power_mw = v.value.uiVal;
                return 0;
            case NVML_VALUE_TYPE_UNSIGNED_LONG:
                *power_mw = (double)v.value.ulVal;
                return 0;
            case NVML_VALUE_TYPE_UNSIGNED_LONG_LONG:
                *power_mw = (double)v.value.ullVal;
                return 0;
            case NVML_VALUE_TYPE_SIGNED_LONG_LONG:
                *power_mw = (double)v.value.sllVal;
                return 0;
            case NVML_VALUE_TYPE_SIGNED_INT:
                *power_mw = v.value.siVal;
                return 0;
            case NVML_VALUE_TYPE_UNSIGNED_SHORT:
                *power_mw = v.value.usVal;
                return 0;
            default:
                break; /* a type this build does not know: try the averaged reading */
            }
        }
    }
    if (m->power_usage) {
        unsigned int mw = 0;
        if (m->power_usage(m->nvml.dev, &mw) == NVML_SUCCESS) {
            *power_mw = mw;
            return 0;
        }
        return ETF_EDEVICE;
    }
    return ETF_ENOTSUP;
}

const struct etf_meter_ops etf__meter_nvml_ops = {
    .name = "nvml",
    .caps = ETF_METER_CAP_MEASURES,
    .open = nvml_open,
    .read_energy = nvml_read_energy,
    .read_power = nvml_read_power,
    .close = nvml_close,
};
