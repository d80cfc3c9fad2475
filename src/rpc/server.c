/* The gRPC plumbing of etfd (see server.h): one server, one completion queue drained by a
 * few threads, and one `struct call` per RPC.
 *
 * A call's life, driven by completions of its main tag:
 *
 *   ACCEPTING  a grpc_server_request_call is outstanding (a few always are, so that new
 *              calls are matched without waiting); when it completes, another is posted,
 *              a RECV_CLOSE_ON_SERVER batch is started on the close tag (it completes when
 *              the call ends, cancelled or not), and:
 *   RECEIVING  a RECV_MESSAGE batch reads the request; then the request is parsed and
 *              dispatched: synchronous methods answer at once; Infer queues a task and
 *   RUNNING    waits: the service's callback, on the dispatcher thread, starts the send
 *   SENDING    batch (initial metadata, the response or none, the status). Its completion
 *              ends the main path.
 *
 * A call holds two references, one per tag in flight (main and close), and is freed when
 * both have completed. A client that goes away mid-Infer only makes the send batch fail:
 * the task still runs to its end, its answer is dropped, nothing leaks.
 *
 * Errors are answered with a non-OK status whose message says what was expected and what
 * was found, and no response message. (An original client that reads `success` from the
 * empty response sees false.)
 *
 * Threads and memory: a call is touched by one thread at a time (the thread that starts a
 * batch on it gives it up until the batch completes), but those hand-offs go through gRPC,
 * whose synchronisation a thread sanitizer cannot see in an uninstrumented library. Every
 * hand-off therefore also goes through the call's `sync` atomic: release before a batch
 * starts, acquire when its completion arrives. Server-wide state (the shutdown flag and
 * the shutdown notification) is under srv->lock.
 */
#include "rpc/server.h"

#include "rpc/grpc_common.h"
#include "rpc/service.h"

#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* grpc_server_request_call kept outstanding. */
#define ACCEPT_SLOTS 16
#define DEFAULT_CQ_THREADS 2
#define MAX_CQ_THREADS 64
/* How long answers may take to go out after the drain, before stragglers are cancelled. */
#define MIN_FINISH_NS 1000000000ull

/* A completion's tag is the call's address with the kind of batch in its low bit (calls
 * are malloc-aligned), so that nothing of the call is read before its hand-off is acquired;
 * the shutdown notification's tag is the server's shutdown_tag. */
enum tag_kind {
    TAG_MAIN = 0,
    TAG_CLOSE = 1,
};
#define TAG_KIND_MASK ((uintptr_t)1)

enum call_state {
    CALL_ACCEPTING,
    CALL_RECEIVING,
    CALL_RUNNING,
    CALL_SENDING,
};

struct method;

struct call {
    struct etf_server *srv;
    grpc_call *call;
    grpc_call_details details;
    grpc_metadata_array md;
    enum call_state state;
    const struct method *method;
    grpc_byte_buffer *request;  /* received */
    grpc_byte_buffer *response; /* being sent */
    grpc_slice status_details;
    bool have_details;
    int cancelled; /* from RECV_CLOSE_ON_SERVER, read after the close tag completed */
    atomic_int refs;
    atomic_uint sync;
};

typedef int (*sync_handler_fn)(struct etf_service *svc, const ProtobufCMessage *req,
                               ProtobufCMessage **resp, struct etf_diag *diag);

struct method {
    const char *path; /* "/efair.rpc.EFairService/LoadModel" */
    const char *name;
    const ProtobufCMessageDescriptor *request;
    sync_handler_fn handle; /* NULL for Infer */
};

struct etf_server {
    struct etf_service *svc;
    grpc_server *server;
    grpc_completion_queue *cq;
    size_t max_message;
    int n_threads;
    pthread_t threads[MAX_CQ_THREADS];
    char shutdown_tag; /* its address is the tag */

    pthread_mutex_t lock;
    pthread_cond_t cond; /* signalled when the shutdown notification arrives */
    bool shutting_down, shutdown_notified;
};

/* ---- Method table ---- */

