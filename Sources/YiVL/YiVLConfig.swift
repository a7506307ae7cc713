import VLQCore

/// The Yi (Llama-architecture) language model's hyperparameters, from the root config.json.
public struct LanguageConfig: Equatable, Sendable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var vocabSize: Int
    public var rmsNormEps: Double
    public var ropeTheta: Double
    public var maxPositionEmbeddings: Int
    public var hiddenAct: String
    public var tieWordEmbeddings: Bool

    public var headDim: Int { hiddenSize / heads }

    init(_ c: ConfigReader) throws {
        hiddenSize = try c.int("hidden_size")
        intermediateSize = try c.int("intermediate_size")
        layers = try c.int("num_hidden_layers")
        heads = try c.int("num_attention_heads")
        kvHeads = try c.int("num_key_value_heads", default: heads)
        vocabSize = try c.int("vocab_size")
        rmsNormEps = try c.double("rms_norm_eps", default: 1e-6)
        ropeTheta = try c.double("rope_theta", default: 10000)
        maxPositionEmbeddings = try c.int("max_position_embeddings", default: 4096)
        hiddenAct = try c.string("hidden_act", default: "silu")
        tieWordEmbeddings = try c.bool("tie_word_embeddings", default: false)
        try c.require(
            hiddenSize % heads == 0, "hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(heads)")
        try c.require(
            heads % kvHeads == 0, "num_attention_heads \(heads) is not a multiple of num_key_value_heads \(kvHeads)")
        try c.require(hiddenAct == "silu", "hidden_act \"\(hiddenAct)\" is not supported (Yi uses silu)")
        try c.require(!c.has("rope_scaling") || c.json["rope_scaling"]!.isNull, "rope_scaling is not supported")
        try c.require(!(c.json["attention_bias"]?.boolValue ?? false), "attention_bias is not supported (Yi has none)")
    }
}

/// The CLIP vision tower's hyperparameters, from the vision folder's config.json.
public struct VisionConfig: Equatable, Sendable {
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var imageSize: Int
    public var patchSize: Int
    public var channels: Int
    public var layerNormEps: Double
    public var hiddenAct: String

    public var patchesPerSide: Int { imageSize / patchSize }
    public var patchCount: Int { patchesPerSide * patchesPerSide }
    /// Patches plus the class token.
    public var positions: Int { patchCount + 1 }

    init(_ c: ConfigReader) throws {
        // Full CLIP configs nest the tower under "vision_config"; Yi-VL's vit folder is flat.
        let v = c.has("vision_config") ? try c.object("vision_config") : c
        hiddenSize = try v.int("hidden_size")
        intermediateSize = try v.int("intermediate_size")
        layers = try v.int("num_hidden_layers")
        heads = try v.int("num_attention_heads")
        imageSize = try v.int("image_size")
        patchSize = try v.int("patch_size")
        channels = try v.int("num_channels", default: 3)
        layerNormEps = try v.double("layer_norm_eps", default: 1e-5)
        hiddenAct = try v.string("hidden_act", default: "quick_gelu")
        try v.require(
            imageSize % patchSize == 0, "image_size \(imageSize) is not a multiple of patch_size \(patchSize)")
        try v.require(
            hiddenSize % heads == 0, "hidden_size \(hiddenSize) is not a multiple of num_attention_heads \(heads)")
        try v.require(
            ["gelu", "quick_gelu"].contains(hiddenAct),
            "hidden_act \"\(hiddenAct)\" is not supported (gelu or quick_gelu)")
    }
}

/// How the vision features reach the language model (the `mm_*` keys of the root config.json).
public struct MultimodalConfig: Equatable, Sendable {
    public var visionTower: String
    public var projectorType: String
    public var hiddenSize: Int
    public var selectLayer: Int
    public var selectFeature: String
    public var imageAspectRatio: String
    public var useImageStartEnd: Bool

    public static let supportedProjectors = ["mlp2x_gelu_Norm"]

    init(_ c: ConfigReader) throws {
        visionTower = try c.string("mm_vision_tower")
        projectorType = try c.string("mm_projector_type", default: "linear")
        hiddenSize = try c.int("mm_hidden_size")
        selectLayer = try c.int("mm_vision_select_layer", default: -2, min: Int.min)
        selectFeature = try c.string("mm_vision_select_feature", default: "patch")
        imageAspectRatio = try c.string("image_aspect_ratio", default: "pad")
        useImageStartEnd = try c.bool("mm_use_im_start_end", default: false)
        try c.require(
            MultimodalConfig.supportedProjectors.contains(projectorType),
            "mm_projector_type \"\(projectorType)\" is not supported (Yi-VL uses mlp2x_gelu_Norm)")
        try c.require(
            ["patch", "cls_patch"].contains(selectFeature),
            "mm_vision_select_feature \"\(selectFeature)\" is not supported")
        try c.require(
            ["pad", "square", "original"].contains(imageAspectRatio),
            "image_aspect_ratio \"\(imageAspectRatio)\" is not supported")
        try c.require(!useImageStartEnd, "mm_use_im_start_end true is not supported (Yi-VL uses none)")
    }
}

