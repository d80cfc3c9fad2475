/* Clock nodes and the restore journal of the frequency controllers that change real clocks. */
#include "freq/journal.h"
#include "util/array.h"
#include "util/file.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_JOURNAL "/run/etf/clocks.journal"
#define DEFAULT_TIMEOUT_NS (50ull * 1000000ull)
#define POLL_NS 1000000ull
#define JOURNAL_MAX 65536
#define JOURNAL_NODES_MAX 256
#define AVAILABLE_MAX 256
#define JOURNAL_MAGIC "etf-clock-journal 1"
/* NVML indexes GPUs from 0; no machine has this many. */
#define NVML_GPUS_MAX 1024

static const struct etf_clk_files clk_files[] = {
    [ETF_CLK_DEVFREQ] =
        {
            .kind = "devfreq",
            .min = "min_freq",
            .max = "max_freq",
            .cur = "cur_freq",
            .governor = "governor",
            .available = "available_frequencies",
            .governors = "available_governors",
            .setspeed = NULL,
            .unit = "hz",
            .hz_per_unit = 1,
        },
    [ETF_CLK_CPUFREQ] =
        {
            .kind = "cpufreq",
            .min = "scaling_min_freq",
            .max = "scaling_max_freq",
            .cur = "scaling_cur_freq",
            .governor = "scaling_governor",
            .available = "scaling_available_frequencies",
            .governors = "scaling_available_governors",
            .setspeed = "scaling_setspeed",
            .unit = "khz",
            .hz_per_unit = 1000,
        },
};

const struct etf_clk_files *etf__clk_files(enum etf_clk_kind kind)
{
    return &clk_files[kind];
}

/* ---- Nodes ---- */

static bool digits(const char *s, size_t max)
{
    size_t n = strspn(s, "0123456789");
    return n > 0 && n <= max && s[n] == '\0';
}

bool etf__clk_dir_ok(enum etf_clk_kind kind, const char *dir)
{
    if (strlen(dir) >= sizeof((struct etf_clk_node *)0)->dir)
        return false;
    if (kind == ETF_CLK_DEVFREQ) {
        static const char prefix[] = "class/devfreq/";
        return strncmp(dir, prefix, sizeof prefix - 1) == 0 &&
               etf__sysfs_name_ok(dir + sizeof prefix - 1);
    }
    static const char policy[] = "devices/system/cpu/cpufreq/policy";
    static const char cpu[] = "devices/system/cpu/cpu";
    if (strncmp(dir, policy, sizeof policy - 1) == 0)
        return digits(dir + sizeof policy - 1, 5);
    if (strncmp(dir, cpu, sizeof cpu - 1) == 0) {
        char num[8];
        const char *p = dir + sizeof cpu - 1;
        const char *slash = strchr(p, '/');
        if (!slash || (size_t)(slash - p) >= sizeof num || strcmp(slash, "/cpufreq") != 0)
            return false;
        memcpy(num, p, (size_t)(slash - p));
        num[slash - p] = '\0';
        return digits(num, 5);
    }
    return false;
}

static int node_file(char *out, size_t cap, const char *dir, const char *file)
{
    int n = snprintf(out, cap, "%s/%s", dir, file);
    return n < 0 || (size_t)n >= cap ? ETF_EINVAL : 0;
}

/* A governor is written back to sysfs: only plain identifiers pass. */
static bool governor_ok(const char *g)
{
    size_t n = strlen(g);
    if (n == 0 || n >= 32)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)g[i]) && g[i] != '_' && g[i] != '-')
            return false;
    return true;
}

/* Checks a node's settings against what it offers. The same check guards values read at
 * open and values read back from a journal, so whatever was journaled can be restored. */
