/* Id → object maps for the scheduler's entities and models.
 *
 * Ids are handed out in increasing order from 1 and never reused, so a stale id from a
 * client can never reach a newer object. Because ids only grow, the map is a sorted array:
 * lookup is a binary search, insertion an append, removal a tombstone that a compaction
 * clears once half the slots are dead. Not thread-safe: callers lock.
 */
#ifndef ETF_UTIL_IDMAP_H
#define ETF_UTIL_IDMAP_H

#include <stddef.h>
#include <stdint.h>

struct etf_idmap {
    uint64_t *ids;
    void **items; /* NULL for removed ids */
    size_t n, cap, live;
    uint64_t last_id;
};

void etf__idmap_init(struct etf_idmap *map);
void etf__idmap_fini(struct etf_idmap *map);
/* Stores item under a new id. Returns 0 or ETF_ENOMEM. */
int etf__idmap_add(struct etf_idmap *map, void *item, uint64_t *id);
void *etf__idmap_get(const struct etf_idmap *map, uint64_t id);
/* Removes and returns the item, or NULL if the id is unknown. */
void *etf__idmap_remove(struct etf_idmap *map, uint64_t id);
/* The i-th slot for iteration in id order (0 <= i < map->n); NULL when removed. */
static inline void *etf__idmap_slot(const struct etf_idmap *map, size_t i)
{
    return map->items[i];
}

#endif
