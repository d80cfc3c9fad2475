/* Growable arrays: the one growth policy (doubling, with a first capacity) of the arrays
 * that builders and tables append to. */
#ifndef ETF_UTIL_ARRAY_H
#define ETF_UTIL_ARRAY_H

#include <stddef.h>

/* Makes room for element n of the array whose pointer is at arrayp (a `T **`, passed as
 * void *), of *cap elements of elem bytes: when n == *cap, the array is reallocated to
 * twice *cap (first when *cap is 0) and *cap updated. Returns 0, or ETF_ENOMEM with the
 * array and *cap untouched (also when the size would overflow). */
int etf__reserve(void *arrayp, size_t n, size_t *cap, size_t elem, size_t first);

#endif
