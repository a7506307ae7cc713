/// PIL's `Image.resize` for 8-bit images (libImaging/Resample.c): separable convolution with the
/// filter's support widened by the scale when downscaling (antialiasing), coefficients normalised
/// and rounded to 22-bit fixed point, a horizontal pass then a vertical pass, each rounded and
/// clipped to 8 bits. Reimplemented from that description so results are bit-identical to PIL.
public enum Resampler {
    public enum Filter: Sendable {
        case bicubic, bilinear, box, hamming, lanczos

        public init?(pilNumber: Int) {
            switch pilNumber {
            case 1: self = .lanczos
            case 2: self = .bilinear
            case 3: self = .bicubic
            case 4: self = .box
            case 5: self = .hamming
            default: return nil
            }
        }

        var support: Double {
            switch self {
            case .box: return 0.5
            case .bilinear, .hamming: return 1
            case .bicubic: return 2
            case .lanczos: return 3
            }
        }

        func weight(_ t: Double) -> Double {
            switch self {
            case .box:
                return t > -0.5 && t <= 0.5 ? 1 : 0
            case .bilinear:
                let x = abs(t)
                return x < 1 ? 1 - x : 0
            case .hamming:
                let x = abs(t)
                if x == 0 { return 1 }
                if x >= 1 { return 0 }
                let px = x * Double.pi
                return sin(px) / px * (0.54 + 0.46 * cos(px))
            case .bicubic:
                let a = -0.5, x = abs(t)
                if x < 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
                if x < 2 { return (((x - 5) * x + 8) * x - 4) * a }
                return 0
            case .lanczos:
                guard t >= -3 && t < 3 else { return 0 }
                func sinc(_ v: Double) -> Double { v == 0 ? 1 : sin(v * Double.pi) / (v * Double.pi) }
                return sinc(t) * sinc(t / 3)
            }
        }
    }

    static let precisionBits = 32 - 8 - 2

    struct Coefficients {
        var size: Int  // taps per output sample
        var bounds: [(start: Int, count: Int)]
        var weights: [Int32]  // fixed point, `size` per output sample
    }

    static func coefficients(inSize: Int, outSize: Int, filter: Filter) -> Coefficients {
        let scale = Double(inSize) / Double(outSize)
        let filterScale = max(scale, 1)
        let support = filter.support * filterScale
        let size = Int(support.rounded(.up)) * 2 + 1
        var bounds: [(Int, Int)] = []
        var weights = [Int32](repeating: 0, count: outSize * size)
        var k = [Double](repeating: 0, count: size)
        for xx in 0..<outSize {
            let center = (Double(xx) + 0.5) * scale
            let ss = 1 / filterScale
            let xmin = max(Int(center - support + 0.5), 0)
            let xmax = min(Int(center + support + 0.5), inSize) - xmin
            var total = 0.0
            for x in 0..<xmax {
                let w = filter.weight((Double(x + xmin) - center + 0.5) * ss)
                k[x] = w
                total += w
            }
            for x in 0..<size {
                var w = x < xmax ? k[x] : 0
                if x < xmax, total != 0 { w /= total }
                let fixed = w * Double(1 << precisionBits)
                weights[xx * size + x] = Int32(
                    w < 0 ? (fixed - 0.5).rounded(.towardZero) : (fixed + 0.5).rounded(.towardZero))
            }
            bounds.append((xmin, xmax))
        }
        return Coefficients(size: size, bounds: bounds, weights: weights)
    }

    @inline(__always) static func clip8(_ v: Int32) -> UInt8 {
        let shifted = v >> Int32(precisionBits)
        return UInt8(clamping: shifted)
    }

