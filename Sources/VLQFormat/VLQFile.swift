import VLQCore

/// A .vlq bundle opened for reading, memory-mapped.
///
/// Opening validates the header, the layout of the sections, the tensor table (every offset and length
/// inside the data region, no overlaps, lengths consistent with shapes and encodings) and the
/// metadata's checksum, so that using any tensor afterwards cannot read outside the mapping. Tensor
/// checksums are verified by `verifyChecksums`, which reads every byte (`vlq check`).
public final class VLQFile: MappedFileFormat, @unchecked Sendable {
    public let path: String
    public let mapped: MappedFile
    public let header: VLQHeader
    /// Tensors in table order.
    public let tensors: [TensorRecord]
    public let metadata: JSONValue
    private let indexByName: [String: Int]

    /// A bundle already in memory or mapped (`mapped.path` names it in errors): what `init(path:)`
    /// opens, and what the fuzzer feeds.
    public init(mapped: MappedFile) throws {
        let path = mapped.path
        self.path = path
        self.mapped = mapped
        let fail = { (kind: BundleError, reason: String) in VLQError(kind, path, reason) }
        let bytes = mapped.bytes
        let header: VLQHeader
        do { header = try VLQHeader.decode(bytes) } catch let e as VLQError { throw e.about(path) }
        self.header = header

        guard header.fileSize == UInt64(bytes.count) else {
            if header.fileSize > UInt64(bytes.count) {
                throw fail(
                    .sizeMismatch, "truncated: the header says \(header.fileSize) bytes, the file has \(bytes.count)")
            }
            throw fail(
                .sizeMismatch,
                "\(UInt64(bytes.count) - header.fileSize) unexpected bytes after the end the header gives")
        }
        guard let dataOffset = Checked.int(header.dataOffset), let dataSize = Checked.int(header.dataSize),
            let tableOffset = Checked.int(header.tableOffset), let tableSize = Checked.int(header.tableSize),
            let metadataOffset = Checked.int(header.metadataOffset),
            let metadataStored = Checked.int(header.metadataStoredSize),
            let metadataSize = Checked.int(header.metadataSize),
            let tensorCount = Checked.int(header.tensorCount)
        else { throw fail(.malformedHeader, "section offsets out of range") }
        let alignment = Int(header.alignment)
        let sections = [
            ("data region", dataOffset, dataSize), ("tensor table", tableOffset, tableSize),
            ("metadata", metadataOffset, metadataStored),
        ]
        for (name, offset, size) in sections {
            guard offset >= Int(header.headerSize), let end = Checked.add(offset, size), end <= bytes.count else {
                throw fail(.malformedHeader, "\(name) [\(offset), +\(size)) lies outside the file")
            }
        }
        for i in 0..<sections.count {
            for j in (i + 1)..<sections.count {
                let a = sections[i], b = sections[j]
                if a.2 > 0, b.2 > 0, a.1 < b.1 + b.2, b.1 < a.1 + a.2 {
                    throw fail(.malformedHeader, "\(a.0) and \(b.0) overlap")
                }
            }
        }
        guard dataOffset % alignment == 0 else {
            throw fail(.malformedHeader, "data region is not aligned to \(alignment)")
        }

        let tableBytes = mapped.slice(offset: tableOffset, count: tableSize)!
        guard XXH3Hasher.hash(tableBytes) == header.tableChecksum else {
            throw fail(.checksumMismatch, "tensor table checksum mismatch: the table is corrupted")
        }
        guard tensorCount <= tableSize / TensorRecord.fixedSize else {
            throw fail(.malformedHeader, "tensor count \(tensorCount) cannot fit in a \(tableSize)-byte table")
        }
        var reader = ByteReader(tableBytes)
        var tensors: [TensorRecord] = []
        var indexByName: [String: Int] = [:]
        tensors.reserveCapacity(tensorCount)
        for i in 0..<tensorCount {
            let r: TensorRecord
            do { r = try TensorRecord.decode(&reader, index: i) } catch let e as VLQError { throw e.about(path) }
            guard indexByName.updateValue(i, forKey: r.name) == nil else {
                throw fail(.malformedTensorRecord, "tensor \(r.name) appears twice")
            }
            let expected: Int
            do {
                expected = try r.encoding.checkedByteCount(shape: r.shape, groupSize: r.groupSize)
            } catch let e as VLQError {
                throw VLQError(e.kind, path, "tensor \(r.name): \(e.reason)")
            }
            guard expected == r.byteCount else {
                throw fail(
                    .malformedTensorRecord,
                    "tensor \(r.name): \(r.byteCount) bytes do not match shape \(r.shape) in \(r.encoding.name)")
            }
            guard r.offset % alignment == 0 else {
                throw fail(
                    .malformedTensorRecord, "tensor \(r.name): offset \(r.offset) is not aligned to \(alignment)")
            }
            guard r.offset >= dataOffset, let end = Checked.add(r.offset, r.byteCount), end <= dataOffset + dataSize
            else {
                throw fail(
                    .malformedTensorRecord,
                    "tensor \(r.name): data [\(r.offset), +\(r.byteCount)) lies outside the data region")
            }
            tensors.append(r)
        }
        guard reader.remaining == 0 else {
            throw fail(.malformedTensorRecord, "\(reader.remaining) unused bytes at the end of the tensor table")
        }
        let byOffset = tensors.sorted { ($0.offset, $0.byteCount) < ($1.offset, $1.byteCount) }
        for (a, b) in zip(byOffset, byOffset.dropFirst()) where a.offset + a.byteCount > b.offset && b.byteCount > 0 {
            throw fail(.malformedTensorRecord, "tensors \(a.name) and \(b.name) overlap")
        }
        self.tensors = tensors
        self.indexByName = indexByName

        let storedMetadata = mapped.slice(offset: metadataOffset, count: metadataStored)!
        guard XXH3Hasher.hash(storedMetadata) == header.metadataChecksum else {
            throw fail(.checksumMismatch, "metadata checksum mismatch: the metadata is corrupted")
        }
        let metadataBytes: [UInt8]
        switch MetadataCompression(rawValue: header.metadataCompression) {
        case .none?:
            guard metadataStored == metadataSize else {
                throw fail(.malformedMetadata, "uncompressed metadata size mismatch")
            }
            metadataBytes = Array(storedMetadata)
        case .zstd?:
            guard metadataSize <= 1 << 30 else {
                throw fail(.malformedMetadata, "metadata claims \(metadataSize) bytes, over 1 GiB")
            }
            // Not allocated by the size the header declares: the buffer grows with the real output.
            do { metadataBytes = try Zstd.decompress(storedMetadata, expectedSize: metadataSize) } catch let e
                as VLQError
            {
                throw VLQError(e.kind, path, "metadata: \(e.reason)")
            }
        case nil:
            throw fail(.malformedMetadata, "unknown metadata compression \(header.metadataCompression)")
        }
        do { metadata = try JSONValue.parse(metadataBytes) } catch {
            throw fail(.malformedMetadata, "metadata: \(error)")
        }
        guard metadata.objectValue != nil else { throw fail(.malformedMetadata, "metadata is not a JSON object") }
    }

