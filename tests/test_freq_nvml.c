/* Tests of the `nvml` frequency controller (src/freq/freq_nvml.c) against the fake
 * libnvidia-ml (tests/fake_nvml.c) loaded by path: it opens only when clock changes are
 * allowed, locks and reads the graphics clock, journals before the first lock and resets the
 * lock at close, after a crash (the next open, etfd --restore-clocks), and says clearly when
 * NVML refuses for want of root or is missing.
 *
 * No test here ever loads the real NVML: every configuration names the fake. */
#include "support.h"

#include "freq/journal.h"

#include <sys/stat.h>
#include <unistd.h>

/* The fake's controls (tests/fake_nvml.c), and the NVML calls a crashed controller made. */
void fake_nvml_reset(void);
void fake_nvml_set_devices(unsigned n);
int fake_nvml_fail(const char *function, int nvml_rc);
int fake_nvml_inits(void);
unsigned long long fake_nvml_calls(const char *function);
unsigned fake_nvml_locked_mhz(unsigned gpu);
int nvmlInit_v2(void);
int nvmlShutdown(void);
int nvmlDeviceGetHandleByIndex_v2(unsigned int index, void **dev);
int nvmlDeviceSetGpuLockedClocks(void *dev, unsigned int min_mhz, unsigned int max_mhz);

#define NVML_ERROR_NO_PERMISSION 4
#define SET "nvmlDeviceSetGpuLockedClocks"
#define RESET "nvmlDeviceResetGpuLockedClocks"

struct env {
    char dir[64];
    char journal[128];
    struct etf_freq_config cfg;
};

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof *e);
    assert_non_null(e);
    snprintf(e->dir, sizeof e->dir, "/tmp/etf_test_freq_nvml_XXXXXX");
    assert_non_null(mkdtemp(e->dir));
    snprintf(e->journal, sizeof e->journal, "%s/clocks.journal", e->dir);
    e->cfg.allow_clock_changes = true;
    e->cfg.library_path = FAKE_NVML_PATH;
    e->cfg.journal_path = e->journal;
    e->cfg.sysfs.root = "/sys"; /* written in the journal; never read by this controller */
    fake_nvml_reset();
    unsetenv("ETF_NVML_LIBRARY");
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    char path[160];
    unlink(e->journal);
    snprintf(path, sizeof path, "%s.lock", e->journal);
    unlink(path);
    assert_int_equal(rmdir(e->dir), 0); /* nothing else was left behind */
    free(e);
    return 0;
}

static bool exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static char *slurp(const char *path)
{
    static char text[512];
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    return text;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    assert_int_equal(fclose(f), 0);
}

static struct etf_freq *open_ok(const struct etf_freq_config *cfg)
{
    struct etf_freq *f = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_freq_open("nvml", cfg, &f, &diag);
    if (rc)
        fail_msg("open: %s: %s", etf_strerror(rc), diag.msg);
    return f;
}

/* What a controller killed while GPU `gpu` was locked at mhz leaves: the lock and its journal. */
static void crashed_with_lock(const struct env *e, unsigned gpu, unsigned mhz)
{
    void *dev = NULL;
    assert_int_equal(nvmlInit_v2(), 0);
    assert_int_equal(nvmlDeviceGetHandleByIndex_v2(gpu, &dev), 0);
    assert_int_equal(nvmlDeviceSetGpuLockedClocks(dev, mhz, mhz), 0);
    assert_int_equal(nvmlShutdown(), 0);
    char text[128];
    snprintf(text, sizeof text, "etf-clock-journal 1\nroot /sys\nnvml gpu=%u\nend\n", gpu);
    write_file(e->journal, text);
}

static void refused_without_opt_in(void **state)
{
    struct env *e = *state;
    e->cfg.allow_clock_changes = false;
    struct etf_freq *f = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("nvml", &e->cfg, &f, &diag), ETF_EINVAL);
    assert_null(f);
    assert_non_null(strstr(diag.msg, "changing GPU clocks is off"));
    assert_non_null(strstr(diag.msg, "--allow-gpu-clock-changes"));
    assert_non_null(strstr(diag.msg, "allow_clock_changes"));
    /* Nothing was touched: the library was not even started, no journal was made. */
    assert_int_equal(fake_nvml_calls("nvmlInit_v2"), 0);
    assert_false(exists(e->journal));
}

