/* etf: the command-line client of etfd.
 *
 *   etf create-entity | set-priority | load-model | infer | unload-model | delete-entity |
 *       stats | bench   [--server HOST:PORT] [--timeout S] ...
 *
 * `bench` is the original run_client: one entity, one model, T threads sending Infer back
 * to back, a line per request, then a report in the manner of perf_analyzer.
 *
 * Exit status: 0 done, 1 an RPC failed (the message names the gRPC status), 2 the command
 * line or a local file is wrong. Arguments are checked before anything is sent.
 */
#include "rpc/client.h"

#include "etf/etf.h"
#include "rpc/grpc_common.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define EXIT_RPC 1
#define EXIT_USAGE 2

#define DEFAULT_SERVER "127.0.0.1:10086"
#define MAX_THREADS 1024
#define MAX_SECONDS 86400.0
/* An input file must fit in one request with room for the rest of the message. */
#define MAX_INPUT_BYTES (ETF_RPC_DEFAULT_MAX_MESSAGE - 4096u)
/* Generous for a blocking Infer behind a long queue, short enough to notice a hung server. */
#define DEFAULT_TIMEOUT_S 60.0

/* ---- messages ---- */

static const char *g_cmd = NULL; /* the subcommand, for messages */

static int fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("etf: ", stderr);
    if (g_cmd)
        fprintf(stderr, "%s: ", g_cmd);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return code;
}

/* ---- command line ---- */

enum opt_id {
    O_SERVER,
    O_TIMEOUT,
    O_PRIORITY,
    O_PROFILE,
    O_ENTITY,
    O_FREQ,
    O_BATCH,
    O_INPUT,
    O_OUTPUT,
    O_THREADS,
    O_DELAY,
    O_DURATION,
    O_SHAPE,
    O_COUNT,
};

static const char *const opt_names[O_COUNT] = {
    [O_SERVER] = "server",   [O_TIMEOUT] = "timeout", [O_PRIORITY] = "priority",
    [O_PROFILE] = "profile", [O_ENTITY] = "entity",   [O_FREQ] = "freq",
    [O_BATCH] = "batch",     [O_INPUT] = "input",     [O_OUTPUT] = "output",
    [O_THREADS] = "threads", [O_DELAY] = "delay",     [O_DURATION] = "duration",
    [O_SHAPE] = "shape",
};

#define BIT(o) (1u << (o))
#define COMMON_OPTS (BIT(O_SERVER) | BIT(O_TIMEOUT))
#define MAX_POS 2

struct cmdline {
    const char *opt[O_COUNT];
    const char *pos[MAX_POS];
    int npos;
};

struct command {
    const char *name;
    unsigned opts; /* BIT(opt_id) of the options it takes besides the common ones */
    int min_pos, max_pos;
    const char *synopsis, *help;
    int (*run)(const struct cmdline *cl);
};

static const char common_help[] =
    "  --server HOST:PORT  etfd's address (default " DEFAULT_SERVER ")\n"
    "  --timeout S         deadline of each call in seconds (default 60)\n";

static void command_usage(FILE *f, const struct command *c)
{
    fprintf(f, "usage: etf %s %s\n%s%s", c->name, c->synopsis, c->help, common_help);
}

/* A word that reads as a number ("-5", "-0.5") is a positional argument, not an option:
 * priorities are negative. */
static bool looks_numeric(const char *s)
{
    return s[0] == '-' && ((s[1] >= '0' && s[1] <= '9') || s[1] == '.');
}

/* Splits argv (after the subcommand) into the options c takes and positional words.
 * Accepts "--name value" and "--name=value"; "--" ends the options. */
static int parse_cmdline(const struct command *c, int argc, char **argv, struct cmdline *cl)
{
    *cl = (struct cmdline){0};
    bool only_pos = false;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!only_pos && strcmp(a, "--") == 0) {
            only_pos = true;
            continue;
        }
        if (!only_pos && (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0)) {
            command_usage(stdout, c);
            exit(0);
        }
        if (!only_pos && a[0] == '-' && !looks_numeric(a)) {
            if (a[1] != '-')
                return fail(EXIT_USAGE, "unknown option '%s' (see etf %s --help)", a, c->name);
            const char *name = a + 2, *eq = strchr(name, '=');
            size_t len = eq ? (size_t)(eq - name) : strlen(name);
            int id = -1;
            for (int o = 0; o < O_COUNT; o++) {
                if (((COMMON_OPTS | c->opts) & BIT(o)) && strlen(opt_names[o]) == len &&
                    strncmp(opt_names[o], name, len) == 0)
                    id = o;
            }
            if (id < 0)
                return fail(EXIT_USAGE, "unknown option '%.*s' (see etf %s --help)", (int)(len + 2),
                            a, c->name);
            if (cl->opt[id])
                return fail(EXIT_USAGE, "--%s given twice", opt_names[id]);
            if (eq) {
                cl->opt[id] = eq + 1;
            } else if (i + 1 < argc) {
                cl->opt[id] = argv[++i];
            } else {
                return fail(EXIT_USAGE, "--%s needs a value", opt_names[id]);
            }
            continue;
        }
        if (cl->npos == c->max_pos)
            return fail(EXIT_USAGE, "unexpected argument '%s' (usage: etf %s %s)", a, c->name,
                        c->synopsis);
        cl->pos[cl->npos++] = a;
    }
    if (cl->npos < c->min_pos)
        return fail(EXIT_USAGE, "missing argument (usage: etf %s %s)", c->name, c->synopsis);
    return 0;
}

