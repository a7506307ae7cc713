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
                weights[xx * size + x] = Int32(w < 0 ? (fixed - 0.5).rounded(.towardZero) : (fixed + 0.5).rounded(.towardZero))
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
#endif
