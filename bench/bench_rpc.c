/* What the network front end costs: Infer round trips through etfd against the same model
 * submitted to libetf in-process, and the throughput of 64 concurrent clients.
 *
 *   bench-rpc PATH-TO-ETFD [SECONDS]
 *
 * etfd runs as a child with the simulated device and a repository (a temporary folder)
 * holding one tiny model: a single kernel of 1 µs. Both sides run that kernel on the
 * same device (the sim device sleeps for the kernel's time), so the difference at p50 is
 * what gRPC, protobuf and the service add. SECONDS (default 3) is the length of the
 * 64-client run. Prints numbers only; no target is judged here.
 */
#include "etf/sched.h"
#include "rpc/client.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KERNEL_US 1
#define FREQ_HZ 1000000000ull
#define WARMUP 300
#define ROUND_TRIPS 5000
#define CLIENTS 64
#define START_TIMEOUT_S 15

static const char tiny_profile[] =
    "{\"model_name\": \"tiny\", \"kernel_profile\": {\"k0\": {\"kernel_name\": \"k0\", "
    "\"exec_time\": {\"1000000000\": 1}, \"gpu_power\": {\"1000000000\": 1000}}}}\n";

static char g_dir[64];
static pid_t g_etfd = -1;

static void cleanup(void)
{
    if (g_etfd > 0) {
        kill(g_etfd, SIGTERM);
        waitpid(g_etfd, NULL, 0);
        g_etfd = -1;
    }
    if (g_dir[0]) {
        char path[128];
        static const char *const files[] = {"tiny.json", "etfd.out", "etfd.err"};
        for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
            snprintf(path, sizeof path, "%s/%s", g_dir, files[i]);
            unlink(path);
        }
        rmdir(g_dir);
        g_dir[0] = '\0';
    }
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("bench-rpc: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    cleanup();
    exit(1);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) == EOF || fclose(f) != 0)
        die("cannot write %s: %s", path, strerror(errno));
}

/* Starts etfd on an ephemeral port and returns "127.0.0.1:PORT" from its first line. Its
 * output goes to files rather than a pipe: a pipe nobody drains would stall it later. */
static void start_etfd(const char *etfd, char *target, size_t target_len)
{
    char out[128], err[128], line[512];
    snprintf(out, sizeof out, "%s/etfd.out", g_dir);
    snprintf(err, sizeof err, "%s/etfd.err", g_dir);
    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fo = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        int fe = open(err, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (fo < 0 || fe < 0 || dup2(fo, 1) < 0 || dup2(fe, 2) < 0)
            _exit(127);
        execl(etfd, etfd, "--quantum-us", "40000", "--phi", "0.5", "--device", "sim", "--models",
              g_dir, "--listen", "127.0.0.1:0", (char *)NULL);
        _exit(127);
    }
    g_etfd = pid;
    for (int waited = 0; waited < START_TIMEOUT_S * 100; waited++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            g_etfd = -1;
            FILE *f = fopen(err, "r");
            size_t n = f ? fread(line, 1, sizeof line - 1, f) : 0;
            if (f)
                fclose(f);
            line[n] = '\0';
            die("%s exited (status %d) before listening: %s", etfd, status, line);
        }
        FILE *f = fopen(out, "r");
        bool found = false;
        while (f && fgets(line, sizeof line, f)) {
            const char *at = strstr(line, "listening on ");
            unsigned port;
            if (at && sscanf(at, "listening on 127.0.0.1:%u", &port) == 1 && port > 0 &&
                port < 65536) {
                snprintf(target, target_len, "127.0.0.1:%u", port);
                found = true;
                break;
            }
        }
        if (f)
            fclose(f);
        if (found)
            return;
        sleep_ms(10);
    }
    die("%s did not say where it listens within %d s", etfd, START_TIMEOUT_S);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank of sorted ns values, in µs. */
static double pct_us(const uint64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)ceil(p / 100.0 * (double)n);
    return (double)sorted[rank < 1 ? 0 : rank - 1] / 1000.0;
}

/* ---- through etfd ---- */

static struct etf_client *connect_or_die(const char *target)
{
    struct etf_client *c;
    struct etf_diag diag;
    struct etf_client_options o = {.timeout_ms = 30000};
    if (etf_client_connect(target, &o, &c, &diag))
        die("%s", diag.msg);
    return c;
}

static uint64_t load_tiny(struct etf_client *c, uint64_t *eid)
{
    struct etf_diag diag;
    if (etf_client_create_entity(c, 0, eid, &diag))
        die("CreateEntity: %s", diag.msg);
    Efair__Rpc__LoadModelRequest req = EFAIR__RPC__LOAD_MODEL_REQUEST__INIT;
    req.model_path = "tiny.json";
    req.eid = *eid;
    Efair__Rpc__LoadModelResponse *resp;
    if (etf_client_load_model(c, &req, &resp, &diag))
        die("LoadModel: %s", diag.msg);
    uint64_t mid = resp->mid;
    etf_client_free(resp);
    return mid;
}

