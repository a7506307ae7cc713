// Decode matrix-vector kernels (include/vlq_kernels.h). Each group's scale multiplies that group's
// partial sum once; q4's and q3's bias multiplies the group's sum of x once (value = code * scale + bias).
// The vector kernels take ROW_BLOCK rows per pass. On x86-64 that is one: a decode product streams its
// weights from memory, and one row at a time is one sequential stream per core, which the hardware
// prefetchers follow at about twice the rate of four interleaved rows (tools/decode_kernel_bench.c on an
// 11008 x 4096 matrix, one core: q4 with int8 x 7.4 -> 14 GB/s, q4 4.4 -> 8 GB/s); the sums, row by row,
// are the same. Elsewhere (NEON) four rows share each load of x.
// Each step prefetches the weights 8 KiB ahead into L2 (stream_prefetch.h); into L1 at 256 to 2048 bytes
// ahead it had measured no faster, or 5-25% slower.
#include "vlq_kernels.h"

#include <math.h>
#include <string.h>

#include "half_floats.h"
#include "stream_prefetch.h"

// MARK: Portable versions (also the tails of the vector ones).

// Eight independent partial sums, so that the compiler may vectorise without reassociating.
#define LANES 8

static void bf16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {
    for (size_t r = begin; r < end; r++) {
        const uint16_t *row = w + r * cols;
        float acc[LANES] = {0};
        size_t j = 0;
        for (; j + LANES <= cols; j += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += vlq_bf16_to_float(row[j + l]) * x[j + l];
        float s = 0;
        for (int l = 0; l < LANES; l++) s += acc[l];
        for (; j < cols; j++) s += vlq_bf16_to_float(row[j]) * x[j];
        y[r] = s;
    }
}

static void f16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {
    for (size_t r = begin; r < end; r++) {
        const uint16_t *row = w + r * cols;
        float s = 0;
        for (size_t j = 0; j < cols; j++) s += vlq_f16_to_float(row[j]) * x[j];
        y[r] = s;
    }
}

static void q8_scalar(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x, float *y,
                      size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float acc[LANES] = {0};
            size_t j = k * group, stop = j + group;
            for (; j + LANES <= stop; j += LANES)
                for (int l = 0; l < LANES; l++) acc[l] += (float)row[j + l] * x[j + l];
            float partial = 0;
            for (int l = 0; l < LANES; l++) partial += acc[l];
            for (; j < stop; j++) partial += (float)row[j] * x[j];
            total += partial * vlq_f16_to_float(scales[r * groups + k]);
        }
        y[r] = total;
    }
}

static void q4_scalar(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                      const float *x, const float *sums, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float partial = 0;
            for (size_t j = k * group; j < (k + 1) * group; j += 2) {
                uint8_t b = row[j / 2];
                partial += (float)(b & 0x0F) * x[j] + (float)(b >> 4) * x[j + 1];
            }
            float scale = vlq_f16_to_float(scales[r * groups + k]);
            float bias = biases ? vlq_f16_to_float(biases[r * groups + k]) : -8 * scale;
            total += scale * partial + bias * sums[k];
        }
        y[r] = total;
    }
}

// q3 (formats/VLQ-BUNDLE.md, section 5): blocks of 32 codes in 12 bytes, groups whole blocks. Code e of a
// block: its low two bits at bits 2 (e / 8) of byte e % 8, its high bit at bit e % 8 of byte 8 + e / 8.
enum { Q3_BLOCK = 32, Q3_BLOCK_BYTES = 12 };

static inline float q3_code(const uint8_t *block, size_t e) {
    return (float)(((block[e % 8] >> (2 * (e / 8))) & 3) | (((block[8 + e / 8] >> (e % 8)) & 1) << 2));
}

static void q3_scalar(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                      const float *x, const float *sums, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * (cols / Q3_BLOCK) * Q3_BLOCK_BYTES;
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float partial = 0;
            for (size_t j = k * group; j < (k + 1) * group; j += Q3_BLOCK) {
                const uint8_t *block = row + j / Q3_BLOCK * Q3_BLOCK_BYTES;
                for (size_t e = 0; e < Q3_BLOCK; e++) partial += q3_code(block, e) * x[j + e];
            }
            total += vlq_f16_to_float(scales[r * groups + k]) * partial +
                     vlq_f16_to_float(biases[r * groups + k]) * sums[k];
        }
        y[r] = total;
    }
}

// Rows per pass of the vector kernels (see the top of the file).
#if defined(__x86_64__)
enum { ROW_BLOCK = 1 };
#else
enum { ROW_BLOCK = 4 };
#endif

#define ALWAYS_INLINE __attribute__((always_inline)) inline

// MARK: x86-64: AVX2, FMA, F16C.

#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>
#define VLQ_AVX2 __attribute__((target("avx2,fma,f16c")))

VLQ_AVX2 static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

VLQ_AVX2 static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

VLQ_AVX2 static inline float half_scalar(uint16_t h) { return vlq_f16_to_float_f16c(h); }

VLQ_AVX2 static inline __m256 sum4(const __m256 a[4]) {
    return _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
}

// R (1 or ROW_BLOCK, a constant once inlined) rows from r on; 16 columns per step, two sums per row.
#define HALF_ROWS(name, load, convert)                                                                            \
    VLQ_AVX2 static ALWAYS_INLINE void name##_rows(const uint16_t *w, size_t cols, const float *x, float *y,      \
                                                   size_t r, const int R) {                                      \
        __m256 a[ROW_BLOCK][2];                                                                                   \
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();                                      \
        size_t j = 0;                                                                                             \
        for (; j + 16 <= cols; j += 16) {                                                                         \
            __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);                                  \
            for (int i = 0; i < R; i++) {                                                                         \
                const uint16_t *p = w + (r + i) * cols + j;                                                       \
                STREAM_PREFETCH(p);                                                                               \
                a[i][0] = _mm256_fmadd_ps(load(p), x0, a[i][0]);                                                  \
                a[i][1] = _mm256_fmadd_ps(load(p + 8), x1, a[i][1]);                                              \
            }                                                                                                     \
        }                                                                                                         \
        for (; j + 8 <= cols; j += 8)                                                                             \
            for (int i = 0; i < R; i++)                                                                           \
                a[i][0] = _mm256_fmadd_ps(load(w + (r + i) * cols + j), _mm256_loadu_ps(x + j), a[i][0]);         \
        for (int i = 0; i < R; i++) {                                                                             \
            float s = hsum(_mm256_add_ps(a[i][0], a[i][1]));                                                      \
            for (size_t t = j; t < cols; t++) s += convert(w[(r + i) * cols + t]) * x[t];                         \
            y[r + i] = s;                                                                                         \
        }                                                                                                         \
    }                                                                                                             \
    VLQ_AVX2 static void name(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) { \
        size_t r = begin;                                                                                         \
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK) name##_rows(w, cols, x, y, r, ROW_BLOCK);                    \
        for (; r < end; r++) name##_rows(w, cols, x, y, r, 1);                                                    \
    }

HALF_ROWS(f16_avx2, load_f16, half_scalar)

// bf16 without widening: a 32-byte load holds 16 values, two per dword; shifted left by 16 the dwords are the
// even values as f32, masked to their high halves the odd ones. x is split to match once per call, per 16
// columns: the 8 even ones, then the 8 odd. Two integer instructions per 16 values instead of four (widen
// and shift per 8) ran 1.4x as fast (L2-resident, one core).
static void bf16_split_x(const float *x, size_t cols, float *split) {
    for (size_t b = 0; b + 16 <= cols; b += 16)
        for (int i = 0; i < 8; i++) split[b + i] = x[b + 2 * i], split[b + 8 + i] = x[b + 2 * i + 1];
}

enum { SPLIT_STACK_COLUMNS = 16384 };

