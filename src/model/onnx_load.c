/* ONNX loading: bytes -> protobuf message -> graph (graph.h), with every check that needs
 * only the file: opset, supported ops, defined inputs, acyclic graph, constants that are
 * fp32 (or integers for shape arithmetic) and whose data matches their dims, external data
 * confined to the model's folder, model inputs with static shapes but for the batch.
 *
 * Weights are not copied here: initializers' raw data stay in the file's bytes, which the
 * arena holds (see "zero-copy decoding" below), and protobuf-c decodes only the rest.
 */
/* realpath() is an XSI function: glibc declares it only with this. */
#define _XOPEN_SOURCE 700

#include "model/graph.h"
#include "util/array.h"
#include "util/bigmem.h"
#include "util/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- the arena ---- */

struct arena_chunk {
    struct arena_chunk *next;
    size_t size; /* bytes, header included */
    size_t used;
    bool mapped;
};

struct etf__arena {
    struct arena_chunk *head; /* serves small allocations; dedicated big chunks follow it */
    size_t next_size;
};

#define ARENA_ALIGN ((size_t)16)
#define ARENA_HDR ((sizeof(struct arena_chunk) + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1))
/* Chunks this large are big buffers (util/bigmem.h), populated in one call: faulting
 * hundreds of megabytes of weights in page by page costs more than reading them, and their
 * pages can be given back one range at a time (etf__arena_release). */
#define ARENA_MAP_MIN ((size_t)256 << 10)

static struct arena_chunk *chunk_new(size_t size)
{
    bool mapped = size >= ARENA_MAP_MIN;
    struct arena_chunk *c = mapped ? etf__bigmem_alloc(size, true) : calloc(1, size);
    if (!c)
        return NULL;
    c->size = size;
    c->used = ARENA_HDR;
    c->mapped = mapped;
    c->next = NULL;
    return c;
}

static void chunk_free(struct arena_chunk *c)
{
    if (c->mapped)
        etf__bigmem_free(c, c->size);
    else
        free(c);
}

struct etf__arena *etf__arena_new(size_t first_chunk)
{
    struct etf__arena *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    if (first_chunk > SIZE_MAX / 2)
        first_chunk = SIZE_MAX / 2;
    a->head = chunk_new(first_chunk + ARENA_HDR);
    if (!a->head) {
        free(a);
        return NULL;
    }
    a->next_size = first_chunk / 8 > ((size_t)1 << 20) ? first_chunk / 8 : (size_t)1 << 20;
    return a;
}

void *etf__arena_alloc(struct etf__arena *a, size_t size)
{
    if (size > SIZE_MAX / 2)
        return NULL;
    size = size ? (size + ARENA_ALIGN - 1) & ~(ARENA_ALIGN - 1) : ARENA_ALIGN;
    struct arena_chunk *h = a->head;
    if (h->size - h->used >= size) {
        void *p = (char *)h + h->used;
        h->used += size;
        return p;
    }
    if (size + ARENA_HDR > a->next_size / 2) {
        /* a big block gets a chunk of its own, behind the head that keeps serving small ones */
        struct arena_chunk *c = chunk_new(size + ARENA_HDR);
        if (!c)
            return NULL;
        c->used = c->size;
        c->next = h->next;
        h->next = c;
        return (char *)c + ARENA_HDR;
    }
    struct arena_chunk *c = chunk_new(a->next_size);
    if (!c)
        return NULL;
    if (a->next_size < ((size_t)64 << 20))
        a->next_size *= 2;
    c->next = h;
    a->head = c;
    void *p = (char *)c + c->used;
    c->used += size;
    return p;
}

void etf__arena_release(struct etf__arena *a, const void *lo, const void *hi)
{
    for (struct arena_chunk *c = a->head; c; c = c->next) {
        if (!c->mapped)
            continue; /* small, and malloc's: its pages are not ours to give back */
        uintptr_t start = (uintptr_t)c + ARENA_HDR, end = (uintptr_t)c + c->size;
        uintptr_t from = (uintptr_t)lo > start ? (uintptr_t)lo : start;
        uintptr_t to = (uintptr_t)hi < end ? (uintptr_t)hi : end;
        if (to > from)
            etf__bigmem_release(c, c->size, (void *)from, to - from);
    }
}

void etf__arena_free(struct etf__arena *a)
{
    if (!a)
        return;
    for (struct arena_chunk *c = a->head, *next; c; c = next) {
        next = c->next;
        chunk_free(c);
    }
    free(a);
}

static void *pb_alloc(void *data, size_t size)
{
    return etf__arena_alloc(data, size);
}

static void pb_free(void *data, void *p)
{
    (void)data;
    (void)p; /* the arena goes as a whole */
}

static void *alloc_arena(void *ctx, size_t size)
{
    return etf__arena_alloc(ctx, size);
}

int etf__file_read_arena(const char *path, size_t max, struct etf__arena *a, void **bytes,
                         size_t *len, struct etf_diag *diag)
{
    /* what a failed read allocated goes with the arena */
    return etf__file_read_with(path, max, alloc_arena, a, bytes, len, diag);
}

