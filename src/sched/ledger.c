/* The energy ledger and the attribution of measured energy (see ledger.h). */
#include "sched/ledger.h"

#include "etf/etf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Weight of the newest idle interval in the idle-power average. */
#define IDLE_ALPHA 0.25

/* ---- The ring ---- */

int etf__ledger_init(struct etf_ledger *l, size_t cap)
{
    memset(l, 0, sizeof *l);
    if (cap == 0)
        return ETF_EINVAL;
    l->ring = calloc(cap, sizeof *l->ring);
    if (!l->ring)
        return ETF_ENOMEM;
    l->cap = cap;
    return 0;
}

void etf__ledger_fini(struct etf_ledger *l)
{
    free(l->ring);
    memset(l, 0, sizeof *l);
}

void etf__ledger_append(struct etf_ledger *l, const struct etf_ledger_entry *e)
{
    if (l->n) {
        struct etf_ledger_entry *last = &l->ring[(l->head + l->n - 1) % l->cap];
        if (last->eid == e->eid && e->start_ns >= last->end_ns &&
            e->start_ns - last->end_ns <= ETF_LEDGER_MERGE_GAP_NS) {
            last->end_ns = e->end_ns;
            last->busy_ns += e->busy_ns;
            last->model_nj += e->model_nj;
            return;
        }
    }
    if (l->n == l->cap) {
        /* The sampler fell behind by more than the ring holds: the oldest turn is lost (its
         * time will look idle), and the loss is counted. */
        l->head = (l->head + 1) % l->cap;
        l->n--;
        l->dropped++;
    }
    l->ring[(l->head + l->n) % l->cap] = *e;
    l->n++;
}

/* ---- Attribution ---- */

struct etf_attrib_contrib {
    uint64_t eid;
    double model_nj; /* modelled energy inside the interval */
    double time_ns;  /* span inside the interval */
    double busy_ns;  /* charged device time inside the interval */
};

int etf__attrib_init(struct etf_attrib *a, size_t cap)
{
    memset(a, 0, sizeof *a);
    if (cap == 0)
        return ETF_EINVAL;
    a->pending = calloc(cap, sizeof *a->pending);
    a->scratch = calloc(cap, sizeof *a->scratch);
    a->shares = calloc(cap, sizeof *a->shares);
    if (!a->pending || !a->scratch || !a->shares) {
        etf__attrib_fini(a);
        return ETF_ENOMEM;
    }
    a->cap = cap;
    a->idle_alpha = IDLE_ALPHA;
    return 0;
}

void etf__attrib_fini(struct etf_attrib *a)
{
    free(a->pending);
    free(a->scratch);
    free(a->shares);
    memset(a, 0, sizeof *a);
}

/* Makes room for `need` more pending entries by dropping the oldest; returns how many of
 * the new ones fit (all of them unless need > cap). */
static size_t make_room(struct etf_attrib *a, size_t need)
{
    if (need > a->cap) {
        a->dropped += need - a->cap;
        need = a->cap;
    }
    size_t room = a->cap - a->n_pending;
    if (need > room) {
        size_t drop = need - room;
        memmove(a->pending, a->pending + drop, (a->n_pending - drop) * sizeof *a->pending);
        a->n_pending -= drop;
        a->dropped += drop;
    }
    return need;
}

void etf__attrib_push(struct etf_attrib *a, const struct etf_ledger_entry *e, size_t n)
{
    size_t fit = make_room(a, n);
    memcpy(a->pending + a->n_pending, e + (n - fit), fit * sizeof *e);
    a->n_pending += fit;
}

void etf__attrib_pull(struct etf_attrib *a, struct etf_ledger *l)
{
    size_t fit = make_room(a, l->n);
    for (size_t i = l->n - fit; i < l->n; i++)
        a->pending[a->n_pending++] = l->ring[(l->head + i) % l->cap];
    l->head = 0;
    l->n = 0;
}

