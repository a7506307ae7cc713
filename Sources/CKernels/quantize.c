// Round-to-nearest group quantization (include/vlq_quantize.h). The results must be bit-identical to
// GroupQuantizer's Swift definition, so nothing here may be reassociated or fused: a*b+c stays two
// roundings (FP_CONTRACT off), each group's error is summed in element order, and the vector version
// puts eight *groups* side by side (one per lane) instead of splitting one group's sum.
#include "vlq_quantize.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "half_floats.h"

#pragma STDC FP_CONTRACT OFF

#if defined(__x86_64__)
#include <immintrin.h>
#endif

// MARK: Scalar definition (the Swift one, operation for operation).

// Round to nearest even, overflow to infinity (as Swift's Float16(Float) and F16C do).
static uint16_t float_to_f16_bits(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = x & 0x80000000u;
    x ^= sign;
    uint16_t h;
    if (x >= 0x47800000u) {
        h = x > 0x7F800000u ? 0x7E00 : 0x7C00;
    } else if (x < 0x38800000u) {
        // Subnormal or zero: adding 0.5 lines the half's mantissa up with the float's, rounding evenly.
        float shifted;
        memcpy(&shifted, &x, 4);
        shifted += 0.5f;
        uint32_t y;
        memcpy(&y, &shifted, 4);
        h = (uint16_t)(y - 0x3F000000u);
    } else {
        uint32_t odd = (x >> 13) & 1u;
        x += ((uint32_t)(15 - 127) << 23) + 0xFFFu + odd;
        h = (uint16_t)(x >> 13);
    }
    return (uint16_t)(h | (sign >> 16));
}

static void levels_of(int encoding, float *low, float *high) {
    switch (encoding) {
    case VLQ_QUANT_Q8: *low = -127.0f, *high = 127.0f; break;
    case VLQ_QUANT_Q4S: *low = -8.0f, *high = 7.0f; break;
    case VLQ_QUANT_Q3: *low = 0.0f, *high = 7.0f; break;
    default: *low = 0.0f, *high = 15.0f; break;
    }
}

// The code as a float: Swift's min(max(q, low), high) keeps the first operand on ties, and going through
// Int turns -0 into +0.
static inline float code_scalar(float w, float s, float b, float low, float high) {
    if (s == 0) return 0.0f;
    float q = roundf((w - b) / s);
    if (q != q) return 0.0f;
    float m = low >= q ? low : q;
    m = high < m ? high : m;
    return m + 0.0f;
}

static float error_scalar(const float *w, size_t n, const float *a, float s, float b, float low, float high) {
    float e = 0.0f;
    for (size_t j = 0; j < n; j++) {
        float d = w[j] - (code_scalar(w[j], s, b, low, high) * s + b);
        float weight = a ? a[j] : 1.0f;
        e += weight * d * d;
    }
    return e;
}

typedef struct {
    float scale, bias, error;
} fit_t;

static void consider_scalar(const float *w, size_t n, const float *a, int encoding, float scale, float bias,
                            fit_t *best) {
    float s = vlq_f16_to_float(float_to_f16_bits(scale)), b = vlq_f16_to_float(float_to_f16_bits(bias));
    if (!isfinite(s) || !isfinite(b) || s == 0) return;
    float low, high;
    levels_of(encoding, &low, &high);
    float e = error_scalar(w, n, a, s, b, low, high);
    if (e < best->error) *best = (fit_t){s, b, e};
}