#define SYNC_HANDLER(fname, svc_fn, Req, Resp)                                                     \
    static int fname(struct etf_service *svc, const ProtobufCMessage *req,                         \
                     ProtobufCMessage **resp, struct etf_diag *diag)                               \
    {                                                                                              \
        Resp *r = NULL;                                                                            \
        int rc = svc_fn(svc, (const Req *)req, &r, diag);                                          \
        *resp = r ? &r->base : NULL;                                                               \
        return rc;                                                                                 \
    }

SYNC_HANDLER(handle_load_model, etf_service_load_model, Efair__Rpc__LoadModelRequest,
             Efair__Rpc__LoadModelResponse)
SYNC_HANDLER(handle_create_entity, etf_service_create_entity, Efair__Rpc__CreateEntityRequest,
             Efair__Rpc__CreateEntityResponse)
SYNC_HANDLER(handle_set_priority, etf_service_set_entity_priority,
             Efair__Rpc__SetEntityPriorityRequest, Efair__Rpc__SetEntityPriorityResponse)
SYNC_HANDLER(handle_unload_model, etf_service_unload_model, Efair__Rpc__UnloadModelRequest,
             Efair__Rpc__UnloadModelResponse)
SYNC_HANDLER(handle_delete_entity, etf_service_delete_entity, Efair__Rpc__DeleteEntityRequest,
             Efair__Rpc__DeleteEntityResponse)
SYNC_HANDLER(handle_get_stats, etf_service_get_stats, Efair__Rpc__GetStatsRequest,
             Efair__Rpc__GetStatsResponse)

#define SERVICE_PATH "/efair.rpc.EFairService/"

static const struct method methods[] = {
    {SERVICE_PATH "LoadModel", "LoadModel", &efair__rpc__load_model_request__descriptor,
     handle_load_model},
    {SERVICE_PATH "CreateEntity", "CreateEntity", &efair__rpc__create_entity_request__descriptor,
     handle_create_entity},
    {SERVICE_PATH "SetEntityPriority", "SetEntityPriority",
     &efair__rpc__set_entity_priority_request__descriptor, handle_set_priority},
    {SERVICE_PATH "Infer", "Infer", &efair__rpc__infer_request__descriptor, NULL},
    {SERVICE_PATH "UnloadModel", "UnloadModel", &efair__rpc__unload_model_request__descriptor,
     handle_unload_model},
    {SERVICE_PATH "DeleteEntity", "DeleteEntity", &efair__rpc__delete_entity_request__descriptor,
     handle_delete_entity},
    {SERVICE_PATH "GetStats", "GetStats", &efair__rpc__get_stats_request__descriptor,
     handle_get_stats},
};

static const struct method *find_method(grpc_slice path)
{
    size_t len = GRPC_SLICE_LENGTH(path);
    const char *p = (const char *)GRPC_SLICE_START_PTR(path);
    for (size_t i = 0; i < sizeof methods / sizeof *methods; i++) {
        if (strlen(methods[i].path) == len && memcmp(methods[i].path, p, len) == 0)
            return &methods[i];
    }
    return NULL;
}

/* ---- Calls ---- */

static void handoff_release(struct call *c)
{
    atomic_fetch_add_explicit(&c->sync, 1, memory_order_release);
}

static void handoff_acquire(struct call *c)
{
    (void)atomic_load_explicit(&c->sync, memory_order_acquire);
}

/* Starts a batch on the call and gives the call up to whoever takes the completion: from
 * the release on, this thread does not touch *c (unless the batch fails to start). */
static void *tag_of(struct call *c, enum tag_kind kind)
{
    return (void *)((uintptr_t)c | (uintptr_t)kind);
}

static struct call *tag_call(void *tag, enum tag_kind *kind)
{
    *kind = (enum tag_kind)((uintptr_t)tag & TAG_KIND_MASK);
    return (struct call *)((uintptr_t)tag & ~TAG_KIND_MASK);
}

