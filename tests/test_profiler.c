/* Tests of the profiler library (src/profile/profiler.c) on the simulated device, which
 * sleeps for its profile's kernel times: the profile it writes, its events, its power read
 * from a meter whose counter moves in steps (the fake NVML at 100 ms, like an H100), a stop
 * that keeps progress and a run that resumes it, and progress of another setup refused. */
#include "support.h"

#include "etf/profiler.h"
#include "freq/freq.h"

#include <signal.h>
#include <unistd.h>

void fake_nvml_reset(void);
void fake_nvml_set_power_mw(double mw);
void fake_nvml_set_update_period_ns(unsigned long long ns);

#define GHZ (1000 * MHZ)

static const uint64_t freqs[] = {500 * MHZ, GHZ};

struct env {
    char dir[64], out[96], partial[128];
    struct etf_profile *model; /* what the simulated device runs */
    struct etf_device *dev;
    struct etf_freq *freq;
    struct etf_profiler_config cfg;
    /* Events seen, by kind; the stop flag set after `stop_after` kernels when not 0. */
    size_t events[4], kernels;
    size_t resumed;
    size_t stop_after;
    volatile sig_atomic_t stop;
    double power[8];
};

static void on_event(void *arg, const struct etf_profiler_event *ev)
{
    struct env *e = arg;
    e->events[ev->kind]++;
    assert_string_equal(ev->model, "m");
    assert_int_equal(ev->n_kernels, 2);
    assert_int_equal(ev->total, ev->n_kernels * ev->n_freqs);
    if (ev->kind == ETF_PROFILER_START)
        e->resumed = ev->resumed;
    if (ev->kind == ETF_PROFILER_DONE) {
        /* What was written, for the caller's summary. */
        assert_non_null(ev->profile);
        assert_string_equal(ev->profile->model_name, "m");
        assert_int_equal(ev->profile->n_freqs, ev->n_freqs);
    }
    if (ev->kind == ETF_PROFILER_KERNEL) {
        /* 400 µs and 100 µs kernels, slept: never shorter, and a slow host adds little. */
        double want = ev->kernel_index == 0 ? 400 : 100;
        assert_true(ev->time_us >= want && ev->time_us < want + 2000);
        assert_true(ev->runs >= 1);
        e->power[e->kernels % 8] = ev->power_mw;
        if (++e->kernels == e->stop_after)
            e->stop = 1;
    }
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof *e);
    assert_non_null(e);
    snprintf(e->dir, sizeof e->dir, "/tmp/etf_test_profiler_XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->out, sizeof e->out, "%s/p.json", e->dir);
    snprintf(e->partial, sizeof e->partial, "%s.partial", e->out);
    const double t[] = {400, 400, 100, 100};
    e->model = prof_make("m", 2, 2, freqs, t, NULL);
    assert_int_equal(etf_device_open("sim", NULL, &e->dev, NULL), 0);
    struct etf_freq_config fc = {.available_hz = freqs, .n_available_hz = 2, .initial_hz = GHZ};
    assert_int_equal(etf_freq_open("sim", &fc, &e->freq, NULL), 0);
    e->cfg = (struct etf_profiler_config){
        .out_path = e->out,
        .device = e->dev,
        .freq = e->freq,
        .sim_profile = e->model,
        .all_freqs = true,
        .min_time_ns = 20 * MS,
        .warmup = 1,
        .setup = "test",
        .on_event = on_event,
        .on_event_arg = e,
        .stop = &e->stop,
    };
    fake_nvml_reset();
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    unlink(e->out);
    unlink(e->partial);
    assert_int_equal(rmdir(e->dir), 0); /* no temporary file was left */
    etf_freq_close(e->freq);
    etf_device_close(e->dev);
    etf_profile_free(e->model);
    free(e);
    return 0;
}

static struct etf_profile *load(const char *path)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    if (etf_profile_load(path, &p, &diag))
        fail_msg("%s", diag.msg);
    return p;
}

static void run_ok(struct env *e)
{
    struct etf_diag diag = {{0}};
    int rc = etf_profiler_run(&e->cfg, &diag);
    if (rc)
        fail_msg("etf_profiler_run: %s: %s", etf_strerror(rc), diag.msg);
}

static void every_frequency_of_the_controller(void **state)
{
    struct env *e = *state;
    run_ok(e);
    assert_int_equal(e->events[ETF_PROFILER_START], 1);
    assert_int_equal(e->events[ETF_PROFILER_FREQ], 2);
    assert_int_equal(e->events[ETF_PROFILER_KERNEL], 4);
    assert_int_equal(e->events[ETF_PROFILER_DONE], 1);
    assert_int_equal(e->resumed, 0);
    assert_int_equal(access(e->partial, F_OK), -1);
    struct etf_profile *p = load(e->out);
    assert_string_equal(p->model_name, "m");
    assert_int_equal(p->n_freqs, 2);
    assert_int_equal(p->freqs_hz[0], 500 * MHZ);
    assert_int_equal(p->freqs_hz[1], GHZ);
    assert_false(p->has_power);
    assert_string_equal(p->kernels[0].name, "k0");
    assert_string_equal(p->kernels[1].name, "k1");
    assert_true(p->kernels[0].time_us[1] >= 400);
    etf_profile_free(p);
    /* The controller was left at the last frequency; its owner puts the clock back. */
    uint64_t hz = 0;
    assert_int_equal(etf_freq_current(e->freq, &hz), 0);
    assert_int_equal(hz, GHZ);
}

