/* Loading NVML and finding one GPU in it (see nvml.h). */
#include "util/nvml.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEFAULT_LIBRARY "libnvidia-ml.so.1"

bool etf__nvml_symbol(const struct etf_nvml *n, const char *name, void *fnptr)
{
    void *sym = dlsym(n->lib, name);
    /* Copied rather than cast: ISO C has no conversion from object to function pointer. */
    memcpy(fnptr, &sym, sizeof sym);
    return sym != NULL;
}

int etf__nvml_require(const struct etf_nvml *n, const char *name, void *fnptr, const char *who,
                      struct etf_diag *diag)
{
    if (etf__nvml_symbol(n, name, fnptr))
        return 0;
    return etf_diagf(diag, ETF_ENOTSUP, "%s: %.200s has no %s: not NVML, or too old", who, n->path,
                     name);
}

const char *etf__nvml_error(const struct etf_nvml *n, nvmlReturn_t rc)
{
    const char *s = n->error_string ? n->error_string(rc) : NULL;
    return s ? s : "unknown NVML error";
}

void etf__nvml_close(struct etf_nvml *n)
{
    if (n->inited)
        n->shutdown();
    n->inited = false;
    if (n->lib)
        dlclose(n->lib);
    n->lib = NULL;
}

int etf__nvml_open(struct etf_nvml *n, const char *library_path, unsigned index, const char *who,
                   struct etf_diag *diag)
{
    memset(n, 0, sizeof *n);
    const char *path = library_path;
    if (!path || !path[0])
        path = getenv("ETF_NVML_LIBRARY");
    if (!path || !path[0])
        path = DEFAULT_LIBRARY;
    if (strlen(path) >= sizeof n->path)
        return etf_diagf(diag, ETF_EINVAL, "%s: library path '%.100s...' is longer than %zu bytes",
                         who, path, sizeof n->path - 1);
    snprintf(n->path, sizeof n->path, "%s", path);
    n->index = index;

    dlerror();
    n->lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!n->lib) {
        const char *why = dlerror();
        return etf_diagf(diag, ETF_ENOTSUP,
                         "%s: cannot load %.200s (no NVIDIA driver here?): %.200s", who, path,
                         why ? why : "unknown error");
    }
    int rc = etf__nvml_require(n, "nvmlInit_v2", &n->init, who, diag);
    if (!rc)
        rc = etf__nvml_require(n, "nvmlShutdown", &n->shutdown, who, diag);
    if (!rc)
        rc = etf__nvml_require(n, "nvmlDeviceGetHandleByIndex_v2", &n->handle_by_index, who, diag);
    if (!rc)
        rc = etf__nvml_require(n, "nvmlErrorString", &n->error_string, who, diag);
    if (rc)
        goto close;

    nvmlReturn_t nrc = n->init();
    if (nrc != NVML_SUCCESS) {
        rc = etf_diagf(diag, ETF_EDEVICE, "%s: nvmlInit_v2 failed: %.200s (NVML error %d)", who,
                       etf__nvml_error(n, nrc), nrc);
        goto close;
    }
    n->inited = true;
    nrc = n->handle_by_index(index, &n->dev);
    if (nrc != NVML_SUCCESS || !n->dev) {
        rc = etf_diagf(diag, ETF_EDEVICE, "%s: no GPU with index %u: %.200s (NVML error %d)", who,
                       index, etf__nvml_error(n, nrc), nrc);
        goto close;
    }
    /* The GPU's name is for messages only: a library without it still serves. */
    nvmlReturn_t (*name)(nvmlDevice_t, char *, unsigned int);
    snprintf(n->gpu, sizeof n->gpu, "GPU %u", index);
    if (etf__nvml_symbol(n, "nvmlDeviceGetName", &name)) {
        char text[NVML_DEVICE_NAME_V2_BUFFER_SIZE] = {0};
        /* Bounded: a name that fills the buffer may come without its terminator. */
        if (name(n->dev, text, sizeof text) == NVML_SUCCESS && text[0])
            snprintf(n->gpu, sizeof n->gpu, "%.*s", (int)sizeof text - 1, text);
    }
    return 0;
close:
    etf__nvml_close(n);
    return rc;
}