static void locks_reads_lists_and_resets_at_close(void **state)
{
    struct env *e = *state;
    struct etf_freq *f = open_ok(&e->cfg);
    assert_string_equal(etf_freq_name(f), "nvml");
    assert_true(etf__freq_can_set(f));

    uint64_t hz[8];
    size_t n = 0;
    assert_int_equal(etf__freq_list(f, hz, 8, &n), 0);
    assert_int_equal(n, 4);
    const uint64_t want[] = {345 * MHZ, 900 * MHZ, 1410 * MHZ, 1980 * MHZ};
    for (size_t i = 0; i < n; i++)
        assert_int_equal(hz[i], want[i]);
    uint64_t cur = 0;
    assert_int_equal(etf_freq_current(f, &cur), 0);
    assert_int_equal(cur, 1980 * MHZ);
    /* Opening changes nothing and journals nothing. */
    assert_false(exists(e->journal));
    assert_int_equal(fake_nvml_calls(SET) + fake_nvml_calls(RESET), 0);

    assert_int_equal(etf__freq_set(f, 900 * MHZ), 0);
    assert_int_equal(fake_nvml_locked_mhz(0), 900);
    assert_int_equal(etf_freq_current(f, &cur), 0);
    assert_int_equal(cur, 900 * MHZ);
    assert_true(exists(e->journal));
    assert_non_null(strstr(slurp(e->journal), "\nnvml gpu=0\nend\n"));
    assert_int_equal(etf__freq_set(f, 1410 * MHZ), 0);
    assert_int_equal(fake_nvml_locked_mhz(0), 1410);
    assert_int_equal(etf_freq_switches(f), 2);

    /* Refused before NVML is asked: not a supported clock, not whole MHz. */
    assert_int_equal(etf__freq_set(f, 1000 * MHZ), ETF_EINVAL);
    assert_non_null(strstr(etf_freq_last_error(f), "have: 345000000 900000000"));
    assert_int_equal(etf__freq_set(f, 900 * MHZ + 500000), ETF_EINVAL);
    assert_non_null(strstr(etf_freq_last_error(f), "whole number of MHz"));
    assert_int_equal(fake_nvml_calls(SET), 2);
    assert_int_equal(fake_nvml_locked_mhz(0), 1410);

    etf_freq_close(f);
    assert_int_equal(fake_nvml_calls(RESET), 1);
    assert_int_equal(fake_nvml_locked_mhz(0), 0);
    assert_false(exists(e->journal));
    assert_int_equal(fake_nvml_inits(), 0);
}

static void the_gpu_named_by_index(void **state)
{
    struct env *e = *state;
    fake_nvml_set_devices(2);
    e->cfg.device_index = 1;
    struct etf_freq *f = open_ok(&e->cfg);
    assert_int_equal(etf__freq_set(f, 345 * MHZ), 0);
    assert_int_equal(fake_nvml_locked_mhz(0), 0);
    assert_int_equal(fake_nvml_locked_mhz(1), 345);
    assert_non_null(strstr(slurp(e->journal), "\nnvml gpu=1\n"));
    etf_freq_close(f);
    assert_int_equal(fake_nvml_locked_mhz(1), 0);

    e->cfg.device_index = 3;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("nvml", &e->cfg, &f, &diag), ETF_EDEVICE);
    assert_non_null(strstr(diag.msg, "no GPU with index 3"));
    assert_int_equal(fake_nvml_inits(), 0);
}

static void permission_error_says_root_and_leaves_nothing(void **state)
{
    struct env *e = *state;
    struct etf_freq *f = open_ok(&e->cfg);
    fake_nvml_fail(SET, NVML_ERROR_NO_PERMISSION);
    assert_int_equal(etf__freq_set(f, 900 * MHZ), ETF_EDEVICE);
    const char *why = etf_freq_last_error(f);
    assert_non_null(strstr(why, "Fake GPU 0"));
    assert_non_null(strstr(why, "900 MHz was refused"));
    assert_non_null(strstr(why, "Insufficient Permissions"));
    assert_non_null(strstr(why, "only root"));
    assert_int_equal(etf_freq_switches(f), 0);
    /* NVML changed nothing, so nothing is journaled and close has nothing to reset. */
    assert_false(exists(e->journal));
    etf_freq_close(f);
    assert_int_equal(fake_nvml_calls(RESET), 0);
    assert_int_equal(fake_nvml_inits(), 0);

    /* After a lock that worked, a later refusal keeps the journal: the lock is still on. */
    fake_nvml_fail(SET, 0);
    f = open_ok(&e->cfg);
    assert_int_equal(etf__freq_set(f, 900 * MHZ), 0);
    fake_nvml_fail(SET, NVML_ERROR_NO_PERMISSION);
    assert_int_equal(etf__freq_set(f, 345 * MHZ), ETF_EDEVICE);
    assert_true(exists(e->journal));
    etf_freq_close(f);
    assert_int_equal(fake_nvml_locked_mhz(0), 0);
    assert_false(exists(e->journal));
}

