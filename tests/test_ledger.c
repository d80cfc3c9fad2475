/* Tests of the energy ledger (src/sched/ledger.c) and of measured energy in the scheduler.
 *
 * The splitting arithmetic alone: shares in proportion to modelled energy, idle intervals,
 * entries clipped at interval boundaries, where a stepped counter's boundaries lie, and
 * conservation (attributed + idle == measured, exactly) over many random intervals. Then the
 * scheduler with the `nvml` meter on a fake libnvidia-ml (tests/fake_nvml.c): on a virtual
 * clock with manual sampling, measured power replaces the modelled one in the allocation;
 * on the host clock, the sampler thread runs beside a threaded dispatcher (TSan's case).
 *
 * With ETF_NVML_LIVE=1 one more test runs a measuring session on a real GPU: the real NVML
 * (read-only), the device $ETF_LIVE_DEVICE (default cuda) and two tenants running the ONNX
 * model $ETF_LIVE_MODEL at batch 32 and at batch 1, then an idle second; it prints what
 * each was measured to draw. */
#include "support.h"

#include "sched/ledger.h"

#include "etf/model.h"

#include <math.h>
#include <time.h>

#define GHZ 1000000000ull

void fake_nvml_reset(void);
void fake_nvml_set_energy_mj(unsigned long long mj);
void fake_nvml_set_power_mw(double mw);
void fake_nvml_set_update_period_ns(unsigned long long ns);
int fake_nvml_fail(const char *function, int nvml_rc);

/* ---- The arithmetic ---- */

static struct etf_ledger_entry entry(uint64_t eid, uint64_t start_ns, uint64_t end_ns,
                                     uint64_t model_nj)
{
    return (struct etf_ledger_entry){.eid = eid,
                                     .start_ns = start_ns,
                                     .end_ns = end_ns,
                                     .busy_ns = end_ns - start_ns,
                                     .model_nj = model_nj};
}

static uint64_t share_of(const struct etf_attrib_result *r, uint64_t eid)
{
    for (size_t i = 0; i < r->n_shares; i++)
        if (r->shares[i].eid == eid)
            return r->shares[i].energy_nj;
    return 0;
}

static void assert_conserved(const struct etf_attrib_result *r)
{
    uint64_t sum = r->idle_nj;
    for (size_t i = 0; i < r->n_shares; i++)
        sum += r->shares[i].energy_nj;
    if (sum != r->energy_nj)
        fail_msg("interval [%" PRIu64 ", %" PRIu64 "): measured %" PRIu64
                 " nJ, shares + idle %" PRIu64,
                 r->t0_ns, r->t1_ns, r->energy_nj, sum);
}

static void interleaved_entities_share_by_modelled_energy(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 64), 0);
    /* A at 300 W and B at 100 W modelled, alternating 5 ms turns over [0, 20 ms). */
    struct etf_ledger_entry e[] = {
        entry(1, 0, 5 * MS, 1500000000ull / 1000), /* 300 W × 5 ms = 1.5 J */
        entry(2, 5 * MS, 10 * MS, 500000),
        entry(1, 10 * MS, 15 * MS, 1500000),
        entry(2, 15 * MS, 20 * MS, 500000),
    };
    etf__attrib_push(&a, e, 4);
    struct etf_attrib_result r;
    etf__attrib_split(&a, 0, 20 * MS, 8000000, &r); /* 8 mJ measured */
    assert_conserved(&r);
    assert_int_equal(r.idle_nj, 0);
    assert_int_equal(r.n_shares, 2);
    assert_int_equal(share_of(&r, 1), 6000000); /* 3/4 */
    assert_int_equal(share_of(&r, 2), 2000000);
    assert_int_equal(r.shares[0].busy_ns, 10 * MS);
    assert_int_equal(r.busy_ns, 20 * MS);
    assert_int_equal(a.n_pending, 0); /* all ended by t1 */
    etf__attrib_fini(&a);
}