static fit_t fit_scalar(const float *w, size_t n, const float *a, int encoding, int steps, float max_shrink) {
    float lo = INFINITY, hi = -INFINITY, amax = 0.0f, signed_max = 0.0f;
    for (size_t j = 0; j < n; j++) {
        lo = w[j] < lo ? w[j] : lo;
        hi = w[j] >= hi ? w[j] : hi;
        if (fabsf(w[j]) > amax) {
            amax = fabsf(w[j]);
            signed_max = w[j];
        }
    }
    if (amax == 0) return (fit_t){0, 0, 0};
    fit_t best = {0, 0, INFINITY};
    for (int step = 0; step <= steps; step++) {
        float c = 1 - max_shrink * (float)step / (float)steps;
        if (encoding == VLQ_QUANT_Q8) {
            consider_scalar(w, n, a, encoding, c * amax / 127, 0, &best);
        } else if (encoding == VLQ_QUANT_Q4S) {
            consider_scalar(w, n, a, encoding, c * signed_max / -8, 0, &best);
            consider_scalar(w, n, a, encoding, -c * signed_max / 7, 0, &best);
        } else {
            // The affine encodings (q4, q3): codes 0 up to the highest level.
            float low, high;
            levels_of(encoding, &low, &high);
            const float f[3] = {c, c, 1}, g[3] = {c, 1, c};
            for (int k = 0; k < 3; k++) {
                float l = lo * (lo < 0 ? f[k] : 1), h = hi * (hi > 0 ? g[k] : 1);
                consider_scalar(w, n, a, encoding, (h - l) / high, l, &best);
            }
        }
    }
    return best;
}

static void fit_groups_scalar(const float *w, const float *importance, size_t groups, size_t group, int encoding,
                              int steps, float max_shrink, uint16_t *scales, uint16_t *biases, float *errors) {
    for (size_t g = 0; g < groups; g++) {
        fit_t fit = fit_scalar(w + g * group, group, importance ? importance + g * group : NULL, encoding, steps,
                               max_shrink);
        scales[g] = float_to_f16_bits(fit.scale);
        biases[g] = float_to_f16_bits(fit.bias);
        errors[g] = fit.error;
    }
}

static void round_groups_scalar(const float *w, size_t groups, size_t group, int encoding, const uint16_t *scales,
                                const uint16_t *biases, int8_t *codes, float *values) {
    float low, high;
    levels_of(encoding, &low, &high);
    int offset = encoding == VLQ_QUANT_Q4S ? 8 : 0;
    for (size_t g = 0; g < groups; g++) {
        float s = vlq_f16_to_float(scales[g]), b = vlq_f16_to_float(biases[g]);
        for (size_t j = g * group; j < (g + 1) * group; j++) {
            float q = code_scalar(w[j], s, b, low, high);
            codes[j] = (int8_t)((int)q + offset);
            if (values) values[j] = q * s + b;
        }
    }
}

// MARK: AVX2: eight groups side by side.

#if defined(__x86_64__)
#define VLQ_QUANT_AVX2 __attribute__((target("avx2,f16c")))

VLQ_QUANT_AVX2 static inline __m256 round_to_f16(__m256 x) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

// Nearest on eight lanes, ties away from zero: truncate, then step out when the rest is >= 1/2 (the rest
// is exact).
VLQ_QUANT_AVX2 static inline __m256 round_half_away_avx2(__m256 q) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
    __m256 t = _mm256_round_ps(q, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    __m256 rest = _mm256_andnot_ps(sign, _mm256_sub_ps(q, t));
    __m256 step = _mm256_and_ps(_mm256_cmp_ps(rest, half, _CMP_GE_OQ), _mm256_or_ps(_mm256_and_ps(q, sign), one));
    return _mm256_add_ps(t, step);
}

// code_scalar on eight lanes: round_half_away_avx2, NaN to 0, the same clamping order, -0 to +0.
VLQ_QUANT_AVX2 static inline __m256 code_avx2(__m256 w, __m256 s, __m256 b, __m256 low, __m256 high) {
    __m256 q = round_half_away_avx2(_mm256_div_ps(_mm256_sub_ps(w, b), s));
    q = _mm256_andnot_ps(_mm256_cmp_ps(q, q, _CMP_UNORD_Q), q);
    __m256 m = _mm256_blendv_ps(q, low, _mm256_cmp_ps(low, q, _CMP_GE_OQ));
    m = _mm256_blendv_ps(m, high, _mm256_cmp_ps(high, m, _CMP_LT_OQ));
    m = _mm256_add_ps(m, _mm256_setzero_ps());
    // A zero scale has code 0 (never a fitted candidate, but a stored group of zeros).
    return _mm256_andnot_ps(_mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_EQ_OQ), m);
}

