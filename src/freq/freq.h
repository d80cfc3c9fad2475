/* The frequency-controller contract: switching the device's clock to a model's operating
 * frequency before its kernels run.
 *
 * One backend per file (freq_none.c, freq_sim.c, ...), registered by name in freq.c. A
 * backend's struct starts with `struct etf_freq`.
 */
#ifndef ETF_FREQ_FREQ_H
#define ETF_FREQ_FREQ_H

#include "etf/sched.h"

/* The controller can change the clock; without it models run at whatever clock the
 * device has and are charged at their nominal frequency. */
#define ETF_FREQ_CAP_SET (1u << 0)

struct etf_freq_ops {
    const char *name;
    unsigned caps;
    int (*open)(const struct etf_freq_config *cfg, struct etf_freq **out, struct etf_diag *diag);
    /* Switches the clock to hz and returns once it is in force (or fails). Present with
     * ETF_FREQ_CAP_SET. Called from the scheduler's clock worker (on a virtual clock, from
     * the stepping thread) without the scheduler lock, one call at a time; may block for
     * the hardware's settling time. */
    int (*set)(struct etf_freq *f, uint64_t hz);
    /* The clock in force now, or ETF_ENOTSUP when the backend cannot tell. */
    int (*get)(struct etf_freq *f, uint64_t *hz);
    /* Optional (NULL when the controller cannot tell): the frequencies set accepts, in Hz,
     * ascending. Writes at most cap of them to hz and how many there are to *n. Reads
     * what open found: any thread, never blocks. */
    int (*list)(struct etf_freq *f, uint64_t *hz, size_t cap, size_t *n);
    void (*close)(struct etf_freq *f);
};

struct etf_freq {
    const struct etf_freq_ops *ops;
    uint64_t switches; /* written only by etf__freq_set, from the one thread that switches */
};

extern const struct etf_freq_ops etf__freq_none_ops;
extern const struct etf_freq_ops etf__freq_sim_ops;

bool etf__freq_can_set(const struct etf_freq *f);
/* Switches and counts the switch. */
int etf__freq_set(struct etf_freq *f, uint64_t hz);
int etf__freq_get(struct etf_freq *f, uint64_t *hz);
/* The frequencies the controller can set (see `list`); ETF_ENOTSUP when it cannot tell. */
int etf__freq_list(struct etf_freq *f, uint64_t *hz, size_t cap, size_t *n);

/* Lists of frequencies on offer, as the backends keep them: ascending, distinct, in the
 * backend's unit (scale Hz each). */
/* Sorts v ascending and drops repeats; returns the new count. */
size_t etf__freq_sort_unique(uint64_t *v, size_t n);
/* True when the ascending list holds v. */
bool etf__freq_listed(const uint64_t *list, size_t n, uint64_t v);
/* "114750000 216750000 ..." (Hz), cut to fit cap, for messages. */
void etf__freq_format_list(const uint64_t *list, size_t n, uint64_t scale, char *out, size_t cap);
/* The body of a `list` op: copies the list, in Hz, into hz (at most cap). */
int etf__freq_list_copy(const uint64_t *list, size_t n_list, uint64_t scale, uint64_t *hz,
                        size_t cap, size_t *n);

#endif
