import Foundation
import Imaging
import VLQCore
import XCTest

/// Image files written byte by byte, of sizes no fixture would have.
enum ImageBuilder {
    /// An 8-bit RGB PNG, deflated with stored blocks (no compression library needed).
    static func png(width: Int, height: Int, pixel: (Int, Int) -> [UInt8]) -> [UInt8] {
        var raw: [UInt8] = []
        raw.reserveCapacity(height * (1 + 3 * width))
        for y in 0..<height {
            raw.append(0)
            for x in 0..<width { raw += pixel(x, y) }
        }
        var zlib: [UInt8] = [0x78, 0x01]
        var offset = 0
        repeat {
            let n = min(65535, raw.count - offset)
            zlib.append(offset + n == raw.count ? 1 : 0)
            zlib += [UInt8(n & 0xFF), UInt8(n >> 8), UInt8(~n & 0xFF), UInt8(~n >> 8 & 0xFF)]
            zlib += raw[offset..<(offset + n)]
            offset += n
        } while offset < raw.count
        var a: UInt32 = 1, b: UInt32 = 0
        for byte in raw {
            a = (a + UInt32(byte)) % 65521
            b = (b + a) % 65521
        }
        zlib += bigEndian(b << 16 | a)
        let header = bigEndian(UInt32(width)) + bigEndian(UInt32(height)) + [8, 2, 0, 0, 0]
        return [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + chunk("IHDR", header) + chunk("IDAT", zlib)
            + chunk("IEND", [])
    }

    static func chunk(_ type: String, _ data: [UInt8]) -> [UInt8] {
        let body = Array(type.utf8) + data
        return bigEndian(UInt32(data.count)) + body + bigEndian(crc32(body))
    }

    static func crc32(_ bytes: [UInt8]) -> UInt32 {
        var crc: UInt32 = 0xFFFF_FFFF
        for byte in bytes {
            crc ^= UInt32(byte)
            for _ in 0..<8 { crc = crc & 1 != 0 ? 0xEDB8_8320 ^ (crc >> 1) : crc >> 1 }
        }
        return ~crc
    }

    static func bigEndian(_ v: UInt32) -> [UInt8] {
        [UInt8(v >> 24), UInt8(v >> 16 & 0xFF), UInt8(v >> 8 & 0xFF), UInt8(v & 0xFF)]
    }

    /// A baseline grayscale JPEG whose every 8x8 block is flat mid-gray (128): one-code Huffman tables,
    /// two bits per block, so any size up to JPEG's 65500 takes a few kilobytes.
    static func flatGrayJPEG(width: Int, height: Int) -> [UInt8] {
        func segment(_ marker: UInt8, _ body: [UInt8]) -> [UInt8] {
            [0xFF, marker, UInt8((body.count + 2) >> 8), UInt8((body.count + 2) & 0xFF)] + body
        }
        // Code lengths: one code of 1 bit; then its symbol, 0.
        let oneCode = [UInt8](arrayLiteral: 1) + [UInt8](repeating: 0, count: 15) + [0]
        var out: [UInt8] = [0xFF, 0xD8]
        out += segment(0xDB, [0] + [UInt8](repeating: 1, count: 64))
        out += segment(
            0xC0,
            [
                8, UInt8(height >> 8), UInt8(height & 0xFF), UInt8(width >> 8), UInt8(width & 0xFF),
                1, 1, 0x11, 0,
            ])
        out += segment(0xC4, [0x00] + oneCode)  // DC: difference category 0
        out += segment(0xC4, [0x10] + oneCode)  // AC: end of block
        out += segment(0xDA, [1, 1, 0x00, 0, 63, 0])
        let blocks = ((width + 7) / 8) * ((height + 7) / 8)
        var data = [UInt8](repeating: 0, count: (2 * blocks + 7) / 8)
        if (2 * blocks) % 8 != 0 { data[data.count - 1] = 0xFF >> ((2 * blocks) % 8) }  // pad with 1 bits
        return out + data + [0xFF, 0xD9]
    }
}

/// Yi-VL pads an image to a square of its longer side before resizing: for a 1,000,000 x 1 image
/// that square alone would be 3 TB. The padded resize never makes it, and gives the same bytes.
final class ImageLimitTests: XCTestCase {
    func randomImage(width: Int, height: Int, _ random: inout SplitMix64) -> RGBImage {
        RGBImage(
            width: width, height: height,
            pixels: (0..<(width * height * 3)).map { _ in UInt8(random.below(256)) })
    }