VLQ_AVX2 static ALWAYS_INLINE void bf16_split_row(const uint16_t *row, size_t cols, const float *xs, const float *x,
                                                  float *y) {
    const __m256i high = _mm256_set1_epi32((int)0xFFFF0000u);
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    size_t j = 0;
    for (; j + 32 <= cols; j += 32) {
        STREAM_PREFETCH(row + j);
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + j));
        __m256i u = _mm256_loadu_si256((const __m256i *)(row + j + 16));
        a[0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xs + j), a[0]);
        a[1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(xs + j + 8), a[1]);
        a[2] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(u, 16)), _mm256_loadu_ps(xs + j + 16), a[2]);
        a[3] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(u, high)), _mm256_loadu_ps(xs + j + 24), a[3]);
    }
    for (; j + 16 <= cols; j += 16) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(row + j));
        a[0] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), _mm256_loadu_ps(xs + j), a[0]);
        a[1] = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(v, high)), _mm256_loadu_ps(xs + j + 8), a[1]);
    }
    float s = hsum(sum4(a));
    for (; j < cols; j++) s += vlq_bf16_to_float(row[j]) * x[j];
    *y = s;
}

VLQ_AVX2 static void bf16_avx2(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {
    float on_stack[SPLIT_STACK_COLUMNS];
    float *xs = cols <= SPLIT_STACK_COLUMNS ? on_stack : malloc(cols * sizeof(float));
    if (!xs) abort();
    bf16_split_x(x, cols, xs);
    for (size_t r = begin; r < end; r++) bf16_split_row(w + r * cols, cols, xs, x, y + r);
    if (xs != on_stack) free(xs);
}

VLQ_AVX2 static inline __m256 load_q8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

// Groups of a multiple of 16; 64 codes per step into four sums where the group allows (fewer loop
// instructions per code, and no FMA waiting on the one before it).
VLQ_AVX2 static ALWAYS_INLINE void q8_rows(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                           const float *x, float *y, size_t r, const int R) {
    size_t groups = cols / group;
    __m256 total[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps();
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK][4];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = a[i][2] = a[i][3] = _mm256_setzero_ps();
        size_t j = k * group, stop = j + group;
        for (; j + 64 <= stop; j += 64)
            for (int i = 0; i < R; i++) {
                const int8_t *p = codes + (r + i) * cols + j;
                STREAM_PREFETCH(p);
                for (int t = 0; t < 8; t++)
                    a[i][t % 4] = _mm256_fmadd_ps(load_q8(p + 8 * t), _mm256_loadu_ps(x + j + 8 * t), a[i][t % 4]);
            }
        for (; j < stop; j += 16)
            for (int i = 0; i < R; i++) {
                const int8_t *p = codes + (r + i) * cols + j;
                a[i][0] = _mm256_fmadd_ps(load_q8(p), _mm256_loadu_ps(x + j), a[i][0]);
                a[i][1] = _mm256_fmadd_ps(load_q8(p + 8), _mm256_loadu_ps(x + j + 8), a[i][1]);
            }
        for (int i = 0; i < R; i++) {
            __m256 scale = _mm256_set1_ps(half_scalar(scales[(r + i) * groups + k]));
            total[i] = _mm256_fmadd_ps(sum4(a[i]), scale, total[i]);
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]);
}

// Any group size: one row at a time, the group's tail in scalar code.
VLQ_AVX2 static void q8_any_group_avx2(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                       const float *x, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        __m256 total = _mm256_setzero_ps();
        float tail = 0;
        for (size_t k = 0; k < groups; k++) {
            size_t j = k * group, stop = j + group;
            __m256 a = _mm256_setzero_ps();
            for (; j + 8 <= stop; j += 8) a = _mm256_fmadd_ps(load_q8(row + j), _mm256_loadu_ps(x + j), a);
            float scale = half_scalar(scales[r * groups + k]), partial = 0;
            total = _mm256_fmadd_ps(a, _mm256_set1_ps(scale), total);
            for (; j < stop; j++) partial += (float)row[j] * x[j];
            tail += partial * scale;
        }
        y[r] = hsum(total) + tail;
    }
}

VLQ_AVX2 static void q8_avx2(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x,
                             float *y, size_t begin, size_t end) {
    if (group % 16) return q8_any_group_avx2(codes, scales, cols, group, x, y, begin, end);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK) q8_rows(codes, scales, cols, group, x, y, r, ROW_BLOCK);
    for (; r < end; r++) q8_rows(codes, scales, cols, group, x, y, r, 1);
}

// q4 sums: each row's group partial times its scale, plus the group's bias times the group's sum of x.
VLQ_AVX2 static ALWAYS_INLINE void q4_close_group(__m256 partial, const uint16_t *scales, const uint16_t *biases,
                                                  size_t g, float sum, __m256 *total, float *tail) {
    float scale = half_scalar(scales[g]);
    float bias = biases ? half_scalar(biases[g]) : -8 * scale;
    *total = _mm256_fmadd_ps(partial, _mm256_set1_ps(scale), *total);
    *tail += bias * sum;
}

// 8 codes from 4 bytes, in element order: the bytes' dword in every lane, lane l shifted right by 4 l.
VLQ_AVX2 static inline __m256 q4x8(const uint8_t *p) {
    uint32_t four;
    memcpy(&four, p, 4);
    __m256i v = _mm256_srlv_epi32(_mm256_set1_epi32((int)four), _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28));
    return _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0x0F)));
}

// Groups of a multiple of 16, x in element order.
VLQ_AVX2 static ALWAYS_INLINE void q4_rows(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                           size_t cols, size_t group, const float *x, const float *sums, float *y,
                                           size_t r, const int R) {
    size_t groups = cols / group;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK][2];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();
        for (size_t j = k * group, stop = j + group; j < stop; j += 16) {
            __m256 x0 = _mm256_loadu_ps(x + j), x1 = _mm256_loadu_ps(x + j + 8);
            for (int i = 0; i < R; i++) {
                const uint8_t *p = codes + ((r + i) * cols + j) / 2;
                a[i][0] = _mm256_fmadd_ps(q4x8(p), x0, a[i][0]);
                a[i][1] = _mm256_fmadd_ps(q4x8(p + 4), x1, a[i][1]);
            }
        }
        for (int i = 0; i < R; i++)
            q4_close_group(_mm256_add_ps(a[i][0], a[i][1]), scales, biases, (r + i) * groups + k, sums[k], &total[i],
                           &tail[i]);
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

// Codes k of 8 in every dword of a 32-byte load (64 codes): (dwords >> 4 k) & 15, whose lane d is element
// 8 d + k. x is permuted to match once per call: blocked[64 b + 8 k + d] = x[64 b + 8 d + k]. No shuffle
// per code then, which made unpacking in element order (q4_rows) about a quarter slower.
static void q4_block_x(const float *x, size_t cols, float *blocked) {
    for (size_t b = 0; b + 64 <= cols; b += 64)
        for (int k = 0; k < 8; k++)
            for (int d = 0; d < 8; d++) blocked[b + 8 * k + d] = x[b + 8 * d + k];
}

#define Q4_NIBBLES(v, shift) _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(v, shift), mask))

