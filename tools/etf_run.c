/* etf-run: runs one ONNX model on a device through the scheduler, kernel by kernel, and
 * reports latency percentiles and a per-kernel breakdown; optionally writes the output
 * tensor and a profile of the measured kernel times in the original ETF format. */
#include "etf/model.h"
#include "etf/profile.h"
#include "etf/profiler.h"
#include "etf/sched.h"

#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#define EXIT_USAGE 2

struct options {
    const char *model, *device, *input, *output, *profile_out;
    int threads;
    size_t batch;
    long iters, warmup;
    bool resident;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: etf-run MODEL.onnx [--device cpu] [--threads N] [--batch B]\n"
               "               [--input FILE] [--output FILE] [--iters N] [--warmup N]\n"
               "               [--resident] [--profile-out PROFILE.json]\n"
               "Runs MODEL kernel by kernel and prints latency (p50/p90/p99) and the time\n"
               "of each kernel. FILEs are raw little-endian fp32 in C order. Latency spans\n"
               "the input in host memory to the output in host memory; --resident times\n"
               "runs that leave both on the device (the warm-up runs copy them).\n");
}

#define PROG "etf-run"
#define fail(...) etf_cli_fail(PROG, __VA_ARGS__)

static int parse_args(int argc, char **argv, struct options *o)
{
    static const struct option longs[] = {
        {"device", required_argument, NULL, 'd'},
        {"threads", required_argument, NULL, 't'},
        {"batch", required_argument, NULL, 'b'},
        {"input", required_argument, NULL, 'i'},
        {"output", required_argument, NULL, 'o'},
        {"iters", required_argument, NULL, 'n'},
        {"warmup", required_argument, NULL, 'w'},
        {"profile-out", required_argument, NULL, 'p'},
        {"resident", no_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct options){.device = "cpu", .iters = 20, .warmup = 2};
    int c;
    long v;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", longs, NULL)) != -1) {
        switch (c) {
        case 'd':
            o->device = optarg;
            break;
        case 'i':
            o->input = optarg;
            break;
        case 'o':
            o->output = optarg;
            break;
        case 'p':
            o->profile_out = optarg;
            break;
        case 't':
            if (!etf_cli_threads(PROG, optarg, &o->threads))
                return EXIT_USAGE;
            break;
        case 'b':
            if (!etf_cli_batch(PROG, optarg, &o->batch))
                return EXIT_USAGE;
            break;
        case 'n':
            if (!etf_cli_long(optarg, 1, 100000000, &v))
                return fail(EXIT_USAGE, "--iters: expected 1..100000000, found '%s'", optarg);
            o->iters = v;
            break;
        case 'w':
            if (!etf_cli_long(optarg, 0, 100000, &v))
                return fail(EXIT_USAGE, "--warmup: expected 0..100000, found '%s'", optarg);
            o->warmup = v;
            break;
        case 'r':
            o->resident = true;
            break;
        case 'h':
            usage(stdout);
            exit(0);
        default:
            usage(stderr);
            return fail(EXIT_USAGE, "unknown or incomplete option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return fail(EXIT_USAGE, "expected exactly one MODEL.onnx");
    }
    o->model = argv[optind];
    if (o->resident && o->warmup < 1)
        return fail(EXIT_USAGE, "--resident: needs a warm-up run (--warmup 1 or more) to copy "
                                "the input to the device");
    return 0;
}

/* Reads exactly `floats` fp32 values from path. */
static int read_tensor(const char *path, float *dst, size_t floats)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(EXIT_USAGE, "--input %s: %s", path, strerror(errno));
    size_t got = fread(dst, sizeof *dst, floats, f);
    int extra = fgetc(f);
    fclose(f);
    if (got != floats || extra != EOF)
        return fail(EXIT_USAGE, "--input %s: expected %zu bytes (%zu fp32 values), the file has %s",
                    path, floats * sizeof *dst, floats, got != floats ? "fewer" : "more");
    return 0;
}

static int write_tensor(const char *path, const float *src, size_t floats)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return fail(1, "--output %s: %s", path, strerror(errno));
    size_t put = fwrite(src, sizeof *src, floats, f);
    if (fclose(f) != 0 || put != floats)
        return fail(1, "--output %s: write failed", path);
    return 0;
}

struct run_state {
    uint64_t *latency_ns; /* end - start of each measured task */
    long done, warmup;
    int status;
};

