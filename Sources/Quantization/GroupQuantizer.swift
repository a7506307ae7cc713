import CKernels
import VLQFormat

/// Fits the integer codes and f16 parameters of one group of weights.
///
/// Parameters are rounded to f16 *before* the codes are chosen, so that the stored group reproduces
/// exactly the error the search measured. With `importance` (one weight per element) errors are
/// weighted, and the winning candidate is refined by a weighted least-squares fit of scale (and bias).
public struct GroupQuantizer: Sendable {
    public let encoding: TensorEncoding
    /// Candidate ranges tried: the full range shrunk by up to this fraction.
    public var maxShrink: Float = 0.2
    public var steps = 10
    public var leastSquares = false

    public init(encoding: TensorEncoding, leastSquares: Bool = false) {
        precondition(encoding.isQuantized)
        self.encoding = encoding
        self.leastSquares = leastSquares
    }

    public struct Fit {
        public var scale: Float16
        public var bias: Float16
        public var error: Float
    }

    var levels: (low: Int, high: Int) {
        switch encoding {
        case .q8: return (-127, 127)
        case .q4s: return (-8, 7)
        case .q3: return (0, 7)
        default: return (0, 15)
        }
    }

    @inline(__always)
    func code(_ w: Float, scale: Float, bias: Float) -> Int {
        guard scale != 0 else { return 0 }
        let q = ((w - bias) / scale).rounded()
        // A NaN weight has no code: converting it to Int would trap.
        guard !q.isNaN else { return 0 }
        return Int(min(max(q, Float(levels.low)), Float(levels.high)))
    }

    func error(_ w: UnsafePointer<Float>, _ n: Int, _ a: UnsafePointer<Float>?, scale: Float, bias: Float) -> Float {
        if let gram {
            // The group's share of the output error: d^T G d over its block of the Gram matrix.
            var d = [Double](repeating: 0, count: n)
            for j in 0..<n { d[j] = Double(w[j] - (Float(code(w[j], scale: scale, bias: bias)) * scale + bias)) }
            var e = 0.0
            for j in 0..<n where d[j] != 0 {
                var row = 0.0
                let g = gram.pointer + j * gram.stride
                for k in 0..<n { row += g[k] * d[k] }
                e += d[j] * row
            }
            return Float(e)
        }
        var e: Float = 0
        for j in 0..<n {
            let d = w[j] - (Float(code(w[j], scale: scale, bias: bias)) * scale + bias)
            e += (a?[j] ?? 1) * d * d
        }
        return e
    }

    /// With a Gram block, candidates are judged by the output error they cause (AWQ's clipping search)
    /// rather than by the weights' own error.
    public struct GramBlock: @unchecked Sendable {
        public var pointer: UnsafePointer<Double>
        public var stride: Int
    }

    public var gram: GramBlock?

    /// The best parameters for `w[0..<n]`.
    public func fit(_ w: UnsafePointer<Float>, count n: Int, importance a: UnsafePointer<Float>? = nil) -> Fit {
        var lo = Float.infinity, hi = -Float.infinity, amax: Float = 0, signedMax: Float = 0
        for j in 0..<n {
            lo = min(lo, w[j])
            hi = max(hi, w[j])
            if abs(w[j]) > amax {
                amax = abs(w[j])
                signedMax = w[j]
            }
        }
        if amax == 0 { return Fit(scale: 0, bias: 0, error: 0) }
        var best = Fit(scale: 0, bias: 0, error: .infinity)
        func consider(_ scale: Float, _ bias: Float) {
            let s = Float16(scale), b = Float16(bias)
            guard s.isFinite, b.isFinite, s != 0 else { return }
            let e = error(w, n, a, scale: Float(s), bias: Float(b))
            if e < best.error { best = Fit(scale: s, bias: b, error: e) }
        }
        for step in 0...steps {
            let c = 1 - maxShrink * Float(step) / Float(steps)
            switch encoding {
            case .q8:
                consider(c * amax / 127, 0)
            case .q4s:
                // llama.cpp's Q4_0 maps the value of largest magnitude to -8; try the other sign's end too.
                consider(c * signedMax / -8, 0)
                consider(-c * signedMax / 7, 0)
            default:
                // Shrink either end of the range, or both (q4 and q3: codes 0 up to levels.high).
                for (f, g) in [(c, c), (c, 1), (1, c)] {
                    let l = lo * (lo < 0 ? f : 1), h = hi * (hi > 0 ? g : 1)
                    consider((h - l) / Float(levels.high), l)
                }
            }
        }
        if leastSquares { best = refine(w, n, a, best) }
        return best
    }

