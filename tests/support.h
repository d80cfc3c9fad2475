/* Helpers shared by the scheduler and backend tests: profiles built from numbers, and a
 * scheduler fixture on a virtual clock with a completion recorder.
 *
 * Header-only: every helper is `static`, so a test file includes it after cmocka.h and
 * uses what it needs (the unused ones are marked so that -Werror stays quiet).
 */
#ifndef ETF_TESTS_SUPPORT_H
#define ETF_TESTS_SUPPORT_H

#include "etf/profile.h"
#include "etf/sched.h"

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#define SUPPORT_UNUSED __attribute__((unused))

#define MHZ 1000000ull
#define MS 1000000ull
#define SEC 1000000000ull

/* ---- Profiles ---- */

struct sbuf {
    char *p;
    size_t n, cap;
};

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int need = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(need >= 0);
    if (b->n + (size_t)need + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + (size_t)need + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->n, b->cap - b->n, fmt, ap);
    va_end(ap);
    b->n += (size_t)need;
}

static void sb_map(struct sbuf *b, const char *key, size_t n_freqs, const uint64_t *freqs_hz,
                   const double *v)
{
    sb_printf(b, "\"%s\": {", key);
    for (size_t f = 0; f < n_freqs; f++)
        sb_printf(b, "%s\"%" PRIu64 "\": %.17g", f ? ", " : "", freqs_hz[f], v[f]);
    sb_printf(b, "}");
}

/* The JSON text of a profile with n_kernels kernels "k0".."k<n-1>" covering n_freqs
 * frequencies. time_us and power_mw are kernel-major: [k * n_freqs + f]. power_mw NULL = a
 * profile without power. The caller frees the text. */
SUPPORT_UNUSED static char *prof_json(const char *name, size_t n_kernels, size_t n_freqs,
                                      const uint64_t *freqs_hz, const double *time_us,
                                      const double *power_mw)
{
    struct sbuf b = {0};
    sb_printf(&b, "{\"model_name\": \"%s\", \"kernel_profile\": {", name);
    for (size_t k = 0; k < n_kernels; k++) {
        sb_printf(&b, "%s\"k%zu\": {", k ? ", " : "", k);
        sb_map(&b, "exec_time", n_freqs, freqs_hz, &time_us[k * n_freqs]);
        if (power_mw) {
            sb_printf(&b, ", ");
            sb_map(&b, "gpu_power", n_freqs, freqs_hz, &power_mw[k * n_freqs]);
        }
        sb_printf(&b, "}");
    }
    sb_printf(&b, "}}");
    return b.p;
}

/* Builds and parses a profile as prof_json describes; fails the test if it does not parse. */
SUPPORT_UNUSED static struct etf_profile *prof_make(const char *name, size_t n_kernels,
                                                    size_t n_freqs, const uint64_t *freqs_hz,
                                                    const double *time_us, const double *power_mw)
{
    char *json = prof_json(name, n_kernels, n_freqs, freqs_hz, time_us, power_mw);
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_profile_parse(json, strlen(json), name, &p, &diag);
    if (rc)
        fail_msg("profile %s does not parse: %s: %s\n%s", name, etf_strerror(rc), diag.msg, json);
    free(json);
    assert_non_null(p);
    return p;
}

/* A profile whose n_kernels kernels all take time_us[f] µs at power_mw[f] mW at freqs_hz[f]
 * (power_mw NULL = no power). */
SUPPORT_UNUSED static struct etf_profile *
prof_uniform_freqs(const char *name, size_t n_kernels, size_t n_freqs, const uint64_t *freqs_hz,
                   const double *time_us, const double *power_mw)
{
    double *t = calloc(n_kernels * n_freqs, sizeof *t);
    double *p = power_mw ? calloc(n_kernels * n_freqs, sizeof *p) : NULL;
    assert_non_null(t);
    for (size_t k = 0; k < n_kernels; k++) {
        for (size_t f = 0; f < n_freqs; f++) {
            t[k * n_freqs + f] = time_us[f];
            if (p)
                p[k * n_freqs + f] = power_mw[f];
        }
    }
    struct etf_profile *prof = prof_make(name, n_kernels, n_freqs, freqs_hz, t, p);
    free(t);
    free(p);
    return prof;
}

/* One frequency, n_kernels identical kernels of time_us at power_mw (0 = no power). */
SUPPORT_UNUSED static struct etf_profile *prof_uniform(const char *name, size_t n_kernels,
                                                       uint64_t hz, double time_us, double power_mw)
{
    return prof_uniform_freqs(name, n_kernels, 1, &hz, &time_us, power_mw > 0 ? &power_mw : NULL);
}

