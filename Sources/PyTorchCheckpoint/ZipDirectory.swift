import VLQCore

/// One entry of a zip archive, as its central directory records it, checked against its local header.
struct ZipEntry: Sendable {
    static let stored: UInt16 = 0
    static let deflated: UInt16 = 8

    var name: String
    var method: UInt16
    var headerOffset: Int
    /// Absolute offset of the entry's bytes (compressed or not) in the file, after its local header.
    var dataOffset: Int
    var compressedSize: Int
    var uncompressedSize: Int
}

/// The central directory of a zip archive held in memory or mapped, validated so that every entry's
/// local header and bytes lie inside the file, before the central directory, without overlapping.
///
/// Only what torch.save's writer (miniz) produces is needed, but read by the zip specification
/// (APPNOTE 6.3): end-of-central-directory record, Zip64 end record and locator (10 GB shards),
/// Zip64 extra fields. CRCs are not checked: that would read every byte of a 10 GB shard on open,
/// and torch does not check them either. Multi-disk archives and encryption are refused.
struct ZipDirectory {
    private static let endRecordSignature: UInt32 = 0x0605_4b50
    private static let zip64EndRecordSignature: UInt32 = 0x0606_4b50
    private static let zip64LocatorSignature: UInt32 = 0x0706_4b50
    private static let centralHeaderSignature: UInt32 = 0x0201_4b50
    private static let localHeaderSignature: UInt32 = 0x0403_4b50
    private static let endRecordSize = 22
    private static let zip64LocatorSize = 20
    private static let zip64EndRecordMinimumSize = 56
    private static let centralHeaderSize = 46
    private static let localHeaderSize = 30
    private static let zip64ExtraID: UInt16 = 0x0001

    let entries: [ZipEntry]
    private let indexByName: [String: Int]

    func entry(_ name: String) -> ZipEntry? {
        indexByName[name].map { entries[$0] }
    }

