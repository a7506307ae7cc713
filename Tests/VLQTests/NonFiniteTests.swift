import Calibration
import Conversion
import Foundation
import Quantization
import SafeTensors
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// NaN and infinite weights: convert warns with a count per tensor, `vlq check --values` finds
/// them, and quantize refuses to round them into codes unless told to keep them in float.
final class NonFiniteTests: ScratchTestCase {
    static let poisoned = "model.layers.1.mlp.up_proj.weight"

    /// The tiny model with three NaNs and one -Inf written into one bf16 weight.
    func poisonedModel() throws -> String {
        let model = try scratch.copyOfTinyModel()
        for shard in ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"] {
            let path = model + "/" + shard
            guard let info = try SafeTensorsFile(path: path).info(NonFiniteTests.poisoned) else { continue }
            var bytes = try readBytes(path)
            for (i, bits) in [(0, 0x7FC0), (5, 0xFFC1), (77, 0x7F81), (100, 0xFF80)] as [(Int, UInt16)] {
                bytes[info.fileOffset + 2 * i] = UInt8(bits & 0xFF)
                bytes[info.fileOffset + 2 * i + 1] = UInt8(bits >> 8)
            }
            try writeBytes(bytes, to: path)
        }
        return model
    }

    func testConvertCountsNonFiniteValuesPerTensorAndStillWritesThem() throws {
        let report = try Converter(options: ConvertOptions()).convert(
            folder: try poisonedModel(),
            output: scratch.file("p.vlq"))
        XCTAssertEqual(report.nonFinite, [NonFiniteTests.poisoned: 4])
        let clean = try Converter(options: ConvertOptions()).convert(
            folder: Repo.tinyModel,
            output: scratch.file("c.vlq"))
        XCTAssertEqual(clean.nonFinite, [:])
    }

    func testCheckValuesFindsThemAndExitsOne() throws {
        let bundle = scratch.file("p.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: try poisonedModel(), output: bundle)
        let plain = try vlq("check", bundle, "-q")
        XCTAssertEqual(plain.status, 0, "checksums alone cannot see a NaN that was there at conversion")
        let scanned = try vlq("check", bundle, "--values", "-q")
        XCTAssertEqual(scanned.status, 1)
        XCTAssertTrue(
            scanned.stderr.contains("1 tensors hold NaN or infinite values: \(NonFiniteTests.poisoned) (4)"),
            scanned.stderr)

        let clean = scratch.file("c.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: clean)
        let ok = try vlq("check", clean, "--values", "-q")
        XCTAssertEqual(ok.status, 0, ok.stderr)
        XCTAssertTrue(ok.stdout.contains("every value finite"), ok.stdout)
    }

    func testQuantizeRefusesThemBeforeAnyWorkUnlessToldToKeepThemInFloat() throws {
        let bundle = scratch.file("p.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: try poisonedModel(), output: bundle)
        let refused = try vlq("quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int8", "-q")
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("\(NonFiniteTests.poisoned) (4)"), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("--keep-non-finite"), refused.stderr)
        XCTAssertEqual(scratch.listing(), ["model", "p.vlq"], "a refused quantize left files behind")

        let kept = try vlq(
            "quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int8", "--keep-non-finite",
            "-q")
        XCTAssertEqual(kept.status, 0, kept.stderr)
        let output = try VLQFile(path: scratch.file("q.vlq"))
        XCTAssertEqual(output.record(NonFiniteTests.poisoned)?.encoding, .bf16)
        XCTAssertEqual(output.record("model.layers.1.mlp.down_proj.weight")?.encoding, .q8)
        let note = output.metadata["quantization"]?["tensors"]?[NonFiniteTests.poisoned]?["fallback"]?.stringValue
        XCTAssertEqual(note, "4 NaN or infinite values: kept in bf16")
    }

    /// A kept tensor that AWQ folds scales into (up_proj's rows take down_proj's) is recorded with both
    /// the fold and the fallback; the statistics come from the clean model, so the search is not NaN.
    func testAWQFoldedIntoAKeptTensorRecordsBothTheFoldAndTheFallback() throws {
        let clean = scratch.file("c.vlq"), poisoned = scratch.file("p.vlq"), stats = scratch.file("c.vlqstats")
        _ = try Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: clean)
        _ = try Converter(options: ConvertOptions()).convert(folder: try poisonedModel(), output: poisoned)
        var set = try CalibrationSet(path: Reference.data + "/calibration.jsonl")
        set.samples = Array(set.samples.prefix(6))
        let collector = try CalibrationRunner.collect(engine: try YiVLEngine.open(clean), set: set, withGram: true)
        try StatisticsFile(collector: collector, setDigest: set.digest, samples: 6, model: clean).write(to: stats)
        let kept = try vlq(
            "quantize", poisoned, "-o", scratch.file("q.vlq"), "--preset", "int4", "--method", "awq",
            "--stats", stats, "--keep-non-finite", "-q")
        XCTAssertEqual(kept.status, 0, kept.stderr)
        let output = try VLQFile(path: scratch.file("q.vlq"))
        let record = try QuantizationRecord(json: try XCTUnwrap(output.metadata["quantization"]), source: output.path)
        XCTAssertGreaterThan(
            record.tensors["model.layers.1.mlp.down_proj.weight"]?.awqAlpha ?? 0, 0,
            "down_proj's scales were searched and folded")
        let entry = try XCTUnwrap(record.tensors[NonFiniteTests.poisoned])
        XCTAssertEqual(entry.encoding, .f32)
        XCTAssertTrue(entry.awqFolded)
        XCTAssertEqual(entry.fallback, "4 NaN or infinite values: kept in bf16")
        XCTAssertEqual(output.record(NonFiniteTests.poisoned)?.encoding, .f32)
    }
}
