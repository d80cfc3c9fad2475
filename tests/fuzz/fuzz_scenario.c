/* libFuzzer target: the scenario parser must reject or accept any byte string without
 * crashing, reading out of bounds or leaking, and anything it accepts must satisfy the
 * invariants the simulator relies on. ETF_SCENARIO_NO_PROFILES keeps it off the file
 * system: no profile is read, whatever paths the input names. */
#include "etf/sim.h"

#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct etf_scenario *sc = NULL;
    struct etf_diag diag;
    int rc = etf_scenario_parse((const char *)data, size, "fuzz.json", "/nonexistent",
                                ETF_SCENARIO_NO_PROFILES, &sc, &diag);
    if (rc != 0) {
        if (sc != NULL || memchr(diag.msg, '\0', sizeof diag.msg) == NULL)
            abort();
        return 0;
    }
    if (sc->quantum_us == 0 || sc->quantum_us > ETF_SCENARIO_MAX_QUANTUM_US ||
        !(sc->phi >= 0 && sc->phi <= 1) || sc->duration_ns == 0 || sc->n_tenants == 0 ||
        sc->n_tenants > ETF_SCENARIO_MAX_TENANTS || sc->n_profiles != 0)
        abort();
    for (size_t i = 0; i < sc->n_tenants; i++) {
        const struct etf_scenario_tenant *t = &sc->tenants[i];
        size_t len = strlen(t->name);
        if (len == 0 || len > ETF_SCENARIO_NAME_MAX || !etf_nice_valid(t->priority) ||
            t->start_ns > t->stop_ns || t->stop_ns > sc->duration_ns || t->n_models == 0)
            abort();
        for (size_t j = 0; j < i && sc->n_tenants < 64; j++)
            if (strcmp(sc->tenants[j].name, t->name) == 0)
                abort();
        for (size_t k = 0; k < t->n_prio_changes; k++)
            if (!etf_nice_valid(t->prio_changes[k].priority) ||
                t->prio_changes[k].at_ns > sc->duration_ns)
                abort();
        for (size_t m = 0; m < t->n_models; m++) {
            const struct etf_scenario_model *md = &t->models[m];
            /* A model names a profile or an ONNX file (or both); the frequency may be left
             * to the device (0). */
            bool has_profile = md->profile_path && md->profile_path[0];
            bool has_onnx = md->onnx_path && md->onnx_path[0];
            if (md->profile != SIZE_MAX || !(has_profile || has_onnx) || md->batch > 4096 ||
                (md->batch && !has_onnx))
                abort();
            if (md->load == ETF_SIM_LOAD_CLOSED
                    ? md->closed < 1 || md->closed > ETF_SCENARIO_MAX_CLOSED
                    : !(md->poisson_rps > 0 && md->poisson_rps <= ETF_SCENARIO_MAX_RPS))
                abort();
        }
    }
    etf_scenario_free(sc);
    return 0;
}
