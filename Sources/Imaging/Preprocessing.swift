import VLQCore

/// Yi-VL's image pipeline (`image_aspect_ratio: "pad"` + CLIPImageProcessor), step for step as
/// transformers and PIL compute it, so that pixel values come out bit-identical.
public struct ImagePreprocessing: Equatable, Sendable {
    public var padToSquare = true
    public var padColor: [UInt8] = [122, 116, 104]
    public var resize = true
    public var shortestEdge = 448
    public var filter: Resampler.Filter = .bicubic
    public var centerCrop = true
    public var cropHeight = 448
    public var cropWidth = 448
    public var rescale = true
    public var rescaleFactor = 1.0 / 255.0
    public var normalize = true
    public var mean: [Double] = [0.48145466, 0.4578275, 0.40821073]
    public var std: [Double] = [0.26862954, 0.26130258, 0.27577711]

    public init() {}

    /// From the `preprocessing` section of a bundle's metadata (formats/VLQ-BUNDLE.md).
    public init(metadata m: JSONValue, source: String) throws {
        func need<T>(_ v: T?, _ key: String) throws -> T {
            guard let v else { throw VLQError(source, "metadata preprocessing.\(key) is missing or malformed") }
            return v
        }
        padToSquare = try need(m["aspect_ratio"]?.stringValue, "aspect_ratio") == "pad"
        padColor = try need(m["pad_color"]?.arrayValue?.compactMap { $0.intValue.map { UInt8(clamping: $0) } }, "pad_color")
        resize = try need(m["resize"]?.boolValue, "resize")
        shortestEdge = try need(m["shortest_edge"]?.intValue, "shortest_edge")
        let filterName = try need(m["resample"]?.stringValue, "resample")
        let filters: [String: Resampler.Filter] = ["bicubic": .bicubic, "bilinear": .bilinear, "box": .box, "hamming": .hamming, "lanczos": .lanczos]
        filter = try need(filters[filterName], "resample")
        centerCrop = try need(m["center_crop"]?.boolValue, "center_crop")
        let crop = try need(m["crop_size"]?.arrayValue?.compactMap(\.intValue), "crop_size")
        guard crop.count == 2, padColor.count == 3 else { throw VLQError(source, "metadata preprocessing is malformed") }
        cropHeight = crop[0]
        cropWidth = crop[1]
        rescale = try need(m["rescale"]?.boolValue, "rescale")
        rescaleFactor = try need(m["rescale_factor"]?.doubleValue, "rescale_factor")
        normalize = try need(m["normalize"]?.boolValue, "normalize")
        mean = try need(m["mean"]?.arrayValue?.compactMap(\.doubleValue), "mean")
        std = try need(m["std"]?.arrayValue?.compactMap(\.doubleValue), "std")
        guard mean.count == 3, std.count == 3, shortestEdge > 0, cropHeight > 0, cropWidth > 0 else {
            throw VLQError(source, "metadata preprocessing is malformed")
        }
    }

    /// Yi's expand2square: the image pasted centred on a square of its longer side.
    public func expandToSquare(_ image: RGBImage) -> RGBImage {
        if image.width == image.height { return image }
        let side = max(image.width, image.height)
        var canvas = RGBImage(width: side, height: side, fill: padColor)
        let dx = (side - image.width) / 2, dy = (side - image.height) / 2
        for y in 0..<image.height {
            let src = y * image.width * 3
            let dst = ((y + dy) * side + dx) * 3
            canvas.pixels.replaceSubrange(dst..<(dst + image.width * 3), with: image.pixels[src..<(src + image.width * 3)])
        }
        return canvas
    }

    /// transformers' get_resize_output_image_size with default_to_square=False.
    public func resizedSize(width: Int, height: Int) -> (width: Int, height: Int) {
        let short = min(width, height), long = max(width, height)
        let newLong = Int(Double(shortestEdge) * Double(long) / Double(short))
        return width <= height ? (shortestEdge, newLong) : (newLong, shortestEdge)
    }

    /// transformers' center_crop: offsets (h - ch) // 2, zero padding where the image is smaller.
    public func crop(_ image: RGBImage) -> RGBImage {
        if image.width == cropWidth && image.height == cropHeight { return image }
        var out = RGBImage(width: cropWidth, height: cropHeight, fill: [0, 0, 0])
        let top = floorDiv(image.height - cropHeight, 2), left = floorDiv(image.width - cropWidth, 2)
        for y in 0..<cropHeight {
            let sy = y + top
            guard sy >= 0, sy < image.height else { continue }
            for x in 0..<cropWidth {
                let sx = x + left
                guard sx >= 0, sx < image.width else { continue }
                for c in 0..<3 { out.pixels[(y * cropWidth + x) * 3 + c] = image[sx, sy, c] }
            }
        }
        return out
    }

    private func floorDiv(_ a: Int, _ b: Int) -> Int { a >= 0 ? a / b : -((-a + b - 1) / b) }

    /// The 8-bit image the network's pixels are computed from (after pad, resize and crop).
    public func geometry(_ image: RGBImage) -> RGBImage {
        var img = padToSquare ? expandToSquare(image) : image
        if resize {
            let size = resizedSize(width: img.width, height: img.height)
            img = Resampler.resize(img, width: size.width, height: size.height, filter: filter)
        }
        if centerCrop { img = crop(img) }
        return img
    }

    /// Channels-first float32 pixel values [3, H, W]: rescaled in double then stored as float (as
    /// transformers' rescale does), normalised in float32 ((x - mean) / std with float32 mean and std).
    public func pixelValues(_ image: RGBImage) -> [Float] {
        let img = geometry(image)
        let plane = img.width * img.height
        var out = [Float](repeating: 0, count: 3 * plane)
        for c in 0..<3 {
            let m = Float(mean[c]), s = Float(std[c])
            for i in 0..<plane {
                var v = Float(img.pixels[3 * i + c])
                if rescale { v = Float(Double(img.pixels[3 * i + c]) * rescaleFactor) }
                if normalize { v = (v - m) / s }
                out[c * plane + i] = v
            }
        }
        return out
    }

    public func pixelValues(path: String) throws -> [Float] {
        pixelValues(try ImageDecoder.decode(path: path))
    }
}
