import CKernels
import Calibration
import XCTest

@testable import Quantization

/// GPTQ's shortcuts against the paths they replace: the in-block error push in C against the Swift loop,
/// the factor filled from X^T X's float triangle against the one from the symmetric double matrix, and the
/// factor shared by Linears fed one input against one factored per Linear.
final class GPTQFactorTests: XCTestCase {
    func testTheErrorPushInCIsTheSwiftLoopBitForBit() {
        var random = SplitMix64(seed: 5)
        func uniform() -> Float { Float(Double(random.next() >> 11) / Double(1 << 53)) * 2 - 1 }
        for vectorized in [true, false] {
            vlq_quantize_force_scalar(vectorized ? 0 : 1)
            defer { vlq_quantize_force_scalar(0) }
            for count in [0, 1, 7, 8, 9, 15, 17, 31, 127] {
                let h = (0..<count).map { _ in uniform() * 3 }, e = uniform() * 1e-2
                let row = (0..<count).map { _ in uniform() }
                var expected = row
                for j in 0..<count { expected[j] -= e * h[j] }
                var pushed = row
                vlq_gptq_push_error(&pushed, h, e, count)
                XCTAssertEqual(
                    pushed.map(\.bitPattern), expected.map(\.bitPattern), "count \(count), vectorized \(vectorized)")
            }
        }
    }

    /// A Gram matrix of odd width with an input column no sample reached.
    func problem(columns: Int) -> (w: [Float], gram: GramMatrix) {
        var random = SplitMix64(seed: 17)
        func uniform() -> Float { Float(Double(random.next() >> 11) / Double(1 << 53)) * 2 - 1 }
        var stats = InputStatistics(columns: columns, withGram: true)
        var x = (0..<(3 * columns * columns)).map { i in uniform() * Float(1 + i % columns % 5) }
        for r in 0..<(3 * columns) { x[r * columns + 3] = 0 }
        stats.add(x, rows: 3 * columns)
        return ((0..<(5 * columns)).map { _ in uniform() * 0.1 }, stats.gramMatrix!)
    }

    func testTheFactorFromTheFloatTriangleIsTheOneFromTheSymmetricMatrix() throws {
        let columns = 37
        let (_, gram) = problem(columns: columns)
        for activationOrder in [false, true] {
            let gptq = GPTQ(activationOrder: activationOrder)
            let direct = try gptq.factor(of: gram), viaSymmetric = try gptq.factor(gram.symmetric, columns: columns)
            XCTAssertEqual(direct.order, viaSymmetric.order)
            XCTAssertEqual(direct.deadColumns, [3])
            XCTAssertEqual(direct.deadColumns, viaSymmetric.deadColumns)
            XCTAssertEqual(direct.upper.map(\.bitPattern), viaSymmetric.upper.map(\.bitPattern))
            if !activationOrder { XCTAssertEqual(direct.order, Array(0..<columns)) }
        }
    }

    func testLinearsFedOneInputShareItsFactorAndGetTheBytesOfTheirOwn() throws {
        let columns = 64
        let (w, gram) = problem(columns: columns)
        let cache = GPTQFactorCache()
        for activationOrder in [false, true] {
            let gptq = GPTQ(activationOrder: activationOrder)
            let first = try cache.factor(of: gram, for: gptq)
            XCTAssertTrue(first === (try cache.factor(of: gram, for: gptq)))
            for rows in [5, 3] {
                let m = Array(w[0..<(rows * columns)])
                let shared = try gptq.quantize(
                    m, rows: rows, columns: columns, encoding: .q4, groupSize: 16, factor: first)
                let own = try gptq.quantize(
                    m, rows: rows, columns: columns, encoding: .q4, groupSize: 16, gram: gram.symmetric)
                XCTAssertEqual(shared.bytes, own.bytes)
                XCTAssertEqual(shared.dequantized, own.dequantized)
            }
        }
        // Another input, or more samples added to this one: factored again.
        let other = problem(columns: columns).gram
        XCTAssertFalse(try cache.factor(of: gram, for: GPTQ()) === (try cache.factor(of: other, for: GPTQ())))
        var stats = InputStatistics(columns: columns, withGram: true)
        stats.gramMatrix = gram
        let before = try cache.factor(of: gram, for: GPTQ())
        stats.add(Array(w[0..<columns]), rows: 1)
        XCTAssertFalse(before === (try cache.factor(of: gram, for: GPTQ())))
    }
}
