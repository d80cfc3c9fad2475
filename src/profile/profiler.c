/* The profiler (etf/profiler.h): kernels measured one by one at each frequency, progress
 * saved after each, the profile written at the end.
 *
 * Kernels run alone, repeatedly, on buffers the warm-up filled: a kernel that accumulates
 * into its output (a fused residual sum) grows it linearly with the runs, which moves
 * neither its time nor its power.
 */
#include "etf/profiler.h"

#include "device/device.h"
#include "freq/freq.h"
#include "meter/meter.h"
#include "util/file.h"

#include <cjson/cJSON.h>

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_MIN_TIME_NS 1000000000ull
/* The sampler reads the meter this often: a window's ends are known to this much. */
#define SAMPLE_NS 10000000ull
/* A counter that has not moved for this long is read as it stands (no power, or a meter
 * coarser than that); a meter that gave no reading for this long has failed. */
#define EDGE_WAIT_NS 500000000ull
#define PROGRESS_MAGIC "etf_profile_progress"
#define PROGRESS_VERSION 1
#define PROGRESS_MAX_BYTES (64u << 20)

/* ---- The clock in force ---- */

int etf_profiler_clock_hz(struct etf_freq *freq, bool cpu_device, uint64_t *hz, bool *from_cpuinfo)
{
    *from_cpuinfo = false;
    if (freq && etf_freq_current(freq, hz) == 0 && *hz > 0)
        return 0;
    if (!cpu_device)
        return ETF_ENOTSUP;
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return ETF_ENOTSUP;
    char line[256];
    double mhz = 0;
    while (fgets(line, sizeof line, f) && sscanf(line, "cpu MHz : %lf", &mhz) != 1)
        ;
    fclose(f);
    if (!(mhz > 0 && mhz < 1e6))
        return ETF_ENOTSUP;
    *hz = (uint64_t)llround(mhz * 1e6);
    *from_cpuinfo = true;
    return 0;
}

/* ---- The meter's sampler ---- */

struct reading {
    uint64_t uj, at_ns;
};

/* Reads the meter every SAMPLE_NS on its own thread (a read may take milliseconds) and
 * keeps the latest reading and the latest one where the counter moved. */
struct sampler {
    struct etf_meter *meter;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    bool have, have_moved;
    struct reading latest, moved;
    int error; /* the latest failed read's code; 0 after a good read */
};

