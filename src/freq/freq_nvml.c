/* The `nvml` controller: the graphics clock of an NVIDIA GPU, locked through NVML
 * (nvmlDeviceSetGpuLockedClocks with min = max), loaded at run time (util/nvml.h).
 *
 * Locking clocks needs root and changes the speed of everything that runs on the GPU, other
 * users' work included, so the controller refuses to open unless the configuration allows
 * clock changes explicitly. NVML cannot report a lock already in force, so the journal
 * (journal.h) records only that this controller locked the GPU's clocks: it is written
 * before the first lock, and putting it back (at close, at the next open after a crash, or
 * through etfd --restore-clocks) resets the locked clocks to the GPU's default management.
 *
 * A lock is in force when NVML returns; the clock the GPU then runs (get) may still be lower
 * under power or thermal limits. Frequencies are whole MHz; where NVML lists the supported
 * graphics clocks (for the memory clock in force), only those are accepted.
 */
#include "freq/journal.h"
#include "util/nvml.h"

#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>

#define WHO "freq nvml"
#define HZ_PER_MHZ 1000000u
#define AVAILABLE_MAX 512

/* nvmlClockType_t */
enum { NVML_CLOCK_GRAPHICS = 0, NVML_CLOCK_MEM = 2 };

struct freq_nvml {
    struct etf_clk_ctl ctl; /* first: the journal head, itself starting with etf_freq */
    struct etf_nvml nvml;
    nvmlReturn_t (*set_locked)(nvmlDevice_t dev, unsigned int min_mhz, unsigned int max_mhz);
    nvmlReturn_t (*clock_info)(nvmlDevice_t dev, int type, unsigned int *mhz);
    uint64_t avail[AVAILABLE_MAX]; /* MHz, ascending, distinct; none when NVML cannot tell */
    size_t n_avail;
    bool locked; /* a lock succeeded since open: its journal must stay until close */
};

int etf__freq_nvml_reset(const char *library_path, unsigned gpu, struct etf_diag *diag)
{
    /* NVML is opened afresh, also by an open controller at close: one path for a clean
     * close and for a crash's journal. */
    struct etf_nvml n;
    int rc = etf__nvml_open(&n, library_path, gpu, WHO, diag);
    if (rc)
        return rc;
    nvmlReturn_t (*reset)(nvmlDevice_t dev);
    rc = etf__nvml_require(&n, "nvmlDeviceResetGpuLockedClocks", &reset, WHO, diag);
    if (!rc) {
        nvmlReturn_t nrc = reset(n.dev);
        if (nrc != NVML_SUCCESS)
            rc = etf_diagf(diag, ETF_EDEVICE,
                           WHO ": %s (index %u): resetting its locked clocks failed: %.100s (NVML "
                               "error %d)%s",
                           n.gpu, gpu, etf__nvml_error(&n, nrc), nrc,
                           nrc == NVML_ERROR_NO_PERMISSION ? "; NVML lets only root change clocks"
                                                           : "");
    }
    etf__nvml_close(&n);
    return rc;
}

/* The graphics clocks NVML supports with the memory clock in force. Optional: without the
 * list, any whole MHz is passed to NVML, which refuses what it cannot run. */
static void read_available(struct freq_nvml *c)
{
    nvmlReturn_t (*supported)(nvmlDevice_t dev, unsigned int mem_mhz, unsigned int *count,
                              unsigned int *mhz);
    unsigned mem = 0, mhz[AVAILABLE_MAX], count = AVAILABLE_MAX;
    if (!etf__nvml_symbol(&c->nvml, "nvmlDeviceGetSupportedGraphicsClocks", &supported) ||
        c->clock_info(c->nvml.dev, NVML_CLOCK_MEM, &mem) != NVML_SUCCESS ||
        supported(c->nvml.dev, mem, &count, mhz) != NVML_SUCCESS || count > AVAILABLE_MAX)
        return;
    size_t n = 0;
    for (unsigned i = 0; i < count; i++)
        if (mhz[i] > 0)
            c->avail[n++] = mhz[i];
    c->n_avail = etf__freq_sort_unique(c->avail, n);
}

static int freq_nvml_open(const struct etf_freq_config *cfg, struct etf_freq **out,
                          struct etf_diag *diag)
{
    if (!cfg->allow_clock_changes)
        return etf_diagf(diag, ETF_EINVAL,
                         WHO
                         ": changing GPU clocks is off: locking a GPU's clocks needs root and "
                         "changes the speed of everything running on it; allow it explicitly "
                         "(etfd --allow-gpu-clock-changes, etf-profile --allow-gpu-clock-changes, "
                         "or allow_clock_changes in struct etf_freq_config)");
    struct freq_nvml *c = calloc(1, sizeof *c);
    if (!c)
        return etf_diagf(diag, ETF_ENOMEM, WHO ": out of memory");
    int rc = etf__clk_ctl_setup(&c->ctl, &etf__freq_nvml_ops, cfg, diag);
    if (rc)
        goto free_c;
    /* The GPU first: without one, nothing (not even /run/etf) is touched. */
    rc = etf__nvml_open(&c->nvml, cfg->library_path, cfg->device_index, WHO, diag);
    if (rc)
        goto free_c;
    /* Resetting is looked up now too, so that a lock is never taken that close cannot undo. */
    nvmlReturn_t (*reset)(nvmlDevice_t dev);
    rc = etf__nvml_require(&c->nvml, "nvmlDeviceSetGpuLockedClocks", &c->set_locked, WHO, diag);
    if (!rc)
        rc = etf__nvml_require(&c->nvml, "nvmlDeviceResetGpuLockedClocks", &reset, WHO, diag);
    if (!rc)
        rc = etf__nvml_require(&c->nvml, "nvmlDeviceGetClockInfo", &c->clock_info, WHO, diag);
    if (rc)
        goto close_nvml;
    read_available(c);
    /* Takes the journal lock and puts back what a crashed controller left locked. */
    rc = etf__clk_ctl_begin(&c->ctl, diag);
    if (rc)
        goto close_nvml;
    *out = &c->ctl.base;
    return 0;
close_nvml:
    etf__nvml_close(&c->nvml);
free_c:
    free(c);
    return rc;
}