/// CLIPImageProcessor settings, from the vision folder's preprocessor_config.json.
public struct PreprocessorConfig: Equatable, Sendable {
    public var shortestEdge: Int
    public var cropHeight: Int
    public var cropWidth: Int
    public var mean: [Double]
    public var std: [Double]
    public var rescaleFactor: Double
    /// PIL's resampling filter number: 3 is bicubic.
    public var resample: Int
    public var doResize: Bool
    public var doCenterCrop: Bool
    public var doRescale: Bool
    public var doNormalize: Bool
    public var doConvertRGB: Bool

    /// Yi-VL's expand2square fills with `int(mean * 255)` per channel.
    public var padColor: [Int] { mean.map { Int($0 * 255) } }

    public static let resampleNames = [0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"]

    init(_ c: ConfigReader) throws {
        if c.has("size"), c.json["size"]!.objectValue != nil {
            shortestEdge = try c.object("size").int("shortest_edge")
        } else {
            shortestEdge = try c.int("size")
        }
        if c.has("crop_size"), c.json["crop_size"]!.objectValue != nil {
            let crop = try c.object("crop_size")
            cropHeight = try crop.int("height")
            cropWidth = try crop.int("width")
        } else {
            cropHeight = try c.int("crop_size")
            cropWidth = cropHeight
        }
        mean = try c.doubles("image_mean", count: 3)
        std = try c.doubles("image_std", count: 3)
        try c.require(std.allSatisfy { $0 > 0 && $0.isFinite }, "image_std must be positive")
        // The pad colour is int(mean * 255): a mean outside [0, 1] is no colour (and 1e300 no Int).
        try c.require(mean.allSatisfy { $0 >= 0 && $0 <= 1 }, "image_mean must lie in [0, 1]")
        rescaleFactor = try c.double("rescale_factor", default: 1.0 / 255.0)
        resample = try c.int("resample", default: 3, min: 0)
        try c.require(PreprocessorConfig.resampleNames[resample] != nil, "resample \(resample) is not a PIL filter")
        doResize = try c.bool("do_resize", default: true)
        doCenterCrop = try c.bool("do_center_crop", default: true)
        doRescale = try c.bool("do_rescale", default: true)
        doNormalize = try c.bool("do_normalize", default: true)
        doConvertRGB = try c.bool("do_convert_rgb", default: true)
    }
}

/// Everything the three config files of a Yi-VL checkpoint say about the model.
public struct YiVLConfig: Sendable {
    public var language: LanguageConfig
    public var vision: VisionConfig
    public var multimodal: MultimodalConfig
    public var preprocessor: PreprocessorConfig

    /// The raw files, kept so that a bundle can carry them verbatim.
    public var rootJSON: JSONValue
    public var visionJSON: JSONValue
    public var preprocessorJSON: JSONValue

    /// Index into the encoder's hidden states (0 is the embeddings output) of the selected features.
    public var selectedHiddenState: Int {
        // Grouped so that no config value can overflow the sum (layers is positive, the offset negative).
        multimodal.selectLayer < 0 ? vision.layers + (1 + multimodal.selectLayer) : multimodal.selectLayer
    }

    public init(root: ConfigReader, vision: ConfigReader, preprocessor: ConfigReader) throws {
        language = try LanguageConfig(root)
        multimodal = try MultimodalConfig(root)
        self.vision = try VisionConfig(vision)
        self.preprocessor = try PreprocessorConfig(preprocessor)
        rootJSON = root.json
        visionJSON = vision.json
        preprocessorJSON = preprocessor.json
        try root.require(
            multimodal.hiddenSize == self.vision.hiddenSize,
            "mm_hidden_size \(multimodal.hiddenSize) differs from the vision tower's hidden_size "
                + "\(self.vision.hiddenSize)"
        )
        let selected = selectedHiddenState
        try root.require(
            selected >= 1 && selected <= self.vision.layers,
            "mm_vision_select_layer \(multimodal.selectLayer) selects no layer of a \(self.vision.layers)-layer tower")
        try preprocessor.require(
            self.preprocessor.cropHeight == self.vision.imageSize
                && self.preprocessor.cropWidth == self.vision.imageSize,
            "crop_size \(self.preprocessor.cropHeight)x\(self.preprocessor.cropWidth) differs from the tower's "
                + "image_size \(self.vision.imageSize)"
        )
        try EngineConfig(self).validate(language: root.path, vision: vision.path, preprocessor: preprocessor.path)
    }
}
