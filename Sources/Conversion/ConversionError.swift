import VLQCore

/// The kinds of failure converting a folder to a bundle that are not the folder's or the format's.
public enum ConversionError: String, ErrorKind, Equatable {
    /// An output path that is one of the source checkpoint's files.
    case outputIsSource
}
