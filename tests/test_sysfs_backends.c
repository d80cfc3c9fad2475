/* Tests of the sysfs backends against fake trees in temporary directories: the I/O layer,
 * the devfreq and cpufreq controllers with their restore journal, and the ina3221, hwmon and
 * rapl meters.
 *
 * The trees are laid out like a Jetson TX2 (devfreq gp10b, INA3221 through iio), a Jetson
 * Orin (devfreq ga10b, INA3221 through hwmon) and an Intel host (cpufreq policies, RAPL).
 * Nothing makes a plain file follow writes the way cur_freq does, so the tests run the
 * backends through an I/O table (`hook_io`) that mirrors max_freq / setspeed writes into the
 * cur file, logs every write in order, and refuses chosen files with a chosen errno (the
 * tests run as root, so file modes cannot do it).
 */
#include "support.h"

#include "freq/freq.h"
#include "freq/journal.h"
#include "meter/meter.h"
#include "util/sysfs.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- Fake trees ---- */

struct fake {
    char dir[64];      /* the temporary directory */
    char root[96];     /* dir/sys: stands for /sys */
    char journal[128]; /* dir/run/etf/clocks.journal: its directory does not exist yet */
};

static void mkdirs(const char *path)
{
    char buf[512];
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            mkdir(buf, 0755);
            *p = '/';
        }
    }
    mkdir(buf, 0755);
}

__attribute__((format(printf, 3, 4))) static void put(const struct fake *f, const char *rel,
                                                      const char *fmt, ...)
{
    char path[512], dir[512];
    snprintf(path, sizeof path, "%s/%s", f->root, rel);
    snprintf(dir, sizeof dir, "%s", path);
    *strrchr(dir, '/') = '\0';
    mkdirs(dir);
    FILE *fp = fopen(path, "w");
    assert_non_null(fp);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(fp, fmt, ap);
    va_end(ap);
    assert_int_equal(fclose(fp), 0);
}

/* The file's text less a trailing newline. */
static const char *get(const struct fake *f, const char *rel)
{
    static char text[4096];
    char path[512];
    snprintf(path, sizeof path, "%s/%s", f->root, rel);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    if (n && text[n - 1] == '\n')
        text[n - 1] = '\0';
    return text;
}

static uint64_t get_u64(const struct fake *f, const char *rel)
{
    uint64_t v = 0;
    assert_true(etf__parse_u64(get(f, rel), &v));
    return v;
}

static bool exists(const char *path)
{
    return access(path, F_OK) == 0;
}