// 64 codes at p (32 bytes) times blocked x at q, into four sums: lanes 0-3 hold codes 0-31, lanes 4-7 codes
// 32-63. Four (and, over two chunks, eight) independent sums keep both FMA pipes busy; with two, each FMA
// waited for the previous one's result and the kernel ran at half the speed.
VLQ_AVX2 static ALWAYS_INLINE void q4_block64(const uint8_t *p, const float *q, __m256 a[4]) {
    const __m256i mask = _mm256_set1_epi32(0x0F);
    STREAM_PREFETCH(p);
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    __m256 n0 = _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
    __m256 n7 = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 28));
    a[0] = _mm256_fmadd_ps(n0, _mm256_loadu_ps(q), a[0]);
    a[1] = _mm256_fmadd_ps(Q4_NIBBLES(v, 4), _mm256_loadu_ps(q + 8), a[1]);
    a[2] = _mm256_fmadd_ps(Q4_NIBBLES(v, 8), _mm256_loadu_ps(q + 16), a[2]);
    a[3] = _mm256_fmadd_ps(Q4_NIBBLES(v, 12), _mm256_loadu_ps(q + 24), a[3]);
    a[0] = _mm256_fmadd_ps(Q4_NIBBLES(v, 16), _mm256_loadu_ps(q + 32), a[0]);
    a[1] = _mm256_fmadd_ps(Q4_NIBBLES(v, 20), _mm256_loadu_ps(q + 40), a[1]);
    a[2] = _mm256_fmadd_ps(Q4_NIBBLES(v, 24), _mm256_loadu_ps(q + 48), a[2]);
    a[3] = _mm256_fmadd_ps(n7, _mm256_loadu_ps(q + 56), a[3]);
}

// Groups of a multiple of 64, x blocked (q4_block_x): one 32-byte load and one shift and mask per 8 codes.
VLQ_AVX2 static ALWAYS_INLINE void q4_blocked_rows(const uint8_t *codes, const uint16_t *scales,
                                                   const uint16_t *biases, size_t cols, size_t group,
                                                   const float *xb, const float *sums, float *y, size_t r,
                                                   const int R) {
    size_t groups = cols / group;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK][8];
        for (int i = 0; i < R; i++)
            for (int t = 0; t < 8; t++) a[i][t] = _mm256_setzero_ps();
        size_t j = k * group, stop = j + group;
        for (; j + 128 <= stop; j += 128)
            for (int i = 0; i < R; i++) {
                const uint8_t *p = codes + ((r + i) * cols + j) / 2;
                q4_block64(p, xb + j, a[i]);
                q4_block64(p + 32, xb + j + 64, a[i] + 4);
            }
        for (; j < stop; j += 64)
            for (int i = 0; i < R; i++) q4_block64(codes + ((r + i) * cols + j) / 2, xb + j, a[i]);
        for (int i = 0; i < R; i++)
            q4_close_group(_mm256_add_ps(sum4(a[i]), sum4(a[i] + 4)), scales, biases, (r + i) * groups + k,
                           sums[k], &total[i], &tail[i]);
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

// Groups of 32, x blocked: each 32-byte load holds two groups, lanes 0-3 the first and lanes 4-7 the second.
VLQ_AVX2 static ALWAYS_INLINE void q4_blocked_pairs_rows(const uint8_t *codes, const uint16_t *scales,
                                                         const uint16_t *biases, size_t cols, const float *xb,
                                                         const float *sums, float *y, size_t r, const int R) {
    size_t groups = cols / 32;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k += 2) {
        __m256 a[ROW_BLOCK][4];
        for (int i = 0; i < R; i++) {
            a[i][0] = a[i][1] = a[i][2] = a[i][3] = _mm256_setzero_ps();
            q4_block64(codes + ((r + i) * cols + 32 * k) / 2, xb + 32 * k, a[i]);
        }
        for (int i = 0; i < R; i++) {
            size_t g = (r + i) * groups + k;
            float s0 = half_scalar(scales[g]), s1 = half_scalar(scales[g + 1]);
            float b0 = biases ? half_scalar(biases[g]) : -8 * s0, b1 = biases ? half_scalar(biases[g + 1]) : -8 * s1;
            __m256 scale = _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
            total[i] = _mm256_fmadd_ps(sum4(a[i]), scale, total[i]);
            tail[i] += b0 * sums[k] + b1 * sums[k + 1];
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

// Blocked x for rows this wide lives on the stack (64 KiB), wider ones on the heap.
enum { Q4_STACK_COLUMNS = 16384 };

VLQ_AVX2 static void q4_blocked_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                     size_t cols, size_t group, const float *x, const float *sums, float *y,
                                     size_t begin, size_t end) {
    float on_stack[Q4_STACK_COLUMNS];
    float *xb = cols <= Q4_STACK_COLUMNS ? on_stack : malloc(cols * sizeof(float));
    if (!xb) abort();
    q4_block_x(x, cols, xb);
    size_t r = begin;
    if (group == 32) {
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
            q4_blocked_pairs_rows(codes, scales, biases, cols, xb, sums, y, r, ROW_BLOCK);
        for (; r < end; r++) q4_blocked_pairs_rows(codes, scales, biases, cols, xb, sums, y, r, 1);
    } else {
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
            q4_blocked_rows(codes, scales, biases, cols, group, xb, sums, y, r, ROW_BLOCK);
        for (; r < end; r++) q4_blocked_rows(codes, scales, biases, cols, group, xb, sums, y, r, 1);
    }
    if (xb != on_stack) free(xb);
}

// q4 on AVX-512 (where the CPU has it), groups of a multiple of 128: a 64-byte load holds 128 codes, and
// vpermps with a table of 0..15 turns each dword's low nibble into its f32 value in one instruction (it
// reads the low 4 bits of each index, so no mask), replacing AVX2's mask and convert. Dword d holds codes
// 8 d .. 8 d + 7, so (dwords >> 4 k) in lane d is code 8 d + k, and x is permuted to match once per call:
// blocked[128 b + 16 k + d] = x[128 b + 8 d + k]. On Zen 4 (which splits each 512-bit instruction in two)
// this ran 1.35x as fast as the AVX2 kernel, L2-resident on one core.
#define VLQ_AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

static void q4_block128_x(const float *x, size_t cols, float *blocked) {
    for (size_t b = 0; b + 128 <= cols; b += 128)
        for (int k = 0; k < 8; k++)
            for (int d = 0; d < 16; d++) blocked[b + 16 * k + d] = x[b + 8 * d + k];
}

VLQ_AVX512 static ALWAYS_INLINE void q4_block128(const uint8_t *p, const float *q, __m512 a[4]) {
    const __m512 values = _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    STREAM_PREFETCH(p);
    __m512i v = _mm512_loadu_si512((const void *)p);
    a[0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v, values), _mm512_loadu_ps(q), a[0]);
    a[1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 4), values), _mm512_loadu_ps(q + 16), a[1]);
    a[2] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 8), values), _mm512_loadu_ps(q + 32), a[2]);
    a[3] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 12), values), _mm512_loadu_ps(q + 48), a[3]);
    a[0] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 16), values), _mm512_loadu_ps(q + 64), a[0]);
    a[1] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 20), values), _mm512_loadu_ps(q + 80), a[1]);
    a[2] = _mm512_fmadd_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(v, 24), values), _mm512_loadu_ps(q + 96), a[2]);
    a[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(v, 28)), _mm512_loadu_ps(q + 112), a[3]);
}

VLQ_AVX512 static void q4_avx512(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                                 size_t group, const float *x, const float *sums, float *y, size_t begin,
                                 size_t end) {
    float on_stack[Q4_STACK_COLUMNS];
    float *xb = cols <= Q4_STACK_COLUMNS ? on_stack : malloc(cols * sizeof(float));
    if (!xb) abort();
    q4_block128_x(x, cols, xb);
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        __m512 total = _mm512_setzero_ps();
        float tail = 0;
        for (size_t k = 0; k < groups; k++) {
            __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
            for (size_t j = k * group, stop = j + group; j < stop; j += 128)
                q4_block128(codes + (r * cols + j) / 2, xb + j, a);
            size_t g = r * groups + k;
            float scale = half_scalar(scales[g]), bias = biases ? half_scalar(biases[g]) : -8 * scale;
            __m512 partial = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            total = _mm512_fmadd_ps(partial, _mm512_set1_ps(scale), total);
            tail += bias * sums[k];
        }
        y[r] = _mm512_reduce_add_ps(total) + tail;
    }
    if (xb != on_stack) free(xb);
}