    /// `bytes` written as `name` in `scratch` are refused by the decoder as a corrupt image, with `message`.
    func assertDecodingRefuses(
        _ bytes: [UInt8], as name: String, in scratch: Scratch, _ message: String,
        file: StaticString = #filePath, line: UInt = #line
    ) throws {
        try writeBytes(bytes, to: scratch.file(name))
        assertVLQError(
            try ImageDecoder.decode(path: scratch.file(name)), kind: ImageError.corruptImage, contains: [message],
            file: file, line: line)
    }

    func testPaddedResizeGivesTheBytesOfResizingTheSquare() {
        var random = SplitMix64(seed: 448)
        let shapes = [
            (1, 50), (50, 1), (7, 300), (300, 7), (123, 77), (77, 123), (64, 48), (3, 4), (97, 98),
            (2, 1),
        ]
        let filters: [Resampler.Filter] = [.bicubic, .bilinear, .box, .hamming, .lanczos]
        var p = ImagePreprocessing()
        for (w, h) in shapes {
            let image = randomImage(width: w, height: h, &random)
            p.padColor = [UInt8(random.below(256)), UInt8(random.below(256)), UInt8(random.below(256))]
            let square = p.expandToSquare(image), side = max(w, h)
            // Down, up, one axis unchanged (either), and mixed.
            let outputs = [(84, 84), (448, 448), (5, 9), (side, 17), (17, side), (side, side), (1, 1), (2 * side, 3)]
            for (ow, oh) in outputs {
                for filter in filters {
                    let padded = Resampler.resize(
                        image, centredOnSquare: side, fill: p.padColor, width: ow,
                        height: oh, filter: filter)
                    let reference = Resampler.resize(square, width: ow, height: oh, filter: filter)
                    XCTAssertEqual(padded, reference, "\(w)x\(h) -> \(ow)x\(oh) \(filter)")
                }
            }
        }
    }

    /// Aspect ratios of 4000:1 still fit a materialised square (48 MB): same bytes both ways.
    func testVeryThinImagesGiveTheBytesOfResizingTheSquare() {
        var random = SplitMix64(seed: 4000)
        let p = ImagePreprocessing()
        for (w, h) in [(4000, 1), (1, 4000), (4000, 3)] {
            let image = randomImage(width: w, height: h, &random)
            let padded = Resampler.resize(
                image, centredOnSquare: 4000, fill: p.padColor, width: 448, height: 448,
                filter: .bicubic)
            let square = Resampler.resize(p.expandToSquare(image), width: 448, height: 448, filter: .bicubic)
            XCTAssertEqual(padded, square, "\(w)x\(h)")
        }
    }

    func testAMillionByOnePNGAndA65500ByOneJPEGArePreprocessed() throws {
        let scratch = try Scratch()
        let red: [UInt8] = [255, 0, 0]
        try writeBytes(ImageBuilder.png(width: 1_000_000, height: 1) { _, _ in red }, to: scratch.file("wide.png"))
        try writeBytes(ImageBuilder.png(width: 1, height: 1_000_000) { _, _ in red }, to: scratch.file("tall.png"))
        try writeBytes(ImageBuilder.flatGrayJPEG(width: 65500, height: 1), to: scratch.file("wide.jpg"))
        let p = ImagePreprocessing()
        let padValue = (0..<3).map {
            (Float(Double(p.padColor[$0]) * p.rescaleFactor) - Float(p.mean[$0])) / Float(p.std[$0])
        }
        for name in ["wide.png", "tall.png", "wide.jpg"] {
            let started = Date()
            let pixels = try p.pixelValues(path: scratch.file(name))
            XCTAssertLessThan(Date().timeIntervalSince(started), 30, name)
            XCTAssertEqual(pixels.count, 3 * 448 * 448, name)
            let plane = 448 * 448
            // One line in a million is below rounding after the resize: the corners are the fill.
            for c in 0..<3 { XCTAssertEqual(pixels[c * plane], padValue[c], "\(name): a corner is the pad colour") }
        }
    }

