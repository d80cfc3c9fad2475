/* Tests of the backend registries and the built-in backends: the simulated device, the
 * `sim` and `none` frequency controllers and the `model` meter. */
#include "support.h"

#include "device/device.h"
#include "freq/freq.h"
#include "meter/meter.h"

#define GHZ 1000000000ull

static size_t count_names(const char *const *names)
{
    size_t n = 0;
    while (names[n])
        n++;
    return n;
}

static bool has_name(const char *const *names, const char *name)
{
    for (size_t i = 0; names[i]; i++)
        if (strcmp(names[i], name) == 0)
            return true;
    return false;
}

/* ---- Registries ---- */

static void registries_list_the_built_in_backends(void **state)
{
    const char *const *dev = etf_device_names();
    const char *const *met = etf_meter_names();
    const char *const *frq = etf_freq_names();
    assert_non_null(dev);
    assert_non_null(met);
    assert_non_null(frq);
    assert_true(has_name(dev, "sim"));
    assert_true(has_name(met, "model"));
    assert_true(has_name(frq, "none"));
    assert_true(has_name(frq, "sim"));
    /* Builds may add backends (a CPU device with oneDNN): the lists only grow. */
    assert_true(count_names(dev) >= 1);
    assert_true(count_names(met) >= 1);
    assert_true(count_names(frq) >= 2);
}

static void every_listed_backend_opens_under_its_name(void **state)
{
    for (const char *const *n = etf_device_names(); *n; n++) {
        struct etf_device *d = NULL;
        assert_int_equal(etf_device_open(*n, NULL, &d, NULL), 0);
        assert_string_equal(etf_device_name(d), *n);
        etf_device_close(d);
    }
    for (const char *const *n = etf_meter_names(); *n; n++) {
        struct etf_meter *m = NULL;
        assert_int_equal(etf_meter_open(*n, NULL, &m, NULL), 0);
        assert_string_equal(etf_meter_name(m), *n);
        etf_meter_close(m);
    }
    for (const char *const *n = etf_freq_names(); *n; n++) {
        struct etf_freq *f = NULL;
        assert_int_equal(etf_freq_open(*n, NULL, &f, NULL), 0);
        assert_string_equal(etf_freq_name(f), *n);
        assert_int_equal(etf_freq_switches(f), 0);
        etf_freq_close(f);
    }
    /* Closing nothing is harmless. */
    etf_device_close(NULL);
    etf_meter_close(NULL);
    etf_freq_close(NULL);
}

static void unknown_backend_is_enotsup_naming_it(void **state)
{
    struct etf_diag diag = {{0}};
    struct etf_device *d = NULL;
    struct etf_meter *m = NULL;
    struct etf_freq *f = NULL;
    assert_int_equal(etf_device_open("cuda9", NULL, &d, &diag), ETF_ENOTSUP);
    assert_non_null(strstr(diag.msg, "cuda9"));
    assert_null(d);
    memset(&diag, 0, sizeof diag);
    assert_int_equal(etf_meter_open("tegrastats", NULL, &m, &diag), ETF_ENOTSUP);
    assert_non_null(strstr(diag.msg, "tegrastats"));
    assert_null(m);
    memset(&diag, 0, sizeof diag);
    assert_int_equal(etf_freq_open("overclock", NULL, &f, &diag), ETF_ENOTSUP);
    assert_non_null(strstr(diag.msg, "overclock"));
    assert_null(f);
    /* Names are exact: no prefix or case folding. */
    assert_int_equal(etf_device_open("SIM", NULL, &d, NULL), ETF_ENOTSUP);
    assert_int_equal(etf_device_open("si", NULL, &d, NULL), ETF_ENOTSUP);
    assert_int_equal(etf_freq_open("", NULL, &f, NULL), ETF_ENOTSUP);
    /* No name at all. */
    assert_int_equal(etf_device_open(NULL, NULL, &d, NULL), ETF_EINVAL);
    assert_int_equal(etf_meter_open(NULL, NULL, &m, NULL), ETF_EINVAL);
    assert_int_equal(etf_freq_open(NULL, NULL, &f, NULL), ETF_EINVAL);
}

/* ---- The simulated device ---- */

struct sim_dev {
    struct etf_vclock vc;
    struct etf_device *dev;
    struct etf_profile *prof;
    struct etf_dmodel *dm;
};

/* Kernels k0: 10 µs at 500 MHz, 4.5 µs at 1 GHz; k1: 30 µs and 12.25 µs. */
static void sim_dev_open(struct sim_dev *sd, bool vclock)
{
    uint64_t freqs[] = {500 * MHZ, GHZ};
    double t[] = {10, 4.5, 30, 12.25}, p[] = {500, 900, 600, 1000};
    sd->vc.now_ns = 777;
    struct etf_device_config cfg = {.vclock = vclock ? &sd->vc : NULL};
    assert_int_equal(etf_device_open("sim", &cfg, &sd->dev, NULL), 0);
    sd->prof = prof_make("m", 2, 2, freqs, t, p);
    struct etf_model_desc desc = {.name = "m", .profile = sd->prof};
    assert_int_equal(etf__device_load(sd->dev, &desc, &sd->dm, NULL), 0);
    assert_non_null(sd->dm);
}

