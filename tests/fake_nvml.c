/* A fake libnvidia-ml for the tests: the NVML functions the `nvml` meter and the `nvml`
 * frequency controller use, over GPUs whose energy counter the test drives and whose locked
 * clocks it inspects.
 *
 * The counter (mJ) is a base the test sets plus, when a power is set, that power integrated
 * over host time since it was set; with an update period, readings only see the counter as
 * it was at the latest multiple of that period, like the H100's ~100 ms steps. Any function
 * can be told to fail with a given NVML return code, and every call is counted.
 *
 * Clocks: every GPU supports the graphics clocks 345, 900, 1410 and 1980 MHz at its memory
 * clock of 2619 MHz and runs at 1980 MHz unless locked; a lock (min = max only) makes the
 * graphics clock read the locked value until it is reset. Thread-safe: the scheduler's
 * sampler reads while the test sets.
 *
 * The controls, for tests to declare (no header: the tests state what they use):
 *   void fake_nvml_reset(void);                          all back to one healthy GPU at 0 mJ
 *   void fake_nvml_set_energy_mj(unsigned long long);    the counter, now
 *   void fake_nvml_set_power_mw(double);                 the counter grows at this power
 *   void fake_nvml_set_update_period_ns(unsigned long long); 0 = always current
 *   void fake_nvml_set_devices(unsigned);                GPUs present (at most 8)
 *   int fake_nvml_fail(const char *function, int nvml_rc); 0 = succeed again; -1 = unknown name
 *   int fake_nvml_inits(void);                           nvmlInit_v2 calls not shut down yet
 *   unsigned long long fake_nvml_calls(const char *function); calls so far (failed ones too);
 *                                                        aborts on a name the fake lacks
 *   unsigned fake_nvml_locked_mhz(unsigned gpu);         the GPU's locked clock, 0 = not locked
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef int nvmlReturn_t;
typedef struct nvmlDevice_st *nvmlDevice_t;

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
    unsigned int scopeId;
    long long timestamp;
    long long latencyUsec;
    int valueType;
    nvmlReturn_t nvmlReturn;
    nvmlValue_t value;
} nvmlFieldValue_t;

#define EXPORT __attribute__((visibility("default")))

enum {
    F_INIT,
    F_HANDLE,
    F_ENERGY,
    F_FIELDS,
    F_POWER,
    F_NAME,
    F_SET_LOCKED,
    F_RESET_LOCKED,
    F_CLOCK_INFO,
    F_SUPPORTED,
    F_COUNT
};
static const char *const fn_names[F_COUNT] = {
    "nvmlInit_v2",
    "nvmlDeviceGetHandleByIndex_v2",
    "nvmlDeviceGetTotalEnergyConsumption",
    "nvmlDeviceGetFieldValues",
    "nvmlDeviceGetPowerUsage",
    "nvmlDeviceGetName",
    "nvmlDeviceSetGpuLockedClocks",
    "nvmlDeviceResetGpuLockedClocks",
    "nvmlDeviceGetClockInfo",
    "nvmlDeviceGetSupportedGraphicsClocks",
};

#define MEM_MHZ 2619u
#define DEFAULT_MHZ 1980u
static const unsigned supported_mhz[] = {1980, 1410, 900, 345}; /* NVML lists them descending */

#define DEVICES_MAX 8

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    int fail_rc[F_COUNT];
    int inits, shutdowns;
    unsigned devices;
    unsigned long long base_mj;
    double power_mw;
    unsigned long long since_ns;  /* when power_mw was set */
    unsigned long long period_ns; /* 0 = the counter is always current */
    unsigned long long calls[F_COUNT];
    unsigned locked_mhz[DEVICES_MAX]; /* per GPU; 0 = not locked */
} st = {.devices = 1};

/* One handle per device: the address of a static byte, never dereferenced by callers. */
static char devices[DEVICES_MAX];

static unsigned long long host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Counts a call of f and returns the code it is told to fail with (0 = succeed). */
static int failing(int f)
{
    st.calls[f]++;
    return st.fail_rc[f];
}

