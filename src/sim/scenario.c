/* The simulator's scenario files: parsing and validation.
 *
 * Scenarios are written by hand, so every rejection names the field it concerns, what was
 * expected and what was found ("tenants[0].models[0].load.closed: expected an integer
 * 1..100000, found -3"), and unknown keys are errors rather than silently ignored: a typo
 * in an optional key would otherwise quietly change the experiment.
 */
#include "etf/sim.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Largest integer a JSON number (a double) holds exactly. */
#define EXACT_INT_MAX 9007199254740991.0

/* Long enough for the deepest field path: "tenants[99999].priority_changes[N].priority". */
#define PATH_MAX_LEN 160

/* What the scenario's device runs, which decides what a model must give. */
enum device_kind {
    DEVICE_SIM,     /* profiled times on a virtual clock: a profile */
    DEVICE_REAL,    /* a device of this build that runs real kernels: an ONNX file */
    DEVICE_UNKNOWN, /* not in this build: etf_sim_create reports it when opening it */
};

struct parser {
    const char *origin;
    const char *base_dir;
    unsigned flags;
    struct etf_diag *diag;
    struct etf_scenario *sc;
    enum device_kind device;
    /* Distinct profile files, by resolved path: an open-addressing table of indices into
     * sc->profiles, so that 100000 tenants sharing a file read it once. */
    size_t *slots;
    size_t n_slots;
};

/* ---- Messages ---- */

/* "origin: path: text" (or "origin: text" at the top level). */
static int fail(struct parser *p, int err, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct parser *p, int err, const char *path, const char *fmt, ...)
{
    char text[sizeof p->diag->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    if (path[0])
        return etf_diagf(p->diag, err, "%s: %s: %s", p->origin, path, text);
    return etf_diagf(p->diag, err, "%s: %s", p->origin, text);
}

/* Copies at most 40 bytes of s, replacing control characters, so that a message shows
 * what was found without being swamped or broken by it. */
static void quote(const char *s, char *buf, size_t size)
{
    size_t n = 0;
    const size_t max = 40;
    buf[n++] = '"';
    for (size_t i = 0; s[i] && n + 5 < size; i++) {
        if (i == max) {
            memcpy(buf + n, "...", 3);
            n += 3;
            break;
        }
        unsigned char c = (unsigned char)s[i];
        buf[n++] = (c < 0x20 || c == 0x7f) ? '?' : (char)c;
    }
    buf[n++] = '"';
    buf[n] = '\0';
}

/* What a JSON value is, for "found ...". */
static void describe(const cJSON *v, char *buf, size_t size)
{
    if (!v) {
        snprintf(buf, size, "nothing");
    } else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (isfinite(d) && d == floor(d) && fabs(d) < 1e15)
            snprintf(buf, size, "%.0f", d);
        else
            snprintf(buf, size, "%.15g", d);
    } else if (cJSON_IsString(v)) {
        quote(v->valuestring, buf, size);
    } else if (cJSON_IsBool(v)) {
        snprintf(buf, size, "%s", cJSON_IsTrue(v) ? "true" : "false");
    } else if (cJSON_IsNull(v)) {
        snprintf(buf, size, "null");
    } else if (cJSON_IsArray(v)) {
        snprintf(buf, size, "an array");
    } else {
        snprintf(buf, size, "an object");
    }
}

/* Field paths: PATH_MAX_LEN holds any that the limits allow; a longer one (an absurd key)
 * is cut, which only shortens a message. */
