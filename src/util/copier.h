/* Large memory copies shared among a few threads. One thread copies host memory at a
 * fraction of what the memory system can do (on the GPU machine, about 7 GB/s of the tens a
 * socket sustains), and the CUDA device copies every task's inputs into pinned staging
 * buffers and its outputs back out on the critical path of the task's latency: a batch-32
 * image batch is 19 MB. Splitting such a copy among a few threads takes most of that time
 * off the path. */
#ifndef ETF_UTIL_COPIER_H
#define ETF_UTIL_COPIER_H

#include <stddef.h>

struct etf__copier;

/* Copies of fewer bytes than this run on the calling thread alone: waking the helpers costs
 * tens of microseconds. */
#define ETF_COPIER_MIN_SPLIT ((size_t)1 << 20)

/* A copier whose copies run on `threads` threads in all: the caller and threads - 1 helpers
 * started here (threads <= 1 starts none: every copy is a memcpy). Returns 0, ETF_ENOMEM,
 * or ETF_EINVAL (more than ETF_COPIER_MAX_THREADS). */
#define ETF_COPIER_MAX_THREADS 16
int etf__copier_create(unsigned threads, struct etf__copier **out);

/* memcpy(dst, src, bytes), split among the threads when bytes >= ETF_COPIER_MIN_SPLIT;
 * returns when the whole copy is done. Safe to call from several threads (copies then run
 * one after the other). c may be NULL: a memcpy. */
void etf__copier_copy(struct etf__copier *c, void *dst, const void *src, size_t bytes);

/* The number of threads a copy runs on (1 for NULL). */
unsigned etf__copier_threads(const struct etf__copier *c);

/* Stops and joins the helpers. NULL is fine. */
void etf__copier_destroy(struct etf__copier *c);

#endif
