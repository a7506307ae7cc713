import Allocation
import Calibration
import Foundation
import Quantization
import VLQCore
import VLQFormat
import Verification
import XCTest
import YiVL

/// `vlq quantize --max-kld / --target-bits / --max-size` on the tiny Yi-VL: the precision of each layer
/// chosen from its measured drift, and the bound checked on calibration samples the search never used.
final class AllocationSearchTests: XCTestCase {
    static let calibrationSet = Reference.data + "/calibration.jsonl"

    func record(_ bundle: String) throws -> AllocationRecord {
        let file = try VLQFile(path: bundle)
        return try AllocationRecord(
            json: try XCTUnwrap(file.metadata["quantization"]?["allocation"]), source: bundle)
    }

    func testTheBoundHoldsOnTheHeldOutSamplesEndToEnd() throws {
        let scratch = try Scratch()
        let output = scratch.file("allocated.vlq")
        let result = try vlq(
            "quantize", Repo.tinyModel, "--set", Self.calibrationSet, "--max-kld", "1e-3", "-o", output, "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(scratch.listing(), ["allocated.vlq"], "scratch bundles and the conversion are removed")
        XCTAssertEqual(try vlq("check", output).status, 0)
        let r = try record(output)
        XCTAssertEqual(r.goal, .maxKLD(1e-3))
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

        // Each unit's recorded choice is what the bundle stores, and the sizes add up.
        let bundle = try VLQFile(path: output)
        let decoder0 = try XCTUnwrap(r.units.first { $0.name == "decoder layer 00" })
        let q = try XCTUnwrap(bundle.record("model.layers.0.mlp.down_proj.weight"))
        XCTAssertEqual("\(q.encoding.name) g\(q.groupSize)", decoder0.choice)
        XCTAssertEqual(r.predictedKLD, r.units.reduce(0) { $0 + $1.drift }, accuracy: 1e-12)
        let shown = try vlq("inspect", output)
        XCTAssertTrue(shown.stdout.contains("allocation for mean KLD <= 1.00e-03"), shown.stdout)
        XCTAssertTrue(shown.stdout.contains("decoder layer 00: \(decoder0.choice)"), shown.stdout)
    }

    func testATargetSizeIsNeverExceeded() throws {
        let scratch = try Scratch()
        let fp = scratch.file("fp.vlq"), output = scratch.file("allocated.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", fp, "-q").status, 0)
        let result = try vlq(
            "quantize", fp, "--set", Self.calibrationSet, "--target-bits", "5", "--method", "rtn", "-o", output, "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let r = try record(output)
        XCTAssertLessThanOrEqual(r.bitsPerWeight, 5)
        XCTAssertGreaterThan(r.bitsPerWeight, 4.5, "the budget is used, not left over")
        XCTAssertEqual(r.units.map(\.bytes).reduce(0, +), r.bytes)
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
