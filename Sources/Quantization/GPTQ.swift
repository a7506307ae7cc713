import CBLAS
import Calibration
import VLQCore
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

    public func quantize(
        _ weights: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        gram: [Double]
    ) throws -> QuantizedMatrix {
        guard let layout = QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize),
            weights.count == layout.rows * columns, Checked.multiply(columns, columns) == gram.count
        else {
            throw VLQError(
                QuantizationError.invalidGrouping,
                nil,
                "GPTQ: a [\(rows), \(columns)] weight of \(weights.count) values with a Hessian of "
                    + "\(gram.count) values cannot be \(encoding.name) in groups of \(groupSize)")
        }
        var w = weights
        let (order, hinvUpper, permuted) = try inverseHessian(gram, weights: &w, rows: rows, columns: columns)
        var pass = GPTQPass(
            layout: layout, blockSize: blockSize, order: order, hinvUpper: hinvUpper, weights: permuted,
            staticGroups: activationOrder)
        // Group parameters: static (from the original weights) under activation order, else fitted
        // when the first column of a group is reached, from the already-updated weights.
        if activationOrder { pass.fitEveryGroup(w) }
        var blockStart = 0
        while blockStart < columns {
            let block = blockStart..<min(blockStart + blockSize, columns)
            pass.quantize(block)
            pass.propagateError(of: block)
            blockStart = block.upperBound
        }
        return pass.matrix(encoding: encoding)
    }

    /// The processing order of the columns, the upper Cholesky factor of the dampened inverse Hessian in
    /// that order, and the weights permuted into it. Columns no input ever reached are zeroed in `w`.
    func inverseHessian(
        _ gram: [Double], weights w: inout [Float], rows: Int,
        columns: Int
    ) throws -> (order: [Int], hinvUpper: [Double], permuted: [Float]) {
        var h = gram
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
        return (order, try GPTQ.upperCholeskyOfInverse(&hp, columns), wp)
    }

    /// U upper-triangular with H^-1 = U^T U (row-major), via LAPACK in double.
    /// Works in place on `a` (which it consumes) to avoid another copy of an n x n matrix.
    static func upperCholeskyOfInverse(_ a: inout [Double], _ n: Int) throws -> [Double] {
        var size = Int32(n), info: Int32 = 0
        // Row-major symmetric data read as column-major is the same matrix; "L" there is "U" here.
        var lower = Int8(UInt8(ascii: "L"))
        dpotrf_(&lower, &size, &a, &size, &info)
        guard info == 0 else {
            throw VLQError(
                QuantizationError.numericalFailure, nil,
                "GPTQ: the Hessian is not positive definite (LAPACK info \(info))")
        }
        dpotri_(&lower, &size, &a, &size, &info)
        guard info == 0 else {
            throw VLQError(
                QuantizationError.numericalFailure, nil, "GPTQ: the Hessian could not be inverted (LAPACK info \(info))"
            )
        }
        // dpotri fills one triangle (the upper one in row-major terms): mirror it into the lower.
        for i in 0..<n { for j in 0..<i { a[i * n + j] = a[j * n + i] } }
        dpotrf_(&lower, &size, &a, &size, &info)
        guard info == 0 else {
            throw VLQError(
                QuantizationError.numericalFailure, nil,
                "GPTQ: the inverse Hessian is not positive definite (LAPACK info \(info))")
        }
        for i in 0..<n { for j in 0..<i { a[i * n + j] = 0 } }
        return a
    }
}

/// GPTQ's column-by-column pass over weights in processing order: each column is rounded with its
/// group's parameters and its error pushed onto the columns not yet quantized, within the block at
/// once and onto the later columns block by block.
struct GPTQPass {
    let layout: QuantizedLayout
    let blockSize: Int
    let order: [Int]
    let hinvUpper: [Double]
    let quantizer: GroupQuantizer
    /// Group parameters fixed up front (activation order) rather than fitted as each group begins.
    let staticGroups: Bool
    var wp: [Float]
    var fits: [GroupQuantizer.Fit?]
    var dequantized: [Float]
    var codes: [Int8]
    var errors: [Float]

