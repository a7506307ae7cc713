// Round-to-nearest group quantization (GroupQuantizer's range search and rounding), in C so that the
// search can run on eight groups at once. Bit-exact with the Swift definition it replaces: each group's
// error is summed in element order, divisions stay divisions, ties round away from zero, parameters are
// rounded to f16 (nearest even) before they are judged, and candidates win only when strictly better.
// On x86-64 an AVX2+F16C version is chosen at run time; elsewhere a portable scalar loop.
#ifndef VLQ_QUANTIZE_H
#define VLQ_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// The encodings' code ranges: q8 -127...127, q4 0...15 with a bias, q4s -8...7 (stored + 8), q3 0...7 with a
/// bias.
typedef enum { VLQ_QUANT_Q8 = 0, VLQ_QUANT_Q4 = 1, VLQ_QUANT_Q4S = 2, VLQ_QUANT_Q3 = 3 } vlq_quant_encoding;

/// Fits `groups` consecutive groups of `group` floats at `w` (importance: NULL, or one weight per element
/// laid out as `w`): the f16 scale and bias bits of each group's best candidate range (the full range shrunk
/// by up to `max_shrink` in `steps` steps) and its error. A group of zeros gets scale 0, bias 0, error 0.
void vlq_fit_groups(const float *w, const float *importance, size_t groups, size_t group, int encoding, int steps,
                    float max_shrink, uint16_t *scales, uint16_t *biases, float *errors);

/// Rounds `groups` consecutive groups of `group` floats at `w` with their f16 scales and biases: the stored
/// code of each value (q4s offset by 8) and what it dequantizes to (`values` may be NULL).
void vlq_round_groups(const float *w, size_t groups, size_t group, int encoding, const uint16_t *scales,
                      const uint16_t *biases, int8_t *codes, float *values);

/// GPTQ's push of one column's scaled error onto the rest of its block, in one row: row[j] -= e * h[j] for
/// j < count, the product rounded before the subtraction (no FMA), as GPTQRows' Swift loop did, bit for bit.
void vlq_gptq_push_error(float *row, const float *h, float e, size_t count);

/// Whether the AVX2 version runs (for tests that compare it with the scalar one).
int vlq_quantize_vectorized(void);

/// Forces the portable scalar version (1) or restores the run-time choice (0); for tests.
void vlq_quantize_force_scalar(int scalar);

#ifdef __cplusplus
}
#endif

#endif
