import CheckpointFiles
import Conversion
import Foundation
import SafeTensors
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// `vlq convert` on the tiny trained Yi-VL in the exact layout of Yi-VL-6B.
final class ConvertTests: XCTestCase {
    func convert(_ folder: String, to output: String, dtype: OutputDType = .keep) throws -> ConvertReport {
        try Converter(options: ConvertOptions(dtype: dtype)).convert(folder: folder, output: output)
    }

    func testDiscoversTheThreePartsWithTheVisionTowerFromItsFolder() throws {
        let checkpoint = try YiVLCheckpoint(folder: Repo.tinyModel)
        XCTAssertTrue(checkpoint.visionFolder.hasSuffix("tiny-yivl/vit/clip-vit-tiny-yivl-84"))
        let parts = Dictionary(grouping: checkpoint.tensors, by: { $0.expected.part }).mapValues(\.count)
        XCTAssertEqual(parts[.vision], 71)
        XCTAssertEqual(parts[.projector], 8)
        XCTAssertEqual(parts[.language], 2 + 1 + 4 * 9)
        XCTAssertTrue(
            checkpoint.tensors.filter { $0.expected.part == .vision }.allSatisfy { $0.file.path.contains("/vit/") })
        XCTAssertEqual(checkpoint.inShardVisionCopy.count, 71)
        XCTAssertEqual(checkpoint.config.selectedHiddenState, 3)
        XCTAssertEqual(checkpoint.config.preprocessor.padColor, [122, 116, 104])
    }

