/* The dispatcher: entities, models, task queues, the turn-by-turn step function, the
 * dispatcher thread, the accounting of time and energy, and the sampler that attributes
 * measured energy.
 *
 * Locking: one mutex, `lock`, guards every field of the scheduler, its entities, models and
 * tasks, and the ledger ring. It is the only lock this file takes, so there is no lock order
 * to get wrong; it is never held while calling out: not across device launches, frequency
 * switches, device loads, meter reads, nor completion callbacks. Backends' own locks (the
 * device's, NVML's inside the meter) are therefore only ever taken with `lock` free. The
 * stepping thread marks the entity whose turn it runs `on_cpu`, which keeps the entity alive
 * across the moments the lock is dropped.
 *
 * Measured energy (a meter with ETF_METER_CAP_MEASURES only): each turn appends one entry
 * to the ledger ring under `lock` (O(1), no allocation). The sampler thread, alone, owns
 * `attrib`: it reads the meter with no lock held, takes `lock` briefly to move the ring's
 * entries into attrib and to note how far the ledger is complete, splits the measured
 * energy with no lock held (sched/ledger.h), then takes `lock` once per interval to credit
 * the shares to the entities (by id: an entity deleted meanwhile is skipped) and to update
 * their measured power, which enters the allocation through the same reshare as
 * note_power. Tasks keep their modelled energy: one task is far shorter than one step of a
 * hardware counter.
 */
#include "etf/sched.h"

#include "etf/model.h"

#include "device/device.h"
#include "freq/freq.h"
#include "meter/meter.h"
#include "sched/freq_worker.h"
#include "sched/ledger.h"
#include "sched/runqueue.h"
#include "sched/share_tree.h"
#include "util/array.h"
#include "util/idmap.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Power assumed for entities of unknown power until the power of any tenant is known (see
 * entity_power and note_typical_power). */
#define DEFAULT_POWER_MW 1000.0
/* No entity's power is taken below this, so that a zero-power profile cannot divide by 0. */
#define MIN_POWER_MW 1e-3
/* A measured power that moved by more than this fraction triggers a new allocation. */
#define POWER_REALLOC_THRESHOLD 0.01
/* The typical power follows new estimates with this weight, and entities of unknown power
 * are re-keyed when it moves by more than TYPICAL_RESHARE. */
#define TYPICAL_ALPHA 0.2
#define TYPICAL_RESHARE 0.2
#define TASKS_PER_CHUNK 256
/* Kernels an asynchronous device may hold between two fences within one turn. */
#define MAX_PENDING_RUNS 1024
/* Measured energy: defaults of the configuration (sched.h). */
#define DEFAULT_SAMPLE_NS 20000000ull
#define DEFAULT_WINDOW_NS 500000000ull
#define DEFAULT_LEDGER_TURNS 16384u
/* Weight of the newest window in an entity's measured power. */
#define MEASURED_ALPHA 0.5

/* Time and energy charged at one frequency (etf_freq_stats). A slot with no model loaded
 * and nothing charged is free: the next new frequency takes it over. */
struct freq_acct {
    uint64_t hz;
    uint64_t kernels, time_ns, energy_nj;
    size_t models; /* loaded models at hz */
};

/* One row per distinct frequency, in no order (indices are stable: models keep theirs).
 * Rows are added at model load, never on the dispatch path, so it holds at most as many
 * rows as there have been distinct frequencies among the models loaded at once or charged
 * so far. */
struct freq_table {
    struct freq_acct *v;
    size_t n, cap;
};

struct task {
    struct task *next; /* in the entity's FCFS queue, or in the free list */
    struct model *model;
    uint64_t tid;
    uint64_t submit_ns, start_ns;
    uint64_t service_ns, energy_nj;
    size_t next_kernel;
    bool started;
    const struct etf_task_io *io;
    void *user;
};

struct task_chunk {
    struct task_chunk *next;
    struct task tasks[TASKS_PER_CHUNK];
};

struct entity {
    struct etf_rq_node rq; /* first: the run queue hands back this node */
    uint64_t eid;
    int nice;
    uint32_t weight;
    struct task *head, *tail; /* FCFS queue; head is the task running or next to run */
    size_t queued;
    size_t models, loading;
    /* Profiled power of its models at their frequencies, for before it has run. */
    double profile_power_sum;
    size_t powered_models;
    /* Moving averages of energy and time per inference; their ratio is the measured power. */
    double avg_energy_nj, avg_time_ns;
    bool has_run;
    /* In the allocation while runnable; its weight and power are what the allocation uses. */
    struct etf_share_node share;
    double slice_ns; /* the slice of its latest turn */
    bool runnable, on_cpu;
    /* Deleted while its turn was still finishing (its last task just answered): the
     * stepping thread frees it when the turn ends. */
    bool deleted;
    uint64_t tasks_done, time_ns, energy_nj;
    struct freq_table freqs; /* the same split by frequency */
    /* Measured energy attributed to it, and its device time in the intervals measured. */
    uint64_t measured_nj, measured_ns;
    /* The current window of measurement and the power learnt from past windows; once
     * has_measured, the allocation uses measured_mw. */
    uint64_t window_nj, window_ns;
    double measured_mw;
    bool has_measured;
};

struct model {
    uint64_t mid;
    struct entity *entity;
    char name[64];
    struct etf_profile *profile;
    uint64_t freq_hz;
    bool has_power;  /* the profile gives power figures; without them no energy is charged */
    double power_mw; /* model-level profiled power at freq_hz; 0 when unknown */
    size_t n_kernels;
    double *kernel_mw;                 /* per-kernel profiled power at freq_hz; 0 when unknown */
    uint64_t *kernel_ns, *kernel_runs; /* per-kernel device time charged, and runs */
    struct etf_dmodel *dm;
    size_t queued;
    uint64_t tasks_done, time_ns, energy_nj;
    /* Its frequency's rows in its entity's table and in the scheduler's (struct freq_table):
     * charging a kernel adds to both without a search. */
    size_t entity_freq, device_freq;
};

/* A kernel submitted to the device and not yet completed by a fence. */
struct pending_run {
    struct etf_kernel_run run;
    struct task *task;
    double estimate_ns; /* what the turn planned for it */
};

struct etf_sched {
    pthread_mutex_t lock;
    pthread_cond_t work; /* signalled when an entity becomes runnable, or on stop */
    pthread_cond_t idle; /* signalled when the last queued task finishes */

    struct etf_clock clock;
    struct etf_device *dev;
    /* The device runs kernels asynchronously: a turn submits kernels up to its slice (by
     * their measured mean times) and fences once; see etf_sched_step. */
    bool async;
    /* The current turn's kernels not yet fenced, a ring of n_pending from pending_head (the
     * device holds pointers to their runs); the stepping thread's alone. */
    struct pending_run pending[MAX_PENDING_RUNS];
    size_t pending_head, n_pending;
    double planned_ns; /* the sum of their estimates */
    struct etf_meter *meter;
    struct etf_freq *freq;
    bool can_set_freq;
    /* On the real clock, switches run on the worker (sched/freq_worker.h). A switch posted
     * after a fence (switch_in_flight, to posted_hz) runs while the fenced kernels are
     * completed; the stepping thread alone touches these two. */
    bool worker_on;
    struct etf_freq_worker worker;
    bool switch_in_flight;
    uint64_t posted_hz;
    uint64_t cur_hz;
    etf_task_done_fn on_done;
    void *on_done_arg;
    double power_alpha;
    size_t max_queued;

    uint64_t quantum_ns;
    double phi;

