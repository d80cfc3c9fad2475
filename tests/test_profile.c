/* Tests of the profile loader: the TX2 fixtures, every documented rejection with its
 * message, save/load round trips, truncated input and file-level errors. */
#include "etf/profile.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#define R18 ETF_SOURCE_DIR "/data/tx2/resnet18_profile.json"
#define R50 ETF_SOURCE_DIR "/data/tx2/resnet50_profile.json"
#define FIRST_KERNEL "tvmgen_default_fused_nn_conv2d_nn_bias_add_nn_relu"

/* Documents are written with ' for " to stay readable; q() swaps them back. */
#define KA                                                                                         \
    "'a':{'kernel_name':'a','exec_time':{'100':10,'200':5},'gpu_power':{'100':1000,'200':2000},"   \
    "'energy':{'100':10,'200':10}}"
#define KB "'b':{'exec_time':{'200':10,'100':20},'gpu_power':{'100':1000,'200':2000}}"
#define TOP_T "'exec_time':{'100':30,'200':15}"
#define TOP_P "'gpu_power':{'100':1000,'200':2000}"
#define TOP_E "'energy':{'100':30,'200':30}"
#define DOC(top, kernels) "{'model_name':'m'," top "'kernel_profile':{" kernels "}}"
#define VALID DOC(TOP_T "," TOP_P "," TOP_E ",", KA "," KB)

static char tmpdir[] = "/tmp/etf_test_profile_XXXXXX";

/* Parses s (with ' for ") from a buffer of exactly its length, so that ASan sees any read
 * past the end. */
static int parse_q(const char *s, struct etf_profile **out, struct etf_diag *diag)
{
    size_t n = strlen(s);
    char *buf = malloc(n ? n : 1);
    assert_non_null(buf);
    for (size_t i = 0; i < n; i++)
        buf[i] = s[i] == '\'' ? '"' : s[i];
    int rc = etf_profile_parse(buf, n, "t.json", out, diag);
    free(buf);
    return rc;
}

static void path_in_tmp(char *dst, size_t cap, const char *name)
{
    snprintf(dst, cap, "%s/%s", tmpdir, name);
}

static int setup(void **state)
{
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
    static const char *names[] = {"r18.json",    "r50.json", "nopower.json", "frac.json",
                                  "sparse.json", "bad.json", "r18.json.tmp"};
    char path[256];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        path_in_tmp(path, sizeof path, names[i]);
        unlink(path);
    }
    return rmdir(tmpdir);
}

static void check_fixture(const char *path, size_t n_kernels, double t_726, double p_1300)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    int rc = etf_profile_load(path, &p, &diag);
    if (rc)
        fail_msg("%s: %s", etf_strerror(rc), diag.msg);
    assert_non_null(p);
    assert_int_equal(p->n_kernels, n_kernels);
    assert_int_equal(p->n_freqs, 13);
    assert_int_equal(p->freqs_hz[0], 114750000u);
    assert_int_equal(p->freqs_hz[12], 1300500000u);
    for (size_t i = 1; i < p->n_freqs; i++)
        assert_true(p->freqs_hz[i - 1] < p->freqs_hz[i]);
    assert_string_equal(p->kernels[0].name, FIRST_KERNEL);
    assert_true(p->has_power);
    assert_non_null(p->power_mw);
    assert_non_null(p->energy_uj);

    long i726 = etf_profile_freq_index(p, 726750000);
    long i1300 = etf_profile_freq_index(p, 1300500000);
    assert_int_equal(i726, 6);
    assert_int_equal(i1300, 12);
    assert_int_equal(etf_profile_freq_index(p, 726750001), -1);
    assert_int_equal(etf_profile_freq_index(p, 0), -1);
    assert_int_equal(etf_profile_freq_index(p, UINT64_MAX), -1);
    assert_true(p->time_us[i726] == t_726);
    assert_true(fabs(p->power_mw[i1300] - p_1300) <= 0.01 * p_1300);
    for (size_t f = 0; f < p->n_freqs; f++) {
        assert_non_null(p->kernels[n_kernels - 1].power_mw);
        double e = p->time_us[f] * p->power_mw[f] / 1000.0;
        assert_true(fabs(e - p->energy_uj[f]) <= 1e-6 * e);
    }
    etf_profile_free(p);
}