static void nobody_running_is_idle_and_teaches_idle_power(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 64), 0);
    struct etf_attrib_result r;
    /* 100 ms with nobody: 8 J = 80 W idle. */
    etf__attrib_split(&a, 0, 100 * MS, 8000000000ull, &r);
    assert_int_equal(r.idle_nj, 8000000000ull);
    assert_int_equal(r.n_shares, 0);
    assert_true(a.idle_known);
    assert_near(a.idle_mw, 80000, 1e-6, "idle power");

    /* Then 100 ms in which A runs 40 ms: idle is 80 W × 60 ms = 4.8 J, A gets the rest. */
    struct etf_ledger_entry e = entry(7, 130 * MS, 170 * MS, 4000000000ull);
    etf__attrib_push(&a, &e, 1);
    etf__attrib_split(&a, 100 * MS, 200 * MS, 20000000000ull, &r);
    assert_conserved(&r);
    assert_int_equal(r.idle_nj, 4800000000ull);
    assert_int_equal(share_of(&r, 7), 15200000000ull);

    /* Idle power cannot take more than was measured. */
    e = entry(7, 200 * MS, 201 * MS, 1000);
    etf__attrib_push(&a, &e, 1);
    etf__attrib_split(&a, 200 * MS, 300 * MS, 1000000, &r);
    assert_conserved(&r);
    assert_int_equal(r.idle_nj, 1000000);
    assert_int_equal(share_of(&r, 7), 0);
    assert_int_equal(a.measured_nj, a.idle_nj + a.attributed_nj);
    etf__attrib_fini(&a);
}

static void straddling_entries_are_clipped_by_time(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 64), 0);
    /* B [0, 5) at 1 J; A [5, 15) at 10 J, across the boundary at 10. */
    struct etf_ledger_entry e[] = {
        entry(2, 0, 5 * MS, 1000000000ull),
        entry(1, 5 * MS, 15 * MS, 10000000000ull),
    };
    etf__attrib_push(&a, e, 2);
    struct etf_attrib_result r;
    etf__attrib_split(&a, 0, 10 * MS, 600, &r);
    assert_conserved(&r);
    /* Inside [0, 10): A's half (5 J) against B's 1 J. */
    assert_int_equal(share_of(&r, 1), 500);
    assert_int_equal(share_of(&r, 2), 100);
    assert_int_equal(r.shares[0].busy_ns, 5 * MS); /* A: half its busy time */
    assert_int_equal(a.n_pending, 1);              /* A continues into the next interval */

    /* [10, 20): A's other half runs 5 ms of it; with no idle power known yet, idle is the
     * idle fraction of the time. */
    etf__attrib_split(&a, 10 * MS, 20 * MS, 1000, &r);
    assert_conserved(&r);
    assert_int_equal(r.busy_ns, 5 * MS);
    assert_int_equal(r.idle_nj, 500);
    assert_int_equal(share_of(&r, 1), 500);
    assert_int_equal(a.n_pending, 0);
    etf__attrib_fini(&a);
}

static void without_modelled_energy_split_by_time_or_mean_power(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 64), 0);
    struct etf_ledger_entry e[] = {
        entry(1, 0, 3 * MS, 0),
        entry(2, 3 * MS, 4 * MS, 0),
    };
    etf__attrib_push(&a, e, 2);
    struct etf_attrib_result r;
    etf__attrib_split(&a, 0, 4 * MS, 1000, &r);
    assert_conserved(&r);
    assert_int_equal(share_of(&r, 1), 750);
    assert_int_equal(share_of(&r, 2), 250);

    /* Beside a modelled turn, an unmodelled one counts at the modelled mean power: A 2 ms
     * at 100 W, C 2 ms at 300 W, B 4 ms unmodelled (= 200 W). */
    struct etf_ledger_entry mixed[] = {
        entry(1, 10 * MS, 12 * MS, 200000),
        entry(3, 12 * MS, 14 * MS, 600000),
        entry(2, 14 * MS, 18 * MS, 0),
    };
    etf__attrib_push(&a, mixed, 3);
    etf__attrib_split(&a, 10 * MS, 18 * MS, 1600, &r);
    assert_conserved(&r);
    assert_int_equal(share_of(&r, 1), 200);
    assert_int_equal(share_of(&r, 3), 600);
    assert_int_equal(share_of(&r, 2), 800);
    etf__attrib_fini(&a);
}

