/* libpng and libjpeg report errors by longjmp, which Swift cannot catch: these wrappers keep the
 * setjmp on the C side and turn every failure into an error message. */
#include "vlq_codecs.h"

#include <png.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jpeglib.h>
#include <jerror.h>

void vlq_free_pixels(vlq_decoded_image *image) {
    free(image->pixels);
    image->pixels = NULL;
}

/* ---------------------------------------------------------------- PNG */

typedef struct {
    const uint8_t *data;
    size_t size;
    size_t offset;
} png_memory;

typedef struct {
    jmp_buf jump;
    char *error;
    size_t error_size;
} png_failure;

static void png_read_memory(png_structp png, png_bytep out, size_t count) {
    png_memory *m = (png_memory *)png_get_io_ptr(png);
    if (count > m->size - m->offset) {
        png_error(png, "unexpected end of data (truncated file)");
    }
    memcpy(out, m->data + m->offset, count);
    m->offset += count;
}

static void png_on_error(png_structp png, png_const_charp message) {
    png_failure *f = (png_failure *)png_get_error_ptr(png);
    snprintf(f->error, f->error_size, "%s", message);
    longjmp(f->jump, 1);
}

static void png_on_warning(png_structp png, png_const_charp message) {
    (void)png;
    (void)message;
}

int vlq_decode_png(const uint8_t *data, size_t size, uint64_t max_pixels, vlq_decoded_image *out, char *error, size_t error_size) {
    memset(out, 0, sizeof(*out));
    if (size < 8 || png_sig_cmp(data, 0, 8) != 0) {
        snprintf(error, error_size, "not a PNG file");
        return 1;
    }
    png_failure failure = {.error = error, .error_size = error_size};
    png_memory memory = {data, size, 0};
    png_bytep *volatile rows = NULL;
    uint8_t *volatile pixels = NULL;
    png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &failure, png_on_error, png_on_warning);
    if (!png) {
        snprintf(error, error_size, "out of memory");
        return 2;
    }
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        snprintf(error, error_size, "out of memory");
        return 3;
    }
    if (setjmp(failure.jump)) {
        /* png_on_error wrote the message (destroying the structs sets `info` to NULL: test it before). */
        png_destroy_read_struct(&png, &info, NULL);
        free(rows);
        free(pixels);
        return 3;
    }
    png_set_read_fn(png, &memory, png_read_memory);
    /* The ancillary chunks of any length that RGB pixels do not depend on (PIL's convert("RGB") applies
     * no ICC profile or text) are skipped unread: libpng 1.6.39 allocates a text chunk's declared length
     * before reading it (1.7 GB for a 3 KB file, the fuzzer found). Skipped chunks are read in small
     * pieces and their CRCs still checked. */
    static const png_byte skipped[] = "iCCP\0sPLT\0tEXt\0zTXt\0iTXt\0eXIf\0pCAL\0sCAL\0";
    png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, skipped, (int)(sizeof skipped / 5));
    png_read_info(png, info);
    png_uint_32 width = png_get_image_width(png, info), height = png_get_image_height(png, info);
    int color = png_get_color_type(png, info), depth = png_get_bit_depth(png, info);
    if ((uint64_t)width * height > max_pixels) {
        /* Formatted apart from `error`: png_on_error copies the message into it. */
        char limit[128];
        snprintf(limit, sizeof limit, "%ux%u pixels is larger than the limit of %llu", width, height,
                 (unsigned long long)max_pixels);
        png_error(png, limit);
    }
    /* Deflate expands at most 1032:1, so the filtered rows (a filter byte each) of an honest file fit
     * in 1032 times its size: a header declaring more is refused before the rows are allocated. */
    uint64_t filtered = ((uint64_t)png_get_rowbytes(png, info) + 1) * height;
    if (filtered > (uint64_t)size * 1032 + 4096) {
        char limit[160];
        snprintf(limit, sizeof limit, "%ux%u pixels need %llu bytes of image data, more than a %zu-byte file can hold",
                 width, height, (unsigned long long)filtered, size);
        png_error(png, limit);
    }
    vlq_pixel_layout layout;
    /* Like PIL: palettes expand to RGB, low bit depths scale to 8 bits, 16-bit colour keeps the high
     * byte; 16-bit gray stays 16-bit (PIL's "I;16"), converted later. */
    if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (depth == 16) {
        if (color == PNG_COLOR_TYPE_GRAY) png_set_swap(png);
        else png_set_strip_16(png);
    }
    png_set_interlace_handling(png);
    png_read_update_info(png, info);
    int channels = png_get_channels(png, info);
    int out_depth = png_get_bit_depth(png, info);
    switch (channels) {
        case 1: layout = out_depth == 16 ? VLQ_PIXELS_GRAY16 : VLQ_PIXELS_GRAY; break;
        case 2: layout = VLQ_PIXELS_GRAY_ALPHA; break;
        case 3: layout = VLQ_PIXELS_RGB; break;
        default: layout = VLQ_PIXELS_RGBA; break;
    }
    size_t rowbytes = png_get_rowbytes(png, info);
    pixels = malloc(rowbytes * height);
    rows = malloc(sizeof(png_bytep) * height);
    if (!pixels || !rows) png_error(png, "out of memory");
    for (png_uint_32 y = 0; y < height; y++) rows[y] = pixels + y * rowbytes;
    png_read_image(png, rows);
    png_read_end(png, NULL);
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);
    out->width = width;
    out->height = height;
    out->layout = layout;
    out->channels = (uint32_t)channels;
    out->bytes_per_sample = out_depth == 16 ? 2 : 1;
    out->pixels = pixels;
    return 0;
}

