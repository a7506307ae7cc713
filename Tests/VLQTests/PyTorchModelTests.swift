import CheckpointFiles
import Conversion
import Foundation
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// The tiny Yi-VL as the official repositories ship it: PyTorch `.bin` shards with an index, the tower
/// as `pytorch_model.bin` beside an OpenCLIP copy (Tests/Fixtures/tiny-yivl-bin, written by
/// tools/make_torch_tiny_model.py with views at offsets, a shared storage and a transposed view).
final class PyTorchModelTests: ScratchTestCase {
    static let binModel = Repo.root.appendingPathComponent("Tests/Fixtures/tiny-yivl-bin").path

    func tensors(_ bundle: String) throws -> [String: [String]] {
        let file = try VLQFile(path: bundle)
        return Dictionary(
            uniqueKeysWithValues: file.tensors.map {
                ($0.name, [$0.encoding.name, "\($0.shape)", hex64($0.checksum)])
            })
    }

    func testConvertingTheBinFolderGivesTheSafetensorsFolderTensorsBitForBit() throws {
        let fromBin = scratch.file("bin.vlq"), fromSafetensors = scratch.file("st.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: Self.binModel, output: fromBin)
        _ = try Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: fromSafetensors)
        XCTAssertEqual(try tensors(fromBin), try tensors(fromSafetensors))
        // Provenance lists the .bin files with their digests.
        let sources = try VLQFile(path: fromBin).metadata["provenance"]?["source_files"]?.arrayValue ?? []
        let paths = sources.compactMap { $0["path"]?.stringValue }
        XCTAssertTrue(paths.contains("pytorch_model-00001-of-00002.bin"), "\(paths)")
        XCTAssertTrue(paths.contains("vit/clip-vit-tiny-yivl-84/pytorch_model.bin"), "\(paths)")
        XCTAssertFalse(paths.contains { $0.contains("open_clip") }, "\(paths)")
    }

    func testConvertSaysWhichTowerFileItReadAndWhichItLeftAlone() throws {
        let lines = Converter.describeSources(try YiVLCheckpoint(folder: Self.binModel))
        XCTAssertEqual(
            lines,
            [
                "language model and projector: 2 pytorch shards (pytorch_model.bin.index.json)",
                "vision tower (vit/clip-vit-tiny-yivl-84): pytorch_model.bin; not read: open_clip_pytorch_model.bin",
            ])
    }

    func testRunAnswersFromTheBinFolderAsFromTheSafetensorsFolder() throws {
        for c in Reference.cases.prefix(2) {
            let result = try vlq("run", Self.binModel, "--image", c.image, "--prompt", c.question)
            XCTAssertEqual(result.status, 0, result.stderr)
            XCTAssertEqual(result.stdout, c.greedyAnswer + "\n")
        }
    }

    func testAFolderMixingFormatsConverts() throws {
        // Root shards in .bin, the tower in safetensors: as a user who converted only the tower has it.
        let model = scratch.file("mixed")
        try FileManager.default.copyItem(atPath: Self.binModel, toPath: model)
        let tower = model + "/vit/clip-vit-tiny-yivl-84/"
        try FileManager.default.removeItem(atPath: tower + "pytorch_model.bin")
        try FileManager.default.copyItem(
            atPath: Repo.tinyModel + "/vit/clip-vit-tiny-yivl-84/model.safetensors",
            toPath: tower + "model.safetensors")
        let mixed = scratch.file("mixed.vlq"), plain = scratch.file("plain.vlq")
        _ = try Converter(options: ConvertOptions()).convert(folder: model, output: mixed)
        _ = try Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: plain)
        XCTAssertEqual(try tensors(mixed), try tensors(plain))
    }
}
