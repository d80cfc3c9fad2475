/* The ETF service (see service.h): the model repository, the service's tables, and the
 * handlers of efair.proto's methods on top of the scheduler.
 *
 * Tables. The scheduler owns entities and models; the service keeps, beside them, which
 * entity ids belong to clients (the calibration entity does not: clients can neither see
 * nor touch it), its own record of every loaded model (its shared plan, its tasks in
 * flight, a pool of task buffers), the plan cache, and what the summary and tasks.csv
 * report at the end.
 *
 * Plans are cached per (file, batch, size, mtime) and shared by every model loaded from
 * them: a plan is immutable, each device model keeps its own buffers. A plan is freed when
 * the last model using it is unloaded.
 *
 * Locking. One mutex, svc->lock, guards the tables above. It is a leaf: it is never held
 * while calling into the scheduler, the device, the file system or an Infer callback, so
 * it cannot take part in a cycle with the scheduler's lock. The scheduler calls on_done on
 * its dispatcher thread with no scheduler lock held; on_done takes svc->lock briefly (to
 * record the task and recycle its buffer), releases it, and only then calls the Infer
 * callback. Calibration waits on a private mutex and condition (struct calib_wait) that
 * on_done signals; it is taken alone, never with svc->lock. The order is therefore:
 *     scheduler lock  (never held when calling out)
 *     svc->lock       (leaf)
 *     calib_wait.lock (leaf)
 * and a server's own locks may be taken in the Infer callback, after all of these are
 * released.
 *
 * Model lifetime. An Infer counts itself in m->inflight under svc->lock before it leaves
 * the lock to copy tensors and submit; UnloadModel refuses a model with tasks in flight
 * and takes it out of the table under the same lock, so a model (and its plan) outlives
 * every task that refers to it. on_done decrements inflight before the callback runs, so a
 * client that has its answer can unload at once.
 */
/* realpath() is an XSI function for glibc. */
#define _XOPEN_SOURCE 700
#include "rpc/service.h"

#include "etf/model.h"
#include "etf/profile.h"
#include "etf/sched.h"
#include "util/file.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_CALIBRATION_RUNS 3
/* Task buffers kept per model for reuse. */
#define POOL_MAX 8
/* Largest batch a LoadModel may ask for (as etf-sim's scenarios). */
#define MAX_BATCH 4096u
/* Longest model path a request may give. */
#define MAX_REQUEST_PATH 1024
/* Names and paths echoed back in messages are cut to this many bytes. */
#define ECHO "%.200s"

/* ---- Tasks: the scheduler hands back `user`, which points at one of these ---- */

enum task_kind {
    TASK_INFER,
    TASK_CALIB,
};

struct task_tag {
    enum task_kind kind;
};

struct svc_model;

struct infer_task {
    struct task_tag tag; /* first */
    struct infer_task *next_free;
    struct svc_model *model;
    etf_service_infer_fn done;
    void *done_arg;
    bool return_outputs;
    bool with_io;
    struct etf_task_io io;
    /* Behind the struct, for models with a plan: n_in input pointers, n_out output
     * pointers, then the fp32 data of the inputs and the outputs. */
};

struct calib_wait {
    struct task_tag tag; /* first */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned finished;
    int status;
};

/* ---- Tables ---- */

struct plan_entry {
    struct plan_entry *next;
    char *path; /* real path of the ONNX file */
    size_t batch;
    long long size, mtime_ns; /* of the file when it was parsed */
    struct etf_plan *plan;
    unsigned refs; /* models using it, and loads in progress */
    size_t n_in, n_out;
    struct etf_tensor_info *in, *out; /* pointers into the plan */
    size_t in_elems, out_elems;       /* totals over the inputs and the outputs */
    /* A profile measured at load when the repository had none and could not keep one. */
    struct etf_profile *measured;
};

struct svc_model {
    uint64_t mid, eid;
    struct plan_entry *pe; /* NULL on the sim device */
    size_t inflight;       /* Infer tasks queued or running */
    struct infer_task *pool;
    size_t pooled;
    size_t record; /* index into svc->records */
};

struct model_record {
    uint64_t mid, eid;
    char name[64];
    uint64_t freq_hz;
    bool unloaded; /* the figures below are final */
    uint64_t tasks, time_ns, energy_nj;
};

struct task_row {
    uint64_t tid, eid, mid, start_ns, end_ns, service_ns, energy_nj;
};

struct etf_service {
    pthread_mutex_t lock;
    struct etf_device *dev;
    struct etf_meter *meter;
    struct etf_freq *freq;
    struct etf_sched *sched;
    char *repo; /* real path of the repository */
    char device_name[32];
    bool sim;
    uint64_t quantum_ns;
    double phi;
    unsigned calib_runs;
    uint64_t t0_ns;

    /* Under lock. */
    uint64_t calib_eid; /* 0 until the first measurement */
    bool stopped;
    uint64_t *eids; /* the clients' entities, ascending */
    size_t n_eids, cap_eids;
    struct svc_model **models; /* ascending mid */
    size_t n_models, cap_models;
    struct plan_entry *plans;
    struct model_record *records;
    size_t n_records, cap_records;
    struct task_row *rows;
    size_t n_rows, cap_rows, rows_dropped;
};

static void svc_lock(struct etf_service *svc)
{
    pthread_mutex_lock(&svc->lock);
}

static void svc_unlock(struct etf_service *svc)
{
    pthread_mutex_unlock(&svc->lock);
}

/* Grows *arr (of elem bytes each) to hold at least need elements. */
static int grow(void **arr, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t n = *cap ? *cap : 16;
    while (n < need) {
        if (n > SIZE_MAX / 2 / elem)
            return ETF_ENOMEM;
        n *= 2;
    }
    void *p = realloc(*arr, n * elem);
    if (!p)
        return ETF_ENOMEM;
    *arr = p;
    *cap = n;
    return 0;
}

/* Index of the first element >= id in a sorted id array. */
static size_t lower_bound(const uint64_t *ids, size_t n, uint64_t id)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static bool eid_known(const struct etf_service *svc, uint64_t eid)
{
    size_t i = lower_bound(svc->eids, svc->n_eids, eid);
    return i < svc->n_eids && svc->eids[i] == eid;
}

static int eid_add(struct etf_service *svc, uint64_t eid)
{
    if (grow((void **)&svc->eids, &svc->cap_eids, svc->n_eids + 1, sizeof *svc->eids))
        return ETF_ENOMEM;
    size_t i = lower_bound(svc->eids, svc->n_eids, eid);
    memmove(&svc->eids[i + 1], &svc->eids[i], (svc->n_eids - i) * sizeof *svc->eids);
    svc->eids[i] = eid;
    svc->n_eids++;
    return 0;
}

static void eid_remove(struct etf_service *svc, uint64_t eid)
{
    size_t i = lower_bound(svc->eids, svc->n_eids, eid);
    if (i < svc->n_eids && svc->eids[i] == eid) {
        memmove(&svc->eids[i], &svc->eids[i + 1], (svc->n_eids - i - 1) * sizeof *svc->eids);
        svc->n_eids--;
    }
}

static size_t model_index(const struct etf_service *svc, uint64_t mid)
{
    size_t lo = 0, hi = svc->n_models;
    while (lo < hi) {
        size_t m = lo + (hi - lo) / 2;
        if (svc->models[m]->mid < mid)
            lo = m + 1;
        else
            hi = m;
    }
    return lo;
}

static struct svc_model *model_find(const struct etf_service *svc, uint64_t mid)
{
    size_t i = model_index(svc, mid);
    return i < svc->n_models && svc->models[i]->mid == mid ? svc->models[i] : NULL;
}

static int model_insert(struct etf_service *svc, struct svc_model *m)
{
    if (grow((void **)&svc->models, &svc->cap_models, svc->n_models + 1, sizeof *svc->models))
        return ETF_ENOMEM;
    size_t i = model_index(svc, m->mid);
    memmove(&svc->models[i + 1], &svc->models[i], (svc->n_models - i) * sizeof *svc->models);
    svc->models[i] = m;
    svc->n_models++;
    return 0;
}

static void model_remove(struct etf_service *svc, uint64_t mid)
{
    size_t i = model_index(svc, mid);
    if (i < svc->n_models && svc->models[i]->mid == mid) {
        memmove(&svc->models[i], &svc->models[i + 1],
                (svc->n_models - i - 1) * sizeof *svc->models);
        svc->n_models--;
    }
}

/* ---- Small text helpers for messages ---- */

/* "[1,3,224,224]", cut with "..." when long. */
static void fmt_dims(char *buf, size_t size, const int64_t *dims, size_t n)
{
    size_t len = 0;
    len += (size_t)snprintf(buf, size, "[");
    for (size_t i = 0; i < n && len < size; i++) {
        if (i == 8) {
            snprintf(buf + len, size - len, ",... (%zu dims)", n);
            len = strlen(buf);
            break;
        }
        len += (size_t)snprintf(buf + len, size - len, "%s%lld", i ? "," : "", (long long)dims[i]);
    }
    if (len < size)
        snprintf(buf + len, size - len, "]");
}

/* The frequencies of a profile, "114750000, 216750000, ...", cut to fit. */
static void fmt_freqs(char *buf, size_t size, const struct etf_profile *p)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t f = 0; f < p->n_freqs; f++) {
        char one[32];
        int n = snprintf(one, sizeof one, "%s%" PRIu64, f ? ", " : "", p->freqs_hz[f]);
        if (len + (size_t)n + 5 >= size) {
            snprintf(buf + len, size - len, ", ...");
            return;
        }
        memcpy(buf + len, one, (size_t)n + 1);
        len += (size_t)n;
    }
}

