/* etf-profile: measures a model kernel by kernel at each clock frequency and writes its
 * profile in the original ETF format (see etf/profiler.h for how). Progress shows as a bar
 * on a terminal, as one line per frequency otherwise; an interrupted run (SIGINT, SIGTERM)
 * keeps what it measured, puts the clock back, and the same command resumes it. */
#include "etf/model.h"
#include "etf/profile.h"
#include "etf/profiler.h"
#include "etf/sched.h"

#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXIT_USAGE 2
#define BAR_WIDTH 30

struct options {
    const char *model, *device, *out, *freqs;
    int threads;
    size_t batch;
    long min_time_ms, warmup;
    bool restart;
    struct etf_cli_hw hw; /* meter "none" and freq by the device when not given */
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: etf-profile MODEL --out PROFILE.json [--device cpu|cuda|sim] [--threads N]\n"
        "                   [--batch B] [--freq none|sim|devfreq|cpufreq|nvml]\n"
        "                   [--freqs all|HZ,HZ,...] [--meter none|model|nvml|ina3221|hwmon|rapl]\n"
        "                   [--rail NAME] [--sysfs-root DIR] [--journal FILE]\n"
        "                   [--allow-gpu-clock-changes] [--min-time-ms MS] [--warmup N]\n"
        "                   [--restart]\n"
        "Runs each kernel of MODEL (an ONNX file; with --device sim a profile) alone for at\n"
        "least MS milliseconds (default 1000) at each frequency (--freqs all: every one the\n"
        "controller offers; none: the clock in force) and writes the kernels' mean time and,\n"
        "where the meter measures, their power to PROFILE.json. Progress is kept in\n"
        "PROFILE.json.partial: after an interruption the same command resumes; --restart\n"
        "starts over. Clocks are put back at exit.\n");
}

#define PROG "etf-profile"
#define fail(...) etf_cli_fail(PROG, __VA_ARGS__)

/* "all", or frequencies in Hz separated by commas. *hz is the caller's to free. */
static int parse_freqs(const char *s, uint64_t **hz, size_t *n, bool *all)
{
    *all = strcmp(s, "all") == 0;
    *hz = NULL;
    *n = 0;
    if (*all)
        return 0;
    size_t cap = 1;
    for (const char *c = s; *c; c++)
        cap += *c == ',';
    if (!(*hz = calloc(cap, sizeof **hz)))
        return fail(1, "out of memory");
    for (const char *c = s;; c++) {
        char *end;
        errno = 0;
        if (*c < '0' || *c > '9')
            goto bad;
        unsigned long long v = strtoull(c, &end, 10);
        if (errno || v == 0 || (*end != ',' && *end != '\0'))
            goto bad;
        (*hz)[(*n)++] = v;
        if (*end == '\0')
            return 0;
        c = end;
    }
bad:
    free(*hz);
    *hz = NULL;
    return fail(EXIT_USAGE,
                "--freqs: expected 'all' or frequencies in Hz separated by commas "
                "(\"726750000,1300500000\"), found '%s'",
                s);
}

static int parse_args(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, 'b'},
        {"freqs", required_argument, NULL, 'F'},
        ETF_CLI_HW_OPTIONS,
        {"min-time-ms", required_argument, NULL, 'm'},
        {"warmup", required_argument, NULL, 'w'},
        {"restart", no_argument, NULL, 'r'},
        {"out", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.device = "cpu", .hw.meter = "none", .min_time_ms = 1000, .warmup = 2};
    int c;
    long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->device = optarg;
            break;
        case 'F':
            o->freqs = optarg;
            break;
        case 'r':
            o->restart = true;
            break;
        case 'o':
            o->out = optarg;
            break;
        case 't':
            if (!etf_cli_threads(PROG, optarg, &o->threads))
                return EXIT_USAGE;
            break;
        case 'b':
            if (!etf_cli_batch(PROG, optarg, &o->batch))
                return EXIT_USAGE;
            break;
        case 'm':
            if (!etf_cli_long(optarg, 1, 3600000, &v))
                return fail(EXIT_USAGE, "--min-time-ms: expected 1..3600000, found '%s'", optarg);
            o->min_time_ms = v;
            break;
        case 'w':
            if (!etf_cli_long(optarg, 0, 1000, &v))
                return fail(EXIT_USAGE, "--warmup: expected 0..1000, found '%s'", optarg);
            o->warmup = v;
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
    if (optind != argc - 1) {
        usage(stderr);
        return fail(EXIT_USAGE, "expected exactly one MODEL, found %d", argc - optind);
    }
    o->model = argv[optind];
    if (!o->out)
        return fail(EXIT_USAGE, "--out PROFILE.json is required");
    if (!o->out[0])
        return fail(EXIT_USAGE, "--out: expected a file name, found ''");
    if (!o->hw.freq)
        o->hw.freq = strcmp(o->device, "sim") == 0 ? "sim" : "none";
    return 0;
}

