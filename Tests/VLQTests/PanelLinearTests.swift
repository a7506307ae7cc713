import Numerics
import VLQFormat
import XCTest
import YiVL

/// Prefill's panel-by-panel product of stored weights (StoredWeight): the panels decode to exactly
/// the values QuantizedLayout.dequantize and the 16-bit upcast give, bit for bit, and the product equals
/// the whole weight decoded then multiplied (Kernels.linear) up to float summation order.
final class PanelLinearTests: XCTestCase {
    /// Relative to sum |w x| per output, as DecodeKernelTests; sgemm on panels sums as sgemm on the whole.
    static let tolerance = 2e-6

    struct Case {
        var outputs: Int
        var columns: Int
        var group: Int
    }

    /// One output row, 192-wide rows, groups of 32, 64 and 128, outputs not a multiple of the panel,
    /// and groups that are not a multiple of the vector width (the kernels' tails).
    static let cases = [
        Case(outputs: 37, columns: 192, group: 32), Case(outputs: 1, columns: 192, group: 64),
        Case(outputs: 70, columns: 128 * 3, group: 128), Case(outputs: 19, columns: 64 * 5, group: 64),
        Case(outputs: 33, columns: 256, group: 128), Case(outputs: 17, columns: 6 * 7, group: 6),
        Case(outputs: 41, columns: 24 * 3, group: 24), Case(outputs: 5, columns: 2, group: 2),
    ]

    /// Scales by row kind: ordinary, the f16 extremes (largest normal, smallest subnormal), negative.
    func scale(_ index: Int) -> Float16 {
        switch index % 5 {
        case 0: return 65504
        case 1: return Float16(bitPattern: 1)
        case 2: return -0.0123
        default: return Float16(0.001 + Float(index % 7) * 0.01)
        }
    }

    /// Packed bytes of a random weight in `encoding` ([outputs, columns], or [outputs, 3, columns]).
    func quantized(_ encoding: TensorEncoding, _ c: Case, shape: [Int]) throws -> (QuantizedLayout, [UInt8]) {
        let layout = try QuantizedLayout(validating: encoding, shape: shape, groupSize: c.group)
        var gen = SplitMix64(seed: UInt64(c.outputs * 1000 + c.columns))
        let codes: [Int8] = (0..<(layout.rows * layout.columns)).map { _ in
            encoding == .q8 ? Int8(truncatingIfNeeded: gen.next()) : Int8(gen.below(encoding == .q3 ? 8 : 16))
        }
        let groups = layout.rows * layout.groupsPerRow
        let scales = (0..<groups).map(scale)
        let biases = (0..<groups).map { Float16(Float($0 % 11) * -0.05 * Float(scales[$0])) }
        return (layout, layout.pack(codes: codes, scales: scales, biases: encoding.hasBiases ? biases : nil))
    }

    /// Fails with the first differing index and the count of differences unless `values` and
    /// `expected` are equal bit for bit.
    func assertSameBits(_ values: [Float], _ expected: [Float], _ what: String) {
        XCTAssertEqual(values.count, expected.count, what)
        let common = 0..<min(values.count, expected.count)
        let differing = common.filter { values[$0].bitPattern != expected[$0].bitPattern }
        guard let first = differing.first else { return }
        XCTFail("\(what): \(differing.count) values differ, first at \(first): \(values[first]) vs \(expected[first])")
    }

    func withOptional<R>(_ values: [Float]?, _ body: (UnsafePointer<Float>?) -> R) -> R {
        guard let values else { return body(nil) }
        return values.withUnsafeBufferPointer { body($0.baseAddress!) }
    }