static bool has_suffix(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* ---- The model repository ---- */

/* path is root or below it. root itself does not count: it is not a model. */
static bool inside_repo(const char *root, const char *path)
{
    size_t n = strlen(root);
    if (n == 1 && root[0] == '/')
        return path[0] == '/' && path[1] != '\0';
    return strncmp(path, root, n) == 0 && path[n] == '/';
}

/* Checks a path from a request (`field` names it in messages) and resolves it in the
 * repository: relative, no "..", and its real path (links followed) inside the repository.
 * out has PATH_MAX bytes. */
static int repo_resolve(const struct etf_service *svc, const char *field, const char *rel,
                        char *out, struct stat *st, struct etf_diag *diag)
{
    size_t len = strlen(rel);
    if (len == 0)
        return etf_diagf(diag, ETF_EINVAL,
                         "%s is empty: expected a name or a relative path inside the model "
                         "repository",
                         field);
    if (len > MAX_REQUEST_PATH)
        return etf_diagf(diag, ETF_EINVAL, "%s is %zu bytes long: at most %d expected", field, len,
                         MAX_REQUEST_PATH);
    if (rel[0] == '/')
        return etf_diagf(diag, ETF_EINVAL,
                         "%s '" ECHO "' is an absolute path: expected a path relative to the "
                         "model repository",
                         field, rel);
    for (const char *c = rel; *c;) {
        size_t n = strcspn(c, "/");
        if (n == 2 && c[0] == '.' && c[1] == '.')
            return etf_diagf(diag, ETF_EINVAL,
                             "%s '" ECHO "' contains a '..' component: expected a path inside "
                             "the model repository",
                             field, rel);
        c += n;
        if (*c == '/')
            c++;
    }
    for (const char *c = rel; *c; c++) {
        if ((unsigned char)*c < 0x20)
            return etf_diagf(diag, ETF_EINVAL, "%s contains a control character (0x%02x)", field,
                             (unsigned)(unsigned char)*c);
    }
    char joined[PATH_MAX];
    if (snprintf(joined, sizeof joined, "%s/%s", svc->repo, rel) >= (int)sizeof joined)
        return etf_diagf(diag, ETF_EINVAL, "%s '" ECHO "' is too long", field, rel);
    if (!realpath(joined, out)) {
        if (errno == ENOENT || errno == ENOTDIR)
            return etf_diagf(diag, ETF_ENOENT, "%s '" ECHO "' is not in the model repository",
                             field, rel);
        return etf_diagf(diag, ETF_EIO, "%s '" ECHO "': %s", field, rel, strerror(errno));
    }
    if (!inside_repo(svc->repo, out))
        return etf_diagf(diag, ETF_EINVAL,
                         "%s '" ECHO "' leads outside the model repository (a symbolic link "
                         "or the repository itself): refused",
                         field, rel);
    if (stat(out, st) != 0)
        return etf_diagf(diag, ETF_EIO, "%s '" ECHO "': %s", field, rel, strerror(errno));
    return 0;
}

/* A file named `name` in directory dir (itself in the repository): 0 with its real path in
 * out, ETF_ENOENT when there is no such regular file, ETF_EINVAL when it is a link leading
 * out of the repository. */
static int repo_child(const struct etf_service *svc, const char *dir, const char *name, char *out,
                      struct etf_diag *diag)
{
    char joined[PATH_MAX];
    struct stat st;
    if (snprintf(joined, sizeof joined, "%s/%s", dir, name) >= (int)sizeof joined)
        return etf_diagf(diag, ETF_EINVAL, "path too long");
    if (!realpath(joined, out) || stat(out, &st) != 0 || !S_ISREG(st.st_mode))
        return etf_diagf(diag, ETF_ENOENT, "no file %s", name);
    if (!inside_repo(svc->repo, out))
        return etf_diagf(diag, ETF_EINVAL, "%s leads outside the model repository: refused", name);
    return 0;
}

/* The path of the part of a resolved file below the repository, for messages. */
static const char *repo_rel(const struct etf_service *svc, const char *path)
{
    size_t n = strlen(svc->repo);
    return strncmp(path, svc->repo, n) == 0 && path[n] == '/' ? path + n + 1 : path;
}

/* What LoadModel found for a model_path. */
struct model_files {
    char onnx[PATH_MAX];    /* the ONNX file; "" on the sim device */
    char profile[PATH_MAX]; /* the profile to use if it exists; "" when none applies */
    bool explicit_profile;  /* given in the request: must exist */
    char cache[PATH_MAX];   /* where a measured profile is kept (real devices) */
};

static int find_model_files(const struct etf_service *svc, const Efair__Rpc__LoadModelRequest *req,
                            size_t batch, struct model_files *mf, struct etf_diag *diag)
{
    char path[PATH_MAX];
    struct stat st;
    memset(mf, 0, sizeof *mf);
    int rc = repo_resolve(svc, "model_path", req->model_path, path, &st, diag);
    if (rc)
        return rc;
    if (req->model_profile_path && req->model_profile_path[0]) {
        struct stat pst;
        rc = repo_resolve(svc, "model_profile_path", req->model_profile_path, mf->profile, &pst,
                          diag);
        if (rc)
            return rc;
        if (!S_ISREG(pst.st_mode))
            return etf_diagf(diag, ETF_EINVAL,
                             "model_profile_path '" ECHO "' is not a file: expected a profile "
                             ".json",
                             req->model_profile_path);
        mf->explicit_profile = true;
    }
    bool dir = S_ISDIR(st.st_mode);
    if (!dir && !S_ISREG(st.st_mode))
        return etf_diagf(diag, ETF_EINVAL,
                         "model_path '" ECHO "' is neither a folder nor a regular file",
                         req->model_path);
    bool json = !dir && has_suffix(path, ".json"), onnx = !dir && has_suffix(path, ".onnx");
    if (!dir && !json && !onnx)
        return etf_diagf(diag, ETF_EINVAL,
                         "model_path '" ECHO "': expected a folder, an .onnx file or (with the "
                         "sim device) a profile .json",
                         req->model_path);

    /* The repository's own profile and the cache of a measured one: beside the model, and
     * per batch size, since a profile measured at one batch says nothing of another. */
    char name[64] = "profile.json";
    char stem[PATH_MAX] = "";
    if (batch)
        snprintf(name, sizeof name, "profile.b%zu.json", batch);
    if (dir) {
        if (snprintf(mf->cache, sizeof mf->cache, "%s/%s", path, name) >= (int)sizeof mf->cache)
            return etf_diagf(diag, ETF_EINVAL, "model_path '" ECHO "' is too long",
                             req->model_path);
    } else if (onnx) {
        size_t n = strlen(path) - strlen(".onnx");
        snprintf(stem, sizeof stem, "%.*s", (int)n, path);
        if (snprintf(mf->cache, sizeof mf->cache,
                     batch ? "%s.b%zu.profile.json" : "%s.profile.json", stem,
                     batch) >= (int)sizeof mf->cache)
            return etf_diagf(diag, ETF_EINVAL, "model_path '" ECHO "' is too long",
                             req->model_path);
    }

    if (svc->sim) {
        if (mf->explicit_profile)
            return 0;
        if (json) {
            memcpy(mf->profile, path, sizeof mf->profile);
            return 0;
        }
        struct etf_diag ignored;
        const char *dirpath = path;
        char parent[PATH_MAX];
        const char *child = "profile.json";
        if (onnx) {
            snprintf(parent, sizeof parent, "%s", mf->cache);
            char *slash = strrchr(parent, '/');
            *slash = '\0';
            dirpath = parent;
            child = slash + 1;
        }
        rc = repo_child(svc, dirpath, child, mf->profile, &ignored);
        if (rc == ETF_EINVAL)
            return etf_diagf(diag, rc, "model_path '" ECHO "': its profile %s", req->model_path,
                             ignored.msg);
        if (rc)
            return etf_diagf(diag, ETF_ENOENT,
                             "model_path '" ECHO "': the sim device runs a model's profile and "
                             "there is none (expected %s, or a profile .json as model_path, or "
                             "model_profile_path)",
                             req->model_path, repo_rel(svc, mf->cache));
        return 0;
    }

    if (json)
        return etf_diagf(diag, ETF_EINVAL,
                         "model_path '" ECHO "' is a profile; device %s runs ONNX models: "
                         "expected a folder holding model.onnx or an .onnx file",
                         req->model_path, svc->device_name);
    if (dir) {
        struct etf_diag why;
        rc = repo_child(svc, path, "model.onnx", mf->onnx, &why);
        if (rc == ETF_EINVAL)
            return etf_diagf(diag, rc, "model_path '" ECHO "': its %s", req->model_path, why.msg);
        if (rc)
            return etf_diagf(diag, ETF_ENOENT,
                             "model_path '" ECHO "' is a folder without model.onnx: expected a "
                             "folder holding model.onnx, or an .onnx file",
                             req->model_path);
    } else {
        memcpy(mf->onnx, path, sizeof mf->onnx);
    }
    if (!mf->explicit_profile) {
        char real[PATH_MAX];
        struct stat cst;
        /* An existing repository profile must be a regular file in the repository; one
         * that is not is ignored and, being unsafe to overwrite, not cached either. */
        if (lstat(mf->cache, &cst) == 0) {
            if (realpath(mf->cache, real) && inside_repo(svc->repo, real) &&
                stat(real, &cst) == 0 && S_ISREG(cst.st_mode))
                memcpy(mf->profile, real, sizeof mf->profile);
            else
                mf->cache[0] = '\0';
        }
    }
    return 0;
}

/* ---- Frequencies ---- */

/* Resolves LoadModel's frequency against the model's profile: "" (0: the device's
 * default), a frequency in Hz the profile covers, "#N" or a bare N < 1000 (an index into the
 * profile's frequencies, as the original client's frequency_idx). */
static int parse_frequency(const char *s, const struct etf_profile *p, uint64_t *hz,
                           struct etf_diag *diag)
{
    char list[256];
    *hz = 0;
    if (!s || !*s)
        return 0;
    const char *d = s[0] == '#' ? s + 1 : s;
    bool digits = *d != '\0';
    for (const char *c = d; *c; c++)
        digits = digits && *c >= '0' && *c <= '9';
    errno = 0;
    unsigned long long v = digits ? strtoull(d, NULL, 10) : 0;
    if (!digits || errno == ERANGE)
        return etf_diagf(diag, ETF_EINVAL,
                         "frequency '%.64s': expected a frequency in Hz (decimal digits), '#N' "
                         "(an index into the model's frequencies) or empty (the device's clock)",
                         s);
    fmt_freqs(list, sizeof list, p);
    if (d != s || v < 1000) {
        if (v >= p->n_freqs)
            return etf_diagf(diag, ETF_EINVAL,
                             "frequency index %llu: the model has %zu frequencies, #0..#%zu "
                             "(%s Hz)",
                             v, p->n_freqs, p->n_freqs - 1, list);
        *hz = p->freqs_hz[v];
        return 0;
    }
    if (etf_profile_freq_index(p, v) < 0)
        return etf_diagf(diag, ETF_EINVAL,
                         "frequency %llu Hz: the device cannot run model '%.64s' there; its "
                         "profile has %s Hz",
                         v, p->model_name ? p->model_name : "?", list);
    *hz = v;
    return 0;
}

/* ---- Profiles ---- */

static struct etf_profile *profile_dup(const struct etf_profile *src)
{
    struct etf_profile *p = calloc(1, sizeof *p);
    if (!p)
        return NULL;
    size_t nf = src->n_freqs;
    p->n_freqs = nf;
    p->has_power = src->has_power;
    p->model_name = strdup(src->model_name ? src->model_name : "");
    p->freqs_hz = malloc(nf * sizeof *p->freqs_hz);
    p->time_us = malloc(nf * sizeof *p->time_us);
    p->kernels = calloc(src->n_kernels, sizeof *p->kernels);
    if (!p->model_name || !p->freqs_hz || !p->time_us || !p->kernels)
        goto fail;
    p->n_kernels = src->n_kernels;
    memcpy(p->freqs_hz, src->freqs_hz, nf * sizeof *p->freqs_hz);
    memcpy(p->time_us, src->time_us, nf * sizeof *p->time_us);
    if (src->power_mw) {
        if (!(p->power_mw = malloc(nf * sizeof *p->power_mw)))
            goto fail;
        memcpy(p->power_mw, src->power_mw, nf * sizeof *p->power_mw);
    }
    if (src->energy_uj) {
        if (!(p->energy_uj = malloc(nf * sizeof *p->energy_uj)))
            goto fail;
        memcpy(p->energy_uj, src->energy_uj, nf * sizeof *p->energy_uj);
    }
    for (size_t k = 0; k < src->n_kernels; k++) {
        const struct etf_kernel_profile *sk = &src->kernels[k];
        struct etf_kernel_profile *dk = &p->kernels[k];
        dk->name = strdup(sk->name ? sk->name : "");
        dk->time_us = malloc(nf * sizeof *dk->time_us);
        if (!dk->name || !dk->time_us)
            goto fail;
        memcpy(dk->time_us, sk->time_us, nf * sizeof *dk->time_us);
        if (sk->power_mw) {
            if (!(dk->power_mw = malloc(nf * sizeof *dk->power_mw)))
                goto fail;
            memcpy(dk->power_mw, sk->power_mw, nf * sizeof *dk->power_mw);
        }
    }
    return p;
fail:
    etf_profile_free(p);
    return NULL;
}

/* The clock a measured profile is keyed by: the controller's if it can tell, else for the
 * cpu device the CPU's nominal clock (as etf-run), else a nominal 1 GHz. */
static uint64_t measured_frequency(struct etf_service *svc)
{
    uint64_t hz;
    if (etf_freq_current(svc->freq, &hz) == 0 && hz > 0)
        return hz;
    if (strcmp(svc->device_name, "cpu") != 0)
        return 1000000000u;
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[256];
    double mhz = 0;
    while (f && fgets(line, sizeof line, f)) {
        if (sscanf(line, "cpu MHz : %lf", &mhz) == 1)
            break;
    }
    if (f)
        fclose(f);
    return mhz >= 1 && mhz < 1e6 ? (uint64_t)(mhz * 1e6 + 0.5) : 1000000000u;
}

/* The key a cached measurement is valid for: the model file as it was, the batch and the
 * device. Kept in a sidecar file beside the profile. */
static void cache_key(const struct etf_service *svc, const struct plan_entry *pe, char *buf,
                      size_t size)
{
    snprintf(buf, size, "etf-measured-profile size=%lld mtime_ns=%lld batch=%zu device=%s\n",
             pe->size, pe->mtime_ns, pe->batch, svc->device_name);
}

/* Whether the profile at path was measured by this server for this very model file. A
 * profile without a sidecar was put there by people: it is used as it is. */
static bool cache_valid(const struct etf_service *svc, const struct plan_entry *pe,
                        const char *profile_path, bool *ours)
{
    char key_path[PATH_MAX + 8], want[256], have[256];
    *ours = false;
    snprintf(key_path, sizeof key_path, "%s.key", profile_path);
    FILE *f = fopen(key_path, "r");
    if (!f)
        return true;
    *ours = true;
    size_t n = fread(have, 1, sizeof have - 1, f);
    fclose(f);
    have[n] = '\0';
    cache_key(svc, pe, want, sizeof want);
    return strcmp(have, want) == 0;
}

/* Keeps a measured profile in the repository for the next load (best effort: a read-only
 * repository only costs a new measurement). */
static void cache_store(struct etf_service *svc, const struct plan_entry *pe,
                        const struct etf_profile *p, const char *path)
{
    char tmp[PATH_MAX + 8], key[256], key_path[PATH_MAX + 8];
    struct stat st;
    struct etf_diag diag;
    if (!path[0])
        return;
    /* etf_profile_save writes path.tmp first: refuse to follow a link planted there. */
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (lstat(tmp, &st) == 0 && !S_ISREG(st.st_mode)) {
        fprintf(stderr, "etfd: not caching the profile of %s: %s exists and is not a file\n",
                repo_rel(svc, pe->path), repo_rel(svc, tmp));
        return;
    }
    snprintf(key_path, sizeof key_path, "%s.key", path);
    cache_key(svc, pe, key, sizeof key);
    if (etf_profile_save(p, path, &diag) != 0) {
        fprintf(stderr, "etfd: cannot cache the measured profile: %s\n", diag.msg);
        return;
    }
    const char *step = NULL;
    int err = etf__file_replace(key_path, key, strlen(key), &step);
    if (err) {
        fprintf(stderr, "etfd: cannot write %s: cannot %s: %s\n", repo_rel(svc, key_path), step,
                strerror(-err));
        unlink(path);
        return;
    }
    fprintf(stderr, "etfd: measured profile of %s kept in %s\n", repo_rel(svc, pe->path),
            repo_rel(svc, path));
}

/* ---- Calibration: measuring a model that has no profile ---- */

static int calib_wait_for(struct calib_wait *cw, unsigned count)
{
    pthread_mutex_lock(&cw->lock);
    while (cw->finished < count)
        pthread_cond_wait(&cw->cond, &cw->lock);
    int status = cw->status;
    pthread_mutex_unlock(&cw->lock);
    return status;
}

static void calib_done(struct calib_wait *cw, int status)
{
    pthread_mutex_lock(&cw->lock);
    cw->finished++;
    if (status && !cw->status)
        cw->status = status;
    pthread_cond_broadcast(&cw->cond);
    pthread_mutex_unlock(&cw->lock);
}

/* Runs `count` tasks of model mid (after those already counted in cw) and waits for them. */
static int calib_run(struct etf_service *svc, struct calib_wait *cw, uint64_t mid,
                     const struct etf_task_io *io, unsigned *submitted, unsigned count,
                     struct etf_diag *diag)
{
    int rc = 0;
    unsigned target = *submitted;
    for (unsigned i = 0; i < count; i++) {
        struct etf_request req = {.mid = mid, .io = io, .user = &cw->tag};
        if ((rc = etf_submit(svc->sched, &req, NULL, diag)))
            break;
        target++;
    }
    *submitted = target;
    int status = calib_wait_for(cw, target);
    if (rc)
        return rc;
    if (status)
        return etf_diagf(diag, status, "a calibration run failed: %s", etf_strerror(status));
    return 0;
}

/* The entity that measures models without a profile, made at the first need so that a
 * server that never measures shows its clients entity ids from 1. Clients never see it:
 * it is not in svc->eids. */
static int calib_entity(struct etf_service *svc, uint64_t *eid, struct etf_diag *diag)
{
    svc_lock(svc);
    *eid = svc->calib_eid;
    svc_unlock(svc);
    if (*eid)
        return 0;
    uint64_t made;
    int rc = etf_entity_create(svc->sched, 0, &made, diag);
    if (rc)
        return rc;
    svc_lock(svc);
    if (!svc->calib_eid)
        svc->calib_eid = made;
    *eid = svc->calib_eid;
    svc_unlock(svc);
    if (*eid != made)
        etf_entity_delete(svc->sched, made, NULL);
    return 0;
}

/* Loads the plan on the calibration entity, runs it once to warm up and then
 * svc->calib_runs times, and makes a profile of the mean time of each kernel (no power:
 * no meter measures it here). */
static int calibrate(struct etf_service *svc, struct plan_entry *pe, struct etf_profile **out,
                     struct etf_diag *diag)
{
    size_t nk = etf_plan_kernel_count(pe->plan);
    uint64_t mid = 0;
    bool loaded = false, sync_ready = false;
    unsigned submitted = 0;
    struct calib_wait cw = {.tag = {TASK_CALIB}};
    struct etf_profile *p = NULL;
    uint64_t *base_ns = calloc(nk, sizeof *base_ns);
    uint64_t *base_runs = calloc(nk, sizeof *base_runs);
    float *data = calloc(pe->in_elems + pe->out_elems + 1, sizeof *data);
    const float **in = calloc(pe->n_in + 1, sizeof *in);
    float **outs = calloc(pe->n_out + 1, sizeof *outs);
    int rc = ETF_ENOMEM;
    if (!base_ns || !base_runs || !data || !in || !outs) {
        etf_diagf(diag, rc, "calibration: out of memory");
        goto cleanup;
    }
    /* Zero inputs: the figures are times, and zeros keep them free of NaN slow paths. */
    float *cursor = data;
    for (size_t i = 0; i < pe->n_in; cursor += pe->in[i].elems, i++)
        in[i] = cursor;
    for (size_t i = 0; i < pe->n_out; cursor += pe->out[i].elems, i++)
        outs[i] = cursor;
    struct etf_task_io io = {.inputs = in, .outputs = outs};

    if (pthread_mutex_init(&cw.lock, NULL)) {
        etf_diagf(diag, rc, "calibration: cannot create a lock");
        goto cleanup;
    }
    if (pthread_cond_init(&cw.cond, NULL)) {
        pthread_mutex_destroy(&cw.lock);
        etf_diagf(diag, rc, "calibration: cannot create a condition");
        goto cleanup;
    }
    sync_ready = true;

    uint64_t calib_eid;
    if ((rc = calib_entity(svc, &calib_eid, diag)))
        goto cleanup;
    struct etf_model_spec spec = {.name = etf_plan_name(pe->plan), .plan = pe->plan};
    if ((rc = etf_model_load(svc->sched, calib_eid, &spec, &mid, diag)))
        goto cleanup;
    loaded = true;
    uint64_t t0 = etf_host_ns();
    if ((rc = calib_run(svc, &cw, mid, &io, &submitted, 1, diag)))
        goto cleanup;
    for (size_t k = 0; k < nk; k++)
        etf_model_kernel_stats(svc->sched, mid, k, &base_ns[k], &base_runs[k]);
    if ((rc = calib_run(svc, &cw, mid, &io, &submitted, svc->calib_runs, diag)))
        goto cleanup;

    rc = ETF_ENOMEM;
    if (!(p = calloc(1, sizeof *p)) || !(p->model_name = strdup(etf_plan_name(pe->plan))) ||
        !(p->freqs_hz = malloc(sizeof *p->freqs_hz)) ||
        !(p->time_us = calloc(1, sizeof *p->time_us)) ||
        !(p->kernels = calloc(nk, sizeof *p->kernels))) {
        etf_diagf(diag, rc, "calibration: out of memory");
        goto cleanup;
    }
    p->n_freqs = 1;
    p->freqs_hz[0] = measured_frequency(svc);
    p->n_kernels = nk;
    for (size_t k = 0; k < nk; k++) {
        uint64_t ns = 0, runs = 0;
        etf_model_kernel_stats(svc->sched, mid, k, &ns, &runs);
        runs -= base_runs[k];
        double us = runs ? (double)(ns - base_ns[k]) / (double)runs / 1000.0 : 0;
        struct etf_kernel_profile *kp = &p->kernels[k];
        if (!(kp->name = strdup(etf_plan_kernel_name(pe->plan, k))) ||
            !(kp->time_us = malloc(sizeof *kp->time_us))) {
            etf_diagf(diag, rc, "calibration: out of memory");
            goto cleanup;
        }
        kp->time_us[0] = us;
        p->time_us[0] += us;
    }
    if (!(p->time_us[0] > 0)) {
        rc = etf_diagf(diag, ETF_EDEVICE, "calibration: model '%.64s' ran in no measurable time",
                       p->model_name);
        goto cleanup;
    }
    fprintf(stderr,
            "etfd: measured %s (batch %zu): %.1f us per inference over %u runs in %.1f ms\n",
            repo_rel(svc, pe->path), pe->batch, p->time_us[0], svc->calib_runs,
            (double)(etf_host_ns() - t0) / 1e6);
    *out = p;
    p = NULL;
    rc = 0;

cleanup:
    if (loaded) {
        struct etf_diag ignored;
        etf_model_unload(svc->sched, mid, &ignored);
    }
    if (sync_ready) {
        pthread_cond_destroy(&cw.cond);
        pthread_mutex_destroy(&cw.lock);
    }
    etf_profile_free(p);
    free(base_ns);
    free(base_runs);
    free(data);
    free(in);
    free(outs);
    return rc;
}

/* ---- Plans: parsed once per (file, batch), shared ---- */

static void plan_entry_free(struct plan_entry *pe)
{
    if (!pe)
        return;
    etf_plan_free(pe->plan);
    etf_profile_free(pe->measured);
    free(pe->in);
    free(pe->out);
    free(pe->path);
    free(pe);
}

static int plan_entry_make(const char *path, size_t batch, const struct stat *st,
                           struct plan_entry **out, struct etf_diag *diag)
{
    struct plan_entry *pe = calloc(1, sizeof *pe);
    if (!pe || !(pe->path = strdup(path))) {
        free(pe);
        return etf_diagf(diag, ETF_ENOMEM, "model: out of memory");
    }
    pe->batch = batch;
    pe->size = (long long)st->st_size;
    pe->mtime_ns = (long long)st->st_mtim.tv_sec * 1000000000LL + st->st_mtim.tv_nsec;
    struct etf_model_options opts = {.batch = batch};
    int rc = etf_model_open(path, &opts, &pe->plan, diag);
    if (rc) {
        plan_entry_free(pe);
        return rc;
    }
    pe->n_in = etf_plan_input_count(pe->plan);
    pe->n_out = etf_plan_output_count(pe->plan);
    pe->in = calloc(pe->n_in + 1, sizeof *pe->in);
    pe->out = calloc(pe->n_out + 1, sizeof *pe->out);
    if (!pe->in || !pe->out) {
        plan_entry_free(pe);
        return etf_diagf(diag, ETF_ENOMEM, "model: out of memory");
    }
    for (size_t i = 0; i < pe->n_in; i++) {
        etf_plan_input(pe->plan, i, &pe->in[i]);
        pe->in_elems += pe->in[i].elems;
    }
    for (size_t i = 0; i < pe->n_out; i++) {
        etf_plan_output(pe->plan, i, &pe->out[i]);
        pe->out_elems += pe->out[i].elems;
    }
    *out = pe;
    return 0;
}

static struct plan_entry *plan_lookup(struct etf_service *svc, const struct plan_entry *key)
{
    for (struct plan_entry *pe = svc->plans; pe; pe = pe->next) {
        if (pe->batch == key->batch && pe->size == key->size && pe->mtime_ns == key->mtime_ns &&
            strcmp(pe->path, key->path) == 0)
            return pe;
    }
    return NULL;
}

/* A reference to the plan of the ONNX file at path (a real path) and batch. */
static int plan_acquire(struct etf_service *svc, const char *path, size_t batch,
                        struct plan_entry **out, struct etf_diag *diag)
{
    struct stat st;
    if (stat(path, &st) != 0)
        return etf_diagf(diag, ETF_ENOENT, "model %s: %s", repo_rel(svc, path), strerror(errno));
    struct plan_entry key = {.path = (char *)path,
                             .batch = batch,
                             .size = (long long)st.st_size,
                             .mtime_ns =
                                 (long long)st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec};
    svc_lock(svc);
    struct plan_entry *pe = plan_lookup(svc, &key);
    if (pe)
        pe->refs++;
    svc_unlock(svc);
    if (pe) {
        *out = pe;
        return 0;
    }
    /* Parsed without the lock (it takes long); two loads of a new model may both parse,
     * and the second to finish uses the first's plan. */
    struct plan_entry *made = NULL;
    int rc = plan_entry_make(path, batch, &st, &made, diag);
    if (rc)
        return rc;
    svc_lock(svc);
    pe = plan_lookup(svc, made);
    if (!pe) {
        pe = made;
        made = NULL;
        pe->next = svc->plans;
        svc->plans = pe;
    }
    pe->refs++;
    svc_unlock(svc);
    plan_entry_free(made);
    *out = pe;
    return 0;
}

static void plan_release(struct etf_service *svc, struct plan_entry *pe)
{
    if (!pe)
        return;
    svc_lock(svc);
    bool last = --pe->refs == 0;
    if (last) {
        for (struct plan_entry **pp = &svc->plans; *pp; pp = &(*pp)->next) {
            if (*pp == pe) {
                *pp = pe->next;
                break;
            }
        }
    }
    svc_unlock(svc);
    if (last)
        plan_entry_free(pe);
}

/* ---- Task buffers ---- */

static size_t task_ptrs_bytes(const struct plan_entry *pe)
{
    return pe ? (pe->n_in + pe->n_out) * sizeof(void *) : 0;
}

static struct infer_task *task_new(const struct plan_entry *pe)
{
    size_t bytes = sizeof(struct infer_task) + task_ptrs_bytes(pe);
    if (pe)
        bytes += (pe->in_elems + pe->out_elems) * sizeof(float);
    struct infer_task *t = malloc(bytes);
    if (!t)
        return NULL;
    memset(t, 0, sizeof *t);
    t->tag.kind = TASK_INFER;
    if (pe) {
        const float **in = (const float **)(t + 1);
        float **outs = (float **)(in + pe->n_in);
        float *cursor = (float *)(outs + pe->n_out);
        for (size_t i = 0; i < pe->n_in; cursor += pe->in[i].elems, i++)
            in[i] = cursor;
        for (size_t i = 0; i < pe->n_out; cursor += pe->out[i].elems, i++)
            outs[i] = cursor;
        t->io.inputs = in;
        t->io.outputs = outs;
    }
    return t;
}

/* Called with svc->lock held. */
static void task_recycle(struct svc_model *m, struct infer_task *t)
{
    if (!t)
        return;
    if (m->pooled < POOL_MAX) {
        t->next_free = m->pool;
        m->pool = t;
        m->pooled++;
    } else {
        free(t);
    }
}

static void svc_model_free(struct svc_model *m)
{
    while (m->pool) {
        struct infer_task *next = m->pool->next_free;
        free(m->pool);
        m->pool = next;
    }
    free(m);
}

/* ---- Responses ---- */

void etf_service_free_response(void *resp)
{
    if (resp)
        protobuf_c_message_free_unpacked(resp, NULL);
}

/* A Tensor with info's name and shape and, when data is not NULL, its bytes. */
static Efair__Rpc__Tensor *tensor_new(const struct etf_tensor_info *info, const float *data)
{
    Efair__Rpc__Tensor *t = malloc(sizeof *t);
    if (!t)
        return NULL;
    efair__rpc__tensor__init(t);
    if (!(t->name = strdup(info->name ? info->name : "")))
        goto fail;
    if (info->ndim > 0) {
        if (!(t->dims = malloc((size_t)info->ndim * sizeof *t->dims)))
            goto fail;
        memcpy(t->dims, info->dims, (size_t)info->ndim * sizeof *t->dims);
        t->n_dims = (size_t)info->ndim;
    }
    if (data) {
        size_t bytes = info->elems * sizeof(float);
        if (!(t->data.data = malloc(bytes ? bytes : 1)))
            goto fail;
        memcpy(t->data.data, data, bytes);
        t->data.len = bytes;
    }
    return t;
fail:
    protobuf_c_message_free_unpacked(&t->base, NULL);
    return NULL;
}

/* Fills *arr with n tensors of infos (and data when given); 0 or ETF_ENOMEM (the message
 * stays consistent for free_unpacked either way). */
static int tensors_new(Efair__Rpc__Tensor ***arr, size_t *count,
                       const struct etf_tensor_info *infos, size_t n, float *const *data)
{
    *count = 0;
    if (n == 0)
        return 0;
    if (!(*arr = calloc(n, sizeof **arr)))
        return ETF_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!((*arr)[i] = tensor_new(&infos[i], data ? data[i] : NULL)))
            return ETF_ENOMEM;
        (*count)++;
    }
    return 0;
}

