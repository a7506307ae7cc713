import VLQCore

/// The kinds of failure of the CLI's own input, beyond what ArgumentParser checks.
enum CommandError: String, ErrorKind, Equatable {
    /// A --pixel-values file without an F32 pixel_values tensor of the shape the model takes.
    case invalidPixelValues
}
