/* libFuzzer target: the profile parser must reject or accept any byte string without
 * crashing, reading out of bounds or leaking, and anything it accepts must satisfy the
 * invariants the rest of libetf relies on. */
#include "etf/profile.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct etf_profile *p = NULL;
    struct etf_diag diag;
    int rc = etf_profile_parse((const char *)data, size, "fuzz.json", &p, &diag);
    if (rc != 0) {
        if (p != NULL)
            abort();
        return 0;
    }
    if (p->n_freqs == 0 || p->n_kernels == 0 || (p->has_power != (p->power_mw != NULL)))
        abort();
    for (size_t f = 0; f < p->n_freqs; f++) {
        if (p->freqs_hz[f] == 0 || (f > 0 && p->freqs_hz[f - 1] >= p->freqs_hz[f]))
            abort();
        if (!(p->time_us[f] > 0) || !isfinite(p->time_us[f]))
            abort();
        if (p->has_power && (!isfinite(p->power_mw[f]) || !(p->energy_uj[f] >= 0)))
            abort();
        if (etf_profile_freq_index(p, p->freqs_hz[f]) != (long)f)
            abort();
    }
    etf_profile_free(p);
    return 0;
}