    /// Given the codes of `start`, the weighted least-squares scale (and bias), if it lowers the error.
    func refine(_ w: UnsafePointer<Float>, _ n: Int, _ a: UnsafePointer<Float>?, _ start: Fit) -> Fit {
        var current = start
        for _ in 0..<2 {
            let s = Float(current.scale), b = Float(current.bias)
            var sqq = 0.0, sq = 0.0, s1 = 0.0, sqw = 0.0, sw = 0.0
            for j in 0..<n {
                let q = Double(code(w[j], scale: s, bias: b)), weight = Double(a?[j] ?? 1)
                sqq += weight * q * q
                sq += weight * q
                s1 += weight
                sqw += weight * q * Double(w[j])
                sw += weight * Double(w[j])
            }
            var scale: Double, bias: Double
            if encoding.hasBiases {
                let det = sqq * s1 - sq * sq
                guard det > 1e-20 else { break }
                scale = (sqw * s1 - sq * sw) / det
                bias = (sqq * sw - sq * sqw) / det
            } else {
                guard sqq > 0 else { break }
                scale = sqw / sqq
                bias = 0
            }
            let candidate = Fit(scale: Float16(Float(scale)), bias: Float16(Float(bias)), error: 0)
            guard candidate.scale.isFinite, candidate.bias.isFinite, candidate.scale != 0 else { break }
            let e = error(w, n, a, scale: Float(candidate.scale), bias: Float(candidate.bias))
            if e < current.error {
                current = Fit(scale: candidate.scale, bias: candidate.bias, error: e)
            } else {
                break
            }
        }
        return current
    }

    /// The stored code of `w` under `fit`: signed for q8, 0...15 for the 4-bit encodings, 0...7 for q3.
    public func storedCode(_ w: Float, _ fit: Fit) -> Int8 {
        storedCode(code(w, scale: Float(fit.scale), bias: Float(fit.bias)))
    }

    /// The byte stored for code `c` (q4s offset by 8).
    @inline(__always)
    func storedCode(_ c: Int) -> Int8 { encoding == .q4s ? Int8(c + 8) : Int8(c) }

    public func dequantized(_ w: Float, _ fit: Fit) -> Float {
        Float(code(w, scale: Float(fit.scale), bias: Float(fit.bias))) * Float(fit.scale) + Float(fit.bias)
    }

    /// The bias stored for q4 and q3 (for q4s it is implied: -8 scale).
    func storedBias(_ fit: Fit) -> Float16 { fit.bias }

    /// The encoding's code in the C search (include/vlq_quantize.h).
    var searchEncoding: Int32 {
        switch encoding {
        case .q8: return Int32(VLQ_QUANT_Q8.rawValue)
        case .q4s: return Int32(VLQ_QUANT_Q4S.rawValue)
        case .q3: return Int32(VLQ_QUANT_Q3.rawValue)
        default: return Int32(VLQ_QUANT_Q4.rawValue)
        }
    }

    /// `fit` on `groups` consecutive groups of `size` values at `w` (importance: laid out as `w`), eight
    /// at a time in C: the same parameters and errors, bit for bit. Output-error (Gram) searches and the
    /// least-squares refinement are not done here.
    public func fitGroups(
        _ w: UnsafePointer<Float>, groups: Int, size: Int, importance: UnsafePointer<Float>? = nil,
        scales: UnsafeMutablePointer<Float16>, biases: UnsafeMutablePointer<Float16>,
        errors: UnsafeMutablePointer<Float>
    ) {
        precondition(gram == nil && !leastSquares)
        scales.withMemoryRebound(to: UInt16.self, capacity: groups) { s in
            biases.withMemoryRebound(to: UInt16.self, capacity: groups) { b in
                vlq_fit_groups(w, importance, groups, size, searchEncoding, Int32(steps), maxShrink, s, b, errors)
            }
        }
    }

    /// `storedCode` and `dequantized` of `groups` consecutive groups of `size` values at `w`, in C.
    public func roundGroups(
        _ w: UnsafePointer<Float>, groups: Int, size: Int, scales: UnsafePointer<Float16>,
        biases: UnsafePointer<Float16>, codes: UnsafeMutablePointer<Int8>, values: UnsafeMutablePointer<Float>?
    ) {
        scales.withMemoryRebound(to: UInt16.self, capacity: groups) { s in
            biases.withMemoryRebound(to: UInt16.self, capacity: groups) { b in
                vlq_round_groups(w, groups, size, searchEncoding, s, b, codes, values)
            }
        }
    }
}
