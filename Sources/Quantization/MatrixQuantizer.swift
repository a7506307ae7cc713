import CBLAS
import Calibration
import Numerics
import VLQCore
import VLQFormat

/// A quantized weight matrix: its bytes in the bundle encoding, and the values they decode to (empty
/// when the caller asked only for the bytes).
public struct QuantizedMatrix {
    public var layout: QuantizedLayout
    public var bytes: [UInt8]
    public var dequantized: [Float]
}

/// How a weight matrix is turned into codes.
public enum QuantizationMethod: String, CaseIterable, Sendable {
    /// Round to nearest with a per-group range search.
    case rtn
    /// Importance-weighted (E[x^2]) range search and least-squares scale/bias per group.
    case imatrix
    /// Activation-aware per-channel scales, folded into the preceding op, then importance-weighted groups.
    case awq
    /// Hessian-based error feedback (Frantar et al.).
    case gptq
}

public enum MatrixQuantizer {
    /// Quantizes `w` [rows, columns] group by group. `columnImportance` (E[x^2] per input column)
    /// turns on the weighted search and least-squares refinement.
    /// With `gram` (X^T X of the inputs), each group's range is chosen by the output error it causes.
    /// Without `keepValues` (and without `gram`) the dequantized values are not computed: a writer needs
    /// only the bytes, and the values would hold a second f32 copy of the weight.
    public static func roundToNearest(
        _ w: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        columnImportance: [Float]? = nil, gram: [Double]? = nil, keepValues: Bool = true
    ) -> QuantizedMatrix {
        w.withUnsafeBufferPointer {
            roundToNearest(
                $0, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                columnImportance: columnImportance, gram: gram, keepValues: keepValues)
        }
    }

