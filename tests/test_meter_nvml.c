/* Tests of the `nvml` meter (src/meter/meter_nvml.c) against a fake libnvidia-ml
 * (tests/fake_nvml.c) loaded by path: the mJ counter read back in µJ since open, errors that
 * say what is missing, and NVML initialised and shut down in pairs.
 *
 * With ETF_NVML_LIVE=1 one more test reads the real NVML of the machine (read-only) for a
 * second and prints how often its counter moves and what a read costs. */
#include "support.h"

#include "meter/meter.h"

#include <time.h>

/* The fake's controls (tests/fake_nvml.c). */
void fake_nvml_reset(void);
void fake_nvml_set_energy_mj(unsigned long long mj);
void fake_nvml_set_power_mw(double mw);
void fake_nvml_set_update_period_ns(unsigned long long ns);
void fake_nvml_set_devices(unsigned n);
int fake_nvml_fail(const char *function, int nvml_rc);
int fake_nvml_inits(void);

static int setup(void **state)
{
    (void)state;
    fake_nvml_reset();
    unsetenv("ETF_NVML_LIBRARY");
    return 0;
}

static int open_fake(struct etf_meter **m, unsigned index, struct etf_diag *diag)
{
    struct etf_meter_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.library_path = FAKE_NVML_PATH;
    cfg.device_index = index;
    return etf_meter_open("nvml", &cfg, m, diag);
}

static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / SEC), .tv_nsec = (long)(ns % SEC)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void reads_energy_since_open_in_uj(void **state)
{
    fake_nvml_set_energy_mj(5000);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    int rc = open_fake(&m, 0, &diag);
    if (rc)
        fail_msg("open: %s", diag.msg);
    assert_string_equal(etf_meter_name(m), "nvml");
    assert_true(etf__meter_measures(m));
    assert_int_equal(fake_nvml_inits(), 1);

    uint64_t uj = 99, at = 0;
    uint64_t before = etf_host_ns();
    assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);
    uint64_t after = etf_host_ns();
    assert_int_equal(uj, 0); /* since open */
    assert_true(at >= before && at <= after);

    fake_nvml_set_energy_mj(5123);
    assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);
    assert_int_equal(uj, 123000);                  /* mJ × 1000 */
    fake_nvml_set_energy_mj(5000 + 4000000000ull); /* 4 GJ: no 32-bit overflow anywhere */
    assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);
    assert_true(uj == 4000000000ull * 1000u);

    etf_meter_close(m);
    assert_int_equal(fake_nvml_inits(), 0); /* shut down on close */
}

static void counter_semantics(void **state)
{
    struct etf_meter *m = NULL;
    assert_int_equal(open_fake(&m, 0, NULL), 0);
    uint64_t uj = 0, at = 0, prev_uj = 0, prev_at = 0;

    /* A counter growing at 50 W, seen in 20 ms steps: readings never go back, and within
     * one step they repeat. */
    fake_nvml_set_update_period_ns(20 * MS);
    fake_nvml_set_power_mw(50000);
    size_t changes = 0, repeats = 0;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);
        assert_true(uj >= prev_uj);
        assert_true(at >= prev_at);
        if (i > 0) {
            changes += uj != prev_uj;
            repeats += uj == prev_uj;
        }
        prev_uj = uj;
        prev_at = at;
        sleep_ns(2 * MS);
    }
    assert_true(changes >= 1);
    assert_true(repeats >= 1);
    /* ~80 ms at 50 W = ~4 J; the bounds allow for a slow host. */
    assert_true(prev_uj > 1000000 && prev_uj < 50000000);

    /* A failed read is an error and leaves the meter usable. */
    assert_int_equal(fake_nvml_fail("nvmlDeviceGetTotalEnergyConsumption", 15), 0);
    assert_int_equal(m->ops->read_energy(m, &uj, &at), ETF_EDEVICE);
    assert_int_equal(fake_nvml_fail("nvmlDeviceGetTotalEnergyConsumption", 0), 0);
    assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);

    /* A counter below its value at open (driver reloaded) is an error, not a wrap. */
    fake_nvml_set_power_mw(0);
    fake_nvml_set_update_period_ns(0);
    fake_nvml_set_energy_mj(0);
    etf_meter_close(m);
    fake_nvml_set_energy_mj(100);
    assert_int_equal(open_fake(&m, 0, NULL), 0);
    fake_nvml_set_energy_mj(99);
    assert_int_equal(m->ops->read_energy(m, &uj, &at), ETF_EDEVICE);
    etf_meter_close(m);
}

static void reads_instant_power(void **state)
{
    struct etf_meter *m = NULL;
    assert_int_equal(open_fake(&m, 0, NULL), 0);
    assert_non_null(m->ops->read_power);
    fake_nvml_set_power_mw(123456);
    double mw = 0;
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_near(mw, 123456, 0.5, "instant power (field 186)");
    /* Without the field, the averaged reading. */
    fake_nvml_fail("nvmlDeviceGetFieldValues", 3);
    fake_nvml_set_power_mw(2000);
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_near(mw, 2000, 0.5, "power usage");
    fake_nvml_fail("nvmlDeviceGetPowerUsage", 3);
    assert_int_equal(m->ops->read_power(m, &mw), ETF_EDEVICE);
    etf_meter_close(m);
}