/* ---- argument values ---- */

static int parse_i64(const char *what, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    /* strtoll skips leading blanks and takes "+": neither is a number the user meant. */
    if (!(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) || errno || end == s || *end || v < lo ||
        v > hi)
        return fail(EXIT_USAGE, "%s: expected an integer in %" PRId64 "..%" PRId64 ", found '%s'",
                    what, lo, hi, s);
    *out = v;
    return 0;
}

/* Entity and model ids: unsigned decimal. Which ids exist is the server's to say. */
static int parse_id(const char *what, const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (!(s[0] >= '0' && s[0] <= '9') || errno || *end)
        return fail(EXIT_USAGE, "%s: expected an id (a non-negative integer), found '%s'", what, s);
    *out = v;
    return 0;
}

/* Seconds in [lo, hi], or (lo, hi] when lo_open. */
static int parse_seconds(const char *what, const char *s, double lo, bool lo_open, double hi,
                         double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (!((s[0] >= '0' && s[0] <= '9') || s[0] == '.') || errno || *end || !isfinite(v) || v < lo ||
        (lo_open && v == lo) || v > hi)
        return fail(EXIT_USAGE, "%s: expected seconds in %c%g, %g], found '%s'", what,
                    lo_open ? '(' : '[', lo, hi, s);
    *out = v;
    return 0;
}

/* --freq: Hz as decimal digits (the original's form) or "#INDEX" into the device's list. */
static int check_freq(const char *s)
{
    const char *d = s[0] == '#' ? s + 1 : s;
    size_t n = strlen(d);
    bool digits = n > 0 && n <= 19 && strspn(d, "0123456789") == n;
    if (!digits || (s[0] != '#' && strtoull(d, NULL, 10) == 0))
        return fail(EXIT_USAGE,
                    "--freq: expected a frequency in Hz (726750000) or an index "
                    "into the device's list (#3), found '%s'",
                    s);
    return 0;
}

/* A path inside the server's repository: only what is plainly wrong is refused here; the
 * server applies its own rules. */
static int check_repo_path(const char *what, const char *s)
{
    if (s[0] == '\0')
        return fail(EXIT_USAGE, "%s: empty path", what);
    if (strlen(s) > 4096)
        return fail(EXIT_USAGE, "%s: path longer than 4096 characters", what);
    return 0;
}

/* --server: HOST:PORT with a port in 1..65535, or a gRPC URI with a scheme. */
static int check_server(const char *s)
{
    static const char *const schemes[] = {"unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:"};
    for (size_t i = 0; i < sizeof schemes / sizeof *schemes; i++) {
        if (strncmp(s, schemes[i], strlen(schemes[i])) == 0 && s[strlen(schemes[i])])
            return 0;
    }
    const char *colon = strrchr(s, ':');
    char *end;
    errno = 0;
    unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
    if (!colon || colon == s || !(colon[1] >= '0' && colon[1] <= '9') || errno || *end ||
        port == 0 || port > 65535 || strpbrk(s, " \t\r\n"))
        return fail(EXIT_USAGE, "--server: expected HOST:PORT with a port in 1..65535, found '%s'",
                    s);
    return 0;
}

static int connect_from(const struct cmdline *cl, struct etf_client **out)
{
    const char *server = cl->opt[O_SERVER] ? cl->opt[O_SERVER] : DEFAULT_SERVER;
    double timeout_s = DEFAULT_TIMEOUT_S;
    int rc;
    if ((rc = check_server(server)))
        return rc;
    if (cl->opt[O_TIMEOUT] &&
        (rc = parse_seconds("--timeout", cl->opt[O_TIMEOUT], 0, true, MAX_SECONDS, &timeout_s)))
        return rc;
    struct etf_client_options o = {.timeout_ms = (uint64_t)ceil(timeout_s * 1000.0)};
    struct etf_diag diag;
    if (etf_client_connect(server, &o, out, &diag))
        return fail(EXIT_USAGE, "%s", diag.msg);
    return 0;
}

/* ---- tensors and files ---- */

/* Reads a raw fp32 file whole. The server checks it against the model's input shape; here
 * only what makes it no tensor at all is refused. */