const char *etf__onnx_type_name(int32_t dt)
{
    static const char *const names[] = {
        "UNDEFINED", "FLOAT",  "UINT8",     "INT8",       "UINT16",   "INT16",
        "INT32",     "INT64",  "STRING",    "BOOL",       "FLOAT16",  "DOUBLE",
        "UINT32",    "UINT64", "COMPLEX64", "COMPLEX128", "BFLOAT16",
    };
    if (dt >= 0 && (size_t)dt < sizeof names / sizeof names[0])
        return names[dt];
    return "an unknown type";
}

static bool host_is_little_endian(void)
{
    const uint32_t one = 1;
    unsigned char b;
    memcpy(&b, &one, 1);
    return b == 1;
}

/* ---- external data ---- */

static bool has_dotdot_component(const char *p)
{
    while (*p) {
        const char *slash = strchr(p, '/');
        size_t n = slash ? (size_t)(slash - p) : strlen(p);
        if (n == 2 && p[0] == '.' && p[1] == '.')
            return true;
        if (!slash)
            break;
        p = slash + 1;
    }
    return false;
}

static bool parse_i64(const char *s, int64_t *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end || v < 0)
        return false;
    *out = v;
    return true;
}

/* Reads `need` bytes of external data into a fresh allocation. The file must resolve (through
 * symlinks) inside realpath(base_dir). */
static int read_external(struct etf__graph *g, const Onnx__TensorProto *tp, const char *what,
                         size_t need, void **out, struct etf_diag *diag)
{
    if (!g->base_dir)
        return etf_diagf(diag, ETF_ENOTSUP,
                         "%s: %s is stored in an external file, which needs the model's folder "
                         "(none given: the model was parsed from memory)",
                         g->origin, what);
    const char *location = NULL;
    int64_t offset = 0, length = -1;
    for (size_t i = 0; i < tp->n_external_data; i++) {
        const Onnx__StringStringEntryProto *e = tp->external_data[i];
        if (!e->key)
            continue;
        if (!strcmp(e->key, "location")) {
            location = e->value;
        } else if (!strcmp(e->key, "offset")) {
            if (!parse_i64(e->value, &offset))
                return etf_diagf(diag, ETF_EFORMAT,
                                 "%s: %s: external data offset '%s' is not a non-negative "
                                 "integer",
                                 g->origin, what, e->value ? e->value : "");
        } else if (!strcmp(e->key, "length")) {
            if (!parse_i64(e->value, &length))
                return etf_diagf(diag, ETF_EFORMAT,
                                 "%s: %s: external data length '%s' is not a non-negative "
                                 "integer",
                                 g->origin, what, e->value ? e->value : "");
        }
    }
    if (!location || !*location)
        return etf_diagf(diag, ETF_EFORMAT, "%s: %s: external data without a location", g->origin,
                         what);
    if (location[0] == '/')
        return etf_diagf(diag, ETF_EFORMAT,
                         "%s: %s: external data path '%s' is absolute; only paths inside the "
                         "model's folder are accepted",
                         g->origin, what, location);
    if (has_dotdot_component(location))
        return etf_diagf(diag, ETF_EFORMAT,
                         "%s: %s: external data path '%s' contains '..'; only paths inside the "
                         "model's folder are accepted",
                         g->origin, what, location);
    if (length >= 0 && (uint64_t)length != need)
        return etf_diagf(diag, ETF_EFORMAT,
                         "%s: %s: external data length is %lld bytes, expected %zu", g->origin,
                         what, (long long)length, need);

    int rc = 0;
    char *base = NULL, *joined = NULL, *file = NULL;
    int fd = -1;
    void *buf = NULL;
    base = realpath(g->base_dir, NULL);
    if (!base) {
        rc = etf_diagf(diag, errno == ENOENT ? ETF_ENOENT : ETF_EIO, "%s: model folder '%s': %s",
                       g->origin, g->base_dir, strerror(errno));
        goto out;
    }
    size_t nb = strlen(base), nl = strlen(location);
    joined = malloc(nb + nl + 2);
    if (!joined) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
        goto free_base;
    }
    memcpy(joined, base, nb);
    joined[nb] = '/';
    memcpy(joined + nb + 1, location, nl + 1);
    file = realpath(joined, NULL);
    if (!file) {
        rc = etf_diagf(diag, errno == ENOENT ? ETF_ENOENT : ETF_EIO,
                       "%s: %s: external data file '%s': %s", g->origin, what, location,
                       strerror(errno));
        goto free_joined;
    }
    /* Through symlinks the file must stay below the folder ("/" contains everything). */
    bool inside = !strncmp(file, base, nb) && (file[nb] == '/' || (nb == 1 && base[0] == '/'));
    if (!inside) {
        rc = etf_diagf(diag, ETF_EFORMAT,
                       "%s: %s: external data path '%s' resolves to '%s', outside the model's "
                       "folder '%s'",
                       g->origin, what, location, file, base);
        goto free_file;
    }
    /* O_NOFOLLOW: the resolved path has no symlinks; one swapped in since is refused. */
    fd = open(file, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        rc = etf_diagf(diag, errno == ENOENT ? ETF_ENOENT : ETF_EIO,
                       "%s: %s: cannot open external data file '%s': %s", g->origin, what, location,
                       strerror(errno));
        goto free_file;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = etf_diagf(diag, ETF_EIO, "%s: %s: external data '%s' is not a regular file", g->origin,
                       what, location);
        goto close_fd;
    }
    if ((uint64_t)offset > (uint64_t)st.st_size || need > (uint64_t)st.st_size - (uint64_t)offset) {
        rc = etf_diagf(diag, ETF_EFORMAT,
                       "%s: %s: external data file '%s' has %lld bytes; %zu are needed at "
                       "offset %lld",
                       g->origin, what, location, (long long)st.st_size, need, (long long)offset);
        goto close_fd;
    }
    buf = etf__arena_alloc(g->arena, need);
    if (!buf) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory reading %s", g->origin, what);
        goto close_fd;
    }
    size_t done = 0;
    while (done < need) {
        ssize_t r = pread(fd, (char *)buf + done, need - done, (off_t)(offset + (int64_t)done));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            rc = etf_diagf(diag, ETF_EIO, "%s: %s: reading external data '%s' failed%s%s",
                           g->origin, what, location, r < 0 ? ": " : " (file shrank)",
                           r < 0 ? strerror(errno) : "");
            buf = NULL;
            goto close_fd;
        }
        done += (size_t)r;
    }
    *out = buf;
