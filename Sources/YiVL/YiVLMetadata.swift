import Imaging
import VLQCore

/// The Yi-VL sections of a bundle's metadata (formats/VLQ-BUNDLE.md, "Metadata") from a checkpoint's
/// configs: what an engine needs to run the model without its source folder.
extension BundleMetadata.Architecture {
    public init(_ c: YiVLConfig) {
        let v = c.vision, l = c.language, m = c.multimodal
        vision = Vision(
            hiddenSize: v.hiddenSize, intermediateSize: v.intermediateSize, layers: v.layers, heads: v.heads,
            imageSize: v.imageSize, patchSize: v.patchSize, channels: v.channels, layerNormEps: v.layerNormEps,
            hiddenAct: v.hiddenAct, selectLayer: m.selectLayer, selectFeature: m.selectFeature,
            selectedHiddenState: c.selectedHiddenState)
        // The projector's LayerNorms are torch's default nn.LayerNorm: eps 1e-5 (no config key holds it).
        projector = Projector(
            type: m.projectorType, inputSize: m.hiddenSize, hiddenSize: l.hiddenSize, layerNormEps: 1e-5)
        language = Language(
            hiddenSize: l.hiddenSize, intermediateSize: l.intermediateSize, layers: l.layers, heads: l.heads,
            kvHeads: l.kvHeads, headDim: l.headDim, vocabSize: l.vocabSize, rmsNormEps: l.rmsNormEps,
            ropeTheta: l.ropeTheta, maxPositionEmbeddings: l.maxPositionEmbeddings,
            hiddenAct: l.hiddenAct, tieWordEmbeddings: l.tieWordEmbeddings)
    }
}

extension ImagePreprocessing {
    /// The preprocessing section from preprocessor_config.json and the model config's aspect ratio.
    public init(_ c: YiVLConfig) {
        self.init()
        let pc = c.preprocessor
        aspectRatio = c.multimodal.imageAspectRatio
        convertRGB = pc.doConvertRGB
        padColor = pc.padColor.map { UInt8(clamping: $0) }
        resize = pc.doResize
        shortestEdge = pc.shortestEdge
        filter = Resampler.Filter(pilNumber: pc.resample) ?? .bicubic
        centerCrop = pc.doCenterCrop
        cropHeight = pc.cropHeight
        cropWidth = pc.cropWidth
        rescale = pc.doRescale
        rescaleFactor = pc.rescaleFactor
        normalize = pc.doNormalize
        mean = pc.mean
        std = pc.std
    }
}

extension BundleMetadata.Chat {
    public init(_ c: YiVLConfig) {
        self.init(
            template: YiVLChat.template, system: YiVLChat.systemPrompt, imagePlaceholder: YiVLChat.imagePlaceholder,
            imageTokenIndex: YiVLChat.imageTokenIndex,
            imageTokens: c.vision.patchCount + (c.multimodal.selectFeature == "cls_patch" ? 1 : 0),
            stop: YiVLChat.stopStrings)
    }
}

extension BundleMetadata.SpecialToken {
    /// A special token as text (tokenizer_config.json, then special_tokens_map.json) and id
    /// (config.json's `<key>_id`).
    public init(
        _ key: String, config: YiVLConfig, tokenizerConfig: JSONValue?, specialTokensMap: JSONValue?,
        withID: Bool = true
    ) {
        text = nil
        for source in [tokenizerConfig, specialTokensMap] {
            guard let v = source?[key + "_token"] else { continue }
            if let s = v.stringValue ?? v["content"]?.stringValue {
                text = s
                break
            }
        }
        id = withID ? config.rootJSON[key + "_token_id"]?.intValue : nil
    }
}
