import Calibration
import Foundation
import Quantization
import SafeTensors
import VLQCore
import VLQFormat
import XCTest

/// `.vlqstats` files written tensor by tensor, including ones `vlq calibrate` never would.
struct StatisticsBuilder {
    var writer = SafeTensorsWriter()

    init() {
        writer.metadata = [
            "format": "vlqstats 1", "aliases": "{}", "set_digests": "0", "samples": "1", "model": "test",
        ]
    }

    mutating func add(_ name: String, shape: [Int], _ values: [Double]) {
        writer.add(
            .init(
                name: name, dtype: .f64, shape: shape,
                bytes: values.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Array($0) }))
    }

    /// A consistent entry for an input `columns` wide.
    mutating func input(_ name: String, columns: Int, gram: Bool, rows: Double = 10) {
        add(name + ".rows", shape: [1], [rows])
        add(name + ".sum_abs", shape: [columns], Array(repeating: 1, count: columns))
        add(name + ".sum_squares", shape: [columns], Array(repeating: 2, count: columns))
        if gram {
            add(
                name + ".gram", shape: [columns, columns],
                (0..<(columns * columns)).map { $0 % (columns + 1) == 0 ? 20 : 0.5 })
        }
    }

    func write(to path: String) throws { try CompressedSafeTensors.write(writer, to: path) }
}

/// A zstd frame by hand: a header claiming `contentSize` (8-byte field, single segment) and one raw
/// block holding `content`, which may be shorter than the claim.
func zstdFrame(claiming contentSize: UInt64, content: [UInt8]) -> [UInt8] {
    var frame: [UInt8] = [0x28, 0xB5, 0x2F, 0xFD, 0xE0]
    withUnsafeBytes(of: contentSize.littleEndian) { frame += $0 }
    let blockHeader = UInt32(content.count) << 3 | 1  // last block, raw
    frame += [UInt8(blockHeader & 0xFF), UInt8(blockHeader >> 8 & 0xFF), UInt8(blockHeader >> 16 & 0xFF)]
    return frame + content
}

/// `.vlqstats` files are read back from disk and matched to a model by name only: whatever they hold,
/// reading and quantizing with them ends in a result or a one-line error naming the file.
final class MalformedStatisticsTests: XCTestCase {
    func testAFrameClaimingATerabyteIsRefusedBeforeAnythingIsAllocated() throws {
        let scratch = try Scratch()
        try writeBytes(zstdFrame(claiming: 1 << 40, content: Array("vlq".utf8)), to: scratch.file("tb.vlqstats"))
        assertVLQError(
            try StatisticsFile.read(scratch.file("tb.vlqstats")),
            kind: CoreError.malformedCompression,
            contains: [
                "tb.vlqstats: zstd: the frame claims 1099511627776 bytes from 19 compressed",
                "over the limit",
            ])
        try writeBytes(zstdFrame(claiming: UInt64(Int.max), content: []), to: scratch.file("max.vlqstats"))
        assertVLQError(
            try StatisticsFile.read(scratch.file("max.vlqstats")), kind: CoreError.malformedCompression,
            contains: ["max.vlqstats", "claims"])
    }

