/* Tests of the ETF dispatcher (src/sched/sched.c): argument checking, entities and models,
 * exact accounting on a virtual clock, weighted time and energy fairness, overrun, joins,
 * priority and power changes, frequency switching, and the threaded dispatcher.
 *
 * Everything but the thread tests runs on a virtual clock driven by etf_sched_step, so
 * that every figure is an exact function of the profiles: no assertion depends on host
 * timing, except the CPU-time bound of the idle dispatcher. */
#include "support.h"

#include "freq/freq.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <time.h>

#define GHZ 1000000000ull

/* ---- Helpers ---- */

static void backlog(struct fixture *fx, uint64_t mid, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fx_submit(fx, mid);
}

/* The model every fairness test uses: 4 kernels of 50 µs at 1 GHz, power_mw each. */
static uint64_t std_model(struct fixture *fx, uint64_t eid, double power_mw)
{
    return fx_model(fx, eid, prof_uniform("m", 4, GHZ, 50, power_mw), GHZ);
}

/* Runs the virtual clock forward by window_ns and returns the device time and energy each
 * entity was charged in that window. */
static void run_window(struct fixture *fx, const uint64_t *eids, size_t n, uint64_t window_ns,
                       double *time_ns, double *energy_nj)
{
    for (size_t i = 0; i < n; i++) {
        struct etf_entity_stats st = fx_estats(fx, eids[i]);
        time_ns[i] = -(double)st.time_ns;
        energy_nj[i] = -(double)st.energy_nj;
    }
    fx_run_until(fx, fx->vc.now_ns + window_ns);
    for (size_t i = 0; i < n; i++) {
        struct etf_entity_stats st = fx_estats(fx, eids[i]);
        time_ns[i] += (double)st.time_ns;
        energy_nj[i] += (double)st.energy_nj;
    }
}

/* Each entity's share of v is its share of the weights within tol (absolute). */
static void assert_shares(const double *v, const uint32_t *weights, size_t n, double tol,
                          const char *what)
{
    double total = 0, wtotal = 0;
    for (size_t i = 0; i < n; i++) {
        total += v[i];
        wtotal += weights[i];
    }
    assert_true(total > 0);
    for (size_t i = 0; i < n; i++) {
        char label[96];
        snprintf(label, sizeof label, "%s share of entity %zu", what, i);
        assert_near(v[i] / total, weights[i] / wtotal, tol, label);
    }
}

/* The weight-normalised energies E_i / w_i are equal within rel (relative to the largest). */
static void assert_energy_fair(const double *energy, const uint32_t *weights, size_t n, double rel)
{
    double lo = INFINITY, hi = 0;
    for (size_t i = 0; i < n; i++) {
        double e = energy[i] / weights[i];
        lo = e < lo ? e : lo;
        hi = e > hi ? e : hi;
    }
    if (!(hi > 0 && (hi - lo) <= rel * hi))
        fail_msg("energy per weight ranges over %.9g..%.9g, more than %g apart", lo, hi, rel);
}

static void assert_slices_sum_to(struct fixture *fx, const uint64_t *eids, size_t n, double q)
{
    double sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += fx_estats(fx, eids[i]).slice_ns;
    assert_near(sum, q, q * 1e-9, "sum of slices");
}

/* A hook that resubmits only for the entity *(uint64_t *)hook_arg. */
static void resubmit_for_one(struct fixture *fx, const struct etf_task_record *rec)
{
    if (rec->status == 0 && rec->eid == *(const uint64_t *)fx->hook_arg) {
        struct etf_request req = {.mid = rec->mid};
        if (etf_submit(fx->s, &req, NULL, NULL))
            fx->resubmit_errors++;
    }
}

/* ---- 1. Creation and policy ---- */

static void expect_create_einval(const struct etf_sched_config *cfg, const char *field)
{
    struct etf_sched *s = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_sched_create(cfg, &s, &diag), ETF_EINVAL);
    assert_null(s);
    if (!strstr(diag.msg, field))
        fail_msg("message \"%s\" does not name %s", diag.msg, field);
}

static void create_rejects_bad_phi_quantum_and_device_naming_the_field(void **state)
{
    struct etf_device *dev = NULL;
    assert_int_equal(etf_device_open("sim", NULL, &dev, NULL), 0);
    struct etf_sched_config ok = {.quantum_ns = 10 * MS, .phi = 0.5, .device = dev};

    struct etf_sched_config c = ok;
    c.phi = -0.01;
    expect_create_einval(&c, "phi");
    c.phi = 1.01;
    expect_create_einval(&c, "phi");
    c.phi = NAN;
    expect_create_einval(&c, "phi");
    c.phi = INFINITY;
    expect_create_einval(&c, "phi");
    c = ok;
    c.quantum_ns = 0;
    expect_create_einval(&c, "quantum");
    c = ok;
    c.device = NULL;
    expect_create_einval(&c, "device");
    struct etf_sched *s = NULL;
    assert_int_equal(etf_sched_create(NULL, &s, NULL), ETF_EINVAL);

    /* The bounds themselves are valid. */
    for (int i = 0; i <= 1; i++) {
        c = ok;
        c.phi = i;
        assert_int_equal(etf_sched_create(&c, &s, NULL), 0);
        etf_sched_destroy(s);
        s = NULL;
    }
    etf_device_close(dev);
}

static void set_policy_validates_like_create(void **state)
{
    struct fixture *fx = fx_new(0.5, 10 * MS);
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_sched_set_policy(fx->s, 10 * MS, -0.5, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "phi"));
    assert_int_equal(etf_sched_set_policy(fx->s, 10 * MS, 1.5, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "phi"));
    assert_int_equal(etf_sched_set_policy(fx->s, 10 * MS, NAN, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "phi"));
    memset(&diag, 0, sizeof diag);
    assert_int_equal(etf_sched_set_policy(fx->s, 0, 0.5, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "quantum"));
    assert_int_equal(etf_sched_set_policy(fx->s, 1, 0, &diag), 0);
    assert_int_equal(etf_sched_set_policy(fx->s, 5 * MS, 1, NULL), 0);
    fx_free(fx);
}

/* ---- 2. Entities ---- */

static void entity_nice_range_is_minus20_to_19_with_cfs_weights(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    struct etf_diag diag = {{0}};
    uint64_t eid = 0;
    assert_int_equal(etf_entity_create(fx->s, -21, &eid, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "-21"));
    assert_int_equal(etf_entity_create(fx->s, 20, &eid, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "20"));
    assert_int_equal(etf_entity_create(fx->s, INT64_MIN, &eid, NULL), ETF_EINVAL);
    assert_int_equal(etf_entity_create(fx->s, (int64_t)1 << 32, &eid, NULL), ETF_EINVAL);

    uint64_t hi = fx_entity(fx, -20), lo = fx_entity(fx, 19), mid = fx_entity(fx, 0);
    struct etf_entity_stats st = fx_estats(fx, hi);
    assert_int_equal(st.nice, -20);
    assert_int_equal(st.weight, 88761);
    assert_false(st.runnable);
    assert_true(st.slice_ns == 0);
    st = fx_estats(fx, lo);
    assert_int_equal(st.nice, 19);
    assert_int_equal(st.weight, 15);
    assert_int_equal(fx_estats(fx, mid).weight, 1024);

    assert_int_equal(etf_entity_set_priority(fx->s, mid, -21, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "-21"));
    assert_int_equal(etf_entity_set_priority(fx->s, mid, 20, NULL), ETF_EINVAL);
    assert_int_equal(fx_estats(fx, mid).weight, 1024);
    assert_int_equal(etf_entity_set_priority(fx->s, mid, 5, NULL), 0);
    assert_int_equal(fx_estats(fx, mid).nice, 5);
    assert_int_equal(fx_estats(fx, mid).weight, 335);
    assert_int_equal(fx_sstats(fx).entities, 3);
    fx_free(fx);
}

static void unknown_entity_is_enoent_everywhere(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t bad = eid + 100;
    struct etf_diag diag = {{0}};
    struct etf_entity_stats st;
    assert_int_equal(etf_entity_set_priority(fx->s, bad, 0, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "101"));
    assert_int_equal(etf_entity_delete(fx->s, bad, NULL), ETF_ENOENT);
    assert_int_equal(etf_entity_stats(fx->s, bad, &st), ETF_ENOENT);
    assert_int_equal(etf_entity_stats(fx->s, 0, &st), ETF_ENOENT);

    struct etf_profile *p = prof_uniform("m", 1, GHZ, 10, 1000);
    struct etf_model_spec spec = {.profile = p};
    uint64_t mid = 0;
    assert_int_equal(etf_model_load(fx->s, bad, &spec, &mid, &diag), ETF_ENOENT);
    etf_profile_free(p); /* ownership moves on success only */
    assert_int_equal(fx_sstats(fx).models, 0);
    fx_free(fx);
}

static void entity_delete_is_ebusy_while_a_model_is_loaded(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform("m", 1, GHZ, 10, 1000), 0);
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_entity_delete(fx->s, eid, &diag), ETF_EBUSY);
    assert_non_null(strstr(diag.msg, "model"));
    assert_int_equal(etf_model_unload(fx->s, mid, NULL), 0);
    assert_int_equal(etf_model_unload(fx->s, mid, NULL), ETF_ENOENT);
    assert_int_equal(etf_entity_delete(fx->s, eid, NULL), 0);
    assert_int_equal(etf_entity_delete(fx->s, eid, NULL), ETF_ENOENT);
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.entities, 0);
    assert_int_equal(ss.models, 0);
    fx_free(fx);
}

