/* etfd: the ETF inference server. Serves efair.rpc.EFairService over gRPC, schedules the
 * clients' inferences with ETF, and at SIGINT/SIGTERM drains, prints the original
 * summary per model (then time and energy per frequency) and writes results/runN/tasks.csv.
 *
 *   etfd --quantum-us 40000 --phi 0.7 --device cpu|cuda|sim --models DIR
 *        [--listen 127.0.0.1:10086] [--threads N] [--max-message-bytes N]
 *        [--max-queued N] [--drain-s S] [--results DIR]
 *   etfd 40000 0.7 gpu|cpu          (the original form; models from ./models)
 *
 * Signals are blocked in every thread and taken by sigwait in the main thread, so no code
 * runs in a signal handler.
 */
#include "rpc/grpc_common.h"
#include "rpc/server.h"
#include "rpc/service.h"

#include "etf/sched.h"

#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define EXIT_USAGE 2
#define DEFAULT_LISTEN "127.0.0.1:10086"
#define DEFAULT_MODELS "./models"
#define DEFAULT_DRAIN_S 10.0
#define MAX_QUANTUM_US 1000000000ull

struct options {
    uint64_t quantum_us;
    double phi;
    const char *device;
    const char *models;
    const char *listen;
    const char *results;
    int threads;
    size_t max_message;
    size_t max_queued;
    double drain_s;
    bool have_quantum, have_phi;
    struct etf_cli_hw hw; /* meter and freq NULL: the service's defaults */
    bool restore_clocks;
};

static void usage(FILE *f)
{
    fprintf(f,
            "usage: etfd --quantum-us Q --phi P --device cpu|cuda|sim --models DIR\n"
            "            [--listen HOST:PORT] [--threads N] [--max-message-bytes N]\n"
            "            [--max-queued N] [--drain-s S] [--results DIR]\n"
            "            [--meter model|nvml|ina3221|hwmon|rapl] [--rail NAME]\n"
            "            [--freq none|sim|devfreq|cpufreq|nvml] [--allow-gpu-clock-changes]\n"
            "            [--sysfs-root DIR] [--journal FILE]\n"
            "       etfd --restore-clocks [--sysfs-root DIR] [--journal FILE]\n"
            "            (puts back the clocks a crashed etfd left changed; for ExecStopPost)\n"
            "       etfd Q P gpu|cpu        (the original form; models from " DEFAULT_MODELS ")\n"
            "Serves efair.rpc.EFairService on HOST:PORT (default " DEFAULT_LISTEN
            "; port 0 = any free\n"
            "port). Models load from DIR only. SIGINT or SIGTERM drains the tasks in flight\n"
            "(at most --drain-s seconds, default 10), prints a summary per model and per\n"
            "frequency and writes RESULTS/runN/tasks.csv (RESULTS default ./results). --freq\n"
            "nvml locks the GPU's clocks (root only) and opens only with\n"
            "--allow-gpu-clock-changes; clocks are put back at exit.\n");
}

#define PROG "etfd"
#define fail(...) etf_cli_fail(PROG, __VA_ARGS__)

static bool device_built(const char *name)
{
    for (const char *const *n = etf_device_names(); *n; n++) {
        if (strcmp(*n, name) == 0)
            return true;
    }
    return false;
}

static void device_list(char *buf, size_t size)
{
    size_t len = 0;
    buf[0] = '\0';
    for (const char *const *n = etf_device_names(); *n && len < size; n++)
        len += (size_t)snprintf(buf + len, size - len, "%s%s", len ? ", " : "", *n);
}

static int parse_quantum(const char *s, struct options *o)
{
    if (!etf_cli_u64(s, 1, MAX_QUANTUM_US, &o->quantum_us))
        return fail(EXIT_USAGE, "quantum: expected microseconds in 1..%llu, found '%s'",
                    (unsigned long long)MAX_QUANTUM_US, s);
    o->have_quantum = true;
    return 0;
}

static int parse_phi(const char *s, struct options *o)
{
    if (!etf_cli_double(s, 0, 1, &o->phi))
        return fail(EXIT_USAGE, "phi: expected a number in [0, 1], found '%s'", s);
    o->have_phi = true;
    return 0;
}

