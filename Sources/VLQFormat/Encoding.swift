import VLQCore

/// How a tensor's bytes represent its values. Plain encodings are row-major little-endian arrays;
/// ids from 32 up are reserved for quantized encodings (blocks of planes, see the spec).
public enum TensorEncoding: UInt16, CaseIterable, Sendable {
    case f32 = 0
    case f16 = 1
    case bf16 = 2

    public var name: String {
        switch self {
        case .f32: return "f32"
        case .f16: return "f16"
        case .bf16: return "bf16"
        }
    }

    public init?(name: String) {
        guard let e = TensorEncoding.allCases.first(where: { $0.name == name }) else { return nil }
        self = e
    }

    /// Bits per stored element of a plain encoding.
    public var bitsPerElement: Int {
        switch self {
        case .f32: return 32
        case .f16, .bf16: return 16
        }
    }

    /// The exact byte length of a tensor of `shape` in this encoding, nil on overflow.
    public func byteCount(shape: [Int], groupSize: Int) -> Int? {
        guard let n = Checked.product(shape) else { return nil }
        return Checked.multiply(n, bitsPerElement / 8)
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