static uint64_t rnd(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void conservation_over_random_intervals(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 4096), 0);
    uint64_t x = 88172645463325252ull;
    uint64_t t = 0, boundary = 0, measured = 0, given = 0, idle = 0;
    uint64_t per_entity[6] = {0};
    for (int round = 0; round < 5000; round++) {
        /* A few turns of random entities, lengths and powers (some with none), with gaps. */
        int n = (int)(rnd(&x) % 6);
        for (int i = 0; i < n; i++) {
            t += rnd(&x) % 3 == 0 ? rnd(&x) % (2 * MS) : 0;
            uint64_t len = rnd(&x) % (5 * MS);
            uint64_t eid = 1 + rnd(&x) % 5;
            uint64_t nj = rnd(&x) % 4 == 0 ? 0 : rnd(&x) % 5000000000ull;
            struct etf_ledger_entry e = entry(eid, t, t + len, nj);
            etf__attrib_push(&a, &e, 1);
            t += len;
        }
        /* A boundary somewhere in what was written, or past it. */
        uint64_t next = boundary + rnd(&x) % (t - boundary + 3 * MS + 1);
        uint64_t energy = rnd(&x) % 3 == 0 ? rnd(&x) % 1000 : rnd(&x) % 100000000000ull;
        struct etf_attrib_result r;
        etf__attrib_split(&a, boundary, next, energy, &r);
        assert_conserved(&r);
        for (size_t i = 0; i < r.n_shares; i++) {
            assert_true(i == 0 || r.shares[i - 1].eid < r.shares[i].eid);
            per_entity[r.shares[i].eid] += r.shares[i].energy_nj;
            given += r.shares[i].energy_nj;
        }
        measured += energy;
        idle += r.idle_nj;
        boundary = next;
        if (t < boundary)
            t = boundary;
    }
    assert_true(measured == given + idle);
    assert_true(a.measured_nj == measured);
    assert_true(a.idle_nj == idle);
    assert_true(a.attributed_nj == given);
    uint64_t sum = 0;
    for (int i = 0; i < 6; i++)
        sum += per_entity[i];
    assert_true(sum == given);
    assert_true(given > 0 && idle > 0);
    assert_int_equal(a.dropped, 0);
    etf__attrib_fini(&a);
}

static void ring_merges_continuing_turns_and_drops_oldest(void **state)
{
    struct etf_ledger l;
    assert_int_equal(etf__ledger_init(&l, 4), 0);
    struct etf_ledger_entry e = entry(1, 0, 10, 5);
    etf__ledger_append(&l, &e);
    e = entry(1, 10, 20, 5); /* continues: merged */
    etf__ledger_append(&l, &e);
    assert_int_equal(l.n, 1);
    e = entry(2, 20, 30, 1);
    etf__ledger_append(&l, &e);
    e = entry(1, 30 + ETF_LEDGER_MERGE_GAP_NS + 1, 40 + ETF_LEDGER_MERGE_GAP_NS, 1);
    etf__ledger_append(&l, &e); /* same entity as two back, not the latest: not merged */
    assert_int_equal(l.n, 3);
    for (uint64_t i = 0; i < 3; i++) {
        e = entry(10 + i, 5000 + i * 10, 5005 + i * 10, 1);
        etf__ledger_append(&l, &e);
    }
    assert_int_equal(l.n, 4);
    assert_int_equal(l.dropped, 2);

    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 3), 0);
    etf__attrib_pull(&a, &l);
    assert_int_equal(l.n, 0);
    /* Four entries into room for three: the oldest goes, counted. */
    assert_int_equal(a.n_pending, 3);
    assert_int_equal(a.dropped, 1);
    assert_int_equal(a.pending[0].eid, 10);
    assert_int_equal(a.pending[2].eid, 12);
    /* The ring keeps working after being emptied. */
    e = entry(3, 6000, 6010, 1);
    etf__ledger_append(&l, &e);
    assert_int_equal(l.n, 1);
    etf__attrib_fini(&a);
    etf__ledger_fini(&l);

    struct etf_ledger merged;
    assert_int_equal(etf__ledger_init(&merged, 2), 0);
    e = entry(1, 0, 10, 5);
    etf__ledger_append(&merged, &e);
    e = entry(1, 10, 25, 7);
    etf__ledger_append(&merged, &e);
    assert_int_equal(merged.ring[0].end_ns, 25);
    assert_int_equal(merged.ring[0].busy_ns, 25);
    assert_int_equal(merged.ring[0].model_nj, 12);
    etf__ledger_fini(&merged);
}

