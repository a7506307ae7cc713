// Panel dequantize / upcast kernels (include/vlq_dequantize.h). The values must equal the engine's
// Swift decode bit for bit: a q4 value is rounded after code * scale and again after + bias, so the
// compiler may not contract them into one fused multiply-add (which rounds once).
#pragma STDC FP_CONTRACT OFF

#include "vlq_dequantize.h"

#include <string.h>

#include "half_floats.h"

// MARK: Portable versions (also the tails of the vector ones).

static void bf16_portable(const uint16_t *w, size_t cols, float *out, size_t begin, size_t end) {
    const uint16_t *in = w + begin * cols;
    size_t count = (end - begin) * cols;
    for (size_t i = 0; i < count; i++) out[i] = vlq_bf16_to_float(in[i]);
}

static void f16_portable(const uint16_t *w, size_t cols, float *out, size_t begin, size_t end) {
    const uint16_t *in = w + begin * cols;
    size_t count = (end - begin) * cols;
    for (size_t i = 0; i < count; i++) out[i] = vlq_f16_to_float(in[i]);
}

static void q8_portable(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, float *out,
                        size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            float scale = vlq_f16_to_float(scales[r * groups + k]);
            for (size_t j = k * group; j < (k + 1) * group; j++) dst[j] = (float)row[j] * scale;
        }
    }
}

// Codes j (even) ..< stop of one row: pairs from bytes, low nibble first.
static inline void q4_pairs(const uint8_t *row, size_t j, size_t stop, float scale, float bias, float *dst) {
    for (; j < stop; j += 2) {
        uint8_t b = row[j / 2];
        float low = (float)(b & 0x0F) * scale, high = (float)(b >> 4) * scale;
        dst[j] = low + bias;
        dst[j + 1] = high + bias;
    }
}

static void q4_portable(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                        size_t group, float *out, size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            float scale = vlq_f16_to_float(scales[r * groups + k]);
            float bias = biases ? vlq_f16_to_float(biases[r * groups + k]) : -8 * scale;
            q4_pairs(codes + r * cols / 2, k * group, (k + 1) * group, scale, bias, dst);
        }
    }
}

// q3 (formats/VLQ-BUNDLE.md, section 5): blocks of 32 codes in 12 bytes, groups whole blocks. Code e of a
// block: its low two bits at bits 2 (e / 8) of byte e % 8, its high bit at bit e % 8 of byte 8 + e / 8.
enum { Q3_BLOCK = 32, Q3_BLOCK_BYTES = 12 };

static void q3_portable(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                        size_t group, float *out, size_t begin, size_t end) {
    size_t groups = cols / group, row_bytes = cols / Q3_BLOCK * Q3_BLOCK_BYTES;
    for (size_t r = begin; r < end; r++) {
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            float scale = vlq_f16_to_float(scales[r * groups + k]), bias = vlq_f16_to_float(biases[r * groups + k]);
            for (size_t j = k * group; j < (k + 1) * group; j += Q3_BLOCK) {
                const uint8_t *block = codes + r * row_bytes + j / Q3_BLOCK * Q3_BLOCK_BYTES;
                for (size_t e = 0; e < Q3_BLOCK; e++) {
                    unsigned code = ((block[e % 8] >> (2 * (e / 8))) & 3) | (((block[8 + e / 8] >> (e % 8)) & 1) << 2);
                    float scaled = (float)code * scale;
                    dst[j + e] = scaled + bias;
                }
            }
        }
    }
}

// MARK: x86-64: AVX2, F16C.

#if defined(__x86_64__)
#include <immintrin.h>
#define VLQ_AVX2 __attribute__((target("avx2,f16c")))

VLQ_AVX2 static void bf16_avx2(const uint16_t *w, size_t cols, float *out, size_t begin, size_t end) {
    const uint16_t *in = w + begin * cols;
    size_t count = (end - begin) * cols, i = 0;
    for (; i + 16 <= count; i += 16) {
        __m256i a = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i)));
        __m256i b = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(in + i + 8)));
        _mm256_storeu_si256((__m256i *)(out + i), _mm256_slli_epi32(a, 16));
        _mm256_storeu_si256((__m256i *)(out + i + 8), _mm256_slli_epi32(b, 16));
    }
    for (; i < count; i++) out[i] = vlq_bf16_to_float(in[i]);
}

VLQ_AVX2 static void f16_avx2(const uint16_t *w, size_t cols, float *out, size_t begin, size_t end) {
    const uint16_t *in = w + begin * cols;
    size_t count = (end - begin) * cols, i = 0;
    for (; i + 16 <= count; i += 16) {
        _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i))));
        _mm256_storeu_ps(out + i + 8, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(in + i + 8))));
    }
    for (; i < count; i++) out[i] = vlq_f16_to_float(in[i]);
}

VLQ_AVX2 static inline float half_scalar(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}

VLQ_AVX2 static void q8_avx2(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, float *out,
                             size_t begin, size_t end) {
    size_t groups = cols / group;
    for (size_t r = begin; r < end; r++) {
        const int8_t *row = codes + r * cols;
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            float scale = half_scalar(scales[r * groups + k]);
            __m256 s = _mm256_set1_ps(scale);
            size_t j = k * group, stop = j + group;
            for (; j + 16 <= stop; j += 16) {
                __m128i b = _mm_loadu_si128((const __m128i *)(row + j));
                __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b));
                __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(b, 8)));
                _mm256_storeu_ps(dst + j, _mm256_mul_ps(lo, s));
                _mm256_storeu_ps(dst + j + 8, _mm256_mul_ps(hi, s));
            }
            for (; j < stop; j++) dst[j] = (float)row[j] * scale;
        }
    }
}