static void sim_dev_close(struct sim_dev *sd)
{
    etf__device_unload(sd->dev, sd->dm);
    etf_device_close(sd->dev);
    etf_profile_free(sd->prof);
}

static int launch(struct sim_dev *sd, size_t kernel, uint64_t hz, uint64_t *busy)
{
    struct etf_kernel_run run = {.dm = sd->dm, .kernel = kernel, .freq_hz = hz, .busy_ns = 1};
    int rc = etf__device_launch(sd->dev, &run);
    *busy = run.busy_ns;
    return rc;
}

static void sim_device_on_vclock_advances_by_the_profile_time(void **state)
{
    struct sim_dev sd;
    sim_dev_open(&sd, true);
    uint64_t busy = 0;
    assert_int_equal(launch(&sd, 0, 500 * MHZ, &busy), 0);
    assert_int_equal(busy, 10000);
    assert_int_equal(sd.vc.now_ns, 777 + 10000);
    assert_int_equal(launch(&sd, 1, GHZ, &busy), 0);
    assert_int_equal(busy, 12250);
    assert_int_equal(sd.vc.now_ns, 777 + 10000 + 12250);
    /* Fractional microseconds round to the nanosecond, and the frequency cache follows
     * changes back and forth. */
    assert_int_equal(launch(&sd, 0, GHZ, &busy), 0);
    assert_int_equal(busy, 4500);
    assert_int_equal(launch(&sd, 1, 500 * MHZ, &busy), 0);
    assert_int_equal(busy, 30000);
    assert_int_equal(launch(&sd, 1, 500 * MHZ, &busy), 0);
    assert_int_equal(busy, 30000);
    assert_int_equal(sd.vc.now_ns, 777 + 10000 + 12250 + 4500 + 30000 + 30000);
    sim_dev_close(&sd);
}

static void sim_device_fails_for_a_frequency_the_profile_lacks(void **state)
{
    struct sim_dev sd;
    sim_dev_open(&sd, true);
    uint64_t busy = 0;
    assert_int_equal(launch(&sd, 0, 750 * MHZ, &busy), ETF_EDEVICE);
    assert_int_equal(launch(&sd, 0, 0, &busy), ETF_EDEVICE);
    assert_int_equal(sd.vc.now_ns, 777); /* nothing ran */
    /* A cached frequency does not hide a later unknown one. */
    assert_int_equal(launch(&sd, 0, GHZ, &busy), 0);
    assert_int_equal(launch(&sd, 0, GHZ + 1, &busy), ETF_EDEVICE);
    /* Nor does a failure poison the cache. */
    assert_int_equal(launch(&sd, 1, GHZ, &busy), 0);
    assert_int_equal(busy, 12250);
    /* A kernel index past the model is refused. */
    assert_int_equal(launch(&sd, 2, GHZ, &busy), ETF_EINVAL);
    assert_int_equal(sd.vc.now_ns, 777 + 4500 + 12250);
    sim_dev_close(&sd);
}

static void sim_device_refuses_a_model_without_profile(void **state)
{
    struct etf_device *dev = NULL;
    assert_int_equal(etf_device_open("sim", NULL, &dev, NULL), 0);
    struct etf_model_desc desc = {.name = "ghost", .profile = NULL};
    struct etf_dmodel *dm = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf__device_load(dev, &desc, &dm, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "ghost"));
    etf_device_close(dev);
}

static void sim_device_without_vclock_sleeps_at_least_the_kernel_time(void **state)
{
    struct sim_dev sd;
    sim_dev_open(&sd, false);
    uint64_t busy = 0;
    uint64_t t0 = etf_host_ns();
    assert_int_equal(launch(&sd, 1, 500 * MHZ, &busy), 0);
    uint64_t t1 = etf_host_ns();
    assert_true(busy >= 30000);
    assert_true(t1 - t0 >= 30000);
    assert_int_equal(sd.vc.now_ns, 777); /* the clock it was not given stays put */
    assert_int_equal(launch(&sd, 0, GHZ, &busy), 0);
    assert_true(busy >= 4500);
    assert_int_equal(launch(&sd, 0, 1, &busy), ETF_EDEVICE);
    sim_dev_close(&sd);
}

/* ---- Frequency controllers ---- */

static void freq_sim_reports_nothing_before_its_first_switch(void **state)
{
    struct etf_freq *f = NULL;
    struct etf_freq_config cfg = {.initial_hz = 0};
    assert_int_equal(etf_freq_open("sim", &cfg, &f, NULL), 0);
    assert_true(etf__freq_can_set(f));
    uint64_t hz = 123;
    assert_int_equal(etf__freq_get(f, &hz), ETF_ENOTSUP);
    assert_int_equal(hz, 123);
    etf_freq_close(f);

    /* With an initial frequency it reports that one, and it is no switch. */
    cfg.initial_hz = 800 * MHZ;
    assert_int_equal(etf_freq_open("sim", &cfg, &f, NULL), 0);
    assert_int_equal(etf__freq_get(f, &hz), 0);
    assert_int_equal(hz, 800 * MHZ);
    assert_int_equal(etf_freq_switches(f), 0);
    etf_freq_close(f);
}

