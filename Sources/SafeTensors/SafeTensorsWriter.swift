import VLQCore

/// Writes a safetensors file (atomically: nothing at the path unless complete).
public struct SafeTensorsWriter {
    public struct Tensor {
        public var name: String
        public var dtype: DType
        public var shape: [Int]
        public var bytes: [UInt8]

        public init(name: String, dtype: DType, shape: [Int], bytes: [UInt8]) {
            self.name = name
            self.dtype = dtype
            self.shape = shape
            self.bytes = bytes
        }

        public static func f32(_ name: String, _ shape: [Int], _ values: [Float]) -> Tensor {
            Tensor(name: name, dtype: .f32, shape: shape, bytes: values.withUnsafeBytes { Array($0) })
        }

        public static func i64(_ name: String, _ shape: [Int], _ values: [Int]) -> Tensor {
            Tensor(
                name: name, dtype: .i64, shape: shape,
                bytes: values.map { Int64($0).littleEndian }.withUnsafeBytes { Array($0) })
        }
    }

    public var tensors: [Tensor] = []
    public var metadata: [String: String] = [:]

    public init() {}

    public mutating func add(_ t: Tensor) { tensors.append(t) }

    /// The whole file as bytes (for small files, e.g. before compression).
    public func serialized() -> [UInt8] {
        let (head, _) = headerBytes()
        var out = head
        for t in tensors { out += t.bytes }
        return out
    }

    private func headerBytes() -> ([UInt8], Int) {
        var header: [String: JSONValue] = [:]
        var offset = 0
        for t in tensors {
            precondition(
                t.bytes.count == t.shape.reduce(1, *) * t.dtype.byteSize, "tensor \(t.name) has the wrong byte count")
            header[t.name] = [
                "dtype": .string(t.dtype.rawValue), "shape": .array(t.shape.map { .int(Int64($0)) }),
                "data_offsets": [.int(Int64(offset)), .int(Int64(offset + t.bytes.count))],
            ]
            offset += t.bytes.count
        }
        if !metadata.isEmpty { header["__metadata__"] = .object(metadata.mapValues { .string($0) }) }
        var json = Array(JSONValue.object(header).serialized().utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var w = ByteWriter()
        w.u64(UInt64(json.count))
        w.raw(json)
        return (w.bytes, offset)
    }

    public func write(to path: String) throws {
        let (head, _) = headerBytes()
        let output = try AtomicOutputFile(targetPath: path)
        try output.write(head, at: 0)
        var position = head.count
        for t in tensors {
            try output.write(t.bytes, at: position)
            position += t.bytes.count
        }
        try output.commit()
    }
}
