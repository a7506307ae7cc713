// bf16 and IEEE f16 to f32, exactly as Swift's Float(Float16) and F16C convert (NaNs made quiet): one
// definition for the decode, dequantize and quantize kernels, whose results must agree bit for bit.
// Private to CKernels (not under include/).
#ifndef VLQ_HALF_FLOATS_H
#define VLQ_HALF_FLOATS_H

#include <stdint.h>
#include <string.h>

static inline float vlq_bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline float vlq_f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
    if (exponent == 0x1F) {  // infinity, or NaN made quiet as F16C and Swift's Float(Float16) do
        bits = sign | 0x7F800000u | (mantissa << 13) | (mantissa ? 0x00400000u : 0);
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

#if defined(__x86_64__)
#include <immintrin.h>

// One f16 through F16C, for the vector kernels' per-group scales (kernels.c, sliced.c); callers are compiled
// for F16C (their target attributes include it) and check the CPU has it before they run.
__attribute__((target("f16c"))) static inline float vlq_f16_to_float_f16c(uint16_t h) {
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(h)));
}
#endif

#endif