/* Allocates var and runs the message's init on it; var is NULL when out of memory. */
#define NEW_MESSAGE(var, init) (((var) = malloc(sizeof *(var))) ? (init(var), (var)) : NULL)

/* ---- Life cycle ---- */

static void on_task_done(void *arg, const struct etf_task_record *rec);

int etf_service_create(const struct etf_service_config *cfg, struct etf_service **out,
                       struct etf_diag *diag)
{
    if (!cfg || !out || !cfg->device || !cfg->models_dir)
        return etf_diagf(diag, ETF_EINVAL, "service: device and model repository expected");
    struct etf_service *svc = calloc(1, sizeof *svc);
    if (!svc)
        return etf_diagf(diag, ETF_ENOMEM, "service: out of memory");
    int rc;
    bool lock_ready = false;
    if (pthread_mutex_init(&svc->lock, NULL)) {
        rc = etf_diagf(diag, ETF_ENOMEM, "service: cannot create its lock");
        goto fail;
    }
    lock_ready = true;
    svc->t0_ns = etf_host_ns();
    svc->quantum_ns = cfg->quantum_ns;
    svc->phi = cfg->phi;
    svc->calib_runs = cfg->calibration_runs ? cfg->calibration_runs : DEFAULT_CALIBRATION_RUNS;
    snprintf(svc->device_name, sizeof svc->device_name, "%s", cfg->device);
    svc->sim = strcmp(cfg->device, "sim") == 0;