static int node_check(const struct etf_sysfs *fs, const struct etf_clk_node *n,
                      struct etf_diag *diag)
{
    const struct etf_clk_files *f = &clk_files[n->kind];
    char rel[ETF_SYSFS_PATH_MAX];
    uint64_t avail[AVAILABLE_MAX];
    size_t n_avail = 0;
    int rc = node_file(rel, sizeof rel, n->dir, f->available);
    if (!rc)
        rc = etf__sysfs_read_u64_list(fs, rel, avail, AVAILABLE_MAX, &n_avail, diag);
    if (rc)
        return rc;
    uint64_t lo = UINT64_MAX, hi = 0;
    for (size_t i = 0; i < n_avail; i++) {
        lo = avail[i] < lo ? avail[i] : lo;
        hi = avail[i] > hi ? avail[i] : hi;
    }
    if (!governor_ok(n->governor))
        return etf_diagf(diag, ETF_EFORMAT, "%s: governor '%.40s' is not a plain name", n->dir,
                         n->governor);
    char govs[1024];
    node_file(rel, sizeof rel, n->dir, f->governors);
    struct etf_diag ignored;
    rc = etf__sysfs_read(fs, rel, govs, sizeof govs, NULL, &ignored);
    if (rc == 0) {
        bool found = false;
        char *save = NULL;
        for (char *w = strtok_r(govs, " \n", &save); w; w = strtok_r(NULL, " \n", &save))
            found = found || strcmp(w, n->governor) == 0;
        if (!found)
            return etf_diagf(diag, ETF_EFORMAT, "%s: governor '%s' is not in %s", n->dir,
                             n->governor, f->governors);
    } else if (rc != ETF_ENOENT) {
        /* Nodes without a list of governors are fine; one that cannot be read is not. */
        if (diag)
            *diag = ignored;
        return rc;
    }
    /* devfreq on older kernels reports 0 for a limit never set: writing 0 back is valid. */
    bool zero_ok = n->kind == ETF_CLK_DEVFREQ;
    const struct {
        const char *what;
        uint64_t v;
        bool present;
    } vals[] = {
        {f->min, n->min, true},
        {f->max, n->max, true},
        {f->setspeed ? f->setspeed : "", n->setspeed, n->has_setspeed},
    };
    for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
        if (!vals[i].present || (zero_ok && vals[i].v == 0))
            continue;
        if (vals[i].v < lo || vals[i].v > hi)
            return etf_diagf(diag, ETF_EFORMAT,
                             "%s: %s %" PRIu64 " is outside the available %" PRIu64 "..%" PRIu64
                             " (%s)",
                             n->dir, vals[i].what, vals[i].v, lo, hi, f->unit);
    }
    if (n->min && n->max && n->min > n->max)
        return etf_diagf(diag, ETF_EFORMAT, "%s: %s %" PRIu64 " is above %s %" PRIu64, n->dir,
                         f->min, n->min, f->max, n->max);
    if (n->has_setspeed && (n->kind != ETF_CLK_CPUFREQ || strcmp(n->governor, "userspace") != 0))
        return etf_diagf(diag, ETF_EFORMAT, "%s: a setspeed without the userspace governor",
                         n->dir);
    return 0;
}

int etf__clk_read_node(const struct etf_sysfs *fs, enum etf_clk_kind kind, const char *dir,
                       struct etf_clk_node *out, struct etf_diag *diag)
{
    const struct etf_clk_files *f = &clk_files[kind];
    char rel[ETF_SYSFS_PATH_MAX];
    memset(out, 0, sizeof *out);
    out->kind = kind;
    if (!etf__clk_dir_ok(kind, dir))
        return etf_diagf(diag, ETF_EINVAL, "'%.200s' is not a %s node", dir, f->kind);
    snprintf(out->dir, sizeof out->dir, "%s", dir);
    int rc = node_file(rel, sizeof rel, dir, f->governor);
    if (!rc)
        rc = etf__sysfs_read_word(fs, rel, out->governor, sizeof out->governor, diag);
    if (!rc && !(rc = node_file(rel, sizeof rel, dir, f->min)))
        rc = etf__sysfs_read_u64(fs, rel, &out->min, diag);
    if (!rc && !(rc = node_file(rel, sizeof rel, dir, f->max)))
        rc = etf__sysfs_read_u64(fs, rel, &out->max, diag);
    if (!rc && f->setspeed && strcmp(out->governor, "userspace") == 0) {
        out->has_setspeed = true;
        if (!(rc = node_file(rel, sizeof rel, dir, f->setspeed)))
            rc = etf__sysfs_read_u64(fs, rel, &out->setspeed, diag);
    }
    if (!rc)
        rc = node_check(fs, out, diag);
    return rc;
}