    struct etf_idmap entities, models;
    /* The runnable entities, twice: by vruntime (who runs next) and by power (how much). */
    struct etf_runqueue rq;
    struct etf_share_tree shares;
    struct etf_share_level level; /* of the latest allocation */
    bool alloc_dirty;
    double min_vruntime;
    /* The power typical of this device's tenants (an average of their estimates), and the
     * value entities of unknown power are counted at (see entity_power). */
    double typical_power_mw, typical_in_use;
    bool typical_known;

    struct task *free_tasks;
    struct task_chunk *chunks;
    uint64_t last_tid;
    size_t queued;

    bool accepting, started, stopping;
    pthread_t thread;

    /* Measured energy (measuring meters only; see the top comment). */
    bool measuring;
    struct etf_ledger ledger;
    bool turn_open;         /* a turn runs, started at turn_start_ns: the ledger lacks it */
    uint64_t turn_start_ns; /* scheduler clock */
    uint64_t window_ns;
    uint64_t sample_ns;
    bool sampler_started, sampler_stop;
    pthread_t sampler;
    pthread_cond_t sampler_wake;
    struct etf_attrib attrib; /* the sampler's alone: no lock */

    struct etf_sched_stats stats;
    struct freq_table freqs; /* stats.busy_ns and energy_nj split by frequency */
};

static void lock(struct etf_sched *s)
{
    pthread_mutex_lock(&s->lock);
}

static void unlock(struct etf_sched *s)
{
    pthread_mutex_unlock(&s->lock);
}

static uint64_t now_ns(const struct etf_sched *s)
{
    return s->clock.now(s->clock.ctx);
}

static bool phi_valid(double phi)
{
    return phi >= 0 && phi <= 1; /* false for NaN too */
}

static int check_policy(uint64_t quantum_ns, double phi, struct etf_diag *diag)
{
    if (quantum_ns == 0)
        return etf_diagf(diag, ETF_EINVAL, "quantum must be > 0 ns, found 0");
    if (!phi_valid(phi))
        return etf_diagf(diag, ETF_EINVAL, "phi must be a number in [0, 1], found %g", phi);
    return 0;
}

/* ---- Task pool: tasks come from chunks allocated and touched once, then recycled. ---- */

static struct task *task_alloc(struct etf_sched *s)
{
    if (!s->free_tasks) {
        struct task_chunk *chunk = malloc(sizeof *chunk);
        if (!chunk)
            return NULL;
        memset(chunk, 0, sizeof *chunk); /* fault the pages in now, not on the hot path */
        chunk->next = s->chunks;
        s->chunks = chunk;
        for (size_t i = 0; i < TASKS_PER_CHUNK; i++) {
            chunk->tasks[i].next = s->free_tasks;
            s->free_tasks = &chunk->tasks[i];
        }
    }
    struct task *t = s->free_tasks;
    s->free_tasks = t->next;
    memset(t, 0, sizeof *t);
    return t;
}

static void task_free(struct etf_sched *s, struct task *t)
{
    t->next = s->free_tasks;
    s->free_tasks = t;
}

/* ---- Accounting by frequency ---- */

/* The row of hz in t: the one it has, else a free row taken over, else a new one; SIZE_MAX
 * when out of memory. Called at model load (lock held), never on the dispatch path. */
static size_t freq_slot(struct freq_table *t, uint64_t hz)
{
    size_t free_row = SIZE_MAX;
    for (size_t i = 0; i < t->n; i++) {
        if (t->v[i].hz == hz)
            return i;
        if (free_row == SIZE_MAX && t->v[i].models == 0 && t->v[i].kernels == 0)
            free_row = i;
    }
    if (free_row == SIZE_MAX) {
        if (etf__reserve(&t->v, t->n, &t->cap, sizeof *t->v, 2))
            return SIZE_MAX;
        free_row = t->n++;
    }
    t->v[free_row] = (struct freq_acct){.hz = hz};
    return free_row;
}

/* Writes the rows in use of t to out (at most cap) in ascending order of hz and returns how
 * many there are. Rows are few (one per distinct frequency), so a selection is enough. */
static size_t freq_copy(const struct freq_table *t, struct etf_freq_stats *out, size_t cap)
{
    size_t n = 0;
    uint64_t prev = 0;
    for (;;) {
        const struct freq_acct *next = NULL;
        for (size_t i = 0; i < t->n; i++) {
            const struct freq_acct *a = &t->v[i];
            if ((a->models == 0 && a->kernels == 0) || (n > 0 && a->hz <= prev))
                continue;
            if (!next || a->hz < next->hz)
                next = a;
        }
        if (!next)
            return n;
        if (n < cap)
            out[n] = (struct etf_freq_stats){.hz = next->hz,
                                             .kernels = next->kernels,
                                             .time_ns = next->time_ns,
                                             .energy_nj = next->energy_nj,
                                             .models = next->models};
        n++;
        prev = next->hz;
    }
}

static void entity_free(struct entity *e)
{
    free(e->freqs.v);
    free(e);
}

/* ---- Runnable set and allocation ---- */

/* Whether anything is known about the entity's power: a measurement, modelled energy of
 * what it ran (its models have power figures), or its models' profiles. */
static bool power_known(const struct entity *e)
{
    return e->has_measured || (e->has_run && e->avg_energy_nj > 0) || e->powered_models;
}

static double entity_power(const struct etf_sched *s, const struct entity *e)
{
    double p;
    if (e->has_measured)
        p = e->measured_mw;
    else if (e->has_run && e->avg_energy_nj > 0 && e->avg_time_ns > 0)
        p = e->avg_energy_nj / e->avg_time_ns * 1e3; /* nJ/ns = W */
    else if (e->powered_models)
        p = e->profile_power_sum / (double)e->powered_models;
    else
        /* Nothing known: count it at the power typical of the others, not at an arbitrary
         * constant that may be orders of magnitude off (1 W against a GPU's 400 W gave
         * the others slices far shorter than one kernel, and a debt of many rounds). */
        p = s->typical_power_mw;
    return p > MIN_POWER_MW ? p : MIN_POWER_MW;
}

/* Recomputes the water level, from which each entity's slice follows (share_tree.h):
 * O(log n), so joins and leaves stay cheap with thousands of tenants. */
static void reallocate(struct etf_sched *s)
{
    s->level = etf__share_level(&s->shares, s->phi, (double)s->quantum_ns);
    s->alloc_dirty = false;
    s->stats.allocations++;
}

static double current_slice(const struct etf_sched *s, const struct entity *e)
{
    return etf__share_slice(&s->level, e->share.weight, e->share.power_mw);
}

/* The slice a runnable entity gets at its next turn under today's weights and powers,
 * without touching the allocation (stats must not change what the dispatcher does). */
static double next_slice(const struct etf_sched *s, const struct entity *e)
{
    if (!s->alloc_dirty)
        return current_slice(s, e);
    struct etf_share_level lv = etf__share_level(&s->shares, s->phi, (double)s->quantum_ns);
    return etf__share_slice(&lv, e->share.weight, e->share.power_mw);
}

/* Re-keys a runnable entity in the allocation after its weight or power changed. */
static void reshare(struct etf_sched *s, struct entity *e, double weight, double power_mw)
{
    etf__share_remove(&s->shares, &e->share);
    e->share.weight = weight;
    e->share.power_mw = power_mw;
    etf__share_insert(&s->shares, &e->share);
    s->alloc_dirty = true;
}

