/* Growable arrays (array.h). */
#include "util/array.h"

#include "etf/etf.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int etf__reserve(void *arrayp, size_t n, size_t *cap, size_t elem, size_t first)
{
    if (n < *cap)
        return 0;
    size_t want = *cap ? *cap * 2 : first;
    if (want <= n || *cap > SIZE_MAX / 2 || want > SIZE_MAX / elem)
        return ETF_ENOMEM;
    void *v;
    memcpy(&v, arrayp, sizeof v); /* through memcpy: arrayp points at a T *, not a void * */
    void *grown = realloc(v, want * elem);
    if (!grown)
        return ETF_ENOMEM;
    memcpy(arrayp, &grown, sizeof grown);
    *cap = want;
    return 0;
}
