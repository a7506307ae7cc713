import VLQCore

/// The kinds of failure decoding or preprocessing an image.
public enum ImageError: String, ErrorKind, Equatable {
    /// Bytes that are neither PNG nor JPEG.
    case notAnImage
    /// A PNG or JPEG the decoder rejects as corrupt or unsupported.
    case corruptImage
    /// An image without pixels.
    case noPixels
    /// Raw pixels whose count does not match the width and height given.
    case pixelCountMismatch
    /// An image that, resized or padded, would exceed the pixel limit.
    case tooLarge
    /// Preprocessing settings (a bundle's metadata, or given) that are missing, malformed or unsupported.
    case invalidPreprocessing
}