static void join(struct etf_sched *s, struct entity *e)
{
    e->runnable = true;
    if (e->rq.vruntime < s->min_vruntime)
        e->rq.vruntime = s->min_vruntime;
    etf__rq_push(&s->rq, &e->rq); /* room reserved at entity creation */
    e->share.weight = e->weight;
    e->share.power_mw = entity_power(s, e);
    etf__share_insert(&s->shares, &e->share);
    s->alloc_dirty = true;
    pthread_cond_signal(&s->work);
}

/* Takes an entity with an empty queue out of the run queue and the allocation. */
static void leave(struct etf_sched *s, struct entity *e)
{
    etf__rq_remove(&s->rq, &e->rq);
    etf__share_remove(&s->shares, &e->share);
    e->runnable = false;
    s->alloc_dirty = true;
}

/* Learns the power typical of this device's tenants from a new estimate of one of them.
 * When it has moved far from what the entities of unknown power were counted at, they are
 * re-keyed: rare (a few times while the first estimates come in), so O(n) is fine. */
static void note_typical_power(struct etf_sched *s, double power_mw)
{
    s->typical_power_mw =
        s->typical_known ? s->typical_power_mw + TYPICAL_ALPHA * (power_mw - s->typical_power_mw)
                         : power_mw;
    s->typical_known = true;
    if (fabs(s->typical_power_mw - s->typical_in_use) <= TYPICAL_RESHARE * s->typical_in_use)
        return;
    s->typical_in_use = s->typical_power_mw;
    for (size_t i = 0; i < s->entities.n; i++) {
        struct entity *e = etf__idmap_slot(&s->entities, i);
        if (e && e->runnable && !power_known(e))
            reshare(s, e, e->share.weight, entity_power(s, e));
    }
}

static void note_power(struct etf_sched *s, struct entity *e, const struct task *t)
{
    if (t->service_ns == 0)
        return;
    if (!e->has_run) {
        e->avg_energy_nj = (double)t->energy_nj;
        e->avg_time_ns = (double)t->service_ns;
        e->has_run = true;
    } else {
        e->avg_energy_nj += s->power_alpha * ((double)t->energy_nj - e->avg_energy_nj);
        e->avg_time_ns += s->power_alpha * ((double)t->service_ns - e->avg_time_ns);
    }
    double power = entity_power(s, e);
    if (e->runnable &&
        fabs(power - e->share.power_mw) > POWER_REALLOC_THRESHOLD * e->share.power_mw)
        reshare(s, e, e->share.weight, power);
    if (t->energy_nj > 0)
        note_typical_power(s, power);
}

/* ---- Task completion ---- */

/* Removes the head task of e from its queue, reports it through on_done (with the lock
 * dropped) and recycles it. Called with the lock held; returns with it held. */
static void finish_head(struct etf_sched *s, struct entity *e, int status, uint64_t end_ns)
{
    struct task *t = e->head;
    struct model *m = t->model;
    e->head = t->next;
    if (!e->head)
        e->tail = NULL;
    e->queued--;
    m->queued--;
    s->queued--;
    if (status == 0) {
        e->tasks_done++;
        m->tasks_done++;
        note_power(s, e, t);
    }
    struct etf_task_record rec = {
        .tid = t->tid,
        .eid = e->eid,
        .mid = m->mid,
        .status = status,
        .submit_ns = t->submit_ns,
        .start_ns = t->started ? t->start_ns : end_ns,
        .end_ns = end_ns,
        .service_ns = t->service_ns,
        .energy_nj = t->energy_nj,
        .freq_hz = m->freq_hz,
        .user = t->user,
    };
    if (s->queued == 0)
        pthread_cond_broadcast(&s->idle);
    if (s->on_done) {
        unlock(s);
        s->on_done(s->on_done_arg, &rec);
        lock(s);
    }
    task_free(s, t);
}

/* ---- The step ---- */

static void freq_add(struct freq_acct *a, uint64_t busy_ns, uint64_t energy_nj)
{
    a->kernels++;
    a->time_ns += busy_ns;
    a->energy_nj += energy_nj;
}

static void charge(struct etf_sched *s, struct entity *e, struct model *m, struct task *t,
                   const struct etf_kernel_run *run)
{
    uint64_t busy = run->busy_ns;
    /* A model without profiled power is charged at its entity's measured power once a
     * meter has taught it: tasks and models then carry an energy figure, and the ledger
     * splits mixed intervals by it rather than by time alone. */
    double mw = m->has_power ? m->kernel_mw[run->kernel] : e->has_measured ? e->measured_mw : 0;
    /* mW × ns = pJ; /1000 = nJ */
    uint64_t energy = (uint64_t)llround((double)busy * mw / 1000.0);
    t->service_ns += busy;
    t->energy_nj += energy;
    m->time_ns += busy;
    m->energy_nj += energy;
    m->kernel_ns[run->kernel] += busy;
    m->kernel_runs[run->kernel]++;
    e->time_ns += busy;
    e->energy_nj += energy;
    s->stats.busy_ns += busy;
    s->stats.energy_nj += energy;
    s->stats.dispatches++;
    /* By frequency: the run's clock is its model's (run->freq_hz = m->freq_hz), whose rows
     * the model has held since its load. */
    freq_add(&e->freqs.v[m->entity_freq], busy, energy);
    freq_add(&s->freqs.v[m->device_freq], busy, energy);
}

static void end_turn(struct etf_sched *s, struct entity *e, uint64_t used_ns)
{
    /* A slice is > 0 by construction (floors and water levels are positive); the guard
     * keeps a degenerate one from producing an infinite or NaN vruntime. */
    double slice = e->slice_ns > 1 ? e->slice_ns : 1;
    e->rq.vruntime += (double)used_ns / slice;
    e->on_cpu = false;
    if (e->head)
        etf__rq_update(&s->rq, &e->rq);
    else
        leave(s, e);
    /* As in CFS, the floor follows the least vruntime among the runnable entities and the
     * one that just ran, even if it left: an entity running alone in request/response
     * keeps leaving, and a newcomer must not start far behind it. */
    double least = e->rq.vruntime;
    struct etf_rq_node *first = etf__rq_peek(&s->rq);
    if (first && first->vruntime < least)
        least = first->vruntime;
    if (least > s->min_vruntime)
        s->min_vruntime = least;
    if (e->deleted)
        entity_free(e);
}

/* The first task of e with kernels still to submit, or NULL. Tasks whose kernels have all
 * been submitted stay at the head of the queue until a fence completes them. */
static struct task *next_to_submit(const struct entity *e)
{
    struct task *t = e->head;
    while (t && t->next_kernel == t->model->n_kernels)
        t = t->next;
    return t;
}

/* The device time kernel k of m is expected to take: the mean of its runs so far, or a
 * negative value when it has never run. */
static double kernel_estimate(const struct model *m, size_t k)
{
    if (m->kernel_runs[k] == 0)
        return -1.0;
    return (double)m->kernel_ns[k] / (double)m->kernel_runs[k];
}

static struct pending_run *pending_at(struct etf_sched *s, size_t i)
{
    return &s->pending[(s->pending_head + i) % MAX_PENDING_RUNS];
}

/* Completes the n oldest pending runs of e's turn (all when n exceeds their number):
 * fences an asynchronous device, charges each run at its measured time (adding it to
 * *used) and finishes the tasks whose last kernel ran. If the fence fails, every pending
 * run is lost and the tasks they belong to fail with its error. With the clock worker, a
 * fence that drains the device starts the switch to then_hz (0 = none) before the runs are
 * completed. Called with the lock held; drops it around the fence and the completion
 * callbacks. */
