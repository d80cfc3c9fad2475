/* A small blocking client of the ETF service (proto/efair.proto) over gRPC core.
 *
 * One client holds one channel (one HTTP/2 connection, reconnected by gRPC when it drops)
 * and may be used by any number of threads at once: every call borrows a completion queue
 * of its own from the client's pool, so that concurrent calls never wait on each other's
 * events. Every call has a deadline (the timeout given at connect).
 *
 * Functions return 0 or a negative ETF_E* code. A failure writes into diag the gRPC status
 * name and the server's details ("NOT_FOUND: no model with id 7"); the code follows the
 * status (NOT_FOUND → ETF_ENOENT, INVALID_ARGUMENT → ETF_EINVAL, RESOURCE_EXHAUSTED →
 * ETF_ELIMIT, FAILED_PRECONDITION → ETF_EBUSY, UNIMPLEMENTED → ETF_ENOTSUP, UNAVAILABLE →
 * ETF_ESHUTDOWN, anything else ETF_EIO).
 */
#ifndef ETF_RPC_CLIENT_H
#define ETF_RPC_CLIENT_H

#include "efair.pb-c.h"
#include "etf/etf.h"

#include <stddef.h>
#include <stdint.h>

struct etf_client;

/* Default deadline of a call. */
#define ETF_CLIENT_DEFAULT_TIMEOUT_MS 60000u

struct etf_client_options {
    /* Largest message sent or received; 0 = ETF_RPC_DEFAULT_MAX_MESSAGE (64 MiB). */
    size_t max_message_bytes;
    /* Deadline of every call from its start; 0 = ETF_CLIENT_DEFAULT_TIMEOUT_MS. */
    uint64_t timeout_ms;
    /* Give this client a connection of its own even when another client in the process
     * talks to the same server (gRPC shares them by default). */
    bool own_connection;
};

/* Creates a client of target ("127.0.0.1:10086", any gRPC target URI). Nothing is sent
 * yet: an unreachable server shows at the first call, as UNAVAILABLE. opts may be NULL.
 * Errors: ETF_EINVAL (empty target, limits out of range), ETF_ENOMEM, ETF_EIO. */
int etf_client_connect(const char *target, const struct etf_client_options *opts,
                       struct etf_client **out, struct etf_diag *diag);

/* Closes the channel. Calls in flight on other threads must have returned. */
void etf_client_close(struct etf_client *c);

/* The original four methods, with plain arguments where the request is small. */
int etf_client_create_entity(struct etf_client *c, int64_t priority, uint64_t *eid,
                             struct etf_diag *diag);
int etf_client_set_priority(struct etf_client *c, uint64_t eid, int64_t priority,
                            struct etf_diag *diag);
/* *resp is the server's answer (mid, frequency, shapes), freed with etf_client_free. */
int etf_client_load_model(struct etf_client *c, const Efair__Rpc__LoadModelRequest *req,
                          Efair__Rpc__LoadModelResponse **resp, struct etf_diag *diag);
/* Returns when the task has finished. *resp is freed with etf_client_free. */
int etf_client_infer(struct etf_client *c, const Efair__Rpc__InferRequest *req,
                     Efair__Rpc__InferResponse **resp, struct etf_diag *diag);

/* The additions. */
int etf_client_unload_model(struct etf_client *c, uint64_t mid, struct etf_diag *diag);
int etf_client_delete_entity(struct etf_client *c, uint64_t eid, struct etf_diag *diag);
/* eid 0 = every entity. *resp is freed with etf_client_free. */
int etf_client_get_stats(struct etf_client *c, uint64_t eid, Efair__Rpc__GetStatsResponse **resp,
                         struct etf_diag *diag);

/* Frees a response returned by the functions above; NULL is ignored. */
void etf_client_free(void *resp);

#endif