static void test_fixtures(void **state)
{
    check_fixture(R18, 24, 32129, 3736);
    check_fixture(R50, 57, 86979, 4261);
}

static void test_valid_small(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(parse_q(VALID, &p, &diag), 0);
    assert_string_equal(p->model_name, "m");
    assert_int_equal(p->n_kernels, 2);
    assert_string_equal(p->kernels[1].name, "b");
    /* b lists 200 before 100: values follow the key, not the position. */
    assert_true(p->kernels[1].time_us[0] == 20 && p->kernels[1].time_us[1] == 10);
    assert_true(p->time_us[0] == 30 && p->time_us[1] == 15);
    assert_true(p->energy_uj[0] == 30 && p->energy_uj[1] == 30);
    assert_true(p->power_mw[0] == 1000 && p->power_mw[1] == 2000);
    etf_profile_free(p);
}

static void test_energy_only_and_kernel_freqs(void **state)
{
    /* No top-level figures: frequencies come from the first kernel (listed out of order),
     * power is derived from energy, and a 0 us kernel gets power 0. */
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    int rc = parse_q(DOC("", "'x':{'exec_time':{'300':4,'100':8},'energy':{'100':16,'300':12}},"
                             "'y':{'exec_time':{'100':0,'300':0},'energy':{'100':0,'300':0}}"),
                     &p, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_int_equal(p->n_freqs, 2);
    assert_int_equal(p->freqs_hz[0], 100);
    assert_int_equal(p->freqs_hz[1], 300);
    assert_true(p->kernels[0].power_mw[0] == 2000 && p->kernels[0].power_mw[1] == 3000);
    assert_true(p->kernels[1].power_mw[0] == 0 && p->kernels[1].time_us[1] == 0);
    assert_true(p->power_mw[1] == 3000);
    etf_profile_free(p);
}

static void test_no_power(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    int rc = parse_q(DOC(TOP_T ",", "'a':{'exec_time':{'100':10,'200':5}},"
                                    "'b':{'kernel_name':'b','exec_time':{'100':20,'200':10}}"),
                     &p, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_false(p->has_power);
    assert_null(p->power_mw);
    assert_null(p->energy_uj);
    assert_null(p->kernels[0].power_mw);
    assert_null(p->kernels[1].power_mw);
    assert_true(p->time_us[0] == 30);

    char path[256];
    path_in_tmp(path, sizeof path, "nopower.json");
    assert_int_equal(etf_profile_save(p, path, &diag), 0);
    struct etf_profile *q = NULL;
    rc = etf_profile_load(path, &q, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_false(q->has_power);
    assert_true(q->time_us[1] == 15);
    etf_profile_free(q);
    etf_profile_free(p);

    FILE *f = fopen(path, "r");
    char text[4096];
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    assert_null(strstr(text, "gpu_power"));
    assert_null(strstr(text, "energy"));
}

struct bad {
    const char *doc;
    int rc;
    const char *msg;
};

static const struct bad bad_docs[] = {
    {"", ETF_EFORMAT, "t.json: not JSON: the document is empty"},
    {"{'model_name':", ETF_EFORMAT, "t.json: not JSON: error near byte"},
    {"{'model_name':'m',,}", ETF_EFORMAT, "t.json: not JSON: error near byte "},
    {VALID "x", ETF_EFORMAT, "unexpected data after the document at byte"},
    {VALID " \n{}", ETF_EFORMAT, "unexpected data after the document"},
    {"[1,2]", ETF_EFORMAT, "expected a JSON object at the top level, found array"},
    {"{'exec_time':{'100':1},'kernel_profile':{'a':{'exec_time':{'100':1}}}}", ETF_EFORMAT,
     "model_name must be a non-empty string, found no model_name"},
    {"{'model_name':'','kernel_profile':{'a':{'exec_time':{'100':1}}}}", ETF_EFORMAT,
     "found an empty string"},
    {"{'model_name':7,'kernel_profile':{'a':{'exec_time':{'100':1}}}}", ETF_EFORMAT,
     "model_name must be a non-empty string, found number"},
    {"{'model_name':'m','model_name':'n','kernel_profile':{'a':{'exec_time':{'100':1}}}}",
     ETF_EFORMAT, "key \"model_name\" appears more than once at the top level"},
    {"{'model_name':'m'}", ETF_EFORMAT, "found no kernel_profile"},
    {DOC(TOP_T ",", ""), ETF_EFORMAT, "kernel_profile is empty (expected at least one kernel)"},
    {"{'model_name':'m','kernel_profile':[]}", ETF_EFORMAT,
     "kernel_profile must be an object mapping kernel names to kernels, found array"},
    {DOC(TOP_T ",", KA ",'b':{'exec_time':{'100':20},'gpu_power':{'100':1000,'200':2000}}"),
     ETF_EFORMAT, "t.json: kernel 'b': exec_time has no entry for 200 Hz"},
    {DOC(TOP_T ",", KA ",'b':{'exec_time':{'100':20,'200':10,'300':1},'gpu_power':{'100':1,"
                       "'200':2}}"),
     ETF_EFORMAT,
     "t.json: kernel 'b': exec_time has an entry for 300 Hz, which is not one of the profile's 2 "
     "frequencies (taken from the top-level exec_time)"},
    {DOC(TOP_T ",", KA ",'b':{'exec_time':{'100':20,'200':10},'gpu_power':{'100':1000}}"),
     ETF_EFORMAT, "kernel 'b': gpu_power has no entry for 200 Hz"},
    {DOC("'exec_time':{'100':30,'abc':15},", KA), ETF_EFORMAT,
     "t.json: exec_time: key \"abc\" is not a frequency in Hz (expected decimal digits)"},
    {DOC("'exec_time':{'100':30,'+200':15},", KA), ETF_EFORMAT,
     "key \"+200\" is not a frequency in Hz (expected decimal digits)"},
    {DOC("'exec_time':{'100':30,' 200':15},", KA), ETF_EFORMAT,
     "key \" 200\" is not a frequency in Hz (expected decimal digits)"},
    {DOC("'exec_time':{'100':30,'':15},", KA), ETF_EFORMAT,
     "key \"\" is not a frequency in Hz (expected decimal digits)"},
    {DOC("'exec_time':{'100':30,'0':15},", KA), ETF_EFORMAT,
     "key \"0\" is not a frequency in Hz (expected > 0)"},
    {DOC("'exec_time':{'100':30,'18446744073709551616':15},", KA), ETF_EFORMAT,
     "is not a frequency in Hz (exceeds 18446744073709551615)"},
    {DOC("'exec_time':{'100':30,'200':15,'0100':3},", KA), ETF_EFORMAT,
     "exec_time has two entries for 100 Hz"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':10,'200':5,'200':5}}"), ETF_EFORMAT,
     "kernel 'a': exec_time has two entries for 200 Hz"},
    {DOC("'exec_time':[],", KA), ETF_EFORMAT,
     "exec_time must be an object mapping frequencies in Hz to microseconds, found array"},
    {DOC("'exec_time':{},", KA), ETF_EFORMAT, "exec_time is empty (expected at least one"},
    {DOC("", "'a':{'exec_time':{'100':-10,'200':5}}"), ETF_EFORMAT,
     "t.json: kernel 'a': exec_time[\"100\"] must be a number >= 0, found -10"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':15},'gpu_power':{'100':'1000','200':1}}"),
     ETF_EFORMAT, "kernel 'a': gpu_power[\"100\"] must be a number >= 0, found string"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':null}}"), ETF_EFORMAT,
     "exec_time[\"200\"] must be a number >= 0, found null"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':true}}"), ETF_EFORMAT,
     "exec_time[\"200\"] must be a number >= 0, found boolean"},
    {DOC("", "'a':{'exec_time':{'100':1e400}}"), ETF_EFORMAT,
     "kernel 'a': exec_time[\"100\"] must be a number >= 0, found a number too large"},
    {DOC("", "'a':{'exec_time':{'100':1e308}},'b':{'exec_time':{'100':1e308}}"), ETF_EFORMAT,
     "sum to a number too large to represent"},
    {DOC(TOP_T ",", KA "," KA), ETF_EFORMAT, "kernel_profile: kernel 'a' appears more than once"},
    {DOC(TOP_T ",", "'':{'exec_time':{'100':30,'200':15}}"), ETF_EFORMAT,
     "kernel_profile: kernel 1 has an empty name"},
    {DOC(TOP_T ",", "'a':{'kernel_name':'x','exec_time':{'100':30,'200':15}}"), ETF_EFORMAT,
     "kernel 'a': kernel_name is \"x\", expected the same name as its key"},
    {DOC(TOP_T ",", "'a':{'kernel_name':1,'exec_time':{'100':30,'200':15}}"), ETF_EFORMAT,
     "kernel 'a': kernel_name must be a string, found number"},
    {DOC("'exec_times':{'100':30},", KA), ETF_EFORMAT,
     "t.json: unknown key \"exec_times\" at the top level (expected model_name, exec_time, "
     "gpu_power, energy, kernel_profile)"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':15},'power':{}}"), ETF_EFORMAT,
     "t.json: kernel 'a': unknown key \"power\" (expected kernel_name, exec_time, gpu_power, "
     "energy)"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':15},'exec_time':{'100':30,'200':15}}"),
     ETF_EFORMAT, "kernel 'a': key \"exec_time\" appears more than once"},
    {DOC(TOP_T ",", "'a':7"), ETF_EFORMAT,
     "kernel 'a': must be an object with exec_time, gpu_power and energy, found number"},
    {DOC(TOP_T ",", "'a':{'energy':{'100':1,'200':1}}"), ETF_EFORMAT,
     "kernel 'a': missing \"exec_time\""},
    {DOC("", "'a':{'energy':{'100':1}}"), ETF_EFORMAT,
     "kernel 'a': missing \"exec_time\" (the profile has no top-level exec_time"},
    {DOC(TOP_T ",", "'c':{'exec_time':{'100':1,'200':1}}," KA "," KB), ETF_EFORMAT,
     "t.json: kernel 'c': has neither gpu_power nor energy, but kernel 'a' has"},
    {DOC(TOP_T ",", KA ",'b':{'exec_time':{'100':20,'200':10}}"), ETF_EFORMAT,
     "kernel 'b': has neither gpu_power nor energy, but kernel 'a' has"},
    {DOC(TOP_T ",", "'a':{'exec_time':{'100':30,'200':15},'gpu_power':{'100':1000,'200':2000},"
                    "'energy':{'100':50,'200':30}}"),
     ETF_EFORMAT,
     "kernel 'a': energy[\"100\"] is 50 uJ but exec_time x gpu_power gives 30 us x 1000 mW = 30 "
     "uJ"},
    {DOC("'exec_time':{'100':40,'200':15},", KA "," KB), ETF_EFORMAT,
     "t.json: exec_time[\"100\"] is 40 us but the kernels give 30 us (expected agreement within "
     "2.3 us)"},
    {DOC("'exec_time':{'100':0,'200':15},", "'a':{'exec_time':{'100':0,'200':15}}"), ETF_EFORMAT,
     "the kernels' exec_time values sum to 0 us at 100 Hz (expected a model time > 0)"},
    {DOC(TOP_T ",'gpu_power':{'100':1500,'200':2000},", KA "," KB), ETF_EFORMAT,
     "gpu_power[\"100\"] is 1500 mW but the kernels give 1000 mW"},
    {DOC(TOP_T ",'energy':{'100':30,'200':40},", KA "," KB), ETF_EFORMAT,
     "energy[\"200\"] is 40 uJ but the kernels give 30 uJ"},
    {DOC(TOP_T ",'energy':{'100':30},", KA "," KB), ETF_EFORMAT,
     "t.json: energy has no entry for 200 Hz"},
    {DOC(TOP_T "," TOP_P ",", "'a':{'exec_time':{'100':30,'200':15}}"), ETF_EFORMAT,
     "gpu_power is given at the top level but no kernel has gpu_power or energy"},
};

static void test_bad_documents(void **state)
{
    for (size_t i = 0; i < sizeof bad_docs / sizeof bad_docs[0]; i++) {
        struct etf_profile *p = (struct etf_profile *)&p; /* must be reset to NULL */
        struct etf_diag diag = {{0}};
        int rc = parse_q(bad_docs[i].doc, &p, &diag);
        if (rc != bad_docs[i].rc || !strstr(diag.msg, bad_docs[i].msg))
            fail_msg("case %zu: got %d \"%s\", expected %d with \"%s\"", i, rc, diag.msg,
                     bad_docs[i].rc, bad_docs[i].msg);
        assert_null(p);
    }
}

static void test_long_strings_truncated(void **state)
{
    char key[400], doc[800];
    memset(key, 'k', 300);
    key[300] = '\0';
    snprintf(doc, sizeof doc, DOC(TOP_T ",'%s':1,", KA), key);
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(parse_q(doc, &p, &diag), ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "unknown key \"kkkk"));
    assert_non_null(strstr(diag.msg, "...\""));
    assert_true(strlen(diag.msg) < 200);

    /* Kernel names are limited to 255 bytes. */
    snprintf(doc, sizeof doc, DOC(TOP_T ",", "'%s':{'exec_time':{'100':30,'200':15}}"), key);
    assert_int_equal(parse_q(doc, &p, &diag), ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "is 300 bytes long (at most 255)"));
    key[255] = '\0';
    snprintf(doc, sizeof doc, DOC(TOP_T ",", "'%s':{'exec_time':{'100':30,'200':15}}"), key);
    assert_int_equal(parse_q(doc, &p, &diag), 0);
    assert_int_equal(strlen(p->kernels[0].name), 255);
    etf_profile_free(p);
}

/* Builds a profile of n one-frequency kernels named k0, k1, ...; the last is named like
 * kernel `dup` when dup < n. */
static char *many_kernels(size_t n, size_t dup)
{
    size_t cap = 64 + n * 48;
    char *doc = malloc(cap);
    assert_non_null(doc);
    size_t len = (size_t)snprintf(doc, cap, "{'model_name':'big','kernel_profile':{");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(doc + len, cap - len, "%s'k%zu':{'exec_time':{'100':1}}",
                                i ? "," : "", i + 1 == n && dup < n ? dup : i);
    snprintf(doc + len, cap - len, "}}");
    return doc;
}

static void test_many_kernels(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    char *doc = many_kernels(ETF_PROFILE_MAX_KERNELS, SIZE_MAX);
    int rc = parse_q(doc, &p, &diag);
    if (rc)
        fail_msg("%s", diag.msg);
    assert_int_equal(p->n_kernels, ETF_PROFILE_MAX_KERNELS);
    assert_true(p->time_us[0] == ETF_PROFILE_MAX_KERNELS);
    assert_string_equal(p->kernels[ETF_PROFILE_MAX_KERNELS - 1].name, "k99999");
    etf_profile_free(p);
    free(doc);

    doc = many_kernels(ETF_PROFILE_MAX_KERNELS, 12345);
    assert_int_equal(parse_q(doc, &p, &diag), ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "kernel 'k12345' appears more than once"));
    free(doc);

    doc = many_kernels(ETF_PROFILE_MAX_KERNELS + 1, SIZE_MAX);
    assert_int_equal(parse_q(doc, &p, &diag), ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "kernel_profile has 100001 kernels (at most 100000"));
    free(doc);
}

