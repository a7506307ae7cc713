import CBLAS
import CKernels
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
        guard QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize) != nil,
            weights.count == rows * columns, Checked.multiply(columns, columns) == gram.count
        else {
            throw VLQError(
                QuantizationError.invalidGrouping,
                nil,
                "GPTQ: a [\(rows), \(columns)] weight of \(weights.count) values with a Hessian of "
                    + "\(gram.count) values cannot be \(encoding.name) in groups of \(groupSize)")
        }
        return try quantize(
            weights, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
            factor: factor(gram, columns: columns))
    }

    /// GPTQ with the factor of the input's Hessian already computed (`factor(_:columns:)`): the Linears
    /// fed the same input (q/k/v, gate/up) share it.
    public func quantize(
        _ weights: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        factor: GPTQFactor
    ) throws -> QuantizedMatrix {
        guard let layout = QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize),
            weights.count == layout.rows * columns, factor.columns == columns,
            factor.activationOrder == activationOrder, factor.dampening == dampening
        else {
            throw VLQError(
                QuantizationError.invalidGrouping,
                nil,
                "GPTQ: a [\(rows), \(columns)] weight of \(weights.count) values with the factor of a Hessian "
                    + "\(factor.columns) wide (activation order \(factor.activationOrder), dampening "
                    + "\(factor.dampening)) cannot be \(encoding.name) in groups of \(groupSize)")
        }
        var w = weights
        // Columns no input ever reached carry no information.
        for j in factor.deadColumns { for r in 0..<rows { w[r * columns + j] = 0 } }
        var pass = GPTQPass(
            layout: layout, blockSize: blockSize, factor: factor, weights: permuted(w, rows: rows, factor.order),
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

    /// W's columns in processing order.
    func permuted(_ w: [Float], rows: Int, _ order: [Int]) -> [Float] {
        guard activationOrder else { return w }
        let columns = order.count
        var wp = [Float](repeating: 0, count: rows * columns)
        for r in 0..<rows { for i in 0..<columns { wp[r * columns + i] = w[r * columns + order[i]] } }
        return wp
    }

    /// The processing order of the columns, the columns no input reached, and the upper Cholesky factor
    /// of the dampened inverse Hessian in that order, in float as the updates use it.
    public func factor(_ gram: consuming [Double], columns: Int) throws -> GPTQFactor {
        precondition(gram.count == columns * columns)
        var h = consume gram
        // Columns no input ever reached carry no information: their weights are zeroed, H kept invertible.
        var dead: [Int] = []
        for j in 0..<columns where h[j * columns + j] == 0 {
            h[j * columns + j] = 1
            dead.append(j)
        }
        var order = Array(0..<columns)
        var hp: [Double]
        if activationOrder {
            order.sort { h[$0 * columns + $0] > h[$1 * columns + $1] }
            // Permute H into processing order.
            hp = [Double](repeating: 0, count: columns * columns)
            for i in 0..<columns { for j in 0..<columns { hp[i * columns + j] = h[order[i] * columns + order[j]] } }
        } else {
            hp = h
        }
        h = []  // a gigabyte for the widest inputs: not kept twice
        var meanDiagonal = 0.0
        for i in 0..<columns { meanDiagonal += hp[i * columns + i] }
        let damp = dampening * meanDiagonal / Double(columns)
        for i in 0..<columns { hp[i * columns + i] += damp }
        return GPTQFactor(
            columns: columns, activationOrder: activationOrder, dampening: dampening, order: order,
            deadColumns: dead, upper: try GPTQ.upperCholeskyOfInverseInFloat(&hp, columns))
    }

    /// `factor(_:columns:)` straight from the accumulated X^T X, bit for bit: LAPACK's input J H J (of
    /// which it reads the upper triangle only) is filled from the float upper triangle in parallel, instead
    /// of building the symmetric double matrix, copying it and reversing it (serial passes over a
    /// gigabyte for 11008 columns).
    public func factor(of gram: GramMatrix) throws -> GPTQFactor {
        let n = gram.columns
        let (order, dead, damp, diagonal) = gram.withUpperTriangle { upper in
            // Columns no input ever reached: H kept invertible (their weights are zeroed).
            var diagonal = (0..<n).map { Double(upper[$0 * n + $0]) }
            let dead = (0..<n).filter { diagonal[$0] == 0 }
            for j in dead { diagonal[j] = 1 }
            var order = Array(0..<n)
            if activationOrder { order.sort { diagonal[$0] > diagonal[$1] } }
            var meanDiagonal = 0.0
            for i in 0..<n { meanDiagonal += diagonal[order[i]] }
            return (order, dead, dampening * meanDiagonal / Double(n), diagonal)
        }
        var a = gram.withUpperTriangle { upper in
            LargeAllocations.array(count: n * n) { (a: UnsafeMutableBufferPointer<Double>) in
                let a = a.baseAddress!
                // Column-major column j of J Hp J (Hp: H in processing order), rows 0...j: Hp[n-1-j][n-1-i];
                // zero below (LAPACK reads the upper triangle only; written so every page is touched here).
                Kernels.parallelRows(n, minimumPerTask: 64, tasksPerProcessor: Kernels.balancedTasksPerProcessor) {
                    columnsOfA in
                    for j in columnsOfA {
                        let p = order[n - 1 - j], column = a + j * n
                        for i in 0..<j {
                            let q = order[n - 1 - i]
                            column[i] = Double(upper[min(p, q) * n + max(p, q)])
                        }
                        column[j] = diagonal[p] + damp
                        (column + j + 1).initialize(repeating: 0, count: n - 1 - j)
                    }
                }
            }
        }
        return GPTQFactor(
            columns: n, activationOrder: activationOrder, dampening: dampening, order: order, deadColumns: dead,
            upper: try GPTQ.upperCholeskyOfInverseInFloat(reversed: &a, n))
    }

    /// U upper-triangular with H^-1 = U^T U (row-major), via LAPACK in double, without forming H^-1:
    /// with J the order reversal, J H J = R^T R (Cholesky), and U = J R^-T J, as
    /// U^T U = J R^-1 R^-T J = J (J H J)^-1 J = H^-1. One factorisation and one triangular inverse (2n^3/3)
    /// instead of factorise, invert, factorise again (4n^3/3); equal up to rounding in double.
    /// Works in place on `a` (which it consumes) to avoid another copy of an n x n matrix.
    static func upperCholeskyOfInverse(_ a: inout [Double], _ n: Int) throws -> [Double] {
        // Reversing the row-major array reverses both indices: J H J. Symmetric, so it reads the same
        // column-major; LAPACK's column-major upper R is R^T in the row-major view.
        a.reverse()
        try invertedCholesky(&a, n)
        // Row-major R^-T, reversed: J R^-T J = U above the diagonal; below it what LAPACK left of H.
        a.reverse()
        for i in 0..<n { for j in 0..<i { a[i * n + j] = 0 } }
        return a
    }

    /// `upperCholeskyOfInverse` rounded to float (as GPTQ's updates use it), the same values, in one pass
    /// over LAPACK's result, reading it reversed instead of reversing a gigabyte in place.
    static func upperCholeskyOfInverseInFloat(_ a: inout [Double], _ n: Int) throws -> [Float] {
        a.reverse()
        return try upperCholeskyOfInverseInFloat(reversed: &a, n)
    }

    /// The same from J H J (the upper triangle, column-major, is what LAPACK reads).
    static func upperCholeskyOfInverseInFloat(reversed a: inout [Double], _ n: Int) throws -> [Float] {
        try invertedCholesky(&a, n)
        return a.withUnsafeBufferPointer { a in
            LargeAllocations.array(count: n * n) { (u: UnsafeMutableBufferPointer<Float>) in
                let (a, u) = (a.baseAddress!, u.baseAddress!)
                // Rows are independent: spread over the cores (a 11008-wide factor is 60M conversions).
                Kernels.parallelRows(n, minimumPerTask: 64, tasksPerProcessor: Kernels.balancedTasksPerProcessor) {
                    rows in
                    for i in rows {
                        let reversed = a + (n - 1 - i) * n + (n - 1)
                        (u + i * n).initialize(repeating: 0, count: i)
                        for j in i..<n { u[i * n + j] = Float(reversed[-j]) }
                    }
                }
            }
        }
    }

    /// R, upper with R^T R = `a` (column-major, upper triangle read), then R^-1, in place.
    static func invertedCholesky(_ a: inout [Double], _ n: Int) throws {
        var size = Int32(n), info: Int32 = 0
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
    }
}

