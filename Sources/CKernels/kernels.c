// Decode matrix-vector kernels (include/vlq_kernels.h). Each group's scale multiplies that group's
// partial sum once; q4's bias multiplies the group's sum of x once (value = code * scale + bias).
#include "vlq_kernels.h"

#include <string.h>

// MARK: Portable versions (also the tails of the vector ones).

static inline float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
    if (exponent == 0x1F) {
        bits = sign | 0x7F800000u | (mantissa << 13);
    } else if (exponent != 0) {
        bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
    } else if (mantissa == 0) {
        bits = sign;
    } else {  // subnormal: normalise
        exponent = 113;
        while ((mantissa & 0x400) == 0) {
            mantissa <<= 1;
            exponent -= 1;
        }
        bits = sign | (exponent << 23) | ((mantissa & 0x3FF) << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

// Eight independent partial sums, so that the compiler may vectorise without reassociating.
#define LANES 8

static void bf16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {
    for (size_t r = begin; r < end; r++) {
        const uint16_t *row = w + r * cols;
        float acc[LANES] = {0};
        size_t j = 0;
        for (; j + LANES <= cols; j += LANES)
            for (int l = 0; l < LANES; l++) acc[l] += bf16_to_float(row[j + l]) * x[j + l];
        float s = 0;
        for (int l = 0; l < LANES; l++) s += acc[l];
        for (; j < cols; j++) s += bf16_to_float(row[j]) * x[j];
        y[r] = s;
    }
}

static void f16_scalar(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {
    for (size_t r = begin; r < end; r++) {
        const uint16_t *row = w + r * cols;
        float s = 0;
        for (size_t j = 0; j < cols; j++) s += f16_to_float(row[j]) * x[j];
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
            total += partial * f16_to_float(scales[r * groups + k]);
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
            float scale = f16_to_float(scales[r * groups + k]);
            float bias = biases ? f16_to_float(biases[r * groups + k]) : -8 * scale;
            total += scale * partial + bias * sums[k];
        }
        y[r] = total;
    }
}

// MARK: x86-64: AVX2, FMA, F16C.

#if defined(__x86_64__)
#include <immintrin.h>
#define VLQ_AVX2 __attribute__((target("avx2,fma,f16c")))

VLQ_AVX2 static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

VLQ_AVX2 static inline __m256 load_bf16(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

VLQ_AVX2 static inline __m256 load_f16(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

VLQ_AVX2 static inline float half_scalar(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

#define HALF_ROWS(name, load, convert)                                                                            \
    VLQ_AVX2 static void name(const uint16_t *w, size_t cols, const float *x, float *y, size_t begin, size_t end) {  \
        for (size_t r = begin; r < end; r++) {                                                                    \
            const uint16_t *row = w + r * cols;                                                                   \
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(),                 \
                   a3 = _mm256_setzero_ps();                                                                      \
            size_t j = 0;                                                                                         \
            for (; j + 32 <= cols; j += 32) {                                                                     \
                a0 = _mm256_fmadd_ps(load(row + j), _mm256_loadu_ps(x + j), a0);                                  \
                a1 = _mm256_fmadd_ps(load(row + j + 8), _mm256_loadu_ps(x + j + 8), a1);                          \
                a2 = _mm256_fmadd_ps(load(row + j + 16), _mm256_loadu_ps(x + j + 16), a2);                        \
                a3 = _mm256_fmadd_ps(load(row + j + 24), _mm256_loadu_ps(x + j + 24), a3);                        \
            }                                                                                                     \
            for (; j + 8 <= cols; j += 8) a0 = _mm256_fmadd_ps(load(row + j), _mm256_loadu_ps(x + j), a0);        \
            float s = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                         \
            for (; j < cols; j++) s += convert(row[j]) * x[j];                                                    \
            y[r] = s;                                                                                             \
        }                                                                                                         \
    }

HALF_ROWS(bf16_avx2, load_bf16, bf16_to_float)
HALF_ROWS(f16_avx2, load_f16, half_scalar)

VLQ_AVX2 static inline __m256 load_q8(const int8_t *p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}

VLQ_AVX2 static void q8_avx2(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x,
                             float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        __m256 total = _mm256_setzero_ps();
        float tail = 0;
        for (size_t k = 0; k < groups; k++) {
            size_t j = k * group, stop = j + group;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
            for (; j + 16 <= stop; j += 16) {
                a0 = _mm256_fmadd_ps(load_q8(row + j), _mm256_loadu_ps(x + j), a0);
                a1 = _mm256_fmadd_ps(load_q8(row + j + 8), _mm256_loadu_ps(x + j + 8), a1);
            }
            for (; j + 8 <= stop; j += 8) a0 = _mm256_fmadd_ps(load_q8(row + j), _mm256_loadu_ps(x + j), a0);
            float scale = half_scalar(scales[r * groups + k]);
            total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scale), total);
            if (j < stop) {
                float partial = 0;
                for (; j < stop; j++) partial += (float)row[j] * x[j];
                tail += partial * scale;
            }
        }
        y[r] = hsum(total) + tail;
    }
}

// 16 codes from 8 bytes, in element order (low nibble first), as two vectors of 8 floats.
VLQ_AVX2 static inline void load_q4x16(const uint8_t *p, __m256 *w0, __m256 *w1) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    __m128i b = _mm_loadl_epi64((const __m128i *)p);
    __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
    *w0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
    *w1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
}

VLQ_AVX2 static inline __m256 load_q4x8(const uint8_t *p) {
    const __m128i mask = _mm_set1_epi8(0x0F);
    uint32_t four;
    memcpy(&four, p, 4);
    __m128i b = _mm_cvtsi32_si128((int)four);
    __m128i codes = _mm_unpacklo_epi8(_mm_and_si128(b, mask), _mm_and_si128(_mm_srli_epi16(b, 4), mask));
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
}

VLQ_AVX2 static void q4_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, const float *x, const float *sums, float *y, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        __m256 total = _mm256_setzero_ps();
        float tail = 0;
        for (size_t k = 0; k < groups; k++) {
            size_t j = k * group, stop = j + group;
            __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), w0, w1;
            for (; j + 16 <= stop; j += 16) {
                load_q4x16(row + j / 2, &w0, &w1);
                a0 = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + j), a0);
                a1 = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + j + 8), a1);
            }
            for (; j + 8 <= stop; j += 8) a0 = _mm256_fmadd_ps(load_q4x8(row + j / 2), _mm256_loadu_ps(x + j), a0);
            float scale = half_scalar(scales[r * groups + k]);
            float bias = biases ? half_scalar(biases[r * groups + k]) : -8 * scale;
            total = _mm256_fmadd_ps(_mm256_add_ps(a0, a1), _mm256_set1_ps(scale), total);
            float partial = 0;
            for (; j < stop; j += 2) {
                uint8_t b = row[j / 2];
                partial += (float)(b & 0x0F) * x[j] + (float)(b >> 4) * x[j + 1];
            }
            tail += partial * scale + bias * sums[k];
        }
        y[r] = hsum(total) + tail;
    }
}

