import Foundation
import VLQCore
import XCTest

/// A new user's first hour (issue 11): each test is one friction point found by trying vlq as someone
/// coming from llama.cpp, mlx_lm or llm-compressor would, and what vlq does about it now.
final class FirstHourTests: XCTestCase {
    /// Every error is one line: `vlq: error: ...`.
    func assertOneErrorLine(
        _ result: ProcessResult, status: Int32 = 2, contains text: String,
        file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(result.status, status, result.stderr, file: file, line: line)
        let lines = result.stderr.split(separator: "\n")
        XCTAssertEqual(lines.count, 1, result.stderr, file: file, line: line)
        XCTAssertTrue(result.stderr.hasPrefix("vlq: error: "), result.stderr, file: file, line: line)
        XCTAssertTrue(result.stderr.contains(text), result.stderr, file: file, line: line)
    }

    /// The first `rows` lines of the fixture's calibration manifest, with absolute image paths.
    func writeCalibrationSet(rows count: Int, to path: String) throws {
        let manifest = try String(contentsOfFile: Reference.data + "/calibration.jsonl", encoding: .utf8)
        let rows = manifest.split(separator: "\n").prefix(count).map {
            $0.replacingOccurrences(of: "\"calibration/", with: "\"" + Reference.data + "/calibration/")
        }
        try (rows.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
    }

    // 1. `--rank-layers` with a stored reference ran the whole evaluation before failing.
    func testRankingLayersAgainstAStoredReferenceIsAUsageErrorBeforeAnyWork() throws {
        let scratch = try Scratch()
        let result = try vlq(
            "verify", "--reference", scratch.file("ref.vlqref"), "--candidate", scratch.file("c.vlq"),
            "--set", scratch.file("eval.jsonl"), "--rank-layers", "8", "--json", scratch.file("d.json"))
        assertOneErrorLine(result, contains: "--rank-layers needs --reference to be a model")
        XCTAssertEqual(result.stdout, "", "nothing was evaluated")
    }

    // 2. Calibration given to a preset without a method was silently ignored (rtn).
    func testCalibrationWithoutAMethodQuantizesWithGPTQAndSaysSo() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq"), output = scratch.file("int4.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let set = scratch.file("calibration.jsonl")
        try writeCalibrationSet(rows: 2, to: set)
        let result = try vlq("quantize", bundle, "-o", output, "--preset", "int4", "--set", set)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stderr.contains("no --method: quantizing with gptq"), result.stderr)
        XCTAssertTrue(result.stderr.contains("calibration pass 1: 2 of 2 samples"), "calibration shows progress")
        XCTAssertTrue(try vlq("inspect", output).stdout.contains("method gptq"))