/// What GPTQ computes from a Linear's input statistics alone: the same for every Linear fed that input
/// (q/k/v, gate/up), so computed once for them (`GPTQFactorCache`).
public final class GPTQFactor: Sendable {
    public let columns: Int
    let activationOrder: Bool
    let dampening: Double
    /// The processing order of the columns (by decreasing activation energy under activation order).
    let order: [Int]
    /// Columns no input ever reached.
    let deadColumns: [Int]
    /// U, n x n row-major, zero below the diagonal: H^-1 = U^T U in processing order, rounded to float.
    let upper: [Float]

    init(columns: Int, activationOrder: Bool, dampening: Double, order: [Int], deadColumns: [Int], upper: [Float]) {
        self.columns = columns
        self.activationOrder = activationOrder
        self.dampening = dampening
        self.order = order
        self.deadColumns = deadColumns
        self.upper = upper
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
    let factor: GPTQFactor
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
        layout: QuantizedLayout, blockSize: Int, factor: GPTQFactor, weights: [Float], staticGroups: Bool
    ) {
        self.layout = layout
        self.blockSize = blockSize
        self.factor = factor
        quantizer = GroupQuantizer(encoding: layout.encoding)
        self.staticGroups = staticGroups
        // Hundreds of MB each for the widest Linears: first touched on every core.
        wp = LargeAllocations.copy(of: weights)
        fits = Array(repeating: nil, count: layout.rows * layout.groupsPerRow)
        dequantized = LargeAllocations.array(repeating: 0, count: layout.rows * layout.columns)
        codes = LargeAllocations.array(repeating: 0, count: layout.rows * layout.columns)
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
        let columns = columns, order = factor.order
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
                            factor.upper.withUnsafeBufferPointer { upper in
                                // The block's diagonal part of the factor, rows `columns` apart.
                                let h = upper.baseAddress! + block.lowerBound * columns + block.lowerBound
                                Kernels.parallelRows(
                                    pass.rows, minimumPerTask: 8, tasksPerProcessor: Kernels.balancedTasksPerProcessor
                                ) { chunk in
                                    for segment in zip(cuts, cuts.dropFirst()) where segment.0 < segment.1 {
                                        pass.quantize(rows: chunk, columns: segment.0..<segment.1, of: block, h: h, out)
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
    /// have all the earlier columns' updates by then), then each row's columns in order. `h` is the block's
    /// diagonal part of the factor, its rows `columns` apart.
    func quantize(
        rows: Range<Int>, columns segment: Range<Int>, of block: Range<Int>, h: UnsafePointer<Float>,
        _ out: GPTQBlockOutputs
    ) {
        let (columns, groups, groupSize, width) = (columns, groups, groupSize, block.count)
        let start = block.lowerBound
        let g0 = order[segment.lowerBound] / groupSize
        if !staticGroups && order[segment.lowerBound] % groupSize == 0 {
            fitGroupsStarting(at: segment.lowerBound, group: g0, rows: rows, out)
        }
        for r in rows {
            let row = out.weights + r * columns
            var group = -1, scale: Float = 0, bias: Float = 0
            for i in segment {
                let original = order[i]
                if original / groupSize != group {
                    // The group's f16 parameters in float, converted once for its columns here.
                    let fit = out.fits[r * groups + original / groupSize]!
                    (group, scale, bias) = (original / groupSize, Float(fit.scale), Float(fit.bias))
                }
                // GroupQuantizer's dequantized and storedCode, from one rounding.
                let value = row[i], code = quantizer.code(value, scale: scale, bias: bias)
                let approx = Float(code) * scale + bias
                out.values[r * columns + original] = approx
                out.codes[r * columns + original] = quantizer.storedCode(code)
                let k = i - start
                let e = (value - approx) / h[k * columns + k]
                out.errors[r * blockSize + k] = e
                // Push this column's error onto the rest of the block (in C: vectorized, same arithmetic).
                vlq_gptq_push_error(row + start + k + 1, h + k * columns + k + 1, e, width - k - 1)
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
    /// ...and onto every later column at once: W[:, end:] -= E * Hinv[block, end:], reading the factor's
    /// rows of the block in place. OpenBLAS splits wide products (and dpotrf/dtrtri) by its thread count,
    /// and its float results then depend on it: 1 and 2 threads give different bytes at 4096 columns.
    /// Kept: a split of our own (fixed row chunks) makes them independent but changes every wide layer.
    mutating func propagateError(of block: Range<Int>) {
        guard block.upperBound < columns else { return }
        let (rows, columns, width, blockSize) = (rows, columns, block.count, blockSize)
        let tail = columns - block.upperBound
        errors.withUnsafeBufferPointer { errors in
            factor.upper.withUnsafeBufferPointer { upper in
                wp.withUnsafeMutableBufferPointer { w in
                    cblas_sgemm(
                        CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(rows), Int32(tail), Int32(width), -1,
                        errors.baseAddress!, Int32(blockSize),
                        upper.baseAddress! + block.lowerBound * columns + block.upperBound, Int32(columns), 1,
                        w.baseAddress! + block.upperBound, Int32(columns))
                }
            }
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

/// The factor of the last input GPTQ quantized a Linear of: the Linears fed the same input (q/k/v,
/// gate/up: one after another in a plan) reuse it instead of factoring the same Hessian again (2n^3/3
/// in double: seconds for a 4096-wide input). Holds the Gram matrix weakly: once it is freed (the next
/// calibration window), no other can be taken for it. One quantization at a time.
public final class GPTQFactorCache {
    private weak var gram: GramMatrix?
    private var revision = 0
    private var last: GPTQFactor?

    public init() {}

    public func factor(of gram: GramMatrix, for gptq: GPTQ) throws -> GPTQFactor {
        if let last, self.gram === gram, revision == gram.revision, last.activationOrder == gptq.activationOrder,
            last.dampening == gptq.dampening
        {
            return last
        }
        last = nil  // the previous factor (half a gigabyte for 11008 columns) is freed before the next
        let factor = try gptq.factor(of: gram)
        (self.gram, revision, last) = (gram, gram.revision, factor)
        return factor
    }
}
