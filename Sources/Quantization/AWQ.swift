import Calibration
import VLQFormat

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// AWQ (Lin et al., 2023): per-input-channel scales s = mean|x|^alpha, alpha searched on a grid so
/// that the quantized layers' output error on calibration inputs is least. The weights are multiplied
/// by s and the preceding op divided by it, so the float function is unchanged before rounding;
/// salient channels (large activations) get finer quantization steps.
///
/// The error of a candidate is measured exactly from the inputs' Gram matrix G = X^T X:
/// sum over rows of d G d^T, d = (Q(W diag s) diag s^-1 - W) for each Linear sharing the input.
public struct AWQ: Sendable {
    public var gridSize = 20
    /// Rows sampled for the error estimate of large matrices.
    public var maxRowsForSearch = 256

    public init() {}

    public struct Result {
        public var scales: [Float]
        public var alpha: Float
        public var error: Double
        public var errorWithoutScaling: Double
    }

    public func searchScales(
        weights: [[Float]], rows: [Int], columns: Int, statistics: InputStatistics,
        encoding: TensorEncoding, groupSize: Int
    ) -> Result {
        let gram = statistics.gram!
        let meanAbs = statistics.meanAbs
        var best = Result(
            scales: Array(repeating: 1, count: columns), alpha: 0, error: .infinity, errorWithoutScaling: 0)
        for step in 0..<gridSize {
            let alpha = Float(step) / Float(gridSize)
            var s = meanAbs.map { pow(max($0, 1e-4), alpha) }
            let normaliser = (s.max()! * s.min()!).squareRoot()
            s = s.map { $0 / normaliser }
            var error = 0.0
            for (k, w) in weights.enumerated() {
                let r = rows[k]
                let stride = max(1, r / maxRowsForSearch)
                // Only the sampled rows are quantized and measured.
                let sampled = Array(Swift.stride(from: 0, to: r, by: stride))
                var scaled = [Float](repeating: 0, count: sampled.count * columns)
                var original = scaled
                for (i, row) in sampled.enumerated() {
                    for j in 0..<columns {
                        original[i * columns + j] = w[row * columns + j]
                        scaled[i * columns + j] = w[row * columns + j] * s[j]
                    }
                }
                var q = MatrixQuantizer.roundToNearest(
                    scaled, rows: sampled.count, columns: columns, encoding: encoding, groupSize: groupSize
                ).dequantized
                for i in 0..<sampled.count { for j in 0..<columns { q[i * columns + j] /= s[j] } }
                error +=
                    MatrixQuantizer.outputError(original, q, rows: sampled.count, columns: columns, gram: gram)
                    * Double(stride)
            }
            if step == 0 { best.errorWithoutScaling = error }
            if error < best.error {
                best.error = error
                best.alpha = alpha
                best.scales = s
            }
        }
        return best
    }
}
