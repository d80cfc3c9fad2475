/* The model layer's intermediate form: an ONNX graph as numbered tensors and nodes.
 *
 * onnx_load.c builds it from the decoded protobuf (tensors for inputs, initializers and node
 * outputs; nodes in topological order), graph.c infers every shape and folds every node whose
 * inputs are constants, and plan_build.c rewrites patterns (BatchNormalization into Conv,
 * SiLU, GELU, Pad into Conv/pooling, slices of a MatMul) and lowers what is left to kernels.
 *
 * The graph lives only while a model is being loaded and borrows strings (tensor and node
 * names) from the decoded protobuf. Everything that outlives the graph is in one arena: the
 * file's bytes (initializers' data stay where they lie in them), the decoded message
 * (protobuf-c allocates from it), folded constants and rewritten weights. The plan takes
 * the arena over. Its big chunks are huge-page buffers (util/bigmem.h), faulted in at a
 * fraction of the cost of small pages, which matters when the weights are hundreds of
 * megabytes, and able to give back the pages of weights a device has taken
 * (etf_plan_drop_weights).
 */
#ifndef ETF_MODEL_GRAPH_H
#define ETF_MODEL_GRAPH_H

#include "etf/model.h"
#include "model/plan.h"
#include "onnx.pb-c.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Element types of graph tensors. Integer constants of any ONNX integer or boolean type are
 * held as int64; everything a kernel reads is fp32. */
enum etf__dtype {
    ETF__DT_FLOAT,
    ETF__DT_INT64,
};

enum etf__op {
    ETF__OP_CONV,
    ETF__OP_GEMM,
    ETF__OP_MATMUL, /* an optional third input (internal) is a bias [N] */
    ETF__OP_RELU,
    ETF__OP_CLIP,
    ETF__OP_SIGMOID,
    ETF__OP_ERF,
    ETF__OP_TANH,
    ETF__OP_SQRT,
    ETF__OP_EXP,
    ETF__OP_ADD,
    ETF__OP_SUB,
    ETF__OP_MUL,
    ETF__OP_DIV,
    ETF__OP_POW,
    ETF__OP_MAXPOOL,
    ETF__OP_AVGPOOL,
    ETF__OP_GLOBALAVGPOOL,
    ETF__OP_REDUCEMEAN,
    ETF__OP_CONCAT,
    ETF__OP_FLATTEN,
    ETF__OP_RESHAPE,
    ETF__OP_IDENTITY,
    ETF__OP_DROPOUT,
    ETF__OP_SOFTMAX,
    ETF__OP_CONSTANT,
    ETF__OP_BATCHNORM,
    ETF__OP_LAYERNORM,
    ETF__OP_TRANSPOSE,
    ETF__OP_SHAPE,
    ETF__OP_GATHER,
    ETF__OP_SLICE,
    ETF__OP_UNSQUEEZE,
    ETF__OP_SQUEEZE,
    ETF__OP_PAD,
    ETF__OP_CAST,
    ETF__OP_EXPAND,
    ETF__OP_EQUAL,
    ETF__OP_MOD, /* integers, on constants (shape arithmetic of newer exporters) */
    ETF__OP_WHERE,
    ETF__OP_CONSTANTOFSHAPE,
    /* Internal ops made by the pattern rewrites of plan_build.c; one input. */
    ETF__OP_SWISH,
    ETF__OP_GELU,
};

