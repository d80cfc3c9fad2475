/* The ETF service behind etfd: the model repository, the tables of entities, models and
 * shared plans, and one handler per RPC of efair.proto, on top of the scheduler.
 *
 * No gRPC here: requests and responses are the protobuf-c structs of efair.pb-c.h, and a
 * handler returns 0 with a response or an ETF error code with a message that says what was
 * expected and what was found (server.c maps codes to gRPC status codes). This keeps the
 * logic testable without a network (tests/test_service.c).
 *
 * Threads: every function may be called from any thread, concurrently, except create,
 * destroy and the summary writers, which want the dispatcher stopped (etf_service_stop).
 * Infer completes on the scheduler's dispatcher thread: its callback must not block.
 */
#ifndef ETF_RPC_SERVICE_H
#define ETF_RPC_SERVICE_H

#include "efair.pb-c.h"

#include "etf/etf.h"

#include <stdio.h>

struct etf_service;

struct etf_service_config {
    const char *device;     /* device backend: "sim", "cpu", "cuda", ... */
    const char *models_dir; /* the model repository; every model path is relative to it */
    uint64_t quantum_ns;    /* Q > 0 */
    double phi;             /* in [0, 1] */
    int device_threads;     /* worker threads of CPU devices; 0 = the backend's default */
    size_t max_queued;      /* tasks queued over all entities; 0 = the scheduler's default */
    /* Timed runs of a model that has no profile, after one warm-up run; 0 = 3. */
    unsigned calibration_runs;
    /* Energy meter and frequency controller by name; NULL = "model", and "sim" with the
     * simulated device or "none" otherwise. Their settings may be NULL (defaults). */
    const char *meter, *freq;
    const struct etf_meter_config *meter_cfg;
    const struct etf_freq_config *freq_cfg;
};

/* Opens the device, the meter and the frequency controller, creates the scheduler (not yet
 * dispatching) and checks the repository. Errors: ETF_EINVAL (a setting), ETF_ENOENT (no
 * repository), the backends' errors (ETF_ENOTSUP: a device this build lacks). */
int etf_service_create(const struct etf_service_config *cfg, struct etf_service **out,
                       struct etf_diag *diag);
/* Starts the dispatcher thread. */
int etf_service_start(struct etf_service *svc, struct etf_diag *diag);
/* Refuses new tasks, waits up to drain_ns for the queued ones to finish, fails the rest
 * (their Infer callbacks report ETF_ESHUTDOWN) and stops the dispatcher. Idempotent. */
void etf_service_stop(struct etf_service *svc, uint64_t drain_ns);
/* Stops if needed, then unloads everything and frees the service. */
void etf_service_destroy(struct etf_service *svc);

struct etf_service_info {
    const char *device, *meter, *freq; /* backend names */
    uint64_t quantum_ns;
    double phi;
};
void etf_service_info(const struct etf_service *svc, struct etf_service_info *out);

/* ---- Handlers. On success *resp is a new message the caller frees with
 * etf_service_free_response; on failure *resp is NULL and diag says why. ---- */

void etf_service_free_response(void *resp);

int etf_service_load_model(struct etf_service *svc, const Efair__Rpc__LoadModelRequest *req,
                           Efair__Rpc__LoadModelResponse **resp, struct etf_diag *diag);
int etf_service_unload_model(struct etf_service *svc, const Efair__Rpc__UnloadModelRequest *req,
                             Efair__Rpc__UnloadModelResponse **resp, struct etf_diag *diag);
int etf_service_create_entity(struct etf_service *svc, const Efair__Rpc__CreateEntityRequest *req,
                              Efair__Rpc__CreateEntityResponse **resp, struct etf_diag *diag);
int etf_service_set_entity_priority(struct etf_service *svc,
                                    const Efair__Rpc__SetEntityPriorityRequest *req,
                                    Efair__Rpc__SetEntityPriorityResponse **resp,
                                    struct etf_diag *diag);
int etf_service_delete_entity(struct etf_service *svc, const Efair__Rpc__DeleteEntityRequest *req,
                              Efair__Rpc__DeleteEntityResponse **resp, struct etf_diag *diag);
int etf_service_get_stats(struct etf_service *svc, const Efair__Rpc__GetStatsRequest *req,
                          Efair__Rpc__GetStatsResponse **resp, struct etf_diag *diag);

/* How an Infer ends: err 0 and resp (owned by the callee: free it with
 * etf_service_free_response), or err != 0, resp NULL and msg saying why (ETF_ESHUTDOWN: the
 * server stopped before the task ran; ETF_EDEVICE: a kernel failed). Called exactly once,
 * on the dispatcher thread, with no lock of the service held. */
typedef void (*etf_service_infer_fn)(void *arg, int err, const char *msg,
                                     Efair__Rpc__InferResponse *resp);

/* Validates the request, copies its tensors and queues the task; the request may be freed
 * when this returns. Returns 0 when queued (done is then called later, possibly before
 * this returns), or an error (ETF_ENOENT model, ETF_EINVAL tensors, ETF_ELIMIT queue full,
 * ETF_ESHUTDOWN) and done is never called. */
int etf_service_infer(struct etf_service *svc, const Efair__Rpc__InferRequest *req,
                      etf_service_infer_fn done, void *arg, struct etf_diag *diag);

/* ---- After the run (dispatcher stopped) ---- */

/* The original ETF's summary: per model ever loaded, its id, entity, name, frequency (Hz),
 * tasks, total time (µs) and total energy (µJ). Then the device's kernels, time and
 * modelled energy by frequency (every entity there has been, calibration runs included),
 * and the same for each client entity that ran at more than one frequency. Errors:
 * ETF_ENOMEM, ETF_EIO. */
int etf_service_print_summary(struct etf_service *svc, FILE *f);
/* Every task that finished, in completion order, in the original tasks.csv format:
 * task_id,entity_id,model_id,start_t,end_t,service_time,energy_used
 * (µs since the service was created, µJ). Errors: ETF_EIO. */
int etf_service_write_tasks_csv(struct etf_service *svc, FILE *f, struct etf_diag *diag);
/* Number of tasks finished so far (rows of tasks.csv). */
size_t etf_service_tasks_finished(struct etf_service *svc);

#endif