static int avx512_known = -1, avx512_allowed = 1;

static int use_avx512(void) {
    if (avx512_known < 0) {
        __builtin_cpu_init();
        avx512_known = __builtin_cpu_supports("avx512f");
    }
    return avx512_known && avx512_allowed;
}

void vlq_kernels_allow_avx512(int allowed) { avx512_allowed = allowed != 0; }

VLQ_AVX2 static void q4_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, const float *x, const float *sums, float *y, size_t begin, size_t end) {
    if (group % 128 == 0 && use_avx512())
        return q4_avx512(codes, scales, biases, cols, group, x, sums, y, begin, end);
    if (group % 64 == 0 || (group == 32 && cols % 64 == 0))
        return q4_blocked_avx2(codes, scales, biases, cols, group, x, sums, y, begin, end);
    if (group % 16) return q4_scalar(codes, scales, biases, cols, group, x, sums, y, begin, end);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
        q4_rows(codes, scales, biases, cols, group, x, sums, y, r, ROW_BLOCK);
    for (; r < end; r++) q4_rows(codes, scales, biases, cols, group, x, sums, y, r, 1);
}

// q3 on AVX2, a block of 32 codes per step, unpacked in bytes first: the 8 low-bit bytes broadcast to the
// four quarters and shifted by 0, 2, 4, 6 put element i's low bits in byte i; the high-bit dword's byte
// i / 8 shuffled to byte i and tested against bit i % 8 gives its high bit. Dword d then holds elements
// 4d..4d+3, and (dwords >> 8k) & 255 is element 4d + k in lane d, so x is permuted to match once per call
// (blocked[32b + 8k + d] = x[32b + 4d + k]), as for q4. Unpacking each 8 codes straight to lanes with
// shifts instead (low bits by 2k, the high bit by 8k, an OR) ran at 60% of this speed.
static void q3_block_x(const float *x, size_t cols, float *blocked) {
    for (size_t b = 0; b + 32 <= cols; b += 32)
        for (int k = 0; k < 4; k++)
            for (int d = 0; d < 8; d++) blocked[b + 8 * k + d] = x[b + 4 * d + k];
}

VLQ_AVX2 static ALWAYS_INLINE void q3_block32(const uint8_t *p, const float *xb, __m256 a[2]) {
    long long low_bytes;
    int high_bits;
    memcpy(&low_bytes, p, 8);
    memcpy(&high_bits, p + 8, 4);
    __m256i low = _mm256_srlv_epi64(_mm256_set1_epi64x(low_bytes), _mm256_setr_epi64x(0, 2, 4, 6));
    low = _mm256_and_si256(low, _mm256_set1_epi8(3));
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                            3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i high = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(high_bits), spread), bit);
    high = _mm256_and_si256(_mm256_cmpeq_epi8(high, bit), _mm256_set1_epi8(4));
    __m256i c = _mm256_or_si256(low, high);
    const __m256i byte = _mm256_set1_epi32(0xFF);
    a[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(c, byte)), _mm256_loadu_ps(xb), a[0]);
    a[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(c, 8), byte)),
                           _mm256_loadu_ps(xb + 8), a[1]);
    a[0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srli_epi32(c, 16), byte)),
                           _mm256_loadu_ps(xb + 16), a[0]);
    a[1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(c, 24)), _mm256_loadu_ps(xb + 24), a[1]);
}

VLQ_AVX2 static ALWAYS_INLINE void q3_rows(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                           size_t cols, size_t group, const float *xb, const float *sums, float *y,
                                           size_t r, const int R) {
    size_t groups = cols / group, row_bytes = cols / Q3_BLOCK * Q3_BLOCK_BYTES;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK][2];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = _mm256_setzero_ps();
        for (size_t j = k * group, stop = j + group; j < stop; j += Q3_BLOCK)
            for (int i = 0; i < R; i++)
                q3_block32(codes + (r + i) * row_bytes + j / Q3_BLOCK * Q3_BLOCK_BYTES, xb + j, a[i]);
        for (int i = 0; i < R; i++)
            q4_close_group(_mm256_add_ps(a[i][0], a[i][1]), scales, biases, (r + i) * groups + k, sums[k], &total[i],
                           &tail[i]);
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

VLQ_AVX2 static void q3_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, const float *x, const float *sums, float *y, size_t begin, size_t end) {
    float on_stack[Q4_STACK_COLUMNS];
    float *xb = cols <= Q4_STACK_COLUMNS ? on_stack : malloc(cols * sizeof(float));
    if (!xb) abort();
    q3_block_x(x, cols, xb);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
        q3_rows(codes, scales, biases, cols, group, xb, sums, y, r, ROW_BLOCK);
    for (; r < end; r++) q3_rows(codes, scales, biases, cols, group, xb, sums, y, r, 1);
    if (xb != on_stack) free(xb);
}

static int known = -1;

static int use_vector(void) {
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return known;
}
void vlq_kernels_use_portable(int portable) {
    known = portable ? 0 : -1;
}
#define VECTOR_ISA (use_avx512() ? "avx512" : "avx2")
#define bf16_vector bf16_avx2
#define f16_vector f16_avx2
#define q8_vector q8_avx2
#define q4_vector q4_avx2
#define q3_vector q3_avx2

// MARK: arm64: NEON (always present there).

#elif defined(__aarch64__)
#include <arm_neon.h>

static inline float32x4_t load_bf16x4(const uint16_t *p) {
    return vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16));
}

static inline float32x4_t load_f16x4(const uint16_t *p) {
    return vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)));
}

VLQ_AVX2 static inline __m256 sum4(const __m256 a[4]) {
    return _mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3]));
}

// R (1 or ROW_BLOCK, a constant once inlined) rows from r on; 8 columns per step, two sums per row.
#define HALF_ROWS(name, load, convert)                                                                            \
    static ALWAYS_INLINE void name##_rows(const uint16_t *w, size_t cols, const float *x, float *y, size_t r,     \
                                          const int R) {                                                         \
        float32x4_t a[ROW_BLOCK][2];                                                                              \
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = vdupq_n_f32(0);                                           \
        size_t j = 0;                                                                                             \
        for (; j + 8 <= cols; j += 8) {                                                                           \
            float32x4_t x0 = vld1q_f32(x + j), x1 = vld1q_f32(x + j + 4);                                         \
            for (int i = 0; i < R; i++) {                                                                         \
                const uint16_t *p = w + (r + i) * cols + j;                                                       \
                a[i][0] = vfmaq_f32(a[i][0], load(p), x0);                                                        \
                a[i][1] = vfmaq_f32(a[i][1], load(p + 4), x1);                                                    \
            }                                                                                                     \
        }                                                                                                         \
        for (int i = 0; i < R; i++) {                                                                             \
            float s = vaddvq_f32(vaddq_f32(a[i][0], a[i][1]));                                                    \
            for (size_t t = j; t < cols; t++) s += convert(w[(r + i) * cols + t]) * x[t];                         \
            y[r + i] = s;                                                                                         \
        }                                                                                                         \
    }                                                                                                             \
    static void name(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {        \
        size_t r = begin;                                                                                         \
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK) name##_rows(w, cols, x, y, r, ROW_BLOCK);                    \
        for (; r < end; r++) name##_rows(w, cols, x, y, r, 1);                                                    \
    }

HALF_ROWS(bf16_neon, load_bf16x4, vlq_bf16_to_float)
HALF_ROWS(f16_neon, load_f16x4, vlq_f16_to_float)