/* ---- Switching ---- */

static int write_value(const struct etf_sysfs *fs, const char *dir, const char *file,
                       const char *text, struct etf_diag *diag)
{
    char rel[ETF_SYSFS_PATH_MAX];
    if (node_file(rel, sizeof rel, dir, file))
        return etf_diagf(diag, ETF_EINVAL, "%s/%s: path too long", dir, file);
    int rc = etf__sysfs_write(fs, rel, text, NULL, diag);
    /* The driver refusing a value (EINVAL, EACCES, EPERM, EBUSY...) is the device's failure;
     * a path that cannot be formed stays ETF_EINVAL. */
    return rc == ETF_EIO || rc == ETF_ENOENT ? ETF_EDEVICE : rc;
}

static int write_u64(const struct etf_sysfs *fs, const char *dir, const char *file, uint64_t v,
                     struct etf_diag *diag)
{
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, v);
    return write_value(fs, dir, file, text, diag);
}

/* Moves the limits from (*cur_min, *cur_max) to (new_min, new_max) keeping min <= max
 * between the writes. 0 stands for "no limit" (devfreq): lowest for a min, highest for a
 * max. With skip_equal, a limit already in force is not written again. */
static int set_limits(const struct etf_sysfs *fs, const char *dir, enum etf_clk_kind kind,
                      uint64_t *cur_min, uint64_t *cur_max, uint64_t new_min, uint64_t new_max,
                      bool skip_equal, struct etf_diag *diag)
{
    const struct etf_clk_files *f = &clk_files[kind];
    uint64_t eff_cur_max = *cur_max ? *cur_max : UINT64_MAX;
    bool max_first = new_min > eff_cur_max;
    for (int step = 0; step < 2; step++) {
        bool is_max = (step == 0) == max_first;
        uint64_t *cur = is_max ? cur_max : cur_min;
        uint64_t v = is_max ? new_max : new_min;
        if (skip_equal && *cur == v)
            continue;
        int rc = write_u64(fs, dir, is_max ? f->max : f->min, v, diag);
        if (rc)
            return rc;
        *cur = v;
    }
    return 0;
}

