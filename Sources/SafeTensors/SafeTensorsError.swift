import VLQCore

/// The kinds of failure reading a safetensors file (or a zstd-compressed one: .vlqstats, .vlqref).
public enum SafeTensorsError: String, ErrorKind, Equatable {
    /// A file too short for its header length, or ending before the tensor data its header declares.
    case truncated
    /// A header length over the limit, or a header that is not a JSON object of entries and metadata.
    case malformedHeader
    /// A tensor entry without a dtype, shape or data_offsets, or whose shape and byte count disagree.
    case malformedEntry
    /// A dtype this reader does not know.
    case unsupportedDType
    /// Tensor data that lies beyond the file, overlaps another's, or leaves bytes unaccounted for.
    case badDataOffsets
    /// A compressed file that is not of the kind asked for (no zstd frame, another format tag).
    case wrongFormat
}