static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (d) {
            struct dirent *e;
            while ((e = readdir(d))) {
                if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                    continue;
                char child[1024];
                snprintf(child, sizeof child, "%s/%s", path, e->d_name);
                remove_tree(child);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void fake_init(struct fake *f)
{
    snprintf(f->dir, sizeof f->dir, "/tmp/etf-sysfs-XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    snprintf(f->root, sizeof f->root, "%s/sys", f->dir);
    snprintf(f->journal, sizeof f->journal, "%s/run/etf/clocks.journal", f->dir);
    char run[128];
    snprintf(run, sizeof run, "%s/run", f->dir);
    mkdirs(run);
    mkdirs(f->root);
}

static void fake_free(struct fake *f)
{
    remove_tree(f->dir);
}

#define GPU_TX2 "class/devfreq/17000000.gp10b"
#define GPU_ORIN "class/devfreq/17000000.ga10b"
#define INA_TX2 "bus/i2c/drivers/ina3221x"
#define POL0 "devices/system/cpu/cpufreq/policy0"
#define POL1 "devices/system/cpu/cpufreq/policy1"

static const uint64_t tx2_hz[13] = {114750000,  216750000,  318750000, 420750000, 522750000,
                                    624750000,  726750000,  828750000, 930750000, 1032750000,
                                    1134750000, 1236750000, 1300500000};

/* A TX2: the GPU's devfreq node beside another node, and two INA3221 on iio. */
static void make_tx2(struct fake *f)
{
    fake_init(f);
    char list[512] = "";
    for (size_t i = 0; i < 13; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%" PRIu64, i ? " " : "",
                 tx2_hz[i]);
    put(f, GPU_TX2 "/available_frequencies", "%s\n", list);
    put(f, GPU_TX2 "/available_governors", "wmark_active nvhost_podgov userspace performance\n");
    put(f, GPU_TX2 "/governor", "nvhost_podgov\n");
    put(f, GPU_TX2 "/min_freq", "114750000\n");
    put(f, GPU_TX2 "/max_freq", "1300500000\n");
    put(f, GPU_TX2 "/cur_freq", "318750000\n");
    put(f, "class/devfreq/13e10000.host1x/cur_freq", "408000000\n");
    put(f, INA_TX2 "/bind", "%s", "");
    put(f, INA_TX2 "/uevent", "%s", "");
    const char *rails[2][3] = {{"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI"},
                               {"VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"}};
    const int mw[2][3] = {{1500, 800, 0}, {5000, 300, 600}};
    for (int d = 0; d < 2; d++) {
        for (int k = 0; k < 3; k++) {
            char rel[256];
            snprintf(rel, sizeof rel, INA_TX2 "/0-004%d/iio:device%d/rail_name_%d", d, d, k);
            put(f, rel, "%s\n", rails[d][k]);
            snprintf(rel, sizeof rel, INA_TX2 "/0-004%d/iio:device%d/in_power%d_input", d, d, k);
            put(f, rel, "%d\n", mw[d][k]);
        }
    }
}

/* An Orin: devfreq ga10b, and its INA3221 through hwmon beside an adapter without one. */
#define HWMON "bus/i2c/devices/1-0040/hwmon/hwmon3"
static void make_orin(struct fake *f)
{
    fake_init(f);
    put(f, GPU_ORIN "/available_frequencies",
        "306000000 408000000 510000000 612000000 714000000 816000000 918000000 1020000000 "
        "1122000000 1224000000 1300500000\n");
    put(f, GPU_ORIN "/governor", "nvhost_podgov\n");
    put(f, GPU_ORIN "/min_freq", "306000000\n");
    put(f, GPU_ORIN "/max_freq", "1300500000\n");
    put(f, GPU_ORIN "/cur_freq", "612000000\n");
    put(f, "bus/i2c/devices/i2c-1/name", "3160000.i2c\n");
    put(f, HWMON "/name", "ina3221\n");
    put(f, HWMON "/in1_label", "VDD_GPU_SOC\n");
    put(f, HWMON "/in1_input", "5000\n");
    put(f, HWMON "/curr1_input", "1200\n");
    put(f, HWMON "/in2_label", "VDD_CPU_CV\n");
    put(f, HWMON "/in2_input", "5000\n");
    put(f, HWMON "/curr2_input", "400\n");
    put(f, HWMON "/in7_label", "sum of shunt voltages\n");
    put(f, HWMON "/in7_input", "12\n");
}

#define RAPL_RANGE 262143328850ull
/* An Intel host: two userspace policies of two CPUs each, and RAPL with two packages. */
static void make_intel(struct fake *f)
{
    fake_init(f);
    const char *pol[2] = {POL0, POL1};
    for (int i = 0; i < 2; i++) {
        char rel[256];
#define PUT_POL(file, ...)                                                                         \
    do {                                                                                           \
        snprintf(rel, sizeof rel, "%s/%s", pol[i], file);                                          \
        put(f, rel, __VA_ARGS__);                                                                  \
    } while (0)
        PUT_POL("scaling_available_frequencies", "3500000 2800000 2100000 1400000 800000 \n");
        PUT_POL("scaling_available_governors", "userspace performance schedutil\n");
        PUT_POL("scaling_governor", "userspace\n");
        PUT_POL("scaling_min_freq", "800000\n");
        PUT_POL("scaling_max_freq", "3500000\n");
        PUT_POL("scaling_setspeed", "2100000\n");
        PUT_POL("scaling_cur_freq", "2100000\n");
        PUT_POL("related_cpus", "%d %d\n", 2 * i, 2 * i + 1);
#undef PUT_POL
    }
    put(f, "class/powercap/intel-rapl/enabled", "1\n");
    put(f, "class/powercap/intel-rapl:0/name", "package-0\n");
    put(f, "class/powercap/intel-rapl:0/max_energy_range_uj", "%llu\n", RAPL_RANGE);
    put(f, "class/powercap/intel-rapl:0/energy_uj", "%llu\n", RAPL_RANGE - 1000);
    put(f, "class/powercap/intel-rapl:0:0/name", "core\n");
    put(f, "class/powercap/intel-rapl:0:0/max_energy_range_uj", "%llu\n", RAPL_RANGE);
    put(f, "class/powercap/intel-rapl:0:0/energy_uj", "100\n");
    put(f, "class/powercap/intel-rapl:0:2/name", "dram\n");
    put(f, "class/powercap/intel-rapl:0:2/max_energy_range_uj", "65712999613\n");
    put(f, "class/powercap/intel-rapl:0:2/energy_uj", "2000\n");
    put(f, "class/powercap/intel-rapl:1/name", "package-1\n");
    put(f, "class/powercap/intel-rapl:1/max_energy_range_uj", "%llu\n", RAPL_RANGE);
    put(f, "class/powercap/intel-rapl:1/energy_uj", "5000\n");
}

/* ---- The hooked I/O table ---- */

struct hook {
    bool mirror;           /* cur follows max_freq / scaling_max_freq / scaling_setspeed */
    const char *fail_name; /* refuse this file (basename) ... */
    int fail_errno;        /* ... with this errno ... */
    bool fail_at_open;     /* ... at open rather than at write */
    char log[64][96];      /* "file=value" for every write, in order */
    int n_log;
    const char *journal;        /* checked for at the first write */
    int journal_at_first_write; /* -1 = no write yet */
};

static void hook_init(struct hook *h, bool mirror)
{
    memset(h, 0, sizeof *h);
    h->mirror = mirror;
    h->journal_at_first_write = -1;
}

static const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

static void fd_path(int fd, char *out, size_t cap)
{
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, out, cap - 1);
    out[n > 0 ? n : 0] = '\0';
}

static int hook_open(void *ctx, const char *path, int flags)
{
    struct hook *h = ctx;
    if (h->fail_name && h->fail_at_open && strcmp(base_name(path), h->fail_name) == 0)
        return -h->fail_errno;
    /* Like a sysfs attribute, the file keeps its value until a write is accepted. */
    return etf__sysfs_posix_io.open(NULL, path, flags & ~O_TRUNC);
}

static ssize_t hook_read(void *ctx, int fd, void *buf, size_t n)
{
    return etf__sysfs_posix_io.read(NULL, fd, buf, n);
}

static void write_sibling(const char *path, const char *sibling, const void *buf, size_t n)
{
    char other[512];
    snprintf(other, sizeof other, "%s", path);
    snprintf(strrchr(other, '/') + 1, sizeof other - (size_t)(strrchr(other, '/') + 1 - other),
             "%s", sibling);
    int fd = open(other, O_WRONLY | O_TRUNC);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, n), (ssize_t)n);
    close(fd);
}

static ssize_t hook_write(void *ctx, int fd, const void *buf, size_t n)
{
    struct hook *h = ctx;
    char path[512];
    fd_path(fd, path, sizeof path);
    const char *name = base_name(path);
    if (h->journal_at_first_write < 0 && h->journal)
        h->journal_at_first_write = exists(h->journal);
    if (h->n_log < 64) {
        int len = (int)n;
        if (len > 0 && ((const char *)buf)[len - 1] == '\n')
            len--;
        snprintf(h->log[h->n_log++], sizeof h->log[0], "%.40s=%.*s", name, len > 40 ? 40 : len,
                 (const char *)buf);
    }
    if (h->fail_name && !h->fail_at_open && strcmp(name, h->fail_name) == 0)
        return -h->fail_errno;
    assert_int_equal(ftruncate(fd, 0), 0);
    ssize_t r = etf__sysfs_posix_io.write(NULL, fd, buf, n);
    if (r > 0 && h->mirror) {
        if (strcmp(name, "max_freq") == 0)
            write_sibling(path, "cur_freq", buf, n);
        else if (strcmp(name, "scaling_max_freq") == 0 || strcmp(name, "scaling_setspeed") == 0)
            write_sibling(path, "scaling_cur_freq", buf, n);
    }
    return r;
}

