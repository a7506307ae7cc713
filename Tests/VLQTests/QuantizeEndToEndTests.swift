import Calibration
import Foundation
import Quantization
import VLQCore
import VLQFormat
import Verification
import XCTest
import YiVL

/// `vlq calibrate` and `vlq quantize` end to end on the tiny Yi-VL, measured against the
/// transformers fp32 reference.
final class QuantizeEndToEndTests: XCTestCase {
    static let calibrationSet = Reference.data + "/calibration.jsonl"
    static let references = try! ReferenceCase.load(folder: Reference.data + "/reference")

    /// The tiny model converted to fp.vlq and its statistics from the calibration scenes, in `scratch`.
    func convertAndCalibrate(in scratch: Scratch) throws -> (bundle: String, stats: String) {
        let bundle = scratch.file("fp.vlq"), stats = scratch.file("tiny.vlqstats")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let calibrated = try vlq("calibrate", bundle, "--set", Self.calibrationSet, "-o", stats, "-q")
        XCTAssertEqual(calibrated.status, 0, calibrated.stderr)
        return (bundle, stats)
    }

    func drift(_ bundle: String) throws -> LogitDrift {
        try ReferenceComparison.run(candidate: try YiVLEngine.open(bundle), references: Self.references).logits
    }

    /// The int8 bar: mean KLD <= 2e-4, same top >= 99%, exact match within 2 points of fp32 (48%).
    func testInt8PresetCalibratedWithTheShippedScenesMeetsTheBar() throws {
        let scratch = try Scratch()
        let output = scratch.file("int8.vlq")
        let result = try vlq(
            "quantize", Repo.tinyModel, "-o", output, "--preset", "int8", "--method", "imatrix", "--set",
            Self.calibrationSet, "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(scratch.listing(), ["int8.vlq"], "the temporary conversion is removed")
        XCTAssertEqual(try vlq("check", output).status, 0)
        let d = try drift(output)
        XCTAssertLessThanOrEqual(d.meanKLD, 2e-4)
        XCTAssertGreaterThanOrEqual(d.sameTopRate, 0.99)
        let answers = try ExactMatch.run(
            try YiVLEngine.open(output), set: try CalibrationSet(path: Reference.data + "/eval.jsonl"))
        XCTAssertEqual(answers.total, 200)
        XCTAssertGreaterThanOrEqual(answers.rate, 0.48 - 0.02)

        let bundle = try VLQFile(path: output)
        let q = try XCTUnwrap(bundle.metadata["quantization"])
        XCTAssertEqual(q["method"]?.stringValue, "imatrix")
        XCTAssertEqual(q["calibration"]?["samples"]?.intValue, 32)
        XCTAssertEqual(
            q["calibration"]?["set_digest"]?.stringValue, try CalibrationSet(path: Self.calibrationSet).digest)
        XCTAssertEqual(
            bundle.record("vision_model.encoder.layers.0.mlp.fc1.weight")?.encoding, .q8,
            "the vision tower is quantized")
        XCTAssertEqual(bundle.record("vision_model.embeddings.position_embedding.weight")?.encoding, .f32)
        XCTAssertEqual(bundle.record("model.norm.weight")?.encoding, .bf16)
        XCTAssertEqual(
            q["tensors"]?["vision_model.encoder.layers.3.mlp.fc1.weight"]?["fallback"]?.stringValue,
            "no Linear-input statistics (an embedding lookup, or a layer the model never runs): rtn")
    }

    func testInt4CalibratedMethodsBeatRoundToNearestAndGPTQBeatsLlamaCppQ4_0() throws {
        let scratch = try Scratch()
        let (bundle, stats) = try convertAndCalibrate(in: scratch)
        var kld: [String: Double] = [:]
        for method in ["rtn", "gptq", "imatrix"] {
            let output = scratch.file("int4-\(method).vlq")
            let result = try vlq(
                "quantize", bundle, "-o", output, "--preset", "int4", "--method", method, "--stats", stats, "-q")
            XCTAssertEqual(result.status, 0, result.stderr)
            kld[method] = try drift(output).meanKLD
        }
        XCTAssertLessThan(kld["imatrix"]!, kld["rtn"]!)
        XCTAssertLessThanOrEqual(kld["gptq"]!, 0.6 * kld["rtn"]!)
        XCTAssertLessThan(kld["gptq"]!, 0.0030, "llama.cpp Q4_0 with imatrix on these cases (LLM only)")
        let listing = try JSONValue.parse(try vlq("inspect", scratch.file("int4-gptq.vlq"), "--json").stdout)
        let language = listing["components"]?.arrayValue?.first { $0["name"]?.stringValue == "language" }
        XCTAssertLessThan(language?["bits_per_weight"]?.doubleValue ?? 99, 8)
        // The text listing reads the bundle's quantization record: recipe, method, calibration.
        let text = try vlq("inspect", scratch.file("int4-gptq.vlq"), "--summary").stdout
        XCTAssertTrue(text.contains("quantization: recipe int4, method gptq, calibrated on "), text)

        // int4-all: the vision tower and projector in 4 bits too, GPTQ calibrated through the tower, still
        // below llama.cpp's Q4_0 + imatrix, which leaves the vision side in float.
        let all = scratch.file("int4-all.vlq")
        let result = try vlq("quantize", bundle, "-o", all, "--preset", "int4-all", "--stats", stats, "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let file = try VLQFile(path: all)
        for name in ["vision_model.encoder.layers.0.mlp.fc1.weight", "model.mm_projector.0.weight"] {
            XCTAssertEqual(file.record(name)?.encoding, .q4, name)
            XCTAssertEqual(
                file.metadata["quantization"]?["tensors"]?[name]?["method"]?.stringValue, "gptq",
                "\(name) is calibrated through the tower, not rounded")
        }
        XCTAssertEqual(file.record("model.embed_tokens.weight")?.encoding, .q8)
        XCTAssertEqual(file.record("vision_model.embeddings.position_embedding.weight")?.encoding, .f32)
        XCTAssertLessThan(try drift(all).meanKLD, 0.0030)
    }

    /// q3 end to end: a recipe naming q3 (rtn, group 128) and the int3 preset (gptq, group 64) quantize the
    /// tiny model, the bundles pass `vlq check`, say format 1.1, and run: prefill (the drift) through the q3
    /// panels, decode through the q3 kernel. GPTQ at 3.5 bits stays below llama.cpp's Q4_0 + imatrix at 4.5.
    func testQ3QuantizesChecksAndRunsWithRecipeAndPreset() throws {
        let scratch = try Scratch()
        let (bundle, stats) = try convertAndCalibrate(in: scratch)
        try #"{"rules": [{"component": "language", "match": "model.layers.*", "encoding": "q3", "group_size": 128}]}"#
            .write(toFile: scratch.file("q3.json"), atomically: true, encoding: .utf8)
        let rtn = scratch.file("q3-rtn.vlq"), gptq = scratch.file("int3-gptq.vlq")
        let byRecipe = try vlq("quantize", bundle, "-o", rtn, "--recipe", scratch.file("q3.json"), "-q")
        XCTAssertEqual(byRecipe.status, 0, byRecipe.stderr)
        let byPreset = try vlq(
            "quantize", bundle, "-o", gptq, "--preset", "int3", "--method", "gptq", "--stats", stats, "-q")
        XCTAssertEqual(byPreset.status, 0, byPreset.stderr)
        var kld: [String: Double] = [:]
        for (output, group) in [(rtn, 128), (gptq, 64)] {
            XCTAssertEqual(try vlq("check", output).status, 0)
            let file = try VLQFile(path: output)
            XCTAssertEqual(file.header.minorVersion, 1, "q3 is a format 1.1 encoding")
            XCTAssertEqual(file.metadata["format"]?["version"]?.stringValue, "1.1")
            let q = try XCTUnwrap(file.record("model.layers.0.mlp.down_proj.weight"))
            XCTAssertEqual(q.encoding, .q3)
            XCTAssertEqual(q.groupSize, group)
            let listing = try vlq("inspect", output)
            XCTAssertTrue(listing.stdout.contains("q3 g\(group)"), listing.stdout)
            XCTAssertTrue(listing.stdout.contains("vlq format 1.1"), listing.stdout)
            let reader = Repo.root.appendingPathComponent("tools/vlq_reader.py").path
            let pythonCheck = try python([reader, "check", output])
            XCTAssertEqual(pythonCheck.status, 0, pythonCheck.stderr)
            kld[output] = try drift(output).meanKLD
            let c = Reference.cases[0]
            let answer = try vlq("run", output, "--image", c.image, "--prompt", c.question, "--max-tokens", "8")
            XCTAssertEqual(answer.status, 0, answer.stderr)
            XCTAssertFalse(answer.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty)
        }
        XCTAssertLessThan(kld[gptq]!, kld[rtn]!)
        XCTAssertLessThan(kld[gptq]!, 0.0030, "llama.cpp Q4_0 with imatrix on these cases, at 4.5 bits")
        // A bundle without q3 stays format 1.0.
        XCTAssertEqual(try VLQFile(path: bundle).header.minorVersion, 0)
    }

    func testStatisticsAreSumsSoHalvesMergeIntoTheWhole() throws {
        let scratch = try Scratch()
        let engine = EngineParityTests.folderEngine
        let all = try CalibrationSet(path: Self.calibrationSet)
        var first = all, second = all
        first.samples = Array(all.samples.prefix(10))
        second.samples = Array(all.samples.dropFirst(10))
        // Two halves are two sets (two manifests, two digests): merge refuses a set it already holds.
        (first.digest, second.digest) = ("00000000000000a1", "00000000000000b2")
        for (set, name) in [(first, "a"), (second, "b"), (all, "all")] {
            let c = try CalibrationRunner.collect(engine: engine, set: set, withGram: false)
            try StatisticsFile(collector: c, setDigest: set.digest, samples: set.samples.count, model: "tiny").write(
                to: scratch.file(name + ".vlqstats"))
        }
        let merged = try vlq(
            "calibrate", "--merge", scratch.file("a.vlqstats"), scratch.file("b.vlqstats"), "-o",
            scratch.file("ab.vlqstats"))
        XCTAssertEqual(merged.status, 0, merged.stderr)
        let ab = try StatisticsFile.read(scratch.file("ab.vlqstats")),
            whole = try StatisticsFile.read(scratch.file("all.vlqstats"))
        XCTAssertEqual(ab.samples, 32)
        XCTAssertEqual(Set(ab.statistics.keys), Set(whole.statistics.keys))
        for (name, s) in whole.statistics {
            let m = ab.statistics[name]!
            XCTAssertEqual(m.rows, s.rows, name)
            for j in 0..<s.columns {
                XCTAssertEqual(m.sumSquares[j], s.sumSquares[j], accuracy: 1e-9 * max(1, s.sumSquares[j]), name)
            }
        }
    }

    func testBadQuantizeInputsAreClearErrors() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        try #"{"rules": [{"match": "*", "encoding": "q2"}]}"#.write(
            toFile: scratch.file("bad.json"), atomically: true, encoding: .utf8)
        let badRecipe = try vlq("quantize", bundle, "-o", scratch.file("q.vlq"), "--recipe", scratch.file("bad.json"))
        XCTAssertEqual(badRecipe.status, 2)
        XCTAssertTrue(badRecipe.stderr.contains("bad.json: rule 1: unknown encoding \"q2\""), badRecipe.stderr)
        let uncalibrated = try vlq(
            "quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int4", "--method", "gptq")
        XCTAssertEqual(uncalibrated.status, 2)
        XCTAssertTrue(uncalibrated.stderr.contains("--set"), uncalibrated.stderr)
        try writeBytes(Array("garbage".utf8), to: scratch.file("bad.vlqstats"))
        let badStats = try vlq(
            "quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int4", "--method", "imatrix", "--stats",
            scratch.file("bad.vlqstats"))
        XCTAssertEqual(badStats.status, 2)
        XCTAssertTrue(badStats.stderr.contains("bad.vlqstats: not a .vlqstats file"), badStats.stderr)
        XCTAssertEqual(try vlq("quantize", bundle, "-o", scratch.file("q8.vlq"), "--preset", "int8", "-q").status, 0)
        let twice = try vlq("quantize", scratch.file("q8.vlq"), "-o", scratch.file("q.vlq"), "--preset", "int4")
        XCTAssertEqual(twice.status, 2)
        XCTAssertTrue(twice.stderr.contains("is already quantized"), twice.stderr)
        XCTAssertFalse(scratch.listing().contains("q.vlq"))
    }
}

