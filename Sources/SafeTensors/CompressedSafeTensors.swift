import VLQCore

/// A safetensors file inside one zstd frame: the container of `.vlqstats` and `.vlqref` files, told
/// apart by the `format` entry of their metadata.
public enum CompressedSafeTensors {
    public static func write(_ file: SafeTensorsWriter, to path: String) throws {
        let output = try AtomicOutputFile(targetPath: path)
        try output.write(Zstd.compress(file.serialized(), level: 3), at: 0)
        try output.commit()
    }

    /// Reads and validates the file; `format` must equal its metadata's `format`; `kind` (".vlqstats")
    /// names the expected file type in errors.
    public static func read(_ path: String, format: String, kind: String) throws -> SafeTensorsFile {
        let packed = try MappedFile(path: path)
        return try withExtendedLifetime(packed) {
            try read(bytes: packed.bytes, source: path, format: format, kind: kind)
        }
    }

    /// The same from bytes already in memory; `source` names them in errors.
    public static func read(
        bytes packed: UnsafeRawBufferPointer, source path: String, format: String, kind: String
    ) throws -> SafeTensorsFile {
        guard let size = Zstd.frameContentSize(packed) else {
            throw VLQError(SafeTensorsError.wrongFormat, path, "not a \(kind) file (no zstd frame)")
        }
        let raw: [UInt8]
        // Not allocated by the size the frame declares: a few bytes may declare terabytes.
        do { raw = try Zstd.decompress(packed, expectedSize: size) } catch let e as VLQError {
            throw VLQError(e.kind, path, e.reason)
        }
        let file = try SafeTensorsFile(mapped: MappedFile(bytes: raw, path: path))
        guard file.metadata["format"] == format else {
            throw VLQError(SafeTensorsError.wrongFormat, path, "not a \(kind) file")
        }
        return file
    }
}
