/* The device contract: what the dispatcher needs from an accelerator (or the CPU, or the
 * simulator) to run a model kernel by kernel.
 *
 * One backend per file (device_sim.c, ...), each exporting one `const struct
 * etf_device_ops`, found by name in the registry of device.c. A backend's device struct
 * starts with `struct etf_device` so that the dispatch functions can reach its ops.
 */
#ifndef ETF_DEVICE_DEVICE_H
#define ETF_DEVICE_DEVICE_H

#include "etf/sched.h"

struct etf_plan;

/* What a backend needs to load a model. Both are borrowed and outlive the loaded model. */
struct etf_model_desc {
    const char *name;
    const struct etf_profile *profile; /* kernel times and powers; NULL when unknown */
    const struct etf_plan *plan;       /* the kernels themselves; NULL for the sim device */
};

/* One kernel to run, and what running it measured. */
struct etf_kernel_run {
    struct etf_dmodel *dm;
    size_t kernel;    /* index into the model's kernels, in execution order */
    uint64_t freq_hz; /* the clock in force as the kernel runs; 0 = unknown */
    /* The task's tensors: inputs are read before kernel 0 runs, outputs written once the
     * last kernel has run. NULL = leave the model's buffers as they are (calibration,
     * benchmarks). Kernels of one model never interleave between tasks: a model belongs to
     * one entity, whose queue runs a task to its end before the next. */
    const struct etf_task_io *io;
    uint64_t task;    /* the task's id (0 = none): matches inputs staged by `prepare` */
    uint64_t busy_ns; /* out: device time the kernel took */
};

struct etf_device_ops {
    const char *name;
    /* Creates a device. May block (driver start-up). Called once, no lock held. */
    int (*open)(const struct etf_device_config *cfg, struct etf_device **out,
                struct etf_diag *diag);
    /* Prepares a model to run: weights uploaded, workspace allocated. May block for a long
     * time; called without the scheduler lock, never concurrently with launch on the same
     * model. *out belongs to the device until unload. */
    int (*load)(struct etf_device *dev, const struct etf_model_desc *desc, struct etf_dmodel **out,
                struct etf_diag *diag);
    /* Runs one kernel and fills run->busy_ns. Called only from the dispatching thread,
     * without the scheduler lock; blocks for the kernel's duration. On a device with
     * `fence`, also waits for (and completes) everything submitted before. */
    int (*launch)(struct etf_device *dev, struct etf_kernel_run *run);
    /* Optional, with `fence`: enqueues one kernel and returns without waiting for it.
     * run->busy_ns is filled, and a last kernel's outputs written to run->io, by the next
     * fence; run must stay valid and unchanged until then. Returns ETF_EBUSY, having
     * enqueued nothing, when the device must be fenced before it can take this kernel
     * (its queue or a model's staging buffers are full). Same thread and lock rules as
     * launch. */
    int (*submit)(struct etf_device *dev, struct etf_kernel_run *run);
    /* Waits until the n oldest submitted kernels have run (all of them when n exceeds
     * their number) and completes their runs in submission order; the others stay in
     * flight. On failure, every submitted run is lost (busy_ns unset, outputs unwritten)
     * and the device takes new work again. */
    int (*fence)(struct etf_device *dev, size_t n);
    /* Optional, with `submit`: a hint that the task of run (its kernel 0, with io and task
     * set) will start soon. The device may take the host-side work of starting it now, such
     * as copying its inputs into staging buffers, so that the submit of its first kernel
     * does not hold the device idle for it; the dispatcher calls it while the device still
     * runs earlier kernels. Staging nothing is fine (no room free). run is read during the
     * call only; io must stay valid until the task's first kernel is submitted or the task
     * ends. Same thread rules as submit; the scheduler lock may be held. */
    void (*prepare)(struct etf_device *dev, const struct etf_kernel_run *run);
    /* Frees a loaded model; no launch of it is in flight. */
    void (*unload)(struct etf_device *dev, struct etf_dmodel *dm);
    void (*close)(struct etf_device *dev);
};

struct etf_device {
    const struct etf_device_ops *ops;
};

extern const struct etf_device_ops etf__device_sim_ops;
/* The asynchronous sim device's record of prepare hints (for tests of the dispatcher): those
 * that came while kernels were queued, and first kernels submitted for the task of the
 * latest hint. */
void etf__device_sim_hints(const struct etf_device *dev, uint64_t *hints, uint64_t *hits);
#ifdef ETF_HAVE_DNNL
/* Runs plans on the host CPU with oneDNN (device_cpu.c). */
extern const struct etf_device_ops etf__device_cpu_ops;
#endif

/* Thin dispatchers: the only way the scheduler reaches a backend. */
int etf__device_load(struct etf_device *dev, const struct etf_model_desc *desc,
                     struct etf_dmodel **out, struct etf_diag *diag);
int etf__device_launch(struct etf_device *dev, struct etf_kernel_run *run);
/* Whether the device runs kernels asynchronously (submit and fence). */
bool etf__device_async(const struct etf_device *dev);
int etf__device_submit(struct etf_device *dev, struct etf_kernel_run *run);
int etf__device_fence(struct etf_device *dev, size_t n);
/* Whether the device takes `prepare` hints, and the hint itself (a no-op without). */
bool etf__device_can_prepare(const struct etf_device *dev);
void etf__device_prepare(struct etf_device *dev, const struct etf_kernel_run *run);
void etf__device_unload(struct etf_device *dev, struct etf_dmodel *dm);

#endif
