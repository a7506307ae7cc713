import VLQCore

/// Where the planes of a quantized tensor lie inside its data (formats/VLQ-BUNDLE.md, section 5).
///
/// The weight is `[rows, columns]` (more dimensions are folded into rows); groups of `groupSize`
/// consecutive columns share parameters. Plane 0 holds the integers row-major (q8: one signed byte
/// each; q4 and q4s: two per byte, element 2j in the low nibble and 2j+1 in the high one; q3: blocks of
/// 32 values in 12 bytes, see `q3Code`); plane 1 the f16 scales `[rows, groups]`; for q4 and q3 plane 2
/// the f16 biases `[rows, groups]`. Each plane starts at a multiple of 64 bytes from the tensor's offset;
/// padding is zero.
public struct QuantizedLayout: Equatable, Sendable {
    public static let planeAlignment = 64

    public let encoding: TensorEncoding
    public let rows: Int
    public let columns: Int
    public let groupSize: Int
    public var groupsPerRow: Int { columns / groupSize }
    public let valuesBytes: Int
    public let scalesOffset: Int
    public let biasesOffset: Int?
    public let byteCount: Int

    public init?(encoding: TensorEncoding, shape: [Int], groupSize: Int) {
        guard let layout = try? QuantizedLayout(validating: encoding, shape: shape, groupSize: groupSize) else {
            return nil
        }
        self = layout
    }

    /// The layout, or a VLQError (no subject) saying why `shape` and `groupSize` make none. Shapes come
    /// from bundle tables: every size is computed with overflow checks.
    public init(validating encoding: TensorEncoding, shape: [Int], groupSize: Int) throws {
        func fail(_ reason: String) -> VLQError { VLQError(BundleError.invalidLayout, nil, reason) }
        guard encoding.isQuantized else { throw fail("\(encoding.name) is not a quantized encoding") }
        guard let columns = shape.last else { throw fail("a scalar cannot be \(encoding.name)-quantized") }
        guard groupSize > 0 else { throw fail("group size \(groupSize) is not positive") }
        guard columns > 0 else { throw fail("shape \(shape) has \(columns) columns") }
        guard columns % groupSize == 0 else { throw fail("\(columns) columns are not whole groups of \(groupSize)") }
        if (encoding == .q4 || encoding == .q4s) && groupSize % 2 != 0 {
            throw fail("group size \(groupSize) is odd, but \(encoding.name) packs values in pairs")
        }
        if encoding == .q3 && groupSize % QuantizedLayout.q3BlockValues != 0 {
            throw fail("group size \(groupSize) is not a multiple of 32, but q3 packs values in blocks of 32")
        }
        let overflow = fail("shape \(shape) in \(encoding.name) groups of \(groupSize) overflows")
        guard let rows = Checked.product(shape.dropLast()), let elements = Checked.multiply(rows, columns),
            let parameterBytes = Checked.multiply(rows, columns / groupSize).flatMap({ Checked.multiply($0, 2) })
        else { throw overflow }
        let valuesBytes =
            switch encoding {
            case .q8: elements
            case .q3: elements / QuantizedLayout.q3BlockValues * QuantizedLayout.q3BlockBytes
            default: elements / 2
            }
        guard let scales = Checked.alignUp(valuesBytes, to: QuantizedLayout.planeAlignment),
            let scalesEnd = Checked.add(scales, parameterBytes)
        else { throw overflow }
        var biases: Int?
        var end = scalesEnd
        if encoding.hasBiases {
            guard let b = Checked.alignUp(scalesEnd, to: QuantizedLayout.planeAlignment),
                let biasesEnd = Checked.add(b, parameterBytes)
            else { throw overflow }
            biases = b
            end = biasesEnd
        }
        self.encoding = encoding
        self.rows = rows
        self.columns = columns
        self.groupSize = groupSize
        self.valuesBytes = valuesBytes
        scalesOffset = scales
        biasesOffset = biases
        byteCount = end
    }

    /// Decodes rows `range` into f32, row-major, `columns` values per row.
    public func dequantize(
        _ data: UnsafeRawBufferPointer, rows range: Range<Int>, into out: UnsafeMutablePointer<Float>
    ) {
        let groups = groupsPerRow
        for r in range {
            let row = out + (r - range.lowerBound) * columns
            for g in 0..<groups {
                let p = r * groups + g
                func half(_ offset: Int) -> Float {
                    let bits = data.loadUnaligned(fromByteOffset: offset, as: UInt16.self)
                    return Float(Float16(bitPattern: UInt16(littleEndian: bits)))
                }
                let scale = half(scalesOffset + 2 * p)
                // q4s has no bias plane: its bias is implied by the scale.
                let bias = biasesOffset.map { half($0 + 2 * p) } ?? -8 * scale
                let start = g * groupSize
                switch encoding {
                case .q8:
                    for j in start..<(start + groupSize) {
                        row[j] = Float(Int8(bitPattern: data[r * columns + j])) * scale
                    }
                case .q3:
                    for j in start..<(start + groupSize) {
                        row[j] = Float(QuantizedLayout.q3Code(data, row: r, column: j, columns: columns)) * scale + bias
                    }
                case .q4, .q4s:
                    for j in stride(from: start, to: start + groupSize, by: 2) {
                        let byte = data[(r * columns + j) / 2]
                        row[j] = Float(byte & 0x0F) * scale + bias
                        row[j + 1] = Float(byte >> 4) * scale + bias
                    }
                default:
                    break
                }
            }
        }
    }

