import VLQCore

/// The Yi-VL sections of a bundle's metadata (formats/VLQ-BUNDLE.md, "Metadata"): what an engine
/// needs to run the model without its source folder.
extension YiVLConfig {
    public var architectureMetadata: JSONValue {
        let v = vision, l = language, m = multimodal
        return [
            "vision": [
                "hidden_size": .int(Int64(v.hiddenSize)), "intermediate_size": .int(Int64(v.intermediateSize)),
                "layers": .int(Int64(v.layers)), "heads": .int(Int64(v.heads)),
                "image_size": .int(Int64(v.imageSize)), "patch_size": .int(Int64(v.patchSize)),
                "channels": .int(Int64(v.channels)), "layer_norm_eps": .double(v.layerNormEps),
                "hidden_act": .string(v.hiddenAct),
                "select_layer": .int(Int64(m.selectLayer)), "select_feature": .string(m.selectFeature),
                "selected_hidden_state": .int(Int64(selectedHiddenState)),
            ],
            "projector": [
                "type": .string(m.projectorType), "input_size": .int(Int64(m.hiddenSize)),
                "hidden_size": .int(Int64(l.hiddenSize)), "layer_norm_eps": 1e-5,
            ],
            "language": [
                "hidden_size": .int(Int64(l.hiddenSize)), "intermediate_size": .int(Int64(l.intermediateSize)),
                "layers": .int(Int64(l.layers)), "heads": .int(Int64(l.heads)), "kv_heads": .int(Int64(l.kvHeads)),
                "head_dim": .int(Int64(l.headDim)), "vocab_size": .int(Int64(l.vocabSize)),
                "rms_norm_eps": .double(l.rmsNormEps), "rope_theta": .double(l.ropeTheta),
                "max_position_embeddings": .int(Int64(l.maxPositionEmbeddings)), "hidden_act": .string(l.hiddenAct),
                "tie_word_embeddings": .bool(l.tieWordEmbeddings),
            ],
        ]
    }

    public var preprocessingMetadata: JSONValue {
        let p = preprocessor
        return [
            "convert_rgb": .bool(p.doConvertRGB),
            "aspect_ratio": .string(multimodal.imageAspectRatio),
            "pad_color": .array(p.padColor.map { .int(Int64($0)) }),
            "resize": .bool(p.doResize),
            "shortest_edge": .int(Int64(p.shortestEdge)),
            "resample": .string(PreprocessorConfig.resampleNames[p.resample]!),
            "center_crop": .bool(p.doCenterCrop),
            "crop_size": [.int(Int64(p.cropHeight)), .int(Int64(p.cropWidth))],
            "rescale": .bool(p.doRescale),
            "rescale_factor": .double(p.rescaleFactor),
            "normalize": .bool(p.doNormalize),
            "mean": .array(p.mean.map { .double($0) }),
            "std": .array(p.std.map { .double($0) }),
        ]
    }

    public var chatMetadata: JSONValue {
        [
            "template": .string(YiVLChat.template),
            "system": .string(YiVLChat.systemPrompt),
            "image_placeholder": .string(YiVLChat.imagePlaceholder),
            "image_token_index": .int(Int64(YiVLChat.imageTokenIndex)),
            "image_tokens": .int(Int64(vision.patchCount + (multimodal.selectFeature == "cls_patch" ? 1 : 0))),
            "stop": .array(YiVLChat.stopStrings.map { .string($0) }),
        ]
    }

    /// Special tokens as text (tokenizer_config.json, special_tokens_map.json) and id (config.json).
    public func specialTokensMetadata(tokenizerConfig: JSONValue?, specialTokensMap: JSONValue?) -> JSONValue {
        func text(_ key: String) -> JSONValue {
            for source in [tokenizerConfig, specialTokensMap] {
                guard let v = source?[key] else { continue }
                if let s = v.stringValue { return .string(s) }
                if let s = v["content"]?.stringValue { return .string(s) }
            }
            return .null
        }
        func id(_ key: String) -> JSONValue {
            rootJSON[key]?.intValue.map { .int(Int64($0)) } ?? .null
        }
        return [
            "bos": ["text": text("bos_token"), "id": id("bos_token_id")],
            "eos": ["text": text("eos_token"), "id": id("eos_token_id")],
            "pad": ["text": text("pad_token"), "id": id("pad_token_id")],
            "unk": ["text": text("unk_token"), "id": .null],
        ]
    }
}