/* ---- Progress ---- */

struct display {
    bool tty;
    bool bar_shown; /* a bar is on the current line */
    const char *out;
    const char *freq, *meter;
    uint64_t min_time_ms;
    uint64_t started_ns;
    size_t done_at_start;      /* measurements an earlier run made */
    double model_ms, model_mj; /* of the frequency in progress, over its kernels so far */
    size_t kernels_seen;       /* ... measured by this run */
    bool whole;                /* ... all of its kernels measured by this run */
};

static void end_bar(struct display *d)
{
    if (d->bar_shown)
        fputc('\n', stderr);
    d->bar_shown = false;
}

static void show_bar(struct display *d, const struct etf_profiler_event *ev, const char *what)
{
    size_t filled = ev->total ? ev->done * BAR_WIDTH / ev->total : 0;
    char bar[BAR_WIDTH + 1];
    memset(bar, '#', filled);
    memset(bar + filled, '.', BAR_WIDTH - filled);
    bar[BAR_WIDTH] = '\0';
    char eta[32] = "";
    size_t made = ev->done - d->done_at_start;
    if (made > 0 && ev->done < ev->total) {
        double per = (double)(etf_host_ns() - d->started_ns) / 1e9 / (double)made;
        double left = per * (double)(ev->total - ev->done);
        snprintf(eta, sizeof eta, "  ETA %dm%02ds", (int)(left / 60), (int)left % 60);
    }
    fprintf(stderr, "\r[%s] %3zu%% %zu/%zu  %" PRIu64 " Hz  %-.40s%s\033[K", bar,
            ev->total ? ev->done * 100 / ev->total : 100, ev->done, ev->total, ev->hz, what, eta);
    fflush(stderr);
    d->bar_shown = true;
}

static void describe_start(struct display *d, const struct etf_profiler_event *ev)
{
    fprintf(stderr,
            "etf-profile: %s (%zu kernels): %zu frequenc%s x %zu kernels, each kernel at "
            "least %" PRIu64 " ms; ",
            ev->model, ev->n_kernels, ev->n_freqs, ev->n_freqs == 1 ? "y" : "ies", ev->n_kernels,
            d->min_time_ms);
    if (ev->power)
        fprintf(stderr, "power from the %s meter\n", d->meter);
    else if (strcmp(d->meter, "none") == 0)
        fprintf(stderr, "no power figures (no meter: --meter none)\n");
    else
        fprintf(stderr, "no power figures (the %s meter measures nothing)\n", d->meter);
    switch (ev->clock) {
    case ETF_PROFILER_CLOCK_SET:
        fprintf(stderr,
                "etf-profile: the %s controller sets each clock, and puts back the one "
                "it found at exit\n",
                d->freq);
        break;
    case ETF_PROFILER_CLOCK_GIVEN:
        fprintf(stderr,
                "etf-profile: the %s controller cannot set the clock: measuring at the "
                "clock in force, recorded as the frequency given\n",
                d->freq);
        break;
    case ETF_PROFILER_CLOCK_CONTROLLER:
        fprintf(stderr,
                "etf-profile: measuring at the clock in force, as the %s controller "
                "reads it (no --freqs)\n",
                d->freq);
        break;
    case ETF_PROFILER_CLOCK_CPUINFO:
        fprintf(stderr,
                "etf-profile: the %s controller cannot set or read the clock: measuring "
                "at the clock in force, recorded as the CPU's clock in /proc/cpuinfo\n",
                d->freq);
        break;
    }
    if (ev->resumed)
        fprintf(stderr,
                "etf-profile: resuming %s.partial: %zu of %zu measurements done, "
                "skipping them\n",
                d->out, ev->resumed, ev->total);
}