    /// Every tensor read back equals its source after the stated conversion, bit for bit.
    func testRoundTripIsBitExactForEveryOutputDtype() throws {
        let scratch = try Scratch()
        let checkpoint = try YiVLCheckpoint(folder: Repo.tinyModel)
        for dtype in OutputDType.allCases {
            let output = scratch.file("tiny-\(dtype.rawValue).vlq")
            _ = try convert(Repo.tinyModel, to: output, dtype: dtype)
            let bundle = try VLQFile(path: output)
            XCTAssertEqual(bundle.tensors.count, checkpoint.tensors.count)
            for (expected, file, info) in checkpoint.tensors {
                let record = try XCTUnwrap(bundle.record(expected.name))
                XCTAssertEqual(record.shape, info.shape)
                let source = file.data(info)
                let stored = bundle.data(record)
                let from = Converter.encoding(of: info.dtype)!
                XCTAssertEqual(record.encoding, dtype == .keep ? from : TensorEncoding(name: dtype.rawValue)!)
                for i in 0..<info.elementCount {
                    let x = ElementConversion.value(source, from, i)
                    let expectedBits: UInt32
                    let actualBits: UInt32
                    switch record.encoding {
                    case .f32:
                        expectedBits = x.bitPattern
                        actualBits = stored.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self)
                    case .f16:
                        expectedBits = UInt32(Float16(x).bitPattern)
                        actualBits = UInt32(stored.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    case .bf16:
                        // bf16 -> bf16 is a copy; f32 -> bf16 rounds to nearest even.
                        let bits = x.bitPattern
                        expectedBits = (bits &+ 0x7FFF &+ ((bits >> 16) & 1)) >> 16
                        actualBits = UInt32(stored.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
                    case .q8, .q4, .q4s, .q3:
                        XCTFail("convert never quantizes")
                        return
                    }
                    if expectedBits != actualBits {
                        XCTFail("\(dtype): \(expected.name)[\(i)] stored \(actualBits), expected \(expectedBits)")
                        break
                    }
                }
            }
            try bundle.verifyChecksums()
        }
    }

    func testTheSameInputsGiveAByteIdenticalBundle() throws {
        let scratch = try Scratch()
        _ = try convert(Repo.tinyModel, to: scratch.file("a.vlq"))
        _ = try convert(Repo.tinyModel, to: scratch.file("b.vlq"))
        XCTAssertEqual(try readBytes(scratch.file("a.vlq")), try readBytes(scratch.file("b.vlq")))
    }

    func testTheBundleCarriesEverythingNeededToRun() throws {
        let scratch = try Scratch()
        _ = try convert(Repo.tinyModel, to: scratch.file("t.vlq"))
        let m = try VLQFile(path: scratch.file("t.vlq")).metadata
        XCTAssertEqual(m["architecture"]?["language"]?["kv_heads"]?.intValue, 2)
        XCTAssertEqual(m["architecture"]?["language"]?["rope_theta"]?.doubleValue, 5_000_000)
        XCTAssertEqual(m["architecture"]?["vision"]?["selected_hidden_state"]?.intValue, 3)
        XCTAssertEqual(m["architecture"]?["projector"]?["type"]?.stringValue, "mlp2x_gelu_Norm")
        XCTAssertEqual(m["preprocessing"]?["pad_color"], [122, 116, 104])
        XCTAssertEqual(m["preprocessing"]?["resample"]?.stringValue, "bicubic")
        XCTAssertEqual(m["preprocessing"]?["shortest_edge"]?.intValue, 84)
        XCTAssertEqual(m["chat"]?["image_token_index"]?.intValue, -200)
        XCTAssertEqual(m["chat"]?["image_tokens"]?.intValue, 36)
        XCTAssertTrue(
            m["chat"]?["template"]?.stringValue?.contains("### Human: <image_placeholder>\n{question}\n### Assistant:")
                ?? false)
        XCTAssertEqual(m["tokenizer"]?["add_bos_token"]?.boolValue, false)
        XCTAssertEqual(m["tokenizer"]?["special_tokens"]?["bos"]?["text"]?.stringValue, "<|startoftext|>")
        XCTAssertEqual(m["tokenizer"]?["special_tokens"]?["eos"]?["id"]?.intValue, 2)
        let tokenizer = try XCTUnwrap(Base64.decode(m["tokenizer"]?["model"]?.stringValue ?? ""))
        XCTAssertEqual(tokenizer, try readBytes(Repo.tinyModel + "/tokenizer.model"))
        XCTAssertEqual(m["generation"]?["stop"], ["###"])
        XCTAssertEqual(m["quantization"], .object([:]))
        let sources = try XCTUnwrap(m["provenance"]?["source_files"]?.arrayValue)
        let paths = sources.compactMap { $0["path"]?.stringValue }
        XCTAssertTrue(paths.contains("model-00001-of-00002.safetensors"))
        XCTAssertTrue(paths.contains("vit/clip-vit-tiny-yivl-84/model.safetensors"))
        XCTAssertTrue(paths.contains("tokenizer.model"))
        let shard = try readBytes(Repo.tinyModel + "/model-00002-of-00002.safetensors")
        let digest = sources.first { $0["path"]?.stringValue == "model-00002-of-00002.safetensors" }?["xxh3"]?
            .stringValue
        XCTAssertEqual(digest, hex64(XXH3Hasher.hash(shard)))
    }

    func testTheInShardVisionCopyIsDetectedAndComparedAndTheFolderWins() throws {
        let scratch = try Scratch()
        let report = try convert(Repo.tinyModel, to: scratch.file("t.vlq"))
        let copy = try XCTUnwrap(report.inShardVision)
        XCTAssertEqual(copy.tensors, 71)
        XCTAssertEqual(copy.differing, [])
        XCTAssertEqual(copy.unmatched, [])

        // A copy that was fine-tuned apart from the folder is reported, and the folder still wins.
        let model = try scratch.copyOfTinyModel()
        let shardPath = model + "/model-00002-of-00002.safetensors"
        let shard = try SafeTensorsFile(path: shardPath)
        let target = try XCTUnwrap(shard.info("model.vision_tower.vision_tower.vision_model.pre_layrnorm.weight"))
        var bytes = try readBytes(shardPath)
        bytes[target.fileOffset + 1] ^= 0x01  // an exponent bit of the first bf16: the value changes fourfold
        try writeBytes(bytes, to: shardPath)
        let changed = try convert(model, to: scratch.file("c.vlq"))
        XCTAssertEqual(changed.inShardVision?.differing, ["vision_model.pre_layrnorm.weight"])
        let bundle = try VLQFile(path: scratch.file("c.vlq"))
        let stored = bundle.data(bundle.record("vision_model.pre_layrnorm.weight")!)
        let vit = try SafeTensorsFile(path: model + "/vit/clip-vit-tiny-yivl-84/model.safetensors")
        XCTAssertEqual(Array(stored), Array(vit.data(vit.info("vision_model.pre_layrnorm.weight")!)))
    }

    func testWritesThroughATemporaryFileAndNeverTouchesTheSource() throws {
        let scratch = try Scratch()
        let model = try scratch.copyOfTinyModel()
        let before = try FileManager.default.subpathsOfDirectory(atPath: model).sorted()
        let digestBefore = XXH3Hasher.hash(try readBytes(model + "/model-00001-of-00002.safetensors"))
        _ = try convert(model, to: scratch.file("out.vlq"))
        XCTAssertEqual(try FileManager.default.subpathsOfDirectory(atPath: model).sorted(), before)
        XCTAssertEqual(XXH3Hasher.hash(try readBytes(model + "/model-00001-of-00002.safetensors")), digestBefore)
        XCTAssertEqual(scratch.listing(), ["model", "out.vlq"])
    }
}

/// Bad input: one clear line naming the file and the fault, and nothing at the destination.
final class ConvertRejectsBadInputTests: ScratchTestCase {
    var model: String!