/* ---------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr manager;
    jmp_buf jump;
} jpeg_failure;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_failure *f = (jpeg_failure *)cinfo->err;
    longjmp(f->jump, 1);
}

/* Warnings are ignored, as PIL does, except running out of data: libjpeg would pad a truncated file
 * with grey, PIL refuses it ("image file is truncated"), and so does vlq. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) {
        jpeg_on_error(cinfo);
    }
}

int vlq_decode_jpeg(const uint8_t *data, size_t size, uint64_t max_pixels, vlq_decoded_image *out, char *error, size_t error_size) {
    memset(out, 0, sizeof(*out));
    struct jpeg_decompress_struct cinfo;
    jpeg_failure failure;
    uint8_t *volatile pixels = NULL;
    cinfo.err = jpeg_std_error(&failure.manager);
    failure.manager.error_exit = jpeg_on_error;
    failure.manager.emit_message = jpeg_on_message;
    if (setjmp(failure.jump)) {
        char message[JMSG_LENGTH_MAX];
        (*cinfo.err->format_message)((j_common_ptr)&cinfo, message);
        snprintf(error, error_size, "%s", message);
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        return 1;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)data, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);
    if ((uint64_t)cinfo.image_width * cinfo.image_height > max_pixels) {
        snprintf(error, error_size, "%ux%u pixels is larger than the limit of %llu", cinfo.image_width, cinfo.image_height,
                 (unsigned long long)max_pixels);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    /* Every 8x8 block of every component takes at least one bit of entropy-coded data (its DC code;
     * a sequential scan adds an end-of-block code), so the bytes after the header of an honest file
     * number at least blocks/8. A header declaring more is refused before libjpeg allocates for it:
     * the output rows, and a progressive file's whole-image coefficients (128 bytes a block).
     * Without this, 769 bytes made libjpeg pad 12.7 million pixels with grey (fuzzer, image target).
     * Arithmetic coding can go under a bit a block, on near-constant images only; they are held to
     * the same bound. */
    uint64_t blocks = 0;
    for (int c = 0; c < cinfo.num_components; c++) {
        blocks += (uint64_t)cinfo.comp_info[c].width_in_blocks * cinfo.comp_info[c].height_in_blocks;
    }
    uint64_t coded = cinfo.src->bytes_in_buffer;
    if (blocks > coded * 8) {
        snprintf(error, error_size,
                 "%ux%u pixels in %d components need at least %llu bytes of coded data, %llu follow the header",
                 cinfo.image_width, cinfo.image_height, cinfo.num_components, (unsigned long long)((blocks + 7) / 8),
                 (unsigned long long)coded);
        jpeg_destroy_decompress(&cinfo);
        return 2;
    }
    vlq_pixel_layout layout;
    switch (cinfo.jpeg_color_space) {
        case JCS_GRAYSCALE: cinfo.out_color_space = JCS_GRAYSCALE; layout = VLQ_PIXELS_GRAY; break;
        case JCS_CMYK:
        case JCS_YCCK: cinfo.out_color_space = JCS_CMYK; layout = VLQ_PIXELS_CMYK; break;
        default: cinfo.out_color_space = JCS_RGB; layout = VLQ_PIXELS_RGB; break;
    }
    jpeg_start_decompress(&cinfo);
    size_t rowbytes = (size_t)cinfo.output_width * cinfo.output_components;
    pixels = malloc(rowbytes * cinfo.output_height);
    if (!pixels) {
        snprintf(error, error_size, "out of memory");
        jpeg_destroy_decompress(&cinfo);
        return 3;
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * rowbytes;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    out->adobe_inverted = cinfo.saw_Adobe_marker;
    out->width = cinfo.output_width;
    out->height = cinfo.output_height;
    out->channels = (uint32_t)cinfo.output_components;
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    out->layout = layout;
    out->bytes_per_sample = 1;
    out->pixels = pixels;
    return 0;
}