static grpc_call_error start_batch(struct call *c, const grpc_op *ops, size_t n, enum tag_kind kind)
{
    grpc_call *call = c->call;
    void *tag = tag_of(c, kind);
    handoff_release(c);
    return grpc_call_start_batch(call, ops, n, tag, NULL);
}

static struct call *call_new(struct etf_server *srv)
{
    struct call *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->srv = srv;
    grpc_call_details_init(&c->details);
    grpc_metadata_array_init(&c->md);
    atomic_init(&c->refs, 0);
    atomic_init(&c->sync, 0);
    return c;
}

static void call_free(struct call *c)
{
    if (c->call)
        grpc_call_unref(c->call);
    if (c->request)
        grpc_byte_buffer_destroy(c->request);
    if (c->response)
        grpc_byte_buffer_destroy(c->response);
    if (c->have_details)
        grpc_slice_unref(c->status_details);
    grpc_call_details_destroy(&c->details);
    grpc_metadata_array_destroy(&c->md);
    free(c);
}

static void call_unref(struct call *c)
{
    if (atomic_fetch_sub_explicit(&c->refs, 1, memory_order_acq_rel) == 1)
        call_free(c);
}

static bool server_stopping(struct etf_server *srv)
{
    pthread_mutex_lock(&srv->lock);
    bool stopping = srv->shutting_down;
    pthread_mutex_unlock(&srv->lock);
    return stopping;
}

/* Posts one grpc_server_request_call. */
static void accept_one(struct etf_server *srv)
{
    struct call *c = call_new(srv);
    if (!c) {
        fprintf(stderr, "etfd: out of memory: one fewer call can be accepted at a time\n");
        return;
    }
    c->state = CALL_ACCEPTING;
    handoff_release(c);
    grpc_call_error e = grpc_server_request_call(srv->server, &c->call, &c->details, &c->md,
                                                 srv->cq, srv->cq, tag_of(c, TAG_MAIN));
    if (e != GRPC_CALL_OK) {
        fprintf(stderr, "etfd: cannot accept calls: grpc error %d\n", (int)e);
        call_free(c);
    }
}

/* Answers the call: the response (when resp is not NULL) and the status. Ends the main
 * path; may run on any thread. */
static void call_finish(struct call *c, grpc_status_code code, const char *msg,
                        const ProtobufCMessage *resp)
{
    grpc_op ops[3];
    size_t n = 0;
    memset(ops, 0, sizeof ops);
    if (resp && code == GRPC_STATUS_OK) {
        c->response = etf__pb_to_buffer(resp);
        if (!c->response) {
            code = GRPC_STATUS_RESOURCE_EXHAUSTED;
            msg = "out of memory for the response";
        }
    }
    if (code != GRPC_STATUS_OK) {
        fprintf(stderr, "etfd: %s: %s: %s\n", c->method ? c->method->name : "call",
                etf__grpc_status_name(code), msg && *msg ? msg : "(no detail)");
        c->status_details = grpc_slice_from_copied_string(msg && *msg ? msg : "");
        c->have_details = true;
    }
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[n].data.send_initial_metadata.count = 0;
    n++;
    if (c->response) {
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = c->response;
        n++;
    }
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n].data.send_status_from_server.trailing_metadata_count = 0;
    ops[n].data.send_status_from_server.status = code;
    ops[n].data.send_status_from_server.status_details =
        c->have_details ? &c->status_details : NULL;
    n++;
    c->state = CALL_SENDING;
    grpc_call_error e = start_batch(c, ops, n, TAG_MAIN);
    if (e != GRPC_CALL_OK) {
        /* No completion will come for this batch: end the main path here. */
        fprintf(stderr, "etfd: cannot answer a call: grpc error %d\n", (int)e);
        call_unref(c);
    }
}

static void call_fail(struct call *c, int err, const char *msg)
{
    call_finish(c, etf__grpc_status(err), msg, NULL);
}

/* The service's Infer callback, on the dispatcher thread. */
static void infer_done(void *arg, int err, const char *msg, Efair__Rpc__InferResponse *resp)
{
    struct call *c = arg;
    if (err)
        call_fail(c, err, msg);
    else
        call_finish(c, GRPC_STATUS_OK, NULL, &resp->base);
    etf_service_free_response(resp);
}