    override func setUpWithError() throws {
        try super.setUpWithError()
        model = try scratch.copyOfTinyModel()
    }

    func assertConvertFails(
        _ kind: some ErrorKind, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) {
        let output = scratch.file("out.vlq")
        assertVLQError(
            try Converter(options: ConvertOptions()).convert(folder: model, output: output),
            kind: kind, contains: fragments, file: file, line: line)
        XCTAssertEqual(scratch.listing(), ["model"], "a failed convert left files behind", file: file, line: line)
    }

    var shard2: String { model + "/model-00002-of-00002.safetensors" }
    var vitWeights: String { model + "/vit/clip-vit-tiny-yivl-84/model.safetensors" }

    func testTruncatedShard() throws {
        let bytes = try readBytes(shard2)
        try writeBytes(Array(bytes.dropLast(100)), to: shard2)
        assertConvertFails(SafeTensorsError.truncated, ["model-00002-of-00002.safetensors", "truncated"])
    }

    func testHeaderLengthBeyondTheFile() throws {
        var bytes = try readBytes(shard2)
        withUnsafeBytes(of: UInt64(50_000_000).littleEndian) { for i in 0..<8 { bytes[i] = $0[i] } }
        try writeBytes(bytes, to: shard2)
        assertConvertFails(
            SafeTensorsError.truncated,
            ["model-00002-of-00002.safetensors", "header length 50000000 runs past the end of the file"])
    }

    func testInvalidHeaderJSON() throws {
        var bytes = try readBytes(shard2)
        bytes[8] = UInt8(ascii: "x")
        try writeBytes(bytes, to: shard2)
        assertConvertFails(SafeTensorsError.malformedHeader, ["model-00002-of-00002.safetensors", "not valid JSON"])
    }

    func rewriteVisionWeights(_ edit: (inout [SafeTensorsBuilder.Entry]) -> Void) throws {
        let file = try SafeTensorsFile(path: vitWeights)
        var entries = file.tensors.map {
            SafeTensorsBuilder.Entry(
                name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, data: Array(file.data($0)))
        }
        edit(&entries)
        try SafeTensorsBuilder(entries: entries).write(to: vitWeights)
    }

