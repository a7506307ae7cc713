import Dispatch
import Synchronization
import VLQCore

/// Writes a .vlq bundle in one pass over the tensors, whatever their size.
///
/// The layout of the data region is fixed from the plan before any byte is written, so tensors can
/// arrive in any order (convert feeds them in source-file order) and in chunks; the tensor table and
/// the metadata follow the data, and the header is written last. Output goes through an
/// `AtomicOutputFile`: until `finish` succeeds nothing exists at the target path.
public final class VLQWriter {
    public let path: String
    public let alignment: Int
    public private(set) var records: [TensorRecord]
    private let output: AtomicOutputFile
    private let dataOffset: Int
    private let dataEnd: Int
    private var written: [Bool]
    private let indexByName: [String: Int]

    /// `plan` gives each tensor's name, encoding, component, shape and source dtype, in the order
    /// their data will be laid out; offsets, lengths and checksums are filled in here.
    public init(path: String, plan: [TensorRecord], alignment: Int = VLQLayout.defaultAlignment) throws {
        precondition(alignment >= 64 && alignment & (alignment - 1) == 0)
        self.path = path
        self.alignment = alignment
        var records = plan
        var offset = Checked.alignUp(VLQLayout.headerSize, to: alignment)!
        dataOffset = offset
        var indexByName: [String: Int] = [:]
        for i in records.indices {
            let r = records[i]
            guard indexByName.updateValue(i, forKey: r.name) == nil else {
                throw VLQError(BundleError.writeMismatch, path, "tensor \(r.name) is planned twice")
            }
            guard r.shape.count <= VLQLayout.maxRank,
                let bytes = r.encoding.byteCount(shape: r.shape, groupSize: r.groupSize),
                let end = Checked.add(offset, bytes), let next = Checked.alignUp(end, to: alignment)
            else { throw VLQError(BundleError.writeMismatch, path, "tensor \(r.name): shape \(r.shape) is too large") }
            records[i].offset = offset
            records[i].byteCount = bytes
            offset = next
        }
        dataEnd = offset
        self.records = records
        self.indexByName = indexByName
        written = Array(repeating: false, count: records.count)
        output = try AtomicOutputFile(targetPath: path)
        // Sizing the file now makes the padding between tensors read as zeros without writing it.
        try output.setLength(dataEnd)
    }

    public func index(of name: String) -> Int? { indexByName[name] }

    /// Receives one tensor's bytes in order, in as many chunks as the producer likes.
    public final class TensorSink {
        fileprivate let writer: VLQWriter
        fileprivate let index: Int
        fileprivate var position = 0
        fileprivate let hasher = XXH3Hasher()

        fileprivate init(writer: VLQWriter, index: Int) {
            self.writer = writer
            self.index = index
        }

        public var remaining: Int { writer.records[index].byteCount - position }

        public func append(_ bytes: UnsafeRawBufferPointer) throws {
            let record = writer.records[index]
            guard bytes.count <= remaining else {
                throw VLQError(
                    BundleError.writeMismatch, writer.path,
                    "tensor \(record.name): more bytes than its \(record.byteCount)")
            }
            hasher.update(bytes)
            try writer.output.write(bytes, at: record.offset + position)
            position += bytes.count
        }
    }

    /// Tensor bytes being written on a background thread (`writeTensorInBackground`).
    private let background = BackgroundWrites()

    /// Writes tensor `index` from `bytes` (exactly its byte length) on a background thread, so that the
    /// caller computes the next tensor while the kernel copies this one into the file and it is hashed; at
    /// most two wait their turn, which bounds their memory. A failure surfaces on a later call or in
    /// `finish`.
    public func writeTensorInBackground(_ index: Int, bytes: [UInt8]) throws {
        precondition(!written[index], "tensor written twice")
        try background.rethrow()
        let record = records[index]
        guard bytes.count == record.byteCount else {
            throw VLQError(
                BundleError.writeMismatch, path,
                "tensor \(record.name): \(bytes.count) bytes written of \(record.byteCount)")
        }
        written[index] = true
        background.submit(index: index) { [output = UncheckedOutput(file: output)] in
            let hasher = XXH3Hasher()
            try bytes.withUnsafeBytes {
                hasher.update($0)
                try output.file.write($0, at: record.offset)
            }
            return hasher.digest()
        }
    }