static int settle(struct etf_sched *s, struct entity *e, uint64_t *used, size_t n, uint64_t then_hz)
{
    if (n > s->n_pending)
        n = s->n_pending;
    if (n == 0)
        return 0;
    int rc = 0;
    if (s->async) {
        unlock(s);
        rc = etf__device_fence(s->dev, n);
        lock(s);
        s->stats.fences++;
    }
    if (rc == 0 && then_hz && s->worker_on && n == s->n_pending) {
        /* The device is idle at the old clock: the new one can be set while the runs are
         * completed and their tasks handed back. */
        etf__freq_worker_post(&s->worker, then_hz);
        s->switch_in_flight = true;
        s->posted_hz = then_hz;
    }
    if (rc) {
        /* The lost runs' tasks are the first ones of e's queue, in order. */
        size_t tasks = 0;
        for (size_t i = 0; i < s->n_pending; i++)
            if (i == 0 || pending_at(s, i)->task != pending_at(s, i - 1)->task)
                tasks++;
        s->n_pending = 0;
        s->planned_ns = 0;
        while (tasks-- > 0 && e->head)
            finish_head(s, e, rc, now_ns(s));
        return rc;
    }
    for (size_t i = 0; i < n; i++) {
        /* Taken off the ring first: finish_head drops the lock. */
        const struct pending_run *pr = pending_at(s, 0);
        s->pending_head = (s->pending_head + 1) % MAX_PENDING_RUNS;
        s->n_pending--;
        s->planned_ns -= pr->estimate_ns;
        struct task *t = pr->task;
        struct model *m = t->model;
        charge(s, e, m, t, &pr->run);
        *used += pr->run.busy_ns;
        if (pr->run.kernel + 1 == m->n_kernels)
            finish_head(s, e, 0, now_ns(s));
    }
    if (s->n_pending == 0)
        s->planned_ns = 0; /* no drift from the subtractions */
    return 0;
}

/* How many of the oldest pending runs make up the first task they finish (all of them
 * if none ends a task). Completing just those lets the GPU go on with the rest while the
 * host hands the finished task back. */
static size_t first_task_end(struct etf_sched *s)
{
    for (size_t i = 0; i < s->n_pending; i++) {
        const struct pending_run *pr = pending_at(s, i);
        if (pr->run.kernel + 1 == pr->task->model->n_kernels)
            return i + 1;
    }
    return s->n_pending;
}

/* Sets the clock to hz, on the worker when there is one (using a switch to hz already
 * posted after a fence). Called without the lock, from the stepping thread. */
static int switch_clock(struct etf_sched *s, uint64_t hz)
{
    if (!s->worker_on)
        return etf__freq_set(s->freq, hz);
    if (s->switch_in_flight) {
        s->switch_in_flight = false;
        int rc = etf__freq_worker_wait(&s->worker);
        if (s->posted_hz == hz)
            return rc;
    }
    etf__freq_worker_post(&s->worker, hz);
    return etf__freq_worker_wait(&s->worker);
}

/* Records the outcome of a clock switch. Called with the lock held. */
static void note_switch(struct etf_sched *s, uint64_t hz, int rc)
{
    if (rc == 0) {
        s->cur_hz = hz;
        s->stats.freq_switches++;
    } else {
        /* A failed switch may have left the clock anywhere (devfreq pins min and max
         * before cur_freq is found not to follow): the next kernel must switch again,
         * whatever its frequency. */
        s->cur_hz = 0;
        s->stats.freq_errors++;
    }
}

/* While the device runs the end of e's turn: hints it to start the task that most likely
 * runs first after the turn (the least in vruntime once e is charged for the time it
 * submitted), so that the host-side work of starting it (copying a batch of inputs into
 * staging) is done before the device drains instead of after. A wrong guess costs a copy.
 * The lock stays held: the task and its buffers must not go away during the copy. */
static void prepare_next(struct etf_sched *s, struct entity *e, uint64_t used)
{
    if (!s->async || s->n_pending == 0 || !e->runnable || !etf__device_can_prepare(s->dev))
        return;
    double saved = e->rq.vruntime, slice = e->slice_ns > 1 ? e->slice_ns : 1;
    e->rq.vruntime += ((double)used + s->planned_ns) / slice;
    etf__rq_update(&s->rq, &e->rq);
    struct entity *next = (struct entity *)etf__rq_peek(&s->rq);
    e->rq.vruntime = saved;
    etf__rq_update(&s->rq, &e->rq);
    struct task *t = next ? next_to_submit(next) : NULL;
    if (!t || t->next_kernel != 0 || !t->model->dm)
        return;
    struct etf_kernel_run run = {
        .dm = t->model->dm, .kernel = 0, .freq_hz = t->model->freq_hz, .io = t->io, .task = t->tid};
    etf__device_prepare(s->dev, &run);
    s->stats.prepares++;
}

int etf_sched_step(struct etf_sched *s, bool *ran)
{
    int rc = 0;
    *ran = false;
    lock(s);
    if (s->rq.n == 0) {
        unlock(s);
        return 0;
    }
    if (s->alloc_dirty)
        reallocate(s);
    /* The entity stays queued during its turn; end_turn re-orders it. */
    struct entity *e = (struct entity *)etf__rq_peek(&s->rq);
    e->on_cpu = true;
    e->slice_ns = current_slice(s, e);
    s->stats.turns++;
    *ran = true;
    uint64_t turn_start = 0, turn_energy = 0;
    if (s->measuring) {
        turn_start = now_ns(s);
        turn_energy = e->energy_nj;
        s->turn_start_ns = turn_start;
        s->turn_open = true;
    }

    /* used: device time measured so far. A synchronous device completes each kernel at
     * once. An asynchronous one gets the turn's kernels as far as their expected times
     * (planned_ns) fill the slice and is fenced: at the end of the turn; before a clock
     * switch (kernels are charged at the clock they ran at); when it or the pending ring is
     * full; after a kernel that never ran (its first run teaches the estimate); and, when
     * every queued kernel is submitted, up to the end of the oldest task, so that its
     * completion (and the client's next request) is handled while the GPU runs the rest. */
    uint64_t used = 0;
    /* The task whose kernels are being submitted. It stays valid across settles: they finish
     * only tasks whose kernels were all submitted (or fail the turn, which then ends). */
    struct task *t = NULL;
    for (;;) {
        if (!t)
            t = next_to_submit(e); /* completions may have queued more work */
        if ((double)used + s->planned_ns >= e->slice_ns)
            break;
        if (!t) {
            if (s->n_pending == 0)
                break;
            if ((rc = settle(s, e, &used, first_task_end(s), 0)) != 0)
                break;
            continue;
        }
        struct model *m = t->model;
        bool switching = s->can_set_freq && s->cur_hz != m->freq_hz;
        if (switching && s->n_pending) {
            if ((rc = settle(s, e, &used, SIZE_MAX, m->freq_hz)) != 0)
                break;
            continue;
        }
        if (!t->started) {
            t->started = true;
            t->start_ns = now_ns(s);
        }
        size_t k = t->next_kernel;
        double estimate = kernel_estimate(m, k);
        struct pending_run *pr = pending_at(s, s->n_pending);
        pr->run = (struct etf_kernel_run){
            .dm = m->dm, .kernel = k, .freq_hz = m->freq_hz, .io = t->io, .task = t->tid};
        pr->task = t;
        pr->estimate_ns = estimate > 0 ? estimate : 0;
        unlock(s);

        int krc = switching ? switch_clock(s, m->freq_hz) : 0;
        int switch_rc = krc;
        if (krc == 0)
            krc = s->async ? etf__device_submit(s->dev, &pr->run)
                           : etf__device_launch(s->dev, &pr->run);

        lock(s);
        if (switching)
            note_switch(s, m->freq_hz, switch_rc);
        if (krc == ETF_EBUSY && s->async && s->n_pending) {
            if ((rc = settle(s, e, &used, first_task_end(s), 0)) != 0)
                break;
            continue;
        }
        if (krc) {
            /* The task cannot run; end the turn so that a client resubmitting from on_done
             * cannot keep this loop spinning on a failing device. What ran before it is
             * completed first, so that the failing task is at the head. */
            rc = krc;
            settle(s, e, &used, SIZE_MAX, 0);
            if (e->head == t)
                finish_head(s, e, krc, now_ns(s));
            break;
        }
        s->n_pending++;
        s->planned_ns += pr->estimate_ns;
        if (++t->next_kernel == m->n_kernels)
            t = t->next; /* read now: settling may finish and recycle t */
        if (!s->async || estimate < 0 || s->n_pending == MAX_PENDING_RUNS) {
            if ((rc = settle(s, e, &used, SIZE_MAX, 0)) != 0)
                break;
        }
    }
    if (rc == 0) {
        prepare_next(s, e, used);
        rc = settle(s, e, &used, SIZE_MAX, 0);
    }
    if (s->switch_in_flight) {
        /* Posted for a kernel that did not come (its task failed or was the last): the
         * clock still changed. */
        s->switch_in_flight = false;
        unlock(s);
        int src = etf__freq_worker_wait(&s->worker);
        lock(s);
        note_switch(s, s->posted_hz, src);
    }
    if (s->measuring) {
        if (used > 0) {
            struct etf_ledger_entry le = {.eid = e->eid,
                                          .start_ns = turn_start,
                                          .end_ns = now_ns(s),
                                          .busy_ns = used,
                                          .model_nj = e->energy_nj - turn_energy};
            etf__ledger_append(&s->ledger, &le);
        }
        s->turn_open = false;
    }
    end_turn(s, e, used);
    unlock(s);
    return rc;
}

