/* Model profiles in the original ETF JSON format.
 *
 *   {"model_name": "resnet18",
 *    "exec_time": {"<Hz>": µs, ...}, "gpu_power": {"<Hz>": mW, ...}, "energy": {"<Hz>": µJ},
 *    "kernel_profile": {"<kernel>": {"kernel_name": "<kernel>", "exec_time": {...},
 *                                    "gpu_power": {...}, "energy": {...}}, ...}}
 *
 * `kernel_profile` lists the kernels in execution order. A profile tells, for every
 * frequency it covers, how long each kernel runs and at what power: the simulated device
 * runs kernels for these times and the `model` meter charges time × power.
 *
 * The loader checks everything it reads and names what is wrong. Power is optional as a
 * whole (a profile measured where no meter exists has none): `has_power` says whether
 * every kernel has a power for every frequency, given directly or as energy / time.
 */
#ifndef ETF_PROFILE_H
#define ETF_PROFILE_H

#include "etf/etf.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Profiles larger than this are refused before parsing. */
#define ETF_PROFILE_MAX_BYTES (64u << 20)
/* A model with more kernels than this is refused. */
#define ETF_PROFILE_MAX_KERNELS 100000u
/* More frequencies than this are refused. */
#define ETF_PROFILE_MAX_FREQS 1024u

struct etf_kernel_profile {
    char *name;
    /* Arrays of n_freqs entries, indexed like etf_profile.freqs_hz. */
    double *time_us;  /* >= 0 (the model's total is > 0 at every frequency) */
    double *power_mw; /* >= 0; NULL when the profile has no power */
};

struct etf_profile {
    char *model_name;
    size_t n_freqs;
    uint64_t *freqs_hz; /* ascending, distinct, > 0 */
    /* Model-level figures per frequency: time = sum of kernel times, energy = sum of kernel
     * time × power, power = energy / time (NULL when the profile has no power). */
    double *time_us;
    double *power_mw;
    double *energy_uj;
    bool has_power;
    size_t n_kernels; /* >= 1 */
    struct etf_kernel_profile *kernels;
};

/* Parses and validates a profile held in memory. `origin` names the source in messages
 * (a file name). On success *out is a new profile the caller frees with etf_profile_free.
 * Errors: ETF_EFORMAT (not JSON, wrong shape, bad number) with diag naming the field. */
int etf_profile_parse(const char *json, size_t len, const char *origin, struct etf_profile **out,
                      struct etf_diag *diag);

/* Reads a file and parses it as above. Errors also: ETF_ENOENT, ETF_EIO, ETF_ELIMIT. */
int etf_profile_load(const char *path, struct etf_profile **out, struct etf_diag *diag);

/* Writes the profile in the original format (frequencies as strings of Hz, units µs, mW,
 * µJ; power and energy omitted when the profile has none), atomically (a temporary file
 * renamed into place). Returns 0, ETF_EIO, ETF_EINVAL (a non-finite value) or ETF_ENOMEM. */
int etf_profile_save(const struct etf_profile *p, const char *path, struct etf_diag *diag);

/* Index of hz in p->freqs_hz, or -1 when the profile does not cover it. */
long etf_profile_freq_index(const struct etf_profile *p, uint64_t hz);

void etf_profile_free(struct etf_profile *p);

#ifdef __cplusplus
}
#endif
#endif
