import CKernels
import Numerics
import VLQFormat
import XCTest
import YiVL

/// q4 decode on sliced activations (`DecodeKernels.slicesActivations`, Sources/CKernels/sliced.c): x as three
/// int8 slices per block of 128, x ~ d (65536 s2 + 256 s1 + s0), and exact integer dot products with the
/// codes. Checked as the float kernels are (DecodeKernelTests), against the stored weights dequantized and
/// multiplied in f64, with one term more: each x may move by half its block's step d = max|x| / 8355711,
/// so each product n s x by |n s| d / 2. Beside the float kernels' tolerance times sum |w x|, the
/// difference stays under the sum of those.
final class SlicedActivationTests: XCTestCase {
    static let tolerance = DecodeKernelTests.tolerance

    override func tearDown() {
        DecodeKernels.allowSlicedActivations(true)
    }

    struct Case {
        var rows: Int
        var columns: Int
        var group: Int
    }

    /// One row, rows odd and not a multiple of the thread split, one block, groups of two and three blocks,
    /// and a row longer than 16384 columns.
    static let cases = [
        Case(rows: 1, columns: 128, group: 128), Case(rows: 37, columns: 128 * 5, group: 128),
        Case(rows: 17, columns: 384, group: 384), Case(rows: 6, columns: 256 * 3, group: 256),
        Case(rows: 133, columns: 128, group: 128), Case(rows: 2, columns: 16_384 + 128, group: 128),
    ]

    /// Values over four decades, an all-zero block, a block whose largest value is an outlier, and
    /// subnormal-sized values beside it (which the slices round to zero, as f32 sums would lose them).
    func input(_ n: Int) -> [Float] {
        var g = SplitMix64(seed: UInt64(n) &* 6_700_417)
        var x = (0..<n).map { i in Float(Int(g.next() % 20001) - 10000) / 1000 * Float(i % 4 == 0 ? 100 : 1) }
        for j in 0..<min(n, 128) where n > 128 { x[j] = 0 }
        if n > 256 {
            x[130] = -3e4
            x[131] = 1e-40
        }
        return x
    }

    struct Tensor {
        var layout: QuantizedLayout
        var bytes: [UInt8]
        var weights: [Float]
        /// |code * scale| per weight: what x's rounding is multiplied by.
        var scaledCodes: [Float]
    }

    func tensor(_ encoding: TensorEncoding, _ c: Case) throws -> Tensor {
        let layout = try QuantizedLayout(validating: encoding, shape: [c.rows, c.columns], groupSize: c.group)
        var gen = SplitMix64(seed: UInt64(c.rows * 31 + c.columns + c.group))
        let codes = (0..<(c.rows * c.columns)).map { _ in Int8(gen.below(16)) }
        let groups = c.rows * layout.groupsPerRow
        let scales = (0..<groups).map { Float16(0.002 + Float($0 % 9) * 0.01) * ($0 % 4 == 1 ? -1 : 1) }
        let biases = encoding == .q4 ? (0..<groups).map { Float16(Float($0 % 13) * -0.04 * Float(scales[$0])) } : nil
        let bytes = layout.pack(codes: codes, scales: scales, biases: biases)
        var weights = [Float](repeating: 0, count: c.rows * c.columns)
        bytes.withUnsafeBytes { data in
            weights.withUnsafeMutableBufferPointer { layout.dequantize(data, rows: 0..<c.rows, into: $0.baseAddress!) }
        }
        let scaledCodes = codes.indices.map { abs(Float(codes[$0]) * Float(scales[$0 / c.group])) }
        return Tensor(layout: layout, bytes: bytes, weights: weights, scaledCodes: scaledCodes)
    }

    func product(_ t: Tensor, _ x: [Float]) -> [Float] {
        var y = [Float](repeating: .nan, count: t.layout.rows)
        t.bytes.withUnsafeBytes { DecodeKernels.quantized(t.layout, $0.baseAddress!, x, into: &y) }
        return y
    }