typedef struct {
    __m256 scale, bias, error;
} fit8_t;

// `t` holds eight groups transposed: element j of lane k at t[8 j + k]. `biased` and `weighted` are
// constants once inlined (consider_avx2 picks the version): q8's and q4s's bias is +0, and without
// importance every weight is 1, so their subtraction, addition and multiplication by one are left out.
// The errors stay bit for bit the same: w - (+0) is w, 1 * d is d, and where code * s + (+0) turns a -0
// into +0 only the sign of a zero d can differ, which d * d does not see.
VLQ_QUANT_AVX2 static __attribute__((always_inline)) inline void consider_lanes(
    const float *t, const float *a, size_t n, __m256 low, __m256 high, __m256 scale, __m256 bias, fit8_t *best,
    const int biased, const int weighted) {
    __m256 s = round_to_f16(scale), b = round_to_f16(bias);
    const __m256 sign = _mm256_set1_ps(-0.0f), inf = _mm256_set1_ps(INFINITY);
    __m256 valid = _mm256_and_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, s), inf, _CMP_LT_OQ),
                                 _mm256_cmp_ps(_mm256_andnot_ps(sign, b), inf, _CMP_LT_OQ));
    valid = _mm256_and_ps(valid, _mm256_cmp_ps(s, _mm256_setzero_ps(), _CMP_NEQ_OQ));
    if (_mm256_movemask_ps(valid) == 0) return;
    // code_avx2's value in fewer steps: the lanes that are not valid are never chosen, and in the valid
    // ones q is finite, so neither NaN nor a zero scale needs handling, clamping is max and min, and the
    // sign of a zero code changes no error. The errors are code_avx2's, bit for bit.
    __m256 e = _mm256_setzero_ps();
    for (size_t j = 0; j < n; j++) {
        __m256 w = _mm256_loadu_ps(t + 8 * j);
        __m256 q = round_half_away_avx2(_mm256_div_ps(biased ? _mm256_sub_ps(w, b) : w, s));
        __m256 code = _mm256_min_ps(_mm256_max_ps(q, low), high);
        __m256 value = _mm256_mul_ps(code, s);
        __m256 d = _mm256_sub_ps(w, biased ? _mm256_add_ps(value, b) : value);
        e = _mm256_add_ps(e, _mm256_mul_ps(weighted ? _mm256_mul_ps(_mm256_loadu_ps(a + 8 * j), d) : d, d));
    }
    __m256 better = _mm256_and_ps(valid, _mm256_cmp_ps(e, best->error, _CMP_LT_OQ));
    best->scale = _mm256_blendv_ps(best->scale, s, better);
    best->bias = _mm256_blendv_ps(best->bias, b, better);
    best->error = _mm256_blendv_ps(best->error, e, better);
}

VLQ_QUANT_AVX2 static void consider_avx2(const float *t, const float *a, size_t n, __m256 low, __m256 high,
                                         __m256 scale, __m256 bias, fit8_t *best, int biased) {
    if (biased) {
        if (a) return consider_lanes(t, a, n, low, high, scale, bias, best, 1, 1);
        return consider_lanes(t, a, n, low, high, scale, bias, best, 1, 0);
    }
    if (a) return consider_lanes(t, a, n, low, high, scale, bias, best, 0, 1);
    consider_lanes(t, a, n, low, high, scale, bias, best, 0, 0);
}