static void entity_and_model_ids_are_never_reused(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t seen_e[40], seen_m[40];
    for (size_t i = 0; i < 40; i++) {
        seen_e[i] = fx_entity(fx, 0);
        seen_m[i] = fx_model(fx, seen_e[i], prof_uniform("m", 1, GHZ, 10, 1000), 0);
        for (size_t j = 0; j < i; j++) {
            assert_true(seen_e[j] != seen_e[i]);
            assert_true(seen_m[j] != seen_m[i]);
        }
        /* Delete every other one so that the id maps have holes to refill, if they would. */
        if (i % 2 == 0) {
            assert_int_equal(etf_model_unload(fx->s, seen_m[i], NULL), 0);
            assert_int_equal(etf_entity_delete(fx->s, seen_e[i], NULL), 0);
        }
    }
    /* Deleted ids stay dead. */
    struct etf_entity_stats st;
    struct etf_model_stats ms;
    assert_int_equal(etf_entity_stats(fx->s, seen_e[0], &st), ETF_ENOENT);
    assert_int_equal(etf_model_stats(fx->s, seen_m[0], &ms), ETF_ENOENT);
    assert_int_equal(etf_entity_stats(fx->s, seen_e[1], &st), 0);
    /* Task ids too. */
    uint64_t t1 = fx_submit(fx, seen_m[1]), t2 = fx_submit(fx, seen_m[3]);
    fx_drain(fx, 100);
    uint64_t t3 = fx_submit(fx, seen_m[1]);
    assert_true(t1 < t2 && t2 < t3);
    fx_free(fx);
}

/* ---- 3. Models ---- */

static void model_frequency_outside_profile_is_einval_naming_it(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t freqs[] = {500 * MHZ, GHZ};
    double t[] = {20, 10}, p[] = {500, 1000};
    struct etf_profile *prof = prof_uniform_freqs("r18", 2, 2, freqs, t, p);
    struct etf_model_spec spec = {.profile = prof, .freq_hz = 726750000};
    struct etf_diag diag = {{0}};
    uint64_t mid = 0;
    assert_int_equal(etf_model_load(fx->s, eid, &spec, &mid, &diag), ETF_EINVAL);
    if (!strstr(diag.msg, "726750000") || !strstr(diag.msg, "Hz"))
        fail_msg("message does not name the frequency: %s", diag.msg);
    /* The profile is still the caller's: a covered frequency now loads. */
    spec.freq_hz = 500 * MHZ;
    assert_int_equal(etf_model_load(fx->s, eid, &spec, &mid, &diag), 0);
    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(fx->s, mid, &ms), 0);
    assert_int_equal(ms.freq_hz, 500 * MHZ);
    fx_free(fx);
}

static void model_without_power_runs_and_charges_no_energy(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    struct etf_profile *prof = prof_uniform("nopower", 2, GHZ, 10, 0);
    assert_false(prof->has_power);
    uint64_t mid = fx_model(fx, eid, prof, GHZ);
    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(fx->s, mid, &ms), 0);
    assert_false(ms.has_power);
    assert_int_equal(ms.kernels, 2);
    fx_submit(fx, mid);
    fx_drain(fx, 100);
    assert_int_equal(etf_model_stats(fx->s, mid, &ms), 0);
    assert_int_equal(ms.tasks_done, 1);
    assert_int_equal(ms.time_ns, 20000);
    assert_int_equal(ms.energy_nj, 0);
    fx_free(fx);
}

/* A tenant that is done unloads its model and deletes itself from inside the completion
 * of its last task, while that task's turn is still finishing: it must succeed. */
static void delete_from_the_last_completion(struct fixture *fx, const struct etf_task_record *rec)
{
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_model_unload(fx->s, rec->mid, &diag), 0);
    if (etf_entity_delete(fx->s, rec->eid, &diag) != 0)
        fail_msg("deleting the entity from on_done: %s", diag.msg);
    *(bool *)fx->hook_arg = true;
}

static void entity_deleted_from_on_done_is_gone(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform("m", 2, GHZ, 10, 1000), GHZ);
    bool deleted = false;
    fx->hook = delete_from_the_last_completion;
    fx->hook_arg = &deleted;
    fx_submit(fx, mid);
    fx_drain(fx, 100);
    assert_true(deleted);
    struct etf_entity_stats st;
    assert_int_equal(etf_entity_stats(fx->s, eid, &st), ETF_ENOENT);
    assert_int_equal(fx_sstats(fx).runnable, 0);
    fx_free(fx);
}

/* At phi = 0 slices go as 1 / power. A tenant whose power is unknown (no power figures,
 * nothing measured) must count at the power typical of the others, not at a constant that
 * can be orders of magnitude off and starve whoever is known. */
static void unknown_power_counts_at_the_typical_power(void **state)
{
    struct fixture *fx = fx_new(0, 10 * MS);
    uint64_t known = fx_entity(fx, 0), unknown = fx_entity(fx, 0);
    uint64_t mk = fx_model(fx, known, prof_uniform("hot", 4, GHZ, 100, 400000), GHZ);
    uint64_t mu = fx_model(fx, unknown, prof_uniform("nopower", 4, GHZ, 100, 0), GHZ);
    fx->resubmit = true;
    fx->keep_records = false;
    backlog(fx, mk, 2);
    backlog(fx, mu, 2);
    for (int i = 0; i < 50; i++)
        fx_step(fx);
    struct etf_entity_stats k = fx_estats(fx, known), u = fx_estats(fx, unknown);
    assert_near(u.power_mw, k.power_mw, 0.05 * k.power_mw, "the unknown tenant's power");
    assert_near(u.slice_ns, k.slice_ns, 0.05 * k.slice_ns, "the unknown tenant's slice");
    fx_free(fx);
}

/* A controller whose switch to one frequency moves the clock but then fails, as devfreq
 * does when min and max are pinned and cur_freq never follows. */
struct flaky_freq {
    struct etf_freq base;
    uint64_t current, fail_hz;
    unsigned sets;
};

static int flaky_set(struct etf_freq *f, uint64_t hz)
{
    struct flaky_freq *ff = (struct flaky_freq *)f;
    ff->sets++;
    ff->current = hz;
    return hz == ff->fail_hz ? ETF_EDEVICE : 0;
}

static int flaky_get(struct etf_freq *f, uint64_t *hz)
{
    *hz = ((struct flaky_freq *)f)->current;
    return 0;
}

static const struct etf_freq_ops flaky_ops = {
    .name = "flaky", .caps = ETF_FREQ_CAP_SET, .set = flaky_set, .get = flaky_get};

/* After a failed switch the clock is wherever the failure left it: a later kernel at the
 * frequency the scheduler believed in force must switch again, not run at the wrong one. */
static void failed_switch_forgets_the_clock(void **state)
{
    const uint64_t a = 500 * MHZ, b = GHZ;
    struct flaky_freq ff = {.base = {.ops = &flaky_ops}, .current = a, .fail_hz = b};
    struct etf_vclock vc = {0};
    struct etf_clock clock = etf_vclock_as_clock(&vc);
    struct etf_device_config dc = {.vclock = &vc};
    struct etf_device *dev;
    assert_int_equal(etf_device_open("sim", &dc, &dev, NULL), 0);
    struct etf_sched_config cfg = {
        .quantum_ns = 10 * MS, .phi = 1, .clock = &clock, .device = dev, .freq = &ff.base};
    struct etf_sched *s;
    assert_int_equal(etf_sched_create(&cfg, &s, NULL), 0);
    uint64_t freqs[2] = {a, b};
    double times[2] = {10, 10}, powers[2] = {1000, 1000};
    uint64_t eid, m_b, m_a;
    struct etf_model_spec spec_b = {.profile = prof_uniform_freqs("b", 2, 2, freqs, times, powers),
                                    .freq_hz = b};
    struct etf_model_spec spec_a = {.profile = prof_uniform_freqs("a", 2, 2, freqs, times, powers),
                                    .freq_hz = a};
    assert_int_equal(etf_entity_create(s, 0, &eid, NULL), 0);
    assert_int_equal(etf_model_load(s, eid, &spec_b, &m_b, NULL), 0);
    assert_int_equal(etf_model_load(s, eid, &spec_a, &m_a, NULL), 0);
    assert_int_equal(etf_submit(s, &(struct etf_request){.mid = m_b}, NULL, NULL), 0);
    assert_int_equal(etf_submit(s, &(struct etf_request){.mid = m_a}, NULL, NULL), 0);
    bool ran = true;
    for (int i = 0; i < 10 && ran; i++)
        etf_sched_step(s, &ran);
    assert_int_equal(ff.sets, 2);    /* to b (failed), then back to a */
    assert_int_equal(ff.current, a); /* model a's kernels ran at a */
    struct etf_sched_stats st;
    etf_sched_stats(s, &st);
    assert_int_equal(st.freq_errors, 1);
    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(s, m_a, &ms), 0);
    assert_int_equal(ms.tasks_done, 1);
    etf_sched_destroy(s);
    etf_device_close(dev);
}

static void model_needs_a_profile_or_a_plan(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0), mid = 0;
    struct etf_model_spec spec = {.freq_hz = GHZ};
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_model_load(fx->s, eid, &spec, &mid, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "profile"));
    fx_free(fx);
}

static uint64_t default_freq_with(const char *freq, uint64_t initial_hz)
{
    struct fx_config c = {.phi = 1, .quantum_ns = MS, .freq = freq, .initial_hz = initial_hz};
    struct fixture *fx = fx_new_ex(&c);
    uint64_t freqs[] = {400 * MHZ, 800 * MHZ, 1200 * MHZ};
    double t[] = {30, 20, 10}, p[] = {300, 600, 900};
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform_freqs("m", 1, 3, freqs, t, p), 0);
    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(fx->s, mid, &ms), 0);
    /* The task runs, and is charged, at that frequency. */
    fx_submit(fx, mid);
    fx_drain(fx, 10);
    assert_int_equal(fx->n_recs, 1);
    assert_int_equal(fx->recs[0].freq_hz, ms.freq_hz);
    long fi = ms.freq_hz == 400 * MHZ ? 0 : ms.freq_hz == 800 * MHZ ? 1 : 2;
    assert_int_equal(fx->recs[0].service_ns, (uint64_t)(t[fi] * 1000));
    assert_int_equal(fx->recs[0].energy_nj, (uint64_t)(t[fi] * p[fi]));
    fx_free(fx);
    return ms.freq_hz;
}

