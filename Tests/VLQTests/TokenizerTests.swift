import Foundation
import Tokenizer
import VLQCore
import XCTest
import YiVL

/// SentencePiece BPE as sentencepiece (and transformers' slow LlamaTokenizer) computes it.
final class TokenizerTests: XCTestCase {
    static let tokenizer = try! Tokenizer(contentsOf: Repo.tinyModel + "/tokenizer.model")

    struct ReferenceCase {
        var question: String
        var before: [Int]
        var after: [Int]
    }

    static func referenceCases() throws -> [ReferenceCase] {
        let json = try JSONValue.parse(
            try readBytes(Repo.root.appendingPathComponent("Tests/Fixtures/tiny-yivl-data/reference/cases.json").path))
        return try XCTUnwrap(json.arrayValue).map {
            ReferenceCase(
                question: $0["question"]!.stringValue!,
                before: $0["tokens_before_image"]!.arrayValue!.map { $0.intValue! },
                after: $0["tokens_after_image"]!.arrayValue!.map { $0.intValue! })
        }
    }

    func testReadsTheModelProto() {
        let t = Self.tokenizer
        XCTAssertEqual(t.vocabularySize, 1000)
        XCTAssertEqual(t.model.algorithm, .bpe)
        XCTAssertTrue(t.model.byteFallback)
        XCTAssertTrue(t.model.addDummyPrefix)
        XCTAssertEqual(t.unknownId, 0)
        XCTAssertEqual(t.id(of: "<|startoftext|>"), 1)
        XCTAssertEqual(t.id(of: "<|endoftext|>"), 2)
        XCTAssertEqual(t.id(of: "<0x0A>"), 13)
    }

    func testPromptPiecesTokenizeExactlyAsTheReference() throws {
        for c in try Self.referenceCases() {
            let prompt = YiVLChat.prompt(question: c.question)
            let parts = prompt.components(separatedBy: YiVLChat.imagePlaceholder)
            XCTAssertEqual(parts.count, 2)
            XCTAssertEqual(Self.tokenizer.encode(parts[0]), c.before, c.question)
            XCTAssertEqual(Self.tokenizer.encode(parts[1]), c.after, c.question)
        }
    }

    func testDecodeInvertsEncodeForEnglishChineseEmojiAndUnknownBytes() {
        for text in [
            "A white square on a dark background.", "图片里有什么形状？", "emoji 🙂🚀 mixed 中文 text",
            "tabs\tand\nnewlines  and  spaces", "Ωμέγα ☃ \u{0001}", "###",
        ] {
            let ids = Self.tokenizer.encode(text)
            XCTAssertEqual(Self.tokenizer.decode(ids), text, "ids \(ids)")
        }
    }

    func testCharactersOutsideTheVocabularyFallBackToBytes() {
        let ids = Self.tokenizer.encode("🙂")
        // dummy-prefix space, then the four UTF-8 bytes of U+1F642 as <0xF0> <0x9F> <0x99> <0x82>.
        XCTAssertEqual(Array(ids.suffix(4)), [0xF0, 0x9F, 0x99, 0x82].map { 3 + $0 })
    }

    func testEmptyTextHasNoTokens() {
        XCTAssertEqual(Self.tokenizer.encode(""), [])
    }

    func testRejectsAFileThatIsNotASentencePieceModel() throws {
        let scratch = try Scratch()
        try writeBytes(Array("not a model".utf8), to: scratch.file("bad.model"))
        assertVLQError(
            try Tokenizer(contentsOf: scratch.file("bad.model")), kind: TokenizerError.notAModel,
            contains: ["bad.model", "not a SentencePiece model"])
    }
}
