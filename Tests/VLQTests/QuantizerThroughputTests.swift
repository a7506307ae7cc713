import CKernels
import Numerics
import VLQFormat
import XCTest

@testable import Quantization

/// The fast quantizers against their definitions: the group range search and rounding in C (AVX2 and
/// portable) give the Swift `GroupQuantizer`'s parameters, errors and codes bit for bit, on any shape and
/// on adversarial groups; the row-parallel round to nearest writes the bytes of the group-by-group loop;
/// GPTQ's blocked pass is deterministic and within rounding of one unblocked pass.
final class QuantizerThroughputTests: XCTestCase {
    static let encodings: [TensorEncoding] = [.q8, .q4, .q4s, .q3]

    /// Groups of every kind the search must not get wrong: random, all equal, zeros, one spike,
    /// one-signed, tiny (f16 subnormal scales) and huge (f16 overflow) values.
    func adversarialGroups(count: Int, size: Int, seed: UInt64) -> [Float] {
        var random = SplitMix64(seed: seed)
        func uniform() -> Float { Float(Double(random.next() >> 11) / Double(1 << 53)) * 2 - 1 }
        var w = [Float](repeating: 0, count: count * size)
        for g in 0..<count {
            for j in 0..<size {
                let u = uniform()
                w[g * size + j] =
                    switch g % 9 {
                    case 0: 0.37
                    case 1: 0
                    case 2: j == size / 2 ? 3 : 0
                    case 3: abs(u) + 0.5
                    case 4: -abs(u) * 1e-6
                    case 5: u * 1e5
                    case 6: (u * 4).rounded() / 4
                    default: u * 0.05
                    }
            }
        }
        return w
    }

    func testGroupSearchInCGivesTheSwiftDefinitionsParametersBitForBit() {
        for vectorized in [true, false] {
            vlq_quantize_force_scalar(vectorized ? 0 : 1)
            defer { vlq_quantize_force_scalar(0) }
            for encoding in Self.encodings {
                for size in encoding == .q8 ? [32, 64, 128, 6] : [32, 64, 128] {
                    for weighted in [false, true] {
                        checkGroups(encoding: encoding, size: size, groups: 21, weighted: weighted)
                    }
                }
            }
        }
    }

    func checkGroups(encoding: TensorEncoding, size: Int, groups: Int, weighted: Bool) {
        let w = adversarialGroups(count: groups, size: size, seed: UInt64(size * 7 + groups))
        let importance = weighted ? adversarialGroups(count: groups, size: size, seed: 99).map { abs($0) + 0.01 } : []
        let quantizer = GroupQuantizer(encoding: encoding)
        var scales = [Float16](repeating: 0, count: groups), biases = scales
        var errors = [Float](repeating: 0, count: groups), codes = [Int8](repeating: 0, count: w.count)
        var values = [Float](repeating: 0, count: w.count)
        importance.withUnsafeBufferPointer { a in
            quantizer.fitGroups(
                w, groups: groups, size: size, importance: weighted ? a.baseAddress : nil, scales: &scales,
                biases: &biases, errors: &errors)
        }
        quantizer.roundGroups(
            w, groups: groups, size: size, scales: scales, biases: biases, codes: &codes, values: &values)
        let context = "\(encoding.name) g\(size) weighted \(weighted) AVX2 \(vlq_quantize_vectorized())"
        for g in 0..<groups {
            let fit = w.withUnsafeBufferPointer { p in
                importance.withUnsafeBufferPointer { a in
                    quantizer.fit(
                        p.baseAddress! + g * size, count: size, importance: weighted ? a.baseAddress! + g * size : nil)
                }
            }
            XCTAssertEqual(scales[g].bitPattern, fit.scale.bitPattern, "\(context) group \(g) scale")
            XCTAssertEqual(biases[g].bitPattern, fit.bias.bitPattern, "\(context) group \(g) bias")
            XCTAssertEqual(errors[g].bitPattern, fit.error.bitPattern, "\(context) group \(g) error")
            for j in (g * size)..<((g + 1) * size) {
                XCTAssertEqual(codes[j], quantizer.storedCode(w[j], fit), "\(context) element \(j) code")
                XCTAssertEqual(
                    values[j].bitPattern, quantizer.dequantized(w[j], fit).bitPattern, "\(context) element \(j) value")
            }
        }
    }

    /// Rows not a multiple of the cores' split, with and without importance (which adds the least-squares
    /// refinement): the parallel C path writes what the group-by-group Swift loop writes.
    func testRoundToNearestWritesTheBytesOfTheGroupByGroupLoop() {
        let rows = 37, columns = 256
        let w = adversarialGroups(count: rows * columns / 32, size: 32, seed: 5)
        let importance = (0..<columns).map { Float($0 % 7) * 0.3 + 0.1 }
        for encoding in Self.encodings {
            for groupSize in [32, 64, 128] {
                for ci in [nil, importance] {
                    let fast = MatrixQuantizer.roundToNearest(
                        w, rows: rows, columns: columns, encoding: encoding, groupSize: groupSize, columnImportance: ci)
                    let reference = groupByGroup(w, rows: rows, columns: columns, encoding, groupSize, ci)
                    XCTAssertEqual(
                        fast.bytes, reference.bytes, "\(encoding.name) g\(groupSize) importance \(ci != nil)")
                    XCTAssertEqual(
                        fast.dequantized.map(\.bitPattern), reference.dequantized.map(\.bitPattern),
                        "\(encoding.name) g\(groupSize) importance \(ci != nil)")
                }
            }
        }
    }