extension QuantizeEndToEndTests {
    /// A model whose X^T X statistics exceed the memory budget is calibrated in windows of layers, one
    /// pass each: the result is the same bundle, tensor for tensor, as with everything at once.
    func testWindowedCalibrationGivesTheSameTensorsAsOnePass() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        var set = try CalibrationSet(path: Self.calibrationSet)
        set.samples = Array(set.samples.prefix(6))
        let engine = try YiVLEngine.open(bundle)
        let onePass = StoredStatistics(
            StatisticsFile(
                collector: try CalibrationRunner.collect(engine: engine, set: set, withGram: true),
                setDigest: set.digest, samples: 6, model: bundle))
        let windowed = try WindowedStatistics(engine: engine, set: set, budget: 3 << 20)
        for method in [QuantizationMethod.gptq, .awq] {
            var recipe = Recipe.int4()
            recipe.method = method
            let pipeline = QuantizePipeline(options: .init(recipe: recipe))
            _ = try pipeline.run(
                source: try VLQFile(path: bundle), output: scratch.file("one.vlq"), statistics: onePass,
                calibrationSource: nil)
            _ = try pipeline.run(
                source: try VLQFile(path: bundle), output: scratch.file("windows.vlq"), statistics: windowed,
                calibrationSource: nil)
            let a = try VLQFile(path: scratch.file("one.vlq")), b = try VLQFile(path: scratch.file("windows.vlq"))
            XCTAssertEqual(a.tensors.map(\.checksum), b.tensors.map(\.checksum), method.rawValue)
        }
        XCTAssertGreaterThan(windowed.passes, 3, "a 3 MiB budget holds a few layers per pass")
    }
}