    char real[PATH_MAX];
    struct stat st;
    if (!realpath(cfg->models_dir, real) || stat(real, &st) != 0) {
        rc = etf_diagf(diag, ETF_ENOENT, "model repository '%.200s': %s", cfg->models_dir,
                       strerror(errno));
        goto fail;
    }
    if (!S_ISDIR(st.st_mode)) {
        rc = etf_diagf(diag, ETF_EINVAL, "model repository '%.200s' is not a folder",
                       cfg->models_dir);
        goto fail;
    }
    if (!(svc->repo = strdup(real))) {
        rc = etf_diagf(diag, ETF_ENOMEM, "service: out of memory");
        goto fail;
    }

    struct etf_device_config dcfg = {.threads = cfg->device_threads};
    const char *meter = cfg->meter ? cfg->meter : "model";
    const char *freq = cfg->freq ? cfg->freq : svc->sim ? "sim" : "none";
    if ((rc = etf_device_open(cfg->device, &dcfg, &svc->dev, diag)) ||
        (rc = etf_meter_open(meter, cfg->meter_cfg, &svc->meter, diag)) ||
        (rc = etf_freq_open(freq, cfg->freq_cfg, &svc->freq, diag)))
        goto fail;
    struct etf_sched_config scfg = {
        .quantum_ns = cfg->quantum_ns,
        .phi = cfg->phi,
        .device = svc->dev,
        .meter = svc->meter,
        .freq = svc->freq,
        .on_done = on_task_done,
        .on_done_arg = svc,
        .max_queued_tasks = cfg->max_queued,
    };
    if ((rc = etf_sched_create(&scfg, &svc->sched, diag)))
        goto fail;
    *out = svc;
    return 0;

fail:
    etf_sched_destroy(svc->sched);
    etf_freq_close(svc->freq);
    etf_meter_close(svc->meter);
    etf_device_close(svc->dev);
    free(svc->repo);
    if (lock_ready)
        pthread_mutex_destroy(&svc->lock);
    free(svc);
    return rc;
}