/* ---- Dispatcher thread ---- */

static void *dispatcher_main(void *arg)
{
    struct etf_sched *s = arg;
    for (;;) {
        lock(s);
        while (!s->stopping && s->rq.n == 0)
            pthread_cond_wait(&s->work, &s->lock);
        bool stop = s->stopping;
        unlock(s);
        if (stop)
            return NULL;
        bool ran;
        /* A failed kernel fails its task and is reported through on_done; the loop goes on
         * serving the others. */
        etf_sched_step(s, &ran);
    }
}

int etf_sched_start(struct etf_sched *s)
{
    lock(s);
    if (s->started || !s->accepting) {
        unlock(s);
        return ETF_EBUSY;
    }
    s->started = true;
    s->stopping = false;
    int err = pthread_create(&s->thread, NULL, dispatcher_main, s);
    if (err)
        s->started = false;
    unlock(s);
    return err ? ETF_ENOMEM : 0;
}

/* Fails every queued task with ETF_ESHUTDOWN. Called with the lock held and no turn
 * running. */
static void fail_queued(struct etf_sched *s)
{
    for (size_t i = 0; i < s->entities.n; i++) {
        struct entity *e = etf__idmap_slot(&s->entities, i);
        if (!e)
            continue;
        e->on_cpu = true; /* pins e while on_done runs unlocked */
        while (e->head)
            finish_head(s, e, ETF_ESHUTDOWN, now_ns(s));
        e->on_cpu = false;
        if (e->runnable)
            leave(s, e);
        if (e->deleted)
            entity_free(e);
    }
}

int etf_sched_stop(struct etf_sched *s, uint64_t drain_ns)
{
    lock(s);
    s->accepting = false;
    if (s->started && drain_ns > 0) {
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        uint64_t ns = (uint64_t)deadline.tv_nsec + drain_ns % 1000000000u;
        deadline.tv_sec += (time_t)(drain_ns / 1000000000u + ns / 1000000000u);
        deadline.tv_nsec = (long)(ns % 1000000000u);
        while (s->queued > 0) {
            if (pthread_cond_timedwait(&s->idle, &s->lock, &deadline) == ETIMEDOUT)
                break;
        }
    }
    bool joining = s->started;
    s->stopping = true;
    pthread_cond_broadcast(&s->work);
    unlock(s);
    if (joining)
        pthread_join(s->thread, NULL);
    lock(s);
    s->started = false;
    fail_queued(s);
    unlock(s);
    return 0;
}

/* ---- Measured energy: the sampler ---- */

/* Credits one attributed interval to the entities (by id: one deleted since is skipped, its
 * share staying in the scheduler's total) and, for each whose window of measurement is
 * full, folds the window's power into its measured power and re-keys it in the allocation.
 * Called with the lock held. */
static void apply_interval(struct etf_sched *s, const struct etf_attrib_result *r)
{
    s->stats.measured_energy_nj += r->energy_nj;
    s->stats.idle_energy_nj += r->idle_nj;
    for (size_t i = 0; i < r->n_shares; i++) {
        const struct etf_attrib_share *sh = &r->shares[i];
        struct entity *e = etf__idmap_get(&s->entities, sh->eid);
        if (!e)
            continue;
        e->measured_nj += sh->energy_nj;
        e->measured_ns += sh->busy_ns;
        e->window_nj += sh->energy_nj;
        e->window_ns += sh->busy_ns;
        if (e->window_ns < s->window_ns)
            continue;
        double p = (double)e->window_nj / (double)e->window_ns * 1e3; /* nJ/ns = W */
        e->measured_mw =
            e->has_measured ? e->measured_mw + MEASURED_ALPHA * (p - e->measured_mw) : p;
        e->has_measured = true;
        note_typical_power(s, e->measured_mw);
        e->window_nj = 0;
        e->window_ns = 0;
        double power = entity_power(s, e);
        if (e->runnable &&
            fabs(power - e->share.power_mw) > POWER_REALLOC_THRESHOLD * e->share.power_mw)
            reshare(s, e, e->share.weight, power);
    }
}

/* One round of the sampler: read the meter (no lock: it may take milliseconds), take the
 * ledger (lock, briefly), split what is complete (no lock), credit it (lock, briefly). */
static int sample_once(struct etf_sched *s)
{
    uint64_t energy_uj = 0, at_host = 0;
    int rc = s->meter->ops->read_energy(s->meter, &energy_uj, &at_host);

    lock(s);
    /* The meter stamps its readings on the host's clock, the ledger is on the scheduler's:
     * the time elapsed since the reading carries one onto the other, whatever the origin of
     * the scheduler's clock (both read back to back, after any wait for the lock). */
    uint64_t host = etf_host_ns();
    uint64_t now = now_ns(s);
    uint64_t lag = rc == 0 && at_host < host ? host - at_host : 0;
    uint64_t at = now > lag ? now - lag : 0;
    /* A running turn is not in the ledger yet: nothing after its start can be split. */
    uint64_t complete = s->turn_open ? s->turn_start_ns : now;
    etf__attrib_pull(&s->attrib, &s->ledger);
    if (rc == 0)
        s->stats.meter_samples++;
    else
        s->stats.meter_errors++;
    s->stats.ledger_dropped = s->ledger.dropped + s->attrib.dropped;
    unlock(s);

    if (rc == 0)
        etf__attrib_reading(&s->attrib, energy_uj * 1000u, at);
    struct etf_attrib_result r;
    while (etf__attrib_next(&s->attrib, complete, &r)) {
        lock(s);
        apply_interval(s, &r);
        s->stats.idle_power_mw = s->attrib.idle_known ? s->attrib.idle_mw : 0;
        unlock(s);
    }
    return rc;
}