static int freq_nvml_set(struct etf_freq *base, uint64_t hz)
{
    struct freq_nvml *c = (struct freq_nvml *)base;
    struct etf_diag *err = &c->ctl.error;
    err->msg[0] = '\0';
    uint64_t mhz = hz / HZ_PER_MHZ;
    if (hz == 0 || hz % HZ_PER_MHZ != 0 || mhz > UINT_MAX)
        return etf_diagf(err, ETF_EINVAL,
                         WHO ": %" PRIu64 " Hz: expected a whole number of MHz from 1 to %u (NVML "
                             "locks clocks in MHz)",
                         hz, UINT_MAX);
    if (c->n_avail && !etf__freq_listed(c->avail, c->n_avail, mhz)) {
        char list[400];
        etf__freq_format_list(c->avail, c->n_avail, HZ_PER_MHZ, list, sizeof list);
        return etf_diagf(err, ETF_EINVAL, WHO ": %s: %" PRIu64 " Hz is not available (have: %s)",
                         c->nvml.gpu, hz, list);
    }
    /* Journaled before the first lock, so that a crash right after it is undone. */
    if (!c->ctl.saved) {
        struct etf_clk_node node = {.kind = ETF_CLK_NVML, .gpu = c->nvml.index};
        int rc = etf__clk_ctl_save(&c->ctl, &node, 1, err);
        if (rc)
            return rc;
    }
    nvmlReturn_t nrc = c->set_locked(c->nvml.dev, (unsigned)mhz, (unsigned)mhz);
    if (nrc == NVML_SUCCESS) {
        c->locked = true;
        return 0;
    }
    /* These refusals change nothing: without an earlier lock, nothing is left to undo. */
    bool refused = nrc == NVML_ERROR_NO_PERMISSION || nrc == NVML_ERROR_NOT_SUPPORTED ||
                   nrc == NVML_ERROR_INVALID_ARGUMENT;
    if (refused && !c->locked)
        etf__clk_ctl_discard(&c->ctl, NULL);
    if (nrc == NVML_ERROR_NO_PERMISSION)
        return etf_diagf(err, ETF_EDEVICE,
                         WHO ": %s (index %u): locking its clocks at %" PRIu64 " MHz was refused: "
                             "%.100s; NVML lets only root change clocks (run as root)",
                         c->nvml.gpu, c->nvml.index, mhz, etf__nvml_error(&c->nvml, nrc));
    return etf_diagf(err, nrc == NVML_ERROR_NOT_SUPPORTED ? ETF_ENOTSUP : ETF_EDEVICE,
                     WHO ": %s (index %u): locking its clocks at %" PRIu64 " MHz failed: %.100s "
                         "(NVML error %d)",
                     c->nvml.gpu, c->nvml.index, mhz, etf__nvml_error(&c->nvml, nrc), nrc);
}

static int freq_nvml_get(struct etf_freq *base, uint64_t *hz)
{
    struct freq_nvml *c = (struct freq_nvml *)base;
    unsigned mhz = 0;
    if (c->clock_info(c->nvml.dev, NVML_CLOCK_GRAPHICS, &mhz) != NVML_SUCCESS)
        return ETF_EDEVICE;
    if (mhz == 0)
        return ETF_EFORMAT;
    *hz = (uint64_t)mhz * HZ_PER_MHZ;
    return 0;
}

static int freq_nvml_list(struct etf_freq *base, uint64_t *hz, size_t cap, size_t *n)
{
    const struct freq_nvml *c = (const struct freq_nvml *)base;
    if (!c->n_avail)
        return ETF_ENOTSUP;
    return etf__freq_list_copy(c->avail, c->n_avail, HZ_PER_MHZ, hz, cap, n);
}

static void freq_nvml_close(struct etf_freq *base)
{
    struct freq_nvml *c = (struct freq_nvml *)base;
    /* A failed reset leaves the journal for etfd --restore-clocks. */
    etf__clk_ctl_end(&c->ctl, NULL);
    etf__nvml_close(&c->nvml);
    free(c);
}

const struct etf_freq_ops etf__freq_nvml_ops = {
    .name = "nvml",
    .caps = ETF_FREQ_CAP_SET,
    .open = freq_nvml_open,
    .set = freq_nvml_set,
    .get = freq_nvml_get,
    .list = freq_nvml_list,
    .close = freq_nvml_close,
};
