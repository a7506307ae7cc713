/// How a failure ends the CLI. Bad input and bad usage exit 2; a check that ran and found its subject
/// wanting (a damaged bundle, a broken drift bound) exits 1.
public enum ExitStatus: Int32, Sendable {
    case checkFailed = 1
    case badInput = 2
}

/// What went wrong, as a value a program or a test can switch on instead of reading the message.
///
/// Every module declares one enum of kinds (`SafeTensorsError`, `BundleError`, `ModelError`, ...). The kind
/// decides the exit status; the message of the `VLQError` carrying it says the details to a person.
public protocol ErrorKind: Sendable, CustomStringConvertible {
    /// Bad input unless the kind says otherwise.
    var exitStatus: ExitStatus { get }
    func isSameKind(as other: any ErrorKind) -> Bool
}

extension ErrorKind {
    public var exitStatus: ExitStatus { .badInput }
}

extension ErrorKind where Self: Equatable {
    public func isSameKind(as other: any ErrorKind) -> Bool { (other as? Self) == self }
}

extension ErrorKind where Self: RawRepresentable, Self.RawValue == String {
    /// `BundleError.checksumMismatch`, as a test failure or a debugger shows it.
    public var description: String { "\(Self.self).\(rawValue)" }
}

/// The one error type every vlq module throws for bad input: a kind, and a single line naming the
/// file (or other subject) and what is wrong with it.
///
/// The line is all a user sees from the CLI: `vlq: error: <subject>: <reason>`; the kind is what code
/// and tests look at.
public struct VLQError: Error, CustomStringConvertible, Equatable, Sendable {
    public var kind: any ErrorKind
    public var subject: String?
    public var reason: String
    /// Normally the kind's; `failingCheck()` turns bad input found by a check into a failed check.
    public var exitStatus: ExitStatus

    public init(_ kind: some ErrorKind, _ subject: String?, _ reason: String) {
        self.kind = kind
        self.subject = subject
        self.reason = reason
        self.exitStatus = kind.exitStatus
    }

    public var description: String {
        let line = subject.map { "\($0): \(reason)" } ?? reason
        // Multi-line reasons would break the one-line contract of the CLI.
        return String(line.map { $0 == "\n" ? " " : $0 })
    }

    /// Whether this error is of `kind`.
    public func `is`(_ kind: some ErrorKind) -> Bool { self.kind.isSameKind(as: kind) }

    /// The same error with the subject set where it had none.
    public func about(_ subject: String) -> VLQError {
        guard self.subject == nil else { return self }
        var error = self
        error.subject = subject
        return error
    }

    /// The same error reported as a check that found a problem (exit 1) rather than bad input: what
    /// `vlq check` says of a damaged bundle it could open.
    public func failingCheck() -> VLQError {
        var error = self
        error.exitStatus = .checkFailed
        return error
    }

    public static func == (a: VLQError, b: VLQError) -> Bool {
        a.kind.isSameKind(as: b.kind) && a.subject == b.subject && a.reason == b.reason
            && a.exitStatus == b.exitStatus
    }
}

/// The kinds of VLQCore's own failures: files, JSON text, compression.
public enum CoreError: String, ErrorKind, Equatable {
    /// A file or folder that does not exist or cannot be opened, resolved or listed.
    case cannotOpen
    /// A path that names a folder, FIFO, device or socket where a file was expected.
    case notARegularFile
    /// Sizing or mapping a file that could be opened failed.
    case cannotRead
    /// Creating, writing, syncing or renaming an output failed.
    case cannotWrite
    /// An output path that names a folder, lies in a folder that does not exist, or is one of the inputs:
    /// refused before any work.
    case unusableOutput
    /// A file of JSON (a config, an index, a recipe, a line of a set) that does not parse.
    case malformedJSON
    /// A zstd frame that does not decode, or not to the size it claims.
    case malformedCompression
}

extension VLQError {
    /// Turns any error into a VLQError about `subject`, keeping a VLQError's own kind and subject.
    public static func wrap(_ error: Error, subject: String, kind: some ErrorKind) -> VLQError {
        if let error = error as? VLQError { return error.about(subject) }
        return VLQError(kind, subject, String(describing: error))
    }
}
