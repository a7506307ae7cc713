import VLQCore

/// Constants and the fixed header of the .vlq format; `formats/VLQ-BUNDLE.md` is the normative text.
public enum VLQLayout {
    public static let magic: [UInt8] = [0x89, 0x56, 0x4C, 0x51, 0x0D, 0x0A, 0x1A, 0x0A]  // "\x89VLQ\r\n\x1a\n"
    public static let majorVersion: UInt16 = 1
    public static let minorVersion: UInt16 = 0
    public static let headerSize = 128
    public static let defaultAlignment = 64
    public static let maxRank = 8
}

public enum MetadataCompression: UInt32, Sendable {
    case none = 0
    case zstd = 1
}

/// The 128-byte header at offset 0.
public struct VLQHeader: Equatable, Sendable {
    public var majorVersion = VLQLayout.majorVersion
    public var minorVersion = VLQLayout.minorVersion
    public var headerSize = UInt32(VLQLayout.headerSize)
    public var fileSize: UInt64 = 0
    public var alignment: UInt32 = UInt32(VLQLayout.defaultAlignment)
    public var flags: UInt32 = 0
    public var dataOffset: UInt64 = 0
    public var dataSize: UInt64 = 0
    public var tableOffset: UInt64 = 0
    public var tableSize: UInt64 = 0
    public var tensorCount: UInt64 = 0
    public var metadataOffset: UInt64 = 0
    public var metadataStoredSize: UInt64 = 0
    public var metadataSize: UInt64 = 0
    public var metadataCompression: UInt32 = 0
    public var tableChecksum: UInt64 = 0
    public var metadataChecksum: UInt64 = 0

    public init() {}

    /// The header's bytes, ending with the XXH3-64 of the 120 bytes before it.
    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        w.raw(VLQLayout.magic)
        w.u16(majorVersion)
        w.u16(minorVersion)
        w.u32(headerSize)
        w.u64(fileSize)
        w.u32(alignment)
        w.u32(flags)
        w.u64(dataOffset)
        w.u64(dataSize)
        w.u64(tableOffset)
        w.u64(tableSize)
        w.u64(tensorCount)
        w.u64(metadataOffset)
        w.u64(metadataStoredSize)
        w.u64(metadataSize)
        w.u32(metadataCompression)
        w.u32(0)
        w.u64(tableChecksum)
        w.u64(metadataChecksum)
        precondition(w.bytes.count == 120)
        w.u64(XXH3Hasher.hash(w.bytes))
        return w.bytes
    }

    /// Parses and checks the header; `reason` of the thrown error says what is wrong.
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> VLQHeader {
        guard bytes.count >= 8, Array(bytes[0..<8]) == VLQLayout.magic else {
            throw VLQError(BundleError.notABundle, nil, "not a .vlq bundle (bad magic)")
        }
        guard bytes.count >= VLQLayout.headerSize else {
            throw VLQError(
                BundleError.sizeMismatch, nil,
                "truncated: \(bytes.count) bytes, shorter than the \(VLQLayout.headerSize)-byte header")
        }
        var r = ByteReader(bytes, position: 8)
        var h = VLQHeader()
        do {
            h.majorVersion = try r.u16()
            h.minorVersion = try r.u16()
            h.headerSize = try r.u32()
            h.fileSize = try r.u64()
            h.alignment = try r.u32()
            h.flags = try r.u32()
            h.dataOffset = try r.u64()
            h.dataSize = try r.u64()
            h.tableOffset = try r.u64()
            h.tableSize = try r.u64()
            h.tensorCount = try r.u64()
            h.metadataOffset = try r.u64()
            h.metadataStoredSize = try r.u64()
            h.metadataSize = try r.u64()
            h.metadataCompression = try r.u32()
            _ = try r.u32()
            h.tableChecksum = try r.u64()
            h.metadataChecksum = try r.u64()
            let stored = try r.u64()
            guard stored == XXH3Hasher.hash(UnsafeRawBufferPointer(rebasing: bytes[0..<120])) else {
                throw VLQError(BundleError.checksumMismatch, nil, "header checksum mismatch: the header is corrupted")
            }
        } catch is ByteReader.OutOfBounds {
            throw VLQError(BundleError.sizeMismatch, nil, "truncated header")
        }
        guard h.majorVersion == VLQLayout.majorVersion else {
            throw VLQError(
                BundleError.unsupportedVersion, nil,
                "format version \(h.majorVersion).\(h.minorVersion) is not supported "
                    + "(this vlq reads \(VLQLayout.majorVersion).x)")
        }
        guard h.headerSize >= UInt32(VLQLayout.headerSize) else {
            throw VLQError(BundleError.malformedHeader, nil, "header size \(h.headerSize) is below 128")
        }
        guard h.alignment >= 64, h.alignment & (h.alignment - 1) == 0, h.alignment <= 1 << 20 else {
            throw VLQError(
                BundleError.malformedHeader, nil, "alignment \(h.alignment) is not a power of two between 64 and 1 MiB")
        }
        return h
    }
}