    /// max over rows of |y - reference| / sum |w x|, in f64; with `slicing`, of what is left of the difference
    /// once x's rounding to slices (sum |n s| d / 2 over the row) is taken off.
    func relativeDifference(_ y: [Float], _ t: Tensor, _ x: [Float], slicing: Bool = false) -> Double {
        let columns = t.layout.columns
        // Each block's step d = max|x| / 8355711.
        let steps = (0..<(columns / 128)).map { Double(x[(128 * $0)..<(128 * $0 + 128)].map(abs).max()!) / 8_355_711 }
        var worst = 0.0
        for r in 0..<y.count {
            var exact = 0.0, magnitude = 0.0, rounding = 0.0
            for j in 0..<columns {
                exact += Double(t.weights[r * columns + j]) * Double(x[j])
                magnitude += abs(Double(t.weights[r * columns + j]) * Double(x[j]))
                rounding += Double(t.scaledCodes[r * columns + j]) * steps[j / 128] / 2
            }
            XCTAssert(y[r].isFinite, "row \(r) is \(y[r])")
            let difference = max(0, abs(Double(y[r]) - exact) - (slicing ? rounding : 0))
            if magnitude > 0 { worst = max(worst, difference / magnitude) }
        }
        return worst
    }

    func testSlicesHoldEachValueWithinHalfAStepOfItsBlocksScale() {
        let x = input(512)
        var slices = [Int8](repeating: 0, count: 3 * 512)
        var scales = [Float](repeating: .nan, count: 4)
        XCTAssertEqual(vlq_slice_activations(x, 512, &slices, &scales), 1)
        XCTAssertEqual(scales[0], 0, "an all-zero block has scale 0")
        for b in 0..<4 {
            let block = x[(128 * b)..<(128 * (b + 1))]
            let d = Double(block.map(abs).max()!) / 8_355_711
            XCTAssertEqual(Double(scales[b]), d, accuracy: d * 1e-7)
            for p in 0..<128 {
                // Position p holds the block's even elements first, then its odd ones (q4's nibble order).
                let element = 128 * b + (p < 64 ? 2 * p : 2 * (p - 64) + 1)
                let s = (0..<3).map { Double(slices[384 * b + 128 * $0 + p]) }
                let value = Double(scales[b]) * (65536 * s[2] + 256 * s[1] + s[0])
                XCTAssertEqual(value, Double(x[element]), accuracy: 0.5 * d * (1 + 1e-6), "element \(element)")
            }
        }
    }

    func testSlicingRefusesWhatTheFloatKernelsMustTake() {
        var slices = [Int8](repeating: 0, count: 3 * 256)
        var scales = [Float](repeating: 0, count: 2)
        XCTAssertEqual(vlq_slice_activations([Float](repeating: 1, count: 192), 192, &slices, &scales), 0)
        for bad in [Float.nan, .infinity, -.infinity] {
            var x = [Float](repeating: 1, count: 256)
            x[200] = bad
            XCTAssertEqual(vlq_slice_activations(x, 256, &slices, &scales), 0, "\(bad)")
        }
    }

    func testSlicedKernelMatchesDequantizeThenMultiply() throws {
        try XCTSkipUnless(DecodeKernels.slicesActivations, "no AVX-512 VNNI here: q4 keeps the float kernel")
        var worst = 0.0, raw = 0.0, fromFloatKernel = 0.0
        for encoding in [TensorEncoding.q4, .q4s] {
            for c in Self.cases {
                let t = try tensor(encoding, c), x = input(c.columns)
                let y = product(t, x)
                let d = relativeDifference(y, t, x, slicing: true)
                XCTAssertLessThan(d, Self.tolerance, "\(encoding.name) \(c)")
                worst = max(worst, d)
                raw = max(raw, relativeDifference(y, t, x))
                DecodeKernels.allowSlicedActivations(false)
                let float = product(t, x)
                DecodeKernels.allowSlicedActivations(true)
                XCTAssertNotEqual(float.map(\.bitPattern), y.map(\.bitPattern), "the sliced kernel ran: \(c)")
                fromFloatKernel = max(fromFloatKernel, relativeDifference(float, t, x))
            }
        }
        print(
            "sliced q4 kernel: max relative difference \(raw), past x's rounding \(worst) "
                + "(float kernel: \(fromFloatKernel))")
    }

