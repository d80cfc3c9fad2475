/* Sorted-array id maps (see idmap.h). */
#include "util/idmap.h"

#include "etf/etf.h"

#include <stdlib.h>

void etf__idmap_init(struct etf_idmap *map)
{
    *map = (struct etf_idmap){0};
}

void etf__idmap_fini(struct etf_idmap *map)
{
    free(map->ids);
    free(map->items);
    etf__idmap_init(map);
}

static void compact(struct etf_idmap *map)
{
    size_t kept = 0;
    for (size_t i = 0; i < map->n; i++) {
        if (map->items[i]) {
            map->ids[kept] = map->ids[i];
            map->items[kept] = map->items[i];
            kept++;
        }
    }
    map->n = kept;
}

int etf__idmap_add(struct etf_idmap *map, void *item, uint64_t *id)
{
    if (map->n == map->cap && map->live < map->n)
        compact(map);
    if (map->n == map->cap) {
        size_t cap = map->cap ? map->cap * 2 : 16;
        uint64_t *ids = realloc(map->ids, cap * sizeof *ids);
        if (!ids)
            return ETF_ENOMEM;
        map->ids = ids;
        void **items = realloc(map->items, cap * sizeof *items);
        if (!items)
            return ETF_ENOMEM;
        map->items = items;
        map->cap = cap;
    }
    map->ids[map->n] = ++map->last_id;
    map->items[map->n] = item;
    map->n++;
    map->live++;
    *id = map->last_id;
    return 0;
}

static long find(const struct etf_idmap *map, uint64_t id)
{
    size_t lo = 0, hi = map->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (map->ids[mid] < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < map->n && map->ids[lo] == id && map->items[lo] ? (long)lo : -1;
}

void *etf__idmap_get(const struct etf_idmap *map, uint64_t id)
{
    long i = find(map, id);
    return i < 0 ? NULL : map->items[i];
}

void *etf__idmap_remove(struct etf_idmap *map, uint64_t id)
{
    long i = find(map, id);
    if (i < 0)
        return NULL;
    void *item = map->items[i];
    map->items[i] = NULL;
    map->live--;
    if (map->n > 64 && map->live < map->n / 2)
        compact(map);
    return item;
}