static int hook_close(void *ctx, int fd)
{
    return etf__sysfs_posix_io.close(NULL, fd);
}

static int hook_readdir(void *ctx, const char *path, int (*fn)(void *arg, const char *name),
                        void *arg)
{
    return etf__sysfs_posix_io.readdir(NULL, path, fn, arg);
}

static const struct etf_sysfs_io hook_io = {
    .open = hook_open,
    .read = hook_read,
    .write = hook_write,
    .close = hook_close,
    .readdir = hook_readdir,
};

static struct etf_freq_config freq_cfg(const struct fake *f, struct hook *h)
{
    struct etf_freq_config c;
    memset(&c, 0, sizeof c);
    c.sysfs.root = f->root;
    c.sysfs.io = h ? &hook_io : NULL;
    c.sysfs.io_ctx = h;
    c.journal_path = f->journal;
    return c;
}

static struct etf_meter_config meter_cfg(const struct fake *f, struct hook *h)
{
    struct etf_meter_config c;
    memset(&c, 0, sizeof c);
    c.sysfs.root = f->root;
    c.sysfs.io = h ? &hook_io : NULL;
    c.sysfs.io_ctx = h;
    return c;
}

static void assert_log(const struct hook *h, int n, const char *const *want)
{
    for (int i = 0; i < h->n_log; i++)
        print_message("write %d: %s\n", i, h->log[i]);
    assert_int_equal(h->n_log, n);
    for (int i = 0; i < n; i++)
        assert_string_equal(h->log[i], want[i]);
}

static void assert_contains(const char *text, const char *part)
{
    if (!strstr(text, part))
        fail_msg("'%s' does not contain '%s'", text, part);
}

/* ---- The I/O layer ---- */