/* Attributes parsed and checked by shape inference, in the form the lowering needs. */
struct etf__attrs {
    /* Conv and pooling (2-D): explicit pads after auto_pad and ceil_mode are resolved */
    int64_t kernel[2], stride[2], dilation[2], pad_begin[2], pad_end[2], group;
    bool count_include_pad;
    /* Gemm */
    bool trans_a, trans_b;
    float alpha, beta; /* Gemm; Clip: min, max */
    float epsilon;     /* BatchNormalization, LayerNormalization */
    int axis;          /* Concat, Softmax, Flatten, Gather, LayerNormalization: non-negative */
    int perm[ETF_MAX_DIMS];
    unsigned axes_mask; /* ReduceMean */
    bool keepdims;
    int64_t pads[2 * ETF_MAX_DIMS]; /* Pad: dim i: [i] before, [ETF_MAX_DIMS + i] after */
    float value;                    /* Pad: the constant */
    float exponent;                 /* Pow on data: 2 or 0.5 */
    int64_t starts[ETF_MAX_DIMS], steps[ETF_MAX_DIMS]; /* Slice: per dim of the input */
};

struct etf__tensor {
    const char *name; /* borrowed from the protobuf or from etf__graph.strs */
    enum etf__dtype dtype;
    bool shaped; /* shape (and dtype) known: inputs, constants, outputs of inferred nodes */
    struct etf_shape shape;
    void *data;  /* constants: float or int64_t elements (in the arena); NULL for data */
    bool shared; /* constants: other tensors view the same data, so it may not change */
    int producer;
    int uses; /* input slots of live nodes reading it, plus one if it is a model output */
    bool is_input, is_output;
};

struct etf__node {
    const Onnx__NodeProto *pb; /* NULL for nodes made by rewrites */
    const char *name;          /* "" when the file gives none */
    const char *op_type;
    enum etf__op op;
    int index; /* position in the file, for messages */
    int *in;   /* tensor ids; -1 = an optional input left out */
    int n_in, cap_in;
    int *out;
    int n_out;
    bool dead; /* folded, or absorbed by a rewrite */
    struct etf__attrs a;
};

struct etf__graph {
    const char *origin;   /* names the model in messages */
    const char *base_dir; /* external data folder, or NULL */
    size_t max_bytes;     /* largest tensor, and largest total of constant data */
    size_t const_bytes;   /* constant data so far */
    size_t batch;         /* 0 = as in the file */
    int opset;
    const char *graph_name;

    struct etf__tensor *t;
    size_t n_t, cap_t;
    struct etf__node *nodes; /* in topological order (the file's order when it is valid) */
    size_t n_nodes;
    int *inputs; /* model inputs that are not constants, in file order */
    size_t n_inputs;
    int *outputs;
    size_t n_outputs;

    struct etf__arena *arena; /* constants and the decoded message; NULL once the plan has it */
    char **strs;              /* names made by the model layer */
    size_t n_strs, cap_strs;

    int *ht; /* name -> tensor id, open addressing; -1 empty */
    size_t ht_cap;
};

/* The constants' data of a plan and what devices did with it (plan.c). */
struct etf__plan_weights {
    struct etf__arena *arena; /* the constants' data; nothing else is live in it */
    /* Loads may run on several threads: the rest is under `lock`. */
    pthread_mutex_t lock;
    unsigned char *state; /* per value: ETF__W_* */
    bool on_load;         /* loads free what they take (etf_plan_drop_weights_on_load) */
};
enum {
    ETF__W_TAKEN = 1,  /* a device holds its own copy (etf__plan_weight_taken) */
    ETF__W_NEEDED = 2, /* a kernel reads it (set when weights are dropped) */
};

/* The plan as allocated by the model layer: the public part first, then what it owns. */
struct etf__plan_full {
    struct etf_plan plan;
    struct etf__plan_weights weights; /* plan.weights points here */
};

/* ---- onnx_load.c: the arena ---- */
/* Bump allocation in chunks that are never freed one by one; memory comes zeroed and 16-byte
 * aligned. first_chunk sizes the first chunk (later ones grow). */
struct etf__arena *etf__arena_new(size_t first_chunk);
void *etf__arena_alloc(struct etf__arena *a, size_t size);
/* Gives back to the system the whole pages of [lo, hi) that lie in the arena's big chunks;
 * nothing there may be read again (it reads as zeros). */
void etf__arena_release(struct etf__arena *a, const void *lo, const void *hi);
void etf__arena_free(struct etf__arena *a);