static int parse_args(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"quantum-us", required_argument, NULL, 'q'},
        {"phi", required_argument, NULL, 'p'},
        {"device", required_argument, NULL, 'd'},
        {"models", required_argument, NULL, 'm'},
        {"listen", required_argument, NULL, 'l'},
        {"threads", required_argument, NULL, 't'},
        {"max-message-bytes", required_argument, NULL, 'M'},
        {"max-queued", required_argument, NULL, 'Q'},
        {"drain-s", required_argument, NULL, 'D'},
        {"results", required_argument, NULL, 'r'},
        ETF_CLI_HW_OPTIONS,
        {"restore-clocks", no_argument, NULL, 'R'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.listen = DEFAULT_LISTEN,
                          .results = "results",
                          .max_message = ETF_RPC_DEFAULT_MAX_MESSAGE,
                          .drain_s = DEFAULT_DRAIN_S};
    int c, rc;
    uint64_t v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'q':
            if ((rc = parse_quantum(optarg, o)))
                return rc;
            break;
        case 'p':
            if ((rc = parse_phi(optarg, o)))
                return rc;
            break;
        case 'd':
            o->device = optarg;
            break;
        case 'm':
            o->models = optarg;
            break;
        case 'l':
            o->listen = optarg;
            break;
        case 'r':
            o->results = optarg;
            break;
        case 'R':
            o->restore_clocks = true;
            break;
        case 't':
            if (!etf_cli_threads(PROG, optarg, &o->threads))
                return EXIT_USAGE;
            break;
        case 'M':
            if (!etf_cli_u64(optarg, 1024, INT_MAX, &v))
                return fail(EXIT_USAGE, "--max-message-bytes: expected 1024..%d, found '%s'",
                            INT_MAX, optarg);
            o->max_message = (size_t)v;
            break;
        case 'Q':
            if (!etf_cli_u64(optarg, 1, 100000000, &v))
                return fail(EXIT_USAGE, "--max-queued: expected 1..100000000, found '%s'", optarg);
            o->max_queued = (size_t)v;
            break;
        case 'D':
            if (!etf_cli_double(optarg, 0, 86400, &o->drain_s))
                return fail(EXIT_USAGE, "--drain-s: expected seconds in [0, 86400], found '%s'",
                            optarg);
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            if (etf_cli_hw_option(&o->hw, c, optarg))
                break;
            usage(stderr);
            return fail(EXIT_USAGE, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }

    if (o->restore_clocks)
        return optind == argc ? 0 : fail(EXIT_USAGE, "--restore-clocks takes no arguments");
    int positional = argc - optind;
    if (positional != 0 && positional != 3) {
        usage(stderr);
        return fail(EXIT_USAGE,
                    "expected options, or exactly QUANTUM_US PHI gpu|cpu; found %d "
                    "argument(s)",
                    positional);
    }
    if (positional == 3) {
        /* The original command line: etfd 40000 0.7 gpu|cpu. */
        if (o->have_quantum || o->have_phi || o->device)
            return fail(EXIT_USAGE, "give the quantum, phi and device either as options or as "
                                    "the three arguments of the original form, not both");
        if ((rc = parse_quantum(argv[optind], o)) || (rc = parse_phi(argv[optind + 1], o)))
            return rc;
        const char *dev = argv[optind + 2];
        if (strcmp(dev, "gpu") == 0)
            o->device = "cuda";
        else if (strcmp(dev, "cpu") == 0 || strcmp(dev, "sim") == 0)
            o->device = dev;
        else
            return fail(EXIT_USAGE, "device: expected gpu or cpu, found '%s'", dev);
        if (!o->models)
            o->models = DEFAULT_MODELS;
    }
    if (!o->have_quantum)
        return fail(EXIT_USAGE, "--quantum-us is required");
    if (!o->have_phi)
        return fail(EXIT_USAGE, "--phi is required");
    if (!o->device)
        return fail(EXIT_USAGE, "--device is required (cpu, cuda or sim)");
    if (!o->models)
        return fail(EXIT_USAGE, "--models is required: the folder models are loaded from");
    if (!device_built(o->device)) {
        char have[128];
        device_list(have, sizeof have);
        return fail(EXIT_USAGE, "device '%s' is not available in this build (have: %s)%s",
                    o->device, have,
                    strcmp(o->device, "cuda") == 0 ? "; 'gpu' needs a build with CUDA" : "");
    }
    const char *colon = strrchr(o->listen, ':');
    if (!colon || colon == o->listen || !colon[1])
        return fail(EXIT_USAGE, "--listen: expected HOST:PORT, found '%s'", o->listen);
    return 0;
}

/* The host part of HOST:PORT, for the listening line. */
static void listen_host(const char *listen, char *buf, size_t size)
{
    const char *colon = strrchr(listen, ':');
    snprintf(buf, size, "%.*s", (int)(colon - listen), listen);
}

static bool is_loopback(const char *host)
{
    return strcmp(host, "localhost") == 0 || strncmp(host, "127.", 4) == 0 ||
           strcmp(host, "[::1]") == 0;
}

