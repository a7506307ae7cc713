import Foundation
import Numerics
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// The opt-in int8 activations of decode (`DecodeActivations`, `--activations int8`): x quantized per
/// block of 32, integer dot products with the q8 / q4 / q4s codes. The kernels are checked against a
/// reference in f64 from the same int8 x: each group's scale times sum(code * xq * block scale), plus
/// for q4 the bias times the group's sum of the *float* x (which the kernels keep exact). Integer sums
/// are exact, so only float summation order separates kernel and reference.
final class Int8ActivationTests: XCTestCase {
    static let tolerance = 2e-6

    struct Case {
        var rows: Int
        var columns: Int
        var group: Int
    }

    /// One row, rows not a multiple of the 4-row block nor of the thread split, 192-wide rows, groups of
    /// 32 to 256 and a whole 768-wide row, rows wider than the permuted x kept on the stack (16384), and
    /// q4's fallbacks: groups of 96 and group 32 over 96 columns straddle its 64-element chunks. The
    /// AVX-512 VNNI kernels take 128-column chunks: groups of 32 and 64 inside them (256 and 384 columns),
    /// of 128 and more spanning them, and more groups of 32 than q8's per-group sums keep on the stack;
    /// 192 columns go to the AVX2 ones.
    static let cases = [
        Case(rows: 1, columns: 64, group: 64), Case(rows: 37, columns: 32, group: 32),
        Case(rows: 6, columns: 192, group: 32), Case(rows: 133, columns: 64 * 3, group: 64),
        Case(rows: 19, columns: 128 * 5, group: 128), Case(rows: 70, columns: 256 * 4, group: 256),
        Case(rows: 3, columns: 128 * 3, group: 128), Case(rows: 5, columns: 768, group: 768),
        Case(rows: 2, columns: 16_384 + 128, group: 128), Case(rows: 9, columns: 96 * 2, group: 96),
        Case(rows: 7, columns: 96, group: 32), Case(rows: 11, columns: 256, group: 32),
        Case(rows: 13, columns: 384, group: 64), Case(rows: 3, columns: 16_384 + 512, group: 32),
    ]

    override func tearDown() {
        DecodeActivations.use(.f32)
        DecodeKernels.usePortableKernels(false)
    }

    func input(_ n: Int) -> [Float] {
        var g = SplitMix64(seed: UInt64(n) &* 104_729)
        var x = (0..<n).map { _ in Float(Int(g.next() % 20001) - 10000) / 1000 }
        // An all-zero block (scale 0) and a block of one large outlier.
        if n >= 64 {
            for j in 0..<32 { x[j] = 0 }
            x[40] = 900
        }
        return x
    }

    struct Tensor {
        var layout: QuantizedLayout
        var codes: [Int8]
        var scales: [Float16]
        var biases: [Float16]?
        var bytes: [UInt8]
    }

    func tensor(_ encoding: TensorEncoding, _ c: Case) throws -> Tensor {
        let layout = try QuantizedLayout(validating: encoding, shape: [c.rows, c.columns], groupSize: c.group)
        var gen = SplitMix64(seed: UInt64(c.rows * 1000 + c.columns + c.group))
        // q8 codes over the whole int8 range, -128 included: its |w| of 128 must not saturate either.
        let codes: [Int8] = (0..<(c.rows * c.columns)).map { _ in
            encoding == .q8 ? Int8(truncatingIfNeeded: gen.next()) : Int8(gen.below(16))
        }
        let groups = c.rows * layout.groupsPerRow
        let scales = (0..<groups).map { Float16(0.001 + Float($0 % 7) * 0.01) * ($0 % 3 == 0 ? -1 : 1) }
        let biases = encoding == .q4 ? (0..<groups).map { Float16(Float($0 % 11) * -0.05 * Float(scales[$0])) } : nil
        let bytes = layout.pack(codes: codes, scales: scales, biases: biases)
        return Tensor(layout: layout, codes: codes, scales: scales, biases: biases, bytes: bytes)
    }

    /// y through DecodeKernels with int8 activations.
    func int8Product(_ t: Tensor, _ x: [Float]) -> [Float] {
        DecodeActivations.use(.int8)
        defer { DecodeActivations.use(.f32) }
        var y = [Float](repeating: .nan, count: t.layout.rows)
        t.bytes.withUnsafeBytes { DecodeKernels.quantized(t.layout, $0.baseAddress!, x, into: &y) }
        return y
    }

