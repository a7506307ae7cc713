import Conversion
import Foundation
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// Hyperparameters are untrusted numbers: a config or a bundle's metadata that would make vlq
/// overflow, divide by zero or allocate terabytes is refused with one line naming the file.
final class MalformedModelTests: ScratchTestCase {
    func editConfig(_ model: String, _ file: String, _ replace: (String) -> String) throws {
        let path = model + "/" + file
        try replace(try String(contentsOfFile: path, encoding: .utf8)).write(
            toFile: path, atomically: true, encoding: .utf8)
    }

    func testALayerCountThatWouldOverflowIsRefusedBeforeAnyTensorIsListed() throws {
        let model = try scratch.copyOfTinyModel()
        try editConfig(model, "config.json") {
            $0.replacingOccurrences(of: "\"num_hidden_layers\": 4", with: "\"num_hidden_layers\": 9223372036854775807")
        }
        assertVLQError(
            try YiVLCheckpoint(folder: model),
            kind: ModelError.invalidHyperparameter,
            contains: ["model/config.json", "num_hidden_layers is 9223372036854775807; it must lie in 1...1024"])
    }

    func testAHugeImageSizeIsRefusedBeforeItsPatchCountOverflows() throws {
        let model = try scratch.copyOfTinyModel()
        let vit = "vit/clip-vit-tiny-yivl-84/"
        try editConfig(model, vit + "config.json") {
            $0.replacingOccurrences(of: "\"image_size\": 84", with: "\"image_size\": 4611686018427387904")
                .replacingOccurrences(of: "\"patch_size\": 14", with: "\"patch_size\": 1")
        }
        try editConfig(model, vit + "preprocessor_config.json") {
            $0.replacingOccurrences(of: ": 84", with: ": 4611686018427387904")
        }
        assertVLQError(
            try YiVLCheckpoint(folder: model), kind: ModelError.invalidHyperparameter,
            contains: [vit + "config.json", "image_size is 4611686018427387904"])
    }

    func testZeroHeadsInAFolderConfigAreRefusedBeforeAnyWidthIsDividedByThem() throws {
        let model = try scratch.copyOfTinyModel()
        try editConfig(model, "config.json") {
            $0.replacingOccurrences(of: "\"num_attention_heads\": 8", with: "\"num_attention_heads\": 0")
        }
        assertVLQError(
            try YiVLCheckpoint(folder: model), kind: ModelError.invalidConfig,
            contains: ["model/config.json", "\"num_attention_heads\" is 0, must be at least 1"])
    }

    func testASelectLayerThatWouldOverflowWithAHugeTowerIsRefused() throws {
        let model = try scratch.copyOfTinyModel()
        try editConfig(model, "vit/clip-vit-tiny-yivl-84/config.json") {
            $0.replacingOccurrences(of: "\"num_hidden_layers\": 4", with: "\"num_hidden_layers\": 9223372036854775807")
        }
        assertVLQError(
            try YiVLCheckpoint(folder: model), kind: ModelError.invalidHyperparameter,
            contains: ["vision num_hidden_layers is 9223372036854775807"])
    }

    func testAnImageMeanOutsideZeroToOneIsRefusedBeforeItBecomesAPadColour() throws {
        let model = try scratch.copyOfTinyModel()
        try editConfig(model, "vit/clip-vit-tiny-yivl-84/preprocessor_config.json") {
            $0.replacingOccurrences(of: "0.48145466", with: "1e300")
        }
        assertVLQError(
            try YiVLCheckpoint(folder: model), kind: ModelError.invalidConfig,
            contains: ["preprocessor_config.json", "image_mean must lie in [0, 1]"])
    }

    // MARK: Bundle metadata

    func tinyBundle() throws -> String {
        let path = scratch.file("tiny.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: path)
        return path
    }

    /// The same tensors under edited metadata: what a hand-edited or hostile bundle looks like.
    func rewrite(_ bundlePath: String, to output: String, _ edit: (inout [String: JSONValue]) -> Void) throws {
        let bundle = try VLQFile(path: bundlePath)
        let writer = try VLQWriter(path: output, plan: bundle.tensors)
        for (i, record) in bundle.tensors.enumerated() {
            try writer.writeTensor(i) { try $0.append(bundle.data(record)) }
        }
        var metadata = bundle.metadata.objectValue!
        edit(&metadata)
        try writer.finish(metadata: .object(metadata), compression: .zstd)
    }

    func architecture(_ metadata: inout [String: JSONValue], _ part: String, _ key: String, _ value: JSONValue) {
        var a = metadata["architecture"]!.objectValue!
        var section = a[part]!.objectValue!
        section[key] = value
        a[part] = .object(section)
        metadata["architecture"] = .object(a)
    }

    func assertRunRefuses(
        _ bundle: String, _ fragments: [String], file: StaticString = #filePath, line: UInt = #line
    ) throws {
        let result = try vlq(
            "run", bundle, "--image", Repo.root.appendingPathComponent("Tests/Fixtures/images/palette.png").path,
            "--prompt", "What is this?", "--max-tokens", "2")
        XCTAssertEqual(result.status, 2, result.stderr, file: file, line: line)
        let lines = result.stderr.split(separator: "\n").filter { !$0.isEmpty }
        XCTAssertEqual(lines.count, 1, result.stderr, file: file, line: line)
        XCTAssertTrue(result.stderr.hasPrefix("vlq: error: \(bundle): "), result.stderr, file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(
                result.stderr.contains(fragment), "\(fragment) not in \(result.stderr)", file: file, line: line)
        }
    }

    func testBundleMetadataWithZeroHeadsZeroPatchOrAHugeCropIsRefused() throws {
        let source = try tinyBundle()
        let cases: [(String, (inout [String: JSONValue]) -> Void, String)] = [
            ("heads.vlq", { self.architecture(&$0, "language", "heads", 0) }, "num_attention_heads is 0"),
            ("patch.vlq", { self.architecture(&$0, "vision", "patch_size", 0) }, "patch_size is 0"),
            (
                "crop.vlq",
                { metadata in
                    var p = metadata["preprocessing"]!.objectValue!
                    p["crop_size"] = [1_099_511_627_776, 1_099_511_627_776]
                    metadata["preprocessing"] = .object(p)
                }, "crop size 1099511627776x1099511627776 is larger than the limit"
            ),
        ]
        for (name, edit, message) in cases {
            let bundle = scratch.file(name)
            try rewrite(source, to: bundle, edit)
            try assertRunRefuses(bundle, [message])
        }
    }

    func testBundleMetadataThatDisagreesWithTheTensorTableIsRefusedBeforeRunning() throws {
        let bundle = scratch.file("wider.vlq")
        try rewrite(try tinyBundle(), to: bundle) { self.architecture(&$0, "language", "intermediate_size", 1024) }
        try assertRunRefuses(
            bundle,
            [
                "tensor table does not match the metadata",
                "model.layers.0.mlp.down_proj.weight is [256, 768], metadata implies [256, 1024]",
            ])
    }
}
