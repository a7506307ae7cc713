import VLQCore

/// The kinds of failure reading a SentencePiece tokenizer.model.
public enum TokenizerError: String, ErrorKind, Equatable {
    /// Bytes that are not a SentencePiece ModelProto, or one without pieces.
    case notAModel
    /// A model type or normalizer other than Yi's (BPE, identity).
    case unsupportedModel
    /// A vocabulary with a duplicated piece, no <unk>, or byte fallback without all byte pieces.
    case malformedVocabulary
}
