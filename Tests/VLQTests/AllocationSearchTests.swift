import Allocation
import Calibration
import Foundation
import Quantization
import VLQCore
import VLQFormat
import Verification
import XCTest
import YiVL

/// `vlq quantize --max-kld / --target-bits / --max-size` on the tiny Yi-VL: the precision of each decoder
/// Linear chosen from its measured drift, and the bound checked on calibration samples the search never used.
final class AllocationSearchTests: XCTestCase {
    static let calibrationSet = Reference.data + "/calibration.jsonl"

    func record(_ bundle: String) throws -> AllocationRecord {
        let file = try VLQFile(path: bundle)
        return try AllocationRecord(
            json: try XCTUnwrap(file.metadata["quantization"]?["allocation"]), source: bundle)
    }

    /// A few choices and two sensitivity samples instead of seven and sixteen: the search measures 28
    /// decoder Linears once per quantized choice and sample, and this keeps each search to seconds. The
    /// bound is still checked on samples the search never used, so a search that misjudges it still fails.
    static func cheap(_ choices: String) -> [String] { ["--choices", choices, "--sensitivity-samples", "2"] }

    func isDecoderLinear(_ t: TensorRecord) -> Bool { t.name.hasPrefix("model.layers.") && t.shape.count == 2 }

    func testTheBoundHoldsOnTheHeldOutSamplesEndToEnd() throws {
        let scratch = try Scratch()
        let output = scratch.file("allocated.vlq")
        let result = try VLQTests.run(
            Repo.vlqBinary,
            ["quantize", Repo.tinyModel, "--set", Self.calibrationSet, "--max-kld", "1e-3", "-o", output, "-q"]
                + Self.cheap("q3g64,q4g128,q8g128"))
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(scratch.listing(), ["allocated.vlq"], "scratch bundles and the conversion are removed")
        XCTAssertEqual(try vlq("check", output).status, 0)
        let r = try record(output)
        XCTAssertEqual(r.goal, .maxKLD(1e-3))
        XCTAssertEqual(r.scope, .llm, "the default scope")
        XCTAssertEqual(r.choices, ["q3 g64", "q4 g128", "q8 g128"])
        XCTAssertEqual(r.sensitivitySamples, 2)
        XCTAssertLessThanOrEqual(r.heldOutKLD, 1e-3)
        XCTAssertEqual(r.heldOutImages.count, 8, "every 4th of the 32 scenes")

        // The held-out figure, measured again here from the bundle as written against the source model.
        let set = try CalibrationSet(path: Self.calibrationSet)
        let search = MixedPrecisionSearch(options: .init(goal: .maxKLD(1e-3)))
        let heldOut = try search.split(set).heldOut
        XCTAssertEqual(heldOut.samples.map { $0.image.split(separator: "/").last.map(String.init)! }, r.heldOutImages)
        let reference = try ReferenceRun.run(
            engine: try YiVLEngine.open(Repo.tinyModel), set: heldOut, model: Repo.tinyModel, layerSamples: 0,
            maxTokens: 1)
        let measured = try RunComparison.run(
            candidate: try YiVLEngine.open(output), reference: reference, set: heldOut, maxTokens: 1
        ).logits.meanKLD
        XCTAssertEqual(measured, r.heldOutKLD, accuracy: 1e-9 * max(1, measured))
        XCTAssertLessThanOrEqual(measured, 1e-3)

        // The units are the decoder Linears, each stored in its recorded choice; bits count over them.
        let bundle = try VLQFile(path: output)
        let linears = bundle.tensors.filter(isDecoderLinear)
        XCTAssertEqual(r.units.map(\.name).sorted(), linears.map(\.name).sorted())
        for u in r.units {
            let t = try XCTUnwrap(bundle.record(u.name))
            XCTAssertEqual("\(t.encoding.name) g\(t.groupSize)", u.choice, u.name)
            XCTAssertEqual(t.byteCount, u.bytes, u.name)
        }
        let bits =
            8 * Double(linears.reduce(0) { $0 + $1.byteCount }) / Double(linears.reduce(0) { $0 + $1.elementCount })
        XCTAssertEqual(r.bitsPerWeight, bits, accuracy: 1e-9, "bits per LLM Linear weight")
        XCTAssertGreaterThan(r.fixedDrift, 0, "the rest is quantized (q8) and its drift counted")
        XCTAssertEqual(r.predictedKLD, r.fixedDrift + r.units.reduce(0) { $0 + $1.drift }, accuracy: 1e-12)
        let shown = try vlq("inspect", output)
        XCTAssertTrue(shown.stdout.contains("allocation for mean KLD <= 1.00e-03 over llm"), shown.stdout)
        let first = r.units[0]
        XCTAssertTrue(shown.stdout.contains("\(first.name): \(first.choice)"), shown.stdout)
    }

