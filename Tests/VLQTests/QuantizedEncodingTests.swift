import Foundation
import Quantization
import VLQCore
import VLQFormat
import XCTest

/// The quantized encodings byte for byte (formats/golden/quantized-vectors.json): packing,
/// decoding, and the Python reader's decoding agree with the vectors.
final class QuantizedEncodingTests: XCTestCase {
    static let path = Repo.goldenFolder + "/quantized-vectors.json"

    /// Deterministic weights with outliers, negative and positive, so every code path is exercised.
    static func weights(rows: Int, columns: Int) -> [Float] {
        (0..<(rows * columns)).map { i in
            let v = Float(sin(Double(i) * 0.731) * 0.05 + cos(Double(i * i % 97) * 0.13) * 0.02)
            return i % 37 == 0 ? v * 8 : v
        }
    }

    static let cases: [(TensorEncoding, Int, Int, Int)] = [
        (.q8, 2, 64, 32), (.q4, 2, 64, 32), (.q4s, 2, 64, 32), (.q8, 3, 40, 40), (.q4, 1, 256, 128),
    ]

    static func vectors() -> JSONValue {
        .array(
            cases.map { encoding, rows, columns, group in
                let w = weights(rows: rows, columns: columns)
                let m = MatrixQuantizer.roundToNearest(
                    w, rows: rows, columns: columns, encoding: encoding, groupSize: group)
                return [
                    "encoding": .string(encoding.name), "encoding_id": .int(Int64(encoding.rawValue)),
                    "shape": [.int(Int64(rows)), .int(Int64(columns))], "group_size": .int(Int64(group)),
                    "weights": .array(w.map { .double(Double($0)) }),
                    "bytes_hex": .string(m.bytes.map { String(format: "%02x", $0) }.joined()),
                    "decoded": .array(m.dequantized.map { .double(Double($0)) }),
                ]
            })
    }

    func testRoundToNearestReproducesTheGoldenBytesAndDecodedValues() throws {
        if ProcessInfo.processInfo.environment["VLQ_REGENERATE_GOLDEN"] == "1" {
            try Data((Self.vectors().serialized(pretty: true) + "\n").utf8).write(to: URL(fileURLWithPath: Self.path))
        }
        let golden = try JSONValue.parse(try readBytes(Self.path))
        XCTAssertEqual(
            golden, Self.vectors(), "the quantizer or the encodings changed: a format change needs a version bump")
        for v in try XCTUnwrap(golden.arrayValue) {
            let encoding = TensorEncoding(name: v["encoding"]!.stringValue!)!
            let shape = v["shape"]!.arrayValue!.map { $0.intValue! }
            let layout = try XCTUnwrap(
                QuantizedLayout(encoding: encoding, shape: shape, groupSize: v["group_size"]!.intValue!))
            let hex = Array(v["bytes_hex"]!.stringValue!.utf8)
            let bytes = stride(from: 0, to: hex.count, by: 2).map {
                UInt8(String(decoding: hex[$0..<($0 + 2)], as: UTF8.self), radix: 16)!
            }
            XCTAssertEqual(bytes.count, layout.byteCount)
            var decoded = [Float](repeating: 0, count: shape[0] * shape[1])
            bytes.withUnsafeBytes { layout.dequantize($0, rows: 0..<shape[0], into: &decoded) }
            XCTAssertEqual(decoded, v["decoded"]!.arrayValue!.map { Float($0.doubleValue!) })
        }
    }

    func testThePythonReaderDecodesTheGoldenVectors() throws {
        let script = """
            import json, sys
            import numpy as np
            sys.path.insert(0, sys.argv[1])
            from vlq_reader import dequantize
            for v in json.load(open(sys.argv[2])):
                data = bytes.fromhex(v["bytes_hex"])
                out = dequantize(data, v["encoding"], v["shape"], v["group_size"])
                assert np.array_equal(out.ravel(), np.array(v["decoded"], dtype=np.float32)), v["encoding"]
            print("ok")
            """
        let scratch = try Scratch()
        try script.write(toFile: scratch.file("decode.py"), atomically: true, encoding: .utf8)
        let result = try python([scratch.file("decode.py"), Repo.root.appendingPathComponent("tools").path, Self.path])
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(result.stdout, "ok\n")
    }

    func testLayoutsOfTheSpec() throws {
        // q4 [4096, 4096] g128: packed nibbles, then f16 scales and biases, each 64-byte aligned.
        let q4 = try XCTUnwrap(QuantizedLayout(encoding: .q4, shape: [4096, 4096], groupSize: 128))
        XCTAssertEqual(q4.valuesBytes, 4096 * 2048)
        XCTAssertEqual(q4.scalesOffset, 4096 * 2048)
        XCTAssertEqual(q4.biasesOffset, 4096 * 2048 + 4096 * 32 * 2)
        XCTAssertEqual(q4.byteCount, 4096 * 2048 + 2 * 4096 * 32 * 2)
        XCTAssertEqual(Double(q4.byteCount * 8) / Double(4096 * 4096), 4.25)
        let q8 = try XCTUnwrap(QuantizedLayout(encoding: .q8, shape: [3, 40], groupSize: 40))
        XCTAssertEqual(q8.scalesOffset, 128, "120 value bytes round up to the next 64")
        XCTAssertNil(QuantizedLayout(encoding: .q4, shape: [2, 100], groupSize: 64), "a group must divide the row")
        XCTAssertNil(QuantizedLayout(encoding: .q4s, shape: [2, 33], groupSize: 33), "4-bit groups pack in pairs")
    }

    func testRecipeFallbacksAreReportedNeverSilent() {
        let recipe = Recipe.int4()
        let odd = recipe.decide(name: "model.layers.0.mlp.down_proj.weight", component: .language, shape: [256, 96])
        XCTAssertEqual(odd.encoding, .q4)
        XCTAssertEqual(odd.groupSize, 32)
        XCTAssertEqual(odd.fallback, "96 columns: group 128 -> 32")
        let prime = recipe.decide(name: "model.layers.0.mlp.down_proj.weight", component: .language, shape: [256, 130])
        XCTAssertEqual(prime.encoding, .f16)
        XCTAssertEqual(prime.fallback, "130 columns: no group divides the row -> f16")
        let rowWise = Recipe(
            name: "row", method: nil,
            rules: [.init(component: nil, pattern: "*", target: .quantized(.q4, groupSize: nil), method: nil)])
        let odd33 = rowWise.decide(name: "w", component: .language, shape: [4, 33])
        XCTAssertEqual(odd33.encoding, .q8)
        XCTAssertEqual(odd33.groupSize, 33)
        XCTAssertEqual(odd33.fallback, "33 columns: q4 g33 -> q8 g33")
        let vector = recipe.decide(name: "model.norm.weight", component: .language, shape: [256])
        XCTAssertNil(vector.encoding)
        XCTAssertNil(vector.fallback)
        let position = recipe.decide(
            name: "vision_model.embeddings.position_embedding.weight", component: .vision, shape: [37, 128])
        XCTAssertNil(position.encoding)
        XCTAssertEqual(
            Recipe.int8().decide(name: "lm_head.weight", component: .language, shape: [1000, 256]).encoding, .q8)
    }
}
