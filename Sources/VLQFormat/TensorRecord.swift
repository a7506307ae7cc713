import VLQCore

/// One entry of the tensor table.
public struct TensorRecord: Equatable, Sendable {
    public var name: String
    public var encoding: TensorEncoding
    public var component: Component
    public var shape: [Int]
    public var groupSize: Int
    public var sourceDType: SourceDType
    /// Absolute offset of the data in the file.
    public var offset: Int
    public var byteCount: Int
    public var checksum: UInt64

    public init(
        name: String, encoding: TensorEncoding, component: Component, shape: [Int], groupSize: Int = 0,
        sourceDType: SourceDType, offset: Int = 0, byteCount: Int = 0, checksum: UInt64 = 0
    ) {
        self.name = name
        self.encoding = encoding
        self.component = component
        self.shape = shape
        self.groupSize = groupSize
        self.sourceDType = sourceDType
        self.offset = offset
        self.byteCount = byteCount
        self.checksum = checksum
    }

    public var elementCount: Int { shape.reduce(1, *) }

    static let fixedSize = 40

    func encode(into w: inout ByteWriter) {
        let nameBytes = Array(name.utf8)
        let start = w.bytes.count
        let size = (TensorRecord.fixedSize + 8 * shape.count + nameBytes.count + 7) / 8 * 8
        w.u32(UInt32(size))
        w.u16(encoding.rawValue)
        w.u8(component.rawValue)
        w.u8(UInt8(shape.count))
        w.u32(UInt32(groupSize))
        w.u16(UInt16(nameBytes.count))
        w.u8(sourceDType.rawValue)
        w.u8(0)
        w.u64(UInt64(offset))
        w.u64(UInt64(byteCount))
        w.u64(checksum)
        for d in shape { w.u64(UInt64(d)) }
        w.raw(nameBytes)
        w.pad(toMultipleOf: 8)
        assert(w.bytes.count - start == size)
    }

    /// Reads one entry; errors name the entry's position, the caller adds the file.
    static func decode(_ r: inout ByteReader, index: Int) throws -> TensorRecord {
        let start = r.position
        let where_ = "tensor table entry \(index)"
        do {
            let size = Int(try r.u32())
            let encodingRaw = try r.u16()
            let componentRaw = try r.u8()
            let rank = Int(try r.u8())
            let groupSize = Int(try r.u32())
            let nameLength = Int(try r.u16())
            let sourceRaw = try r.u8()
            _ = try r.u8()
            guard let offset = Checked.int(try r.u64()), let byteCount = Checked.int(try r.u64()) else {
                throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_): offset or length out of range")
            }
            let checksum = try r.u64()
            guard rank <= VLQLayout.maxRank else {
                throw VLQError(
                    BundleError.malformedTensorRecord, nil, "\(where_): rank \(rank) above \(VLQLayout.maxRank)")
            }
            guard nameLength > 0 else {
                throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_): empty name")
            }
            let needed = TensorRecord.fixedSize + 8 * rank + nameLength
            guard size >= needed, size % 8 == 0 else {
                throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_): entry size \(size) is inconsistent")
            }
            var shape: [Int] = []
            for _ in 0..<rank {
                guard let d = Checked.int(try r.u64()) else {
                    throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_): dimension out of range")
                }
                shape.append(d)
            }
            let nameBytes = try r.raw(nameLength)
            guard let name = String(validating: nameBytes, as: UTF8.self) else {
                throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_): name is not valid UTF-8")
            }
            guard let encoding = TensorEncoding(rawValue: encodingRaw) else {
                throw VLQError(
                    BundleError.malformedTensorRecord, nil, "tensor \(name): unknown encoding \(encodingRaw)")
            }
            guard let component = Component(rawValue: componentRaw) else {
                throw VLQError(
                    BundleError.malformedTensorRecord, nil, "tensor \(name): unknown component \(componentRaw)")
            }
            r.position = start
            _ = try r.raw(size)
            return TensorRecord(
                name: name, encoding: encoding, component: component, shape: shape,
                groupSize: groupSize, sourceDType: SourceDType(rawValue: sourceRaw) ?? .unknown,
                offset: offset, byteCount: byteCount, checksum: checksum)
        } catch is ByteReader.OutOfBounds {
            throw VLQError(BundleError.malformedTensorRecord, nil, "\(where_) runs past the end of the tensor table")
        }
    }
}