// Groups of a multiple of 8: 8 codes widened to two vectors of 4 floats.
static ALWAYS_INLINE void q8_rows(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                  const float *x, float *y, size_t r, const int R) {
    size_t groups = cols / group;
    float32x4_t total[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = vdupq_n_f32(0);
    for (size_t k = 0; k < groups; k++) {
        float32x4_t a[ROW_BLOCK][2];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = vdupq_n_f32(0);
        for (size_t j = k * group, stop = j + group; j < stop; j += 8) {
            float32x4_t x0 = vld1q_f32(x + j), x1 = vld1q_f32(x + j + 4);
            for (int i = 0; i < R; i++) {
                int16x8_t c = vmovl_s8(vld1_s8(codes + (r + i) * cols + j));
                a[i][0] = vfmaq_f32(a[i][0], vcvtq_f32_s32(vmovl_s16(vget_low_s16(c))), x0);
                a[i][1] = vfmaq_f32(a[i][1], vcvtq_f32_s32(vmovl_s16(vget_high_s16(c))), x1);
            }
        }
        for (int i = 0; i < R; i++)
            total[i] = vfmaq_n_f32(total[i], vaddq_f32(a[i][0], a[i][1]),
                                   vlq_f16_to_float(scales[(r + i) * groups + k]));
    }
    for (int i = 0; i < R; i++) y[r + i] = vaddvq_f32(total[i]);
}

static void q8_neon(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x, float *y,
                    size_t begin, size_t end) {
    if (group % 8) return q8_scalar(codes, scales, cols, group, x, y, begin, end);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK) q8_rows(codes, scales, cols, group, x, y, r, ROW_BLOCK);
    for (; r < end; r++) q8_rows(codes, scales, cols, group, x, y, r, 1);
}

// Groups of a multiple of 16: 8 bytes' low and high nibbles zipped back into element order.
static ALWAYS_INLINE void q4_rows(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                                  size_t group, const float *x, const float *sums, float *y, size_t r, const int R) {
    size_t groups = cols / group;
    float32x4_t total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = vdupq_n_f32(0), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        float32x4_t a[ROW_BLOCK][2];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = vdupq_n_f32(0);
        for (size_t j = k * group, stop = j + group; j < stop; j += 16) {
            float32x4_t x0 = vld1q_f32(x + j), x1 = vld1q_f32(x + j + 4), x2 = vld1q_f32(x + j + 8),
                        x3 = vld1q_f32(x + j + 12);
            for (int i = 0; i < R; i++) {
                uint8x8_t b = vld1_u8(codes + ((r + i) * cols + j) / 2);
                uint8x8x2_t n = vzip_u8(vand_u8(b, vdup_n_u8(0x0F)), vshr_n_u8(b, 4));
                uint16x8_t lo = vmovl_u8(n.val[0]), hi = vmovl_u8(n.val[1]);
                a[i][0] = vfmaq_f32(a[i][0], vcvtq_f32_u32(vmovl_u16(vget_low_u16(lo))), x0);
                a[i][1] = vfmaq_f32(a[i][1], vcvtq_f32_u32(vmovl_u16(vget_high_u16(lo))), x1);
                a[i][0] = vfmaq_f32(a[i][0], vcvtq_f32_u32(vmovl_u16(vget_low_u16(hi))), x2);
                a[i][1] = vfmaq_f32(a[i][1], vcvtq_f32_u32(vmovl_u16(vget_high_u16(hi))), x3);
            }
        }
        for (int i = 0; i < R; i++) {
            size_t g = (r + i) * groups + k;
            float scale = vlq_f16_to_float(scales[g]);
            float bias = biases ? vlq_f16_to_float(biases[g]) : -8 * scale;
            total[i] = vfmaq_n_f32(total[i], vaddq_f32(a[i][0], a[i][1]), scale);
            tail[i] += bias * sums[k];
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = vaddvq_f32(total[i]) + tail[i];
}

static void q4_neon(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                    const float *x, const float *sums, float *y, size_t begin, size_t end) {
    if (group % 16) return q4_scalar(codes, scales, biases, cols, group, x, sums, y, begin, end);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
        q4_rows(codes, scales, biases, cols, group, x, sums, y, r, ROW_BLOCK);
    for (; r < end; r++) q4_rows(codes, scales, biases, cols, group, x, sums, y, r, 1);
}

// One q3 block (32 codes at p) times x[0..<32], into two sums: as the AVX2 q3_block32, four lanes at a time
// (vshlq_u32 shifts right by a negative count).
static ALWAYS_INLINE void q3_block32(const uint8_t *p, const float *x, float32x4_t a[2]) {
    uint32_t high_bits;
    memcpy(&high_bits, p + 8, 4);
    uint16x8_t low16 = vmovl_u8(vld1_u8(p));
    uint32x4_t low[2] = {vmovl_u16(vget_low_u16(low16)), vmovl_u16(vget_high_u16(low16))};
    const int32x4_t lanes[2] = {{0, -1, -2, -3}, {-4, -5, -6, -7}};
    const uint32x4_t three = vdupq_n_u32(3), four = vdupq_n_u32(4);
    for (int h = 0; h < 2; h++) {
        uint32x4_t high = vshlq_u32(vdupq_n_u32(high_bits), lanes[h]);
        for (int k = 0; k < 4; k++) {
            uint32x4_t c = vorrq_u32(vandq_u32(vshlq_u32(low[h], vdupq_n_s32(-2 * k)), three),
                                     vandq_u32(vshlq_u32(high, vdupq_n_s32(2 - 8 * k)), four));
            a[k & 1] = vfmaq_f32(a[k & 1], vcvtq_f32_u32(c), vld1q_f32(x + 8 * k + 4 * h));
        }
    }
}

static ALWAYS_INLINE void q3_rows(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                                  size_t group, const float *x, const float *sums, float *y, size_t r, const int R) {
    size_t groups = cols / group, row_bytes = cols / Q3_BLOCK * Q3_BLOCK_BYTES;
    float32x4_t total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = vdupq_n_f32(0), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        float32x4_t a[ROW_BLOCK][2];
        for (int i = 0; i < R; i++) a[i][0] = a[i][1] = vdupq_n_f32(0);
        for (size_t j = k * group, stop = j + group; j < stop; j += Q3_BLOCK)
            for (int i = 0; i < R; i++)
                q3_block32(codes + (r + i) * row_bytes + j / Q3_BLOCK * Q3_BLOCK_BYTES, x + j, a[i]);
        for (int i = 0; i < R; i++) {
            size_t g = (r + i) * groups + k;
            total[i] = vfmaq_n_f32(total[i], vaddq_f32(a[i][0], a[i][1]), vlq_f16_to_float(scales[g]));
            tail[i] += vlq_f16_to_float(biases[g]) * sums[k];
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = vaddvq_f32(total[i]) + tail[i];
}

static void q3_neon(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                    const float *x, const float *sums, float *y, size_t begin, size_t end) {
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
        q3_rows(codes, scales, biases, cols, group, x, sums, y, r, ROW_BLOCK);
    for (; r < end; r++) q3_rows(codes, scales, biases, cols, group, x, sums, y, r, 1);
}

static int portable_only = 0;

static int use_vector(void) { return !portable_only; }
void vlq_kernels_use_portable(int portable) { portable_only = portable != 0; }
void vlq_kernels_allow_avx512(int allowed) { (void)allowed; }
#define VECTOR_ISA "neon"
#define bf16_vector bf16_neon
#define f16_vector f16_neon
#define q8_vector q8_neon
#define q4_vector q4_neon
#define q3_vector q3_neon

#else
static int use_vector(void) { return 0; }
void vlq_kernels_use_portable(int portable) { (void)portable; }
void vlq_kernels_allow_avx512(int allowed) { (void)allowed; }
#define VECTOR_ISA "scalar"
#define bf16_vector bf16_scalar
#define f16_vector f16_scalar
#define q8_vector q8_scalar
#define q4_vector q4_scalar
#define q3_vector q3_scalar
#endif

// MARK: Entry points.

#define DISPATCH(name, ...) (use_vector() ? name##_vector(__VA_ARGS__) : name##_scalar(__VA_ARGS__))

void vlq_matvec_bf16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(bf16, w, cols, x, y, row_begin, row_end);
}

void vlq_matvec_f16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(f16, w, cols, x, y, row_begin, row_end);
}

