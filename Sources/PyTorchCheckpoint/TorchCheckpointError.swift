import VLQCore

/// The kinds of failure reading a torch.save checkpoint: its zip archive, its pickle, its tensors.
public enum TorchCheckpointError: String, ErrorKind, Equatable {
    /// Not a zip archive, or one whose directory, headers or entries are damaged or contradict each other.
    case malformedZip
    /// A zip feature torch.save never writes: several disks, encryption, compressed entries.
    case unsupportedZip
    /// A zip archive not laid out as torch.save writes it: no data.pkl or version record, stray entries.
    case notACheckpoint
    /// A checkpoint in a form not read: the legacy pre-1.6 format, big-endian storages, an unknown version.
    case unsupportedFormat
    /// A pickle that does not parse: truncated operands, stack or memo misuse, limits exceeded.
    case malformedPickle
    /// A pickle that names a global outside the few a checkpoint of tensors needs.
    case refusedGlobal
    /// A pickle opcode torch.save does not write, or no opcode at all.
    case refusedOpcode
    /// A tensor or storage that overflows, reaches past its storage, or is described two ways.
    case malformedTensor
    /// A pickle whose top value is not a flat dict of tensors keyed by strings, once each.
    case notAStateDict
    /// A storage the pickle names that has no entry in the archive.
    case missingStorage
}