static void test_too_many_freqs(void **state)
{
    size_t n = ETF_PROFILE_MAX_FREQS + 1, cap = 64 + n * 24;
    char *doc = malloc(cap);
    assert_non_null(doc);
    size_t len =
        (size_t)snprintf(doc, cap, "{'model_name':'m','kernel_profile':{'a':{'exec_time':{");
    for (size_t i = 0; i < n; i++)
        len += (size_t)snprintf(doc + len, cap - len, "%s'%zu':1", i ? "," : "", i + 1);
    snprintf(doc + len, cap - len, "}}}}");
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(parse_q(doc, &p, &diag), ETF_EFORMAT);
    assert_non_null(strstr(diag.msg, "exec_time has 1025 frequencies (at most 1024 allowed)"));
    free(doc);
}

static void assert_profiles_equal(const struct etf_profile *a, const struct etf_profile *b)
{
    assert_string_equal(a->model_name, b->model_name);
    assert_int_equal(a->n_freqs, b->n_freqs);
    assert_int_equal(a->n_kernels, b->n_kernels);
    assert_int_equal(a->has_power, b->has_power);
    for (size_t f = 0; f < a->n_freqs; f++) {
        assert_int_equal(a->freqs_hz[f], b->freqs_hz[f]);
        assert_true(a->time_us[f] == b->time_us[f]);
        if (a->has_power) {
            assert_true(a->power_mw[f] == b->power_mw[f]);
            assert_true(a->energy_uj[f] == b->energy_uj[f]);
        }
    }
    for (size_t k = 0; k < a->n_kernels; k++) {
        assert_string_equal(a->kernels[k].name, b->kernels[k].name);
        for (size_t f = 0; f < a->n_freqs; f++) {
            assert_true(a->kernels[k].time_us[f] == b->kernels[k].time_us[f]);
            if (a->has_power)
                assert_true(a->kernels[k].power_mw[f] == b->kernels[k].power_mw[f]);
        }
    }
}