static void missing_library_is_enotsup_naming_it(void **state)
{
    struct etf_meter_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.library_path = "/nonexistent/libnvidia-ml.so.1";
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("nvml", &cfg, &m, &diag), ETF_ENOTSUP);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "/nonexistent/libnvidia-ml.so.1"));
    assert_non_null(strstr(diag.msg, "cannot load"));
}

static void library_without_nvml_is_enotsup(void **state)
{
    struct etf_meter_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.library_path = "libm.so.6";
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("nvml", &cfg, &m, &diag), ETF_ENOTSUP);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "nvmlInit_v2"));
}

static void init_failure_is_edevice_with_nvml_text(void **state)
{
    fake_nvml_fail("nvmlInit_v2", 9);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(open_fake(&m, 0, &diag), ETF_EDEVICE);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "nvmlInit_v2"));
    assert_non_null(strstr(diag.msg, "Driver Not Loaded"));
    assert_int_equal(fake_nvml_inits(), 0);
}

static void missing_gpu_is_edevice_and_shuts_down(void **state)
{
    fake_nvml_set_devices(1);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(open_fake(&m, 3, &diag), ETF_EDEVICE);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "index 3"));
    assert_int_equal(fake_nvml_inits(), 0);
    /* The second GPU of two opens. */
    fake_nvml_set_devices(2);
    assert_int_equal(open_fake(&m, 1, &diag), 0);
    etf_meter_close(m);
    assert_int_equal(fake_nvml_inits(), 0);
}

static void gpu_without_energy_counter_is_enotsup(void **state)
{
    fake_nvml_fail("nvmlDeviceGetTotalEnergyConsumption", 3);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(open_fake(&m, 0, &diag), ETF_ENOTSUP);
    assert_null(m);
    assert_non_null(strstr(diag.msg, "Fake GPU 0"));
    assert_non_null(strstr(diag.msg, "Not Supported"));
    assert_int_equal(fake_nvml_inits(), 0);
}

static void library_from_the_environment(void **state)
{
    setenv("ETF_NVML_LIBRARY", FAKE_NVML_PATH, 1);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_meter_open("nvml", NULL, &m, &diag);
    if (rc)
        fail_msg("open: %s", diag.msg);
    etf_meter_close(m);
    /* The configuration wins over the environment. */
    setenv("ETF_NVML_LIBRARY", "/nonexistent/libnvidia-ml.so.1", 1);
    assert_int_equal(open_fake(&m, 0, NULL), 0);
    etf_meter_close(m);
    unsetenv("ETF_NVML_LIBRARY");
}

/* The real NVML, read-only: opt-in with ETF_NVML_LIVE=1 on a GPU machine. */
static void live_nvml(void **state)
{
    const char *live = getenv("ETF_NVML_LIVE");
    if (!live || strcmp(live, "1") != 0)
        skip();
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    struct etf_meter_config cfg;
    memset(&cfg, 0, sizeof cfg);
    int rc = etf_meter_open("nvml", &cfg, &m, &diag);
    if (rc)
        fail_msg("live nvml: %s", diag.msg);
    uint64_t uj = 0, at = 0, prev = 0, first_at = 0, cost = 0, last_change = 0;
    size_t reads = 0, changes = 0;
    double gaps_ms = 0;
    uint64_t end = etf_host_ns() + 1200 * MS;
    while (etf_host_ns() < end) {
        uint64_t t0 = etf_host_ns();
        assert_int_equal(m->ops->read_energy(m, &uj, &at), 0);
        cost += etf_host_ns() - t0;
        if (reads == 0)
            first_at = at;
        if (reads > 0 && uj != prev) {
            if (last_change)
                gaps_ms += (double)(at - last_change) / 1e6;
            changes++;
            last_change = at;
        }
        assert_true(uj >= prev);
        prev = uj;
        reads++;
        sleep_ns(5 * MS);
    }
    double mw = 0;
    int prc = m->ops->read_power ? m->ops->read_power(m, &mw) : ETF_ENOTSUP;
    printf("live nvml: %zu reads over %.0f ms, %.3f ms per read, %zu changes (about every %.0f "
           "ms), %.3f J, mean %.1f W; instant power %s %.1f W\n",
           reads, (double)(at - first_at) / 1e6, (double)cost / (double)reads / 1e6, changes,
           changes > 1 ? gaps_ms / (double)(changes - 1) : 0.0, (double)uj / 1e6,
           (double)uj / 1e6 / ((double)(at - first_at) / 1e9), prc == 0 ? "" : "(unavailable)",
           mw / 1e3);
    assert_true(changes >= 2);
    etf_meter_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(reads_energy_since_open_in_uj, setup),
        cmocka_unit_test_setup(counter_semantics, setup),
        cmocka_unit_test_setup(reads_instant_power, setup),
        cmocka_unit_test_setup(missing_library_is_enotsup_naming_it, setup),
        cmocka_unit_test_setup(library_without_nvml_is_enotsup, setup),
        cmocka_unit_test_setup(init_failure_is_edevice_with_nvml_text, setup),
        cmocka_unit_test_setup(missing_gpu_is_edevice_and_shuts_down, setup),
        cmocka_unit_test_setup(gpu_without_energy_counter_is_enotsup, setup),
        cmocka_unit_test_setup(library_from_the_environment, setup),
        cmocka_unit_test(live_nvml),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