    func testQuantizedPanelsEqualDequantizeBitForBit() throws {
        for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
            let extra = encoding == .q8 ? [Case(outputs: 23, columns: 15, group: 3)] : []
            // q3 groups are whole blocks of 32 values.
            for c in Self.cases + extra where encoding != .q3 || c.group % 32 == 0 {
                for shape in [[c.outputs, c.columns], [c.outputs, 3, c.columns]] {
                    let (layout, bytes) = try quantized(encoding, c, shape: shape)
                    var reference = [Float](repeating: 0, count: layout.rows * layout.columns)
                    bytes.withUnsafeBytes { data in
                        layout.dequantize(data, rows: 0..<layout.rows, into: &reference)
                        let weight = StoredWeight(storage: .quantized(layout), shape: shape, bytes: data)
                        let inputs = weight.inputs
                        // From the second output row on: a panel that does not start at row 0.
                        var panel = [Float](repeating: .nan, count: (c.outputs - 1) * inputs)
                        weight.decode(outputs: 1..<c.outputs, into: &panel)
                        assertSameBits(panel, Array(reference[inputs...]), "\(encoding.name) \(shape)")
                    }
                }
            }
        }
    }

    /// Every bf16 and f16 bit pattern (NaNs included) against the engine's Swift upcast.
    func testHalfPanelsEqualUpcastBitForBit() {
        let patterns = (0...UInt16.max).map { $0 }
        for isBF16 in [true, false] {
            let expected = patterns.map {
                isBF16 ? Float(bitPattern: UInt32($0) << 16) : Float(Float16(bitPattern: $0))
            }
            var out = [Float](repeating: 0, count: patterns.count)
            patterns.withUnsafeBytes { data in
                let weight = StoredWeight(storage: isBF16 ? .bf16 : .f16, shape: [256, 256], bytes: data)
                weight.decode(outputs: 0..<256, into: &out)
            }
            assertSameBits(out, expected, isBF16 ? "bf16" : "f16")
        }
    }

    /// The same checks on the portable kernels (arm64 and x86-64 without AVX2 run them).
    func testPortableKernels() throws {
        StoredWeight.usePortableKernels(true)
        defer { StoredWeight.usePortableKernels(false) }
        XCTAssertEqual(StoredWeight.instructionSet, "scalar")
        try testQuantizedPanelsEqualDequantizeBitForBit()
        testHalfPanelsEqualUpcastBitForBit()
        try testPanelProductEqualsWholeWeightProduct()
    }

    func testPanelProductEqualsWholeWeightProduct() throws {
        var worst = 0.0
        for c in Self.cases where c.group >= 32 {
            for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
                let (layout, bytes) = try quantized(encoding, c, shape: [c.outputs, c.columns])
                for withBias in encoding.hasBiases ? [false, true] : [false] {
                    worst = max(worst, productDifference(.quantized(layout), bytes, c, bias: withBias))
                }
            }
            for storage in [WeightStore.Storage.bf16, .f16] {
                var gen = SplitMix64(seed: UInt64(c.columns))
                let halves = (0..<(c.outputs * c.columns)).map { _ in
                    let w = Float(Int(gen.below(2001)) - 1000) / 1000
                    if case .bf16 = storage { return UInt16(w.bitPattern >> 16) }
                    return Float16(w).bitPattern
                }
                let bytes = halves.withUnsafeBytes { Array($0) }
                worst = max(worst, productDifference(storage, bytes, c, bias: true))
            }
        }
        print("panel linear (\(StoredWeight.instructionSet)): max relative difference \(worst)")
    }

    /// The largest |panel - whole| / sum |w x| over 2 and 37 input rows and panels of about 1, 8, 15
    /// and all output rows (outputs not a multiple of the panel: the last one is narrower).
    func productDifference(_ storage: WeightStore.Storage, _ bytes: [UInt8], _ c: Case, bias: Bool) -> Double {
        var worst = 0.0
        bytes.withUnsafeBytes { data in
            let weight = StoredWeight(storage: storage, shape: [c.outputs, c.columns], bytes: data)
            var whole = [Float](repeating: 0, count: c.outputs * c.columns)
            weight.decode(outputs: 0..<c.outputs, into: &whole)
            let b: [Float]? = bias ? (0..<c.outputs).map { Float($0 % 5) - 2.5 } : nil
            for rows in [2, 37] {
                var gen = SplitMix64(seed: UInt64(rows))
                let x = (0..<(rows * c.columns)).map { _ in Float(Int(gen.below(20001)) - 10000) / 10000 }
                var expected = [Float](repeating: 0, count: rows * c.outputs)
                withOptional(b) { b in
                    Kernels.linear(
                        x, rows: rows, inputs: c.columns, weight: whole, outputs: c.outputs, bias: b, into: &expected)
                }
                for panelRows in [1, 8, 15, c.outputs] {
                    var y = [Float](repeating: .nan, count: rows * c.outputs)
                    withOptional(b) { b in
                        weight.multiply(x, rows: rows, bias: b, into: &y, panelRows: panelRows)
                    }
                    for i in 0..<y.count {
                        let (r, o) = (i / c.outputs, i % c.outputs)
                        var magnitude = abs(Double(b?[o] ?? 0))
                        for j in 0..<c.columns {
                            magnitude += abs(Double(whole[o * c.columns + j]) * Double(x[r * c.columns + j]))
                        }
                        let d = abs(Double(y[i]) - Double(expected[i]))
                        XCTAssert(d <= Self.tolerance * magnitude, "\(storage) \(c) rows \(rows) panel \(panelRows)")
                        if magnitude > 0 { worst = max(worst, d / magnitude) }
                    }
                }
            }
        }
        return worst
    }
}
