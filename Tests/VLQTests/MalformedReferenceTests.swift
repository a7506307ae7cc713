import Calibration
import Foundation
import SafeTensors
import VLQCore
import Verification
import XCTest

/// A `.vlqref` is read back from disk and compared against a candidate and a set: counts, token ids
/// and sample numbers in it must fit, or the comparison stops with an error naming the file.
final class MalformedReferenceTests: XCTestCase {
    static let folder = NSTemporaryDirectory() + "vlq-malformed-reference-\(getpid())"
    static let setPath: String = {
        try! FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let lines = try! String(contentsOfFile: Reference.data + "/eval.jsonl", encoding: .utf8)
        let line = lines.split(separator: "\n")[0]
        let path = folder + "/one.jsonl"
        try! (line.replacingOccurrences(of: "\"eval/", with: "\"" + Reference.data + "/eval/") + "\n")
            .write(toFile: path, atomically: true, encoding: .utf8)
        return path
    }()
    static let set = try! CalibrationSet(path: setPath)
    static let engine = EngineParityTests.bundleEngine
    /// The tiny model's own run on one sample, with its layer states, as `vlq reference` stores it.
    static let referencePath: String = {
        let run = try! ReferenceRun.run(engine: engine, set: set, model: "tiny", layerSamples: 1, maxTokens: 4)
        let path = folder + "/good.vlqref"
        try! run.write(to: path)
        return path
    }()

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: folder)
        super.tearDown()
    }

    /// The good reference with `edit` applied to its tensors and its per-sample metadata.
    func edited(
        _ name: String,
        _ edit: (inout SafeTensorsWriter, inout [[String: JSONValue]]) -> Void
    ) throws -> String {
        let file = try CompressedSafeTensors.read(Self.referencePath, format: "vlqref 1", kind: ".vlqref")
        var writer = SafeTensorsWriter()
        for t in file.tensors {
            writer.add(.init(name: t.name, dtype: t.dtype, shape: t.shape, bytes: Array(file.data(t))))
        }
        writer.metadata = file.metadata
        var samples = try XCTUnwrap(JSONValue.parse(file.metadata["samples"]!).arrayValue?.map { $0.objectValue! })
        edit(&writer, &samples)
        writer.metadata["samples"] = JSONValue.array(samples.map { .object($0) }).serialized()
        let path = Self.folder + "/" + name
        try CompressedSafeTensors.write(writer, to: path)
        return path
    }

    func compare(_ path: String, set: CalibrationSet = MalformedReferenceTests.set) throws -> RunComparison {
        try RunComparison.run(candidate: Self.engine, reference: try ReferenceRun.read(path), set: set, maxTokens: 4)
    }

    func testTheUneditedReferenceComparesClean() throws {
        let run = try ReferenceRun.read(try edited("same.vlqref") { _, _ in })
        let c = try RunComparison.run(candidate: Self.engine, reference: run, set: Self.set, maxTokens: 4)
        XCTAssertEqual(c.samples.count, 1)
        XCTAssertLessThan(c.logits.meanKLD, 1e-9)
        XCTAssertEqual(c.decoderLayerDrift.count, 4)
    }

    /// Layer counts become ranges of tensors to read: negative ones trapped, huge ones aborted
    /// reserving the array.
    func testCountsInTheMetadataMustBeCountsOfItsTensors() throws {
        let cases: [(String, JSONValue, String)] = [
            ("vision_layers", -1, "sample 0: vision_layers -1 is not a count of its tensors"),
            ("vision_layers", .int(1 << 40), "sample 0: vision_layers 1099511627776 is not a count"),
            ("decoder_layers", .int(Int64.max), "sample 0: decoder_layers 9223372036854775807 is not a count"),
            ("decoder_layers", "four", "sample 0: decoder_layers \"four\" is not a count"),
            ("logits_start", -5, "sample 0: logits_start -5 is negative"),
        ]
        for (key, value, phrase) in cases {
            let path = try edited("counts.vlqref") { _, samples in samples[0][key] = value }
            assertVLQError(
                try ReferenceRun.read(path), kind: VerificationError.invalidReference,
                contains: [path + ": " + phrase])
        }
    }

    func testTokenIdsMustBeTokenIds() throws {
        let negative = try edited("negative.vlqref") { w, _ in
            w.tensors.removeAll { $0.name == "s0.answer_ids" }
            w.add(.i64("s0.answer_ids", [2], [5, -1]))
        }
        assertVLQError(
            try ReferenceRun.read(negative), kind: VerificationError.invalidReference,
            contains: [negative + ": s0.answer_ids holds token id -1"])
        let floats = try edited("floats.vlqref") { w, _ in
            w.tensors.removeAll { $0.name == "s0.answer_ids" }
            w.add(.f32("s0.answer_ids", [2], [5, 6]))
        }
        assertVLQError(
            try ReferenceRun.read(floats),
            kind: VerificationError.invalidReference,
            contains: [floats + ": missing s0.answer_ids, or it is not a 1-D I64"])

        // Beyond the candidate's vocabulary: it indexed past a row of logits.
        let beyond = try edited("beyond.vlqref") { w, _ in
            w.tensors.removeAll { $0.name == "s0.answer_ids" }
            w.add(.i64("s0.answer_ids", [1], [5000]))
        }
        assertVLQError(
            try compare(beyond),
            kind: VerificationError.referenceMismatch,
            contains: [beyond + ": sample 0: answer token id 5000 is outside the vocabulary of 1000"])
    }

    func testARunThatDoesNotFitTheSetIsAnError() throws {
        // More answer tokens than logit rows: the first answer row would be negative.
        let long = try edited("long.vlqref") { w, _ in
            w.tensors.removeAll { $0.name == "s0.answer_ids" }
            w.add(.i64("s0.answer_ids", [400], Array(repeating: 7, count: 400)))
        }
        assertVLQError(
            try compare(long),
            kind: VerificationError.referenceMismatch,
            contains: [long + ": sample 0:", "for the prompt and 400 answer tokens"])

        // Two samples for a one-sample set: the second indexed past the set.
        let two = try edited("two.vlqref") { w, samples in
            for t in w.tensors where t.name.hasPrefix("s0.") {
                w.add(.init(name: "s1." + t.name.dropFirst(3), dtype: t.dtype, shape: t.shape, bytes: t.bytes))
            }
            samples.append(samples[0])
        }
        XCTAssertEqual(try ReferenceRun.read(two).samples.count, 2)
        assertVLQError(
            try compare(two),
            kind: VerificationError.setMismatch, contains: [two + ": holds 2 samples, but the set has 1"])

        // A second sample storing fewer layer states than the first: the sums are per layer.
        let uneven = try edited("uneven.vlqref") { w, samples in
            for t in w.tensors where t.name.hasPrefix("s0.") {
                w.add(.init(name: "s1." + t.name.dropFirst(3), dtype: t.dtype, shape: t.shape, bytes: t.bytes))
            }
            samples.append(samples[0])
            samples[0]["decoder_layers"] = 2
        }
        var twoSamples = Self.set
        twoSamples.samples += Self.set.samples
        assertVLQError(
            try compare(uneven, set: twoSamples),
            kind: VerificationError.invalidReference,
            contains: [uneven + ": samples store the states of different numbers of layers"])
    }

    func testVerifyReportsABadReferenceAsAnInputError() throws {
        let scratch = try Scratch()
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", scratch.file("fp.vlq"), "-q").status, 0)
        let beyond = try edited("cli.vlqref") { w, _ in
            w.tensors.removeAll { $0.name == "s0.answer_ids" }
            w.add(.i64("s0.answer_ids", [1], [1 << 40]))
        }
        let result = try vlq(
            "verify", "--reference", beyond, "--candidate", scratch.file("fp.vlq"),
            "--set", Self.setPath, "--json", scratch.file("d.json"), "-q")
        XCTAssertEqual(result.status, 2, result.stderr)
        XCTAssertEqual(
            result.stderr,
            "vlq: error: \(beyond): sample 0: answer token id 1099511627776 is outside "
                + "the vocabulary of 1000\n")
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.file("d.json")))
    }
}