close_fd:
    close(fd);
free_file:
    free(file);
free_joined:
    free(joined);
free_base:
    free(base);
out:
    return rc;
}

/* ---- constants ---- */

/* Raw bytes may serve as float/int64 storage where they are aligned for it: an initializer's
 * in the file's bytes nearly always are (align_raw), a Constant's decoded by protobuf-c and
 * external data come from the arena. */
static bool aligned_for(const void *p, size_t align)
{
    return ((uintptr_t)p % align) == 0;
}

int etf__tensor_from_proto(struct etf__graph *g, int t, Onnx__TensorProto *tp, const char *what,
                           struct etf_diag *diag)
{
    if (tp->n_dims > ETF_MAX_DIMS)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: %s has %zu dims; at most %d are supported",
                         g->origin, what, tp->n_dims, ETF_MAX_DIMS);
    struct etf_shape shape = {.ndim = (int)tp->n_dims};
    for (size_t i = 0; i < tp->n_dims; i++) {
        if (tp->dims[i] < 0)
            return etf_diagf(diag, ETF_EFORMAT, "%s: %s has a negative dim (%lld at index %zu)",
                             g->origin, what, (long long)tp->dims[i], i);
        shape.d[i] = tp->dims[i];
    }
    char sbuf[128];
    size_t n;
    if (!etf__shape_elems_checked(&shape, SIZE_MAX / 8, &n))
        return etf_diagf(diag, ETF_ELIMIT, "%s: %s: dims %s overflow the element count", g->origin,
                         what, etf__shape_str(&shape, sbuf));
    int32_t dt = tp->has_data_type ? tp->data_type : ONNX__TENSOR_PROTO__DATA_TYPE__UNDEFINED;
    size_t src_size;
    enum etf__dtype dtype;
    switch (dt) {
    case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
        src_size = 4, dtype = ETF__DT_FLOAT;
        break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
        src_size = 8, dtype = ETF__DT_INT64;
        break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__INT32:
        src_size = 4, dtype = ETF__DT_INT64;
        break;
    case ONNX__TENSOR_PROTO__DATA_TYPE__BOOL:
        src_size = 1, dtype = ETF__DT_INT64;
        break;
    default:
        return etf_diagf(diag, ETF_ENOTSUP,
                         "%s: %s: fp32 only, found %s (integers only for shape constants)",
                         g->origin, what, etf__onnx_type_name(dt));
    }
    size_t bytes = n * (dtype == ETF__DT_FLOAT ? 4 : 8);
    if (bytes > g->max_bytes || g->const_bytes > g->max_bytes - bytes)
        return etf_diagf(diag, ETF_ELIMIT,
                         "%s: %s: %zu bytes of constant data (dims %s) would bring the total to "
                         "over the limit of %zu bytes",
                         g->origin, what, bytes, etf__shape_str(&shape, sbuf), g->max_bytes);
    size_t src_bytes = n * src_size;

    /* Where the elements are: raw little-endian bytes (in the file's bytes, decoded from the
     * message, or read from an external file) or a typed repeated field; all of them in the
     * arena already. */
    const void *raw = NULL, *typed = NULL;
    if (tp->has_data_location && tp->data_location == ONNX__TENSOR_PROTO__DATA_LOCATION__EXTERNAL) {
        void *ext = NULL;
        int rc = read_external(g, tp, what, src_bytes, &ext, diag);
        if (rc)
            return rc;
        raw = ext;
    } else if (tp->has_raw_data || tp->raw_data.len) {
        if (tp->raw_data.len != src_bytes)
            return etf_diagf(diag, ETF_EFORMAT,
                             "%s: %s: raw_data has %zu bytes, expected %zu (%zu x %s for dims "
                             "%s)",
                             g->origin, what, tp->raw_data.len, src_bytes, n,
                             etf__onnx_type_name(dt), etf__shape_str(&shape, sbuf));
        raw = tp->raw_data.data;
    } else {
        size_t have;
        switch (dt) {
        case ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT:
            have = tp->n_float_data, typed = tp->float_data;
            break;
        case ONNX__TENSOR_PROTO__DATA_TYPE__INT64:
            have = tp->n_int64_data, typed = tp->int64_data;
            break;
        default:
            have = tp->n_int32_data, typed = tp->int32_data;
            break;
        }
        if (have != n)
            return etf_diagf(diag, ETF_EFORMAT, "%s: %s has %zu values, expected %zu (dims %s)",
                             g->origin, what, have, n, etf__shape_str(&shape, sbuf));
    }

    void *data = NULL;
    bool direct =
        dt == ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT || dt == ONNX__TENSOR_PROTO__DATA_TYPE__INT64;
    if (n > 0 && direct && raw && aligned_for(raw, src_size)) {
        data = (void *)raw; /* used where it lies: no copy */
    } else if (n > 0 && direct && typed) {
        data = (void *)typed;
    } else {
        data = etf__arena_alloc(g->arena, bytes);
        if (!data)
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory for %s", g->origin, what);
        if (direct && raw) {
            memcpy(data, raw, src_bytes);
        } else if (!direct) {
            int64_t *v = data;
            for (size_t i = 0; i < n; i++) {
                if (raw && src_size == 4) {
                    int32_t x;
                    memcpy(&x, (const char *)raw + i * 4, 4);
                    v[i] = x;
                } else if (raw) {
                    v[i] = ((const unsigned char *)raw)[i] != 0;
                } else {
                    int32_t x = ((const int32_t *)typed)[i];
                    v[i] = dt == ONNX__TENSOR_PROTO__DATA_TYPE__BOOL ? x != 0 : x;
                }
            }
        }
    }
    g->t[t].shape = shape;
    etf__graph_set_const(g, t, dtype, data);
    g->const_bytes += bytes;
    return 0;
}