    func testImagesLargerThanTheDecoderLimitAreRefusedFromTheirHeader() throws {
        let scratch = try Scratch()
        // Only the header is read: the pixel data need not exist.
        let header = ImageBuilder.bigEndian(20000) + ImageBuilder.bigEndian(20000) + [8, 2, 0, 0, 0]
        let png =
            [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A] + ImageBuilder.chunk("IHDR", header)
            + ImageBuilder.chunk("IDAT", [0x78, 0x01]) + ImageBuilder.chunk("IEND", [])
        try assertDecodingRefuses(
            png, as: "huge.png", in: scratch,
            "huge.png: corrupt or unsupported PNG: 20000x20000 pixels is larger than the limit of 268435456")
        try assertDecodingRefuses(
            ImageBuilder.flatGrayJPEG(width: 65500, height: 5000), as: "huge.jpg", in: scratch,
            "huge.jpg: corrupt or unsupported JPEG: 65500x5000 pixels is larger than the limit")
        // libpng's own message comes through (it used to be replaced by "out of memory").
        try assertDecodingRefuses(
            Array(try readBytes(Reference.cases[0].image).prefix(3000)), as: "cut.png", in: scratch,
            "cut.png: corrupt or unsupported PNG: unexpected end of data (truncated file)")
        // Just under it, the hand-made JPEG decodes: flat mid-gray.
        try writeBytes(ImageBuilder.flatGrayJPEG(width: 65500, height: 1), to: scratch.file("line.jpg"))
        let line = try ImageDecoder.decode(path: scratch.file("line.jpg"))
        XCTAssertEqual([line.width, line.height], [65500, 1])
        XCTAssertTrue(line.pixels.allSatisfy { $0 == 128 })
    }

    /// Every block takes at least a bit of coded data, so a header declaring more blocks than eight times
    /// the bytes after it is refused before anything is allocated for them (libjpeg would pad with grey).
    func testAJPEGWithLessCodedDataThanItsBlocksNeedIsRefusedFromItsHeader() throws {
        let scratch = try Scratch()
        let honest = ImageBuilder.flatGrayJPEG(width: 4096, height: 4096)  // 262,144 blocks at 2 bits: 64 KiB
        try writeBytes(honest, to: scratch.file("flat.jpg"))
        XCTAssertEqual(try ImageDecoder.decode(path: scratch.file("flat.jpg")).width, 4096)
        let header = honest.count - 2 - 65536
        let starved = Array(honest.prefix(header)) + [UInt8](repeating: 0, count: 32765) + [0xFF, 0xD9]
        try assertDecodingRefuses(
            starved, as: "starved.jpg", in: scratch,
            "starved.jpg: corrupt or unsupported JPEG: 4096x4096 pixels in 1 components need at least 32768 "
                + "bytes of coded data, 32767 follow the header")
    }

