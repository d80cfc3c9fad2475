/* The simulator's run: a scenario driven through the real scheduler on the simulated
 * device, with a virtual clock and no threads, and the figures, report, task list and
 * summary of the run.
 *
 * The loop is a discrete-event simulation whose only source of time is the device: every
 * kernel advances the virtual clock by its profiled duration. Between scheduler turns the
 * loop injects the arrivals and priority changes that fell due (with their true times, so
 * that latencies do not depend on turn boundaries), and when nothing is runnable it jumps
 * the clock to the next event. Pending events sit in a binary heap: one per Poisson model,
 * one per closed-loop start, one per priority change, so 10,000 tenants cost log(n) an
 * event rather than n a turn.
 *
 * With a real device (any but "sim") the same loop runs in real time: the kernels of the
 * models' ONNX plans run on the device, the scheduler's clock is the host's counted from the
 * start of the run, and an idle loop sleeps until the next event instead of jumping to it.
 */
#include "etf/model.h"
#include "etf/sim.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Queue room beyond the closed-loop requests, for Poisson arrivals waiting their turn.
 * Past it arrivals are counted as rejected: an overloaded open loop grows without bound. */
#define OPEN_LOOP_QUEUE 65536u

enum event_kind {
    EV_START,   /* a closed-loop model's clients start: submit N requests */
    EV_ARRIVAL, /* a Poisson model's next arrival */
    EV_PRIO,    /* a tenant's priority change */
};

struct event {
    uint64_t at_ns;
    uint64_t seq; /* insertion order: breaks ties so that runs reproduce */
    enum event_kind kind;
    size_t who;  /* model index (EV_START, EV_ARRIVAL) or tenant index (EV_PRIO) */
    size_t what; /* EV_PRIO: index of the change */
};

struct sim_model {
    size_t tenant, model;
    const struct etf_scenario_model *spec;
    uint64_t mid;
    uint64_t rng[4]; /* xoshiro256**: Poisson arrivals */
    /* Real time: the tensors of every task of this model, inputs then outputs. The model's
     * tasks run one after the other, so they can all share one set. */
    float **tensors;
    size_t n_tensors;
    struct etf_task_io io;
};

/* An ONNX file opened once for every model that names it with the same batch size. */
struct sim_plan {
    const char *path; /* the scenario's */
    size_t batch;
    struct etf_plan *plan;
    size_t loads_left; /* models of the scenario that run it and are not loaded yet */
};

struct sim_tenant {
    uint64_t eid;
    uint64_t submitted, rejected;
    double slice_ns; /* real time: the slice as the latest turn began (see etf_sim_run) */
};

struct etf_sim {
    const struct etf_scenario *sc;
    /* Real time (a device other than "sim"): the clock is the host's less t0_ns, the host
     * time the run started (0 until then, so that set-up happens at time 0 as on the
     * virtual clock). */
    bool realtime;
    uint64_t t0_ns;
    struct etf_vclock vc;
    struct etf_clock clock;
    struct etf_device *dev;
    struct etf_freq *freq;
    struct etf_meter *meter;
    struct etf_sched *sched;

    size_t n_models;
    struct sim_model *models;
    struct sim_tenant *tenants;
    /* Borrowed by the scheduler's models: freed only after the scheduler is destroyed. */
    size_t n_plans;
    struct sim_plan *plans;

    struct event *heap;
    size_t n_events, cap_events;
    uint64_t next_seq;

    struct etf_sim_task *tasks;
    size_t n_tasks, cap_tasks;

    /* Completions are collected only while running: the scheduler also reports the tasks
     * it drops when destroyed. */
    bool running, ran;
    int cb_err; /* a failure inside on_done, reported after the step */
    struct etf_diag cb_diag;

    struct etf_sim_result result;
};

/* ---- Random numbers: splitmix64 to seed, xoshiro256** to draw; the same on every
 * platform, unlike rand(). ---- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t xoshiro_next(uint64_t s[4])
{
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

/* Each model draws from its own stream, seeded by (seed, model index), so that adding a
 * tenant does not change the arrivals of the others. */
static void rng_seed(uint64_t s[4], uint64_t seed, uint64_t stream)
{
    uint64_t x = seed ^ splitmix64(&(uint64_t){stream});
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&x);
    if (!(s[0] | s[1] | s[2] | s[3]))
        s[0] = 1; /* the one state xoshiro cannot leave */
}

/* Uniform in (0, 1]: never 0, so that log() below stays finite. */
static double rng_unit(uint64_t s[4])
{
    return (double)((xoshiro_next(s) >> 11) + 1) * 0x1.0p-53;
}

/* ---- Clocks ---- */

static uint64_t realtime_now(void *ctx)
{
    const struct etf_sim *sim = ctx;
    return sim->t0_ns ? etf_host_ns() - sim->t0_ns : 0;
}

static uint64_t sim_now(const struct etf_sim *sim)
{
    return sim->clock.now(sim->clock.ctx);
}

/* Sleeps for ns of host time (signals do not cut it short). */
static void sleep_ns(uint64_t ns)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
                          .tv_nsec = (long)(ns % 1000000000u)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* ---- Event heap ---- */

static bool ev_before(const struct event *a, const struct event *b)
{
    return a->at_ns < b->at_ns || (a->at_ns == b->at_ns && a->seq < b->seq);
}

/* Room for every event is reserved at creation (one per model and per priority change),
 * so pushing never fails. */
static void heap_push(struct etf_sim *sim, struct event ev)
{
    ev.seq = sim->next_seq++;
    size_t i = sim->n_events++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ev_before(&ev, &sim->heap[parent]))
            break;
        sim->heap[i] = sim->heap[parent];
        i = parent;
    }
    sim->heap[i] = ev;
}

