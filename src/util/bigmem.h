/* Big buffers: model files and their weights, the devices' reordered weights and activation
 * arenas.
 *
 * On these VMs a fresh 4 KiB page costs ~11 µs to fault in (a 100 MB buffer: ~290 ms), and
 * a buffer mapped with small pages stays slow to walk afterwards (TLB misses: ~50 ms more
 * per pass over 100 MB). A transparent huge page (2 MiB) faults in at about the cost of
 * clearing it: ~5 ms per 100 MB, and later passes run at memory speed. So big buffers are
 * anonymous mappings aligned to 2 MiB and advised MADV_HUGEPAGE (Debian's kernels enable
 * THP on madvise only). Being mappings, they can also give back whole pages in the middle
 * (etf__bigmem_release), which malloc'd memory cannot.
 */
#ifndef ETF_UTIL_BIGMEM_H
#define ETF_UTIL_BIGMEM_H

#include <stdbool.h>
#include <stddef.h>

/* `bytes` (> 0) of zeroed memory, 2 MiB-aligned when at least that big; NULL when out of
 * memory. populate: fault every page in now, so that the first use does not. Freed with
 * etf__bigmem_free(p, bytes). */
void *etf__bigmem_alloc(size_t bytes, bool populate);
void etf__bigmem_free(void *p, size_t bytes);

/* Gives the whole pages inside [p, p + bytes), part of the big buffer [buf, buf + buf_bytes),
 * back to the system; they read as zeros afterwards (and take memory again if written).
 * Where the buffer has huge pages only whole ones go: up to 2 MiB at either end stay until
 * a call that covers their huge page. */
void etf__bigmem_release(void *buf, size_t buf_bytes, void *p, size_t bytes);

#endif