static void on_done(void *arg, const struct etf_task_record *rec)
{
    struct run_state *st = arg;
    if (rec->status) {
        st->status = rec->status;
        return;
    }
    if (st->done >= st->warmup)
        st->latency_ns[st->done - st->warmup] = rec->end_ns - rec->start_ns;
    st->done++;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static double percentile_ms(const uint64_t *sorted, size_t n, double p)
{
    size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (rank < 1)
        rank = 1;
    return (double)sorted[rank - 1] / 1e6;
}

static int write_profile(const char *path, const struct etf_plan *plan, struct etf_sched *s,
                         uint64_t mid, uint64_t hz)
{
    size_t n = etf_plan_kernel_count(plan);
    struct etf_profile p = {
        .model_name = (char *)etf_plan_name(plan), .n_freqs = 1, .freqs_hz = &hz, .n_kernels = n};
    double total = 0;
    p.kernels = calloc(n, sizeof *p.kernels);
    double *times = calloc(n, sizeof *times);
    if (!p.kernels || !times) {
        free(p.kernels);
        free(times);
        return fail(1, "out of memory");
    }
    for (size_t k = 0; k < n; k++) {
        uint64_t ns, runs;
        etf_model_kernel_stats(s, mid, k, &ns, &runs);
        times[k] = runs ? (double)ns / (double)runs / 1000.0 : 0;
        total += times[k];
        p.kernels[k] = (struct etf_kernel_profile){.name = (char *)etf_plan_kernel_name(plan, k),
                                                   .time_us = &times[k]};
    }
    p.time_us = &total;
    struct etf_diag diag;
    int rc = etf_profile_save(&p, path, &diag);
    free(p.kernels);
    free(times);
    return rc ? fail(1, "%s", diag.msg) : 0;
}

int main(int argc, char **argv)
{
    struct options o;
    int rc = parse_args(argc, argv, &o);
    if (rc)
        return rc;

    struct etf_diag diag;
    struct etf_plan *plan = NULL;
    struct etf_model_options mopts = {.batch = o.batch};
    uint64_t t0 = etf_host_ns();
    if ((rc = etf_model_open(o.model, &mopts, &plan, &diag)))
        return fail(EXIT_USAGE, "%s", diag.msg);
    double load_ms = (double)(etf_host_ns() - t0) / 1e6;

    size_t n_in = etf_plan_input_count(plan), n_out = etf_plan_output_count(plan);
    float **inputs = calloc(n_in, sizeof *inputs), **outputs = calloc(n_out, sizeof *outputs);
    struct etf_tensor_info info;
    int exit_code = 1;
    struct etf_device *dev = NULL;
    struct etf_freq *freq = NULL;
    struct etf_sched *s = NULL;
    struct run_state st = {.warmup = o.warmup};
    st.latency_ns = calloc((size_t)o.iters, sizeof *st.latency_ns);
    if (!inputs || !outputs || !st.latency_ns) {
        fail(1, "out of memory");
        goto out;
    }
    if (o.input && n_in != 1) {
        exit_code = fail(EXIT_USAGE, "--input: the model has %zu inputs; one file feeds one", n_in);
        goto out;
    }
    for (size_t i = 0; i < n_in; i++) {
        etf_plan_input(plan, i, &info);
        if (!(inputs[i] = malloc(info.elems * sizeof(float)))) {
            fail(1, "out of memory");
            goto out;
        }
        if (o.input) {
            if ((exit_code = read_tensor(o.input, inputs[i], info.elems)))
                goto out;
            exit_code = 1;
        } else {
            uint64_t x = 0x2545f4914f6cdd1du + i; /* fixed pseudo-random input */
            for (size_t j = 0; j < info.elems; j++) {
                x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                inputs[i][j] = (float)((double)(x >> 11) / 9007199254740992.0 * 2 - 1);
            }
        }
    }
    for (size_t i = 0; i < n_out; i++) {
        etf_plan_output(plan, i, &info);
        if (!(outputs[i] = calloc(info.elems, sizeof(float)))) {
            fail(1, "out of memory");
            goto out;
        }
    }

    struct etf_device_config dcfg = {.threads = o.threads};
    if (etf_device_open(o.device, &dcfg, &dev, &diag) ||
        etf_freq_open("none", NULL, &freq, &diag)) {
        exit_code = fail(EXIT_USAGE, "%s", diag.msg);
        goto out;
    }
    struct etf_sched_config cfg = {.quantum_ns = 1000000000,
                                   .phi = 1,
                                   .device = dev,
                                   .freq = freq,
                                   .on_done = on_done,
                                   .on_done_arg = &st};
    uint64_t eid, mid;
    struct etf_model_spec spec = {.plan = plan};
    /* One load: the device frees the plan's weights as it copies them, and whatever it left
     * goes after it. */
    etf_plan_drop_weights_on_load(plan);
    t0 = etf_host_ns();
    if (etf_sched_create(&cfg, &s, &diag) || etf_entity_create(s, 0, &eid, &diag) ||
        etf_model_load(s, eid, &spec, &mid, &diag)) {
        fail(1, "%s", diag.msg);
        goto out;
    }
    double device_load_ms = (double)(etf_host_ns() - t0) / 1e6;
    etf_plan_drop_weights(plan);

    struct etf_task_io io = {.inputs = (const float *const *)inputs, .outputs = outputs};
    long total = o.warmup + o.iters;
    for (long i = 0; i < total && st.status == 0; i++) {
        /* Resident: the timed runs pass no buffers, the device's keep the warm-up's input. */
        struct etf_request req = {.mid = mid, .io = o.resident && i >= o.warmup ? NULL : &io};
        if (etf_submit(s, &req, NULL, &diag)) {
            fail(1, "%s", diag.msg);
            goto out;
        }
        bool ran = true;
        while (ran && st.done <= i && st.status == 0)
            etf_sched_step(s, &ran);
    }
    if (st.status) {
        fail(1, "a kernel failed: %s", etf_strerror(st.status));
        goto out;
    }

    qsort(st.latency_ns, (size_t)o.iters, sizeof *st.latency_ns, cmp_u64);
    etf_plan_input(plan, 0, &info);
    printf("model %s: %zu kernels, batch %lld, device %s, loaded in %.1f ms (+%.1f ms on the "
           "device)\n",
           etf_plan_name(plan), etf_plan_kernel_count(plan),
           info.ndim ? (long long)info.dims[0] : 1LL, etf_device_name(dev), load_ms,
           device_load_ms);
    printf("latency over %ld runs (after %ld warm-up):\n", o.iters, o.warmup);
    printf("  p50 %.3f ms\n  p90 %.3f ms\n  p99 %.3f ms\n",
           percentile_ms(st.latency_ns, (size_t)o.iters, 50),
           percentile_ms(st.latency_ns, (size_t)o.iters, 90),
           percentile_ms(st.latency_ns, (size_t)o.iters, 99));
    struct etf_model_stats ms;
    etf_model_stats(s, mid, &ms);
    printf("per kernel (mean over all runs):\n");
    for (size_t k = 0; k < etf_plan_kernel_count(plan); k++) {
        uint64_t ns, runs;
        etf_model_kernel_stats(s, mid, k, &ns, &runs);
        printf("  %4zu  %-40s %9.3f ms  %5.1f%%\n", k, etf_plan_kernel_name(plan, k),
               runs ? (double)ns / (double)runs / 1e6 : 0.0,
               ms.time_ns ? 100.0 * (double)ns / (double)ms.time_ns : 0.0);
    }
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("peak resident memory %.1f MB\n", (double)ru.ru_maxrss / 1024.0);
    if (o.output) {
        etf_plan_output(plan, 0, &info);
        if (write_tensor(o.output, outputs[0], info.elems))
            goto out;
    }
    if (o.profile_out) {
        /* Keyed by the controller's clock if it knows, else the CPU's from /proc/cpuinfo,
         * else 1 Hz: a key that stands for "unknown". */
        bool guessed;
        uint64_t hz;
        if (etf_profiler_clock_hz(freq, true, &hz, &guessed) != 0) {
            hz = 1;
            guessed = true;
        }
        if (write_profile(o.profile_out, plan, s, mid, hz))
            goto out;
        printf("profile: %s at %" PRIu64 " Hz%s; no power figures (the %s device has no energy "
               "meter here), so gpu_power and energy are omitted\n",
               o.profile_out, hz, guessed ? " (the nominal clock from /proc/cpuinfo)" : "",
               etf_device_name(dev));
    }
    exit_code = 0;

out:
    etf_sched_destroy(s);
    etf_freq_close(freq);
    etf_device_close(dev);
    for (size_t i = 0; inputs && i < n_in; i++)
        free(inputs[i]);
    for (size_t i = 0; outputs && i < n_out; i++)
        free(outputs[i]);
    free(inputs);
    free(outputs);
    free(st.latency_ns);
    etf_plan_free(plan);
    return exit_code;
}
