/* What the frequency controllers that change real clocks (devfreq, cpufreq, nvml) share:
 * the sysfs clock nodes, pinning a node's clock through its min/max limits, waiting for the
 * clock to show, and the restore journal.
 *
 * The journal makes clock changes undoable whatever happens to the process: at open, the
 * settings found on every node (governor, min, max, and setspeed under the userspace
 * governor) are written to a small file atomically before anything is changed; close puts
 * them back and removes the file; a journal found at the next open, or by
 * etf_freq_restore_journal(), was left by a controller that never closed (crash, kill -9)
 * and is put back first. A lock file beside the journal keeps two processes from driving
 * (and journaling) the clocks at once; the kernel drops it when its holder dies.
 *
 * NVML cannot report the locked clocks of a GPU, so an nvml entry records only that the
 * controller locked (or was about to lock) a GPU's clocks: it is written before the first
 * lock rather than at open, and putting it back resets the lock, which returns the GPU to its
 * default clock management.
 *
 * The journal is outside input when read back: it is parsed strictly and every node is
 * checked against the hardware (paths of the expected shape, values among the available
 * ones, governors the node offers) before anything is written.
 */
#ifndef ETF_FREQ_JOURNAL_H
#define ETF_FREQ_JOURNAL_H

#include "freq/freq.h"
#include "util/sysfs.h"

/* The controllers built on this file. */
extern const struct etf_freq_ops etf__freq_devfreq_ops;
extern const struct etf_freq_ops etf__freq_cpufreq_ops;
extern const struct etf_freq_ops etf__freq_nvml_ops;

enum etf_clk_kind {
    ETF_CLK_DEVFREQ, /* class/devfreq/<node>: values in Hz */
    ETF_CLK_CPUFREQ, /* a cpufreq policy directory: values in kHz */
    ETF_CLK_NVML,    /* a GPU whose clocks NVML locked (no sysfs node, no values) */
};

/* Resets the locked clocks of NVML GPU `gpu` (freq_nvml.c): how an nvml entry is put back.
 * library_path as etf_freq_config's. */
int etf__freq_nvml_reset(const char *library_path, unsigned gpu, struct etf_diag *diag);

/* The file names of one kind of sysfs node (devfreq, cpufreq). */
struct etf_clk_files {
    const char *kind; /* as written in the journal */
    const char *min, *max, *cur, *governor;
    const char *available, *governors; /* frequencies and governors on offer */
    const char *setspeed;              /* NULL when the kind has none */
    const char *unit;                  /* "hz" or "khz" */
    uint64_t hz_per_unit;
};
const struct etf_clk_files *etf__clk_files(enum etf_clk_kind kind);

/* The settings of one node, in the node's own unit. */
struct etf_clk_node {
    enum etf_clk_kind kind;
    unsigned gpu;  /* nvml: the GPU's NVML index; nothing below applies */
    char dir[160]; /* relative to the sysfs root */
    char governor[32];
    uint64_t min, max; /* devfreq: 0 = no limit set (older kernels) */
    bool has_setspeed; /* the governor is "userspace": setspeed holds the clock */
    uint64_t setspeed;
};

/* True when dir has the shape of a node of that kind. */
bool etf__clk_dir_ok(enum etf_clk_kind kind, const char *dir);
/* Reads a node's settings and checks them against what it offers. */
int etf__clk_read_node(const struct etf_sysfs *fs, enum etf_clk_kind kind, const char *dir,
                       struct etf_clk_node *out, struct etf_diag *diag);

/* Brings the node's limits to [target, target] (node units), writing them in the order that
 * keeps min <= max at every step: max first when raising above the current max, min first
 * otherwise. *cur_min / *cur_max hold the limits in force and are updated as writes land.
 * A refused write is ETF_EDEVICE with the errno text. */
int etf__clk_pin(const struct etf_sysfs *fs, const char *dir, enum etf_clk_kind kind,
                 uint64_t *cur_min, uint64_t *cur_max, uint64_t target, struct etf_diag *diag);
/* Polls the node's cur file every millisecond until it reads target (node units) or
 * timeout_ns passes: ETF_EDEVICE "cur_freq stayed at X Hz, expected Y Hz". */
int etf__clk_wait(const struct etf_sysfs *fs, const char *dir, enum etf_clk_kind kind,
                  uint64_t target, uint64_t timeout_ns, struct etf_diag *diag);

/* The common head of the sysfs controllers: their struct starts with this. */
struct etf_clk_ctl {
    struct etf_freq base;
    struct etf_sysfs fs;
    struct etf_diag error; /* the latest failure, for etf_freq_last_error */
    uint64_t timeout_ns;
    char journal_path[256];
    char nvml_library[256];     /* cfg->library_path, for putting back an nvml entry */
    int lock_fd;                /* -1 when not held */
    struct etf_clk_node *saved; /* what close puts back */
    size_t n_saved;
};

/* Sets up the head from cfg: the sysfs root, the timeout, the journal's path. Touches
 * nothing, so that a controller can look for its nodes before it claims the journal. */
int etf__clk_ctl_setup(struct etf_clk_ctl *c, const struct etf_freq_ops *ops,
                       const struct etf_freq_config *cfg, struct etf_diag *diag);
/* Takes the journal lock and puts back a journal left behind; call before reading the
 * settings to save. On failure nothing is held. */
int etf__clk_ctl_begin(struct etf_clk_ctl *c, struct etf_diag *diag);
/* Records nodes (copied) as the settings to restore and writes the journal; call before
 * the first change. */
int etf__clk_ctl_save(struct etf_clk_ctl *c, const struct etf_clk_node *nodes, size_t n,
                      struct etf_diag *diag);
/* Forgets the saved settings and removes the journal, keeping the lock: for a change that
 * was journaled but then refused, so that nothing is left to put back. */
int etf__clk_ctl_discard(struct etf_clk_ctl *c, struct etf_diag *diag);
/* Puts back the saved settings, removes the journal when that worked (else leaves it for
 * etf_freq_restore_journal) and releases the lock. Safe after a failed begin or save. */
int etf__clk_ctl_end(struct etf_clk_ctl *c, struct etf_diag *diag);

#endif
