/* Tests of the dispatcher's asynchronous path (submit and fence, src/sched/sched.c) on the
 * sim device made asynchronous by a queue depth, on a virtual clock: the accounting is the
 * synchronous path's, a turn fences once its estimates are known, a full device queue, a
 * clock switch between models, a closed loop whose oldest task completes while the next
 * one is in flight, a failing fence, and the hint that stages the next turn's task. */
#include "support.h"

#include "device/device.h"

#define GHZ 1000000000ull

/* ---- Helpers ---- */

static struct fixture *fx_async(double phi, uint64_t quantum_ns, size_t depth)
{
    struct fx_config c = {.phi = phi, .quantum_ns = quantum_ns, .queue_depth = depth};
    return fx_new_ex(&c);
}

/* 8 kernels of 50 µs at 1 GHz, power_mw each. */
static uint64_t model_8x50(struct fixture *fx, uint64_t eid, double power_mw)
{
    return fx_model(fx, eid, prof_uniform("m", 8, GHZ, 50, power_mw), GHZ);
}

static void backlog(struct fixture *fx, uint64_t mid, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fx_submit(fx, mid);
}

/* ---- Tests ---- */

/* With exact kernel times, the asynchronous path plans each turn to the same kernels as the
 * synchronous one runs, so every figure agrees. */
static void async_accounting_equals_sync_accounting(void **state)
{
    (void)state;
    struct etf_entity_stats sync_st[2], async_st[2];
    for (int pass = 0; pass < 2; pass++) {
        struct fixture *fx = fx_async(0.5, 2 * MS, pass ? 64 : 0);
        uint64_t e0 = fx_entity(fx, 0), e1 = fx_entity(fx, 5);
        uint64_t m0 = model_8x50(fx, e0, 4000), m1 = model_8x50(fx, e1, 1000);
        backlog(fx, m0, 200);
        backlog(fx, m1, 200);
        fx_run_until(fx, 100 * MS);
        struct etf_entity_stats *st = pass ? async_st : sync_st;
        st[0] = fx_estats(fx, e0);
        st[1] = fx_estats(fx, e1);
        struct etf_sched_stats ss = fx_sstats(fx);
        if (pass == 0)
            assert_int_equal(ss.fences, 0);
        else
            assert_true(ss.fences > 0);
        assert_int_equal(fx->n_failed, 0);
        fx_free(fx);
    }
    for (int i = 0; i < 2; i++) {
        assert_int_equal(async_st[i].time_ns, sync_st[i].time_ns);
        assert_int_equal(async_st[i].energy_nj, sync_st[i].energy_nj);
        assert_int_equal(async_st[i].tasks_done, sync_st[i].tasks_done);
    }
}

/* Once every kernel has run once, a backlogged entity's turn is one fence: the first task's
 * kernels are fenced one by one to learn their times. */
static void known_kernels_fence_once_per_turn(void **state)
{
    (void)state;
    struct fixture *fx = fx_async(1, 1 * MS, 256);
    fx->keep_records = false;
    uint64_t e = fx_entity(fx, 0);
    uint64_t m = model_8x50(fx, e, 1000);
    backlog(fx, m, 100);
    fx_drain(fx, 1000);
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(fx->n_done, 100);
    assert_int_equal(fx->n_failed, 0);
    assert_int_equal(ss.dispatches, 800);
    assert_int_equal(ss.busy_ns, 800 * 50 * 1000ull);
    assert_true(ss.fences <= ss.turns + 8);
    fx_free(fx);
}

/* Two backlogged entities taking turns: before a turn drains the device, the dispatcher
 * hints the task that will start the next turn (the other entity's, when that one's next
 * task has not started: a turn that ended inside a task needs no hint), so that a GPU stages
 * its inputs while the turn's last kernels still run. */
static void turns_hint_the_next_turns_first_task(void **state)
{
    (void)state;
    struct fixture *fx = fx_async(1, 1 * MS, 256);
    fx->keep_records = false;
    uint64_t e0 = fx_entity(fx, 0), e1 = fx_entity(fx, 0);
    uint64_t m0 = model_8x50(fx, e0, 1000), m1 = model_8x50(fx, e1, 1000);
    backlog(fx, m0, 60);
    backlog(fx, m1, 60);
    fx_drain(fx, 1000);
    struct etf_sched_stats ss = fx_sstats(fx);
    uint64_t hints, hits;
    etf__device_sim_hints(fx->dev, &hints, &hits);
    assert_int_equal(fx->n_done, 120);
    assert_int_equal(ss.prepares, hints); /* every hint came while kernels were queued */
    assert_true(hints >= ss.turns / 8);
    /* the hinted task is the one that starts next, but where the entities' vruntimes tie
     * and the guess may go either way */
    assert_true(hits * 10 >= hints * 9);
    fx_free(fx);
}

/* A device queue shorter than a task: submits meet ETF_EBUSY, the turn fences and goes
 * on, and every task completes with its exact time. */