static void path_fmt(char *out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void path_fmt(char *out, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(out, PATH_MAX_LEN, fmt, ap);
    va_end(ap);
}

static void child_path(char *out, const char *path, const char *key)
{
    path_fmt(out, "%s%s%s", path, path[0] ? "." : "", key);
}

/* ---- Typed getters: each names the field and what it found ---- */

/* Rejects keys outside `allowed` (NULL-terminated) and keys given twice. */
static int check_keys(struct parser *p, const cJSON *obj, const char *path,
                      const char *const *allowed)
{
    for (const cJSON *c = obj->child; c; c = c->next) {
        char key[64];
        bool known = false;
        for (size_t i = 0; allowed[i]; i++)
            known = known || strcmp(c->string, allowed[i]) == 0;
        if (!known) {
            quote(c->string, key, sizeof key);
            return fail(p, ETF_EFORMAT, path, "unknown key %s", key);
        }
        /* Every earlier key is a known one, so this loop is short. */
        for (const cJSON *d = obj->child; d != c; d = d->next) {
            if (strcmp(d->string, c->string) == 0) {
                quote(c->string, key, sizeof key);
                return fail(p, ETF_EFORMAT, path, "key %s is given twice", key);
            }
        }
    }
    return 0;
}

static const cJSON *member(const cJSON *obj, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(obj, key);
}

static int missing(struct parser *p, const char *path, const char *key)
{
    return fail(p, ETF_EFORMAT, path, "missing key \"%s\"", key);
}

/* An integer in [lo, hi]; `dflt` when absent and not required. */
static int get_int(struct parser *p, const cJSON *obj, const char *path, const char *key,
                   bool required, int64_t lo, int64_t hi, int64_t dflt, int64_t *out)
{
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required)
            return missing(p, path, key);
        *out = dflt;
        return 0;
    }
    child_path(field, path, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= (double)lo && d <= (double)hi && d == floor(d))) {
        describe(v, found, sizeof found);
        return fail(p, cJSON_IsNumber(v) ? ETF_EINVAL : ETF_EFORMAT, field,
                    "expected an integer %lld..%lld, found %s", (long long)lo, (long long)hi,
                    found);
    }
    *out = (int64_t)d;
    return 0;
}

/* A finite number in [lo, hi], or (lo, hi] when lo_open. */
static int get_num(struct parser *p, const cJSON *obj, const char *path, const char *key,
                   bool required, double lo, bool lo_open, double hi, double dflt, double *out)
{
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required)
            return missing(p, path, key);
        *out = dflt;
        return 0;
    }
    child_path(field, path, key);
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    bool ok = isfinite(d) && (lo_open ? d > lo : d >= lo) && d <= hi;
    if (!ok) {
        describe(v, found, sizeof found);
        return fail(p, cJSON_IsNumber(v) ? ETF_EINVAL : ETF_EFORMAT, field,
                    "expected a number in %c%.15g, %.15g], found %s", lo_open ? '(' : '[', lo, hi,
                    found);
    }
    *out = d;
    return 0;
}

static bool utf8_valid(const unsigned char *s)
{
    while (*s) {
        unsigned c = *s++;
        int more;
        unsigned min;
        if (c < 0x80)
            continue;
        if ((c & 0xe0) == 0xc0)
            more = 1, min = 0x80, c &= 0x1f;
        else if ((c & 0xf0) == 0xe0)
            more = 2, min = 0x800, c &= 0x0f;
        else if ((c & 0xf8) == 0xf0)
            more = 3, min = 0x10000, c &= 0x07;
        else
            return false;
        for (int i = 0; i < more; i++) {
            if ((*s & 0xc0) != 0x80)
                return false;
            c = (c << 6) | (*s++ & 0x3f);
        }
        if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
            return false;
    }
    return true;
}

/* A name: 1..ETF_SCENARIO_NAME_MAX bytes of UTF-8 text without control characters (names
 * end up in tables, CSV files and JSON reports). */
static int get_name(struct parser *p, const cJSON *obj, const char *path, const char *key,
                    bool required, const char *dflt, char out[ETF_SCENARIO_NAME_MAX + 1])
{
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, key);
    if (!v) {
        if (required)
            return missing(p, path, key);
        snprintf(out, ETF_SCENARIO_NAME_MAX + 1, "%s", dflt);
        return 0;
    }
    child_path(field, path, key);
    describe(v, found, sizeof found);
    if (!cJSON_IsString(v))
        return fail(p, ETF_EFORMAT, field, "expected a string, found %s", found);
    size_t len = strlen(v->valuestring);
    if (len == 0 || len > ETF_SCENARIO_NAME_MAX)
        return fail(p, ETF_EINVAL, field, "expected a name of 1..%d bytes, found %s (%zu bytes)",
                    ETF_SCENARIO_NAME_MAX, found, len);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)v->valuestring[i];
        if (c < 0x20 || c == 0x7f)
            return fail(p, ETF_EINVAL, field, "control character in name %s", found);
    }
    if (!utf8_valid((const unsigned char *)v->valuestring))
        return fail(p, ETF_EINVAL, field, "name %s is not valid UTF-8", found);
    memcpy(out, v->valuestring, len + 1);
    return 0;
}