/* ---- Scheduler fixture ---- */

struct fixture;
/* Called after a completion is recorded, on the dispatching thread, no scheduler lock held. */
typedef void (*fx_hook_fn)(struct fixture *fx, const struct etf_task_record *rec);

struct fx_config {
    double phi;
    uint64_t quantum_ns;
    const char *freq;    /* "sim" (default), "none", or "" for no controller (NULL in cfg) */
    uint64_t initial_hz; /* of the sim controller */
    bool real_clock;     /* device sim sleeps, scheduler on the monotonic clock */
    unsigned power_horizon_tasks;
    size_t max_queued_tasks;
    size_t queue_depth; /* > 0: the sim device is asynchronous (submit and fence) */
    /* Used instead of the sim device when set; the test keeps ownership. */
    struct etf_device *device;
};

struct fixture {
    struct etf_vclock vc;
    struct etf_clock clock;
    struct etf_device *dev;
    bool own_dev;
    struct etf_meter *meter;
    struct etf_freq *freq;
    struct etf_sched *s;

    /* The recorder: every completion, in order. Guarded by mu for threaded tests. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct etf_task_record *recs;
    size_t n_recs, cap_recs;
    bool keep_records; /* false: count only */
    size_t n_done;     /* completions seen (kept or not) */
    size_t n_failed;   /* completions with status != 0 */

    /* Closed loop: on every successful completion, submit another task of the same model. */
    bool resubmit;
    size_t resubmit_errors;
    fx_hook_fn hook;
    void *hook_arg;
};

static void fx_on_done(void *arg, const struct etf_task_record *rec)
{
    struct fixture *fx = arg;
    pthread_mutex_lock(&fx->mu);
    if (fx->keep_records) {
        if (fx->n_recs == fx->cap_recs) {
            fx->cap_recs = fx->cap_recs ? fx->cap_recs * 2 : 256;
            fx->recs = realloc(fx->recs, fx->cap_recs * sizeof *fx->recs);
        }
        if (fx->recs)
            fx->recs[fx->n_recs++] = *rec;
    }
    fx->n_done++;
    if (rec->status)
        fx->n_failed++;
    bool resubmit = fx->resubmit && rec->status == 0;
    fx_hook_fn hook = fx->hook;
    pthread_cond_broadcast(&fx->cv);
    pthread_mutex_unlock(&fx->mu);
    if (resubmit) {
        struct etf_request req = {.mid = rec->mid};
        if (etf_submit(fx->s, &req, NULL, NULL) != 0) {
            pthread_mutex_lock(&fx->mu);
            fx->resubmit_errors++;
            pthread_mutex_unlock(&fx->mu);
        }
    }
    if (hook)
        hook(fx, rec);
}

static struct fixture *fx_new_ex(const struct fx_config *c)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    assert_int_equal(pthread_mutex_init(&fx->mu, NULL), 0);
    assert_int_equal(pthread_cond_init(&fx->cv, NULL), 0);
    fx->keep_records = true;
    fx->clock = etf_vclock_as_clock(&fx->vc);
    struct etf_diag diag = {{0}};

    struct etf_device_config dc = {.vclock = c->real_clock ? NULL : &fx->vc,
                                   .queue_depth = c->queue_depth};
    int rc = 0;
    fx->dev = c->device;
    if (!fx->dev) {
        fx->own_dev = true;
        if ((rc = etf_device_open("sim", &dc, &fx->dev, &diag)))
            fail_msg("device sim: %s", diag.msg);
    }
    rc = etf_meter_open("model", NULL, &fx->meter, &diag);
    if (rc)
        fail_msg("meter model: %s", diag.msg);
    const char *freq = c->freq ? c->freq : "sim";
    if (freq[0]) {
        struct etf_freq_config fc = {.initial_hz = c->initial_hz};
        rc = etf_freq_open(freq, &fc, &fx->freq, &diag);
        if (rc)
            fail_msg("freq %s: %s", freq, diag.msg);
    }
    struct etf_sched_config sc = {
        .quantum_ns = c->quantum_ns,
        .phi = c->phi,
        .clock = c->real_clock ? NULL : &fx->clock,
        .device = fx->dev,
        .meter = fx->meter,
        .freq = fx->freq,
        .on_done = fx_on_done,
        .on_done_arg = fx,
        .power_horizon_tasks = c->power_horizon_tasks,
        .max_queued_tasks = c->max_queued_tasks,
    };
    rc = etf_sched_create(&sc, &fx->s, &diag);
    if (rc)
        fail_msg("etf_sched_create: %s: %s", etf_strerror(rc), diag.msg);
    return fx;
}