    /// The Swift definition: `MatrixQuantizer.quantizeRow` row after row on one thread.
    func groupByGroup(
        _ w: [Float], rows: Int, columns: Int, _ encoding: TensorEncoding, _ groupSize: Int, _ ci: [Float]?
    ) -> QuantizedMatrix {
        let layout = QuantizedLayout(encoding: encoding, shape: [rows, columns], groupSize: groupSize)!
        var quantizer = GroupQuantizer(encoding: encoding, leastSquares: ci != nil)
        var codes = [Int8](repeating: 0, count: rows * columns), values = [Float](repeating: 0, count: rows * columns)
        var scales = [Float16](repeating: 0, count: rows * layout.groupsPerRow), biases = scales
        var importance = [Float](repeating: 1, count: groupSize)
        let unused = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        defer { unused.deallocate() }
        codes.withUnsafeMutableBufferPointer { c in
            values.withUnsafeMutableBufferPointer { v in
                scales.withUnsafeMutableBufferPointer { s in
                    biases.withUnsafeMutableBufferPointer { b in
                        // The codes stay in their own matrix, packed at the end (the fast path packs row by row
                        // into the tensor's bytes): `packed` is never written here.
                        let out = MatrixQuantizer.RowOutputs(
                            layout: layout, packed: unused, scales: s.baseAddress!, biases: b.baseAddress!,
                            values: v.baseAddress!)
                        w.withUnsafeBufferPointer { p in
                            for r in 0..<rows {
                                MatrixQuantizer.quantizeRow(
                                    r, of: p.baseAddress!, columns: columns, layout: layout, quantizer: &quantizer,
                                    importance: &importance, columnImportance: ci, gram: nil, into: out,
                                    codes: c.baseAddress! + r * columns)
                            }
                        }
                    }
                }
            }
        }
        return QuantizedMatrix(
            layout: layout, bytes: layout.pack(codes: codes, scales: scales, biases: encoding.hasBiases ? biases : nil),
            dequantized: values)
    }

    /// A Gram matrix of correlated inputs (positive definite) and a weight, seeded.
    func gptqProblem(rows: Int, columns: Int) -> (w: [Float], gram: [Double]) {
        var random = SplitMix64(seed: 11)
        func uniform() -> Double { Double(random.next() >> 11) / Double(1 << 53) * 2 - 1 }
        let samples = 2 * columns
        let x = (0..<(samples * columns)).map { i in uniform() + (i % columns == 0 ? 0 : 0.3 * uniform()) }
        var gram = [Double](repeating: 0, count: columns * columns)
        for s in 0..<samples {
            for i in 0..<columns {
                for j in 0..<columns { gram[i * columns + j] += x[s * columns + i] * x[s * columns + j] }
            }
        }
        return ((0..<(rows * columns)).map { _ in Float(uniform() * 0.1) }, gram)
    }

    func testUpperCholeskyOfTheInverseTimesTheHessianIsTheIdentity() throws {
        let n = 48
        let h = gptqProblem(rows: 1, columns: n).gram
        var a = h
        let u = try GPTQ.upperCholeskyOfInverse(&a, n)
        for i in 0..<n { for j in 0..<i { XCTAssertEqual(u[i * n + j], 0) } }
        // (U^T U) H = I.
        var worst = 0.0
        for i in 0..<n {
            for j in 0..<n {
                var sum = 0.0
                for k in 0..<n {
                    var inverse = 0.0
                    for m in 0...min(i, k) { inverse += u[m * n + i] * u[m * n + k] }
                    sum += inverse * h[k * n + j]
                }
                worst = max(worst, abs(sum - (i == j ? 1 : 0)))
            }
        }
        XCTAssertLessThan(worst, 1e-9)
    }

    func testGPTQIsBitIdenticalRunToRunAndAcrossThreadCountsAndWithinRoundingOfOneBlock() throws {
        let rows = 29, columns = 256
        let (w, gram) = gptqProblem(rows: rows, columns: columns)
        let threads = ComputeThreads.count
        defer { ComputeThreads.use(threads) }
        for encoding in Self.encodings {
            let first = try GPTQ().quantize(
                w, rows: rows, columns: columns, encoding: encoding, groupSize: 32, gram: gram)
            ComputeThreads.use(1)
            let single = try GPTQ().quantize(
                w, rows: rows, columns: columns, encoding: encoding, groupSize: 32, gram: gram)
            ComputeThreads.use(threads)
            let again = try GPTQ().quantize(
                w, rows: rows, columns: columns, encoding: encoding, groupSize: 32, gram: gram)
            XCTAssertEqual(first.bytes, again.bytes, encoding.name)
            XCTAssertEqual(first.bytes, single.bytes, encoding.name)
            var unblocked = GPTQ()
            unblocked.blockSize = columns
            let reference = try unblocked.quantize(
                w, rows: rows, columns: columns, encoding: encoding, groupSize: 32, gram: gram)
            // Float rounding in the trailing update can move a value across a rounding boundary: rare.
            let differing = zip(first.dequantized, reference.dequantized).filter { $0 != $1 }.count
            XCTAssertLessThan(Double(differing), 0.01 * Double(rows * columns), encoding.name)
        }
    }
}