void vlq_matvec_q8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x, float *y,
                   size_t row_begin, size_t row_end) {
    DISPATCH(q8, codes, scales, cols, group, x, y, row_begin, row_end);
}

void vlq_matvec_q4(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                   const float *x, const float *group_sums, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(q4, codes, scales, biases, cols, group, x, group_sums, y, row_begin, row_end);
}

void vlq_matvec_q3(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                   const float *x, const float *group_sums, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(q3, codes, scales, biases, cols, group, x, group_sums, y, row_begin, row_end);
}

void vlq_group_sums(const float *x, size_t cols, size_t group, float *sums) {
    for (size_t k = 0; k < cols / group; k++) {
        float s = 0;
        for (size_t j = k * group; j < (k + 1) * group; j++) s += x[j];
        sums[k] = s;
    }
}

const char *vlq_kernels_isa(void) {
    return use_vector() ? VECTOR_ISA : "scalar";
}

// MARK: int8 activations (opt-in, vlq_matvec_*_a8).
//
// As llama.cpp does: x is quantized once per product to int8 per block of 32 (d = max|x| / 127), and
// each block's dot product with the codes is an exact integer sum, scaled by d once. The unpacking to
// f32 that bounds the float kernels' speed goes away; results change by x's rounding. q4's bias term
// keeps the float sums of x, so only the scale term sees the rounding.

enum { A8_BLOCK = 32 };

// One implementation on every machine, so that the vector and portable kernels see the same int8 x.
void vlq_quantize_activations(const float *x, size_t cols, int8_t *xq, float *block_scales) {
    for (size_t b = 0; b < cols / A8_BLOCK; b++) {
        const float *v = x + b * A8_BLOCK;
        float largest = 0;
        for (int i = 0; i < A8_BLOCK; i++) largest = fmaxf(largest, fabsf(v[i]));
        float d = largest / 127, inverse = d != 0 ? 1 / d : 0;
        block_scales[b] = d;
        // Nearest, ties to even, as lrintf but inline (a libm call per element cost as much as a 64-row
        // product): adding 1.5 * 2^23 leaves no fraction bits for |v| * inverse <= 127 (never 127.5).
        for (int i = 0; i < A8_BLOCK; i++) {
            const float shift = 12582912.0f;
            xq[b * A8_BLOCK + i] = (int8_t)(int32_t)((v[i] * inverse + shift) - shift);
        }
    }
}

static void q8_a8_scalar(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const int8_t *xq,
                         const float *xs, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float partial = 0;
            for (size_t j = k * group; j < (k + 1) * group; j += A8_BLOCK) {
                int32_t dot = 0;
                for (int i = 0; i < A8_BLOCK; i++) dot += (int32_t)row[j + i] * xq[j + i];
                partial += (float)dot * xs[j / A8_BLOCK];
            }
            total += partial * vlq_f16_to_float(scales[r * groups + k]);
        }
        y[r] = total;
    }
}

static void q4_a8_scalar(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                         size_t group, const int8_t *xq, const float *xs, const float *sums, float *y, size_t begin,
                         size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float partial = 0;
            for (size_t j = k * group; j < (k + 1) * group; j += A8_BLOCK) {
                int32_t dot = 0;
                for (int i = 0; i < A8_BLOCK; i += 2) {
                    uint8_t b = row[(j + i) / 2];
                    dot += (int32_t)(b & 0x0F) * xq[j + i] + (int32_t)(b >> 4) * xq[j + i + 1];
                }
                partial += (float)dot * xs[j / A8_BLOCK];
            }
            float scale = vlq_f16_to_float(scales[r * groups + k]);
            float bias = biases ? vlq_f16_to_float(biases[r * groups + k]) : -8 * scale;
            total += scale * partial + bias * sums[k];
        }
        y[r] = total;
    }
}

#if defined(__x86_64__)

// MARK: int8 activations on AVX-512 VNNI (Zen 4, Ice Lake and later): vpdpbusd sums 64 byte products into
// 16 int32 lanes in one instruction, where AVX2 needs maddubs, madd and (for q8) two sign fixes per 32.
// Per 128 q4 codes: one 64-byte load, two masks, two vpdpbusd. 11008 x 4096 matrices streamed on both
// cores (tools/decode_kernel_bench.c, two at once, groups of 128): q4 33-39 -> 48-53 GB/s in all, q8 the
// same 57-59 (memory's limit); from L2 on one core q4 about 17 -> 26-40, q8 24-35 -> 44-46.
#define VLQ_AVX512_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma,f16c")))

static int vnni_known = -1;

static int use_avx512_vnni(void) {
    if (vnni_known < 0) {
        __builtin_cpu_init();
        vnni_known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vnni");
    }
    return vnni_known && use_avx512();
}

enum { A8_VNNI_STACK_COLUMNS = 16384 };

// The f32 scales of a chunk's int32 lanes when its columns hold several groups (2 or 4): lane l belongs to
// the chunk's group l / (16 / per_chunk), whose f16 scales start at s.
VLQ_AVX512_VNNI static ALWAYS_INLINE __m512 a8_group_scales(const uint16_t *s, const int per_chunk) {
    uint64_t four = 0;
    memcpy(&four, s, per_chunk == 2 ? 4 : 8);
    __m512 values = _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)four)));
    __m512i lane_group = per_chunk == 2 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                        : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    return _mm512_permutexvar_ps(lane_group, values);
}

// 16 lanes of 64 q8 codes at w, shifted by 128 (xor 0x80: w + 128, vpdpbusd's unsigned operand), times x at xq.
VLQ_AVX512_VNNI static ALWAYS_INLINE __m512i q8_a8_vnni_dot(const int8_t *w, const int8_t *xq) {
    STREAM_PREFETCH(w);
    __m512i u = _mm512_xor_si512(_mm512_loadu_si512((const void *)w), _mm512_set1_epi8((char)0x80));
    return _mm512_dpbusd_epi32(_mm512_setzero_si512(), u, _mm512_loadu_si512((const void *)xq));
}

// The x scales of a 64-column chunk's lanes: its first block's (of 32) in lanes 0-7, its second's in 8-15.
VLQ_AVX512_VNNI static ALWAYS_INLINE __m512 a8_block_scales(const float *xs) {
    return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(xs[0]), _mm512_set1_ps(xs[1]));
}

// sum over k of f16 h[k] times v[k], 16 at a step (converting one f16 at a time took a third of the q4
// kernel's time at groups of 128).
VLQ_AVX512_VNNI static inline float half_dot(const uint16_t *h, const float *v, size_t n) {
    __m512 terms = _mm512_setzero_ps();
    size_t k = 0;
    for (; k + 16 <= n; k += 16)
        terms = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + k))), _mm512_loadu_ps(v + k),
                                terms);
    float tail = _mm512_reduce_add_ps(terms);
    for (; k < n; k++) tail += vlq_f16_to_float_f16c(h[k]) * v[k];
    return tail;
}

// 16 lanes of a chunk of 128 q4 codes (64 bytes at p) times x laid out as q4_a8_vnni does.
VLQ_AVX512_VNNI static ALWAYS_INLINE __m512i q4_a8_vnni_dot(const uint8_t *p, const int8_t *xp) {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    STREAM_PREFETCH(p);
    __m512i v = _mm512_loadu_si512((const void *)p);
    __m512i low = _mm512_and_si512(v, mask), high = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low, _mm512_loadu_si512((const void *)xp));
    return _mm512_dpbusd_epi32(dot, high, _mm512_loadu_si512((const void *)(xp + 64)));
}

