// Panel dequantize / upcast kernels for prefill and the vision tower: rows [row_begin, row_end) of a
// stored weight [rows, cols] written as f32 into `out` (row-major, `cols` values per row, out[0] is
// row row_begin's first value), for sgemm to multiply panel by panel. Bit-identical to
// QuantizedLayout.dequantize (q8: code * scale; q4: code * scale + bias, rounded after the multiply and
// again after the add, never fused) and to the engine's 16-bit upcast. On x86-64 an AVX2+F16C version
// is chosen at run time; elsewhere a portable loop.
#ifndef VLQ_DEQUANTIZE_H
#define VLQ_DEQUANTIZE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// bf16 weights [rows, cols], row-major.
void vlq_upcast_bf16(const uint16_t *w, size_t cols, float *out, size_t row_begin, size_t row_end);

/// IEEE f16 weights [rows, cols], row-major.
void vlq_upcast_f16(const uint16_t *w, size_t cols, float *out, size_t row_begin, size_t row_end);

/// q8: one signed byte per weight [rows, cols]; f16 scales [rows, cols / group]; value = code * scale.
void vlq_dequantize_q8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, float *out,
                       size_t row_begin, size_t row_end);

/// q4 / q4s: two codes 0...15 per byte (element 2j low nibble, 2j+1 high); f16 scales and, for q4, f16
/// biases [rows, cols / group] (biases NULL: q4s, bias = -8 * scale); value = code * scale + bias.
/// `group` is even.
void vlq_dequantize_q4(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                       size_t group, float *out, size_t row_begin, size_t row_end);

/// q3: 32 codes 0...7 per 12-byte block, rows of cols / 32 blocks (layout as vlq_matvec_q3); f16 scales and
/// biases [rows, cols / group]; value = code * scale + bias. `group` is a multiple of 32.
void vlq_dequantize_q3(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                       size_t group, float *out, size_t row_begin, size_t row_end);

/// Tests: nonzero runs the portable kernels from now on, zero goes back to choosing by the CPU. Not
/// while kernels run on other threads.
void vlq_dequantize_use_portable(int portable);

/// Which implementation runs: "avx2" or "scalar".
const char *vlq_dequantize_isa(void);

#ifdef __cplusplus
}
#endif

#endif
