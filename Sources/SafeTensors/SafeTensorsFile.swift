@_exported import TensorSource
import VLQCore

/// A validated, memory-mapped safetensors file.
///
/// Opening checks everything the reference implementation (the `safetensors` Rust crate) checks and
/// a little more, so that nothing downstream ever indexes outside the mapping: header length within
/// the limit and the file, a JSON object header, known dtypes, offsets that tile the data area with
/// no hole or overlap, byte lengths equal to shape x dtype size, and a data area that ends exactly at
/// the end of the file.
public final class SafeTensorsFile: MappedFileFormat, TensorFile, @unchecked Sendable {
    public var formatName: String { "safetensors" }
    public static let maxHeaderLength = 100_000_000

    public let path: String
    public let mapped: MappedFile
    public let headerLength: Int
    public let metadata: [String: String]
    /// Tensors in the order of their data in the file.
    public let tensors: [TensorInfo]
    private let byName: [String: Int]

    /// A safetensors file already in memory (`mapped.path` names it in errors).
    public init(mapped: MappedFile) throws {
        let path = mapped.path
        self.path = path
        self.mapped = mapped
        let bytes = mapped.bytes
        let fail = { (kind: SafeTensorsError, reason: String) in VLQError(kind, path, reason) }

        guard bytes.count >= 8 else {
            throw fail(
                .truncated, "not a safetensors file: \(bytes.count) bytes, too short for the 8-byte header length")
        }
        let rawLength = bytes.loadUnaligned(as: UInt64.self).littleEndian
        guard rawLength <= UInt64(SafeTensorsFile.maxHeaderLength) else {
            throw fail(
                .malformedHeader,
                "header length \(rawLength) exceeds the limit of \(SafeTensorsFile.maxHeaderLength) bytes")
        }
        let n = Int(rawLength)
        guard 8 + n <= bytes.count else {
            throw fail(
                .truncated,
                "header length \(n) runs past the end of the file (\(bytes.count) bytes): truncated or not safetensors")
        }
        headerLength = n
        let header: JSONValue
        do {
            header = try JSONValue.parse(UnsafeRawBufferPointer(rebasing: bytes[8..<(8 + n)]))
        } catch {
            throw fail(.malformedHeader, "header is not valid JSON (\(error))")
        }
        guard let entries = header.objectValue else { throw fail(.malformedHeader, "header is not a JSON object") }

        var metadata: [String: String] = [:]
        var tensors: [TensorInfo] = []
        var ranges: [(begin: Int, end: Int, name: String)] = []
        for (name, entry) in entries {
            if name == "__metadata__" {
                guard let object = entry.objectValue else {
                    throw fail(.malformedHeader, "__metadata__ is not an object")
                }
                for (key, value) in object {
                    guard let s = value.stringValue else {
                        throw fail(.malformedHeader, "__metadata__ value for \"\(key)\" is not a string")
                    }
                    metadata[key] = s
                }
                continue
            }
            guard let fields = entry.objectValue else {
                throw fail(.malformedEntry, "tensor \(name): entry is not an object")
            }
            guard let dtypeName = fields["dtype"]?.stringValue else {
                throw fail(.malformedEntry, "tensor \(name): missing dtype")
            }
            guard let dtype = DType(rawValue: dtypeName) else {
                throw fail(.unsupportedDType, "tensor \(name): unsupported dtype \(dtypeName)")
            }
            guard let shapeValues = fields["shape"]?.arrayValue else {
                throw fail(.malformedEntry, "tensor \(name): missing shape")
            }
            var shape: [Int] = []
            for v in shapeValues {
                guard case .int(let d) = v, d >= 0 else {
                    throw fail(.malformedEntry, "tensor \(name): shape holds a non-natural number")
                }
                shape.append(Int(d))
            }
            guard let offsets = fields["data_offsets"]?.arrayValue, offsets.count == 2,
                case .int(let begin64) = offsets[0], case .int(let end64) = offsets[1],
                begin64 >= 0, end64 >= begin64
            else {
                throw fail(.malformedEntry, "tensor \(name): data_offsets must be [begin, end] with 0 <= begin <= end")
            }
            // Offsets this large cannot lie in any file; refusing them here keeps the sums below in range.
            guard end64 <= Int64(bytes.count) else {
                throw fail(
                    .badDataOffsets,
                    "tensor \(name): data_offsets [\(begin64), \(end64)] lie beyond the file's \(bytes.count) bytes")
            }
            let begin = Int(begin64), end = Int(end64)
            guard let count = Checked.product(shape), let expected = Checked.multiply(count, dtype.byteSize) else {
                throw fail(.malformedEntry, "tensor \(name): shape \(shape) overflows")
            }
            guard end - begin == expected else {
                throw fail(
                    .malformedEntry,
                    "tensor \(name): \(end - begin) bytes of data for shape \(shape) of \(dtypeName), which needs "
                        + "\(expected)"
                )
            }
            ranges.append((begin, end, name))
            tensors.append(
                TensorInfo(name: name, dtype: dtype, shape: shape, fileOffset: 8 + n + begin, byteCount: expected))
        }

        // Sorting by (begin, end) puts zero-length tensors first at equal offsets, like the Rust crate.
        let order = ranges.indices.sorted {
            (ranges[$0].begin, ranges[$0].end, ranges[$0].name) < (ranges[$1].begin, ranges[$1].end, ranges[$1].name)
        }
        var expectedBegin = 0
        for i in order {
            let r = ranges[i]
            if r.begin < expectedBegin {
                throw fail(
                    .badDataOffsets,
                    "tensor \(r.name): data_offsets [\(r.begin), \(r.end)] overlap the previous tensor, which ends at "
                        + "\(expectedBegin)"
                )
            }
            if r.begin > expectedBegin {
                throw fail(
                    .badDataOffsets,
                    "tensor \(r.name): data_offsets begin at \(r.begin), leaving a hole after \(expectedBegin)")
            }
            expectedBegin = r.end
        }
        let dataSize = bytes.count - 8 - n
        if expectedBegin != dataSize {
            if expectedBegin > dataSize {
                throw fail(
                    .truncated,
                    "tensor data ends at byte \(8 + n + expectedBegin) but the file has only \(bytes.count) bytes: "
                        + "truncated"
                )
            }
            throw fail(
                .badDataOffsets,
                "\(dataSize - expectedBegin) bytes after the last tensor's data: the file does not match its header")
        }

        self.metadata = metadata
        self.tensors = order.map { tensors[$0] }
        var byName: [String: Int] = [:]
        for (i, t) in self.tensors.enumerated() { byName[t.name] = i }
        self.byName = byName
    }

    public func info(_ name: String) -> TensorInfo? {
        byName[name].map { tensors[$0] }
    }
}
