/* Tests of the growable-array helper (src/util/array.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "etf/etf.h"
#include "util/array.h"

static void reserve_doubles_from_first_and_keeps_contents(void **state)
{
    (void)state;
    int *v = NULL;
    size_t n = 0, cap = 0;
    for (int i = 0; i < 100; i++) {
        assert_int_equal(etf__reserve(&v, n, &cap, sizeof *v, 4), 0);
        assert_true(cap > n);
        v[n++] = i;
    }
    assert_int_equal(cap, 128); /* 4, 8, ..., 128 */
    for (int i = 0; i < 100; i++)
        assert_int_equal(v[i], i);
    /* Room left: nothing moves. */
    int *before = v;
    assert_int_equal(etf__reserve(&v, 50, &cap, sizeof *v, 4), 0);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 128);
    free(v);
}

static void reserve_refuses_a_size_that_overflows(void **state)
{
    (void)state;
    char *v = NULL;
    size_t cap = SIZE_MAX / 2 + 1;
    assert_int_equal(etf__reserve(&v, cap, &cap, 1, 4), ETF_ENOMEM);
    assert_null(v);
    assert_int_equal(cap, SIZE_MAX / 2 + 1);
    size_t cap2 = 0;
    assert_int_equal(etf__reserve(&v, 0, &cap2, SIZE_MAX / 2, 4), ETF_ENOMEM);
    assert_int_equal(cap2, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(reserve_doubles_from_first_and_keeps_contents),
        cmocka_unit_test(reserve_refuses_a_size_that_overflows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
