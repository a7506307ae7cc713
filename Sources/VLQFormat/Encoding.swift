import VLQCore

/// How a tensor's bytes represent its values. Plain encodings are row-major little-endian arrays;
/// quantized encodings (ids from 32) are planes of packed integers and per-group f16 parameters
/// (formats/VLQ-BUNDLE.md, section 5).
public enum TensorEncoding: UInt16, CaseIterable, Sendable {
    case f32 = 0
    case f16 = 1
    case bf16 = 2
    /// int8, symmetric: value = q * scale, q in [-127, 127], one f16 scale per group.
    case q8 = 32
    /// 4-bit affine: value = q * scale + bias, q in [0, 15], f16 scale and bias per group.
    case q4 = 33
    /// 4-bit symmetric: value = (n - 8) * scale, n in [0, 15], one f16 scale per group.
    case q4s = 34
    /// 3-bit affine: value = q * scale + bias, q in [0, 7], f16 scale and bias per group; codes packed in
    /// blocks of 32 (a 2-bit plane of low bits, then a 1-bit plane of high bits). Format 1.1.
    case q3 = 35

    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .q8: return "q8"
        case .q4: return "q4"
        case .q4s: return "q4s"
        case .q3: return "q3"
        }
    }

    public var isQuantized: Bool { rawValue >= 32 }

    public init?(name: String) {
        guard let e = TensorEncoding.allCases.first(where: { $0.name == name }) else { return nil }
        self = e
    }

    /// Bits per stored element (the packed integers only, for quantized encodings).
    public var bitsPerElement: Int {
        switch self {
        case .f32: return 32
        case .f16, .bf16: return 16
        case .q8: return 8
        case .q4, .q4s: return 4
        case .q3: return 3
        }
    }

    /// Whether groups store a bias plane (the affine encodings; q4s's bias is implied by its scale).
    public var hasBiases: Bool { self == .q4 || self == .q3 }

    /// The format minor version that defined this encoding: a writer records the highest one its tensors
    /// need, so bundles without q3 stay 1.0, byte for byte (formats/VLQ-BUNDLE.md, sections 3 and 5).
    public var minorVersion: UInt16 { self == .q3 ? 1 : 0 }

    /// The exact byte length of a tensor of `shape` in this encoding, nil when the shape and group size
    /// do not fit the encoding or on overflow.
    public func byteCount(shape: [Int], groupSize: Int) -> Int? {
        try? checkedByteCount(shape: shape, groupSize: groupSize)
    }

    /// As `byteCount`, with a VLQError (no subject) saying what is wrong instead of nil.
    public func checkedByteCount(shape: [Int], groupSize: Int) throws -> Int {
        if !isQuantized {
            guard groupSize == 0 else {
                throw VLQError(BundleError.invalidLayout, nil, "group size \(groupSize) given for a \(name) tensor")
            }
            guard let n = Checked.product(shape), let bytes = Checked.multiply(n, bitsPerElement / 8) else {
                throw VLQError(BundleError.invalidLayout, nil, "shape \(shape) in \(name) overflows")
            }
            return bytes
        }
        return try QuantizedLayout(validating: self, shape: shape, groupSize: groupSize).byteCount
    }
}

/// The model part a tensor belongs to.
public enum Component: UInt8, CaseIterable, Sendable, Comparable {
    case vision = 0
    case projector = 1
    case language = 2

    public var name: String {
        switch self {
        case .vision: return "vision"
        case .projector: return "projector"
        case .language: return "language"
        }
    }

    public static func < (a: Component, b: Component) -> Bool { a.rawValue < b.rawValue }
}

/// The dtype a tensor had in its source checkpoint, recorded for provenance.
public enum SourceDType: UInt8, Sendable {
    case f32 = 0, f16 = 1, bf16 = 2
    case unknown = 255

    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        case .unknown: return "unknown"
        }
    }
}
