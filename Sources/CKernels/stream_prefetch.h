// Software prefetch of a decode kernel's weight stream (kernels.c, sliced.c): each step asks for the line
// STREAM_PREFETCH_BYTES ahead of the codes it reads, into L2 (hint T1). The hardware prefetchers alone kept
// too few lines in flight when this VM's memory answered slowly: two threads running the q8 kernel over
// 22 matrices of 11008 x 4096 (968 MB, 4 KiB file pages) read 15-16 GB/s where a plain read of the same
// pages reached 30; with this, 28-29 (4096 and 8192 bytes ahead alike; 2048: 22; T0, into L1: no better
// than T1; tools/decode_kernel_bench.c's figures one core at a time do not show it). Elsewhere than x86-64
// nothing is prefetched (not measured there).
#ifndef VLQ_STREAM_PREFETCH_H
#define VLQ_STREAM_PREFETCH_H

#define STREAM_PREFETCH_BYTES 8192

#if defined(__x86_64__)
#include <immintrin.h>
#define STREAM_PREFETCH(p) _mm_prefetch((const char *)(p) + STREAM_PREFETCH_BYTES, _MM_HINT_T1)
#else
#define STREAM_PREFETCH(p) ((void)0)
#endif

#endif
