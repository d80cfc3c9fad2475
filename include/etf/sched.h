/* The ETF scheduler: tenants (entities), their models and their inference tasks, and the
 * dispatcher that decides, kernel by kernel, who runs on the device.
 *
 * Every runnable entity gets a slice of the quantum Q: at least phi * Q * w_i / W (its
 * weighted time share), and the rest of Q is water-filled so that the entities with the
 * lowest weight-normalised energy P_i * s_i / w_i are raised first (see alloc.h). The
 * dispatcher runs the entity with the least virtual runtime until its slice is used (the
 * last kernel may overrun it), then advances its vruntime by used / slice.
 *
 * Two drivers, one dispatcher: a server calls etf_sched_start() and submits from any
 * thread; a simulator or a test calls etf_sched_step() from its own loop on a virtual
 * clock, with no threads at all, which makes runs deterministic.
 *
 * Threads: every function here may be called from any thread, except that
 * etf_sched_step() must not run concurrently with itself, with a started dispatcher, or
 * with etf_sched_stop() / etf_sched_destroy().
 * Completion callbacks run on the dispatching thread with no scheduler lock held: they may
 * call back into the scheduler (submit the next request, read stats).
 */
#ifndef ETF_SCHED_H
#define ETF_SCHED_H

#include "etf/etf.h"
#include "etf/profile.h"