static void model_default_frequency_is_current_if_covered_else_highest(void **state)
{
    /* The controller reports nothing: the profile's highest. */
    assert_int_equal(default_freq_with("sim", 0), 1200 * MHZ);
    assert_int_equal(default_freq_with("none", 0), 1200 * MHZ);
    assert_int_equal(default_freq_with("", 0), 1200 * MHZ);
    /* It reports a covered frequency: that one. */
    assert_int_equal(default_freq_with("sim", 800 * MHZ), 800 * MHZ);
    /* It reports one the profile lacks: the highest again. */
    assert_int_equal(default_freq_with("sim", 900 * MHZ), 1200 * MHZ);
}

static void model_stats_report_name_owner_frequency_and_totals(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t m1 = fx_model(fx, eid, prof_uniform("resnet18", 2, GHZ, 10, 1000), 0);
    struct etf_profile *p = prof_uniform("ignored", 3, GHZ, 20, 500);
    struct etf_model_spec spec = {.name = "custom", .profile = p, .freq_hz = GHZ};
    uint64_t m2 = 0;
    assert_int_equal(etf_model_load(fx->s, eid, &spec, &m2, NULL), 0);

    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(fx->s, m1, &ms), 0);
    assert_int_equal(ms.mid, m1);
    assert_int_equal(ms.eid, eid);
    assert_string_equal(ms.name, "resnet18");
    assert_int_equal(ms.freq_hz, GHZ);
    assert_int_equal(ms.tasks_done + ms.tasks_queued + ms.time_ns + ms.energy_nj, 0);
    assert_int_equal(etf_model_stats(fx->s, m2, &ms), 0);
    assert_string_equal(ms.name, "custom");

    fx_submit(fx, m1);
    fx_submit(fx, m2);
    fx_submit(fx, m2);
    assert_int_equal(etf_model_stats(fx->s, m2, &ms), 0);
    assert_int_equal(ms.tasks_queued, 2);
    fx_drain(fx, 10);
    assert_int_equal(etf_model_stats(fx->s, m1, &ms), 0);
    assert_int_equal(ms.tasks_done, 1);
    assert_int_equal(ms.tasks_queued, 0);
    assert_int_equal(ms.time_ns, 20000);
    assert_int_equal(ms.energy_nj, 20000);
    assert_int_equal(etf_model_stats(fx->s, m2, &ms), 0);
    assert_int_equal(ms.tasks_done, 2);
    assert_int_equal(ms.time_ns, 2 * 60000);
    assert_int_equal(ms.energy_nj, 2 * 30000);
    assert_int_equal(etf_model_stats(fx->s, m2 + 1, &ms), ETF_ENOENT);
    fx_free(fx);
}

/* ---- 4. Submission ---- */

static void submit_to_unknown_model_is_enoent(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    struct etf_diag diag = {{0}};
    struct etf_request req = {.mid = 42};
    uint64_t tid = 7;
    assert_int_equal(etf_submit(fx->s, &req, &tid, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "42"));
    assert_int_equal(tid, 7);
    assert_int_equal(etf_submit(fx->s, NULL, &tid, NULL), ETF_EINVAL);
    assert_int_equal(fx_sstats(fx).tasks_queued, 0);
    fx_free(fx);
}

static void submit_beyond_max_queued_tasks_is_elimit(void **state)
{
    struct fx_config c = {.phi = 1, .quantum_ns = 10 * MS, .max_queued_tasks = 3};
    struct fixture *fx = fx_new_ex(&c);
    uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
    uint64_t ma = std_model(fx, a, 1000), mb = std_model(fx, b, 1000);
    fx_submit(fx, ma);
    fx_submit(fx, mb);
    fx_submit(fx, ma);
    struct etf_diag diag = {{0}};
    struct etf_request req = {.mid = mb};
    assert_int_equal(etf_submit(fx->s, &req, NULL, &diag), ETF_ELIMIT);
    assert_non_null(strstr(diag.msg, "3"));
    assert_int_equal(fx_sstats(fx).tasks_queued, 3);
    /* The limit counts queued tasks: finishing some makes room. */
    fx_drain(fx, 100);
    assert_int_equal(fx->n_done, 3);
    fx_submit(fx, mb);
    fx_free(fx);
}

static void step_with_nothing_runnable_runs_nothing(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    bool ran = true;
    assert_int_equal(etf_sched_step(fx->s, &ran), 0);
    assert_false(ran);
    uint64_t eid = fx_entity(fx, 0);
    std_model(fx, eid, 1000);
    ran = true;
    assert_int_equal(etf_sched_step(fx->s, &ran), 0);
    assert_false(ran);
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.turns + ss.dispatches + ss.busy_ns, 0);
    assert_int_equal(fx->vc.now_ns, 0);
    fx_free(fx);
}

/* ---- 5. Accounting ---- */

static void single_entity_accounting_is_exact_and_fcfs(void **state)
{
    struct fixture *fx = fx_new(1, MS);
    uint64_t eid = fx_entity(fx, 0);
    /* Three kernels: 10, 20, 30 µs at 1000, 2000, 3000 mW. A task takes 60 µs and
     * 10*1000 + 20*2000 + 30*3000 = 140000 nJ. */
    uint64_t hz = GHZ;
    double t[] = {10, 20, 30}, p[] = {1000, 2000, 3000};
    uint64_t mid = fx_model(fx, eid, prof_make("acc", 3, 1, &hz, t, p), GHZ);

    fx->vc.now_ns = 1000;
    uint64_t tids[5];
    for (uintptr_t i = 0; i < 5; i++) {
        /* The last one arrived earlier than it was handed over (a late-injected arrival). */
        struct etf_request req = {
            .mid = mid, .submit_ns = i == 4 ? 500 : 0, .user = (void *)(i + 1)};
        assert_int_equal(etf_submit(fx->s, &req, &tids[i], NULL), 0);
    }
    assert_int_equal(fx_estats(fx, eid).tasks_queued, 5);
    assert_true(fx_estats(fx, eid).runnable);
    assert_int_equal(fx_drain(fx, 100), 1); /* 300 µs of work fits one 1 ms turn */

    assert_int_equal(fx->n_recs, 5);
    for (size_t i = 0; i < 5; i++) {
        const struct etf_task_record *r = &fx->recs[i];
        assert_int_equal(r->tid, tids[i]);
        assert_int_equal(r->status, 0);
        assert_int_equal(r->eid, eid);
        assert_int_equal(r->mid, mid);
        assert_ptr_equal(r->user, (void *)(uintptr_t)(i + 1));
        assert_int_equal(r->submit_ns, i == 4 ? 500 : 1000);
        assert_int_equal(r->start_ns, 1000 + i * 60000);
        assert_int_equal(r->end_ns, r->start_ns + 60000);
        assert_int_equal(r->service_ns, 60000);
        assert_int_equal(r->energy_nj, 140000);
        assert_int_equal(r->freq_hz, GHZ);
    }
    assert_int_equal(fx->vc.now_ns, 1000 + 5 * 60000);

    struct etf_entity_stats es = fx_estats(fx, eid);
    assert_int_equal(es.tasks_done, 5);
    assert_int_equal(es.tasks_queued, 0);
    assert_false(es.runnable);
    assert_int_equal(es.time_ns, 300000);
    assert_int_equal(es.energy_nj, 700000);
    assert_near(es.power_mw, 140000.0 / 60000.0 * 1000.0, 1e-9, "measured power");

    struct etf_model_stats ms;
    assert_int_equal(etf_model_stats(fx->s, mid, &ms), 0);
    assert_int_equal(ms.tasks_done, 5);
    assert_int_equal(ms.time_ns, 300000);
    assert_int_equal(ms.energy_nj, 700000);

    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.dispatches, 15);
    assert_int_equal(ss.turns, 1);
    assert_int_equal(ss.allocations, 1);
    assert_int_equal(ss.busy_ns, 300000);
    assert_int_equal(ss.energy_nj, 700000);
    assert_int_equal(ss.entities, 1);
    assert_int_equal(ss.models, 1);
    assert_int_equal(ss.runnable, 0);
    assert_int_equal(ss.tasks_queued, 0);
    fx_free(fx);
}

static void each_kernel_is_charged_its_own_power_mid_task(void **state)
{
    /* A 15 µs slice stops after kernels 10 µs at 1000 mW and 20 µs at 2000 mW: 50000 nJ, not
     * 30 µs at the task's average 2333 mW. */
    struct fixture *fx = fx_new(1, 15 * 1000);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t hz = GHZ;
    double t[] = {10, 20, 30}, p[] = {1000, 2000, 3000};
    uint64_t mid = fx_model(fx, eid, prof_make("acc", 3, 1, &hz, t, p), GHZ);
    fx_submit(fx, mid);
    assert_true(fx_step(fx));
    struct etf_entity_stats es = fx_estats(fx, eid);
    assert_int_equal(es.time_ns, 30000);
    assert_int_equal(es.energy_nj, 50000);
    assert_int_equal(es.tasks_done, 0);
    assert_int_equal(fx->n_done, 0);
    assert_true(fx_step(fx)); /* kernel 2: 30 µs at 3000 mW */
    assert_int_equal(fx->n_done, 1);
    assert_int_equal(fx->recs[0].energy_nj, 140000);
    assert_int_equal(fx->recs[0].start_ns, 0);
    assert_int_equal(fx->recs[0].end_ns, 60000);
    assert_int_equal(fx_sstats(fx).turns, 2);
    fx_free(fx);
}

