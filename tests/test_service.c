/* Tests of the ETF service behind etfd (src/rpc/service.c), without a network: the model
 * repository's path rules, LoadModel on the sim device, the frequency forms, entities and
 * their priorities, unknown ids, Infer to completion, the figures of GetStats, the
 * refusals of DeleteEntity and UnloadModel while in use, the summary and tasks.csv, and
 * shutdown.
 *
 * The repository is a temporary folder with a copy of the TX2 ResNet-18 profile (21 ms per
 * inference at its top clock: the sim device sleeps that long) and a fast profile of two
 * 100 µs kernels for the tests that run many tasks. */
#include "support.h"

#include "rpc/service.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sys/stat.h>
#include <unistd.h>

#define R18_TOP_HZ 1300500000ull
#define R18_LOW_HZ 114750000ull

struct env {
    char root[256]; /* temporary folder: repo/ and outside/ */
    char repo[300]; /* the model repository */
    struct etf_service *svc;
};

static struct env g_env;

/* ---- Files ---- */

static void write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void copy_file(const char *from, const char *to)
{
    FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, in)) > 0)
        assert_int_equal(fwrite(chunk, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);
}

static void remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            char child[1024];
            snprintf(child, sizeof child, "%s/%s", path, de->d_name);
            remove_tree(child);
        }
        if (d)
            closedir(d);
        rmdir(path);
    } else {
        unlink(path);
    }
}

static void repo_path(char *buf, size_t size, const char *rel)
{
    snprintf(buf, size, "%s/%s", g_env.repo, rel);
}

/* ---- Service fixture ---- */

static struct etf_service *service_new(const char *repo)
{
    struct etf_service_config cfg = {
        .device = "sim",
        .models_dir = repo,
        .quantum_ns = 40 * MS,
        .phi = 0.7,
    };
    struct etf_service *svc = NULL;
    struct etf_diag diag = {""};
    int rc = etf_service_create(&cfg, &svc, &diag);
    if (rc)
        fail_msg("etf_service_create: %s", diag.msg);
    assert_int_equal(etf_service_start(svc, &diag), 0);
    return svc;
}

static int group_setup(void **state)
{
    (void)state;
    const char *tmp = getenv("TMPDIR");
    snprintf(g_env.root, sizeof g_env.root, "%s/etf_test_service.XXXXXX", tmp ? tmp : "/tmp");
    if (!mkdtemp(g_env.root))
        return -1;
    char path[600], target[600];
    snprintf(g_env.repo, sizeof g_env.repo, "%s/repo", g_env.root);
    mkdir(g_env.repo, 0777);
    snprintf(path, sizeof path, "%s/outside", g_env.root);
    mkdir(path, 0777);

    repo_path(path, sizeof path, "resnet18.json");
    copy_file(ETF_SOURCE_DIR "/data/tx2/resnet18_profile.json", path);
    repo_path(path, sizeof path, "r18dir");
    mkdir(path, 0777);
    repo_path(path, sizeof path, "r18dir/profile.json");
    copy_file(ETF_SOURCE_DIR "/data/tx2/resnet18_profile.json", path);
    repo_path(path, sizeof path, "empty_dir");
    mkdir(path, 0777);
    repo_path(path, sizeof path, "notes.txt");
    write_file(path, "hello\n", 6);

    /* Fast: two kernels of 100 µs at 2 W, at two clocks. */
    uint64_t freqs[] = {500 * MHZ, 1000 * MHZ};
    double times[] = {200, 100, 200, 100};
    double powers[] = {1000, 2000, 1000, 2000};
    char *json = prof_json("fast", 2, 2, freqs, times, powers);
    repo_path(path, sizeof path, "fast.json");
    write_file(path, json, strlen(json));

    /* A profile outside the repository and links to it (and to its folder). */
    snprintf(target, sizeof target, "%s/outside/secret.json", g_env.root);
    write_file(target, json, strlen(json));
    free(json);
    repo_path(path, sizeof path, "escape.json");
    if (symlink(target, path) != 0)
        return -1;
    snprintf(target, sizeof target, "%s/outside", g_env.root);
    repo_path(path, sizeof path, "escdir");
    if (symlink(target, path) != 0)
        return -1;
    /* A link that stays inside is fine. */
    repo_path(path, sizeof path, "alias.json");
    if (symlink("fast.json", path) != 0)
        return -1;

    g_env.svc = service_new(g_env.repo);
    *state = &g_env;
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    etf_service_destroy(g_env.svc);
    remove_tree(g_env.root);
    return 0;
}