        let ignored = try vlq(
            "quantize", bundle, "-o", scratch.file("rtn.vlq"), "--preset", "int8",
            "--method", "rtn", "--set", set, "-q")
        XCTAssertEqual(ignored.status, 0, ignored.stderr)
        XCTAssertTrue(ignored.stderr.contains("method rtn uses no calibration: --set is ignored"), ignored.stderr)
    }

    // 3. `quantize m.vlq -o m.vlq` replaced its own input.
    func testAnOutputThatIsAnInputIsRefusedAndTheInputKept() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("m.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let before = try readBytes(bundle)
        assertOneErrorLine(
            try vlq("quantize", bundle, "-o", bundle, "--preset", "int8"), contains: "\(bundle): is also an input")
        // The same file under another name is the same file.
        let link = scratch.file("link.vlq")
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: bundle)
        assertOneErrorLine(try vlq("quantize", bundle, "-o", link, "--preset", "int8"), contains: "is also an input")
        XCTAssertEqual(try readBytes(bundle), before)
    }

    // 6. `vlq conver M -o x` said "Unknown option '-o'".
    func testAMistypedSubcommandGetsASuggestion() throws {
        assertOneErrorLine(
            try vlq("conver", Repo.tinyModel, "-o", "/tmp/x.vlq"),
            contains: "unknown subcommand 'conver'; did you mean 'convert'?")
        assertOneErrorLine(try vlq("quantise", "m.vlq"), contains: "did you mean 'quantize'?")
        assertOneErrorLine(try vlq("frobnicate"), contains: "unknown subcommand 'frobnicate' (subcommands: convert,")
    }

    // 7. Usage errors took three lines, a failed check and a broken bound had their own prefixes.
    func testUsageErrorsAreOneLineNamingTheHelpToRead() throws {
        assertOneErrorLine(try vlq("convert", Repo.tinyModel), contains: "(see vlq convert --help)")
        assertOneErrorLine(
            try vlq("convert", Repo.tinyModel, "-o", "/tmp/x.vlq", "--dtype", "int3"), contains: "int3")
        assertOneErrorLine(try vlq("bench", Repo.tinyModel, "--threads", "0"), contains: "--threads")
        XCTAssertEqual(try vlq("--help").status, 0)
        XCTAssertEqual(try vlq("convert", "--help").status, 0)
    }

    // 8. Quantizing showed no progress.
    func testQuantizeShowsProgressAsABarALineOrNotAtAll() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let quantize = { (choice: String) in
            try vlq("quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int4", "--progress", choice)
        }
        let bar = try quantize("always")
        XCTAssertTrue(bar.stderr.contains("quantize [") && bar.stderr.contains("tensors"), bar.stderr)
        XCTAssertTrue(bar.stderr.contains("ETA"), bar.stderr)
        let piped = try quantize("auto")
        XCTAssertTrue(piped.stderr.contains("vlq: info: quantize: 118 of 118 tensors"), piped.stderr)
        let none = try quantize("never")
        XCTAssertFalse(none.stderr.contains("quantize:") || none.stderr.contains("quantize ["), none.stderr)
        XCTAssertEqual(none.status, 0)
    }

    // 12. `inspect` and `check` refused a Hugging Face folder that run and quantize accept.
    func testInspectAndCheckTakeAHuggingFaceFolderAndListWhatConvertWouldWrite() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let folder = try JSONValue.parse(Array(try vlq("inspect", Repo.tinyModel, "--json").stdout.utf8))
        let converted = try JSONValue.parse(Array(try vlq("inspect", bundle, "--json").stdout.utf8))
        let fields = { (listing: JSONValue) in
            (listing["tensors"]?.arrayValue ?? []).map { t in
                ["name", "component", "encoding", "bytes"].map { t[$0].map { "\($0)" } ?? "-" }.joined(separator: " ")
            }
        }
        XCTAssertEqual(fields(folder).count, 118)
        XCTAssertEqual(fields(folder), fields(converted))
        XCTAssertEqual(folder["totals"]?["bytes"], converted["totals"]?["bytes"])
        let text = try vlq("inspect", Repo.tinyModel, "--summary")
        XCTAssertTrue(
            text.stdout.contains("Hugging Face Yi-VL folder, 3 weight files; convert would write:"), text.stdout)

        for model in [Repo.tinyModel, Repo.tinyModel + "-bin"] {
            let checked = try vlq("check", model, "--values")
            XCTAssertEqual(checked.status, 0, checked.stderr)
            XCTAssertTrue(checked.stdout.contains("OK: 3 weight files, 118 tensors"), checked.stdout)
        }
        // A shard cut short is a failed check naming the file.
        let damaged = try scratch.copyOfTinyModel()
        let shard = damaged + "/vit/clip-vit-tiny-yivl-84/model.safetensors"
        let bytes = try readBytes(shard)
        try writeBytes(Array(bytes.prefix(bytes.count - 100)), to: shard)
        let result = try vlq("check", damaged)
        XCTAssertEqual(result.status, 1, result.stderr)
        XCTAssertTrue(result.stderr.hasPrefix("vlq: error: \(shard): "), result.stderr)
    }

    // Polish: merging a file with itself double-counted; a layer never run printed a fallback per tensor.
    func testMergingTheSameSetTwiceIsRefusedAndFallbacksShareALine() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq"), stats = scratch.file("a.vlqstats")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let set = scratch.file("set.jsonl")
        try writeCalibrationSet(rows: 2, to: set)
        XCTAssertEqual(try vlq("calibrate", bundle, "--set", set, "-o", stats, "-q").status, 0)
        try FileManager.default.copyItem(atPath: stats, toPath: scratch.file("copy.vlqstats"))
        assertOneErrorLine(
            try vlq("calibrate", "--merge", stats, scratch.file("copy.vlqstats"), "-o", scratch.file("m.vlqstats")),
            contains: "already merged: its samples would count twice")
        XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.file("m.vlqstats")))

        let quantized = try vlq(
            "quantize", bundle, "-o", scratch.file("q.vlq"), "--preset", "int4", "--stats", stats, "--progress", "never"
        )
        XCTAssertEqual(quantized.status, 0, quantized.stderr)
        let fallbacks = quantized.stderr.split(separator: "\n").filter { $0.contains("fallback") }
        XCTAssertEqual(fallbacks.count, 1, quantized.stderr)
    }

    // 10. `convert -o <existing folder>` failed only after the whole conversion.
    func testAFolderAsOutputIsRefusedBeforeConverting() throws {
        let scratch = try Scratch()
        assertOneErrorLine(
            try vlq("convert", Repo.tinyModel, "-o", scratch.path), contains: "\(scratch.path): is a folder")
        assertOneErrorLine(
            try vlq("convert", Repo.tinyModel, "-o", scratch.file("absent/x.vlq")), contains: "does not exist")
        XCTAssertEqual(scratch.listing(), [])
    }

    // 11 (part). `--json -` wrote a file named "-".
    func testVerifyWritesItsJSONToStdoutWithTheLinesOnStderr() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let result = try vlq(
            "verify", "--reference-dir", Reference.data + "/reference", "--candidate", bundle, "--json", "-", "-q")
        XCTAssertEqual(result.status, 0, result.stderr)
        let json = try JSONValue.parse(Array(result.stdout.utf8))
        XCTAssertNotNil(json["candidate"], result.stdout)
        XCTAssertTrue(result.stderr.contains("candidate"), result.stderr)
        XCTAssertFalse(FileManager.default.fileExists(atPath: "-"))
    }
}