int etf__clk_pin(const struct etf_sysfs *fs, const char *dir, enum etf_clk_kind kind,
                 uint64_t *cur_min, uint64_t *cur_max, uint64_t target, struct etf_diag *diag)
{
    return set_limits(fs, dir, kind, cur_min, cur_max, target, target, false, diag);
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int etf__clk_wait(const struct etf_sysfs *fs, const char *dir, enum etf_clk_kind kind,
                  uint64_t target, uint64_t timeout_ns, struct etf_diag *diag)
{
    const struct etf_clk_files *f = &clk_files[kind];
    char rel[ETF_SYSFS_PATH_MAX];
    if (node_file(rel, sizeof rel, dir, f->cur))
        return etf_diagf(diag, ETF_EINVAL, "%s/%s: path too long", dir, f->cur);
    uint64_t deadline = mono_ns() + timeout_ns;
    for (;;) {
        uint64_t cur;
        int rc = etf__sysfs_read_u64(fs, rel, &cur, diag);
        if (rc)
            return rc;
        if (cur == target)
            return 0;
        if (mono_ns() >= deadline) {
            char path[ETF_SYSFS_PATH_MAX + 256];
            etf__sysfs_abspath(fs, rel, path, sizeof path, NULL);
            return etf_diagf(
                diag, ETF_EDEVICE,
                "%s: %s stayed at %" PRIu64 " Hz, expected %" PRIu64 " Hz (waited %" PRIu64 " ms)",
                path, f->cur, cur * f->hz_per_unit, target * f->hz_per_unit, timeout_ns / 1000000);
        }
        struct timespec ts = {0, (long)POLL_NS};
        nanosleep(&ts, NULL);
    }
}

/* ---- Restoring ---- */

static int restore_node(const struct etf_clk_ctl *c, const struct etf_clk_node *n,
                        struct etf_diag *diag)
{
    if (n->kind == ETF_CLK_NVML)
        return etf__freq_nvml_reset(c->nvml_library, n->gpu, diag);
    const struct etf_sysfs *fs = &c->fs;
    const struct etf_clk_files *f = &clk_files[n->kind];
    char rel[ETF_SYSFS_PATH_MAX], gov[32];
    /* Governor first: under userspace, setspeed is only writable once it is in force. */
    int rc = node_file(rel, sizeof rel, n->dir, f->governor);
    if (!rc)
        rc = etf__sysfs_read_word(fs, rel, gov, sizeof gov, diag);
    if (!rc && strcmp(gov, n->governor) != 0)
        rc = write_value(fs, n->dir, f->governor, n->governor, diag);
    uint64_t cur_min = 0, cur_max = 0;
    if (!rc && !(rc = node_file(rel, sizeof rel, n->dir, f->min)))
        rc = etf__sysfs_read_u64(fs, rel, &cur_min, diag);
    if (!rc && !(rc = node_file(rel, sizeof rel, n->dir, f->max)))
        rc = etf__sysfs_read_u64(fs, rel, &cur_max, diag);
    if (!rc)
        rc = set_limits(fs, n->dir, n->kind, &cur_min, &cur_max, n->min, n->max, true, diag);
    if (!rc && n->has_setspeed)
        rc = write_u64(fs, n->dir, f->setspeed, n->setspeed, diag);
    return rc;
}

/* Puts back every node (best effort: one failure does not stop the others) and returns the
 * first failure. */
static int restore_nodes(const struct etf_clk_ctl *c, const struct etf_clk_node *nodes, size_t n,
                         struct etf_diag *diag)
{
    int first = 0;
    for (size_t i = 0; i < n; i++) {
        struct etf_diag d = {{0}};
        int rc = restore_node(c, &nodes[i], &d);
        if (rc && !first) {
            first = rc;
            if (diag)
                *diag = d;
        }
    }
    return first;
}

/* ---- The journal file ---- */

static const char *root_text(const struct etf_sysfs *fs)
{
    return fs->root[0] ? fs->root : "/";
}

static int journal_error(struct etf_diag *diag, int err, const char *what, const char *path, int e)
{
    char text[96];
    if (strerror_r(e, text, sizeof text) != 0)
        snprintf(text, sizeof text, "errno %d", e);
    return etf_diagf(diag, err, "clock journal %s: cannot %s: %s", path, what, text);
}

static char *format_journal(const struct etf_sysfs *fs, const struct etf_clk_node *nodes, size_t n,
                            size_t *len)
{
    size_t cap = 256 + strlen(fs->root) + n * 320;
    char *text = malloc(cap);
    if (!text)
        return NULL;
    size_t used = (size_t)snprintf(
        text, cap,
        "# ETF clock journal: the clock settings to put back (etfd --restore-clocks).\n"
        "%s\nroot %s\n",
        JOURNAL_MAGIC, root_text(fs));
    for (size_t i = 0; i < n; i++) {
        const struct etf_clk_node *nd = &nodes[i];
        if (nd->kind == ETF_CLK_NVML) {
            used += (size_t)snprintf(text + used, cap - used, "nvml gpu=%u\n", nd->gpu);
            continue;
        }
        const struct etf_clk_files *f = &clk_files[nd->kind];
        used += (size_t)snprintf(text + used, cap - used,
                                 "%s %s governor=%s min_%s=%" PRIu64 " max_%s=%" PRIu64, f->kind,
                                 nd->dir, nd->governor, f->unit, nd->min, f->unit, nd->max);
        if (nd->has_setspeed)
            used += (size_t)snprintf(text + used, cap - used, " setspeed_%s=%" PRIu64, f->unit,
                                     nd->setspeed);
        used += (size_t)snprintf(text + used, cap - used, "\n");
    }
    used += (size_t)snprintf(text + used, cap - used, "end\n");
    *len = used;
    return text;
}

/* Replaces the journal atomically: a crash leaves either the old file or the new one. */
static int write_journal(const char *path, const char *text, size_t len, struct etf_diag *diag)
{
    const char *what = "";
    int e = etf__file_replace(path, text, len, &what);
    return e ? journal_error(diag, ETF_EIO, what, path, -e) : 0;
}

static int remove_journal(const char *path, struct etf_diag *diag)
{
    if (unlink(path) != 0 && errno != ENOENT)
        return journal_error(diag, ETF_EIO, "remove", path, errno);
    etf__file_sync_dir(path);
    return 0;
}

static int line_error(struct etf_diag *diag, const char *path, int line, const char *expected,
                      const char *found)
{
    char q[48];
    etf__sysfs_quote(found, q, sizeof q);
    return etf_diagf(diag, ETF_EFORMAT,
                     "clock journal %s: line %d: expected %s, found '%s'; nothing was restored",
                     path, line, expected, q);
}

/* key=value with a strict decimal value. */
static bool parse_kv(const char *tok, const char *key, uint64_t *v)
{
    size_t k = strlen(key);
    return strncmp(tok, key, k) == 0 && tok[k] == '=' && etf__parse_u64(tok + k + 1, v);
}

/* Parses one node line: "<kind> <dir> governor=G min_<u>=N max_<u>=N [setspeed_<u>=N]" for
 * sysfs nodes, "nvml gpu=N" for a GPU whose clocks NVML locked. */
static int parse_node(char *line, struct etf_clk_node *nd, const char *path, int lineno,
                      struct etf_diag *diag)
{
    char *tok[7], whole[64];
    size_t n = 0;
    snprintf(whole, sizeof whole, "%s", line); /* for messages: tokens split the line */
    for (char *p = line;;) {
        char *sp = strchr(p, ' ');
        if (n == sizeof tok / sizeof tok[0] || p[0] == '\0' || p[0] == ' ')
            return line_error(diag, path, lineno, "fields separated by single spaces", whole);
        tok[n++] = p;
        if (!sp)
            break;
        *sp = '\0';
        p = sp + 1;
    }
    memset(nd, 0, sizeof *nd);
    if (strcmp(tok[0], "nvml") == 0) {
        uint64_t gpu;
        nd->kind = ETF_CLK_NVML;
        if (n < 2 || !parse_kv(tok[1], "gpu", &gpu) || gpu >= NVML_GPUS_MAX) {
            char want[48];
            snprintf(want, sizeof want, "gpu=<NVML index> (below %d)", NVML_GPUS_MAX);
            return line_error(diag, path, lineno, want, n < 2 ? "" : tok[1]);
        }
        if (n > 2)
            return line_error(diag, path, lineno, "the end of the line", tok[2]);
        nd->gpu = (unsigned)gpu;
        return 0;
    }
    if (strcmp(tok[0], "devfreq") == 0)
        nd->kind = ETF_CLK_DEVFREQ;
    else if (strcmp(tok[0], "cpufreq") == 0)
        nd->kind = ETF_CLK_CPUFREQ;
    else
        return line_error(diag, path, lineno, "devfreq, cpufreq, nvml or end", tok[0]);
    const struct etf_clk_files *f = &clk_files[nd->kind];
    if (n < 2 || !etf__clk_dir_ok(nd->kind, tok[1]))
        return line_error(diag, path, lineno, "a node directory of that kind", n < 2 ? "" : tok[1]);
    snprintf(nd->dir, sizeof nd->dir, "%s", tok[1]);
    if (n < 5 || strncmp(tok[2], "governor=", 9) != 0 || !governor_ok(tok[2] + 9))
        return line_error(diag, path, lineno, "governor=<name>", n < 3 ? "" : tok[2]);
    snprintf(nd->governor, sizeof nd->governor, "%s", tok[2] + 9);
    char key[32];
    snprintf(key, sizeof key, "min_%s", f->unit);
    if (!parse_kv(tok[3], key, &nd->min))
        return line_error(diag, path, lineno, key, tok[3]);
    snprintf(key, sizeof key, "max_%s", f->unit);
    if (!parse_kv(tok[4], key, &nd->max))
        return line_error(diag, path, lineno, key, tok[4]);
    if (n == 6) {
        snprintf(key, sizeof key, "setspeed_%s", f->unit);
        if (!f->setspeed || !parse_kv(tok[5], key, &nd->setspeed))
            return line_error(diag, path, lineno, f->setspeed ? key : "the end of the line",
                              tok[5]);
        nd->has_setspeed = true;
    } else if (n > 6) {
        return line_error(diag, path, lineno, "the end of the line", tok[6]);
    }
    bool userspace = nd->kind == ETF_CLK_CPUFREQ && strcmp(nd->governor, "userspace") == 0;
    if (userspace != nd->has_setspeed)
        return line_error(diag, path, lineno,
                          userspace ? "setspeed_khz under the userspace governor"
                                    : "no setspeed without the userspace governor",
                          whole);
    return 0;
}

static bool same_node(const struct etf_clk_node *a, const struct etf_clk_node *b)
{
    if ((a->kind == ETF_CLK_NVML) != (b->kind == ETF_CLK_NVML))
        return false;
    return a->kind == ETF_CLK_NVML ? a->gpu == b->gpu : strcmp(a->dir, b->dir) == 0;
}

static int parse_journal(char *text, const char *path, const char *root, struct etf_clk_node **out,
                         size_t *n_out, struct etf_diag *diag)
{
    struct etf_clk_node *nodes = NULL;
    size_t n = 0, cap = 0;
    int rc = 0, lineno = 0, state = 0; /* 0: magic, 1: root, 2: nodes, 3: after end */
    char *p = text;
    while (*p) {
        char *nl = strchr(p, '\n');
        lineno++;
        if (!nl) {
            rc = line_error(diag, path, lineno, "a line ending in a newline", p);
            goto free_nodes;
        }
        *nl = '\0';
        char *line = p;
        p = nl + 1;
        if (line[0] == '#')
            continue;
        if (state == 0) {
            if (strcmp(line, JOURNAL_MAGIC) != 0) {
                rc = line_error(diag, path, lineno, "'" JOURNAL_MAGIC "'", line);
                goto free_nodes;
            }
            state = 1;
        } else if (state == 1) {
            if (strncmp(line, "root ", 5) != 0) {
                rc = line_error(diag, path, lineno, "root <directory>", line);
                goto free_nodes;
            }
            if (strcmp(line + 5, root) != 0) {
                /* The journal's root never redirects writes: it must be the one in use. */
                rc = etf_diagf(diag, ETF_EFORMAT,
                               "clock journal %s: written for sysfs root '%.100s', not '%.100s'; "
                               "nothing was restored",
                               path, line + 5, root);
                goto free_nodes;
            }
            state = 2;
        } else if (state == 2) {
            if (strcmp(line, "end") == 0) {
                state = 3;
                continue;
            }
            if (n == JOURNAL_NODES_MAX) {
                rc = line_error(diag, path, lineno, "at most 256 nodes", line);
                goto free_nodes;
            }
            if (etf__reserve(&nodes, n, &cap, sizeof *nodes, 16)) {
                rc = etf_diagf(diag, ETF_ENOMEM, "clock journal %s: out of memory", path);
                goto free_nodes;
            }
            rc = parse_node(line, &nodes[n], path, lineno, diag);
            if (rc)
                goto free_nodes;
            for (size_t i = 0; i < n; i++) {
                if (same_node(&nodes[i], &nodes[n])) {
                    char gpu[32];
                    snprintf(gpu, sizeof gpu, "gpu=%u", nodes[n].gpu);
                    rc = line_error(diag, path, lineno, "each node once",
                                    nodes[n].kind == ETF_CLK_NVML ? gpu : nodes[n].dir);
                    goto free_nodes;
                }
            }
            n++;
        } else {
            rc = line_error(diag, path, lineno, "nothing after 'end'", line);
            goto free_nodes;
        }
    }
    if (state != 3) {
        rc = line_error(diag, path, lineno + 1, "'end' (the journal is incomplete)", "");
        goto free_nodes;
    }
    *out = nodes;
    *n_out = n;
    return 0;
free_nodes:
    free(nodes);
    return rc;
}

/* Puts back the controller's journal, if any, and removes it. 0 when there is none. */
static int restore_file(const struct etf_clk_ctl *c, struct etf_diag *diag)
{
    const struct etf_sysfs *fs = &c->fs;
    const char *path = c->journal_path;
    char *text = NULL;
    struct etf_clk_node *nodes = NULL;
    size_t n = 0;
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : journal_error(diag, ETF_EIO, "open", path, errno);
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rc = journal_error(diag, ETF_EIO, "stat", path, errno);
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > JOURNAL_MAX) {
        rc = etf_diagf(diag, ETF_EFORMAT,
                       "clock journal %s: not a regular file of at most %d bytes; nothing was "
                       "restored",
                       path, JOURNAL_MAX);
        goto close_fd;
    }
    text = malloc((size_t)st.st_size + 1);
    if (!text) {
        rc = etf_diagf(diag, ETF_ENOMEM, "clock journal %s: out of memory", path);
        goto close_fd;
    }
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, text + len, (size_t)st.st_size - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = journal_error(diag, ETF_EIO, "read", path, errno);
            goto free_text;
        }
        if (r == 0 || (len += (size_t)r) == (size_t)st.st_size)
            break;
    }
    text[len] = '\0';
    if (strlen(text) != len) {
        rc = etf_diagf(diag, ETF_EFORMAT, "clock journal %s: NUL byte inside; nothing was restored",
                       path);
        goto free_text;
    }
    rc = parse_journal(text, path, root_text(fs), &nodes, &n, diag);
    if (rc)
        goto free_text;
    /* Every node must fit the hardware before anything is written. An nvml entry has
     * nothing to check: NVML itself finds the GPU, or says it has none. */
    for (size_t i = 0; i < n; i++) {
        struct etf_diag d = {{0}};
        rc = nodes[i].kind == ETF_CLK_NVML ? 0 : node_check(fs, &nodes[i], &d);
        if (rc) {
            rc = etf_diagf(diag, ETF_EFORMAT,
                           "clock journal %s: does not fit this machine: %.300s; nothing was "
                           "restored",
                           path, d.msg);
            goto free_nodes;
        }
    }
    struct etf_diag d = {{0}};
    rc = restore_nodes(c, nodes, n, &d);
    if (rc) {
        rc = etf_diagf(diag, rc, "clock journal %s: restoring failed, the journal is kept: %.300s",
                       path, d.msg);
        goto free_nodes;
    }
    rc = remove_journal(path, diag);