/* ---- model inputs ---- */

static int input_from_proto(struct etf__graph *g, int t, const Onnx__ValueInfoProto *vi,
                            struct etf_diag *diag)
{
    const char *name = g->t[t].name;
    const Onnx__TypeProto *type = vi->type;
    if (!type || type->value_case != ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE || !type->tensor_type)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: input '%s' is not a tensor", g->origin, name);
    const Onnx__TypeProto__Tensor *tt = type->tensor_type;
    int32_t elem = tt->has_elem_type ? tt->elem_type : 0;
    if (elem != ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: input '%s' is %s; fp32 only", g->origin, name,
                         etf__onnx_type_name(elem));
    if (!tt->shape)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: input '%s' has no shape (unknown rank)", g->origin,
                         name);
    if (tt->shape->n_dim > ETF_MAX_DIMS)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: input '%s' has %zu dims; at most %d are supported",
                         g->origin, name, tt->shape->n_dim, ETF_MAX_DIMS);
    struct etf_shape s = {.ndim = (int)tt->shape->n_dim};
    for (int i = 0; i < s.ndim; i++) {
        const Onnx__TensorShapeProto__Dimension *d = tt->shape->dim[i];
        if (d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE) {
            if (d->dim_value < 0)
                return etf_diagf(diag, ETF_EFORMAT,
                                 "%s: input '%s' has a negative dim (%lld at index %d)", g->origin,
                                 name, (long long)d->dim_value, i);
            s.d[i] = d->dim_value;
        } else if (i == 0) {
            s.d[i] = 1; /* the batch: set below if the options choose it */
        } else {
            const char *p = d->value_case == ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_PARAM &&
                                    d->dim_param
                                ? d->dim_param
                                : "?";
            return etf_diagf(diag, ETF_ENOTSUP,
                             "%s: input '%s' has a symbolic dim '%s' at index %d; only the first "
                             "(batch) dim may be symbolic",
                             g->origin, name, p, i);
        }
    }
    if (s.ndim > 0 && g->batch)
        s.d[0] = (int64_t)g->batch;
    size_t n;
    char sbuf[128];
    if (!etf__shape_elems_checked(&s, g->max_bytes / 4, &n))
        return etf_diagf(diag, ETF_ELIMIT,
                         "%s: input '%s' of shape %s exceeds the size limit of %zu bytes",
                         g->origin, name, etf__shape_str(&s, sbuf), g->max_bytes);
    if (n == 0)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: input '%s' of shape %s is empty", g->origin, name,
                         etf__shape_str(&s, sbuf));
    struct etf__tensor *T = &g->t[t];
    T->dtype = ETF__DT_FLOAT;
    T->shape = s;
    T->shaped = true;
    T->is_input = true;
    return 0;
}

/* ---- nodes ---- */

/* Orders the nodes so that every producer comes before its consumers: Kahn's algorithm
 * taking the lowest file position among the ready nodes, so a file already in order keeps
 * its order and any other order is deterministic. */