    /// max over rows of |y - reference| / the sum of the reference's terms' magnitudes.
    func differenceFromReference(_ encoding: TensorEncoding, _ t: Tensor, _ x: [Float], _ y: [Float]) -> Double {
        let (xq, xs) = DecodeKernels.quantizeActivations(x)
        let (columns, group) = (t.layout.columns, t.layout.groupSize)
        var worst = 0.0
        for r in 0..<t.layout.rows {
            var exact = 0.0, magnitude = 0.0
            for g in 0..<(columns / group) {
                let k = r * (columns / group) + g
                let scale = Double(Float(t.scales[k]))
                let bias = encoding == .q4 ? Double(Float(t.biases![k])) : encoding == .q4s ? -8 * scale : 0
                for j in (g * group)..<((g + 1) * group) {
                    let product = scale * Double(t.codes[r * columns + j]) * Double(xq[j]) * Double(xs[j / 32])
                    exact += product + bias * Double(x[j])
                    magnitude += abs(product) + abs(bias * Double(x[j]))
                }
            }
            XCTAssert(y[r].isFinite, "row \(r) is \(y[r])")
            if magnitude > 0 { worst = max(worst, abs(Double(y[r]) - exact) / magnitude) }
        }
        return worst
    }

    func testActivationsAreQuantizedPerBlockOf32ToTheNearestStep() {
        let x = input(256)
        let (codes, scales) = DecodeKernels.quantizeActivations(x)
        XCTAssertEqual(scales.count, 8)
        for b in 0..<8 {
            let block = x[(32 * b)..<(32 * b + 32)]
            let largest = block.map(abs).max()!
            XCTAssertEqual(scales[b], largest / 127, "block \(b)")
            for j in block.indices {
                XCTAssertLessThanOrEqual(abs(Int(codes[j])), 127)
                if largest == 0 {
                    XCTAssertEqual(codes[j], 0)
                } else {
                    XCTAssertLessThanOrEqual(abs(Float(codes[j]) * scales[b] - x[j]), scales[b] * 0.5001, "x[\(j)]")
                }
            }
            if largest > 0 { XCTAssertEqual(codes[block.firstIndex { abs($0) == largest }!].magnitude, 127) }
        }
        XCTAssertEqual(scales[0], 0, "the all-zero block")
    }

    func testInt8KernelsMatchTheReferenceOnTheQuantizedActivations() throws {
        var worst = 0.0
        for encoding in [TensorEncoding.q8, .q4, .q4s] {
            for c in Self.cases {
                let t = try tensor(encoding, c), x = input(c.columns)
                let d = differenceFromReference(encoding, t, x, int8Product(t, x))
                XCTAssertLessThan(d, Self.tolerance, "\(encoding.name) \(c)")
                worst = max(worst, d)
            }
        }
        print("int8 activation kernels (\(DecodeKernels.instructionSet)): max relative difference \(worst)")
    }

    /// The vector kernels (AVX2 here) and the portable ones agree up to float summation order: both lie
    /// within the tolerance of the same reference (relative to the row's magnitude, as outputs cancel).
    func testVectorAndPortableKernelsAgree() throws {
        for encoding in [TensorEncoding.q8, .q4, .q4s] {
            for c in Self.cases {
                let t = try tensor(encoding, c), x = input(c.columns)
                let vector = int8Product(t, x)
                DecodeKernels.usePortableKernels(true)
                XCTAssertEqual(DecodeKernels.instructionSet, "scalar")
                let portable = int8Product(t, x)
                DecodeKernels.usePortableKernels(false)
                XCTAssertLessThan(differenceFromReference(encoding, t, x, vector), Self.tolerance, "\(c)")
                XCTAssertLessThan(differenceFromReference(encoding, t, x, portable), Self.tolerance, "\(c)")
            }
        }
    }

