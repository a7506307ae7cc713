import Conversion
import Foundation
import SafeTensors
import VLQCore
import XCTest
import YiVL

/// The fp32 engine against Hugging Face transformers on the six reference cases: every accuracy
/// figure vlq reports rests on this.
final class EngineParityTests: XCTestCase {
    static let folderEngine = try! YiVLEngine.open(Repo.tinyModel)
    static let bundlePath: String = {
        let path = NSTemporaryDirectory() + "vlq-parity-\(getpid()).vlq"
        _ = try! Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: path)
        // Other test classes use this bundle after this class's tearDown: it goes when the process ends.
        atexit { unlink(NSTemporaryDirectory() + "vlq-parity-\(getpid()).vlq") }
        return path
    }()
    static let bundleEngine = try! YiVLEngine.open(bundlePath)

    /// max |a - b| <= 1e-3 (1 + max |reference|), the parity bound.
    func assertClose(
        _ actual: [Float], _ reference: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line
    ) {
        XCTAssertEqual(actual.count, reference.count, what, file: file, line: line)
        guard actual.count == reference.count else { return }
        let scale = reference.reduce(0) { max($0, abs($1)) }
        let difference = maxAbsDifference(actual, reference)
        XCTAssertLessThanOrEqual(
            difference, 1e-3 * (1 + scale), "\(what): max abs difference \(difference), scale \(scale)", file: file,
            line: line)
    }

    func testTokenIdsEqualTheReference() {
        for c in Reference.cases {
            XCTAssertEqual(Self.folderEngine.prompt(question: c.question).inputIds, c.ints("input_ids"), c.question)
        }
    }

    func testEveryStageMatchesTransformersFromReferencePixels() throws {
        for engine in [Self.folderEngine, Self.bundleEngine] {
            for c in Reference.cases {
                let pixels = c.floats("pixel_values")
                let stages = try engine.forward(
                    .image(pixels, prompt: engine.prompt(question: c.question)),
                    capture: .init(visionFeatures: true, projectorOutput: true, logitsFrom: 0))
                assertClose(
                    stages.visionFeatures, c.floats("vision_features"), "\(engine.source) \(c.image) vision_features")
                assertClose(
                    stages.projectorOutput, c.floats("projector_output"), "\(engine.source) \(c.image) projector_output"
                )
                XCTAssertEqual([stages.positions, engine.config.language.vocabSize], c.shape("logits"))
                assertClose(stages.logits, c.floats("logits"), "\(engine.source) \(c.image) logits")
            }
        }
    }

    func testFromImageFilesEveryPositionHasTheReferenceTopToken() throws {
        let engine = Self.folderEngine
        let vocab = engine.config.language.vocabSize
        for c in Reference.cases {
            let stages = try engine.forward(
                .image(try engine.pixelValues(imagePath: c.image), prompt: engine.prompt(question: c.question)),
                capture: .init(logitsFrom: 0))
            let logits = stages.logits, reference = c.floats("logits")
            for position in 0..<stages.positions {
                let row = Array(logits[(position * vocab)..<((position + 1) * vocab)])
                let referenceRow = Array(reference[(position * vocab)..<((position + 1) * vocab)])
                XCTAssertEqual(
                    row.indices.max { row[$0] < row[$1] },
                    referenceRow.indices.max { referenceRow[$0] < referenceRow[$1] },
                    "\(c.image) position \(position)")
            }
        }
    }

    func testGreedyAnswersEqualTheReferenceFromFolderAndBundle() throws {
        for engine in [Self.folderEngine, Self.bundleEngine] {
            for c in Reference.cases {
                let generation = try engine.generate(
                    pixels: try engine.pixelValues(imagePath: c.image), question: c.question,
                    options: .init(maxTokens: 64))
                XCTAssertEqual(generation.answer, c.greedyAnswer, "\(engine.source) \(c.image)")
            }
        }
    }
}

/// `vlq run` and `vlq logits` end to end.
final class RunCommandTests: XCTestCase {
    func testRunPrintsOnlyTheAnswerFromFolderAndBundle() throws {
        let scratch = try Scratch()
        let bundle = scratch.file("tiny.vlq")
        XCTAssertEqual(try vlq("convert", Repo.tinyModel, "-o", bundle, "-q").status, 0)
        for c in Reference.cases.prefix(3) {
            for model in [Repo.tinyModel, bundle] {
                let result = try vlq("run", model, "--image", c.image, "--prompt", c.question)
                XCTAssertEqual(result.status, 0, result.stderr)
                XCTAssertEqual(result.stdout, c.greedyAnswer + "\n")
                XCTAssertTrue(result.stderr.contains("tokens/s"), result.stderr)
            }
        }
    }