static void stepped_counter_boundaries_lie_between_readings(void **state)
{
    struct etf_attrib a;
    assert_int_equal(etf__attrib_init(&a, 64), 0);
    struct etf_attrib_result r;
    /* Readings every 20 ms of a counter that steps every 100 ms (like NVML on an H100). */
    etf__attrib_reading(&a, 1000, 0); /* when this value was taken is unknown */
    etf__attrib_reading(&a, 1000, 20 * MS);
    etf__attrib_reading(&a, 1000, 40 * MS);
    etf__attrib_reading(&a, 2000, 60 * MS); /* changed between 40 and 60: boundary at 50 */
    assert_true(a.have_base);
    assert_int_equal(a.base_ns, 50 * MS);
    assert_false(etf__attrib_next(&a, UINT64_MAX, &r)); /* one boundary: no interval yet */
    for (uint64_t t = 80; t <= 140; t += 20)
        etf__attrib_reading(&a, 2000, t * MS);
    etf__attrib_reading(&a, 2500, 160 * MS); /* boundary at 150 */
    assert_int_equal(a.n_queue, 1);
    assert_int_equal(a.queue[0].t_ns, 150 * MS);
    /* Not before the ledger is complete up to the boundary (a turn still running). */
    assert_false(etf__attrib_next(&a, 149 * MS, &r));
    assert_true(etf__attrib_next(&a, 150 * MS, &r));
    assert_int_equal(r.t0_ns, 50 * MS);
    assert_int_equal(r.t1_ns, 150 * MS);
    assert_int_equal(r.energy_nj, 500);
    /* A counter that moves at every reading is current at the reading. */
    etf__attrib_reading(&a, 2600, 180 * MS);
    assert_int_equal(a.queue[0].t_ns, 180 * MS);
    assert_true(etf__attrib_next(&a, UINT64_MAX, &r));
    assert_int_equal(r.energy_nj, 100);
    /* A counter that went back restarts: the next change is a new base. */
    etf__attrib_reading(&a, 10, 200 * MS);
    assert_false(a.have_base);
    assert_int_equal(a.resets, 1);
    etf__attrib_reading(&a, 20, 220 * MS);
    assert_true(a.have_base);
    assert_int_equal(a.base_ns, 220 * MS);
    assert_int_equal(a.measured_nj, 600);
    /* More boundaries waiting than the queue holds merge the oldest intervals: no energy
     * is lost. */
    for (uint64_t i = 1; i <= ETF_ATTRIB_QUEUE + 5; i++)
        etf__attrib_reading(&a, 20 + i, (220 + i) * MS);
    assert_int_equal(a.n_queue, ETF_ATTRIB_QUEUE);
    uint64_t sum = 0;
    while (etf__attrib_next(&a, UINT64_MAX, &r))
        sum += r.energy_nj;
    assert_int_equal(sum, ETF_ATTRIB_QUEUE + 5);
    etf__attrib_fini(&a);
}

/* ---- The scheduler with a measuring meter ---- */

