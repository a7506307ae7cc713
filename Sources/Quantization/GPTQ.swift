import CBLAS
import Calibration
import Numerics
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

    /// U upper-triangular with H^-1 = U^T U (row-major), via LAPACK in double, without forming H^-1:
    /// with J the order reversal, J H J = R^T R (Cholesky), and U = J R^-T J, as
    /// U^T U = J R^-1 R^-T J = J (J H J)^-1 J = H^-1. One factorisation and one triangular inverse (2n^3/3)
    /// instead of factorise, invert, factorise again (4n^3/3); equal up to rounding in double.
    /// Works in place on `a` (which it consumes) to avoid another copy of an n x n matrix.
    static func upperCholeskyOfInverse(_ a: inout [Double], _ n: Int) throws -> [Double] {
        var size = Int32(n), info: Int32 = 0
        // Reversing the row-major array reverses both indices: J H J. Symmetric, so it reads the same
        // column-major; LAPACK's column-major upper R is R^T in the row-major view.
        a.reverse()
        var upper = Int8(UInt8(ascii: "U")), nonUnit = Int8(UInt8(ascii: "N"))
        dpotrf_(&upper, &size, &a, &size, &info)
        guard info == 0 else {
            throw VLQError(
                QuantizationError.numericalFailure, nil,
                "GPTQ: the Hessian is not positive definite (LAPACK info \(info))")
        }
        dtrtri_(&upper, &nonUnit, &size, &a, &size, &info)
        guard info == 0 else {
            throw VLQError(
                QuantizationError.numericalFailure, nil, "GPTQ: the Hessian could not be inverted (LAPACK info \(info))"
            )
        }
        // Row-major R^-T, reversed: J R^-T J = U above the diagonal; below it what LAPACK left of H.
        a.reverse()
        for i in 0..<n { for j in 0..<i { a[i * n + j] = 0 } }
        return a
    }
}

/// Where a block's rows write (each row its own part).
struct GPTQBlockOutputs: @unchecked Sendable {
    let weights: UnsafeMutablePointer<Float>
    let values: UnsafeMutablePointer<Float>
    let codes: UnsafeMutablePointer<Int8>
    let errors: UnsafeMutablePointer<Float>
    let fits: UnsafeMutablePointer<GroupQuantizer.Fit?>
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

    /// Every group's parameters from `w` in the original column order (groups are consecutive in `w`).
    mutating func fitEveryGroup(_ w: [Float]) {
        let count = rows * groups
        var scales = [Float16](repeating: 0, count: count), biases = scales,
            errors = [Float](repeating: 0, count: count)
        w.withUnsafeBufferPointer { p in
            quantizer.fitGroups(
                p.baseAddress!, groups: count, size: groupSize, scales: &scales, biases: &biases, errors: &errors)
        }
        for i in 0..<count { fits[i] = GroupQuantizer.Fit(scale: scales[i], bias: biases[i], error: errors[i]) }
    }