static uint64_t seconds_to_ns(double s)
{
    return (uint64_t)llround(s * 1e9);
}

/* ---- Files ---- */

/* Reads a whole file of at most max bytes into a NUL-terminated buffer. Works for pipes
 * too, so that `etf-sim /dev/stdin` does what it says. */
static int read_file(const char *path, size_t max, char **out, size_t *out_len,
                     struct etf_diag *diag)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return etf_diagf(diag, errno == ENOENT ? ETF_ENOENT : ETF_EIO, "cannot open %s: %s", path,
                         strerror(errno));
    size_t cap = 4096, len = 0;
    char *buf = malloc(cap);
    int err = 0;
    if (!buf) {
        err = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    for (;;) {
        if (len + 1 == cap) {
            size_t ncap = cap * 2;
            char *nbuf = realloc(buf, ncap);
            if (!nbuf) {
                err = etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            buf = nbuf;
            cap = ncap;
        }
        size_t n = fread(buf + len, 1, cap - 1 - len, f);
        len += n;
        if (len > max) {
            err = etf_diagf(diag, ETF_ELIMIT, "%s: larger than the limit of %zu bytes", path, max);
            goto out;
        }
        if (n == 0) {
            if (ferror(f))
                err = etf_diagf(diag, ETF_EIO, "cannot read %s: %s", path, strerror(errno));
            break;
        }
    }
out:
    fclose(f);
    if (err) {
        free(buf);
        return err;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    return 0;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 14695981039346656037u; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211u;
    return h;
}

/* A file named in the scenario, relative to its directory; NULL when out of memory. */
static char *resolve(const struct parser *p, const char *written)
{
    if (written[0] == '/' || !p->base_dir)
        return strdup(written);
    size_t n = strlen(p->base_dir) + strlen(written) + 2;
    char *path = malloc(n);
    if (path)
        snprintf(path, n, "%s/%s", p->base_dir, written);
    return path;
}

/* Finds or reads (and checks with the profile loader) the profile at `written`, relative to
 * the scenario's directory; sets *index into sc->profiles. */
static int intern_profile(struct parser *p, const char *field, const char *written, size_t *index)
{
    struct etf_scenario *sc = p->sc;
    char *path = resolve(p, written);
    if (!path)
        return fail(p, ETF_ENOMEM, field, "out of memory");

    /* Grow the table at half load; it holds at most one slot per model. */
    if (2 * (sc->n_profiles + 1) > p->n_slots) {
        size_t n = p->n_slots ? 2 * p->n_slots : 64;
        size_t *slots = malloc(n * sizeof *slots);
        if (!slots) {
            free(path);
            return fail(p, ETF_ENOMEM, field, "out of memory");
        }
        for (size_t i = 0; i < n; i++)
            slots[i] = SIZE_MAX;
        for (size_t i = 0; i < sc->n_profiles; i++) {
            size_t h = (size_t)hash_str(sc->profiles[i].path) & (n - 1);
            while (slots[h] != SIZE_MAX)
                h = (h + 1) & (n - 1);
            slots[h] = i;
        }
        free(p->slots);
        p->slots = slots;
        p->n_slots = n;
        struct etf_scenario_profile *profiles =
            realloc(sc->profiles, (n / 2) * sizeof *sc->profiles);
        if (!profiles) {
            free(path);
            return fail(p, ETF_ENOMEM, field, "out of memory");
        }
        sc->profiles = profiles;
    }
    size_t h = (size_t)hash_str(path) & (p->n_slots - 1);
    for (; p->slots[h] != SIZE_MAX; h = (h + 1) & (p->n_slots - 1)) {
        if (strcmp(sc->profiles[p->slots[h]].path, path) == 0) {
            free(path);
            *index = p->slots[h];
            return 0;
        }
    }

    /* New file: the loader checks it (and says what is wrong in its own words), then the
     * bytes are kept so that the run parses each model's copy without touching the file
     * system again. */
    struct etf_diag d;
    struct etf_profile *prof = NULL;
    int err = etf_profile_load(path, &prof, &d);
    if (err) {
        free(path);
        return fail(p, err, field, "%s", d.msg);
    }
    etf_profile_free(prof);
    char *json;
    size_t len;
    err = read_file(path, ETF_PROFILE_MAX_BYTES, &json, &len, &d);
    if (err) {
        free(path);
        return fail(p, err, field, "%s", d.msg);
    }
    struct etf_scenario_profile *sp = &sc->profiles[sc->n_profiles];
    sp->path = path;
    sp->json = json;
    sp->len = len;
    p->slots[h] = sc->n_profiles;
    *index = sc->n_profiles++;
    return 0;
}

/* An ONNX file must at least be there: parsing it (seconds for a large model) waits for
 * etf_sim_create, which says what is wrong inside it. */
static int check_onnx_file(struct parser *p, const char *field, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(p, errno == ENOENT ? ETF_ENOENT : ETF_EIO, field, "cannot open %s: %s", path,
                    strerror(errno));
    struct stat st;
    bool regular = fstat(fileno(f), &st) == 0 && S_ISREG(st.st_mode);
    fclose(f);
    if (!regular)
        return fail(p, ETF_EIO, field, "%s is not a regular file", path);
    return 0;
}

/* ---- The document ---- */

/* A file name: a non-empty string; NULL in *out when absent. */
static int get_file(struct parser *p, const cJSON *obj, const char *path, const char *key,
                    const cJSON **out)
{
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, key);
    *out = v;
    if (!v || (cJSON_IsString(v) && v->valuestring[0] != '\0'))
        return 0;
    child_path(field, path, key);
    describe(v, found, sizeof found);
    return fail(p, ETF_EFORMAT, field, "expected a file name, found %s", found);
}

/* Optional: 0 when absent (the controller's current frequency, or the profile's highest). */
static int parse_freq(struct parser *p, const cJSON *obj, const char *path, uint64_t *out)
{
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, "frequency_hz");
    *out = 0;
    if (!v)
        return 0;
    child_path(field, path, "frequency_hz");
    if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d >= 1 && d <= EXACT_INT_MAX && d == floor(d)) {
            *out = (uint64_t)d;
            return 0;
        }
    } else if (cJSON_IsString(v)) {
        /* The original's profiles and scenarios write frequencies as strings of Hz. */
        const char *s = v->valuestring;
        uint64_t hz = 0;
        bool ok = s[0] != '\0';
        for (; *s && ok; s++) {
            unsigned digit = (unsigned)(*s - '0');
            ok = *s >= '0' && *s <= '9' && hz <= (UINT64_MAX - digit) / 10;
            hz = hz * 10 + digit;
        }
        if (ok && hz > 0) {
            *out = hz;
            return 0;
        }
    }
    describe(v, found, sizeof found);
    return fail(p, cJSON_IsNumber(v) || cJSON_IsString(v) ? ETF_EINVAL : ETF_EFORMAT, field,
                "expected a frequency in Hz (an integer > 0 or a decimal string), found %s", found);
}

