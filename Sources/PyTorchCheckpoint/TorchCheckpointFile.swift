@_exported import TensorSource
import VLQCore

/// A PyTorch `torch.save` checkpoint (`pytorch_model*.bin`): a zip archive holding a pickled state dict.
///
/// The archive (torch >= 1.6) holds `<archive>/data.pkl`, the pickle of the state dict, and one
/// stored entry `<archive>/data/<key>` per storage; tensors are views into those storages and are
/// used in place from the mapping. The pickle is read by `RestrictedUnpickler`, which never executes
/// anything: it only recognises the globals torch.save writes for tensors (formats/PYTORCH-CHECKPOINTS.md).
///
/// The top-level object must be a dict (or OrderedDict) of tensors. A nested dict
/// (`{"state_dict": ...}`, `{"model": ...}`) or any other value under a key is refused, naming the
/// key: flattening would invent tensor names, and skipping would silently drop weights.
public final class TorchCheckpointFile: MappedFileFormat, TensorFile, @unchecked Sendable {
    public let path: String
    public let mapped: MappedFile
    public var formatName: String { "pytorch" }
    public let tensors: [TensorInfo]
    private let byName: [String: Int]

    /// The version torch's own reader (caffe2 `PyTorchStreamReader`) accepts at most.
    static let newestArchiveVersion = 10

    public init(mapped: MappedFile) throws {
        let path = mapped.path
        self.path = path
        self.mapped = mapped
        let bytes = mapped.bytes
        try TorchCheckpointFile.refuseLegacyFormat(bytes, path: path)
        let archive = try TorchArchive(ZipDirectory(bytes, path: path), mapped: mapped)
        let pickleName = archive.prefix + "data.pkl"
        var unpickler = RestrictedUnpickler(
            pickle: archive.pickle, path: path, entryName: pickleName,
            fileSize: mapped.size
        ) { key in
            let name = archive.prefix + "data/" + key
            guard let entry = archive.directory.entry(name) else {
                throw VLQError(
                    TorchCheckpointError.missingStorage, path,
                    "\(pickleName) names storage \(key) but the archive has no entry \(name)")
            }
            let data = try archive.storedBytes(name)
            return (entry.dataOffset, data.count)
        }
        let root = try unpickler.run()
        var tensors = try TorchCheckpointFile.stateDict(unpickler, root: root, path: path, pickleName: pickleName)
        // The interface promises file order; the name breaks ties between tensors sharing a start.
        tensors.sort { ($0.fileOffset, $0.name) < ($1.fileOffset, $1.name) }
        var byName: [String: Int] = [:]
        for (index, tensor) in tensors.enumerated() {
            guard byName.updateValue(index, forKey: tensor.name) == nil else {
                throw VLQError(
                    TorchCheckpointError.notAStateDict, path, "\(pickleName) holds the key \"\(tensor.name)\" twice")
            }
        }
        self.tensors = tensors
        self.byName = byName
    }

    public func info(_ name: String) -> TensorInfo? {
        byName[name].map { tensors[$0] }
    }

    /// torch < 1.6 (or `_use_new_zipfile_serialization=False`) wrote a bare sequence of pickles (and
    /// before that a tar file), whose storages can only be found by trusting the pickles further.
    private static func refuseLegacyFormat(_ bytes: UnsafeRawBufferPointer, path: String) throws {
        let isPickle = bytes.count >= 2 && bytes[0] == 0x80 && bytes[1] <= 5
        let isTar = bytes.count >= 262 && Array(bytes[257..<262]) == Array("ustar".utf8)
        guard isPickle || isTar else { return }
        throw VLQError(
            TorchCheckpointError.unsupportedFormat,
            path,
            "legacy PyTorch format (torch < 1.6, or saved with _use_new_zipfile_serialization="
                + "False): not read; re-save it with a newer torch (torch.save(torch.load(f, weights_only=True), f)) "
                + "or convert it to safetensors")
    }

    /// The tensors of the top-level dict, named by their keys.
    private static func stateDict(
        _ unpickler: RestrictedUnpickler, root: Int, path: String,
        pickleName: String
    ) throws -> [TensorInfo] {
        let values = unpickler.values
        guard case .dict(let dict) = values[root] else {
            throw VLQError(
                TorchCheckpointError.notAStateDict, path,
                "\(pickleName) holds \(values[root].kindName), not a state dict (a dict of tensors)")
        }
        return try unpickler.dicts[dict].map { item in
            guard case .text(let name) = values[item.key] else {
                throw VLQError(
                    TorchCheckpointError.notAStateDict, path,
                    "\(pickleName): a state dict key is \(values[item.key].kindName), not a string")
            }
            switch values[item.value] {
            case .tensor(let t):
                return TensorInfo(
                    name: name, dtype: t.dtype, shape: t.shape, fileOffset: t.fileOffset,
                    byteCount: t.byteCount, strides: t.strides)
            case .dict:
                throw VLQError(
                    TorchCheckpointError.notAStateDict,
                    path,
                    "\(pickleName): \"\(name)\" holds a dict, not a tensor; nested checkpoints "
                        + "({\"state_dict\": ...}, {\"model\": ...}, training state) are not read: save the model's "
                        + "state_dict() itself")
            default:
                throw VLQError(
                    TorchCheckpointError.notAStateDict,
                    path,
                    "\(pickleName): \"\(name)\" holds \(values[item.value].kindName), not a "
                        + "tensor; only a state dict of tensors is read")
            }
        }
    }
}

