/* The blocking ETF client over gRPC core (see client.h).
 *
 * A unary call is one batch of six operations on a call bound to a pluck completion queue;
 * the calling thread plucks the batch's tag and nothing else, so concurrent calls never
 * see each other's events. Completion queues cost a pollset each, so they are kept in a
 * pool per client rather than made per call: a call borrows one and gives it back. */
#include "rpc/client.h"

#include "rpc/grpc_common.h"
#include "util/array.h"

#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* Longest target accepted: gRPC URIs are short, and the name goes into messages. */
#define TARGET_MAX 1024
/* A month: longer deadlines only hide a stuck server. */
#define TIMEOUT_MAX_MS (31ull * 24 * 3600 * 1000)

enum method {
    M_LOAD_MODEL,
    M_CREATE_ENTITY,
    M_SET_PRIORITY,
    M_INFER,
    M_UNLOAD_MODEL,
    M_DELETE_ENTITY,
    M_GET_STATS,
    M_COUNT,
};

static const char *const method_paths[M_COUNT] = {
    [M_LOAD_MODEL] = "/efair.rpc.EFairService/LoadModel",
    [M_CREATE_ENTITY] = "/efair.rpc.EFairService/CreateEntity",
    [M_SET_PRIORITY] = "/efair.rpc.EFairService/SetEntityPriority",
    [M_INFER] = "/efair.rpc.EFairService/Infer",
    [M_UNLOAD_MODEL] = "/efair.rpc.EFairService/UnloadModel",
    [M_DELETE_ENTITY] = "/efair.rpc.EFairService/DeleteEntity",
    [M_GET_STATS] = "/efair.rpc.EFairService/GetStats",
};

struct etf_client {
    grpc_channel *channel;
    /* Handles from grpc_channel_register_call: the method path is interned once instead of
     * per call. */
    void *methods[M_COUNT];
    size_t max_message_bytes;
    uint64_t timeout_ms;

    pthread_mutex_t pool_lock;
    grpc_completion_queue **pool; /* idle queues */
    size_t pool_len, pool_cap;
};

static bool target_valid(const char *t)
{
    size_t n = strnlen(t, TARGET_MAX + 1);
    if (n == 0 || n > TARGET_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)t[i] <= ' ' || t[i] == 0x7f)
            return false;
    }
    return true;
}

int etf_client_connect(const char *target, const struct etf_client_options *opts,
                       struct etf_client **out, struct etf_diag *diag)
{
    struct etf_client_options o = opts ? *opts : (struct etf_client_options){0};
    if (!target || !target_valid(target))
        return etf_diagf(diag, ETF_EINVAL,
                         "server address: expected HOST:PORT (1..%d printable characters)",
                         TARGET_MAX);
    if (o.max_message_bytes == 0)
        o.max_message_bytes = ETF_RPC_DEFAULT_MAX_MESSAGE;
    if (o.max_message_bytes > INT_MAX)
        return etf_diagf(diag, ETF_EINVAL, "max message size: expected at most %d bytes, found %zu",
                         INT_MAX, o.max_message_bytes);
    if (o.timeout_ms == 0)
        o.timeout_ms = ETF_CLIENT_DEFAULT_TIMEOUT_MS;
    if (o.timeout_ms > TIMEOUT_MAX_MS)
        return etf_diagf(diag, ETF_EINVAL, "timeout: expected at most %llu ms, found %llu",
                         (unsigned long long)TIMEOUT_MAX_MS, (unsigned long long)o.timeout_ms);

    struct etf_client *c = calloc(1, sizeof *c);
    if (!c)
        return etf_diagf(diag, ETF_ENOMEM, "client: out of memory");
    if (pthread_mutex_init(&c->pool_lock, NULL) != 0) {
        free(c);
        return etf_diagf(diag, ETF_ENOMEM, "client: cannot create a mutex");
    }
    c->max_message_bytes = o.max_message_bytes;
    c->timeout_ms = o.timeout_ms;

