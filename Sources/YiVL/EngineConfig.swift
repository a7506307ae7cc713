import Imaging
import VLQCore

/// The hyperparameters the engine runs with, from a bundle's metadata or a Hugging Face folder's configs.
public struct EngineConfig: Sendable {
    public struct Vision: Sendable {
        public var hiddenSize, intermediateSize, layers, heads, imageSize, patchSize, channels: Int
        public var layerNormEps: Float
        public var quickGELU: Bool
        /// Hidden state whose patch tokens are the image features (0 = embeddings output).
        public var selectedHiddenState: Int
        public var keepClassToken: Bool
        public var patchesPerSide: Int { imageSize / patchSize }
        public var patchCount: Int { patchesPerSide * patchesPerSide }
        public var headDim: Int { hiddenSize / heads }
    }

    public struct Language: Sendable {
        public var hiddenSize, intermediateSize, layers, heads, kvHeads, vocabSize: Int
        public var rmsNormEps: Float
        public var ropeTheta: Double
        public var tiedEmbeddings: Bool
        /// The context: positions RoPE was trained for (`max_position_embeddings`), what a chat may fill.
        public var maxPositions = 4096
        public var headDim: Int { hiddenSize / heads }
    }

    public var vision: Vision
    public var projectorInput: Int
    public var projectorEps: Float = 1e-5
    public var language: Language
    public var preprocessing: ImagePreprocessing
    public var systemPrompt: String = YiVLChat.systemPrompt
    public var template: String = YiVLChat.template
    public var stopStrings: [String] = YiVLChat.stopStrings

    /// From a Hugging Face folder's configs, through the same sections a bundle's metadata holds: the
    /// hyperparameters are mapped to the engine's view in one place, whichever way the model came.
    public init(_ c: YiVLConfig) {
        // Yi-VL's chat template and system prompt (YiVLChat) are the defaults: no config file holds them.
        self.init(architecture: BundleMetadata.Architecture(c), preprocessing: ImagePreprocessing(c))
    }

    /// The engine's view of a bundle's architecture and preprocessing sections.
    init(architecture a: BundleMetadata.Architecture, preprocessing: ImagePreprocessing) {
        let v = a.vision, p = a.projector, l = a.language
        vision = Vision(
            hiddenSize: v.hiddenSize, intermediateSize: v.intermediateSize, layers: v.layers, heads: v.heads,
            imageSize: v.imageSize, patchSize: v.patchSize, channels: v.channels,
            layerNormEps: Float(v.layerNormEps), quickGELU: v.hiddenAct == "quick_gelu",
            selectedHiddenState: v.selectedHiddenState, keepClassToken: v.selectFeature == "cls_patch")
        projectorInput = p.inputSize
        projectorEps = Float(p.layerNormEps)
        language = Language(
            hiddenSize: l.hiddenSize, intermediateSize: l.intermediateSize, layers: l.layers, heads: l.heads,
            kvHeads: l.kvHeads, vocabSize: l.vocabSize, rmsNormEps: Float(l.rmsNormEps),
            ropeTheta: l.ropeTheta, tiedEmbeddings: l.tieWordEmbeddings)
        language.maxPositions = l.maxPositionEmbeddings
        self.preprocessing = preprocessing
    }

    /// From a bundle's metadata (formats/VLQ-BUNDLE.md, section 6).
    public init(metadata json: JSONValue, source: String) throws {
        try self.init(BundleMetadata(json: json, source: source), source: source)
    }

