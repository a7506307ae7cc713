import Foundation
import Tokenizer
import VLQCore
import XCTest

/// Protobuf wire data built by hand, to write SentencePiece models no trainer would.
enum Proto {
    static func varint(_ value: UInt64) -> [UInt8] {
        var v = value, out: [UInt8] = []
        while v >= 0x80 {
            out.append(UInt8(v & 0x7F) | 0x80)
            v >>= 7
        }
        return out + [UInt8(v)]
    }

    static func key(_ number: Int, wireType: UInt64) -> [UInt8] { varint(UInt64(number) << 3 | wireType) }
    static func varintField(_ number: Int, _ value: UInt64) -> [UInt8] { key(number, wireType: 0) + varint(value) }
    static func bytesField(_ number: Int, _ bytes: [UInt8]) -> [UInt8] {
        key(number, wireType: 2) + varint(UInt64(bytes.count)) + bytes
    }

    /// A ModelProto piece: text (1), score (2, fixed32), type (3).
    static func piece(_ text: String, type: UInt64) -> [UInt8] {
        var score = key(2, wireType: 5)
        withUnsafeBytes(of: Float(0).bitPattern.littleEndian) { score += $0 }
        return bytesField(1, bytesField(1, Array(text.utf8)) + score + varintField(3, type))
    }

    /// A minimal BPE model: <unk> and one normal piece, trainer spec model_type `modelType`.
    static func model(unknownType: UInt64 = 2, modelType: UInt64 = 2) -> [UInt8] {
        piece("<unk>", type: unknownType) + piece("a", type: 1) + bytesField(2, varintField(3, modelType))
    }
}

/// tokenizer.model is read from a checkpoint folder or a bundle's metadata: whatever its bytes,
/// reading it ends in a model or in a one-line error naming it, never in a trap.
final class MalformedTokenizerTests: XCTestCase {
    func read(_ bytes: [UInt8]) throws -> Tokenizer {
        try Tokenizer(model: try SentencePieceModel(bytes: bytes, source: "bad.model"), source: "bad.model")
    }

    func testTheHandBuiltModelIsValid() throws {
        let t = try read(Proto.model())
        XCTAssertEqual(t.vocabularySize, 2)
        XCTAssertEqual(t.model.algorithm, .bpe)
    }

    func testAPieceTypeBeyondIntIsAnError() {
        // 2^64 - 1 does not fit Int: it used to trap converting the varint.
        assertVLQError(
            try read(Proto.model(unknownType: UInt64.max)),
            kind: TokenizerError.notAModel,
            contains: ["bad.model", "not a SentencePiece model", "unknown piece type 18446744073709551615"])
        assertVLQError(
            try read(Proto.model(unknownType: 1 << 63)), kind: TokenizerError.notAModel,
            contains: ["bad.model", "unknown piece type"])
        assertVLQError(
            try read(Proto.model(unknownType: 7)), kind: TokenizerError.notAModel,
            contains: ["bad.model", "unknown piece type 7"])
    }

    func testAModelTypeBeyondIntIsAnError() {
        assertVLQError(
            try read(Proto.model(modelType: UInt64.max)),
            kind: TokenizerError.notAModel,
            contains: ["bad.model", "not a SentencePiece model", "unknown model type 18446744073709551615"])
        assertVLQError(
            try read(Proto.model(modelType: 9)), kind: TokenizerError.notAModel,
            contains: ["bad.model", "unknown model type 9"])
    }

    func testMalformedWireDataIsAnError() {
        let valid = Proto.model()
        // (bytes, what the error says)
        let cases: [([UInt8], String)] = [
            ([0x08, 0x80], "truncated varint"),
            ([0x08] + [UInt8](repeating: 0xFF, count: 10) + [0x01], "varint longer than 64 bits"),
            // The tenth byte may only hold bit 63.
            ([0x08] + [UInt8](repeating: 0xFF, count: 9) + [0x02], "varint longer than 64 bits"),
            ([0x0A, 0x05, 0x01, 0x02], "runs past the end"),
            (Proto.key(1, wireType: 2) + Proto.varint(UInt64.max), "runs past the end"),
            (Proto.key(1, wireType: 2) + Proto.varint(1 << 63) + [0], "runs past the end"),
            ([0x09, 1, 2, 3], "truncated fixed64"),
            ([0x0D, 1, 2], "truncated fixed32"),
            ([0x0B], "unsupported wire type 3"),
            (valid + Proto.key(1, wireType: 2) + [0x10, 0x0A], "runs past the end"),
            (Proto.bytesField(1, [0x0A, 0x09, 0x41]), "runs past the end"),
            (Proto.bytesField(2, Proto.varintField(3, 2)), "no pieces"),
        ]
        for (bytes, phrase) in cases {
            assertVLQError(try read(bytes), kind: TokenizerError.notAModel, contains: ["bad.model", phrase])
        }
    }

    func testTenByteVarintsAtTheLimitStillRead() throws {
        // 2^63 + 1 takes all ten bytes, the last holding bit 63 only: legal, and an unknown piece type.
        XCTAssertEqual(Proto.varint(1 << 63 | 1).count, 10)
        assertVLQError(
            try read(Proto.model(unknownType: 1 << 63 | 1)),
            kind: TokenizerError.notAModel, contains: ["unknown piece type 9223372036854775809"])
    }

    /// Random damage to the real model: flipped bytes, cuts and spliced runs. Each read ends in a
    /// model (which then encodes and decodes) or in a VLQError; a trap would end the test process.
    func testDamagedModelsNeverTrap() throws {
        let original = try readBytes(Repo.tinyModel + "/tokenizer.model")
        var random = SplitMix64(seed: 0x5EED)
        var errors = 0, models = 0
        for round in 0..<400 {
            var bytes = original
            switch round % 4 {
            case 0:
                for _ in 0..<(1 + random.below(8)) { bytes[random.below(bytes.count)] = UInt8(random.below(256)) }
            case 1:
                bytes = Array(bytes.prefix(random.below(bytes.count)))
            case 2:
                let at = random.below(bytes.count)
                bytes.insert(contentsOf: [UInt8](repeating: 0xFF, count: 1 + random.below(12)), at: at)
            default:
                bytes = (0..<random.below(64)).map { _ in UInt8(random.below(256)) }
            }
            do {
                let t = try read(bytes)
                _ = t.decode(t.encode("Hello, 世界 🙂 \u{1}"))
                models += 1
            } catch let error as VLQError {
                XCTAssertEqual(error.subject, "bad.model")
                assertVLQError(error, kindIn: [TokenizerError.self])
                errors += 1
            }
        }
        XCTAssertGreaterThan(errors, 100)
        XCTAssertGreaterThan(models, 5)
    }
}