static struct fixture *fx_measuring(double phi, uint64_t quantum_ns, bool real_clock,
                                    uint64_t sample_ns, struct etf_diag *diag, int *rc_out)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    assert_int_equal(pthread_mutex_init(&fx->mu, NULL), 0);
    assert_int_equal(pthread_cond_init(&fx->cv, NULL), 0);
    fx->clock = etf_vclock_as_clock(&fx->vc);
    struct etf_device_config dc = {.vclock = real_clock ? NULL : &fx->vc};
    assert_int_equal(etf_device_open("sim", &dc, &fx->dev, diag), 0);
    fx->own_dev = true;
    struct etf_meter_config mc;
    memset(&mc, 0, sizeof mc);
    mc.library_path = FAKE_NVML_PATH;
    int rc = etf_meter_open("nvml", &mc, &fx->meter, diag);
    if (rc)
        fail_msg("meter nvml on the fake: %s", diag->msg);
    struct etf_sched_config sc = {
        .quantum_ns = quantum_ns,
        .phi = phi,
        .clock = real_clock ? NULL : &fx->clock,
        .device = fx->dev,
        .meter = fx->meter,
        .on_done = fx_on_done,
        .on_done_arg = fx,
        .meter_sample_ns = sample_ns,
        .meter_window_ns = 100 * MS,
    };
    *rc_out = etf_sched_create(&sc, &fx->s, diag);
    return fx;
}

static void virtual_clock_needs_manual_sampling(void **state)
{
    fake_nvml_reset();
    struct etf_diag diag = {{0}};
    int rc;
    struct fixture *fx = fx_measuring(1, 10 * MS, false, 0, &diag, &rc);
    assert_int_equal(rc, ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "virtual clock"));
    fx->s = NULL;
    fx_free(fx);

    /* The model meter keeps no ledger: manual sampling has nothing to do. */
    fx = fx_new(1, 10 * MS);
    assert_int_equal(etf__sched_sample(fx->s), ETF_ENOTSUP);
    struct etf_sched_stats st = fx_sstats(fx);
    assert_int_equal(st.measured_energy_nj, 0);
    assert_int_equal(st.meter_samples, 0);
    fx_free(fx);
}

/* The fake counter follows the truth: each entity draws true_mw[i] while it runs. */
static void advance_truth(struct fixture *fx, const uint64_t *eids, const double *true_mw, size_t n,
                          uint64_t *last_time, double *truth_nj)
{
    for (size_t i = 0; i < n; i++) {
        struct etf_entity_stats st = fx_estats(fx, eids[i]);
        *truth_nj += (double)(st.time_ns - last_time[i]) * true_mw[i] / 1e3;
        last_time[i] = st.time_ns;
    }
    fake_nvml_set_energy_mj((unsigned long long)(*truth_nj / 1e6));
}

/* Two closed-loop entities of equal priority, time-fair at Q = 100 ms (50 ms turns), whose
 * models' profiles say profile_mw per kernel (0 = no power) while A truly draws 300 W and
 * B 100 W; the fake NVML counter follows the truth, sampled after every turn. */
struct two_truths {
    struct fixture *fx;
    uint64_t eids[2];
    double true_mw[2];
    uint64_t last_time[2];
    double truth_nj;
};

static void two_truths_start(struct two_truths *tt, double profile_mw)
{
    fake_nvml_reset();
    struct etf_diag diag = {{0}};
    int rc;
    *tt = (struct two_truths){.true_mw = {300000, 100000}};
    tt->fx = fx_measuring(1, 100 * MS, false, ETF_METER_SAMPLE_MANUAL, &diag, &rc);
    if (rc)
        fail_msg("create: %s", diag.msg);
    for (int i = 0; i < 2; i++) {
        tt->eids[i] = fx_entity(tt->fx, 0);
        uint64_t mid = fx_model(tt->fx, tt->eids[i], prof_uniform("m", 4, GHZ, 50, profile_mw), GHZ);
        for (int k = 0; k < 4; k++)
            fx_submit(tt->fx, mid);
    }
    tt->fx->resubmit = true;
    tt->fx->keep_records = false;
    assert_int_equal(etf__sched_sample(tt->fx->s), 0);
}