// q8 with groups of 32 or a multiple of 64, columns a multiple of 64. Lane l of a 64-column chunk sums
// columns 4 l .. 4 l + 3, so x stays in column order and the chunk's block b (of 32) is lanes 8 b .. 8 b + 7.
// vpdpbusd takes one unsigned operand: the codes xor 0x80 are w + 128, which adds 128 times each block's
// sum of xq to its dot; that excess, times the block's x scale, is summed per group once per call (shift),
// so a row takes it off with one dot of its group scales. Per-lane offsets and scales loaded beside each
// chunk instead (three bytes of x-side data per weight byte) fell out of L1 on 11008-column rows: two at
// once, 4096 x 11008 ran at 26-31 GB/s where 11008 x 4096 ran at 50-54.
VLQ_AVX512_VNNI static void q8_a8_vnni(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                      const int8_t *xq, const float *xs, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    float shift_on_stack[A8_VNNI_STACK_COLUMNS / 32];
    float *shift = groups <= A8_VNNI_STACK_COLUMNS / 32 ? shift_on_stack : malloc(groups * sizeof(float));
    if (!shift) abort();
    for (size_t k = 0; k < groups; k++) {
        float excess = 0;
        for (size_t b = k * group / 32; b < (k + 1) * group / 32; b++) {
            int32_t sum = 0;
            for (size_t i = 32 * b; i < 32 * b + 32; i++) sum += xq[i];
            excess += (float)(128 * sum) * xs[b];
        }
        shift[k] = excess;
    }
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        const uint16_t *row_scales = scales + r * groups;
        __m512 total = _mm512_setzero_ps();
        if (group == 32)
            for (size_t j = 0; j < cols; j += 64) {
                __m512 blocks = _mm512_mul_ps(_mm512_cvtepi32_ps(q8_a8_vnni_dot(row + j, xq + j)),
                                              a8_block_scales(xs + j / 32));
                total = _mm512_fmadd_ps(blocks, a8_group_scales(row_scales + j / 32, 2), total);
            }
        else
            for (size_t k = 0, j = 0; k < groups; k++) {
                __m512 partial = _mm512_setzero_ps();
                for (size_t stop = j + group; j < stop; j += 64)
                    partial = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q8_a8_vnni_dot(row + j, xq + j)),
                                              a8_block_scales(xs + j / 32), partial);
                total = _mm512_fmadd_ps(partial, _mm512_set1_ps(vlq_f16_to_float_f16c(row_scales[k])), total);
            }
        y[r] = _mm512_reduce_add_ps(total) - half_dot(row_scales, shift, groups);
    }
    if (shift != shift_on_stack) free(shift);
}

// A q4 row's sum over groups of bias times the group's sum of x (q4s: bias -8 scale; times -8 after the
// sum, which is exact, as before it).
VLQ_AVX512_VNNI static inline float bias_terms(const uint16_t *scales, const uint16_t *biases, const float *sums,
                                               size_t groups) {
    return biases ? half_dot(biases, sums, groups) : -8 * half_dot(scales, sums, groups);
}

// q4 (and q4s, biases NULL: bias -8 scale) with groups of 32, 64 or a multiple of 128, columns a multiple of
// 128. A 64-byte load holds a chunk of 128 codes, byte i the columns 2 i (low nibble) and 2 i + 1 (high);
// lane l's four bytes are columns 8 l .. 8 l + 7, so the low nibbles pair with x's even columns of those
// and the high ones with its odd columns, and the chunk's block b (of 32) is lanes 4 b .. 4 b + 3. x is laid
// out once per call to match: per chunk its 64 even columns, then its 64 odd ones.
VLQ_AVX512_VNNI static void q4_a8_vnni(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                      size_t cols, size_t group, const int8_t *xq, const float *xs,
                                      const float *sums, float *y, size_t begin, size_t end) {
    int8_t x_on_stack[A8_VNNI_STACK_COLUMNS];
    float scales_on_stack[A8_VNNI_STACK_COLUMNS / 8];
    int8_t *xp = x_on_stack;
    float *lane_scales = scales_on_stack;
    void *heap = NULL;
    if (cols > A8_VNNI_STACK_COLUMNS) {
        heap = malloc(cols / 8 * sizeof(float) + cols);
        if (!heap) abort();
        lane_scales = heap, xp = (int8_t *)(lane_scales + cols / 8);
    }
    for (size_t c = 0; c < cols; c += 128)
        for (int i = 0; i < 64; i++) xp[c + i] = xq[c + 2 * i], xp[c + 64 + i] = xq[c + 2 * i + 1];
    for (size_t l = 0; l < cols / 8; l++) lane_scales[l] = xs[l / 4];
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        const uint16_t *row_scales = scales + r * groups;
        __m512 total = _mm512_setzero_ps();
        if (group < 128)
            for (size_t j = 0; j < cols; j += 128) {
                __m512 blocks = _mm512_mul_ps(_mm512_cvtepi32_ps(q4_a8_vnni_dot(row + j / 2, xp + j)),
                                              _mm512_loadu_ps(lane_scales + j / 8));
                __m512 group_scales = group == 64 ? a8_group_scales(row_scales + j / 64, 2)
                                                  : a8_group_scales(row_scales + j / 32, 4);
                total = _mm512_fmadd_ps(blocks, group_scales, total);
            }
        else
            for (size_t k = 0, j = 0; k < groups; k++) {
                __m512 partial = _mm512_setzero_ps();
                for (size_t stop = j + group; j < stop; j += 128)
                    partial = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q4_a8_vnni_dot(row + j / 2, xp + j)),
                                              _mm512_loadu_ps(lane_scales + j / 8), partial);
                total = _mm512_fmadd_ps(partial, _mm512_set1_ps(vlq_f16_to_float_f16c(row_scales[k])), total);
            }
        y[r] = _mm512_reduce_add_ps(total) + bias_terms(row_scales, biases ? biases + r * groups : NULL, sums, groups);
    }
    free(heap);
}

// 8 int32 sums of 4 products each: the 32 codes at w times the 32 int8 x. maddubs takes one unsigned
// operand, so |w| goes there and w's sign moves onto x; |w| x <= 127 * 127 keeps each pair's int16 sum
// from saturating.
VLQ_AVX2 static inline __m256i q8_a8_dot(const int8_t *w, __m256i x) {
    STREAM_PREFETCH(w);
    __m256i v = _mm256_loadu_si256((const __m256i *)w);
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(v, v), _mm256_sign_epi8(x, v));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// Groups of a multiple of 32.
VLQ_AVX2 static ALWAYS_INLINE void q8_a8_rows(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                              const int8_t *xq, const float *xs, float *y, size_t r, const int R) {
    size_t groups = cols / group;
    __m256 total[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps();
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK];
        for (int i = 0; i < R; i++) a[i] = _mm256_setzero_ps();
        for (size_t j = k * group, stop = j + group; j < stop; j += A8_BLOCK) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq + j));
            __m256 d = _mm256_broadcast_ss(xs + j / A8_BLOCK);
            for (int i = 0; i < R; i++)
                a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(q8_a8_dot(codes + (r + i) * cols + j, x)), d, a[i]);
        }
        for (int i = 0; i < R; i++)
            total[i] = _mm256_fmadd_ps(a[i], _mm256_set1_ps(half_scalar(scales[(r + i) * groups + k])), total[i]);
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]);
}