static void accounting_adds_up_across_turns_entities_and_models(void **state)
{
    /* Short slices split tasks across turns; the totals still add up exactly. */
    struct fixture *fx = fx_new(0.5, 120 * 1000);
    uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 3);
    uint64_t ma1 = std_model(fx, a, 1000), ma2 = std_model(fx, a, 2500), mb = std_model(fx, b, 700);
    for (int i = 0; i < 20; i++) {
        fx_submit(fx, ma1);
        fx_submit(fx, ma2);
        fx_submit(fx, mb);
    }
    fx_drain(fx, 100000);
    assert_int_equal(fx->n_recs, 60);
    uint64_t t_sum = 0, e_sum = 0, ea = 0, eb = 0;
    uint64_t last_end_a = 0, last_end_b = 0, last_tid_a = 0, last_tid_b = 0;
    for (size_t i = 0; i < fx->n_recs; i++) {
        const struct etf_task_record *r = &fx->recs[i];
        assert_int_equal(r->status, 0);
        assert_int_equal(r->service_ns, 200000);
        double pw = r->mid == ma1 ? 1000 : r->mid == ma2 ? 2500 : 700;
        assert_int_equal(r->energy_nj, (uint64_t)(200 * pw));
        assert_true(r->submit_ns <= r->start_ns);
        assert_true(r->start_ns + r->service_ns <= r->end_ns);
        assert_true(r->end_ns <= fx->vc.now_ns);
        /* FCFS within an entity. */
        if (r->eid == a) {
            assert_true(r->tid > last_tid_a && r->start_ns >= last_end_a);
            last_tid_a = r->tid;
            last_end_a = r->end_ns;
            ea += r->energy_nj;
        } else {
            assert_true(r->tid > last_tid_b && r->start_ns >= last_end_b);
            last_tid_b = r->tid;
            last_end_b = r->end_ns;
            eb += r->energy_nj;
        }
        t_sum += r->service_ns;
        e_sum += r->energy_nj;
    }
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.busy_ns, t_sum);
    assert_int_equal(ss.energy_nj, e_sum);
    assert_int_equal(ss.busy_ns, fx->vc.now_ns); /* the device never idled */
    assert_int_equal(ss.dispatches, 60 * 4);
    assert_int_equal(fx_estats(fx, a).energy_nj, ea);
    assert_int_equal(fx_estats(fx, b).energy_nj, eb);
    assert_int_equal(fx_estats(fx, a).time_ns + fx_estats(fx, b).time_ns, t_sum);
    struct etf_model_stats m1, m2;
    assert_int_equal(etf_model_stats(fx->s, ma1, &m1), 0);
    assert_int_equal(etf_model_stats(fx->s, ma2, &m2), 0);
    assert_int_equal(m1.energy_nj + m2.energy_nj, ea);
    assert_int_equal(m1.tasks_done + m2.tasks_done, fx_estats(fx, a).tasks_done);
    fx_free(fx);
}

/* ---- 6. Fairness ---- */

static void fairness_run(double phi, const int *nice, const double *power, size_t n,
                         double *time_out, double *energy_out, uint32_t *weights)
{
    struct fixture *fx = fx_new(phi, 10 * MS);
    fx->keep_records = false;
    fx->resubmit = true;
    uint64_t eids[8] = {0};
    for (size_t i = 0; i < n; i++) {
        eids[i] = fx_entity(fx, nice[i]);
        backlog(fx, std_model(fx, eids[i], power[i]), 2);
        weights[i] = etf_nice_to_weight(nice[i]);
    }
    run_window(fx, eids, n, 10 * SEC, time_out, energy_out);
    assert_int_equal(fx->resubmit_errors, 0);
    assert_slices_sum_to(fx, eids, n, 10 * MS);
    for (size_t i = 0; i < n; i++)
        assert_true(fx_estats(fx, eids[i]).runnable);
    fx_free(fx);
}

static void time_fair_two_entities_share_by_weight(void **state)
{
    int nice[] = {0, 5};
    double power[] = {1000, 3000}; /* ignored at phi = 1 */
    double t[2], e[2];
    uint32_t w[2];
    fairness_run(1, nice, power, 2, t, e, w);
    assert_shares(t, w, 2, 0.01, "time");
    assert_near(t[0] / (t[0] + t[1]), 1024.0 / 1359.0, 0.01, "nice 0 vs nice 5");
}

static void time_fair_three_entities_share_by_weight(void **state)
{
    int nice[] = {-5, 0, 10};
    double power[] = {1000, 2000, 4000};
    double t[3], e[3];
    uint32_t w[3];
    fairness_run(1, nice, power, 3, t, e, w);
    assert_shares(t, w, 3, 0.01, "time");
}

static void energy_fair_two_entities_equal_energy_per_weight(void **state)
{
    int nice[] = {0, 5};
    double power[] = {1000, 3000};
    double t[2], e[2];
    uint32_t w[2];
    fairness_run(0, nice, power, 2, t, e, w);
    assert_energy_fair(e, w, 2, 0.01);
}

static void energy_fair_three_entities_equal_energy_per_weight(void **state)
{
    int nice[] = {0, 5, -3};
    double power[] = {1000, 2000, 4000};
    double t[3], e[3];
    uint32_t w[3];
    fairness_run(0, nice, power, 3, t, e, w);
    assert_energy_fair(e, w, 3, 0.01);
}

static void slices_respect_time_floors_and_sum_to_quantum(void **state)
{
    struct fixture *fx = fx_new(0.5, 10 * MS);
    int nice[] = {0, 5, -3};
    double power[] = {1000, 2000, 4000};
    uint64_t eids[3];
    double wsum = 0;
    for (size_t i = 0; i < 3; i++) {
        eids[i] = fx_entity(fx, nice[i]);
        backlog(fx, std_model(fx, eids[i], power[i]), 100); /* all stay runnable */
        wsum += etf_nice_to_weight(nice[i]);
    }
    const double phis[] = {0.5, 0, 0.1, 0.9, 1};
    for (size_t k = 0; k < 5; k++) {
        assert_int_equal(etf_sched_set_policy(fx->s, 10 * MS, phis[k], NULL), 0);
        fx_step(fx);
        assert_slices_sum_to(fx, eids, 3, 10 * MS);
        for (size_t i = 0; i < 3; i++) {
            struct etf_entity_stats st = fx_estats(fx, eids[i]);
            double floor = phis[k] * 10 * MS * st.weight / wsum;
            if (!(st.slice_ns >= floor * (1 - 1e-12)))
                fail_msg("phi %g: entity %zu has slice %.9g below its floor %.9g", phis[k], i,
                         st.slice_ns, floor);
        }
    }
    fx_free(fx);
}

/* ---- 7. Overrun ---- */

static void overrun_run(uint64_t quantum_ns, size_t steps, uint64_t want_dispatches)
{
    struct fixture *fx = fx_new(1, quantum_ns);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform("m", 4, GHZ, 100, 1000), GHZ);
    backlog(fx, mid, 10); /* 40 kernels of 100 µs */
    for (size_t i = 0; i < steps; i++)
        assert_true(fx_step(fx));
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.turns, steps);
    assert_int_equal(ss.dispatches, want_dispatches);
    assert_int_equal(fx->vc.now_ns, want_dispatches * 100000);
    /* vruntime advanced by used / slice every turn. */
    double per_turn = (double)want_dispatches / steps * 100000.0 / (double)quantum_ns;
    assert_near(fx_estats(fx, eid).vruntime, per_turn * steps, 1e-9, "vruntime");
    fx_free(fx);
}

static void slice_below_one_kernel_runs_exactly_one_kernel_per_turn(void **state)
{
    overrun_run(30 * 1000, 10, 10);
}

static void slice_of_two_and_a_half_kernels_runs_three_per_turn(void **state)
{
    overrun_run(250 * 1000, 5, 15);
}

static void slice_of_exactly_two_kernels_runs_two_per_turn(void **state)
{
    overrun_run(200 * 1000, 5, 10);
}

/* ---- 8. Joins ---- */

static void rejoin_keeps_own_vruntime_or_takes_min_vruntime(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS); /* two nice-0 entities: 5 ms slices */
    uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
    uint64_t ma = std_model(fx, a, 1000);
    /* b's tasks: one kernel of 300 µs; 17 of them = 5.1 ms, one slice plus overrun. */
    uint64_t mb = fx_model(fx, b, prof_uniform("b", 1, GHZ, 300, 1000), GHZ);
    fx->hook = resubmit_for_one;
    fx->hook_arg = &a;
    backlog(fx, ma, 2);
    backlog(fx, mb, 17);

    assert_true(fx_step(fx)); /* a: 5 ms, vruntime 1 */
    assert_near(fx_estats(fx, a).vruntime, 1.0, 1e-12, "a after its turn");
    assert_true(fx_step(fx)); /* b: 5.1 ms, vruntime 1.02, queue empty: leaves */
    struct etf_entity_stats sb = fx_estats(fx, b);
    assert_false(sb.runnable);
    assert_near(sb.vruntime, 1.02, 1e-12, "b after its turn");

    /* Rejoining above min_vruntime (= a's 1.0) keeps its own vruntime. */
    fx_submit(fx, mb);
    sb = fx_estats(fx, b);
    assert_true(sb.runnable);
    assert_near(sb.vruntime, 1.02, 1e-12, "b rejoining above min_vruntime");

    assert_true(fx_step(fx)); /* a: vruntime 2 */
    assert_true(fx_step(fx)); /* b: its one task, leaves again at 1.02 + 0.06 */
    assert_false(fx_estats(fx, b).runnable);
    assert_true(fx_step(fx)); /* a: 3 */
    assert_true(fx_step(fx)); /* a: 4 */
    assert_near(fx_estats(fx, a).vruntime, 4.0, 1e-12, "a after running alone");

    /* Rejoining below min_vruntime takes min_vruntime: no credit for the time away. */
    fx_submit(fx, mb);
    assert_near(fx_estats(fx, b).vruntime, 4.0, 1e-12, "b rejoining below min_vruntime");
    fx_free(fx);
}

