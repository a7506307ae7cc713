import CImageCodecs
import VLQCore

/// An 8-bit RGB image, rows top to bottom, 3 bytes per pixel: what PIL calls mode "RGB".
public struct RGBImage: Equatable, Sendable {
    public var width: Int
    public var height: Int
    public var pixels: [UInt8]

    public init(width: Int, height: Int, pixels: [UInt8]) {
        precondition(pixels.count == width * height * 3)
        self.width = width
        self.height = height
        self.pixels = pixels
    }

    public init(width: Int, height: Int, fill: [UInt8]) {
        self.width = width
        self.height = height
        var p = [UInt8](repeating: 0, count: width * height * 3)
        for i in 0..<(width * height) {
            p[3 * i] = fill[0]
            p[3 * i + 1] = fill[1]
            p[3 * i + 2] = fill[2]
        }
        pixels = p
    }

    public subscript(x: Int, y: Int, channel: Int) -> UInt8 {
        pixels[(y * width + x) * 3 + channel]
    }
}

/// Decoding PNG and JPEG files into RGB the way PIL's `Image.open(...).convert("RGB")` does.
public enum ImageDecoder {
    /// A decoded image larger than this is refused rather than exhausting memory.
    public static let maxPixels: UInt64 = 1 << 28

    public static func decode(path: String) throws -> RGBImage {
        let file = try MappedFile(path: path)
        return try decode(file.bytes, source: path)
    }

    /// `pixelLimit` lower than `maxPixels` is for the fuzzer, whose 256 MB allocation limit a 31 KB
    /// blank 1-bit PNG of 16000x16000 pixels (768 MB as RGB) would exceed without being malformed.
    public static func decode(
        _ bytes: UnsafeRawBufferPointer, source: String, pixelLimit: UInt64 = maxPixels
    ) throws -> RGBImage {
        let limit = min(pixelLimit, maxPixels)
        let data = bytes.bindMemory(to: UInt8.self)
        var decoded = vlq_decoded_image()
        var message = [CChar](repeating: 0, count: 256)
        let status: Int32
        let format: String
        if bytes.count >= 8, Array(bytes[0..<4]) == [0x89, 0x50, 0x4E, 0x47] {
            format = "PNG"
            status = vlq_decode_png(data.baseAddress, data.count, limit, &decoded, &message, message.count)
        } else if bytes.count >= 3, Array(bytes[0..<3]) == [0xFF, 0xD8, 0xFF] {
            format = "JPEG"
            status = vlq_decode_jpeg(data.baseAddress, data.count, limit, &decoded, &message, message.count)
        } else {
            throw VLQError(ImageError.notAnImage, source, "not a PNG or JPEG image")
        }
        guard status == 0 else {
            let reason = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            throw VLQError(
                ImageError.corruptImage, source,
                "corrupt or unsupported \(format): \(reason.isEmpty ? "decoder error" : reason)")
        }
        defer { vlq_free_pixels(&decoded) }
        guard decoded.width > 0, decoded.height > 0 else {
            throw VLQError(ImageError.noPixels, source, "\(format) has no pixels")
        }
        let count = Int(decoded.width) * Int(decoded.height)
        let samples = UnsafeBufferPointer(
            start: decoded.pixels, count: count * Int(decoded.channels) * Int(decoded.bytes_per_sample))
        return RGBImage(
            width: Int(decoded.width), height: Int(decoded.height),
            pixels: toRGB(
                samples, layout: decoded.layout, channels: Int(decoded.channels), pixelCount: count,
                adobeInverted: decoded.adobe_inverted != 0))
    }

    /// PIL's conversions to "RGB": gray replicated, alpha dropped (not composited), 16-bit gray
    /// clipped at 255 (PIL's I;16 -> RGB), CMYK through PIL's cmyk2rgb.
    static func toRGB(
        _ s: UnsafeBufferPointer<UInt8>, layout: vlq_pixel_layout, channels: Int, pixelCount n: Int, adobeInverted: Bool
    ) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n * 3)
        switch layout {
        case VLQ_PIXELS_GRAY, VLQ_PIXELS_GRAY_ALPHA:
            for i in 0..<n {
                let v = s[i * channels]
                out[3 * i] = v; out[3 * i + 1] = v; out[3 * i + 2] = v
            }
        case VLQ_PIXELS_GRAY16:
            let words = UnsafeRawBufferPointer(s)
            for i in 0..<n {
                let w = words.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self)
                let v = UInt8(min(w, 255))
                out[3 * i] = v; out[3 * i + 1] = v; out[3 * i + 2] = v
            }
        case VLQ_PIXELS_CMYK:
            for i in 0..<n {
                var cmyk = (0..<4).map { Int(s[i * 4 + $0]) }
                if adobeInverted { cmyk = cmyk.map { 255 - $0 } }
                let nk = 255 - cmyk[3]
                for c in 0..<3 {
                    let t = cmyk[c] * nk + 128
                    out[3 * i + c] = UInt8(clamping: nk - (((t >> 8) + t) >> 8))
                }
            }
        default:  // RGB, RGBA
            for i in 0..<n {
                out[3 * i] = s[i * channels]
                out[3 * i + 1] = s[i * channels + 1]
                out[3 * i + 2] = s[i * channels + 2]
            }
        }
        return out
    }
}
