/* Models: ONNX files turned into kernel plans that the devices run kernel by kernel.
 *
 * Loading parses the file (protobuf), checks it (opset 13..17, supported ops, constants
 * present and consistent, shapes), fixes the batch size, folds shape arithmetic and
 * BatchNormalization, fuses activations, and orders the kernels. A failure says what was
 * expected and what was found, naming the node ("node 'Conv_12' (Conv): input 'w' has 3
 * dims, expected 4").
 */
#ifndef ETF_MODEL_H
#define ETF_MODEL_H

#include "etf/etf.h"

#ifdef __cplusplus
extern "C" {
#endif

struct etf_plan;

/* Files larger than this are refused unless the options allow more (protobuf's own cap is
 * 2 GiB). */
#define ETF_MODEL_DEFAULT_MAX_BYTES ((size_t)1 << 30)

struct etf_model_options {
    /* Batch size: replaces the first dimension of every model input. 0 = as in the file
     * (a symbolic batch dimension then means 1). */
    size_t batch;
    /* Largest file, and largest total of constant data, accepted; 0 = the default. */
    size_t max_bytes;
};

/* Loads an ONNX file. External data files are read from the model's folder only: a path
 * that is absolute, contains "..", or resolves (through symlinks) outside it is refused.
 * *out is freed with etf_plan_free. Errors: ETF_ENOENT, ETF_EIO, ETF_ELIMIT, ETF_EFORMAT
 * (not ONNX, inconsistent), ETF_ENOTSUP (an op, attribute or data type this build cannot
 * run). */
int etf_model_open(const char *path, const struct etf_model_options *opts, struct etf_plan **out,
                   struct etf_diag *diag);

/* Same from memory. base_dir is the folder external data is read from; NULL refuses
 * external data. origin names the model in messages. */
int etf_model_parse(const void *bytes, size_t len, const char *origin, const char *base_dir,
                    const struct etf_model_options *opts, struct etf_plan **out,
                    struct etf_diag *diag);

void etf_plan_free(struct etf_plan *plan);

/* Weights. A plan keeps its constant data (the weights, most of its memory) for its whole
 * life, so that any number of devices may load it; each loaded model keeps a copy of its
 * own. An owner done loading a plan can let them go:
 *   - etf_plan_drop_weights: no more loads; the weights are freed now.
 *   - etf_plan_drop_weights_on_load: the next load is the last; it frees each weight as
 *     soon as its device holds a copy, so that the weights are never resident twice (the
 *     cpu device does; the weights of a device that does not are freed by
 *     etf_plan_drop_weights after the load).
 * Either way the plan still names its kernels, inputs and outputs; a later load that needs a
 * freed weight fails with ETF_EINVAL. Not while a load of the plan runs on another thread. */
void etf_plan_drop_weights(struct etf_plan *plan);
void etf_plan_drop_weights_on_load(struct etf_plan *plan);

/* Introspection for tools and servers. */
const char *etf_plan_name(const struct etf_plan *plan);
size_t etf_plan_kernel_count(const struct etf_plan *plan);
/* Stable readable name of kernel k ("conv_bias_relu_3"). */
const char *etf_plan_kernel_name(const struct etf_plan *plan, size_t k);

struct etf_tensor_info {
    const char *name;
    int ndim;
    const int64_t *dims;
    size_t elems; /* fp32 elements */
};
size_t etf_plan_input_count(const struct etf_plan *plan);
size_t etf_plan_output_count(const struct etf_plan *plan);
int etf_plan_input(const struct etf_plan *plan, size_t i, struct etf_tensor_info *out);
int etf_plan_output(const struct etf_plan *plan, size_t i, struct etf_tensor_info *out);

#ifdef __cplusplus
}
#endif
#endif