static void print_summary(const struct etf_profile *p, const char *out, const char *meter)
{
    printf("profile %s: %s, %zu kernels at %zu frequenc%s, %s\n", out, p->model_name, p->n_kernels,
           p->n_freqs, p->n_freqs == 1 ? "y" : "ies",
           p->has_power ? "with power" : "without power figures");
    if (p->has_power)
        printf("%14s %12s %12s %12s\n", "frequency_hz", "time_ms", "power_mw", "energy_mj");
    else
        printf("%14s %12s\n", "frequency_hz", "time_ms");
    for (size_t f = 0; f < p->n_freqs; f++) {
        printf("%14" PRIu64 " %12.3f", p->freqs_hz[f], p->time_us[f] / 1000.0);
        if (p->has_power)
            printf(" %12.1f %12.3f", p->power_mw[f], p->energy_uj[f] / 1000.0);
        printf("\n");
    }
    if (!p->has_power && strcmp(meter, "none") == 0)
        printf("(no meter: gpu_power and energy are omitted)\n");
    else if (!p->has_power)
        printf("(the %s meter measures nothing: gpu_power and energy are omitted)\n", meter);
}

static void on_event(void *arg, const struct etf_profiler_event *ev)
{
    struct display *d = arg;
    switch (ev->kind) {
    case ETF_PROFILER_START:
        d->done_at_start = ev->resumed;
        d->started_ns = etf_host_ns();
        describe_start(d, ev);
        break;
    case ETF_PROFILER_FREQ:
        d->model_ms = d->model_mj = 0;
        d->kernels_seen = 0;
        if (d->tty)
            show_bar(d, ev, "warmed up");
        else
            fprintf(stderr, "etf-profile: %" PRIu64 " Hz (%zu/%zu): measuring\n", ev->hz,
                    ev->freq_index + 1, ev->n_freqs);
        break;
    case ETF_PROFILER_KERNEL:
        if (d->kernels_seen++ == 0)
            d->whole = ev->kernel_index == 0;
        d->model_ms += ev->time_us / 1000.0;
        d->model_mj += ev->time_us * ev->power_mw / 1e6; /* µs x mW = nJ, / 1e6 = mJ */
        if (d->tty) {
            show_bar(d, ev, ev->kernel);
        } else if (ev->kernel_index + 1 == ev->n_kernels) {
            /* Kernels measured by an earlier run are not in the sum: say it only when whole. */
            fprintf(stderr, "etf-profile: %" PRIu64 " Hz (%zu/%zu): done (%zu/%zu measurements)",
                    ev->hz, ev->freq_index + 1, ev->n_freqs, ev->done, ev->total);
            if (d->whole && ev->power)
                fprintf(stderr, ", model %.3f ms at %.1f mW", d->model_ms,
                        d->model_mj / d->model_ms * 1000.0);
            else if (d->whole)
                fprintf(stderr, ", model %.3f ms", d->model_ms);
            fputc('\n', stderr);
        }
        break;
    case ETF_PROFILER_DONE:
        end_bar(d);
        print_summary(ev->profile, d->out, d->meter);
        break;
    }
}

/* ---- Signals ---- */

static volatile sig_atomic_t stop_signal;

static void on_signal(int sig)
{
    stop_signal = sig;
}