static void *sampler_main(void *arg)
{
    struct etf_sched *s = arg;
    lock(s);
    while (!s->sampler_stop) {
        unlock(s);
        /* A failed read is counted (meter_errors) and the next one tried: a meter that
         * hiccups must not stop the attribution. */
        sample_once(s);
        lock(s);
        struct timespec deadline;
        clock_gettime(CLOCK_MONOTONIC, &deadline);
        uint64_t ns = (uint64_t)deadline.tv_nsec + s->sample_ns % 1000000000u;
        deadline.tv_sec += (time_t)(s->sample_ns / 1000000000u + ns / 1000000000u);
        deadline.tv_nsec = (long)(ns % 1000000000u);
        while (!s->sampler_stop) {
            if (pthread_cond_timedwait(&s->sampler_wake, &s->lock, &deadline) == ETIMEDOUT)
                break;
        }
    }
    unlock(s);
    return NULL;
}

int etf__sched_sample(struct etf_sched *s)
{
    if (!s->measuring)
        return ETF_ENOTSUP;
    lock(s);
    bool threaded = s->sampler_started;
    unlock(s);
    /* The attribution state belongs to one sampler: a thread, or the caller. */
    return threaded ? ETF_EBUSY : sample_once(s);
}

/* Sets up the ledger and starts the sampler, for a meter that measures. */
static int measure_start(struct etf_sched *s, const struct etf_sched_config *cfg,
                         struct etf_diag *diag)
{
    bool manual = cfg->meter_sample_ns == ETF_METER_SAMPLE_MANUAL;
    struct etf_vclock probe = {0};
    if (!manual && cfg->clock && cfg->clock->now == etf_vclock_as_clock(&probe).now)
        return etf_diagf(diag, ETF_EINVAL,
                         "meter '%s' measures in real time, which a virtual clock cannot be "
                         "matched with (and a sampler thread cannot read it): use the model "
                         "meter for simulations",
                         etf_meter_name(cfg->meter));
    size_t turns = cfg->ledger_turns ? cfg->ledger_turns : DEFAULT_LEDGER_TURNS;
    if (turns > SIZE_MAX / 4 / sizeof(struct etf_ledger_entry))
        return etf_diagf(diag, ETF_EINVAL, "ledger_turns %zu is too large", turns);
    s->sample_ns = cfg->meter_sample_ns ? cfg->meter_sample_ns : DEFAULT_SAMPLE_NS;
    s->window_ns = cfg->meter_window_ns ? cfg->meter_window_ns : DEFAULT_WINDOW_NS;
    /* The sampler keeps the entries since the latest boundary: up to a counter step
     * (~100 ms) behind, several samples' worth of the ring. */
    if (etf__ledger_init(&s->ledger, turns) || etf__attrib_init(&s->attrib, 2 * turns))
        return etf_diagf(diag, ETF_ENOMEM, "scheduler: no memory for a ledger of %zu turns", turns);
    s->measuring = true;
    if (manual)
        return 0;
    if (pthread_create(&s->sampler, NULL, sampler_main, s))
        return etf_diagf(diag, ETF_ENOMEM, "scheduler: cannot start the meter's sampler thread");
    s->sampler_started = true;
    return 0;
}

static void measure_stop(struct etf_sched *s)
{
    lock(s);
    bool joining = s->sampler_started;
    s->sampler_stop = true;
    pthread_cond_broadcast(&s->sampler_wake);
    unlock(s);
    if (joining)
        pthread_join(s->sampler, NULL);
    s->sampler_started = false;
    etf__ledger_fini(&s->ledger);
    etf__attrib_fini(&s->attrib);
}

/* ---- Life cycle ---- */

int etf_sched_create(const struct etf_sched_config *cfg, struct etf_sched **out,
                     struct etf_diag *diag)
{
    if (!cfg || !out)
        return etf_diagf(diag, ETF_EINVAL, "scheduler: no configuration given");
    if (!cfg->device)
        return etf_diagf(diag, ETF_EINVAL, "scheduler: no device given");
    int rc = check_policy(cfg->quantum_ns, cfg->phi, diag);
    if (rc)
        return rc;

    struct etf_sched *s = calloc(1, sizeof *s);
    if (!s)
        return etf_diagf(diag, ETF_ENOMEM, "scheduler: out of memory");
    pthread_condattr_t attr;
    if (pthread_mutex_init(&s->lock, NULL))
        goto fail_free;
    if (pthread_condattr_init(&attr))
        goto fail_mutex;
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    if (pthread_cond_init(&s->work, &attr))
        goto fail_attr;
    if (pthread_cond_init(&s->idle, &attr))
        goto fail_work;
    if (pthread_cond_init(&s->sampler_wake, &attr))
        goto fail_idle;
    pthread_condattr_destroy(&attr);

    s->clock = cfg->clock ? *cfg->clock : etf_monotonic_clock;
    s->dev = cfg->device;
    s->async = etf__device_async(s->dev);
    s->meter = cfg->meter;
    s->freq = cfg->freq;
    s->can_set_freq = etf__freq_can_set(s->freq);

    if (s->freq && etf__freq_get(s->freq, &s->cur_hz) != 0)
        s->cur_hz = 0;
    s->on_done = cfg->on_done;
    s->on_done_arg = cfg->on_done_arg;
    s->power_alpha = 1.0 / (cfg->power_horizon_tasks ? cfg->power_horizon_tasks : 8);
    s->max_queued = cfg->max_queued_tasks ? cfg->max_queued_tasks : 65536;
    s->quantum_ns = cfg->quantum_ns;
    s->phi = cfg->phi;
    etf__idmap_init(&s->entities);
    etf__idmap_init(&s->models);
    etf__rq_init(&s->rq);
    etf__share_init(&s->shares);
    s->typical_power_mw = s->typical_in_use = DEFAULT_POWER_MW;
    s->accepting = true;
    /* The simulator's virtual clock keeps its runs free of threads. */
    if (s->can_set_freq && !cfg->clock) {
        if (etf__freq_worker_start(&s->worker, s->freq)) {
            etf_sched_destroy(s);
            return etf_diagf(diag, ETF_ENOMEM, "scheduler: cannot start the clock worker");
        }
        s->worker_on = true;
    }
    if (etf__meter_measures(s->meter)) {
        rc = measure_start(s, cfg, diag);
        if (rc) {
            etf_sched_destroy(s);
            return rc;
        }
    }
    *out = s;
    return 0;

fail_idle:
    pthread_cond_destroy(&s->idle);
fail_work:
    pthread_cond_destroy(&s->work);
fail_attr:
    pthread_condattr_destroy(&attr);
fail_mutex:
    pthread_mutex_destroy(&s->lock);
fail_free:
    free(s);
    return etf_diagf(diag, ETF_ENOMEM, "scheduler: cannot create its lock");
}

static void model_free_arrays(struct model *m)
{
    free(m->kernel_mw);
    free(m->kernel_ns);
    free(m->kernel_runs);
    free(m);
}

static void model_free(struct etf_sched *s, struct model *m)
{
    if (m->dm)
        etf__device_unload(s->dev, m->dm);
    etf_profile_free(m->profile);
    model_free_arrays(m);
}