static void power_from_a_stepping_counter(void **state)
{
    struct env *e = *state;
    /* 200 W, visible in 100 ms steps: a window from one step to another after 500 ms reads
     * 200 W to a few percent, where arbitrary ends could be 20% off. */
    fake_nvml_set_update_period_ns(100 * MS);
    fake_nvml_set_power_mw(200000);
    struct etf_meter_config mc = {.library_path = FAKE_NVML_PATH};
    struct etf_meter *m = NULL;
    assert_int_equal(etf_meter_open("nvml", &mc, &m, NULL), 0);
    e->cfg.meter = m;
    e->cfg.min_time_ns = 500 * MS;
    e->cfg.all_freqs = false;
    e->cfg.freqs_hz = &freqs[1];
    e->cfg.n_freqs = 1;
    run_ok(e);
    etf_meter_close(m);
    assert_int_equal(e->kernels, 2);
    for (size_t k = 0; k < 2; k++)
        assert_near(e->power[k], 200000, 200000 * 0.05, "power over a window of counter steps");
    struct etf_profile *p = load(e->out);
    assert_true(p->has_power);
    assert_int_equal(p->n_freqs, 1);
    assert_near(p->power_mw[0], 200000, 200000 * 0.05, "model power");
    etf_profile_free(p);
}

static void a_stop_keeps_progress_and_the_next_run_resumes(void **state)
{
    struct env *e = *state;
    e->stop_after = 3;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_ESHUTDOWN);
    assert_non_null(strstr(diag.msg, "interrupted: 3 of 4 measurements saved in"));
    assert_int_equal(access(e->out, F_OK), -1);
    assert_int_equal(access(e->partial, F_OK), 0);

    /* Another setup or model is refused, naming the difference; the progress stays. */
    e->stop = 0;
    e->stop_after = 0;
    e->cfg.min_time_ns = 30 * MS;
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(
        strstr(diag.msg, "is of another run (min_time_ns: 20000000 there, 30000000 here)"));
    e->cfg.min_time_ns = 20 * MS;
    e->cfg.setup = "threads 2";
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "(setup: \"test\" there, \"threads 2\" here)"));
    e->cfg.setup = "test";

    memset(e->events, 0, sizeof e->events);
    run_ok(e);
    assert_int_equal(e->resumed, 3);
    assert_int_equal(e->events[ETF_PROFILER_FREQ], 1);
    assert_int_equal(e->events[ETF_PROFILER_KERNEL], 1);
    assert_int_equal(access(e->partial, F_OK), -1);
    struct etf_profile *p = load(e->out);
    assert_int_equal(p->n_freqs, 2);
    etf_profile_free(p);
}

static void restart_ignores_progress(void **state)
{
    struct env *e = *state;
    e->stop_after = 1;
    assert_int_equal(etf_profiler_run(&e->cfg, NULL), ETF_ESHUTDOWN);
    e->stop = 0;
    e->stop_after = 0;
    e->cfg.restart = true;
    memset(e->events, 0, sizeof e->events);
    run_ok(e);
    assert_int_equal(e->resumed, 0);
    assert_int_equal(e->events[ETF_PROFILER_KERNEL], 4);
}

static void frequencies_checked_before_measuring(void **state)
{
    struct env *e = *state;
    struct etf_diag diag = {{0}};
    const uint64_t bad[] = {GHZ, 700 * MHZ};
    e->cfg.all_freqs = false;
    e->cfg.freqs_hz = bad;
    e->cfg.n_freqs = 2;
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "700000000 Hz is not on offer (the sim controller has: "
                                     "500000000 1000000000)"));
    /* A controller that cannot set: one frequency, naming the clock in force. */
    struct etf_freq *none = NULL;
    assert_int_equal(etf_freq_open("none", NULL, &none, NULL), 0);
    e->cfg.freq = none;
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "cannot set the clock: one frequency at most"));
    e->cfg.all_freqs = true;
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "the none controller cannot set the clock"));
    e->cfg.all_freqs = false;
    e->cfg.n_freqs = 0;
    assert_int_equal(etf_profiler_run(&e->cfg, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "the clock of the sim device is unknown"));
    e->cfg.freqs_hz = &freqs[0];
    e->cfg.n_freqs = 1;
    run_ok(e);
    etf_freq_close(none);
    assert_int_equal(e->events[ETF_PROFILER_KERNEL], 2);
}

static void clock_in_force(void **state)
{
    struct env *e = *state;
    uint64_t hz = 0;
    bool cpuinfo = true;
    assert_int_equal(etf_profiler_clock_hz(e->freq, false, &hz, &cpuinfo), 0);
    assert_int_equal(hz, GHZ);
    assert_false(cpuinfo);
    assert_int_equal(etf_profiler_clock_hz(NULL, false, &hz, &cpuinfo), ETF_ENOTSUP);
    /* The CPU's clock, where /proc/cpuinfo tells it. */
    int rc = etf_profiler_clock_hz(NULL, true, &hz, &cpuinfo);
    assert_true(rc == 0 ? cpuinfo && hz > 0 : rc == ETF_ENOTSUP);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(every_frequency_of_the_controller, setup, teardown),
        cmocka_unit_test_setup_teardown(power_from_a_stepping_counter, setup, teardown),
        cmocka_unit_test_setup_teardown(a_stop_keeps_progress_and_the_next_run_resumes, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(restart_ignores_progress, setup, teardown),
        cmocka_unit_test_setup_teardown(frequencies_checked_before_measuring, setup, teardown),
        cmocka_unit_test_setup_teardown(clock_in_force, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