static void queue_shorter_than_a_task_completes_everything(void **state)
{
    (void)state;
    struct fixture *fx = fx_async(1, 10 * MS, 3);
    uint64_t e = fx_entity(fx, 0);
    uint64_t m = model_8x50(fx, e, 1000);
    backlog(fx, m, 10);
    fx_drain(fx, 100);
    assert_int_equal(fx->n_done, 10);
    assert_int_equal(fx->n_failed, 0);
    for (size_t i = 0; i < fx->n_recs; i++) {
        assert_int_equal(fx->recs[i].service_ns, 8 * 50 * 1000ull);
        if (i > 0)
            assert_true(fx->recs[i].tid > fx->recs[i - 1].tid);
    }
    assert_int_equal(fx_sstats(fx).busy_ns, 10 * 8 * 50 * 1000ull);
    fx_free(fx);
}

/* One entity, two models at two clocks: kernels in flight are fenced before each switch,
 * so each task is charged its kernels' time at its own clock. */
static void clock_switch_fences_first_and_charges_each_clock(void **state)
{
    (void)state;
    uint64_t freqs[2] = {500 * MHZ, GHZ};
    double time_us[2] = {200, 100}, power_mw[2] = {1000, 3000};
    struct fixture *fx = fx_async(1, 50 * MS, 64);
    uint64_t e = fx_entity(fx, 0);
    uint64_t slow =
        fx_model(fx, e, prof_uniform_freqs("slow", 4, 2, freqs, time_us, power_mw), 500 * MHZ);
    uint64_t fast =
        fx_model(fx, e, prof_uniform_freqs("fast", 4, 2, freqs, time_us, power_mw), GHZ);
    for (int i = 0; i < 6; i++)
        fx_submit(fx, i % 2 ? fast : slow);
    fx_drain(fx, 100);
    assert_int_equal(fx->n_done, 6);
    assert_int_equal(fx->n_failed, 0);
    for (size_t i = 0; i < fx->n_recs; i++) {
        const struct etf_task_record *r = &fx->recs[i];
        bool is_fast = r->mid == fast;
        assert_int_equal(r->freq_hz, is_fast ? GHZ : 500 * MHZ);
        assert_int_equal(r->service_ns, 4 * (is_fast ? 100 : 200) * 1000ull);
        /* mW × µs = nJ */
        assert_int_equal(r->energy_nj, 4 * (is_fast ? 100 * 3000 : 200 * 1000));
    }
    assert_int_equal(fx_sstats(fx).freq_switches, 6);
    fx_free(fx);
}

/* A closed loop of two requests: when every queued kernel is submitted, the turn completes
 * the oldest task while the newest stays in flight, and the client's next request joins
 * the same turn. Completions keep FIFO order and each task its exact time. */
static void closed_loop_completes_oldest_while_newest_runs(void **state)
{
    (void)state;
    struct fixture *fx = fx_async(1, 20 * MS, 256);
    fx->resubmit = true;
    uint64_t e = fx_entity(fx, 0);
    uint64_t m = model_8x50(fx, e, 1000);
    backlog(fx, m, 2);
    fx_run_until(fx, 100 * MS);
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(fx->n_failed, 0);
    assert_int_equal(fx->resubmit_errors, 0);
    assert_true(fx->n_done >= 200);
    /* Several fences per turn: the partial ones of the loop, then the turn's last. */
    assert_true(ss.fences > 2 * ss.turns);
    for (size_t i = 1; i < fx->n_recs; i++) {
        assert_true(fx->recs[i].tid > fx->recs[i - 1].tid);
        assert_true(fx->recs[i].end_ns >= fx->recs[i - 1].end_ns);
        assert_int_equal(fx->recs[i].service_ns, 8 * 50 * 1000ull);
    }
    fx_free(fx);
}

/* On the real clock, switches run on the clock worker, posted right after the fence that
 * drains the old clock's kernels; every task still runs at its own clock. */
static void real_clock_switches_on_the_worker(void **state)
{
    (void)state;
    uint64_t freqs[2] = {500 * MHZ, GHZ};
    double time_us[2] = {20, 10}, power_mw[2] = {1000, 3000};
    struct fx_config c = {.phi = 1, .quantum_ns = 50 * MS, .queue_depth = 16, .real_clock = true};
    struct fixture *fx = fx_new_ex(&c);
    uint64_t e = fx_entity(fx, 0);
    uint64_t mids[2];
    for (int i = 0; i < 2; i++)
        mids[i] =
            fx_model(fx, e, prof_uniform_freqs("m", 4, 2, freqs, time_us, power_mw), freqs[i]);
    for (int i = 0; i < 10; i++)
        fx_submit(fx, mids[i % 2]);
    fx_drain(fx, 100);
    assert_int_equal(fx->n_done, 10);
    assert_int_equal(fx->n_failed, 0);
    for (size_t i = 0; i < fx->n_recs; i++)
        assert_int_equal(fx->recs[i].freq_hz, fx->recs[i].mid == mids[0] ? freqs[0] : freqs[1]);
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.freq_switches, 10);
    assert_int_equal(ss.freq_errors, 0);
    uint64_t hz = 0;
    assert_int_equal(etf_freq_current(fx->freq, &hz), 0);
    assert_int_equal(hz, freqs[1]);
    fx_free(fx);
}