static int parse_load(struct parser *p, const cJSON *obj, const char *path,
                      struct etf_scenario_model *m)
{
    static const char *const keys[] = {"closed", "poisson_rps", NULL};
    char field[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, "load");
    if (!v)
        return missing(p, path, "load");
    child_path(field, path, "load");
    describe(v, found, sizeof found);
    if (!cJSON_IsObject(v))
        return fail(p, ETF_EFORMAT, field, "expected an object, found %s", found);
    int err = check_keys(p, v, field, keys);
    if (err)
        return err;
    bool closed = member(v, "closed") != NULL, poisson = member(v, "poisson_rps") != NULL;
    if (closed == poisson)
        return fail(p, ETF_EFORMAT, field,
                    "expected exactly one of \"closed\" and \"poisson_rps\", found %s",
                    closed ? "both" : "neither");
    if (closed) {
        int64_t n;
        err = get_int(p, v, field, "closed", true, 1, ETF_SCENARIO_MAX_CLOSED, 0, &n);
        m->load = ETF_SIM_LOAD_CLOSED;
        m->closed = (uint32_t)n;
        return err;
    }
    m->load = ETF_SIM_LOAD_POISSON;
    return get_num(p, v, field, "poisson_rps", true, 0, true, ETF_SCENARIO_MAX_RPS, 0,
                   &m->poisson_rps);
}

/* What the device needs of a model: the simulated device runs a profile's times, a real one
 * runs the kernels of an ONNX file (a profile then only adds power figures). */
