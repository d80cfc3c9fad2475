/* Big buffers (see bigmem.h). */
/* MAP_ANONYMOUS and the madvise advice are not POSIX: glibc declares them with this. */
#define _DEFAULT_SOURCE

#include "util/bigmem.h"

#include <stdint.h>
#include <sys/mman.h>
#include <unistd.h>

#define HUGE_PAGE ((size_t)2 << 20)

static size_t page_size(void)
{
    long p = sysconf(_SC_PAGESIZE);
    return p > 0 ? (size_t)p : 4096;
}

void *etf__bigmem_alloc(size_t bytes, bool populate)
{
    if (bytes == 0 || bytes > SIZE_MAX / 2)
        return NULL;
    size_t page = page_size();
    size_t len = (bytes + page - 1) / page * page;
    bool huge = len >= HUGE_PAGE;
    /* Over-map by one huge page and trim, so that the buffer starts on a huge page. */
    size_t span = huge ? len + HUGE_PAGE : len;
    char *raw = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED)
        return NULL;
    char *p = raw;
    if (huge) {
        p = (char *)(((uintptr_t)raw + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
        if (p > raw)
            munmap(raw, (size_t)(p - raw));
        if (raw + span > p + len)
            munmap(p + len, (size_t)(raw + span - (p + len)));
        /* Advice only: without THP the buffer works the same, only slower to fault in. */
        madvise(p, len, MADV_HUGEPAGE);
    }
    if (populate) {
        int rc = -1;
#ifdef MADV_POPULATE_WRITE
        rc = madvise(p, len, MADV_POPULATE_WRITE);
#endif
        if (rc != 0) /* a kernel before 5.14: one write per page does the same */
            for (size_t off = 0; off < len; off += page)
                ((volatile char *)p)[off] = 0;
    }
    return p;
}

void etf__bigmem_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes);
}

void etf__bigmem_release(void *buf, size_t buf_bytes, void *p, size_t bytes)
{
    size_t page = page_size();
    uintptr_t lo = ((uintptr_t)p + page - 1) & ~(uintptr_t)(page - 1);
    uintptr_t hi = ((uintptr_t)p + bytes) & ~(uintptr_t)(page - 1);
    /* The huge pages of the buffer: its start to its last 2 MiB boundary (see alloc). */
    uintptr_t huge_end = buf_bytes >= HUGE_PAGE ? (uintptr_t)buf + buf_bytes / HUGE_PAGE * HUGE_PAGE
                                                : (uintptr_t)buf;
    if (lo < huge_end) {
        /* Whole huge pages only: giving back part of one splits it, which costs more than
         * the pages are worth (the rest goes with a later call that covers it all). */
        uintptr_t hlo = (lo + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1);
        uintptr_t hhi = (hi < huge_end ? hi : huge_end) & ~(uintptr_t)(HUGE_PAGE - 1);
        if (hhi > hlo)
            madvise((void *)hlo, hhi - hlo, MADV_DONTNEED);
        lo = huge_end;
    }
    if (hi > lo)
        madvise((void *)lo, hi - lo, MADV_DONTNEED);
}
