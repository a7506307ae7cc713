import VLQCore

/// The kinds of failure describing or running a Yi-VL model.
public enum ModelError: String, ErrorKind, Equatable {
    /// A config file whose key is missing, mistyped, unsupported or out of range.
    case invalidConfig
    /// A bundle's metadata that lacks a section or key the model needs, or holds a malformed value.
    case invalidMetadata
    /// A hyperparameter beyond the engine's limits, or inconsistent with another.
    case invalidHyperparameter
    /// Weights that do not match the configs: tensors missing, misshapen, of another dtype, or unexpected.
    case tensorMismatch
    /// Pixel values or features of a size the model does not take.
    case invalidInput
    /// A token id outside the vocabulary.
    case tokenOutOfVocabulary
    /// A sequence longer than the model's context (its key/value cache).
    case contextExceeded
}
