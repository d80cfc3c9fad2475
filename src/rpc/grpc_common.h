/* What the gRPC server and client share: protobuf-c messages to and from gRPC byte
 * buffers, and ETF error codes as gRPC status codes.
 *
 * gRPC's core C API changes between releases; this and the other files of src/rpc are the
 * only ones that include it.
 */
#ifndef ETF_RPC_GRPC_COMMON_H
#define ETF_RPC_GRPC_COMMON_H

#include "efair.pb-c.h"

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/status.h>

#include <stdbool.h>
#include <stddef.h>

/* The largest message either side accepts by default (inputs of a batch-32 ResNet are
 * 19 MB). */
#define ETF_RPC_DEFAULT_MAX_MESSAGE (64u << 20)

/* Serialises msg into a new byte buffer the caller destroys with grpc_byte_buffer_destroy.
 * NULL when out of memory. */
grpc_byte_buffer *etf__pb_to_buffer(const ProtobufCMessage *msg);

/* Parses a byte buffer as a message of descriptor d. NULL when the bytes are not such a
 * message or exceed max_bytes; *too_big tells which. Free the result with
 * protobuf_c_message_free_unpacked(msg, NULL). */
ProtobufCMessage *etf__pb_from_buffer(grpc_byte_buffer *bb, const ProtobufCMessageDescriptor *d,
                                      size_t max_bytes, bool *too_big);

/* The gRPC status for an ETF error code (0 → OK). */
grpc_status_code etf__grpc_status(int etf_err);

/* Name of a status code, for messages ("NOT_FOUND"). */
const char *etf__grpc_status_name(grpc_status_code code);

#endif