static void round_trip(struct etf_profile *a, const char *name)
{
    char path[256], tmp[300];
    struct etf_diag diag = {{0}};
    struct etf_profile *b = NULL;
    path_in_tmp(path, sizeof path, name);
    int rc = etf_profile_save(a, path, &diag);
    if (rc)
        fail_msg("save: %s", diag.msg);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1);
    rc = etf_profile_load(path, &b, &diag);
    if (rc)
        fail_msg("reload: %s", diag.msg);
    assert_profiles_equal(a, b);
    etf_profile_free(b);
}

static void test_round_trip(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(etf_profile_load(R50, &p, &diag), 0);
    round_trip(p, "r50.json");
    etf_profile_free(p);

    assert_int_equal(etf_profile_load(R18, &p, &diag), 0);
    round_trip(p, "r18.json");
    etf_profile_free(p);
    /* Integral values are written as integers, in the fixture's layout. */
    char path[256], text[1 << 16];
    path_in_tmp(path, sizeof path, "r18.json");
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = '\0';
    assert_non_null(strstr(text, "{\n    \"model_name\": \"resnet18\",\n    \"exec_time\": {\n"
                                 "        \"114750000\": 180739,\n"));
    assert_non_null(strstr(text, "            \"kernel_name\": \"" FIRST_KERNEL "\",\n"));

    /* Fractions, tiny and huge values and names needing escapes survive exactly. */
    assert_int_equal(parse_q("{'model_name':'q\\\\u\\'o\\tte\\u00e9','kernel_profile':{"
                             "'a\\n':{'exec_time':{'5':0.1,'18446744073709551615':1e-7},"
                             "'gpu_power':{'5':0.3333333333333333,'18446744073709551615':1e17}},"
                             "'b':{'exec_time':{'5':123456789012.25,'18446744073709551615':0},"
                             "'energy':{'5':7.5,'18446744073709551615':0}}}}",
                             &p, &diag),
                     0);
    assert_int_equal(p->freqs_hz[1], UINT64_MAX);
    assert_string_equal(p->model_name, "q\\u\"o\tte\xc3\xa9");
    round_trip(p, "frac.json");
    etf_profile_free(p);
}

