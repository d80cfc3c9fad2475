/* A thread that switches the device clock for the dispatcher, so that the dispatcher does
 * its host work (completing the kernels that ran at the old clock, handing their tasks
 * back) while the controller writes the new clock and waits for it to show, and waits only
 * when its next kernel needs that clock.
 *
 * One request at a time: post, then wait, from the dispatching thread only. The worker is
 * used on the real clock alone; the simulator switches synchronously (no threads).
 */
#ifndef ETF_SCHED_FREQ_WORKER_H
#define ETF_SCHED_FREQ_WORKER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

struct etf_freq;

struct etf_freq_worker {
    struct etf_freq *freq;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    uint64_t hz;  /* the request */
    bool posted;  /* a request waits for the worker or runs */
    bool done;    /* the request's result is in rc */
    bool stopping;
    int rc;
};

/* Starts the worker for controller f. Returns 0 or ETF_ENOMEM. */
int etf__freq_worker_start(struct etf_freq_worker *w, struct etf_freq *f);
/* Asks for the clock hz; returns at once. No request may be outstanding. */
void etf__freq_worker_post(struct etf_freq_worker *w, uint64_t hz);
/* Waits for the outstanding request and returns the controller's result (0 when no request
 * is outstanding). */
int etf__freq_worker_wait(struct etf_freq_worker *w);
/* Waits for an outstanding request, then ends the thread. */
void etf__freq_worker_stop(struct etf_freq_worker *w);

#endif
