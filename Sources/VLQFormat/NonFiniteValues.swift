/// Counting NaN and infinite values in stored tensors: a weight that is not finite breaks every
/// output it reaches, so convert warns about them, `vlq check --values` finds them and quantize
/// refuses to round them into codes.
public enum NonFiniteValues {
    /// Non-finite values among `bytes` stored as `encoding`. For a quantized tensor, its f16 scales and
    /// biases (the codes themselves are integers). A trailing partial element is ignored.
    public static func count(
        _ bytes: UnsafeRawBufferPointer, encoding: TensorEncoding, shape: [Int] = [],
        groupSize: Int = 0
    ) -> Int {
        switch encoding {
        case .f32: return count32(bytes)
        case .f16: return count16(bytes, exponent: 0x7C00)
        case .bf16: return count16(bytes, exponent: 0x7F80)
        case .q8, .q4, .q4s, .q3:
            guard let layout = QuantizedLayout(encoding: encoding, shape: shape, groupSize: groupSize),
                layout.byteCount <= bytes.count
            else { return 0 }
            let planeBytes = layout.rows * layout.groupsPerRow * 2
            var total = count16(
                UnsafeRawBufferPointer(rebasing: bytes[layout.scalesOffset..<(layout.scalesOffset + planeBytes)]),
                exponent: 0x7C00)
            if let biases = layout.biasesOffset {
                total += count16(
                    UnsafeRawBufferPointer(rebasing: bytes[biases..<(biases + planeBytes)]), exponent: 0x7C00)
            }
            return total
        }
    }

    /// A value is not finite when all its exponent bits are set.
    static func count16(_ bytes: UnsafeRawBufferPointer, exponent: UInt16) -> Int {
        let n = bytes.count / 2
        var total = 0, i = 0
        let mask = SIMD16<UInt16>(repeating: exponent), one = SIMD16<UInt16>(repeating: 1)
        while i + 16 <= n {
            // Lane counters are flushed before they could wrap.
            var lanes = SIMD16<UInt16>(repeating: 0)
            let end = min(n, i + 16 * 4096)
            while i + 16 <= end {
                let v = bytes.loadUnaligned(fromByteOffset: 2 * i, as: SIMD16<UInt16>.self)
                lanes &+= one.replacing(with: 0, where: (v & mask) .!= mask)
                i += 16
            }
            total += Int(lanes.wrappedSum())
        }
        while i < n {
            if bytes.loadUnaligned(fromByteOffset: 2 * i, as: UInt16.self) & exponent == exponent { total += 1 }
            i += 1
        }
        return total
    }

    static func count32(_ bytes: UnsafeRawBufferPointer) -> Int {
        let n = bytes.count / 4
        var total = 0, i = 0
        let mask = SIMD8<UInt32>(repeating: 0x7F80_0000), one = SIMD8<UInt32>(repeating: 1)
        var lanes = SIMD8<UInt32>(repeating: 0)
        while i + 8 <= n {
            let v = bytes.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<UInt32>.self)
            lanes &+= one.replacing(with: 0, where: (v & mask) .!= mask)
            i += 8
        }
        total += lanes.indices.reduce(0) { $0 + Int(lanes[$1]) }
        while i < n {
            if bytes.loadUnaligned(fromByteOffset: 4 * i, as: UInt32.self) & 0x7F80_0000 == 0x7F80_0000 { total += 1 }
            i += 1
        }
        return total
    }
}