/* A backend that does not exist or refuses its settings is a usage error. */
static int open_status(int rc)
{
    return rc == ETF_ENOTSUP || rc == ETF_EINVAL ? EXIT_USAGE : 1;
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;
    uint64_t *freqs = NULL;
    size_t n_freqs = 0;
    bool all = false;
    if (o.freqs && (rc = parse_freqs(o.freqs, &freqs, &n_freqs, &all)))
        return rc;

    /* The first signal stops after the kernel in progress; a second one (the handler is reset
     * by then) ends the process at once, and the journal puts the clock back later. */
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESETHAND};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);

    struct etf_freq_config freq_cfg = {.sysfs.root = o.hw.sysfs_root,
                                       .journal_path = o.hw.journal,
                                       .allow_clock_changes = o.hw.allow_clock_changes};
    struct etf_meter_config meter_cfg = {.rail = o.hw.rail, .sysfs.root = o.hw.sysfs_root};
    int exit_code = EXIT_USAGE;
    struct etf_diag diag;
    struct etf_plan *plan = NULL;
    struct etf_profile *sim_profile = NULL;
    struct etf_device *dev = NULL;
    struct etf_freq *freq = NULL;
    struct etf_meter *meter = NULL;
    struct etf_device_config dcfg = {.threads = o.threads};
    if ((rc = etf_device_open(o.device, &dcfg, &dev, &diag))) {
        exit_code = fail(open_status(rc), "%s", diag.msg);
        goto out;
    }
    if (strcmp(o.device, "sim") == 0) {
        if (etf_profile_load(o.model, &sim_profile, &diag)) {
            fail(EXIT_USAGE, "%s (with --device sim, MODEL is a profile to simulate)", diag.msg);
            goto out;
        }
        /* The simulated device runs the clocks its profile covers; it starts at the top. */
        freq_cfg.available_hz = sim_profile->freqs_hz;
        freq_cfg.n_available_hz = sim_profile->n_freqs;
        freq_cfg.initial_hz = sim_profile->freqs_hz[sim_profile->n_freqs - 1];
    } else {
        struct etf_model_options mopts = {.batch = o.batch};
        if (etf_model_open(o.model, &mopts, &plan, &diag)) {
            fail(EXIT_USAGE, "%s", diag.msg);
            goto out;
        }
    }
    if ((rc = etf_freq_open(o.hw.freq, &freq_cfg, &freq, &diag))) {
        exit_code = fail(open_status(rc), "%s", diag.msg);
        goto out;
    }
    if (strcmp(o.hw.meter, "none") != 0 &&
        (rc = etf_meter_open(o.hw.meter, &meter_cfg, &meter, &diag))) {
        exit_code = fail(open_status(rc), "%s", diag.msg);
        goto out;
    }

    char setup[160];
    snprintf(setup, sizeof setup, "threads %d, batch %zu, rail %s", o.threads, o.batch,
             o.hw.rail ? o.hw.rail : "default");
    struct display d = {.tty = isatty(STDERR_FILENO),
                        .out = o.out,
                        .freq = o.hw.freq,
                        .meter = o.hw.meter,
                        .min_time_ms = (uint64_t)o.min_time_ms};
    struct etf_profiler_config pcfg = {
        .out_path = o.out,
        .device = dev,
        .freq = freq,
        .meter = meter,
        .plan = plan,
        .sim_profile = sim_profile,
        .freqs_hz = freqs,
        .n_freqs = n_freqs,
        .all_freqs = all,
        .min_time_ns = (uint64_t)o.min_time_ms * 1000000u,
        .warmup = (unsigned)o.warmup,
        .setup = setup,
        .restart = o.restart,
        .on_event = on_event,
        .on_event_arg = &d,
        .stop = &stop_signal,
    };
    rc = etf_profiler_run(&pcfg, &diag);
    end_bar(&d);
    if (rc == ETF_ESHUTDOWN) {
        exit_code = 128 + stop_signal;
        fail(exit_code, "%s: %s; the same command resumes",
             stop_signal == SIGINT ? "SIGINT" : "SIGTERM", diag.msg);
    } else if (rc) {
        exit_code = fail(rc == ETF_EINVAL ? EXIT_USAGE : 1, "%s", diag.msg);
    } else {
        exit_code = 0;
    }

out:
    /* Closing the controller puts the clock back. */
    etf_meter_close(meter);
    etf_freq_close(freq);
    etf_device_close(dev);
    etf_plan_free(plan);
    etf_profile_free(sim_profile);
    free(freqs);
    return exit_code;
}