static uint64_t rpc_infer_ns(struct etf_client *c, const Efair__Rpc__InferRequest *req)
{
    struct etf_diag diag;
    Efair__Rpc__InferResponse *resp;
    uint64_t t0 = etf_host_ns();
    if (etf_client_infer(c, req, &resp, &diag))
        die("Infer: %s", diag.msg);
    uint64_t ns = etf_host_ns() - t0;
    etf_client_free(resp);
    return ns;
}

static void rpc_round_trips(const char *target, uint64_t *ns)
{
    struct etf_client *c = connect_or_die(target);
    uint64_t eid;
    Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
    req.mid = load_tiny(c, &eid);
    for (int i = 0; i < WARMUP; i++)
        rpc_infer_ns(c, &req);
    for (int i = 0; i < ROUND_TRIPS; i++)
        ns[i] = rpc_infer_ns(c, &req);
    struct etf_diag diag;
    if (etf_client_unload_model(c, req.mid, &diag) || etf_client_delete_entity(c, eid, &diag))
        die("cleanup: %s", diag.msg);
    etf_client_close(c);
}

struct sender {
    pthread_t thread;
    struct etf_client *client;
    uint64_t mid, end_ns;
    uint64_t *ns;
    size_t n, cap;
    char err[sizeof(struct etf_diag)];
};

static void *sender_main(void *arg)
{
    struct sender *s = arg;
    Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
    req.mid = s->mid;
    while (etf_host_ns() < s->end_ns) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? 2 * s->cap : 4096;
            uint64_t *p = realloc(s->ns, cap * sizeof *p);
            if (!p) {
                snprintf(s->err, sizeof s->err, "out of memory");
                break;
            }
            s->ns = p;
            s->cap = cap;
        }
        struct etf_diag diag;
        Efair__Rpc__InferResponse *resp;
        uint64_t t0 = etf_host_ns();
        if (etf_client_infer(s->client, &req, &resp, &diag)) {
            snprintf(s->err, sizeof s->err, "%s", diag.msg);
            break;
        }
        s->ns[s->n++] = etf_host_ns() - t0;
        etf_client_free(resp);
    }
    return NULL;
}

/* CLIENTS threads, each a client of its own (its own connection, as separate processes
 * would have) and an entity of its own, Infer back to back for `seconds`. */
static void rpc_throughput(const char *target, double seconds, double *per_s, double *p50,
                           double *p99)
{
    static struct sender s[CLIENTS];
    uint64_t eids[CLIENTS];
    for (int i = 0; i < CLIENTS; i++) {
        struct etf_diag diag;
        struct etf_client_options o = {.timeout_ms = 30000, .own_connection = true};
        if (etf_client_connect(target, &o, &s[i].client, &diag))
            die("%s", diag.msg);
        s[i].mid = load_tiny(s[i].client, &eids[i]);
        /* One request each first: connections are up before the clock starts. */
        Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
        req.mid = s[i].mid;
        rpc_infer_ns(s[i].client, &req);
    }
    uint64_t start = etf_host_ns();
    for (int i = 0; i < CLIENTS; i++) {
        s[i].end_ns = start + (uint64_t)(seconds * 1e9);
        if (pthread_create(&s[i].thread, NULL, sender_main, &s[i]) != 0)
            die("cannot start a thread");
    }
    size_t total = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(s[i].thread, NULL);
        total += s[i].n;
    }
    double elapsed = (double)(etf_host_ns() - start) / 1e9;
    uint64_t *all = malloc((total ? total : 1) * sizeof *all);
    if (!all)
        die("out of memory");
    size_t k = 0;
    for (int i = 0; i < CLIENTS; i++) {
        if (s[i].err[0])
            die("client %d: Infer: %s", i, s[i].err);
        memcpy(all + k, s[i].ns, s[i].n * sizeof *all);
        k += s[i].n;
        free(s[i].ns);
        struct etf_diag diag;
        if (etf_client_unload_model(s[i].client, s[i].mid, &diag) ||
            etf_client_delete_entity(s[i].client, eids[i], &diag))
            die("cleanup: %s", diag.msg);
        etf_client_close(s[i].client);
    }
    if (total == 0)
        die("no request finished in %.1f s", seconds);
    qsort(all, total, sizeof *all, cmp_u64);
    *per_s = (double)total / elapsed;
    *p50 = pct_us(all, total, 50);
    *p99 = pct_us(all, total, 99);
    free(all);
}

/* ---- in-process ---- */

struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
    int status;
};