static int known = -1;

static int has_avx2(void) {
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    }
    return known;
}
void vlq_kernels_use_portable(int portable) {
    known = -1;
    if (portable) known = 0;
}
#else
static int has_avx2(void) { return 0; }
void vlq_kernels_use_portable(int portable) { (void)portable; }
#endif

// MARK: Entry points.

#if defined(__x86_64__)
#define DISPATCH(fast, slow, ...) (has_avx2() ? fast(__VA_ARGS__) : slow(__VA_ARGS__))
#else
#define DISPATCH(fast, slow, ...) slow(__VA_ARGS__)
#endif

void vlq_matvec_bf16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(bf16_avx2, bf16_scalar, w, cols, x, y, row_begin, row_end);
}

void vlq_matvec_f16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(f16_avx2, f16_scalar, w, cols, x, y, row_begin, row_end);
}

void vlq_matvec_q8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x, float *y,
                   size_t row_begin, size_t row_end) {
    DISPATCH(q8_avx2, q8_scalar, codes, scales, cols, group, x, y, row_begin, row_end);
}

void vlq_matvec_q4(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                   const float *x, const float *group_sums, float *y, size_t row_begin, size_t row_end) {
    DISPATCH(q4_avx2, q4_scalar, codes, scales, biases, cols, group, x, group_sums, y, row_begin, row_end);
}

void vlq_group_sums(const float *x, size_t cols, size_t group, float *sums) {
    for (size_t k = 0; k < cols / group; k++) {
        float s = 0;
        for (size_t j = k * group; j < (k + 1) * group; j++) s += x[j];
        sums[k] = s;
    }
}

const char *vlq_kernels_isa(void) {
    return has_avx2() ? "avx2" : "scalar";
}
