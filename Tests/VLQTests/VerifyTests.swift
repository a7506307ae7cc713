import Calibration
import Foundation
import VLQCore
import Verification
import XCTest

/// `vlq reference` and `vlq verify` as a gate.
final class VerifyTests: XCTestCase {
    func writeSet(_ scratch: Scratch, count: Int, name: String = "eval.jsonl") throws -> String {
        let lines = try String(contentsOfFile: Reference.data + "/eval.jsonl", encoding: .utf8).split(separator: "\n").prefix(count)
        let rewritten = lines.map { $0.replacingOccurrences(of: "\"eval/", with: "\"" + Reference.data + "/eval/") }
        try (rewritten.joined(separator: "\n") + "\n").write(toFile: scratch.file(name), atomically: true, encoding: .utf8)
        return scratch.file(name)
    }

    func testAgainstItsOwnReferenceTheBundleHasNoDriftAndTheGateHolds() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let set = try writeSet(scratch, count: 4)
        XCTAssertEqual(try vlq("reference", bundle, "--set", set, "-o", scratch.file("ref.vlqref"), "-q").status, 0)
        let result = try vlq("verify", "--reference", scratch.file("ref.vlqref"), "--candidate", bundle, "--set", set,
                             "--max-kld", "1e-9", "--min-same-top", "1", "--json", scratch.file("d.json"), "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try JSONValue.parse(try readBytes(scratch.file("d.json")))
        XCTAssertLessThan(json["run"]?["mean_kld"]?.doubleValue ?? 1, 1e-9)
        XCTAssertEqual(json["run"]?["answer_agreement"]?.doubleValue, 1)
        XCTAssertEqual(json["run"]?["decoder_layer_relative_l2"]?.arrayValue?.count, 4)
        XCTAssertEqual(json["run"]?["vision_layer_relative_l2"]?.arrayValue?.count, 3, "features come from hidden state 3")
        XCTAssertTrue(json["run"]!["decoder_layer_relative_l2"]!.arrayValue!.allSatisfy { ($0.doubleValue ?? 1) < 1e-6 })
    }

    func testABrokenBoundExitsOneAndSaysWhichAndAnotherSetIsRefused() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq"), int8 = scratch.file("int8.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        XCTAssertEqual(try vlq("quantize", bundle, "-o", int8, "--preset", "int8", "-q").status, 0)
        let set = try writeSet(scratch, count: 3)
        XCTAssertEqual(try vlq("reference", bundle, "--set", set, "-o", scratch.file("ref.vlqref"), "-q").status, 0)
        let broken = try vlq("verify", "--reference", scratch.file("ref.vlqref"), "--candidate", int8, "--set", set, "--max-kld", "1e-9", "-q")
        XCTAssertEqual(broken.status, 1)
        XCTAssertTrue(broken.stderr.contains("bound broken: mean KLD"), broken.stderr)
        let other = try writeSet(scratch, count: 2, name: "other.jsonl")
        let refused = try vlq("verify", "--reference", scratch.file("ref.vlqref"), "--candidate", int8, "--set", other, "-q")
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("the reference was computed on another set"), refused.stderr)
        let usage = try vlq("verify", "--candidate", int8)
        XCTAssertEqual(usage.status, 2)
    }

    func testReferenceDirectoryModeMeetsTheParityBarForTheUnquantizedBundle() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let result = try vlq("verify", "--reference-dir", Reference.data + "/reference", "--candidate", bundle,
                             "--max-kld", "1e-5", "--min-same-top", "1", "--min-cosine", "0.99999", "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("same top 100.00%"), result.stdout)
    }
}