/* The request has arrived (or not): parse and dispatch it. */
static void call_dispatch(struct call *c, bool ok)
{
    struct etf_server *srv = c->srv;
    struct etf_diag diag = {""};
    const struct method *m = c->method;
    if (!ok) {
        /* The call ended before its message arrived: cancelled by the client, or over the
         * size limit (gRPC has answered RESOURCE_EXHAUSTED itself). The status sent here
         * goes nowhere but ends the main path. */
        call_fail(c, ETF_EINVAL,
                  "the request did not arrive: the call was cancelled or its "
                  "message exceeded the size limit");
        return;
    }
    if (!c->request) {
        call_fail(c, ETF_EINVAL, "expected one request message, the client sent none");
        return;
    }
    bool too_big;
    size_t len = grpc_byte_buffer_length(c->request);
    ProtobufCMessage *req = etf__pb_from_buffer(c->request, m->request, srv->max_message, &too_big);
    grpc_byte_buffer_destroy(c->request);
    c->request = NULL;
    if (!req) {
        if (too_big)
            etf_diagf(&diag, ETF_ELIMIT, "request of %zu bytes: at most %zu accepted", len,
                      srv->max_message);
        else
            etf_diagf(&diag, ETF_EINVAL, "request of %zu bytes is not a valid %s message", len,
                      m->request->name);
        call_fail(c, too_big ? ETF_ELIMIT : ETF_EINVAL, diag.msg);
        return;
    }
    if (m->handle) {
        ProtobufCMessage *resp = NULL;
        int rc = m->handle(srv->svc, req, &resp, &diag);
        protobuf_c_message_free_unpacked(req, NULL);
        if (rc)
            call_fail(c, rc, diag.msg);
        else
            call_finish(c, GRPC_STATUS_OK, NULL, resp);
        etf_service_free_response(resp);
        return;
    }
    /* Infer: once queued, the call belongs to the task; infer_done answers it, maybe
     * before etf_service_infer returns, so c is not touched after success. */
    c->state = CALL_RUNNING;
    int rc =
        etf_service_infer(srv->svc, (const Efair__Rpc__InferRequest *)req, infer_done, c, &diag);
    protobuf_c_message_free_unpacked(req, NULL);
    if (rc)
        call_fail(c, rc, diag.msg);
}

static void call_accepted(struct call *c, bool ok)
{
    struct etf_server *srv = c->srv;
    if (!ok) {
        /* The server is shutting down: this slot will not be filled. */
        call_free(c);
        return;
    }
    if (!server_stopping(srv))
        accept_one(srv);

    /* Two references: the close batch and the main path. */
    atomic_store_explicit(&c->refs, 2, memory_order_relaxed);
    grpc_op op;
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    op.data.recv_close_on_server.cancelled = &c->cancelled;
    /* Its completion only drops a reference: this thread keeps the rest of *c. */
    if (start_batch(c, &op, 1, TAG_CLOSE) != GRPC_CALL_OK)
        call_unref(c);

    c->method = find_method(c->details.method);
    if (!c->method) {
        char msg[300];
        size_t len = GRPC_SLICE_LENGTH(c->details.method);
        snprintf(msg, sizeof msg,
                 "method '%.*s' is not served here: expected one of efair.rpc.EFairService's "
                 "(LoadModel, CreateEntity, SetEntityPriority, Infer, UnloadModel, "
                 "DeleteEntity, GetStats)",
                 (int)(len < 100 ? len : 100),
                 (const char *)GRPC_SLICE_START_PTR(c->details.method));
        call_finish(c, GRPC_STATUS_UNIMPLEMENTED, msg, NULL);
        return;
    }
    memset(&op, 0, sizeof op);
    op.op = GRPC_OP_RECV_MESSAGE;
    op.data.recv_message.recv_message = &c->request;
    c->state = CALL_RECEIVING;
    if (start_batch(c, &op, 1, TAG_MAIN) != GRPC_CALL_OK)
        call_fail(c, ETF_EIO, "cannot read the request");
}