int etf_service_start(struct etf_service *svc, struct etf_diag *diag)
{
    int rc = etf_sched_start(svc->sched);
    if (rc)
        return etf_diagf(diag, rc, "cannot start the dispatcher: %s", etf_strerror(rc));
    return 0;
}

void etf_service_stop(struct etf_service *svc, uint64_t drain_ns)
{
    svc_lock(svc);
    svc->stopped = true;
    svc_unlock(svc);
    etf_sched_stop(svc->sched, drain_ns);
}

void etf_service_destroy(struct etf_service *svc)
{
    if (!svc)
        return;
    /* The scheduler first: it fails what is still queued through on_done, and its models
     * borrow the plans freed below. */
    etf_sched_destroy(svc->sched);
    for (size_t i = 0; i < svc->n_models; i++)
        svc_model_free(svc->models[i]);
    while (svc->plans) {
        struct plan_entry *next = svc->plans->next;
        plan_entry_free(svc->plans);
        svc->plans = next;
    }
    etf_freq_close(svc->freq);
    etf_meter_close(svc->meter);
    etf_device_close(svc->dev);
    free(svc->models);
    free(svc->eids);
    free(svc->records);
    free(svc->rows);
    free(svc->repo);
    pthread_mutex_destroy(&svc->lock);
    free(svc);
}

void etf_service_info(const struct etf_service *svc, struct etf_service_info *out)
{
    *out = (struct etf_service_info){
        .device = etf_device_name(svc->dev),
        .meter = etf_meter_name(svc->meter),
        .freq = etf_freq_name(svc->freq),
        .quantum_ns = svc->quantum_ns,
        .phi = svc->phi,
    };
}

/* ---- Entities ---- */

int etf_service_create_entity(struct etf_service *svc, const Efair__Rpc__CreateEntityRequest *req,
                              Efair__Rpc__CreateEntityResponse **resp, struct etf_diag *diag)
{
    *resp = NULL;
    uint64_t eid;
    int rc = etf_entity_create(svc->sched, req->priority, &eid, diag);
    if (rc)
        return rc;
    Efair__Rpc__CreateEntityResponse *r;
    NEW_MESSAGE(r, efair__rpc__create_entity_response__init);
    svc_lock(svc);
    rc = r ? eid_add(svc, eid) : ETF_ENOMEM;
    svc_unlock(svc);
    if (rc) {
        free(r);
        etf_entity_delete(svc->sched, eid, NULL);
        return etf_diagf(diag, rc, "entity: out of memory");
    }
    r->success = true;
    r->eid = eid;
    *resp = r;
    return 0;
}

static int check_eid(struct etf_service *svc, uint64_t eid, struct etf_diag *diag)
{
    svc_lock(svc);
    bool known = eid_known(svc, eid);
    svc_unlock(svc);
    return known ? 0 : etf_diagf(diag, ETF_ENOENT, "no entity with id %" PRIu64, eid);
}

int etf_service_set_entity_priority(struct etf_service *svc,
                                    const Efair__Rpc__SetEntityPriorityRequest *req,
                                    Efair__Rpc__SetEntityPriorityResponse **resp,
                                    struct etf_diag *diag)
{
    *resp = NULL;
    int rc = check_eid(svc, req->eid, diag);
    if (rc == 0)
        rc = etf_entity_set_priority(svc->sched, req->eid, req->priority, diag);
    if (rc)
        return rc;
    Efair__Rpc__SetEntityPriorityResponse *r;
    NEW_MESSAGE(r, efair__rpc__set_entity_priority_response__init);
    if (!r)
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");
    r->success = true;
    *resp = r;
    return 0;
}

static bool entity_has_models(struct etf_service *svc, uint64_t eid)
{
    bool found = false;
    svc_lock(svc);
    for (size_t i = 0; i < svc->n_models && !found; i++)
        found = svc->models[i]->eid == eid;
    svc_unlock(svc);
    return found;
}

int etf_service_delete_entity(struct etf_service *svc, const Efair__Rpc__DeleteEntityRequest *req,
                              Efair__Rpc__DeleteEntityResponse **resp, struct etf_diag *diag)
{
    *resp = NULL;
    Efair__Rpc__DeleteEntityResponse *r;
    NEW_MESSAGE(r, efair__rpc__delete_entity_response__init);
    if (!r)
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");
    int rc = check_eid(svc, req->eid, diag);
    if (rc == 0)
        rc = etf_entity_delete(svc->sched, req->eid, diag);
    /* The scheduler also refuses while the entity's turn is still running, which it is for
     * a moment after its last task was answered (on_done runs inside the turn): a client
     * that deletes right after its last Infer would be refused for nothing. Without models,
     * the turn ends at once; wait for it, briefly. */
    for (int tries = 0; rc == ETF_EBUSY && tries < 200 && !entity_has_models(svc, req->eid);
         tries++) {
        struct timespec pause = {.tv_nsec = 500000};
        nanosleep(&pause, NULL);
        rc = etf_entity_delete(svc->sched, req->eid, diag);
    }
    if (rc) {
        free(r);
        if (rc == ETF_EBUSY)
            return etf_diagf(diag, rc,
                             "entity %" PRIu64 " still has models loaded: unload them first",
                             req->eid);
        return rc;
    }
    svc_lock(svc);
    eid_remove(svc, req->eid);
    svc_unlock(svc);
    r->success = true;
    *resp = r;
    return 0;
}

