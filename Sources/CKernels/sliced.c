// Decode kernels on sliced activations (include/vlq_kernels.h, vlq_slice_activations).
//
// The float q4 kernel (kernels.c) spends its time unpacking codes to f32, not reading them: on Zen 4 it
// reaches 11 GB/s from L2 on one core, under what memory delivers to two. Integer dot products (AVX-512
// VNNI's vpdpbusd: 64 byte products an instruction) remove the unpacking, but llama.cpp's int8
// activations round x to 8 bits. Here x is cut into three int8 slices instead, as the Ozaki scheme
// emulates float GEMM on integer units: per block of 128, X = round(x / d) with d = max|x| / (127 * 65793),
// |X| <= 8355711, written X = 65536 s2 + 256 s1 + s0 with each slice in -128...127. Each slice's dot with the
// codes is an exact integer sum; the three are joined in float once per block and scaled by d and the
// group's scale. The only rounding beyond float summation's is x's to 24 bits of its block's largest
// magnitude (|x - d X| <= d / 2, about 6e-8 max|x|), the size of one f32 ulp of that element.
#include "vlq_kernels.h"

#include <math.h>
#include <string.h>

#include "half_floats.h"
#include "stream_prefetch.h"

enum { SLICE_BLOCK = 128, SLICES = 3 };

// 127 * (65536 + 256 + 1): the largest |X| three slices of -128...127 hold with room for balanced digits.
static const double SLICE_RANGE = 8355711.0;

// Element of the block stored at position p: q4's low nibbles hold the even elements of the block, the
// high nibbles the odd ones, and the slices are stored to pair with them (positions 0-63, 64-127).
static inline size_t q4_element(size_t p) { return p < 64 ? 2 * p : 2 * (p - 64) + 1; }

int vlq_slice_activations(const float *x, size_t cols, int8_t *slices, float *block_scales) {
    if (cols % SLICE_BLOCK) return 0;
    for (size_t b = 0; b < cols / SLICE_BLOCK; b++) {
        const float *v = x + b * SLICE_BLOCK;
        float largest = 0;
        for (int i = 0; i < SLICE_BLOCK; i++) {
            if (!isfinite(v[i])) return 0;
            largest = fmaxf(largest, fabsf(v[i]));
        }
        // The scale as stored (f32) is the one the slices are taken against, so d X is within d / 2 of x.
        float d = largest > 0 ? (float)((double)largest / SLICE_RANGE) : 0;
        double inverse = d > 0 ? 1 / (double)d : 0;
        block_scales[b] = d;
        int8_t *s = slices + b * SLICES * SLICE_BLOCK;
        for (size_t p = 0; p < SLICE_BLOCK; p++) {
            double scaled = (double)v[q4_element(p)] * inverse;
            // Nearest, ties to even, inline (a libm call per element costs more than the rest): adding
            // 1.5 * 2^52 leaves no fraction bits for |scaled| <= 2^23.
            const double shift = 6755399441055744.0;
            long whole = (long)((scaled + shift) - shift);
            // d rounded down can put max|x| / d a fraction of a step past the range: that element is clamped,
            // less than d / 2 from the next step.
            if (whole > (long)SLICE_RANGE) whole = (long)SLICE_RANGE;
            if (whole < -(long)SLICE_RANGE) whole = -(long)SLICE_RANGE;
            // Balanced base-256 digits: each in -128...127, the rest carried up exactly.
            for (int k = 0; k < SLICES; k++) {
                long digit = ((whole + 128) & 255) - 128;
                s[k * SLICE_BLOCK + p] = (int8_t)digit;
                whole = (whole - digit) / 256;
            }
        }
    }
    return 1;
}

// A block's three integer sums joined, as every version does it: 65536 s2 + (256 s1 + s0).
static inline float join_slices(int32_t s0, int32_t s1, int32_t s2) {
    return (float)s2 * 65536.0f + (float)(s1 * 256 + s0);
}

// MARK: Portable versions (the vector ones' reference; machines without VNNI use the float kernels).

static void q4_sliced_scalar(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, const int8_t *slices, const float *block_scales, const float *sums,
                             float *y, size_t begin, size_t end) {
    size_t groups = cols / group, per_group = group / SLICE_BLOCK;
    for (size_t r = begin; r < end; r++) {
        float total = 0;
        for (size_t k = 0; k < groups; k++) {
            float scale = vlq_f16_to_float(scales[r * groups + k]);
            float bias = biases ? vlq_f16_to_float(biases[r * groups + k]) : -8 * scale;
            for (size_t t = 0; t < per_group; t++) {
                size_t b = k * per_group + t;
                const uint8_t *c = codes + (r * cols + b * SLICE_BLOCK) / 2;
                const int8_t *s = slices + b * SLICES * SLICE_BLOCK;
                int32_t sum[SLICES] = {0, 0, 0};
                for (int k2 = 0; k2 < SLICES; k2++)
                    for (int i = 0; i < 64; i++)
                        sum[k2] += (int32_t)(c[i] & 15) * s[k2 * SLICE_BLOCK + i] +
                                   (int32_t)(c[i] >> 4) * s[k2 * SLICE_BLOCK + 64 + i];
                total += join_slices(sum[0], sum[1], sum[2]) * (scale * block_scales[b]);
            }
            total += bias * sums[k];
        }
        y[r] = total;
    }
}