static void two_truths_run_until(struct two_truths *tt, uint64_t until_ns)
{
    while (tt->fx->vc.now_ns < until_ns) {
        fx_step(tt->fx);
        advance_truth(tt->fx, tt->eids, tt->true_mw, 2, tt->last_time, &tt->truth_nj);
        assert_int_equal(etf__sched_sample(tt->fx->s), 0);
    }
}

static void measured_power_replaces_modelled_power(void **state)
{
    /* Both profiles say 100 W. */
    struct two_truths tt;
    two_truths_start(&tt, 100000);
    two_truths_run_until(&tt, 3 * SEC);
    struct fixture *fx = tt.fx;
    const uint64_t *eids = tt.eids;
    double truth = tt.truth_nj;
    struct etf_entity_stats a = fx_estats(fx, eids[0]), b = fx_estats(fx, eids[1]);
    struct etf_sched_stats st = fx_sstats(fx);
    /* Every nanojoule measured went somewhere; tasks keep their modelled energy. */
    assert_true(st.measured_energy_nj ==
                st.idle_energy_nj + a.measured_energy_nj + b.measured_energy_nj);
    assert_true(st.measured_energy_nj > 0);
    assert_near(st.measured_energy_nj, truth, 0.05 * truth, "measured vs true energy");
    assert_near(a.energy_nj, (double)a.time_ns * 100000 / 1e3, 1e3, "A's modelled energy");
    /* Each turn is alone in its interval (but for the host's microseconds between the
     * reading and the boundary), so the measured powers are the true ones. */
    assert_near(a.power_mw, 300000, 0.03 * 300000, "A's power in the allocation");
    assert_near(b.power_mw, 100000, 0.03 * 100000, "B's power in the allocation");
    assert_near((double)a.measured_energy_nj / (double)a.measured_time_ns * 1e3, 300000,
                0.03 * 300000, "A's measured power");

    /* Energy-fair now: A, three times as hungry, gets a third of B's slice. */
    assert_int_equal(etf_sched_set_policy(fx->s, 100 * MS, 0, NULL), 0);
    a = fx_estats(fx, eids[0]);
    b = fx_estats(fx, eids[1]);
    assert_near(a.slice_ns / b.slice_ns, 1.0 / 3, 0.03, "slice ratio A/B");

    /* A meter that fails now and then is counted and the run goes on. */
    fake_nvml_fail("nvmlDeviceGetTotalEnergyConsumption", 15);
    assert_int_equal(etf__sched_sample(fx->s), ETF_EDEVICE);
    fake_nvml_fail("nvmlDeviceGetTotalEnergyConsumption", 0);
    st = fx_sstats(fx);
    assert_int_equal(st.meter_errors, 1);
    assert_true(st.meter_samples > 50);
    assert_int_equal(st.ledger_dropped, 0);
    fx_free(fx);
}

/* Models without profiled power: once the meter has taught each entity its power, their
 * kernels are charged at it, so tasks carry energy. */
