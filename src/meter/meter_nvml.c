/* The `nvml` meter: an NVIDIA GPU's energy counter through NVML, loaded at run time.
 *
 * No nvml.h is needed to build it: the few functions used are declared here as NVML's ABI
 * has them and found with dlsym in libnvidia-ml.so.1 (or the library the configuration or
 * $ETF_NVML_LIBRARY names), so that one binary runs on machines with and without a driver.
 * Only reading functions are used: this meter never changes a setting of the GPU.
 *
 * The counter (nvmlDeviceGetTotalEnergyConsumption, mJ since the driver loaded) moves about
 * every 100 ms on an H100 and a read costs ~3 ms, which is why the scheduler reads it from a
 * sampler thread and splits each step among the turns that ran in it (sched/ledger.h).
 * read_energy reports the energy since open in µJ and the host time half way through the
 * call. read_power gives the instant power (field NVML_FI_DEV_POWER_INSTANT), falling back
 * to nvmlDeviceGetPowerUsage, a one-second average on Ampere and later.
 */
#include "meter/meter.h"

#include "etf/etf.h"

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- The part of NVML's ABI used here (nvml.h, NVML 12/13) ---- */

typedef int nvmlReturn_t; /* an enum: int-sized */
typedef struct nvmlDevice_st *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_FI_DEV_POWER_INSTANT 186u
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96

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

struct nvml_fns {
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    nvmlReturn_t (*handle_by_index)(unsigned int index, nvmlDevice_t *dev);
    nvmlReturn_t (*total_energy)(nvmlDevice_t dev, unsigned long long *mj);
    nvmlReturn_t (*field_values)(nvmlDevice_t dev, int count, nvmlFieldValue_t *values);
    nvmlReturn_t (*power_usage)(nvmlDevice_t dev, unsigned int *mw);
    nvmlReturn_t (*name)(nvmlDevice_t dev, char *name, unsigned int length);
    const char *(*error_string)(nvmlReturn_t rc);
};

struct nvml_meter {
    struct etf_meter base;
    void *lib;
    struct nvml_fns fn;
    bool inited; /* nvmlInit_v2 succeeded: close shuts NVML down */
    nvmlDevice_t dev;
    unsigned index;
    char gpu[NVML_DEVICE_NAME_V2_BUFFER_SIZE];
    uint64_t start_mj; /* the counter at open */
};

#define DEFAULT_LIBRARY "libnvidia-ml.so.1"

static const char *nvml_error(const struct nvml_meter *m, nvmlReturn_t rc)
{
    const char *s = m->fn.error_string ? m->fn.error_string(rc) : NULL;
    return s ? s : "unknown NVML error";
}

/* dlsym into a function pointer without the object-to-function cast ISO C frowns upon. */
static bool find_symbol(void *lib, const char *name, void *fnptr)
{
    void *sym = dlsym(lib, name);
    if (!sym)
        return false;
    memcpy(fnptr, &sym, sizeof sym);
    return true;
}

static void nvml_close(struct etf_meter *base)
{
    struct nvml_meter *m = (struct nvml_meter *)base;
    if (!m)
        return;
    if (m->inited)
        m->fn.shutdown();
    if (m->lib)
        dlclose(m->lib);
    free(m);
}

static int nvml_open(const struct etf_meter_config *cfg, struct etf_meter **out,
                     struct etf_diag *diag)
{
    const char *path = cfg->library_path;
    if (!path || !path[0])
        path = getenv("ETF_NVML_LIBRARY");
    if (!path || !path[0])
        path = DEFAULT_LIBRARY;

    struct nvml_meter *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "meter nvml: out of memory");
    m->base.ops = &etf__meter_nvml_ops;
    m->index = cfg->device_index;

    dlerror();
    m->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!m->lib) {
        const char *why = dlerror();
        etf_diagf(diag, ETF_ENOTSUP,
                  "meter nvml: cannot load %.200s (no NVIDIA driver here?): %.200s", path,
                  why ? why : "unknown error");
        nvml_close(&m->base);
        return ETF_ENOTSUP;
    }
    static const char *const required[] = {
        "nvmlInit_v2",
        "nvmlShutdown",
        "nvmlDeviceGetHandleByIndex_v2",
        "nvmlDeviceGetTotalEnergyConsumption",
        "nvmlErrorString",
    };
    void *const slots[] = {&m->fn.init, &m->fn.shutdown, &m->fn.handle_by_index,
                           &m->fn.total_energy, &m->fn.error_string};
    for (size_t i = 0; i < sizeof required / sizeof *required; i++) {
        if (!find_symbol(m->lib, required[i], slots[i])) {
            etf_diagf(diag, ETF_ENOTSUP, "meter nvml: %.200s has no %s: not NVML, or too old", path,
                      required[i]);
            nvml_close(&m->base);
            return ETF_ENOTSUP;
        }
    }
    /* Optional: power readings and the GPU's name for messages. */
    find_symbol(m->lib, "nvmlDeviceGetFieldValues", &m->fn.field_values);
    find_symbol(m->lib, "nvmlDeviceGetPowerUsage", &m->fn.power_usage);
    find_symbol(m->lib, "nvmlDeviceGetName", &m->fn.name);

    nvmlReturn_t rc = m->fn.init();
    if (rc != NVML_SUCCESS) {
        etf_diagf(diag, ETF_EDEVICE, "meter nvml: nvmlInit_v2 failed: %.200s (NVML error %d)",
                  nvml_error(m, rc), rc);
        nvml_close(&m->base);
        return ETF_EDEVICE;
    }
    m->inited = true;
    rc = m->fn.handle_by_index(m->index, &m->dev);
    if (rc != NVML_SUCCESS || !m->dev) {
        etf_diagf(diag, ETF_EDEVICE, "meter nvml: no GPU with index %u: %.200s (NVML error %d)",
                  m->index, nvml_error(m, rc), rc);
        nvml_close(&m->base);
        return ETF_EDEVICE;
    }
    snprintf(m->gpu, sizeof m->gpu, "GPU %u", m->index);
    if (m->fn.name) {
        char name[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {0};
        if (m->fn.name(m->dev, name, sizeof name) == NVML_SUCCESS && name[0])
            snprintf(m->gpu, sizeof m->gpu, "%s", name);
    }
    unsigned long long mj = 0;
    rc = m->fn.total_energy(m->dev, &mj);
    if (rc != NVML_SUCCESS) {
        int err = rc == NVML_ERROR_NOT_SUPPORTED ? ETF_ENOTSUP : ETF_EDEVICE;
        etf_diagf(diag, err, "meter nvml: %s (index %u) gives no energy counter: %.200s", m->gpu,
                  m->index, nvml_error(m, rc));
        nvml_close(&m->base);
        return err;
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
    nvmlReturn_t rc = m->fn.total_energy(m->dev, &mj);
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
    if (m->fn.field_values) {
        nvmlFieldValue_t v;
        memset(&v, 0, sizeof v);
        v.fieldId = NVML_FI_DEV_POWER_INSTANT;
        if (m->fn.field_values(m->dev, 1, &v) == NVML_SUCCESS && v.nvmlReturn == NVML_SUCCESS) {
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
    if (m->fn.power_usage) {
        unsigned int mw = 0;
        if (m->fn.power_usage(m->dev, &mw) == NVML_SUCCESS) {
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