static void test_save_errors(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    assert_int_equal(parse_q(VALID, &p, &diag), 0);
    assert_int_equal(etf_profile_save(p, "/nonexistent-dir/x/p.json", &diag), ETF_EIO);
    assert_non_null(strstr(diag.msg, "/nonexistent-dir/x/p.json.tmp: cannot create"));
    etf_profile_free(p);
}

static void test_every_prefix_fails(void **state)
{
    const char *doc = VALID;
    size_t n = strlen(doc);
    struct etf_diag diag;
    struct etf_profile *p = NULL;
    for (size_t len = 0; len < n; len++) {
        char *buf = malloc(len ? len : 1);
        assert_non_null(buf);
        for (size_t i = 0; i < len; i++)
            buf[i] = doc[i] == '\'' ? '"' : doc[i];
        int rc = etf_profile_parse(buf, len, "t.json", &p, &diag);
        free(buf);
        if (rc != ETF_EFORMAT)
            fail_msg("prefix of %zu bytes: got %d", len, rc);
        assert_null(p);
        assert_non_null(strstr(diag.msg, "t.json: not JSON"));
    }
    assert_int_equal(parse_q(doc, &p, &diag), 0);
    etf_profile_free(p);
}

static void test_file_errors(void **state)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag = {{0}};
    char path[256];

    path_in_tmp(path, sizeof path, "missing.json");
    assert_int_equal(etf_profile_load(path, &p, &diag), ETF_ENOENT);
    assert_non_null(strstr(diag.msg, "missing.json: cannot open: No such file"));
    assert_null(p);

    assert_int_equal(etf_profile_load(tmpdir, &p, &diag), ETF_EIO);
    assert_non_null(strstr(diag.msg, "is a directory"));
    assert_null(p);

    path_in_tmp(path, sizeof path, "sparse.json");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(ftruncate(fd, (off_t)ETF_PROFILE_MAX_BYTES + 1), 0);
    close(fd);
    assert_int_equal(etf_profile_load(path, &p, &diag), ETF_ELIMIT);
    assert_non_null(strstr(diag.msg, "sparse.json: file is 67108865 bytes"));
    assert_null(p);

    /* The origin in messages is the path as given. */
    path_in_tmp(path, sizeof path, "bad.json");
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs("{\"model_name\": \"m\", \"kernel_profile\": {}}\n", f);
    fclose(f);
    assert_int_equal(etf_profile_load(path, &p, &diag), ETF_EFORMAT);
    char expect[400];
    snprintf(expect, sizeof expect, "%s: kernel_profile is empty (expected at least one kernel)",
             path);
    assert_string_equal(diag.msg, expect);
    assert_null(p);

    /* NULL diag is allowed. */
    assert_int_equal(etf_profile_load(path, &p, NULL), ETF_EFORMAT);
}

static void test_free_null_and_index(void **state)
{
    etf_profile_free(NULL);
    assert_int_equal(etf_profile_freq_index(NULL, 100), -1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixtures),
        cmocka_unit_test(test_valid_small),
        cmocka_unit_test(test_energy_only_and_kernel_freqs),
        cmocka_unit_test(test_no_power),
        cmocka_unit_test(test_bad_documents),
        cmocka_unit_test(test_long_strings_truncated),
        cmocka_unit_test(test_many_kernels),
        cmocka_unit_test(test_too_many_freqs),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_save_errors),
        cmocka_unit_test(test_every_prefix_fails),
        cmocka_unit_test(test_file_errors),
        cmocka_unit_test(test_free_null_and_index),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