/// 4. Recipe typos passed: unknown keys were ignored and a glob matching nothing quantized nothing.
final class StrictRecipeTests: XCTestCase {
    func quantize(with recipe: String, _ scratch: Scratch, bundle: String) throws -> ProcessResult {
        try recipe.write(toFile: scratch.file("recipe.json"), atomically: true, encoding: .utf8)
        return try vlq("quantize", bundle, "-o", scratch.file("out.vlq"), "--recipe", scratch.file("recipe.json"))
    }

    func testMisspeltKeysPatternsMatchingNothingAndShadowedRulesAreRefusedNamingTheRule() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("fp.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        let recipe = scratch.file("recipe.json")
        let cases: [(json: String, error: String)] = [
            (
                #"{"rules": [{"match": "model.layers.*", "encoding": "q4", "groupsize": 64}]}"#,
                #"rule 1: unknown key "groupsize"; did you mean "group_size"?"#
            ),
            (
                #"{"name": "x", "metod": "gptq", "rules": [{"match": "*", "encoding": "q8"}]}"#,
                #"did you mean "method"?"#
            ),
            (
                #"{"rules": [{"match": "model.layer.*", "encoding": "q4"}, {"match": "*", "encoding": "q8"}]}"#,
                #"rule 1 (match "model.layer.*") matches no tensor of the model"#
            ),
            (
                #"{"rules": [{"match": "*", "encoding": "q8"}, "#
                    + #"{"component": "language", "match": "*", "encoding": "q4"}]}"#,
                #"rule 2 (component "language", match "*") never applies: rule 1 (match "*") decides every tensor"#
            ),
        ]
        for c in cases {
            let result = try quantize(with: c.json, scratch, bundle: bundle)
            XCTAssertEqual(result.status, 2, c.json)
            XCTAssertTrue(result.stderr.hasPrefix("vlq: error: \(recipe): "), result.stderr)
            XCTAssertTrue(result.stderr.contains(c.error), "\(c.json)\n\(result.stderr)")
            XCTAssertFalse(FileManager.default.fileExists(atPath: scratch.file("out.vlq")))
        }
        // The shipped variants and the presets decide every rule on the real layout.
        let folder = Repo.root.appendingPathComponent("formats/recipes").path
        for name in try FileManager.default.contentsOfDirectory(atPath: folder).sorted() {
            let result = try vlq(
                "quantize", bundle, "-o", scratch.file(name + ".vlq"), "--recipe", folder + "/" + name,
                "--method", "rtn", "-q")
            XCTAssertEqual(result.status, 0, "\(name): \(result.stderr)")
        }
    }
}