free_nodes:
    free(nodes);
free_text:
    free(text);
close_fd:
    close(fd);
    return rc;
}

/* ---- Lock ---- */

static int take_lock(const char *journal, int *fd_out, struct etf_diag *diag)
{
    char lock[300], dir[256];
    snprintf(lock, sizeof lock, "%s.lock", journal);
    snprintf(dir, sizeof dir, "%s", journal);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = '\0';
        /* /run/etf does not survive a reboot: make it (one level, like systemd's
         * RuntimeDirectory would). */
        if (mkdir(dir, 0755) != 0 && errno != EEXIST)
            return journal_error(diag, ETF_EIO, "create its directory", journal, errno);
    }
    int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0)
        return journal_error(diag, ETF_EIO, "open its lock file", journal, errno);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(fd, F_SETLK, &fl) != 0) {
        int e = errno;
        if (e == EACCES || e == EAGAIN) {
            struct flock who = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
            long pid =
                fcntl(fd, F_GETLK, &who) == 0 && who.l_type != F_UNLCK ? (long)who.l_pid : -1;
            close(fd);
            return etf_diagf(diag, ETF_EBUSY,
                             "clock journal %s: process %ld drives the clocks (another etfd?)",
                             journal, pid);
        }
        close(fd);
        return journal_error(diag, ETF_EIO, "lock", journal, e);
    }
    *fd_out = fd;
    return 0;
}

