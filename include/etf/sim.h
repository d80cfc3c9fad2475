/* The ETF simulator: a scenario (tenants, their models, their load) run through the real
 * scheduler on the simulated device and a virtual clock, with no threads, so that a run
 * is deterministic: the same scenario and seed give the same report, byte for byte.
 *
 *   {"quantum_us": 40000, "phi": 0.7, "duration_s": 60, "seed": 1,
 *    "device": "sim", "freq": "sim", "meter": "model",
 *    "tenants": [{"name": "a", "priority": 0, "start_s": 0, "stop_s": 60,
 *                 "priority_changes": [{"at_s": 10, "priority": -5}],
 *                 "models": [{"profile": "resnet18_profile.json",
 *                             "frequency_hz": 1300500000,
 *                             "load": {"closed": 2}}]}]}
 *
 * `load` is {"closed": N} (N requests always outstanding) or {"poisson_rps": R} (seeded
 * Poisson arrivals). Profile paths are relative to the scenario file. `frequency_hz` may be
 * left out: the model then runs at the controller's current frequency if its profile covers
 * it, else at the profile's highest.
 *
 * Real time. With a device other than "sim" ("cpu": oneDNN on the host) the same event loop
 * runs the models' real kernels on host time: a model names its ONNX file,
 *
 *   {"onnx": "../models/resnet18/model.onnx", "batch": 1, "load": {"closed": 2}}
 *
 * (relative to the scenario file; "batch" 1..4096, default the model's; a "profile" may be
 * added for its power figures, without one no energy is charged), the top level may give
 * "threads" (the device's worker threads, 1..1024; default the backend's), and "freq"
 * defaults to "none". The clock is the host's, counted from the start of the run, and the
 * loop sleeps while nothing is due. Such a run is NOT reproducible: times, task counts and
 * shares depend on the host, its load and its threads; only the deterministic mode
 * ("device": "sim") reproduces byte for byte.
 *
 * Use: etf_scenario_load, etf_sim_create (opens the backends, creates the scheduler, loads
 * the models: errors here are errors of the input), etf_sim_run (errors here are failures
 * of the run), then read etf_sim_result or write the report, the task list and the
 * summary, and finally etf_sim_destroy and etf_scenario_free.
 */
#ifndef ETF_SIM_H
#define ETF_SIM_H

#include "etf/etf.h"
#include "etf/sched.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Scenario files larger than this are refused before parsing. */
#define ETF_SCENARIO_MAX_BYTES (16u << 20)
#define ETF_SCENARIO_MAX_TENANTS 100000u
#define ETF_SCENARIO_MAX_CLOSED 100000u
#define ETF_SCENARIO_MAX_RPS 1e6
#define ETF_SCENARIO_MAX_QUANTUM_US 1000000000u
#define ETF_SCENARIO_MAX_DURATION_S 1e7
/* Longest tenant or backend name, in bytes. */
#define ETF_SCENARIO_NAME_MAX 63
#define ETF_SCENARIO_MAX_BATCH 4096u
#define ETF_SCENARIO_MAX_THREADS 1024

/* etf_scenario_parse/load flags. */
/* Do not read the profile files nor look for the ONNX files: check the scenario's own
 * fields only (fuzzing, syntax checks). A scenario parsed so cannot be run when a model needs
 * its profile (etf_sim_create fails with ETF_EINVAL). */
#define ETF_SCENARIO_NO_PROFILES (1u << 0)

enum etf_sim_load_kind {
    ETF_SIM_LOAD_CLOSED,
    ETF_SIM_LOAD_POISSON,
};

struct etf_scenario_model {
    char *profile_path; /* as written in the scenario; NULL when not given */
    size_t profile;     /* index into etf_scenario.profiles; SIZE_MAX when not read */
    char *onnx_path;    /* the ONNX file, resolved against the scenario's directory; NULL
                         * when not given */
    size_t batch;       /* 1..4096; 0 = the model's own */
    uint64_t freq_hz;   /* 0 = the controller's current or the profile's highest */
    enum etf_sim_load_kind load;
    uint32_t closed;    /* ETF_SIM_LOAD_CLOSED: requests outstanding, 1..100000 */
    double poisson_rps; /* ETF_SIM_LOAD_POISSON: mean arrivals per second, (0, 1e6] */
};

