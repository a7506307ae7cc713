import Conversion
import Foundation
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
        return path
    }()
    static let bundleEngine = try! YiVLEngine.open(bundlePath)

    override class func tearDown() {
        try? FileManager.default.removeItem(atPath: bundlePath)
    }

    /// max |a - b| <= 1e-3 (1 + max |reference|), the parity bound.
    func assertClose(_ actual: [Float], _ reference: [Float], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(actual.count, reference.count, what, file: file, line: line)
        guard actual.count == reference.count else { return }
        let scale = reference.reduce(0) { max($0, abs($1)) }
        let difference = maxAbsDifference(actual, reference)
        XCTAssertLessThanOrEqual(difference, 1e-3 * (1 + scale), "\(what): max abs difference \(difference), scale \(scale)", file: file, line: line)
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
                let cache = engine.model.makeCache(capacity: 512)
                let stages = try engine.prefill(pixels: pixels, prompt: engine.prompt(question: c.question), cache: cache)
                assertClose(stages.visionFeatures, c.floats("vision_features"), "\(engine.source) \(c.image) vision_features")
                assertClose(stages.projectorOutput, c.floats("projector_output"), "\(engine.source) \(c.image) projector_output")
                let logits = try engine.model.logits(stages.hidden)
                XCTAssertEqual([stages.sequenceLength, engine.config.language.vocabSize], c.shape("logits"))
                assertClose(logits, c.floats("logits"), "\(engine.source) \(c.image) logits")
            }
        }
    }

    func testFromImageFilesEveryPositionHasTheReferenceTopToken() throws {
        let engine = Self.folderEngine
        let vocab = engine.config.language.vocabSize
        for c in Reference.cases {
            let cache = engine.model.makeCache(capacity: 512)
            let stages = try engine.prefill(pixels: try engine.pixelValues(imagePath: c.image), prompt: engine.prompt(question: c.question), cache: cache)
            let logits = try engine.model.logits(stages.hidden), reference = c.floats("logits")
            for position in 0..<stages.sequenceLength {
                let row = Array(logits[(position * vocab)..<((position + 1) * vocab)])
                let referenceRow = Array(reference[(position * vocab)..<((position + 1) * vocab)])
                XCTAssertEqual(row.indices.max { row[$0] < row[$1] }, referenceRow.indices.max { referenceRow[$0] < referenceRow[$1] },
                               "\(c.image) position \(position)")
            }
        }
    }

    func testGreedyAnswersEqualTheReferenceFromFolderAndBundle() throws {
        for engine in [Self.folderEngine, Self.bundleEngine] {
            for c in Reference.cases {
                let generation = try engine.generate(pixels: try engine.pixelValues(imagePath: c.image), question: c.question,
                                                     options: .init(maxTokens: 64))
                XCTAssertEqual(generation.answer, c.greedyAnswer, "\(engine.source) \(c.image)")
            }
        }
    }
}
