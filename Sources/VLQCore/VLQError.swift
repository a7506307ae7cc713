/// The one error type every vlq module throws for bad input.
///
/// Its description is a single line that names the file (or other subject) and what is wrong with
/// it, because that line is all a user sees from the CLI: `vlq: error: <subject>: <reason>`.
public struct VLQError: Error, CustomStringConvertible, Equatable, Sendable {
    public var subject: String?
    public var reason: String

    public init(_ subject: String?, _ reason: String) {
        self.subject = subject
        self.reason = reason
    }

    public var description: String {
        let line = subject.map { "\($0): \(reason)" } ?? reason
        // Multi-line reasons would break the one-line contract of the CLI.
        return String(line.map { $0 == "\n" ? " " : $0 })
    }

    /// The same error with the subject replaced where it had none.
    public func about(_ subject: String) -> VLQError {
        self.subject == nil ? VLQError(subject, reason) : self
    }
}

extension VLQError {
    /// Turns any error into a VLQError about `subject`, keeping a VLQError's own subject.
    public static func wrap(_ error: Error, subject: String) -> VLQError {
        if let error = error as? VLQError { return error.about(subject) }
        return VLQError(subject, String(describing: error))
    }
}