static void model_without_power_is_charged_at_measured_power(void **state)
{
    struct two_truths tt;
    two_truths_start(&tt, 0);
    two_truths_run_until(&tt, 2 * SEC);
    struct fixture *fx = tt.fx;
    const uint64_t *eids = tt.eids;
    const double *true_mw = tt.true_mw;
    struct etf_entity_stats half[2] = {fx_estats(fx, eids[0]), fx_estats(fx, eids[1])};
    two_truths_run_until(&tt, 4 * SEC);
    for (int i = 0; i < 2; i++) {
        struct etf_entity_stats now = fx_estats(fx, eids[i]);
        double mw = (double)(now.energy_nj - half[i].energy_nj) /
                    (double)(now.time_ns - half[i].time_ns) * 1e3;
        assert_near(mw, true_mw[i], 0.05 * true_mw[i], "charged power of a powerless model");
    }
    fx_free(fx);
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000 * MS)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static void sampler_thread_beside_the_dispatcher(void **state)
{
    fake_nvml_reset();
    /* A stepped counter, like the H100's, growing at 200 W. */
    fake_nvml_set_update_period_ns(25 * MS);
    fake_nvml_set_power_mw(200000);
    struct etf_diag diag = {{0}};
    int rc;
    struct fixture *fx = fx_measuring(0.5, 20 * MS, true, 5 * MS, &diag, &rc);
    if (rc)
        fail_msg("create: %s", diag.msg);
    uint64_t eids[2] = {fx_entity(fx, 0), fx_entity(fx, 5)};
    for (int i = 0; i < 2; i++) {
        uint64_t mid =
            fx_model(fx, eids[i], prof_uniform("m", 4, GHZ, 250, 50000.0 * (i + 1)), GHZ);
        for (int k = 0; k < 2; k++)
            fx_submit(fx, mid);
    }
    fx->resubmit = true;
    fx->keep_records = false;
    assert_int_equal(etf_sched_start(fx->s), 0);
    sleep_ms(400);
    /* Let it go idle, so that idle intervals are seen too. */
    pthread_mutex_lock(&fx->mu);
    fx->resubmit = false;
    pthread_mutex_unlock(&fx->mu);
    sleep_ms(250);
    /* Stats while both threads run: consistent snapshots under the lock. */
    struct etf_entity_stats a = fx_estats(fx, eids[0]), b = fx_estats(fx, eids[1]);
    struct etf_sched_stats st = fx_sstats(fx);
    assert_int_equal(etf_sched_stop(fx->s, SEC), 0);
    assert_true(st.meter_samples > 20);
    assert_int_equal(st.meter_errors, 0);
    assert_true(st.measured_energy_nj > 0);
    assert_true(st.idle_energy_nj > 0);
    assert_true(a.measured_energy_nj > 0 && b.measured_energy_nj > 0);
    assert_true(st.measured_energy_nj ==
                st.idle_energy_nj + a.measured_energy_nj + b.measured_energy_nj);
    /* About 650 ms at 200 W is 130 J; intervals end up to a counter step before the end,
     * and a slow host stretches the run. */
    assert_true(st.measured_energy_nj < 200000000000ull);
    assert_true(st.measured_energy_nj > 50000000000ull);
    assert_int_equal(etf__sched_sample(fx->s), ETF_EBUSY); /* the thread owns sampling */
    fx_free(fx);
}

/* ---- Live: a measuring session on a real GPU (opt-in) ---- */

