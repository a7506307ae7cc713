#ifndef VLQ_CODECS_H
#define VLQ_CODECS_H

#include <stddef.h>
#include <stdint.h>

/* What a decoder hands back, before any colour conversion: vlq converts to RGB the way PIL does. */
typedef enum {
    VLQ_PIXELS_GRAY = 1,        /* 8-bit gray */
    VLQ_PIXELS_GRAY_ALPHA = 2,  /* 8-bit gray + alpha */
    VLQ_PIXELS_RGB = 3,
    VLQ_PIXELS_RGBA = 4,
    VLQ_PIXELS_CMYK = 5,        /* as stored in the JPEG; see adobe_inverted */
    VLQ_PIXELS_GRAY16 = 6       /* 16-bit gray, host byte order, 2 bytes per sample */
} vlq_pixel_layout;

typedef struct {
    uint32_t width;
    uint32_t height;
    vlq_pixel_layout layout;
    uint32_t channels;        /* samples per pixel */
    uint32_t bytes_per_sample;
    int adobe_inverted;       /* CMYK JPEG written by Adobe software: values are inverted */
    uint8_t *pixels;          /* malloc'd, rows top to bottom, no padding; free with vlq_free_pixels */
} vlq_decoded_image;

/* Each returns 0 on success; otherwise a non-zero code and a message in `error` (NUL-terminated). */
int vlq_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, vlq_decoded_image *out, char *error, size_t error_size);
int vlq_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, vlq_decoded_image *out, char *error, size_t error_size);
void vlq_free_pixels(vlq_decoded_image *image);

#endif