/* a runs alone until `until`, then b arrives with a backlog while a keeps one; returns the
 * shares of the next window. a_backlogged: a keeps a queue (it never leaves) instead of
 * submitting one request at a time and waiting for its answer. */
struct join_result {
    double share_a, share_b;
    double vruntime_a, vruntime_b; /* right after b joined */
};

static struct join_result join_after_solo_run(bool a_backlogged)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    fx->keep_records = false;
    uint64_t eids[2] = {fx_entity(fx, 0), fx_entity(fx, 0)};
    uint64_t ma = std_model(fx, eids[0], 1000), mb = std_model(fx, eids[1], 1000);
    if (a_backlogged) {
        fx->resubmit = true;
        backlog(fx, ma, 2);
        fx_run_until(fx, 5 * SEC);
    } else {
        /* Request-response: one 200 µs task, wait for its answer, send the next. */
        while (fx->vc.now_ns < 5 * SEC) {
            fx_submit(fx, ma);
            fx_drain(fx, 10);
        }
        fx->resubmit = true;
        backlog(fx, ma, 2);
    }
    assert_int_equal(fx_estats(fx, eids[0]).time_ns, fx->vc.now_ns);
    backlog(fx, mb, 2);
    struct join_result r = {
        .vruntime_a = fx_estats(fx, eids[0]).vruntime,
        .vruntime_b = fx_estats(fx, eids[1]).vruntime,
    };
    double t[2], e[2];
    run_window(fx, eids, 2, SEC, t, e);
    r.share_a = t[0] / (t[0] + t[1]);
    r.share_b = t[1] / (t[0] + t[1]);
    fx_free(fx);
    return r;
}

static void assert_join_fair(struct join_result r)
{
    if (fabs(r.share_a - 0.5) > 0.02 || fabs(r.share_b - 0.5) > 0.02)
        fail_msg("after the join the long-running entity got %.1f%% and the newcomer %.1f%% of "
                 "the next second (expected 50%% +- 2%%); vruntimes at the join: %.4g and %.4g",
                 100 * r.share_a, 100 * r.share_b, r.vruntime_a, r.vruntime_b);
}

static void join_after_backlogged_solo_run_neither_starves(void **state)
{
    assert_join_fair(join_after_solo_run(true));
}

/* The entity that ran alone emptied its queue after every task. It left the run queue each
 * time, so nothing may be left behind that lets a newcomer claim the time it was alone. */
static void join_after_request_response_solo_run_neither_starves(void **state)
{
    assert_join_fair(join_after_solo_run(false));
}

/* ---- 9. Priority and policy changes ---- */

static void priority_change_mid_run_shares_follow_new_weights(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    fx->keep_records = false;
    fx->resubmit = true;
    uint64_t eids[2] = {fx_entity(fx, 0), fx_entity(fx, 0)};
    backlog(fx, std_model(fx, eids[0], 1000), 2);
    backlog(fx, std_model(fx, eids[1], 1000), 2);
    double t[2], e[2];
    uint32_t w[2] = {1024, 1024};
    run_window(fx, eids, 2, 4 * SEC, t, e);
    assert_shares(t, w, 2, 0.01, "time before the change");

    assert_int_equal(etf_entity_set_priority(fx->s, eids[1], 5, NULL), 0);
    w[1] = 335;
    run_window(fx, eids, 2, 4 * SEC, t, e);
    assert_shares(t, w, 2, 0.01, "time after nice 0 -> 5");
    assert_near(fx_estats(fx, eids[1]).slice_ns, 10.0 * MS * 335 / 1359, 1, "new slice");

    assert_int_equal(etf_entity_set_priority(fx->s, eids[1], -5, NULL), 0);
    w[1] = 3121;
    run_window(fx, eids, 2, 4 * SEC, t, e);
    assert_shares(t, w, 2, 0.01, "time after nice 5 -> -5");
    fx_free(fx);
}

static void slices_are_recomputed_only_when_their_inputs_change(void **state)
{
    struct fixture *fx = fx_new(1, 10 * MS);
    fx->keep_records = false;
    fx->resubmit = true;
    uint64_t eids[3] = {fx_entity(fx, 0), fx_entity(fx, 0), fx_entity(fx, 0)};
    backlog(fx, std_model(fx, eids[0], 1000), 2);
    backlog(fx, std_model(fx, eids[1], 1000), 2);
    uint64_t mc = std_model(fx, eids[2], 1000);
    for (int i = 0; i < 50; i++)
        fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 1); /* steady state: no recomputation */

    /* A priority change: recomputed at the next pick, not before. */
    assert_int_equal(etf_entity_set_priority(fx->s, eids[1], 5, NULL), 0);
    assert_int_equal(fx_sstats(fx).allocations, 1);
    fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 2);
    assert_near(fx_estats(fx, eids[1]).slice_ns, 10.0 * MS * 335 / 1359, 1, "slice of nice 5");

    /* A priority change of an entity that is not runnable needs nothing now. */
    assert_int_equal(etf_entity_set_priority(fx->s, eids[2], 1, NULL), 0);
    fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 2);

    /* A new quantum and phi. */
    assert_int_equal(etf_sched_set_policy(fx->s, 4 * MS, 1, NULL), 0);
    fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 3);
    assert_slices_sum_to(fx, eids, 2, 4 * MS);

    /* A join. */
    fx_submit(fx, mc);
    fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 4);
    assert_slices_sum_to(fx, eids, 3, 4 * MS);
    for (int i = 0; i < 20; i++)
        fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 4);
    fx_free(fx);
}

/* An entity with two models: x at 1000 mW, y at 3000 mW, one 100 µs kernel each. */
struct two_power {
    struct fixture *fx;
    uint64_t eid, mx, my;
};

static struct two_power two_power_entity(double phi, unsigned horizon, double px, double py)
{
    struct fx_config c = {.phi = phi, .quantum_ns = 200 * 1000, .power_horizon_tasks = horizon};
    struct two_power tp = {.fx = fx_new_ex(&c)};
    tp.eid = fx_entity(tp.fx, 0);
    tp.mx = fx_model(tp.fx, tp.eid, prof_uniform("x", 1, GHZ, 100, px), GHZ);
    tp.my = fx_model(tp.fx, tp.eid, prof_uniform("y", 1, GHZ, 100, py), GHZ);
    return tp;
}

static void measured_power_is_an_ewma_over_the_horizon(void **state)
{
    struct two_power tp = two_power_entity(1, 4, 1000, 3000);
    /* Before it runs: the mean of its models' profiled powers. */
    assert_near(fx_estats(tp.fx, tp.eid).power_mw, 2000, 1e-9, "profiled power");
    fx_submit(tp.fx, tp.mx);
    fx_drain(tp.fx, 10);
    /* The first measurement replaces it. */
    assert_near(fx_estats(tp.fx, tp.eid).power_mw, 1000, 1e-9, "first measurement");
    /* Then each task moves it by 1/horizon: 1000 + (3000 - 1000) / 4. */
    fx_submit(tp.fx, tp.my);
    fx_drain(tp.fx, 10);
    assert_near(fx_estats(tp.fx, tp.eid).power_mw, 1500, 1e-9, "after one y task");
    fx_submit(tp.fx, tp.my);
    fx_drain(tp.fx, 10);
    assert_near(fx_estats(tp.fx, tp.eid).power_mw, 1875, 1e-9, "after two y tasks");
    fx_free(tp.fx);
}

static void measured_power_change_reallocates_at_next_pick(void **state)
{
    /* phi = 0, equal weights. a is profiled at (1000 + 3000) / 2 = 2000 mW like b, so both
     * start with equal slices; a only runs its 1000 mW model, and once measured its slice
     * must become twice b's. */
    struct two_power tp = two_power_entity(0, 8, 1000, 3000);
    struct fixture *fx = tp.fx;
    uint64_t b = fx_entity(fx, 0);
    uint64_t mb = fx_model(fx, b, prof_uniform("b", 1, GHZ, 100, 2000), GHZ);
    fx->resubmit = true;
    fx->keep_records = false;
    backlog(fx, tp.mx, 2);
    backlog(fx, mb, 2);

    assert_true(fx_step(fx)); /* a runs an x task: its power moves 2000 -> 1000 */
    assert_int_equal(fx_sstats(fx).allocations, 1);
    assert_true(fx_step(fx)); /* the next pick recomputes */
    assert_int_equal(fx_sstats(fx).allocations, 2);
    assert_near(fx_estats(fx, tp.eid).slice_ns, 200000.0 * 2 / 3, 1e-6, "a's slice measured");
    assert_near(fx_estats(fx, b).slice_ns, 200000.0 / 3, 1e-6, "b's slice");
    for (int i = 0; i < 50; i++)
        fx_step(fx);
    assert_int_equal(fx_sstats(fx).allocations, 2); /* the power is stable now */
    fx_free(fx);
}

/* sched.h: etf_entity_stats.power_mw is "the P_i the allocation uses". A change below the
 * reallocation threshold leaves the allocation on the old power, so at phi = 0 the slices
 * must still be the energy-fair ones for the powers that stats report. */
