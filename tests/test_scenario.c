/* Tests of the scenario parser: every rejection with its error code and a message that
 * names the field, the defaults, string frequencies, paths relative to the scenario file,
 * the errors found when the scenario is set up (backends, frequencies), and what a model
 * must give for the simulated device and for a real one. */
#include "etf/sim.h"

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
#define R18 TX2_DIR "/resnet18_profile.json"

/* Documents are written with ' for " to stay readable; parse_q() swaps them back. */
#define MODEL(extra) "{'profile':'resnet18_profile.json','frequency_hz':1300500000," extra "}"
#define LOAD2 "'load':{'closed':2}"
#define TENANT(name, extra) "{'name':'" name "'," extra "'models':[" MODEL(LOAD2) "]}"
#define TOP(extra, tenants)                                                                        \
    "{'quantum_us':40000,'phi':0.7,'duration_s':60," extra "'tenants':[" tenants "]}"
#define VALID TOP("", TENANT("a", ""))

struct fixture {
    char dir[64];
    char bad_profile[128]; /* a file that is not a profile */
};

static int parse_q(const char *s, const char *base_dir, unsigned flags, struct etf_scenario **out,
                   struct etf_diag *diag)
{
    /* A buffer of exactly the document's length, so that ASan sees any read past it. */
    size_t n = strlen(s);
    char *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = s[i] == '\'' ? '"' : s[i];
    int rc = etf_scenario_parse(buf, n, "t.json", base_dir, flags, out, diag);
    free(buf);
    return rc;
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fputs(text, f) >= 0, 1);
    assert_int_equal(fclose(f), 0);
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof *fx);
    if (!fx)
        return -1;
    snprintf(fx->dir, sizeof fx->dir, "/tmp/etf_test_scenario_XXXXXX");
    if (!mkdtemp(fx->dir)) {
        free(fx);
        return -1;
    }
    snprintf(fx->bad_profile, sizeof fx->bad_profile, "%s/bad_profile.json", fx->dir);
    FILE *f = fopen(fx->bad_profile, "w");
    if (!f || fputs("{\"model_name\": 3}", f) < 0 || fclose(f) != 0)
        return -1;
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    static const char *names[] = {"bad_profile.json", "r18.json", "scen.json", "big.json"};
    char path[192];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", fx->dir, names[i]);
        unlink(path);
    }
    int rc = rmdir(fx->dir);
    free(fx);
    return rc;
}

enum stage { PARSE, CREATE };

struct bad_case {
    const char *doc;
    enum stage stage; /* where it must fail: parsing, or setting up the simulation */
    int err;
    const char *msg; /* a distinctive part of the message */
};