/* ---- Helpers over the handlers ---- */

static int load(const char *path, const char *profile, uint64_t eid, const char *freq,
                uint64_t *mid, uint64_t *hz, struct etf_diag *diag)
{
    Efair__Rpc__LoadModelRequest req = EFAIR__RPC__LOAD_MODEL_REQUEST__INIT;
    req.model_path = (char *)path;
    req.model_profile_path = (char *)(profile ? profile : "");
    req.eid = eid;
    req.frequency = (char *)(freq ? freq : "");
    Efair__Rpc__LoadModelResponse *resp = NULL;
    diag->msg[0] = '\0';
    int rc = etf_service_load_model(g_env.svc, &req, &resp, diag);
    if (rc == 0) {
        assert_non_null(resp);
        assert_true(resp->success);
        if (mid)
            *mid = resp->mid;
        if (hz)
            *hz = resp->frequency_hz;
        assert_int_equal(resp->n_inputs, 0); /* sim: no tensors */
    } else {
        assert_null(resp);
        assert_true(diag->msg[0] != '\0');
    }
    etf_service_free_response(resp);
    return rc;
}

static int entity_new(int64_t priority, uint64_t *eid)
{
    Efair__Rpc__CreateEntityRequest req = EFAIR__RPC__CREATE_ENTITY_REQUEST__INIT;
    req.priority = priority;
    Efair__Rpc__CreateEntityResponse *resp = NULL;
    struct etf_diag diag;
    int rc = etf_service_create_entity(g_env.svc, &req, &resp, &diag);
    if (rc == 0) {
        assert_true(resp->success);
        *eid = resp->eid;
    }
    etf_service_free_response(resp);
    return rc;
}

static uint64_t entity(void)
{
    uint64_t eid = 0;
    assert_int_equal(entity_new(0, &eid), 0);
    return eid;
}

static int unload(uint64_t mid, struct etf_diag *diag)
{
    Efair__Rpc__UnloadModelRequest req = EFAIR__RPC__UNLOAD_MODEL_REQUEST__INIT;
    req.mid = mid;
    Efair__Rpc__UnloadModelResponse *resp = NULL;
    int rc = etf_service_unload_model(g_env.svc, &req, &resp, diag);
    assert_true(rc ? resp == NULL : resp && resp->success);
    etf_service_free_response(resp);
    return rc;
}

static int delete_entity(uint64_t eid, struct etf_diag *diag)
{
    Efair__Rpc__DeleteEntityRequest req = EFAIR__RPC__DELETE_ENTITY_REQUEST__INIT;
    req.eid = eid;
    Efair__Rpc__DeleteEntityResponse *resp = NULL;
    int rc = etf_service_delete_entity(g_env.svc, &req, &resp, diag);
    assert_true(rc ? resp == NULL : resp && resp->success);
    etf_service_free_response(resp);
    return rc;
}

/* Collects Infer completions. */
struct waiter {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned done, failed;
    int last_err;
    uint64_t tids[64];
    uint64_t service_us, latency_us;
    double energy_uj;
};

static void waiter_init(struct waiter *w)
{
    memset(w, 0, sizeof *w);
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
}

static void waiter_fini(struct waiter *w)
{
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}

static void on_infer(void *arg, int err, const char *msg, Efair__Rpc__InferResponse *resp)
{
    struct waiter *w = arg;
    pthread_mutex_lock(&w->lock);
    if (err) {
        assert_null(resp);
        assert_true(msg && msg[0]);
        w->failed++;
        w->last_err = err;
    } else {
        assert_true(resp->success);
        assert_true(resp->latency_us >= resp->service_time_us);
        assert_true(resp->latency_us >= resp->queue_time_us);
        assert_int_equal(resp->n_outputs, 0);
        if (w->done < 64)
            w->tids[w->done] = resp->tid;
        w->service_us += resp->service_time_us;
        w->latency_us += resp->latency_us;
        w->energy_uj += resp->energy_uj;
    }
    w->done++;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    etf_service_free_response(resp);
}