    public static func resize(_ image: RGBImage, width: Int, height: Int, filter: Filter) -> RGBImage {
        // PIL returns a copy when nothing changes.
        if width == image.width && height == image.height { return image }
        let vertical = coefficients(inSize: image.height, outSize: height, filter: filter)
        var source = image
        var rowOffset = 0
        if width != image.width {
            // Only the rows the vertical pass reads are resampled horizontally.
            let first = vertical.bounds[0].start
            let last = vertical.bounds[height - 1].start + vertical.bounds[height - 1].count
            let h = coefficients(inSize: image.width, outSize: width, filter: filter)
            var out = [UInt8](repeating: 0, count: width * (last - first) * 3)
            let half = Int32(1) << Int32(precisionBits - 1)
            image.pixels.withUnsafeBufferPointer { src in
                for yy in 0..<(last - first) {
                    let row = (yy + first) * image.width * 3
                    for xx in 0..<width {
                        let (xmin, count) = h.bounds[xx]
                        var s0 = half, s1 = half, s2 = half
                        for x in 0..<count {
                            let w = h.weights[xx * h.size + x]
                            let p = row + (x + xmin) * 3
                            s0 &+= Int32(src[p]) &* w
                            s1 &+= Int32(src[p + 1]) &* w
                            s2 &+= Int32(src[p + 2]) &* w
                        }
                        let o = (yy * width + xx) * 3
                        out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
                    }
                }
            }
            source = RGBImage(width: width, height: last - first, pixels: out)
            rowOffset = first
        }
        if height == image.height { return source }
        var out = [UInt8](repeating: 0, count: width * height * 3)
        let half = Int32(1) << Int32(precisionBits - 1)
        source.pixels.withUnsafeBufferPointer { src in
            for yy in 0..<height {
                let (ymin, count) = vertical.bounds[yy]
                for xx in 0..<width {
                    var s0 = half, s1 = half, s2 = half
                    for y in 0..<count {
                        let w = vertical.weights[yy * vertical.size + y]
                        let p = ((y + ymin - rowOffset) * width + xx) * 3
                        s0 &+= Int32(src[p]) &* w
                        s1 &+= Int32(src[p + 1]) &* w
                        s2 &+= Int32(src[p + 2]) &* w
                    }
                    let o = (yy * width + xx) * 3
                    out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Resampler {
    /// `resize(expandToSquare(image))` without the square: `image` centred on a `side` x `side` canvas of
    /// `fill` (Yi's expand2square: offsets `(side - w) / 2`, `(side - h) / 2`), then resized to
    /// `width` x `height` the way `resize` does it, to the bit. A 1,000,000 x 1 image would need a
    /// 3 TB square; here memory stays near the output's size.
    ///
    /// Every fill row gives the same horizontal result, computed once; an image row differs from it
    /// only in the output columns whose taps reach the image. A tap on the fill adds `fill * weight`
    /// to a wrapping Int32 sum, so the taps on the fill are folded into one product with the sum of
    /// their weights: arithmetic modulo 2^32 makes that exactly the sum `resize` computes. The rows
    /// of the horizontal pass live in a ring buffer as long as the vertical taps need them.
    public static func resize(
        _ image: RGBImage, centredOnSquare side: Int, fill: [UInt8], width: Int, height: Int,
        filter: Filter
    ) -> RGBImage {
        precondition(side >= image.width && side >= image.height && fill.count == 3 && width > 0 && height > 0)
        let w = image.width, h = image.height
        let dx = (side - w) / 2, dy = (side - h) / 2
        let half = Int32(1) << Int32(precisionBits - 1)
        let f0 = Int32(fill[0]), f1 = Int32(fill[1]), f2 = Int32(fill[2])

        // Horizontal pass: `padRow` for fill rows; `horizontal(r, out)` writes image row r's output
        // columns c0..<c1, the only ones that differ from `padRow`.
        var padRow = [UInt8](repeating: 0, count: width * 3)
        var c0 = 0, c1 = 0
        let horizontal: (Int, UnsafeMutablePointer<UInt8>) -> Void
        if width == side {
            for x in 0..<width { padRow[3 * x] = fill[0]; padRow[3 * x + 1] = fill[1]; padRow[3 * x + 2] = fill[2] }
            (c0, c1) = (dx, dx + w)
            horizontal = { r, out in
                image.pixels.withUnsafeBufferPointer { src in
                    out.update(from: src.baseAddress! + r * w * 3, count: w * 3)
                }
            }
        } else {
            let k = coefficients(inSize: side, outSize: width, filter: filter)
            // Per output column: the square columns lo..<hi of its taps that fall on the image, and the
            // sum of the weights of its other taps (on the fill).
            var onImage = [(lo: Int, hi: Int)](repeating: (0, 0), count: width)
            var fillWeight = [Int32](repeating: 0, count: width)
            (c0, c1) = (width, 0)
            for xx in 0..<width {
                let (xmin, count) = k.bounds[xx]
                var total: Int32 = 0, image: Int32 = 0
                for t in 0..<count { total &+= k.weights[xx * k.size + t] }
                let lo = max(xmin, dx), hi = min(xmin + count, dx + w)
                if lo < hi {
                    for x in lo..<hi { image &+= k.weights[xx * k.size + x - xmin] }
                    (c0, c1) = (min(c0, xx), max(c1, xx + 1))
                }
                onImage[xx] = (lo, hi)
                fillWeight[xx] = total &- image
                padRow[3 * xx] = clip8(half &+ f0 &* total)
                padRow[3 * xx + 1] = clip8(half &+ f1 &* total)
                padRow[3 * xx + 2] = clip8(half &+ f2 &* total)
            }
            if c0 >= c1 { (c0, c1) = (0, 0) }
            let columns = (c0, c1)
            horizontal = { r, out in
                image.pixels.withUnsafeBufferPointer { src in
                    k.weights.withUnsafeBufferPointer { weights in
                        for xx in columns.0..<columns.1 {
                            let (lo, hi) = onImage[xx], xmin = k.bounds[xx].start, fw = fillWeight[xx]
                            var s0 = half &+ f0 &* fw, s1 = half &+ f1 &* fw, s2 = half &+ f2 &* fw
                            for x in lo..<max(lo, hi) {
                                let wt = weights[xx * k.size + x - xmin]
                                let p = (r * w + x - dx) * 3
                                s0 &+= Int32(src[p]) &* wt
                                s1 &+= Int32(src[p + 1]) &* wt
                                s2 &+= Int32(src[p + 2]) &* wt
                            }
                            let o = (xx - columns.0) * 3
                            out[o] = clip8(s0); out[o + 1] = clip8(s1); out[o + 2] = clip8(s2)
                        }
                    }
                }
            }
        }
        let stored = c1 - c0  // columns kept per image row

        var out = [UInt8](repeating: 0, count: width * height * 3)
        if height == side {
            // No vertical pass: fill rows and image rows as the horizontal pass left them.
            out.withUnsafeMutableBufferPointer { dst in
                padRow.withUnsafeBufferPointer { pad in
                    for y in 0..<side {
                        (dst.baseAddress! + y * width * 3).update(from: pad.baseAddress!, count: width * 3)
                        if y >= dy && y < dy + h { horizontal(y - dy, dst.baseAddress! + (y * width + c0) * 3) }
                    }
                }
            }
            return RGBImage(width: width, height: height, pixels: out)
        }

        // Vertical pass. Per output row: the image rows lo..<hi its taps reach (image coordinates),
        // nondecreasing from row to row, so a ring of `capacity` rows holds every row still needed.
        let k = coefficients(inSize: side, outSize: height, filter: filter)
        var windows = [(lo: Int, hi: Int)](repeating: (0, 0), count: height)
        var capacity = 1
        for yy in 0..<height {
            let (ymin, count) = k.bounds[yy]
            let lo = max(ymin, dy) - dy, hi = min(ymin + count, dy + h) - dy
            windows[yy] = (lo, max(lo, hi))
            capacity = max(capacity, hi - lo)
        }
        var ring = [UInt8](repeating: 0, count: capacity * max(stored, 1) * 3)
        var next = 0  // the first image row not yet in the ring
        out.withUnsafeMutableBufferPointer { dst in
            ring.withUnsafeMutableBufferPointer { ringBuffer in
                padRow.withUnsafeBufferPointer { pad in
                    k.weights.withUnsafeBufferPointer { weights in
                        let rows = ringBuffer.baseAddress!
                        for yy in 0..<height {
                            let (ymin, count) = k.bounds[yy]
                            let (lo, hi) = windows[yy]
                            var total: Int32 = 0, image: Int32 = 0
                            for t in 0..<count { total &+= weights[yy * k.size + t] }
                            for r in lo..<hi { image &+= weights[yy * k.size + r + dy - ymin] }
                            let fw = total &- image
                            next = max(next, lo)
                            while next < hi {
                                horizontal(next, rows + (next % capacity) * stored * 3)
                                next += 1
                            }
                            for xx in 0..<width {
                                let p0 = Int32(pad[3 * xx]), p1 = Int32(pad[3 * xx + 1]), p2 = Int32(pad[3 * xx + 2])
                                let o = (yy * width + xx) * 3
                                guard xx >= c0 && xx < c1 && lo < hi else {
                                    // Every tap reads a value equal to the fill row's.
                                    dst[o] = clip8(half &+ p0 &* total)
                                    dst[o + 1] = clip8(half &+ p1 &* total)
                                    dst[o + 2] = clip8(half &+ p2 &* total)
                                    continue
                                }
                                var s0 = half &+ p0 &* fw, s1 = half &+ p1 &* fw, s2 = half &+ p2 &* fw
                                for r in lo..<hi {
                                    let wt = weights[yy * k.size + r + dy - ymin]
                                    let p = ((r % capacity) * stored + xx - c0) * 3
                                    s0 &+= Int32(rows[p]) &* wt
                                    s1 &+= Int32(rows[p + 1]) &* wt
                                    s2 &+= Int32(rows[p + 2]) &* wt
                                }
                                dst[o] = clip8(s0); dst[o + 1] = clip8(s1); dst[o + 2] = clip8(s2)
                            }
                        }
                    }
                }
            }
        }
        return RGBImage(width: width, height: height, pixels: out)
    }
}
