import VLQCore

/// One tensor's entry in a checkpoint file, whatever the file's format.
///
/// Most tensors are contiguous (row-major, densely packed) and are read in place from the file's
/// mapping: `fileOffset..<fileOffset + byteCount`. PyTorch checkpoints can also hold views into a
/// storage with their own element strides; those carry `strides` and are gathered into a contiguous
/// copy when read (`TensorFile.withContiguousData`).
public struct TensorInfo: Sendable, Equatable {
    public var name: String
    public var dtype: DType
    public var shape: [Int]
    /// Absolute byte offset of the tensor's first element in its file.
    public var fileOffset: Int
    /// Bytes of the tensor when contiguous: element count x element size.
    public var byteCount: Int
    /// Element strides of a view that is not row-major contiguous; nil for contiguous tensors.
    public var strides: [Int]?

    public init(name: String, dtype: DType, shape: [Int], fileOffset: Int, byteCount: Int, strides: [Int]? = nil) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.fileOffset = fileOffset
        self.byteCount = byteCount
        self.strides = strides
    }

    public var elementCount: Int { shape.reduce(1, *) }
    public var isContiguous: Bool { strides == nil }

    /// Bytes of the file from `fileOffset` that hold the tensor's elements: `byteCount` when
    /// contiguous, otherwise up to the element of largest offset (0 for an empty tensor).
    public var spanBytes: Int {
        guard let strides else { return byteCount }
        if shape.contains(0) { return 0 }
        let last = zip(shape, strides).reduce(0) { $0 + ($1.0 - 1) * $1.1 }
        return (last + 1) * dtype.byteSize
    }

    /// The row-major strides of `shape`, to tell a view that is in fact contiguous.
    public static func contiguousStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var step = 1
        for axis in shape.indices.reversed() {
            strides[axis] = step
            step *= shape[axis]
        }
        return strides
    }
}

/// A checkpoint file that holds named tensors: safetensors, or a PyTorch `torch.save` archive.
///
/// Everything downstream (checkpoint discovery, convert, the engine) reads tensors through this
/// interface, so a model folder may hold either format, or both for different parts.
public protocol TensorFile: AnyObject, Sendable {
    var path: String { get }
    var mapped: MappedFile { get }
    /// "safetensors" or "pytorch", for messages and provenance.
    var formatName: String { get }
    /// Tensors in the order of their data in the file (by `fileOffset`).
    var tensors: [TensorInfo] { get }
    func info(_ name: String) -> TensorInfo?
}

extension TensorFile {
    /// A contiguous tensor's bytes, in place in the mapping (validated on open).
    public func data(_ info: TensorInfo) -> UnsafeRawBufferPointer {
        precondition(info.isContiguous, "data(_:) of the strided view \(info.name); use withContiguousData")
        return mapped.slice(offset: info.fileOffset, count: info.byteCount)!
    }

    /// The tensor's bytes as a contiguous row-major buffer: in place when stored so, otherwise gathered
    /// from its strides into a temporary copy (O(tensor) memory, for the duration of `body`).
    public func withContiguousData<R>(_ info: TensorInfo, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        if info.isContiguous { return try body(data(info)) }
        let copy = contiguousCopy(info)
        return try copy.withUnsafeBytes(body)
    }

    /// A strided view gathered into row-major order.
    public func contiguousCopy(_ info: TensorInfo) -> [UInt8] {
        let size = info.dtype.byteSize
        var out = [UInt8](repeating: 0, count: info.byteCount)
        guard info.byteCount > 0 else { return out }
        let strides = info.strides ?? TensorInfo.contiguousStrides(info.shape)
        let source = mapped.slice(offset: info.fileOffset, count: info.spanBytes)!
        out.withUnsafeMutableBytes { destination in
            var index = [Int](repeating: 0, count: info.shape.count)
            var sourceElement = 0
            for element in 0..<info.elementCount {
                destination.baseAddress!.advanced(by: element * size)
                    .copyMemory(from: source.baseAddress!.advanced(by: sourceElement * size), byteCount: size)
                // Advance the multi-index like an odometer, keeping the source offset in step.
                var axis = info.shape.count - 1
                while axis >= 0 {
                    index[axis] += 1
                    sourceElement += strides[axis]
                    if index[axis] < info.shape[axis] { break }
                    sourceElement -= strides[axis] * info.shape[axis]
                    index[axis] = 0
                    axis -= 1
                }
            }
        }
        return out
    }
}