    grpc_init();
    grpc_arg args[3];
    size_t nargs = 0;
    /* Both directions: a request carrying a batch of inputs is as large as a response. */
    args[nargs++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                               .key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
                               .value.integer = (int)o.max_message_bytes};
    args[nargs++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                               .key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH,
                               .value.integer = (int)o.max_message_bytes};
    if (o.own_connection)
        args[nargs++] = (grpc_arg){.type = GRPC_ARG_INTEGER,
                                   .key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL,
                                   .value.integer = 1};
    grpc_channel_args chargs = {.num_args = nargs, .args = args};
    grpc_channel_credentials *creds = grpc_insecure_credentials_create();
    c->channel = creds ? grpc_channel_create(target, creds, &chargs) : NULL;
    if (creds)
        grpc_channel_credentials_release(creds);
    if (!c->channel) {
        grpc_shutdown();
        pthread_mutex_destroy(&c->pool_lock);
        free(c);
        return etf_diagf(diag, ETF_EIO, "cannot create a channel to %s", target);
    }
    for (int m = 0; m < M_COUNT; m++)
        c->methods[m] = grpc_channel_register_call(c->channel, method_paths[m], NULL, NULL);
    *out = c;
    return 0;
}

void etf_client_close(struct etf_client *c)
{
    if (!c)
        return;
    /* Every borrowed queue is back: calls have returned, and their events were plucked,
     * which is what destroying a queue requires. */
    for (size_t i = 0; i < c->pool_len; i++) {
        grpc_completion_queue_shutdown(c->pool[i]);
        grpc_completion_queue_destroy(c->pool[i]);
    }
    free(c->pool);
    grpc_channel_destroy(c->channel);
    pthread_mutex_destroy(&c->pool_lock);
    free(c);
    grpc_shutdown();
}

static grpc_completion_queue *cq_borrow(struct etf_client *c)
{
    grpc_completion_queue *cq = NULL;
    pthread_mutex_lock(&c->pool_lock);
    if (c->pool_len > 0)
        cq = c->pool[--c->pool_len];
    pthread_mutex_unlock(&c->pool_lock);
    return cq ? cq : grpc_completion_queue_create_for_pluck(NULL);
}

static void cq_return(struct etf_client *c, grpc_completion_queue *cq)
{
    pthread_mutex_lock(&c->pool_lock);
    if (etf__reserve(&c->pool, c->pool_len, &c->pool_cap, sizeof *c->pool, 8) == 0) {
        c->pool[c->pool_len++] = cq;
        cq = NULL;
    }
    pthread_mutex_unlock(&c->pool_lock);
    if (cq) { /* no room to keep it: an idle, drained queue may simply go */
        grpc_completion_queue_shutdown(cq);
        grpc_completion_queue_destroy(cq);
    }
}

/* The ETF code a status maps to: the inverse of etf__grpc_status where it is one to one. */
static int status_to_err(grpc_status_code code)
{
    switch (code) {
    case GRPC_STATUS_OK:
        return ETF_OK;
    case GRPC_STATUS_INVALID_ARGUMENT:
        return ETF_EINVAL;
    case GRPC_STATUS_OUT_OF_RANGE:
        return ETF_EINVAL;
    case GRPC_STATUS_NOT_FOUND:
        return ETF_ENOENT;
    case GRPC_STATUS_RESOURCE_EXHAUSTED:
        return ETF_ELIMIT;
    case GRPC_STATUS_FAILED_PRECONDITION:
        return ETF_EBUSY;
    case GRPC_STATUS_UNIMPLEMENTED:
        return ETF_ENOTSUP;
    case GRPC_STATUS_UNAVAILABLE:
        return ETF_ESHUTDOWN;
    default:
        return ETF_EIO;
    }
}

/* One unary call: sends req, waits for the answer or the deadline, and parses the answer
 * as a message of descriptor rd into *resp. */