static int read_input(const char *path, void **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(EXIT_USAGE, "--input %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return fail(EXIT_USAGE, "--input %s: not a regular file", path);
    }
    if (st.st_size <= 0 || st.st_size % 4 != 0 || (uint64_t)st.st_size > MAX_INPUT_BYTES) {
        fclose(f);
        return fail(EXIT_USAGE,
                    "--input %s: expected raw fp32 data (a positive multiple of 4 bytes, at most "
                    "%u), the file has %lld bytes",
                    path, (unsigned)MAX_INPUT_BYTES, (long long)st.st_size);
    }
    *len = (size_t)st.st_size;
    *data = malloc(*len);
    if (!*data) {
        fclose(f);
        return fail(EXIT_USAGE, "--input %s: out of memory for %zu bytes", path, *len);
    }
    size_t got = fread(*data, 1, *len, f);
    fclose(f);
    if (got != *len) {
        free(*data);
        return fail(EXIT_USAGE, "--input %s: read %zu of %zu bytes", path, got, *len);
    }
    return 0;
}

static void print_shape(FILE *f, const Efair__Rpc__Tensor *t)
{
    fputc('[', f);
    for (size_t d = 0; d < t->n_dims; d++)
        fprintf(f, "%s%" PRId64, d ? ", " : "", t->dims[d]);
    fputc(']', f);
}

#define MAX_DIMS 8

/* The request's input tensor from --input FILE and --shape D,D,...: the server checks
 * both against the model's input, so the file must hold exactly prod(shape) fp32 values.
 * Without --shape no dims are sent. t->data.data is malloc'd; t->dims points at dims. */
static int input_tensor(const struct cmdline *cl, Efair__Rpc__Tensor *t, int64_t *dims)
{
    const char *shape = cl->opt[O_SHAPE];
    size_t n = 0;
    uint64_t elems = 1;
    int rc;
    if (shape && !cl->opt[O_INPUT])
        return fail(EXIT_USAGE, "--shape needs --input");
    for (const char *p = shape; p && *p;) {
        char *end;
        errno = 0;
        long long d = strtoll(p, &end, 10);
        if (n == MAX_DIMS || !(*p >= '0' && *p <= '9') || errno || end == p || d < 1 ||
            d > (1ll << 31) || (*end && *end != ',') || (*end == ',' && !end[1]))
            return fail(EXIT_USAGE,
                        "--shape: expected 1..%d positive sizes separated by commas "
                        "(1,3,224,224), found '%s'",
                        MAX_DIMS, shape);
        dims[n++] = d;
        elems = elems > UINT64_MAX / (uint64_t)d ? UINT64_MAX : elems * (uint64_t)d;
        p = *end ? end + 1 : end;
    }
    if (shape && n == 0)
        return fail(EXIT_USAGE, "--shape: empty");
    void *data = NULL;
    size_t len = 0;
    if ((rc = read_input(cl->opt[O_INPUT], &data, &len)))
        return rc;
    if (shape && (elems > SIZE_MAX / 4 || elems * 4 != len)) {
        free(data);
        return fail(EXIT_USAGE,
                    "--input %s: --shape %s is %" PRIu64 " fp32 values, the file holds %zu",
                    cl->opt[O_INPUT], shape, elems, len / 4);
    }
    t->data.data = data;
    t->data.len = len;
    t->dims = dims;
    t->n_dims = n;
    return 0;
}

/* ---- subcommands ---- */

