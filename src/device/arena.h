/* Activation arenas of the devices: blocks of bytes, each live over a range of kernels,
 * placed in one buffer so that blocks live at the same time never share bytes. */
#ifndef ETF_DEVICE_ARENA_H
#define ETF_DEVICE_ARENA_H

#include <stddef.h>

struct etf_arena_block {
    size_t bytes, offset;
    size_t first, last; /* kernels (inclusive) during which the block is live */
};

/* Appends a block of `bytes` rounded up to `align`, live from kernel first to last, to the
 * growable array *blocks (*n used, *cap allocated). Returns its index, or -1 when out of
 * memory. */
int etf__arena_add(struct etf_arena_block **blocks, size_t *n, size_t *cap, size_t align,
                   size_t bytes, size_t first, size_t last);

/* Sets every block's offset by greedy first fit, largest block first: a block goes at the
 * lowest offset where it overlaps no placed block that is live at the same time. *total is
 * the arena's size. Returns 0 or ETF_ENOMEM. */
int etf__arena_place(struct etf_arena_block *blocks, size_t n, size_t *total);

#endif