static void missing_library_is_enotsup_naming_it(void **state)
{
    struct env *e = *state;
    e->cfg.library_path = "/nonexistent/libnvidia-ml.so.1";
    struct etf_freq *f = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("nvml", &e->cfg, &f, &diag), ETF_ENOTSUP);
    assert_null(f);
    assert_non_null(strstr(diag.msg, "freq nvml: cannot load /nonexistent/libnvidia-ml.so.1"));
    assert_false(exists(e->journal));
    /* A library that is not NVML. */
    e->cfg.library_path = "libm.so.6";
    assert_int_equal(etf_freq_open("nvml", &e->cfg, &f, &diag), ETF_ENOTSUP);
    assert_non_null(strstr(diag.msg, "has no nvmlInit_v2"));
}

static void crash_is_reset_by_the_next_open(void **state)
{
    struct env *e = *state;
    crashed_with_lock(e, 0, 345);
    assert_int_equal(fake_nvml_locked_mhz(0), 345);
    struct etf_freq *f = open_ok(&e->cfg);
    assert_int_equal(fake_nvml_locked_mhz(0), 0);
    assert_false(exists(e->journal));
    etf_freq_close(f);
    assert_int_equal(fake_nvml_calls(RESET), 1);
    assert_int_equal(fake_nvml_inits(), 0);
}

static void crash_is_reset_by_restore_journal(void **state)
{
    struct env *e = *state;
    fake_nvml_set_devices(2);
    crashed_with_lock(e, 1, 1410);
    /* The one-shot behind etfd --restore-clocks needs no opt-in: it only undoes. */
    struct etf_freq_config cfg = e->cfg;
    cfg.allow_clock_changes = false;
    fake_nvml_fail(RESET, NVML_ERROR_NO_PERMISSION);
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), ETF_EDEVICE);
    assert_non_null(strstr(diag.msg, "journal is kept"));
    assert_non_null(strstr(diag.msg, "only root"));
    assert_true(exists(e->journal));
    assert_int_equal(fake_nvml_locked_mhz(1), 1410);

    fake_nvml_fail(RESET, 0);
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    assert_int_equal(fake_nvml_locked_mhz(1), 0);
    assert_false(exists(e->journal));
    assert_int_equal(fake_nvml_inits(), 0);
}

static void bad_nvml_entries_are_refused(void **state)
{
    struct env *e = *state;
    const struct {
        const char *body, *says;
    } cases[] = {
        {"nvml gpu=x\n", "gpu=<NVML index>"},           {"nvml\n", "gpu=<NVML index>"},
        {"nvml gpu=1 locked\n", "end of the line"},     {"nvml gpu=5000\n", "gpu=<NVML index>"},
        {"nvml gpu=0\nnvml gpu=0\n", "each node once"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char text[256];
        snprintf(text, sizeof text, "etf-clock-journal 1\nroot /sys\n%send\n", cases[k].body);
        write_file(e->journal, text);
        struct etf_diag diag = {{0}};
        assert_int_equal(etf_freq_restore_journal(&e->cfg, &diag), ETF_EFORMAT);
        assert_non_null(strstr(diag.msg, cases[k].says));
        assert_true(exists(e->journal));
    }
    assert_int_equal(fake_nvml_calls("nvmlInit_v2"), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(refused_without_opt_in, setup, teardown),
        cmocka_unit_test_setup_teardown(locks_reads_lists_and_resets_at_close, setup, teardown),
        cmocka_unit_test_setup_teardown(the_gpu_named_by_index, setup, teardown),
        cmocka_unit_test_setup_teardown(permission_error_says_root_and_leaves_nothing, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(missing_library_is_enotsup_naming_it, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_is_reset_by_the_next_open, setup, teardown),
        cmocka_unit_test_setup_teardown(crash_is_reset_by_restore_journal, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_nvml_entries_are_refused, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