EXPORT void fake_nvml_reset(void)
{
    pthread_mutex_lock(&mu);
    memset(&st, 0, sizeof st);
    st.devices = 1;
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_nvml_set_energy_mj(unsigned long long mj)
{
    pthread_mutex_lock(&mu);
    st.base_mj = mj;
    st.since_ns = host_ns();
    pthread_mutex_unlock(&mu);
}

/* Folds the power integrated so far into the base, so that a new power applies from now. */
static void settle(unsigned long long now)
{
    if (st.power_mw > 0 && now > st.since_ns)
        st.base_mj += (unsigned long long)(st.power_mw * (double)(now - st.since_ns) / 1e9);
    st.since_ns = now;
}

EXPORT void fake_nvml_set_power_mw(double mw)
{
    pthread_mutex_lock(&mu);
    settle(host_ns());
    st.power_mw = mw;
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_nvml_set_update_period_ns(unsigned long long ns)
{
    pthread_mutex_lock(&mu);
    st.period_ns = ns;
    pthread_mutex_unlock(&mu);
}

EXPORT void fake_nvml_set_devices(unsigned n)
{
    pthread_mutex_lock(&mu);
    st.devices = n < DEVICES_MAX ? n : DEVICES_MAX;
    pthread_mutex_unlock(&mu);
}

/* The F_ index of an NVML function by name; F_COUNT when the fake does not have it. */
static int fn_index(const char *function)
{
    int f = 0;
    while (f < F_COUNT && strcmp(fn_names[f], function) != 0)
        f++;
    return f;
}

EXPORT int fake_nvml_fail(const char *function, int nvml_rc)
{
    int f = fn_index(function);
    if (f == F_COUNT)
        return -1;
    pthread_mutex_lock(&mu);
    st.fail_rc[f] = nvml_rc;
    pthread_mutex_unlock(&mu);
    return 0;
}

EXPORT int fake_nvml_inits(void)
{
    pthread_mutex_lock(&mu);
    int n = st.inits - st.shutdowns;
    pthread_mutex_unlock(&mu);
    return n;
}

EXPORT unsigned long long fake_nvml_calls(const char *function)
{
    int f = fn_index(function);
    /* A count of 0 for a misspelt name would pass every "never called" check. */
    if (f == F_COUNT) {
        fprintf(stderr, "fake_nvml_calls: the fake has no NVML function '%s'\n", function);
        abort();
    }
    pthread_mutex_lock(&mu);
    unsigned long long n = st.calls[f];
    pthread_mutex_unlock(&mu);
    return n;
}

EXPORT unsigned fake_nvml_locked_mhz(unsigned gpu)
{
    pthread_mutex_lock(&mu);
    unsigned mhz = gpu < DEVICES_MAX ? st.locked_mhz[gpu] : 0;
    pthread_mutex_unlock(&mu);
    return mhz;
}

/* ---- NVML ---- */

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_INIT);
    if (!rc)
        st.inits++;
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&mu);
    int rc = st.inits > st.shutdowns ? 0 : 1; /* NVML_ERROR_UNINITIALIZED */
    if (!rc)
        st.shutdowns++;
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT const char *nvmlErrorString(nvmlReturn_t rc)
{
    switch (rc) {
    case 0:
        return "Success";
    case 1:
        return "Uninitialized";
    case 2:
        return "Invalid Argument";
    case 3:
        return "Not Supported";
    case 4:
        return "Insufficient Permissions";
    case 9:
        return "Driver Not Loaded";
    default:
        return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *dev)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_HANDLE);
    if (!rc && (st.inits <= st.shutdowns))
        rc = 1;
    if (!rc && index >= st.devices)
        rc = 2;
    if (!rc)
        *dev = (nvmlDevice_t)(void *)&devices[index];
    pthread_mutex_unlock(&mu);
    return rc;
}

/* The index of a handle check_device accepted. */
static unsigned gpu_of(nvmlDevice_t dev)
{
    return (unsigned)((char *)(void *)dev - devices);
}