VLQ_QUANT_AVX2 static void search_avx2(const float *t, const float *a, size_t n, int encoding, int steps,
                                       float max_shrink, uint16_t *scales, uint16_t *biases, float *errors) {
    const __m256 sign = _mm256_set1_ps(-0.0f), zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.0f);
    __m256 lo = _mm256_set1_ps(INFINITY), hi = _mm256_set1_ps(-INFINITY), amax = zero, signed_max = zero;
    for (size_t j = 0; j < n; j++) {
        __m256 w = _mm256_loadu_ps(t + 8 * j), magnitude = _mm256_andnot_ps(sign, w);
        lo = _mm256_blendv_ps(lo, w, _mm256_cmp_ps(w, lo, _CMP_LT_OQ));
        hi = _mm256_blendv_ps(hi, w, _mm256_cmp_ps(w, hi, _CMP_GE_OQ));
        __m256 larger = _mm256_cmp_ps(magnitude, amax, _CMP_GT_OQ);
        amax = _mm256_blendv_ps(amax, magnitude, larger);
        signed_max = _mm256_blendv_ps(signed_max, w, larger);
    }
    float low, high;
    levels_of(encoding, &low, &high);
    __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high);
    fit8_t best = {zero, zero, _mm256_set1_ps(INFINITY)};
    // Shrinking either end only applies to the end on its side of zero.
    __m256 lo_negative = _mm256_cmp_ps(lo, zero, _CMP_LT_OQ), hi_positive = _mm256_cmp_ps(hi, zero, _CMP_GT_OQ);
    for (int step = 0; step <= steps; step++) {
        float c = 1 - max_shrink * (float)step / (float)steps;
        __m256 vc = _mm256_set1_ps(c);
        if (encoding == VLQ_QUANT_Q8) {
            consider_avx2(t, a, n, vlow, vhigh, _mm256_div_ps(_mm256_mul_ps(vc, amax), _mm256_set1_ps(127)), zero,
                          &best, 0);
        } else if (encoding == VLQ_QUANT_Q4S) {
            consider_avx2(t, a, n, vlow, vhigh, _mm256_div_ps(_mm256_mul_ps(vc, signed_max), _mm256_set1_ps(-8)),
                          zero, &best, 0);
            consider_avx2(t, a, n, vlow, vhigh, _mm256_div_ps(_mm256_mul_ps(_mm256_set1_ps(-c), signed_max),
                                                              _mm256_set1_ps(7)), zero, &best, 0);
        } else {
            const float f[3] = {c, c, 1}, g[3] = {c, 1, c};
            for (int k = 0; k < 3; k++) {
                __m256 l = _mm256_mul_ps(lo, _mm256_blendv_ps(one, _mm256_set1_ps(f[k]), lo_negative));
                __m256 h = _mm256_mul_ps(hi, _mm256_blendv_ps(one, _mm256_set1_ps(g[k]), hi_positive));
                consider_avx2(t, a, n, vlow, vhigh, _mm256_div_ps(_mm256_sub_ps(h, l), vhigh), l, &best, 1);
            }
        }
    }
    // A group of zeros keeps scale 0, bias 0, error 0.
    __m256 empty = _mm256_cmp_ps(amax, zero, _CMP_EQ_OQ);
    best.scale = _mm256_blendv_ps(best.scale, zero, empty);
    best.bias = _mm256_blendv_ps(best.bias, zero, empty);
    best.error = _mm256_blendv_ps(best.error, zero, empty);
    __m128i s16 = _mm256_cvtps_ph(best.scale, _MM_FROUND_TO_NEAREST_INT), b16 = _mm256_cvtps_ph(best.bias, 0);
    _mm_storeu_si128((__m128i *)scales, s16);
    _mm_storeu_si128((__m128i *)biases, b16);
    _mm256_storeu_ps(errors, best.error);
}

VLQ_QUANT_AVX2 static void fit_groups_avx2(const float *w, const float *importance, size_t groups, size_t group,
                                           int encoding, int steps, float max_shrink, uint16_t *scales,
                                           uint16_t *biases, float *errors) {
    float *t = malloc(sizeof(float) * 8 * group * (importance ? 2 : 1));
    float *ta = importance ? t + 8 * group : NULL;
    for (size_t g0 = 0; g0 < groups; g0 += 8) {
        // A last block of fewer than eight groups repeats its last group in the spare lanes.
        for (size_t k = 0; k < 8; k++) {
            size_t g = g0 + k < groups ? g0 + k : groups - 1;
            for (size_t j = 0; j < group; j++) t[8 * j + k] = w[g * group + j];
            if (ta)
                for (size_t j = 0; j < group; j++) ta[8 * j + k] = importance[g * group + j];
        }
        uint16_t s[8], b[8];
        float e[8];
        search_avx2(t, ta, group, encoding, steps, max_shrink, s, b, e);
        for (size_t k = 0; k < 8 && g0 + k < groups; k++) {
            scales[g0 + k] = s[k];
            biases[g0 + k] = b[k];
            errors[g0 + k] = e[k];
        }
    }
    free(t);
}

