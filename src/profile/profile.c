/* Model profiles: reading, validating and writing the original ETF profile JSON.
 *
 * A profile is the only description of a model that the simulator and the `model` meter
 * have, so a wrong number here silently skews every schedule built on it. The loader
 * therefore refuses anything it cannot vouch for (unknown keys, frequencies a kernel does
 * not cover, totals that contradict the kernels) and says precisely what it found, and the
 * model-level figures are always recomputed from the kernels rather than trusted.
 */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include "etf/profile.h"

#include <cjson/cJSON.h>

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_NAME_BYTES 255
/* User strings quoted in messages are cut to this many bytes so a message stays readable
 * and leaves room in etf_diag for the rest. */
#define QUOTE_BYTES 60

/* Tolerances for figures that are given twice. The TX2 fixtures agree far more closely
 * (kernel energies within 1 uJ, totals within 0.06%); the slack absorbs rounding to whole
 * units in profiles produced by other tools. */
#define KERNEL_ENERGY_REL 0.02
#define KERNEL_ENERGY_ABS_UJ 1.0
#define MODEL_TIME_REL 0.01
#define MODEL_TIME_ABS_PER_KERNEL_US 1.0
#define MODEL_POWER_REL 0.05

struct parser {
    const char *origin;
    struct etf_diag *diag;
    /* Kernel being read, shortened for messages; empty at the top level. */
    char kname[QUOTE_BYTES + 8];
    /* Where the frequency set came from, for messages about extra frequencies. */
    char freq_src[QUOTE_BYTES + 48];
    size_t n_freqs;
    uint64_t *freqs; /* ascending */
    unsigned char *seen;
};

/* Copies s into dst (QUOTE_BYTES + 4 bytes at least), cut on a UTF-8 boundary with "..."
 * appended when too long, and with control characters replaced so that a message stays on
 * one line. */