static struct event heap_pop(struct etf_sim *sim)
{
    struct event top = sim->heap[0];
    struct event last = sim->heap[--sim->n_events];
    size_t n = sim->n_events, i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && ev_before(&sim->heap[c + 1], &sim->heap[c]))
            c++;
        if (!ev_before(&sim->heap[c], &last))
            break;
        sim->heap[i] = sim->heap[c];
        i = c;
    }
    if (n)
        sim->heap[i] = last;
    return top;
}

/* ---- Load ---- */

/* Schedules a Poisson model's next arrival after `after`, unless it falls at or past the
 * tenant's stop time. */
static void schedule_arrival(struct etf_sim *sim, size_t mi, uint64_t after)
{
    struct sim_model *m = &sim->models[mi];
    const struct etf_scenario_tenant *t = &sim->sc->tenants[m->tenant];
    double gap_ns = -log(rng_unit(m->rng)) / m->spec->poisson_rps * 1e9;
    if (after >= t->stop_ns || !(gap_ns < (double)(t->stop_ns - after)))
        return; /* also when the gap is huge or not finite */
    heap_push(sim, (struct event){
                       .at_ns = after + (uint64_t)llround(gap_ns), .kind = EV_ARRIVAL, .who = mi});
}

/* Submits one request of model mi that arrived at at_ns. A full queue rejects it (counted);
 * any other failure stops the run. */
static int submit(struct etf_sim *sim, size_t mi, uint64_t at_ns, struct etf_diag *diag)
{
    struct sim_model *m = &sim->models[mi];
    struct sim_tenant *t = &sim->tenants[m->tenant];
    struct etf_request req = {
        .mid = m->mid, .io = m->tensors ? &m->io : NULL, .submit_ns = at_ns, .user = m};
    struct etf_diag d;
    int err = etf_submit(sim->sched, &req, NULL, &d);
    if (err == ETF_ELIMIT) {
        t->rejected++;
        return 0;
    }
    if (err)
        return etf_diagf(diag, err, "tenants[%zu].models[%zu]: submit at %.6f s: %s", m->tenant,
                         m->model, (double)at_ns / 1e9, d.msg);
    t->submitted++;
    return 0;
}

static void on_done(void *arg, const struct etf_task_record *rec)
{
    struct etf_sim *sim = arg;
    if (!sim->running || sim->cb_err || rec->status != 0)
        return; /* a failed task makes etf_sched_step itself fail */
    struct sim_model *m = rec->user;
    if (sim->n_tasks == sim->cap_tasks) {
        size_t cap = sim->cap_tasks ? 2 * sim->cap_tasks : 1024;
        struct etf_sim_task *tasks = realloc(sim->tasks, cap * sizeof *tasks);
        if (!tasks) {
            sim->cb_err = etf_diagf(&sim->cb_diag, ETF_ENOMEM, "run: out of memory");
            return;
        }
        sim->tasks = tasks;
        sim->cap_tasks = cap;
    }
    sim->tasks[sim->n_tasks++] =
        (struct etf_sim_task){.rec = *rec, .tenant = m->tenant, .model = m->model};

    /* A closed-loop client sends its next request the instant the last one returns. */
    const struct etf_scenario_tenant *t = &sim->sc->tenants[m->tenant];
    if (m->spec->load == ETF_SIM_LOAD_CLOSED && rec->end_ns < t->stop_ns &&
        rec->end_ns < sim->sc->duration_ns)
        sim->cb_err = submit(sim, (size_t)(m - sim->models), rec->end_ns, &sim->cb_diag);
}

/* Applies every event due at or before now. */
static int inject(struct etf_sim *sim, uint64_t now, struct etf_diag *diag)
{
    while (sim->n_events && sim->heap[0].at_ns <= now) {
        struct event ev = heap_pop(sim);
        int err = 0;
        switch (ev.kind) {
        case EV_START: {
            uint32_t n = sim->models[ev.who].spec->closed;
            for (uint32_t k = 0; k < n && !err; k++)
                err = submit(sim, ev.who, ev.at_ns, diag);
            break;
        }
        case EV_ARRIVAL:
            err = submit(sim, ev.who, ev.at_ns, diag);
            schedule_arrival(sim, ev.who, ev.at_ns);
            break;
        case EV_PRIO: {
            const struct etf_scenario_prio_change *pc =
                &sim->sc->tenants[ev.who].prio_changes[ev.what];
            struct etf_diag d;
            err = etf_entity_set_priority(sim->sched, sim->tenants[ev.who].eid, pc->priority, &d);
            if (err)
                etf_diagf(diag, err, "tenants[%zu].priority_changes[%zu]: %s", ev.who, ev.what,
                          d.msg);
            break;
        }
        }
        if (err)
            return err;
    }
    return 0;
}

/* ---- Set-up ---- */

/* The plan of the ONNX file and batch of `spec`, opened on first use. */
static int open_plan(struct etf_sim *sim, const struct etf_scenario_model *spec, size_t ti,
                     size_t j, struct sim_plan **out, struct etf_diag *diag)
{
    for (size_t i = 0; i < sim->n_plans; i++) {
        struct sim_plan *sp = &sim->plans[i];
        if (sp->batch == spec->batch && strcmp(sp->path, spec->onnx_path) == 0) {
            *out = sp;
            return 0;
        }
    }
    size_t loads = 0;
    for (size_t t = 0; t < sim->sc->n_tenants; t++)
        for (size_t k = 0; k < sim->sc->tenants[t].n_models; k++) {
            const struct etf_scenario_model *o = &sim->sc->tenants[t].models[k];
            loads += o->onnx_path && o->batch == spec->batch &&
                     strcmp(o->onnx_path, spec->onnx_path) == 0;
        }
    struct etf_model_options opts = {.batch = spec->batch};
    struct etf_plan *plan;
    struct etf_diag d;
    int err = etf_model_open(spec->onnx_path, &opts, &plan, &d);
    if (err)
        return etf_diagf(diag, err, "tenants[%zu].models[%zu].onnx: %s", ti, j, d.msg);
    /* sim->plans has room for one per model. */
    struct sim_plan *sp = &sim->plans[sim->n_plans++];
    *sp = (struct sim_plan){
        .path = spec->onnx_path, .batch = spec->batch, .plan = plan, .loads_left = loads};
    *out = sp;
    return 0;
}