static void entity_stats_power_is_the_power_the_allocation_used(void **state)
{
    struct two_power tp = two_power_entity(0, 8, 1000, 1040);
    struct fixture *fx = tp.fx;
    uint64_t b = fx_entity(fx, 0);
    uint64_t mb = fx_model(fx, b, prof_uniform("b", 1, GHZ, 100, 1000), GHZ);
    fx_submit(fx, tp.mx);
    fx_submit(fx, tp.my);
    fx_submit(fx, tp.my);
    backlog(fx, mb, 10);
    /* a's x task moves its power 1020 -> 1000 mW (2 %): b's next pick reallocates with a at
     * 1000 mW. a's y task then moves it 1000 -> 1005 mW (0.5 %): no reallocation. */
    while (fx_estats(fx, tp.eid).tasks_done < 2)
        assert_true(fx_step(fx));
    assert_int_equal(fx_sstats(fx).allocations, 2);
    struct etf_entity_stats sa = fx_estats(fx, tp.eid), sb = fx_estats(fx, b);
    assert_true(sa.runnable && sb.runnable);
    double ea = sa.power_mw * sa.slice_ns / sa.weight, eb = sb.power_mw * sb.slice_ns / sb.weight;
    fx_free(fx); /* before failing, so that a failure leaks nothing */
    if (fabs(ea - eb) > 1e-9 * eb)
        fail_msg("stats say a draws %.6g mW with a %.6g ns slice and b %.6g mW with %.6g ns: "
                 "not the energy-fair slices for those powers",
                 sa.power_mw, sa.slice_ns, sb.power_mw, sb.slice_ns);
}

/* ---- 10. Frequencies ---- */

static const uint64_t two_freqs[] = {500 * MHZ, GHZ};

/* 4 kernels: 200 µs at 500 mW at 500 MHz, 100 µs at 1500 mW at 1 GHz. */
static struct etf_profile *dvfs_profile(void)
{
    double t[] = {200, 100}, p[] = {500, 1500};
    return prof_uniform_freqs("dvfs", 4, 2, two_freqs, t, p);
}

static void alternating_models_at_two_frequencies_switch_every_turn(void **state)
{
    /* Slices of 1 ms hold 10 fast or 5 slow kernels exactly, so turns alternate a, b, a... */
    struct fixture *fx = fx_new(1, 2 * MS);
    uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
    uint64_t ma = fx_model(fx, a, dvfs_profile(), GHZ);
    uint64_t mb = fx_model(fx, b, dvfs_profile(), 500 * MHZ);
    fx->resubmit = true;
    backlog(fx, ma, 4);
    backlog(fx, mb, 4);
    for (int i = 0; i < 100; i++)
        assert_true(fx_step(fx));
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.turns, 100);
    assert_int_equal(ss.freq_switches, 100);
    assert_int_equal(etf_freq_switches(fx->freq), ss.freq_switches);
    uint64_t hz = 0;
    assert_int_equal(etf__freq_get(fx->freq, &hz), 0);
    assert_int_equal(hz, 500 * MHZ); /* b ran last */
    /* Each model ran and was charged at its own frequency. */
    for (size_t i = 0; i < fx->n_recs; i++) {
        const struct etf_task_record *r = &fx->recs[i];
        bool fast = r->eid == a;
        assert_int_equal(r->freq_hz, fast ? GHZ : 500 * MHZ);
        assert_int_equal(r->service_ns, fast ? 400000 : 800000);
        assert_int_equal(r->energy_nj, fast ? 4 * 100 * 1500 : 4 * 200 * 500);
    }
    assert_int_equal(fx_estats(fx, a).time_ns, fx_estats(fx, b).time_ns);
    fx_free(fx);
}

static void one_frequency_switches_at_most_once(void **state)
{
    for (int initial = 0; initial <= 1; initial++) {
        struct fx_config c = {.phi = 1, .quantum_ns = 300 * 1000, .initial_hz = initial ? GHZ : 0};
        struct fixture *fx = fx_new_ex(&c);
        uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 3);
        fx->resubmit = true;
        backlog(fx, fx_model(fx, a, dvfs_profile(), GHZ), 2);
        backlog(fx, fx_model(fx, a, dvfs_profile(), GHZ), 2);
        backlog(fx, fx_model(fx, b, dvfs_profile(), GHZ), 2);
        for (int i = 0; i < 100; i++)
            assert_true(fx_step(fx));
        struct etf_sched_stats ss = fx_sstats(fx);
        assert_int_equal(ss.freq_switches, initial ? 0 : 1);
        assert_int_equal(etf_freq_switches(fx->freq), ss.freq_switches);
        fx_free(fx);
    }
}

static void without_a_controller_nothing_switches_and_models_run_at_their_frequency(void **state)
{
    const char *names[] = {"none", ""};
    for (size_t n = 0; n < 2; n++) {
        struct fx_config c = {.phi = 1, .quantum_ns = 2 * MS, .freq = names[n]};
        struct fixture *fx = fx_new_ex(&c);
        uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
        uint64_t ma = fx_model(fx, a, dvfs_profile(), GHZ);
        uint64_t mb = fx_model(fx, b, dvfs_profile(), 500 * MHZ);
        backlog(fx, ma, 5);
        backlog(fx, mb, 5);
        fx_drain(fx, 1000);
        assert_int_equal(fx->n_recs, 10);
        assert_int_equal(fx_sstats(fx).freq_switches, 0);
        if (fx->freq)
            assert_int_equal(etf_freq_switches(fx->freq), 0);
        for (size_t i = 0; i < fx->n_recs; i++) {
            const struct etf_task_record *r = &fx->recs[i];
            bool fast = r->mid == ma;
            assert_int_equal(r->status, 0);
            assert_int_equal(r->freq_hz, fast ? GHZ : 500 * MHZ);
            assert_int_equal(r->service_ns, fast ? 400000 : 800000);
            assert_int_equal(r->energy_nj, fast ? 4 * 100 * 1500 : 4 * 200 * 500);
        }
        fx_free(fx);
    }
}

/* The rows of an entity's or the device's table by frequency, checked for sums. */
static size_t freq_rows(struct fixture *fx, uint64_t eid, struct etf_freq_stats *out, size_t cap)
{
    size_t n = SIZE_MAX;
    if (eid)
        assert_int_equal(etf_entity_freq_stats(fx->s, eid, out, cap, &n), 0);
    else
        assert_int_equal(etf_sched_freq_stats(fx->s, out, cap, &n), 0);
    assert_true(n <= cap);
    for (size_t i = 1; i < n; i++)
        assert_true(out[i - 1].hz < out[i].hz);
    return n;
}

static void assert_freq_row(const struct etf_freq_stats *r, uint64_t hz, uint64_t kernels,
                            uint64_t time_ns, uint64_t energy_nj, size_t models)
{
    assert_int_equal(r->hz, hz);
    assert_int_equal(r->kernels, kernels);
    assert_int_equal(r->time_ns, time_ns);
    assert_int_equal(r->energy_nj, energy_nj);
    assert_int_equal(r->models, models);
}

/* One entity with models at 1 GHz and 500 MHz, another at 1 GHz, on the sim controller:
 * the time and energy charged at each frequency are the profile's, exactly, per entity and
 * for the device, and the rows add up to the totals; synchronous and asynchronous device. */
