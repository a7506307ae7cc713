import VLQCore

/// The kinds of failure reading references and comparing a candidate with them.
public enum VerificationError: String, ErrorKind, Equatable {
    /// A reference (a .vlqref or a folder of cases) with a tensor or field missing or malformed.
    case invalidReference
    /// A reference computed on another calibration set.
    case setMismatch
    /// A reference that does not fit the candidate: other tokens, vocabulary or logit rows.
    case referenceMismatch
    /// A drift bound the candidate breaks (a failed check).
    case boundBroken
    /// A --pixel-values file without an F32 pixel_values tensor of the shape the model takes.
    case invalidPixelValues

    public var exitStatus: ExitStatus { self == .boundBroken ? .checkFailed : .badInput }
}