    func testResultsLargerThanTheLimitAreRefused() throws {
        let wide = RGBImage(width: 100_000, height: 1, fill: [1, 2, 3])
        var p = ImagePreprocessing()
        p.aspectRatio = "square"  // shortest edge 1 -> 448: 44,800,000 x 448
        assertVLQError(
            try p.pixelValues(wide, source: "wide.png"),
            kind: ImageError.tooLarge,
            contains: ["wide.png: resizing the 100000x1 image to a shortest edge of 448 gives more than"])
        p.aspectRatio = "pad"
        p.resize = false
        p.centerCrop = false  // the result would be the 100000 x 100000 square
        assertVLQError(
            try p.pixelValues(wide, source: "wide.png"),
            kind: ImageError.tooLarge,
            contains: ["wide.png: the 100000x1 image padded to a 100000x100000 square is larger than"])
        // Cropped from the square without making it: the crop's bytes.
        p.centerCrop = true
        let cropped = try p.geometry(wide)
        XCTAssertEqual([cropped.width, cropped.height], [448, 448])
        XCTAssertEqual(cropped[0, 0, 0], p.padColor[0])
        XCTAssertEqual(
            [cropped[0, 223, 0], cropped[0, 223, 1]], [1, 2], "row (100000 - 1) // 2 - (100000 - 448) // 2")

        var random = SplitMix64(seed: 7)
        p.cropWidth = 60
        p.cropHeight = 40
        for (w, h) in [(30, 50), (50, 30), (70, 20)] {
            let image = randomImage(width: w, height: h, &random)
            XCTAssertEqual(try p.geometry(image), p.crop(p.expandToSquare(image)), "\(w)x\(h)")
        }
    }

    func testSizesFromSettingsAreCheckedBeforeUse() throws {
        let image = RGBImage(width: 4, height: 3, fill: [9, 9, 9])
        let cases: [(WritableKeyPath<ImagePreprocessing, Int>, Int, String)] = [
            (\.cropWidth, 0, "crop size 448x0 is not positive"),
            (\.cropHeight, -448, "crop size -448x448 is not positive"),
            (\.cropHeight, 1 << 40, "crop size 1099511627776x448 is larger than the limit of 16777216 pixels"),
            (\.shortestEdge, 0, "shortest edge 0 is not positive"),
            (\.shortestEdge, 1 << 33, "shortest edge 8589934592 makes images larger than the limit"),
        ]
        for (key, value, phrase) in cases {
            var p = ImagePreprocessing()
            p[keyPath: key] = value
            assertVLQError(
                try p.pixelValues(image, source: "x.png"), kind: ImageError.invalidPreprocessing,
                contains: ["x.png: preprocessing: " + phrase])
        }
    }

    func testSizesInABundlesMetadataAreCheckedOnOpen() throws {
        func metadata(crop: String, edge: String = "448") throws -> JSONValue {
            try JSONValue.parse(
                """
                {"aspect_ratio": "pad", "pad_color": [122, 116, 104], "resize": true, "shortest_edge": \(edge),
                 "resample": "bicubic", "center_crop": true, "crop_size": \(crop), "rescale": true,
                 "rescale_factor": 0.00392156862745098, "normalize": true, "mean": [0.5, 0.5, 0.5],
                 "std": [0.5, 0.5, 0.5]}
                """)
        }
        XCTAssertNoThrow(try ImagePreprocessing(metadata: try metadata(crop: "[448, 448]"), source: "m.vlq"))
        assertVLQError(
            try ImagePreprocessing(metadata: try metadata(crop: "[0, 448]"), source: "m.vlq"),
            kind: ImageError.invalidPreprocessing, contains: ["m.vlq: metadata preprocessing is malformed"])
        assertVLQError(
            try ImagePreprocessing(metadata: try metadata(crop: "[65536, 65536]"), source: "m.vlq"),
            kind: ImageError.invalidPreprocessing,
            contains: ["m.vlq: metadata preprocessing: crop size 65536x65536 is larger than the limit"])
        assertVLQError(
            try ImagePreprocessing(
                metadata: try metadata(crop: "[448, 448]", edge: "9000000000"),
                source: "m.vlq"),
            kind: ImageError.invalidPreprocessing,
            contains: ["m.vlq: metadata preprocessing: shortest edge 9000000000 makes images larger"])
    }
}