void etf_sched_destroy(struct etf_sched *s)
{
    if (!s)
        return;
    measure_stop(s);
    etf_sched_stop(s, 0);
    if (s->worker_on)
        etf__freq_worker_stop(&s->worker);
    for (size_t i = 0; i < s->models.n; i++) {
        struct model *m = etf__idmap_slot(&s->models, i);
        if (m)
            model_free(s, m);
    }
    for (size_t i = 0; i < s->entities.n; i++) {
        struct entity *e = etf__idmap_slot(&s->entities, i);
        if (e)
            entity_free(e);
    }
    free(s->freqs.v);
    while (s->chunks) {
        struct task_chunk *next = s->chunks->next;
        free(s->chunks);
        s->chunks = next;
    }
    etf__idmap_fini(&s->models);
    etf__idmap_fini(&s->entities);
    etf__rq_fini(&s->rq);
    pthread_cond_destroy(&s->sampler_wake);
    pthread_cond_destroy(&s->idle);
    pthread_cond_destroy(&s->work);
    pthread_mutex_destroy(&s->lock);
    free(s);
}

int etf_sched_set_policy(struct etf_sched *s, uint64_t quantum_ns, double phi,
                         struct etf_diag *diag)
{
    int rc = check_policy(quantum_ns, phi, diag);
    if (rc)
        return rc;
    lock(s);
    s->quantum_ns = quantum_ns;
    s->phi = phi;
    s->alloc_dirty = true;
    unlock(s);
    return 0;
}

/* ---- Entities ---- */

static int check_nice(int64_t nice, struct etf_diag *diag)
{
    if (!etf_nice_valid(nice))
        return etf_diagf(diag, ETF_EINVAL, "priority must be a nice level in %d..%d, found %lld",
                         ETF_NICE_MIN, ETF_NICE_MAX, (long long)nice);
    return 0;
}

int etf_entity_create(struct etf_sched *s, int64_t nice, uint64_t *eid, struct etf_diag *diag)
{
    int rc = check_nice(nice, diag);
    if (rc)
        return rc;
    struct entity *e = calloc(1, sizeof *e);
    if (!e)
        return etf_diagf(diag, ETF_ENOMEM, "entity: out of memory");
    e->nice = (int)nice;
    e->weight = etf_nice_to_weight(e->nice);
    lock(s);
    rc = etf__rq_reserve(&s->rq, s->entities.live + 1);
    if (rc == 0)
        rc = etf__idmap_add(&s->entities, e, &e->eid);
    if (rc == 0) {
        e->rq.seq = e->eid;
        e->share.seq = e->eid;
        *eid = e->eid;
    }
    unlock(s);
    if (rc) {
        free(e);
        return etf_diagf(diag, rc, "entity: out of memory");
    }
    return 0;
}

static struct entity *find_entity(struct etf_sched *s, uint64_t eid, struct etf_diag *diag)
{
    struct entity *e = etf__idmap_get(&s->entities, eid);
    if (!e)
        etf_diagf(diag, ETF_ENOENT, "no entity with id %llu", (unsigned long long)eid);
    return e;
}

int etf_entity_set_priority(struct etf_sched *s, uint64_t eid, int64_t nice, struct etf_diag *diag)
{
    int rc = check_nice(nice, diag);
    if (rc)
        return rc;
    lock(s);
    struct entity *e = find_entity(s, eid, diag);
    if (e) {
        e->nice = (int)nice;
        e->weight = etf_nice_to_weight(e->nice);
        if (e->runnable)
            reshare(s, e, e->weight, e->share.power_mw);
    }
    unlock(s);
    return e ? 0 : ETF_ENOENT;
}

int etf_entity_delete(struct etf_sched *s, uint64_t eid, struct etf_diag *diag)
{
    lock(s);
    struct entity *e = find_entity(s, eid, diag);
    int rc = e ? 0 : ETF_ENOENT;
    if (e && (e->models || e->loading)) {
        rc = etf_diagf(diag, ETF_EBUSY, "entity %llu still has %zu model(s) loaded",
                       (unsigned long long)eid, e->models + e->loading);
    } else if (e) {
        /* Without models it has no tasks; only a turn that is ending may still hold it. */
        etf__idmap_remove(&s->entities, eid);
        if (e->on_cpu)
            e->deleted = true;
        else
            entity_free(e);
    }
    unlock(s);
    return rc;
}

/* ---- Models ---- */

static int model_prepare(const struct etf_model_spec *spec, uint64_t cur_hz, struct model **out,
                         struct etf_diag *diag)
{
    const struct etf_profile *p = spec->profile;
    const char *name = spec->name ? spec->name : p ? p->model_name : etf_plan_name(spec->plan);
    size_t n_kernels = p ? p->n_kernels : etf_plan_kernel_count(spec->plan);
    if (p && spec->plan && etf_plan_kernel_count(spec->plan) != n_kernels)
        return etf_diagf(diag, ETF_EINVAL,
                         "model '%.64s': its profile has %zu kernels, its plan %zu: the profile "
                         "was made for another model or another build of it",
                         name, n_kernels, etf_plan_kernel_count(spec->plan));
    long fi = -1;
    if (p && spec->freq_hz) {
        fi = etf_profile_freq_index(p, spec->freq_hz);
        if (fi < 0)
            return etf_diagf(diag, ETF_EINVAL,
                             "model '%.64s': its profile has no figures for %llu Hz (it covers "
                             "%llu..%llu Hz in %zu steps)",
                             name, (unsigned long long)spec->freq_hz,
                             (unsigned long long)p->freqs_hz[0],
                             (unsigned long long)p->freqs_hz[p->n_freqs - 1], p->n_freqs);
    } else if (p) {
        fi = cur_hz ? etf_profile_freq_index(p, cur_hz) : -1;
        if (fi < 0)
            fi = (long)p->n_freqs - 1;
    }

    struct model *m = calloc(1, sizeof *m);
    if (!m)
        return etf_diagf(diag, ETF_ENOMEM, "model: out of memory");
    m->kernel_mw = calloc(n_kernels, sizeof *m->kernel_mw);
    m->kernel_ns = calloc(n_kernels, sizeof *m->kernel_ns);
    m->kernel_runs = calloc(n_kernels, sizeof *m->kernel_runs);
    if (!m->kernel_mw || !m->kernel_ns || !m->kernel_runs) {
        model_free_arrays(m);
        return etf_diagf(diag, ETF_ENOMEM, "model: out of memory");
    }
    snprintf(m->name, sizeof m->name, "%s", name);
    m->freq_hz = p ? p->freqs_hz[fi] : spec->freq_hz ? spec->freq_hz : cur_hz;
    m->n_kernels = n_kernels;
    if (p && p->has_power) {
        m->has_power = true;
        m->power_mw = p->power_mw[fi];
        for (size_t k = 0; k < n_kernels; k++)
            m->kernel_mw[k] = p->kernels[k].power_mw[fi];
    }
    *out = m;
    return 0;
}

