/* Large memory copies shared among a few threads (copier.h).
 *
 * One copy at a time: the caller publishes the job under `lock` with a new generation
 * number, copies its own share, and waits until every helper has reported its share done.
 * Shares are contiguous ranges of cache-line multiples, so no two threads write one line. */
#include "util/copier.h"

#include "etf/etf.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SHARE_ALIGN 64

struct etf__copier {
    pthread_mutex_t job_lock; /* held by the caller for a whole copy: one copy at a time */
    pthread_mutex_t lock;     /* guards everything below */
    pthread_cond_t start, done;
    uint64_t generation; /* bumped for each copy the helpers take part in */
    unsigned pending;    /* helpers whose share of the current copy is not done */
    bool stopping;
    char *dst;
    const char *src;
    size_t bytes;
    unsigned threads; /* the caller and the helpers */
    unsigned started; /* helpers running */
    pthread_t helpers[ETF_COPIER_MAX_THREADS - 1];
};

struct helper_arg {
    struct etf__copier *c;
    unsigned index; /* 1..threads-1: the caller's share is 0 */
};

/* Copies share `index` of the current job: a range of whole cache lines, the last one
 * short. */
static void copy_share(char *dst, const char *src, size_t bytes, unsigned threads, unsigned index)
{
    size_t share = (bytes + threads - 1) / threads;
    share = (share + SHARE_ALIGN - 1) / SHARE_ALIGN * SHARE_ALIGN;
    size_t begin = share * index;
    if (begin >= bytes)
        return;
    size_t end = bytes - begin < share ? bytes : begin + share;
    memcpy(dst + begin, src + begin, end - begin);
}

static void *helper_main(void *argp)
{
    struct helper_arg arg = *(struct helper_arg *)argp;
    free(argp);
    struct etf__copier *c = arg.c;
    uint64_t seen = 0;
    pthread_mutex_lock(&c->lock);
    for (;;) {
        while (c->generation == seen && !c->stopping)
            pthread_cond_wait(&c->start, &c->lock);
        if (c->stopping)
            break;
        seen = c->generation;
        char *dst = c->dst;
        const char *src = c->src;
        size_t bytes = c->bytes;
        pthread_mutex_unlock(&c->lock);
        copy_share(dst, src, bytes, c->threads, arg.index);
        pthread_mutex_lock(&c->lock);
        if (--c->pending == 0)
            pthread_cond_signal(&c->done);
    }
    pthread_mutex_unlock(&c->lock);
    return NULL;
}

int etf__copier_create(unsigned threads, struct etf__copier **out)
{
    *out = NULL;
    if (threads > ETF_COPIER_MAX_THREADS)
        return ETF_EINVAL;
    struct etf__copier *c = calloc(1, sizeof *c);
    if (!c)
        return ETF_ENOMEM;
    c->threads = threads ? threads : 1;
    pthread_mutex_init(&c->job_lock, NULL);
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->start, NULL);
    pthread_cond_init(&c->done, NULL);
    for (unsigned i = 1; i < c->threads; i++) {
        struct helper_arg *arg = malloc(sizeof *arg);
        if (arg)
            *arg = (struct helper_arg){.c = c, .index = i};
        if (!arg || pthread_create(&c->helpers[c->started], NULL, helper_main, arg) != 0) {
            free(arg);
            etf__copier_destroy(c);
            return ETF_ENOMEM;
        }
        c->started++;
    }
    *out = c;
    return 0;
}

void etf__copier_copy(struct etf__copier *c, void *dst, const void *src, size_t bytes)
{
    if (!c || c->threads == 1 || bytes < ETF_COPIER_MIN_SPLIT) {
        if (bytes)
            memcpy(dst, src, bytes);
        return;
    }
    pthread_mutex_lock(&c->job_lock);
    pthread_mutex_lock(&c->lock);
    c->dst = dst;
    c->src = src;
    c->bytes = bytes;
    c->pending = c->threads - 1;
    c->generation++;
    pthread_cond_broadcast(&c->start);
    pthread_mutex_unlock(&c->lock);
    copy_share(dst, src, bytes, c->threads, 0);
    pthread_mutex_lock(&c->lock);
    while (c->pending)
        pthread_cond_wait(&c->done, &c->lock);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_unlock(&c->job_lock);
}

unsigned etf__copier_threads(const struct etf__copier *c)
{
    return c ? c->threads : 1;
}

void etf__copier_destroy(struct etf__copier *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = true;
    pthread_cond_broadcast(&c->start);
    pthread_mutex_unlock(&c->lock);
    for (unsigned i = 0; i < c->started; i++)
        pthread_join(c->helpers[i], NULL);
    pthread_cond_destroy(&c->done);
    pthread_cond_destroy(&c->start);
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->job_lock);
    free(c);
}