    init(_ bytes: UnsafeRawBufferPointer, path: String) throws {
        var reader = FieldReader(bytes: bytes, path: path)
        let end = try ZipDirectory.findEndRecord(&reader)
        let (entryCount, directoryOffset, directorySize, directoryLimit) = try ZipDirectory.readEndRecords(
            &reader, endRecord: end)
        guard let directoryEnd = Checked.add(directoryOffset, directorySize), directoryEnd <= directoryLimit else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip central directory (offset \(directoryOffset), \(directorySize) bytes) "
                    + "runs past the end-of-central-directory record")
        }
        // Each entry takes at least a fixed-size header: a count beyond that is corrupt, and nothing is
        // reserved by the declared count anyway.
        guard entryCount <= directorySize / ZipDirectory.centralHeaderSize else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "zip central directory declares \(entryCount) entries in \(directorySize) bytes")
        }
        var entries: [ZipEntry] = []
        var indexByName: [String: Int] = [:]
        var position = directoryOffset
        for _ in 0..<entryCount {
            let entry = try ZipDirectory.readEntry(
                &reader, at: &position, directoryOffset: directoryOffset,
                directoryEnd: directoryEnd)
            guard indexByName.updateValue(entries.count, forKey: entry.name) == nil else {
                throw VLQError(TorchCheckpointError.malformedZip, path, "zip entry \"\(entry.name)\" occurs twice")
            }
            entries.append(entry)
        }
        guard position == directoryEnd else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip central directory holds \(directoryEnd - position) bytes after its "
                    + "\(entryCount) entries")
        }
        try ZipDirectory.checkNoOverlap(entries, path: path)
        self.entries = entries
        self.indexByName = indexByName
    }

    /// The end-of-central-directory record: the last 22 bytes, or earlier when followed by a comment
    /// (at most 65535 bytes), whose length must then reach exactly to the end of the file.
    private static func findEndRecord(_ reader: inout FieldReader) throws -> Int {
        let size = reader.bytes.count
        guard size >= endRecordSize else {
            throw VLQError(
                TorchCheckpointError.malformedZip, reader.path, "\(size) bytes: too short to be a zip archive")
        }
        let lowest = max(0, size - endRecordSize - 0xffff)
        var position = size - endRecordSize
        while position >= lowest {
            if reader.u32(position) == endRecordSignature, Int(reader.u16(position + 20)) == size - position - 22 {
                return position
            }
            position -= 1
        }
        throw VLQError(
            TorchCheckpointError.malformedZip, reader.path, "not a zip archive: no end-of-central-directory record")
    }

    /// Entry count, central directory offset and size, and where the central directory must end by:
    /// from the Zip64 end record when a locator precedes the classic record.
    private static func readEndRecords(
        _ reader: inout FieldReader, endRecord: Int
    ) throws
        -> (count: Int, offset: Int, size: Int, limit: Int)
    {
        let path = reader.path
        let disk = reader.u16(endRecord + 4), directoryDisk = reader.u16(endRecord + 6)
        let countOnDisk = reader.u16(endRecord + 8), count16 = reader.u16(endRecord + 10)
        let size32 = reader.u32(endRecord + 12), offset32 = reader.u32(endRecord + 16)
        let locator = endRecord - zip64LocatorSize
        guard locator >= 0, reader.u32(locator) == zip64LocatorSignature else {
            guard disk == 0, directoryDisk == 0, countOnDisk == count16 else {
                throw VLQError(TorchCheckpointError.unsupportedZip, path, "multi-disk zip archives are not supported")
            }
            return (Int(count16), Int(offset32), Int(size32), endRecord)
        }
        guard reader.u32(locator + 4) == 0, reader.u32(locator + 16) == 1 else {
            throw VLQError(
                TorchCheckpointError.unsupportedZip, path, "multi-disk zip archives are not supported (Zip64 locator)")
        }
        guard let record = Checked.int(reader.u64(locator + 8)),
            let recordEnd = Checked.add(record, zip64EndRecordMinimumSize), recordEnd <= locator
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "Zip64 end record offset \(reader.u64(locator + 8)) is outside the archive")
        }
        guard reader.u32(record) == zip64EndRecordSignature else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "no Zip64 end record at offset \(record), where its locator points")
        }
        // The record's own size field counts the bytes after its first 12; extensible data may follow.
        guard let declared = Checked.int(reader.u64(record + 4)), declared >= zip64EndRecordMinimumSize - 12,
            let declaredEnd = Checked.add(record + 12, declared), declaredEnd <= locator
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "Zip64 end record size \(reader.u64(record + 4)) is invalid")
        }
        guard reader.u32(record + 16) == 0, reader.u32(record + 20) == 0,
            reader.u64(record + 24) == reader.u64(record + 32)
        else {
            throw VLQError(
                TorchCheckpointError.unsupportedZip, path,
                "multi-disk zip archives are not supported (Zip64 end record)")
        }
        guard let count = Checked.int(reader.u64(record + 32)), let size = Checked.int(reader.u64(record + 40)),
            let offset = Checked.int(reader.u64(record + 48))
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "Zip64 end record holds a count, size or offset beyond 2^63")
        }
        // The classic record keeps a real value wherever it fits and 0xFFFF... where it does not.
        guard agrees(UInt64(count16), count, sentinel: 0xffff), agrees(UInt64(countOnDisk), count, sentinel: 0xffff),
            agrees(UInt64(size32), size, sentinel: 0xffff_ffff),
            agrees(UInt64(offset32), offset, sentinel: 0xffff_ffff)
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip end record disagrees with the Zip64 end record")
        }
        return (count, offset, size, record)
    }

    private static func agrees(_ classic: UInt64, _ value: Int, sentinel: UInt64) -> Bool {
        classic == sentinel || classic == UInt64(value)
    }

    /// One central directory header at `position` (advanced past it), and its local header.
    private static func readEntry(
        _ reader: inout FieldReader, at position: inout Int, directoryOffset: Int,
        directoryEnd: Int
    ) throws -> ZipEntry {
        let path = reader.path
        let header = position
        guard directoryEnd - header >= centralHeaderSize, reader.u32(header) == centralHeaderSignature else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "zip central directory entry at offset \(header) is truncated or has no signature")
        }
        let flags = reader.u16(header + 8), method = reader.u16(header + 10)
        let compressed32 = reader.u32(header + 20), uncompressed32 = reader.u32(header + 24)
        let nameLength = Int(reader.u16(header + 28)), extraLength = Int(reader.u16(header + 30))
        let commentLength = Int(reader.u16(header + 32)), disk16 = reader.u16(header + 34)
        let localOffset32 = reader.u32(header + 42)
        let nameStart = header + centralHeaderSize
        let extraStart = nameStart + nameLength
        let next = extraStart + extraLength + commentLength
        guard next <= directoryEnd else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "zip central directory entry at offset \(header) runs past the directory")
        }
        let nameBytes = reader.bytes[nameStart..<extraStart]
        guard let name = String(validating: nameBytes, as: UTF8.self) else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip entry name at offset \(nameStart) is not valid UTF-8")
        }
        var sizes = Zip64Fields(
            uncompressed: UInt64(uncompressed32), compressed: UInt64(compressed32),
            localOffset: UInt64(localOffset32), disk: UInt32(disk16))
        try sizes.readExtra(
            reader, from: extraStart, to: extraStart + extraLength,
            needs: (
                uncompressed32 == 0xffff_ffff, compressed32 == 0xffff_ffff,
                localOffset32 == 0xffff_ffff, disk16 == 0xffff
            ),
            entry: name)
        guard sizes.disk == 0 else {
            throw VLQError(TorchCheckpointError.unsupportedZip, path, "zip entry \"\(name)\" is on another disk")
        }
        guard let compressed = Checked.int(sizes.compressed), let uncompressed = Checked.int(sizes.uncompressed),
            let localOffset = Checked.int(sizes.localOffset)
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip entry \"\(name)\" declares a size or offset beyond 2^63")
        }
        // Bit 0: traditional encryption; bit 6: strong encryption.
        guard flags & 0x41 == 0 else {
            throw VLQError(TorchCheckpointError.unsupportedZip, path, "zip entry \"\(name)\" is encrypted")
        }
        guard method != ZipEntry.stored || compressed == uncompressed else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip entry \"\(name)\" is stored but declares \(compressed) bytes stored "
                    + "for \(uncompressed)")
        }
        let dataOffset = try checkLocalHeader(
            reader, at: localOffset, name: name, nameBytes: nameBytes,
            method: method, flags: flags, compressed: compressed,
            uncompressed: uncompressed, directoryOffset: directoryOffset)
        position = next
        return ZipEntry(
            name: name, method: method, headerOffset: localOffset, dataOffset: dataOffset,
            compressedSize: compressed, uncompressedSize: uncompressed)
    }

    /// The local header must name the same entry with the same method; its sizes may be zero when a
    /// data descriptor follows (torch's writer does that) or 0xFFFFFFFF when they are in a Zip64 field.
    /// The central directory is authoritative for sizes: torch's writer (miniz) puts the header offset
    /// in some local Zip64 fields, so those are skipped, not compared. Returns the data offset.
    private static func checkLocalHeader(
        _ reader: FieldReader, at offset: Int, name: String,
        nameBytes: Slice<UnsafeRawBufferPointer>, method: UInt16, flags: UInt16,
        compressed: Int, uncompressed: Int, directoryOffset: Int
    ) throws -> Int {
        let path = reader.path
        guard offset <= directoryOffset - localHeaderSize, reader.u32(offset) == localHeaderSignature else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip entry \"\(name)\": no local header at offset \(offset)")
        }
        let localFlags = reader.u16(offset + 6), localMethod = reader.u16(offset + 8)
        let localCompressed = reader.u32(offset + 18), localUncompressed = reader.u32(offset + 22)
        let nameLength = Int(reader.u16(offset + 26)), extraLength = Int(reader.u16(offset + 28))
        let nameStart = offset + localHeaderSize
        let dataOffset = nameStart + nameLength + extraLength
        guard dataOffset <= directoryOffset, let dataEnd = Checked.add(dataOffset, compressed),
            dataEnd <= directoryOffset
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip entry \"\(name)\" (\(compressed) bytes at offset \(dataOffset)) runs "
                    + "into the central directory or past the end of the file")
        }
        guard nameLength == nameBytes.count,
            reader.bytes[nameStart..<(nameStart + nameLength)].elementsEqual(nameBytes)
        else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip entry \"\(name)\": its local header names another entry")
        }
        guard localMethod == method, localFlags & 0x41 == flags & 0x41 else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip entry \"\(name)\": local header disagrees with the central directory "
                    + "on compression or encryption")
        }
        let hasDescriptor = localFlags & 0x08 != 0
        func agrees(_ local: UInt32, _ actual: Int) -> Bool {
            local == 0xffff_ffff || (hasDescriptor && local == 0) || Int(local) == actual
        }
        guard agrees(localCompressed, compressed), agrees(localUncompressed, uncompressed) else {
            throw VLQError(
                TorchCheckpointError.malformedZip,
                path,
                "zip entry \"\(name)\": local header sizes (\(localCompressed), "
                    + "\(localUncompressed)) disagree with the central directory (\(compressed), \(uncompressed))")
        }
        return dataOffset
    }

    /// Entries' local headers and data must not share bytes: overlapping entries are a crafted archive.
    private static func checkNoOverlap(_ entries: [ZipEntry], path: String) throws {
        let ranges = entries.map { (start: $0.headerOffset, end: $0.dataOffset + $0.compressedSize, name: $0.name) }
            .sorted { $0.start < $1.start }
        for (previous, next) in zip(ranges, ranges.dropFirst()) where next.start < previous.end {
            throw VLQError(
                TorchCheckpointError.malformedZip, path, "zip entries \"\(previous.name)\" and \"\(next.name)\" overlap"
            )
        }
    }
}