    /// As above, from values the caller keeps (the pipeline's one reused buffer).
    public static func roundToNearest(
        _ wp: UnsafeBufferPointer<Float>, rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        columnImportance: [Float]? = nil, gram: [Double]? = nil, keepValues: Bool = true
    ) -> QuantizedMatrix {
        precondition(wp.count == rows * columns)
        let layout = QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize)!
        let quantizer = GroupQuantizer(encoding: encoding, leastSquares: columnImportance != nil && gram == nil)
        var scales = [Float16](repeating: 0, count: rows * layout.groupsPerRow)
        var biases = [Float16](repeating: 0, count: rows * layout.groupsPerRow)
        var values = [Float](repeating: 0, count: keepValues || gram != nil ? rows * columns : 0)
        // Codes go straight into the tensor's bytes, row by row as each is done (q8 in place, the others
        // through a row of scratch): no matrix of codes beside them, and no pass zeroing either, pages
        // the kernel would zero on first touch anyway (a third of an int8 quantize's time went there).
        let bytes = [UInt8](unsafeUninitializedCapacity: layout.byteCount) { packed, initialized in
            scales.withUnsafeMutableBufferPointer { scalesBuffer in
                biases.withUnsafeMutableBufferPointer { biasesBuffer in
                    values.withUnsafeMutableBufferPointer { valuesBuffer in
                        let out = RowOutputs(
                            layout: layout, packed: packed.baseAddress!, scales: scalesBuffer.baseAddress!,
                            biases: biasesBuffer.baseAddress!,
                            values: valuesBuffer.isEmpty ? nil : valuesBuffer.baseAddress)
                        // Rows are independent: they are spread over the cores, each writing its own rows.
                        Kernels.parallelRows(
                            rows, minimumPerTask: 16, tasksPerProcessor: Kernels.balancedTasksPerProcessor
                        ) { range in
                            let scratch = UnsafeMutablePointer<Int8>.allocate(capacity: columns)
                            defer { scratch.deallocate() }
                            if gram == nil {
                                return searchRows(
                                    range, of: wp.baseAddress!, layout: layout, quantizer: quantizer,
                                    columnImportance: columnImportance, into: out, scratch: scratch)
                            }
                            var quantizer = quantizer
                            var importance = [Float](repeating: 1, count: groupSize)
                            for r in range {
                                quantizeRow(
                                    r, of: wp.baseAddress!, columns: columns, layout: layout,
                                    quantizer: &quantizer, importance: &importance,
                                    columnImportance: columnImportance, gram: gram,
                                    into: out, codes: out.codes(row: r, scratch: scratch))
                                out.finish(row: r, codes: scratch)
                            }
                        }
                    }
                }
            }
            layout.packParameters(scales: scales, biases: encoding.hasBiases ? biases : nil, into: packed.baseAddress!)
            initialized = layout.byteCount
        }
        return QuantizedMatrix(layout: layout, bytes: bytes, dequantized: values)
    }

    /// Where `quantizeRow` writes: each row its own part of the tensor's bytes, group parameters and values.
    struct RowOutputs {
        let layout: QuantizedLayout
        let packed: UnsafeMutablePointer<UInt8>
        let scales: UnsafeMutablePointer<Float16>
        let biases: UnsafeMutablePointer<Float16>
        /// nil: values not wanted.
        let values: UnsafeMutablePointer<Float>?

        /// Where row `r`'s codes are written: in place for q8 (a code is its stored byte), else `scratch`
        /// (a row of codes), which `finish` packs.
        func codes(row r: Int, scratch: UnsafeMutablePointer<Int8>) -> UnsafeMutablePointer<Int8> {
            guard layout.encoding == .q8 else { return scratch }
            return UnsafeMutableRawPointer(packed + r * layout.columns).assumingMemoryBound(to: Int8.self)
        }

        func finish(row r: Int, codes scratch: UnsafeMutablePointer<Int8>) {
            if layout.encoding != .q8 { layout.packRow(scratch, row: r, into: packed) }
        }
    }

    /// `quantizeRow` without a Gram matrix, for `rows`: each row's range searches run in C, eight groups
    /// at a time (GroupQuantizer.fitGroups, bit-identical), then the least-squares refinement (with
    /// importance) in Swift, then the rounding in C.
    static func searchRows(
        _ rows: Range<Int>, of w: UnsafePointer<Float>, layout: QuantizedLayout, quantizer: GroupQuantizer,
        columnImportance: [Float]?, into out: RowOutputs, scratch: UnsafeMutablePointer<Int8>
    ) {
        let (columns, groups, groupSize) = (layout.columns, layout.groupsPerRow, layout.groupSize)
        var searcher = quantizer
        searcher.leastSquares = false
        var importance = [Float](repeating: 1, count: columnImportance == nil ? 0 : columns)
        var errors = [Float](repeating: 0, count: groups)
        for r in rows {
            let row = w + r * columns, scales = out.scales + r * groups, biases = out.biases + r * groups
            if let ci = columnImportance { rowImportance(row, columns: columns, columnImportance: ci, &importance) }
            importance.withUnsafeBufferPointer { a in
                errors.withUnsafeMutableBufferPointer { e in
                    searcher.fitGroups(
                        row, groups: groups, size: groupSize, importance: a.isEmpty ? nil : a.baseAddress,
                        scales: scales, biases: biases, errors: e.baseAddress!)
                }
                guard quantizer.leastSquares else { return }
                for g in 0..<groups {
                    let start = g * groupSize
                    let fit = quantizer.refine(
                        row + start, groupSize, a.baseAddress! + start,
                        GroupQuantizer.Fit(scale: scales[g], bias: biases[g], error: errors[g]))
                    scales[g] = fit.scale
                    biases[g] = fit.bias
                }
            }
            quantizer.roundGroups(
                row, groups: groups, size: groupSize, scales: scales, biases: biases,
                codes: out.codes(row: r, scratch: scratch), values: out.values.map { $0 + r * columns })
            out.finish(row: r, codes: scratch)
        }
    }

    /// llama.cpp's weighting of a row's errors: E[x^2] times sqrt(sigma^2 + w^2), sigma^2 twice the
    /// row's mean square (the same arithmetic as `quantizeRow`).
    static func rowImportance(
        _ row: UnsafePointer<Float>, columns: Int, columnImportance ci: [Float], _ importance: inout [Float]
    ) {
        var sigma2: Float = 0
        for j in 0..<columns { sigma2 += row[j] * row[j] }
        sigma2 = 2 * sigma2 / Float(columns)
        for j in 0..<columns { importance[j] = ci[j] * (sigma2 + row[j] * row[j]).squareRoot() }
    }

    /// Row `r` of `w`, group by group: the range search (weighted by `columnImportance`, or against the
    /// output error with `gram`), then the stored codes and what they dequantize to.
    static func quantizeRow(
        _ r: Int, of w: UnsafePointer<Float>, columns: Int, layout: QuantizedLayout,
        quantizer: inout GroupQuantizer, importance: inout [Float], columnImportance: [Float]?, gram: [Double]?,
        into out: RowOutputs, codes: UnsafeMutablePointer<Int8>
    ) {
        let groupSize = layout.groupSize
        let row = w + r * columns
        var sigma2: Float = 0
        if columnImportance != nil {
            for j in 0..<columns { sigma2 += row[j] * row[j] }
            sigma2 = 2 * sigma2 / Float(columns)
        }
        for g in 0..<layout.groupsPerRow {
            let start = g * groupSize
            if let ci = columnImportance {
                // llama.cpp's weighting: E[x^2] times sqrt(sigma^2 + w^2).
                for j in 0..<groupSize {
                    importance[j] = ci[start + j] * (sigma2 + row[start + j] * row[start + j]).squareRoot()
                }
            }
            let fit = importance.withUnsafeBufferPointer { a in
                if let gram {
                    return gram.withUnsafeBufferPointer { g in
                        quantizer.gram = GroupQuantizer.GramBlock(
                            pointer: g.baseAddress! + start * columns + start, stride: columns)
                        return quantizer.fit(row + start, count: groupSize)
                    }
                }
                return quantizer.fit(
                    row + start, count: groupSize, importance: columnImportance != nil ? a.baseAddress : nil)
            }
            out.scales[r * layout.groupsPerRow + g] = fit.scale
            out.biases[r * layout.groupsPerRow + g] = fit.bias
            for j in start..<(start + groupSize) {
                codes[j] = quantizer.storedCode(row[j], fit)
                out.values?[r * columns + j] = quantizer.dequantized(row[j], fit)
            }
        }
    }

    /// Output error of replacing `w` by `approximation` on inputs with Gram matrix `gram`:
    /// sum over rows of d G d^T, d the row difference (optionally on a subset of rows).
    public static func outputError(
        _ w: [Float], _ approximation: [Float], rows: Int, columns: Int, gram: [Double], rowStride: Int = 1
    ) -> Double {
        var total = 0.0
        var d = [Double](repeating: 0, count: columns), gd = [Double](repeating: 0, count: columns)
        for r in stride(from: 0, to: rows, by: rowStride) {
            for j in 0..<columns { d[j] = Double(approximation[r * columns + j] - w[r * columns + j]) }
            gram.withUnsafeBufferPointer { g in
                cblas_dsymv(
                    CblasRowMajor, CblasUpper, Int32(columns), 1, g.baseAddress, Int32(columns), d, 1, 0, &gd, 1)
            }
            for j in 0..<columns { total += d[j] * gd[j] }
        }
        return total
    }
}