static void handle_event(struct etf_server *srv, void *tag, bool ok)
{
    if (tag == &srv->shutdown_tag) {
        pthread_mutex_lock(&srv->lock);
        srv->shutdown_notified = true;
        pthread_cond_broadcast(&srv->cond);
        pthread_mutex_unlock(&srv->lock);
        return;
    }
    enum tag_kind kind;
    struct call *c = tag_call(tag, &kind);
    handoff_acquire(c);
    if (kind == TAG_CLOSE) {
        call_unref(c);
        return;
    }
    switch (c->state) {
    case CALL_ACCEPTING:
        call_accepted(c, ok);
        break;
    case CALL_RECEIVING:
        call_dispatch(c, ok);
        break;
    case CALL_RUNNING: /* no batch completes in this state */
        break;
    case CALL_SENDING:
        call_unref(c);
        break;
    }
}

static void *cq_main(void *arg)
{
    struct etf_server *srv = arg;
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
            return NULL;
        if (ev.type == GRPC_OP_COMPLETE)
            handle_event(srv, ev.tag, ev.success != 0);
    }
}

/* ---- Life cycle ---- */

int etf_server_start(const struct etf_server_config *cfg, struct etf_service *svc,
                     struct etf_server **out, int *port, struct etf_diag *diag)
{
    if (!cfg || !svc || !out || !cfg->listen || !cfg->listen[0])
        return etf_diagf(diag, ETF_EINVAL, "server: an address to listen on is expected");
    size_t max_message = cfg->max_message ? cfg->max_message : ETF_RPC_DEFAULT_MAX_MESSAGE;
    if (max_message > INT_MAX)
        return etf_diagf(diag, ETF_EINVAL, "max message size %zu: at most %d bytes", max_message,
                         INT_MAX);
    int n_threads = cfg->cq_threads ? cfg->cq_threads : DEFAULT_CQ_THREADS;
    if (n_threads < 1 || n_threads > MAX_CQ_THREADS)
        return etf_diagf(diag, ETF_EINVAL, "completion-queue threads: expected 1..%d, found %d",
                         MAX_CQ_THREADS, n_threads);

    struct etf_server *srv = calloc(1, sizeof *srv);
    if (!srv)
        return etf_diagf(diag, ETF_ENOMEM, "server: out of memory");
    int rc = 0;
    srv->svc = svc;
    srv->max_message = max_message;
    if (pthread_mutex_init(&srv->lock, NULL)) {
        free(srv);
        return etf_diagf(diag, ETF_ENOMEM, "server: cannot create a lock");
    }
    if (pthread_cond_init(&srv->cond, NULL)) {
        pthread_mutex_destroy(&srv->lock);
        free(srv);
        return etf_diagf(diag, ETF_ENOMEM, "server: cannot create a condition");
    }

    grpc_init();
    grpc_arg args[] = {
        {.type = GRPC_ARG_INTEGER,
         .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
         .value.integer = (int)max_message},
        /* Linux would let a second server share the port and split the clients. */
        {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0},
    };
    grpc_channel_args chargs = {.num_args = sizeof args / sizeof *args, .args = args};
    srv->server = grpc_server_create(&chargs, NULL);
    srv->cq = grpc_completion_queue_create_for_next(NULL);
    if (!srv->server || !srv->cq) {
        rc = etf_diagf(diag, ETF_ENOMEM, "server: cannot create the gRPC server");
        goto fail;
    }
    grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
    grpc_server_credentials *creds = grpc_insecure_server_credentials_create();
    int bound = grpc_server_add_http2_port(srv->server, cfg->listen, creds);
    grpc_server_credentials_release(creds);
    if (bound <= 0) {
        rc = etf_diagf(diag, ETF_EIO,
                       "cannot listen on '%.200s': expected HOST:PORT with a free port on a "
                       "local address",
                       cfg->listen);
        goto fail;
    }
    grpc_server_start(srv->server);
    for (int i = 0; i < ACCEPT_SLOTS; i++)
        accept_one(srv);
    for (; srv->n_threads < n_threads; srv->n_threads++) {
        if (pthread_create(&srv->threads[srv->n_threads], NULL, cq_main, srv)) {
            rc = etf_diagf(diag, ETF_ENOMEM, "server: cannot start its threads");
            break;
        }
    }
    if (srv->n_threads == 0)
        goto fail_started;
    if (rc) {
        etf_server_destroy(srv);
        return rc;
    }
    *port = bound;
    *out = srv;
    return 0;

fail_started:
    /* No thread drains the queue: shut down by hand. */
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    grpc_server_cancel_all_calls(srv->server);
    for (;;) {
        grpc_event ev =
            grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type == GRPC_OP_COMPLETE && ev.tag == &srv->shutdown_tag)
            break;
        enum tag_kind kind;
        if (ev.type == GRPC_OP_COMPLETE)
            call_free(tag_call(ev.tag, &kind));
    }