static int topo_sort(struct etf__graph *g, struct etf_diag *diag)
{
    size_t n = g->n_nodes;
    if (n == 0)
        return 0;
    int rc = 0;
    size_t n_edges = 0;
    for (size_t i = 0; i < n; i++)
        n_edges += (size_t)g->nodes[i].n_in;
    int *indeg = calloc(n, sizeof *indeg);
    size_t *first = calloc(n + 1, sizeof *first);
    int *succ = malloc((n_edges ? n_edges : 1) * sizeof *succ);
    int *heap = malloc(n * sizeof *heap);
    int *order = malloc(n * sizeof *order);
    struct etf__node *sorted = malloc(n * sizeof *sorted);
    if (!indeg || !first || !succ || !heap || !order || !sorted) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
        goto free_all;
    }
    /* Successor lists in CSR form: first[p]..first[p+1] are the consumers of node p. */
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < g->nodes[i].n_in; k++) {
            int t = g->nodes[i].in[k];
            if (t >= 0 && g->t[t].producer >= 0) {
                first[g->t[t].producer + 1]++;
                indeg[i]++;
            }
        }
    for (size_t i = 0; i < n; i++)
        first[i + 1] += first[i];
    {
        size_t *pos = malloc(n * sizeof *pos);
        if (!pos) {
            rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
            goto free_all;
        }
        memcpy(pos, first, n * sizeof *pos);
        for (size_t i = 0; i < n; i++)
            for (int k = 0; k < g->nodes[i].n_in; k++) {
                int t = g->nodes[i].in[k];
                if (t >= 0 && g->t[t].producer >= 0)
                    succ[pos[g->t[t].producer]++] = (int)i;
            }
        free(pos);
    }
    size_t hn = 0, done = 0;
    for (size_t i = 0; i < n; i++) {
        if (indeg[i] == 0) /* pushed in increasing order: already a min-heap */
            heap[hn++] = (int)i;
    }
    while (hn > 0) {
        int v = heap[0];
        heap[0] = heap[--hn];
        for (size_t j = 0;;) { /* sift down */
            size_t l = 2 * j + 1, r = l + 1, m = j;
            if (l < hn && heap[l] < heap[m])
                m = l;
            if (r < hn && heap[r] < heap[m])
                m = r;
            if (m == j)
                break;
            int tmp = heap[j];
            heap[j] = heap[m];
            heap[m] = tmp;
            j = m;
        }
        order[done++] = v;
        for (size_t e = first[v]; e < first[v + 1]; e++) {
            int s = succ[e];
            if (--indeg[s] == 0) {
                size_t j = hn++; /* sift up */
                heap[j] = s;
                while (j > 0 && heap[(j - 1) / 2] > heap[j]) {
                    int tmp = heap[j];
                    heap[j] = heap[(j - 1) / 2];
                    heap[(j - 1) / 2] = tmp;
                    j = (j - 1) / 2;
                }
            }
        }
    }
    if (done < n) {
        size_t c = 0;
        while (c < n && indeg[c] == 0)
            c++;
        rc = etf__node_err(g, &g->nodes[c], diag, ETF_EFORMAT,
                           "the graph has a cycle through this node (it depends on its own "
                           "output)");
        goto free_all;
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = g->nodes[order[i]];
    free(g->nodes);
    g->nodes = sorted;
    sorted = NULL;
    for (size_t i = 0; i < n; i++)
        for (int k = 0; k < g->nodes[i].n_out; k++)
            if (g->nodes[i].out[k] >= 0)
                g->t[g->nodes[i].out[k]].producer = (int)i;
free_all:
    free(sorted);
    free(order);
    free(heap);
    free(succ);
    free(first);
    free(indeg);
    return rc;
}

static int build_nodes(struct etf__graph *g, const Onnx__GraphProto *gp, struct etf_diag *diag)
{
    if (gp->n_node == 0)
        return 0;
    g->nodes = calloc(gp->n_node, sizeof *g->nodes);
    if (!g->nodes)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    g->n_nodes = gp->n_node;
    /* Outputs first, so that inputs may name outputs of nodes further down the file (the
     * topological sort then reorders). */
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *np = gp->node[i];
        struct etf__node *n = &g->nodes[i];
        n->pb = np;
        n->index = (int)i;
        n->name = np->name ? np->name : "";
        n->op_type = np->op_type ? np->op_type : "";
        const char *dom = np->domain ? np->domain : "";
        if (*dom && strcmp(dom, "ai.onnx"))
            return etf__node_err(g, n, diag, ETF_ENOTSUP,
                                 "operator domain '%s' is not supported (only the default ONNX "
                                 "domain)",
                                 dom);
        if (etf__op_lookup(n->op_type, &n->op) != 0)
            return etf__node_err(g, n, diag, ETF_ENOTSUP, "operator '%s' is not supported",
                                 n->op_type);
        n->out = calloc(np->n_output ? np->n_output : 1, sizeof *n->out);
        n->cap_in = np->n_input > 4 ? (int)np->n_input : 4;
        if (np->n_input > INT_MAX / 2 || np->n_output > INT_MAX / 2)
            return etf__node_err(g, n, diag, ETF_ELIMIT, "too many inputs or outputs");
        n->in = calloc((size_t)n->cap_in, sizeof *n->in);
        if (!n->out || !n->in)
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
        n->n_out = (int)np->n_output;
        n->n_in = (int)np->n_input;
        for (size_t k = 0; k < np->n_output; k++) {
            const char *on = np->output[k];
            if (!on || !*on) {
                n->out[k] = -1;
                continue;
            }
            if (etf__graph_find(g, on) >= 0)
                return etf__node_err(g, n, diag, ETF_EFORMAT,
                                     "output '%s' is already defined (by an input, initializer "
                                     "or another node)",
                                     on);
            int t = etf__graph_add_tensor(g, on);
            if (t < 0)
                return etf_diagf(diag, t, "%s: out of memory", g->origin);
            g->t[t].producer = (int)i;
            n->out[k] = t;
        }
    }
    for (size_t i = 0; i < gp->n_node; i++) {
        const Onnx__NodeProto *np = gp->node[i];
        struct etf__node *n = &g->nodes[i];
        for (size_t k = 0; k < np->n_input; k++) {
            const char *in = np->input[k];
            if (!in || !*in) {
                n->in[k] = -1;
                continue;
            }
            int t = etf__graph_find(g, in);
            if (t < 0)
                return etf__node_err(g, n, diag, ETF_EFORMAT,
                                     "input '%s' is not defined (no graph input, initializer or "
                                     "node output has that name)",
                                     in);
            n->in[k] = t;
        }
    }
    return topo_sort(g, diag);
}

