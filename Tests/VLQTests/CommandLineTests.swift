import Foundation
import VLQCore
import XCTest

/// The `vlq` executable, end to end on the tiny model, and the Python reader on its bundles.
final class CommandLineTests: XCTestCase {
    func testConvertThenInspectAndCheck() throws {
        let scratch = try Scratch()
        let output = scratch.file("tiny.vlq")
        let converted = try vlq("convert", Repo.tinyModel, "-o", output)
        XCTAssertEqual(converted.status, 0, converted.stderr)
        XCTAssertTrue(converted.stderr.contains("vision tower copy (71 tensors)"), converted.stderr)
        XCTAssertTrue(converted.stderr.contains("wrote \(output): 118 tensors"), converted.stderr)

        let checked = try vlq("check", output)
        XCTAssertEqual(checked.status, 0, checked.stderr)
        XCTAssertTrue(checked.stdout.contains("OK"))

        let inspected = try vlq("inspect", output, "--json")
        XCTAssertEqual(inspected.status, 0, inspected.stderr)
        let json = try JSONValue.parse(inspected.stdout)
        let components = try XCTUnwrap(json["components"]?.arrayValue)
        XCTAssertEqual(components.compactMap { $0["name"]?.stringValue }, ["vision", "projector", "language"])
        XCTAssertEqual(components.compactMap { $0["tensors"]?.intValue }, [71, 8, 39])
        XCTAssertEqual(components[0]["bits_per_weight"]?.doubleValue, 32)
        XCTAssertEqual(components[2]["bits_per_weight"]?.doubleValue, 16)
        let tensors = try XCTUnwrap(json["tensors"]?.arrayValue)
        XCTAssertEqual(tensors.count, 118)
        let head = try XCTUnwrap(tensors.first { $0["name"]?.stringValue == "lm_head.weight" })
        XCTAssertEqual(head["encoding"]?.stringValue, "bf16")
        XCTAssertEqual(head["shape"], [1000, 256])
        XCTAssertEqual(head["bytes"]?.intValue, 512_000)
        XCTAssertEqual(json["totals"]?["tensors"]?.intValue, 118)
        XCTAssertEqual(
            json["totals"]?["parameters"]?.intValue,
            tensors.compactMap { $0["shape"]?.arrayValue?.compactMap(\.intValue).reduce(1, *) }.reduce(0, +))
        XCTAssertEqual(json["totals"]?["bytes"]?.intValue, tensors.compactMap { $0["bytes"]?.intValue }.reduce(0, +))

        let text = try vlq("inspect", output)
        XCTAssertTrue(text.stdout.contains("language"))
        XCTAssertTrue(text.stdout.contains("model.layers.3.mlp.down_proj.weight"))
    }