static void parsers_are_strict(void **state)
{
    uint64_t u;
    int64_t i;
    assert_true(etf__parse_u64("12\n", &u));
    assert_int_equal(u, 12);
    assert_true(etf__parse_u64("18446744073709551615", &u));
    assert_int_equal(u, UINT64_MAX);
    const char *bad[] = {"",   "\n", "12abc", " 12",    "12 ",
                         "+1", "-1", "0x10",  "12\n\n", "18446744073709551616",
                         "1.5"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        assert_false(etf__parse_u64(bad[k], &u));
    assert_true(etf__parse_i64("-5\n", &i));
    assert_int_equal(i, -5);
    assert_true(etf__parse_i64("-9223372036854775808", &i));
    assert_true(i == INT64_MIN);
    assert_false(etf__parse_i64("-", &i));
    assert_false(etf__parse_i64("9223372036854775808", &i));
    assert_false(etf__parse_i64("--1", &i));
}

static void paths_never_leave_the_root(void **state)
{
    struct etf_sysfs fs;
    struct etf_sysfs_config cfg = {.root = "/tmp/x/"};
    char out[600];
    assert_int_equal(etf__sysfs_init(&fs, &cfg, NULL), 0);
    assert_string_equal(fs.root, "/tmp/x");
    assert_int_equal(etf__sysfs_abspath(&fs, "class/devfreq/a", out, sizeof out, NULL), 0);
    assert_string_equal(out, "/tmp/x/class/devfreq/a");
    const char *bad[] = {
        "../etc/passwd", "/etc/passwd", "class/../../etc", "a//b", "a/./b", "a/", "",
        "a/b c",         "a/\x01"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++)
        assert_int_equal(etf__sysfs_abspath(&fs, bad[k], out, sizeof out, NULL), ETF_EINVAL);
    /* The root comes from the configuration, else the environment, else /sys. */
    struct etf_diag diag = {{0}};
    cfg.root = "relative/sys";
    assert_int_equal(etf__sysfs_init(&fs, &cfg, &diag), ETF_EINVAL);
    assert_contains(diag.msg, "relative/sys");
    setenv("ETF_SYSFS_ROOT", "/tmp/fake-sys", 1);
    assert_int_equal(etf__sysfs_init(&fs, NULL, NULL), 0);
    assert_string_equal(fs.root, "/tmp/fake-sys");
    unsetenv("ETF_SYSFS_ROOT");
    assert_int_equal(etf__sysfs_init(&fs, NULL, NULL), 0);
    assert_string_equal(fs.root, "/sys");
}

static void reads_name_the_file_and_what_was_found(void **state)
{
    struct fake f;
    fake_init(&f);
    put(&f, "a/num", "12abc\n");
    put(&f, "a/list", "1 2  3\n");
    put(&f, "a/good", "4 5 6 \n");
    put(&f, "a/word", "two words\n");
    struct etf_sysfs fs;
    struct etf_sysfs_config cfg = {.root = f.root};
    struct etf_diag diag = {{0}};
    assert_int_equal(etf__sysfs_init(&fs, &cfg, NULL), 0);
    uint64_t v, list[8];
    size_t n;
    assert_int_equal(etf__sysfs_read_u64(&fs, "a/num", &v, &diag), ETF_EFORMAT);
    assert_contains(diag.msg, "/sys/a/num");
    assert_contains(diag.msg, "'12abc'");
    assert_int_equal(etf__sysfs_read_u64_list(&fs, "a/list", list, 8, &n, &diag), ETF_EFORMAT);
    assert_int_equal(etf__sysfs_read_u64_list(&fs, "a/good", list, 8, &n, NULL), 0);
    assert_int_equal(n, 3);
    assert_int_equal(list[2], 6);
    assert_int_equal(etf__sysfs_read_u64_list(&fs, "a/good", list, 2, &n, &diag), ETF_EFORMAT);
    char word[32];
    assert_int_equal(etf__sysfs_read_word(&fs, "a/word", word, sizeof word, &diag), ETF_EFORMAT);
    assert_int_equal(etf__sysfs_read_line(&fs, "a/word", word, sizeof word, NULL), 0);
    assert_string_equal(word, "two words");
    assert_int_equal(etf__sysfs_read_u64(&fs, "a/missing", &v, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "a/missing");
    fake_free(&f);
}

static void listings_filter_validate_and_sort(void **state)
{
    struct fake f;
    fake_init(&f);
    put(&f, "cpufreq/policy10/x", "1");
    put(&f, "cpufreq/policy2/x", "1");
    put(&f, "cpufreq/policy0/x", "1");
    put(&f, "cpufreq/boost", "1");
    put(&f, "cpufreq/policy 3", "1");
    struct etf_sysfs fs;
    struct etf_sysfs_config cfg = {.root = f.root};
    assert_int_equal(etf__sysfs_init(&fs, &cfg, NULL), 0);
    struct etf_sysfs_names names;
    assert_int_equal(etf__sysfs_list(&fs, "cpufreq", "policy*", &names, NULL), 0);
    assert_int_equal(names.n, 3); /* "policy 3" is not a valid component */
    assert_string_equal(names.v[0], "policy0");
    assert_string_equal(names.v[1], "policy2");
    assert_string_equal(names.v[2], "policy10");
    etf__sysfs_names_free(&names);
    assert_int_equal(etf__sysfs_list(&fs, "nothing", "*", &names, NULL), ETF_ENOENT);
    fake_free(&f);
}

/* ---- devfreq ---- */

static void devfreq_pins_min_and_max_in_a_safe_order(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), 0);
    assert_string_equal(etf_freq_name(fq), "devfreq");
    assert_true(etf__freq_can_set(fq));
    uint64_t hz = 0;
    assert_int_equal(etf_freq_current(fq, &hz), 0);
    assert_int_equal(hz, 318750000);
    /* The list on offer, ascending; a short buffer gets the first ones and the count. */
    uint64_t list[16];
    size_t n = 0;
    assert_int_equal(etf__freq_list(fq, list, 16, &n), 0);
    assert_int_equal(n, 13);
    assert_memory_equal(list, tx2_hz, sizeof tx2_hz);
    assert_int_equal(etf__freq_list(fq, list, 2, &n), 0);
    assert_int_equal(n, 13);
    assert_int_equal(list[1], tx2_hz[1]);

    /* Lowering: min first, then max. */
    assert_int_equal(etf__freq_set(fq, 624750000), 0);
    const char *down[] = {"min_freq=624750000", "max_freq=624750000"};
    assert_log(&h, 2, down);
    assert_int_equal(etf_freq_current(fq, &hz), 0);
    assert_int_equal(hz, 624750000);
    /* Raising above the max: max first, then min. */
    h.n_log = 0;
    assert_int_equal(etf__freq_set(fq, 1300500000), 0);
    const char *up[] = {"max_freq=1300500000", "min_freq=1300500000"};
    assert_log(&h, 2, up);
    assert_int_equal(get_u64(&f, GPU_TX2 "/cur_freq"), 1300500000);
    assert_int_equal(etf_freq_switches(fq), 2);
    assert_string_equal(etf_freq_last_error(fq), "");

    /* Close puts back what open found, in a safe order, and removes the journal. */
    assert_true(exists(f.journal));
    h.n_log = 0;
    etf_freq_close(fq);
    const char *restore[] = {"min_freq=114750000"};
    assert_log(&h, 1, restore);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 114750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 1300500000);
    assert_string_equal(get(&f, GPU_TX2 "/governor"), "nvhost_podgov");
    assert_false(exists(f.journal));
    fake_free(&f);
}

static void devfreq_journal_is_written_before_the_first_change(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    h.journal = f.journal;
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, NULL), 0);
    assert_int_equal(h.n_log, 0); /* open changes nothing */
    assert_int_equal(etf__freq_set(fq, 726750000), 0);
    assert_int_equal(h.journal_at_first_write, 1);
    /* What it says: the settings found at open, and the root they belong to. */
    char path[256];
    snprintf(path, sizeof path, "%s", f.journal);
    FILE *fp = fopen(path, "r");
    assert_non_null(fp);
    char text[1024];
    size_t n = fread(text, 1, sizeof text - 1, fp);
    fclose(fp);
    text[n] = '\0';
    assert_contains(text, "etf-clock-journal 1\n");
    char root_line[160];
    snprintf(root_line, sizeof root_line, "root %s\n", f.root);
    assert_contains(text, root_line);
    assert_contains(text, "devfreq " GPU_TX2
                          " governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\n");
    assert_contains(text, "\nend\n");
    etf_freq_close(fq);
    assert_false(exists(f.journal));
    fake_free(&f);
}

static void devfreq_refuses_frequencies_not_available(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, NULL), 0);
    assert_int_equal(etf__freq_set(fq, 1000000000), ETF_EINVAL);
    assert_int_equal(h.n_log, 0);
    assert_contains(etf_freq_last_error(fq), "1000000000 Hz is not available");
    assert_contains(etf_freq_last_error(fq), "114750000 216750000");
    assert_contains(etf_freq_last_error(fq), "1300500000");
    assert_int_equal(etf_freq_switches(fq), 0);
    etf_freq_close(fq);
    fake_free(&f);
}