/* ---- The controller head ---- */

int etf__clk_ctl_setup(struct etf_clk_ctl *c, const struct etf_freq_ops *ops,
                       const struct etf_freq_config *cfg, struct etf_diag *diag)
{
    c->base.ops = ops;
    c->lock_fd = -1;
    c->saved = NULL;
    c->n_saved = 0;
    c->error.msg[0] = '\0';
    int rc = etf__sysfs_init(&c->fs, &cfg->sysfs, diag);
    if (rc)
        return rc;
    for (const char *p = c->fs.root; *p; p++)
        if (!isprint((unsigned char)*p))
            return etf_diagf(diag, ETF_EINVAL, "sysfs root has a control character");
    c->timeout_ns = cfg->settle_timeout_ns ? cfg->settle_timeout_ns : DEFAULT_TIMEOUT_NS;
    const char *journal = cfg->journal_path ? cfg->journal_path : DEFAULT_JOURNAL;
    if (journal[0] != '/' || strlen(journal) >= sizeof c->journal_path - 8)
        return etf_diagf(diag, ETF_EINVAL,
                         "clock journal '%.200s': expected an absolute path shorter than %zu bytes",
                         journal, sizeof c->journal_path - 8);
    snprintf(c->journal_path, sizeof c->journal_path, "%s", journal);
    const char *library = cfg->library_path ? cfg->library_path : "";
    if (strlen(library) >= sizeof c->nvml_library)
        return etf_diagf(diag, ETF_EINVAL,
                         "NVML library '%.200s...': expected a path shorter than %zu bytes",
                         library, sizeof c->nvml_library);
    snprintf(c->nvml_library, sizeof c->nvml_library, "%s", library);
    return 0;
}