struct etf_scenario_prio_change {
    uint64_t at_ns; /* time from the start of the run */
    int priority;   /* nice level */
};

struct etf_scenario_tenant {
    char name[ETF_SCENARIO_NAME_MAX + 1];
    int priority;               /* nice level at the start */
    uint64_t start_ns, stop_ns; /* its clients submit in [start, stop) */
    size_t n_models;
    struct etf_scenario_model *models;
    size_t n_prio_changes; /* in the order written; applied in time order */
    struct etf_scenario_prio_change *prio_changes;
};

/* A profile file as read once at parse time (models sharing a file share this). */
struct etf_scenario_profile {
    char *path; /* resolved against the scenario's directory */
    char *json;
    size_t len;
};

struct etf_scenario {
    uint64_t quantum_us;
    double phi;
    double duration_s;
    uint64_t duration_ns;
    uint64_t seed;
    /* Backend names; defaults sim, sim (none with another device), model. */
    char device[ETF_SCENARIO_NAME_MAX + 1];
    char freq[ETF_SCENARIO_NAME_MAX + 1];
    char meter[ETF_SCENARIO_NAME_MAX + 1];
    int threads; /* the device's worker threads, 1..1024; 0 = the backend's default */
    size_t n_tenants;
    struct etf_scenario_tenant *tenants;
    size_t n_profiles;
    struct etf_scenario_profile *profiles;
};

/* Parses and validates a scenario held in memory (len bytes, no NUL needed). Relative
 * profile and ONNX paths are resolved against base_dir (NULL = the current directory);
 * `origin` prefixes messages (NULL = "scenario"). Unless ETF_SCENARIO_NO_PROFILES, every
 * profile is read and checked with the profile loader, and every ONNX file must be readable
 * (it is parsed by etf_sim_create). A model of the "sim" device needs a profile; a model of
 * another device this build has needs an ONNX file, and such a device refuses the "sim"
 * frequency controller. Errors: ETF_EFORMAT (not JSON, wrong type, unknown key, missing
 * key), ETF_EINVAL (value out of range, a combination that cannot run), ETF_ENOMEM, ETF_ENOENT
 * or ETF_EIO (an ONNX file), and the loader's errors for a profile; diag names the field
 * ("tenants[0].models[0].load.closed: ..."). */
int etf_scenario_parse(const char *json, size_t len, const char *origin, const char *base_dir,
                       unsigned flags, struct etf_scenario **out, struct etf_diag *diag);

/* Reads a scenario file and parses it as above, with paths relative to its directory.
 * Errors also: ETF_ENOENT, ETF_EIO, ETF_ELIMIT (larger than ETF_SCENARIO_MAX_BYTES). */
int etf_scenario_load(const char *path, unsigned flags, struct etf_scenario **out,
                      struct etf_diag *diag);

void etf_scenario_free(struct etf_scenario *sc);

/* ---- Running ---- */

struct etf_sim;

/* A completed task and where it came from. */
struct etf_sim_task {
    struct etf_task_record rec; /* times on the run's clock, which starts at 0 */
    size_t tenant;              /* index into etf_scenario.tenants */
    size_t model;               /* index into that tenant's models */
};

struct etf_sim_tenant_result {
    const char *name; /* the scenario's */
    uint64_t eid;
    int priority;                    /* nice level at the end of the run */
    uint32_t weight;                 /* its weight */
    uint64_t submitted;              /* requests submitted (arrivals and closed-loop requests) */
    uint64_t rejected;               /* arrivals refused because the scheduler's queue was full */
    uint64_t tasks;                  /* tasks completed */
    uint64_t time_ns, energy_nj;     /* charged, including tasks still running at the end */
    double time_share, energy_share; /* of everything charged */
    double slice_ns;    /* from the latest allocation (in real time: the one in force as the
                         * last turn began) */
    double alloc_share; /* slice_ns / sum of all tenants' slice_ns */
    uint64_t latency_p50_ns, latency_p99_ns; /* end - submit, nearest rank; 0 if none */
    /* Its time and energy by frequency (etf_entity_freq_stats: ascending, one row per
     * frequency of its models; the energy is modelled even when energy_nj is measured). */
    size_t n_freqs;
    struct etf_freq_stats *freqs;
};

