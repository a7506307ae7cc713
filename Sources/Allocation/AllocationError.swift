import VLQCore

/// The kinds of failure choosing precision per layer.
public enum AllocationError: String, ErrorKind, Equatable {
    /// No choice per layer meets the bound or fits the size, or the held-out check kept failing: the
    /// search ran and found no bundle to write (exit 1, like a broken verify bound).
    case unreachable

    public var exitStatus: ExitStatus { .checkFailed }
}