int etf__clk_ctl_begin(struct etf_clk_ctl *c, struct etf_diag *diag)
{
    int rc = take_lock(c->journal_path, &c->lock_fd, diag);
    if (rc)
        return rc;
    /* A temporary file is all a crash while writing can leave: the journal itself was
     * either not replaced yet or replaced whole. */
    etf__file_remove_tmp(c->journal_path);
    rc = restore_file(c, diag);
    if (rc) {
        close(c->lock_fd);
        c->lock_fd = -1;
    }
    return rc;
}

/* Drops what close would put back (the journal is left as it is). */
static void forget_saved(struct etf_clk_ctl *c)
{
    free(c->saved);
    c->saved = NULL;
    c->n_saved = 0;
}

int etf__clk_ctl_save(struct etf_clk_ctl *c, const struct etf_clk_node *nodes, size_t n,
                      struct etf_diag *diag)
{
    size_t len;
    c->saved = malloc(n * sizeof *nodes);
    if (!c->saved)
        return etf_diagf(diag, ETF_ENOMEM, "clock journal: out of memory");
    memcpy(c->saved, nodes, n * sizeof *nodes);
    c->n_saved = n;
    char *text = format_journal(&c->fs, nodes, n, &len);
    int rc = text ? write_journal(c->journal_path, text, len, diag)
                  : etf_diagf(diag, ETF_ENOMEM, "clock journal: out of memory");
    free(text);
    /* Nothing was changed yet, so nothing needs to be put back; and with nothing saved, the
     * next change journals again (nvml journals before its first lock). */
    if (rc)
        forget_saved(c);
    return rc;
}

