// A small persistent thread pool for the engine's short parallel loops (decode runs ~30 of them per
// token, each a millisecond or less): waking libdispatch's parked workers for every loop cost more
// than the loop itself on a 2-core VM. Workers spin briefly after each loop, then sleep on a condition.
#ifndef VLQ_POOL_H
#define VLQ_POOL_H

#ifdef __cplusplus
extern "C" {
#endif

/// Runs body(context, t) for t in 0 ..< tasks on the calling thread and up to `threads - 1` pool workers;
/// returns when all are done. Tasks are claimed one at a time, so the caller never waits for a worker
/// that has not started. Returns 0 when the pool is busy (another caller's loop, or a nested one): the
/// caller then runs the loop another way.
int vlq_pool_run(int tasks, int threads, void (*body)(void *context, int task), void *context);

#ifdef __cplusplus
}
#endif

#endif