/* ---- graph.c ---- */
/* The op of an ONNX op_type; ETF_ENOTSUP if this build has none. */
int etf__op_lookup(const char *op_type, enum etf__op *op);
/* A graph owning arena a (freed with it). */
struct etf__graph *etf__graph_new(const char *origin, const char *base_dir, size_t max_bytes,
                                  struct etf__arena *a);
void etf__graph_free(struct etf__graph *g);
/* Tensor by name, -1 if unknown. */
int etf__graph_find(const struct etf__graph *g, const char *name);
/* Adds a tensor with that name (which must outlive the graph and not be known yet); returns
 * its id or a negative error code. */
int etf__graph_add_tensor(struct etf__graph *g, const char *name);
/* A name made by the model layer: printf-formatted, owned by the graph. NULL when out of
 * memory. */
const char *etf__graph_strf(struct etf__graph *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Makes tensor t a constant holding data (in the arena). */
void etf__graph_set_const(struct etf__graph *g, int t, enum etf__dtype dt, void *data);
/* Whether tensor t's constant data may be changed in place: no other tensor views it and
 * only one live node reads it. */
bool etf__graph_const_private(const struct etf__graph *g, int t);
/* Zeroed constant storage of `bytes` in the arena, counted against the constant budget.
 * `what` names it in messages. */
int etf__graph_const_alloc(struct etf__graph *g, size_t bytes, const char *what, void **out,
                           struct etf_diag *diag);
/* Gives tensor t fresh zeroed constant storage for its shape and dtype, counted against the
 * constant budget. */
int etf__graph_alloc_const(struct etf__graph *g, int t, struct etf_diag *diag);
/* Recounts etf__tensor.uses over live nodes and outputs. */
void etf__graph_count_uses(struct etf__graph *g);
/* Infers shapes node by node, checks them, and folds nodes whose inputs are constants. */
int etf__graph_infer(struct etf__graph *g, struct etf_diag *diag);
/* Writes "<origin>: node 'name' (Op): <message>" into diag; returns err. */
int etf__node_err(const struct etf__graph *g, const struct etf__node *n, struct etf_diag *diag,
                  int err, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* "[1, 3, 224, 224]" into buf. */
const char *etf__shape_str(const struct etf_shape *s, char buf[128]);
bool etf__shape_eq(const struct etf_shape *a, const struct etf_shape *b);
/* Elements of a shape with overflow and negative dims checked: false when they do not fit in
 * `limit` elements. */
bool etf__shape_elems_checked(const struct etf_shape *s, size_t limit, size_t *out);

/* ---- onnx_load.c ---- */
/* Decodes and checks a model and builds its graph (not yet inferred). Takes arena a over
 * (freed on failure, the graph's on success); bytes are the model's, in a: the loader
 * rewrites them in place and initializers' data stay there. The decoded message lives in a
 * too. */
int etf__onnx_load(struct etf__arena *a, uint8_t *bytes, size_t len, const char *origin,
                   const char *base_dir, const struct etf_model_options *opts,
                   struct etf__graph **out, struct etf_diag *diag);
/* A whole file's bytes (at most max bytes), read into arena a (see util/file.h). */
int etf__file_read_arena(const char *path, size_t max, struct etf__arena *a, void **bytes,
                         size_t *len, struct etf_diag *diag);
/* Turns a TensorProto into constant tensor t (raw bytes are used in place where they are
 * aligned). `what` names it in messages ("initializer 'w'"). */
int etf__tensor_from_proto(struct etf__graph *g, int t, Onnx__TensorProto *tp, const char *what,
                           struct etf_diag *diag);
/* Name of an ONNX data type ("FLOAT", "INT8", ...). */
const char *etf__onnx_type_name(int32_t dt);

/* ---- plan_build.c ---- */
int etf__plan_build(struct etf__graph *g, const char *name, struct etf_plan **out,
                    struct etf_diag *diag);

#endif