static int check_model_needs(struct parser *p, const char *path, bool profile, bool onnx)
{
    switch (p->device) {
    case DEVICE_SIM:
        if (!profile)
            return fail(p, ETF_EFORMAT, path,
                        "missing key \"profile\": the \"sim\" device runs the kernel times of a "
                        "profile%s",
                        onnx ? " (it does not run ONNX files)" : "");
        break;
    case DEVICE_REAL:
        if (!onnx)
            return fail(p, ETF_EFORMAT, path,
                        "missing key \"onnx\": device \"%s\" runs the kernels of an ONNX file%s",
                        p->sc->device,
                        profile ? " (a profile only gives their times and powers)" : "");
        break;
    case DEVICE_UNKNOWN:
        if (!profile && !onnx)
            return fail(p, ETF_EFORMAT, path, "missing key \"profile\" or \"onnx\"");
        break;
    }
    return 0;
}

static int parse_model(struct parser *p, const cJSON *v, const char *path,
                       struct etf_scenario_model *m)
{
    static const char *const keys[] = {"profile", "onnx", "batch", "frequency_hz", "load", NULL};
    char prof_field[PATH_MAX_LEN], onnx_field[PATH_MAX_LEN], found[64];
    m->profile = SIZE_MAX;
    if (!cJSON_IsObject(v)) {
        describe(v, found, sizeof found);
        return fail(p, ETF_EFORMAT, path, "expected an object, found %s", found);
    }
    int err = check_keys(p, v, path, keys);
    const cJSON *prof, *onnx;
    int64_t batch;
    if (err || (err = get_file(p, v, path, "profile", &prof)) ||
        (err = get_file(p, v, path, "onnx", &onnx)) ||
        (err = get_int(p, v, path, "batch", false, 1, ETF_SCENARIO_MAX_BATCH, 0, &batch)))
        return err;
    child_path(prof_field, path, "profile");
    child_path(onnx_field, path, "onnx");
    if (batch && !onnx) {
        char field[PATH_MAX_LEN];
        child_path(field, path, "batch");
        return fail(p, ETF_EINVAL, field, "a batch size needs an ONNX file (key \"onnx\")");
    }
    m->batch = (size_t)batch;
    if ((err = check_model_needs(p, path, prof != NULL, onnx != NULL)))
        return err;
    if (prof && !(m->profile_path = strdup(prof->valuestring)))
        return fail(p, ETF_ENOMEM, prof_field, "out of memory");
    if (onnx && !(m->onnx_path = resolve(p, onnx->valuestring)))
        return fail(p, ETF_ENOMEM, onnx_field, "out of memory");

    if ((err = parse_freq(p, v, path, &m->freq_hz)) || (err = parse_load(p, v, path, m)))
        return err;
    /* The files last: the scenario's own mistakes are reported before a missing file. */
    if (p->flags & ETF_SCENARIO_NO_PROFILES)
        return 0;
    if (prof && (err = intern_profile(p, prof_field, m->profile_path, &m->profile)))
        return err;
    if (onnx)
        return check_onnx_file(p, onnx_field, m->onnx_path);
    return 0;
}

static int parse_prio_changes(struct parser *p, const cJSON *obj, const char *path,
                              struct etf_scenario_tenant *t)
{
    static const char *const keys[] = {"at_s", "priority", NULL};
    char field[PATH_MAX_LEN], elem[PATH_MAX_LEN], found[64];
    const cJSON *v = member(obj, "priority_changes");
    if (!v)
        return 0;
    child_path(field, path, "priority_changes");
    if (!cJSON_IsArray(v)) {
        describe(v, found, sizeof found);
        return fail(p, ETF_EFORMAT, field, "expected an array, found %s", found);
    }
    size_t n = (size_t)cJSON_GetArraySize(v);
    if (n == 0)
        return 0;
    t->prio_changes = calloc(n, sizeof *t->prio_changes);
    if (!t->prio_changes)
        return fail(p, ETF_ENOMEM, field, "out of memory");
    t->n_prio_changes = n;
    size_t i = 0;
    for (const cJSON *c = v->child; c; c = c->next, i++) {
        path_fmt(elem, "%s[%zu]", field, i);
        if (!cJSON_IsObject(c)) {
            describe(c, found, sizeof found);
            return fail(p, ETF_EFORMAT, elem, "expected an object, found %s", found);
        }
        int err = check_keys(p, c, elem, keys);
        double at;
        int64_t nice;
        if (err || (err = get_num(p, c, elem, "at_s", true, 0, false, p->sc->duration_s, 0, &at)) ||
            (err = get_int(p, c, elem, "priority", true, ETF_NICE_MIN, ETF_NICE_MAX, 0, &nice)))
            return err;
        t->prio_changes[i].at_ns = seconds_to_ns(at);
        t->prio_changes[i].priority = (int)nice;
    }
    return 0;
}