// MARK: x86-64 with AVX-512 VNNI.

#if defined(__x86_64__)
#include <immintrin.h>
#define VLQ_VNNI __attribute__((target("avx512f,avx512bw,avx512vnni,avx2,fma,f16c")))

static int vnni_known = -1, vnni_allowed = 1;

static int use_vnni(void) {
    if (vnni_known < 0) {
        __builtin_cpu_init();
        vnni_known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                     __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c");
    }
    return vnni_known && vnni_allowed;
}

// The three sums joined per lane, as join_slices does.
VLQ_VNNI static inline __m512 join_lanes(__m512i s0, __m512i s1, __m512i s2) {
    __m512i low = _mm512_add_epi32(_mm512_slli_epi32(s1, 8), s0);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s2), _mm512_set1_ps(65536.0f), _mm512_cvtepi32_ps(low));
}

// One block of 128 codes (64 bytes): low nibbles (the even elements) pair with the slices' first 64
// positions, high nibbles with the last 64; each slice's dot in 16 lanes, joined.
VLQ_VNNI static inline __m512 q4_block(const uint8_t *codes, const int8_t *s) {
    const __m512i mask = _mm512_set1_epi8(0x0F);
    STREAM_PREFETCH(codes);
    __m512i v = _mm512_loadu_si512((const void *)codes);
    __m512i low = _mm512_and_si512(v, mask), high = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
    __m512i dots[SLICES];
    for (int k = 0; k < SLICES; k++) {
        __m512i a = _mm512_dpbusd_epi32(_mm512_setzero_si512(), low,
                                        _mm512_loadu_si512((const void *)(s + k * SLICE_BLOCK)));
        dots[k] = _mm512_dpbusd_epi32(a, high, _mm512_loadu_si512((const void *)(s + k * SLICE_BLOCK + 64)));
    }
    return join_lanes(dots[0], dots[1], dots[2]);
}

// Adds a block's joined sums times its scale to a row's totals: two running totals, swapped in registers
// after each block, so that one block's FMA does not wait on the one before it (indexed by block & 1 they
// lived on the stack, and each block waited on a store and a load: 1.3x slower).
VLQ_VNNI static inline void add_block(__m512 joined, float scale, __m512 total[2]) {
    __m512 next = _mm512_fmadd_ps(joined, _mm512_set1_ps(scale), total[1]);
    total[1] = total[0], total[0] = next;
}

// One row at a time, as the float kernels (kernels.c, at the top): two rows sharing each load of the
// slices ran 1.3x as fast from L2 but half as fast streaming from memory before the stream prefetch
// (stream_prefetch.h); with it, two threads over 495 MB of q4 file pages, 33.7 against 31.9 GB/s, within
// the run-to-run spread, and four rows 29.5.
VLQ_VNNI static void q4_sliced_vnni(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases,
                                    size_t cols, size_t group, const int8_t *slices, const float *block_scales,
                                    const float *sums, float *y, size_t begin, size_t end) {
    size_t groups = cols / group, per_group = group / SLICE_BLOCK;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        __m512 total[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
        float tail = 0;
        for (size_t k = 0; k < groups; k++) {
            float scale = vlq_f16_to_float_f16c(scales[r * groups + k]);
            tail += (biases ? vlq_f16_to_float_f16c(biases[r * groups + k]) : -8 * scale) * sums[k];
            for (size_t t = 0; t < per_group; t++) {
                size_t b = k * per_group + t;
                add_block(q4_block(row + b * SLICE_BLOCK / 2, slices + b * SLICES * SLICE_BLOCK),
                          scale * block_scales[b], total);
            }
        }
        y[r] = _mm512_reduce_add_ps(_mm512_add_ps(total[0], total[1])) + tail;
    }
}

void vlq_kernels_allow_sliced_vector(int allowed) { vnni_allowed = allowed != 0; }
int vlq_sliced_vector_available(void) { return use_vnni(); }
#define USE_SLICED_VECTOR use_vnni()
#else
void vlq_kernels_allow_sliced_vector(int allowed) { (void)allowed; }
int vlq_sliced_vector_available(void) { return 0; }
#define USE_SLICED_VECTOR 0
#define q4_sliced_vnni q4_sliced_scalar
#endif

void vlq_matvec_q4_sliced(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                          size_t group, const int8_t *slices, const float *block_scales, const float *group_sums,
                          float *y, size_t row_begin, size_t row_end) {
    if (USE_SLICED_VECTOR)
        q4_sliced_vnni(codes, scales, biases, cols, group, slices, block_scales, group_sums, y, row_begin, row_end);
    else
        q4_sliced_scalar(codes, scales, biases, cols, group, slices, block_scales, group_sums, y, row_begin, row_end);
}