/* ---- Models ---- */

/* The profile a model runs with: the request's, the repository's, one measured earlier by
 * this server, or a new measurement. *p is the caller's to give to the scheduler. */
static int model_profile(struct etf_service *svc, struct plan_entry *pe,
                         const struct model_files *mf, struct etf_profile **p,
                         struct etf_diag *diag)
{
    *p = NULL;
    bool ours = false;
    if (mf->profile[0] &&
        (mf->explicit_profile || !pe || cache_valid(svc, pe, mf->profile, &ours))) {
        int rc = etf_profile_load(mf->profile, p, diag);
        if (rc && !ours)
            return rc;
        if (rc == 0)
            return 0;
        /* A cache of ours that does not read: measure again. */
    }
    if (!pe)
        return etf_diagf(diag, ETF_EINVAL, "no profile for the model");
    svc_lock(svc);
    if (pe->measured)
        *p = profile_dup(pe->measured);
    bool had = pe->measured != NULL;
    svc_unlock(svc);
    if (had)
        return *p ? 0 : etf_diagf(diag, ETF_ENOMEM, "out of memory");

    struct etf_profile *m = NULL;
    int rc = calibrate(svc, pe, &m, diag);
    if (rc)
        return rc;
    cache_store(svc, pe, m, mf->cache);
    if (!(*p = profile_dup(m))) {
        etf_profile_free(m);
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");
    }
    svc_lock(svc);
    if (!pe->measured) {
        pe->measured = m;
        m = NULL;
    }
    svc_unlock(svc);
    etf_profile_free(m);
    return 0;
}

static Efair__Rpc__LoadModelResponse *load_response(const struct plan_entry *pe, uint64_t mid,
                                                    uint64_t freq_hz)
{
    Efair__Rpc__LoadModelResponse *r;
    NEW_MESSAGE(r, efair__rpc__load_model_response__init);
    if (!r)
        return NULL;
    r->success = true;
    r->mid = mid;
    r->frequency_hz = freq_hz;
    if (pe && (tensors_new(&r->inputs, &r->n_inputs, pe->in, pe->n_in, NULL) ||
               tensors_new(&r->outputs, &r->n_outputs, pe->out, pe->n_out, NULL))) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return NULL;
    }
    return r;
}

int etf_service_load_model(struct etf_service *svc, const Efair__Rpc__LoadModelRequest *req,
                           Efair__Rpc__LoadModelResponse **resp, struct etf_diag *diag)
{
    *resp = NULL;
    struct model_files *mf = NULL;
    struct plan_entry *pe = NULL;
    struct etf_profile *profile = NULL;
    struct svc_model *m = NULL;
    Efair__Rpc__LoadModelResponse *r = NULL;
    bool loaded = false;
    uint64_t mid = 0;
    size_t batch = req->batch;

    int rc = check_eid(svc, req->eid, diag);
    if (rc)
        return rc;
    if (svc->sim && batch)
        return etf_diagf(diag, ETF_EINVAL,
                         "batch %zu: the sim device runs profiles as measured; expected batch 0",
                         batch);
    if (batch > MAX_BATCH)
        return etf_diagf(diag, ETF_EINVAL, "batch %zu: expected 0 (the model's own) to %u", batch,
                         MAX_BATCH);
    if (!(mf = malloc(sizeof *mf)))
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");
    if ((rc = find_model_files(svc, req, batch, mf, diag)))
        goto cleanup;
    if (!svc->sim && (rc = plan_acquire(svc, mf->onnx, batch, &pe, diag)))
        goto cleanup;
    if ((rc = model_profile(svc, pe, mf, &profile, diag)))
        goto cleanup;
    uint64_t hz;
    if ((rc = parse_frequency(req->frequency, profile, &hz, diag)))
        goto cleanup;

    struct etf_model_spec spec = {.profile = profile, .plan = pe ? pe->plan : NULL, .freq_hz = hz};
    if ((rc = etf_model_load(svc->sched, req->eid, &spec, &mid, diag)))
        goto cleanup;
    profile = NULL; /* the scheduler's now */
    loaded = true;

    struct etf_model_stats ms = {0};
    etf_model_stats(svc->sched, mid, &ms);
    rc = ETF_ENOMEM;
    if (!(m = calloc(1, sizeof *m)) || !(r = load_response(pe, mid, ms.freq_hz))) {
        etf_diagf(diag, rc, "out of memory");
        goto cleanup;
    }
    m->mid = mid;
    m->eid = req->eid;
    m->pe = pe;
    svc_lock(svc);
    if (grow((void **)&svc->records, &svc->cap_records, svc->n_records + 1, sizeof *svc->records) ==
            0 &&
        model_insert(svc, m) == 0) {
        m->record = svc->n_records++;
        struct model_record *rec = &svc->records[m->record];
        *rec = (struct model_record){.mid = mid, .eid = req->eid, .freq_hz = ms.freq_hz};
        memcpy(rec->name, ms.name, sizeof rec->name);
        rc = 0;
    }
    svc_unlock(svc);
    if (rc) {
        etf_diagf(diag, rc, "out of memory");
        goto cleanup;
    }
    fprintf(stderr,
            "etfd: model %" PRIu64 " (%s) loaded for entity %" PRIu64 " at %" PRIu64 " Hz\n", mid,
            ms.name, req->eid, ms.freq_hz);
    *resp = r;
    free(mf);
    return 0;

cleanup:
    if (loaded) {
        struct etf_diag ignored;
        etf_model_unload(svc->sched, mid, &ignored);
    }
    etf_service_free_response(r);
    free(m);
    etf_profile_free(profile);
    plan_release(svc, pe);
    free(mf);
    return rc;
}

int etf_service_unload_model(struct etf_service *svc, const Efair__Rpc__UnloadModelRequest *req,
                             Efair__Rpc__UnloadModelResponse **resp, struct etf_diag *diag)
{
    *resp = NULL;
    Efair__Rpc__UnloadModelResponse *r;
    NEW_MESSAGE(r, efair__rpc__unload_model_response__init);
    if (!r)
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");
    int rc = 0;
    svc_lock(svc);
    struct svc_model *m = model_find(svc, req->mid);
    if (!m)
        rc = etf_diagf(diag, ETF_ENOENT, "no model with id %" PRIu64, req->mid);
    else if (m->inflight)
        rc = etf_diagf(diag, ETF_EBUSY,
                       "model %" PRIu64 " has %zu Infer request(s) queued or running: unload it "
                       "when they have finished",
                       req->mid, m->inflight);
    else
        model_remove(svc, req->mid);
    svc_unlock(svc);
    if (rc) {
        free(r);
        return rc;
    }

    struct etf_model_stats ms;
    bool have_stats = etf_model_stats(svc->sched, m->mid, &ms) == 0;
    rc = etf_model_unload(svc->sched, m->mid, diag);
    svc_lock(svc);
    if (rc) {
        /* Cannot happen while the table says no task is in flight; keep the model usable. */
        model_insert(svc, m);
    } else if (have_stats) {
        struct model_record *rec = &svc->records[m->record];
        rec->unloaded = true;
        rec->tasks = ms.tasks_done;
        rec->time_ns = ms.time_ns;
        rec->energy_nj = ms.energy_nj;
    }
    svc_unlock(svc);
    if (rc) {
        free(r);
        return rc;
    }
    plan_release(svc, m->pe);
    svc_model_free(m);
    r->success = true;
    *resp = r;
    return 0;
}

/* ---- Infer ---- */

/* Maps the request's tensors onto the plan's inputs (by name when named, else by
 * position) and checks their shapes and sizes. order[i] = the request tensor of input i. */
static int check_inputs(const struct plan_entry *pe, uint64_t mid,
                        const Efair__Rpc__InferRequest *req, size_t *order, struct etf_diag *diag)
{
    char want[128], got[128];
    if (req->n_inputs != pe->n_in) {
        char names[200] = "";
        size_t len = 0;
        for (size_t i = 0; i < pe->n_in && len < sizeof names; i++) {
            fmt_dims(want, sizeof want, pe->in[i].dims, (size_t)pe->in[i].ndim);
            len += (size_t)snprintf(names + len, sizeof names - len, "%s'%.32s' %s", i ? ", " : "",
                                    pe->in[i].name, want);
        }
        return etf_diagf(diag, ETF_EINVAL,
                         "model %" PRIu64 " takes %zu input tensor(s) (%s), the request has %zu",
                         mid, pe->n_in, names, req->n_inputs);
    }
    for (size_t i = 0; i < pe->n_in; i++)
        order[i] = SIZE_MAX;
    for (size_t j = 0; j < req->n_inputs; j++) {
        const Efair__Rpc__Tensor *t = req->inputs[j];
        size_t i = j;
        if (t->name && t->name[0]) {
            for (i = 0; i < pe->n_in && strcmp(pe->in[i].name, t->name) != 0; i++)
                ;
            if (i == pe->n_in)
                return etf_diagf(diag, ETF_EINVAL,
                                 "input tensor '%.64s': model %" PRIu64
                                 " has no input of that name",
                                 t->name, mid);
        }
        if (order[i] != SIZE_MAX)
            return etf_diagf(diag, ETF_EINVAL, "input '%.64s' of model %" PRIu64 " given twice",
                             pe->in[i].name, mid);
        order[i] = j;
        const struct etf_tensor_info *info = &pe->in[i];
        bool same = t->n_dims == (size_t)info->ndim;
        for (size_t d = 0; same && d < t->n_dims; d++)
            same = t->dims[d] == info->dims[d];
        size_t bytes = info->elems * sizeof(float);
        if (!same || t->data.len != bytes) {
            fmt_dims(want, sizeof want, info->dims, (size_t)info->ndim);
            fmt_dims(got, sizeof got, t->dims, t->n_dims);
            return etf_diagf(diag, ETF_EINVAL,
                             "input '%.64s' (#%zu) of model %" PRIu64
                             ": expected shape %s and %zu bytes of fp32, found shape %s and %zu "
                             "bytes",
                             info->name, i, mid, want, bytes, got, t->data.len);
        }
    }
    return 0;
}

