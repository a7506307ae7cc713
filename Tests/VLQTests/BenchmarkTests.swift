import Foundation
import Numerics
import VLQCore
import XCTest
import YiVL

@testable import Benchmarking

/// `vlq bench`: what it divides by (the bytes a decoding step reads, the machine's read bandwidth), and the
/// table of encodings it ends with.
final class BenchmarkTests: XCTestCase {
    func testADecodeStepReadsEveryDecoderLayerTheFinalNormAndTheHeadButNotTheEmbeddingTable() {
        let model = EngineParityTests.bundleEngine.model
        let language = model.definition.language
        let step = Set(language.decodeStepTensors)
        // Per layer two norms and seven Linears without biases; then the final norm and the head.
        XCTAssertEqual(step.count, language.layers.count * 9 + 2)
        XCTAssertTrue(step.contains(language.head.weight))
        XCTAssertFalse(step.contains(language.embedTokens))
        XCTAssertFalse(step.contains(model.definition.projector.first.weight))
        let bytes = step.reduce(0) { $0 + model.weights.storedBytes($1) }
        let l = model.config.language
        let linearWeights =
            l.layers * l.hiddenSize * (l.heads * l.headDim + 2 * l.kvHeads * l.headDim + l.heads * l.headDim)
            + l.layers * 3 * l.hiddenSize * l.intermediateSize + l.vocabSize * l.hiddenSize
        let norms = (2 * l.layers + 1) * l.hiddenSize
        // The tiny bundle stores its language model, norms included, in bf16 as the checkpoint has it.
        XCTAssertEqual(bytes, 2 * (linearWeights + norms))
    }

    func testTheBandwidthPassSumsEveryValueItReads() {
        let count = 64 * 1000
        let values = FloatBuffer((0..<count).map { Float($0 % 7) })
        let expected = (0..<count).reduce(Float(0)) { $0 + Float($1 % 7) }
        XCTAssertEqual(MemoryBandwidth.sum(values.pointer, count: count), expected)
        let rate = MemoryBandwidth.measureRead(bytes: 8 << 20, repeats: 2)
        XCTAssertTrue(rate.isFinite && rate > 0, "\(rate)")
    }

