/* The incremental ETF allocation: a power-ordered treap with subtree sums (see
 * share_tree.h). */
#include "sched/share_tree.h"

#include <math.h>
#include <stdbool.h>

static uint64_t mix(uint64_t x)
{
    /* splitmix64's finaliser: a fixed, well-spread priority per sequence number */
    x += 0x9e3779b97f4a7c15u;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

static bool before(const struct etf_share_node *a, const struct etf_share_node *b)
{
    if (a->power_mw != b->power_mw)
        return a->power_mw < b->power_mw;
    return a->seq < b->seq;
}

static double sum_weight(const struct etf_share_node *n)
{
    return n ? n->sum_weight : 0;
}

static double sum_capacity(const struct etf_share_node *n)
{
    return n ? n->sum_capacity : 0;
}

static void pull(struct etf_share_node *n)
{
    n->sum_weight = sum_weight(n->left) + n->weight + sum_weight(n->right);
    n->sum_capacity = sum_capacity(n->left) + n->weight / n->power_mw + sum_capacity(n->right);
}

/* Splits t into the nodes before `key` (*lo) and the others (*hi). */
static void split(struct etf_share_node *t, const struct etf_share_node *key,
                  struct etf_share_node **lo, struct etf_share_node **hi)
{
    if (!t) {
        *lo = *hi = NULL;
    } else if (before(t, key)) {
        split(t->right, key, &t->right, hi);
        pull(t);
        *lo = t;
    } else {
        split(t->left, key, lo, &t->left);
        pull(t);
        *hi = t;
    }
}

/* Joins two treaps where every node of a comes before every node of b. */
static struct etf_share_node *join(struct etf_share_node *a, struct etf_share_node *b)
{
    if (!a)
        return b;
    if (!b)
        return a;
    if (a->prio > b->prio) {
        a->right = join(a->right, b);
        pull(a);
        return a;
    }
    b->left = join(a, b->left);
    pull(b);
    return b;
}

static struct etf_share_node *insert(struct etf_share_node *t, struct etf_share_node *node)
{
    if (!t)
        return node;
    if (node->prio > t->prio) {
        split(t, node, &node->left, &node->right);
        pull(node);
        return node;
    }
    if (before(node, t))
        t->left = insert(t->left, node);
    else
        t->right = insert(t->right, node);
    pull(t);
    return t;
}

static struct etf_share_node *remove_node(struct etf_share_node *t, struct etf_share_node *node)
{
    if (t == node)
        return join(t->left, t->right);
    if (before(node, t))
        t->left = remove_node(t->left, node);
    else
        t->right = remove_node(t->right, node);
    pull(t);
    return t;
}

void etf__share_init(struct etf_share_tree *t)
{
    t->root = NULL;
    t->n = 0;
}

void etf__share_insert(struct etf_share_tree *t, struct etf_share_node *node)
{
    node->left = node->right = NULL;
    node->prio = mix(node->seq);
    pull(node);
    t->root = insert(t->root, node);
    t->n++;
}

void etf__share_remove(struct etf_share_tree *t, struct etf_share_node *node)
{
    t->root = remove_node(t->root, node);
    node->left = node->right = NULL;
    t->n--;
}

struct etf_share_level etf__share_level(const struct etf_share_tree *t, double phi,
                                        double quantum_ns)
{
    double total_weight = sum_weight(t->root);
    struct etf_share_level lv = {.floor_per_weight = phi * quantum_ns / total_weight};
    if (phi >= 1)
        return lv;
    /* Descend in power order, keeping the sums of the entities before the current node.
     * Raising exactly those to a common energy would reach
     *     L = (Q - floor_per_weight * (W - W_before)) / A_before,
     * and the current node is raised too iff its floor energy P * floor_per_weight < L. */
    double w_before = 0, a_before = 0;
    const struct etf_share_node *n = t->root;
    while (n) {
        double w = w_before + sum_weight(n->left);
        double a = a_before + sum_capacity(n->left);
        double reach = a > 0 ? (quantum_ns - lv.floor_per_weight * (total_weight - w)) / a
                             : INFINITY;
        if (n->power_mw * lv.floor_per_weight < reach) {
            w_before = w + n->weight;
            a_before = a + n->weight / n->power_mw;
            n = n->right;
        } else {
            n = n->left;
        }
    }
    lv.level = (quantum_ns - lv.floor_per_weight * (total_weight - w_before)) / a_before;
    return lv;
}

double etf__share_slice(const struct etf_share_level *lv, double weight, double power_mw)
{
    double floor = lv->floor_per_weight * weight;
    double raised = lv->level * weight / power_mw;
    return raised > floor ? raised : floor;
}
