/* Tests of the shared copier (src/util/copier.c): every byte lands where memcpy would put
 * it, whatever the size and thread count, including from several callers at once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "etf/etf.h"
#include "util/copier.h"

/* A pattern that differs in every byte of a long run, so that a share copied to the wrong
 * place or skipped shows. */
static void fill(unsigned char *p, size_t n, unsigned seed)
{
    uint32_t x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (unsigned char)(x >> 24);
    }
}

/* Copies n bytes at odd offsets (the split must not assume alignment) and checks them and
 * the guard bytes around them. */
static void check_copy(struct etf__copier *c, size_t n, unsigned seed)
{
    unsigned char *src = malloc(n + 3), *dst = malloc(n + 5);
    assert_non_null(src);
    assert_non_null(dst);
    fill(src, n + 3, seed);
    memset(dst, 0xA5, n + 5);
    etf__copier_copy(c, dst + 2, src + 3, n);
    assert_memory_equal(dst + 2, src + 3, n);
    assert_int_equal(dst[0], 0xA5);
    assert_int_equal(dst[1], 0xA5);
    assert_int_equal(dst[n + 2], 0xA5);
    assert_int_equal(dst[n + 4], 0xA5);
    free(src);
    free(dst);
}

static const size_t sizes[] = {0,
                               1,
                               63,
                               4096,
                               ETF_COPIER_MIN_SPLIT - 1,
                               ETF_COPIER_MIN_SPLIT,
                               ETF_COPIER_MIN_SPLIT + 1,
                               3 * ETF_COPIER_MIN_SPLIT + 77,
                               19267584 /* a batch of 32 images of 3x224x224 floats */};

static void copies_match_memcpy_for_any_thread_count(void **state)
{
    (void)state;
    const unsigned counts[] = {0, 1, 2, 3, 4, 7, ETF_COPIER_MAX_THREADS};
    for (size_t t = 0; t < sizeof counts / sizeof *counts; t++) {
        struct etf__copier *c;
        assert_int_equal(etf__copier_create(counts[t], &c), 0);
        assert_int_equal(etf__copier_threads(c), counts[t] ? counts[t] : 1);
        for (size_t s = 0; s < sizeof sizes / sizeof *sizes; s++)
            check_copy(c, sizes[s], (unsigned)(t * 31 + s));
        etf__copier_destroy(c);
    }
}

static void a_null_copier_is_memcpy(void **state)
{
    (void)state;
    assert_int_equal(etf__copier_threads(NULL), 1);
    check_copy(NULL, 3 * ETF_COPIER_MIN_SPLIT + 5, 9);
    etf__copier_destroy(NULL);
}

static void too_many_threads_are_refused(void **state)
{
    (void)state;
    struct etf__copier *c = (struct etf__copier *)&c;
    assert_int_equal(etf__copier_create(ETF_COPIER_MAX_THREADS + 1, &c), ETF_EINVAL);
    assert_null(c);
}

struct caller {
    struct etf__copier *c;
    unsigned seed;
};

static void *caller_main(void *argp)
{
    const struct caller *a = argp;
    for (int i = 0; i < 8; i++)
        check_copy(a->c, 2 * ETF_COPIER_MIN_SPLIT + (size_t)i * 1000, a->seed + (unsigned)i);
    return NULL;
}

/* The dispatcher copies while, say, a second device's thread does: copies take turns. */
static void callers_on_several_threads_each_get_their_copy(void **state)
{
    (void)state;
    struct etf__copier *c;
    assert_int_equal(etf__copier_create(3, &c), 0);
    pthread_t threads[3];
    struct caller args[3];
    for (unsigned i = 0; i < 3; i++) {
        args[i] = (struct caller){.c = c, .seed = 100 * i};
        assert_int_equal(pthread_create(&threads[i], NULL, caller_main, &args[i]), 0);
    }
    for (unsigned i = 0; i < 3; i++)
        assert_int_equal(pthread_join(threads[i], NULL), 0);
    etf__copier_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(copies_match_memcpy_for_any_thread_count),
        cmocka_unit_test(a_null_copier_is_memcpy),
        cmocka_unit_test(too_many_threads_are_refused),
        cmocka_unit_test(callers_on_several_threads_each_get_their_copy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