struct etf_sim_result {
    uint64_t duration_ns; /* time covered (virtual, or host time in real-time mode): the
                           * duration, or a little more when the last turn ran past it */
    uint64_t dispatches;
    uint64_t freq_switches;
    uint64_t host_ns; /* host time spent in etf_sched_step (in real time, less the device
                       * time charged: the scheduler's own) */
    double sched_ns_per_dispatch; /* host_ns / dispatches; not reproducible */
    double jain_time, jain_energy;
    /* The meter measured energy: tenants' energy_nj is what the meter measured and the
     * ledger attributed to them, and idle_energy_nj the rest. Otherwise energy is modelled. */
    bool measured;
    uint64_t idle_energy_nj;
    /* The device's time and energy by frequency (etf_sched_freq_stats; energy modelled). */
    size_t n_freqs;
    struct etf_freq_stats *freqs;
    size_t n_tenants;
    struct etf_sim_tenant_result *tenants;
    size_t n_tasks; /* in completion order */
    struct etf_sim_task *tasks;
};

/* Opens the scenario's device (the "sim" device with a virtual clock; any other runs in
 * real time on the host's clock), frequency controller and meter, creates the scheduler and
 * the entities, opens every distinct ONNX file (and batch) once, and loads every model.
 * `sc` is borrowed: it must outlive the simulation. Errors: those of the backends, of
 * etf_model_open (the file's field named) and of etf_model_load (a frequency the profile
 * lacks: ETF_EINVAL), with diag naming the field. */
int etf_sim_create(const struct etf_scenario *sc, struct etf_sim **out, struct etf_diag *diag);

/* Runs the scenario to its end, once: on the virtual clock as fast as the host goes, or in
 * real time for duration_s of host time. Errors: a device or controller failure (the run
 * stops), ETF_ENOMEM, ETF_EBUSY when the simulation has already run. */
int etf_sim_run(struct etf_sim *sim, struct etf_diag *diag);

/* The figures of a finished run; NULL before etf_sim_run succeeded. */
const struct etf_sim_result *etf_sim_result(const struct etf_sim *sim);

/* Include the host timing in the report (otherwise null, so that reports reproduce). */
#define ETF_SIM_REPORT_TIMING (1u << 0)

/* The JSON report as a NUL-terminated string the caller frees. Besides the run's figures
 * and one object per tenant it has "per_frequency" arrays, for the device and in each
 * tenant, of {"hz", "kernels", "time_us", "energy_uj", "time_share", "energy_share"} in
 * ascending order of hz (hz 0 = unknown): the shares are of the device's (the tenant's)
 * time and energy over all its frequencies, and the energy is modelled (kernel time x
 * profiled power) even when the meter measures. Errors: ETF_EINVAL (not run), ETF_ENOMEM. */
int etf_sim_report_json(const struct etf_sim *sim, unsigned flags, char **out,
                        struct etf_diag *diag);
/* Writes the JSON report to f. Errors also: ETF_EIO. */
int etf_sim_write_report(const struct etf_sim *sim, FILE *f, unsigned flags, struct etf_diag *diag);
/* Writes the completed tasks in the original ETF's tasks.csv format:
 * task_id,entity_id,model_id,start_t,end_t,service_time,energy_used
 * (times in µs from the start of the run, energy in µJ). */
int etf_sim_write_tasks_csv(const struct etf_sim *sim, FILE *f, struct etf_diag *diag);
/* Prints a table of the tenants and the run's totals for people, then the device's time
 * and energy by frequency (and a tenant's, for each that ran at more than one). */
int etf_sim_print_summary(const struct etf_sim *sim, FILE *f, struct etf_diag *diag);

void etf_sim_destroy(struct etf_sim *sim);

#ifdef __cplusplus
}
#endif
#endif