static void shorten(char *dst, const char *s)
{
    size_t n = strlen(s);
    bool cut = n > QUOTE_BYTES;
    if (cut) {
        n = QUOTE_BYTES;
        while (n > 0 && ((unsigned char)s[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    if (cut) {
        memcpy(dst + n, "...", 4);
    } else {
        dst[n] = '\0';
    }
}

static int fail(struct parser *ps, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int fail(struct parser *ps, const char *fmt, ...)
{
    char text[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (ps->kname[0])
        return etf_diagf(ps->diag, ETF_EFORMAT, "%s: kernel '%s': %s", ps->origin, ps->kname, text);
    return etf_diagf(ps->diag, ETF_EFORMAT, "%s: %s", ps->origin, text);
}

static int oom(struct parser *ps)
{
    return etf_diagf(ps->diag, ETF_ENOMEM, "%s: out of memory while reading the profile",
                     ps->origin);
}

static const char *type_name(const cJSON *v)
{
    if (v == NULL)
        return "nothing";
    if (cJSON_IsObject(v))
        return "object";
    if (cJSON_IsArray(v))
        return "array";
    if (cJSON_IsString(v))
        return "string";
    if (cJSON_IsNumber(v))
        return "number";
    if (cJSON_IsBool(v))
        return "boolean";
    if (cJSON_IsNull(v))
        return "null";
    return "unknown value";
}

static char *dup_str(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d)
        memcpy(d, s, n);
    return d;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_str_ptr(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static long find_freq(const uint64_t *freqs, size_t n, uint64_t hz)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (freqs[mid] < hz)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && freqs[lo] == hz ? (long)lo : -1;
}

/* Frequency keys are plain decimal Hz: a sign, spaces or an exponent would mean the
 * profile was produced by something that does not know what the key is. */
static int parse_hz(struct parser *ps, const char *field, const char *key, uint64_t *out)
{
    char q[QUOTE_BYTES + 4];
    uint64_t v = 0;
    const char *s = key;
    if (*s == '\0')
        goto not_digits;
    for (; *s; s++) {
        if (*s < '0' || *s > '9')
            goto not_digits;
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10) {
            shorten(q, key);
            return fail(ps, "%s: key \"%s\" is not a frequency in Hz (exceeds %" PRIu64 ")", field,
                        q, UINT64_MAX);
        }
        v = v * 10 + d;
    }
    if (v == 0) {
        shorten(q, key);
        return fail(ps, "%s: key \"%s\" is not a frequency in Hz (expected > 0)", field, q);
    }
    *out = v;
    return 0;
not_digits:
    shorten(q, key);
    return fail(ps, "%s: key \"%s\" is not a frequency in Hz (expected decimal digits)", field, q);
}

static int read_number(struct parser *ps, const char *field, const cJSON *e, double *out)
{
    char q[QUOTE_BYTES + 4];
    shorten(q, e->string);
    if (!cJSON_IsNumber(e))
        return fail(ps, "%s[\"%s\"] must be a number >= 0, found %s", field, q, type_name(e));
    double v = e->valuedouble;
    if (!isfinite(v))
        return fail(ps, "%s[\"%s\"] must be a number >= 0, found a number too large to represent",
                    field, q);
    if (v < 0)
        return fail(ps, "%s[\"%s\"] must be a number >= 0, found %.10g", field, q, v);
    *out = v + 0.0; /* -0 becomes 0 so that saving never writes "-0" */
    return 0;
}

/* Takes the profile's frequency set from one exec_time object. */
static int collect_freqs(struct parser *ps, const cJSON *obj, const char *field)
{
    if (!cJSON_IsObject(obj))
        return fail(ps, "%s must be an object mapping frequencies in Hz to microseconds, found %s",
                    field, type_name(obj));
    size_t n = 0;
    for (const cJSON *e = obj->child; e; e = e->next)
        n++;
    if (n == 0)
        return fail(ps, "%s is empty (expected at least one frequency)", field);
    if (n > ETF_PROFILE_MAX_FREQS)
        return fail(ps, "%s has %zu frequencies (at most %u allowed)", field, n,
                    ETF_PROFILE_MAX_FREQS);
    ps->freqs = malloc(n * sizeof *ps->freqs);
    ps->seen = malloc(n);
    if (!ps->freqs || !ps->seen)
        return oom(ps);
    size_t i = 0;
    for (const cJSON *e = obj->child; e; e = e->next) {
        int rc = parse_hz(ps, field, e->string, &ps->freqs[i++]);
        if (rc)
            return rc;
    }
    qsort(ps->freqs, n, sizeof *ps->freqs, cmp_u64);
    for (i = 1; i < n; i++)
        if (ps->freqs[i] == ps->freqs[i - 1])
            return fail(ps, "%s has two entries for %" PRIu64 " Hz", field, ps->freqs[i]);
    ps->n_freqs = n;
    return 0;
}

/* Reads {"<Hz>": number, ...} covering exactly the profile's frequencies into out. */
static int read_map(struct parser *ps, const cJSON *obj, const char *field, double *out)
{
    if (!cJSON_IsObject(obj))
        return fail(ps, "%s must be an object mapping frequencies in Hz to numbers, found %s",
                    field, type_name(obj));
    memset(ps->seen, 0, ps->n_freqs);
    for (const cJSON *e = obj->child; e; e = e->next) {
        uint64_t hz;
        int rc = parse_hz(ps, field, e->string, &hz);
        if (rc)
            return rc;
        long i = find_freq(ps->freqs, ps->n_freqs, hz);
        if (i < 0)
            return fail(ps,
                        "%s has an entry for %" PRIu64
                        " Hz, which is not one of the profile's %zu frequencies (taken from %s)",
                        field, hz, ps->n_freqs, ps->freq_src);
        if (ps->seen[i])
            return fail(ps, "%s has two entries for %" PRIu64 " Hz", field, hz);
        ps->seen[i] = 1;
        rc = read_number(ps, field, e, &out[i]);
        if (rc)
            return rc;
    }
    for (size_t i = 0; i < ps->n_freqs; i++)
        if (!ps->seen[i])
            return fail(ps, "%s has no entry for %" PRIu64 " Hz", field, ps->freqs[i]);
    return 0;
}

/* Checks names and uniqueness of all kernels before any is read, so that a duplicate is
 * reported as such rather than as whatever differs between the two copies. */
static int check_kernel_names(struct parser *ps, const cJSON *kp, size_t n)
{
    char q[QUOTE_BYTES + 4];
    const char **names = malloc(n * sizeof *names);
    if (!names)
        return oom(ps);
    int rc = 0;
    size_t i = 0;
    for (const cJSON *k = kp->child; k; k = k->next) {
        size_t len = strlen(k->string);
        if (len == 0) {
            rc = fail(ps, "kernel_profile: kernel %zu has an empty name (expected 1 to %d bytes)",
                      i + 1, MAX_NAME_BYTES);
            goto cleanup;
        }
        if (len > MAX_NAME_BYTES) {
            shorten(q, k->string);
            rc = fail(ps, "kernel_profile: kernel name \"%s\" is %zu bytes long (at most %d)", q,
                      len, MAX_NAME_BYTES);
            goto cleanup;
        }
        names[i++] = k->string;
    }
    qsort(names, n, sizeof *names, cmp_str_ptr);
    for (i = 1; i < n; i++) {
        if (strcmp(names[i], names[i - 1]) == 0) {
            shorten(q, names[i]);
            rc = fail(ps, "kernel_profile: kernel '%s' appears more than once", q);
            goto cleanup;
        }
    }
cleanup:
    free(names);
    return rc;
}

enum { K_NAME = 1, K_TIME = 2, K_POWER = 4, K_ENERGY = 8 };

/* Reads one kernel. scratch holds 2 * n_freqs doubles. Sets *has_power. */
static int read_kernel(struct parser *ps, const cJSON *k, struct etf_kernel_profile *kp,
                       double *scratch, bool *has_power)
{
    char q[QUOTE_BYTES + 4];
    const cJSON *time = NULL, *power = NULL, *energy = NULL;
    unsigned seen = 0;
    size_t n = ps->n_freqs;

    if (!cJSON_IsObject(k))
        return fail(ps, "must be an object with exec_time, gpu_power and energy, found %s",
                    type_name(k));
    for (const cJSON *f = k->child; f; f = f->next) {
        unsigned bit;
        if (strcmp(f->string, "kernel_name") == 0) {
            bit = K_NAME;
            if (!cJSON_IsString(f))
                return fail(ps, "kernel_name must be a string, found %s", type_name(f));
            if (strcmp(f->valuestring, k->string) != 0) {
                shorten(q, f->valuestring);
                return fail(ps, "kernel_name is \"%s\", expected the same name as its key", q);
            }
        } else if (strcmp(f->string, "exec_time") == 0) {
            bit = K_TIME;
            time = f;
        } else if (strcmp(f->string, "gpu_power") == 0) {
            bit = K_POWER;
            power = f;
        } else if (strcmp(f->string, "energy") == 0) {
            bit = K_ENERGY;
            energy = f;
        } else {
            shorten(q, f->string);
            return fail(
                ps, "unknown key \"%s\" (expected kernel_name, exec_time, gpu_power, energy)", q);
        }
        if (seen & bit)
            return fail(ps, "key \"%s\" appears more than once", f->string);
        seen |= bit;
    }
    if (!time)
        return fail(ps, "missing \"exec_time\" (expected an object mapping Hz to microseconds)");

    if (!(kp->name = dup_str(k->string)) || !(kp->time_us = malloc(n * sizeof(double))))
        return oom(ps);
    int rc = read_map(ps, time, "exec_time", kp->time_us);
    if (rc)
        return rc;
    *has_power = power || energy;
    if (!*has_power)
        return 0;

    if (!(kp->power_mw = malloc(n * sizeof(double))))
        return oom(ps);
    double *e_uj = scratch;
    if (energy && (rc = read_map(ps, energy, "energy", e_uj)))
        return rc;
    if (power) {
        if ((rc = read_map(ps, power, "gpu_power", kp->power_mw)))
            return rc;
        for (size_t i = 0; energy && i < n; i++) {
            double t = kp->time_us[i], p = kp->power_mw[i], e = e_uj[i];
            double expect = t * p / 1000.0;
            if (!(fabs(e - expect) <= KERNEL_ENERGY_REL * e + KERNEL_ENERGY_ABS_UJ))
                return fail(ps,
                            "energy[\"%" PRIu64 "\"] is %.10g uJ but exec_time x gpu_power gives "
                            "%.10g us x %.10g mW = %.10g uJ (expected agreement within 2%% + 1 uJ)",
                            ps->freqs[i], e, t, p, expect);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            double t = kp->time_us[i];
            /* A kernel too short to time draws no measurable energy of its own. */
            kp->power_mw[i] = t > 0 ? e_uj[i] / t * 1000.0 : 0.0;
            if (!isfinite(kp->power_mw[i]))
                return fail(ps,
                            "energy[\"%" PRIu64 "\"] / exec_time gives a power too large to "
                            "represent (%.10g uJ over %.10g us)",
                            ps->freqs[i], e_uj[i], t);
        }
    }
    return 0;
}

/* Compares a given model-level figure with the one computed from the kernels. */
static int check_total(struct parser *ps, const char *field, const char *unit, const double *given,
                       const double *computed, double rel, double abs_slack)
{
    for (size_t i = 0; i < ps->n_freqs; i++) {
        double tol = rel * computed[i] + abs_slack;
        if (!(fabs(given[i] - computed[i]) <= tol))
            return fail(ps,
                        "%s[\"%" PRIu64 "\"] is %.10g %s but the kernels give %.10g %s "
                        "(expected agreement within %.10g %s)",
                        field, ps->freqs[i], given[i], unit, computed[i], unit, tol, unit);
    }
    return 0;
}

int etf_profile_parse(const char *json, size_t len, const char *origin, struct etf_profile **out,
                      struct etf_diag *diag)
{
    struct parser ps = {.origin = origin ? origin : "<profile>", .diag = diag};
    struct etf_profile *p = NULL;
    cJSON *root = NULL;
    double *given = NULL, *scratch = NULL;
    const cJSON *name = NULL, *time = NULL, *power = NULL, *energy = NULL, *kp = NULL;
    char q[QUOTE_BYTES + 4];
    int rc;

    if (!out || (!json && len > 0))
        return etf_diagf(diag, ETF_EINVAL, "%s: etf_profile_parse: NULL argument", ps.origin);
    *out = NULL;
    if (len == 0)
        return fail(&ps, "not JSON: the document is empty");

    const char *end = NULL;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root)
        return fail(&ps, "not JSON: error near byte %zu", end ? (size_t)(end - json) : (size_t)0);
    for (const char *c = end; c < json + len; c++) {
        if (*c != ' ' && *c != '\t' && *c != '\n' && *c != '\r') {
            rc = fail(&ps, "not JSON: unexpected data after the document at byte %zu",
                      (size_t)(c - json));
            goto cleanup;
        }
    }
    if (!cJSON_IsObject(root)) {
        rc = fail(&ps, "expected a JSON object at the top level, found %s", type_name(root));
        goto cleanup;
    }

    unsigned seen = 0;
    for (const cJSON *f = root->child; f; f = f->next) {
        unsigned bit;
        if (strcmp(f->string, "model_name") == 0) {
            bit = 1;
            name = f;
        } else if (strcmp(f->string, "exec_time") == 0) {
            bit = 2;
            time = f;
        } else if (strcmp(f->string, "gpu_power") == 0) {
            bit = 4;
            power = f;
        } else if (strcmp(f->string, "energy") == 0) {
            bit = 8;
            energy = f;
        } else if (strcmp(f->string, "kernel_profile") == 0) {
            bit = 16;
            kp = f;
        } else {
            shorten(q, f->string);
            rc = fail(&ps,
                      "unknown key \"%s\" at the top level (expected model_name, exec_time, "
                      "gpu_power, energy, kernel_profile)",
                      q);
            goto cleanup;
        }
        if (seen & bit) {
            rc = fail(&ps, "key \"%s\" appears more than once at the top level", f->string);
            goto cleanup;
        }
        seen |= bit;
    }

    if (!name || !cJSON_IsString(name) || name->valuestring[0] == '\0') {
        rc = fail(&ps, "model_name must be a non-empty string, found %s",
                  !name                   ? "no model_name"
                  : !cJSON_IsString(name) ? type_name(name)
                                          : "an empty string");
        goto cleanup;
    }
    if (strlen(name->valuestring) > MAX_NAME_BYTES) {
        shorten(q, name->valuestring);
        rc = fail(&ps, "model_name \"%s\" is %zu bytes long (at most %d)", q,
                  strlen(name->valuestring), MAX_NAME_BYTES);
        goto cleanup;
    }
    if (!kp || !cJSON_IsObject(kp)) {
        rc = fail(&ps, "kernel_profile must be an object mapping kernel names to kernels, found %s",
                  kp ? type_name(kp) : "no kernel_profile");
        goto cleanup;
    }
    size_t n_kernels = 0;
    for (const cJSON *k = kp->child; k; k = k->next)
        n_kernels++;
    if (n_kernels == 0) {
        rc = fail(&ps, "kernel_profile is empty (expected at least one kernel)");
        goto cleanup;
    }
    if (n_kernels > ETF_PROFILE_MAX_KERNELS) {
        rc = fail(&ps, "kernel_profile has %zu kernels (at most %u allowed)", n_kernels,
                  ETF_PROFILE_MAX_KERNELS);
        goto cleanup;
    }
    if ((rc = check_kernel_names(&ps, kp, n_kernels)))
        goto cleanup;

    if (time) {
        snprintf(ps.freq_src, sizeof ps.freq_src, "the top-level exec_time");
        rc = collect_freqs(&ps, time, "exec_time");
    } else {
        const cJSON *first = kp->child;
        shorten(ps.kname, first->string);
        snprintf(ps.freq_src, sizeof ps.freq_src, "kernel '%s'", ps.kname);
        const cJSON *ft = cJSON_GetObjectItemCaseSensitive(first, "exec_time");
        if (!cJSON_IsObject(first))
            rc = fail(&ps, "must be an object with exec_time, gpu_power and energy, found %s",
                      type_name(first));
        else if (!ft)
            rc = fail(&ps, "missing \"exec_time\" (the profile has no top-level exec_time, so "
                           "the first kernel's gives the frequencies)");
        else
            rc = collect_freqs(&ps, ft, "exec_time");
        ps.kname[0] = '\0';
    }
    if (rc)
        goto cleanup;
    size_t n = ps.n_freqs;

    given = malloc(n * sizeof *given);
    scratch = malloc(n * sizeof *scratch);
    p = calloc(1, sizeof *p);
    if (!given || !scratch || !p)
        goto nomem;
    if (time && (rc = read_map(&ps, time, "exec_time", given)))
        goto cleanup;

    p->n_freqs = n;
    if (!(p->model_name = dup_str(name->valuestring)) ||
        !(p->kernels = calloc(n_kernels, sizeof *p->kernels)) ||
        !(p->time_us = calloc(n, sizeof *p->time_us)))
        goto nomem;
    p->n_kernels = n_kernels;

    size_t i = 0, with_power = SIZE_MAX, without_power = SIZE_MAX;
    for (const cJSON *k = kp->child; k; k = k->next, i++) {
        bool hp = false;
        shorten(ps.kname, k->string);
        if ((rc = read_kernel(&ps, k, &p->kernels[i], scratch, &hp)))
            goto cleanup;
        if (hp && with_power == SIZE_MAX)
            with_power = i;
        if (!hp && without_power == SIZE_MAX)
            without_power = i;
        if (with_power != SIZE_MAX && without_power != SIZE_MAX) {
            shorten(ps.kname, p->kernels[without_power].name);
            shorten(q, p->kernels[with_power].name);
            rc = fail(&ps,
                      "has neither gpu_power nor energy, but kernel '%s' has (power must be "
                      "given for every kernel or for none)",
                      q);
            goto cleanup;
        }
    }
    ps.kname[0] = '\0';
    p->has_power = with_power != SIZE_MAX;

    for (i = 0; i < n_kernels; i++)
        for (size_t f = 0; f < n; f++)
            p->time_us[f] += p->kernels[i].time_us[f];
    for (size_t f = 0; f < n; f++) {
        if (!(p->time_us[f] > 0)) {
            rc = fail(&ps,
                      "the kernels' exec_time values sum to 0 us at %" PRIu64
                      " Hz (expected a model time > 0)",
                      ps.freqs[f]);
            goto cleanup;
        }
        if (!isfinite(p->time_us[f])) {
            rc = fail(&ps,
                      "the kernels' exec_time values at %" PRIu64
                      " Hz sum to a number too large to represent",
                      ps.freqs[f]);
            goto cleanup;
        }
    }
    if (time && (rc = check_total(&ps, "exec_time", "us", given, p->time_us, MODEL_TIME_REL,
                                  MODEL_TIME_ABS_PER_KERNEL_US * (double)n_kernels)))
        goto cleanup;

    if (!p->has_power) {
        if (power || energy) {
            rc = fail(&ps, "%s is given at the top level but no kernel has gpu_power or energy",
                      power ? "gpu_power" : "energy");
            goto cleanup;
        }
        goto done;
    }

    if (!(p->energy_uj = calloc(n, sizeof *p->energy_uj)) ||
        !(p->power_mw = malloc(n * sizeof *p->power_mw)))
        goto nomem;
    for (i = 0; i < n_kernels; i++)
        for (size_t f = 0; f < n; f++)
            p->energy_uj[f] += p->kernels[i].time_us[f] * p->kernels[i].power_mw[f] / 1000.0;
    for (size_t f = 0; f < n; f++) {
        p->power_mw[f] = p->energy_uj[f] / p->time_us[f] * 1000.0;
        if (!isfinite(p->energy_uj[f]) || !isfinite(p->power_mw[f])) {
            rc = fail(&ps, "the kernels' energy at %" PRIu64 " Hz is too large to represent",
                      ps.freqs[f]);
            goto cleanup;
        }
    }
    if (power) {
        if ((rc = read_map(&ps, power, "gpu_power", given)) ||
            (rc = check_total(&ps, "gpu_power", "mW", given, p->power_mw, MODEL_POWER_REL, 0)))
            goto cleanup;
    }
    if (energy) {
        if ((rc = read_map(&ps, energy, "energy", given)) ||
            (rc = check_total(&ps, "energy", "uJ", given, p->energy_uj, MODEL_POWER_REL, 0)))
            goto cleanup;
    }
done:
    p->freqs_hz = ps.freqs;
    ps.freqs = NULL;
    *out = p;
    p = NULL;
    rc = 0;
    goto cleanup;

nomem:
    rc = oom(&ps);
cleanup:
    free(ps.freqs);
    free(ps.seen);
    free(given);
    free(scratch);
    etf_profile_free(p);
    cJSON_Delete(root);
    return rc;
}

int etf_profile_load(const char *path, struct etf_profile **out, struct etf_diag *diag)
{
    char err[128];
    char *buf = NULL;
    int rc;

    if (!path || !out)
        return etf_diagf(diag, ETF_EINVAL, "etf_profile_load: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        int e = errno;
        strerror_r(e, err, sizeof err);
        return etf_diagf(diag, e == ENOENT ? ETF_ENOENT : ETF_EIO, "%s: cannot open: %s", path,
                         err);
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        strerror_r(errno, err, sizeof err);
        rc = etf_diagf(diag, ETF_EIO, "%s: cannot stat: %s", path, err);
        goto cleanup;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = etf_diagf(diag, ETF_EIO, "%s: is a directory, expected a profile JSON file", path);
        goto cleanup;
    }
    if (S_ISREG(st.st_mode) && (uintmax_t)st.st_size > ETF_PROFILE_MAX_BYTES) {
        rc = etf_diagf(diag, ETF_ELIMIT, "%s: file is %jd bytes, larger than the %u-byte limit",
                       path, (intmax_t)st.st_size, ETF_PROFILE_MAX_BYTES);
        goto cleanup;
    }

    /* Read to EOF rather than trusting st_size: the file may change underneath, and pipes
     * have no size at all. One byte past the limit is enough to know it is exceeded. */
    size_t cap = S_ISREG(st.st_mode) ? (size_t)st.st_size + 1 : 65536, len = 0;
    if (cap > (size_t)ETF_PROFILE_MAX_BYTES + 1)
        cap = (size_t)ETF_PROFILE_MAX_BYTES + 1;
    if (!(buf = malloc(cap))) {
        rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory reading the file", path);
        goto cleanup;
    }
    for (;;) {
        if (len == cap) {
            if (cap > ETF_PROFILE_MAX_BYTES) {
                rc = etf_diagf(diag, ETF_ELIMIT, "%s: file is larger than the %u-byte limit", path,
                               ETF_PROFILE_MAX_BYTES);
                goto cleanup;
            }
            size_t ncap = cap * 2 > (size_t)ETF_PROFILE_MAX_BYTES + 1
                              ? (size_t)ETF_PROFILE_MAX_BYTES + 1
                              : cap * 2;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                rc = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory reading the file", path);
                goto cleanup;
            }
            buf = nb;
            cap = ncap;
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            strerror_r(errno, err, sizeof err);
            rc = etf_diagf(diag, ETF_EIO, "%s: cannot read: %s", path, err);
            goto cleanup;
        }
        if (r == 0)
            break;
        len += (size_t)r;
    }
    rc = etf_profile_parse(buf, len, path, out, diag);
cleanup:
    free(buf);
    close(fd);
    return rc;
}

static void put_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* Integral values print as integers; others with the fewest digits that read back as the
 * same double, so that save -> load gives equal values. */
static void put_number(FILE *f, double v)
{
    char b[64];
    if (v == floor(v) && fabs(v) < 1e18) {
        fprintf(f, "%.0f", v);
        return;
    }
    for (int prec = 15; prec <= 17; prec++) {
        snprintf(b, sizeof b, "%.*g", prec, v);
        if (strtod(b, NULL) == v)
            break;
    }
    fputs(b, f);
}

/* Writes `"key": {"<Hz>": v, ...}` at the given indentation. v NULL means t*p/1000. */
static void put_map(FILE *f, int indent, const char *key, const struct etf_profile *p,
                    const double *v, const double *t, const double *pw)
{
    fprintf(f, "%*s\"%s\": {\n", indent, "", key);
    for (size_t i = 0; i < p->n_freqs; i++) {
        fprintf(f, "%*s\"%" PRIu64 "\": ", indent + 4, "", p->freqs_hz[i]);
        put_number(f, v ? v[i] : t[i] * pw[i] / 1000.0);
        fputs(i + 1 < p->n_freqs ? ",\n" : "\n", f);
    }
    fprintf(f, "%*s}", indent, "");
}

static bool all_finite(const double *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return false;
    return true;
}

int etf_profile_save(const struct etf_profile *p, const char *path, struct etf_diag *diag)
{
    char err[128];
    if (!p || !path || !p->model_name || !p->freqs_hz || !p->time_us || !p->kernels ||
        (p->has_power && (!p->power_mw || !p->energy_uj)))
        return etf_diagf(diag, ETF_EINVAL, "etf_profile_save: NULL or incomplete argument");
    bool ok = all_finite(p->time_us, p->n_freqs) &&
              (!p->has_power ||
               (all_finite(p->power_mw, p->n_freqs) && all_finite(p->energy_uj, p->n_freqs)));
    for (size_t k = 0; ok && k < p->n_kernels; k++) {
        const struct etf_kernel_profile *kp = &p->kernels[k];
        ok = kp->name && kp->time_us && all_finite(kp->time_us, p->n_freqs) &&
             (!p->has_power || (kp->power_mw && all_finite(kp->power_mw, p->n_freqs)));
    }
    if (!ok)
        return etf_diagf(diag, ETF_EINVAL,
                         "%s: not saved: the profile has a missing name or a non-finite value",
                         path);

    size_t plen = strlen(path);
    char *tmp = malloc(plen + 5);
    if (!tmp)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
    memcpy(tmp, path, plen);
    memcpy(tmp + plen, ".tmp", 5);

    int rc = 0;
    FILE *f = fopen(tmp, "w");
    if (!f) {
        strerror_r(errno, err, sizeof err);
        rc = etf_diagf(diag, ETF_EIO, "%s: cannot create: %s", tmp, err);
        goto cleanup;
    }
    fputs("{\n    \"model_name\": ", f);
    put_string(f, p->model_name);
    fputs(",\n", f);
    put_map(f, 4, "exec_time", p, p->time_us, NULL, NULL);
    if (p->has_power) {
        fputs(",\n", f);
        put_map(f, 4, "gpu_power", p, p->power_mw, NULL, NULL);
        fputs(",\n", f);
        put_map(f, 4, "energy", p, p->energy_uj, NULL, NULL);
    }
    fputs(",\n    \"kernel_profile\": {\n", f);
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel_profile *kp = &p->kernels[k];
        fputs("        ", f);
        put_string(f, kp->name);
        fputs(": {\n            \"kernel_name\": ", f);
        put_string(f, kp->name);
        fputs(",\n", f);
        put_map(f, 12, "exec_time", p, kp->time_us, NULL, NULL);
        if (p->has_power) {
            fputs(",\n", f);
            put_map(f, 12, "gpu_power", p, kp->power_mw, NULL, NULL);
            fputs(",\n", f);
            put_map(f, 12, "energy", p, NULL, kp->time_us, kp->power_mw);
        }
        fputs(k + 1 < p->n_kernels ? "\n        },\n" : "\n        }\n", f);
    }
    fputs("    }\n}\n", f);

    /* The data must be on disk before the rename makes it visible under the real name. */
    bool failed = fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0;
    int e = errno;
    if (fclose(f) != 0 && !failed) {
        failed = true;
        e = errno;
    }
    if (failed) {
        strerror_r(e, err, sizeof err);
        rc = etf_diagf(diag, ETF_EIO, "%s: cannot write: %s", tmp, err);
        unlink(tmp);
        goto cleanup;
    }
    if (rename(tmp, path) != 0) {
        strerror_r(errno, err, sizeof err);
        rc = etf_diagf(diag, ETF_EIO, "%s: cannot rename %s into place: %s", path, tmp, err);
        unlink(tmp);
    }
cleanup:
    free(tmp);
    return rc;
}

long etf_profile_freq_index(const struct etf_profile *p, uint64_t hz)
{
    if (!p || !p->freqs_hz)
        return -1;
    return find_freq(p->freqs_hz, p->n_freqs, hz);
}

void etf_profile_free(struct etf_profile *p)
{
    if (!p)
        return;
    if (p->kernels) {
        for (size_t i = 0; i < p->n_kernels; i++) {
            free(p->kernels[i].name);
            free(p->kernels[i].time_us);
            free(p->kernels[i].power_mw);
        }
    }
    free(p->kernels);
    free(p->model_name);
    free(p->freqs_hz);
    free(p->time_us);
    free(p->power_mw);
    free(p->energy_uj);
    free(p);
}