static int parse_tenant(struct parser *p, const cJSON *v, const char *path,
                        struct etf_scenario_tenant *t)
{
    static const char *const keys[] = {"name",   "priority",         "models", "start_s",
                                       "stop_s", "priority_changes", NULL};
    char field[PATH_MAX_LEN], elem[PATH_MAX_LEN], found[64];
    if (!cJSON_IsObject(v)) {
        describe(v, found, sizeof found);
        return fail(p, ETF_EFORMAT, path, "expected an object, found %s", found);
    }
    int err = check_keys(p, v, path, keys);
    int64_t nice;
    double start, stop;
    double duration = p->sc->duration_s;
    if (err || (err = get_name(p, v, path, "name", true, "", t->name)) ||
        (err = get_int(p, v, path, "priority", false, ETF_NICE_MIN, ETF_NICE_MAX, 0, &nice)) ||
        (err = get_num(p, v, path, "start_s", false, 0, false, duration, 0, &start)) ||
        (err = get_num(p, v, path, "stop_s", false, start, false, duration, duration, &stop)) ||
        (err = parse_prio_changes(p, v, path, t)))
        return err;
    t->priority = (int)nice;
    t->start_ns = seconds_to_ns(start);
    t->stop_ns = seconds_to_ns(stop);

    const cJSON *models = member(v, "models");
    if (!models)
        return missing(p, path, "models");
    child_path(field, path, "models");
    size_t n = cJSON_IsArray(models) ? (size_t)cJSON_GetArraySize(models) : 0;
    if (n == 0) {
        describe(models, found, sizeof found);
        if (cJSON_IsArray(models))
            snprintf(found, sizeof found, "an empty array");
        return fail(p, cJSON_IsArray(models) ? ETF_EINVAL : ETF_EFORMAT, field,
                    "expected an array of at least one model, found %s", found);
    }
    t->models = calloc(n, sizeof *t->models);
    if (!t->models)
        return fail(p, ETF_ENOMEM, field, "out of memory");
    t->n_models = n;
    size_t i = 0;
    for (const cJSON *c = models->child; c; c = c->next, i++) {
        path_fmt(elem, "%s[%zu]", field, i);
        if ((err = parse_model(p, c, elem, &t->models[i])))
            return err;
    }
    return 0;
}

static int cmp_name_index(const void *a, const void *b, void *ctx)
{
    const struct etf_scenario_tenant *t = ctx;
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    int c = strcmp(t[i].name, t[j].name);
    return c ? c : (i > j) - (i < j);
}

/* qsort has no context argument in C11: a small merge sort of indices instead. */
static void sort_indices(size_t *idx, size_t *tmp, size_t n, const void *ctx)
{
    if (n < 2)
        return;
    size_t h = n / 2;
    sort_indices(idx, tmp, h, ctx);
    sort_indices(idx + h, tmp, n - h, ctx);
    size_t i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = cmp_name_index(&idx[i], &idx[j], (void *)ctx) <= 0 ? idx[i++] : idx[j++];
    while (i < h)
        tmp[k++] = idx[i++];
    while (j < n)
        tmp[k++] = idx[j++];
    memcpy(idx, tmp, n * sizeof *idx);
}