VLQ_QUANT_AVX2 static void round_groups_avx2(const float *w, size_t groups, size_t group, int encoding,
                                             const uint16_t *scales, const uint16_t *biases, int8_t *codes,
                                             float *values) {
    float low, high;
    levels_of(encoding, &low, &high);
    __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high);
    __m256i offset = _mm256_set1_epi32(encoding == VLQ_QUANT_Q4S ? 8 : 0);
    for (size_t g = 0; g < groups; g++) {
        float s = vlq_f16_to_float(scales[g]), b = vlq_f16_to_float(biases[g]);
        __m256 vs = _mm256_set1_ps(s), vb = _mm256_set1_ps(b);
        size_t j = g * group, end = (g + 1) * group;
        for (; j + 8 <= end; j += 8) {
            __m256 q = code_avx2(_mm256_loadu_ps(w + j), vs, vb, vlow, vhigh);
            __m256i c = _mm256_add_epi32(_mm256_cvttps_epi32(q), offset);
            __m128i c16 = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
            _mm_storel_epi64((__m128i *)(codes + j), _mm_packs_epi16(c16, c16));
            if (values) _mm256_storeu_ps(values + j, _mm256_add_ps(_mm256_mul_ps(q, vs), vb));
        }
        for (; j < end; j++) {
            float q = code_scalar(w[j], s, b, low, high);
            codes[j] = (int8_t)((int)q + (encoding == VLQ_QUANT_Q4S ? 8 : 0));
            if (values) values[j] = q * s + b;
        }
    }
}

VLQ_QUANT_AVX2 static void gptq_push_error_avx2(float *row, const float *h, float e, size_t count) {
    const __m256 ve = _mm256_set1_ps(e);
    size_t j = 0;
    for (; j + 8 <= count; j += 8) {
        __m256 product = _mm256_mul_ps(ve, _mm256_loadu_ps(h + j));
        _mm256_storeu_ps(row + j, _mm256_sub_ps(_mm256_loadu_ps(row + j), product));
    }
    for (; j < count; j++) row[j] -= e * h[j];
}

static int choice = -1;

static int use_avx2(void) {
    if (choice < 0) {
        __builtin_cpu_init();
        choice = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c");
    }
    return choice;
}

void vlq_quantize_force_scalar(int scalar) { choice = scalar ? 0 : -1; }
#else
static int use_avx2(void) { return 0; }
void vlq_quantize_force_scalar(int scalar) { (void)scalar; }
#endif

// MARK: Entry points.

int vlq_quantize_vectorized(void) { return use_avx2(); }

void vlq_fit_groups(const float *w, const float *importance, size_t groups, size_t group, int encoding, int steps,
                    float max_shrink, uint16_t *scales, uint16_t *biases, float *errors) {
    if (groups == 0 || group == 0) return;
#if defined(__x86_64__)
    if (use_avx2()) {
        fit_groups_avx2(w, importance, groups, group, encoding, steps, max_shrink, scales, biases, errors);
        return;
    }
#endif
    fit_groups_scalar(w, importance, groups, group, encoding, steps, max_shrink, scales, biases, errors);
}

void vlq_gptq_push_error(float *row, const float *h, float e, size_t count) {
#if defined(__x86_64__)
    if (use_avx2()) {
        gptq_push_error_avx2(row, h, e, count);
        return;
    }
#endif
    for (size_t j = 0; j < count; j++) row[j] -= e * h[j];
}

void vlq_round_groups(const float *w, size_t groups, size_t group, int encoding, const uint16_t *scales,
                      const uint16_t *biases, int8_t *codes, float *values) {
#if defined(__x86_64__)
    if (use_avx2()) {
        round_groups_avx2(w, groups, group, encoding, scales, biases, codes, values);
        return;
    }
#endif
    round_groups_scalar(w, groups, group, encoding, scales, biases, codes, values);
}