void etf__attrib_reading(struct etf_attrib *a, uint64_t energy_nj, uint64_t at_ns)
{
    if (!a->have_reading) {
        /* When a stepped counter took this value is unknown: the first boundary is the
         * first change seen. */
        a->have_reading = true;
        a->last_nj = energy_nj;
        a->last_ns = at_ns;
        a->stale = false;
        return;
    }
    if (at_ns < a->last_ns)
        at_ns = a->last_ns;
    if (energy_nj == a->last_nj) {
        a->stale = true;
        a->last_ns = at_ns;
        return;
    }
    if (energy_nj < a->last_nj) {
        /* A counter that goes back was reset (driver reload): what was pending cannot be
         * measured; start again from this reading. */
        a->resets++;
        a->have_base = false;
        a->n_queue = 0;
        a->last_nj = energy_nj;
        a->last_ns = at_ns;
        a->stale = false;
        return;
    }
    uint64_t t = a->stale ? a->last_ns + (at_ns - a->last_ns) / 2 : at_ns;
    uint64_t floor_ns = a->n_queue ? a->queue[a->n_queue - 1].t_ns : a->base_ns;
    if (a->have_base && t < floor_ns)
        t = floor_ns;
    a->last_nj = energy_nj;
    a->last_ns = at_ns;
    a->stale = false;
    if (!a->have_base) {
        a->have_base = true;
        a->base_nj = energy_nj;
        a->base_ns = t;
        return;
    }
    if (a->n_queue == ETF_ATTRIB_QUEUE) {
        /* Dropping the oldest queued boundary merges its interval into the next one. */
        memmove(&a->queue[0], &a->queue[1], (ETF_ATTRIB_QUEUE - 1) * sizeof a->queue[0]);
        a->n_queue--;
    }
    a->queue[a->n_queue].t_ns = t;
    a->queue[a->n_queue].energy_nj = energy_nj;
    a->n_queue++;
}

bool etf__attrib_next(struct etf_attrib *a, uint64_t complete_ns, struct etf_attrib_result *r)
{
    if (!a->have_base || a->n_queue == 0 || a->queue[0].t_ns > complete_ns)
        return false;
    uint64_t t1 = a->queue[0].t_ns, e1 = a->queue[0].energy_nj;
    etf__attrib_split(a, a->base_ns, t1, e1 - a->base_nj, r);
    a->base_ns = t1;
    a->base_nj = e1;
    memmove(&a->queue[0], &a->queue[1], (a->n_queue - 1) * sizeof a->queue[0]);
    a->n_queue--;
    return true;
}

static int cmp_contrib(const void *x, const void *y)
{
    const struct etf_attrib_contrib *a = x, *b = y;
    return (a->eid > b->eid) - (a->eid < b->eid);
}

void etf__attrib_split(struct etf_attrib *a, uint64_t t0_ns, uint64_t t1_ns, uint64_t energy_nj,
                       struct etf_attrib_result *r)
{
    memset(r, 0, sizeof *r);
    r->t0_ns = t0_ns;
    r->t1_ns = t1_ns;
    r->energy_nj = energy_nj;
    r->shares = a->shares;
    uint64_t len = t1_ns > t0_ns ? t1_ns - t0_ns : 0;

    /* Each pending entry's part inside [t0, t1), clipped by time. */
    size_t nc = 0;
    double span_in = 0, model_total = 0, time_total = 0, modelled_time = 0;
    for (size_t i = 0; i < a->n_pending; i++) {
        const struct etf_ledger_entry *p = &a->pending[i];
        double ov, frac;
        if (p->end_ns > p->start_ns) {
            uint64_t lo = p->start_ns > t0_ns ? p->start_ns : t0_ns;
            uint64_t hi = p->end_ns < t1_ns ? p->end_ns : t1_ns;
            if (hi <= lo)
                continue;
            ov = (double)(hi - lo);
            frac = ov / (double)(p->end_ns - p->start_ns);
        } else {
            /* A turn that took no clock time (a virtual clock that did not move) belongs to
             * the interval holding its instant. */
            if (p->start_ns < t0_ns || p->start_ns >= t1_ns)
                continue;
            ov = 0;
            frac = 1;
        }
        a->scratch[nc++] = (struct etf_attrib_contrib){
            .eid = p->eid,
            .model_nj = (double)p->model_nj * frac,
            .time_ns = ov,
            .busy_ns = (double)p->busy_ns * frac,
        };
        span_in += ov;
        model_total += (double)p->model_nj * frac;
        time_total += ov;
        if (p->model_nj)
            modelled_time += ov;
    }
    /* A turn without modelled energy (a model without profile powers) beside turns with it
     * is taken to draw their mean modelled power: neutral, rather than nothing. */
    if (model_total > 0 && modelled_time > 0 && modelled_time < time_total) {
        double mean = model_total / modelled_time;
        for (size_t i = 0; i < nc; i++) {
            if (a->scratch[i].model_nj == 0) {
                a->scratch[i].model_nj = mean * a->scratch[i].time_ns;
                model_total += a->scratch[i].model_nj;
            }
        }
    }