/* The tensors of model m's tasks: inputs filled with a fixed pseudo-random pattern in
 * [-1, 1) (the same for every run and model, so that no input takes a faster path than
 * another), outputs zeroed. */
static int make_tensors(struct sim_model *m, const struct etf_plan *plan, struct etf_diag *diag)
{
    size_t n_in = etf_plan_input_count(plan), n_out = etf_plan_output_count(plan);
    m->tensors = calloc(n_in + n_out, sizeof *m->tensors);
    if (!m->tensors)
        return etf_diagf(diag, ETF_ENOMEM, "tenants[%zu].models[%zu]: out of memory", m->tenant,
                         m->model);
    m->n_tensors = n_in + n_out;
    for (size_t i = 0; i < n_in + n_out; i++) {
        struct etf_tensor_info info;
        int err =
            i < n_in ? etf_plan_input(plan, i, &info) : etf_plan_output(plan, i - n_in, &info);
        if (err)
            return etf_diagf(diag, err, "tenants[%zu].models[%zu]: tensor %zu of the plan: %s",
                             m->tenant, m->model, i, etf_strerror(err));
        if (!(m->tensors[i] = calloc(info.elems ? info.elems : 1, sizeof(float))))
            return etf_diagf(diag, ETF_ENOMEM,
                             "tenants[%zu].models[%zu]: out of memory for tensor '%s'", m->tenant,
                             m->model, info.name);
        uint64_t x = 0x2545f4914f6cdd1du + i;
        if (i < n_in)
            for (size_t k = 0; k < info.elems; k++)
                m->tensors[i][k] = (float)((double)(splitmix64(&x) >> 11) * 0x1.0p-52 - 1.0);
    }
    m->io.inputs = (const float *const *)m->tensors;
    m->io.outputs = m->tensors + n_in;
    return 0;
}

/* The model's copy of its profile (the scheduler owns and frees it), or NULL when it has
 * none. Parsing the bytes read at load time keeps the run off the file system. */
static int model_profile(const struct etf_sim *sim, const struct etf_scenario_model *spec,
                         size_t ti, size_t j, struct etf_profile **out, struct etf_diag *diag)
{
    const struct etf_scenario *sc = sim->sc;
    *out = NULL;
    if (!spec->profile_path) {
        if (sim->realtime)
            return 0;
        return etf_diagf(diag, ETF_EINVAL,
                         "tenants[%zu].models[%zu]: missing key \"profile\": the \"sim\" device "
                         "runs the kernel times of a profile",
                         ti, j);
    }
    if (spec->profile >= sc->n_profiles)
        return etf_diagf(diag, ETF_EINVAL,
                         "tenants[%zu].models[%zu].profile: not read (the scenario was "
                         "parsed without its profiles)",
                         ti, j);
    const struct etf_scenario_profile *sp = &sc->profiles[spec->profile];
    struct etf_diag d;
    int err = etf_profile_parse(sp->json, sp->len, sp->path, out, &d);
    if (err)
        return etf_diagf(diag, err, "tenants[%zu].models[%zu].profile: %s", ti, j, d.msg);
    return 0;
}

/* A closed loop of a model that takes no virtual time would resubmit forever at the same
 * instant. The frequency is the one the scheduler will pick (nothing has run yet, so its
 * current one is the controller's), and the sum is rounded per kernel, as the sim device
 * does. */
static int check_takes_time(const struct etf_sim *sim, const struct etf_profile *prof,
                            const struct etf_scenario_model *spec, size_t ti, size_t j,
                            struct etf_diag *diag)
{
    uint64_t hz = spec->freq_hz, cur;
    long fi = hz ? etf_profile_freq_index(prof, hz) : -1;
    if (!hz) {
        if (etf_freq_current(sim->freq, &cur) == 0 && cur)
            fi = etf_profile_freq_index(prof, cur);
        if (fi < 0)
            fi = (long)prof->n_freqs - 1;
        hz = prof->freqs_hz[fi];
    }
    uint64_t task_ns = 0;
    for (size_t k = 0; fi >= 0 && k < prof->n_kernels; k++)
        task_ns += (uint64_t)llround(prof->kernels[k].time_us[fi] * 1000.0);
    if (fi >= 0 && task_ns == 0)
        return etf_diagf(diag, ETF_EINVAL,
                         "tenants[%zu].models[%zu]: the model takes less than 1 ns at "
                         "%" PRIu64 " Hz, too little for the simulated clock to advance",
                         ti, j, hz);
    return 0;
}

