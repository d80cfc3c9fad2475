/* NVML loaded at run time, for the backends that reach an NVIDIA GPU through it: the
 * `nvml` meter (energy) and the `nvml` frequency controller (locked clocks).
 *
 * No nvml.h is needed to build them: the few types and functions used are declared as
 * NVML's ABI has them and found with dlsym in libnvidia-ml.so.1 (or the library the
 * configuration or $ETF_NVML_LIBRARY names), so that one binary runs on machines with and
 * without a driver, and tests load a fake library by path.
 *
 * This file holds what every user needs: loading the library, NVML's start and stop, the
 * GPU's handle and name, error text. Each backend looks up the functions of its own trade
 * with etf__nvml_symbol / etf__nvml_require.
 */
#ifndef ETF_UTIL_NVML_H
#define ETF_UTIL_NVML_H

#include "etf/etf.h"

/* ---- The part of NVML's ABI shared by the backends (nvml.h, NVML 12/13) ---- */

typedef int nvmlReturn_t; /* an enum: int-sized */
typedef struct nvmlDevice_st *nvmlDevice_t;

#define NVML_SUCCESS 0
#define NVML_ERROR_INVALID_ARGUMENT 2
#define NVML_ERROR_NOT_SUPPORTED 3
#define NVML_ERROR_NO_PERMISSION 4
#define NVML_DEVICE_NAME_V2_BUFFER_SIZE 96

/* One GPU reached through a loaded, initialised NVML. */
struct etf_nvml {
    void *lib;
    char path[256]; /* the library loaded, for messages */
    nvmlReturn_t (*init)(void);
    nvmlReturn_t (*shutdown)(void);
    nvmlReturn_t (*handle_by_index)(unsigned int index, nvmlDevice_t *dev);
    const char *(*error_string)(nvmlReturn_t rc);
    bool inited; /* nvmlInit_v2 succeeded: close shuts NVML down */
    nvmlDevice_t dev;
    unsigned index;
    char gpu[NVML_DEVICE_NAME_V2_BUFFER_SIZE]; /* "NVIDIA H100 80GB HBM3", else "GPU <index>" */
};

/* Loads the library (library_path; NULL or "" = $ETF_NVML_LIBRARY, else
 * libnvidia-ml.so.1), starts NVML and finds the GPU of NVML index `index`. `who` begins
 * every message ("meter nvml"). Errors: ETF_EINVAL (a library path too long), ETF_ENOTSUP
 * (no such library, or not NVML), ETF_EDEVICE (NVML does not start, no such GPU). On
 * failure nothing is held; on success close n with etf__nvml_close. NVML counts its
 * starts, so several users of one GPU in a process each open their own. */
int etf__nvml_open(struct etf_nvml *n, const char *library_path, unsigned index, const char *who,
                   struct etf_diag *diag);
/* Stops NVML (if started) and unloads the library. Safe on a zeroed or failed n. */
void etf__nvml_close(struct etf_nvml *n);

/* Finds function `name` of the library into the function pointer at fnptr; false (and
 * NULL there) when the library lacks it. */
bool etf__nvml_symbol(const struct etf_nvml *n, const char *name, void *fnptr);
/* Same for a function the caller cannot do without: ETF_ENOTSUP "<who>: <library> has no
 * <name>: not NVML, or too old". */
int etf__nvml_require(const struct etf_nvml *n, const char *name, void *fnptr, const char *who,
                      struct etf_diag *diag);

/* NVML's text for a return code; never NULL. */
const char *etf__nvml_error(const struct etf_nvml *n, nvmlReturn_t rc);

#endif