static int unary(struct etf_client *c, enum method m, const ProtobufCMessage *req,
                 const ProtobufCMessageDescriptor *rd, ProtobufCMessage **resp,
                 struct etf_diag *diag)
{
    *resp = NULL;
    size_t req_len = protobuf_c_message_get_packed_size(req);
    if (req_len > c->max_message_bytes)
        return etf_diagf(diag, ETF_ELIMIT,
                         "RESOURCE_EXHAUSTED: the request is %zu bytes, the limit is %zu", req_len,
                         c->max_message_bytes);
    grpc_byte_buffer *send = etf__pb_to_buffer(req);
    if (!send)
        return etf_diagf(diag, ETF_ENOMEM, "client: out of memory");
    grpc_completion_queue *cq = cq_borrow(c);
    gpr_timespec deadline = gpr_time_add(
        gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis((int64_t)c->timeout_ms, GPR_TIMESPAN));
    grpc_call *call = grpc_channel_create_registered_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS,
                                                          cq, c->methods[m], deadline, NULL);

    grpc_metadata_array initial_md, trailing_md;
    grpc_metadata_array_init(&initial_md);
    grpc_metadata_array_init(&trailing_md);
    grpc_byte_buffer *recv = NULL;
    grpc_status_code status = GRPC_STATUS_UNKNOWN;
    grpc_slice details = grpc_empty_slice();
    const char *error_string = NULL;

    grpc_op ops[6];
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
    ops[1].op = GRPC_OP_SEND_MESSAGE;
    ops[1].data.send_message.send_message = send;
    ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[3].data.recv_initial_metadata.recv_initial_metadata = &initial_md;
    ops[4].op = GRPC_OP_RECV_MESSAGE;
    ops[4].data.recv_message.recv_message = &recv;
    ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
    ops[5].data.recv_status_on_client.trailing_metadata = &trailing_md;
    ops[5].data.recv_status_on_client.status = &status;
    ops[5].data.recv_status_on_client.status_details = &details;
    ops[5].data.recv_status_on_client.error_string = &error_string;

    int rc = 0;
    grpc_call_error ce = grpc_call_start_batch(call, ops, 6, ops, NULL);
    if (ce != GRPC_CALL_OK) {
        rc = etf_diagf(diag, ETF_EIO, "INTERNAL: cannot start the call (gRPC error %d)", (int)ce);
    } else {
        /* No deadline here: the call's own deadline ends the batch. */
        grpc_event ev =
            grpc_completion_queue_pluck(cq, ops, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
        if (ev.type != GRPC_OP_COMPLETE || !ev.success) {
            rc = etf_diagf(diag, ETF_EIO, "INTERNAL: the call did not complete");
        } else if (status != GRPC_STATUS_OK) {
            size_t len = GRPC_SLICE_LENGTH(details);
            const char *text = (const char *)GRPC_SLICE_START_PTR(details);
            if (len == 0 && error_string) { /* local failures may only have this */
                text = error_string;
                len = strlen(error_string);
            }
            rc = etf_diagf(diag, status_to_err(status), "%s: %.*s", etf__grpc_status_name(status),
                           len > INT_MAX ? INT_MAX : (int)len, len ? text : "(no details)");
        } else {
            bool too_big;
            *resp = etf__pb_from_buffer(recv, rd, c->max_message_bytes, &too_big);
            if (!*resp)
                rc = etf_diagf(diag, too_big ? ETF_ELIMIT : ETF_EIO,
                               too_big ? "RESOURCE_EXHAUSTED: the response exceeds %zu bytes"
                                       : "DATA_LOSS: the response is not a valid message",
                               c->max_message_bytes);
        }
    }

    if (rc == 0) {
        /* Field 1 of every response is `success`: an original-style server may say no
         * without a status. */
        const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field(rd, 1);
        if (f && f->type == PROTOBUF_C_TYPE_BOOL &&
            !*(const protobuf_c_boolean *)((const char *)*resp + f->offset)) {
            protobuf_c_message_free_unpacked(*resp, NULL);
            *resp = NULL;
            rc = etf_diagf(diag, ETF_EIO, "UNKNOWN: the server answered success = false");
        }
    }

    grpc_slice_unref(details);
    gpr_free((void *)error_string);
    grpc_metadata_array_destroy(&initial_md);
    grpc_metadata_array_destroy(&trailing_md);
    if (recv)
        grpc_byte_buffer_destroy(recv);
    grpc_byte_buffer_destroy(send);
    grpc_call_unref(call);
    cq_return(c, cq);
    return rc;
}

