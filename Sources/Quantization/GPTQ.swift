import CBLAS
import VLQCore
import Calibration
import VLQFormat

/// GPTQ (Frantar et al., 2022): columns are quantized one at a time and each column's rounding
/// error is pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's
/// inputs, so that the layer's *output* error stays small. Lazy blocks of 128 columns, dampening,
/// optional activation order (then group parameters are fixed up front from the unmodified weights).
public struct GPTQ: Sendable {
    public var blockSize = 128
    public var dampening = 0.01
    public var activationOrder = false

    public init(activationOrder: Bool = false) { self.activationOrder = activationOrder }

    public func quantize(_ weights: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
                         gram: [Double]) throws -> QuantizedMatrix {
        guard let layout = QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize),
              weights.count == layout.rows * columns, Checked.multiply(columns, columns) == gram.count else {
            throw VLQError(nil, "GPTQ: a [\(rows), \(columns)] weight of \(weights.count) values with a Hessian of "
                           + "\(gram.count) values cannot be \(encoding.name) in groups of \(groupSize)")
        }
        let quantizer = GroupQuantizer(encoding: encoding)
        var h = gram
        var w = weights
        // Columns no input ever reached carry no information: zero them, keep H invertible.
        for j in 0..<columns where h[j * columns + j] == 0 {
            h[j * columns + j] = 1
            for r in 0..<rows { w[r * columns + j] = 0 }
        }
        var order = Array(0..<columns)
        var hp: [Double]
        var wp: [Float]
        if activationOrder {
            order.sort { h[$0 * columns + $0] > h[$1 * columns + $1] }
            // Permute W's columns and H into processing order.
            hp = [Double](repeating: 0, count: columns * columns)
            for i in 0..<columns { for j in 0..<columns { hp[i * columns + j] = h[order[i] * columns + order[j]] } }
            wp = [Float](repeating: 0, count: rows * columns)
            for r in 0..<rows { for i in 0..<columns { wp[r * columns + i] = w[r * columns + order[i]] } }
        } else {
            hp = h
            wp = w
        }
        h = []  // a gigabyte for the widest inputs: not kept twice
        var meanDiagonal = 0.0
        for i in 0..<columns { meanDiagonal += hp[i * columns + i] }
        let damp = dampening * meanDiagonal / Double(columns)
        for i in 0..<columns { hp[i * columns + i] += damp }
        let hinvUpper = try GPTQ.upperCholeskyOfInverse(&hp, columns)

        // Group parameters: static (from the original weights) under activation order, else fitted
        // when the first column of a group is reached, from the already-updated weights.
        let groups = layout.groupsPerRow
        var fits = [GroupQuantizer.Fit?](repeating: nil, count: rows * groups)
        if activationOrder {
            w.withUnsafeBufferPointer { p in
                for r in 0..<rows { for g in 0..<groups { fits[r * groups + g] = quantizer.fit(p.baseAddress! + r * columns + g * groupSize, count: groupSize) } }
            }
        }
        var q = [Float](repeating: 0, count: rows * columns)
        var codes = [Int8](repeating: 0, count: rows * columns)
        var errors = [Float](repeating: 0, count: rows * blockSize)
        var blockStart = 0
        while blockStart < columns {
            let blockEnd = min(blockStart + blockSize, columns), width = blockEnd - blockStart
            for i in blockStart..<blockEnd {
                let original = order[i], g = original / groupSize
                if !activationOrder && original % groupSize == 0 {
                    // Without activation order, processing order is column order: the group is contiguous in wp.
                    wp.withUnsafeBufferPointer { p in
                        for r in 0..<rows { fits[r * groups + g] = quantizer.fit(p.baseAddress! + r * columns + i, count: groupSize) }
                    }
                }
                let d = Float(hinvUpper[i * columns + i])
                for r in 0..<rows {
                    let fit = fits[r * groups + g]!
                    let value = wp[r * columns + i]
                    let approx = quantizer.dequantized(value, fit)
                    q[r * columns + original] = approx
                    codes[r * columns + original] = quantizer.storedCode(value, fit)
                    let e = (value - approx) / d
                    errors[r * blockSize + (i - blockStart)] = e
                    // Push this column's error onto the rest of the block.
                    for j in (i + 1)..<blockEnd { wp[r * columns + j] -= e * Float(hinvUpper[i * columns + j]) }
                }
            }
            // ...and onto every later column at once: W[:, end:] -= E * Hinv[block, end:].
            if blockEnd < columns {
                let tail = columns - blockEnd
                var hblock = [Float](repeating: 0, count: width * tail)
                for i in 0..<width { for j in 0..<tail { hblock[i * tail + j] = Float(hinvUpper[(blockStart + i) * columns + blockEnd + j]) } }
                wp.withUnsafeMutableBufferPointer { p in
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(tail), Int32(width), -1,
                                errors, Int32(blockSize), hblock, Int32(tail), 1, p.baseAddress! + blockEnd, Int32(columns))
                }
            }
            blockStart = blockEnd
        }
        var scales = [Float16](repeating: 0, count: rows * groups), biases = scales
        for i in 0..<fits.count {
            scales[i] = fits[i]?.scale ?? 0
            biases[i] = fits[i]?.bias ?? 0
        }
        return QuantizedMatrix(layout: layout, bytes: layout.pack(codes: codes, scales: scales, biases: encoding == .q4 ? biases : nil),
                               dequantized: q)
    }

    /// U upper-triangular with H^-1 = U^T U (row-major), via LAPACK in double.
    /// Works in place on `a` (which it consumes) to avoid another copy of an n x n matrix.
    static func upperCholeskyOfInverse(_ a: inout [Double], _ n: Int) throws -> [Double] {
        var size = Int32(n), info: Int32 = 0
        // Row-major symmetric data read as column-major is the same matrix; "L" there is "U" here.
        var lower = Int8(UInt8(ascii: "L"))
        dpotrf_(&lower, &size, &a, &size, &info)
        guard info == 0 else { throw VLQError(nil, "GPTQ: the Hessian is not positive definite (LAPACK info \(info))") }
        dpotri_(&lower, &size, &a, &size, &info)
        guard info == 0 else { throw VLQError(nil, "GPTQ: the Hessian could not be inverted (LAPACK info \(info))") }
        // dpotri fills one triangle (the upper one in row-major terms): mirror it into the lower.
        for i in 0..<n { for j in 0..<i { a[i * n + j] = a[j * n + i] } }
        dpotrf_(&lower, &size, &a, &size, &info)
        guard info == 0 else { throw VLQError(nil, "GPTQ: the inverse Hessian is not positive definite (LAPACK info \(info))") }
        for i in 0..<n { for j in 0..<i { a[i * n + j] = 0 } }
        return a
    }
}