    /// The portable loop (the vector kernel's reference) on the same slices: the same integer sums, so
    /// only float summation order separates the two.
    func testVectorAndPortableLoopsAgree() throws {
        try XCTSkipUnless(DecodeKernels.slicesActivations, "no AVX-512 VNNI here")
        for encoding in [TensorEncoding.q4, .q4s] {
            for c in Self.cases {
                let t = try tensor(encoding, c), x = input(c.columns)
                var vector = [Float](repeating: .nan, count: c.rows), portable = vector
                let (groups, group) = (t.layout.groupsPerRow, c.group)
                var sums = [Float](repeating: 0, count: groups)
                vlq_group_sums(x, c.columns, group, &sums)
                var slices = [Int8](repeating: 0, count: 3 * c.columns)
                var scales = [Float](repeating: 0, count: c.columns / 128)
                XCTAssertEqual(vlq_slice_activations(x, c.columns, &slices, &scales), 1)
                t.bytes.withUnsafeBytes { data in
                    let codes = data.baseAddress!.assumingMemoryBound(to: UInt8.self)
                    let w = (data.baseAddress! + t.layout.scalesOffset).assumingMemoryBound(to: UInt16.self)
                    let b = t.layout.biasesOffset.map { (data.baseAddress! + $0).assumingMemoryBound(to: UInt16.self) }
                    vlq_matvec_q4_sliced(codes, w, b, c.columns, group, slices, scales, sums, &vector, 0, c.rows)
                    vlq_kernels_allow_sliced_vector(0)
                    vlq_matvec_q4_sliced(codes, w, b, c.columns, group, slices, scales, sums, &portable, 0, c.rows)
                    vlq_kernels_allow_sliced_vector(1)
                }
                XCTAssertLessThan(relativeDifference(portable, t, x, slicing: true), Self.tolerance, "\(c)")
                XCTAssertLessThan(relativeDifference(vector, t, x, slicing: true), Self.tolerance, "\(c)")
            }
        }
    }

    /// x with a NaN or an infinity, and groups that are not whole blocks of 128, go through the float
    /// kernel: the same bits as with the sliced kernel turned off.
    func testTheFloatKernelTakesWhatSlicesCannotHold() throws {
        let t = try tensor(.q4, Case(rows: 9, columns: 256, group: 128))
        var x = input(256)
        x[7] = .infinity
        let sliced = product(t, x)
        DecodeKernels.allowSlicedActivations(false)
        XCTAssertEqual(sliced.map(\.bitPattern), product(t, x).map(\.bitPattern))
        DecodeKernels.allowSlicedActivations(true)
        let g64 = try tensor(.q4, Case(rows: 9, columns: 256, group: 64))
        let y = product(g64, input(256))
        DecodeKernels.allowSlicedActivations(false)
        XCTAssertEqual(y.map(\.bitPattern), product(g64, input(256)).map(\.bitPattern))
    }

    /// The portable kernels (DecodeKernels.usePortableKernels) leave the sliced one out too.
    func testPortableKernelsLeaveSlicingOut() {
        let before = DecodeKernels.slicesActivations
        DecodeKernels.usePortableKernels(true)
        XCTAssertFalse(DecodeKernels.slicesActivations)
        DecodeKernels.usePortableKernels(false)
        XCTAssertEqual(DecodeKernels.slicesActivations, before)
    }
}
