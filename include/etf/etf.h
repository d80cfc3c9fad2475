/* libetf: the energy-time fair inference scheduler.
 *
 * Common vocabulary of the public API: error codes, the diagnostic buffer that carries
 * a human-readable reason with every failure caused by outside input, and the injectable
 * clock that lets the same scheduler run on wall time (server) or a virtual clock
 * (simulator).
 */
#ifndef ETF_ETF_H
#define ETF_ETF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Functions that act return 0 or one of these negative codes. */
enum etf_err {
    ETF_OK = 0,
    ETF_EINVAL = -1,    /* an argument or an input value is out of its domain */
    ETF_ENOMEM = -2,    /* allocation failed */
    ETF_ENOENT = -3,    /* unknown id, missing file */
    ETF_EIO = -4,       /* reading or writing a file or device failed */
    ETF_ENOTSUP = -5,   /* the backend or the build lacks this capability */
    ETF_EFORMAT = -6,   /* a document (JSON, ONNX, ...) is malformed */
    ETF_EBUSY = -7,     /* the object is in use (queued tasks, loaded models) */
    ETF_ELIMIT = -8,    /* a configured limit (queue depth, sizes) would be exceeded */
    ETF_ESHUTDOWN = -9, /* the scheduler is stopping; the work was not run */
    ETF_EDEVICE = -10,  /* the device, meter or frequency backend failed */
};

/* Text for an error code; never NULL. */
const char *etf_strerror(int err);

/* Where a failure caused by outside input explains itself: what was expected and what
 * was found ("profile r18.json: kernel 'conv_3' has no exec_time for 726750000 Hz").
 * Functions taking a `struct etf_diag *` accept NULL when the caller wants no text. */
struct etf_diag {
    char msg[512];
};

/* Writes a formatted message into diag (if not NULL) and returns err, so that error paths
 * read `return etf_diagf(diag, ETF_EINVAL, "...", ...)`. */
int etf_diagf(struct etf_diag *diag, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A source of nanoseconds. The scheduler never reads the system clock directly: the
 * server injects CLOCK_MONOTONIC, the simulator a virtual clock advanced by the
 * simulated device. `now` must be monotonic and safe to call from any thread. */
struct etf_clock {
    uint64_t (*now)(void *ctx);
    void *ctx;
};

/* The clock of the host: CLOCK_MONOTONIC in nanoseconds. */
extern const struct etf_clock etf_monotonic_clock;

/* A clock that only moves when told to. Not thread-safe: it serves single-threaded
 * drivers (the simulator, tests). */
struct etf_vclock {
    uint64_t now_ns;
};
struct etf_clock etf_vclock_as_clock(struct etf_vclock *vc);

/* CLOCK_MONOTONIC read directly, for measuring host time (benchmarks, overhead). */
uint64_t etf_host_ns(void);

/* Priorities are Linux nice levels; weights follow the CFS table (nice 0 = 1024, each
 * level a factor of ~1.25). */
#define ETF_NICE_MIN (-20)
#define ETF_NICE_MAX 19
bool etf_nice_valid(int64_t nice);
/* The CFS weight of a valid nice level. */
uint32_t etf_nice_to_weight(int nice);

#ifdef __cplusplus
}
#endif
#endif