static const struct bad_case bad_cases[] = {
    {"{", PARSE, ETF_EFORMAT, "t.json:1:2: not valid JSON"},
    {VALID " x", PARSE, ETF_EFORMAT, "not valid JSON"},
    {"[]", PARSE, ETF_EFORMAT, "expected an object at the top level, found an array"},
    {TOP("'quantom_us':1,", TENANT("a", "")), PARSE, ETF_EFORMAT, "unknown key \"quantom_us\""},
    {TOP("'phi':0.5,", TENANT("a", "")), PARSE, ETF_EFORMAT, "key \"phi\" is given twice"},
    {"{'phi':0.7,'duration_s':60,'tenants':[" TENANT("a", "") "]}", PARSE, ETF_EFORMAT,
     "t.json: missing key \"quantum_us\""},
    {"{'quantum_us':0,'phi':0.7,'duration_s':60,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EINVAL, "quantum_us: expected an integer 1..1000000000, found 0"},
    {"{'quantum_us':1.5,'phi':0.7,'duration_s':60,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EINVAL, "quantum_us: expected an integer 1..1000000000, found 1.5"},
    {"{'quantum_us':'40000','phi':0.7,'duration_s':60,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EFORMAT, "quantum_us: expected an integer 1..1000000000, found \"40000\""},
    {"{'quantum_us':40000,'phi':1.5,'duration_s':60,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EINVAL, "phi: expected a number in [0, 1], found 1.5"},
    {"{'quantum_us':40000,'phi':0.5,'duration_s':0,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EINVAL, "duration_s: expected a number in (0, 10000000], found 0"},
    {"{'quantum_us':40000,'phi':0.5,'duration_s':1e99,'tenants':[" TENANT("a", "") "]}", PARSE,
     ETF_EINVAL, "duration_s: expected a number in (0, 10000000], found 1e+99"},
    {TOP("'seed':-1,", TENANT("a", "")), PARSE, ETF_EINVAL, "seed: expected an integer 0.."},
    {TOP("'device':7,", TENANT("a", "")), PARSE, ETF_EFORMAT, "device: expected a string, found 7"},
    {TOP("", ), PARSE, ETF_EINVAL, "tenants: expected an array of 1..100000 tenants, found 0"},
    {"{'quantum_us':40000,'phi':0.5,'duration_s':60,'tenants':{}}", PARSE, ETF_EFORMAT,
     "tenants: expected an array of 1..100000 tenants, found an object"},
    {TOP("", "3"), PARSE, ETF_EFORMAT, "tenants[0]: expected an object, found 3"},
    {TOP("", TENANT("a", "'priority':20,")), PARSE, ETF_EINVAL,
     "tenants[0].priority: expected an integer -20..19, found 20"},
    {TOP("", TENANT("", "")), PARSE, ETF_EINVAL, "tenants[0].name: expected a name of 1..63 bytes"},
    {TOP("", TENANT("0123456789012345678901234567890123456789012345678901234567890123", "")), PARSE,
     ETF_EINVAL, "(64 bytes)"},
    {TOP("", TENANT("a\\u0001", "")), PARSE, ETF_EINVAL, "tenants[0].name: control character"},
    {TOP("", TENANT("a", "") "," TENANT("b", "") "," TENANT("a", "")), PARSE, ETF_EINVAL,
     "tenants[2].name: duplicate name \"a\" (also tenants[0])"},
    {TOP("", "{'name':'a'}"), PARSE, ETF_EFORMAT, "tenants[0]: missing key \"models\""},
    {TOP("", "{'name':'a','models':[]}"), PARSE, ETF_EINVAL,
     "tenants[0].models: expected an array of at least one model, found an empty array"},
    {TOP("", TENANT("a", "") ",{'name':'b','models':[{'profile':'resnet18_profile.json',"
                             "'frequncy_hz':1300500000," LOAD2 "}]}"),
     PARSE, ETF_EFORMAT, "tenants[1].models[0]: unknown key \"frequncy_hz\""},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{'closed':-3}") "]}"), PARSE, ETF_EINVAL,
     "tenants[0].models[0].load.closed: expected an integer 1..100000, found -3"},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{'closed':100001}") "]}"), PARSE, ETF_EINVAL,
     "load.closed: expected an integer 1..100000, found 100001"},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{'closed':1,'poisson_rps':2}") "]}"), PARSE,
     ETF_EFORMAT, "load: expected exactly one of \"closed\" and \"poisson_rps\", found both"},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{}") "]}"), PARSE, ETF_EFORMAT,
     "found neither"},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{'poisson_rps':0}") "]}"), PARSE, ETF_EINVAL,
     "load.poisson_rps: expected a number in (0, 1000000], found 0"},
    {TOP("", "{'name':'a','models':[" MODEL("'load':{'poison_rps':1}") "]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0].load: unknown key \"poison_rps\""},
    {TOP("", "{'name':'a','models':[" MODEL("'load':3") "]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0].load: expected an object, found 3"},
    /* What a model gives, and what the device needs of it. */
    {TOP("", "{'name':'a','models':[{" LOAD2 "}]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0]: missing key \"profile\": the \"sim\" device runs the kernel times "
     "of a profile"},
    {TOP("", "{'name':'a','models':[{'onnx':'m.onnx'," LOAD2 "}]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0]: missing key \"profile\": the \"sim\" device runs the kernel times "
     "of a profile (it does not run ONNX files)"},
    {TOP("'device':'nodev',", "{'name':'a','models':[{" LOAD2 "}]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0]: missing key \"profile\" or \"onnx\""},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':''," LOAD2) "]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0].onnx: expected a file name, found \"\""},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':3," LOAD2) "]}"), PARSE, ETF_EFORMAT,
     "tenants[0].models[0].onnx: expected a file name, found 3"},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':'nope.onnx'," LOAD2) "]}"), PARSE, ETF_ENOENT,
     "tenants[0].models[0].onnx: cannot open " TX2_DIR "/nope.onnx: No such file"},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':'/'," LOAD2) "]}"), PARSE, ETF_EIO,
     "tenants[0].models[0].onnx: / is not a regular file"},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':'m.onnx','batch':0," LOAD2) "]}"), PARSE,
     ETF_EINVAL, "tenants[0].models[0].batch: expected an integer 1..4096, found 0"},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':'m.onnx','batch':4097," LOAD2) "]}"), PARSE,
     ETF_EINVAL, "tenants[0].models[0].batch: expected an integer 1..4096, found 4097"},
    {TOP("", "{'name':'a','models':[" MODEL("'onnx':'m.onnx','batch':'2'," LOAD2) "]}"), PARSE,
     ETF_EFORMAT, "tenants[0].models[0].batch: expected an integer 1..4096, found \"2\""},
    {TOP("", "{'name':'a','models':[" MODEL("'batch':2," LOAD2) "]}"), PARSE, ETF_EINVAL,
     "tenants[0].models[0].batch: a batch size needs an ONNX file (key \"onnx\")"},
    {TOP("'threads':0,", TENANT("a", "")), PARSE, ETF_EINVAL,
     "threads: expected an integer 1..1024, found 0"},
    {TOP("'threads':1025,", TENANT("a", "")), PARSE, ETF_EINVAL,
     "threads: expected an integer 1..1024, found 1025"},
    {TOP("'threads':'4',", TENANT("a", "")), PARSE, ETF_EFORMAT,
     "threads: expected an integer 1..1024, found \"4\""},
    /* The "sim" controller belongs to the simulated device, known to this build or not. */
    {TOP("'device':'nodev','freq':'sim',", TENANT("a", "")), PARSE, ETF_EINVAL,
     "t.json: freq: the \"sim\" controller only drives the simulated device, not device "
     "\"nodev\""},
    {TOP("", "{'name':'a','models':[{'profile':'resnet18_profile.json','frequency_hz':'13x'," LOAD2
             "}]}"),
     PARSE, ETF_EINVAL,
     "frequency_hz: expected a frequency in Hz (an integer > 0 or a decimal "
     "string), found \"13x\""},
    {TOP("",
         "{'name':'a','models':[{'profile':'resnet18_profile.json','frequency_hz':0," LOAD2 "}]}"),
     PARSE, ETF_EINVAL, "frequency_hz: expected a frequency in Hz"},
    {TOP("", "{'name':'a','models':[{'profile':'nope.json','frequency_hz':1," LOAD2 "}]}"), PARSE,
     ETF_ENOENT, "tenants[0].models[0].profile: "},
    {TOP("", "{'name':'a','models':[{'profile':'','frequency_hz':1," LOAD2 "}]}"), PARSE,
     ETF_EFORMAT, "tenants[0].models[0].profile: expected a file name, found \"\""},
    {TOP("", TENANT("a", "'start_s':30,'stop_s':10,")), PARSE, ETF_EINVAL,
     "tenants[0].stop_s: expected a number in [30, 60], found 10"},
    {TOP("", TENANT("a", "'start_s':-1,")), PARSE, ETF_EINVAL,
     "tenants[0].start_s: expected a number in [0, 60], found -1"},
    {TOP("", TENANT("a", "'priority_changes':[{'at_s':61,'priority':0}],")), PARSE, ETF_EINVAL,
     "tenants[0].priority_changes[0].at_s: expected a number in [0, 60], found 61"},
    {TOP("", TENANT("a", "'priority_changes':[{'at_s':1,'priority':0,'x':1}],")), PARSE,
     ETF_EFORMAT, "tenants[0].priority_changes[0]: unknown key \"x\""},
    {TOP("", TENANT("a", "'priority_changes':[{'at_s':1}],")), PARSE, ETF_EFORMAT,
     "tenants[0].priority_changes[0]: missing key \"priority\""},
    {TOP("", TENANT("a", "'priority_changes':{},")), PARSE, ETF_EFORMAT,
     "tenants[0].priority_changes: expected an array, found an object"},
    /* Found when the simulation is set up. */
    {TOP("", "{'name':'a','models':[{'profile':'resnet18_profile.json','frequency_hz':123," LOAD2
             "}]}"),
     CREATE, ETF_EINVAL,
     "tenants[0].models[0]: model 'resnet18': its profile has no figures for "
     "123 Hz"},
    {TOP("'device':'nodev',", TENANT("a", "")), CREATE, ETF_ENOTSUP,
     "device 'nodev' is not available in this build"},
    {TOP("'freq':'turbo',", TENANT("a", "")), CREATE, ETF_ENOTSUP,
     "frequency controller 'turbo' is not available"},
    {TOP("'meter':'tegrastats',", TENANT("a", "")), CREATE, ETF_ENOTSUP,
     "meter 'tegrastats' is not available"},
};

