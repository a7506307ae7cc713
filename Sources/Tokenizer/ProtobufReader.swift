import VLQCore

/// Just enough of the protobuf wire format to read a SentencePiece `ModelProto`: the generated
/// code of swift-protobuf would need protoc in the build, and the model needs four message types.
struct ProtobufReader {
    enum Field {
        case varint(UInt64)
        case fixed64(UInt64)
        case bytes(ArraySlice<UInt8>)
        case fixed32(UInt32)
    }

    struct Malformed: Error {
        var reason: String
    }

    let bytes: ArraySlice<UInt8>
    var position: Int

    init(_ bytes: ArraySlice<UInt8>) {
        self.bytes = bytes
        position = bytes.startIndex
    }

    var atEnd: Bool { position >= bytes.endIndex }

    mutating func varint() throws -> UInt64 {
        var result: UInt64 = 0
        var shift: UInt64 = 0
        while true {
            guard position < bytes.endIndex else { throw Malformed(reason: "truncated varint") }
            let byte = bytes[position]
            position += 1
            // The tenth byte holds bit 63 only; anything more (or an eleventh byte) does not fit 64 bits.
            guard shift < 63 || (shift == 63 && byte <= 1) else {
                throw Malformed(reason: "varint longer than 64 bits")
            }
            result |= UInt64(byte & 0x7F) << shift
            if byte < 0x80 { return result }
            shift += 7
        }
    }

    /// The next (field number, value) pair.
    mutating func next() throws -> (number: Int, value: Field) {
        let key = try varint()
        let number = Int(key >> 3)
        switch key & 7 {
        case 0: return (number, .varint(try varint()))
        case 1:
            guard bytes.endIndex - position >= 8 else { throw Malformed(reason: "truncated fixed64") }
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(bytes[position + i]) << (8 * UInt64(i)) }
            position += 8
            return (number, .fixed64(v))
        case 2:
            let length = try varint()
            guard length <= UInt64(bytes.endIndex - position) else {
                throw Malformed(reason: "length-delimited field runs past the end")
            }
            let slice = bytes[position..<(position + Int(length))]
            position += Int(length)
            return (number, .bytes(slice))
        case 5:
            guard bytes.endIndex - position >= 4 else { throw Malformed(reason: "truncated fixed32") }
            var v: UInt32 = 0
            for i in 0..<4 { v |= UInt32(bytes[position + i]) << (8 * UInt32(i)) }
            position += 4
            return (number, .fixed32(v))
        default:
            throw Malformed(reason: "unsupported wire type \(key & 7)")
        }
    }
}