/* ---- A device whose fence can be made to fail ---- */

struct failing_device {
    struct etf_device base;
    struct etf_device *inner; /* an asynchronous sim device */
    bool fail_next_fence;
    size_t fences_failed;
};

static int failing_open(const struct etf_device_config *cfg, struct etf_device **out,
                        struct etf_diag *diag)
{
    (void)cfg, (void)out;
    return etf_diagf(diag, ETF_ENOTSUP, "made by the test");
}

static int failing_load(struct etf_device *dev, const struct etf_model_desc *desc,
                        struct etf_dmodel **out, struct etf_diag *diag)
{
    return etf__device_load(((struct failing_device *)dev)->inner, desc, out, diag);
}

static int failing_launch(struct etf_device *dev, struct etf_kernel_run *run)
{
    return etf__device_launch(((struct failing_device *)dev)->inner, run);
}

static int failing_submit(struct etf_device *dev, struct etf_kernel_run *run)
{
    return etf__device_submit(((struct failing_device *)dev)->inner, run);
}

static int failing_fence(struct etf_device *dev, size_t n)
{
    struct failing_device *fd = (struct failing_device *)dev;
    if (!fd->fail_next_fence)
        return etf__device_fence(fd->inner, n);
    /* As the contract says of a failed fence: every submitted run is lost. */
    fd->fail_next_fence = false;
    fd->fences_failed++;
    etf__device_fence(fd->inner, SIZE_MAX);
    return ETF_EDEVICE;
}

static void failing_unload(struct etf_device *dev, struct etf_dmodel *dm)
{
    etf__device_unload(((struct failing_device *)dev)->inner, dm);
}

static void failing_close(struct etf_device *dev)
{
    (void)dev;
}

static const struct etf_device_ops failing_ops = {
    .name = "failing",
    .open = failing_open,
    .load = failing_load,
    .launch = failing_launch,
    .submit = failing_submit,
    .fence = failing_fence,
    .unload = failing_unload,
    .close = failing_close,
};

/* A fence that fails fails the tasks whose kernels it held, reports the error from the
 * step, and the next turn serves the remaining tasks normally. */
static void failed_fence_fails_its_tasks_and_service_goes_on(void **state)
{
    (void)state;
    struct failing_device fd = {.base = {.ops = &failing_ops}};
    struct fx_config c = {.phi = 1, .quantum_ns = 100 * MS, .device = &fd.base};
    struct fixture *fx = fx_new_ex(&c);
    struct etf_device_config dc = {.vclock = &fx->vc, .queue_depth = 64};
    assert_int_equal(etf_device_open("sim", &dc, &fd.inner, NULL), 0);
    uint64_t e = fx_entity(fx, 0);
    uint64_t m = model_8x50(fx, e, 1000);
    fx_submit(fx, m); /* teaches the estimates */
    fx_drain(fx, 10);
    assert_int_equal(fx->n_done, 1);

    backlog(fx, m, 3); /* all three fit one turn: one fence holds them */
    fd.fail_next_fence = true;
    bool ran = false;
    assert_int_equal(etf_sched_step(fx->s, &ran), ETF_EDEVICE);
    assert_true(ran);
    assert_int_equal(fd.fences_failed, 1);
    assert_int_equal(fx->n_done, 4);
    assert_int_equal(fx->n_failed, 3);
    for (size_t i = 1; i < 4; i++)
        assert_int_equal(fx->recs[i].status, ETF_EDEVICE);

    backlog(fx, m, 2);
    fx_drain(fx, 10);
    assert_int_equal(fx->n_done, 6);
    assert_int_equal(fx->n_failed, 3);
    assert_int_equal(fx->recs[5].status, 0);
    assert_int_equal(fx->recs[5].service_ns, 8 * 50 * 1000ull);
    fx_free(fx);
    etf_device_close(fd.inner);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(async_accounting_equals_sync_accounting),
        cmocka_unit_test(known_kernels_fence_once_per_turn),
        cmocka_unit_test(turns_hint_the_next_turns_first_task),
        cmocka_unit_test(queue_shorter_than_a_task_completes_everything),
        cmocka_unit_test(clock_switch_fences_first_and_charges_each_clock),
        cmocka_unit_test(closed_loop_completes_oldest_while_newest_runs),
        cmocka_unit_test(real_clock_switches_on_the_worker),
        cmocka_unit_test(failed_fence_fails_its_tasks_and_service_goes_on),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
