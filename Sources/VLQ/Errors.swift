import Imaging
import VLQCore
import YiVL

/// The kinds of failure of the library's own: a conversation used out of turn.
public enum ChatError: String, ErrorKind, Equatable {
    /// The outcome of a turn asked for before the turn finished.
    case turnNotFinished
}

/// What kind of failure a `VLQError` is: test it with `error.is(ModelError.contextExceeded)`. Each module
/// of vlq has one enum of kinds; those an app meets most are named here.
public typealias ErrorKind = VLQCore.ErrorKind
/// Files that cannot be opened, read or written; JSON that does not parse.
public typealias CoreError = VLQCore.CoreError
/// A model's configs, metadata and weights, and its limits (`contextExceeded`).
public typealias ModelError = YiVL.ModelError
/// Images that cannot be decoded, are too large, or whose pixels do not match their size.
public typealias ImageError = Imaging.ImageError
