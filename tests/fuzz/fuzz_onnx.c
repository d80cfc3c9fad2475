/* libFuzzer target: the ONNX loader must reject or accept any byte string without crashing,
 * reading out of bounds or leaking, and any plan it accepts must satisfy the invariants the
 * devices rely on (aliases of storage of the same size, liveness covering every use). */
#include "etf/model.h"
#include "../../src/model/plan.h" /* the plan the devices see (src/ is not on this target's path) */

#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_use(const struct etf_plan *p, int v, size_t k)
{
    if (v < 0 || (size_t)v >= p->n_values)
        abort();
    const struct etf_value *s = &p->values[etf__plan_storage(p, v)];
    if (s->kind != ETF_VALUE_CONSTANT && (k < s->first_use || k > s->last_use))
        abort();
    if (s->kind == ETF_VALUE_CONSTANT && !s->data)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct etf_plan *p = NULL;
    struct etf_diag diag;
    /* a small budget: folding may not make the fuzzer run out of memory */
    struct etf_model_options opts = {.max_bytes = (size_t)16 << 20};
    int rc = etf_model_parse(data, size, "fuzz.onnx", NULL, &opts, &p, &diag);
    if (rc != 0) {
        if (p != NULL || diag.msg[0] == 0)
            abort();
        return 0;
    }
    for (size_t i = 0; i < p->n_values; i++) {
        const struct etf_value *v = &p->values[i];
        if (v->alias_of >= 0) {
            if ((size_t)v->alias_of >= p->n_values || p->values[v->alias_of].alias_of != -1 ||
                etf__shape_elems(&v->shape) != etf__shape_elems(&p->values[v->alias_of].shape))
                abort();
        }
    }
    for (size_t k = 0; k < p->n_kernels; k++) {
        const struct etf_kernel *K = &p->kernels[k];
        check_use(p, K->output, k);
        for (int i = 0; i < K->n_inputs; i++)
            check_use(p, K->inputs[i], k);
        for (int i = 0; i < K->n_extra_inputs; i++)
            check_use(p, K->extra_inputs[i], k);
        for (int i = 0; i < K->n_post; i++)
            if (K->post[i].kind != ETF_POST_ELTWISE)
                check_use(p, K->post[i].value, k);
    }
    for (size_t i = 0; i < p->n_outputs; i++)
        check_use(p, p->outputs[i], p->n_kernels);
    etf_plan_free(p);
    return 0;
}