static int check_device(nvmlDevice_t dev)
{
    if (st.inits <= st.shutdowns)
        return 1;
    char *p = (char *)(void *)dev;
    return p >= devices && p < devices + st.devices ? 0 : 2;
}

EXPORT nvmlReturn_t nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t dev, unsigned long long *mj)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_ENERGY);
    if (!rc)
        rc = check_device(dev);
    if (!rc) {
        unsigned long long now = host_ns();
        unsigned long long at = now;
        if (st.period_ns)
            at = now - now % st.period_ns;
        unsigned long long v = st.base_mj;
        if (st.power_mw > 0 && at > st.since_ns)
            v += (unsigned long long)(st.power_mw * (double)(at - st.since_ns) / 1e9);
        *mj = v;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t dev, int count, nvmlFieldValue_t *values)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_FIELDS);
    if (!rc)
        rc = check_device(dev);
    for (int i = 0; !rc && i < count; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = (long long)(host_ns() / 1000u);
        v->latencyUsec = 0;
        if (v->fieldId == 186u) { /* NVML_FI_DEV_POWER_INSTANT */
            v->valueType = 1;     /* unsigned int, mW */
            v->value.uiVal = (unsigned)st.power_mw;
            v->nvmlReturn = 0;
        } else {
            v->nvmlReturn = 3;
        }
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerUsage(nvmlDevice_t dev, unsigned int *mw)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_POWER);
    if (!rc)
        rc = check_device(dev);
    if (!rc)
        *mw = (unsigned)st.power_mw;
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t dev, char *name, unsigned int length)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_NAME);
    if (!rc)
        rc = check_device(dev);
    if (!rc)
        snprintf(name, length, "Fake GPU %u", gpu_of(dev));
    pthread_mutex_unlock(&mu);
    return rc;
}

/* ---- Clocks ---- */

EXPORT nvmlReturn_t nvmlDeviceSetGpuLockedClocks(nvmlDevice_t dev, unsigned int min_mhz,
                                                 unsigned int max_mhz)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_SET_LOCKED);
    if (!rc)
        rc = check_device(dev);
    if (!rc && (min_mhz != max_mhz || min_mhz == 0))
        rc = 2; /* this fake locks one clock only */
    if (!rc)
        st.locked_mhz[gpu_of(dev)] = min_mhz;
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceResetGpuLockedClocks(nvmlDevice_t dev)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_RESET_LOCKED);
    if (!rc)
        rc = check_device(dev);
    if (!rc)
        st.locked_mhz[gpu_of(dev)] = 0;
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t dev, int type, unsigned int *mhz)
{
    pthread_mutex_lock(&mu);
    int rc = failing(F_CLOCK_INFO);
    if (!rc)
        rc = check_device(dev);
    if (!rc && type == 0) { /* NVML_CLOCK_GRAPHICS */
        unsigned locked = st.locked_mhz[gpu_of(dev)];
        *mhz = locked ? locked : DEFAULT_MHZ;
    } else if (!rc && type == 2) { /* NVML_CLOCK_MEM */
        *mhz = MEM_MHZ;
    } else if (!rc) {
        rc = 3;
    }
    pthread_mutex_unlock(&mu);
    return rc;
}

EXPORT nvmlReturn_t nvmlDeviceGetSupportedGraphicsClocks(nvmlDevice_t dev, unsigned int mem_mhz,
                                                         unsigned int *count, unsigned int *mhz)
{
    enum { N = sizeof supported_mhz / sizeof supported_mhz[0] };
    pthread_mutex_lock(&mu);
    int rc = failing(F_SUPPORTED);
    if (!rc)
        rc = check_device(dev);
    if (!rc && mem_mhz != MEM_MHZ)
        rc = 6; /* NVML_ERROR_NOT_FOUND */
    if (!rc && *count < N)
        rc = 7; /* NVML_ERROR_INSUFFICIENT_SIZE */
    if (!rc || rc == 7)
        *count = N;
    if (!rc)
        memcpy(mhz, supported_mhz, sizeof supported_mhz);
    pthread_mutex_unlock(&mu);
    return rc;
}
