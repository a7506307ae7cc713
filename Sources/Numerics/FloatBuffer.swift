/// A heap buffer of floats with an owner, for activations.
public final class FloatBuffer: @unchecked Sendable {
    public let count: Int
    public let pointer: UnsafeMutablePointer<Float>

    /// Bytes the buffer's start is aligned to: a cache line, so that the decode kernels' 64-byte loads of an
    /// activation vector never straddle two lines (DecodeKernels.withCacheLineAligned copies any x that is
    /// not on one; activations in these buffers need no copy).
    public static let alignment = 64

    public init(_ count: Int) {
        self.count = count
        let bytes = max(count, 1) * MemoryLayout<Float>.stride
        pointer = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: Self.alignment)
            .bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    public convenience init(_ values: [Float]) {
        self.init(values.count)
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: values.count) }
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

    public var array: [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }
}
