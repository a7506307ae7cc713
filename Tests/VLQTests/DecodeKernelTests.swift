import Numerics
import VLQFormat
import XCTest
import YiVL

/// Decode's matrix-vector kernels (DecodeKernels, CKernels) against the reference: the stored weights
/// dequantized (QuantizedLayout.dequantize) or upcast to f32, then multiplied in f64. The kernels are
/// exact for the stored values up to float summation order, so every output lies within a few float
/// roundings of sum |w x|: the largest difference relative to that sum, over all cases, stays under
/// `tolerance` (measured on x86-64 with AVX2: about 2e-7).
final class DecodeKernelTests: XCTestCase {
    static let tolerance = 2e-6

    struct Case {
        var rows: Int
        var columns: Int
        var group: Int
    }

    /// Rows not a multiple of the thread split nor of the kernels' block of 4 rows (1 to 3 rows left
    /// over, or fewer than 4 in all), one row, columns of one group, 192-wide rows, groups of 32 to 256
    /// (q4: 64 and up take the blocked path, 16 and 32 the row path), rows wider than the blocked path
    /// keeps on the stack (16384), and groups that are not a multiple of the vector width (the kernels'
    /// scalar tails and fallbacks).
    static let quantizedCases = [
        Case(rows: 37, columns: 32, group: 32), Case(rows: 1, columns: 64, group: 64),
        Case(rows: 133, columns: 64 * 3, group: 64), Case(rows: 19, columns: 128 * 5, group: 128),
        Case(rows: 70, columns: 256 * 4, group: 256), Case(rows: 33, columns: 256, group: 256),
        Case(rows: 6, columns: 192, group: 32), Case(rows: 3, columns: 128 * 3, group: 128),
        Case(rows: 8, columns: 16 * 4, group: 16), Case(rows: 2, columns: 16_384 + 128, group: 128),
        Case(rows: 17, columns: 6 * 7, group: 6), Case(rows: 41, columns: 24 * 3, group: 24),
        Case(rows: 5, columns: 2, group: 2),
    ]

    func input(_ n: Int) -> [Float] {
        var g = SplitMix64(seed: UInt64(n) &* 7919)
        return (0..<n).map { _ in Float(Int(g.next() % 20001) - 10000) / 10000 }
    }

    /// max over rows of |y - reference| / sum |w x|, with the reference and the sum in f64.
    func relativeDifference(_ y: [Float], weights w: [Float], _ x: [Float], columns: Int) -> Double {
        var worst = 0.0
        for r in 0..<y.count {
            var exact = 0.0, magnitude = 0.0
            for j in 0..<columns {
                exact += Double(w[r * columns + j]) * Double(x[j])
                magnitude += abs(Double(w[r * columns + j]) * Double(x[j]))
            }
            XCTAssert(y[r].isFinite, "row \(r) is \(y[r])")
            if magnitude > 0 { worst = max(worst, abs(Double(y[r]) - exact) / magnitude) }
        }
        return worst
    }

    /// Scales by row kind: ordinary, the f16 extremes (largest normal, smallest subnormal), negative.
    func scale(row: Int, group: Int) -> Float16 {
        switch (row + group) % 5 {
        case 0: return 65504
        case 1: return Float16(bitPattern: 1)
        case 2: return -0.0123
        default: return Float16(0.001 + Float(row % 7) * 0.01 + Float(group % 3) * 0.003)
        }
    }

    func quantizedDifference(_ encoding: TensorEncoding, _ c: Case) throws -> Double {
        let layout = try QuantizedLayout(
            validating: encoding, shape: [c.rows, c.columns], groupSize: c.group)
        var gen = SplitMix64(seed: UInt64(c.rows * 1000 + c.columns))
        let codes: [Int8] = (0..<(c.rows * c.columns)).map { _ in
            encoding == .q8 ? Int8(truncatingIfNeeded: gen.next()) : Int8(gen.below(encoding == .q3 ? 8 : 16))
        }
        let groups = c.rows * layout.groupsPerRow
        let scales = (0..<groups).map { scale(row: $0 / layout.groupsPerRow, group: $0) }
        let biases = (0..<groups).map { Float16(Float($0 % 11) * -0.05 * Float(scales[$0])) }
        let bytes = layout.pack(codes: codes, scales: scales, biases: encoding.hasBiases ? biases : nil)
        let x = input(c.columns)
        var reference = [Float](repeating: 0, count: c.rows * c.columns)
        var y = [Float](repeating: .nan, count: c.rows)
        bytes.withUnsafeBytes { data in
            reference.withUnsafeMutableBufferPointer {
                layout.dequantize(data, rows: 0..<c.rows, into: $0.baseAddress!)
            }
            DecodeKernels.quantized(layout, data.baseAddress!, x, into: &y)
        }
        return relativeDifference(y, weights: reference, x, columns: c.columns)
    }