static void time_and_energy_by_frequency_are_the_profiles_exactly(void **state)
{
    for (size_t depth = 0; depth <= 4; depth += 4) {
        struct fx_config c = {.phi = 1, .quantum_ns = 2 * MS, .queue_depth = depth};
        struct fixture *fx = fx_new_ex(&c);
        uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
        uint64_t fast = fx_model(fx, a, dvfs_profile(), GHZ);
        uint64_t slow = fx_model(fx, a, dvfs_profile(), 500 * MHZ);
        uint64_t mb = fx_model(fx, b, dvfs_profile(), GHZ);
        struct etf_freq_stats fs[4];

        /* Loaded, nothing run: a row of zeros per frequency, lowest first. */
        assert_int_equal(freq_rows(fx, a, fs, 4), 2);
        assert_freq_row(&fs[0], 500 * MHZ, 0, 0, 0, 1);
        assert_freq_row(&fs[1], GHZ, 0, 0, 0, 1);
        assert_int_equal(freq_rows(fx, 0, fs, 4), 2);
        assert_freq_row(&fs[1], GHZ, 0, 0, 0, 2);

        backlog(fx, fast, 3);
        backlog(fx, slow, 2);
        backlog(fx, mb, 5);
        fx_drain(fx, 1000);
        assert_int_equal(fx->n_recs, 10);
        struct etf_sched_stats ss = fx_sstats(fx);
        assert_true(ss.freq_switches >= 2);

        /* 4 kernels a task: 200 µs at 500 mW at 500 MHz (100 µJ), 100 µs at 1500 mW at
         * 1 GHz (150 µJ). */
        assert_int_equal(freq_rows(fx, a, fs, 4), 2);
        assert_freq_row(&fs[0], 500 * MHZ, 8, 8 * 200000, 8 * 100000, 1);
        assert_freq_row(&fs[1], GHZ, 12, 12 * 100000, 12 * 150000, 1);
        struct etf_entity_stats ea = fx_estats(fx, a);
        assert_int_equal(fs[0].time_ns + fs[1].time_ns, ea.time_ns);
        assert_int_equal(fs[0].energy_nj + fs[1].energy_nj, ea.energy_nj);
        assert_int_equal(freq_rows(fx, b, fs, 4), 1);
        assert_freq_row(&fs[0], GHZ, 20, 20 * 100000, 20 * 150000, 1);

        assert_int_equal(freq_rows(fx, 0, fs, 4), 2);
        assert_freq_row(&fs[0], 500 * MHZ, 8, 8 * 200000, 8 * 100000, 1);
        assert_freq_row(&fs[1], GHZ, 32, 32 * 100000, 32 * 150000, 2);
        assert_int_equal(fs[0].time_ns + fs[1].time_ns, ss.busy_ns);
        assert_int_equal(fs[0].energy_nj + fs[1].energy_nj, ss.energy_nj);
        assert_int_equal(fs[0].kernels + fs[1].kernels, ss.dispatches);
        /* The allocating form reads the same tables whole. */
        struct etf_freq_stats *all;
        size_t n_all;
        assert_int_equal(etf_freq_stats_alloc(fx->s, NULL, &all, &n_all), 0);
        assert_int_equal(n_all, 2);
        assert_memory_equal(all, fs, 2 * sizeof *fs);
        free(all);
        assert_int_equal(etf_freq_stats_alloc(fx->s, &a, &all, &n_all), 0);
        assert_int_equal(n_all, 2);
        assert_int_equal(all[1].kernels, 12);
        free(all);
        uint64_t gone = 9999;
        assert_int_equal(etf_freq_stats_alloc(fx->s, &gone, &all, &n_all), ETF_ENOENT);
        free(all);

        /* A short array gets the lowest rows and the count of all; none gets the count. */
        size_t n = 0;
        memset(fs, 0, sizeof fs);
        assert_int_equal(etf_entity_freq_stats(fx->s, a, fs, 1, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(fs[0].hz, 500 * MHZ);
        assert_int_equal(fs[1].hz, 0);
        assert_int_equal(etf_sched_freq_stats(fx->s, NULL, 0, &n), 0);
        assert_int_equal(n, 2);
        assert_int_equal(etf_entity_freq_stats(fx->s, a, NULL, 1, &n), ETF_EINVAL);
        assert_int_equal(etf_entity_freq_stats(fx->s, a, fs, 4, NULL), ETF_EINVAL);
        assert_int_equal(etf_sched_freq_stats(fx->s, NULL, 2, &n), ETF_EINVAL);
        assert_int_equal(etf_entity_freq_stats(fx->s, 9999, fs, 4, &n), ETF_ENOENT);

        /* Unloading keeps what was charged; a frequency never charged goes once its last
         * model does, and a new one takes its place. */
        assert_int_equal(etf_model_unload(fx->s, slow, NULL), 0);
        assert_int_equal(freq_rows(fx, a, fs, 4), 2);
        assert_freq_row(&fs[0], 500 * MHZ, 8, 8 * 200000, 8 * 100000, 0);
        uint64_t tmp = fx_model(fx, b, dvfs_profile(), 500 * MHZ);
        assert_int_equal(freq_rows(fx, b, fs, 4), 2);
        assert_freq_row(&fs[0], 500 * MHZ, 0, 0, 0, 1);
        assert_int_equal(etf_model_unload(fx->s, tmp, NULL), 0);
        assert_int_equal(freq_rows(fx, b, fs, 4), 1);
        uint64_t three[] = {250 * MHZ, 500 * MHZ, GHZ};
        double t3[] = {400, 200, 100}, p3[] = {250, 500, 1500};
        uint64_t m250 = fx_model(fx, b, prof_uniform_freqs("tri", 2, 3, three, t3, p3), 250 * MHZ);
        fx_submit(fx, m250);
        fx_drain(fx, 100);
        assert_int_equal(freq_rows(fx, b, fs, 4), 2);
        assert_freq_row(&fs[0], 250 * MHZ, 2, 2 * 400000, 2 * 100000, 1);
        assert_freq_row(&fs[1], GHZ, 20, 20 * 100000, 20 * 150000, 1);

        /* The device keeps the charges of a deleted entity. */
        assert_int_equal(etf_model_unload(fx->s, m250, NULL), 0);
        assert_int_equal(etf_model_unload(fx->s, mb, NULL), 0);
        assert_int_equal(etf_entity_delete(fx->s, b, NULL), 0);
        ss = fx_sstats(fx);
        assert_int_equal(freq_rows(fx, 0, fs, 4), 3);
        assert_freq_row(&fs[0], 250 * MHZ, 2, 2 * 400000, 2 * 100000, 0);
        assert_freq_row(&fs[1], 500 * MHZ, 8, 8 * 200000, 8 * 100000, 0);
        assert_freq_row(&fs[2], GHZ, 32, 32 * 100000, 32 * 150000, 1);
        assert_int_equal(fs[0].time_ns + fs[1].time_ns + fs[2].time_ns, ss.busy_ns);
        assert_int_equal(fs[0].energy_nj + fs[1].energy_nj + fs[2].energy_nj, ss.energy_nj);
        fx_free(fx);
    }
}

/* ---- 11. Unload ---- */

static void unload_with_queued_tasks_is_ebusy(void **state)
{
    struct fixture *fx = fx_new(1, 300 * 1000);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = std_model(fx, eid, 1000);
    backlog(fx, mid, 3);
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_model_unload(fx->s, mid, &diag), ETF_EBUSY);
    assert_non_null(strstr(diag.msg, "3"));
    assert_true(fx_step(fx)); /* one task done, one started, one waiting */
    assert_int_equal(etf_model_unload(fx->s, mid, NULL), ETF_EBUSY);
    fx_drain(fx, 100);
    assert_int_equal(fx->n_done, 3);
    assert_int_equal(etf_model_unload(fx->s, mid, NULL), 0);
    assert_int_equal(etf_entity_delete(fx->s, eid, NULL), 0);
    fx_free(fx);
}

/* ---- 14. Callbacks that call back ---- */

struct reentry {
    uint64_t mid;
    size_t budget;
    size_t bad;
};

static void reenter(struct fixture *fx, const struct etf_task_record *rec)
{
    struct reentry *r = fx->hook_arg;
    struct etf_entity_stats es;
    struct etf_model_stats ms;
    struct etf_sched_stats ss;
    if (etf_entity_stats(fx->s, rec->eid, &es) || es.tasks_done == 0)
        r->bad++;
    if (etf_model_stats(fx->s, rec->mid, &ms) || ms.tasks_done == 0)
        r->bad++;
    etf_sched_stats(fx->s, &ss);
    if (ss.dispatches == 0)
        r->bad++;
    if (r->budget > 0) {
        r->budget--;
        struct etf_request req = {.mid = r->mid};
        if (etf_submit(fx->s, &req, NULL, NULL))
            r->bad++;
    }
}

static void on_done_may_submit_and_read_stats(void **state)
{
    struct fixture *fx = fx_new(0.5, MS);
    uint64_t eid = fx_entity(fx, 0);
    struct reentry r = {.mid = std_model(fx, eid, 1000), .budget = 99};
    fx->hook = reenter;
    fx->hook_arg = &r;
    fx_submit(fx, r.mid);
    fx_drain(fx, 10000);
    assert_int_equal(r.bad, 0);
    assert_int_equal(fx->n_done, 100);
    assert_int_equal(fx_estats(fx, eid).tasks_done, 100);
    fx_free(fx);
}

/* ---- 12. Threads ---- */

#define N_THREADS 8
#define TASKS_PER_THREAD 500

struct submitter {
    struct fixture *fx;
    int idx;
    struct etf_profile *prof;
    uint64_t eid, mid;
    uint64_t tids[TASKS_PER_THREAD];
    int err;
};

static void *submitter_main(void *arg)
{
    struct submitter *sb = arg;
    if (etf_entity_create(sb->fx->s, sb->idx % 4 * 3 - 4, &sb->eid, NULL)) {
        sb->err = 1;
        etf_profile_free(sb->prof);
        return NULL;
    }
    struct etf_model_spec spec = {.profile = sb->prof};
    if (etf_model_load(sb->fx->s, sb->eid, &spec, &sb->mid, NULL)) {
        sb->err = 2;
        etf_profile_free(sb->prof);
        return NULL;
    }
    for (int i = 0; i < TASKS_PER_THREAD; i++) {
        struct etf_request req = {.mid = sb->mid,
                                  .user = (void *)(uintptr_t)(sb->idx * TASKS_PER_THREAD + i + 1)};
        if (etf_submit(sb->fx->s, &req, &sb->tids[i], NULL)) {
            sb->err = 3;
            return NULL;
        }
        if (i % 64 == 0)
            sched_yield();
    }
    return NULL;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

struct stats_probe {
    size_t calls, bad;
};

static void probe_stats(struct fixture *fx, const struct etf_task_record *rec)
{
    struct stats_probe *p = fx->hook_arg;
    struct etf_entity_stats es;
    struct etf_sched_stats ss;
    p->calls++;
    if (etf_entity_stats(fx->s, rec->eid, &es))
        p->bad++;
    etf_sched_stats(fx->s, &ss);
}

static void threaded_submitters_every_task_completes_exactly_once(void **state)
{
    struct fx_config c = {.phi = 0.5, .quantum_ns = 20 * 1000, .real_clock = true};
    struct fixture *fx = fx_new_ex(&c);
    struct stats_probe probe = {0};
    fx->hook = probe_stats;
    fx->hook_arg = &probe;
    assert_int_equal(etf_sched_start(fx->s), 0);
    assert_int_equal(etf_sched_start(fx->s), ETF_EBUSY);

    static struct submitter subs[N_THREADS];
    pthread_t th[N_THREADS];
    for (int i = 0; i < N_THREADS; i++) {
        subs[i] = (struct submitter){.fx = fx, .idx = i};
        subs[i].prof = prof_uniform("t", 2, GHZ, 1 + i % 3, 1000 + 100 * i);
    }
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_create(&th[i], NULL, submitter_main, &subs[i]), 0);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    for (int i = 0; i < N_THREADS; i++)
        assert_int_equal(subs[i].err, 0);

    assert_int_equal(etf_sched_stop(fx->s, 120 * SEC), 0);
    const size_t total = N_THREADS * TASKS_PER_THREAD;
    assert_int_equal(fx->n_done, total);
    assert_int_equal(fx->n_failed, 0);
    assert_int_equal(fx->n_recs, total);
    assert_int_equal(probe.calls, total);
    assert_int_equal(probe.bad, 0);

    /* Submitted tids are unique, and the completed ones are exactly those. */
    uint64_t *sub = malloc(total * sizeof *sub), *done = malloc(total * sizeof *done);
    assert_non_null(sub);
    assert_non_null(done);
    for (int i = 0; i < N_THREADS; i++)
        memcpy(&sub[i * TASKS_PER_THREAD], subs[i].tids, sizeof subs[i].tids);
    for (size_t i = 0; i < total; i++)
        done[i] = fx->recs[i].tid;
    qsort(sub, total, sizeof *sub, cmp_u64);
    qsort(done, total, sizeof *done, cmp_u64);
    for (size_t i = 0; i < total; i++) {
        if (i > 0)
            assert_true(sub[i] != sub[i - 1]);
        assert_int_equal(sub[i], done[i]);
    }
    free(sub);
    free(done);

    /* Each user value came back once, with its own entity, in FCFS order per entity. */
    unsigned char *seen = calloc(total + 1, 1);
    uintptr_t last[N_THREADS] = {0};
    assert_non_null(seen);
    for (size_t i = 0; i < total; i++) {
        const struct etf_task_record *r = &fx->recs[i];
        uintptr_t u = (uintptr_t)r->user;
        assert_true(u >= 1 && u <= total);
        assert_int_equal(seen[u], 0);
        seen[u] = 1;
        int idx = (int)((u - 1) / TASKS_PER_THREAD);
        assert_int_equal(r->eid, subs[idx].eid);
        assert_int_equal(r->mid, subs[idx].mid);
        assert_true(u > last[idx]);
        last[idx] = u;
        assert_true(r->submit_ns <= r->start_ns && r->start_ns <= r->end_ns);
        assert_true(r->service_ns >= 2 * 1000 * (uint64_t)(1 + idx % 3));
    }
    free(seen);

    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.dispatches, 2 * total);
    assert_int_equal(ss.tasks_queued, 0);
    assert_int_equal(ss.runnable, 0);

    struct etf_diag diag = {{0}};
    struct etf_request req = {.mid = subs[0].mid};
    assert_int_equal(etf_submit(fx->s, &req, NULL, &diag), ETF_ESHUTDOWN);
    assert_int_equal(etf_sched_start(fx->s), ETF_EBUSY);
    fx_free(fx);
}

