/* The energy ledger: who ran when, and how a meter's measured energy is split among them.
 *
 * A hardware energy counter moves in steps far coarser than a kernel (NVML on the H100:
 * every ~100 ms; kernels last µs to ms), so energy cannot be measured per kernel. Instead
 * the dispatcher writes one ledger entry per turn: the entity, its span [start, end) on the
 * scheduler's clock, the device time it was charged and the energy the model charged it
 * (time × profiled power). A sampler reads the meter; each time the counter moves it marks
 * a boundary, and the energy E measured between two boundaries [t0, t1) is split:
 *
 *   - idle: the device is powered while nobody runs. Its power is learnt from intervals in
 *     which nothing ran at all (moving average of E / (t1 - t0)); an interval with work in
 *     it charges idle_power × (time nobody ran) as idle, at most E. Until a first idle
 *     interval has been seen the idle part is E × (time nobody ran) / (t1 - t0).
 *   - busy = E - idle, split among the entities that ran in [t0, t1) in proportion to the
 *     modelled energy of their entries clipped to the interval (an entry straddling a
 *     boundary counts the fraction of its span inside, by time). An entry without modelled
 *     energy (a model without profile powers) beside entries with it counts as drawing
 *     their mean modelled power; with no modelled energy at all, shares follow time.
 *
 * Every nanojoule measured goes somewhere: the shares are cumulative floors that sum to
 * busy exactly, so attributed + idle == measured with no rounding drift.
 *
 * Where a boundary lies: a stepped counter changes somewhere between the last reading that
 * showed the old value and the first that shows the new one; the boundary is put half way
 * (an error of at most half a sampling period). A counter that moved at every reading is
 * taken to be current at the reading's time.
 *
 * The ring (etf_ledger) belongs to the dispatcher and lives under its lock: an append is
 * O(1), allocation-free. The attribution (etf_attrib) belongs to the sampler alone and runs
 * without any lock. Both are pure: no clock, no threads, no I/O, so they are tested alone.
 */
#ifndef ETF_SCHED_LEDGER_H
#define ETF_SCHED_LEDGER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct etf_sched;

struct etf_ledger_entry {
    uint64_t eid;
    uint64_t start_ns, end_ns; /* scheduler clock; [start, end) */
    uint64_t busy_ns;          /* device time charged in it */
    uint64_t model_nj;         /* modelled energy charged in it */
};

/* Consecutive turns of one entity closer than this are one entry (an entity running alone
 * then costs one entry, not one per turn). */
#define ETF_LEDGER_MERGE_GAP_NS 1000u

/* ---- The dispatcher's ring ---- */

struct etf_ledger {
    struct etf_ledger_entry *ring;
    size_t cap, head, n; /* the oldest entry is ring[head] */
    uint64_t dropped;    /* entries overwritten before the sampler took them */
};

/* Allocates room for cap entries (cap > 0). Returns 0 or ETF_ENOMEM. */
int etf__ledger_init(struct etf_ledger *l, size_t cap);
void etf__ledger_fini(struct etf_ledger *l);
/* Appends an entry, merged into the newest one when it continues it (same entity, gap below
 * ETF_LEDGER_MERGE_GAP_NS). When full, the oldest entry is dropped and counted. */
void etf__ledger_append(struct etf_ledger *l, const struct etf_ledger_entry *e);

/* ---- The sampler's attribution ---- */

struct etf_attrib_share {
    uint64_t eid;
    uint64_t energy_nj; /* measured energy attributed */
    uint64_t busy_ns;   /* device time charged to it inside the interval */
};

struct etf_attrib_result {
    uint64_t t0_ns, t1_ns;                 /* the interval, scheduler clock */
    uint64_t energy_nj;                    /* measured in it */
    uint64_t idle_nj;                      /* of which idle; the rest is in the shares */
    uint64_t busy_ns;                      /* time someone ran in it */
    const struct etf_attrib_share *shares; /* by eid, ascending; valid until the next call */
    size_t n_shares;
};

/* Boundaries that wait for the ledger to catch up (a turn still running); beyond this the
 * two oldest intervals are merged into one. */
#define ETF_ATTRIB_QUEUE 32

struct etf_attrib_contrib;

struct etf_attrib {
    /* Ledger entries taken from the ring, oldest first, not yet wholly before the base. */
    struct etf_ledger_entry *pending;
    size_t n_pending, cap;
    uint64_t dropped; /* pending entries dropped for room */
    struct etf_attrib_contrib *scratch;
    struct etf_attrib_share *shares;

    /* The counter as last read, and whether a reading since its last change showed the
     * same value (then the counter is stepped, and a change lies between two readings). */
    bool have_reading, stale;
    uint64_t last_nj, last_ns, stale_ns;
    /* The latest boundary processed: the start of the next interval. */
    bool have_base;
    uint64_t base_nj, base_ns;
    struct {
        uint64_t t_ns, energy_nj;
    } queue[ETF_ATTRIB_QUEUE];
    size_t n_queue;
    uint64_t resets; /* the counter went backwards: attribution restarted */

    /* Idle power learnt from intervals with nobody running. */
    bool idle_known;
    double idle_mw;
    double idle_alpha;

    /* Totals over every interval processed: measured == idle + attributed, exactly. */
    uint64_t measured_nj, idle_nj, attributed_nj, intervals;
};

/* cap: most ledger entries kept pending (> 0). Returns 0 or ETF_ENOMEM. */
int etf__attrib_init(struct etf_attrib *a, size_t cap);
void etf__attrib_fini(struct etf_attrib *a);

/* Moves every entry of the ring into the pending list (oldest pending ones are dropped and
 * counted when room runs out). O(entries moved); the caller holds the ring's lock. */
void etf__attrib_pull(struct etf_attrib *a, struct etf_ledger *l);
/* Adds entries to the pending list directly (tests). */
void etf__attrib_push(struct etf_attrib *a, const struct etf_ledger_entry *e, size_t n);

/* One reading of the cumulative counter (nJ) at at_ns on the scheduler's clock. Queues a
 * boundary when the counter moved. */
void etf__attrib_reading(struct etf_attrib *a, uint64_t energy_nj, uint64_t at_ns);

/* Splits the oldest queued interval if its end is at or before complete_ns (the time up to
 * which the ledger is complete: no turn that started earlier is still running). Returns
 * false when there is none to split yet. */
bool etf__attrib_next(struct etf_attrib *a, uint64_t complete_ns, struct etf_attrib_result *r);

/* Splits energy_nj measured over [t0, t1) among the pending entries as the file comment
 * says, and forgets the entries that end by t1. Exposed for tests; etf__attrib_next calls
 * it. */
void etf__attrib_split(struct etf_attrib *a, uint64_t t0_ns, uint64_t t1_ns, uint64_t energy_nj,
                       struct etf_attrib_result *r);

/* ---- Scheduler hook (sched.c) ---- */

/* One round of the sampler, on the calling thread: reads the meter, takes the ledger and
 * attributes every interval that is complete. For schedulers created with meter_sample_ns =
 * ETF_METER_SAMPLE_MANUAL (tests on a virtual clock, called from the stepping thread).
 * Returns the meter's error, or 0; ETF_ENOTSUP when the scheduler does not measure. */
int etf__sched_sample(struct etf_sched *s);

#endif