SUPPORT_UNUSED static struct fixture *fx_new(double phi, uint64_t quantum_ns)
{
    struct fx_config c = {.phi = phi, .quantum_ns = quantum_ns};
    return fx_new_ex(&c);
}

/* Destroys the scheduler (failing what is still queued), then the backends. */
SUPPORT_UNUSED static void fx_free(struct fixture *fx)
{
    fx->resubmit = false;
    fx->hook = NULL;
    etf_sched_destroy(fx->s);
    etf_freq_close(fx->freq);
    etf_meter_close(fx->meter);
    if (fx->own_dev)
        etf_device_close(fx->dev);
    pthread_cond_destroy(&fx->cv);
    pthread_mutex_destroy(&fx->mu);
    free(fx->recs);
    free(fx);
}

SUPPORT_UNUSED static uint64_t fx_entity(struct fixture *fx, int nice)
{
    uint64_t eid = 0;
    struct etf_diag diag = {{0}};
    int rc = etf_entity_create(fx->s, nice, &eid, &diag);
    if (rc)
        fail_msg("etf_entity_create(%d): %s", nice, diag.msg);
    return eid;
}

/* Loads profile p (ownership passes to the scheduler) for eid at hz (0 = default). */
SUPPORT_UNUSED static uint64_t fx_model(struct fixture *fx, uint64_t eid, struct etf_profile *p,
                                        uint64_t hz)
{
    uint64_t mid = 0;
    struct etf_diag diag = {{0}};
    struct etf_model_spec spec = {.profile = p, .freq_hz = hz};
    int rc = etf_model_load(fx->s, eid, &spec, &mid, &diag);
    if (rc) {
        etf_profile_free(p);
        fail_msg("etf_model_load: %s: %s", etf_strerror(rc), diag.msg);
    }
    return mid;
}

SUPPORT_UNUSED static uint64_t fx_submit(struct fixture *fx, uint64_t mid)
{
    uint64_t tid = 0;
    struct etf_diag diag = {{0}};
    struct etf_request req = {.mid = mid};
    int rc = etf_submit(fx->s, &req, &tid, &diag);
    if (rc)
        fail_msg("etf_submit(%" PRIu64 "): %s: %s", mid, etf_strerror(rc), diag.msg);
    return tid;
}

/* One etf_sched_step that must succeed; returns whether it ran a turn. */
SUPPORT_UNUSED static bool fx_step(struct fixture *fx)
{
    bool ran = false;
    int rc = etf_sched_step(fx->s, &ran);
    if (rc)
        fail_msg("etf_sched_step: %s", etf_strerror(rc));
    return ran;
}

/* Steps until nothing is runnable (at most max_steps turns); returns the turns run. */
SUPPORT_UNUSED static size_t fx_drain(struct fixture *fx, size_t max_steps)
{
    size_t n = 0;
    while (n < max_steps && fx_step(fx))
        n++;
    return n;
}

/* Steps while the virtual clock is before until_ns; fails if the scheduler goes idle. */
SUPPORT_UNUSED static void fx_run_until(struct fixture *fx, uint64_t until_ns)
{
    while (fx->vc.now_ns < until_ns) {
        if (!fx_step(fx))
            fail_msg("scheduler went idle at %" PRIu64 " ns before %" PRIu64 " ns", fx->vc.now_ns,
                     until_ns);
    }
}

SUPPORT_UNUSED static struct etf_entity_stats fx_estats(struct fixture *fx, uint64_t eid)
{
    struct etf_entity_stats st;
    memset(&st, 0, sizeof st);
    assert_int_equal(etf_entity_stats(fx->s, eid, &st), 0);
    return st;
}

SUPPORT_UNUSED static struct etf_sched_stats fx_sstats(struct fixture *fx)
{
    struct etf_sched_stats st;
    memset(&st, 0, sizeof st);
    etf_sched_stats(fx->s, &st);
    return st;
}

/* Fails the test when |got - want| > tol, saying what was compared. */
#define assert_near(got, want, tol, what)                                                          \
    do {                                                                                           \
        double got_ = (double)(got), want_ = (double)(want), tol_ = (double)(tol);                 \
        if (!(got_ >= want_ - tol_ && got_ <= want_ + tol_))                                       \
            fail_msg("%s: got %.9g, expected %.9g +- %.3g", (what), got_, want_, tol_);            \
    } while (0)

#endif
