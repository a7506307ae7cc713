import Calibration
import VLQCore
import VLQFormat

/// One Linear's weight quantized by a method, with what the method needs from calibration.
public enum LinearQuantizer {
    public struct Output {
        public var matrix: QuantizedMatrix
        /// AWQ: the per-input-channel scales the weight was multiplied by; the preceding op must be
        /// divided by them (nil for other methods).
        public var channelScales: [Float]?
    }

    /// The output-aware clip search costs rows x columns x group size per candidate range; past this
    /// budget (about 2 s of work) AWQ falls back to E[x^2]-weighted ranges, which cost rows x columns.
    static func outputAwareClipAffordable(rows: Int, columns: Int, groupSize: Int) -> Bool {
        rows * columns * groupSize <= 1 << 30
    }

    /// Without `keepValues`, rtn and imatrix leave `matrix.dequantized` empty (a writer needs the bytes).
    public static func quantize(
        _ w: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        method: QuantizationMethod, statistics: InputStatistics?, awqScales: [Float]? = nil,
        activationOrder: Bool = false, keepValues: Bool = true, gptqFactors: GPTQFactorCache? = nil
    ) throws -> Output {
        try w.withUnsafeBufferPointer {
            try quantize(
                $0, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, method: method,
                statistics: statistics, awqScales: awqScales, activationOrder: activationOrder, keepValues: keepValues,
                gptqFactors: gptqFactors)
        }
    }

    /// As above, from values the caller keeps (the pipeline's one reused buffer); gptq and awq, which
    /// change the values as they go, work on a copy.
    public static func quantize(
        _ w: UnsafeBufferPointer<Float>, rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        method: QuantizationMethod, statistics: InputStatistics?, awqScales: [Float]? = nil,
        activationOrder: Bool = false, keepValues: Bool = true, gptqFactors: GPTQFactorCache? = nil
    ) throws -> Output {
        try checkSizes(
            count: w.count, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
            statistics: statistics, awqScales: awqScales)
        switch method {
        case .rtn:
            return Output(
                matrix: MatrixQuantizer.roundToNearest(
                    w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, keepValues: keepValues))
        case .imatrix:
            guard let statistics else {
                throw VLQError(QuantizationError.needsCalibration, nil, "imatrix needs calibration statistics")
            }
            return Output(
                matrix: MatrixQuantizer.roundToNearest(
                    w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                    columnImportance: statistics.meanSquares, keepValues: keepValues))
        case .gptq:
            guard let gram = statistics?.gramMatrix else {
                throw VLQError(
                    QuantizationError.needsCalibration, nil, "gptq needs calibration statistics with Gram matrices")
            }
            let gptq = GPTQ(activationOrder: activationOrder)
            let factor = try (gptqFactors ?? GPTQFactorCache()).factor(of: gram, for: gptq)
            return Output(
                matrix: try gptq.quantize(
                    Array(w), rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, factor: factor))
        case .awq:
            guard let statistics else {
                throw VLQError(QuantizationError.needsCalibration, nil, "awq needs calibration statistics")
            }
            return awq(
                Array(w), rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                statistics: statistics,
                scales: awqScales)
        }
    }

    /// The methods index the weight, the statistics and the scales by these sizes: mismatches must be
    /// errors here, not out-of-range reads below.
    static func checkSizes(
        count: Int, rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        statistics: InputStatistics?, awqScales: [Float]?
    ) throws {
        guard columns > 0, Checked.multiply(rows, columns) == count,
            QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize) != nil
        else {
            throw VLQError(
                QuantizationError.invalidGrouping, nil,
                "a [\(rows), \(columns)] weight of \(count) values cannot be \(encoding.name) "
                    + "in groups of \(groupSize)")
        }
        if let statistics, let problem = statistics.inconsistency(columns: columns) {
            throw VLQError(
                QuantizationError.statisticsMismatch, nil, "statistics for a weight of \(columns) columns: \(problem)")
        }
        if let awqScales, awqScales.count != columns {
            throw VLQError(
                QuantizationError.statisticsMismatch, nil,
                "\(awqScales.count) AWQ scales for a weight of \(columns) columns")
        }
    }

    /// AWQ: the weight scaled by the per-channel `scales` (folded into the preceding op), then each
    /// group's clipping range searched; without scales (not foldable) only the clipping search.
    static func awq(
        _ w: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
        statistics: InputStatistics, scales: [Float]?
    ) -> Output {
        guard let s = scales else {
            // Not foldable into a preceding op: only the output-aware clipping search.
            if let g = statistics.gram,
                outputAwareClipAffordable(rows: rows, columns: columns, groupSize: groupSize)
            {
                return Output(
                    matrix: MatrixQuantizer.roundToNearest(
                        w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, gram: g))
            }
            return Output(
                matrix: MatrixQuantizer.roundToNearest(
                    w, rows: rows, columns: columns, encoding: encoding,
                    groupSize: groupSize, columnImportance: statistics.meanSquares))
        }
        var scaled = w
        for r in 0..<rows { for j in 0..<columns { scaled[r * columns + j] *= s[j] } }
        // The scaled layer sees inputs x / s: its Gram matrix is diag(1/s) G diag(1/s). Each group's
        // clipping range is then searched against the output error (AWQ's auto-clip).
        var m: QuantizedMatrix
        if let g = statistics.gram,
            LinearQuantizer.outputAwareClipAffordable(rows: rows, columns: columns, groupSize: groupSize)
        {
            var scaledGram = g
            for i in 0..<columns {
                for j in 0..<columns { scaledGram[i * columns + j] /= Double(s[i]) * Double(s[j]) }
            }
            m = MatrixQuantizer.roundToNearest(
                scaled, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, gram: scaledGram)
        } else {
            let importance = zip(statistics.meanSquares, s).map { $0 / ($1 * $1) }
            m = MatrixQuantizer.roundToNearest(
                scaled, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                columnImportance: importance)
        }
        // Report values in the unscaled frame, as the folded model computes them.
        for r in 0..<rows { for j in 0..<columns { m.dequantized[r * columns + j] /= s[j] } }
        return Output(matrix: m, channelScales: s)
    }
}