int etf__clk_ctl_discard(struct etf_clk_ctl *c, struct etf_diag *diag)
{
    forget_saved(c);
    return remove_journal(c->journal_path, diag);
}

int etf__clk_ctl_end(struct etf_clk_ctl *c, struct etf_diag *diag)
{
    int rc = 0;
    if (c->saved) {
        rc = restore_nodes(c, c->saved, c->n_saved, diag);
        /* A failed restore keeps the journal for etfd --restore-clocks. */
        if (!rc)
            rc = remove_journal(c->journal_path, diag);
        forget_saved(c);
    }
    if (c->lock_fd >= 0) {
        close(c->lock_fd);
        c->lock_fd = -1;
    }
    return rc;
}

/* ---- Public ---- */

int etf_freq_restore_journal(const struct etf_freq_config *cfg, struct etf_diag *diag)
{
    static const struct etf_freq_config defaults;
    struct etf_clk_ctl c;
    memset(&c, 0, sizeof c);
    int rc = etf__clk_ctl_setup(&c, NULL, cfg ? cfg : &defaults, diag);
    if (rc)
        return rc;
    /* No journal, nothing to do: not even the lock file is made. */
    if (access(c.journal_path, F_OK) != 0 && errno == ENOENT)
        return 0;
    rc = etf__clk_ctl_begin(&c, diag);
    if (rc)
        return rc;
    return etf__clk_ctl_end(&c, diag);
}

const char *etf_freq_last_error(const struct etf_freq *f)
{
    if (f && (f->ops == &etf__freq_devfreq_ops || f->ops == &etf__freq_cpufreq_ops ||
              f->ops == &etf__freq_nvml_ops))
        return ((const struct etf_clk_ctl *)f)->error.msg;
    return "";
}
