/* The profiler: measures a model kernel by kernel on a device, at each of a set of clock
 * frequencies, and writes its profile in the original ETF format (etf/profile.h) — what
 * `etf-profile` runs.
 *
 * For each frequency the controller sets the clock (it puts back the clock it found when
 * closed, through its journal), the whole model runs a few times to warm up, and then each
 * kernel runs alone, over and over, for at least min_time. A kernel's time is the mean
 * device-measured time of its runs. Its power, where a meter measures, is the energy the
 * meter counted over a window inside those runs divided by the window's length; the
 * window's ends are meter readings where the counter moved, so that a counter that moves in
 * steps (NVML's, every ~100 ms) is read at its steps. Without a measuring meter the profile
 * has no power figures.
 *
 * Progress survives an interruption: after each kernel, what is measured is written
 * atomically to "<out>.partial". A later run with the same model (name and kernels) and
 * the same setup skips what it holds; one with another model or setup is refused unless
 * told to start over. The profile is written (atomically) once every measurement is done,
 * and the progress file then removed.
 */
#ifndef ETF_PROFILER_H
#define ETF_PROFILER_H

#include "etf/model.h"
#include "etf/profile.h"
#include "etf/sched.h"

#include <signal.h>

#ifdef __cplusplus
extern "C" {
#endif

enum etf_profiler_event_kind {
    ETF_PROFILER_START,  /* the plan is known: what is measured, how much is done already */
    ETF_PROFILER_FREQ,   /* a frequency begins: the clock is set, the model warmed up */
    ETF_PROFILER_KERNEL, /* a kernel is measured at a frequency (and the progress saved) */
    ETF_PROFILER_DONE,   /* the profile is written */
};

/* Where the one frequency measured without switching comes from. */
enum etf_profiler_clock {
    ETF_PROFILER_CLOCK_SET,        /* the controller switches to each frequency */
    ETF_PROFILER_CLOCK_GIVEN,      /* named by the caller; the controller cannot set it */
    ETF_PROFILER_CLOCK_CONTROLLER, /* the controller's reading of the clock in force */
    ETF_PROFILER_CLOCK_CPUINFO,    /* the CPU's clock in /proc/cpuinfo (the cpu device) */
};

struct etf_profiler_event {
    enum etf_profiler_event_kind kind;
    const char *model;                 /* the model's name */
    size_t n_kernels;                  /* kernels of the model */
    size_t n_freqs;                    /* frequencies to measure */
    size_t done, total;                /* measurements (kernel at frequency) complete, of all */
    size_t resumed;                    /* START: how many of those an earlier run made */
    enum etf_profiler_clock clock;     /* START */
    bool power;                        /* the profile gets power figures (a meter measures) */
    size_t freq_index;                 /* FREQ, KERNEL: which frequency, 0-based */
    uint64_t hz;                       /* FREQ, KERNEL: that frequency */
    size_t kernel_index;               /* KERNEL */
    const char *kernel;                /* KERNEL: its name */
    double time_us;                    /* KERNEL: the mean time of its runs */
    double power_mw;                   /* KERNEL, with power: its power */
    uint64_t runs;                     /* KERNEL: how many times it ran */
    const struct etf_profile *profile; /* DONE: what was written (valid during the call) */
};

typedef void (*etf_profiler_event_fn)(void *arg, const struct etf_profiler_event *ev);

struct etf_profiler_config {
    const char *out_path; /* the profile to write; progress goes to out_path + ".partial" */
    /* Backends, borrowed. freq NULL = the clock cannot be set; meter NULL or one that
     * measures nothing (the model meter) = a profile without power figures. */
    struct etf_device *device;
    struct etf_freq *freq;
    struct etf_meter *meter;
    /* The model, borrowed: its kernel plan (etf/model.h), or for the simulated device a
     * profile whose kernel times it runs. Exactly one of the two. */
    const struct etf_plan *plan;
    const struct etf_profile *sim_profile;
    /* Frequencies to measure (Hz, any order). With all_freqs, every one the controller
     * offers. Otherwise n_freqs 0 = the clock in force, unchanged; with a controller that
     * cannot set the clock, one frequency at most, which names the clock in force. */
    const uint64_t *freqs_hz;
    size_t n_freqs;
    bool all_freqs;
    uint64_t min_time_ns; /* each kernel runs at least this long; 0 = 1 s */
    unsigned warmup;      /* whole-model runs after each switch before measuring */
    /* What else shaped the measurement and must match for a run to resume another (the
     * caller's options: "threads 2, batch 1"); compared as text. NULL = "". */
    const char *setup;
    bool restart;                   /* start over: ignore (and then replace) any progress file */
    etf_profiler_event_fn on_event; /* may be NULL */
    void *on_event_arg;
    /* Set (from a signal handler, say) to stop after the kernel run in progress: what is
     * measured stays saved and etf_profiler_run returns ETF_ESHUTDOWN. May be NULL. */
    const volatile sig_atomic_t *stop;
};

/* Profiles the model as cfg says. Errors: ETF_EINVAL (frequencies the controller cannot
 * set or does not offer, progress of another model or setup, a bad cfg), ETF_ESHUTDOWN
 * (stopped; progress saved), ETF_EIO (files), the device's, controller's and meter's
 * errors; diag says which and why. The clock is left as the last frequency set: closing
 * the controller puts it back. */
int etf_profiler_run(const struct etf_profiler_config *cfg, struct etf_diag *diag);

/* The clock measurements taken now run at: the controller's reading when it has one (freq
 * may be NULL), else, with cpu_device, the CPU's clock from /proc/cpuinfo (*from_cpuinfo
 * then true). ETF_ENOTSUP when neither tells. */
int etf_profiler_clock_hz(struct etf_freq *freq, bool cpu_device, uint64_t *hz, bool *from_cpuinfo);

#ifdef __cplusplus
}
#endif
#endif