static void live_measuring_session(void **state)
{
    const char *live = getenv("ETF_NVML_LIVE");
    if (!live || strcmp(live, "1") != 0)
        skip();
    const char *model = getenv("ETF_LIVE_MODEL");
    const char *device = getenv("ETF_LIVE_DEVICE");
    if (!model)
        model = ETF_SOURCE_DIR "/models/resnet18/model.onnx";
    if (!device)
        device = "cuda";
    const char *q = getenv("ETF_LIVE_QUANTUM_MS");
    uint64_t quantum_ms = q ? strtoull(q, NULL, 10) : 200;
    assert_true(quantum_ms > 0);
    struct etf_diag diag = {{0}};
    struct fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    assert_int_equal(pthread_mutex_init(&fx->mu, NULL), 0);
    assert_int_equal(pthread_cond_init(&fx->cv, NULL), 0);
    if (etf_device_open(device, NULL, &fx->dev, &diag))
        fail_msg("device %s: %s", device, diag.msg);
    fx->own_dev = true;
    if (etf_meter_open("nvml", NULL, &fx->meter, &diag))
        fail_msg("meter nvml: %s", diag.msg);
    /* Time-fair: each tenant's turn is half the quantum ($ETF_LIVE_QUANTUM_MS, default 200).
     * Turns much longer than a step of the counter (~100 ms on the H100) leave most steps to
     * one tenant, and the measured powers come apart; shorter ones mix them. */
    struct etf_sched_config sc = {
        .quantum_ns = quantum_ms * MS,
        .phi = 1,
        .device = fx->dev,
        .meter = fx->meter,
        .on_done = fx_on_done,
        .on_done_arg = fx,
    };
    if (etf_sched_create(&sc, &fx->s, &diag))
        fail_msg("scheduler: %s", diag.msg);
    const size_t batch[2] = {32, 1};
    struct etf_plan *plans[2] = {NULL, NULL};
    uint64_t eids[2], mids[2];
    for (int i = 0; i < 2; i++) {
        struct etf_model_options mo = {.batch = batch[i]};
        if (etf_model_open(model, &mo, &plans[i], &diag))
            fail_msg("model %s: %s", model, diag.msg);
        eids[i] = fx_entity(fx, 0);
        struct etf_model_spec spec = {.plan = plans[i]};
        if (etf_model_load(fx->s, eids[i], &spec, &mids[i], &diag))
            fail_msg("load: %s", diag.msg);
    }
    fx->keep_records = false;
    fx->resubmit = true;
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 2; k++)
            fx_submit(fx, mids[i]);
    uint64_t t0 = etf_host_ns();
    assert_int_equal(etf_sched_start(fx->s), 0);
    sleep_ms(6000);
    pthread_mutex_lock(&fx->mu);
    fx->resubmit = false;
    pthread_mutex_unlock(&fx->mu);
    sleep_ms(1500); /* idle: the idle power is learnt */
    struct etf_entity_stats st[2] = {fx_estats(fx, eids[0]), fx_estats(fx, eids[1])};
    struct etf_sched_stats ss = fx_sstats(fx);
    double secs = (double)(etf_host_ns() - t0) / 1e9;
    printf("live session on %s, Q %" PRIu64
           " ms, %.1f s: measured %.3f J (%.1f W mean), idle %.3f J, idle power "
           "%.1f W; %" PRIu64 " samples, %" PRIu64 " errors, %" PRIu64 " turns dropped\n",
           device, quantum_ms, secs, (double)ss.measured_energy_nj / 1e9,
           (double)ss.measured_energy_nj / 1e9 / secs, (double)ss.idle_energy_nj / 1e9,
           ss.idle_power_mw / 1e3, ss.meter_samples, ss.meter_errors, ss.ledger_dropped);
    for (int i = 0; i < 2; i++)
        printf("  tenant batch %zu: %" PRIu64 " tasks, busy %.3f s, measured %.3f J over %.3f s "
               "= %.1f W; allocation power %.1f W\n",
               batch[i], st[i].tasks_done, (double)st[i].time_ns / 1e9,
               (double)st[i].measured_energy_nj / 1e9, (double)st[i].measured_time_ns / 1e9,
               st[i].measured_time_ns
                   ? (double)st[i].measured_energy_nj / (double)st[i].measured_time_ns
                   : 0.0,
               st[i].power_mw / 1e3);
    assert_true(ss.measured_energy_nj ==
                ss.idle_energy_nj + st[0].measured_energy_nj + st[1].measured_energy_nj);
    assert_int_equal(ss.meter_errors, 0);
    assert_true(ss.meter_samples > 100);
    assert_true(st[0].measured_energy_nj > 0 && st[1].measured_energy_nj > 0);
    fx_free(fx);
    for (int i = 0; i < 2; i++)
        etf_plan_free(plans[i]);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(interleaved_entities_share_by_modelled_energy),
        cmocka_unit_test(nobody_running_is_idle_and_teaches_idle_power),
        cmocka_unit_test(straddling_entries_are_clipped_by_time),
        cmocka_unit_test(without_modelled_energy_split_by_time_or_mean_power),
        cmocka_unit_test(conservation_over_random_intervals),
        cmocka_unit_test(ring_merges_continuing_turns_and_drops_oldest),
        cmocka_unit_test(stepped_counter_boundaries_lie_between_readings),
        cmocka_unit_test(virtual_clock_needs_manual_sampling),
        cmocka_unit_test(measured_power_replaces_modelled_power),
        cmocka_unit_test(model_without_power_is_charged_at_measured_power),
        cmocka_unit_test(sampler_thread_beside_the_dispatcher),
        cmocka_unit_test(live_measuring_session),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
