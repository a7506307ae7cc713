import CBLAS

/// Statistics of a Linear layer's inputs over calibration data, the raw material of every
/// calibrated method: per input column the sums of |x| and x^2, and the Gram matrix X^T X.
public struct InputStatistics: Sendable {
    public var columns: Int
    public var rows: Double
    public var sumAbs: [Double]
    public var sumSquares: [Double]
    /// X^T X, columns x columns, row-major (nil when only the diagonal was collected).
    public var gram: [Double]?

    public init(columns: Int, withGram: Bool) {
        self.columns = columns
        rows = 0
        sumAbs = Array(repeating: 0, count: columns)
        sumSquares = Array(repeating: 0, count: columns)
        gram = withGram ? Array(repeating: 0, count: columns * columns) : nil
    }

    public mutating func add(_ x: UnsafePointer<Float>, rows n: Int) {
        rows += Double(n)
        for r in 0..<n {
            let row = x + r * columns
            for j in 0..<columns {
                let v = Double(row[j])
                sumAbs[j] += abs(v)
                sumSquares[j] += v * v
            }
        }
        if gram != nil {
            // X^T X through BLAS in float, accumulated in double across batches.
            let g = UnsafeMutablePointer<Float>.allocate(capacity: columns * columns)
            defer { g.deallocate() }
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(columns), Int32(n), 1, x, Int32(columns), 0, g, Int32(columns))
            for i in 0..<columns {
                for j in i..<columns {
                    let v = Double(g[i * columns + j])
                    gram![i * columns + j] += v
                    if i != j { gram![j * columns + i] += v }
                }
            }
        }
    }

    public mutating func merge(_ other: InputStatistics) {
        precondition(other.columns == columns)
        rows += other.rows
        for j in 0..<columns {
            sumAbs[j] += other.sumAbs[j]
            sumSquares[j] += other.sumSquares[j]
        }
        if let o = other.gram, gram != nil {
            for i in 0..<o.count { gram![i] += o[i] }
        } else {
            gram = nil
        }
    }

    /// E[x_j^2]: llama.cpp's importance matrix.
    public var meanSquares: [Float] { sumSquares.map { Float($0 / max(rows, 1)) } }
    public var meanAbs: [Float] { sumAbs.map { Float($0 / max(rows, 1)) } }
}