static int load_models(struct etf_sim *sim, struct etf_diag *diag)
{
    const struct etf_scenario *sc = sim->sc;
    size_t mi = 0;
    for (size_t ti = 0; ti < sc->n_tenants; ti++) {
        const struct etf_scenario_tenant *t = &sc->tenants[ti];
        struct etf_diag d;
        int err = etf_entity_create(sim->sched, t->priority, &sim->tenants[ti].eid, &d);
        if (err)
            return etf_diagf(diag, err, "tenants[%zu]: %s", ti, d.msg);
        for (size_t j = 0; j < t->n_models; j++, mi++) {
            const struct etf_scenario_model *spec = &t->models[j];
            struct sim_model *m = &sim->models[mi];
            m->tenant = ti;
            m->model = j;
            m->spec = spec;
            rng_seed(m->rng, sc->seed, mi);
            const struct etf_plan *plan = NULL;
            struct sim_plan *sp = NULL;
            if (sim->realtime) {
                /* The parser demands the file for the devices it knows; this is the same
                 * rule for any other. */
                if (!spec->onnx_path)
                    return etf_diagf(diag, ETF_EINVAL,
                                     "tenants[%zu].models[%zu]: missing key \"onnx\": device "
                                     "\"%s\" runs the kernels of an ONNX file",
                                     ti, j, sc->device);
                if ((err = open_plan(sim, spec, ti, j, &sp, diag)) ||
                    (err = make_tensors(m, sp->plan, diag)))
                    return err;
                plan = sp->plan;
                /* The plan's last load takes its weights: they are never resident twice. */
                if (--sp->loads_left == 0)
                    etf_plan_drop_weights_on_load(sp->plan);
            }
            struct etf_profile *prof;
            if ((err = model_profile(sim, spec, ti, j, &prof, diag)))
                return err;
            if (prof && !sim->realtime && (err = check_takes_time(sim, prof, spec, ti, j, diag))) {
                etf_profile_free(prof);
                return err;
            }
            struct etf_model_spec ms = {
                .name = NULL, .profile = prof, .plan = plan, .freq_hz = spec->freq_hz};
            err = etf_model_load(sim->sched, sim->tenants[ti].eid, &ms, &m->mid, &d);
            if (err) {
                etf_profile_free(prof);
                return etf_diagf(diag, err, "tenants[%zu].models[%zu]: %s", ti, j, d.msg);
            }
        }
    }
    /* Every model is loaded: what the devices left of the weights goes too. */
    for (size_t i = 0; i < sim->n_plans; i++)
        etf_plan_drop_weights(sim->plans[i].plan);
    return 0;
}

/* Queues the first event of every model and every priority change. */
static void seed_events(struct etf_sim *sim)
{
    const struct etf_scenario *sc = sim->sc;
    for (size_t mi = 0; mi < sim->n_models; mi++) {
        const struct sim_model *m = &sim->models[mi];
        const struct etf_scenario_tenant *t = &sc->tenants[m->tenant];
        if (m->spec->load == ETF_SIM_LOAD_POISSON)
            schedule_arrival(sim, mi, t->start_ns);
        else if (t->start_ns < t->stop_ns)
            heap_push(sim, (struct event){.at_ns = t->start_ns, .kind = EV_START, .who = mi});
    }
    for (size_t ti = 0; ti < sc->n_tenants; ti++) {
        for (size_t k = 0; k < sc->tenants[ti].n_prio_changes; k++)
            heap_push(sim, (struct event){.at_ns = sc->tenants[ti].prio_changes[k].at_ns,
                                          .kind = EV_PRIO,
                                          .who = ti,
                                          .what = k});
    }
}

int etf_sim_create(const struct etf_scenario *sc, struct etf_sim **out, struct etf_diag *diag)
{
    if (!sc || !out)
        return etf_diagf(diag, ETF_EINVAL, "simulation: no scenario given");
    *out = NULL;
    struct etf_sim *sim = calloc(1, sizeof *sim);
    if (!sim)
        return etf_diagf(diag, ETF_ENOMEM, "simulation: out of memory");
    sim->sc = sc;
    sim->realtime = strcmp(sc->device, "sim") != 0;
    sim->clock = sim->realtime ? (struct etf_clock){.now = realtime_now, .ctx = sim}
                               : etf_vclock_as_clock(&sim->vc);

    size_t n_changes = 0;
    uint64_t closed = 0;
    for (size_t i = 0; i < sc->n_tenants; i++) {
        sim->n_models += sc->tenants[i].n_models;
        n_changes += sc->tenants[i].n_prio_changes;
        for (size_t j = 0; j < sc->tenants[i].n_models; j++)
            if (sc->tenants[i].models[j].load == ETF_SIM_LOAD_CLOSED)
                closed += sc->tenants[i].models[j].closed;
    }
    sim->cap_events = sim->n_models + n_changes;
    sim->models = calloc(sim->n_models ? sim->n_models : 1, sizeof *sim->models);
    sim->tenants = calloc(sc->n_tenants ? sc->n_tenants : 1, sizeof *sim->tenants);
    sim->heap = malloc((sim->cap_events ? sim->cap_events : 1) * sizeof *sim->heap);
    sim->plans = calloc(sim->n_models ? sim->n_models : 1, sizeof *sim->plans);
    int err = 0;
    struct etf_diag d;
    if (!sim->models || !sim->tenants || !sim->heap || !sim->plans) {
        err = etf_diagf(diag, ETF_ENOMEM, "simulation: out of memory");
        goto fail;
    }

    /* A real device keeps its own time: only the simulated one is given the virtual clock. */
    struct etf_device_config dcfg = {.vclock = sim->realtime ? NULL : &sim->vc,
                                     .threads = sc->threads};
    if ((err = etf_device_open(sc->device, &dcfg, &sim->dev, &d))) {
        etf_diagf(diag, err, "device: %s", d.msg);
        goto fail;
    }
    struct etf_freq_config fcfg = {.initial_hz = 0};
    if ((err = etf_freq_open(sc->freq, &fcfg, &sim->freq, &d))) {
        etf_diagf(diag, err, "freq: %s", d.msg);
        goto fail;
    }
    struct etf_meter_config mcfg = {0};
    if ((err = etf_meter_open(sc->meter, &mcfg, &sim->meter, &d))) {
        etf_diagf(diag, err, "meter: %s", d.msg);
        goto fail;
    }
    /* Closed loops keep all their requests queued; room for them comes on top of the
     * open loops' share, so that only Poisson arrivals can ever be rejected. */
    struct etf_sched_config cfg = {
        .quantum_ns = sc->quantum_us * 1000u,
        .phi = sc->phi,
        .clock = &sim->clock,
        .device = sim->dev,
        .meter = sim->meter,
        .freq = sim->freq,
        .on_done = on_done,
        .on_done_arg = sim,
        .max_queued_tasks =
            closed < SIZE_MAX - OPEN_LOOP_QUEUE ? (size_t)closed + OPEN_LOOP_QUEUE : SIZE_MAX,
    };
    if ((err = etf_sched_create(&cfg, &sim->sched, &d))) {
        etf_diagf(diag, err, "scheduler: %s", d.msg);
        goto fail;
    }
    if ((err = load_models(sim, diag)))
        goto fail;
    seed_events(sim);
    *out = sim;
    return 0;

fail:
    etf_sim_destroy(sim);
    return err;
}