/* Creates RESULTS/runN (N the first unused) and writes tasks.csv in it. */
static int write_results(struct etf_service *svc, const char *results)
{
    char dir[PATH_MAX], path[PATH_MAX + 16];
    if (mkdir(results, 0777) != 0 && errno != EEXIST)
        return fail(1, "cannot create %s: %s", results, strerror(errno));
    for (unsigned n = 0;; n++) {
        if (snprintf(dir, sizeof dir, "%s/run%u", results, n) >= (int)sizeof dir)
            return fail(1, "results folder name too long");
        if (mkdir(dir, 0777) == 0)
            break;
        if (errno != EEXIST)
            return fail(1, "cannot create %s: %s", dir, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/tasks.csv", dir);
    FILE *f = fopen(path, "w");
    if (!f)
        return fail(1, "cannot create %s: %s", path, strerror(errno));
    struct etf_diag diag;
    int rc = etf_service_write_tasks_csv(svc, f, &diag);
    if (fclose(f) != 0 && rc == 0)
        rc = etf_diagf(&diag, ETF_EIO, "%s: write failed", path);
    if (rc)
        return fail(1, "%s", diag.msg);
    fprintf(stderr, "etfd: %zu task(s) written to %s\n", etf_service_tasks_finished(svc), path);
    return 0;
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;

    /* Before any thread exists, so that every thread inherits the mask and only sigwait
     * below receives these. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    if (pthread_sigmask(SIG_BLOCK, &set, NULL) != 0)
        return fail(1, "cannot block signals");
    /* A shell starts background jobs with SIGINT ignored, and an ignored signal is
     * discarded rather than left pending for sigwait: take both back to their default. */
    struct sigaction dfl = {.sa_handler = SIG_DFL}, ign = {.sa_handler = SIG_IGN};
    sigaction(SIGINT, &dfl, NULL);
    sigaction(SIGTERM, &dfl, NULL);
    sigaction(SIGPIPE, &ign, NULL);

    struct etf_meter_config meter_cfg = {.rail = o.hw.rail, .sysfs.root = o.hw.sysfs_root};
    struct etf_freq_config freq_cfg = {.sysfs.root = o.hw.sysfs_root,
                                       .journal_path = o.hw.journal,
                                       .allow_clock_changes = o.hw.allow_clock_changes};
    struct etf_diag diag;
    if (o.restore_clocks) {
        if (etf_freq_restore_journal(&freq_cfg, &diag))
            return fail(1, "%s", diag.msg);
        printf("etfd: clocks restored (or nothing to restore)\n");
        return 0;
    }
    struct etf_service *svc = NULL;
    struct etf_server *srv = NULL;
    struct etf_service_config scfg = {
        .device = o.device,
        .models_dir = o.models,
        .quantum_ns = o.quantum_us * 1000u,
        .phi = o.phi,
        .device_threads = o.threads,
        .max_queued = o.max_queued,
        .meter = o.hw.meter,
        .freq = o.hw.freq,
        .meter_cfg = &meter_cfg,
        .freq_cfg = &freq_cfg,
    };
    if ((rc = etf_service_create(&scfg, &svc, &diag)))
        return fail(rc == ETF_ENOMEM || rc == ETF_EDEVICE ? 1 : EXIT_USAGE, "%s", diag.msg);
    if (etf_service_start(svc, &diag)) {
        etf_service_destroy(svc);
        return fail(1, "%s", diag.msg);
    }
    struct etf_server_config cfg = {.listen = o.listen, .max_message = o.max_message};
    int port = 0;
    if (etf_server_start(&cfg, svc, &srv, &port, &diag)) {
        etf_service_destroy(svc);
        return fail(1, "%s", diag.msg);
    }

    char host[256];
    struct etf_service_info info;
    listen_host(o.listen, host, sizeof host);
    etf_service_info(svc, &info);
    if (!is_loopback(host))
        fprintf(stderr,
                "etfd: warning: listening on %s, beyond loopback: whoever reaches it can "
                "load models from %s and run tasks\n",
                host, o.models);
    printf("etfd: listening on %s:%d (device %s, meter %s, freq %s, %" PRIu64 " us, phi %g)\n",
           host, port, info.device, info.meter, info.freq, o.quantum_us, o.phi);
    fflush(stdout);

    int sig = 0;
    while (sigwait(&set, &sig) != 0)
        ;
    fprintf(stderr, "etfd: %s: draining (at most %g s)\n", sig == SIGINT ? "SIGINT" : "SIGTERM",
            o.drain_s);
    etf_server_shutdown(srv, (uint64_t)llround(o.drain_s * 1e9));

    int exit_code = 0;
    if (etf_service_print_summary(svc, stdout) != 0)
        exit_code = fail(1, "cannot print the summary");
    if (write_results(svc, o.results))
        exit_code = 1;
    etf_server_destroy(srv);
    etf_service_destroy(svc);
    return exit_code;
}