    public func record(_ name: String) -> TensorRecord? {
        indexByName[name].map { tensors[$0] }
    }

    /// The tensor's bytes in place in the mapping (bounds were checked on open).
    public func data(_ record: TensorRecord) -> UnsafeRawBufferPointer {
        mapped.slice(offset: record.offset, count: record.byteCount)!
    }

    /// Hashes every tensor in file order and throws at the first whose checksum differs.
    /// `progress` is called with the bytes verified so far.
    public func verifyChecksums(progress: (Int) -> Void = { _ in }) throws {
        _ = try verify(scanValues: false, progress: progress)
    }

    /// Hashes every tensor in file order and throws at the first whose checksum differs; with
    /// `scanValues`, also counts each tensor's non-finite values in the same pass (names with counts).
    public func verify(scanValues: Bool, progress: (Int) -> Void = { _ in }) throws -> [(name: String, nonFinite: Int)]
    {
        var done = 0
        var nonFinite: [(name: String, nonFinite: Int)] = []
        let chunk = 32 << 20
        for r in tensors.sorted(by: { $0.offset < $1.offset }) {
            // Hashed in chunks, each released after use: resident memory stays at one chunk.
            let hasher = XXH3Hasher()
            let bytes = data(r)
            var offset = 0
            var count = 0
            while offset < bytes.count {
                let n = min(chunk, bytes.count - offset)
                let piece = UnsafeRawBufferPointer(rebasing: bytes[offset..<(offset + n)])
                hasher.update(piece)
                // Chunks are a multiple of every element size, so no value straddles two of them.
                if scanValues && !r.encoding.isQuantized { count += NonFiniteValues.count(piece, encoding: r.encoding) }
                mapped.release(offset: r.offset + offset, count: n)
                offset += n
            }
            let digest = hasher.digest()
            guard digest == r.checksum else {
                throw VLQError(
                    BundleError.checksumMismatch,
                    path,
                    "tensor \(r.name): checksum mismatch (stored \(hex64(r.checksum)), computed \(hex64(digest))): "
                        + "its data is corrupted"
                )
            }
            if scanValues && r.encoding.isQuantized {
                count = NonFiniteValues.count(bytes, encoding: r.encoding, shape: r.shape, groupSize: r.groupSize)
            }
            if count > 0 { nonFinite.append((r.name, count)) }
            done += r.byteCount
            progress(done)
        }
        return nonFinite
    }
}
