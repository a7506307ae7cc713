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

    public init(_ c: YiVLConfig) {
        let v = c.vision, l = c.language
        vision = Vision(hiddenSize: v.hiddenSize, intermediateSize: v.intermediateSize, layers: v.layers, heads: v.heads,
                        imageSize: v.imageSize, patchSize: v.patchSize, channels: v.channels,
                        layerNormEps: Float(v.layerNormEps), quickGELU: v.hiddenAct == "quick_gelu",
                        selectedHiddenState: c.selectedHiddenState, keepClassToken: c.multimodal.selectFeature == "cls_patch")
        projectorInput = c.multimodal.hiddenSize
        language = Language(hiddenSize: l.hiddenSize, intermediateSize: l.intermediateSize, layers: l.layers, heads: l.heads,
                            kvHeads: l.kvHeads, vocabSize: l.vocabSize, rmsNormEps: Float(l.rmsNormEps), ropeTheta: l.ropeTheta,
                            tiedEmbeddings: l.tieWordEmbeddings)
        var p = ImagePreprocessing()
        let pc = c.preprocessor
        p.padToSquare = c.multimodal.imageAspectRatio == "pad"
        p.padColor = pc.padColor.map { UInt8(clamping: $0) }
        p.resize = pc.doResize
        p.shortestEdge = pc.shortestEdge
        p.filter = Resampler.Filter(pilNumber: pc.resample) ?? .bicubic
        p.centerCrop = pc.doCenterCrop
        p.cropHeight = pc.cropHeight
        p.cropWidth = pc.cropWidth
        p.rescale = pc.doRescale
        p.rescaleFactor = pc.rescaleFactor
        p.normalize = pc.doNormalize
        p.mean = pc.mean
        p.std = pc.std
        preprocessing = p
    }

    /// From a bundle's metadata (formats/VLQ-BUNDLE.md, section 6).
    public init(metadata m: JSONValue, source: String) throws {
        func int(_ section: JSONValue?, _ key: String) throws -> Int {
            guard let v = section?[key]?.intValue else { throw VLQError(source, "metadata architecture lacks \(key)") }
            return v
        }
        func double(_ section: JSONValue?, _ key: String) throws -> Double {
            guard let v = section?[key]?.doubleValue else { throw VLQError(source, "metadata architecture lacks \(key)") }
            return v
        }
        let a = m["architecture"], v = a?["vision"], p = a?["projector"], l = a?["language"]
        guard p?["type"]?.stringValue == "mlp2x_gelu_Norm" else {
            throw VLQError(source, "metadata: projector type \(p?["type"]?.stringValue ?? "missing") is not supported")
        }
        vision = Vision(hiddenSize: try int(v, "hidden_size"), intermediateSize: try int(v, "intermediate_size"),
                        layers: try int(v, "layers"), heads: try int(v, "heads"), imageSize: try int(v, "image_size"),
                        patchSize: try int(v, "patch_size"), channels: try int(v, "channels"),
                        layerNormEps: Float(try double(v, "layer_norm_eps")),
                        quickGELU: v?["hidden_act"]?.stringValue == "quick_gelu",
                        selectedHiddenState: try int(v, "selected_hidden_state"),
                        keepClassToken: v?["select_feature"]?.stringValue == "cls_patch")
        projectorInput = try int(p, "input_size")
        projectorEps = Float(try double(p, "layer_norm_eps"))
        language = Language(hiddenSize: try int(l, "hidden_size"), intermediateSize: try int(l, "intermediate_size"),
                            layers: try int(l, "layers"), heads: try int(l, "heads"), kvHeads: try int(l, "kv_heads"),
                            vocabSize: try int(l, "vocab_size"), rmsNormEps: Float(try double(l, "rms_norm_eps")),
                            ropeTheta: try double(l, "rope_theta"), tiedEmbeddings: l?["tie_word_embeddings"]?.boolValue ?? false)
        guard let pre = m["preprocessing"] else { throw VLQError(source, "metadata lacks preprocessing") }
        preprocessing = try ImagePreprocessing(metadata: pre, source: source)
        if let chat = m["chat"] {
            systemPrompt = chat["system"]?.stringValue ?? systemPrompt
            template = chat["template"]?.stringValue ?? template
            stopStrings = chat["stop"]?.arrayValue?.compactMap(\.stringValue) ?? stopStrings
        }
        guard vision.selectedHiddenState >= 1, vision.selectedHiddenState <= vision.layers,
              vision.hiddenSize % vision.heads == 0, language.hiddenSize % language.heads == 0,
              language.heads % language.kvHeads == 0, vision.imageSize % vision.patchSize == 0
        else { throw VLQError(source, "metadata architecture is inconsistent") }
    }
}