static int build_graph(struct etf__graph *g, Onnx__GraphProto *gp, struct etf_diag *diag)
{
    if (gp->n_sparse_initializer)
        return etf_diagf(diag, ETF_ENOTSUP, "%s: sparse initializers are not supported", g->origin);
    for (size_t i = 0; i < gp->n_initializer; i++) {
        Onnx__TensorProto *tp = gp->initializer[i];
        if (!tp->name || !*tp->name)
            return etf_diagf(diag, ETF_EFORMAT, "%s: initializer #%zu has no name", g->origin, i);
        if (etf__graph_find(g, tp->name) >= 0)
            return etf_diagf(diag, ETF_EFORMAT, "%s: initializer '%s' is defined twice", g->origin,
                             tp->name);
        int t = etf__graph_add_tensor(g, tp->name);
        if (t < 0)
            return etf_diagf(diag, t, "%s: out of memory", g->origin);
        const char *what = etf__graph_strf(g, "initializer '%s'", tp->name);
        if (!what)
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
        int rc = etf__tensor_from_proto(g, t, tp, what, diag);
        if (rc)
            return rc;
    }
    g->inputs = calloc(gp->n_input ? gp->n_input : 1, sizeof *g->inputs);
    if (!g->inputs)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < gp->n_input; i++) {
        const Onnx__ValueInfoProto *vi = gp->input[i];
        if (!vi->name || !*vi->name)
            return etf_diagf(diag, ETF_EFORMAT, "%s: graph input #%zu has no name", g->origin, i);
        int t = etf__graph_find(g, vi->name);
        if (t >= 0) {
            if (g->t[t].data)
                continue; /* an initializer listed as input: a constant */
            return etf_diagf(diag, ETF_EFORMAT, "%s: graph input '%s' is listed twice", g->origin,
                             vi->name);
        }
        t = etf__graph_add_tensor(g, vi->name);
        if (t < 0)
            return etf_diagf(diag, t, "%s: out of memory", g->origin);
        int rc = input_from_proto(g, t, vi, diag);
        if (rc)
            return rc;
        g->inputs[g->n_inputs++] = t;
    }
    int rc = build_nodes(g, gp, diag);
    if (rc)
        return rc;
    if (gp->n_output == 0)
        return etf_diagf(diag, ETF_EFORMAT, "%s: the graph has no outputs", g->origin);
    g->outputs = calloc(gp->n_output, sizeof *g->outputs);
    if (!g->outputs)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", g->origin);
    for (size_t i = 0; i < gp->n_output; i++) {
        const char *on = gp->output[i]->name;
        int t = on && *on ? etf__graph_find(g, on) : -1;
        if (t < 0)
            return etf_diagf(diag, ETF_EFORMAT, "%s: graph output '%s' is not defined", g->origin,
                             on ? on : "");
        g->t[t].is_output = true;
        g->outputs[g->n_outputs++] = t;
    }
    return 0;
}

/* ---- zero-copy decoding ----
 *
 * protobuf-c copies every bytes field it decodes, and the initializers' raw_data are nearly
 * all of a model file: decoding the file as it is would hold the weights twice. So the
 * loader decodes a copy of the message without them (nodes, names, shapes: kilobytes) and
 * points each initializer's raw_data into the file's own bytes. Only the framing of the
 * messages is walked here (ModelProto.graph = 7, GraphProto.initializer = 5,
 * TensorProto.raw_data = 9); everything else, its checks included, is protobuf-c's.
 */

enum {
    PB_MODEL_GRAPH = 7,
    PB_GRAPH_INITIALIZER = 5,
    PB_TENSOR_RAW_DATA = 9,
    PB_WIRE_VARINT = 0,
    PB_WIRE_FIXED64 = 1,
    PB_WIRE_LEN = 2,
    PB_WIRE_FIXED32 = 5,
};

/* One field of a message: [start, end) in the bytes; a length-delimited one's payload is
 * [data, end), and its tag takes [start, tag_end). */
struct pb_field {
    const uint8_t *start, *tag_end, *data, *end;
    uint64_t number;
    unsigned wire;
};

static bool pb_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
    *v = 0;
    for (unsigned shift = 0; shift < 64 && *p < end; shift += 7) {
        uint8_t byte = *(*p)++;
        *v |= (uint64_t)(byte & 0x7f) << shift;
        if (!(byte & 0x80))
            return true;
    }
    return false;
}

/* The field at *p, which moves past it; false when the bytes are not protobuf (truncated,
 * or groups, which ONNX does not use and protobuf-c refuses too). */
static bool pb_next(const uint8_t **p, const uint8_t *end, struct pb_field *f)
{
    uint64_t tag, n;
    f->start = *p;
    if (!pb_varint(p, end, &tag))
        return false;
    f->tag_end = f->data = *p;
    f->number = tag >> 3;
    f->wire = (unsigned)(tag & 7);
    switch (f->wire) {
    case PB_WIRE_VARINT:
        if (!pb_varint(p, end, &n))
            return false;
        break;
    case PB_WIRE_FIXED64:
    case PB_WIRE_FIXED32: {
        size_t w = f->wire == PB_WIRE_FIXED64 ? 8 : 4;
        if ((size_t)(end - *p) < w)
            return false;
        *p += w;
        break;
    }
    case PB_WIRE_LEN:
        if (!pb_varint(p, end, &n) || n > (uint64_t)(end - *p))
            return false;
        f->data = *p;
        *p += n;
        break;
    default:
        return false;
    }
    f->end = *p;
    return true;
}

