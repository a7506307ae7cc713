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
        (.q3, 1, 32, 32), (.q3, 2, 128, 64), (.q3, 3, 256, 128),
    ]

    /// The codes of the spec's worked q3 example (formats/VLQ-BUNDLE.md, section 5), one of each in
    /// every run of eight, so that each byte of the block mixes different codes.
    static let handCodes: [Int8] = [
        0, 1, 2, 3, 4, 5, 6, 7, 7, 6, 5, 4, 3, 2, 1, 0, 1, 3, 5, 7, 0, 2, 4, 6, 6, 4, 2, 0, 7, 5, 3, 1,
    ]

    /// The weights of a case: the [1, 32] q3 case is the worked example, `code * 0.25 - 1`, which the
    /// range search stores exactly (the full range gives scale 0.25 and bias -1, both exact in f16).
    static func weights(_ encoding: TensorEncoding, rows: Int, columns: Int) -> [Float] {
        if encoding == .q3 && rows * columns == handCodes.count { return handCodes.map { Float($0) * 0.25 - 1 } }
        return weights(rows: rows, columns: columns)
    }

    static func vectors() -> JSONValue {
        .array(
            cases.map { encoding, rows, columns, group in
                let w = weights(encoding, rows: rows, columns: columns)
                let m = MatrixQuantizer.roundToNearest(
                    w, rows: rows, columns: columns, encoding: encoding, groupSize: group)
                var entry: [String: JSONValue] = [
                    "encoding": .string(encoding.name), "encoding_id": .int(Int64(encoding.rawValue)),
                    "shape": [.int(Int64(rows)), .int(Int64(columns))], "group_size": .int(Int64(group)),
                    "weights": .array(w.map { .double(Double($0)) }),
                    "bytes_hex": .string(m.bytes.map { String(format: "%02x", $0) }.joined()),
                    "decoded": .array(m.dequantized.map { .double(Double($0)) }),
                ]
                if encoding == .q3 {
                    // Written out so that the bit layout can be checked by hand.
                    let codes = m.bytes.withUnsafeBytes { data in
                        (0..<(rows * columns)).map {
                            QuantizedLayout.q3Code(data, row: $0 / columns, column: $0 % columns, columns: columns)
                        }
                    }
                    entry["codes"] = .array(codes.map { .int(Int64($0)) })
                }
                return .object(entry)
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
            from vlq_reader import dequantize, q3_codes
            for v in json.load(open(sys.argv[2])):
                data = bytes.fromhex(v["bytes_hex"])
                out = dequantize(data, v["encoding"], v["shape"], v["group_size"])
                assert np.array_equal(out.ravel(), np.array(v["decoded"], dtype=np.float32)), v["encoding"]
                if "codes" in v:
                    blocks = len(v["codes"]) // 32 * 12
                    assert list(q3_codes(np.frombuffer(data[:blocks], dtype=np.uint8))) == v["codes"]
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

    func testTheSpecsWorkedQ3Example() throws {
        let layout = try XCTUnwrap(QuantizedLayout(encoding: .q3, shape: [1, 32], groupSize: 32))
        let bytes = layout.pack(codes: Self.handCodes, scales: [0.25], biases: [-1])
        XCTAssertEqual(bytes.count, 130, "12 code bytes padded to 64, the scale at 64, the bias at 128")
        XCTAssertEqual(
            bytes[0..<12].map { String(format: "%02x", $0) }.joined(separator: " "),
            "9c 39 96 33 cc 69 c6 63 f0 0f cc 33")
        XCTAssertEqual(Array(bytes[64..<66]), [0x00, 0x34], "f16 0.25")
        XCTAssertEqual(Array(bytes[128..<130]), [0x00, 0xbc], "f16 -1")
        var decoded = [Float](repeating: 0, count: 32)
        bytes.withUnsafeBytes { layout.dequantize($0, rows: 0..<1, into: &decoded) }
        XCTAssertEqual(decoded, Self.handCodes.map { Float($0) * 0.25 - 1 })
    }

    /// Every code at every position of a block, in rows of several blocks and groups: packing then
    /// reading each element back gives the code, and nothing spills into a neighbour's bits.
    func testQ3PackingRoundTrips() throws {
        let (rows, columns) = (3, 192)
        let layout = try XCTUnwrap(QuantizedLayout(encoding: .q3, shape: [rows, columns], groupSize: 64))
        for seed in 0..<8 {
            var gen = SplitMix64(seed: UInt64(seed))
            let codes = (0..<(rows * columns)).map { _ in Int8(gen.below(8)) }
            let groups = rows * layout.groupsPerRow
            let bytes = layout.pack(
                codes: codes, scales: .init(repeating: 1, count: groups), biases: .init(repeating: 0, count: groups))
            let unpacked = bytes.withUnsafeBytes { data in
                (0..<codes.count).map {
                    Int8(QuantizedLayout.q3Code(data, row: $0 / columns, column: $0 % columns, columns: columns))
                }
            }
            XCTAssertEqual(unpacked, codes, "seed \(seed)")
            var decoded = [Float](repeating: 0, count: codes.count)
            bytes.withUnsafeBytes { layout.dequantize($0, rows: 0..<rows, into: &decoded) }
            XCTAssertEqual(decoded, codes.map { Float($0) })
        }
        // One code of 7 among zeros, at every position: exactly its three bits are set.
        for position in 0..<32 {
            var codes = [Int8](repeating: 0, count: 32)
            codes[position] = 7
            let one = try XCTUnwrap(QuantizedLayout(encoding: .q3, shape: [1, 32], groupSize: 32))
            let bytes = one.pack(codes: codes, scales: [1], biases: [0])
            XCTAssertEqual(bytes[0..<12].reduce(0) { $0 + $1.nonzeroBitCount }, 3, "position \(position)")
        }
    }

    func testQ3LayoutSizesAndGroups() throws {
        // [4096, 4096]: 12 bytes per 32 codes, then f16 scales and biases, each 64-byte aligned.
        for (group, bits) in [(64, 3.5), (128, 3.25)] {
            let q3 = try XCTUnwrap(QuantizedLayout(encoding: .q3, shape: [4096, 4096], groupSize: group))
            XCTAssertEqual(q3.valuesBytes, 4096 * 4096 / 32 * 12)
            XCTAssertEqual(q3.scalesOffset, q3.valuesBytes)
            XCTAssertEqual(q3.biasesOffset, q3.valuesBytes + 4096 * (4096 / group) * 2)
            XCTAssertEqual(Double(q3.byteCount * 8) / Double(4096 * 4096), bits)
        }
        XCTAssertEqual(QuantizedLayout(encoding: .q3, shape: [1, 32], groupSize: 32)?.scalesOffset, 64)
        for group in [2, 16, 48, 80] {
            XCTAssertThrowsError(
                try QuantizedLayout(validating: .q3, shape: [2, 480], groupSize: group), "group \(group)"
            ) { XCTAssertTrue("\($0)".contains("multiple of 32"), "\($0)") }
        }
        XCTAssertEqual(TensorEncoding(rawValue: 35), .q3)
        XCTAssertEqual(TensorEncoding(name: "q3"), .q3)
        XCTAssertEqual(TensorEncoding.q3.minorVersion, 1)
        XCTAssertTrue(TensorEncoding.allCases.filter { $0 != .q3 }.allSatisfy { $0.minorVersion == 0 })
    }

    /// Recipes name q3 like any encoding; the int3 preset puts the decoder Linears in q3 group 64 and
    /// falls back to a smaller group of whole 32-value blocks, reported, when a row needs one.
    func testRecipesAndTheInt3PresetAcceptQ3() throws {
        let json = try JSONValue.parse(
            Array(#"{"rules": [{"match": "model.layers.*", "encoding": "q3", "group_size": 64}]}"#.utf8))
        let recipe = try Recipe(json: json, source: "r.json")
        XCTAssertEqual(recipe.rules.first?.target, .quantized(.q3, groupSize: 64))
        XCTAssertEqual(try Recipe(json: recipe.json, source: "again"), recipe, "the bundle's record reads back")
        let int3 = try XCTUnwrap(Recipe.preset("int3"))
        let linear = int3.decide(name: "model.layers.0.mlp.up_proj.weight", component: .language, shape: [768, 256])
        XCTAssertEqual(linear.encoding, .q3)
        XCTAssertEqual(linear.groupSize, 64)
        let narrow = int3.decide(name: "model.layers.0.mlp.up_proj.weight", component: .language, shape: [8, 96])
        XCTAssertEqual(narrow.encoding, .q3)
        XCTAssertEqual(narrow.fallback, "96 columns: group 64 -> 32")
        XCTAssertEqual(int3.decide(name: "lm_head.weight", component: .language, shape: [1000, 256]).encoding, .q8)
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