#ifdef __cplusplus
extern "C" {
#endif

struct etf_sched;
struct etf_device;
struct etf_meter;
struct etf_freq;

/* ---- Backends, opened by name (registries in src/device, src/meter, src/freq) ---- */

struct etf_device_config {
    /* Simulated device: when set, a kernel advances this clock by its duration instead of
     * sleeping for it. The scheduler must then be given the same clock. */
    struct etf_vclock *vclock;
    /* Worker threads: a CPU device's compute threads, the host threads that copy a GPU
     * device's task inputs and outputs; 0 = the backend's default. */
    int threads;
    /* Simulated device: > 0 makes it asynchronous like a GPU, holding up to this many
     * submitted kernels until the scheduler fences it; 0 = each kernel completes as it is
     * launched. */
    size_t queue_depth;
};
/* Opens device backend `name` ("sim", ...). *out is owned by the caller: close it after
 * the scheduler that uses it is destroyed. */
int etf_device_open(const char *name, const struct etf_device_config *cfg, struct etf_device **out,
                    struct etf_diag *diag);
void etf_device_close(struct etf_device *dev);
const char *etf_device_name(const struct etf_device *dev);
/* NULL-terminated list of the device backends this build has. */
const char *const *etf_device_names(void);

/* Where the backends that read sysfs (meters ina3221, hwmon, rapl; frequency controllers
 * devfreq, cpufreq) find it. All zero = the real /sys, or $ETF_SYSFS_ROOT when set. */
struct etf_sysfs_io;
struct etf_sysfs_config {
    const char *root; /* directory standing for /sys; NULL = $ETF_SYSFS_ROOT, else "/sys" */
    /* System calls (src/util/sysfs.h); NULL = the real ones. Tests inject fakes here. */
    const struct etf_sysfs_io *io;
    void *io_ctx;
};

struct etf_meter_config {
    int reserved;                  /* hardware meters add their settings here */
    struct etf_sysfs_config sysfs; /* ina3221, hwmon, rapl */
    /* ina3221, hwmon: the rail to measure, matched case-insensitively against the sensors'
     * names; NULL = the GPU rail ("GPU", "VDD_GPU", "VDD_SYS_GPU"; hwmon: "VDD_GPU_SOC"). */
    const char *rail;
    /* rapl: a zone name ("package-0", "dram": every zone of that name, summed) or a zone id
     * ("intel-rapl:0:2"); NULL = every package zone, summed. */
    const char *domain;
    /* nvml: the NVML library to load; NULL = $ETF_NVML_LIBRARY, else libnvidia-ml.so.1. */
    const char *library_path;
    /* nvml: the GPU's NVML index. */
    unsigned device_index;
};
int etf_meter_open(const char *name, const struct etf_meter_config *cfg, struct etf_meter **out,
                   struct etf_diag *diag);
void etf_meter_close(struct etf_meter *m);
const char *etf_meter_name(const struct etf_meter *m);
const char *const *etf_meter_names(void);

struct etf_freq_config {
    /* Frequency the controller reports before its first switch; 0 = unknown. */
    uint64_t initial_hz;
    struct etf_sysfs_config sysfs; /* devfreq, cpufreq */
    /* devfreq: the node under class/devfreq; NULL = the Jetson GPU found there
     * (17000000.gp10b, .gv11b or .ga10b). */
    const char *node;
    /* cpufreq: the CPUs whose policies switch together ("0-3,6"); NULL = every policy. */
    const char *cpus;
    /* devfreq, cpufreq: how long a switch may take to show in cur_freq; 0 = 50 ms. */
    uint64_t settle_timeout_ns;
    /* devfreq, cpufreq, nvml: the settings found at open (nvml: that the GPU's clocks were
     * locked), restored at close or after a crash; NULL = /run/etf/clocks.journal. */
    const char *journal_path;
    /* nvml: locking a GPU's clocks needs root and affects everything that runs on that
     * GPU, so the controller opens only when this is true (etfd --allow-gpu-clock-changes). */
    bool allow_clock_changes;
    /* nvml (and restoring a journal that holds an nvml entry): the NVML library to load;
     * NULL = $ETF_NVML_LIBRARY, else libnvidia-ml.so.1. */
    const char *library_path;
    /* nvml: the GPU's NVML index. */
    unsigned device_index;
    /* sim: the frequencies the simulated clock offers (any order; copied at open); set
     * refuses others. NULL = any frequency, and then the controller cannot list them. */
    const uint64_t *available_hz;
    size_t n_available_hz;
};
int etf_freq_open(const char *name, const struct etf_freq_config *cfg, struct etf_freq **out,
                  struct etf_diag *diag);
void etf_freq_close(struct etf_freq *f);
const char *etf_freq_name(const struct etf_freq *f);
const char *const *etf_freq_names(void);
/* The clock in force, or ETF_ENOTSUP when the controller cannot tell. */
int etf_freq_current(struct etf_freq *f, uint64_t *hz);
/* Number of frequency switches the controller has carried out. */
uint64_t etf_freq_switches(const struct etf_freq *f);
/* Why the controller's latest switch failed ("cur_freq stayed at X Hz, expected Y Hz"); ""
 * when it did not fail or the backend keeps no text. Read it from the thread that switches
 * (the dispatcher's completion callback), or after the scheduler is stopped. */
const char *etf_freq_last_error(const struct etf_freq *f);
/* Puts back the clock settings recorded in the journal of cfg (cfg->journal_path, sysfs
 * root) by a controller that did not close (crash, kill -9), then removes the journal: the
 * one-shot behind `etfd --restore-clocks`. 0 when there is no journal. Errors: ETF_EFORMAT
 * (the journal is malformed or does not fit the hardware: nothing is written), ETF_EBUSY (a
 * running controller holds it), ETF_EDEVICE (a write was refused: the journal is kept). */
int etf_freq_restore_journal(const struct etf_freq_config *cfg, struct etf_diag *diag);

/* ---- The scheduler ---- */

struct etf_task_record;
typedef void (*etf_task_done_fn)(void *arg, const struct etf_task_record *rec);

struct etf_sched_config {
    uint64_t quantum_ns; /* Q > 0 */
    double phi;          /* in [0, 1]: 1 = weighted time-fair, 0 = weighted energy-fair */
    /* Clock of the dispatcher; NULL = etf_monotonic_clock. */
    const struct etf_clock *clock;
    /* Backends, borrowed: they must outlive the scheduler. meter and freq may be NULL
     * (= the "model" meter and the "none" controller). */
    struct etf_device *device;
    struct etf_meter *meter;
    struct etf_freq *freq;
    /* Called once per task when it finishes (or is dropped at shutdown). */
    etf_task_done_fn on_done;
    void *on_done_arg;
    /* An entity's measured power is an average over about this many of its last
     * inferences; 0 = 8. */
    unsigned power_horizon_tasks;
    /* Tasks queued over all entities beyond which etf_submit fails with ETF_ELIMIT;
     * 0 = 65536. */
    size_t max_queued_tasks;
    /* Measured energy, with a meter that measures (nvml, ...): a sampler thread reads the
     * meter every meter_sample_ns (0 = 20 ms) and splits what it measured among the
     * entities that ran (see src/sched/ledger.h). ETF_METER_SAMPLE_MANUAL starts no thread:
     * the driver samples itself (tests on a virtual clock). Such a meter needs a clock that
     * any thread may read: with a virtual clock etf_sched_create fails with ETF_EINVAL
     * unless sampling is manual. The model meter starts no sampler and keeps no ledger. */
    uint64_t meter_sample_ns;
    /* Once an entity's measured energy covers this much of its own device time (0 = 500 ms)
     * its measured power replaces the modelled one in the allocation; each further such
     * window updates it as a moving average (weight 1/2). */
    uint64_t meter_window_ns;
    /* Turns the ledger holds between two samples; 0 = 16384. When the sampler falls
     * behind, the oldest turns are dropped and counted (etf_sched_stats.ledger_dropped). */
    size_t ledger_turns;
};
#define ETF_METER_SAMPLE_MANUAL UINT64_MAX

/* Creates a scheduler. Errors: ETF_EINVAL (phi outside [0,1] or not a number, Q = 0, no
 * device) with diag saying which. *out is freed with etf_sched_destroy. */
int etf_sched_create(const struct etf_sched_config *cfg, struct etf_sched **out,
                     struct etf_diag *diag);
/* Stops the dispatcher if started, fails queued tasks with ETF_ESHUTDOWN through on_done,
 * unloads models and frees everything. */
void etf_sched_destroy(struct etf_sched *s);

/* Changes Q or phi; the next allocation uses them. Same validation as create. */
int etf_sched_set_policy(struct etf_sched *s, uint64_t quantum_ns, double phi,
                         struct etf_diag *diag);

/* ---- Entities (tenants) ---- */

/* Creates an entity at nice level `nice` (-20..19). */
int etf_entity_create(struct etf_sched *s, int64_t nice, uint64_t *eid, struct etf_diag *diag);
/* Changes the priority; the next allocation uses the new weight. */
int etf_entity_set_priority(struct etf_sched *s, uint64_t eid, int64_t nice, struct etf_diag *diag);
/* Deletes an entity that has no loaded models. Errors: ETF_ENOENT, ETF_EBUSY. */
int etf_entity_delete(struct etf_sched *s, uint64_t eid, struct etf_diag *diag);

/* ---- Models ---- */

struct etf_plan;

struct etf_model_spec {
    const char *name; /* for reports; NULL = the profile's or the plan's name */
    /* Per-kernel times and powers; NULL when not known. The scheduler takes ownership on
     * success only. Without power figures (no profile, or one without power) the model
     * meter charges no energy and the allocation assumes a neutral power for the model;
     * with a measuring meter, its kernels are charged at its entity's measured power once
     * the meter has taught it. */
    struct etf_profile *profile;
    /* The kernels to run (etf/model.h), borrowed: it must outlive the model. NULL for the
     * simulated device, which runs the profile's times. At least one of the two is given;
     * with both, they must have the same number of kernels. */
    const struct etf_plan *plan;
    /* Operating frequency; with a profile, one it covers. 0 = the frequency the controller
     * reports now if covered, else the profile's highest. */
    uint64_t freq_hz;
};
/* Loads a model for entity eid on the device. Errors: ETF_ENOENT (entity), ETF_EINVAL
 * (frequency not in the profile, profile and plan disagree), the device's load errors. */
int etf_model_load(struct etf_sched *s, uint64_t eid, const struct etf_model_spec *spec,
                   uint64_t *mid, struct etf_diag *diag);
/* Unloads a model with no queued or running task. Errors: ETF_ENOENT, ETF_EBUSY. */
int etf_model_unload(struct etf_sched *s, uint64_t mid, struct etf_diag *diag);

/* ---- Tasks ---- */

/* The tensors of one inference, owned by the caller until on_done reports the task:
 * fp32, C order, in the shapes of the plan's inputs and outputs (etf/model.h). */
struct etf_task_io {
    const float *const *inputs;
    float *const *outputs;
};

struct etf_request {
    uint64_t mid;
    const struct etf_task_io *io; /* NULL for models without real kernels (sim device) */
    /* Arrival time on the scheduler's clock; 0 = now. Drivers that inject arrivals late
     * (the simulator between turns) give the true arrival time here. */
    uint64_t submit_ns;
    void *user; /* returned in the completion record */
};

struct etf_task_record {
    uint64_t tid, eid, mid;
    int status;                           /* 0, or why the task did not run to completion */
    uint64_t submit_ns, start_ns, end_ns; /* scheduler clock */
    uint64_t service_ns;                  /* device time charged */
    uint64_t energy_nj;                   /* energy charged: always modelled (time × profiled
                                           * power), even with a measuring meter, whose
                                           * readings are far coarser than one task; the
                                           * measured energy is per entity (etf_entity_stats) */
    uint64_t freq_hz;                     /* frequency the model runs at */
    void *user;
};

/* Queues one inference. Returns at once; on_done reports the end. Errors: ETF_ENOENT
 * (unknown model), ETF_ELIMIT (queue full), ETF_ESHUTDOWN. */
int etf_submit(struct etf_sched *s, const struct etf_request *req, uint64_t *tid,
               struct etf_diag *diag);

/* ---- Driving the dispatcher ---- */

/* Runs one turn: picks the entity with the least vruntime and runs its kernels until its
 * slice is used. *ran is false when nothing was runnable. Errors come from the device or
 * the frequency controller; the task concerned is failed and the scheduler stays usable. */
int etf_sched_step(struct etf_sched *s, bool *ran);

/* Starts a dispatcher thread that steps while work exists and sleeps otherwise. */
int etf_sched_start(struct etf_sched *s);
/* Stops accepting work, waits up to drain_ns for queued tasks to finish, fails the rest
 * with ETF_ESHUTDOWN, and joins the dispatcher thread. */
int etf_sched_stop(struct etf_sched *s, uint64_t drain_ns);

/* ---- Accounting ---- */

struct etf_entity_stats {
    uint64_t eid;
    int nice;
    uint32_t weight;
    bool runnable;
    uint64_t tasks_done, tasks_queued;
    uint64_t time_ns, energy_nj; /* charged so far */
    /* Runnable and waiting: the slice of its next turn under the current weights and
     * powers; running or not runnable: the slice of its latest turn (0 if none). */
    double slice_ns;
    double vruntime;
    double power_mw; /* the P_i the allocation uses (while not runnable: its latest estimate) */
    /* With a measuring meter: the measured energy attributed to the entity, and its device
     * time within the intervals that energy was measured over (their ratio is its measured
     * power). 0 with the model meter. */
    uint64_t measured_energy_nj, measured_time_ns;
};
int etf_entity_stats(struct etf_sched *s, uint64_t eid, struct etf_entity_stats *out);

struct etf_model_stats {
    uint64_t mid, eid;
    char name[64];
    uint64_t freq_hz;
    bool has_power; /* false: no power figures, energy is not charged */
    size_t kernels;
    uint64_t tasks_done, tasks_queued;
    uint64_t time_ns, energy_nj;
};
int etf_model_stats(struct etf_sched *s, uint64_t mid, struct etf_model_stats *out);

/* Device time charged to kernel k of a model over all its tasks so far, and how many times
 * it ran. Errors: ETF_ENOENT (model), ETF_EINVAL (k out of range). */
int etf_model_kernel_stats(struct etf_sched *s, uint64_t mid, size_t k, uint64_t *time_ns,
                           uint64_t *runs);

struct etf_sched_stats {
    uint64_t dispatches;  /* kernels launched */
    uint64_t fences;      /* waits for an asynchronous device (0 on a synchronous one) */
    uint64_t prepares;    /* next turns' tasks hinted to the device before a turn drained */
    uint64_t turns;       /* entity picks */
    uint64_t allocations; /* slice recomputations */
    uint64_t freq_switches;
    uint64_t freq_errors; /* switches that failed (the controller's last_error says why) */
    uint64_t busy_ns;     /* device time charged to tasks */
    uint64_t energy_nj;   /* energy charged to tasks */
    size_t entities, runnable, models, tasks_queued;
    /* With a measuring meter (all 0 otherwise): the energy measured over the intervals
     * attributed so far, of which idle_energy_nj while nobody ran; the rest went to the
     * entities (measured_energy_nj == idle + the entities' measured_energy_nj, exactly, as
     * long as no entity that had measured energy was deleted). */
    uint64_t measured_energy_nj, idle_energy_nj;
    double idle_power_mw;    /* learnt from intervals with nobody running; 0 = not yet */
    uint64_t meter_samples;  /* successful meter reads */
    uint64_t meter_errors;   /* failed meter reads */
    uint64_t ledger_dropped; /* turns lost because the sampler fell behind */
};
void etf_sched_stats(struct etf_sched *s, struct etf_sched_stats *out);

/* Device time and energy charged at one clock frequency: that of the models whose kernels
 * ran (etf_model_stats.freq_hz, the clock the scheduler switched to before them; with a
 * controller that cannot set the clock, the one their profile figures are for). */
struct etf_freq_stats {
    uint64_t hz;        /* 0 = unknown (a model without a profile, the clock unknown) */
    uint64_t kernels;   /* kernels charged at hz */
    uint64_t time_ns;   /* their device time */
    uint64_t energy_nj; /* their energy: always modelled (time x profiled power), even with a
                         * measuring meter, whose readings are not split by frequency */
    size_t models;      /* models at hz loaded now */
};
/* The frequencies entity eid has loaded models at or been charged at, in ascending order
 * of hz: their rows summed give its etf_entity_stats time_ns and energy_nj. out is the
 * caller's array of cap rows (NULL when cap is 0); the first min(cap, *n) are written and
 * *n is the number of rows there are, so that a caller whose array was too small can call
 * again with a larger one. A tenant has a row per distinct frequency of its models (those
 * loaded now and those charged so far), a handful: the rows are kept at model load, and
 * charging a kernel costs O(1). Errors: ETF_ENOENT (entity), ETF_EINVAL (n NULL, or out
 * NULL with cap > 0). */
int etf_entity_freq_stats(struct etf_sched *s, uint64_t eid, struct etf_freq_stats *out, size_t cap,
                          size_t *n);
/* The same for the whole device, over every entity there has been (deleted ones included):
 * the rows sum to etf_sched_stats busy_ns, energy_nj and dispatches. Errors: ETF_EINVAL. */
int etf_sched_freq_stats(struct etf_sched *s, struct etf_freq_stats *out, size_t cap, size_t *n);
/* Either table whole, in a new array: entity *eid's, or the device's when eid is NULL. *out
 * is malloc'd and the caller frees it (also on failure; NULL when *n is 0); rows that appear
 * meanwhile are asked for again. Errors: those above, ETF_ENOMEM. */
int etf_freq_stats_alloc(struct etf_sched *s, const uint64_t *eid, struct etf_freq_stats **out,
                         size_t *n);

#ifdef __cplusplus
}
#endif
#endif
