// The persistent pool behind vlq_pool_run (include/vlq_pool.h).
//
// Tasks are handed out through one atomic ticket holding the loop's number, its task count and the next
// task index: a worker that wakes late, after its loop is over, finds another loop's number (or no task
// left) and takes nothing, so a new loop's body is only ever run for that loop's tasks.
#include "vlq_pool.h"

#include <pthread.h>
#include <stdatomic.h>

#define MAX_WORKERS 255
#define MAX_TASKS 0xFFFFF
// About 100 microseconds of polling before a worker sleeps: decode's loops follow each other closer
// than that, so workers are awake for the next one; between tokens and in idle programs they sleep.
#define SPIN_ROUNDS 20000

static pthread_mutex_t busy = PTHREAD_MUTEX_INITIALIZER;  // one loop at a time
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;  // guards sleeping workers
static pthread_cond_t wake = PTHREAD_COND_INITIALIZER;
static int workers = 0;
static unsigned long loops = 0;  // under `busy`

static void (*job_body)(void *, int);
static void *job_context;
static _Atomic unsigned long generation = 0;  // the last loop started: workers wait for it to change
static _Atomic unsigned long long ticket = 0;  // loop:24 | tasks:20 | next index:20
static _Atomic int done_tasks = 0;

static inline unsigned long long pack(unsigned long loop, unsigned tasks, unsigned index) {
    return ((unsigned long long)(loop & 0xFFFFFF) << 40) | ((unsigned long long)tasks << 20) | index;
}

static inline void relax(void) {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/// Runs tasks of loop `loop` until none is left.
static void claim_tasks(unsigned long loop) {
    for (;;) {
        unsigned long long current = atomic_load_explicit(&ticket, memory_order_acquire);
        if ((current >> 40) != (loop & 0xFFFFFF)) return;
        unsigned tasks = (unsigned)(current >> 20) & MAX_TASKS, index = (unsigned)current & MAX_TASKS;
        if (index >= tasks) return;
        if (!atomic_compare_exchange_weak_explicit(
                &ticket, &current, current + 1, memory_order_acq_rel, memory_order_acquire))
            continue;
        job_body(job_context, (int)index);
        atomic_fetch_add_explicit(&done_tasks, 1, memory_order_acq_rel);
    }
}

static void *worker_main(void *unused) {
    (void)unused;
    unsigned long seen = atomic_load_explicit(&generation, memory_order_acquire);
    for (;;) {
        unsigned long now = seen;
        for (int i = 0; i < SPIN_ROUNDS && now == seen; i++) {
            relax();
            now = atomic_load_explicit(&generation, memory_order_acquire);
        }
        if (now == seen) {
            pthread_mutex_lock(&lock);
            while ((now = atomic_load_explicit(&generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&wake, &lock);
            pthread_mutex_unlock(&lock);
        }
        seen = now;
        claim_tasks(now);
    }
    return 0;
}

int vlq_pool_run(int tasks, int threads, void (*body)(void *, int), void *context) {
    if (tasks < 1 || tasks > MAX_TASKS) return 0;
    if (pthread_mutex_trylock(&busy) != 0) return 0;
    int wanted = threads - 1 < MAX_WORKERS ? threads - 1 : MAX_WORKERS;
    while (workers < wanted) {
        pthread_t thread;
        if (pthread_create(&thread, 0, worker_main, 0) != 0) break;
        pthread_detach(thread);
        workers += 1;
    }
    unsigned long loop = ++loops;
    job_body = body;
    job_context = context;
    atomic_store_explicit(&done_tasks, 0, memory_order_release);
    atomic_store_explicit(&ticket, pack(loop, (unsigned)tasks, 0), memory_order_release);
    pthread_mutex_lock(&lock);
    atomic_store_explicit(&generation, loop, memory_order_release);
    pthread_cond_broadcast(&wake);
    pthread_mutex_unlock(&lock);
    claim_tasks(loop);
    while (atomic_load_explicit(&done_tasks, memory_order_acquire) < tasks) relax();
    pthread_mutex_unlock(&busy);
    return 1;
}
