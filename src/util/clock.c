/* The host's monotonic clock and the virtual clock of single-threaded drivers. */
#include "etf/etf.h"

#include <time.h>

uint64_t etf_host_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t monotonic_now(void *ctx)
{
    (void)ctx;
    return etf_host_ns();
}

const struct etf_clock etf_monotonic_clock = {.now = monotonic_now, .ctx = NULL};

static uint64_t vclock_now(void *ctx)
{
    return ((const struct etf_vclock *)ctx)->now_ns;
}

struct etf_clock etf_vclock_as_clock(struct etf_vclock *vc)
{
    return (struct etf_clock){.now = vclock_now, .ctx = vc};
}
