import CheckpointFiles
import Conversion
import Foundation
import PyTorchCheckpoint
import SafeTensors
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// The layouts in which users have Yi-VL checkpoints: plain folders, Hugging Face cache snapshots
/// (files as symbolic links into the repository's blobs/), the repository cache folder itself, and
/// folders whose weights come in either format.
final class CheckpointLayoutTests: ScratchTestCase {
    /// Lays the tiny model out as `huggingface-cli download` does: every file a blob named by a
    /// digest, every snapshot entry a relative link to it, `refs/main` naming the snapshot.
    func makeRepositoryCache(revision: String = "0123456789abcdef0123456789abcdef01234567") throws -> String {
        let cache = scratch.file("hub/models--01-ai--Tiny-YiVL")
        let snapshot = cache + "/snapshots/" + revision
        let fm = FileManager.default
        try fm.createDirectory(atPath: cache + "/blobs", withIntermediateDirectories: true)
        try fm.createDirectory(atPath: cache + "/refs", withIntermediateDirectories: true)
        try revision.write(toFile: cache + "/refs/main", atomically: true, encoding: .utf8)
        let files = fm.enumerator(atPath: Repo.tinyModel)!.compactMap { $0 as? String }.filter { item in
            var isDirectory: ObjCBool = false
            return fm.fileExists(atPath: Repo.tinyModel + "/" + item, isDirectory: &isDirectory)
                && !isDirectory.boolValue
        }
        for (n, relative) in files.sorted().enumerated() {
            let blob = String(format: "%064x", n + 1)
            try fm.copyItem(atPath: Repo.tinyModel + "/" + relative, toPath: cache + "/blobs/" + blob)
            let link = snapshot + "/" + relative
            try fm.createDirectory(
                atPath: (link as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            let depth = relative.split(separator: "/").count + 1
            let target = String(repeating: "../", count: depth) + "blobs/" + blob
            try fm.createSymbolicLink(atPath: link, withDestinationPath: target)
        }
        return cache
    }

    func convert(_ folder: String, _ name: String) throws -> VLQFile {
        let output = scratch.file(name)
        _ = try Converter(options: ConvertOptions()).convert(folder: folder, output: output)
        return try VLQFile(path: output)
    }

    func tensorDigests(_ bundle: VLQFile) -> [String: UInt64] {
        Dictionary(uniqueKeysWithValues: bundle.tensors.map { ($0.name, $0.checksum) })
    }

    func testASnapshotFolderOfLinksIntoTheBlobsConvertsToTheSameTensors() throws {
        let cache = try makeRepositoryCache()
        let plain = try convert(Repo.tinyModel, "plain.vlq")
        let snapshot = try convert(cache + "/snapshots/0123456789abcdef0123456789abcdef01234567", "snapshot.vlq")
        XCTAssertEqual(tensorDigests(snapshot), tensorDigests(plain))
        XCTAssertEqual(snapshot.metadata["model"]?["name"]?.stringValue, "Tiny-YiVL")
        // Provenance names the files as the snapshot does, with the digests of their contents.
        XCTAssertEqual(snapshot.metadata["provenance"]?["source_files"], plain.metadata["provenance"]?["source_files"])
    }

    func testTheRepositoryCacheFolderStandsForTheSnapshotRefsMainNames() throws {
        let cache = try makeRepositoryCache()
        // A second, older snapshot must not be picked.
        try FileManager.default.createDirectory(atPath: cache + "/snapshots/aaaa", withIntermediateDirectories: true)
        let bundle = try convert(cache, "cache.vlq")
        XCTAssertEqual(tensorDigests(bundle), tensorDigests(try convert(Repo.tinyModel, "plain.vlq")))
        let checkpoint = try YiVLCheckpoint(folder: cache)
        XCTAssertEqual(checkpoint.model.resolvedFrom, cache)
        XCTAssertTrue(Converter.describeSources(checkpoint)[0].contains("Hugging Face repository cache"))
    }

    func testALinkThatLeavesTheRepositoryCacheIsRefused() throws {
        let cache = try makeRepositoryCache()
        let snapshot = cache + "/snapshots/0123456789abcdef0123456789abcdef01234567"
        let outside = scratch.file("elsewhere.safetensors")
        try FileManager.default.copyItem(atPath: Repo.tinyModel + "/model-00002-of-00002.safetensors", toPath: outside)
        let shard = snapshot + "/model-00002-of-00002.safetensors"
        try FileManager.default.removeItem(atPath: shard)
        try FileManager.default.createSymbolicLink(atPath: shard, withDestinationPath: outside)
        assertVLQError(
            try YiVLCheckpoint(folder: snapshot),
            kind: CheckpointError.outsideFolder,
            contains: [
                "model.safetensors.index.json", "model-00002-of-00002.safetensors resolves to",
                "outside the model folder and its Hugging Face cache",
            ])
    }

    func testAFolderOfLinksIntoTwoDifferentRepositoryCachesIsRefused() throws {
        let cache = try makeRepositoryCache()
        let other = scratch.file("hub/models--someone--else/blobs")
        try FileManager.default.createDirectory(atPath: other, withIntermediateDirectories: true)
        let model = try scratch.copyOfTinyModel()
        for name in ["config.json", "tokenizer.model"] {
            try FileManager.default.removeItem(atPath: model + "/" + name)
        }
        try FileManager.default.copyItem(atPath: Repo.tinyModel + "/tokenizer.model", toPath: other + "/tok")
        let configBlob = try FileManager.default.destinationOfSymbolicLink(
            atPath: cache + "/snapshots/0123456789abcdef0123456789abcdef01234567/config.json")
        try FileManager.default.createSymbolicLink(
            atPath: model + "/config.json",
            withDestinationPath: cache + "/snapshots/0123456789abcdef0123456789abcdef01234567/" + configBlob)
        try FileManager.default.createSymbolicLink(
            atPath: model + "/tokenizer.model", withDestinationPath: other + "/tok")
        assertVLQError(
            try YiVLCheckpoint(folder: model), kind: CheckpointError.outsideFolder,
            contains: ["tokenizer.model resolves to", "outside"])
    }

    func testAFIFOWhereAShardShouldBeIsAnErrorNotAHang() throws {
        let model = try scratch.copyOfTinyModel()
        let shard = model + "/model-00002-of-00002.safetensors"
        try FileManager.default.removeItem(atPath: shard)
        XCTAssertEqual(mkfifo(shard, 0o644), 0)
        assertVLQError(
            try YiVLCheckpoint(folder: model),
            kind: CoreError.notARegularFile,
            contains: ["model-00002-of-00002.safetensors", "not a regular file (a FIFO)"])
    }

    func testTheTransformersWeightsOfAFolderAreReadAndOtherWeightFilesNamed() throws {
        let folder = scratch.file("vit")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        var weights = SafeTensorsBuilder()
        weights.add("x", shape: [2])
        try weights.write(to: folder + "/model.safetensors")
        // An OpenCLIP copy with other key names, as the official tower folder holds: never opened.
        try writeBytes([1, 2, 3], to: folder + "/open_clip_pytorch_model.bin")
        try writeBytes([1, 2, 3], to: folder + "/pytorch_model.bin")
        let set = try ShardSet(folder: folder)
        XCTAssertEqual(set.tensorNames, ["x"])
        XCTAssertEqual(set.description, "model.safetensors")
        XCTAssertEqual(set.ignoredFiles, ["open_clip_pytorch_model.bin", "pytorch_model.bin"])
    }

    func testWithoutSafetensorsThePyTorchFileOfTransformersIsChosenNotTheOpenCLIPCopy() throws {
        let folder = scratch.file("vit")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try writeBytes([1, 2, 3], to: folder + "/open_clip_pytorch_model.bin")
        try writeBytes(Array("not a zip".utf8), to: folder + "/pytorch_model.bin")
        // The error names pytorch_model.bin: that is the file vlq chose to read.
        assertVLQError(
            try ShardSet(folder: folder), kind: TorchCheckpointError.malformedZip, contains: ["vit/pytorch_model.bin"])
    }

    func testAFolderWithoutWeightsSaysWhatItLookedFor() throws {
        let folder = scratch.file("empty")
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        try writeBytes([1], to: folder + "/open_clip_pytorch_model.bin")
        assertVLQError(
            try ShardSet(folder: folder), kind: CheckpointError.noWeights,
            contains: ["no weights", "pytorch_model*.bin"])
    }
}