static void *sampler_main(void *arg)
{
    struct sampler *s = arg;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        pthread_mutex_unlock(&s->mu);
        struct reading r;
        int rc = etf__meter_read_energy(s->meter, &r.uj, &r.at_ns);
        pthread_mutex_lock(&s->mu);
        s->error = rc;
        if (!rc) {
            if (s->have && r.uj != s->latest.uj) {
                s->moved = r;
                s->have_moved = true;
            }
            s->latest = r;
            s->have = true;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += (long)SAMPLE_NS;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        if (!s->stop)
            pthread_cond_timedwait(&s->cv, &s->mu, &until);
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

static int sampler_start(struct sampler *s, struct etf_meter *meter, struct etf_diag *diag)
{
    memset(s, 0, sizeof *s);
    s->meter = meter;
    if (pthread_mutex_init(&s->mu, NULL) != 0)
        return etf_diagf(diag, ETF_ENOMEM, "profiler: cannot create the sampler's lock");
    if (pthread_cond_init(&s->cv, NULL) != 0) {
        pthread_mutex_destroy(&s->mu);
        return etf_diagf(diag, ETF_ENOMEM, "profiler: cannot create the sampler's condition");
    }
    if (pthread_create(&s->thread, NULL, sampler_main, s) != 0) {
        pthread_cond_destroy(&s->cv);
        pthread_mutex_destroy(&s->mu);
        return etf_diagf(diag, ETF_ENOMEM, "profiler: cannot start the meter's sampler thread");
    }
    return 0;
}

static void sampler_stop(struct sampler *s)
{
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

/* A reading taken at or after `after` that can end a window: the latest one where the
 * counter moved, or, once it has stood still for EDGE_WAIT_NS, the latest one. 1 = found,
 * 0 = not yet, an error when the meter has given no reading since `after` for that long. */
static int sampler_edge(struct sampler *s, uint64_t after, uint64_t now, struct reading *out)
{
    int found = 0;
    bool waited = now >= after + EDGE_WAIT_NS;
    pthread_mutex_lock(&s->mu);
    if (s->have_moved && s->moved.at_ns >= after) {
        *out = s->moved;
        found = 1;
    } else if (s->have && s->latest.at_ns >= after) {
        if (waited) {
            *out = s->latest;
            found = 1;
        }
    } else if (waited) {
        found = s->error ? s->error : ETF_EDEVICE;
    }
    pthread_mutex_unlock(&s->mu);
    return found;
}

/* ---- The run ---- */

struct profiler {
    const struct etf_profiler_config *cfg;
    struct etf_diag *diag;
    const char *model;
    const char **kernels; /* names, in execution order */
    size_t n_kernels;
    uint64_t *freqs; /* ascending */
    size_t n_freqs;
    enum etf_profiler_clock clock;
    uint64_t min_time_ns;
    bool power;
    double *time_us, *power_mw; /* [f * n_kernels + k] */
    size_t *n_done;             /* per frequency: kernels measured (the first n_done[f]) */
    size_t done;
    char *partial; /* the progress file's path */
    cJSON *setup;  /* what a run must match to resume: model, kernels, backends, options */
    struct etf_dmodel *dm;
    struct sampler sampler;
    bool sampling;
};

static void emit(const struct profiler *p, struct etf_profiler_event *ev)
{
    ev->model = p->model;
    ev->n_kernels = p->n_kernels;
    ev->n_freqs = p->n_freqs;
    ev->done = p->done;
    ev->total = p->n_kernels * p->n_freqs;
    ev->clock = p->clock;
    ev->power = p->power;
    if (p->cfg->on_event)
        p->cfg->on_event(p->cfg->on_event_arg, ev);
}

static const char *freq_name(const struct etf_freq *f)
{
    return f ? etf_freq_name(f) : "none";
}

/* Decides what to measure: p->freqs and p->clock. */
static int plan_frequencies(struct profiler *p)
{
    const struct etf_profiler_config *cfg = p->cfg;
    bool can_set = etf__freq_can_set(cfg->freq);
    size_t n = 0;
    p->freqs = malloc(ETF_PROFILE_MAX_FREQS * sizeof *p->freqs);
    if (!p->freqs)
        return etf_diagf(p->diag, ETF_ENOMEM, "profiler: out of memory");
    if (cfg->all_freqs) {
        if (!can_set)
            return etf_diagf(p->diag, ETF_EINVAL,
                             "the %s controller cannot set the clock, so there are no frequencies "
                             "to go through: name a controller that can, or measure at the clock "
                             "in force",
                             freq_name(cfg->freq));
        int rc = etf__freq_list(cfg->freq, p->freqs, ETF_PROFILE_MAX_FREQS, &n);
        if (rc == ETF_ENOTSUP)
            return etf_diagf(p->diag, ETF_EINVAL,
                             "the %s controller cannot tell which frequencies it offers: name "
                             "them",
                             freq_name(cfg->freq));
        if (rc)
            return etf_diagf(p->diag, rc, "the %s controller's frequencies: %s",
                             freq_name(cfg->freq), etf_strerror(rc));
        if (n == 0 || n > ETF_PROFILE_MAX_FREQS)
            return etf_diagf(p->diag, ETF_EINVAL,
                             "the %s controller offers %zu frequencies (a profile holds 1 to %u)",
                             freq_name(cfg->freq), n, ETF_PROFILE_MAX_FREQS);
        p->clock = ETF_PROFILER_CLOCK_SET;
    } else if (cfg->n_freqs > 0) {
        if (cfg->n_freqs > ETF_PROFILE_MAX_FREQS)
            return etf_diagf(p->diag, ETF_EINVAL, "%zu frequencies (a profile holds at most %u)",
                             cfg->n_freqs, ETF_PROFILE_MAX_FREQS);
        memcpy(p->freqs, cfg->freqs_hz, cfg->n_freqs * sizeof *p->freqs);
        n = etf__freq_sort_unique(p->freqs, cfg->n_freqs);
        if (p->freqs[0] == 0)
            return etf_diagf(p->diag, ETF_EINVAL, "0 Hz is no frequency");
        if (!can_set && n > 1)
            return etf_diagf(p->diag, ETF_EINVAL,
                             "the %s controller cannot set the clock: one frequency at most, "
                             "naming the clock in force",
                             freq_name(cfg->freq));
        p->clock = can_set ? ETF_PROFILER_CLOCK_SET : ETF_PROFILER_CLOCK_GIVEN;
        /* Refused now rather than after an hour of measuring the others. */
        uint64_t offer[ETF_PROFILE_MAX_FREQS];
        size_t n_offer = 0;
        if (can_set && etf__freq_list(cfg->freq, offer, ETF_PROFILE_MAX_FREQS, &n_offer) == 0 &&
            n_offer <= ETF_PROFILE_MAX_FREQS) {
            for (size_t i = 0; i < n; i++) {
                if (!etf__freq_listed(offer, n_offer, p->freqs[i])) {
                    char list[400];
                    etf__freq_format_list(offer, n_offer, 1, list, sizeof list);
                    return etf_diagf(p->diag, ETF_EINVAL,
                                     "%" PRIu64 " Hz is not on offer (the %s controller has: %s)",
                                     p->freqs[i], freq_name(cfg->freq), list);
                }
            }
        }
    } else {
        bool cpuinfo;
        bool cpu = strcmp(etf_device_name(cfg->device), "cpu") == 0;
        if (etf_profiler_clock_hz(cfg->freq, cpu, &p->freqs[0], &cpuinfo) != 0)
            return etf_diagf(p->diag, ETF_EINVAL,
                             "the clock of the %s device is unknown (the %s controller cannot "
                             "read it): name its frequency, or use a controller that reads it",
                             etf_device_name(cfg->device), freq_name(cfg->freq));
        n = 1;
        p->clock = cpuinfo ? ETF_PROFILER_CLOCK_CPUINFO : ETF_PROFILER_CLOCK_CONTROLLER;
    }
    p->n_freqs = n;
    return 0;
}

/* ---- Progress ---- */

static cJSON *make_setup(const struct profiler *p)
{
    const struct etf_profiler_config *cfg = p->cfg;
    cJSON *o = cJSON_CreateObject();
    cJSON *kernels = cJSON_CreateStringArray(p->kernels, (int)p->n_kernels);
    cJSON *freqs = cJSON_CreateArray();
    if (!o || !kernels || !freqs)
        goto fail;
    for (size_t f = 0; f < p->n_freqs; f++)
        if (!cJSON_AddItemToArray(freqs, cJSON_CreateNumber((double)p->freqs[f])))
            goto fail;
    static const char *const clocks[] = {
        [ETF_PROFILER_CLOCK_SET] = "set",
        [ETF_PROFILER_CLOCK_GIVEN] = "given",
        [ETF_PROFILER_CLOCK_CONTROLLER] = "controller",
        [ETF_PROFILER_CLOCK_CPUINFO] = "cpuinfo",
    };
    const char *meter = cfg->meter ? etf_meter_name(cfg->meter) : "none";
    /* Built in this order, compared in this order: the first difference is the one named. */
    if (!cJSON_AddStringToObject(o, "model_name", p->model) ||
        !cJSON_AddItemToObject(o, "kernels", kernels))
        goto fail;
    kernels = NULL;
    if (!cJSON_AddStringToObject(o, "device", etf_device_name(cfg->device)) ||
        !cJSON_AddStringToObject(o, "freq", freq_name(cfg->freq)) ||
        !cJSON_AddStringToObject(o, "clock", clocks[p->clock]))
        goto fail;
    /* A clock only read (the CPU's moves by the second) is taken from the progress file
     * instead: see progress_take. */
    bool chosen = p->clock == ETF_PROFILER_CLOCK_SET || p->clock == ETF_PROFILER_CLOCK_GIVEN;
    if (chosen && !cJSON_AddItemToObject(o, "frequencies", freqs))
        goto fail;
    if (chosen)
        freqs = NULL;
    if (!cJSON_AddStringToObject(o, "meter", meter) ||
        !cJSON_AddBoolToObject(o, "power", p->power) ||
        !cJSON_AddNumberToObject(o, "min_time_ns", (double)p->min_time_ns) ||
        !cJSON_AddNumberToObject(o, "warmup", cfg->warmup) ||
        !cJSON_AddStringToObject(o, "setup", cfg->setup ? cfg->setup : ""))
        goto fail;
    cJSON_Delete(freqs);
    return o;
fail:
    cJSON_Delete(kernels);
    cJSON_Delete(freqs);
    cJSON_Delete(o);
    return NULL;
}

static int progress_save(struct profiler *p)
{
    cJSON *root = cJSON_CreateObject(), *measured = cJSON_CreateArray();
    char *text = NULL;
    int rc = ETF_ENOMEM;
    if (!root || !measured || !cJSON_AddNumberToObject(root, PROGRESS_MAGIC, PROGRESS_VERSION))
        goto free_json;
    for (const cJSON *e = p->setup->child; e; e = e->next) {
        cJSON *copy = cJSON_Duplicate(e, true);
        if (!copy || !cJSON_AddItemToObject(root, e->string, copy)) {
            cJSON_Delete(copy);
            goto free_json;
        }
    }
    for (size_t f = 0; f < p->n_freqs; f++) {
        cJSON *m = cJSON_CreateObject();
        cJSON *t = cJSON_CreateDoubleArray(&p->time_us[f * p->n_kernels], (int)p->n_done[f]);
        cJSON *w = p->power
                       ? cJSON_CreateDoubleArray(&p->power_mw[f * p->n_kernels], (int)p->n_done[f])
                       : NULL;
        bool ok = m && t && (!p->power || w) &&
                  cJSON_AddNumberToObject(m, "hz", (double)p->freqs[f]) &&
                  cJSON_AddItemToObject(m, "exec_time", t);
        if (ok)
            t = NULL;
        ok = ok && (!w || cJSON_AddItemToObject(m, "gpu_power", w));
        if (ok)
            w = NULL;
        ok = ok && cJSON_AddItemToArray(measured, m);
        if (!ok) {
            cJSON_Delete(m);
            cJSON_Delete(t);
            cJSON_Delete(w);
            goto free_json;
        }
    }
    if (!cJSON_AddItemToObject(root, "measured", measured))
        goto free_json;
    measured = NULL;
    if (!(text = cJSON_Print(root)))
        goto free_json;
    const char *what = "";
    int e = etf__file_replace(p->partial, text, strlen(text), &what);
    rc = e ? etf_diagf(p->diag, ETF_EIO, "progress file %s: cannot %s: %s", p->partial, what,
                       strerror(-e))
           : 0;
free_json:
    if (rc == ETF_ENOMEM)
        etf_diagf(p->diag, rc, "progress file %s: out of memory", p->partial);
    free(text);
    cJSON_Delete(measured);
    cJSON_Delete(root);
    return rc;
}

/* A value of the progress file for a message: its JSON, cut short. */
static void quote_json(const cJSON *v, char *out, size_t cap)
{
    char *text = v ? cJSON_PrintUnformatted(v) : NULL;
    snprintf(out, cap, "%s", text ? text : "nothing");
    if (text && strlen(text) >= cap && cap > 4)
        memcpy(out + cap - 4, "...", 4);
    free(text);
}

static int progress_bad(struct profiler *p, const char *what)
{
    return etf_diagf(p->diag, ETF_EFORMAT,
                     "progress file %s: %s; remove it, or start over (etf-profile --restart)",
                     p->partial, what);
}

static bool is_measurement(const cJSON *v)
{
    return cJSON_IsNumber(v) && isfinite(v->valuedouble) && v->valuedouble >= 0;
}

/* Takes the measurements of one frequency from the progress file. */
static int progress_take(struct profiler *p, size_t f, const cJSON *m)
{
    const cJSON *hz = cJSON_GetObjectItemCaseSensitive(m, "hz");
    const cJSON *t = cJSON_GetObjectItemCaseSensitive(m, "exec_time");
    const cJSON *w = cJSON_GetObjectItemCaseSensitive(m, "gpu_power");
    int n = cJSON_GetArraySize(t);
    if (!cJSON_IsObject(m) || !cJSON_IsNumber(hz) || !cJSON_IsArray(t) ||
        (size_t)n > p->n_kernels || (p->power != (w != NULL)) ||
        (w && (!cJSON_IsArray(w) || cJSON_GetArraySize(w) != n)))
        return progress_bad(p, "a measurement is not {\"hz\": N, \"exec_time\": [...], "
                               "\"gpu_power\": [...]} of this setup");
    /* Doubles hold whole numbers exactly up to 2^53, far above any clock. */
    if (!(hz->valuedouble >= 1 && hz->valuedouble < 9007199254740992.0) ||
        hz->valuedouble != floor(hz->valuedouble))
        return progress_bad(p, "a frequency is not a whole number of Hz");
    uint64_t v = (uint64_t)hz->valuedouble;
    /* A clock that was only read keeps the reading the run began with. */
    if (p->clock == ETF_PROFILER_CLOCK_CONTROLLER || p->clock == ETF_PROFILER_CLOCK_CPUINFO)
        p->freqs[f] = v;
    else if (v != p->freqs[f])
        return progress_bad(p, "a measurement's frequency is not its setup's");
    /* Walked as lists (both have n items): cJSON_GetArrayItem starts from the head. */
    const cJSON *vt = t->child, *vw = w ? w->child : NULL;
    for (size_t k = 0; k < (size_t)n; k++, vt = vt->next, vw = w ? vw->next : NULL) {
        if (!is_measurement(vt) || (w && !is_measurement(vw)))
            return progress_bad(p, "a measurement is not a number >= 0");
        p->time_us[f * p->n_kernels + k] = vt->valuedouble;
        if (w)
            p->power_mw[f * p->n_kernels + k] = vw->valuedouble;
    }
    p->n_done[f] = (size_t)n;
    p->done += (size_t)n;
    return 0;
}

/* Takes up the progress file of an earlier run, if there is one: its measurements count as
 * done when it is of this model and setup; otherwise it is refused (ETF_EINVAL), or
 * ETF_EFORMAT when it is not a progress file at all. */
static int progress_load(struct profiler *p)
{
    struct etf__file_buf file;
    struct etf_diag why;
    int rc = etf__file_read(p->partial, PROGRESS_MAX_BYTES, &file, &why);
    if (rc == ETF_ENOENT)
        return 0;
    if (rc)
        return etf_diagf(p->diag, rc, "progress file: %s", why.msg);
    cJSON *root = cJSON_ParseWithLength(file.bytes, file.len);
    const cJSON *magic = cJSON_GetObjectItemCaseSensitive(root, PROGRESS_MAGIC);
    if (!cJSON_IsObject(root) || !cJSON_IsNumber(magic) || magic->valuedouble != PROGRESS_VERSION) {
        rc = progress_bad(p, "not an etf-profile progress file of version 1");
        goto free_json;
    }
    /* Every part of the setup must match before any measurement is trusted. */
    for (const cJSON *want = p->setup->child; want; want = want->next) {
        const cJSON *have = cJSON_GetObjectItemCaseSensitive(root, want->string);
        if (!have || !cJSON_Compare(have, want, true)) {
            char was[160], now[160];
            quote_json(have, was, sizeof was);
            quote_json(want, now, sizeof now);
            rc = etf_diagf(p->diag, ETF_EINVAL,
                           "progress file %s is of another run (%s: %s there, %s here); rerun "
                           "as it was run to resume it, or start over (etf-profile --restart)",
                           p->partial, want->string, was, now);
            goto free_json;
        }
    }
    const cJSON *measured = cJSON_GetObjectItemCaseSensitive(root, "measured");
    if (!cJSON_IsArray(measured) || (size_t)cJSON_GetArraySize(measured) != p->n_freqs) {
        rc = progress_bad(p, "\"measured\" is not a list with one entry per frequency");
        goto free_json;
    }
    size_t f = 0;
    for (const cJSON *m = measured->child; m && !rc; m = m->next)
        rc = progress_take(p, f++, m);
free_json:
    cJSON_Delete(root);
    etf__file_release(&file);
    return rc;
}

/* ---- Measuring ---- */

/* Runs kernel k once, unless told to stop: then ETF_ESHUTDOWN, with what is saved. */
static int launch(struct profiler *p, size_t k, uint64_t hz, uint64_t *busy_ns)
{
    if (p->cfg->stop && *p->cfg->stop)
        return etf_diagf(p->diag, ETF_ESHUTDOWN, "interrupted: %zu of %zu measurements saved in %s",
                         p->done, p->n_kernels * p->n_freqs, p->partial);
    struct etf_kernel_run run = {.dm = p->dm, .kernel = k, .freq_hz = hz};
    int rc = etf__device_launch(p->cfg->device, &run);
    if (rc)
        return etf_diagf(p->diag, rc,
                         "kernel %zu '%.100s' at %" PRIu64 " Hz failed on the %s device: %s", k,
                         p->kernels[k], hz, etf_device_name(p->cfg->device), etf_strerror(rc));
    *busy_ns = run.busy_ns;
    return 0;
}

/* Runs kernel k at hz for at least min_time and measures it. */
static int measure(struct profiler *p, size_t k, uint64_t hz, struct etf_profiler_event *ev)
{
    uint64_t min_time = p->min_time_ns;
    uint64_t busy = 0, runs = 0, start = etf_host_ns();
    struct reading w0 = {0}, w1 = {0};
    bool have_w0 = false;
    for (;;) {
        uint64_t ns;
        int rc = launch(p, k, hz, &ns);
        if (rc)
            return rc;
        busy += ns;
        runs++;
        uint64_t now = etf_host_ns();
        if (!p->sampling) {
            if (now - start >= min_time)
                break;
            continue;
        }
        /* The window opens at a reading after the runs began and closes at one at least
         * min_time later: the energy between them is the kernel's, runs back to back. */
        rc = sampler_edge(&p->sampler, have_w0 ? w0.at_ns + min_time : start, now,
                          have_w0 ? &w1 : &w0);
        if (rc < 0)
            return etf_diagf(p->diag, rc, "meter %s: no reading for %llu ms: %s",
                             etf_meter_name(p->cfg->meter), EDGE_WAIT_NS / 1000000ull,
                             etf_strerror(rc));
        if (rc == 1 && have_w0)
            break;
        have_w0 = have_w0 || rc == 1;
    }
    ev->time_us = (double)busy / (double)runs / 1000.0;
    ev->runs = runs;
    if (p->sampling) {
        if (w1.uj < w0.uj)
            return etf_diagf(p->diag, ETF_EDEVICE, "meter %s: its energy counter went back",
                             etf_meter_name(p->cfg->meter));
        /* µJ per ns is kW: * 1e6 for mW. */
        ev->power_mw = (double)(w1.uj - w0.uj) * 1e6 / (double)(w1.at_ns - w0.at_ns);
    }
    return 0;
}

static int switch_clock(struct profiler *p, uint64_t hz)
{
    int rc = etf__freq_set(p->cfg->freq, hz);
    if (rc) {
        const char *why = etf_freq_last_error(p->cfg->freq);
        return etf_diagf(p->diag, rc, "setting the clock to %" PRIu64 " Hz failed: %.400s", hz,
                         why[0] ? why : etf_strerror(rc));
    }
    return 0;
}

static int warm_up(struct profiler *p, uint64_t hz)
{
    for (unsigned i = 0; i < p->cfg->warmup; i++) {
        for (size_t k = 0; k < p->n_kernels; k++) {
            uint64_t ns;
            int rc = launch(p, k, hz, &ns);
            if (rc)
                return rc;
        }
    }
    return 0;
}

static int measure_all(struct profiler *p)
{
    for (size_t f = 0; f < p->n_freqs; f++) {
        if (p->n_done[f] == p->n_kernels)
            continue;
        uint64_t hz = p->freqs[f];
        int rc = p->clock == ETF_PROFILER_CLOCK_SET ? switch_clock(p, hz) : 0;
        if (!rc)
            rc = warm_up(p, hz);
        if (rc)
            return rc;
        struct etf_profiler_event ev = {.kind = ETF_PROFILER_FREQ, .freq_index = f, .hz = hz};
        emit(p, &ev);
        for (size_t k = p->n_done[f]; k < p->n_kernels; k++) {
            ev = (struct etf_profiler_event){.kind = ETF_PROFILER_KERNEL,
                                             .freq_index = f,
                                             .hz = hz,
                                             .kernel_index = k,
                                             .kernel = p->kernels[k]};
            if ((rc = measure(p, k, hz, &ev)))
                return rc;
            p->time_us[f * p->n_kernels + k] = ev.time_us;
            if (p->power)
                p->power_mw[f * p->n_kernels + k] = ev.power_mw;
            p->n_done[f] = k + 1;
            p->done++;
            if ((rc = progress_save(p)))
                return rc;
            emit(p, &ev);
        }
    }
    return 0;
}

/* The profile of the measurements, in the original format's figures. */
static int write_profile(struct profiler *p)
{
    size_t nf = p->n_freqs, nk = p->n_kernels;
    struct etf_profile out = {
        .model_name = (char *)p->model,
        .n_freqs = nf,
        .freqs_hz = p->freqs,
        .has_power = p->power,
        .n_kernels = nk,
    };
    int rc = ETF_ENOMEM;
    out.kernels = calloc(nk, sizeof *out.kernels);
    double *times = malloc(nk * nf * sizeof *times);
    double *powers = p->power ? malloc(nk * nf * sizeof *powers) : NULL;
    double *totals = calloc(3 * nf, sizeof *totals);
    if (!out.kernels || !times || (p->power && !powers) || !totals) {
        etf_diagf(p->diag, rc, "profiler: out of memory");
        goto free_all;
    }
    out.time_us = totals;
    out.energy_uj = p->power ? totals + nf : NULL;
    out.power_mw = p->power ? totals + 2 * nf : NULL;
    /* Kept frequency-major while measuring; the profile wants them per kernel. */
    for (size_t k = 0; k < nk; k++) {
        out.kernels[k].name = (char *)p->kernels[k];
        out.kernels[k].time_us = &times[k * nf];
        out.kernels[k].power_mw = powers ? &powers[k * nf] : NULL;
        for (size_t f = 0; f < nf; f++) {
            times[k * nf + f] = p->time_us[f * nk + k];
            out.time_us[f] += times[k * nf + f];
            if (powers) {
                powers[k * nf + f] = p->power_mw[f * nk + k];
                out.energy_uj[f] += times[k * nf + f] * powers[k * nf + f] / 1000.0;
            }
        }
    }
    for (size_t f = 0; f < nf; f++) {
        if (!(out.time_us[f] > 0)) {
            rc = etf_diagf(p->diag, ETF_EDEVICE,
                           "the kernels took no measurable time at %" PRIu64 " Hz: no profile",
                           p->freqs[f]);
            goto free_all;
        }
        if (p->power)
            out.power_mw[f] = out.energy_uj[f] / out.time_us[f] * 1000.0;
    }
    if ((rc = etf_profile_save(&out, p->cfg->out_path, p->diag)))
        goto free_all;
    if (unlink(p->partial) == 0)
        etf__file_sync_dir(p->partial);
    struct etf_profiler_event ev = {.kind = ETF_PROFILER_DONE, .profile = &out};
    emit(p, &ev);
free_all:
    free(out.kernels);
    free(times);
    free(powers);
    free(totals);
    return rc;
}

static int check_config(const struct etf_profiler_config *cfg, struct etf_diag *diag)
{
    if (!cfg || !cfg->out_path || !cfg->out_path[0] || !cfg->device)
        return etf_diagf(diag, ETF_EINVAL, "profiler: no output file or no device");
    if (!cfg->plan == !cfg->sim_profile)
        return etf_diagf(diag, ETF_EINVAL,
                         "profiler: give the model as a plan or, for the simulated device, a "
                         "profile: one of the two");
    if (cfg->n_freqs && !cfg->freqs_hz)
        return etf_diagf(diag, ETF_EINVAL, "profiler: %zu frequencies but no list", cfg->n_freqs);
    return 0;
}

int etf_profiler_run(const struct etf_profiler_config *cfg, struct etf_diag *diag)
{
    int rc = check_config(cfg, diag);
    if (rc)
        return rc;
    struct profiler p = {.cfg = cfg, .diag = diag};
    p.power = etf__meter_measures(cfg->meter);
    p.min_time_ns = cfg->min_time_ns ? cfg->min_time_ns : DEFAULT_MIN_TIME_NS;
    if (cfg->plan) {
        p.model = etf_plan_name(cfg->plan);
        p.n_kernels = etf_plan_kernel_count(cfg->plan);
    } else {
        p.model = cfg->sim_profile->model_name;
        p.n_kernels = cfg->sim_profile->n_kernels;
    }
    size_t nk = p.n_kernels;
    size_t plen = strlen(cfg->out_path);
    p.kernels = calloc(nk, sizeof *p.kernels);
    p.partial = malloc(plen + sizeof ".partial");
    if (!p.kernels || !p.partial) {
        rc = etf_diagf(diag, ETF_ENOMEM, "profiler: out of memory");
        goto free_all;
    }
    memcpy(p.partial, cfg->out_path, plen);
    memcpy(p.partial + plen, ".partial", sizeof ".partial");
    for (size_t k = 0; k < nk; k++)
        p.kernels[k] =
            cfg->plan ? etf_plan_kernel_name(cfg->plan, k) : cfg->sim_profile->kernels[k].name;
    if ((rc = plan_frequencies(&p)))
        goto free_all;
    size_t nf = p.n_freqs;
    p.time_us = calloc(nf * nk, sizeof *p.time_us);
    p.power_mw = calloc(nf * nk, sizeof *p.power_mw);
    p.n_done = calloc(nf, sizeof *p.n_done);
    p.setup = make_setup(&p);
    if (!p.time_us || !p.power_mw || !p.n_done || !p.setup) {
        rc = etf_diagf(diag, ETF_ENOMEM, "profiler: out of memory");
        goto free_all;
    }
    /* Starting over leaves the progress file to be replaced by the first save. */
    if (!cfg->restart && (rc = progress_load(&p)))
        goto free_all;
    struct etf_model_desc desc = {.name = p.model, .profile = cfg->sim_profile, .plan = cfg->plan};
    if ((rc = etf__device_load(cfg->device, &desc, &p.dm, diag)))
        goto free_all;
    struct etf_profiler_event ev = {.kind = ETF_PROFILER_START, .resumed = p.done};
    emit(&p, &ev);
    if (p.power) {
        if ((rc = sampler_start(&p.sampler, cfg->meter, diag)))
            goto unload;
        p.sampling = true;
    }
    rc = measure_all(&p);
    if (p.sampling)
        sampler_stop(&p.sampler);
    if (!rc)
        rc = write_profile(&p);
unload:
    etf__device_unload(cfg->device, p.dm);
free_all:
    cJSON_Delete(p.setup);
    free(p.n_done);
    free(p.power_mw);
    free(p.time_us);
    free(p.freqs);
    free(p.partial);
    free(p.kernels);
    return rc;
}