int etf_model_load(struct etf_sched *s, uint64_t eid, const struct etf_model_spec *spec,
                   uint64_t *mid, struct etf_diag *diag)
{
    if (!spec || (!spec->profile && !spec->plan))
        return etf_diagf(diag, ETF_EINVAL, "model: neither a profile nor a plan given");
    lock(s);
    struct entity *e = find_entity(s, eid, diag);
    uint64_t cur_hz = s->cur_hz;
    if (e)
        e->loading++; /* keeps e from being deleted while the device loads unlocked */
    unlock(s);
    if (!e)
        return ETF_ENOENT;

    struct model *m = NULL;
    int rc = model_prepare(spec, cur_hz, &m, diag);
    if (rc)
        goto fail_unpin;
    struct etf_model_desc desc = {.name = m->name, .profile = spec->profile, .plan = spec->plan};
    rc = etf__device_load(s->dev, &desc, &m->dm, diag);
    if (rc)
        goto fail_model;

    lock(s);
    /* Its rows by frequency, so that charging it never searches nor allocates. */
    m->entity_freq = freq_slot(&e->freqs, m->freq_hz);
    m->device_freq = freq_slot(&s->freqs, m->freq_hz);
    if (m->entity_freq == SIZE_MAX || m->device_freq == SIZE_MAX)
        rc = ETF_ENOMEM; /* a row taken stays free: nothing to undo */
    else
        rc = etf__idmap_add(&s->models, m, &m->mid);
    if (rc == 0) {
        m->profile = spec->profile; /* ownership moves only on success */
        m->entity = e;
        e->models++;
        e->freqs.v[m->entity_freq].models++;
        s->freqs.v[m->device_freq].models++;
        if (m->has_power) {
            e->profile_power_sum += m->power_mw;
            e->powered_models++;
        }
        *mid = m->mid;
    }
    e->loading--;
    unlock(s);
    if (rc) {
        etf_diagf(diag, rc, "model: out of memory");
        model_free(s, m);
    }
    return rc;

fail_model:
    model_free(s, m);
fail_unpin:
    lock(s);
    e->loading--;
    unlock(s);
    return rc;
}

int etf_model_unload(struct etf_sched *s, uint64_t mid, struct etf_diag *diag)
{
    lock(s);
    struct model *m = etf__idmap_get(&s->models, mid);
    int rc = 0;
    if (!m) {
        rc = etf_diagf(diag, ETF_ENOENT, "no model with id %llu", (unsigned long long)mid);
    } else if (m->queued) {
        rc = etf_diagf(diag, ETF_EBUSY, "model %llu has %zu task(s) queued or running",
                       (unsigned long long)mid, m->queued);
    } else {
        etf__idmap_remove(&s->models, mid);
        struct entity *e = m->entity;
        e->models--;
        e->freqs.v[m->entity_freq].models--;
        s->freqs.v[m->device_freq].models--;
        if (m->has_power) {
            e->profile_power_sum -= m->power_mw;
            e->powered_models--;
        }
    }
    unlock(s);
    if (rc == 0)
        model_free(s, m);
    return rc;
}

/* ---- Tasks ---- */

int etf_submit(struct etf_sched *s, const struct etf_request *req, uint64_t *tid,
               struct etf_diag *diag)
{
    if (!req)
        return etf_diagf(diag, ETF_EINVAL, "submit: no request given");
    int rc = 0;
    lock(s);
    struct model *m = etf__idmap_get(&s->models, req->mid);
    struct task *t = NULL;
    if (!s->accepting) {
        rc = etf_diagf(diag, ETF_ESHUTDOWN, "the scheduler is shutting down");
    } else if (!m) {
        rc = etf_diagf(diag, ETF_ENOENT, "no model with id %llu", (unsigned long long)req->mid);
    } else if (s->queued >= s->max_queued) {
        rc = etf_diagf(diag, ETF_ELIMIT, "%zu tasks are queued, the limit", s->queued);
    } else if (!(t = task_alloc(s))) {
        rc = etf_diagf(diag, ETF_ENOMEM, "submit: out of memory");
    }
    if (rc) {
        unlock(s);
        return rc;
    }
    struct entity *e = m->entity;
    t->model = m;
    t->tid = ++s->last_tid;
    t->submit_ns = req->submit_ns ? req->submit_ns : now_ns(s);
    t->io = req->io;
    t->user = req->user;
    if (e->tail)
        e->tail->next = t;
    else
        e->head = t;
    e->tail = t;
    e->queued++;
    m->queued++;
    s->queued++;
    if (!e->runnable)
        join(s, e);
    if (tid)
        *tid = t->tid;
    unlock(s);
    return 0;
}

/* ---- Accounting ---- */

int etf_entity_stats(struct etf_sched *s, uint64_t eid, struct etf_entity_stats *out)
{
    lock(s);
    struct entity *e = etf__idmap_get(&s->entities, eid);
    if (e) {
        *out = (struct etf_entity_stats){
            .eid = e->eid,
            .nice = e->nice,
            .weight = e->weight,
            .runnable = e->runnable,
            .tasks_done = e->tasks_done,
            .tasks_queued = e->queued,
            .time_ns = e->time_ns,
            .energy_nj = e->energy_nj,
            .slice_ns = e->runnable && !e->on_cpu ? next_slice(s, e) : e->slice_ns,
            .vruntime = e->rq.vruntime,
            .power_mw = e->runnable ? e->share.power_mw : entity_power(s, e),
            .measured_energy_nj = e->measured_nj,
            .measured_time_ns = e->measured_ns,
        };
    }
    unlock(s);
    return e ? 0 : ETF_ENOENT;
}

int etf_model_stats(struct etf_sched *s, uint64_t mid, struct etf_model_stats *out)
{
    lock(s);
    struct model *m = etf__idmap_get(&s->models, mid);
    if (m) {
        *out = (struct etf_model_stats){
            .mid = m->mid,
            .eid = m->entity->eid,
            .freq_hz = m->freq_hz,
            .has_power = m->has_power,
            .kernels = m->n_kernels,
            .tasks_done = m->tasks_done,
            .tasks_queued = m->queued,
            .time_ns = m->time_ns,
            .energy_nj = m->energy_nj,
        };
        memcpy(out->name, m->name, sizeof out->name);
    }
    unlock(s);
    return m ? 0 : ETF_ENOENT;
}

int etf_model_kernel_stats(struct etf_sched *s, uint64_t mid, size_t k, uint64_t *time_ns,
                           uint64_t *runs)
{
    lock(s);
    struct model *m = etf__idmap_get(&s->models, mid);
    int rc = !m ? ETF_ENOENT : k >= m->n_kernels ? ETF_EINVAL : 0;
    if (rc == 0) {
        *time_ns = m->kernel_ns[k];
        *runs = m->kernel_runs[k];
    }
    unlock(s);
    return rc;
}

void etf_sched_stats(struct etf_sched *s, struct etf_sched_stats *out)
{
    lock(s);
    *out = s->stats;
    out->entities = s->entities.live;
    out->runnable = s->shares.n;
    out->models = s->models.live;
    out->tasks_queued = s->queued;
    unlock(s);
}

int etf_entity_freq_stats(struct etf_sched *s, uint64_t eid, struct etf_freq_stats *out, size_t cap,
                          size_t *n)
{
    if (!n || (!out && cap))
        return ETF_EINVAL;
    lock(s);
    struct entity *e = etf__idmap_get(&s->entities, eid);
    if (e)
        *n = freq_copy(&e->freqs, out, cap);
    unlock(s);
    return e ? 0 : ETF_ENOENT;
}

int etf_sched_freq_stats(struct etf_sched *s, struct etf_freq_stats *out, size_t cap, size_t *n)
{
    if (!n || (!out && cap))
        return ETF_EINVAL;
    lock(s);
    *n = freq_copy(&s->freqs, out, cap);
    unlock(s);
    return 0;
}

int etf_freq_stats_alloc(struct etf_sched *s, const uint64_t *eid, struct etf_freq_stats **out,
                         size_t *n)
{
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    for (;;) {
        size_t have = 0;
        int rc = eid ? etf_entity_freq_stats(s, *eid, *out, cap, &have)
                     : etf_sched_freq_stats(s, *out, cap, &have);
        if (rc)
            return rc;
        if (have <= cap) {
            *n = have;
            return 0;
        }
        struct etf_freq_stats *v = realloc(*out, have * sizeof *v);
        if (!v)
            return ETF_ENOMEM;
        *out = v;
        cap = have; /* more rows may come meanwhile: ask again */
    }
}