    func testBadInputGivesOneLineExitTwoAndNoOutput() throws {
        let scratch = try Scratch()
        let model = try scratch.copyOfTinyModel()
        try FileManager.default.removeItem(atPath: model + "/model-00001-of-00002.safetensors")
        let result = try vlq("convert", model, "-o", scratch.file("out.vlq"))
        XCTAssertEqual(result.status, 2)
        let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("vlq: error:") }
        XCTAssertEqual(lines.count, 1, result.stderr)
        XCTAssertTrue(lines[0].contains("model-00001-of-00002.safetensors, which does not exist"), result.stderr)
        XCTAssertEqual(scratch.listing(), ["model"])
    }

    func testCheckExitsOneAndNamesTheDamagedTensor() throws {
        let scratch = try Scratch()
        let output = scratch.file("tiny.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", output, "-q").status, 0)
        var bytes = try readBytes(output)
        let listing = try JSONValue.parse(try vlq("inspect", output, "--json").stdout)
        let victim = try XCTUnwrap(
            listing["tensors"]?.arrayValue?.first { $0["name"]?.stringValue == "model.mm_projector.3.weight" })
        bytes[victim["offset"]!.intValue! + 17] ^= 0x80
        try writeBytes(bytes, to: output)
        let result = try vlq("check", output)
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("tensor model.mm_projector.3.weight: checksum mismatch"), result.stderr)
        XCTAssertTrue(result.stderr.hasPrefix("vlq: error: \(output): "), result.stderr)

        // A bundle that cannot be opened is bad input (CoreError.cannotOpen), not a check that failed.
        let absent = scratch.file("missing.vlq")
        let missing = try vlq("check", absent)
        XCTAssertEqual(missing.status, 2)
        XCTAssertTrue(missing.stderr.hasPrefix("vlq: error: \(absent): cannot open"), missing.stderr)

        try writeBytes(Array(bytes.prefix(bytes.count - 1)), to: output)
        let truncated = try vlq("check", output)
        XCTAssertEqual(truncated.status, 1)
        XCTAssertTrue(truncated.stderr.contains("truncated"), truncated.stderr)
    }

    func testUsageErrorsExitTwo() throws {
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", "/tmp/x.vlq", "--dtype", "int3").status, 2)
        XCTAssertEqual(try vlq("frobnicate").status, 2)
        XCTAssertEqual(try vlq("bench", Repo.tinyModel, "--threads", "0").status, 2)
    }

    /// tools/vlq_reader.py, written from the spec with numpy only, reads what Swift writes.
    func testThePythonReaderVerifiesAndReadsEveryTensor() throws {
        let scratch = try Scratch()
        let output = scratch.file("tiny.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", output, "-q").status, 0)
        for hash in ["auto", "numpy"] {
            let checked = try python([Repo.readerScript, "check", output, "--hash", hash])
            XCTAssertEqual(checked.status, 0, checked.stderr)
            XCTAssertTrue(checked.stdout.contains("OK: 118 tensors verified"), checked.stdout)
        }
        // Every tensor, mapped by name without copying, equals the source safetensors values.
        let script = """
            import json, struct, sys
            import numpy as np
            sys.path.insert(0, sys.argv[1])
            from vlq_reader import VLQBundle
            bundle = VLQBundle(sys.argv[2])
            def load(path):
                data = open(path, "rb").read()
                n = struct.unpack("<Q", data[:8])[0]
                header = json.loads(data[8:8 + n])
                out = {}
                for name, t in header.items():
                    if name == "__metadata__":
                        continue
                    begin, end = t["data_offsets"]
                    raw = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=8 + n + begin)
                    if t["dtype"] == "BF16":
                        values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
                    else:
                        values = raw.view(np.float32)
                    out[name] = values.reshape(t["shape"])
                return out
            root = sys.argv[3]
            source = {}
            for shard in ["model-00001-of-00002", "model-00002-of-00002", "vit/clip-vit-tiny-yivl-84/model"]:
                source |= load(root + "/" + shard + ".safetensors")
            compared = 0
            for t in bundle.tensors:
                view = bundle.tensor(t.name, raw=True)
                assert not view.flags.owndata, t.name
                assert bundle.tensor(t.name).dtype == np.float32, t.name
                assert np.array_equal(bundle.tensor(t.name), source[t.name]), t.name
                compared += 1
            assert bundle.metadata["chat"]["image_token_index"] == -200
            print(f"compared {compared}")
            """
        try script.write(toFile: scratch.file("compare.py"), atomically: true, encoding: .utf8)
        let compared = try python([
            scratch.file("compare.py"), Repo.root.appendingPathComponent("tools").path, output, Repo.tinyModel,
        ])
        XCTAssertEqual(compared.status, 0, compared.stderr)
        XCTAssertEqual(compared.stdout.trimmingCharacters(in: .whitespacesAndNewlines), "compared 118")
    }

    /// Its command line as one expects of a tool: help per subcommand, quiet when piped into `head`, every
    /// value on request, float32 unless the stored elements are asked for.
    func testThePythonReaderCommandLine() throws {
        let scratch = try Scratch()
        let output = scratch.file("tiny.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", output, "-q").status, 0)
        let help = try python([Repo.readerScript, "dump", "--help"])
        XCTAssertTrue(help.stdout.contains("--full") && help.stdout.contains("--raw"), help.stdout)
        let name = "model.layers.0.mlp.up_proj.weight"
        let elided = try python([Repo.readerScript, "dump", output, name])
        XCTAssertTrue(elided.stdout.contains("..."), elided.stdout)
        XCTAssertTrue(elided.stderr.contains("--full prints every one"), elided.stderr)
        let full = try python([Repo.readerScript, "dump", output, name, "--full"])
        XCTAssertFalse(full.stdout.contains("..."))
        let raw = try python([Repo.readerScript, "dump", output, name, "--raw"])
        XCTAssertTrue(raw.stderr.contains("uint16"), raw.stderr)
        let piped = try VLQTests.run(
            "/bin/sh", ["-c", "python3 '\(Repo.readerScript)' dump '\(output)' \(name) --full | head -1"])
        XCTAssertEqual(piped.stderr, "", "no BrokenPipe traceback")
        let missing = try python([Repo.readerScript, "check", scratch.file("absent.vlq")])
        XCTAssertEqual(missing.status, 1)
        XCTAssertTrue(missing.stderr.hasPrefix("vlq_reader: error: "), missing.stderr)
    }

    func testThePythonReaderRejectsADamagedBundle() throws {
        let scratch = try Scratch()
        var bytes = try readBytes(Repo.goldenFolder + "/micro.vlq")
        bytes[bytes.count / 3] ^= 0x04
        try writeBytes(bytes, to: scratch.file("d.vlq"))
        let result = try python([Repo.readerScript, "check", scratch.file("d.vlq")])
        XCTAssertEqual(result.status, 1)
        XCTAssertTrue(result.stderr.contains("checksum mismatch"), result.stderr)
    }
}
