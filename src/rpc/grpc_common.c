/* Protobuf-c messages over gRPC byte buffers, and status codes (see grpc_common.h). */
#include "rpc/grpc_common.h"

#include "etf/etf.h"

#include <grpc/byte_buffer_reader.h>
#include <grpc/slice.h>
#include <stdlib.h>
#include <string.h>

grpc_byte_buffer *etf__pb_to_buffer(const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    grpc_slice slice = grpc_slice_malloc(len);
    protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(slice));
    grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
    grpc_slice_unref(slice);
    return bb;
}

ProtobufCMessage *etf__pb_from_buffer(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d,
                                      size_t max_bytes, bool *too_big)
{
    *too_big = false;
    if (!bb) /* an empty message has no buffer at all */
        return protobuf_c_message_unpack(d, NULL, 0, NULL);
    if (grpc_byte_buffer_length(bb) > max_bytes) {
        *too_big = true;
        return NULL;
    }
    grpc_byte_buffer_reader reader;
    if (!grpc_byte_buffer_reader_init(&reader, bb))
        return NULL;
    grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
    grpc_byte_buffer_reader_destroy(&reader);
    ProtobufCMessage *msg =
        protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
    grpc_slice_unref(all);
    return msg;
}

grpc_status_code etf__grpc_status(int etf_err)
{
    switch (etf_err) {
    case ETF_OK:
        return GRPC_STATUS_OK;
    case ETF_EINVAL:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case ETF_EFORMAT:
        return GRPC_STATUS_INVALID_ARGUMENT;
    case ETF_ENOENT:
        return GRPC_STATUS_NOT_FOUND;
    case ETF_ENOMEM:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case ETF_ELIMIT:
        return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case ETF_EBUSY:
        return GRPC_STATUS_FAILED_PRECONDITION;
    case ETF_ENOTSUP:
        return GRPC_STATUS_UNIMPLEMENTED;
    case ETF_ESHUTDOWN:
        return GRPC_STATUS_UNAVAILABLE;
    case ETF_EIO:
        return GRPC_STATUS_INTERNAL;
    case ETF_EDEVICE:
        return GRPC_STATUS_INTERNAL;
    default:
        return GRPC_STATUS_UNKNOWN;
    }
}

const char *etf__grpc_status_name(grpc_status_code code)
{
    static const char *const names[] = {
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    };
    return (unsigned)code < sizeof names / sizeof *names ? names[code] : "UNKNOWN";
}
