// Matrix-vector kernels for decode (WeightStore.matrixVector): y[r] = sum_j W[r, j] x[j] for rows
// [row_begin, row_end), straight from the stored 16-bit or quantized weights, with f32 activations.
// Exact for the stored values up to float summation order: the weights are unpacked to f32 and
// multiplied by float FMA; only the opt-in *_a8 kernels below quantize the activations. On x86-64 an
// AVX2+FMA+F16C version is chosen at run time (__builtin_cpu_supports), on arm64 NEON (the *_a8 ones:
// their portable loops); elsewhere a portable scalar loop.
#ifndef VLQ_KERNELS_H
#define VLQ_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/// bf16 weights [rows, cols], row-major.
void vlq_matvec_bf16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end);

/// IEEE f16 weights [rows, cols], row-major.
void vlq_matvec_f16(const uint16_t *w, size_t cols, const float *x, float *y, size_t row_begin, size_t row_end);

/// q8: one signed byte per weight [rows, cols]; f16 scales [rows, cols / group]; value = code * scale.
void vlq_matvec_q8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const float *x, float *y,
                   size_t row_begin, size_t row_end);

/// q4 / q4s: two codes 0...15 per byte (element 2j low nibble, 2j+1 high); f16 scales and, for q4, f16
/// biases [rows, cols / group] (biases NULL: q4s, bias = -8 * scale); value = code * scale + bias.
/// `group_sums` holds sum(x) over each group's columns (vlq_group_sums); `group` is even.
void vlq_matvec_q4(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                   const float *x, const float *group_sums, float *y, size_t row_begin, size_t row_end);

/// q3: 32 codes 0...7 per 12-byte block, rows of cols / 32 blocks back to back; code e of a block has its low
/// two bits at bits 2 (e / 8) of byte e % 8 and its high bit at bit e % 8 of byte 8 + e / 8 (formats/VLQ-BUNDLE.md,
/// section 5). f16 scales and biases [rows, cols / group]; value = code * scale + bias. `group` is a multiple
/// of 32; `group_sums` as for q4.
void vlq_matvec_q3(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols, size_t group,
                   const float *x, const float *group_sums, float *y, size_t row_begin, size_t row_end);

/// sums[k] = sum of x[k * group ..< (k + 1) * group], for k in 0 ..< cols / group.
void vlq_group_sums(const float *x, size_t cols, size_t group, float *sums);

/// int8 activations (opt-in: results change slightly, as llama.cpp's do). x [cols], cols a multiple of
/// 32, becomes int8 per block of 32: block_scales[b] = max |x| over block b / 127, xq = round(x / that),
/// ties to even; an all-zero block has scale 0.
void vlq_quantize_activations(const float *x, size_t cols, int8_t *xq, float *block_scales);

/// vlq_matvec_q8 on int8 x (vlq_quantize_activations): each block of 32 an integer dot product times
/// its x scale, each group's sum times its weight scale. `group` is a multiple of 32.
void vlq_matvec_q8_a8(const int8_t *codes, const uint16_t *scales, size_t cols, size_t group, const int8_t *xq,
                      const float *x_scales, float *y, size_t row_begin, size_t row_end);

/// vlq_matvec_q4 on int8 x: scale * sum(n xq d) + bias * group_sums, where group_sums are the float x's
/// (vlq_group_sums), so the bias term stays exact. `group` is a multiple of 32.
void vlq_matvec_q4_a8(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                      size_t group, const int8_t *xq, const float *x_scales, const float *group_sums, float *y,
                      size_t row_begin, size_t row_end);

/// Sliced activations (sliced.c), for q4: x [cols], cols a multiple of 128, as three int8 slices per block
/// of 128, x ~ block_scales[b] * (65536 s2 + 256 s1 + s0), within block_scales[b] / 2 of each element, where
/// block_scales[b] = max |x| over the block / 8355711. `slices` takes 3 * cols bytes: per block, slice 0's
/// 128, then slice 1's, then slice 2's, each the block's even elements, then its odd ones (as q4's low and
/// high nibbles hold them). Returns 0 (and fills nothing reliable) when cols is not a multiple of 128 or x
/// holds a value that is not finite: the float kernels take those.
int vlq_slice_activations(const float *x, size_t cols, int8_t *slices, float *block_scales);

/// vlq_matvec_q4 on sliced x: scale * (the joined sums * x scale) + bias * group_sums, the float
/// x's sums as for vlq_matvec_q4. `group` is a multiple of 128.
void vlq_matvec_q4_sliced(const uint8_t *codes, const uint16_t *scales, const uint16_t *biases, size_t cols,
                          size_t group, const int8_t *slices, const float *block_scales, const float *group_sums,
                          float *y, size_t row_begin, size_t row_end);

/// Whether the sliced kernel runs as vector code here (x86-64 with AVX-512 VNNI); elsewhere it is the
/// portable loop, slower than the float kernel, and decode keeps to that.
int vlq_sliced_vector_available(void);

/// Tests: zero keeps the sliced kernel to its portable loop, nonzero lets the vector ones run again.
void vlq_kernels_allow_sliced_vector(int allowed);

/// Tests: nonzero runs the portable kernels from now on, zero goes back to choosing by the CPU. Not
/// while kernels run on other threads.
void vlq_kernels_use_portable(int portable);

/// Tests: zero keeps x86-64 to its AVX2 kernels on a CPU with AVX-512, nonzero lets the AVX-512 ones run
/// again (the default). Not while kernels run on other threads.
void vlq_kernels_allow_avx512(int allowed);

/// Which implementation runs: "avx512" (AVX2 kernels, and AVX-512 ones where they exist), "avx2", "neon"
/// or "scalar".
const char *vlq_kernels_isa(void);

#ifdef __cplusplus
}
#endif

#endif