    func testLogitsWritesEveryStageInTheReferenceLayout() throws {
        let scratch = try Scratch()
        let c = Reference.cases[4]
        let output = scratch.file("stages.safetensors")
        let result = try vlq("logits", Repo.tinyModel, "--image", c.image, "--prompt", c.question, "-o", output)
        XCTAssertEqual(result.status, 0, result.stderr)
        let file = try SafeTensorsFile(path: output)
        for name in ["pixel_values", "vision_features", "projector_output", "logits"] {
            XCTAssertEqual(file.info(name)?.shape, c.shape(name), name)
            let ours = Array(file.data(file.info(name)!).bindMemory(to: Float.self)), theirs = c.floats(name)
            let scale = theirs.reduce(0) { max($0, abs($1)) }
            XCTAssertLessThanOrEqual(maxAbsDifference(ours, theirs), 1e-3 * (1 + scale), name)
        }
        XCTAssertEqual(file.info("input_ids")?.dtype, .i64)
        XCTAssertEqual(
            file.data(file.info("input_ids")!).bindMemory(to: Int64.self).map { Int($0) }, c.ints("input_ids"))
    }

    func testPixelValuesFileBypassesTheImagePipeline() throws {
        let scratch = try Scratch()
        let c = Reference.cases[1]
        let result = try vlq("run", Repo.tinyModel, "--pixel-values", c.file.path, "--prompt", c.question)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, c.greedyAnswer + "\n")
        let both = try vlq("run", Repo.tinyModel, "--image", c.image, "--pixel-values", c.file.path, "--prompt", "x")
        XCTAssertEqual(both.status, 2)
        var wrong = SafeTensorsWriter()
        wrong.add(.f32("pixel_values", [3, 10, 10], [Float](repeating: 0, count: 300)))
        try wrong.write(to: scratch.file("wrong.safetensors"))
        let mismatched = try vlq(
            "run", Repo.tinyModel, "--pixel-values", scratch.file("wrong.safetensors"), "--prompt", "x")
        XCTAssertEqual(mismatched.status, 2)
        XCTAssertTrue(
            mismatched.stderr.contains(
                "wrong.safetensors: pixel_values is F32 [3, 10, 10], the model takes F32 [3, 84, 84]"),
            mismatched.stderr)
    }

    func testACorruptImageIsOneLineExitTwo() throws {
        let scratch = try Scratch()
        let bytes = try readBytes(Reference.cases[5].image)
        try writeBytes(Array(bytes.prefix(bytes.count / 3)), to: scratch.file("broken.jpg"))
        let result = try vlq("run", Repo.tinyModel, "--image", scratch.file("broken.jpg"), "--prompt", "x")
        XCTAssertEqual(result.status, 2)
        XCTAssertEqual(result.stdout, "")
        XCTAssertTrue(
            result.stderr.hasPrefix("vlq: error: \(scratch.file("broken.jpg")): corrupt or unsupported JPEG"),
            result.stderr)
    }

    /// Photographs of every kind the decoders meet (RGB, gray, RGBA, palette-free PNGs, large JPEGs),
    /// with the shipped bilingual questions: the engine answers without failing.
    func testTheEngineRunsOnRealPhotographs() throws {
        let engine = EngineParityTests.folderEngine
        let manifest = try String(
            contentsOfFile: Repo.root.appendingPathComponent("calibration/default.jsonl").path, encoding: .utf8)
        var answered = 0
        for line in manifest.split(separator: "\n") {
            let row = try JSONValue.parse(String(line))
            let image = Repo.root.appendingPathComponent("calibration/" + row["image"]!.stringValue!).path
            let generation = try engine.generate(
                pixels: try engine.pixelValues(imagePath: image), question: row["question"]!.stringValue!,
                options: .init(maxTokens: 8))
            XCTAssertLessThanOrEqual(generation.tokenIds.count, 8)
            answered += 1
        }
        XCTAssertEqual(answered, 14)
    }
}