    /// Bench runs on any bundle, however narrow its layers (micro.vlq's are 32 columns wide, narrower
    /// than the group of 128 the quantizer timings use on real shapes).
    func testBenchWithQuantizerTimingsRunsOnTheSmallestBundle() throws {
        let result = try vlq(
            "bench", Repo.goldenFolder + "/micro.vlq", "--quantization", "--repeats", "1", "--tokens", "16",
            "--decode-tokens", "2")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("decode limit:"), result.stdout)
        XCTAssertTrue(result.stdout.contains("GPTQ int4 g32-128"), result.stdout)
    }

    /// `--encodings bf16,int8,int4` quantizes the model into each preset, measures every bundle alike and
    /// ends with one markdown table: a row per encoding, ratios against the bf16 row, and nothing left in
    /// the temporary folder.
    func testBenchMeasuresEveryEncodingAskedForInOneTable() throws {
        let scratch = try Scratch()
        let result = try runWithTemporaryDirectory(
            scratch.path, "bench", Repo.tinyModel, "--encodings", "bf16,int8,int4", "--repeats", "1", "--tokens",
            "16", "--decode-tokens", "2")
        XCTAssertEqual(result.status, 0, result.stderr)
        let table = result.stdout.split(separator: "\n").filter { $0.hasPrefix("| ") }
            .map { $0.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) } }
        XCTAssertEqual(table.count, 5, result.stdout)  // header, alignment, three rows
        guard table.count == 5 else { return }
        let header = table[0], rows = table.dropFirst(2).map { Dictionary(uniqueKeysWithValues: zip(header, $0)) }
        XCTAssertEqual(rows.map { $0["encoding"] }, ["bf16", "int8", "int4"])
        func number(_ row: [String: String], _ column: String) -> Double {
            Double(row[column]!.trimmingCharacters(in: CharacterSet(charactersIn: "%x"))) ?? .nan
        }
        for row in rows {
            for column in header where !["encoding", "quantize M weights/s"].contains(column) {
                // Shares of sgemm and of the bandwidth limit may round to 0% on shapes this small.
                let value = number(row, column), share = column.hasPrefix("%")
                XCTAssertTrue(
                    value.isFinite && (share ? value >= 0 : value > 0),
                    "\(column) of \(row["encoding"]!): \(row[column]!)")
            }
        }
        XCTAssertEqual(rows[0]["prefill vs bf16"], "100%")
        XCTAssertEqual(rows[0]["vision vs bf16"], "1.00x")
        XCTAssertEqual(rows[0]["quantize M weights/s"], "-")
        XCTAssertGreaterThan(number(rows[1], "quantize M weights/s"), 0)
        XCTAssertGreaterThan(number(rows[2], "quantize M weights/s"), 0)
        // Fewer bytes per weight: smaller bundles, and fewer bytes a decode step must read.
        XCTAssertGreaterThan(number(rows[0], "bundle GB"), number(rows[1], "bundle GB"))
        XCTAssertGreaterThan(number(rows[1], "bundle GB"), number(rows[2], "bundle GB"))
        XCTAssertGreaterThan(number(rows[0], "limit ms"), number(rows[2], "limit ms"))
        XCTAssertTrue(result.stdout.contains("quantize int4 (rtn):"), result.stdout)
        // Where q4 products run on sliced activations, the int4 bundle's logits are compared with the float
        // kernel's (its q4 groups of 128 slice; the int8 and bf16 bundles have no q4 product).
        let sliced = result.stdout.components(separatedBy: "q4 products on sliced activations").count - 1
        XCTAssertEqual(sliced, DecodeKernels.slicesActivations ? 1 : 0, result.stdout)
        XCTAssertEqual(scratch.listing(), [], "the quantized bundles are removed")
    }

    /// `--activations int8`: decode measured on f32 and int8 activations alike, one row each.
    func testBenchWithInt8ActivationsAddsAnA8RowPerEncoding() throws {
        let scratch = try Scratch()
        let result = try runWithTemporaryDirectory(
            scratch.path, "bench", Repo.tinyModel, "--encodings", "int4", "--repeats", "1", "--tokens", "16",
            "--decode-tokens", "2", "--activations", "int8")
        XCTAssertEqual(result.status, 0, result.stderr)
        let labels = result.stdout.split(separator: "\n").filter { $0.hasPrefix("| int4") }
            .map { $0.split(separator: "|")[0].trimmingCharacters(in: .whitespaces) }
        XCTAssertEqual(labels, ["int4", "int4 a8"], result.stdout)
        XCTAssertTrue(result.stdout.contains("int8 activations:"), result.stdout)
    }

    func testBenchRefusesNumbersOutOfRangeAndUnknownEncodingsBeforeAnyWork() throws {
        for arguments in [
            ["--repeats", "0"], ["--tokens", "0"], ["--decode-tokens", "0"], ["--encodings", "bf16,fp8"],
        ] {
            let result = try VLQTests.run(Repo.vlqBinary, ["bench", Repo.tinyModel] + arguments)
            XCTAssertEqual(result.status, 2, "\(arguments): \(result.stderr)")
            XCTAssertTrue(result.stderr.contains(arguments[0]), "\(arguments): \(result.stderr)")
            XCTAssertEqual(result.stdout, "", "no measurement starts")
        }
    }

    /// Runs vlq with TMPDIR set, where bench writes its quantized bundles.
    func runWithTemporaryDirectory(_ directory: String, _ arguments: String...) throws -> ProcessResult {
        try VLQTests.run(Repo.vlqBinary, arguments, environment: ["TMPDIR": directory])
    }

    /// /proc/self/status pads VmHWM with spaces only below 8 digits: a 10 GB peak is "VmHWM:\t10485760 kB".
    func testThePeakIsReadWhateverItsWidth() {
        XCTAssertEqual(PeakMemory.highWaterMark(status: "Name:\tvlq\nVmHWM:\t    1624 kB\n"), 1624 * 1024)
        XCTAssertEqual(PeakMemory.highWaterMark(status: "VmHWM:\t10485760 kB\nVmRSS:\t 1 kB\n"), 10_485_760 * 1024)
        XCTAssertNil(PeakMemory.highWaterMark(status: "VmRSS:\t 1 kB\n"))
    }

    /// Times in the table keep three significant figures: a tiny model's bandwidth limit of 0.04 ms on a fast
    /// machine is not printed as 0.0 (which read as "no limit"), nor its vision time as 0.000; 6B-sized
    /// times keep one decimal.
    func testMillisecondsKeepThreeSignificantFiguresAndOneDecimal() {
        XCTAssertEqual(significant(0.0412, 3), "0.0412")
        XCTAssertEqual(significant(0.4, 3), "0.400")
        XCTAssertEqual(significant(2.345, 3), "2.35")
        XCTAssertEqual(significant(60.44, 3), "60.4")
        XCTAssertEqual(significant(155.6, 3), "155.6")
        XCTAssertEqual(significant(0, 3), "0.0")
        var row = BenchRow(
            encoding: .int4, label: "int4", bundleBytes: 1, tokens: 1, prefillSeconds: 1, prefillGFLOPs: 1,
            sgemmGFLOPs: 1, decodeSecondsPerToken: 0.000_8, decodeLimitSeconds: 0.000_04, visionSeconds: 1,
            quantizeWeightsPerSecond: nil, peakResidentBytes: 0)
        let cells = BenchTable(rows: [row]).cells(row, reference: nil)
        XCTAssertEqual(cells[5], "0.800")
        XCTAssertEqual(cells[6], "0.0400")
        row.decodeLimitSeconds = 0.027
        XCTAssertEqual(BenchTable(rows: [row]).cells(row, reference: nil)[6], "27.0")
        // The tiny tower's image takes a millisecond or less on a fast machine.
        row.visionSeconds = 0.000_42
        XCTAssertEqual(BenchTable(rows: [row]).cells(row, reference: nil)[8], "0.000420")
    }
}