    /// With --allocate llm only the decoder Linears differ from the int4 preset: every other tensor has the
    /// preset's encoding and the very same bytes (rtn is deterministic, so the bundles can be compared).
    func testATargetSizeIsNeverExceededAndTheRestIsTheInt4Preset() throws {
        let scratch = try Scratch()
        let fp = scratch.file("fp.vlq"), output = scratch.file("allocated.vlq"), int4 = scratch.file("int4.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", fp, "-q").status, 0)
        let result = try VLQTests.run(
            Repo.vlqBinary,
            ["quantize", fp, "--set", Self.calibrationSet, "--target-bits", "5", "--method", "rtn", "-o", output, "-q"]
                + Self.cheap("q4g128,q8g128"))
        XCTAssertEqual(result.status, 0, result.stderr)
        let r = try record(output)
        XCTAssertLessThanOrEqual(r.bitsPerWeight, 5)
        XCTAssertGreaterThan(r.bitsPerWeight, 4.5, "the budget is used, not left over")
        XCTAssertEqual(r.units.map(\.bytes).reduce(0, +), r.bytes)

        XCTAssertEqual(try vlq("quantize", fp, "--preset", "int4", "--method", "rtn", "-o", int4, "-q").status, 0)
        let allocated = try VLQFile(path: output), preset = try VLQFile(path: int4)
        XCTAssertEqual(allocated.tensors.map(\.name), preset.tensors.map(\.name))
        var changed = 0
        for (a, p) in zip(allocated.tensors, preset.tensors) {
            if isDecoderLinear(a) {
                if a.encoding != p.encoding || a.groupSize != p.groupSize { changed += 1 }
                continue
            }
            XCTAssertEqual(a.encoding, p.encoding, a.name)
            XCTAssertEqual(a.groupSize, p.groupSize, a.name)
            XCTAssertEqual(a.checksum, p.checksum, a.name)
        }
        XCTAssertGreaterThan(changed, 0, "5 bits per LLM Linear weight is not the int4 preset's 4.25")
    }

    /// --allocate all: one unit per layer over every tensor the int8 preset quantizes (vision tower, projector,
    /// embeddings and lm_head too), the rest in float; --max-size counts the whole file.
    func testTheAllScopeChoosesPerLayerWithinAFileSize() throws {
        let scratch = try Scratch()
        let fp = scratch.file("fp.vlq"), output = scratch.file("allocated.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", fp, "-q").status, 0)
        let result = try VLQTests.run(
            Repo.vlqBinary,
            [
                "quantize", fp, "--set", Self.calibrationSet, "--allocate", "all", "--max-size", "4MB", "--method",
                "rtn", "-o", output, "-q",
            ] + Self.cheap("q4g128,q8g128"))
        XCTAssertEqual(result.status, 0, result.stderr)
        let size = try XCTUnwrap(FileManager.default.attributesOfItem(atPath: output)[.size] as? Int)
        XCTAssertLessThanOrEqual(size, 4_000_000, "the allocation record added after the search fits too")
        XCTAssertGreaterThan(size, 3_500_000, "the budget is used, not left over")
        let r = try record(output)
        XCTAssertEqual(r.goal, .maxBytes(4_000_000))
        XCTAssertEqual(r.scope, .all)
        XCTAssertEqual(r.fixedDrift, 0, "the rest is float")
        let names = Set(r.units.map(\.name))
        for expected in ["vision layer 00", "projector", "token embeddings", "lm_head", "decoder layer 03"] {
            XCTAssertTrue(names.contains(expected), "\(expected) in \(names)")
        }
        let bundle = try VLQFile(path: output)
        let projector = try XCTUnwrap(r.units.first { $0.name == "projector" })
        let stored = bundle.tensors.filter { $0.component == .projector && $0.encoding.isQuantized }
        XCTAssertEqual(stored.count, 2)
        for t in stored { XCTAssertEqual("\(t.encoding.name) g\(t.groupSize)", projector.choice, t.name) }
        XCTAssertEqual(
            r.units.map(\.parameters).reduce(0, +),
            bundle.tensors.filter { $0.encoding.isQuantized }.reduce(0) { $0 + $1.elementCount })
    }

    /// Records written before --allocate chose over every quantizable layer: they read as scope "all".
    func testARecordWithoutAScopeIsTheAllScope() throws {
        let r = AllocationRecord(
            goal: .targetBits(4.5), scope: .llm, choices: ["q4 g128"],
            units: [.init(name: "decoder layer 00", choice: "q4 g128", parameters: 128, bytes: 68, drift: 1e-4)],
            fixedDrift: 2e-5, predictedKLD: 1.2e-4, heldOutKLD: 1.5e-4, heldOutPositions: 10, heldOutEvery: 4,
            heldOutImages: ["a.png"], sensitivitySamples: 16, rounds: 1)
        XCTAssertEqual(try AllocationRecord(json: r.json, source: nil), r)
        guard case .object(var fields) = r.json else { return XCTFail("not an object") }
        fields["scope"] = nil
        fields["fixed_drift"] = nil
        let old = try AllocationRecord(json: .object(fields), source: nil)
        XCTAssertEqual(old.scope, .all)
        XCTAssertEqual(old.fixedDrift, 0)
        fields["scope"] = "vision"
        XCTAssertThrowsError(try AllocationRecord(json: .object(fields), source: nil))
    }

    func testGoalsAreUsageErrorsBeforeAnyWork() throws {
        let scratch = try Scratch()
        let output = scratch.file("out.vlq")
        let cases: [([String], String)] = [
            (["--max-kld", "1e-3"], "choosing precision needs --set"),
            (["--max-kld", "1e-3", "--target-bits", "4", "--set", Self.calibrationSet], "give one of --max-kld"),
            (["--max-kld", "1e-3", "--preset", "int4", "--set", Self.calibrationSet], "no --preset or --recipe"),
            (["--max-kld", "0", "--set", Self.calibrationSet], "--max-kld must be a positive number"),
            (["--max-size", "3.2XB", "--set", Self.calibrationSet], "3.2XB"),
            (["--target-bits", "4", "--method", "awq", "--set", Self.calibrationSet], "awq folds scales"),
            (["--preset", "int4", "--allocate", "all"], "--allocate, --choices and --sensitivity-samples go with"),
            (["--preset", "int4", "--choices", "q4g128"], "--allocate, --choices and --sensitivity-samples go with"),
            (["--max-kld", "1e-3", "--allocate", "vision", "--set", Self.calibrationSet], "'vision'"),
            (["--max-kld", "1e-3", "--choices", "q4g128,q5g64", "--set", Self.calibrationSet], "q4g128,q5g64"),
            (["--max-kld", "1e-3", "--sensitivity-samples", "0", "--set", Self.calibrationSet], "at least 1"),
        ]
        for (arguments, message) in cases {
            let result = try VLQTests.run(Repo.vlqBinary, ["quantize", Repo.tinyModel, "-o", output] + arguments)
            XCTAssertEqual(result.status, 2, "\(arguments)")
            XCTAssertTrue(result.stderr.contains(message), "\(arguments): \(result.stderr)")
            XCTAssertEqual(result.stderr.split(separator: "\n").count, 1, result.stderr)
            XCTAssertEqual(scratch.listing(), [])
        }
    }
}