    func testQuantizedKernelsMatchDequantizeThenMultiply() throws {
        var worst = 0.0
        for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
            // q3 groups are whole blocks of 32: one row, 37 and 133 rows (1 left over past blocks of 4),
            // 192-wide rows, groups of 32 to 256 and a row wider than 16384.
            for c in Self.quantizedCases where encoding != .q3 || c.group % 32 == 0 {
                let d = try quantizedDifference(encoding, c)
                XCTAssertLessThan(d, Self.tolerance, "\(encoding.name) \(c)")
                worst = max(worst, d)
            }
        }
        XCTAssertLessThan(worst, Self.tolerance)
        print("decode kernels (\(DecodeKernels.instructionSet)): quantized max relative difference \(worst)")
    }

    /// The same cases on the portable kernels (machines without AVX2 or NEON run them).
    func testPortableKernels() throws {
        DecodeKernels.usePortableKernels(true)
        defer { DecodeKernels.usePortableKernels(false) }
        XCTAssertEqual(DecodeKernels.instructionSet, "scalar")
        try testQuantizedKernelsMatchDequantizeThenMultiply()
        try testOddGroupSizeOfQ8()
        testHalfKernelsMatchUpcastThenMultiply()
    }

    /// The same cases on the AVX2 kernels alone, which x86-64 machines without AVX-512 run (on those, and
    /// elsewhere, this repeats the default kernels).
    func testAVX2KernelsWhereTheCPUAlsoHasAVX512() throws {
        DecodeKernels.allowAVX512(false)
        defer { DecodeKernels.allowAVX512(true) }
        XCTAssertNotEqual(DecodeKernels.instructionSet, "avx512")
        try testQuantizedKernelsMatchDequantizeThenMultiply()
        testHalfKernelsMatchUpcastThenMultiply()
    }

    /// The vector kernels where this machine has them: AVX2 (and AVX-512) on x86-64, NEON on arm64.
    func testVectorKernelsRunWhereTheCPUHasThem() {
        #if arch(arm64)
        XCTAssertEqual(DecodeKernels.instructionSet, "neon")
        #elseif arch(x86_64)
        XCTAssertTrue(["avx512", "avx2", "scalar"].contains(DecodeKernels.instructionSet))
        #endif
    }

    /// A row's result does not depend on how rows are split over threads: the same row computed in a
    /// block of 4 rows or on its own gives the same bits.
    func testRowResultsDoNotDependOnTheRowSplit() throws {
        let (rows, columns) = (9, 256)
        for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
            for group in [32, 128, 256] {
                var gen = SplitMix64(seed: UInt64(group))
                let codes: [Int8] = (0..<(rows * columns)).map { _ in Int8(gen.below(encoding == .q3 ? 8 : 16)) }
                let perRow = columns / group
                let scales = (0..<(rows * perRow)).map { Float16(0.01 + Float($0 % 5) * 0.003) }
                let biases = encoding.hasBiases ? scales.map { -8 * $0 } : nil
                let x = input(columns)
                let whole = try multiply(encoding, rows: rows, columns, group, codes, scales, biases, x)
                for r in 0..<rows {
                    let alone = try multiply(
                        encoding, rows: 1, columns, group, Array(codes[(r * columns)..<((r + 1) * columns)]),
                        Array(scales[(r * perRow)..<((r + 1) * perRow)]),
                        biases.map { Array($0[(r * perRow)..<((r + 1) * perRow)]) }, x)
                    XCTAssertEqual(alone[0].bitPattern, whole[r].bitPattern, "\(encoding.name) g\(group) row \(r)")
                }
            }
        }
    }

    /// withCacheLineAligned hands the kernels x on a 64-byte boundary, x itself or an equal copy, whatever
    /// x's offset: products of x at any float offset in a cache line are bit for bit those of x on one.
    func testXAtAnyOffsetInACacheLineGivesTheSameProducts() throws {
        let (rows, columns, group) = (5, 384, 128)
        var gen = SplitMix64(seed: 41)
        let codes: [Int8] = (0..<(rows * columns)).map { _ in Int8(gen.below(16)) }
        let scales = (0..<(rows * columns / group)).map { Float16(0.01 + Float($0 % 7) * 0.002) }
        let layout = try QuantizedLayout(validating: .q4, shape: [rows, columns], groupSize: group)
        let packed = layout.pack(codes: codes, scales: scales, biases: scales.map { -7 * $0 })
        let x = input(columns)
        let storage = UnsafeMutableRawPointer.allocate(byteCount: (columns + 16) * 4, alignment: 64)
        defer { storage.deallocate() }
        func product(offset: Int) -> [Float] {
            let shifted = storage.bindMemory(to: Float.self, capacity: columns + 16) + offset
            shifted.update(from: x, count: columns)
            var y = [Float](repeating: .nan, count: rows)
            DecodeKernels.withCacheLineAligned(shifted, count: columns) { aligned in
                XCTAssertEqual(Int(bitPattern: aligned) % 64, 0, "offset \(offset)")
                XCTAssertEqual(Array(UnsafeBufferPointer(start: aligned, count: columns)), x, "offset \(offset)")
                packed.withUnsafeBytes { DecodeKernels.quantized(layout, $0.baseAddress!, aligned, into: &y) }
            }
            return y
        }
        let onBoundary = product(offset: 0)
        for offset in 1..<16 {
            XCTAssertEqual(product(offset: offset).map(\.bitPattern), onBoundary.map(\.bitPattern), "offset \(offset)")
        }
    }

    /// y = W x through DecodeKernels.quantized, W packed from codes, scales and biases.
    func multiply(
        _ encoding: TensorEncoding, rows: Int, _ columns: Int, _ group: Int, _ codes: [Int8], _ scales: [Float16],
        _ biases: [Float16]?, _ x: [Float]
    ) throws -> [Float] {
        let layout = try QuantizedLayout(validating: encoding, shape: [rows, columns], groupSize: group)
        var y = [Float](repeating: .nan, count: rows)
        layout.pack(codes: codes, scales: scales, biases: biases).withUnsafeBytes {
            DecodeKernels.quantized(layout, $0.baseAddress!, x, into: &y)
        }
        return y
    }

    func testOddGroupSizeOfQ8() throws {
        for c in [Case(rows: 23, columns: 3 * 5, group: 3), Case(rows: 9, columns: 13 * 2, group: 13)] {
            XCTAssertLessThan(try quantizedDifference(.q8, c), Self.tolerance, "\(c)")
        }
    }

    func testHalfKernelsMatchUpcastThenMultiply() {
        var worst = 0.0
        for isBF16 in [true, false] {
            // Rows of 1 to 3 past a block of 4; widths with 8- and 1-column tails past 16.
            for (rows, columns) in [(1, 8), (37, 37), (133, 4096 + 24), (64, 31), (18, 3), (6, 192), (3, 16)] {
                var gen = SplitMix64(seed: UInt64(rows * columns))
                // Random bit patterns over every finite exponent (non-finite ones skipped).
                var bits: [UInt16] = []
                var weights: [Float] = []
                while bits.count < rows * columns {
                    let b = UInt16(truncatingIfNeeded: gen.next())
                    let w = isBF16 ? Float(bitPattern: UInt32(b) << 16) : Float(Float16(bitPattern: b))
                    // Keep products finite in f32: bf16 reaches 3e38.
                    guard w.isFinite, abs(w) < 1e30 else { continue }
                    bits.append(b)
                    weights.append(w)
                }
                let x = input(columns)
                var y = [Float](repeating: .nan, count: rows)
                bits.withUnsafeBytes {
                    DecodeKernels.halves($0.baseAddress!, isBF16: isBF16, rows: rows, columns: columns, x, into: &y)
                }
                let d = relativeDifference(y, weights: weights, x, columns: columns)
                XCTAssertLessThan(d, Self.tolerance, "\(isBF16 ? "bf16" : "f16") \(rows)x\(columns)")
                worst = max(worst, d)
            }
        }
        print("decode kernels (\(DecodeKernels.instructionSet)): bf16/f16 max relative difference \(worst)")
    }
}