    func testAFrameThatYieldsLessThanItClaimsIsAnError() throws {
        // Under the limit, but the frame holds 3 bytes: the output grows with what arrives.
        let scratch = try Scratch()
        try writeBytes(zstdFrame(claiming: 48 << 20, content: Array("vlq".utf8)), to: scratch.file("short.vlqstats"))
        assertVLQError(
            try StatisticsFile.read(scratch.file("short.vlqstats")), kind: CoreError.malformedCompression,
            contains: ["short.vlqstats: zstd:"])
        let packed = Zstd.compress(Array(repeating: 1, count: 1000))
        assertVLQError(
            try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: 999) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try (packed + [0]).withUnsafeBytes { try Zstd.decompress($0, expectedSize: 1000) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try packed.dropLast().withUnsafeBytes { try Zstd.decompress($0, expectedSize: 1000) },
            kind: CoreError.malformedCompression)
        XCTAssertEqual(
            try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: 1000) },
            Array(repeating: 1, count: 1000))
    }

    func testInconsistentStatisticsAreErrorsNamingTheFileAndTheInput() throws {
        let scratch = try Scratch()
        let path = scratch.file("bad.vlqstats")
        var good = StatisticsBuilder()
        good.input("a.weight", columns: 4, gram: true)
        try good.write(to: path)
        XCTAssertEqual(try StatisticsFile.read(path).statistics["a.weight"]?.columns, 4)

        // (what is wrong, how it is built, what the error says)
        let cases: [(String, (inout StatisticsBuilder) -> Void, String)] = [
            ("no row count", { $0.add("a.weight.rows", shape: [0], []) }, "a.weight.rows holds 0 values, not 1"),
            ("two row counts", { $0.add("a.weight.rows", shape: [2], [1, 2]) }, "a.weight.rows holds 2 values"),
            (
                "negative rows", { $0.input("a.weight", columns: 2, gram: false, rows: -3) },
                "row count -3.0 is not a count"
            ),
            ("NaN rows", { $0.input("a.weight", columns: 2, gram: false, rows: .nan) }, "is not a count"),
            (
                "sums of different widths",
                {
                    $0.add("a.weight.rows", shape: [1], [1])
                    $0.add("a.weight.sum_abs", shape: [4], [1, 1, 1, 1])
                    $0.add("a.weight.sum_squares", shape: [3], [1, 1, 1])
                }, "a.weight: statistics of 4 (|x|) and 3 (x^2) input columns, not 4"
            ),
            (
                "an infinite sum",
                {
                    $0.add("a.weight.rows", shape: [1], [1])
                    $0.add("a.weight.sum_abs", shape: [2], [1, .infinity])
                    $0.add("a.weight.sum_squares", shape: [2], [1, 1])
                }, "negative or not finite"
            ),
            (
                "a Gram matrix of another width",
                {
                    $0.input("a.weight", columns: 3, gram: false)
                    $0.add("a.weight.gram", shape: [2, 2], [1, 0, 0, 1])
                }, "a.weight.gram holds 4 values, not 3 x 3"
            ),
            (
                "a NaN in the Gram matrix",
                {
                    $0.input("a.weight", columns: 2, gram: false)
                    $0.add("a.weight.gram", shape: [2, 2], [1, .nan, 0, 1])
                }, "a.weight.gram holds a value that is not finite"
            ),
            (
                "a Gram matrix as a vector",
                {
                    $0.input("a.weight", columns: 2, gram: false)
                    $0.add("a.weight.gram", shape: [4], [1, 0, 0, 1])
                }, "a.weight.gram is F64 [4], not a 2-D F64 tensor"
            ),
            ("a missing sum", { $0.add("a.weight.rows", shape: [1], [1]) }, "missing a.weight.sum_abs"),
        ]
        for (_, build, phrase) in cases {
            var b = StatisticsBuilder()
            build(&b)
            try b.write(to: path)
            assertVLQError(
                try StatisticsFile.read(path), kind: CalibrationError.invalidStatistics,
                contains: ["bad.vlqstats: ", phrase])
        }
        var f32 = StatisticsBuilder()
        f32.writer.add(.f32("a.weight.rows", [1], [1]))
        try f32.write(to: path)
        assertVLQError(
            try StatisticsFile.read(path), kind: CalibrationError.invalidStatistics,
            contains: ["bad.vlqstats: a.weight.rows is F32 [1]"])
    }

    /// Statistics of another model stop quantize at the tensor they do not fit (lm_head, the last one,
    /// so every earlier tensor has been written), and the half-written output is removed.
    func testStatisticsOfAnotherModelStopQuantizeAndLeaveNothingBehind() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        var stats = StatisticsBuilder()
        stats.input("lm_head.weight", columns: 16, gram: true)
        try stats.write(to: scratch.file("other.vlqstats"))
        for (preset, method) in [("int8", "imatrix"), ("int4", "gptq"), ("int4", "awq")] {
            let result = try vlq(
                "quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", preset,
                "--method", method, "--stats", scratch.file("other.vlqstats"), "-q")
            XCTAssertEqual(result.status, 2, "\(method): \(result.stderr)")
            XCTAssertTrue(
                result.stderr.contains(
                    "vlq: error: " + scratch.file("other.vlqstats")
                        + ": tensor lm_head.weight has 256 input columns"), result.stderr)
            XCTAssertTrue(result.stderr.contains("16 (|x|) and 16 (x^2) input columns, not 256"), result.stderr)
            XCTAssertTrue(result.stderr.contains("not of this model"), result.stderr)
            XCTAssertEqual(scratch.listing(), ["fp.vlq", "other.vlqstats"], method)
        }
    }

    /// A NaN weight (or one that error feedback turned NaN) gets code 0 instead of trapping in the
    /// conversion to Int; groups without one keep their values.
    func testANaNWeightGetsCodeZeroRatherThanATrap() throws {
        let w: [Float] = [0.5, .nan, -1, 2, 0.25, 1, -0.5, 3]
        // q3 groups are blocks of 32: the same values, the NaN group then a clean one, 32 wide.
        let wide: [Float] = (0..<64).map { (i: Int) -> Float in i < 32 ? w[i % 4] : w[4 + i % 4] }
        for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
            let (values, group) = encoding == .q3 ? (wide, 32) : (w, 4)
            let m = MatrixQuantizer.roundToNearest(
                values, rows: 1, columns: values.count, encoding: encoding, groupSize: group)
            XCTAssertEqual(m.dequantized[values.count - 1], 3, accuracy: 0.3, encoding.name)
            // Importance weighting spreads the NaN over the row (its variance): zeros, but no trap.
            let weighted = MatrixQuantizer.roundToNearest(
                values, rows: 1, columns: values.count, encoding: encoding, groupSize: group,
                columnImportance: Array(repeating: 1, count: values.count))
            XCTAssertEqual(weighted.dequantized.count, values.count)
        }
        // With activation order, group ranges are fixed from the original weights before the NaN
        // spreads through error feedback.
        let gram = (0..<64).map { $0 % 9 == 0 ? 2.0 : 0.1 }
        let g = try GPTQ(activationOrder: true).quantize(
            w, rows: 1, columns: 8, encoding: .q4, groupSize: 4,
            gram: gram)
        XCTAssertEqual(g.dequantized.count, 8)
    }

    /// The quantizers' own entry checks, for callers other than the pipeline.
    func testTheQuantizersRefuseSizesThatDoNotFit() throws {
        let w = [Float](repeating: 0.5, count: 16)
        var stats = InputStatistics(columns: 16, withGram: true)
        stats.rows = 1
        assertVLQError(
            try LinearQuantizer.quantize(
                w, rows: 2, columns: 8, encoding: .q8, groupSize: 8,
                method: .imatrix, statistics: stats),
            kind: QuantizationError.statisticsMismatch,
            contains: ["statistics for a weight of 8 columns: statistics of 16 (|x|) and 16 (x^2)"])
        assertVLQError(
            try LinearQuantizer.quantize(
                w, rows: 3, columns: 8, encoding: .q8, groupSize: 8, method: .rtn,
                statistics: nil),
            kind: QuantizationError.invalidGrouping,
            contains: ["a [3, 8] weight of 16 values cannot be q8 in groups of 8"])
        assertVLQError(
            try LinearQuantizer.quantize(
                w, rows: 2, columns: 8, encoding: .q4, groupSize: 3, method: .rtn,
                statistics: nil),
            kind: QuantizationError.invalidGrouping, contains: ["cannot be q4 in groups of 3"])
        assertVLQError(
            try GPTQ().quantize(w, rows: 2, columns: 8, encoding: .q8, groupSize: 8, gram: [1, 0, 0, 1]),
            kind: QuantizationError.invalidGrouping,
            contains: ["GPTQ: a [2, 8] weight of 16 values with a Hessian of 4 values"])
    }
}