/* Names are unique: sorting finds duplicates in O(n log n) for 100000 tenants. */
static int check_unique_names(struct parser *p)
{
    struct etf_scenario *sc = p->sc;
    size_t n = sc->n_tenants;
    size_t *idx = malloc(n * sizeof *idx), *tmp = malloc(n * sizeof *tmp);
    if (!idx || !tmp) {
        free(idx);
        free(tmp);
        return fail(p, ETF_ENOMEM, "tenants", "out of memory");
    }
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    sort_indices(idx, tmp, n, sc->tenants);
    /* The duplicate reported is the one written last among the pairs of the lowest name,
     * so that the message does not depend on the sort. */
    int err = 0;
    for (size_t k = 1; k < n && !err; k++) {
        if (strcmp(sc->tenants[idx[k - 1]].name, sc->tenants[idx[k]].name) == 0) {
            char field[PATH_MAX_LEN], found[64];
            path_fmt(field, "tenants[%zu].name", idx[k]);
            quote(sc->tenants[idx[k]].name, found, sizeof found);
            err = fail(p, ETF_EINVAL, field, "duplicate name %s (also tenants[%zu])", found,
                       idx[k - 1]);
        }
    }
    free(idx);
    free(tmp);
    return err;
}

static enum device_kind device_kind(const char *name)
{
    if (strcmp(name, "sim") == 0)
        return DEVICE_SIM;
    for (const char *const *n = etf_device_names(); *n; n++)
        if (strcmp(*n, name) == 0)
            return DEVICE_REAL;
    return DEVICE_UNKNOWN;
}

static int parse_root(struct parser *p, const cJSON *root)
{
    static const char *const keys[] = {"quantum_us", "phi",   "duration_s", "seed",    "device",
                                       "freq",       "meter", "threads",    "tenants", NULL};
    struct etf_scenario *sc = p->sc;
    char found[64];
    if (!cJSON_IsObject(root)) {
        describe(root, found, sizeof found);
        return fail(p, ETF_EFORMAT, "", "expected an object at the top level, found %s", found);
    }
    int err = check_keys(p, root, "", keys);
    int64_t quantum, seed, threads;
    if (err ||
        (err = get_int(p, root, "", "quantum_us", true, 1, ETF_SCENARIO_MAX_QUANTUM_US, 0,
                       &quantum)) ||
        (err = get_num(p, root, "", "phi", true, 0, false, 1, 0, &sc->phi)) ||
        (err = get_num(p, root, "", "duration_s", true, 0, true, ETF_SCENARIO_MAX_DURATION_S, 0,
                       &sc->duration_s)) ||
        (err = get_int(p, root, "", "seed", false, 0, (int64_t)EXACT_INT_MAX, 1, &seed)) ||
        (err = get_name(p, root, "", "device", false, "sim", sc->device)))
        return err;
    /* The "sim" controller pretends to switch the simulated device's clock; any other device
     * keeps its own unless a real controller is named. */
    p->device = device_kind(sc->device);
    bool sim = p->device == DEVICE_SIM;
    if ((err = get_name(p, root, "", "freq", false, sim ? "sim" : "none", sc->freq)) ||
        (err = get_name(p, root, "", "meter", false, "model", sc->meter)) ||
        (err = get_int(p, root, "", "threads", false, 1, ETF_SCENARIO_MAX_THREADS, 0, &threads)))
        return err;
    if (!sim && strcmp(sc->freq, "sim") == 0)
        return fail(p, ETF_EINVAL, "freq",
                    "the \"sim\" controller only drives the simulated device, not device \"%s\" "
                    "(use \"none\", the default, or a controller of the device)",
                    sc->device);
    sc->quantum_us = (uint64_t)quantum;
    sc->seed = (uint64_t)seed;
    sc->threads = (int)threads;
    sc->duration_ns = seconds_to_ns(sc->duration_s);
    if (sc->duration_ns == 0)
        return fail(p, ETF_EINVAL, "duration_s", "expected at least 1 ns, found %.17g",
                    sc->duration_s);

    const cJSON *tenants = member(root, "tenants");
    if (!tenants)
        return missing(p, "", "tenants");
    size_t n = cJSON_IsArray(tenants) ? (size_t)cJSON_GetArraySize(tenants) : 0;
    if (n == 0 || n > ETF_SCENARIO_MAX_TENANTS) {
        describe(tenants, found, sizeof found);
        if (cJSON_IsArray(tenants))
            snprintf(found, sizeof found, "%zu tenants", n);
        return fail(p, cJSON_IsArray(tenants) ? ETF_EINVAL : ETF_EFORMAT, "tenants",
                    "expected an array of 1..%u tenants, found %s", ETF_SCENARIO_MAX_TENANTS,
                    found);
    }
    sc->tenants = calloc(n, sizeof *sc->tenants);
    if (!sc->tenants)
        return fail(p, ETF_ENOMEM, "tenants", "out of memory");
    sc->n_tenants = n;
    size_t i = 0;
    for (const cJSON *c = tenants->child; c; c = c->next, i++) {
        char path[PATH_MAX_LEN];
        path_fmt(path, "tenants[%zu]", i);
        if ((err = parse_tenant(p, c, path, &sc->tenants[i])))
            return err;
    }
    return check_unique_names(p);
}

