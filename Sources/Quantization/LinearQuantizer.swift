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

    public static func quantize(_ w: [Float], rows: Int, columns: Int, encoding: TensorEncoding, groupSize: Int,
                                method: QuantizationMethod, statistics: InputStatistics?, awqScales: [Float]? = nil,
                                activationOrder: Bool = false) throws -> Output {
        switch method {
        case .rtn:
            return Output(matrix: MatrixQuantizer.roundToNearest(w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize))
        case .imatrix:
            guard let statistics else { throw VLQError(nil, "imatrix needs calibration statistics") }
            return Output(matrix: MatrixQuantizer.roundToNearest(w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                                                                 columnImportance: statistics.meanSquares))
        case .gptq:
            guard let gram = statistics?.gram else { throw VLQError(nil, "gptq needs calibration statistics with Gram matrices") }
            return Output(matrix: try GPTQ(activationOrder: activationOrder).quantize(w, rows: rows, columns: columns, encoding: encoding,
                                                                                       groupSize: groupSize, gram: gram))
        case .awq:
            guard let statistics else { throw VLQError(nil, "awq needs calibration statistics") }
            guard let s = awqScales else {
                // Not foldable into a preceding op: importance-weighted groups only.
                return Output(matrix: MatrixQuantizer.roundToNearest(w, rows: rows, columns: columns, encoding: encoding,
                                                                     groupSize: groupSize, columnImportance: statistics.meanSquares))
            }
            var scaled = w
            for r in 0..<rows { for j in 0..<columns { scaled[r * columns + j] *= s[j] } }
            // The scaled layer sees inputs x / s.
            let importance = zip(statistics.meanSquares, s).map { $0 / ($1 * $1) }
            var m = MatrixQuantizer.roundToNearest(scaled, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize,
                                                   columnImportance: importance)
            // Report values in the unscaled frame, as the folded model computes them.
            for r in 0..<rows { for j in 0..<columns { m.dequantized[r * columns + j] /= s[j] } }
            return Output(matrix: m, channelScales: s)
        }
    }
}