int etf_service_infer(struct etf_service *svc, const Efair__Rpc__InferRequest *req,
                      etf_service_infer_fn done, void *arg, struct etf_diag *diag)
{
    if (!req || !done)
        return etf_diagf(diag, ETF_EINVAL, "infer: no request or no callback");
    svc_lock(svc);
    struct svc_model *m = model_find(svc, req->mid);
    struct infer_task *t = NULL;
    if (m) {
        m->inflight++;
        if ((t = m->pool)) {
            m->pool = t->next_free;
            m->pooled--;
        }
    }
    svc_unlock(svc);
    if (!m)
        return etf_diagf(diag, ETF_ENOENT, "no model with id %" PRIu64, req->mid);

    /* From here m and its plan stay alive: UnloadModel refuses a model with tasks in
     * flight. The tensors are checked and copied without the lock. */
    const struct plan_entry *pe = m->pe;
    size_t order_small[8], *order = order_small;
    int rc = 0;
    if (!pe) {
        if (req->n_inputs)
            rc = etf_diagf(diag, ETF_EINVAL,
                           "model %" PRIu64 " runs on the sim device, which runs profiles: no "
                           "input tensor expected, found %zu",
                           req->mid, req->n_inputs);
    } else if (req->n_inputs == 0) {
        if (req->return_outputs)
            rc = etf_diagf(diag, ETF_EINVAL,
                           "return_outputs needs input tensors: without them the model runs on "
                           "its last inputs and its outputs stay on the device");
    } else {
        if (pe->n_in > 8 && !(order = malloc(pe->n_in * sizeof *order)))
            rc = etf_diagf(diag, ETF_ENOMEM, "out of memory");
        if (rc == 0)
            rc = check_inputs(pe, req->mid, req, order, diag);
    }
    if (rc == 0 && !t && !(t = task_new(pe)))
        rc = etf_diagf(diag, ETF_ENOMEM, "out of memory");
    if (rc)
        goto fail;

    t->model = m;
    t->done = done;
    t->done_arg = arg;
    t->with_io = pe && req->n_inputs > 0;
    t->return_outputs = t->with_io && req->return_outputs;
    if (t->with_io) {
        for (size_t i = 0; i < pe->n_in; i++) {
            const ProtobufCBinaryData *data = &req->inputs[order[i]]->data;
            if (data->len)
                memcpy((void *)t->io.inputs[i], data->data, data->len);
        }
    }
    struct etf_request sreq = {.mid = req->mid, .io = t->with_io ? &t->io : NULL, .user = &t->tag};
    if ((rc = etf_submit(svc->sched, &sreq, NULL, diag)))
        goto fail;
    /* t may already be finished and recycled here: it is not touched again. */
    if (order != order_small)
        free(order);
    return 0;

fail:
    if (order != order_small)
        free(order);
    svc_lock(svc);
    m->inflight--;
    task_recycle(m, t);
    svc_unlock(svc);
    return rc;
}

static Efair__Rpc__InferResponse *infer_response(const struct infer_task *t,
                                                 const struct etf_task_record *rec)
{
    Efair__Rpc__InferResponse *r;
    NEW_MESSAGE(r, efair__rpc__infer_response__init);
    if (!r)
        return NULL;
    r->success = true;
    r->tid = rec->tid;
    r->service_time_us = rec->service_ns / 1000u;
    r->energy_uj = (double)rec->energy_nj / 1000.0;
    r->queue_time_us =
        rec->start_ns > rec->submit_ns ? (rec->start_ns - rec->submit_ns) / 1000u : 0;
    r->latency_us = rec->end_ns > rec->submit_ns ? (rec->end_ns - rec->submit_ns) / 1000u : 0;
    const struct plan_entry *pe = t->model->pe;
    if (t->return_outputs &&
        tensors_new(&r->outputs, &r->n_outputs, pe->out, pe->n_out, t->io.outputs)) {
        protobuf_c_message_free_unpacked(&r->base, NULL);
        return NULL;
    }
    return r;
}

/* The scheduler's completion callback, on the dispatcher thread, no scheduler lock held. */
static void on_task_done(void *arg, const struct etf_task_record *rec)
{
    struct etf_service *svc = arg;
    struct task_tag *tag = rec->user;
    if (!tag)
        return;
    if (tag->kind == TASK_CALIB) {
        calib_done((struct calib_wait *)tag, rec->status);
        return;
    }
    struct infer_task *t = (struct infer_task *)tag;
    struct etf_diag diag = {""};
    Efair__Rpc__InferResponse *resp = NULL;
    int err = rec->status;
    if (err == ETF_ESHUTDOWN)
        etf_diagf(&diag, err, "the server is shutting down: task %" PRIu64 " did not run",
                  rec->tid);
    else if (err) {
        /* on_done runs on the dispatching thread, the one that switches clocks: the
         * controller's last error is the reason if a switch failed. */
        const char *why = etf_freq_last_error(svc->freq);
        etf_diagf(&diag, err, "task %" PRIu64 " failed on the device: %s%s%s", rec->tid,
                  etf_strerror(err), why && why[0] ? ": " : "", why ? why : "");
        if (why && why[0])
            fprintf(stderr, "etfd: task %" PRIu64 ": %s\n", rec->tid, why);
    } else if (!(resp = infer_response(t, rec)))
        err = etf_diagf(&diag, ETF_ENOMEM, "task %" PRIu64 " ran, but its answer is out of memory",
                        rec->tid);
    etf_service_infer_fn done = t->done;
    void *done_arg = t->done_arg;

    svc_lock(svc);
    if (rec->status == 0) {
        if (grow((void **)&svc->rows, &svc->cap_rows, svc->n_rows + 1, sizeof *svc->rows) == 0)
            svc->rows[svc->n_rows++] = (struct task_row){
                .tid = rec->tid,
                .eid = rec->eid,
                .mid = rec->mid,
                .start_ns = rec->start_ns - svc->t0_ns,
                .end_ns = rec->end_ns - svc->t0_ns,
                .service_ns = rec->service_ns,
                .energy_nj = rec->energy_nj,
            };
        else
            svc->rows_dropped++;
    }
    struct svc_model *m = t->model;
    m->inflight--;
    task_recycle(m, t);
    svc_unlock(svc);

    done(done_arg, err, diag.msg, resp);
}

/* ---- Stats ---- */

static Efair__Rpc__ModelStats *model_stats_msg(const struct etf_model_stats *ms)
{
    Efair__Rpc__ModelStats *s;
    NEW_MESSAGE(s, efair__rpc__model_stats__init);
    if (!s)
        return NULL;
    if (!(s->name = strdup(ms->name))) {
        free(s);
        return NULL;
    }
    s->mid = ms->mid;
    s->eid = ms->eid;
    s->frequency_hz = ms->freq_hz;
    s->tasks_done = ms->tasks_done;
    s->tasks_queued = ms->tasks_queued;
    s->time_us = ms->time_ns / 1000u;
    s->energy_uj = (double)ms->energy_nj / 1000.0;
    return s;
}

/* The FrequencyStats messages of *eid (NULL = the device) into *msgs / *n_msgs, which the
 * enclosing message owns (freed with it, also after a failure). */
static int freq_stats_msgs(struct etf_service *svc, const uint64_t *eid,
                           Efair__Rpc__FrequencyStats ***msgs, size_t *n_msgs)
{
    struct etf_freq_stats *rows;
    size_t n;
    int rc = etf_freq_stats_alloc(svc->sched, eid, &rows, &n);
    if (rc == 0 && n && !(*msgs = calloc(n, sizeof **msgs)))
        rc = ETF_ENOMEM;
    for (size_t i = 0; rc == 0 && i < n; i++) {
        Efair__Rpc__FrequencyStats *f;
        NEW_MESSAGE(f, efair__rpc__frequency_stats__init);
        if (!f) {
            rc = ETF_ENOMEM;
            break;
        }
        f->frequency_hz = rows[i].hz;
        f->kernels = rows[i].kernels;
        f->time_us = rows[i].time_ns / 1000u;
        f->energy_uj = (double)rows[i].energy_nj / 1000.0;
        f->models = rows[i].models > UINT32_MAX ? UINT32_MAX : (uint32_t)rows[i].models;
        (*msgs)[(*n_msgs)++] = f;
    }
    free(rows);
    return rc;
}

/* Fills one entity's message from the scheduler. ETF_ENOENT when it went away meanwhile. */
static int entity_stats_msg(struct etf_service *svc, uint64_t eid, const uint64_t *mids,
                            const uint64_t *model_eids, size_t n_mids,
                            Efair__Rpc__EntityStats **out)
{
    struct etf_entity_stats es;
    *out = NULL;
    if (etf_entity_stats(svc->sched, eid, &es) != 0)
        return ETF_ENOENT;
    Efair__Rpc__EntityStats *e;
    NEW_MESSAGE(e, efair__rpc__entity_stats__init);
    if (!e)
        return ETF_ENOMEM;
    e->eid = es.eid;
    e->priority = es.nice;
    e->weight = es.weight;
    e->tasks_done = es.tasks_done;
    e->tasks_queued = es.tasks_queued;
    e->time_us = es.time_ns / 1000u;
    /* What the meter measured and the ledger attributed, where a meter measures; the
     * modelled energy otherwise. */
    e->energy_uj = (double)(es.measured_energy_nj ? es.measured_energy_nj : es.energy_nj) / 1000.0;
    e->slice_us = es.slice_ns / 1000.0;
    e->power_mw = es.power_mw;
    size_t n = 0;
    for (size_t i = 0; i < n_mids; i++)
        n += model_eids[i] == eid;
    if (n && !(e->models = calloc(n, sizeof *e->models))) {
        protobuf_c_message_free_unpacked(&e->base, NULL);
        return ETF_ENOMEM;
    }
    for (size_t i = 0; i < n_mids; i++) {
        struct etf_model_stats ms;
        if (model_eids[i] != eid || etf_model_stats(svc->sched, mids[i], &ms) != 0)
            continue;
        if (!(e->models[e->n_models] = model_stats_msg(&ms))) {
            protobuf_c_message_free_unpacked(&e->base, NULL);
            return ETF_ENOMEM;
        }
        e->n_models++;
    }
    int rc = freq_stats_msgs(svc, &eid, &e->frequencies, &e->n_frequencies);
    if (rc) {
        protobuf_c_message_free_unpacked(&e->base, NULL);
        return rc;
    }
    *out = e;
    return 0;
}