/// The zip archive torch.save writes: every entry under one folder named after the file it was saved
/// to (the first entry's folder, as torch's reader takes it), metadata records checked.
struct TorchArchive {
    let directory: ZipDirectory
    let mapped: MappedFile
    /// "<archive>/".
    let prefix: String
    /// The bytes of `<archive>/data.pkl`.
    let pickle: UnsafeRawBufferPointer

    init(_ directory: ZipDirectory, mapped: MappedFile) throws {
        self.directory = directory
        self.mapped = mapped
        let path = mapped.path
        guard let first = directory.entries.first else {
            throw VLQError(TorchCheckpointError.notACheckpoint, path, "empty zip archive")
        }
        guard let slash = first.name.firstIndex(of: "/"), slash != first.name.startIndex else {
            throw VLQError(
                TorchCheckpointError.notACheckpoint,
                path,
                "zip entry \"\(first.name)\" is not inside a folder, as torch.save writes "
                    + "every entry: not a PyTorch checkpoint")
        }
        prefix = String(first.name[...slash])
        for entry in directory.entries where !entry.name.hasPrefix(prefix) {
            throw VLQError(
                TorchCheckpointError.notACheckpoint, path,
                "zip entry \"\(entry.name)\" is outside the archive folder \(prefix)")
        }
        guard directory.entry(prefix + "data.pkl") != nil else {
            throw VLQError(
                TorchCheckpointError.notACheckpoint, path,
                "zip archive has no \(prefix)data.pkl: not a torch.save checkpoint")
        }
        pickle = try TorchArchive.storedBytes(prefix + "data.pkl", directory: directory, mapped: mapped)
        try checkByteOrder()
        try checkVersions()
    }

    /// A stored (uncompressed) entry's bytes, in place in the mapping.
    func storedBytes(_ name: String) throws -> UnsafeRawBufferPointer {
        try TorchArchive.storedBytes(name, directory: directory, mapped: mapped)
    }

    private static func storedBytes(
        _ name: String, directory: ZipDirectory, mapped: MappedFile
    ) throws
        -> UnsafeRawBufferPointer
    {
        let path = mapped.path
        guard let entry = directory.entry(name) else {
            throw VLQError(TorchCheckpointError.notACheckpoint, path, "zip archive has no entry \(name)")
        }
        switch entry.method {
        case ZipEntry.stored: break
        case ZipEntry.deflated:
            throw VLQError(
                TorchCheckpointError.unsupportedZip,
                path,
                "zip entry \(name) is compressed (deflate); torch.save stores entries "
                    + "uncompressed and they are read in place: re-save it with torch.save, or zip it with -0")
        default:
            throw VLQError(
                TorchCheckpointError.unsupportedZip,
                path,
                "zip entry \(name) uses compression method \(entry.method); only stored "
                    + "entries are read")
        }
        // The directory checked the range; a failure here would be a bug, reported rather than trapped.
        guard let bytes = mapped.slice(offset: entry.dataOffset, count: entry.compressedSize) else {
            throw VLQError(TorchCheckpointError.malformedZip, path, "zip entry \(name) lies outside the file")
        }
        return bytes
    }

    /// A small metadata record as text; nil when absent.
    private func record(_ name: String) throws -> String? {
        guard directory.entry(prefix + name) != nil else { return nil }
        let bytes = try storedBytes(prefix + name)
        guard bytes.count <= 64, let text = String(validating: bytes, as: UTF8.self) else {
            throw VLQError(
                TorchCheckpointError.notACheckpoint, mapped.path, "\(prefix + name) is not a short text record")
        }
        // torch writes "3\n" to version, and no newline elsewhere.
        return String(text.drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }

    /// Storages are raw machine-order bytes; torch writes the order in `byteorder` (absent: little).
    private func checkByteOrder() throws {
        switch try record("byteorder") {
        case nil, "little": return
        case "big":
            throw VLQError(
                TorchCheckpointError.unsupportedFormat,
                mapped.path,
                "saved on a big-endian machine (\(prefix)byteorder: big); its storages "
                    + "are not read: load and re-save it on a little-endian machine, or convert it to safetensors")
        case let other?:
            throw VLQError(
                TorchCheckpointError.unsupportedFormat, mapped.path,
                "\(prefix)byteorder is \"\(other.prefix(64))\", not little or big")
        }
    }

    /// `version` (or `.data/version`) is required by torch's reader, which accepts 1 to 10; the Python
    /// layer's `.format_version` only changes how storage offsets may be computed, not the layout read here.
    private func checkVersions() throws {
        let path = mapped.path
        guard let text = try record(".data/version") ?? record("version") else {
            throw VLQError(
                TorchCheckpointError.notACheckpoint, path,
                "zip archive has no \(prefix)version record: not a torch.save checkpoint")
        }
        guard let version = Int(text), (1...TorchCheckpointFile.newestArchiveVersion).contains(version) else {
            throw VLQError(
                TorchCheckpointError.unsupportedFormat,
                path,
                "archive version \"\(text)\" is not one torch.save writes (1 to "
                    + "\(TorchCheckpointFile.newestArchiveVersion))")
        }
        if let format = try record(".format_version") {
            guard let value = Int(format), value >= 1 else {
                throw VLQError(
                    TorchCheckpointError.unsupportedFormat, path,
                    "\(prefix).format_version is \"\(format)\", not a version number")
            }
        }
    }
}
