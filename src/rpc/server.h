/* The gRPC server of etfd: serves efair.rpc.EFairService (proto/efair.proto) over gRPC's
 * core C API and hands each request to the service (service.h).
 *
 * Threads: `cq_threads` threads drain one completion queue; synchronous methods run on
 * them, and Infer answers from the scheduler's dispatcher thread (grpc_call_start_batch
 * does not block), so the dispatcher never waits on the network.
 */
#ifndef ETF_RPC_SERVER_H
#define ETF_RPC_SERVER_H

#include "etf/etf.h"

#include <stddef.h>

struct etf_server;
struct etf_service;

struct etf_server_config {
    const char *listen; /* "HOST:PORT"; port 0 = an ephemeral port */
    size_t max_message; /* largest request accepted, bytes; 0 = ETF_RPC_DEFAULT_MAX_MESSAGE */
    int cq_threads;     /* completion-queue threads; 0 = 2 */
};

/* Binds, starts serving svc (borrowed: it must outlive the server) and returns the bound
 * port in *port. Errors: ETF_EINVAL (settings), ETF_EIO (cannot bind), ETF_ENOMEM. */
int etf_server_start(const struct etf_server_config *cfg, struct etf_service *svc,
                     struct etf_server **out, int *port, struct etf_diag *diag);

/* Stops accepting calls, lets the tasks in flight finish for up to drain_ns (the rest are
 * answered UNAVAILABLE), waits for every call to end (cancelling the stragglers once the
 * drain time is over), stops the service's dispatcher and the server's threads. */
void etf_server_shutdown(struct etf_server *srv, uint64_t drain_ns);

/* Shuts down if needed and frees the server. */
void etf_server_destroy(struct etf_server *srv);

#endif
