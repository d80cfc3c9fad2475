/* Arena planning shared by the CPU and CUDA devices (see arena.h). */
#include "device/arena.h"

#include "etf/etf.h"
#include "util/array.h"

#include <stdlib.h>

int etf__arena_add(struct etf_arena_block **blocks, size_t *n, size_t *cap, size_t align,
                   size_t bytes, size_t first, size_t last)
{
    if (etf__reserve(blocks, *n, cap, sizeof **blocks, 64))
        return -1;
    (*blocks)[*n] = (struct etf_arena_block){
        .bytes = (bytes + align - 1) / align * align,
        .first = first,
        .last = last,
    };
    return (int)(*n)++;
}

int etf__arena_place(struct etf_arena_block *bl, size_t n, size_t *total)
{
    size_t *order = malloc((n ? n : 1) * sizeof *order);
    size_t *conf = malloc((n ? n : 1) * sizeof *conf);
    if (!order || !conf) {
        free(order);
        free(conf);
        return ETF_ENOMEM;
    }
    /* Insertion sorts throughout: stable, and models have hundreds of blocks. */
    for (size_t i = 0; i < n; i++) {
        size_t j = i;
        while (j > 0 && bl[order[j - 1]].bytes < bl[i].bytes) {
            order[j] = order[j - 1];
            j--;
        }
        order[j] = i;
    }
    size_t end = 0;
    for (size_t oi = 0; oi < n; oi++) {
        struct etf_arena_block *cur = &bl[order[oi]];
        /* The blocks placed so far that are live at the same time, by offset. */
        size_t n_conf = 0;
        for (size_t pi = 0; pi < oi; pi++) {
            const struct etf_arena_block *o = &bl[order[pi]];
            if (o->first > cur->last || cur->first > o->last)
                continue;
            size_t j = n_conf++;
            while (j > 0 && bl[conf[j - 1]].offset > o->offset) {
                conf[j] = conf[j - 1];
                j--;
            }
            conf[j] = order[pi];
        }
        size_t off = 0;
        for (size_t c = 0; c < n_conf; c++) {
            const struct etf_arena_block *o = &bl[conf[c]];
            if (off + cur->bytes <= o->offset)
                break;
            if (o->offset + o->bytes > off)
                off = o->offset + o->bytes;
        }
        cur->offset = off;
        if (off + cur->bytes > end)
            end = off + cur->bytes;
    }
    free(order);
    free(conf);
    *total = end;
    return 0;
}