/// 5 and 13: prompts past the context ran into garbage; stdin, a second image and an empty prompt.
final class RunInputTests: XCTestCase {
    let image = Reference.data + "/eval/" + "eval-000.png"

    func testAPromptPastTheContextIsRefusedBeforeAnyWorkAndMaxTokensIsClippedWithAWarning() throws {
        let long = String(repeating: "describe the shapes ", count: 1300)
        let refused = try vlq("run", Repo.tinyModel, "--image", image, "--prompt", long)
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.hasPrefix("vlq: error: \(Repo.tinyModel): the prompt takes "), refused.stderr)
        XCTAssertTrue(refused.stderr.contains("and the model's context is 4096"), refused.stderr)
        XCTAssertEqual(refused.stdout, "")

        let nearlyFull = String(repeating: "describe the shapes ", count: 740)
        let clipped = try vlq("run", Repo.tinyModel, "--image", image, "--prompt", nearlyFull, "--max-tokens", "4000")
        XCTAssertEqual(clipped.status, 0, clipped.stderr)
        XCTAssertTrue(clipped.stderr.contains("--max-tokens 4000 clipped to "), clipped.stderr)
    }

    func testTheQuestionMayComeFromStdinAndEmptyQuestionsOrTwoImagesAreRefused() throws {
        let direct = try vlq("run", Repo.tinyModel, "--image", image, "--prompt", "What shapes are in the image?", "-q")
        XCTAssertEqual(direct.status, 0, direct.stderr)
        let fromStdin = try vlq(
            input: Data("What shapes are in the image?\n".utf8), "run", Repo.tinyModel, "--image", image, "--prompt",
            "-", "-q")
        XCTAssertEqual(fromStdin.status, 0)
        XCTAssertEqual(fromStdin.stdout, direct.stdout)

        let imageFromStdin = try vlq(
            input: try Data(contentsOf: URL(fileURLWithPath: image)), "run", Repo.tinyModel, "--image", "-",
            "--prompt", "What shapes are in the image?", "-q")
        XCTAssertEqual(imageFromStdin.status, 0)
        XCTAssertEqual(imageFromStdin.stdout, direct.stdout, "--image - reads the same image from stdin")
        let bothFromStdin = try vlq("run", Repo.tinyModel, "--image", "-", "--prompt", "-")
        XCTAssertEqual(bothFromStdin.status, 2)

        let empty = try vlq("run", Repo.tinyModel, "--image", image, "--prompt", "  ")
        XCTAssertEqual(empty.status, 2)
        XCTAssertTrue(empty.stderr.contains("--prompt is empty"), empty.stderr)
        let twoImages = try vlq("run", Repo.tinyModel, "--image", image, "--image", image, "--prompt", "What?")
        XCTAssertEqual(twoImages.status, 2)
        XCTAssertTrue(twoImages.stderr.contains("give one --image"), twoImages.stderr)
    }
}