static void test_bad_scenarios(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        const struct bad_case *c = &bad_cases[i];
        struct etf_scenario *sc = (struct etf_scenario *)1;
        struct etf_diag diag = {{0}};
        int rc = parse_q(c->doc, TX2_DIR, 0, &sc, &diag);
        if (c->stage == CREATE) {
            if (rc != 0)
                fail_msg("case %zu: parse failed: %s", i, diag.msg);
            struct etf_sim *sim = (struct etf_sim *)1;
            rc = etf_sim_create(sc, &sim, &diag);
            if (rc == 0)
                etf_sim_destroy(sim);
            else
                assert_null(sim);
            etf_scenario_free(sc);
        } else if (rc == 0) {
            etf_scenario_free(sc);
        } else {
            assert_null(sc);
        }
        if (rc != c->err || !strstr(diag.msg, c->msg))
            fail_msg("case %zu: expected %d with \"%s\", got %d: %s", i, c->err, c->msg, rc,
                     diag.msg);
    }
}

static void test_bad_profile_file(void **state)
{
    struct fixture *fx = *state;
    char doc[512];
    snprintf(doc, sizeof doc,
             TOP("", "{'name':'a','models':[{'profile':'%s','frequency_hz':1," LOAD2 "}]}"),
             fx->bad_profile);
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    int rc = parse_q(doc, NULL, 0, &sc, &diag);
    assert_int_equal(rc, ETF_EFORMAT);
    assert_null(sc);
    /* The loader's own message, behind the field it concerns. */
    assert_non_null(strstr(diag.msg, "t.json: tenants[0].models[0].profile: "));
    assert_non_null(strstr(diag.msg, "bad_profile.json"));
}