static void devfreq_refused_write_is_a_device_error(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, NULL), 0);
    assert_int_equal(etf__freq_set(fq, 624750000), 0);
    h.fail_name = "max_freq";
    h.fail_errno = EACCES;
    assert_int_equal(etf__freq_set(fq, 1300500000), ETF_EDEVICE);
    assert_contains(etf_freq_last_error(fq), "max_freq");
    assert_contains(etf_freq_last_error(fq), "Permission denied");
    /* The limits in force are read again after a failure; the next switch works. */
    h.fail_name = NULL;
    h.n_log = 0;
    assert_int_equal(etf__freq_set(fq, 1300500000), 0);
    const char *up[] = {"max_freq=1300500000", "min_freq=1300500000"};
    assert_log(&h, 2, up);
    /* Refused at open (EPERM) is the same. */
    h.fail_name = "min_freq";
    h.fail_errno = EPERM;
    h.fail_at_open = true;
    assert_int_equal(etf__freq_set(fq, 114750000), ETF_EDEVICE);
    assert_contains(etf_freq_last_error(fq), "Operation not permitted");
    h.fail_name = NULL;
    etf_freq_close(fq);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 114750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 1300500000);
    fake_free(&f);
}

static void devfreq_times_out_when_cur_freq_does_not_follow(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, false);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    cfg.settle_timeout_ns = 5 * MS;
    struct etf_freq *fq = NULL;
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, NULL), 0);
    uint64_t t0 = etf_host_ns();
    assert_int_equal(etf__freq_set(fq, 930750000), ETF_EDEVICE);
    assert_true(etf_host_ns() - t0 >= 5 * MS);
    assert_contains(etf_freq_last_error(fq),
                    "cur_freq stayed at 318750000 Hz, expected 930750000 Hz");
    assert_int_equal(etf_freq_switches(fq), 0);
    etf_freq_close(fq);
    fake_free(&f);
}

static void devfreq_finds_the_orin_gpu_or_the_node_named(void **state)
{
    struct fake f;
    struct hook h;
    make_orin(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), 0);
    assert_int_equal(etf__freq_set(fq, 918000000), 0);
    assert_int_equal(get_u64(&f, GPU_ORIN "/cur_freq"), 918000000);
    etf_freq_close(fq);
    assert_int_equal(get_u64(&f, GPU_ORIN "/min_freq"), 306000000);

    cfg.node = "17000000.gp10b";
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "17000000.gp10b");
    cfg.node = "../../etc";
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), ETF_EINVAL);
    fake_free(&f);

    /* No GPU: the message says what is there. */
    fake_init(&f);
    put(&f, "class/devfreq/13e10000.host1x/cur_freq", "1\n");
    cfg = freq_cfg(&f, NULL);
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "17000000.ga10b");
    assert_contains(diag.msg, "found: 13e10000.host1x");
    fake_free(&f);
}

/* Opens the controller in a child that switches and dies without closing, like kill -9. */
static void crash_after_switch(const struct etf_freq_config *cfg, const char *backend, uint64_t hz)
{
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct etf_freq *fq = NULL;
        if (etf_freq_open(backend, cfg, &fq, NULL) != 0)
            _exit(1);
        if (etf__freq_set(fq, hz) != 0)
            _exit(2);
        _exit(0);
    }
    int status = 0;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static void devfreq_next_open_restores_after_a_crash(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    crash_after_switch(&cfg, "devfreq", 624750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 624750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 624750000);
    assert_true(exists(f.journal));
    /* Someone changed the governor meanwhile: it is put back too. */
    put(&f, GPU_TX2 "/governor", "performance\n");

    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    h.n_log = 0;
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), 0);
    const char *restore[] = {"governor=nvhost_podgov", "min_freq=114750000", "max_freq=1300500000"};
    assert_log(&h, 3, restore);
    assert_string_equal(get(&f, GPU_TX2 "/governor"), "nvhost_podgov");
    /* The new journal holds the original settings, not the crashed controller's. */
    etf_freq_close(fq);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 114750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 1300500000);
    assert_false(exists(f.journal));
    fake_free(&f);
}

static void restore_journal_one_shot(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_diag diag = {{0}};
    /* Nothing to do: not an error. */
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    crash_after_switch(&cfg, "devfreq", 1032750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 1032750000);
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 114750000);
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 1300500000);
    assert_false(exists(f.journal));
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    fake_free(&f);
}

static void failed_restore_keeps_the_journal(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, NULL), 0);
    assert_int_equal(etf__freq_set(fq, 420750000), 0);
    h.fail_name = "min_freq";
    h.fail_errno = EBUSY;
    etf_freq_close(fq);
    assert_true(exists(f.journal));
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), ETF_EDEVICE);
    assert_contains(diag.msg, "journal is kept");
    assert_true(exists(f.journal));
    h.fail_name = NULL;
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 114750000);
    assert_false(exists(f.journal));
    fake_free(&f);
}

static void write_journal(const struct fake *f, const char *body)
{
    char dir[160];
    snprintf(dir, sizeof dir, "%s", f->journal);
    *strrchr(dir, '/') = '\0';
    mkdirs(dir);
    FILE *fp = fopen(f->journal, "w");
    assert_non_null(fp);
    fputs(body, fp);
    fclose(fp);
}