fail:
    if (srv->server)
        grpc_server_destroy(srv->server);
    if (srv->cq) {
        grpc_completion_queue_shutdown(srv->cq);
        while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
               GRPC_QUEUE_SHUTDOWN)
            ;
        grpc_completion_queue_destroy(srv->cq);
    }
    grpc_shutdown();
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
    return rc;
}

/* Waits for the shutdown notification until deadline_ns (host clock); true if it came. */
static bool wait_notified(struct etf_server *srv, uint64_t deadline_ns)
{
    pthread_mutex_lock(&srv->lock);
    while (!srv->shutdown_notified) {
        uint64_t now = etf_host_ns();
        if (now >= deadline_ns)
            break;
        /* The condition uses CLOCK_REALTIME; a short step re-reads the monotonic clock. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t step = deadline_ns - now < 100000000u ? deadline_ns - now : 100000000u;
        uint64_t ns = (uint64_t)ts.tv_nsec + step;
        ts.tv_sec += (time_t)(ns / 1000000000u);
        ts.tv_nsec = (long)(ns % 1000000000u);
        pthread_cond_timedwait(&srv->cond, &srv->lock, &ts);
    }
    bool notified = srv->shutdown_notified;
    pthread_mutex_unlock(&srv->lock);
    return notified;
}

void etf_server_shutdown(struct etf_server *srv, uint64_t drain_ns)
{
    pthread_mutex_lock(&srv->lock);
    bool already = srv->shutting_down;
    srv->shutting_down = true;
    pthread_mutex_unlock(&srv->lock);
    if (already)
        return;
    uint64_t start = etf_host_ns();
    /* No new calls from here; the calls in flight go on. */
    grpc_server_shutdown_and_notify(srv->server, srv->cq, &srv->shutdown_tag);
    /* Tasks finish (or, past the drain time, fail: their calls are answered UNAVAILABLE). */
    etf_service_stop(srv->svc, drain_ns);
    uint64_t spent = etf_host_ns() - start;
    uint64_t grace = drain_ns > spent ? drain_ns - spent : 0;
    if (grace < MIN_FINISH_NS)
        grace = MIN_FINISH_NS;
    if (!wait_notified(srv, etf_host_ns() + grace)) {
        fprintf(stderr, "etfd: cancelling the calls still open\n");
        grpc_server_cancel_all_calls(srv->server);
        wait_notified(srv, UINT64_MAX);
    }
    grpc_server_destroy(srv->server);
    srv->server = NULL;
    grpc_completion_queue_shutdown(srv->cq);
    for (int i = 0; i < srv->n_threads; i++)
        pthread_join(srv->threads[i], NULL);
    srv->n_threads = 0;
    grpc_completion_queue_destroy(srv->cq);
    srv->cq = NULL;
    grpc_shutdown();
}

void etf_server_destroy(struct etf_server *srv)
{
    if (!srv)
        return;
    etf_server_shutdown(srv, 0);
    pthread_cond_destroy(&srv->cond);
    pthread_mutex_destroy(&srv->lock);
    free(srv);
}