VLQ_AVX2 static void q8_a8_avx2(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group,
                                const int8_t *xq, const float *xs, float *y, size_t begin, size_t end) {
    if (use_avx512_vnni() && cols % 64 == 0 && (group == 32 || group % 64 == 0))
        return q8_a8_vnni(codes, scales, cols, group, xq, xs, y, begin, end);
    size_t r = begin;
    for (; r + ROW_BLOCK <= end; r += ROW_BLOCK) q8_a8_rows(codes, scales, cols, group, xq, xs, y, r, ROW_BLOCK);
    for (; r < end; r++) q8_a8_rows(codes, scales, cols, group, xq, xs, y, r, 1);
}

// A 32-byte load of q4 codes holds 64 elements, even ones in the low nibbles. x is permuted to match once
// per call, per 64 elements: the even elements of its two blocks, then their odd ones. Then the low
// nibbles pair with the first 32 bytes and the high nibbles with the last 32, and lanes 0-3 of the sums
// belong to the first block, lanes 4-7 to the second.
static void q4_a8_permute_x(const int8_t *xq, size_t cols, int8_t *permuted) {
    for (size_t c = 0; c + 64 <= cols; c += 64)
        for (int half = 0; half < 2; half++)
            for (int t = 0; t < 16; t++) {
                permuted[c + 16 * half + t] = xq[c + 32 * half + 2 * t];
                permuted[c + 32 + 16 * half + t] = xq[c + 32 * half + 2 * t + 1];
            }
}

// 8 int32 sums (lanes 0-3: the first block of 32, lanes 4-7: the second) of 64 codes at p times the
// permuted x; codes <= 15 keep maddubs far from saturating.
VLQ_AVX2 static inline __m256i q4_a8_dot64(const uint8_t *p, __m256i x_even, __m256i x_odd) {
    const __m256i mask = _mm256_set1_epi8(0x0F);
    STREAM_PREFETCH(p);
    __m256i v = _mm256_loadu_si256((const __m256i *)p);
    __m256i low = _mm256_and_si256(v, mask), high = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    __m256i pairs = _mm256_add_epi16(_mm256_maddubs_epi16(low, x_even), _mm256_maddubs_epi16(high, x_odd));
    return _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
}

// The x scales of the two blocks of a 64-element chunk, each over its four lanes.
VLQ_AVX2 static inline __m256 q4_a8_block_scales(const float *xs) {
    return _mm256_setr_m128(_mm_set1_ps(xs[0]), _mm_set1_ps(xs[1]));
}

// Groups of a multiple of 64.
VLQ_AVX2 static ALWAYS_INLINE void q4_a8_rows(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                              size_t cols, size_t group, const int8_t *xp, const float *xs,
                                              const float *sums, float *y, size_t r, const int R) {
    size_t groups = cols / group;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k++) {
        __m256 a[ROW_BLOCK];
        for (int i = 0; i < R; i++) a[i] = _mm256_setzero_ps();
        for (size_t j = k * group, stop = j + group; j < stop; j += 64) {
            __m256i x_even = _mm256_loadu_si256((const __m256i *)(xp + j));
            __m256i x_odd = _mm256_loadu_si256((const __m256i *)(xp + j + 32));
            __m256 d = q4_a8_block_scales(xs + j / A8_BLOCK);
            for (int i = 0; i < R; i++) {
                __m256i dot = q4_a8_dot64(codes + ((r + i) * cols + j) / 2, x_even, x_odd);
                a[i] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), d, a[i]);
            }
        }
        for (int i = 0; i < R; i++)
            q4_close_group(a[i], scales, biases, (r + i) * groups + k, sums[k], &total[i], &tail[i]);
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

// Groups of 32, columns a multiple of 64: each chunk holds two groups, lanes 0-3 the first.
VLQ_AVX2 static ALWAYS_INLINE void q4_a8_pairs_rows(const uint8_t *codes, const uint16_t *scales,
                                                    const uint16_t *biases, size_t cols, const int8_t *xp,
                                                    const float *xs, const float *sums, float *y, size_t r,
                                                    const int R) {
    size_t groups = cols / 32;
    __m256 total[ROW_BLOCK];
    float tail[ROW_BLOCK];
    for (int i = 0; i < R; i++) total[i] = _mm256_setzero_ps(), tail[i] = 0;
    for (size_t k = 0; k < groups; k += 2) {
        __m256i x_even = _mm256_loadu_si256((const __m256i *)(xp + 32 * k));
        __m256i x_odd = _mm256_loadu_si256((const __m256i *)(xp + 32 * k + 32));
        __m256 d = q4_a8_block_scales(xs + k);
        for (int i = 0; i < R; i++) {
            __m256 dot = _mm256_cvtepi32_ps(q4_a8_dot64(codes + ((r + i) * cols + 32 * k) / 2, x_even, x_odd));
            size_t g = (r + i) * groups + k;
            float s0 = half_scalar(scales[g]), s1 = half_scalar(scales[g + 1]);
            float b0 = biases ? half_scalar(biases[g]) : -8 * s0, b1 = biases ? half_scalar(biases[g + 1]) : -8 * s1;
            total[i] = _mm256_fmadd_ps(_mm256_mul_ps(dot, d), _mm256_setr_m128(_mm_set1_ps(s0), _mm_set1_ps(s1)),
                                       total[i]);
            tail[i] += b0 * sums[k] + b1 * sums[k + 1];
        }
    }
    for (int i = 0; i < R; i++) y[r + i] = hsum(total[i]) + tail[i];
}

// Permuted x for rows this wide lives on the stack (16 KiB), wider ones on the heap.
enum { A8_STACK_COLUMNS = 16384 };

VLQ_AVX2 static void q4_a8_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                                size_t group, const int8_t *xq, const float *xs, const float *sums, float *y,
                                size_t begin, size_t end) {
    if (use_avx512_vnni() && cols % 128 == 0 && (group == 32 || group == 64 || group % 128 == 0))
        return q4_a8_vnni(codes, scales, biases, cols, group, xq, xs, sums, y, begin, end);
    // Groups of 96, 160, 224 straddle the 64-element chunks; no preset writes them.
    if (!(group % 64 == 0 || (group == 32 && cols % 64 == 0)))
        return q4_a8_scalar(codes, scales, biases, cols, group, xq, xs, sums, y, begin, end);
    int8_t on_stack[A8_STACK_COLUMNS];
    int8_t *xp = cols <= A8_STACK_COLUMNS ? on_stack : malloc(cols);
    if (!xp) abort();
    q4_a8_permute_x(xq, cols, xp);
    size_t r = begin;
    if (group == 32) {
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
            q4_a8_pairs_rows(codes, scales, biases, cols, xp, xs, sums, y, r, ROW_BLOCK);
        for (; r < end; r++) q4_a8_pairs_rows(codes, scales, biases, cols, xp, xs, sums, y, r, 1);
    } else {
        for (; r + ROW_BLOCK <= end; r += ROW_BLOCK)
            q4_a8_rows(codes, scales, biases, cols, group, xp, xs, sums, y, r, ROW_BLOCK);
        for (; r < end; r++) q4_a8_rows(codes, scales, biases, cols, group, xp, xs, sums, y, r, 1);
    }
    if (xp != on_stack) free(xp);
}

#define q8_a8_vector q8_a8_avx2
#define q4_a8_vector q4_a8_avx2
#else
// NEON and other machines: the portable loops (integer sums, which compilers vectorise).
#define q8_a8_vector q8_a8_scalar
#define q4_a8_vector q4_a8_scalar
#endif

void vlq_matvec_q8_a8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const int8_t *xq,
                      const float *x_scales, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(q8_a8, codes, scales, cols, group, xq, x_scales, y, row_begin, row_end);
}

void vlq_matvec_q4_a8(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                      size_t group, const int8_t *xq, const float *x_scales, const float *group_sums, float *y,
                      size_t row_begin, size_t row_end) {
    DISPATCH(q4_a8, codes, scales, biases, cols, group, xq, x_scales, group_sums, y, row_begin, row_end);
}