static void test_nul_byte(void **state)
{
    (void)state;
    static const char doc[] = "{}\0{}";
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_scenario_parse(doc, sizeof doc - 1, NULL, NULL, 0, &sc, &diag),
                     ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "scenario:1:3: NUL byte"));
}

static void test_defaults(void **state)
{
    (void)state;
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    int rc = parse_q(VALID, TX2_DIR, 0, &sc, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_int_equal(sc->quantum_us, 40000);
    assert_true(sc->phi == 0.7);
    assert_int_equal(sc->duration_ns, 60000000000u);
    assert_int_equal(sc->seed, 1);
    assert_string_equal(sc->device, "sim");
    assert_string_equal(sc->freq, "sim");
    assert_string_equal(sc->meter, "model");
    assert_int_equal(sc->threads, 0);
    assert_int_equal(sc->n_tenants, 1);
    const struct etf_scenario_tenant *t = &sc->tenants[0];
    assert_string_equal(t->name, "a");
    assert_int_equal(t->priority, 0);
    assert_int_equal(t->start_ns, 0);
    assert_int_equal(t->stop_ns, sc->duration_ns);
    assert_int_equal(t->n_prio_changes, 0);
    assert_int_equal(t->n_models, 1);
    assert_int_equal(t->models[0].freq_hz, 1300500000u);
    assert_int_equal(t->models[0].load, ETF_SIM_LOAD_CLOSED);
    assert_int_equal(t->models[0].closed, 2);
    assert_null(t->models[0].onnx_path);
    assert_int_equal(t->models[0].batch, 0);
    assert_int_equal(sc->n_profiles, 1);
    assert_string_equal(sc->profiles[0].path, R18);
    etf_scenario_free(sc);
}

static void test_all_fields(void **state)
{
    (void)state;
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    const char *doc = "{'quantum_us':1000,'phi':0,'duration_s':10.5,'seed':42,'device':'sim',"
                      "'freq':'none','meter':'model','tenants':["
                      "{'name':'x','priority':-20,'start_s':1,'stop_s':2.5,"
                      " 'priority_changes':[{'at_s':3,'priority':5},{'at_s':0.5,'priority':19}],"
                      " 'models':[{'profile':'resnet18_profile.json','frequency_hz':'726750000',"
                      "            'load':{'poisson_rps':2.5}},"
                      "           {'profile':'resnet50_profile.json','frequency_hz':726750000,"
                      "            'load':{'closed':1}},"
                      "           {'profile':'" R18 "','frequency_hz':726750000,"
                      "            'load':{'closed':3}}]}]}";
    int rc = parse_q(doc, TX2_DIR, 0, &sc, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_int_equal(sc->seed, 42);
    assert_string_equal(sc->freq, "none");
    assert_int_equal(sc->duration_ns, 10500000000u);
    const struct etf_scenario_tenant *t = &sc->tenants[0];
    assert_int_equal(t->priority, -20);
    assert_int_equal(t->start_ns, 1000000000u);
    assert_int_equal(t->stop_ns, 2500000000u);
    assert_int_equal(t->n_prio_changes, 2);
    assert_int_equal(t->prio_changes[1].at_ns, 500000000u);
    assert_int_equal(t->prio_changes[1].priority, 19);
    /* The original writes frequencies as strings. */
    assert_int_equal(t->models[0].freq_hz, 726750000u);
    assert_int_equal(t->models[0].load, ETF_SIM_LOAD_POISSON);
    assert_true(t->models[0].poisson_rps == 2.5);
    /* A file named twice (relative and absolute) is read once. */
    assert_int_equal(sc->n_profiles, 2);
    assert_int_equal(t->models[0].profile, t->models[2].profile);
    assert_int_not_equal(t->models[0].profile, t->models[1].profile);
    etf_scenario_free(sc);
}

static void test_no_profiles(void **state)
{
    (void)state;
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    const char *doc = TOP("", "{'name':'a','models':[{'profile':'missing.json','frequency_hz':5,"
                              "'load':{'closed':1}}]}");
    assert_int_equal(parse_q(doc, "/nonexistent", ETF_SCENARIO_NO_PROFILES, &sc, &diag), 0);
    assert_int_equal(sc->n_profiles, 0);
    assert_int_equal(sc->tenants[0].models[0].profile, SIZE_MAX);
    /* Such a scenario cannot run. */
    struct etf_sim *sim = NULL;
    assert_int_equal(etf_sim_create(sc, &sim, &diag), ETF_EINVAL);
    assert_non_null(strstr(diag.msg, "tenants[0].models[0].profile: not read"));
    etf_scenario_free(sc);
}

static void test_load_relative_paths(void **state)
{
    struct fixture *fx = *state;
    char path[192], copy[192];
    /* A copy of the profile next to the scenario, named relatively. */
    FILE *in = fopen(R18, "rb");
    snprintf(copy, sizeof copy, "%s/r18.json", fx->dir);
    FILE *out = fopen(copy, "wb");
    assert_non_null(in);
    assert_non_null(out);
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, in)) > 0)
        assert_int_equal(fwrite(buf, 1, n, out), n);
    fclose(in);
    assert_int_equal(fclose(out), 0);

    snprintf(path, sizeof path, "%s/scen.json", fx->dir);
    write_file(path, "{\"quantum_us\": 40000, \"phi\": 0.7, \"duration_s\": 1, \"tenants\": [{"
                     "\"name\": \"a\", \"models\": [{\"profile\": \"r18.json\", "
                     "\"frequency_hz\": 1300500000, \"load\": {\"closed\": 1}}]}]}\n");
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_scenario_load(path, 0, &sc, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_string_equal(sc->profiles[0].path, copy);
    etf_scenario_free(sc);

    /* A missing scenario file is named. */
    snprintf(path, sizeof path, "%s/none.json", fx->dir);
    assert_int_equal(etf_scenario_load(path, 0, &sc, &diag), ETF_ENOENT);
    assert_null(sc);
    assert_non_null(strstr(diag.msg, "none.json"));
}