    /* The idle part. Entries of one dispatcher do not overlap, so their clipped spans add up
     * to the time someone ran; the cap only guards against a clock that misbehaved. */
    uint64_t busy_ns = span_in < (double)len ? (uint64_t)span_in : len;
    uint64_t idle_ns = len - busy_ns;
    uint64_t idle_nj;
    if (nc == 0) {
        idle_nj = energy_nj;
        if (len > 0) {
            double p = (double)energy_nj / (double)len * 1e3; /* nJ/ns = W; ×1e3 = mW */
            a->idle_mw = a->idle_known ? a->idle_mw + a->idle_alpha * (p - a->idle_mw) : p;
            a->idle_known = true;
        }
    } else if (a->idle_known) {
        double e = a->idle_mw * (double)idle_ns / 1e3; /* mW × ns = pJ */
        idle_nj = e >= (double)energy_nj ? energy_nj : (uint64_t)llround(e);
    } else {
        idle_nj = len ? (uint64_t)floor((double)energy_nj * ((double)idle_ns / (double)len)) : 0;
        if (idle_nj > energy_nj)
            idle_nj = energy_nj;
    }
    uint64_t busy_nj = energy_nj - idle_nj;

    /* One share per entity, by eid. */
    qsort(a->scratch, nc, sizeof *a->scratch, cmp_contrib);
    size_t ns = 0;
    for (size_t i = 0; i < nc; i++) {
        const struct etf_attrib_contrib *c = &a->scratch[i];
        if (ns == 0 || a->scratch[ns - 1].eid != c->eid) {
            a->scratch[ns++] = *c;
        } else {
            a->scratch[ns - 1].model_nj += c->model_nj;
            a->scratch[ns - 1].time_ns += c->time_ns;
            a->scratch[ns - 1].busy_ns += c->busy_ns;
        }
    }
    /* Weights: modelled energy; without any, time; without any time either (turns that took
     * none), equal. Cumulative floors sum to busy_nj exactly: the last share ends at it. */
    int by = model_total > 0 ? 0 : time_total > 0 ? 1 : 2;
    double total = 0;
    for (size_t i = 0; i < ns; i++) {
        const struct etf_attrib_contrib *c = &a->scratch[i];
        total += by == 0 ? c->model_nj : by == 1 ? c->time_ns : 1.0;
    }
    double cum = 0;
    uint64_t given = 0;
    for (size_t i = 0; i < ns; i++) {
        const struct etf_attrib_contrib *c = &a->scratch[i];
        cum += by == 0 ? c->model_nj : by == 1 ? c->time_ns : 1.0;
        uint64_t upto = i + 1 == ns ? busy_nj : (uint64_t)floor((double)busy_nj * (cum / total));
        if (upto > busy_nj)
            upto = busy_nj;
        if (upto < given)
            upto = given;
        a->shares[i] = (struct etf_attrib_share){
            .eid = c->eid,
            .energy_nj = upto - given,
            .busy_ns = (uint64_t)llround(c->busy_ns),
        };
        given = upto;
    }
    if (ns == 0)
        idle_nj = energy_nj; /* nobody to give busy energy to (only when nc == 0 anyway) */

    r->idle_nj = idle_nj;
    r->busy_ns = busy_ns;
    r->n_shares = ns;
    a->measured_nj += energy_nj;
    a->idle_nj += idle_nj;
    a->attributed_nj += energy_nj - idle_nj;
    a->intervals++;

    /* Forget what lies wholly before t1; an entry reaching past it stays for the next
     * interval, which counts only its part after t1. */
    size_t keep = 0;
    for (size_t i = 0; i < a->n_pending; i++) {
        const struct etf_ledger_entry *p = &a->pending[i];
        bool done = p->end_ns > p->start_ns ? p->end_ns <= t1_ns : p->start_ns < t1_ns;
        if (!done)
            a->pending[keep++] = *p;
    }
    a->n_pending = keep;
}
