import VLQCore

/// Yi-VL's image pipeline (`image_aspect_ratio: "pad"` + CLIPImageProcessor), step for step as
/// transformers and PIL compute it, so that pixel values come out bit-identical.
public struct ImagePreprocessing: Equatable, Sendable {
    /// PIL's convert("RGB") first (recorded; decoding always yields RGB).
    public var convertRGB = true
    /// Yi-VL's `image_aspect_ratio`: "pad" pads to a square; "square" and "original" do not.
    public var aspectRatio = "pad" {
        didSet { padToSquare = aspectRatio == "pad" }
    }
    public private(set) var padToSquare = true
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
            guard let v else {
                throw VLQError(
                    ImageError.invalidPreprocessing, source, "metadata preprocessing.\(key) is missing or malformed")
            }
            return v
        }
        // Recorded only (decoding always yields RGB): absent reads as PIL's default.
        convertRGB = m["convert_rgb"]?.boolValue ?? true
        aspectRatio = try need(m["aspect_ratio"]?.stringValue, "aspect_ratio")
        padToSquare = aspectRatio == "pad"
        padColor = try need(
            m["pad_color"]?.arrayValue?.compactMap { $0.intValue.map { UInt8(clamping: $0) } }, "pad_color")
        resize = try need(m["resize"]?.boolValue, "resize")
        shortestEdge = try need(m["shortest_edge"]?.intValue, "shortest_edge")
        let filterName = try need(m["resample"]?.stringValue, "resample")
        filter = try need(ImagePreprocessing.filterNames.first { $0.value == filterName }?.key, "resample")
        centerCrop = try need(m["center_crop"]?.boolValue, "center_crop")
        let crop = try need(m["crop_size"]?.arrayValue?.compactMap(\.intValue), "crop_size")
        guard crop.count == 2, padColor.count == 3 else {
            throw VLQError(ImageError.invalidPreprocessing, source, "metadata preprocessing is malformed")
        }
        cropHeight = crop[0]
        cropWidth = crop[1]
        rescale = try need(m["rescale"]?.boolValue, "rescale")
        rescaleFactor = try need(m["rescale_factor"]?.doubleValue, "rescale_factor")
        normalize = try need(m["normalize"]?.boolValue, "normalize")
        mean = try need(m["mean"]?.arrayValue?.compactMap(\.doubleValue), "mean")
        std = try need(m["std"]?.arrayValue?.compactMap(\.doubleValue), "std")
        guard mean.count == 3, std.count == 3, shortestEdge > 0, cropHeight > 0, cropWidth > 0 else {
            throw VLQError(ImageError.invalidPreprocessing, source, "metadata preprocessing is malformed")
        }
        if let problem = settingsProblem {
            throw VLQError(ImageError.invalidPreprocessing, source, "metadata preprocessing: \(problem)")
        }
    }

    static let filterNames: [Resampler.Filter: String] = [
        .bicubic: "bicubic", .bilinear: "bilinear",
        .box: "box", .hamming: "hamming", .lanczos: "lanczos",
    ]

    /// The `preprocessing` section of a bundle's metadata (formats/VLQ-BUNDLE.md, section 6).
    public var json: JSONValue {
        [
            "convert_rgb": .bool(convertRGB), "aspect_ratio": .string(aspectRatio),
            "pad_color": .array(padColor.map { .int(Int64($0)) }), "resize": .bool(resize),
            "shortest_edge": .int(Int64(shortestEdge)),
            "resample": .string(ImagePreprocessing.filterNames[filter] ?? "bicubic"),
            "center_crop": .bool(centerCrop), "crop_size": [.int(Int64(cropHeight)), .int(Int64(cropWidth))],
            "rescale": .bool(rescale), "rescale_factor": .double(rescaleFactor), "normalize": .bool(normalize),
            "mean": .array(mean.map { .double($0) }), "std": .array(std.map { .double($0) }),
        ]
    }

    /// The result (cropped, else resized, else padded) may have no more pixels than this: the model
    /// takes 448 x 448, and the float copy of 2^24 pixels is already 192 MiB. A resized image that is
    /// then cropped may have as many as a decoded one (`ImageDecoder.maxPixels`).
    public static let maxPixels = 1 << 24

    /// What makes these settings unusable whatever the image (nil if nothing). Settings come from a
    /// bundle's metadata or a checkpoint's preprocessor_config.json: sizes there are untrusted.
    public var settingsProblem: String? {
        guard padColor.count == 3, mean.count == 3, std.count == 3 else {
            return "pad colour, mean and std need 3 channels each"
        }
        if resize {
            guard shortestEdge > 0 else { return "shortest edge \(shortestEdge) is not positive" }
            guard let square = Checked.multiply(shortestEdge, shortestEdge), square <= Self.maxPixels else {
                return "shortest edge \(shortestEdge) makes images larger than the limit of \(Self.maxPixels) pixels"
            }
        }
        if centerCrop {
            guard cropHeight > 0, cropWidth > 0 else { return "crop size \(cropHeight)x\(cropWidth) is not positive" }
            guard let area = Checked.multiply(cropHeight, cropWidth), area <= Self.maxPixels else {
                return "crop size \(cropHeight)x\(cropWidth) is larger than the limit of \(Self.maxPixels) pixels"
            }
        }
        return nil
    }

    /// The size each step gives `width` x `height`, checked against `maxPixels` before anything is
    /// allocated (Int conversions of huge doubles would trap).
    func checkedGeometry(width: Int, height: Int) throws -> (width: Int, height: Int) {
        func fail(_ kind: ImageError, _ reason: String) -> VLQError { VLQError(kind, nil, reason) }
        if let problem = settingsProblem { throw fail(.invalidPreprocessing, "preprocessing: \(problem)") }
        guard width > 0, height > 0 else { throw fail(.noPixels, "a \(width)x\(height) image has no pixels") }
        var size = (width: width, height: height)
        let padded = padToSquare && width != height
        if padded { size = (max(width, height), max(width, height)) }
        if resize {
            let short = Double(min(size.width, size.height)), long = Double(max(size.width, size.height))
            let newLong = Double(shortestEdge) * long / short
            let limit = centerCrop ? Int(ImageDecoder.maxPixels) : Self.maxPixels
            guard newLong * Double(shortestEdge) <= Double(limit) else {
                throw fail(
                    .tooLarge,
                    "resizing the \(width)x\(height) image to a shortest edge of \(shortestEdge) gives more "
                        + "than the limit of \(limit) pixels")
            }
            size = resizedSize(width: size.width, height: size.height)
        } else if padded && !centerCrop {
            // The padded square is the result: it must be made, so it must fit.
            guard let area = Checked.multiply(size.width, size.height), area <= Self.maxPixels else {
                throw fail(
                    .tooLarge,
                    "the \(width)x\(height) image padded to a \(size.width)x\(size.height) square is larger "
                        + "than the limit of \(Self.maxPixels) pixels")
            }
        }
        if centerCrop { size = (cropWidth, cropHeight) }
        return size
    }

    /// Yi's expand2square: the image pasted centred on a square of its longer side. `geometry` gets the
    /// same pixels without making the square (which is side^2 whatever the image's own size).
    public func expandToSquare(_ image: RGBImage) -> RGBImage {
        if image.width == image.height { return image }
        let side = max(image.width, image.height)
        var canvas = RGBImage(width: side, height: side, fill: padColor)
        let dx = (side - image.width) / 2, dy = (side - image.height) / 2
        for y in 0..<image.height {
            let src = y * image.width * 3
            let dst = ((y + dy) * side + dx) * 3
            canvas.pixels.replaceSubrange(
                dst..<(dst + image.width * 3), with: image.pixels[src..<(src + image.width * 3)])
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
        return crop(width: image.width, height: image.height) { image[$0, $1, $2] }
    }

    /// The crop of a `width` x `height` image whose pixels `pixel(x, y, channel)` gives.
    func crop(width: Int, height: Int, pixel: (Int, Int, Int) -> UInt8) -> RGBImage {
        var out = RGBImage(width: cropWidth, height: cropHeight, fill: [0, 0, 0])
        let top = floorDiv(height - cropHeight, 2), left = floorDiv(width - cropWidth, 2)
        for y in 0..<cropHeight {
            let sy = y + top
            guard sy >= 0, sy < height else { continue }
            for x in 0..<cropWidth {
                let sx = x + left
                guard sx >= 0, sx < width else { continue }
                for c in 0..<3 { out.pixels[(y * cropWidth + x) * 3 + c] = pixel(sx, sy, c) }
            }
        }
        return out
    }

    private func floorDiv(_ a: Int, _ b: Int) -> Int { a >= 0 ? a / b : -((-a + b - 1) / b) }

    /// The 8-bit image the network's pixels are computed from (after pad, resize and crop). Sizes are
    /// checked first (`maxPixels`); the padded square is never made unless it is the result.
    public func geometry(_ image: RGBImage) throws -> RGBImage {
        _ = try checkedGeometry(width: image.width, height: image.height)
        var img = image
        if padToSquare && image.width != image.height {
            let side = max(image.width, image.height)
            if resize {
                let size = resizedSize(width: side, height: side)
                img = Resampler.resize(
                    image, centredOnSquare: side, fill: padColor, width: size.width,
                    height: size.height, filter: filter)
            } else if centerCrop {
                // Cropped straight from the square's pixels: the fill outside the image.
                let dx = (side - image.width) / 2, dy = (side - image.height) / 2
                return crop(width: side, height: side) { x, y, c in
                    let ix = x - dx, iy = y - dy
                    guard ix >= 0, ix < image.width, iy >= 0, iy < image.height else { return padColor[c] }
                    return image[ix, iy, c]
                }
            } else {
                img = expandToSquare(image)
            }
        } else if resize {
            let size = resizedSize(width: img.width, height: img.height)
            img = Resampler.resize(img, width: size.width, height: size.height, filter: filter)
        }
        if centerCrop { img = crop(img) }
        return img
    }

    /// Channels-first float32 pixel values [3, H, W]: rescaled in double then stored as float (as
    /// transformers' rescale does), normalised in float32 ((x - mean) / std with float32 mean and std).
    /// `source` names the image in errors.
    public func pixelValues(_ image: RGBImage, source: String = "image") throws -> [Float] {
        let img: RGBImage
        do { img = try geometry(image) } catch let e as VLQError { throw e.about(source) }
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
        try pixelValues(try ImageDecoder.decode(path: path), source: path)
    }
}