    /// From the architecture, preprocessing and chat sections of a bundle's metadata.
    public init(_ m: BundleMetadata, source: String) throws {
        let p = m.architecture.projector
        guard p.type == "mlp2x_gelu_Norm" else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata: projector type \(p.type) is not supported")
        }
        self.init(architecture: m.architecture, preprocessing: m.preprocessing)
        systemPrompt = m.chat.system
        template = m.chat.template
        stopStrings = m.chat.stop
        try validate(language: source, vision: source, preprocessor: source)
    }

    /// Bounds on hyperparameters: far beyond any released model (Yi-VL-34B: hidden 7168, 60 layers,
    /// vocabulary 64000; ViT-H/14 at 448 px: 1025 positions), and small enough that no product of them
    /// (a tensor's elements, a KV cache, a padded image) overflows or asks for more memory than exists.
    public enum Limits {
        public static let width = 1 << 16
        public static let intermediate = 1 << 18
        public static let layers = 1024
        public static let vocabulary = 1 << 22
        public static let imageSide = 1 << 13
        public static let patches = 1 << 16
        public static let positions = 1 << 20
    }

    /// The one place every hyperparameter is checked, whether it came from a Hugging Face folder's
    /// configs or a bundle's metadata: positive, within `Limits`, heads dividing widths, and the
    /// relations the engine relies on. `language`, `vision` and `preprocessor` name the files to blame.
    public func validate(
        language languageSource: String, vision visionSource: String, preprocessor preprocessorSource: String
    ) throws {
        try validateVision(visionSource, language: languageSource)
        try validateLanguage(languageSource)
        try validatePreprocessing(preprocessorSource)
    }

    /// The tower's hyperparameters, and the selected layer and projector input (from the language config).
    private func validateVision(_ visionSource: String, language languageSource: String) throws {
        let v = vision
        try within(v.hiddenSize, Limits.width, "vision hidden_size", visionSource)
        try within(v.intermediateSize, Limits.intermediate, "vision intermediate_size", visionSource)
        try within(v.layers, Limits.layers, "vision num_hidden_layers", visionSource)
        try within(v.heads, v.hiddenSize, "vision num_attention_heads", visionSource)
        try require(
            v.hiddenSize % v.heads == 0, visionSource,
            "vision hidden_size \(v.hiddenSize) is not a multiple of num_attention_heads \(v.heads)")
        try within(v.imageSize, Limits.imageSide, "image_size", visionSource)
        try within(v.patchSize, v.imageSize, "patch_size", visionSource)
        try require(
            v.imageSize % v.patchSize == 0, visionSource,
            "image_size \(v.imageSize) is not a multiple of patch_size \(v.patchSize)")
        try within(v.patchCount, Limits.patches, "patches per image ((image_size / patch_size)^2)", visionSource)
        try require(v.channels == 3, visionSource, "num_channels is \(v.channels); images are RGB (3)")
        try positive(Double(v.layerNormEps), "vision layer_norm_eps", visionSource)
        try require(
            v.selectedHiddenState >= 1 && v.selectedHiddenState <= v.layers, languageSource,
            "mm_vision_select_layer selects hidden state \(v.selectedHiddenState) of a \(v.layers)-layer tower")
        try require(
            projectorInput == v.hiddenSize, languageSource,
            "mm_hidden_size \(projectorInput) differs from the vision tower's hidden_size \(v.hiddenSize)")
        try positive(Double(projectorEps), "projector layer_norm_eps", languageSource)
    }

    private func validateLanguage(_ languageSource: String) throws {
        let l = language
        try within(l.hiddenSize, Limits.width, "hidden_size", languageSource)
        try within(l.intermediateSize, Limits.intermediate, "intermediate_size", languageSource)
        try within(l.layers, Limits.layers, "num_hidden_layers", languageSource)
        try within(l.heads, l.hiddenSize, "num_attention_heads", languageSource)
        try require(
            l.hiddenSize % l.heads == 0, languageSource,
            "hidden_size \(l.hiddenSize) is not a multiple of num_attention_heads \(l.heads)")
        try within(l.kvHeads, l.heads, "num_key_value_heads", languageSource)
        try require(
            l.heads % l.kvHeads == 0, languageSource,
            "num_attention_heads \(l.heads) is not a multiple of num_key_value_heads \(l.kvHeads)")
        try require(l.headDim % 2 == 0, languageSource, "head dimension \(l.headDim) is odd; RoPE rotates pairs")
        try within(l.vocabSize, Limits.vocabulary, "vocab_size", languageSource)
        try within(l.maxPositions, Limits.positions, "max_position_embeddings", languageSource)
        try positive(Double(l.rmsNormEps), "rms_norm_eps", languageSource)
        try positive(l.ropeTheta, "rope_theta", languageSource)
    }

    private func validatePreprocessing(_ preprocessorSource: String) throws {
        let p = preprocessing, v = vision
        try within(p.shortestEdge, Limits.imageSide, "shortest_edge", preprocessorSource)
        try within(p.cropHeight, Limits.imageSide, "crop height", preprocessorSource)
        try within(p.cropWidth, Limits.imageSide, "crop width", preprocessorSource)
        try require(
            p.cropHeight == v.imageSize && p.cropWidth == v.imageSize, preprocessorSource,
            "crop_size \(p.cropHeight)x\(p.cropWidth) differs from the tower's image_size \(v.imageSize)")
        try require(
            p.mean.count == 3 && p.std.count == 3 && p.mean.allSatisfy(\.isFinite), preprocessorSource,
            "image_mean and image_std must be 3 finite numbers each")
        for value in p.std { try positive(value, "image_std", preprocessorSource) }
        try require(p.rescaleFactor.isFinite, preprocessorSource, "rescale_factor \(p.rescaleFactor) is not finite")
    }
}

// The checks `EngineConfig.validate` is made of; each names the file to blame.

private func require(_ condition: Bool, _ source: String, _ reason: @autoclosure () -> String) throws {
    if !condition { throw VLQError(ModelError.invalidHyperparameter, source, reason()) }
}

private func within(_ value: Int, _ limit: Int, _ name: String, _ source: String) throws {
    try require(value >= 1 && value <= limit, source, "\(name) is \(value); it must lie in 1...\(limit)")
}

private func positive(_ value: Double, _ name: String, _ source: String) throws {
    try require(value.isFinite && value > 0, source, "\(name) is \(value); it must be a positive number")
}
