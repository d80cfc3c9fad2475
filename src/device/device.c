/* The device registry and the dispatch functions in front of the backends. */
#include "device/device.h"

#include <pthread.h>
#include <string.h>

#ifdef ETF_HAVE_CUDA
/* Runs plans on an NVIDIA GPU with cuDNN and cuBLAS (device_cuda.c). */
extern const struct etf_device_ops etf__device_cuda_ops;
/* Whether the machine has a CUDA device; the backend is listed only then (see below). */
bool etf__device_cuda_available(void);
#endif

static const struct etf_device_ops *const device_backends[] = {
    &etf__device_sim_ops,
#ifdef ETF_HAVE_DNNL
    &etf__device_cpu_ops,
#endif
#ifdef ETF_HAVE_CUDA
    &etf__device_cuda_ops,
#endif
    NULL,
};

static const char *const device_backend_names[] = {
    "sim",
#ifdef ETF_HAVE_DNNL
    "cpu",
#endif
    NULL,
};

#ifdef ETF_HAVE_CUDA
/* A build with CUDA lists "cuda" only on a machine with a GPU, so that every listed backend
 * opens; on others, opening it by name still explains that there is no device. */
static const char
    *device_names_found[sizeof device_backend_names / sizeof *device_backend_names + 1];
static pthread_once_t device_names_once = PTHREAD_ONCE_INIT;

static void device_names_init(void)
{
    size_t n = 0;
    for (; device_backend_names[n]; n++)
        device_names_found[n] = device_backend_names[n];
    if (etf__device_cuda_available())
        device_names_found[n++] = "cuda";
    device_names_found[n] = NULL;
}
#endif

const char *const *etf_device_names(void)
{
#ifdef ETF_HAVE_CUDA
    pthread_once(&device_names_once, device_names_init);
    return device_names_found;
#else
    return device_backend_names;
#endif
}

int etf_device_open(const char *name, const struct etf_device_config *cfg, struct etf_device **out,
                    struct etf_diag *diag)
{
    static const struct etf_device_config defaults;
    if (!name || !out)
        return etf_diagf(diag, ETF_EINVAL, "device: no backend name given");
    for (size_t i = 0; device_backends[i]; i++) {
        if (strcmp(device_backends[i]->name, name) == 0)
            return device_backends[i]->open(cfg ? cfg : &defaults, out, diag);
    }
#ifdef ETF_HAVE_DNNL
#define DEVICE_HAVE_CPU ", cpu"
#else
#define DEVICE_HAVE_CPU ""
#endif
#ifdef ETF_HAVE_CUDA
#define DEVICE_HAVE_CUDA ", cuda"
#else
#define DEVICE_HAVE_CUDA ""
#endif
#define DEVICE_HAVE "sim" DEVICE_HAVE_CPU DEVICE_HAVE_CUDA
    return etf_diagf(diag, ETF_ENOTSUP,
                     "device '%.64s' is not available in this build (have: " DEVICE_HAVE ")", name);
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

bool etf__device_async(const struct etf_device *dev)
{
    return dev->ops->submit && dev->ops->fence;
}

int etf__device_submit(struct etf_device *dev, struct etf_kernel_run *run)
{
    return dev->ops->submit(dev, run);
}

int etf__device_fence(struct etf_device *dev, size_t n)
{
    return dev->ops->fence(dev, n);
}

bool etf__device_can_prepare(const struct etf_device *dev)
{
    return dev->ops->prepare != NULL;
}

void etf__device_prepare(struct etf_device *dev, const struct etf_kernel_run *run)
{
    if (dev->ops->prepare)
        dev->ops->prepare(dev, run);
}

void etf__device_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    dev->ops->unload(dev, dm);
}