/* ---- Results ---- */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest rank: the smallest value with at least p% of the sample at or below it. */
static uint64_t percentile(const uint64_t *sorted, size_t n, unsigned p)
{
    if (n == 0)
        return 0;
    size_t rank = (size_t)(((uint64_t)n * p + 99) / 100);
    return sorted[rank ? rank - 1 : 0];
}

/* Jain's index over weight-normalised shares x_i = share_i / (w_i / W): 1 when every
 * tenant got exactly its weighted share, 1/n when one got everything. 0 when nothing was
 * charged at all (the index is undefined then). */
static double jain(const struct etf_sim_tenant_result *t, size_t n, bool energy)
{
    double total_w = 0, sum = 0, sum_sq = 0;
    for (size_t i = 0; i < n; i++)
        total_w += t[i].weight;
    for (size_t i = 0; i < n; i++) {
        double share = energy ? t[i].energy_share : t[i].time_share;
        double x = share / ((double)t[i].weight / total_w);
        sum += x;
        sum_sq += x * x;
    }
    return sum_sq > 0 ? sum * sum / ((double)n * sum_sq) : 0;
}

static int compute_result(struct etf_sim *sim, uint64_t host_ns, struct etf_diag *diag)
{
    const struct etf_scenario *sc = sim->sc;
    struct etf_sim_result *r = &sim->result;
    size_t n = sc->n_tenants;
    r->tenants = calloc(n, sizeof *r->tenants);
    size_t *offset = calloc(n + 1, sizeof *offset);
    uint64_t *lat = malloc((sim->n_tasks ? sim->n_tasks : 1) * sizeof *lat);
    if (!r->tenants || !offset || !lat) {
        free(offset);
        free(lat);
        return etf_diagf(diag, ETF_ENOMEM, "run: out of memory");
    }
    r->n_tenants = n;

    struct etf_sched_stats ss;
    etf_sched_stats(sim->sched, &ss);
    r->duration_ns = sim_now(sim);
    r->dispatches = ss.dispatches;
    r->freq_switches = ss.freq_switches;
    /* In real time the steps also ran the kernels: the scheduler's own cost is what is left
     * of their host time once the device time charged is taken out. */
    if (sim->realtime)
        host_ns = host_ns > ss.busy_ns ? host_ns - ss.busy_ns : 0;
    r->host_ns = host_ns;
    r->sched_ns_per_dispatch = ss.dispatches ? (double)host_ns / (double)ss.dispatches : 0;
    r->n_tasks = sim->n_tasks;
    r->tasks = sim->tasks;

    /* With a measuring meter the energy is what the meter measured and the ledger
     * attributed to each tenant; otherwise the modelled energy (time x profiled power). */
    r->measured = ss.meter_samples > 0;
    r->idle_energy_nj = ss.idle_energy_nj;
    uint64_t total_time = 0, total_energy = 0;
    for (size_t i = 0; i < n; i++) {
        struct etf_sim_tenant_result *t = &r->tenants[i];
        struct etf_entity_stats es;
        if (etf_entity_stats(sim->sched, sim->tenants[i].eid, &es) != 0) {
            free(offset);
            free(lat);
            return etf_diagf(diag, ETF_EINVAL, "tenants[%zu]: entity vanished", i);
        }
        t->name = sc->tenants[i].name;
        t->eid = es.eid;
        t->priority = es.nice; /* after any priority change: the weight is this one's */
        t->weight = es.weight;
        t->submitted = sim->tenants[i].submitted;
        t->rejected = sim->tenants[i].rejected;
        t->time_ns = es.time_ns;
        t->energy_nj = r->measured ? es.measured_energy_nj : es.energy_nj;
        t->slice_ns = sim->realtime ? sim->tenants[i].slice_ns : es.slice_ns;
        /* The slices of one allocation sum to Q, so slice / Q is the tenant's share of the
         * sum of the slices of the tenants runnable at its latest allocation. */
        t->alloc_share = t->slice_ns / ((double)sc->quantum_us * 1000.0);
        total_time += es.time_ns;
        total_energy += t->energy_nj;
        if (etf_freq_stats_alloc(sim->sched, &es.eid, &t->freqs, &t->n_freqs) != 0) {
            free(offset);
            free(lat);
            return etf_diagf(diag, ETF_ENOMEM, "run: out of memory");
        }
    }
    if (etf_freq_stats_alloc(sim->sched, NULL, &r->freqs, &r->n_freqs) != 0) {
        free(offset);
        free(lat);
        return etf_diagf(diag, ETF_ENOMEM, "run: out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        struct etf_sim_tenant_result *t = &r->tenants[i];
        t->time_share = total_time ? (double)t->time_ns / (double)total_time : 0;
        t->energy_share = total_energy ? (double)t->energy_nj / (double)total_energy : 0;
    }
    r->jain_time = jain(r->tenants, n, false);
    r->jain_energy = jain(r->tenants, n, true);

    /* Latencies grouped by tenant (a counting sort), then each group sorted. */
    for (size_t k = 0; k < sim->n_tasks; k++)
        offset[sim->tasks[k].tenant + 1]++;
    for (size_t i = 0; i < n; i++)
        offset[i + 1] += offset[i];
    for (size_t k = 0; k < sim->n_tasks; k++) {
        const struct etf_task_record *rec = &sim->tasks[k].rec;
        lat[offset[sim->tasks[k].tenant]++] = rec->end_ns - rec->submit_ns;
    }
    for (size_t i = n; i > 0; i--) /* the fill moved each start to the next group's */
        offset[i] = offset[i - 1];
    offset[0] = 0;
    for (size_t i = 0; i < n; i++) {
        struct etf_sim_tenant_result *t = &r->tenants[i];
        size_t cnt = offset[i + 1] - offset[i];
        qsort(lat + offset[i], cnt, sizeof *lat, cmp_u64);
        t->tasks = cnt;
        t->latency_p50_ns = percentile(lat + offset[i], cnt, 50);
        t->latency_p99_ns = percentile(lat + offset[i], cnt, 99);
    }
    free(offset);
    free(lat);
    return 0;
}

/* ---- The run ---- */

/* Real time: the run's last turn starts before the end and finishes after it, and the
 * tenants whose short tasks all end in it stop being runnable (their clients do not submit
 * past the end), which leaves a final allocation among the others alone. The slices taken
 * before each turn are the allocation the run ended under. A step lasts at least a kernel of
 * real time, against which this loop over the tenants is small. */
static void note_slices(struct etf_sim *sim)
{
    for (size_t i = 0; i < sim->sc->n_tenants; i++) {
        struct etf_entity_stats es;
        if (etf_entity_stats(sim->sched, sim->tenants[i].eid, &es) == 0)
            sim->tenants[i].slice_ns = es.slice_ns;
    }
}

int etf_sim_run(struct etf_sim *sim, struct etf_diag *diag)
{
    if (!sim)
        return etf_diagf(diag, ETF_EINVAL, "run: no simulation given");
    if (sim->ran)
        return etf_diagf(diag, ETF_EBUSY, "run: this simulation has already run");
    sim->ran = true;
    sim->running = true;
    if (sim->realtime)
        sim->t0_ns = etf_host_ns();
    const uint64_t end = sim->sc->duration_ns;
    uint64_t host_ns = 0;
    int err = 0;
    for (uint64_t now; (now = sim_now(sim)) < end;) {
        if ((err = inject(sim, now, diag)))
            break;
        if (sim->realtime)
            note_slices(sim);
        bool ran;
        uint64_t t0 = etf_host_ns();
        int rc = etf_sched_step(sim->sched, &ran);
        host_ns += etf_host_ns() - t0;
        if (sim->cb_err) {
            err = etf_diagf(diag, sim->cb_err, "%s", sim->cb_diag.msg);
            break;
        }
        if (rc) {
            err = etf_diagf(diag, rc, "run: a kernel failed at %.6f s of %s time: %s",
                            (double)sim_now(sim) / 1e9, sim->realtime ? "run" : "virtual",
                            etf_strerror(rc));
            break;
        }
        if (!ran) {
            /* Idle: wait for the next event, or for the end when none is due before it. On
             * the virtual clock waiting is a jump; in real time, a sleep. */
            uint64_t next = sim->n_events && sim->heap[0].at_ns < end ? sim->heap[0].at_ns : end;
            if (sim->realtime) {
                now = sim_now(sim);
                if (next > now)
                    sleep_ns(next - now);
                continue;
            }
            sim->vc.now_ns = next;
            if (next == end)
                break;
        }
    }
    sim->running = false;
    if (err)
        return err;
    return compute_result(sim, host_ns, diag);
}

const struct etf_sim_result *etf_sim_result(const struct etf_sim *sim)
{
    return sim && sim->result.tenants ? &sim->result : NULL;
}

/* ---- Output ---- */

struct buf {
    char *p;
    size_t len, cap;
    bool oom;
};

static void bprintf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void bprintf(struct buf *b, const char *fmt, ...)
{
    if (b->oom)
        return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(b->p ? b->p + b->len : NULL, b->p ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->oom = true;
            return;
        }
        if (b->p && (size_t)n < b->cap - b->len) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = b->cap ? b->cap : 4096;
        while (cap - b->len <= (size_t)n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
}

static void put_json_string(struct buf *b, const char *s)
{
    bprintf(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            bprintf(b, "\\%c", c);
        else if (c < 0x20)
            bprintf(b, "\\u%04x", c);
        else
            bprintf(b, "%c", c);
    }
    bprintf(b, "\"");
}

/* Nanoseconds (or nanojoules) as micro-units with three decimals: exact, no rounding. */
static void put_micro(struct buf *b, uint64_t nano)
{
    bprintf(b, "%" PRIu64 ".%03" PRIu64, nano / 1000u, nano % 1000u);
}

static double ratio(uint64_t part, uint64_t whole)
{
    return whole ? (double)part / (double)whole : 0;
}

/* A "per_frequency" array: one object per row, on a line of its own after `indent` when
 * indent is given, else all on the current line. */
static void put_freqs(struct buf *b, const struct etf_freq_stats *f, size_t n, const char *indent)
{
    uint64_t time = 0, energy = 0;
    for (size_t i = 0; i < n; i++) {
        time += f[i].time_ns;
        energy += f[i].energy_nj;
    }
    bprintf(b, "\"per_frequency\": [");
    for (size_t i = 0; i < n; i++) {
        if (indent)
            bprintf(b, "%s\n%s  ", i ? "," : "", indent);
        else if (i)
            bprintf(b, ", ");
        bprintf(b, "{\"hz\": %" PRIu64 ", \"kernels\": %" PRIu64 ", \"time_us\": ", f[i].hz,
                f[i].kernels);
        put_micro(b, f[i].time_ns);
        bprintf(b, ", \"energy_uj\": ");
        put_micro(b, f[i].energy_nj);
        bprintf(b, ", \"time_share\": %.6f, \"energy_share\": %.6f}", ratio(f[i].time_ns, time),
                ratio(f[i].energy_nj, energy));
    }
    if (indent && n)
        bprintf(b, "\n%s", indent);
    bprintf(b, "]");
}

static int check_ran(const struct etf_sim *sim, struct etf_diag *diag)
{
    if (!sim || !sim->result.tenants)
        return etf_diagf(diag, ETF_EINVAL, "report: the simulation has not run");
    return 0;
}

int etf_sim_report_json(const struct etf_sim *sim, unsigned flags, char **out,
                        struct etf_diag *diag)
{
    int err = check_ran(sim, diag);
    if (err)
        return err;
    const struct etf_sim_result *r = &sim->result;
    struct buf b = {0};
    bprintf(&b, "{\n  \"duration_us\": ");
    put_micro(&b, r->duration_ns);
    bprintf(&b, ",\n  \"dispatches\": %" PRIu64 ",\n  \"freq_switches\": %" PRIu64 ",\n",
            r->dispatches, r->freq_switches);
    /* Host time differs from run to run: left out unless asked for. */
    if (flags & ETF_SIM_REPORT_TIMING)
        bprintf(&b, "  \"sched_ns_per_dispatch\": %.1f,\n", r->sched_ns_per_dispatch);
    else
        bprintf(&b, "  \"sched_ns_per_dispatch\": null,\n");
    bprintf(&b,
            "  \"energy\": \"%s\",\n  \"idle_energy_uj\": ", r->measured ? "measured" : "modelled");
    put_micro(&b, r->idle_energy_nj);
    bprintf(&b, ",\n  \"jain_time\": %.6f,\n  \"jain_energy\": %.6f,\n  ", r->jain_time,
            r->jain_energy);
    put_freqs(&b, r->freqs, r->n_freqs, "  ");
    bprintf(&b, ",\n  \"tenants\": [");
    for (size_t i = 0; i < r->n_tenants; i++) {
        const struct etf_sim_tenant_result *t = &r->tenants[i];
        bprintf(&b, "%s\n    {\"name\": ", i ? "," : "");
        put_json_string(&b, t->name);
        bprintf(&b,
                ", \"priority\": %d, \"weight\": %" PRIu32 ", \"submitted\": %" PRIu64
                ", \"rejected\": %" PRIu64 ", \"tasks\": %" PRIu64 ", \"time_us\": ",
                t->priority, t->weight, t->submitted, t->rejected, t->tasks);
        put_micro(&b, t->time_ns);
        bprintf(&b, ", \"energy_uj\": ");
        put_micro(&b, t->energy_nj);
        bprintf(&b,
                ", \"time_share\": %.6f, \"energy_share\": %.6f, \"slice_us\": %.3f, "
                "\"alloc_share\": %.6f, \"latency_us\": {\"p50\": ",
                t->time_share, t->energy_share, t->slice_ns / 1000.0, t->alloc_share);
        put_micro(&b, t->latency_p50_ns);
        bprintf(&b, ", \"p99\": ");
        put_micro(&b, t->latency_p99_ns);
        bprintf(&b, "}, ");
        put_freqs(&b, t->freqs, t->n_freqs, NULL);
        bprintf(&b, "}");
    }
    bprintf(&b, "\n  ]\n}\n");
    if (b.oom) {
        free(b.p);
        return etf_diagf(diag, ETF_ENOMEM, "report: out of memory");
    }
    *out = b.p;
    return 0;
}

static int write_all(FILE *f, const char *s, size_t len, const char *what, struct etf_diag *diag)
{
    if (fwrite(s, 1, len, f) != len || fflush(f) != 0)
        return etf_diagf(diag, ETF_EIO, "cannot write the %s", what);
    return 0;
}

int etf_sim_write_report(const struct etf_sim *sim, FILE *f, unsigned flags, struct etf_diag *diag)
{
    char *json;
    int err = etf_sim_report_json(sim, flags, &json, diag);
    if (err)
        return err;
    err = write_all(f, json, strlen(json), "report", diag);
    free(json);
    return err;
}

int etf_sim_write_tasks_csv(const struct etf_sim *sim, FILE *f, struct etf_diag *diag)
{
    int err = check_ran(sim, diag);
    if (err)
        return err;
    /* Buffered in chunks: a long run has millions of rows. */
    struct buf b = {0};
    bprintf(&b, "task_id,entity_id,model_id,start_t,end_t,service_time,energy_used\n");
    for (size_t k = 0; k < sim->n_tasks && !err; k++) {
        const struct etf_task_record *rec = &sim->tasks[k].rec;
        bprintf(&b, "%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",", rec->tid, rec->eid, rec->mid);
        put_micro(&b, rec->start_ns);
        bprintf(&b, ",");
        put_micro(&b, rec->end_ns);
        bprintf(&b, ",");
        put_micro(&b, rec->service_ns);
        bprintf(&b, ",");
        put_micro(&b, rec->energy_nj);
        bprintf(&b, "\n");
        if (b.oom)
            break;
        if (b.len >= (1u << 20) || k + 1 == sim->n_tasks) {
            err = write_all(f, b.p, b.len, "task list", diag);
            b.len = 0;
        }
    }
    if (!err && !b.oom && sim->n_tasks == 0)
        err = write_all(f, b.p, b.len, "task list", diag);
    if (!err && b.oom)
        err = etf_diagf(diag, ETF_ENOMEM, "task list: out of memory");
    free(b.p);
    return err;
}

/* The rows of a table by frequency, one line each, with shares of the table's totals. */
static void print_freqs(FILE *f, const struct etf_freq_stats *v, size_t n)
{
    uint64_t time = 0, energy = 0;
    for (size_t i = 0; i < n; i++) {
        time += v[i].time_ns;
        energy += v[i].energy_nj;
    }
    fprintf(f, "  %-16s %10s %7s %10s %7s %12s\n", "frequency", "time s", "time%", "energy J",
            "energy%", "kernels");
    for (size_t i = 0; i < n; i++) {
        char hz[32] = "unknown";
        if (v[i].hz)
            snprintf(hz, sizeof hz, "%" PRIu64 " Hz", v[i].hz);
        fprintf(f, "  %-16s %10.3f %7.2f %10.3f %7.2f %12" PRIu64 "\n", hz,
                (double)v[i].time_ns / 1e9, 100 * ratio(v[i].time_ns, time),
                (double)v[i].energy_nj / 1e9, 100 * ratio(v[i].energy_nj, energy), v[i].kernels);
    }
}

int etf_sim_print_summary(const struct etf_sim *sim, FILE *f, struct etf_diag *diag)
{
    int err = check_ran(sim, diag);
    if (err)
        return err;
    const struct etf_sim_result *r = &sim->result;
    fprintf(f, "%-16s %5s %6s %9s %8s %8s %8s %10s %10s\n", "tenant", "prio", "weight", "tasks",
            "time%", "energy%", "alloc%", "p50 ms", "p99 ms");
    for (size_t i = 0; i < r->n_tenants; i++) {
        const struct etf_sim_tenant_result *t = &r->tenants[i];
        fprintf(f, "%-16s %5d %6" PRIu32 " %9" PRIu64 " %8.2f %8.2f %8.2f %10.3f %10.3f\n", t->name,
                t->priority, t->weight, t->tasks, 100 * t->time_share, 100 * t->energy_share,
                100 * t->alloc_share, (double)t->latency_p50_ns / 1e6,
                (double)t->latency_p99_ns / 1e6);
    }
    fprintf(f, "%s %.3f s, %" PRIu64 " dispatches, %" PRIu64 " frequency switches\n",
            sim->realtime ? "real time" : "simulated", (double)r->duration_ns / 1e9, r->dispatches,
            r->freq_switches);
    fprintf(f, "Jain index: time %.4f, energy %.4f\n", r->jain_time, r->jain_energy);
    if (r->measured)
        fprintf(f, "energy: measured by the %s meter and attributed by the ledger; idle %.3f J\n",
                etf_meter_name(sim->meter), (double)r->idle_energy_nj / 1e9);
    else
        fprintf(f, "energy: modelled (kernel time x profiled power)\n");
    fprintf(f, "scheduler: %.1f ns per dispatch (host time)\n", r->sched_ns_per_dispatch);
    /* The device's split by frequency, and a tenant's when it ran at more than one. */
    fprintf(f, "device by frequency%s:\n",
            r->measured ? " (energy modelled: kernel time x profiled power)" : "");
    print_freqs(f, r->freqs, r->n_freqs);
    for (size_t i = 0; i < r->n_tenants; i++) {
        const struct etf_sim_tenant_result *t = &r->tenants[i];
        size_t ran = 0;
        for (size_t k = 0; k < t->n_freqs; k++)
            ran += t->freqs[k].kernels > 0;
        if (ran > 1) {
            fprintf(f, "tenant %s by frequency:\n", t->name);
            print_freqs(f, t->freqs, t->n_freqs);
        }
    }
    if (fflush(f) != 0 || ferror(f))
        return etf_diagf(diag, ETF_EIO, "cannot write the summary");
    return 0;
}

void etf_sim_destroy(struct etf_sim *sim)
{
    if (!sim)
        return;
    /* The scheduler first: it reports its dropped tasks to on_done, which reads sim. */
    sim->running = false;
    etf_sched_destroy(sim->sched);
    etf_meter_close(sim->meter);
    etf_freq_close(sim->freq);
    etf_device_close(sim->dev);
    for (size_t i = 0; i < sim->n_plans; i++)
        etf_plan_free(sim->plans[i].plan);
    free(sim->plans);
    for (size_t i = 0; sim->models && i < sim->n_models; i++) {
        for (size_t k = 0; k < sim->models[i].n_tensors; k++)
            free(sim->models[i].tensors[k]);
        free(sim->models[i].tensors);
    }
    for (size_t i = 0; sim->result.tenants && i < sim->result.n_tenants; i++)
        free(sim->result.tenants[i].freqs);
    free(sim->result.tenants);
    free(sim->result.freqs);
    free(sim->tasks);
    free(sim->heap);
    free(sim->tenants);
    free(sim->models);
    free(sim);
}