    /// Where the CPU has AVX-512 VNNI, the AVX2 kernels (which CPUs without it run) still meet the reference.
    func testAVX2KernelsWhereTheCPUAlsoHasAVX512() throws {
        DecodeKernels.allowAVX512(false)
        defer { DecodeKernels.allowAVX512(true) }
        for encoding in [TensorEncoding.q8, .q4, .q4s] {
            for c in Self.cases {
                let t = try tensor(encoding, c), x = input(c.columns)
                XCTAssertLessThan(differenceFromReference(encoding, t, x, int8Product(t, x)), Self.tolerance, "\(c)")
            }
        }
    }

    /// int8 activations change results (slightly): the switch reaches the kernels; f32, the default,
    /// gives the same bits before and after int8 was used.
    func testTheDefaultStaysExactAndInt8ChangesResultsSlightly() throws {
        XCTAssertEqual(DecodeActivations.precision, .f32)
        let t = try tensor(.q4, Case(rows: 16, columns: 512, group: 128))
        var g = SplitMix64(seed: 5)
        let x = (0..<512).map { _ in Float(Int(g.next() % 2001) - 1000) / 100 }
        func exactProduct() -> [Float] {
            var y = [Float](repeating: .nan, count: 16)
            t.bytes.withUnsafeBytes { DecodeKernels.quantized(t.layout, $0.baseAddress!, x, into: &y) }
            return y
        }
        let before = exactProduct()
        let int8 = int8Product(t, x)
        XCTAssertEqual(exactProduct().map(\.bitPattern), before.map(\.bitPattern))
        XCTAssertNotEqual(int8.map(\.bitPattern), before.map(\.bitPattern))
        // Each x moves by at most half a step of max|x| / 127 in its block: well under 1% of the largest y.
        let largest = before.map(abs).max()!
        for r in 0..<16 { XCTAssertEqual(int8[r], before[r], accuracy: 0.01 * largest, "row \(r)") }
    }

    /// Groups that do not split into blocks of 32 keep the exact kernels under int8.
    func testGroupsNotAMultipleOf32KeepF32Activations() throws {
        let t = try tensor(.q8, Case(rows: 5, columns: 48, group: 16)), x = input(48)
        var exact = [Float](repeating: .nan, count: 5)
        t.bytes.withUnsafeBytes { DecodeKernels.quantized(t.layout, $0.baseAddress!, x, into: &exact) }
        XCTAssertEqual(int8Product(t, x).map(\.bitPattern), exact.map(\.bitPattern))
    }

    /// `--activations int8` on the commands that run the model: the tiny model's hidden sizes (256,
    /// 768) split into blocks of 32. verify applies it to every language row, so its KLD moves.
    func testTheCommandsRunWithInt8Activations() throws {
        let scratch = try Scratch()
        let (fp, int4) = (scratch.file("fp.vlq"), scratch.file("int4.vlq"))
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", fp, "-q").status, 0)
        XCTAssertEqual(try vlq("quantize", fp, "-o", int4, "--preset", "int4", "-q").status, 0)
        let c = Reference.cases[0]
        let question = ["--pixel-values", c.file.path, "--prompt", c.question, "--max-tokens", "8", "-q"]
        let exact = try VLQTests.run(Repo.vlqBinary, ["run", int4] + question)
        let int8 = try VLQTests.run(Repo.vlqBinary, ["run", int4, "--activations", "int8"] + question)
        XCTAssertEqual(exact.status, 0, exact.stderr)
        XCTAssertEqual(int8.status, 0, int8.stderr)
        XCTAssertFalse(int8.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        XCTAssertEqual(try vlq("run", int4, "--activations", "int4", "--prompt", "x").status, 2)
        func kld(_ activations: String) throws -> Double {
            let json = scratch.file("verify-\(activations).json")
            let result = try vlq(
                "verify", "--reference-dir", Reference.data + "/reference", "--candidate", int4, "--activations",
                activations, "--json", json, "-q")
            XCTAssertEqual(result.status, 0, result.stderr)
            let report = try JSONValue.parse(try readBytes(json))
            return report["comparisons"]?.arrayValue?.first?["logits"]?["mean_kld"]?.doubleValue ?? -1
        }
        let (f32KLD, int8KLD) = (try kld("f32"), try kld("int8"))
        XCTAssertGreaterThan(f32KLD, 0)
        XCTAssertNotEqual(int8KLD, f32KLD)
        XCTAssertLessThan(int8KLD, 10 * f32KLD + 1e-3)
    }
}
