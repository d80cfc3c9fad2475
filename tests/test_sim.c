/* Tests of the simulator's runs: the original ETF example's shares, reproducibility, time
 * shares that follow the allocation at every phi, no starvation, tenants joining and
 * leaving, priority changes, open-loop load, and backend errors. They assert behaviour on
 * the virtual clock, never host timings. The real-time mode (the CPU device, when the build
 * has it) is checked for behaviour only: tasks complete, shares roughly follow the
 * allocation, the run ends. */
#include "etf/sim.h"

#include "onnx.pb-c.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#define TX2_DIR ETF_SOURCE_DIR "/data/tx2"
#define PAIR ETF_SOURCE_DIR "/scenarios/tx2_resnet50_pair.json"
#define S 1000000000u /* ns per second */

struct run {
    struct etf_scenario *sc;
    struct etf_sim *sim;
    const struct etf_sim_result *r;
};

/* Parses a document written with ' for ", profiles relative to data/tx2, and runs it. */
static struct run run_q(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static struct run run_q(const char *fmt, ...)
{
    char doc[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(doc, sizeof doc, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && (size_t)n < sizeof doc);
    for (char *c = doc; *c; c++)
        *c = *c == '\'' ? '"' : *c;
    struct run run = {0};
    struct etf_diag diag = {{0}};
    int rc = etf_scenario_parse(doc, (size_t)n, "test", TX2_DIR, 0, &run.sc, &diag);
    if (rc == 0)
        rc = etf_sim_create(run.sc, &run.sim, &diag);
    if (rc == 0)
        rc = etf_sim_run(run.sim, &diag);
    if (rc)
        fail_msg("%s: %s", etf_strerror(rc), diag.msg);
    run.r = etf_sim_result(run.sim);
    assert_non_null(run.r);
    return run;
}

static struct run run_file(const char *path)
{
    struct run run = {0};
    struct etf_diag diag = {{0}};
    int rc = etf_scenario_load(path, 0, &run.sc, &diag);
    if (rc == 0)
        rc = etf_sim_create(run.sc, &run.sim, &diag);
    if (rc == 0)
        rc = etf_sim_run(run.sim, &diag);
    if (rc)
        fail_msg("%s: %s", etf_strerror(rc), diag.msg);
    run.r = etf_sim_result(run.sim);
    return run;
}

static void run_free(struct run *run)
{
    etf_sim_destroy(run->sim);
    etf_scenario_free(run->sc);
}

/* Device time each tenant's tasks that ended in [from, to) were charged, as fractions. */
static void window_shares(const struct run *run, uint64_t from, uint64_t to, double *shares)
{
    size_t n = run->r->n_tenants;
    double total = 0;
    for (size_t i = 0; i < n; i++)
        shares[i] = 0;
    for (size_t k = 0; k < run->r->n_tasks; k++) {
        const struct etf_sim_task *t = &run->r->tasks[k];
        if (t->rec.end_ns >= from && t->rec.end_ns < to) {
            shares[t->tenant] += (double)t->rec.service_ns;
            total += (double)t->rec.service_ns;
        }
    }
    for (size_t i = 0; i < n; i++)
        shares[i] = total > 0 ? shares[i] / total : 0;
}

#define assert_near(x, want, tol)                                                                  \
    do {                                                                                           \
        double x_ = (x), want_ = (want);                                                           \
        if (!(fabs(x_ - want_) <= (tol)))                                                          \
            fail_msg("%s = %.6f, expected %.6f +- %g", #x, x_, want_, (double)(tol));              \
    } while (0)

/* The original README's example: equal priorities, phi 0.7, Q 40 ms. Slices 14 and 26 ms
 * (the floor of 14 ms each, and the remaining 12 ms to the slow, low-power tenant), at
 * 4261 and 1717 mW. */
static void test_original_example(void **state)
{
    (void)state;
    struct run run = run_file(PAIR);
    const struct etf_sim_tenant_result *fast = &run.r->tenants[0], *slow = &run.r->tenants[1];
    assert_near(fast->slice_ns, 14e6, 1e3);
    assert_near(slow->slice_ns, 26e6, 1e3);
    assert_near(fast->time_share / slow->time_share, 0.54, 0.01);
    assert_near(fast->energy_share / slow->energy_share, 1.34, 0.01);
    assert_true(fast->tasks > 100 && slow->tasks > 100);
    assert_true(run.r->duration_ns >= 60ull * S);
    assert_true(run.r->dispatches > 0);
    run_free(&run);
}

static char *csv_of(const struct run *run)
{
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    struct etf_diag diag;
    assert_int_equal(etf_sim_write_tasks_csv(run->sim, f, &diag), 0);
    assert_int_equal(fclose(f), 0);
    return text;
}

static void test_reproducible(void **state)
{
    (void)state;
    static const char *doc =
        "{'quantum_us':20000,'phi':0.5,'duration_s':20,'seed':%d,'tenants':["
        "{'name':'a','models':[{'profile':'resnet18_profile.json','frequency_hz':1300500000,"
        "'load':{'poisson_rps':15}}]},"
        "{'name':'b','priority':3,'models':[{'profile':'resnet50_profile.json',"
        "'frequency_hz':726750000,'load':{'closed':2}}]}]}";
    struct run a = run_q(doc, 5), b = run_q(doc, 5), c = run_q(doc, 6);
    char *ja, *jb, *jc;
    struct etf_diag diag;
    assert_int_equal(etf_sim_report_json(a.sim, 0, &ja, &diag), 0);
    assert_int_equal(etf_sim_report_json(b.sim, 0, &jb, &diag), 0);
    assert_int_equal(etf_sim_report_json(c.sim, 0, &jc, &diag), 0);
    assert_string_equal(ja, jb);
    assert_non_null(strstr(ja, "\"sched_ns_per_dispatch\": null"));
    assert_non_null(strstr(ja, "\"jain_time\": "));
    /* Another seed, other arrivals. */
    assert_string_not_equal(ja, jc);
    char *ca = csv_of(&a), *cb = csv_of(&b);
    assert_string_equal(ca, cb);
    assert_true(strncmp(ca, "task_id,entity_id,model_id,start_t,end_t,service_time,energy_used\n",
                        66) == 0);
    free(ja);
    free(jb);
    free(jc);
    free(ca);
    free(cb);

    /* The original example too, written through the file API. */
    struct run p = run_file(PAIR), q = run_file(PAIR);
    assert_int_equal(etf_sim_report_json(p.sim, 0, &ja, &diag), 0);
    assert_int_equal(etf_sim_report_json(q.sim, 0, &jb, &diag), 0);
    assert_string_equal(ja, jb);
    ca = csv_of(&p);
    cb = csv_of(&q);
    assert_string_equal(ca, cb);
    free(ja);
    free(jb);
    free(ca);
    free(cb);
    run_free(&a);
    run_free(&b);
    run_free(&c);
    run_free(&p);
    run_free(&q);
}

/* Three backlogged tenants of different priorities and frequencies. */
#define THREE                                                                                      \
    "{'quantum_us':40000,'phi':%g,'duration_s':60,'tenants':["                                     \
    "{'name':'a','priority':0,'models':[{'profile':'resnet50_profile.json',"                       \
    "'frequency_hz':1300500000,'load':{'closed':2}}]},"                                            \
    "{'name':'b','priority':-3,'models':[{'profile':'resnet18_profile.json',"                      \
    "'frequency_hz':726750000,'load':{'closed':2}}]},"                                             \
    "{'name':'c','priority':3,'models':[{'profile':'resnet50_profile.json',"                       \
    "'frequency_hz':420750000,'load':{'closed':1}}]}]}"

static void test_shares_follow_allocation(void **state)
{
    (void)state;
    static const double phis[] = {1, 0.5, 0};
    for (size_t k = 0; k < 3; k++) {
        struct run run = run_q(THREE, phis[k]);
        const struct etf_sim_result *r = run.r;
        double total_w = 0, alloc = 0;
        for (size_t i = 0; i < 3; i++) {
            total_w += r->tenants[i].weight;
            alloc += r->tenants[i].alloc_share;
        }
        assert_near(alloc, 1, 1e-9); /* all three were in the latest allocation */
        for (size_t i = 0; i < 3; i++) {
            const struct etf_sim_tenant_result *t = &r->tenants[i];
            assert_near(t->time_share, t->alloc_share, 0.01);
            double wshare = t->weight / total_w;
            if (phis[k] == 1) /* weighted time fairness */
                assert_near(t->time_share, wshare, 0.01);
            if (phis[k] == 0) /* weighted energy fairness */
                assert_near(t->energy_share / wshare, 1, 0.01);
        }
        if (phis[k] == 1)
            assert_near(r->jain_time, 1, 0.001);
        if (phis[k] == 0)
            assert_near(r->jain_energy, 1, 0.001);
        run_free(&run);
    }
}

/* A nice 19 tenant against two nice -20 ones still runs, and gets about its weight. */
static void test_no_starvation(void **state)
{
    (void)state;
    struct run run =
        run_q("{'quantum_us':40000,'phi':1,'duration_s':1000,'tenants':["
              "{'name':'low','priority':19,'models':[{'profile':'resnet18_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':1}}]},"
              "{'name':'high1','priority':-20,'models':[{'profile':'resnet18_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':1}}]},"
              "{'name':'high2','priority':-20,'models':[{'profile':'resnet50_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':1}}]}]}");
    const struct etf_sim_tenant_result *low = &run.r->tenants[0];
    double wshare = 15.0 / (15.0 + 2 * 88761.0);
    assert_true(low->tasks >= 2);
    assert_near(low->time_share / wshare, 1, 0.25);
    run_free(&run);
}

/* c joins at 20 s: before, a and b split the device; after, c gets its allocation. */
static void test_join(void **state)
{
    (void)state;
    struct run run =
        run_q("{'quantum_us':40000,'phi':1,'duration_s':60,'tenants':["
              "{'name':'a','priority':0,'models':[{'profile':'resnet18_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':2}}]},"
              "{'name':'b','priority':-2,'models':[{'profile':'resnet50_profile.json',"
              "'frequency_hz':1032750000,'load':{'closed':2}}]},"
              "{'name':'c','priority':2,'start_s':20,'models':[{'profile':'resnet18_profile.json',"
              "'frequency_hz':726750000,'load':{'closed':2}}]}]}");
    const struct etf_sim_result *r = run.r;
    double before[3], after[3];
    window_shares(&run, 0, 20ull * S, before);
    window_shares(&run, 22ull * S, 60ull * S, after);
    double wa = 1024, wb = 1586, wc = 655;
    assert_near(before[2], 0, 0);
    assert_near(before[0], wa / (wa + wb), 0.01);
    assert_near(before[1], wb / (wa + wb), 0.01);
    for (size_t i = 0; i < 3; i++)
        assert_near(after[i], r->tenants[i].alloc_share, 0.01);
    assert_near(after[2], wc / (wa + wb + wc), 0.01);
    /* c's first request arrived at its start. */
    uint64_t first = UINT64_MAX;
    for (size_t k = 0; k < r->n_tasks; k++)
        if (r->tasks[k].tenant == 2 && r->tasks[k].rec.submit_ns < first)
            first = r->tasks[k].rec.submit_ns;
    assert_int_equal(first, 20ull * S);
    run_free(&run);
}

/* b stops submitting at 30 s; once its last requests are done, a and c share the device. */
static void test_leave(void **state)
{
    (void)state;
    struct run run =
        run_q("{'quantum_us':40000,'phi':1,'duration_s':60,'tenants':["
              "{'name':'a','priority':0,'models':[{'profile':'resnet18_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':2}}]},"
              "{'name':'b','priority':-5,'stop_s':30,'models':[{'profile':'resnet50_profile.json',"
              "'frequency_hz':1300500000,'load':{'closed':2}}]},"
              "{'name':'c','priority':3,'models':[{'profile':'resnet50_profile.json',"
              "'frequency_hz':726750000,'load':{'closed':1}}]}]}");
    double before[3], after[3];
    window_shares(&run, 0, 30ull * S, before);
    window_shares(&run, 32ull * S, 60ull * S, after);
    double wa = 1024, wb = 3121, wc = 526;
    assert_near(before[1], wb / (wa + wb + wc), 0.01);
    assert_near(after[1], 0, 0);
    assert_near(after[0], wa / (wa + wc), 0.01);
    assert_near(after[2], wc / (wa + wc), 0.01);
    /* b submitted nothing at or after 30 s. */
    for (size_t k = 0; k < run.r->n_tasks; k++)
        if (run.r->tasks[k].tenant == 1)
            assert_true(run.r->tasks[k].rec.submit_ns < 30ull * S);
    run_free(&run);
}

/* At phi = 1, shares after a priority change follow the new weights. */
static void test_priority_change(void **state)
{
    (void)state;
    struct run run = run_q("{'quantum_us':40000,'phi':1,'duration_s':60,'tenants':["
                           "{'name':'a','models':[{'profile':'resnet18_profile.json',"
                           "'frequency_hz':1300500000,'load':{'closed':2}}]},"
                           "{'name':'b','priority_changes':[{'at_s':30,'priority':-5}],"
                           "'models':[{'profile':'resnet50_profile.json','frequency_hz':726750000,"
                           "'load':{'closed':2}}]}]}");
    double before[2], after[2];
    window_shares(&run, 0, 30ull * S, before);
    window_shares(&run, 31ull * S, 60ull * S, after);
    assert_near(before[1], 0.5, 0.01);
    assert_near(after[1], 3121.0 / (3121 + 1024), 0.01);
    assert_int_equal(run.r->tenants[1].priority, -5);
    assert_int_equal(run.r->tenants[1].weight, 3121);
    run_free(&run);
}

/* An open loop below capacity: every request completes, with little queueing. */
static void test_poisson_below_capacity(void **state)
{
    (void)state;
    struct run run = run_q("{'quantum_us':40000,'phi':0.5,'duration_s':60,'seed':3,'tenants':["
                           "{'name':'p','stop_s':55,'models':[{'profile':'resnet18_profile.json',"
                           "'frequency_hz':1300500000,'load':{'poisson_rps':10}}]}]}");
    const struct etf_sim_tenant_result *p = &run.r->tenants[0];
    /* 550 expected; 5 standard deviations either way. */
    assert_true(p->submitted > 433 && p->submitted < 667);
    assert_int_equal(p->rejected, 0);
    assert_int_equal(p->tasks, p->submitted);
    assert_true(p->latency_p50_ns >= 21406000u); /* at least the service time */
    assert_true(p->latency_p50_ns < 40000000u);
    assert_true(p->latency_p99_ns >= p->latency_p50_ns);
    /* Idle gaps are skipped, not simulated: the clock ends at the duration. */
    assert_int_equal(run.r->duration_ns, 60ull * S);
    run_free(&run);
}

static void test_bad_backend(void **state)
{
    (void)state;
    const char *doc = "{\"quantum_us\":1000,\"phi\":1,\"duration_s\":1,\"device\":\"nodev\","
                      "\"tenants\":[{\"name\":\"a\",\"models\":[{\"profile\":"
                      "\"resnet18_profile.json\",\"frequency_hz\":1300500000,"
                      "\"load\":{\"closed\":1}}]}]}";
    struct etf_scenario *sc = NULL;
    struct etf_sim *sim = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_scenario_parse(doc, strlen(doc), NULL, TX2_DIR, 0, &sc, &diag), 0);
    assert_int_equal(etf_sim_create(sc, &sim, &diag), ETF_ENOTSUP);
    assert_null(sim);
    assert_non_null(strstr(diag.msg, "device: device 'nodev' is not available"));
    etf_scenario_free(sc);
}

static void test_run_once(void **state)
{
    (void)state;
    struct run run = run_q(
        "{'quantum_us':1000,'phi':1,'duration_s':0.5,'tenants':[{'name':'a','models':["
        "{'profile':'resnet18_profile.json','frequency_hz':1300500000,'load':{'closed':1}}]}]}");
    struct etf_diag diag;
    assert_int_equal(etf_sim_run(run.sim, &diag), ETF_EBUSY);
    /* One tenant gets everything; fairness among one is perfect. */
    assert_near(run.r->tenants[0].time_share, 1, 0);
    assert_near(run.r->jain_time, 1, 1e-12);
    char *json;
    assert_int_equal(etf_sim_report_json(run.sim, ETF_SIM_REPORT_TIMING, &json, &diag), 0);
    assert_null(strstr(json, "\"sched_ns_per_dispatch\": null"));
    free(json);
    run_free(&run);
}

/* Time and energy by frequency: a tenant with models at two clocks and one with a model at
 * one of them. The rows add up to the tenants' and the device's totals, the report has the
 * "per_frequency" arrays, and the summary splits the tenant that ran at two clocks. */
static void test_per_frequency(void **state)
{
    (void)state;
    struct run run =
        run_q("{'quantum_us':20000,'phi':0.5,'duration_s':5,'tenants':["
              "{'name':'multi','models':["
              "{'profile':'resnet18_profile.json','frequency_hz':1300500000,'load':{'closed':1}},"
              "{'profile':'resnet18_profile.json','frequency_hz':726750000,'load':{'closed':1}}]},"
              "{'name':'single','models':[{'profile':'resnet50_profile.json',"
              "'frequency_hz':726750000,'load':{'closed':1}}]}]}");
    const struct etf_sim_result *r = run.r;
    const uint64_t lo = 726750000, hi = 1300500000;
    assert_int_equal(r->n_freqs, 2);
    assert_int_equal(r->freqs[0].hz, lo);
    assert_int_equal(r->freqs[1].hz, hi);
    const struct etf_sim_tenant_result *multi = &r->tenants[0], *single = &r->tenants[1];
    assert_int_equal(multi->n_freqs, 2);
    assert_int_equal(single->n_freqs, 1);
    assert_int_equal(single->freqs[0].hz, lo);
    uint64_t time = 0, energy = 0, kernels = 0;
    for (size_t i = 0; i < r->n_freqs; i++) {
        time += r->freqs[i].time_ns;
        energy += r->freqs[i].energy_nj;
        kernels += r->freqs[i].kernels;
        assert_int_equal(r->freqs[i].models, i == 0 ? 2 : 1);
    }
    assert_int_equal(time, multi->time_ns + single->time_ns);
    assert_int_equal(energy, multi->energy_nj + single->energy_nj);
    assert_int_equal(kernels, r->dispatches);
    assert_int_equal(multi->freqs[0].time_ns + multi->freqs[1].time_ns, multi->time_ns);
    assert_int_equal(multi->freqs[0].energy_nj + multi->freqs[1].energy_nj, multi->energy_nj);
    assert_int_equal(r->freqs[0].time_ns, multi->freqs[0].time_ns + single->freqs[0].time_ns);
    assert_int_equal(r->freqs[1].time_ns, multi->freqs[1].time_ns);
    /* Both clocks ran, and a row holds at least its finished tasks (a task may still have
     * been running at the end). */
    uint64_t done[2] = {0, 0};
    for (size_t k = 0; k < r->n_tasks; k++) {
        const struct etf_sim_task *t = &r->tasks[k];
        if (t->tenant == 0)
            done[t->rec.freq_hz == hi] += t->rec.service_ns;
    }
    assert_true(done[0] > 0 && done[1] > 0);
    assert_true(multi->freqs[0].time_ns >= done[0] && multi->freqs[1].time_ns >= done[1]);

    char *json;
    struct etf_diag diag;
    assert_int_equal(etf_sim_report_json(run.sim, 0, &json, &diag), 0);
    assert_non_null(
        strstr(json, "\n  \"per_frequency\": [\n    {\"hz\": 726750000, \"kernels\": "));
    assert_non_null(strstr(json, "\"per_frequency\": [{\"hz\": 726750000, \"kernels\": "));
    assert_non_null(strstr(json, "}, {\"hz\": 1300500000, \"kernels\": "));
    assert_non_null(strstr(json, "\"time_share\": 1.000000, \"energy_share\": 1.000000}]}"));
    free(json);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    assert_non_null(f);
    assert_int_equal(etf_sim_print_summary(run.sim, f, &diag), 0);
    assert_int_equal(fclose(f), 0);
    assert_non_null(strstr(text, "device by frequency:\n"));
    assert_non_null(strstr(text, "\n  726750000 Hz "));
    assert_non_null(strstr(text, "\n  1300500000 Hz "));
    assert_non_null(strstr(text, "tenant multi by frequency:\n"));
    assert_null(strstr(text, "tenant single by frequency"));
    free(text);
    run_free(&run);
}

/* ---- Real time ---- */

static bool have_device(const char *name)
{
    for (const char *const *n = etf_device_names(); *n; n++)
        if (strcmp(*n, name) == 0)
            return true;
    return false;
}

/* A float tensor type of the given shape, for graph inputs and outputs. */
struct tiny_type {
    Onnx__TensorShapeProto__Dimension dim[4], *dims[4];
    Onnx__TensorShapeProto shape;
    Onnx__TypeProto__Tensor tensor;
    Onnx__TypeProto type;
};

static void tiny_type_init(struct tiny_type *t, const int64_t dims[4])
{
    for (int i = 0; i < 4; i++) {
        t->dim[i] = (Onnx__TensorShapeProto__Dimension)ONNX__TENSOR_SHAPE_PROTO__DIMENSION__INIT;
        t->dim[i].value_case = ONNX__TENSOR_SHAPE_PROTO__DIMENSION__VALUE_DIM_VALUE;
        t->dim[i].dim_value = dims[i];
        t->dims[i] = &t->dim[i];
    }
    t->shape = (Onnx__TensorShapeProto)ONNX__TENSOR_SHAPE_PROTO__INIT;
    t->shape.n_dim = 4;
    t->shape.dim = t->dims;
    t->tensor = (Onnx__TypeProto__Tensor)ONNX__TYPE_PROTO__TENSOR__INIT;
    t->tensor.has_elem_type = true;
    t->tensor.elem_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    t->tensor.shape = &t->shape;
    t->type = (Onnx__TypeProto)ONNX__TYPE_PROTO__INIT;
    t->type.value_case = ONNX__TYPE_PROTO__VALUE_TENSOR_TYPE;
    t->type.tensor_type = &t->tensor;
}

/* Writes a one-kernel ONNX model to path: y = Relu(Conv3x3(x, w, b)), x of 1x8x64x64, 16
 * output channels (a few MFLOP: a task takes well under a millisecond to a few). */
static void write_tiny_onnx(const char *path)
{
    enum { CI = 8, CO = 16, H = 64 };
    static float w[CO * CI * 9], b[CO];
    uint64_t x = 42;
    for (size_t i = 0; i < sizeof w / sizeof w[0]; i++) {
        x = x * 6364136223846793005u + 1442695040888963407u;
        w[i] = (float)((double)(x >> 40) / (double)(1u << 24) - 0.5) * 0.2f;
    }
    for (size_t i = 0; i < CO; i++)
        b[i] = 0.01f * (float)i;

    int64_t w_dims[] = {CO, CI, 3, 3}, b_dims[] = {CO};
    Onnx__TensorProto wt = ONNX__TENSOR_PROTO__INIT, bt = ONNX__TENSOR_PROTO__INIT;
    wt.name = "w";
    wt.n_dims = 4;
    wt.dims = w_dims;
    wt.has_data_type = true;
    wt.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    wt.n_float_data = sizeof w / sizeof w[0];
    wt.float_data = w;
    bt.name = "b";
    bt.n_dims = 1;
    bt.dims = b_dims;
    bt.has_data_type = true;
    bt.data_type = ONNX__TENSOR_PROTO__DATA_TYPE__FLOAT;
    bt.n_float_data = CO;
    bt.float_data = b;
    Onnx__TensorProto *inits[] = {&wt, &bt};

    int64_t kernel[] = {3, 3}, pads[] = {1, 1, 1, 1};
    Onnx__AttributeProto ak = ONNX__ATTRIBUTE_PROTO__INIT, ap = ONNX__ATTRIBUTE_PROTO__INIT;
    ak.name = "kernel_shape";
    ak.has_type = true;
    ak.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    ak.n_ints = 2;
    ak.ints = kernel;
    ap.name = "pads";
    ap.has_type = true;
    ap.type = ONNX__ATTRIBUTE_PROTO__ATTRIBUTE_TYPE__INTS;
    ap.n_ints = 4;
    ap.ints = pads;
    Onnx__AttributeProto *conv_attrs[] = {&ak, &ap};

    char *conv_in[] = {"x", "w", "b"}, *conv_out[] = {"c"}, *relu_out[] = {"y"};
    Onnx__NodeProto conv = ONNX__NODE_PROTO__INIT, relu = ONNX__NODE_PROTO__INIT;
    conv.name = "conv";
    conv.op_type = "Conv";
    conv.n_input = 3;
    conv.input = conv_in;
    conv.n_output = 1;
    conv.output = conv_out;
    conv.n_attribute = 2;
    conv.attribute = conv_attrs;
    relu.name = "relu";
    relu.op_type = "Relu";
    relu.n_input = 1;
    relu.input = conv_out;
    relu.n_output = 1;
    relu.output = relu_out;
    Onnx__NodeProto *nodes[] = {&conv, &relu};

    struct tiny_type in_type, out_type;
    tiny_type_init(&in_type, (const int64_t[]){1, CI, H, H});
    tiny_type_init(&out_type, (const int64_t[]){1, CO, H, H});
    Onnx__ValueInfoProto in = ONNX__VALUE_INFO_PROTO__INIT, out = ONNX__VALUE_INFO_PROTO__INIT;
    in.name = "x";
    in.type = &in_type.type;
    out.name = "y";
    out.type = &out_type.type;
    Onnx__ValueInfoProto *ins[] = {&in}, *outs[] = {&out};

    Onnx__GraphProto graph = ONNX__GRAPH_PROTO__INIT;
    graph.name = "tiny_conv";
    graph.n_node = 2;
    graph.node = nodes;
    graph.n_initializer = 2;
    graph.initializer = inits;
    graph.n_input = 1;
    graph.input = ins;
    graph.n_output = 1;
    graph.output = outs;

    Onnx__OperatorSetIdProto opset = ONNX__OPERATOR_SET_ID_PROTO__INIT;
    opset.domain = "";
    opset.has_version = true;
    opset.version = 17;
    Onnx__OperatorSetIdProto *opsets[] = {&opset};
    Onnx__ModelProto model = ONNX__MODEL_PROTO__INIT;
    model.has_ir_version = true;
    model.ir_version = 8;
    model.n_opset_import = 1;
    model.opset_import = opsets;
    model.graph = &graph;

    size_t len = onnx__model_proto__get_packed_size(&model);
    uint8_t *bytes = malloc(len);
    assert_non_null(bytes);
    assert_int_equal(onnx__model_proto__pack(&model, bytes), len);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(bytes, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    free(bytes);
}

/* Two tenants of a tiny ONNX model share the CPU for 2 s of real time at weights 1024 and
 * 423 (nice 0 and 4). No timing is asserted: tasks complete, their records are ordered, the
 * time shares follow the allocation loosely (2 s is short, and the host is shared), no
 * energy is charged without a profile and nothing in the report is NaN. */
static void test_realtime_cpu(void **state)
{
    (void)state;
    if (!have_device("cpu"))
        skip();
    char dir[] = "/tmp/etf_test_sim_XXXXXX", model[64];
    assert_non_null(mkdtemp(dir));
    snprintf(model, sizeof model, "%s/tiny.onnx", dir);
    write_tiny_onnx(model);

    struct run run =
        run_q("{'quantum_us':10000,'phi':1,'duration_s':2,'device':'cpu','threads':1,'tenants':["
              "{'name':'a','models':[{'onnx':'%s','load':{'closed':2}}]},"
              "{'name':'b','priority':4,'models':[{'onnx':'%s','load':{'closed':2}}]}]}",
              model, model);
    const struct etf_sim_result *r = run.r;
    assert_true(r->duration_ns >= 2ull * S);
    assert_int_equal(r->n_tenants, 2);
    for (size_t i = 0; i < 2; i++) {
        const struct etf_sim_tenant_result *t = &r->tenants[i];
        assert_true(t->tasks > 0);
        assert_true(t->time_ns > 0);
        assert_near(t->time_share, t->alloc_share, 0.10);
        assert_int_equal(t->energy_nj, 0);
        assert_near(t->energy_share, 0, 0);
    }
    assert_near(r->tenants[0].alloc_share, 1024.0 / (1024 + 423), 1e-9);
    assert_near(r->jain_energy, 0, 0);
    for (size_t k = 0; k < r->n_tasks; k++) {
        const struct etf_task_record *rec = &r->tasks[k].rec;
        assert_int_equal(rec->status, 0);
        assert_true(rec->submit_ns <= rec->start_ns);
        assert_true(rec->start_ns <= rec->end_ns);
        assert_true(rec->service_ns > 0);
    }
    char *json;
    struct etf_diag diag;
    assert_int_equal(etf_sim_report_json(run.sim, 0, &json, &diag), 0);
    assert_null(strstr(json, ": nan"));
    assert_null(strstr(json, ": -nan"));
    free(json);
    run_free(&run);
    unlink(model);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_original_example),
        cmocka_unit_test(test_reproducible),
        cmocka_unit_test(test_shares_follow_allocation),
        cmocka_unit_test(test_no_starvation),
        cmocka_unit_test(test_join),
        cmocka_unit_test(test_leave),
        cmocka_unit_test(test_priority_change),
        cmocka_unit_test(test_poisson_below_capacity),
        cmocka_unit_test(test_bad_backend),
        cmocka_unit_test(test_run_once),
        cmocka_unit_test(test_per_frequency),
        cmocka_unit_test(test_realtime_cpu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
