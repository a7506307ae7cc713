import CBLAS

/// Statistics of a Linear layer's inputs over calibration data, the raw material of every
/// calibrated method: per input column the sums of |x| and x^2, and the Gram matrix X^T X.
public struct InputStatistics: Sendable {
    public var columns: Int
    public var rows: Double
    public var sumAbs: [Double]
    public var sumSquares: [Double]
    /// X^T X, accumulated in place by BLAS (nil when only the diagonal was collected).
    public var gramMatrix: GramMatrix?

    /// X^T X, columns x columns, row-major and symmetric (nil when only the diagonal was collected).
    public var gram: [Double]? {
        get { gramMatrix?.symmetric }
        set { gramMatrix = newValue.map { GramMatrix(columns: columns, symmetric: $0) } }
    }

    public init(columns: Int, withGram: Bool) {
        self.columns = columns
        rows = 0
        sumAbs = Array(repeating: 0, count: columns)
        sumSquares = Array(repeating: 0, count: columns)
        gramMatrix = withGram ? GramMatrix(columns: columns) : nil
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
        gramMatrix?.add(x, rows: n)
    }

    public mutating func merge(_ other: InputStatistics) {
        precondition(other.columns == columns)
        rows += other.rows
        for j in 0..<columns {
            sumAbs[j] += other.sumAbs[j]
            sumSquares[j] += other.sumSquares[j]
        }
        if let o = other.gramMatrix, let g = gramMatrix {
            g.add(o)
        } else {
            gramMatrix = nil
        }
    }

    /// What makes these unusable as the statistics of an input `expected` columns wide (nil if
    /// nothing): statistics read from a file may be damaged, or be those of another model.
    public func inconsistency(columns expected: Int) -> String? {
        guard columns == expected, sumAbs.count == expected, sumSquares.count == expected else {
            return "statistics of \(sumAbs.count) (|x|) and \(sumSquares.count) (x^2) input columns, not \(expected)"
        }
        if let g = gramMatrix, g.columns != expected {
            return "X^T X is \(g.columns) x \(g.columns), not \(expected) x \(expected)"
        }
        guard rows.isFinite, rows >= 0 else { return "row count \(rows) is not a count" }
        guard sumAbs.allSatisfy({ $0.isFinite && $0 >= 0 }), sumSquares.allSatisfy({ $0.isFinite && $0 >= 0 }) else {
            return "a sum of |x| or x^2 is negative or not finite"
        }
        return nil
    }

    /// E[x_j^2]: llama.cpp's importance matrix.
    public var meanSquares: [Float] { sumSquares.map { Float($0 / max(rows, 1)) } }
    public var meanAbs: [Float] { sumAbs.map { Float($0 / max(rows, 1)) } }
}

/// X^T X over calibration inputs. Accumulated in float by `ssyrk` straight into its upper triangle
/// (as GPTQ does on GPUs: the cost is one rank-k update per batch, no copies); the symmetric double
/// matrix the methods use is built each time it is asked for and not kept, since for a 11008-wide
/// input it is a gigabyte.
public final class GramMatrix: @unchecked Sendable {
    public let columns: Int
    private var upper: [Float]
    /// Counts the additions: what was computed from the matrix before one (GPTQ's factor) is stale.
    public private(set) var revision = 0

    public init(columns: Int) {
        self.columns = columns
        upper = Array(repeating: 0, count: columns * columns)
    }

    public init(columns: Int, symmetric: [Double]) {
        precondition(symmetric.count == columns * columns)
        self.columns = columns
        upper = symmetric.map { Float($0) }
    }

    func add(_ x: UnsafePointer<Float>, rows n: Int) {
        revision += 1
        upper.withUnsafeMutableBufferPointer { g in
            cblas_ssyrk(
                CblasRowMajor, CblasUpper, CblasTrans, Int32(columns), Int32(n), 1, x, Int32(columns), 1, g.baseAddress,
                Int32(columns))
        }
    }

    func add(_ other: GramMatrix) {
        revision += 1
        let o = other.symmetric
        for i in 0..<columns { for j in i..<columns { upper[i * columns + j] += Float(o[i * columns + j]) } }
    }

    /// The upper triangle (row-major, float) as accumulated; below the diagonal, zeros or the mirror.
    public func withUpperTriangle<R>(_ body: (UnsafePointer<Float>) throws -> R) rethrows -> R {
        try upper.withUnsafeBufferPointer { try body($0.baseAddress!) }
    }

    /// The full symmetric matrix in double.
    public var symmetric: [Double] {
        var full = [Double](repeating: 0, count: columns * columns)
        for i in 0..<columns {
            for j in i..<columns {
                let v = Double(upper[i * columns + j])
                full[i * columns + j] = v
                full[j * columns + i] = v
            }
        }
        return full
    }
}