static void on_done(void *arg, const struct etf_task_record *rec)
{
    struct waiter *w = rec->user;
    (void)arg;
    pthread_mutex_lock(&w->lock);
    w->done = true;
    w->status = rec->status;
    pthread_cond_signal(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

static uint64_t inproc_infer_ns(struct etf_sched *s, uint64_t mid, struct waiter *w)
{
    struct etf_request req = {.mid = mid, .user = w};
    struct etf_diag diag;
    uint64_t t0 = etf_host_ns();
    w->done = false;
    if (etf_submit(s, &req, NULL, &diag))
        die("etf_submit: %s", diag.msg);
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
    uint64_t ns = etf_host_ns() - t0;
    if (w->status)
        die("in-process task failed: %s", etf_strerror(w->status));
    return ns;
}

/* The same model through libetf directly: the sim device without a virtual clock (it
 * sleeps for the kernel, as in etfd), a started dispatcher, completion on a condition
 * variable, as a server thread would wait. */
static void inproc_round_trips(uint64_t *ns)
{
    struct etf_diag diag;
    struct etf_device *dev;
    struct etf_device_config dcfg = {0};
    if (etf_device_open("sim", &dcfg, &dev, &diag))
        die("%s", diag.msg);
    struct etf_sched_config cfg = {
        .quantum_ns = 40000000, .phi = 0.5, .device = dev, .on_done = on_done};
    struct etf_sched *s;
    if (etf_sched_create(&cfg, &s, &diag))
        die("%s", diag.msg);
    uint64_t eid, mid;
    struct etf_model_spec spec = {.freq_hz = FREQ_HZ};
    if (etf_profile_parse(tiny_profile, strlen(tiny_profile), "tiny", &spec.profile, &diag) ||
        etf_entity_create(s, 0, &eid, &diag))
        die("%s", diag.msg);
    if (etf_model_load(s, eid, &spec, &mid, &diag)) {
        etf_profile_free(spec.profile);
        die("%s", diag.msg);
    }
    if (etf_sched_start(s) != 0)
        die("cannot start the dispatcher");
    struct waiter w = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    for (int i = 0; i < WARMUP; i++)
        inproc_infer_ns(s, mid, &w);
    for (int i = 0; i < ROUND_TRIPS; i++)
        ns[i] = inproc_infer_ns(s, mid, &w);
    etf_sched_stop(s, 1000000000ull);
    etf_sched_destroy(s);
    etf_device_close(dev);
    pthread_mutex_destroy(&w.lock);
    pthread_cond_destroy(&w.cond);
}

int main(int argc, char **argv)
{
    double seconds = 3;
    if (argc < 2 || argc > 3 ||
        (argc == 3 &&
         (sscanf(argv[2], "%lf", &seconds) != 1 || !(seconds > 0 && seconds <= 600)))) {
        fprintf(stderr, "usage: bench-rpc PATH-TO-ETFD [SECONDS (0, 600], default 3]\n");
        return 2;
    }
    /* A client killed mid-call must not take this process with it. */
    signal(SIGPIPE, SIG_IGN);
    snprintf(g_dir, sizeof g_dir, "%s", "/tmp/etf_bench_rpc.XXXXXX");
    if (!mkdtemp(g_dir)) {
        g_dir[0] = '\0';
        die("mkdtemp: %s", strerror(errno));
    }
    char path[128], target[64];
    snprintf(path, sizeof path, "%s/tiny.json", g_dir);
    write_file(path, tiny_profile);
    start_etfd(argv[1], target, sizeof target);

    static uint64_t rpc[ROUND_TRIPS], local[ROUND_TRIPS];
    rpc_round_trips(target, rpc);
    inproc_round_trips(local);
    qsort(rpc, ROUND_TRIPS, sizeof *rpc, cmp_u64);
    qsort(local, ROUND_TRIPS, sizeof *local, cmp_u64);
    double per_s, p50, p99;
    rpc_throughput(target, seconds, &per_s, &p50, &p99);
    cleanup();

    printf("Infer round trip, one %d us kernel on the sim device, %d requests, 1 client:\n",
           KERNEL_US, ROUND_TRIPS);
    printf("%-22s %10s %10s\n", "", "p50 us", "p99 us");
    printf("%-22s %10.1f %10.1f\n", "etfd over gRPC", pct_us(rpc, ROUND_TRIPS, 50),
           pct_us(rpc, ROUND_TRIPS, 99));
    printf("%-22s %10.1f %10.1f\n", "libetf in-process", pct_us(local, ROUND_TRIPS, 50),
           pct_us(local, ROUND_TRIPS, 99));
    printf("%-22s %10.1f %10.1f\n", "added by RPC",
           pct_us(rpc, ROUND_TRIPS, 50) - pct_us(local, ROUND_TRIPS, 50),
           pct_us(rpc, ROUND_TRIPS, 99) - pct_us(local, ROUND_TRIPS, 99));
    printf("\n%d concurrent clients for %.1f s:\n", CLIENTS, seconds);
    printf("%-22s %10.0f\n", "infer/s", per_s);
    printf("%-22s %10.1f\n", "p50 us", p50);
    printf("%-22s %10.1f\n", "p99 us", p99);
    return 0;
}
