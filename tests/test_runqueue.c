/* The vruntime run queue (src/sched/runqueue.c) against a sorted reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "sched/runqueue.h"

#include <stdlib.h>

enum { N = 2000 };

static int by_key(const void *a, const void *b)
{
    const struct etf_rq_node *x = a, *y = b;
    if (x->vruntime != y->vruntime)
        return x->vruntime < y->vruntime ? -1 : 1;
    return (x->seq > y->seq) - (x->seq < y->seq);
}

static void pops_in_vruntime_then_seq_order(void **state)
{
    (void)state;
    static struct etf_rq_node nodes[N], sorted[N];
    struct etf_runqueue rq;
    etf__rq_init(&rq);
    srand(7);
    for (size_t i = 0; i < N; i++) {
        /* few distinct keys, so that ties are common */
        nodes[i] = (struct etf_rq_node){.vruntime = rand() % 50, .seq = N - i};
        sorted[i] = nodes[i];
        assert_int_equal(etf__rq_push(&rq, &nodes[i]), 0);
    }
    qsort(sorted, N, sizeof *sorted, by_key);
    for (size_t i = 0; i < N; i++) {
        struct etf_rq_node *top = etf__rq_pop(&rq);
        assert_non_null(top);
        assert_true(top->vruntime == sorted[i].vruntime);
        assert_true(top->seq == sorted[i].seq);
    }
    assert_null(etf__rq_pop(&rq));
    assert_null(etf__rq_peek(&rq));
    etf__rq_fini(&rq);
}

static void remove_keeps_the_heap_ordered(void **state)
{
    (void)state;
    static struct etf_rq_node nodes[N];
    static bool removed[N];
    struct etf_runqueue rq;
    etf__rq_init(&rq);
    srand(11);
    for (size_t i = 0; i < N; i++) {
        nodes[i] = (struct etf_rq_node){.vruntime = (double)rand() / RAND_MAX, .seq = i};
        assert_int_equal(etf__rq_push(&rq, &nodes[i]), 0);
    }
    for (size_t i = 0; i < N; i += 3) {
        etf__rq_remove(&rq, &nodes[i]);
        removed[i] = true;
    }
    size_t left = 0;
    for (size_t i = 0; i < N; i++)
        left += !removed[i];
    assert_int_equal(rq.n, left);
    double last = -1;
    struct etf_rq_node *top;
    while ((top = etf__rq_pop(&rq))) {
        assert_false(removed[top->seq]);
        assert_true(top->vruntime >= last);
        last = top->vruntime;
    }
    etf__rq_fini(&rq);
}

static void update_after_a_turn_cycles_round_robin(void **state)
{
    (void)state;
    /* The dispatcher's pattern: peek the least, add one turn, update in place. Equal
     * entities then take turns in seq order. */
    struct etf_rq_node nodes[5];
    struct etf_runqueue rq;
    etf__rq_init(&rq);
    assert_int_equal(etf__rq_reserve(&rq, 5), 0);
    for (size_t i = 0; i < 5; i++) {
        nodes[i] = (struct etf_rq_node){.vruntime = 0, .seq = i};
        etf__rq_push(&rq, &nodes[i]);
    }
    for (size_t turn = 0; turn < 50; turn++) {
        struct etf_rq_node *top = etf__rq_peek(&rq);
        assert_int_equal(top->seq, turn % 5);
        top->vruntime += 1;
        etf__rq_update(&rq, top);
    }
    etf__rq_fini(&rq);
}

static void update_moves_keys_both_ways(void **state)
{
    (void)state;
    static struct etf_rq_node nodes[N];
    struct etf_runqueue rq;
    etf__rq_init(&rq);
    srand(13);
    for (size_t i = 0; i < N; i++) {
        nodes[i] = (struct etf_rq_node){.vruntime = rand() % 1000, .seq = i};
        assert_int_equal(etf__rq_push(&rq, &nodes[i]), 0);
    }
    for (size_t i = 0; i < N; i += 2) {
        nodes[i].vruntime = rand() % 1000 - 500; /* some up, some down */
        etf__rq_update(&rq, &nodes[i]);
    }
    double last = -1e9;
    struct etf_rq_node *top;
    size_t popped = 0;
    while ((top = etf__rq_pop(&rq))) {
        assert_true(top->vruntime >= last);
        last = top->vruntime;
        popped++;
    }
    assert_int_equal(popped, N);
    etf__rq_fini(&rq);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(pops_in_vruntime_then_seq_order),
        cmocka_unit_test(remove_keeps_the_heap_ordered),
        cmocka_unit_test(update_after_a_turn_cycles_round_robin),
        cmocka_unit_test(update_moves_keys_both_ways),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