/// The values a central directory header may move into a Zip64 extended-information extra field.
private struct Zip64Fields {
    var uncompressed: UInt64
    var compressed: UInt64
    var localOffset: UInt64
    var disk: UInt32

    /// Walks the extra fields in `start..<end` (each: id, size, data) and takes, from the Zip64 field,
    /// the 8-byte values (4 for the disk) whose 32-bit fields were saturated, in the specified order.
    mutating func readExtra(
        _ reader: FieldReader, from start: Int, to end: Int,
        needs: (uncompressed: Bool, compressed: Bool, offset: Bool, disk: Bool),
        entry: String
    ) throws {
        let path = reader.path
        var position = start
        var sawZip64 = false
        while position < end {
            guard end - position >= 4 else {
                throw VLQError(TorchCheckpointError.malformedZip, path, "zip entry \"\(entry)\": extra field truncated")
            }
            let id = reader.u16(position), size = Int(reader.u16(position + 2))
            let dataStart = position + 4
            guard size <= end - dataStart else {
                throw VLQError(
                    TorchCheckpointError.malformedZip, path,
                    "zip entry \"\(entry)\": extra field of \(size) bytes runs past its header")
            }
            if id == 0x0001 {
                guard !sawZip64 else {
                    throw VLQError(
                        TorchCheckpointError.malformedZip, path, "zip entry \"\(entry)\": two Zip64 extra fields")
                }
                sawZip64 = true
                var field = dataStart
                func take(_ width: Int) throws -> UInt64 {
                    guard dataStart + size - field >= width else {
                        throw VLQError(
                            TorchCheckpointError.malformedZip, path,
                            "zip entry \"\(entry)\": Zip64 extra field too short")
                    }
                    defer { field += width }
                    return width == 8 ? reader.u64(field) : UInt64(reader.u32(field))
                }
                if needs.uncompressed { uncompressed = try take(8) }
                if needs.compressed { compressed = try take(8) }
                if needs.offset { localOffset = try take(8) }
                if needs.disk { disk = UInt32(try take(4)) }
            }
            position = dataStart + size
        }
        guard sawZip64 || !(needs.uncompressed || needs.compressed || needs.offset || needs.disk) else {
            throw VLQError(
                TorchCheckpointError.malformedZip, path,
                "zip entry \"\(entry)\" has a saturated size or offset but no Zip64 extra field")
        }
    }
}

/// Little-endian fields of the archive at offsets the caller has bounds-checked; an offset outside
/// the bytes reads as 0 (which no signature or size check accepts) rather than trapping.
struct FieldReader {
    let bytes: UnsafeRawBufferPointer
    let path: String

    private func load<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
        guard offset >= 0, offset <= bytes.count - MemoryLayout<T>.size else { return 0 }
        return T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self))
    }

    func u16(_ offset: Int) -> UInt16 { load(offset, UInt16.self) }
    func u32(_ offset: Int) -> UInt32 { load(offset, UInt32.self) }
    func u64(_ offset: Int) -> UInt64 { load(offset, UInt64.self) }
}