static void bad_journals_are_refused_and_nothing_is_written(void **state)
{
    struct fake f;
    struct hook h;
    make_tx2(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    char head[256];
    snprintf(head, sizeof head, "etf-clock-journal 1\nroot %s\n", f.root);
    const char *node = "devfreq " GPU_TX2;
    struct {
        const char *body; /* after the head, or whole when head is false */
        bool head;
        const char *says;
    } cases[] = {
        {"hello\n", false, "line 1"},
        {"", false, "incomplete"},
        {"etf-clock-journal 1\nroot /elsewhere\nend\n", false, "/elsewhere"},
        {"%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\n", true, "incomplete"},
        {"%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\nend", true, "newline"},
        {"%s governor=nvhost_podgov min_hz=12abc max_hz=1300500000\nend\n", true, "min_hz"},
        {"%s governor=x;rm min_hz=114750000 max_hz=1300500000\nend\n", true, "governor"},
        {"%s governor=nvhost_podgov max_hz=1300500000 min_hz=114750000\nend\n", true, "min_hz"},
        {"%s governor=nvhost_podgov min_hz=114750000  max_hz=1300500000\nend\n", true, "line 3"},
        {"%s governor=nvhost_podgov min_hz=5 max_hz=1300500000\nend\n", true, "outside"},
        {"%s governor=nvhost_podgov min_hz=1300500000 max_hz=114750000\nend\n", true, "above"},
        {"%s governor=schedutil min_hz=114750000 max_hz=1300500000\nend\n", true,
         "not in available_governors"},
        {"devfreq class/devfreq/../../../etc governor=a min_hz=1 max_hz=2\nend\n", true,
         "node directory"},
        {"devfreq class/devfreq/17000000.gv11b governor=a min_hz=1 max_hz=2\nend\n", true,
         "does not fit"},
        {"%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000 setspeed_hz=1\nend\n", true,
         "end of the line"},
        {"%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\nend\nmore\n", true,
         "after 'end'"},
        {"%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\n"
         "%s governor=nvhost_podgov min_hz=114750000 max_hz=1300500000\nend\n",
         true, "each node once"},
    };
    /* The controller is pinned as a crash would leave it: a refused journal changes nothing. */
    put(&f, GPU_TX2 "/min_freq", "624750000\n");
    put(&f, GPU_TX2 "/max_freq", "624750000\n");
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        char body[1024], node_body[768];
        snprintf(node_body, sizeof node_body, cases[k].body, node, node);
        snprintf(body, sizeof body, "%s%s", cases[k].head ? head : "", node_body);
        write_journal(&f, body);
        struct etf_diag diag = {{0}};
        h.n_log = 0;
        int rc = etf_freq_restore_journal(&cfg, &diag);
        print_message("case %zu: %s\n", k, diag.msg);
        assert_int_equal(rc, ETF_EFORMAT);
        assert_contains(diag.msg, f.journal);
        assert_contains(diag.msg, cases[k].says);
        assert_int_equal(h.n_log, 0);
        assert_true(exists(f.journal));
        /* Opening a controller refuses too, rather than journal over it. */
        struct etf_freq *fq = NULL;
        assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), ETF_EFORMAT);
        assert_int_equal(h.n_log, 0);
    }
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 624750000);
    /* A good journal in the same place is put back. */
    char body[1024];
    snprintf(body, sizeof body,
             "# comment\n%s%s governor=nvhost_podgov min_hz=0 max_hz=1300500000\nend\n", head,
             node);
    write_journal(&f, body);
    assert_int_equal(etf_freq_restore_journal(&cfg, NULL), 0);
    assert_int_equal(get_u64(&f, GPU_TX2 "/min_freq"), 0); /* 0 = no limit, older kernels */
    assert_int_equal(get_u64(&f, GPU_TX2 "/max_freq"), 1300500000);
    fake_free(&f);
}

static void a_second_process_cannot_drive_the_clocks(void **state)
{
    struct fake f;
    make_tx2(&f);
    struct etf_freq_config cfg = freq_cfg(&f, NULL);
    int up[2], down[2];
    assert_int_equal(pipe(up), 0);
    assert_int_equal(pipe(down), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct etf_freq *fq = NULL;
        char c = etf_freq_open("devfreq", &cfg, &fq, NULL) == 0 ? 'y' : 'n';
        if (write(up[1], &c, 1) != 1 || read(down[0], &c, 1) != 1)
            _exit(1);
        etf_freq_close(fq);
        _exit(0);
    }
    char c = 0;
    assert_int_equal(read(up[0], &c, 1), 1);
    assert_int_equal(c, 'y');
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), ETF_EBUSY);
    char pid_text[32];
    snprintf(pid_text, sizeof pid_text, "process %d", (int)pid);
    assert_contains(diag.msg, pid_text);
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), ETF_EBUSY);
    assert_int_equal(write(down[1], &c, 1), 1);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    assert_int_equal(etf_freq_open("devfreq", &cfg, &fq, &diag), 0);
    etf_freq_close(fq);
    close(up[0]);
    close(up[1]);
    close(down[0]);
    close(down[1]);
    fake_free(&f);
}

/* ---- cpufreq ---- */

static void cpufreq_switches_every_policy_through_setspeed(void **state)
{
    struct fake f;
    struct hook h;
    make_intel(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("cpufreq", &cfg, &fq, &diag), 0);
    uint64_t hz;
    assert_int_equal(etf_freq_current(fq, &hz), 0);
    assert_int_equal(hz, 2100000000ull);
    /* The list on offer, in Hz, ascending (the policies list kHz, descending). */
    uint64_t list[8];
    size_t n = 0;
    assert_int_equal(etf__freq_list(fq, list, 8, &n), 0);
    const uint64_t want[] = {800000000, 1400000000, 2100000000, 2800000000, 3500000000};
    assert_int_equal(n, 5);
    assert_memory_equal(list, want, sizeof want);
    assert_int_equal(etf__freq_set(fq, 2800000000ull), 0);
    const char *set[] = {"scaling_setspeed=2800000", "scaling_setspeed=2800000"};
    assert_log(&h, 2, set);
    assert_int_equal(get_u64(&f, POL1 "/scaling_cur_freq"), 2800000);
    assert_int_equal(etf_freq_current(fq, &hz), 0);
    assert_int_equal(hz, 2800000000ull);
    /* kHz granularity and the list on offer. */
    assert_int_equal(etf__freq_set(fq, 2800000001ull), ETF_EINVAL);
    assert_int_equal(etf__freq_set(fq, 3000000000ull), ETF_EINVAL);
    assert_contains(etf_freq_last_error(fq), "800000000 1400000000 2100000000");
    h.n_log = 0;
    etf_freq_close(fq);
    /* setspeed put back; the governor and limits never moved. */
    assert_int_equal(get_u64(&f, POL0 "/scaling_setspeed"), 2100000);
    assert_int_equal(get_u64(&f, POL1 "/scaling_setspeed"), 2100000);
    assert_int_equal(h.n_log, 2);
    assert_false(exists(f.journal));
    fake_free(&f);
}