    func testOverlappingOffsets() throws {
        var builder = SafeTensorsBuilder()
        let file = try SafeTensorsFile(path: vitWeights)
        builder.entries = file.tensors.map {
            .init(name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, data: Array(file.data($0)))
        }
        // Move the second tensor's range back by 4 bytes: it now overlaps the first.
        let header = builder.headerJSON().replacingOccurrences(
            of: "\"data_offsets\":[512,", with: "\"data_offsets\":[508,"
        )
        .replacingOccurrences(of: ",301568]", with: ",301564]")
        try SafeTensorsBuilder(entries: builder.entries).write(to: vitWeights, header: header)
        assertConvertFails(SafeTensorsError.badDataOffsets, ["model.safetensors", "overlap"])
    }

    func testOutOfRangeOffsets() throws {
        try rewriteVisionWeights { _ in }
        var bytes = try readBytes(vitWeights)
        bytes.removeLast(512)
        try writeBytes(bytes, to: vitWeights)
        assertConvertFails(SafeTensorsError.truncated, ["vit/clip-vit-tiny-yivl-84/model.safetensors", "truncated"])
    }

    func testDtypeShapeSizeMismatch() throws {
        let file = try SafeTensorsFile(path: vitWeights)
        let entries = file.tensors.map {
            SafeTensorsBuilder.Entry(
                name: $0.name, dtype: $0.dtype.rawValue, shape: $0.shape, data: Array(file.data($0)))
        }
        let header = SafeTensorsBuilder(entries: entries).headerJSON()
            .replacingOccurrences(
                of: "\"vision_model.embeddings.class_embedding\":{\"dtype\":\"F32\"",
                with: "\"vision_model.embeddings.class_embedding\":{\"dtype\":\"F16\"")
        try SafeTensorsBuilder(entries: entries).write(to: vitWeights, header: header)
        assertConvertFails(
            SafeTensorsError.malformedEntry,
            [
                "tensor vision_model.embeddings.class_embedding",
                "512 bytes of data for shape [128] of F16, which needs 256",
            ])
    }

    func testMissingShard() throws {
        try FileManager.default.removeItem(atPath: shard2)
        assertConvertFails(
            CheckpointError.missingFile,
            ["model.safetensors.index.json", "model-00002-of-00002.safetensors, which does not exist"])
    }

    func testIndexPointingOutsideTheFolder() throws {
        let index = model + "/model.safetensors.index.json"
        let text = try String(contentsOfFile: index, encoding: .utf8)
            .replacingOccurrences(
                of: "\"lm_head.weight\": \"model-00001-of-00002.safetensors\"",
                with: "\"lm_head.weight\": \"../../etc/model.safetensors\"")
        try text.write(toFile: index, atomically: true, encoding: .utf8)
        assertConvertFails(
            CheckpointError.outsideFolder,
            ["model.safetensors.index.json", "../../etc/model.safetensors, which is outside the model folder"])
    }

    func testMissingVisionFolder() throws {
        try FileManager.default.removeItem(atPath: model + "/vit")
        assertConvertFails(
            CheckpointError.missingFile,
            ["config.json", "mm_vision_tower \"./vit/clip-vit-tiny-yivl-84\"", "does not exist"])
    }

    func testMissingTensor() throws {
        try rewriteVisionWeights { $0.removeAll { $0.name == "vision_model.encoder.layers.2.mlp.fc1.bias" } }
        assertConvertFails(
            ModelError.tensorMismatch,
            ["checkpoint does not match its configs", "1 missing (vision_model.encoder.layers.2.mlp.fc1.bias)"])
    }