    /// q3 packs a row's codes in blocks of 32 values (12 bytes; rows are whole blocks because groups
    /// are): byte `e % 8` holds the low two bits of block element `e` at bits `2 * (e / 8)`, and byte
    /// `8 + e / 8` its high bit at bit `e % 8`. A vector kernel widens the first 8 bytes to 8 lanes and
    /// gets elements 0-7, 8-15, 16-23, 24-31 by shifting all lanes by 0, 2, 4, 6 (formats/VLQ-BUNDLE.md).
    public static let q3BlockValues = 32
    public static let q3BlockBytes = 12

    /// The q3 code (0...7) of element `column` of `row`, from the codes plane at the start of `data`.
    @inline(__always)
    public static func q3Code(_ data: UnsafeRawBufferPointer, row: Int, column: Int, columns: Int) -> UInt8 {
        let block = (row * columns + column) / q3BlockValues * q3BlockBytes, e = column % q3BlockValues
        let low = data[block + e % 8] >> UInt8(2 * (e / 8)) & 3
        let high = data[block + 8 + e / 8] >> UInt8(e % 8) & 1
        return low | high << 2
    }

    /// Packs integer codes and f16 parameters into the tensor's bytes. `codes` holds q8 values as
    /// signed integers, 4-bit codes as 0...15 and 3-bit codes as 0...7; `biases` is for q4 and q3 only.
    public func pack(codes: [Int8], scales: [Float16], biases: [Float16]?) -> [UInt8] {
        precondition(codes.count == rows * columns && scales.count == rows * groupsPerRow)
        return [UInt8](unsafeUninitializedCapacity: byteCount) { out, initialized in
            codes.withUnsafeBufferPointer { c in
                for r in 0..<rows { packRow(c.baseAddress! + r * columns, row: r, into: out.baseAddress!) }
            }
            packParameters(scales: scales, biases: biases, into: out.baseAddress!)
            initialized = byteCount
        }
    }

    /// Row `r`'s `columns` codes (as `pack` takes them) into their place in `out`, the tensor's bytes:
    /// rows are independent, so a quantizer packs each as it finishes it, on whichever core, into bytes
    /// never zeroed first.
    @inline(__always)
    public func packRow(_ codes: UnsafePointer<Int8>, row r: Int, into out: UnsafeMutablePointer<UInt8>) {
        switch encoding {
        case .q8:
            UnsafeMutableRawPointer(out + r * columns).copyMemory(from: codes, byteCount: columns)
        case .q3:
            // Rows are whole blocks, so element j of a row is element j % 32 of its block j / 32.
            let (blockValues, blockBytes) = (QuantizedLayout.q3BlockValues, QuantizedLayout.q3BlockBytes)
            let row = out + r * columns / blockValues * blockBytes
            row.update(repeating: 0, count: columns / blockValues * blockBytes)
            for j in 0..<columns {
                let block = j / blockValues * blockBytes, e = j % blockValues
                let code = UInt8(truncatingIfNeeded: codes[j]) & 7
                row[block + e % 8] |= (code & 3) << UInt8(2 * (e / 8))
                row[block + 8 + e / 8] |= (code >> 2) << UInt8(e % 8)
            }
        default:
            let row = out + r * columns / 2
            for j in stride(from: 0, to: columns, by: 2) {
                row[j / 2] =
                    UInt8(truncatingIfNeeded: codes[j]) & 0x0F | (UInt8(truncatingIfNeeded: codes[j + 1]) & 0x0F) << 4
            }
        }
    }

    /// The scales (and biases) planes, little-endian, and zeros in the padding before and after them.
    public func packParameters(scales: [Float16], biases: [Float16]?, into out: UnsafeMutablePointer<UInt8>) {
        precondition(scales.count == rows * groupsPerRow)
        let planeBytes = 2 * scales.count
        func plane(_ values: [Float16], at offset: Int) {
            for (i, v) in values.enumerated() {
                let bits = v.bitPattern.littleEndian
                out[offset + 2 * i] = UInt8(bits & 0xFF)
                out[offset + 2 * i + 1] = UInt8(bits >> 8)
            }
        }
        (out + valuesBytes).update(repeating: 0, count: scalesOffset - valuesBytes)
        plane(scales, at: scalesOffset)
        var end = scalesOffset + planeBytes
        if let biasesOffset {
            (out + end).update(repeating: 0, count: biasesOffset - end)
            if let biases {
                plane(biases, at: biasesOffset)
            } else {
                (out + biasesOffset).update(repeating: 0, count: planeBytes)
            }
            end = biasesOffset + planeBytes
        }
        (out + end).update(repeating: 0, count: byteCount - end)
    }
}