static void cpufreq_pins_limits_without_userspace_and_honours_the_cpu_set(void **state)
{
    struct fake f;
    struct hook h;
    make_intel(&f);
    put(&f, POL1 "/scaling_governor", "schedutil\n");
    put(&f, POL1 "/scaling_max_freq", "2100000\n");
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    cfg.cpus = "2-3";
    struct etf_freq *fq = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_open("cpufreq", &cfg, &fq, &diag), 0);
    assert_int_equal(etf__freq_set(fq, 2800000000ull), 0);
    const char *up[] = {"scaling_max_freq=2800000", "scaling_min_freq=2800000"};
    assert_log(&h, 2, up);
    h.n_log = 0;
    assert_int_equal(etf__freq_set(fq, 800000000ull), 0);
    const char *down[] = {"scaling_min_freq=800000", "scaling_max_freq=800000"};
    assert_log(&h, 2, down);
    assert_int_equal(get_u64(&f, POL0 "/scaling_setspeed"), 2100000); /* not selected */
    etf_freq_close(fq);
    assert_int_equal(get_u64(&f, POL1 "/scaling_min_freq"), 800000);
    assert_int_equal(get_u64(&f, POL1 "/scaling_max_freq"), 2100000);

    const char *bad[] = {"7", "0-", "1,,2", "3-1", "a", "99999"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        cfg.cpus = bad[k];
        assert_int_equal(etf_freq_open("cpufreq", &cfg, &fq, &diag), ETF_EINVAL);
    }
    cfg.cpus = "7";
    assert_int_equal(etf_freq_open("cpufreq", &cfg, &fq, &diag), ETF_EINVAL);
    assert_contains(diag.msg, "CPU 7");
    fake_free(&f);
}

static void cpufreq_crash_is_restored(void **state)
{
    struct fake f;
    struct hook h;
    make_intel(&f);
    hook_init(&h, true);
    struct etf_freq_config cfg = freq_cfg(&f, &h);
    crash_after_switch(&cfg, "cpufreq", 3500000000ull);
    assert_int_equal(get_u64(&f, POL0 "/scaling_setspeed"), 3500000);
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_freq_restore_journal(&cfg, &diag), 0);
    assert_int_equal(get_u64(&f, POL0 "/scaling_setspeed"), 2100000);
    assert_int_equal(get_u64(&f, POL1 "/scaling_setspeed"), 2100000);
    fake_free(&f);
}

/* ---- Meters ---- */

static void read_meter(struct etf_meter *m, uint64_t *uj, uint64_t *at)
{
    assert_int_equal(m->ops->read_energy(m, uj, at), 0);
}

static void sleep_ms(int ms)
{
    struct timespec ts = {0, ms * 1000000L};
    nanosleep(&ts, NULL);
}

/* µJ from mW over ns: 1 mW × 1 ns = 1e-6 µJ. */
static void assert_energy(uint64_t uj, double mw, uint64_t ns)
{
    double want = mw * (double)ns / 1e6;
    if (fabs((double)uj - want) > 1.0)
        fail_msg("energy %" PRIu64 " µJ, expected %.1f", uj, want);
}

static void ina3221_integrates_the_gpu_rail(void **state)
{
    struct fake f;
    make_tx2(&f);
    struct etf_meter_config cfg = meter_cfg(&f, NULL);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), 0);
    assert_true(etf__meter_measures(m));
    uint64_t e1, t1, e2, t2, e3, t3;
    read_meter(m, &e1, &t1);
    sleep_ms(3);
    read_meter(m, &e2, &t2);
    assert_true(t2 > t1);
    assert_energy(e2 - e1, 1500, t2 - t1); /* VDD_SYS_GPU */
    put(&f, INA_TX2 "/0-0040/iio:device0/in_power0_input", "3000\n");
    sleep_ms(2);
    read_meter(m, &e3, &t3);
    assert_energy(e3 - e2, (1500 + 3000) / 2.0, t3 - t2); /* trapezoid */
    double mw = 0;
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_true(mw == 3000.0);
    /* A bad value fails the read and leaves the counter as it was. */
    put(&f, INA_TX2 "/0-0040/iio:device0/in_power0_input", "-1\n");
    uint64_t e, t;
    assert_int_equal(m->ops->read_energy(m, &e, &t), ETF_EFORMAT);
    etf_meter_close(m);

    /* Another rail by name, any case. */
    cfg.rail = "vdd_sys_cpu";
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), 0);
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_true(mw == 300.0);
    etf_meter_close(m);
    fake_free(&f);
}

static void ina3221_missing_rail_lists_the_rails_found(void **state)
{
    struct fake f;
    make_tx2(&f);
    struct etf_meter_config cfg = meter_cfg(&f, NULL);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    cfg.rail = "VDD_CV";
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "VDD_CV");
    assert_contains(diag.msg, "VDD_SYS_GPU, VDD_SYS_SOC, VDD_4V0_WIFI, VDD_IN");
    cfg.rail = NULL;
    put(&f, INA_TX2 "/0-0040/iio:device0/rail_name_0", "VDD_SYS_GPUX\n");
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "GPU, VDD_GPU or VDD_SYS_GPU");
    fake_free(&f);
    fake_init(&f);
    cfg = meter_cfg(&f, NULL);
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "ina3221x");
    fake_free(&f);
}

static void ina3221_value_not_a_number_names_the_file(void **state)
{
    struct fake f;
    make_tx2(&f);
    put(&f, INA_TX2 "/0-0040/iio:device0/in_power0_input", "12abc\n");
    struct etf_meter_config cfg = meter_cfg(&f, NULL);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("ina3221", &cfg, &m, &diag), ETF_EFORMAT);
    assert_contains(diag.msg, "iio:device0/in_power0_input");
    assert_contains(diag.msg, "'12abc'");
    fake_free(&f);
}

