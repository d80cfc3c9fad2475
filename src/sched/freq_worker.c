/* The clock-switching thread (freq_worker.h). */
#include "sched/freq_worker.h"

#include "etf/etf.h"
#include "freq/freq.h"

/* A request is posted and its result not in yet. Under w->lock. */
static bool pending(const struct etf_freq_worker *w)
{
    return w->posted && !w->done;
}

static void *worker_main(void *arg)
{
    struct etf_freq_worker *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->stopping && !pending(w))
            pthread_cond_wait(&w->cond, &w->lock);
        if (!pending(w))
            break; /* stopping, with nothing left to do */
        uint64_t hz = w->hz;
        pthread_mutex_unlock(&w->lock);
        /* The controller's own settling wait (devfreq, cpufreq: cur_freq following) happens
         * here, off the dispatching thread. */
        int rc = etf__freq_set(w->freq, hz);
        pthread_mutex_lock(&w->lock);
        w->rc = rc;
        w->done = true;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

int etf__freq_worker_start(struct etf_freq_worker *w, struct etf_freq *f)
{
    *w = (struct etf_freq_worker){.freq = f};
    if (pthread_mutex_init(&w->lock, NULL))
        return ETF_ENOMEM;
    if (pthread_cond_init(&w->cond, NULL))
        goto fail_lock;
    if (pthread_create(&w->thread, NULL, worker_main, w))
        goto fail_cond;
    return 0;

fail_cond:
    pthread_cond_destroy(&w->cond);
fail_lock:
    pthread_mutex_destroy(&w->lock);
    return ETF_ENOMEM;
}

void etf__freq_worker_post(struct etf_freq_worker *w, uint64_t hz)
{
    pthread_mutex_lock(&w->lock);
    w->hz = hz;
    w->posted = true;
    w->done = false;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int etf__freq_worker_wait(struct etf_freq_worker *w)
{
    pthread_mutex_lock(&w->lock);
    while (pending(w))
        pthread_cond_wait(&w->cond, &w->lock);
    int rc = w->posted ? w->rc : 0;
    w->posted = false;
    pthread_mutex_unlock(&w->lock);
    return rc;
}

void etf__freq_worker_stop(struct etf_freq_worker *w)
{
    etf__freq_worker_wait(w);
    pthread_mutex_lock(&w->lock);
    w->stopping = true;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
}