static void freq_sim_set_get_round_trip_and_counts_switches(void **state)
{
    struct etf_freq *f = NULL;
    assert_int_equal(etf_freq_open("sim", NULL, &f, NULL), 0);
    uint64_t hz = 0;
    const uint64_t seq[] = {GHZ, 500 * MHZ, 1300500000ull, 114750000ull};
    for (size_t i = 0; i < 4; i++) {
        assert_int_equal(etf__freq_set(f, seq[i]), 0);
        assert_int_equal(etf__freq_get(f, &hz), 0);
        assert_int_equal(hz, seq[i]);
        assert_int_equal(etf_freq_switches(f), i + 1);
    }
    /* 0 Hz is no frequency: refused, not counted, the clock unchanged. */
    assert_int_equal(etf__freq_set(f, 0), ETF_EINVAL);
    assert_int_equal(etf_freq_switches(f), 4);
    assert_int_equal(etf__freq_get(f, &hz), 0);
    assert_int_equal(hz, 114750000ull);
    etf_freq_close(f);
}

static void freq_sim_offers_a_list_when_given_one(void **state)
{
    struct etf_freq *f = NULL;
    uint64_t list[4];
    size_t n = 0;
    /* Without a list it takes any frequency and has none to give. */
    assert_int_equal(etf_freq_open("sim", NULL, &f, NULL), 0);
    assert_int_equal(etf__freq_list(f, list, 4, &n), ETF_ENOTSUP);
    etf_freq_close(f);

    const uint64_t offer[] = {GHZ, 500 * MHZ, GHZ, 114750000ull};
    struct etf_freq_config cfg = {.available_hz = offer, .n_available_hz = 4};
    assert_int_equal(etf_freq_open("sim", &cfg, &f, NULL), 0);
    assert_int_equal(etf__freq_list(f, list, 4, &n), 0);
    assert_int_equal(n, 3);
    const uint64_t want[] = {114750000ull, 500 * MHZ, GHZ};
    assert_memory_equal(list, want, sizeof want);
    assert_int_equal(etf__freq_set(f, 500 * MHZ), 0);
    assert_int_equal(etf__freq_set(f, 600 * MHZ), ETF_EINVAL);
    assert_int_equal(etf_freq_switches(f), 1);
    etf_freq_close(f);

    const uint64_t zero[] = {GHZ, 0};
    cfg = (struct etf_freq_config){.available_hz = zero, .n_available_hz = 2};
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("sim", &cfg, &f, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "0 Hz"));
}

static void freq_none_cannot_set_and_reports_nothing(void **state)
{
    struct etf_freq *f = NULL;
    struct etf_freq_config cfg = {.initial_hz = GHZ}; /* ignored: it never touches the clock */
    assert_int_equal(etf_freq_open("none", &cfg, &f, NULL), 0);
    assert_false(etf__freq_can_set(f));
    assert_false(f->ops->caps & ETF_FREQ_CAP_SET);
    uint64_t hz = 9;
    assert_int_equal(etf__freq_get(f, &hz), ETF_ENOTSUP);
    assert_int_equal(hz, 9);
    size_t n = 0;
    assert_int_equal(etf__freq_list(f, &hz, 1, &n), ETF_ENOTSUP);
    assert_int_equal(etf_freq_switches(f), 0);
    etf_freq_close(f);
    /* No controller at all cannot set either. */
    assert_false(etf__freq_can_set(NULL));
}

/* ---- Meters ---- */

static void model_meter_does_not_measure(void **state)
{
    struct etf_meter *m = NULL;
    assert_int_equal(etf_meter_open("model", NULL, &m, NULL), 0);
    assert_false(etf__meter_measures(m));
    assert_null(m->ops->read_energy);
    assert_false(etf__meter_measures(NULL));
    etf_meter_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(registries_list_the_built_in_backends),
        cmocka_unit_test(every_listed_backend_opens_under_its_name),
        cmocka_unit_test(unknown_backend_is_enotsup_naming_it),
        cmocka_unit_test(sim_device_on_vclock_advances_by_the_profile_time),
        cmocka_unit_test(sim_device_fails_for_a_frequency_the_profile_lacks),
        cmocka_unit_test(sim_device_refuses_a_model_without_profile),
        cmocka_unit_test(sim_device_without_vclock_sleeps_at_least_the_kernel_time),
        cmocka_unit_test(freq_sim_reports_nothing_before_its_first_switch),
        cmocka_unit_test(freq_sim_set_get_round_trip_and_counts_switches),
        cmocka_unit_test(freq_sim_offers_a_list_when_given_one),
        cmocka_unit_test(freq_none_cannot_set_and_reports_nothing),
        cmocka_unit_test(model_meter_does_not_measure),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
