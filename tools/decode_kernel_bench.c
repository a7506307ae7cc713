// Micro benchmark of decode's matrix-vector kernels (Sources/CKernels) on one thread, by CPU time, so that
// other processes on a shared machine disturb it less than wall-clock figures. Not part of the package build:
//
//   clang -O3 -ISources/CKernels/include tools/decode_kernel_bench.c Sources/CKernels/kernels.c \
//     Sources/CKernels/sliced.c -o /tmp/kbench
//   /tmp/kbench q4 [rows] [columns] [group] [samples]
//
// Encodings: bf16, f16, q8, q4, q4s, q3, and q8a8, q4a8, q4sa8: the int8-activation kernels, x quantized
// in each call as decode does (vlq_quantize_activations); q4sl, q4ssl: the sliced-activation kernel, x
// sliced in each call (vlq_slice_activations, sliced.c). Eight matrices are used in turn: rows x columns of
// 64 x 4096 (the default) stay in the caches and measure the kernel's arithmetic; 11008 x 4096 stream from
// memory (run two at once to load both cores). Prints
// the weight bytes (codes, scales and biases) read per second of CPU time, best and median over the samples
// (each one call per matrix).
#include "vlq_kernels.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { MATRICES = 8 };

static double cpu_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    char encoding[16] = "q4";
    if (argc > 1) snprintf(encoding, sizeof encoding, "%s", argv[1]);
    // The a8 suffix: the same weights through the int8-activation kernels.
    size_t name_length = strlen(encoding);
    int a8 = name_length > 2 && !strcmp(encoding + name_length - 2, "a8");
    int sliced = name_length > 2 && !strcmp(encoding + name_length - 2, "sl");
    if (a8 || sliced) encoding[name_length - 2] = 0;
    size_t rows = argc > 2 ? strtoul(argv[2], NULL, 10) : 64, cols = argc > 3 ? strtoul(argv[3], NULL, 10) : 4096;
    size_t group = argc > 4 ? strtoul(argv[4], NULL, 10) : 128, calls = argc > 5 ? strtoul(argv[5], NULL, 10) : 500;
    int half = !strcmp(encoding, "bf16") || !strcmp(encoding, "f16"), q8 = !strcmp(encoding, "q8");
    int q4 = !strcmp(encoding, "q4"), q4s = !strcmp(encoding, "q4s"), q3 = !strcmp(encoding, "q3");
    if (!(half || q8 || q4 || q4s || q3) || (a8 && (half || q3 || group % 32)) ||
        (sliced && !(q4 || q4s)) || (sliced && group % 128) || !rows || !cols || !group ||
        cols % group || (q3 && group % 32) || !calls) {
        fprintf(stderr, "usage: %s bf16|f16|q8|q4|q4s|q3|q8a8|q4a8|q4sa8|q4sl|q4ssl [rows] [columns] [group] [calls]\n",
                argv[0]);
        return 2;
    }
    size_t code_bytes = half ? rows * cols * 2 : q8 ? rows * cols : q3 ? rows * cols / 32 * 12 : rows * cols / 2;
    size_t groups = rows * cols / group, bytes = code_bytes + (half ? 0 : groups * 2 * (q4 || q3 ? 2 : 1));
    void *codes[MATRICES];
    uint16_t *scales[MATRICES], *biases[MATRICES];
    srand(1);
    for (int m = 0; m < MATRICES; m++) {
        uint16_t *h = malloc(code_bytes + 2);
        scales[m] = malloc(groups * 2);
        biases[m] = malloc(groups * 2);
        if (!h || !scales[m] || !biases[m]) return 1;
        // Finite 16-bit values near 1 (0x3C00 | 14 random bits), random codes otherwise.
        for (size_t i = 0; i < code_bytes / 2 + 1; i++) h[i] = (uint16_t)((rand() & 0x3FFF) | (half ? 0x3C00 : 0));
        for (size_t i = 0; i < groups; i++) scales[m][i] = 0x2000 + (rand() & 0xFF), biases[m][i] = 0xA000;
        codes[m] = h;
    }
    float *x = malloc(cols * sizeof(float)), *y = malloc(rows * sizeof(float));
    float *sums = malloc((cols / group) * sizeof(float)), checksum = 0, *x_scales = malloc(cols / 32 * sizeof(float));
    int8_t *xq = malloc(cols), *slices = malloc(3 * cols);
    if (!x_scales || !xq || !slices) return 1;
    double *seconds = malloc(calls * sizeof(double));
    if (!x || !y || !sums || !seconds) return 1;
    for (size_t j = 0; j < cols; j++) x[j] = (float)(rand() % 2001 - 1000) / 1000;
    // Each sample times one call on each of the matrices (a single call can be shorter than the clock's step).
    for (size_t c = 0; c < calls; c++) {
        double started = cpu_seconds();
        for (int m = 0; m < MATRICES; m++) {
            if (!strcmp(encoding, "bf16")) vlq_matvec_bf16(codes[m], cols, x, y, 0, rows);
            if (!strcmp(encoding, "f16")) vlq_matvec_f16(codes[m], cols, x, y, 0, rows);
            if (a8) vlq_quantize_activations(x, cols, xq, x_scales);
            if (a8 && q8) vlq_matvec_q8_a8(codes[m], scales[m], cols, group, xq, x_scales, y, 0, rows);
            if (a8 && (q4 || q4s)) {
                vlq_group_sums(x, cols, group, sums);
                vlq_matvec_q4_a8(codes[m], scales[m], q4 ? biases[m] : NULL, cols, group, xq, x_scales, sums, y, 0,
                                 rows);
            }
            if (sliced) {
                vlq_slice_activations(x, cols, slices, x_scales);
                vlq_group_sums(x, cols, group, sums);
                vlq_matvec_q4_sliced(codes[m], scales[m], q4 ? biases[m] : NULL, cols, group, slices, x_scales, sums,
                                     y, 0, rows);
            }
            if (!a8 && !sliced && q8) vlq_matvec_q8(codes[m], scales[m], cols, group, x, y, 0, rows);
            if (!a8 && !sliced && (q4 || q4s)) {
                vlq_group_sums(x, cols, group, sums);
                vlq_matvec_q4(codes[m], scales[m], q4 ? biases[m] : NULL, cols, group, x, sums, y, 0, rows);
            }
            if (q3) {
                vlq_group_sums(x, cols, group, sums);
                vlq_matvec_q3(codes[m], scales[m], biases[m], cols, group, x, sums, y, 0, rows);
            }
            checksum += y[0];
        }
        seconds[c] = (cpu_seconds() - started) / MATRICES;
    }
    qsort(seconds, calls, sizeof(double), by_value);
    printf("%s %s%s %zux%zu group %zu: best %.1f GB/s, median %.1f GB/s (checksum %g)\n", vlq_kernels_isa(), encoding,
           a8 ? " a8" : sliced ? " sliced" : "", rows, cols, group,
           (double)bytes / seconds[0] / 1e9, (double)bytes / seconds[calls / 2] / 1e9,
           (double)checksum);
    return 0;
}
