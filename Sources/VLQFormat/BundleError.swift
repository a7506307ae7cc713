import VLQCore

/// The kinds of failure reading, writing or checking a .vlq bundle (formats/VLQ-BUNDLE.md).
public enum BundleError: String, ErrorKind, Equatable {
    /// A file that does not start with the bundle magic.
    case notABundle
    /// A format major version this vlq does not read.
    case unsupportedVersion
    /// A file shorter or longer than its header says.
    case sizeMismatch
    /// Header fields out of range: header size, alignment, sections outside the file or overlapping.
    case malformedHeader
    /// A tensor table entry that is truncated, inconsistent, duplicated, or places data badly.
    case malformedTensorRecord
    /// A shape and group size that give no layout in an encoding, or one that overflows.
    case invalidLayout
    /// Metadata that does not fit its declared size, is not a JSON object, or is compressed unknowingly.
    case malformedMetadata
    /// A header, table, metadata or tensor checksum that does not match its bytes: the file is damaged.
    case checksumMismatch
    /// Tensors holding NaN or infinite values, found by a scan of every value (a failed check).
    case nonFiniteValues
    /// A writer asked to plan a tensor twice or too large, or given other than the bytes it planned.
    case writeMismatch

    public var exitStatus: ExitStatus { self == .nonFiniteValues ? .checkFailed : .badInput }
}