    /// Quantizes the columns of `block` in every row, pushing each column's error onto the rest of the
    /// block. Rows are independent here: they are spread over the cores, each row doing exactly what the
    /// column-by-column order did to it, so results do not depend on the split. Within a chunk of rows the
    /// block is cut at group starts, where the chunk's groups are fitted together (eight at a time in C).
    mutating func quantize(_ block: Range<Int>) {
        let columns = columns, width = block.count
        // The block's part of the inverse Hessian's factor, in float as the updates use it.
        var h = [Float](repeating: 0, count: width * width)
        for i in 0..<width {
            let row = (block.lowerBound + i) * columns + block.lowerBound
            for j in i..<width { h[i * width + j] = Float(hinvUpper[row + j]) }
        }
        var cuts = [block.lowerBound]
        for i in block.dropFirst() where !staticGroups && order[i] % groupSize == 0 { cuts.append(i) }
        cuts.append(block.upperBound)
        // Not `self`: a copy of the pass would hold the arrays written below, which would then be copied.
        let pass = GPTQRows(
            layout: layout, blockSize: blockSize, order: order, quantizer: quantizer, staticGroups: staticGroups)
        wp.withUnsafeMutableBufferPointer { w in
            dequantized.withUnsafeMutableBufferPointer { values in
                codes.withUnsafeMutableBufferPointer { codes in
                    errors.withUnsafeMutableBufferPointer { errors in
                        fits.withUnsafeMutableBufferPointer { fits in
                            let out = GPTQBlockOutputs(
                                weights: w.baseAddress!, values: values.baseAddress!, codes: codes.baseAddress!,
                                errors: errors.baseAddress!, fits: fits.baseAddress!)
                            h.withUnsafeBufferPointer { h in
                                Kernels.parallelRows(pass.rows, minimumPerTask: 8) { chunk in
                                    for segment in zip(cuts, cuts.dropFirst()) where segment.0 < segment.1 {
                                        pass.quantize(
                                            rows: chunk, columns: segment.0..<segment.1, of: block, h: h.baseAddress!,
                                            out)
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The per-row work of a block (GPTQPass.quantize), without the pass's arrays.
struct GPTQRows {
    let layout: QuantizedLayout
    let blockSize: Int
    let order: [Int]
    let quantizer: GroupQuantizer
    let staticGroups: Bool

    var rows: Int { layout.rows }
    var columns: Int { layout.columns }
    var groups: Int { layout.groupsPerRow }
    var groupSize: Int { layout.groupSize }

    /// Columns `segment` of `block` in `rows`: a group starting at the segment is fitted first (its values
    /// have all the earlier columns' updates by then), then each row's columns in order.
    func quantize(
        rows: Range<Int>, columns segment: Range<Int>, of block: Range<Int>, h: UnsafePointer<Float>,
        _ out: GPTQBlockOutputs
    ) {
        let (columns, groups, groupSize, width) = (columns, groups, groupSize, block.count)
        let g0 = order[segment.lowerBound] / groupSize
        if !staticGroups && order[segment.lowerBound] % groupSize == 0 {
            fitGroupsStarting(at: segment.lowerBound, group: g0, rows: rows, out)
        }
        for r in rows {
            let row = out.weights + r * columns
            for i in segment {
                let original = order[i], fit = out.fits[r * groups + original / groupSize]!
                let value = row[i], approx = quantizer.dequantized(value, fit)
                out.values[r * columns + original] = approx
                out.codes[r * columns + original] = quantizer.storedCode(value, fit)
                let k = i - block.lowerBound
                let e = (value - approx) / h[k * width + k]
                out.errors[r * blockSize + k] = e
                // Push this column's error onto the rest of the block.
                for j in (k + 1)..<width { row[block.lowerBound + j] -= e * h[k * width + j] }
            }
        }
    }

    /// The group starting at processing column `i` (contiguous without activation order) of each row.
    func fitGroupsStarting(at i: Int, group g: Int, rows: Range<Int>, _ out: GPTQBlockOutputs) {
        let (columns, groups, groupSize) = (columns, groups, groupSize)
        var gathered = [Float](repeating: 0, count: rows.count * groupSize)
        for (k, r) in rows.enumerated() {
            for j in 0..<groupSize { gathered[k * groupSize + j] = out.weights[r * columns + i + j] }
        }
        var scales = [Float16](repeating: 0, count: rows.count), biases = scales
        var errors = [Float](repeating: 0, count: rows.count)
        quantizer.fitGroups(
            gathered, groups: rows.count, size: groupSize, scales: &scales, biases: &biases, errors: &errors)
        for (k, r) in rows.enumerated() {
            out.fits[r * groups + g] = GroupQuantizer.Fit(scale: scales[k], bias: biases[k], error: errors[k])
        }
    }

}

extension GPTQPass {
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
                biases: encoding.hasBiases ? biases : nil),
            dequantized: dequantized)
    }
}