static void waiter_wait(struct waiter *w, unsigned count)
{
    pthread_mutex_lock(&w->lock);
    while (w->done < count)
        pthread_cond_wait(&w->cond, &w->lock);
    pthread_mutex_unlock(&w->lock);
}

static int infer(uint64_t mid, struct waiter *w, struct etf_diag *diag)
{
    Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
    req.mid = mid;
    return etf_service_infer(g_env.svc, &req, on_infer, w, diag);
}

/* ---- Tests ---- */

static void test_repository_paths(void **state)
{
    (void)state;
    uint64_t eid = entity(), mid;
    struct etf_diag diag;
    char abs[600];
    repo_path(abs, sizeof abs, "resnet18.json");

    assert_int_equal(load(abs, NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "absolute"));
    assert_int_equal(load("../repo/resnet18.json", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, ".."));
    assert_int_equal(load("r18dir/../resnet18.json", NULL, eid, NULL, NULL, NULL, &diag),
                     ETF_EINVAL);
    assert_int_equal(load("r18dir/..", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "empty"));
    /* Links that leave the repository, to a file or through a folder. */
    assert_int_equal(load("escape.json", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "outside"));
    assert_int_equal(load("escdir/secret.json", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "outside"));
    /* The repository itself is not a model. */
    assert_int_equal(load(".", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    /* Missing things. */
    assert_int_equal(load("missing.json", NULL, eid, NULL, NULL, NULL, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "missing.json"));
    assert_int_equal(load("nodir/x.json", NULL, eid, NULL, NULL, NULL, &diag), ETF_ENOENT);
    assert_int_equal(load("empty_dir", NULL, eid, NULL, NULL, NULL, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "profile"));
    assert_int_equal(load("notes.txt", NULL, eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    /* The profile path follows the same rules. */
    assert_int_equal(load("empty_dir", "escape.json", eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("empty_dir", "/etc/passwd", eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("empty_dir", "../x.json", eid, NULL, NULL, NULL, &diag), ETF_EINVAL);
    /* A link inside the repository is fine; so are the folder and explicit-profile forms. */
    assert_int_equal(load("alias.json", NULL, eid, NULL, &mid, NULL, &diag), 0);
    assert_int_equal(unload(mid, &diag), 0);
    assert_int_equal(load("r18dir", NULL, eid, NULL, &mid, NULL, &diag), 0);
    assert_int_equal(unload(mid, &diag), 0);
    assert_int_equal(load("empty_dir", "fast.json", eid, NULL, &mid, NULL, &diag), 0);
    assert_int_equal(unload(mid, &diag), 0);
    assert_int_equal(delete_entity(eid, &diag), 0);
}

static void test_load_and_frequencies(void **state)
{
    (void)state;
    uint64_t eid = entity(), mid, hz;
    struct etf_diag diag;

    /* Empty: the controller knows no clock yet, so the profile's highest. */
    assert_int_equal(load("resnet18.json", NULL, eid, "", &mid, &hz, &diag), 0);
    assert_int_equal(hz, R18_TOP_HZ);
    assert_int_equal(load("resnet18.json", NULL, eid, "1300500000", &mid, &hz, &diag), 0);
    assert_int_equal(hz, R18_TOP_HZ);
    assert_int_equal(load("resnet18.json", NULL, eid, "114750000", &mid, &hz, &diag), 0);
    assert_int_equal(hz, R18_LOW_HZ);
    assert_int_equal(load("resnet18.json", NULL, eid, "#0", &mid, &hz, &diag), 0);
    assert_int_equal(hz, R18_LOW_HZ);
    assert_int_equal(load("resnet18.json", NULL, eid, "#12", &mid, &hz, &diag), 0);
    assert_int_equal(hz, R18_TOP_HZ);
    /* A bare small number is an index, as the original client's frequency_idx. */
    assert_int_equal(load("resnet18.json", NULL, eid, "3", &mid, &hz, &diag), 0);
    assert_int_equal(hz, 420750000u);

    assert_int_equal(load("resnet18.json", NULL, eid, "#13", NULL, NULL, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "#0..#12"));
    assert_int_equal(load("resnet18.json", NULL, eid, "13", NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("resnet18.json", NULL, eid, "1300000000", NULL, NULL, &diag), ETF_EINVAL);
    /* The message lists what is available. */
    assert_non_null(strstr(diag.msg, "1300000000"));
    assert_non_null(strstr(diag.msg, "114750000"));
    assert_non_null(strstr(diag.msg, "1300500000"));
    assert_int_equal(load("resnet18.json", NULL, eid, "1.3e9", NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("resnet18.json", NULL, eid, "#", NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("resnet18.json", NULL, eid, "-1", NULL, NULL, &diag), ETF_EINVAL);
    assert_int_equal(load("resnet18.json", NULL, eid, "99999999999999999999999", NULL, NULL, &diag),
                     ETF_EINVAL);

    /* Batch sizes do not apply to profiles. */
    Efair__Rpc__LoadModelRequest req = EFAIR__RPC__LOAD_MODEL_REQUEST__INIT;
    req.model_path = "resnet18.json";
    req.eid = eid;
    req.batch = 4;
    Efair__Rpc__LoadModelResponse *resp = NULL;
    assert_int_equal(etf_service_load_model(g_env.svc, &req, &resp, &diag), ETF_EINVAL);
    assert_null(resp);
}

static void test_entities(void **state)
{
    (void)state;
    uint64_t a, b, c;
    struct etf_diag diag;
    assert_int_equal(entity_new(-20, &a), 0);
    assert_int_equal(entity_new(19, &b), 0);
    assert_true(b > a);
    assert_int_equal(entity_new(-21, &c), ETF_EINVAL);
    assert_int_equal(entity_new(20, &c), ETF_EINVAL);
    assert_int_equal(entity_new(INT64_MIN, &c), ETF_EINVAL);

    Efair__Rpc__SetEntityPriorityRequest req = EFAIR__RPC__SET_ENTITY_PRIORITY_REQUEST__INIT;
    Efair__Rpc__SetEntityPriorityResponse *resp = NULL;
    req.eid = a;
    req.priority = 5;
    assert_int_equal(etf_service_set_entity_priority(g_env.svc, &req, &resp, &diag), 0);
    assert_true(resp->success);
    etf_service_free_response(resp);
    req.priority = 20;
    assert_int_equal(etf_service_set_entity_priority(g_env.svc, &req, &resp, &diag), ETF_EINVAL);
    assert_null(resp);
    assert_non_null(strstr(diag.msg, "-20..19"));

    Efair__Rpc__GetStatsRequest sreq = EFAIR__RPC__GET_STATS_REQUEST__INIT;
    Efair__Rpc__GetStatsResponse *sresp = NULL;
    sreq.eid = a;
    assert_int_equal(etf_service_get_stats(g_env.svc, &sreq, &sresp, &diag), 0);
    assert_int_equal(sresp->n_entities, 1);
    assert_int_equal(sresp->entities[0]->priority, 5);
    assert_int_equal(sresp->entities[0]->weight, etf_nice_to_weight(5));
    etf_service_free_response(sresp);

    assert_int_equal(delete_entity(a, &diag), 0);
    assert_int_equal(delete_entity(b, &diag), 0);
}

static void test_unknown_ids(void **state)
{
    (void)state;
    struct etf_diag diag;
    const uint64_t bogus = 999999;
    struct waiter w;
    waiter_init(&w);
    assert_int_equal(infer(bogus, &w, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "999999"));
    assert_int_equal(unload(bogus, &diag), ETF_ENOENT);
    assert_int_equal(delete_entity(bogus, &diag), ETF_ENOENT);
    assert_int_equal(load("fast.json", NULL, bogus, NULL, NULL, NULL, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "entity"));

    Efair__Rpc__SetEntityPriorityRequest preq = EFAIR__RPC__SET_ENTITY_PRIORITY_REQUEST__INIT;
    Efair__Rpc__SetEntityPriorityResponse *presp = NULL;
    preq.eid = bogus;
    assert_int_equal(etf_service_set_entity_priority(g_env.svc, &preq, &presp, &diag), ETF_ENOENT);
    assert_null(presp);

    Efair__Rpc__GetStatsRequest sreq = EFAIR__RPC__GET_STATS_REQUEST__INIT;
    Efair__Rpc__GetStatsResponse *sresp = NULL;
    sreq.eid = bogus;
    assert_int_equal(etf_service_get_stats(g_env.svc, &sreq, &sresp, &diag), ETF_ENOENT);
    assert_null(sresp);
    /* No callback came for the refused Infer. */
    assert_int_equal(w.done, 0);
    waiter_fini(&w);
}

/* Rows by frequency are in ascending order and add up to the totals they split (time_us
 * is truncated per row, so the sum may fall short by up to a µs a row). Returns the
 * kernels counted. */
static uint64_t check_freq_rows(Efair__Rpc__FrequencyStats *const *rows, size_t n, uint64_t time_us,
                                double energy_uj)
{
    uint64_t t = 0, kernels = 0;
    double en = 0;
    for (size_t i = 0; i < n; i++) {
        if (i)
            assert_true(rows[i - 1]->frequency_hz < rows[i]->frequency_hz);
        t += rows[i]->time_us;
        en += rows[i]->energy_uj;
        kernels += rows[i]->kernels;
    }
    assert_true(t <= time_us && time_us <= t + n);
    assert_true(fabs(en - energy_uj) <= 1e-6 * (1 + energy_uj));
    return kernels;
}

static void test_infer_and_stats(void **state)
{
    (void)state;
    struct etf_diag diag;
    uint64_t e1 = entity(), e2 = entity(), m1, m2, m3;
    assert_int_equal(load("fast.json", NULL, e1, "#1", &m1, NULL, &diag), 0);
    assert_int_equal(load("fast.json", NULL, e1, "#0", &m2, NULL, &diag), 0);
    assert_int_equal(load("fast.json", NULL, e2, NULL, &m3, NULL, &diag), 0);
    size_t before = etf_service_tasks_finished(g_env.svc);

    struct waiter w;
    waiter_init(&w);
    const uint64_t mids[] = {m1, m2, m3};
    const unsigned n = 30;
    for (unsigned i = 0; i < n; i++)
        assert_int_equal(infer(mids[i % 3], &w, &diag), 0);
    waiter_wait(&w, n);
    assert_int_equal(w.failed, 0);
    for (unsigned i = 0; i < n; i++) {
        for (unsigned j = 0; j < i; j++)
            assert_true(w.tids[i] != w.tids[j]);
    }
    /* Each task: two kernels, >= 200 µs of device time on the sleeping sim device. */
    assert_true(w.service_us >= n * 200u);
    assert_true(w.energy_uj > 0);
    assert_int_equal(etf_service_tasks_finished(g_env.svc), before + n);

    /* Tensors on the sim device are refused with a reason. */
    Efair__Rpc__Tensor t = EFAIR__RPC__TENSOR__INIT;
    Efair__Rpc__Tensor *inputs[] = {&t};
    Efair__Rpc__InferRequest req = EFAIR__RPC__INFER_REQUEST__INIT;
    req.mid = m1;
    req.n_inputs = 1;
    req.inputs = inputs;
    assert_int_equal(etf_service_infer(g_env.svc, &req, on_infer, &w, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "sim"));

    /* The figures add up: entity = sum of its models; the device total >= the entities'. */
    Efair__Rpc__GetStatsRequest sreq = EFAIR__RPC__GET_STATS_REQUEST__INIT;
    Efair__Rpc__GetStatsResponse *s = NULL;
    assert_int_equal(etf_service_get_stats(g_env.svc, &sreq, &s, &diag), 0);
    assert_true(s->success);
    assert_string_equal(s->device, "sim");
    assert_string_equal(s->meter, "model");
    assert_string_equal(s->freq, "sim");
    assert_int_equal(s->quantum_us, 40000);
    assert_true(fabs(s->phi - 0.7) < 1e-12);
    uint64_t tasks = 0, time_us = 0;
    double energy = 0;
    bool seen1 = false, seen2 = false;
    for (size_t i = 0; i < s->n_entities; i++) {
        const Efair__Rpc__EntityStats *e = s->entities[i];
        uint64_t mt = 0, mtime = 0;
        double men = 0;
        for (size_t k = 0; k < e->n_models; k++) {
            assert_int_equal(e->models[k]->eid, e->eid);
            mt += e->models[k]->tasks_done;
            mtime += e->models[k]->time_us;
            men += e->models[k]->energy_uj;
            if (e->eid == e1 || e->eid == e2)
                assert_string_equal(e->models[k]->name, "fast");
        }
        assert_int_equal(e->tasks_done, mt);
        assert_true(e->time_us >= mtime && e->time_us <= mtime + e->n_models);
        assert_true(fabs(e->energy_uj - men) <= 1e-6 * (1 + men));
        assert_int_equal(e->tasks_queued, 0);
        check_freq_rows(e->frequencies, e->n_frequencies, e->time_us, e->energy_uj);
        if (e->eid == e1) {
            seen1 = true;
            assert_int_equal(e->n_models, 2);
            assert_int_equal(e->tasks_done, 20);
            /* Its models at "#0" and "#1": 10 tasks of 2 kernels at each clock. */
            assert_int_equal(e->n_frequencies, 2);
            assert_int_equal(e->frequencies[0]->frequency_hz, 500 * MHZ);
            assert_int_equal(e->frequencies[1]->frequency_hz, 1000 * MHZ);
            for (size_t k = 0; k < 2; k++) {
                assert_int_equal(e->frequencies[k]->kernels, 20);
                assert_int_equal(e->frequencies[k]->models, 1);
                assert_true(e->frequencies[k]->time_us >= 20 * 100);
                assert_true(e->frequencies[k]->energy_uj > 0);
            }
        }
        if (e->eid == e2) {
            seen2 = true;
            assert_int_equal(e->n_models, 1);
            assert_int_equal(e->tasks_done, 10);
            assert_int_equal(e->n_frequencies, 1);
            assert_int_equal(e->frequencies[0]->kernels, 20);
        }
        tasks += e->tasks_done;
        time_us += e->time_us;
        energy += e->energy_uj;
    }
    assert_true(seen1 && seen2);
    assert_true(tasks >= n);
    assert_true(s->busy_us + s->n_entities >= time_us);
    assert_true(s->energy_uj + 1e-3 >= energy);
    assert_true(s->dispatches >= 2 * n);
    /* The device's rows split its totals: both clocks of fast.json are among them. */
    assert_int_equal(check_freq_rows(s->frequencies, s->n_frequencies, s->busy_us, s->energy_uj),
                     s->dispatches);
    size_t clocks = 0;
    for (size_t k = 0; k < s->n_frequencies; k++)
        clocks += s->frequencies[k]->frequency_hz == 500 * MHZ ||
                  s->frequencies[k]->frequency_hz == 1000 * MHZ;
    assert_int_equal(clocks, 2);
    etf_service_free_response(s);

    /* The summary splits the device's figures by frequency, and e1's, which ran at two. */
    char *text = NULL, title[64];
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(etf_service_print_summary(g_env.svc, f), 0);
    fclose(f);
    assert_non_null(strstr(text, "etfd: summary by frequency"));
    assert_non_null(strstr(text, "\n     500000000 "));
    snprintf(title, sizeof title, "etfd: entity %" PRIu64 " by frequency\n", e1);
    assert_non_null(strstr(text, title));
    snprintf(title, sizeof title, "etfd: entity %" PRIu64 " by frequency\n", e2);
    assert_null(strstr(text, title));
    free(text);

    /* Per entity: only its models. */
    sreq.eid = e2;
    assert_int_equal(etf_service_get_stats(g_env.svc, &sreq, &s, &diag), 0);
    assert_int_equal(s->n_entities, 1);
    assert_int_equal(s->entities[0]->eid, e2);
    assert_int_equal(s->entities[0]->n_models, 1);
    assert_int_equal(s->entities[0]->models[0]->mid, m3);
    assert_int_equal(s->entities[0]->models[0]->tasks_done, 10);
    etf_service_free_response(s);

    assert_int_equal(unload(m1, &diag), 0);
    assert_int_equal(unload(m2, &diag), 0);
    assert_int_equal(unload(m3, &diag), 0);
    assert_int_equal(delete_entity(e1, &diag), 0);
    assert_int_equal(delete_entity(e2, &diag), 0);
    waiter_fini(&w);
}

static void test_in_use(void **state)
{
    (void)state;
    struct etf_diag diag;
    uint64_t eid = entity(), mid;
    assert_int_equal(load("resnet18.json", NULL, eid, NULL, &mid, NULL, &diag), 0);

    assert_int_equal(delete_entity(eid, &diag), ETF_EBUSY);
    assert_non_null(strstr(diag.msg, "models"));

    /* Three ResNet-18 tasks take > 60 ms: unloading right after is refused. */
    struct waiter w;
    waiter_init(&w);
    for (int i = 0; i < 3; i++)
        assert_int_equal(infer(mid, &w, &diag), 0);
    assert_int_equal(unload(mid, &diag), ETF_EBUSY);
    assert_non_null(strstr(diag.msg, "queued or running"));
    waiter_wait(&w, 3);
    assert_int_equal(w.failed, 0);
    /* The answer came after the task left the tables: unloading now works. */
    assert_int_equal(unload(mid, &diag), 0);
    assert_int_equal(unload(mid, &diag), ETF_ENOENT);
    assert_int_equal(infer(mid, &w, &diag), ETF_ENOENT);
    assert_int_equal(delete_entity(eid, &diag), 0);
    assert_int_equal(delete_entity(eid, &diag), ETF_ENOENT);
    waiter_fini(&w);
}

static void test_summary_and_csv(void **state)
{
    (void)state;
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(etf_service_print_summary(g_env.svc, f), 0);
    fclose(f);
    assert_non_null(strstr(text, "frequency_hz"));
    assert_non_null(strstr(text, "resnet18"));
    assert_non_null(strstr(text, "fast"));
    /* The device's rows by frequency outlive the entities deleted since. */
    assert_non_null(strstr(text, "etfd: summary by frequency"));
    assert_non_null(strstr(text, "\n    1000000000 "));
    free(text);

    struct etf_diag diag;
    f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(etf_service_write_tasks_csv(g_env.svc, f, &diag), 0);
    fclose(f);
    const char *header = "task_id,entity_id,model_id,start_t,end_t,service_time,energy_used\n";
    assert_memory_equal(text, header, strlen(header));
    size_t lines = 0;
    for (const char *c = text; *c; c++)
        lines += *c == '\n';
    assert_int_equal(lines, 1 + etf_service_tasks_finished(g_env.svc));
    free(text);
}

static void test_shutdown(void **state)
{
    (void)state;
    /* Its own service: queued tasks fail with ETF_ESHUTDOWN when the drain is 0, and new
     * ones are refused. */
    struct etf_service *saved = g_env.svc;
    g_env.svc = service_new(g_env.repo);
    struct etf_diag diag;
    uint64_t eid = entity(), mid;
    assert_int_equal(load("resnet18.json", NULL, eid, NULL, &mid, NULL, &diag), 0);
    struct waiter w;
    waiter_init(&w);
    for (int i = 0; i < 5; i++)
        assert_int_equal(infer(mid, &w, &diag), 0);
    etf_service_stop(g_env.svc, 0);
    waiter_wait(&w, 5);
    assert_true(w.failed >= 4); /* at most the one running finished */
    assert_int_equal(w.last_err, ETF_ESHUTDOWN);
    assert_int_equal(infer(mid, &w, &diag), ETF_ESHUTDOWN);
    etf_service_stop(g_env.svc, 0); /* idempotent */
    etf_service_destroy(g_env.svc);
    g_env.svc = saved;
    waiter_fini(&w);
}

static void test_create_errors(void **state)
{
    (void)state;
    struct etf_service *svc = NULL;
    struct etf_diag diag;
    struct etf_service_config cfg = {
        .device = "sim", .models_dir = "/nonexistent/etf", .quantum_ns = MS, .phi = 0.5};
    assert_int_equal(etf_service_create(&cfg, &svc, &diag), ETF_ENOENT);
    cfg.models_dir = g_env.repo;
    cfg.device = "nodevice";
    assert_int_equal(etf_service_create(&cfg, &svc, &diag), ETF_ENOTSUP);
    cfg.device = "sim";
    cfg.phi = 2;
    assert_int_equal(etf_service_create(&cfg, &svc, &diag), ETF_EINVAL);
    assert_null(svc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_repository_paths), cmocka_unit_test(test_load_and_frequencies),
        cmocka_unit_test(test_entities),         cmocka_unit_test(test_unknown_ids),
        cmocka_unit_test(test_infer_and_stats),  cmocka_unit_test(test_in_use),
        cmocka_unit_test(test_summary_and_csv),  cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_create_errors),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