static int cmd_create_entity(const struct cmdline *cl)
{
    int64_t prio = 0;
    int rc;
    if (cl->opt[O_PRIORITY] &&
        (rc = parse_i64("--priority", cl->opt[O_PRIORITY], ETF_NICE_MIN, ETF_NICE_MAX, &prio)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    uint64_t eid;
    rc = etf_client_create_entity(c, prio, &eid, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0)
        printf("%" PRIu64 "\n", eid);
    etf_client_close(c);
    return rc;
}

static int cmd_set_priority(const struct cmdline *cl)
{
    uint64_t eid;
    int64_t prio;
    int rc;
    if ((rc = parse_id("EID", cl->pos[0], &eid)) ||
        (rc = parse_i64("priority", cl->pos[1], ETF_NICE_MIN, ETF_NICE_MAX, &prio)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    rc = etf_client_set_priority(c, eid, prio, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0)
        printf("entity %" PRIu64 ": priority %" PRId64 "\n", eid, prio);
    etf_client_close(c);
    return rc;
}

/* Fills a LoadModel request from MODEL, --profile, --freq and --batch. */
static int load_request(const struct cmdline *cl, const char *model,
                        Efair__Rpc__LoadModelRequest *req)
{
    int rc;
    int64_t batch = 0;
    if ((rc = check_repo_path("MODEL", model)) ||
        (cl->opt[O_PROFILE] && (rc = check_repo_path("--profile", cl->opt[O_PROFILE]))) ||
        (cl->opt[O_FREQ] && (rc = check_freq(cl->opt[O_FREQ]))) ||
        (cl->opt[O_BATCH] && (rc = parse_i64("--batch", cl->opt[O_BATCH], 1, 65536, &batch))))
        return rc;
    req->model_path = (char *)model;
    if (cl->opt[O_PROFILE])
        req->model_profile_path = (char *)cl->opt[O_PROFILE];
    if (cl->opt[O_FREQ])
        req->frequency = (char *)cl->opt[O_FREQ];
    req->batch = (uint32_t)batch;
    return 0;
}

static int cmd_load_model(const struct cmdline *cl)
{
    Efair__Rpc__LoadModelRequest req = EFAIR__RPC__LOAD_MODEL_REQUEST__INIT;
    int rc;
    if (!cl->opt[O_ENTITY])
        return fail(EXIT_USAGE, "--entity EID is required (create one with etf create-entity)");
    if ((rc = parse_id("--entity", cl->opt[O_ENTITY], &req.eid)) ||
        (rc = load_request(cl, cl->pos[0], &req)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    Efair__Rpc__LoadModelResponse *resp;
    rc = etf_client_load_model(c, &req, &resp, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0) {
        printf("mid %" PRIu64 "\n", resp->mid);
        printf("frequency %" PRIu64 " Hz\n", resp->frequency_hz);
        for (size_t i = 0; i < resp->n_inputs; i++) {
            printf("input '%s' ", resp->inputs[i]->name);
            print_shape(stdout, resp->inputs[i]);
            putchar('\n');
        }
        for (size_t i = 0; i < resp->n_outputs; i++) {
            printf("output '%s' ", resp->outputs[i]->name);
            print_shape(stdout, resp->outputs[i]);
            putchar('\n');
        }
        etf_client_free(resp);
    }
    etf_client_close(c);
    return rc;
}

/* Writes the output tensors back to back, in the server's order. */
static int write_outputs(FILE *f, const char *path, const Efair__Rpc__InferResponse *resp)
{
    if (resp->n_outputs == 0)
        return fail(EXIT_RPC,
                    "--output %s: the server returned no output tensor (a model on the "
                    "simulated device has none)",
                    path);
    size_t total = 0;
    for (size_t i = 0; i < resp->n_outputs; i++) {
        const Efair__Rpc__Tensor *t = resp->outputs[i];
        if (t->data.len && fwrite(t->data.data, 1, t->data.len, f) != t->data.len)
            return fail(EXIT_RPC, "--output %s: %s", path, strerror(errno));
        total += t->data.len;
        printf("output '%s' ", t->name);
        print_shape(stdout, t);
        printf(" -> %s\n", path);
    }
    if (fflush(f) != 0)
        return fail(EXIT_RPC, "--output %s: %s", path, strerror(errno));
    printf("wrote %zu bytes\n", total);
    return 0;
}

static int cmd_infer(const struct cmdline *cl)
{
    Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
    Efair__Rpc__Tensor tensor = EFAIR__RPC__TENSOR__INIT;
    Efair__Rpc__Tensor *tensors[1] = {&tensor};
    int64_t dims[MAX_DIMS];
    void *data = NULL;
    FILE *out = NULL;
    const char *out_path = cl->opt[O_OUTPUT];
    int rc;
    if ((rc = parse_id("MID", cl->pos[0], &req.mid)))
        return rc;
    if (cl->opt[O_INPUT] || cl->opt[O_SHAPE]) {
        if ((rc = input_tensor(cl, &tensor, dims)))
            return rc;
        data = tensor.data.data;
        req.inputs = tensors;
        req.n_inputs = 1;
    }
    /* Opened before the call: a path that cannot be written is a usage error, and finding
     * it out after the inference would waste the device's time. */
    if (out_path) {
        if (out_path[0] == '\0' || !(out = fopen(out_path, "wb"))) {
            free(data);
            return fail(EXIT_USAGE, "--output %s: %s", out_path,
                        out_path[0] ? strerror(errno) : "empty path");
        }
        req.return_outputs = true;
    }
    struct etf_client *c;
    if ((rc = connect_from(cl, &c))) {
        free(data);
        if (out) {
            fclose(out);
            unlink(out_path);
        }
        return rc;
    }
    struct etf_diag diag;
    Efair__Rpc__InferResponse *resp;
    uint64_t t0 = etf_host_ns();
    rc = etf_client_infer(c, &req, &resp, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    uint64_t rtt_us = (etf_host_ns() - t0) / 1000;
    if (rc == 0) {
        printf("tid %" PRIu64 "\n", resp->tid);
        printf("service %" PRIu64 " µs\n", resp->service_time_us);
        printf("energy %.1f µJ\n", resp->energy_uj);
        printf("queue %" PRIu64 " µs\n", resp->queue_time_us);
        printf("latency %" PRIu64 " µs\n", resp->latency_us);
        printf("round trip %" PRIu64 " µs\n", rtt_us);
        if (out)
            rc = write_outputs(out, out_path, resp);
        etf_client_free(resp);
    }
    if (out && fclose(out) != 0 && rc == 0)
        rc = fail(EXIT_RPC, "--output %s: %s", out_path, strerror(errno));
    if (out && rc != 0)
        unlink(out_path); /* no half-written or empty result left behind */
    etf_client_close(c);
    free(data);
    return rc;
}

static int cmd_unload_model(const struct cmdline *cl)
{
    uint64_t mid;
    int rc;
    if ((rc = parse_id("MID", cl->pos[0], &mid)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    rc = etf_client_unload_model(c, mid, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0)
        printf("unloaded model %" PRIu64 "\n", mid);
    etf_client_close(c);
    return rc;
}

static int cmd_delete_entity(const struct cmdline *cl)
{
    uint64_t eid;
    int rc;
    if ((rc = parse_id("EID", cl->pos[0], &eid)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    rc = etf_client_delete_entity(c, eid, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0)
        printf("deleted entity %" PRIu64 "\n", eid);
    etf_client_close(c);
    return rc;
}

static double percent(double part, double whole)
{
    return whole > 0 ? 100.0 * part / whole : 0.0;
}

static void print_stats(const Efair__Rpc__GetStatsResponse *s)
{
    /* Shares are of everything the server has charged; a server that does not report its
     * totals gets the sum of the entities listed. */
    double all_time = (double)s->busy_us, all_energy = s->energy_uj;
    if (all_time <= 0 || all_energy <= 0) {
        double t = 0, e = 0;
        for (size_t i = 0; i < s->n_entities; i++) {
            t += (double)s->entities[i]->time_us;
            e += s->entities[i]->energy_uj;
        }
        if (all_time <= 0)
            all_time = t;
        if (all_energy <= 0)
            all_energy = e;
    }
    printf("device %s, meter %s, freq %s; quantum %" PRIu64 " µs, phi %.3g\n", s->device, s->meter,
           s->freq, s->quantum_us, s->phi);
    printf("dispatches %" PRIu64 ", busy %" PRIu64 " µs, energy %.1f µJ\n", s->dispatches,
           s->busy_us, s->energy_uj);
    printf("%-10s %5s %6s %9s %6s %13s %7s %15s %7s %10s %11s\n", "entity", "prio", "weight",
           "tasks", "queued", "time_us", "time%", "energy_uj", "energy%", "power_mW", "slice_us");
    for (size_t i = 0; i < s->n_entities; i++) {
        const Efair__Rpc__EntityStats *e = s->entities[i];
        printf("%-10" PRIu64 " %5" PRId64 " %6" PRIu32 " %9" PRIu64 " %6" PRIu64 " %13" PRIu64
               " %6.1f%% %15.1f %6.1f%% %10.1f %11.1f\n",
               e->eid, e->priority, e->weight, e->tasks_done, e->tasks_queued, e->time_us,
               percent((double)e->time_us, all_time), e->energy_uj,
               percent(e->energy_uj, all_energy), e->power_mw, e->slice_us);
        /* Models under their entity: the name where the priority and weight stand. */
        for (size_t k = 0; k < e->n_models; k++) {
            const Efair__Rpc__ModelStats *m = e->models[k];
            char label[32];
            snprintf(label, sizeof label, "  model %" PRIu64, m->mid);
            printf("%-10s %-12.12s %9" PRIu64 " %6" PRIu64 " %13" PRIu64
                   " %6.1f%% %15.1f %6.1f%%  @ %" PRIu64 " Hz\n",
                   label, m->name, m->tasks_done, m->tasks_queued, m->time_us,
                   percent((double)m->time_us, all_time), m->energy_uj,
                   percent(m->energy_uj, all_energy), m->frequency_hz);
        }
    }
    if (s->n_entities == 0)
        printf("(no entities)\n");
}

static int cmd_stats(const struct cmdline *cl)
{
    uint64_t eid = 0;
    int rc;
    if (cl->npos == 1 && (rc = parse_id("EID", cl->pos[0], &eid)))
        return rc;
    struct etf_client *c;
    if ((rc = connect_from(cl, &c)))
        return rc;
    struct etf_diag diag;
    Efair__Rpc__GetStatsResponse *resp;
    rc = etf_client_get_stats(c, eid, &resp, &diag) ? fail(EXIT_RPC, "%s", diag.msg) : 0;
    if (rc == 0) {
        print_stats(resp);
        etf_client_free(resp);
    }
    etf_client_close(c);
    return rc;
}

/* ---- bench ---- */

/* Set by SIGINT; the senders stop before their next request. A lock-free atomic, not a
 * sig_atomic_t: the sender threads read it too. */
static atomic_bool g_interrupted;

static void on_sigint(int sig)
{
    (void)sig;
    atomic_store(&g_interrupted, true);
}

struct bench_shared {
    struct etf_client *client;
    const Efair__Rpc__InferRequest *req;
    uint64_t end_ns;
    atomic_bool stop;
    pthread_mutex_t err_lock;
    char err[sizeof(struct etf_diag)]; /* the first failure */
};

struct bench_thread {
    pthread_t thread;
    struct bench_shared *sh;
    uint64_t *rtt_us; /* one per finished request */
    size_t n, cap;
    uint64_t service_us, queue_us, latency_us; /* sums over the finished requests */
    double energy_uj;
};

static void bench_fail(struct bench_shared *sh, const char *msg)
{
    pthread_mutex_lock(&sh->err_lock);
    if (!sh->err[0])
        snprintf(sh->err, sizeof sh->err, "%s", msg);
    pthread_mutex_unlock(&sh->err_lock);
    atomic_store(&sh->stop, true);
}

static void *bench_sender(void *arg)
{
    struct bench_thread *t = arg;
    struct bench_shared *sh = t->sh;
    while (!atomic_load(&sh->stop) && !atomic_load(&g_interrupted) && etf_host_ns() < sh->end_ns) {
        if (t->n == t->cap) {
            size_t cap = t->cap ? 2 * t->cap : 1024;
            uint64_t *p = realloc(t->rtt_us, cap * sizeof *p);
            if (!p) {
                bench_fail(sh, "out of memory for the latencies");
                break;
            }
            t->rtt_us = p;
            t->cap = cap;
        }
        struct etf_diag diag;
        Efair__Rpc__InferResponse *resp;
        uint64_t t0 = etf_host_ns();
        if (etf_client_infer(sh->client, sh->req, &resp, &diag)) {
            bench_fail(sh, diag.msg);
            break;
        }
        uint64_t rtt = (etf_host_ns() - t0) / 1000;
        /* The original's line, word for word. */
        printf("Infer finished in %" PRIu64 " µs task id %" PRIu64 "\n", rtt, resp->tid);
        t->rtt_us[t->n++] = rtt;
        t->service_us += resp->service_time_us;
        t->queue_us += resp->queue_time_us;
        t->latency_us += resp->latency_us;
        t->energy_uj += resp->energy_uj;
        etf_client_free(resp);
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank. */
static uint64_t percentile(const uint64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return sorted[rank < 1 ? 0 : rank - 1];
}

/* Sleeps s seconds or until SIGINT. */
static void sleep_interruptible(double s)
{
    uint64_t end = etf_host_ns() + (uint64_t)(s * 1e9);
    while (!atomic_load(&g_interrupted)) {
        uint64_t now = etf_host_ns();
        if (now >= end)
            break;
        uint64_t ns = end - now < 50000000u ? end - now : 50000000u;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = (long)ns};
        nanosleep(&ts, NULL);
    }
}

static void bench_report(const char *model, uint64_t mid, uint64_t eid, int nthreads,
                         double elapsed_s, struct bench_thread *th)
{
    size_t n = 0;
    uint64_t service = 0, queue = 0, latency = 0;
    double energy = 0;
    for (int i = 0; i < nthreads; i++) {
        n += th[i].n;
        service += th[i].service_us;
        queue += th[i].queue_us;
        latency += th[i].latency_us;
        energy += th[i].energy_uj;
    }
    uint64_t *all = n ? malloc(n * sizeof *all) : NULL;
    if (all) {
        size_t k = 0;
        for (int i = 0; i < nthreads; i++) {
            memcpy(all + k, th[i].rtt_us, th[i].n * sizeof *all);
            k += th[i].n;
        }
        qsort(all, n, sizeof *all, cmp_u64);
    }
    double dn = n ? (double)n : 1.0, sum = 0;
    for (size_t i = 0; all && i < n; i++)
        sum += (double)all[i];
    printf("*** Measurement: model %s (mid %" PRIu64 ", entity %" PRIu64 "), %d thread%s, "
           "%.2f s ***\n",
           model, mid, eid, nthreads, nthreads == 1 ? "" : "s", elapsed_s);
    printf("  Client:\n");
    printf("    Request count: %zu\n", n);
    printf("    Throughput: %.1f infer/s\n", elapsed_s > 0 ? (double)n / elapsed_s : 0.0);
    if (all) {
        printf("    p50 latency: %" PRIu64 " µs\n", percentile(all, n, 50));
        printf("    p90 latency: %" PRIu64 " µs\n", percentile(all, n, 90));
        printf("    p99 latency: %" PRIu64 " µs\n", percentile(all, n, 99));
        printf("    Avg latency: %.0f µs (max %" PRIu64 " µs)\n", sum / dn, all[n - 1]);
    } else {
        printf("    p50 latency: n/a\n    p90 latency: n/a\n    p99 latency: n/a\n");
    }
    printf("  Server:\n");
    printf("    Avg service time: %.0f µs\n", (double)service / dn);
    printf("    Avg queue time: %.0f µs\n", (double)queue / dn);
    printf("    Avg latency: %.0f µs\n", (double)latency / dn);
    printf("    Avg energy: %.1f µJ\n", energy / dn);
    free(all);
}

/* The measurement proper: nthreads senders until the duration is over. */
static int bench_run(struct etf_client *c, const Efair__Rpc__InferRequest *ireq, int nthreads,
                     double duration, const char *model, uint64_t eid, struct bench_thread *th)
{
    struct bench_shared sh = {.client = c, .req = ireq};
    if (pthread_mutex_init(&sh.err_lock, NULL) != 0)
        return fail(EXIT_USAGE, "cannot create a mutex");
    int rc = 0;
    uint64_t start = etf_host_ns();
    sh.end_ns = start + (uint64_t)(duration * 1e9);
    int started = 0;
    for (; started < nthreads && !atomic_load(&g_interrupted); started++) {
        th[started].sh = &sh;
        if (pthread_create(&th[started].thread, NULL, bench_sender, &th[started]) != 0) {
            bench_fail(&sh, "cannot start a sender thread");
            break;
        }
    }
    for (int i = 0; i < started; i++)
        pthread_join(th[i].thread, NULL);
    double elapsed = (double)(etf_host_ns() - start) / 1e9;
    pthread_mutex_destroy(&sh.err_lock);
    if (sh.err[0])
        rc = fail(EXIT_RPC, "Infer: %s", sh.err);
    bench_report(model, ireq->mid, eid, started, elapsed, th);
    return rc;
}

static int cmd_bench(const struct cmdline *cl)
{
    Efair__Rpc__LoadModelRequest lreq = EFAIR__RPC__LOAD_MODEL_REQUEST__INIT;
    int64_t prio = 0, nthreads = 1;
    double delay = 0, duration = 10;
    int rc;
    if ((rc = load_request(cl, cl->pos[0], &lreq)) ||
        (cl->opt[O_PRIORITY] &&
         (rc = parse_i64("--priority", cl->opt[O_PRIORITY], ETF_NICE_MIN, ETF_NICE_MAX, &prio))) ||
        (cl->opt[O_THREADS] &&
         (rc = parse_i64("--threads", cl->opt[O_THREADS], 1, MAX_THREADS, &nthreads))) ||
        (cl->opt[O_DELAY] &&
         (rc = parse_seconds("--delay", cl->opt[O_DELAY], 0, false, MAX_SECONDS, &delay))) ||
        (cl->opt[O_DURATION] &&
         (rc = parse_seconds("--duration", cl->opt[O_DURATION], 0, true, MAX_SECONDS, &duration))))
        return rc;
    Efair__Rpc__InferRequest ireq = EFAIR__RPC__INFER_REQUEST__INIT;
    Efair__Rpc__Tensor tensor = EFAIR__RPC__TENSOR__INIT;
    Efair__Rpc__Tensor *tensors[1] = {&tensor};
    int64_t dims[MAX_DIMS];
    void *data = NULL;
    if (cl->opt[O_INPUT] || cl->opt[O_SHAPE]) {
        if ((rc = input_tensor(cl, &tensor, dims)))
            return rc;
        data = tensor.data.data;
        ireq.inputs = tensors;
        ireq.n_inputs = 1;
    }
    struct bench_thread *th = calloc((size_t)nthreads, sizeof *th);
    if (!th) {
        free(data);
        return fail(EXIT_USAGE, "out of memory for %" PRId64 " threads", nthreads);
    }
    struct etf_client *c;
    if ((rc = connect_from(cl, &c))) {
        free(th);
        free(data);
        return rc;
    }
    /* A line per request, whole, as the original flushed each one. */
    setvbuf(stdout, NULL, _IOLBF, 0);
    struct sigaction sa = {.sa_handler = on_sigint};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);

    struct etf_diag diag;
    uint64_t eid = 0, mid = 0;
    bool have_model = false;
    Efair__Rpc__LoadModelResponse *lresp = NULL;
    if (etf_client_create_entity(c, prio, &eid, &diag)) {
        rc = fail(EXIT_RPC, "CreateEntity: %s", diag.msg);
        goto out;
    }
    printf("Created entity #%" PRIu64 "\n", eid);
    lreq.eid = eid;
    if (etf_client_load_model(c, &lreq, &lresp, &diag)) {
        rc = fail(EXIT_RPC, "LoadModel: %s", diag.msg);
        goto out;
    }
    mid = lresp->mid;
    have_model = true;
    /* The original's two lines, word for word; the clock goes into the report. */
    printf("Loaded model #%" PRIu64 "\n", mid);
    char label[4200];
    snprintf(label, sizeof label, "%s at %" PRIu64 " Hz", cl->pos[0], lresp->frequency_hz);
    etf_client_free(lresp);
    sleep_interruptible(delay);
    ireq.mid = mid;
    rc = bench_run(c, &ireq, (int)nthreads, duration, label, eid, th);

out:
    /* Leave the server as found; a failure here is reported but does not hide the bench's. */
    if (have_model && etf_client_unload_model(c, mid, &diag)) {
        int r = fail(EXIT_RPC, "UnloadModel %" PRIu64 ": %s", mid, diag.msg);
        rc = rc ? rc : r;
    }
    if (eid && (have_model || rc) && etf_client_delete_entity(c, eid, &diag)) {
        int r = fail(EXIT_RPC, "DeleteEntity %" PRIu64 ": %s", eid, diag.msg);
        rc = rc ? rc : r;
    }
    if (atomic_load(&g_interrupted) && rc == 0)
        fprintf(stderr, "etf: bench: interrupted\n");
    for (int i = 0; i < nthreads; i++)
        free(th[i].rtt_us);
    free(th);
    free(data);
    etf_client_close(c);
    return rc;
}

/* ---- main ---- */

static const struct command commands[] = {
    {"create-entity", BIT(O_PRIORITY), 0, 0, "[--priority N]",
     "Creates an entity (a tenant) at nice level N (-20..19, default 0) and prints its id.\n",
     cmd_create_entity},
    {"set-priority", 0, 2, 2, "EID N", "Sets entity EID's nice level to N (-20..19).\n",
     cmd_set_priority},
    {"load-model", BIT(O_PROFILE) | BIT(O_ENTITY) | BIT(O_FREQ) | BIT(O_BATCH), 1, 1,
     "PATH --entity EID [--profile P] [--freq F] [--batch B]",
     "Loads the model at PATH in the server's model repository for entity EID and prints\n"
     "its id, frequency and input/output shapes.\n"
     "  --profile P  profile inside the repository (default: the model's own)\n"
     "  --freq F     frequency in Hz, or #INDEX into the device's list (default: current)\n"
     "  --batch B    batch size 1..65536 (default: the model's)\n",
     cmd_load_model},
    {"infer", BIT(O_INPUT) | BIT(O_SHAPE) | BIT(O_OUTPUT), 1, 1,
     "MID [--input FILE [--shape D,D,...]] [--output FILE]",
     "Runs one inference of model MID and prints the task id, service time, energy, queue\n"
     "time, latency and round trip.\n"
     "  --input FILE   raw little-endian fp32 input (default: the model's last input)\n"
     "  --shape D,...  its shape, as load-model printed it (etfd checks it)\n"
     "  --output FILE  write the raw fp32 outputs, back to back\n",
     cmd_infer},
    {"unload-model", 0, 1, 1, "MID", "Unloads model MID (it must have no queued task).\n",
     cmd_unload_model},
    {"delete-entity", 0, 1, 1, "EID", "Deletes entity EID (it must have no model loaded).\n",
     cmd_delete_entity},
    {"stats", 0, 0, 1, "[EID]",
     "Prints the tasks, time, energy and share of every entity (or of EID) and its models.\n",
     cmd_stats},
    {"bench",
     BIT(O_PROFILE) | BIT(O_FREQ) | BIT(O_PRIORITY) | BIT(O_THREADS) | BIT(O_DELAY) |
         BIT(O_DURATION) | BIT(O_INPUT) | BIT(O_SHAPE) | BIT(O_BATCH),
     1, 1,
     "MODEL [--profile P] [--freq F] [--priority N] [--threads T] [--delay S]\n"
     "           [--duration S] [--input FILE [--shape D,D,...]] [--batch B]",
     "Creates an entity at priority N, loads MODEL, waits --delay seconds, then T threads\n"
     "send Infer back to back for --duration seconds (default 10), printing a line per\n"
     "request and a report: throughput, client latency p50/p90/p99, server-side means.\n"
     "The model and the entity are removed at the end. SIGINT stops early.\n"
     "  --threads T     1..1024 (default 1)\n"
     "  --input FILE    raw fp32 input sent with every request (default: none)\n"
     "  --shape D,...   its shape, as load-model printed it\n"
     "  --profile, --freq, --batch  as for load-model\n",
     cmd_bench},
};
#define N_COMMANDS (sizeof commands / sizeof *commands)

static void usage(FILE *f)
{
    fputs("usage: etf COMMAND [ARGS] [--server HOST:PORT] [--timeout S]\n"
          "The client of etfd, the ETF inference server.\n\n"
          "commands:\n",
          f);
    for (size_t i = 0; i < N_COMMANDS; i++)
        fprintf(f, "  %s %s\n", commands[i].name, commands[i].synopsis);
    fputs("\n'etf COMMAND --help' tells more. Exit status: 0 ok, 1 the server or the network\n"
          "failed (the message gives the gRPC status), 2 bad arguments or files.\n",
          f);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return fail(EXIT_USAGE, "no command given");
    }
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    for (size_t i = 0; i < N_COMMANDS; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            struct cmdline cl;
            g_cmd = commands[i].name;
            int rc = parse_cmdline(&commands[i], argc - 2, argv + 2, &cl);
            return rc ? rc : commands[i].run(&cl);
        }
    }
    usage(stderr);
    return fail(EXIT_USAGE, "unknown command '%s'", argv[1]);
}