    var rows: Int { layout.rows }
    var columns: Int { layout.columns }
    var groups: Int { layout.groupsPerRow }
    var groupSize: Int { layout.groupSize }

    init(
        layout: QuantizedLayout, blockSize: Int, order: [Int], hinvUpper: [Double], weights: [Float],
        staticGroups: Bool
    ) {
        self.layout = layout
        self.blockSize = blockSize
        self.order = order
        self.hinvUpper = hinvUpper
        quantizer = GroupQuantizer(encoding: layout.encoding)
        self.staticGroups = staticGroups
        wp = weights
        fits = Array(repeating: nil, count: layout.rows * layout.groupsPerRow)
        dequantized = Array(repeating: 0, count: layout.rows * layout.columns)
        codes = Array(repeating: 0, count: layout.rows * layout.columns)
        errors = Array(repeating: 0, count: layout.rows * blockSize)
    }

    /// Every group's parameters from `w` in the original column order.
    mutating func fitEveryGroup(_ w: [Float]) {
        let (rows, columns, groups, groupSize, quantizer) = (rows, columns, groups, groupSize, quantizer)
        w.withUnsafeBufferPointer { p in
            for r in 0..<rows {
                for g in 0..<groups {
                    fits[r * groups + g] = quantizer.fit(p.baseAddress! + r * columns + g * groupSize, count: groupSize)
                }
            }
        }
    }

    mutating func quantize(_ block: Range<Int>) {
        let (rows, columns, groups, groupSize, quantizer) = (rows, columns, groups, groupSize, quantizer)
        for i in block {
            let original = order[i], g = original / groupSize
            if !staticGroups && original % groupSize == 0 {
                // Without activation order, processing order is column order: the group is contiguous in wp.
                wp.withUnsafeBufferPointer { p in
                    for r in 0..<rows {
                        fits[r * groups + g] = quantizer.fit(p.baseAddress! + r * columns + i, count: groupSize)
                    }
                }
            }
            let d = Float(hinvUpper[i * columns + i])
            for r in 0..<rows {
                let fit = fits[r * groups + g]!
                let value = wp[r * columns + i]
                let approx = quantizer.dequantized(value, fit)
                dequantized[r * columns + original] = approx
                codes[r * columns + original] = quantizer.storedCode(value, fit)
                let e = (value - approx) / d
                errors[r * blockSize + (i - block.lowerBound)] = e
                // Push this column's error onto the rest of the block.
                for j in (i + 1)..<block.upperBound { wp[r * columns + j] -= e * Float(hinvUpper[i * columns + j]) }
            }
        }
    }

    /// ...and onto every later column at once: W[:, end:] -= E * Hinv[block, end:].
    mutating func propagateError(of block: Range<Int>) {
        guard block.upperBound < columns else { return }
        let (rows, columns, width) = (rows, columns, block.count)
        let tail = columns - block.upperBound
        var hblock = [Float](repeating: 0, count: width * tail)
        for i in 0..<width {
            let row = (block.lowerBound + i) * columns + block.upperBound
            for j in 0..<tail { hblock[i * tail + j] = Float(hinvUpper[row + j]) }
        }
        let errors = errors, blockSize = blockSize
        wp.withUnsafeMutableBufferPointer { p in
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(tail), Int32(width), -1,
                errors, Int32(blockSize), hblock, Int32(tail), 1, p.baseAddress! + block.upperBound,
                Int32(columns))
        }
    }

    func matrix(encoding: TensorEncoding) -> QuantizedMatrix {
        var scales = [Float16](repeating: 0, count: rows * groups), biases = scales
        for i in 0..<fits.count {
            scales[i] = fits[i]?.scale ?? 0
            biases[i] = fits[i]?.bias ?? 0
        }
        return QuantizedMatrix(
            layout: layout,
            bytes: layout.pack(
                codes: codes, scales: scales,
                biases: encoding == .q4 ? biases : nil),
            dequantized: dequantized)
    }
}
