/// Conversions between the float encodings a bundle stores. All are exact where the target can
/// represent the value; narrowing rounds to nearest-even, as torch's `.to()` does. The converter and
/// the quantizer both write floats through it, so a value stored by either has the same bits.
public enum ElementConversion {
    /// f16 bit pattern -> f32, by table: cheaper than the soft-float path on CPUs without F16C.
    static let f16ToF32Table: [Float] = (0..<65536).map { Float(Float16(bitPattern: UInt16($0))) }

    @inline(__always) static func bf16ToF32(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    @inline(__always) static func f32ToBF16(_ x: Float) -> UInt16 {
        let bits = x.bitPattern
        if x.isNaN { return UInt16(bits >> 16) | 0x0040 }  // stay NaN: keep sign, force a mantissa bit
        let rounding: UInt32 = 0x7FFF + ((bits >> 16) & 1)
        return UInt16((bits &+ rounding) >> 16)
    }

    /// Rounds to f16; finite values beyond its range saturate to +-65504 and are counted, because an
    /// infinity in a weight silently breaks a model.
    @inline(__always) static func f32ToF16(_ x: Float, overflow: inout Int) -> UInt16 {
        let h = Float16(x)
        if h.isInfinite && x.isFinite {
            overflow += 1
            return (x < 0 ? -Float16.greatestFiniteMagnitude : Float16.greatestFiniteMagnitude).bitPattern
        }
        return h.bitPattern
    }

    /// Converts `count` elements from `source` (encoded as `from`) into `destination` (as `to`).
    /// Returns how many values saturated.
    public static func convert(
        _ source: UnsafeRawBufferPointer, from: TensorEncoding,
        into destination: UnsafeMutableRawBufferPointer, to: TensorEncoding,
        count: Int
    ) -> Int {
        precondition(!from.isQuantized && !to.isQuantized, "element conversion is between plain encodings")
        var overflow = 0
        if from == to {
            let bytes = count * from.bitsPerElement / 8
            destination.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[0..<bytes]))
            return 0
        }
        switch to {
        case .f32:
            let out = destination.bindMemory(to: Float.self)
            for i in 0..<count { out[i] = value(source, from, i) }
        case .bf16:
            let out = destination.bindMemory(to: UInt16.self)
            for i in 0..<count { out[i] = f32ToBF16(value(source, from, i)).littleEndian }
        case .f16:
            let out = destination.bindMemory(to: UInt16.self)
            for i in 0..<count { out[i] = f32ToF16(value(source, from, i), overflow: &overflow).littleEndian }
        case .q8, .q4, .q4s, .q3:
            break
        }
        return overflow
    }

    /// `values` as a plain `encoding`'s little-endian bytes, and how many saturated (f16 only).
    public static func encode(_ values: [Float], as encoding: TensorEncoding) -> (bytes: [UInt8], saturated: Int) {
        var bytes = [UInt8](repeating: 0, count: values.count * encoding.bitsPerElement / 8)
        let saturated = values.withUnsafeBytes { source in
            bytes.withUnsafeMutableBytes { convert(source, from: .f32, into: $0, to: encoding, count: values.count) }
        }
        return (bytes, saturated)
    }

    /// Reads element `i` of a plain-encoded buffer as f32.
    @inline(__always)
    public static func value(_ buffer: UnsafeRawBufferPointer, _ encoding: TensorEncoding, _ i: Int) -> Float {
        switch encoding {
        case .f32: return buffer.loadUnaligned(fromByteOffset: 4 * i, as: Float.self)
        case .bf16: return bf16ToF32(halfBits(buffer, i))
        case .f16: return f16ToF32Table[Int(halfBits(buffer, i))]
        case .q8, .q4, .q4s, .q3: preconditionFailure("element access is for plain encodings")
        }
    }

    @inline(__always) static func halfBits(_ buffer: UnsafeRawBufferPointer, _ i: Int) -> UInt16 {
        UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self))
    }
}