static size_t pb_varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *pb_put_varint(uint8_t *out, uint64_t v)
{
    while (v >= 0x80) {
        *out++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *out++ = (uint8_t)v;
    return out;
}

/* Where one initializer's raw_data lies in the file's bytes (the last occurrence, as
 * protobuf reads repeated singular fields), and its message's length without it. */
struct raw_slice {
    size_t offset, len;
    bool present;
    size_t stripped_len;
};

struct strip {
    const uint8_t *base;   /* the file's bytes */
    struct raw_slice *raw; /* one per initializer, in file order */
    size_t n_raw, cap_raw;
    uint8_t *out; /* the stripped copy */
};

/* Appends f as it is to out. */
static uint8_t *copy_field(uint8_t *out, const struct pb_field *f)
{
    memcpy(out, f->start, (size_t)(f->end - f->start));
    return out + (f->end - f->start);
}

/* f's tag followed by a new payload length: its size, and appended to out. */
static size_t header_size(const struct pb_field *f, size_t len)
{
    return (size_t)(f->tag_end - f->start) + pb_varint_size(len);
}

static uint8_t *put_header(uint8_t *out, const struct pb_field *f, size_t len)
{
    memcpy(out, f->start, (size_t)(f->tag_end - f->start));
    return pb_put_varint(out + (f->tag_end - f->start), len);
}

/* Measures a TensorProto's payload without its raw_data and records where that lies. */
static bool measure_tensor(const struct strip *s, const struct pb_field *t, struct raw_slice *rs)
{
    *rs = (struct raw_slice){0};
    for (const uint8_t *p = t->data; p < t->end;) {
        struct pb_field f;
        if (!pb_next(&p, t->end, &f))
            return false;
        if (f.number == PB_TENSOR_RAW_DATA && f.wire == PB_WIRE_LEN) {
            rs->offset = (size_t)(f.data - s->base);
            rs->len = (size_t)(f.end - f.data);
            rs->present = true;
        } else {
            rs->stripped_len += (size_t)(f.end - f.start);
        }
    }
    return true;
}

/* Measures a GraphProto's payload with its initializers' raw_data left out, recording the
 * slices in s->raw. */
static int measure_graph(struct strip *s, const struct pb_field *g, size_t *len)
{
    size_t total = 0;
    for (const uint8_t *p = g->data; p < g->end;) {
        struct pb_field f;
        if (!pb_next(&p, g->end, &f))
            return ETF_EFORMAT;
        if (f.number != PB_GRAPH_INITIALIZER || f.wire != PB_WIRE_LEN) {
            total += (size_t)(f.end - f.start);
            continue;
        }
        if (etf__reserve(&s->raw, s->n_raw, &s->cap_raw, sizeof *s->raw, 64))
            return ETF_ENOMEM;
        struct raw_slice *rs = &s->raw[s->n_raw++];
        if (!measure_tensor(s, &f, rs))
            return ETF_EFORMAT;
        total += header_size(&f, rs->stripped_len) + rs->stripped_len;
    }
    *len = total;
    return 0;
}

/* Appends the graph measured by measure_graph, its framing checked there. */
static uint8_t *write_graph(const struct strip *s, const struct pb_field *g, uint8_t *out)
{
    size_t init = 0;
    for (const uint8_t *p = g->data; p < g->end;) {
        struct pb_field f;
        pb_next(&p, g->end, &f);
        if (f.number != PB_GRAPH_INITIALIZER || f.wire != PB_WIRE_LEN) {
            out = copy_field(out, &f);
            continue;
        }
        out = put_header(out, &f, s->raw[init++].stripped_len);
        for (const uint8_t *q = f.data; q < f.end;) {
            struct pb_field tf;
            pb_next(&q, f.end, &tf);
            if (tf.number != PB_TENSOR_RAW_DATA || tf.wire != PB_WIRE_LEN)
                out = copy_field(out, &tf);
        }
    }
    return out;
}

/* The model's bytes without initializer data into s->out (malloc'd, *out_len bytes), and
 * where that data lies into s->raw. */
static int strip_model(struct strip *s, const uint8_t *bytes, size_t len, size_t *out_len,
                       const char *origin, struct etf_diag *diag)
{
    const uint8_t *end = bytes + len;
    struct pb_field graph = {0};
    size_t n_graphs = 0, total = 0, graph_len = 0;
    for (const uint8_t *p = bytes; p < end;) {
        struct pb_field f;
        if (!pb_next(&p, end, &f))
            goto not_protobuf;
        if (f.number == PB_MODEL_GRAPH && f.wire == PB_WIRE_LEN) {
            graph = f;
            n_graphs++;
        } else {
            total += (size_t)(f.end - f.start);
        }
    }
    if (n_graphs > 1) /* protobuf would merge them; ONNX writers write one */
        return etf_diagf(diag, ETF_EFORMAT, "%s: the model has %zu graphs, expected one", origin,
                         n_graphs);
    if (n_graphs) {
        int rc = measure_graph(s, &graph, &graph_len);
        if (rc == ETF_ENOMEM)
            return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", origin);
        if (rc)
            goto not_protobuf;
        total += header_size(&graph, graph_len) + graph_len;
    }
    uint8_t *out = s->out = malloc(total ? total : 1);
    if (!out)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", origin);
    for (const uint8_t *p = bytes; p < end;) {
        struct pb_field f;
        pb_next(&p, end, &f);
        if (f.number != PB_MODEL_GRAPH || f.wire != PB_WIRE_LEN) {
            out = copy_field(out, &f);
        } else {
            out = put_header(out, &f, graph_len);
            out = write_graph(s, &f, out);
        }
    }
    *out_len = (size_t)(out - s->out);
    return 0;
not_protobuf:
    return etf_diagf(diag, ETF_EFORMAT, "%s: not an ONNX model (protobuf decoding failed)", origin);
}

/* Moves each initializer's data down onto a 16-byte boundary (or 8, or 4 where the framing
 * before it is shorter): the bytes in between are framing that nothing reads once the
 * stripped copy is decoded. One left unaligned is copied later (etf__tensor_from_proto). */
static void align_raw(uint8_t *base, struct raw_slice *raw, size_t n)
{
    size_t free_from = 0; /* bytes below this hold data already placed */
    for (size_t i = 0; i < n; i++) {
        struct raw_slice *r = &raw[i];
        if (!r->present || r->len == 0)
            continue;
        for (size_t align = 16; align >= 4; align /= 2) {
            uintptr_t at = (uintptr_t)(base + r->offset) & ~(uintptr_t)(align - 1);
            if (at >= (uintptr_t)(base + free_from)) {
                size_t to = (size_t)(at - (uintptr_t)base);
                memmove(base + to, base + r->offset, r->len);
                r->offset = to;
                break;
            }
        }
        free_from = r->offset + r->len;
    }
}

int etf__onnx_load(struct etf__arena *a, uint8_t *bytes, size_t len, const char *origin,
                   const char *base_dir, const struct etf_model_options *opts,
                   struct etf__graph **out, struct etf_diag *diag)
{
    *out = NULL;
    int rc = 0;
    struct strip st = {.base = bytes};
    size_t max = opts && opts->max_bytes ? opts->max_bytes : ETF_MODEL_DEFAULT_MAX_BYTES;
    if (!host_is_little_endian()) {
        rc = etf_diagf(diag, ETF_ENOTSUP, "%s: ONNX data is little-endian; this host is not",
                       origin);
        goto free_arena;
    }
    size_t stripped_len = 0;
    if ((rc = strip_model(&st, bytes, len, &stripped_len, origin, diag)))
        goto free_strip;
    ProtobufCAllocator al = {.alloc = pb_alloc, .free = pb_free, .allocator_data = a};
    Onnx__ModelProto *m = onnx__model_proto__unpack(&al, stripped_len, st.out);
    free(st.out);
    st.out = NULL;
    if (!m || (m->graph ? m->graph->n_initializer : 0) != st.n_raw) {
        rc = etf_diagf(diag, ETF_EFORMAT, "%s: not an ONNX model (protobuf decoding failed)",
                       origin);
        goto free_strip;
    }
    align_raw(bytes, st.raw, st.n_raw);
    for (size_t i = 0; i < st.n_raw; i++) {
        if (!st.raw[i].present)
            continue;
        Onnx__TensorProto *tp = m->graph->initializer[i];
        tp->has_raw_data = 1;
        tp->raw_data =
            (ProtobufCBinaryData){.len = st.raw[i].len, .data = bytes + st.raw[i].offset};
    }
    free(st.raw);
    st.raw = NULL;
    if (!m->has_ir_version) {
        rc = etf_diagf(diag, ETF_EFORMAT, "%s: not an ONNX model (no ir_version)", origin);
        goto free_arena;
    }
    int64_t opset = -1;
    for (size_t i = 0; i < m->n_opset_import; i++) {
        const Onnx__OperatorSetIdProto *o = m->opset_import[i];
        const char *d = o->domain ? o->domain : "";
        if (!*d || !strcmp(d, "ai.onnx"))
            opset = o->has_version ? o->version : 0;
    }
    if (opset < 0) {
        rc = etf_diagf(diag, ETF_EFORMAT, "%s: the model imports no default-domain opset", origin);
        goto free_arena;
    }
    if (opset < 13 || opset > 17) {
        rc = etf_diagf(diag, ETF_ENOTSUP,
                       "%s: opset %lld is not supported (expected 13..17; re-export with "
                       "opset_version=17)",
                       origin, (long long)opset);
        goto free_arena;
    }
    if (!m->graph) {
        rc = etf_diagf(diag, ETF_EFORMAT, "%s: the model has no graph", origin);
        goto free_arena;
    }
    struct etf__graph *g = etf__graph_new(origin, base_dir, max, a);
    if (!g) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", origin);
        goto free_arena;
    }
    g->opset = (int)opset;
    g->batch = opts ? opts->batch : 0;
    g->graph_name = m->graph->name;
    rc = build_graph(g, m->graph, diag);
    if (rc) {
        etf__graph_free(g); /* and the arena with it */
        return rc;
    }
    *out = g;
    return 0;
free_strip:
    free(st.out);
    free(st.raw);
free_arena:
    etf__arena_free(a);
    return rc;
}
