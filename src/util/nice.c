/* Nice levels to CFS weights (the table of the Linux kernel's sched_prio_to_weight):
 * one nice level is worth ~10% of CPU time against a neighbour, a factor of ~1.25. */
#include "etf/etf.h"

static const uint32_t nice_to_weight[40] = {
    /* -20 */ 88761, 71755, 56483, 46273, 36291,
    /* -15 */ 29154, 23254, 18705, 14949, 11916,
    /* -10 */ 9548,  7620,  6100,  4904,  3906,
    /*  -5 */ 3121,  2501,  1991,  1586,  1277,
    /*   0 */ 1024,  820,   655,   526,   423,
    /*   5 */ 335,   272,   215,   172,   137,
    /*  10 */ 110,   87,    70,    56,    45,
    /*  15 */ 36,    29,    23,    18,    15,
};

bool etf_nice_valid(int64_t nice)
{
    return nice >= ETF_NICE_MIN && nice <= ETF_NICE_MAX;
}

uint32_t etf_nice_to_weight(int nice)
{
    return nice_to_weight[nice - ETF_NICE_MIN];
}