/* Line and column (1-based) of byte `off`, for syntax errors. */
static void position(const char *s, size_t off, size_t *line, size_t *col)
{
    *line = 1;
    *col = 1;
    for (size_t i = 0; i < off; i++) {
        if (s[i] == '\n') {
            ++*line;
            *col = 1;
        } else {
            ++*col;
        }
    }
}

int etf_scenario_parse(const char *json, size_t len, const char *origin, const char *base_dir,
                       unsigned flags, struct etf_scenario **out, struct etf_diag *diag)
{
    struct parser p = {
        .origin = origin ? origin : "scenario", .base_dir = base_dir, .flags = flags, .diag = diag};
    if (!out || (!json && len))
        return etf_diagf(diag, ETF_EINVAL, "%s: no scenario given", p.origin);
    *out = NULL;
    if (len > ETF_SCENARIO_MAX_BYTES)
        return etf_diagf(diag, ETF_ELIMIT, "%s: larger than the limit of %u bytes", p.origin,
                         ETF_SCENARIO_MAX_BYTES);
    /* cJSON stops at a NUL: one inside the text would hide whatever follows it. */
    const char *nul = len ? memchr(json, '\0', len) : NULL;
    if (nul) {
        size_t line, col;
        position(json, (size_t)(nul - json), &line, &col);
        return etf_diagf(diag, ETF_EFORMAT, "%s:%zu:%zu: NUL byte in the scenario", p.origin, line,
                         col);
    }
    /* With require_null_terminated, cJSON wants the terminating NUL inside the length. */
    char *text = malloc(len + 1);
    if (!text)
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", p.origin);
    if (len)
        memcpy(text, json, len);
    text[len] = '\0';
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len + 1, &end, true);
    if (!root) {
        size_t off = end && end >= text && end <= text + len ? (size_t)(end - text) : 0;
        size_t line, col;
        position(text, off, &line, &col);
        free(text);
        return etf_diagf(diag, ETF_EFORMAT, "%s:%zu:%zu: not valid JSON", p.origin, line, col);
    }
    free(text);

    p.sc = calloc(1, sizeof *p.sc);
    int err = p.sc ? parse_root(&p, root) : etf_diagf(diag, ETF_ENOMEM, "out of memory");
    cJSON_Delete(root);
    free(p.slots);
    if (err) {
        etf_scenario_free(p.sc);
        return err;
    }
    *out = p.sc;
    return 0;
}

int etf_scenario_load(const char *path, unsigned flags, struct etf_scenario **out,
                      struct etf_diag *diag)
{
    if (!path || !out)
        return etf_diagf(diag, ETF_EINVAL, "no scenario file given");
    *out = NULL;
    char *json;
    size_t len;
    int err = read_file(path, ETF_SCENARIO_MAX_BYTES, &json, &len, diag);
    if (err)
        return err;
    /* Profiles are found next to the scenario. */
    const char *slash = strrchr(path, '/');
    char *dir = slash ? strndup(path, (size_t)(slash - path) + (slash == path)) : strdup(".");
    if (!dir) {
        free(json);
        return etf_diagf(diag, ETF_ENOMEM, "%s: out of memory", path);
    }
    err = etf_scenario_parse(json, len, path, dir, flags, out, diag);
    free(dir);
    free(json);
    return err;
}

void etf_scenario_free(struct etf_scenario *sc)
{
    if (!sc)
        return;
    for (size_t i = 0; i < sc->n_tenants; i++) {
        struct etf_scenario_tenant *t = &sc->tenants[i];
        for (size_t j = 0; j < t->n_models; j++) {
            free(t->models[j].profile_path);
            free(t->models[j].onnx_path);
        }
        free(t->models);
        free(t->prio_changes);
    }
    free(sc->tenants);
    for (size_t i = 0; i < sc->n_profiles; i++) {
        free(sc->profiles[i].path);
        free(sc->profiles[i].json);
    }
    free(sc->profiles);
    free(sc);
}