    /// Writes tensor `index` through `produce`, which must deliver exactly its byte length.
    public func writeTensor(_ index: Int, _ produce: (TensorSink) throws -> Void) throws {
        precondition(!written[index], "tensor written twice")
        let sink = TensorSink(writer: self, index: index)
        try produce(sink)
        guard sink.remaining == 0 else {
            throw VLQError(
                BundleError.writeMismatch, path,
                "tensor \(records[index].name): \(sink.position) bytes written of \(records[index].byteCount)")
        }
        records[index].checksum = sink.hasher.digest()
        written[index] = true
    }

    /// Writes the table, the metadata and the header, then moves the file into place.
    public func finish(metadata: JSONValue, compression: MetadataCompression = .zstd) throws {
        for (index, checksum) in try background.finish() { records[index].checksum = checksum }
        if let missing = written.firstIndex(of: false) {
            throw VLQError(BundleError.writeMismatch, path, "tensor \(records[missing].name) was never written")
        }
        var table = ByteWriter()
        for r in records { r.encode(into: &table) }
        let metadataBytes = Array(metadata.serialized().utf8)
        let stored: [UInt8]
        switch compression {
        case .none: stored = metadataBytes
        case .zstd: stored = Zstd.compress(metadataBytes)
        }

        var header = VLQHeader()
        // The lowest minor version that defines every encoding used: a bundle without q3 stays 1.0.
        header.minorVersion = records.map(\.encoding.minorVersion).max() ?? 0
        header.alignment = UInt32(alignment)
        header.dataOffset = UInt64(dataOffset)
        header.dataSize = UInt64(dataEnd - dataOffset)
        header.tableOffset = UInt64(dataEnd)
        header.tableSize = UInt64(table.bytes.count)
        header.tensorCount = UInt64(records.count)
        header.tableChecksum = XXH3Hasher.hash(table.bytes)
        header.metadataOffset = header.tableOffset + header.tableSize
        header.metadataStoredSize = UInt64(stored.count)
        header.metadataSize = UInt64(metadataBytes.count)
        header.metadataCompression = compression.rawValue
        header.metadataChecksum = XXH3Hasher.hash(stored)
        header.fileSize = header.metadataOffset + header.metadataStoredSize

        try output.write(table.bytes, at: Int(header.tableOffset))
        try output.write(stored, at: Int(header.metadataOffset))
        try output.write(header.encoded(), at: 0)
        try output.commit()
    }

    /// Gives up: removes the temporary file, leaves the target path untouched.
    public func abandon() { output.abandon() }
}

/// The writer's background thread: one write at a time, in order, at most two waiting.
final class BackgroundWrites: Sendable {
    private let queue = DispatchQueue(label: "vlq.writer")
    private let slots = DispatchSemaphore(value: 2)
    private let state = Mutex<(checksums: [Int: UInt64], error: (any Error)?)>(([:], nil))

    func submit(index: Int, _ job: @escaping @Sendable () throws -> UInt64) {
        slots.wait()
        queue.async { [self] in
            defer { slots.signal() }
            // After a failure the rest is not written: the file is abandoned.
            guard state.withLock({ $0.error == nil }) else { return }
            do {
                let checksum = try job()
                state.withLock { $0.checksums[index] = checksum }
            } catch {
                state.withLock { $0.error = error }
            }
        }
    }

    func rethrow() throws {
        if let error = state.withLock({ $0.error }) { throw error }
    }

    /// Waits for every submitted write; the checksums by tensor index.
    func finish() throws -> [Int: UInt64] {
        queue.sync {}
        try rethrow()
        return state.withLock { $0.checksums }
    }
}

/// The output file, written from the background thread only at offsets no other write touches (pwrite).
struct UncheckedOutput: @unchecked Sendable {
    let file: AtomicOutputFile
}