    func testWrongShape() throws {
        try rewriteVisionWeights { entries in
            let i = entries.firstIndex { $0.name == "vision_model.embeddings.position_embedding.weight" }!
            entries[i].shape = [128, 37]
        }
        assertConvertFails(
            ModelError.tensorMismatch,
            [
                "with the wrong shape",
                "vision_model.embeddings.position_embedding.weight is [128, 37], config implies [37, 128]",
            ])
    }

    func testUnexpectedTensorsAreListedWithTheOtherProblems() throws {
        try rewriteVisionWeights { entries in
            entries.removeAll { $0.name == "vision_model.post_layernorm.bias" }
            entries.append(
                .init(
                    name: "vision_model.extra_head.weight", dtype: "F32", shape: [2],
                    data: [UInt8](repeating: 0, count: 8)))
        }
        assertConvertFails(
            ModelError.tensorMismatch,
            ["1 missing (vision_model.post_layernorm.bias)", "1 unexpected (vision_model.extra_head.weight)"])
    }

    func testAConfigThatDisagreesWithTheWeights() throws {
        let path = model + "/config.json"
        let text = try String(contentsOfFile: path, encoding: .utf8).replacingOccurrences(
            of: "\"intermediate_size\": 768", with: "\"intermediate_size\": 1024")
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        assertConvertFails(
            ModelError.tensorMismatch,
            [
                "12 with the wrong shape",
                "model.layers.0.mlp.down_proj.weight is [256, 768], config implies [256, 1024]",
            ])
    }

    func testMissingTokenizer() throws {
        try FileManager.default.removeItem(atPath: model + "/tokenizer.model")
        assertConvertFails(CheckpointError.missingFile, ["missing tokenizer.model"])
    }
}

final class ElementConversionTests: XCTestCase {
    func convert(_ values: [Float], to encoding: TensorEncoding) -> (bits: [UInt16], saturated: Int) {
        var out = [UInt16](repeating: 0, count: values.count)
        let saturated = values.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                ElementConversion.convert(src, from: .f32, into: dst, to: encoding, count: values.count)
            }
        }
        return (out, saturated)
    }

    func testF32ToBF16RoundsToNearestEvenAndKeepsNaN() {
        let tieDown = Float(bitPattern: 0x3F80_8000)  // halfway, even below: rounds down
        let tieUp = Float(bitPattern: 0x3F81_8000)  // halfway, odd below: rounds up
        let above = Float(bitPattern: 0x3F80_8001)
        let (bits, _) = convert([tieDown, tieUp, above, .nan, -.infinity], to: .bf16)
        XCTAssertEqual(Array(bits[0..<3]), [0x3F80, 0x3F82, 0x3F81])
        XCTAssertTrue(Float(bitPattern: UInt32(bits[3]) << 16).isNaN)
        XCTAssertEqual(bits[4], 0xFF80)
    }

    func testF32ToF16SaturatesFiniteOverflowAndCountsIt() {
        let (bits, saturated) = convert([1e6, -70000, 65504, 1.0, .infinity], to: .f16)
        XCTAssertEqual(saturated, 2)
        XCTAssertEqual(bits[0], Float16.greatestFiniteMagnitude.bitPattern)
        XCTAssertEqual(bits[1], (-Float16.greatestFiniteMagnitude).bitPattern)
        XCTAssertEqual(bits[2], Float16(65504).bitPattern)
        XCTAssertEqual(bits[3], 0x3C00)
        XCTAssertEqual(bits[4], Float16.infinity.bitPattern, "a true infinity stays one")
    }
}

extension ConvertRejectsBadInputTests {
    func testAnOutputPathThatIsASourceFileIsRefused() throws {
        let shard = model + "/model-00001-of-00002.safetensors"
        let before = try readBytes(shard)
        assertVLQError(
            try Converter(options: ConvertOptions()).convert(folder: model, output: shard),
            kind: ConversionError.outputIsSource,
            contains: ["model-00001-of-00002.safetensors", "is a file of the source checkpoint"])
        XCTAssertEqual(try readBytes(shard), before)
    }
}