static void test_too_large(void **state)
{
    struct fixture *fx = *state;
    char path[192];
    snprintf(path, sizeof path, "%s/big.json", fx->dir);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(ftruncate(fileno(f), (off_t)ETF_SCENARIO_MAX_BYTES + 1), 0);
    assert_int_equal(fclose(f), 0);
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_scenario_load(path, 0, &sc, &diag), ETF_ELIMIT);
    assert_non_null(strstr(diag.msg, "larger than the limit"));
    unlink(path);
}

/* frequency_hz may be left out: the model runs at the profile's highest frequency (the
 * "sim" controller starts without one). */
static void test_default_frequency(void **state)
{
    (void)state;
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    const char *doc =
        TOP("", "{'name':'a','models':[{'profile':'resnet18_profile.json'," LOAD2 "}]}");
    int rc = parse_q(doc, TX2_DIR, 0, &sc, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_int_equal(sc->tenants[0].models[0].freq_hz, 0);
    struct etf_sim *sim = NULL;
    rc = etf_sim_create(sc, &sim, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    etf_sim_destroy(sim);
    etf_scenario_free(sc);
}

static bool have_device(const char *name)
{
    for (const char *const *n = etf_device_names(); *n; n++)
        if (strcmp(*n, name) == 0)
            return true;
    return false;
}

/* A device of this build that runs real kernels (the CPU device) needs ONNX files and
 * refuses the "sim" controller; its defaults; an ONNX file that is not one fails at set-up,
 * naming the field. */
static void test_real_device(void **state)
{
    struct fixture *fx = *state;
    if (!have_device("cpu"))
        skip();
    static const struct bad_case cases[] = {
        {TOP("'device':'cpu',", TENANT("a", "")), PARSE, ETF_EFORMAT,
         "t.json: tenants[0].models[0]: missing key \"onnx\": device \"cpu\" runs the kernels "
         "of an ONNX file (a profile only gives their times and powers)"},
        {TOP("'device':'cpu',", "{'name':'a','models':[{" LOAD2 "}]}"), PARSE, ETF_EFORMAT,
         "tenants[0].models[0]: missing key \"onnx\": device \"cpu\" runs the kernels of an "
         "ONNX file"},
        {TOP("'device':'cpu','freq':'sim',", "{'name':'a','models':[{'onnx':'x.onnx'," LOAD2 "}]}"),
         PARSE, ETF_EINVAL,
         "t.json: freq: the \"sim\" controller only drives the simulated device, not device "
         "\"cpu\" (use \"none\", the default, or a controller of the device)"},
        {TOP("'device':'cpu',", "{'name':'a','models':[{'onnx':'x.onnx'," LOAD2 "}]}"), PARSE,
         ETF_ENOENT, "tenants[0].models[0].onnx: cannot open "},
        {TOP("'device':'cpu',", "{'name':'a','models':[{'onnx':'x.onnx','batch':5000," LOAD2 "}]}"),
         PARSE, ETF_EINVAL, "tenants[0].models[0].batch: expected an integer 1..4096, found 5000"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct etf_scenario *sc = (struct etf_scenario *)1;
        struct etf_diag diag = {{0}};
        int rc = parse_q(cases[i].doc, fx->dir, 0, &sc, &diag);
        if (rc == 0)
            etf_scenario_free(sc);
        if (rc != cases[i].err || !strstr(diag.msg, cases[i].msg))
            fail_msg("case %zu: expected %d with \"%s\", got %d: %s", i, cases[i].err, cases[i].msg,
                     rc, diag.msg);
    }

    /* A file that exists passes the parser, which does not read it; set-up does. */
    struct etf_scenario *sc = NULL;
    struct etf_diag diag = {{0}};
    const char *doc =
        TOP("'device':'cpu','threads':3,",
            "{'name':'a','models':[{'onnx':'bad_profile.json','batch':2," LOAD2 "}]}");
    int rc = parse_q(doc, fx->dir, 0, &sc, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_string_equal(sc->freq, "none");
    assert_int_equal(sc->threads, 3);
    assert_string_equal(sc->tenants[0].models[0].onnx_path, fx->bad_profile);
    assert_int_equal(sc->tenants[0].models[0].batch, 2);
    assert_int_equal(sc->tenants[0].models[0].freq_hz, 0);
    struct etf_sim *sim = (struct etf_sim *)1;
    rc = etf_sim_create(sc, &sim, &diag);
    assert_null(sim);
    assert_int_equal(rc, ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "tenants[0].models[0].onnx: "));
    assert_non_null(strstr(diag.msg, "bad_profile.json"));
    etf_scenario_free(sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bad_scenarios),
        cmocka_unit_test(test_bad_profile_file),
        cmocka_unit_test(test_nul_byte),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_all_fields),
        cmocka_unit_test(test_no_profiles),
        cmocka_unit_test(test_load_relative_paths),
        cmocka_unit_test(test_too_large),
        cmocka_unit_test(test_default_frequency),
        cmocka_unit_test(test_real_device),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