int etf_service_get_stats(struct etf_service *svc, const Efair__Rpc__GetStatsRequest *req,
                          Efair__Rpc__GetStatsResponse **resp, struct etf_diag *diag)
{
    *resp = NULL;
    uint64_t *eids = NULL, *mids = NULL, *model_eids = NULL;
    size_t n_eids = 0, n_mids = 0;
    int rc = 0;
    Efair__Rpc__GetStatsResponse *r;
    NEW_MESSAGE(r, efair__rpc__get_stats_response__init);
    if (!r)
        return etf_diagf(diag, ETF_ENOMEM, "out of memory");

    /* Copy the ids, then ask the scheduler without the lock. */
    svc_lock(svc);
    if (req->eid && !eid_known(svc, req->eid)) {
        rc = etf_diagf(diag, ETF_ENOENT, "no entity with id %" PRIu64, req->eid);
    } else {
        n_eids = req->eid ? 1 : svc->n_eids;
        eids = malloc((n_eids + 1) * sizeof *eids);
        mids = malloc((svc->n_models + 1) * sizeof *mids);
        model_eids = malloc((svc->n_models + 1) * sizeof *model_eids);
        if (!eids || !mids || !model_eids) {
            rc = etf_diagf(diag, ETF_ENOMEM, "out of memory");
        } else {
            if (req->eid)
                eids[0] = req->eid;
            else if (n_eids)
                memcpy(eids, svc->eids, n_eids * sizeof *eids);
            for (size_t i = 0; i < svc->n_models; i++) {
                if (req->eid && svc->models[i]->eid != req->eid)
                    continue;
                mids[n_mids] = svc->models[i]->mid;
                model_eids[n_mids++] = svc->models[i]->eid;
            }
        }
    }
    svc_unlock(svc);
    if (rc)
        goto cleanup;

    if (n_eids && !(r->entities = calloc(n_eids, sizeof *r->entities))) {
        rc = etf_diagf(diag, ETF_ENOMEM, "out of memory");
        goto cleanup;
    }
    for (size_t i = 0; i < n_eids; i++) {
        Efair__Rpc__EntityStats *e;
        int erc = entity_stats_msg(svc, eids[i], mids, model_eids, n_mids, &e);
        if (erc == ETF_ENOMEM) {
            rc = etf_diagf(diag, erc, "out of memory");
            goto cleanup;
        }
        if (erc == ETF_ENOENT && req->eid) {
            rc = etf_diagf(diag, erc, "no entity with id %" PRIu64, req->eid);
            goto cleanup;
        }
        if (e)
            r->entities[r->n_entities++] = e;
    }
    struct etf_sched_stats ss;
    struct etf_service_info info;
    etf_sched_stats(svc->sched, &ss);
    etf_service_info(svc, &info);
    r->success = true;
    r->phi = svc->phi;
    r->quantum_us = svc->quantum_ns / 1000u;
    r->dispatches = ss.dispatches;
    r->busy_us = ss.busy_ns / 1000u;
    r->energy_uj = (double)(ss.measured_energy_nj ? ss.measured_energy_nj : ss.energy_nj) / 1000.0;
    if (!(r->device = strdup(info.device)) || !(r->meter = strdup(info.meter)) ||
        !(r->freq = strdup(info.freq)) ||
        freq_stats_msgs(svc, NULL, &r->frequencies, &r->n_frequencies) != 0) {
        rc = etf_diagf(diag, ETF_ENOMEM, "out of memory");
        goto cleanup;
    }

cleanup:
    if (rc) {
        etf_service_free_response(r);
        r = NULL;
    }
    free(eids);
    free(mids);
    free(model_eids);
    *resp = r;
    return rc;
}

/* ---- After the run ---- */

size_t etf_service_tasks_finished(struct etf_service *svc)
{
    svc_lock(svc);
    size_t n = svc->n_rows;
    svc_unlock(svc);
    return n;
}

/* One table of the summary by frequency: a row per frequency, with its share of the
 * table's time and energy. */
static void print_freq_rows(FILE *f, const struct etf_freq_stats *v, size_t n)
{
    uint64_t time = 0, energy = 0;
    for (size_t i = 0; i < n; i++) {
        time += v[i].time_ns;
        energy += v[i].energy_nj;
    }
    fprintf(f, "%14s %10s %16s %7s %16s %7s\n", "frequency_hz", "kernels", "time_us", "time%",
            "energy_uj", "energy%");
    for (size_t i = 0; i < n; i++)
        fprintf(f,
                "%14" PRIu64 " %10" PRIu64 " %12" PRIu64 ".%03u %7.2f %12" PRIu64 ".%03u %7.2f\n",
                v[i].hz, v[i].kernels, v[i].time_ns / 1000u, (unsigned)(v[i].time_ns % 1000u),
                time ? 100.0 * (double)v[i].time_ns / (double)time : 0.0, v[i].energy_nj / 1000u,
                (unsigned)(v[i].energy_nj % 1000u),
                energy ? 100.0 * (double)v[i].energy_nj / (double)energy : 0.0);
}

/* The device's time and energy by frequency, then each client entity's that ran at more
 * than one. */
static int print_freq_summary(struct etf_service *svc, FILE *f)
{
    svc_lock(svc);
    size_t n_eids = svc->n_eids;
    uint64_t *eids = malloc((n_eids + 1) * sizeof *eids);
    if (eids && n_eids)
        memcpy(eids, svc->eids, n_eids * sizeof *eids);
    svc_unlock(svc);
    struct etf_freq_stats *rows = NULL;
    size_t n = 0;
    int rc = eids ? etf_freq_stats_alloc(svc->sched, NULL, &rows, &n) : ETF_ENOMEM;
    if (rc == 0) {
        fprintf(f, "etfd: summary by frequency (modelled energy)\n");
        print_freq_rows(f, rows, n);
    }
    for (size_t i = 0; rc == 0 && i < n_eids; i++) {
        free(rows);
        rc = etf_freq_stats_alloc(svc->sched, &eids[i], &rows, &n);
        if (rc == ETF_ENOENT) {
            rc = 0;
            continue;
        }
        size_t ran = 0;
        for (size_t k = 0; rc == 0 && k < n; k++)
            ran += rows[k].kernels > 0;
        if (ran > 1) {
            fprintf(f, "etfd: entity %" PRIu64 " by frequency\n", eids[i]);
            print_freq_rows(f, rows, n);
        }
    }
    free(rows);
    free(eids);
    return rc;
}

int etf_service_print_summary(struct etf_service *svc, FILE *f)
{
    svc_lock(svc);
    size_t n = svc->n_records;
    struct model_record *recs = malloc((n + 1) * sizeof *recs);
    if (recs && n)
        memcpy(recs, svc->records, n * sizeof *recs);
    size_t dropped = svc->rows_dropped;
    svc_unlock(svc);
    if (!recs)
        return ETF_ENOMEM;
    fprintf(f, "etfd: summary by model\n");
    fprintf(f, "%6s %6s %-24s %14s %10s %16s %16s\n", "model", "entity", "name", "frequency_hz",
            "tasks", "time_us", "energy_uj");
    for (size_t i = 0; i < n; i++) {
        struct model_record *rec = &recs[i];
        struct etf_model_stats ms;
        if (!rec->unloaded && etf_model_stats(svc->sched, rec->mid, &ms) == 0) {
            rec->tasks = ms.tasks_done;
            rec->time_ns = ms.time_ns;
            rec->energy_nj = ms.energy_nj;
        }
        fprintf(f,
                "%6" PRIu64 " %6" PRIu64 " %-24s %14" PRIu64 " %10" PRIu64 " %12" PRIu64
                ".%03u %12" PRIu64 ".%03u\n",
                rec->mid, rec->eid, rec->name, rec->freq_hz, rec->tasks, rec->time_ns / 1000u,
                (unsigned)(rec->time_ns % 1000u), rec->energy_nj / 1000u,
                (unsigned)(rec->energy_nj % 1000u));
    }
    free(recs);
    int rc = print_freq_summary(svc, f);
    if (dropped)
        fprintf(f, "etfd: %zu finished task(s) missing from tasks.csv (out of memory)\n", dropped);
    if (rc)
        return rc;
    return fflush(f) == 0 && !ferror(f) ? 0 : ETF_EIO;
}

int etf_service_write_tasks_csv(struct etf_service *svc, FILE *f, struct etf_diag *diag)
{
    /* The dispatcher is stopped: no row is added while this runs, but the lock keeps the
     * rule simple. Rows are written under it; this is the end of the run. */
    svc_lock(svc);
    fprintf(f, "task_id,entity_id,model_id,start_t,end_t,service_time,energy_used\n");
    for (size_t i = 0; i < svc->n_rows; i++) {
        const struct task_row *r = &svc->rows[i];
        fprintf(f,
                "%" PRIu64 ",%" PRIu64 ",%" PRIu64 ",%" PRIu64 ".%03u,%" PRIu64 ".%03u,%" PRIu64
                ".%03u,%" PRIu64 ".%03u\n",
                r->tid, r->eid, r->mid, r->start_ns / 1000u, (unsigned)(r->start_ns % 1000u),
                r->end_ns / 1000u, (unsigned)(r->end_ns % 1000u), r->service_ns / 1000u,
                (unsigned)(r->service_ns % 1000u), r->energy_nj / 1000u,
                (unsigned)(r->energy_nj % 1000u));
    }
    svc_unlock(svc);
    if (fflush(f) != 0 || ferror(f))
        return etf_diagf(diag, ETF_EIO, "tasks.csv: write failed");
    return 0;
}