/* unary() for callers that only need to know it worked. */
static int unary_discard(struct etf_client *c, enum method m, const ProtobufCMessage *req,
                         const ProtobufCMessageDescriptor *rd, struct etf_diag *diag)
{
    ProtobufCMessage *resp;
    int rc = unary(c, m, req, rd, &resp, diag);
    if (rc == 0)
        protobuf_c_message_free_unpacked(resp, NULL);
    return rc;
}

int etf_client_create_entity(struct etf_client *c, int64_t priority, uint64_t *eid,
                             struct etf_diag *diag)
{
    Efair__Rpc__CreateEntityRequest req = EFAIR__RPC__CREATE_ENTITY_REQUEST__INIT;
    req.priority = priority;
    ProtobufCMessage *resp;
    int rc = unary(c, M_CREATE_ENTITY, &req.base, &efair__rpc__create_entity_response__descriptor,
                   &resp, diag);
    if (rc == 0) {
        *eid = ((Efair__Rpc__CreateEntityResponse *)resp)->eid;
        protobuf_c_message_free_unpacked(resp, NULL);
    }
    return rc;
}

int etf_client_set_priority(struct etf_client *c, uint64_t eid, int64_t priority,
                            struct etf_diag *diag)
{
    Efair__Rpc__SetEntityPriorityRequest req = EFAIR__RPC__SET_ENTITY_PRIORITY_REQUEST__INIT;
    req.eid = eid;
    req.priority = priority;
    return unary_discard(c, M_SET_PRIORITY, &req.base,
                         &efair__rpc__set_entity_priority_response__descriptor, diag);
}

int etf_client_load_model(struct etf_client *c, const Efair__Rpc__LoadModelRequest *req,
                          Efair__Rpc__LoadModelResponse **resp, struct etf_diag *diag)
{
    return unary(c, M_LOAD_MODEL, &req->base, &efair__rpc__load_model_response__descriptor,
                 (ProtobufCMessage **)resp, diag);
}

int etf_client_infer(struct etf_client *c, const Efair__Rpc__InferRequest *req,
                     Efair__Rpc__InferResponse **resp, struct etf_diag *diag)
{
    return unary(c, M_INFER, &req->base, &efair__rpc__infer_response__descriptor,
                 (ProtobufCMessage **)resp, diag);
}

int etf_client_unload_model(struct etf_client *c, uint64_t mid, struct etf_diag *diag)
{
    Efair__Rpc__UnloadModelRequest req = EFAIR__RPC__UNLOAD_MODEL_REQUEST__INIT;
    req.mid = mid;
    return unary_discard(c, M_UNLOAD_MODEL, &req.base,
                         &efair__rpc__unload_model_response__descriptor, diag);
}

int etf_client_delete_entity(struct etf_client *c, uint64_t eid, struct etf_diag *diag)
{
    Efair__Rpc__DeleteEntityRequest req = EFAIR__RPC__DELETE_ENTITY_REQUEST__INIT;
    req.eid = eid;
    return unary_discard(c, M_DELETE_ENTITY, &req.base,
                         &efair__rpc__delete_entity_response__descriptor, diag);
}

int etf_client_get_stats(struct etf_client *c, uint64_t eid, Efair__Rpc__GetStatsResponse **resp,
                         struct etf_diag *diag)
{
    Efair__Rpc__GetStatsRequest req = EFAIR__RPC__GET_STATS_REQUEST__INIT;
    req.eid = eid;
    return unary(c, M_GET_STATS, &req.base, &efair__rpc__get_stats_response__descriptor,
                 (ProtobufCMessage **)resp, diag);
}

void etf_client_free(void *resp)
{
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
}