static void stop_without_dispatcher_fails_queued_tasks_with_eshutdown(void **state)
{
    struct fixture *fx = fx_new(1, MS);
    uint64_t a = fx_entity(fx, 0), b = fx_entity(fx, 0);
    uint64_t ma = std_model(fx, a, 1000), mb = std_model(fx, b, 1000);
    backlog(fx, ma, 3);
    backlog(fx, mb, 2);
    assert_int_equal(etf_sched_stop(fx->s, 0), 0);
    assert_int_equal(fx->n_done, 5);
    assert_int_equal(fx->n_failed, 5);
    for (size_t i = 0; i < fx->n_recs; i++) {
        assert_int_equal(fx->recs[i].status, ETF_ESHUTDOWN);
        assert_int_equal(fx->recs[i].service_ns, 0);
    }
    struct etf_sched_stats ss = fx_sstats(fx);
    assert_int_equal(ss.tasks_queued, 0);
    assert_int_equal(ss.runnable, 0);
    assert_false(fx_estats(fx, a).runnable);
    assert_int_equal(fx_estats(fx, a).tasks_done, 0);

    struct etf_diag diag = {{0}};
    struct etf_request req = {.mid = ma};
    assert_int_equal(etf_submit(fx->s, &req, NULL, &diag), ETF_ESHUTDOWN);
    bool ran = true;
    assert_int_equal(etf_sched_step(fx->s, &ran), 0);
    assert_false(ran);
    /* With nothing queued, the models can go. */
    assert_int_equal(etf_model_unload(fx->s, ma, NULL), 0);
    fx_free(fx);
}

static void stop_with_no_drain_fails_what_the_dispatcher_did_not_run(void **state)
{
    /* Kernels of 20 ms that sleep; a 1 ms quantum runs one per turn. */
    struct fx_config c = {.phi = 1, .quantum_ns = MS, .real_clock = true};
    struct fixture *fx = fx_new_ex(&c);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform("slow", 1, GHZ, 20000, 1000), GHZ);
    backlog(fx, mid, 10);
    assert_int_equal(etf_sched_start(fx->s), 0);
    assert_int_equal(etf_sched_stop(fx->s, 0), 0);
    assert_int_equal(fx->n_done, 10);
    assert_true(fx->n_failed >= 1);
    for (size_t i = 0; i < fx->n_recs; i++)
        assert_true(fx->recs[i].status == 0 || fx->recs[i].status == ETF_ESHUTDOWN);
    /* Completions still come in FCFS order: the ones that ran first. */
    for (size_t i = 1; i < fx->n_recs; i++) {
        assert_true(fx->recs[i].tid > fx->recs[i - 1].tid);
        if (fx->recs[i - 1].status == ETF_ESHUTDOWN)
            assert_int_equal(fx->recs[i].status, ETF_ESHUTDOWN);
    }
    fx_free(fx);
}

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void idle_dispatcher_sleeps_and_wakes_for_work(void **state)
{
    struct fx_config c = {.phi = 1, .quantum_ns = MS, .real_clock = true};
    struct fixture *fx = fx_new_ex(&c);
    uint64_t eid = fx_entity(fx, 0);
    uint64_t mid = fx_model(fx, eid, prof_uniform("m", 2, GHZ, 5, 1000), GHZ);
    assert_int_equal(etf_sched_start(fx->s), 0);

    double before = cpu_ms();
    struct timespec nap = {.tv_sec = 0, .tv_nsec = 300 * 1000 * 1000};
    while (nanosleep(&nap, &nap) != 0 && errno == EINTR)
        ;
    double used = cpu_ms() - before;
    if (used >= 100)
        fail_msg("an idle dispatcher used %.1f ms of CPU in 300 ms", used);

    fx_submit(fx, mid);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    pthread_mutex_lock(&fx->mu);
    int rc = 0;
    while (fx->n_done < 1 && rc != ETIMEDOUT)
        rc = pthread_cond_timedwait(&fx->cv, &fx->mu, &deadline);
    size_t done = fx->n_done;
    pthread_mutex_unlock(&fx->mu);
    assert_int_equal(done, 1);
    assert_int_equal(fx->recs[0].status, 0);
    assert_true(fx->recs[0].service_ns >= 10 * 1000);
    assert_int_equal(etf_sched_stop(fx->s, SEC), 0);
    fx_free(fx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(create_rejects_bad_phi_quantum_and_device_naming_the_field),
        cmocka_unit_test(set_policy_validates_like_create),
        cmocka_unit_test(entity_nice_range_is_minus20_to_19_with_cfs_weights),
        cmocka_unit_test(unknown_entity_is_enoent_everywhere),
        cmocka_unit_test(entity_delete_is_ebusy_while_a_model_is_loaded),
        cmocka_unit_test(entity_and_model_ids_are_never_reused),
        cmocka_unit_test(model_frequency_outside_profile_is_einval_naming_it),
        cmocka_unit_test(model_without_power_runs_and_charges_no_energy),
        cmocka_unit_test(model_needs_a_profile_or_a_plan),
        cmocka_unit_test(failed_switch_forgets_the_clock),
        cmocka_unit_test(unknown_power_counts_at_the_typical_power),
        cmocka_unit_test(entity_deleted_from_on_done_is_gone),
        cmocka_unit_test(model_default_frequency_is_current_if_covered_else_highest),
        cmocka_unit_test(model_stats_report_name_owner_frequency_and_totals),
        cmocka_unit_test(submit_to_unknown_model_is_enoent),
        cmocka_unit_test(submit_beyond_max_queued_tasks_is_elimit),
        cmocka_unit_test(step_with_nothing_runnable_runs_nothing),
        cmocka_unit_test(single_entity_accounting_is_exact_and_fcfs),
        cmocka_unit_test(each_kernel_is_charged_its_own_power_mid_task),
        cmocka_unit_test(accounting_adds_up_across_turns_entities_and_models),
        cmocka_unit_test(time_fair_two_entities_share_by_weight),
        cmocka_unit_test(time_fair_three_entities_share_by_weight),
        cmocka_unit_test(energy_fair_two_entities_equal_energy_per_weight),
        cmocka_unit_test(energy_fair_three_entities_equal_energy_per_weight),
        cmocka_unit_test(slices_respect_time_floors_and_sum_to_quantum),
        cmocka_unit_test(slice_below_one_kernel_runs_exactly_one_kernel_per_turn),
        cmocka_unit_test(slice_of_two_and_a_half_kernels_runs_three_per_turn),
        cmocka_unit_test(slice_of_exactly_two_kernels_runs_two_per_turn),
        cmocka_unit_test(rejoin_keeps_own_vruntime_or_takes_min_vruntime),
        cmocka_unit_test(join_after_backlogged_solo_run_neither_starves),
        cmocka_unit_test(join_after_request_response_solo_run_neither_starves),
        cmocka_unit_test(priority_change_mid_run_shares_follow_new_weights),
        cmocka_unit_test(slices_are_recomputed_only_when_their_inputs_change),
        cmocka_unit_test(measured_power_is_an_ewma_over_the_horizon),
        cmocka_unit_test(measured_power_change_reallocates_at_next_pick),
        cmocka_unit_test(entity_stats_power_is_the_power_the_allocation_used),
        cmocka_unit_test(alternating_models_at_two_frequencies_switch_every_turn),
        cmocka_unit_test(one_frequency_switches_at_most_once),
        cmocka_unit_test(without_a_controller_nothing_switches_and_models_run_at_their_frequency),
        cmocka_unit_test(time_and_energy_by_frequency_are_the_profiles_exactly),
        cmocka_unit_test(unload_with_queued_tasks_is_ebusy),
        cmocka_unit_test(on_done_may_submit_and_read_stats),
        cmocka_unit_test(threaded_submitters_every_task_completes_exactly_once),
        cmocka_unit_test(stop_without_dispatcher_fails_queued_tasks_with_eshutdown),
        cmocka_unit_test(stop_with_no_drain_fails_what_the_dispatcher_did_not_run),
        cmocka_unit_test(idle_dispatcher_sleeps_and_wakes_for_work),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