VLQ_AVX2 static void q4_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, float *out, size_t begin, size_t end) {
    size_t groups = cols / group;
    const __m128i mask = _mm_set1_epi8(0x0F);
    for (size_t r = begin; r < end; r++) {
        const uint8_t *row = codes + r * cols / 2;
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            float scale = half_scalar(scales[r * groups + k]);
            float bias = biases ? half_scalar(biases[r * groups + k]) : -8 * scale;
            __m256 s = _mm256_set1_ps(scale), t = _mm256_set1_ps(bias);
            size_t j = k * group, stop = j + group;
            for (; j + 32 <= stop; j += 32) {
                // 16 bytes: 32 codes in element order once the nibbles are interleaved.
                __m128i b = _mm_loadu_si128((const __m128i *)(row + j / 2));
                __m128i low = _mm_and_si128(b, mask), high = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
                __m128i first = _mm_unpacklo_epi8(low, high), second = _mm_unpackhi_epi8(low, high);
                __m128i parts[4] = {first, _mm_srli_si128(first, 8), second, _mm_srli_si128(second, 8)};
                for (int p = 0; p < 4; p++) {
                    __m256 v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[p]));
                    _mm256_storeu_ps(dst + j + 8 * p, _mm256_add_ps(_mm256_mul_ps(v, s), t));
                }
            }
            q4_pairs(row, j, stop, scale, bias, dst);
        }
    }
}

// As q3_portable, a block of 32 codes per step (the unpacking of kernels.c's q3_block32).
VLQ_AVX2 static void q3_avx2(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                             size_t group, float *out, size_t begin, size_t end) {
    size_t groups = cols / group, row_bytes = cols / Q3_BLOCK * Q3_BLOCK_BYTES;
    const __m256i three = _mm256_set1_epi32(3), four = _mm256_set1_epi32(4);
    const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (size_t r = begin; r < end; r++) {
        float *dst = out + (r - begin) * cols;
        for (size_t k = 0; k < groups; k++) {
            __m256 s = _mm256_set1_ps(half_scalar(scales[r * groups + k]));
            __m256 t = _mm256_set1_ps(half_scalar(biases[r * groups + k]));
            for (size_t j = k * group; j < (k + 1) * group; j += Q3_BLOCK) {
                const uint8_t *p = codes + r * row_bytes + j / Q3_BLOCK * Q3_BLOCK_BYTES;
                long long low_bytes;
                int high_bits;
                memcpy(&low_bytes, p, 8);
                memcpy(&high_bits, p + 8, 4);
                __m256i low = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128(low_bytes));
                __m256i high = _mm256_srlv_epi32(_mm256_set1_epi32(high_bits), lanes);
                __m256i c[4] = {
                    _mm256_or_si256(_mm256_and_si256(low, three), _mm256_and_si256(_mm256_slli_epi32(high, 2), four)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(low, 2), three),
                                    _mm256_and_si256(_mm256_srli_epi32(high, 6), four)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(low, 4), three),
                                    _mm256_and_si256(_mm256_srli_epi32(high, 14), four)),
                    _mm256_or_si256(_mm256_srli_epi32(low, 6), _mm256_and_si256(_mm256_srli_epi32(high, 22), four)),
                };
                for (int q = 0; q < 4; q++)
                    _mm256_storeu_ps(dst + j + 8 * q, _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c[q]), s), t));
            }
        }
    }
}

static int known = -1;

static int has_avx2(void) {
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return known;
}

void vlq_dequantize_use_portable(int portable) {
    known = -1;
    if (portable) known = 0;
}
#else
static int has_avx2(void) { return 0; }
void vlq_dequantize_use_portable(int portable) { (void)portable; }
#endif

// MARK: Entry points.

#if defined(__x86_64__)
#define DISPATCH(fast, slow, ...) (has_avx2() ? fast(__VA_ARGS__) : slow(__VA_ARGS__))
#else
#define DISPATCH(fast, slow, ...) slow(__VA_ARGS__)
#endif

void vlq_upcast_bf16(const uint16_t *w, size_t cols, float *out, size_t row_begin, size_t row_end) {
    DISPATCH(bf16_avx2, bf16_portable, w, cols, out, row_begin, row_end);
}

void vlq_upcast_f16(const uint16_t *w, size_t cols, float *out, size_t row_begin, size_t row_end) {
    DISPATCH(f16_avx2, f16_portable, w, cols, out, row_begin, row_end);
}

void vlq_dequantize_q8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, float *out,
                       size_t row_begin, size_t row_end) {
    DISPATCH(q8_avx2, q8_portable, codes, scales, cols, group, out, row_begin, row_end);
}

void vlq_dequantize_q4(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                       size_t group, float *out, size_t row_begin, size_t row_end) {
    DISPATCH(q4_avx2, q4_portable, codes, scales, biases, cols, group, out, row_begin, row_end);
}

void vlq_dequantize_q3(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                       size_t group, float *out, size_t row_begin, size_t row_end) {
    DISPATCH(q3_avx2, q3_portable, codes, scales, biases, cols, group, out, row_begin, row_end);
}

const char *vlq_dequantize_isa(void) {
    return has_avx2() ? "avx2" : "scalar";
}