static void hwmon_multiplies_volts_and_amps(void **state)
{
    struct fake f;
    make_orin(&f);
    struct etf_meter_config cfg = meter_cfg(&f, NULL);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("hwmon", &cfg, &m, &diag), 0);
    double mw = 0;
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_true(mw == 6000.0); /* 5000 mV × 1200 mA */
    uint64_t e1, t1, e2, t2;
    read_meter(m, &e1, &t1);
    sleep_ms(2);
    read_meter(m, &e2, &t2);
    assert_energy(e2 - e1, 6000, t2 - t1);
    /* A negative current (shunt offset) is no power. */
    put(&f, HWMON "/curr1_input", "-3\n");
    assert_int_equal(m->ops->read_power(m, &mw), 0);
    assert_true(mw == 0.0);
    put(&f, HWMON "/curr1_input", "1.2\n");
    assert_int_equal(m->ops->read_power(m, &mw), ETF_EFORMAT);
    etf_meter_close(m);

    cfg.rail = "NOPE";
    assert_int_equal(etf_meter_open("hwmon", &cfg, &m, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "VDD_GPU_SOC, VDD_CPU_CV, sum of shunt voltages");
    fake_free(&f);
}

static void rapl_sums_packages_and_survives_a_wrap(void **state)
{
    struct fake f;
    make_intel(&f);
    struct etf_meter_config cfg = meter_cfg(&f, NULL);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("rapl", &cfg, &m, &diag), 0);
    uint64_t e, t;
    read_meter(m, &e, &t);
    assert_int_equal(e, 0);
    /* package-0 wraps: 1000 µJ to the top, then 500 more; package-1 adds 2000. */
    put(&f, "class/powercap/intel-rapl:0/energy_uj", "500\n");
    put(&f, "class/powercap/intel-rapl:1/energy_uj", "7000\n");
    read_meter(m, &e, &t);
    assert_int_equal(e, 3500);
    put(&f, "class/powercap/intel-rapl:0/energy_uj", "600\n");
    read_meter(m, &e, &t);
    assert_int_equal(e, 3600);
    /* Above the range: refused, and the counter stays. */
    put(&f, "class/powercap/intel-rapl:1/energy_uj", "%llu\n", RAPL_RANGE + 1);
    assert_int_equal(m->ops->read_energy(m, &e, &t), ETF_EFORMAT);
    put(&f, "class/powercap/intel-rapl:1/energy_uj", "7000\n");
    read_meter(m, &e, &t);
    assert_int_equal(e, 3600);
    etf_meter_close(m);

    /* One domain by name, or a zone by id. */
    cfg.domain = "dram";
    assert_int_equal(etf_meter_open("rapl", &cfg, &m, &diag), 0);
    put(&f, "class/powercap/intel-rapl:0:2/energy_uj", "2500\n");
    read_meter(m, &e, &t);
    assert_int_equal(e, 500);
    etf_meter_close(m);
    cfg.domain = "intel-rapl:0:0";
    assert_int_equal(etf_meter_open("rapl", &cfg, &m, &diag), 0);
    etf_meter_close(m);
    cfg.domain = "psys";
    assert_int_equal(etf_meter_open("rapl", &cfg, &m, &diag), ETF_ENOENT);
    assert_contains(diag.msg, "intel-rapl:0 (package-0), intel-rapl:0:0 (core)");
    fake_free(&f);
}

static void rapl_root_only_counter_says_so(void **state)
{
    struct fake f;
    struct hook h;
    make_intel(&f);
    hook_init(&h, false);
    h.fail_name = "energy_uj";
    h.fail_errno = EACCES;
    h.fail_at_open = true;
    struct etf_meter_config cfg = meter_cfg(&f, &h);
    struct etf_meter *m = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_meter_open("rapl", &cfg, &m, &diag), ETF_EIO);
    assert_contains(diag.msg, "energy_uj");
    assert_contains(diag.msg, "permission denied");
    assert_contains(diag.msg, "root");
    fake_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(parsers_are_strict),
        cmocka_unit_test(paths_never_leave_the_root),
        cmocka_unit_test(reads_name_the_file_and_what_was_found),
        cmocka_unit_test(listings_filter_validate_and_sort),
        cmocka_unit_test(devfreq_pins_min_and_max_in_a_safe_order),
        cmocka_unit_test(devfreq_journal_is_written_before_the_first_change),
        cmocka_unit_test(devfreq_refuses_frequencies_not_available),
        cmocka_unit_test(devfreq_refused_write_is_a_device_error),
        cmocka_unit_test(devfreq_times_out_when_cur_freq_does_not_follow),
        cmocka_unit_test(devfreq_finds_the_orin_gpu_or_the_node_named),
        cmocka_unit_test(devfreq_next_open_restores_after_a_crash),
        cmocka_unit_test(restore_journal_one_shot),
        cmocka_unit_test(failed_restore_keeps_the_journal),
        cmocka_unit_test(bad_journals_are_refused_and_nothing_is_written),
        cmocka_unit_test(a_second_process_cannot_drive_the_clocks),
        cmocka_unit_test(cpufreq_switches_every_policy_through_setspeed),
        cmocka_unit_test(cpufreq_pins_limits_without_userspace_and_honours_the_cpu_set),
        cmocka_unit_test(cpufreq_crash_is_restored),
        cmocka_unit_test(ina3221_integrates_the_gpu_rail),
        cmocka_unit_test(ina3221_missing_rail_lists_the_rails_found),
        cmocka_unit_test(ina3221_value_not_a_number_names_the_file),
        cmocka_unit_test(hwmon_multiplies_volts_and_amps),
        cmocka_unit_test(rapl_sums_packages_and_survives_a_wrap),
        cmocka_unit_test(rapl_root_only_counter_says_so),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
