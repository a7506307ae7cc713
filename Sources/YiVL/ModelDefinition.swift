/// A tensor of the model, by its place in `ModelDefinition.tensors`: the weight store is an array in
/// that order, so a forward pass finds a weight by index, never by building and hashing its name.
public struct TensorHandle: Hashable, Sendable, Comparable {
    public let index: Int
    public static func < (a: TensorHandle, b: TensorHandle) -> Bool { a.index < b.index }
}

/// `y = x W^T (+ b)`: W is `[outputs, inputs]`.
public struct Linear: Hashable, Sendable {
    public let weight: TensorHandle
    public let bias: TensorHandle?
    public let outputs: Int
    public let inputs: Int
}

public struct LayerNorm: Hashable, Sendable {
    public let weight: TensorHandle
    public let bias: TensorHandle
}

public struct RMSNorm: Hashable, Sendable {
    public let weight: TensorHandle
}

/// What precedes a group of Linears that share one input, and is linear in that input, so that
/// AWQ's per-channel scales can be divided out of it and multiplied into the Linears (llm-compressor
/// calls this a smooth/balance mapping).
public enum Smoothable: Hashable, Sendable {
    /// A LayerNorm (weight and bias divided) or an RMSNorm (weight divided).
    case norm([TensorHandle])
    /// The rows (and bias) of the Linear whose output is the input, e.g. v_proj before o_proj.
    case linearRows(Linear)
}

public struct SmoothingMapping: Hashable, Sendable {
    public let smooth: Smoothable
    public let balance: [Linear]
}

/// One CLIP encoder layer (pre-LN).
public struct VisionLayer: Sendable {
    public let index: Int
    public let layerNorm1: LayerNorm  // layer_norm1
    public let query: Linear  // self_attn.q_proj
    public let key: Linear  // self_attn.k_proj
    public let value: Linear  // self_attn.v_proj
    public let output: Linear  // self_attn.out_proj
    public let layerNorm2: LayerNorm  // layer_norm2
    public let fc1: Linear  // mlp.fc1
    public let fc2: Linear  // mlp.fc2

    public var label: String { "vision layer " + ModelDefinition.twoDigits(index) }
    public var linears: [Linear] { [key, value, query, output, fc1, fc2] }
    public var smoothingMappings: [SmoothingMapping] {
        [
            SmoothingMapping(smooth: .norm([layerNorm1.weight, layerNorm1.bias]), balance: [query, key, value]),
            SmoothingMapping(smooth: .linearRows(value), balance: [output]),
            SmoothingMapping(smooth: .norm([layerNorm2.weight, layerNorm2.bias]), balance: [fc1]),
        ]
    }
}

public struct VisionTower: Sendable {
    public let classEmbedding: TensorHandle  // embeddings.class_embedding
    public let patchEmbedding: TensorHandle  // embeddings.patch_embedding.weight (a conv, no bias)
    public let positionEmbedding: TensorHandle  // embeddings.position_embedding.weight
    public let preLayerNorm: LayerNorm  // pre_layrnorm (sic)
    public let layers: [VisionLayer]  // encoder.layers.N
    public let postLayerNorm: LayerNorm  // post_layernorm: unused by LLaVA models, kept in bundles
}

/// `mlp2x_gelu_Norm`: Linear, LayerNorm, GELU, Linear, LayerNorm (model.mm_projector.{0,1,3,4}).
public struct Projector: Sendable {
    public let first: Linear
    public let firstNorm: LayerNorm
    public let second: Linear
    public let secondNorm: LayerNorm

    public var linears: [Linear] { [first, second] }
}

/// One Llama decoder layer.
public struct DecoderLayer: Sendable {
    public let index: Int
    public let inputNorm: RMSNorm  // input_layernorm
    public let query: Linear  // self_attn.q_proj
    public let key: Linear  // self_attn.k_proj
    public let value: Linear  // self_attn.v_proj
    public let output: Linear  // self_attn.o_proj
    public let postAttentionNorm: RMSNorm  // post_attention_layernorm
    public let gate: Linear  // mlp.gate_proj
    public let up: Linear  // mlp.up_proj
    public let down: Linear  // mlp.down_proj

    public var label: String { "decoder layer " + ModelDefinition.twoDigits(index) }
    public var linears: [Linear] { [query, key, value, output, gate, up, down] }
    /// o_proj is balanced against v_proj's rows only when every head has its own values: with grouped
    /// queries one value row feeds several heads' outputs.
    func smoothingMappings(groupedQueries: Bool) -> [SmoothingMapping] {
        var mappings = [SmoothingMapping(smooth: .norm([inputNorm.weight]), balance: [query, key, value])]
        if !groupedQueries { mappings.append(SmoothingMapping(smooth: .linearRows(value), balance: [output])) }
        mappings.append(SmoothingMapping(smooth: .norm([postAttentionNorm.weight]), balance: [gate, up]))
        mappings.append(SmoothingMapping(smooth: .linearRows(up), balance: [down]))
        return mappings
    }
}

public struct LanguageModel: Sendable {
    public let embedTokens: TensorHandle  // model.embed_tokens.weight
    public let layers: [DecoderLayer]  // model.layers.N
    public let norm: RMSNorm  // model.norm
    public let head: Linear  // lm_head, or the embeddings when tied

    /// What one decoding step reads in full: every layer's norms and Linears, the final norm and the
    /// head (of the embedding table, one row).
    public var decodeStepTensors: [TensorHandle] {
        var handles = [norm.weight] + [head.weight] + (head.bias.map { [$0] } ?? [])
        for layer in layers {
            handles += [layer.inputNorm.weight, layer.postAttentionNorm.weight]
            handles += layer.linears.flatMap { [$0.weight] + ($0.bias.map { [$0] } ?? []) }
        }
        return handles
    }
}

/// The names a checkpoint flavour gives the three parts' tensors. Yi-VL's (the original LLaVA code's)
/// is the one in use; llava-hf's `LlavaForConditionalGeneration` would be
/// `vision_tower.vision_model.`, `multi_modal_projector.linear_{1,2}` and `language_model.model.`.
public struct CheckpointNaming: Sendable {
    public var vision: String
    public var projectorLayers: (first: String, firstNorm: String, second: String, secondNorm: String)
    public var language: String
    public var head: String

    public static let yiVL = CheckpointNaming(
        vision: "vision_model.",
        projectorLayers: (
            "model.mm_projector.0", "model.mm_projector.1", "model.mm_projector.3", "model.mm_projector.4"
        ),
        language: "model.", head: "lm_head")
}

/// Yi-VL as a tree of plain types holding tensor handles, each field's checkpoint key beside it.
/// Built once from the hyperparameters; the expected tensors of a checkpoint, the forward pass,
/// AWQ's mappings, calibration's shared inputs and the layer labels of verify and bench all come
/// from it.
public struct ModelDefinition: Sendable {
    public let config: EngineConfig
    /// Every tensor in bundle order: vision tower, projector, language model; layers in order.
    public let tensors: [ExpectedTensor]
    public let vision: VisionTower
    public let projector: Projector
    public let language: LanguageModel
    private let byName: [String: TensorHandle]
    private let labels: [String]

    public init(_ config: EngineConfig, naming: CheckpointNaming = .yiVL) {
        self.config = config
        var b = Builder()
        vision = b.visionTower(config.vision, naming: naming)
        projector = b.projector(config, naming: naming)
        language = b.languageModel(config.language, naming: naming)
        tensors = b.tensors
        byName = Dictionary(uniqueKeysWithValues: b.tensors.enumerated().map { ($1.name, TensorHandle(index: $0)) })
        labels = ModelDefinition.labels(
            b.tensors.count, vision, projector, language, tied: config.language.tiedEmbeddings)
    }

    public func handle(named name: String) -> TensorHandle? { byName[name] }
    public var handles: [TensorHandle] { tensors.indices.map { TensorHandle(index: $0) } }

    /// Layer numbers in labels have at least two digits, so that labels sort in layer order.
    static func twoDigits(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
    public func name(_ handle: TensorHandle) -> String { tensors[handle.index].name }
    public func shape(_ handle: TensorHandle) -> [Int] { tensors[handle.index].shape }

    /// The vision layers the features pass through: those up to the selected hidden state. The rest
    /// (and post_layernorm) are stored but never run.
    public var usedVisionLayers: ArraySlice<VisionLayer> { vision.layers.prefix(config.vision.selectedHiddenState) }

    /// Every Linear the forward pass runs, in the order it runs them.
    public var linears: [Linear] {
        usedVisionLayers.flatMap(\.linears) + projector.linears + language.layers.flatMap(\.linears) + [language.head]
    }

    /// Linears fed the very same input, in the order the forward pass runs them: calibration keeps
    /// one set of statistics per group, owned by its first member.
    public var sharedInputGroups: [[Linear]] {
        usedVisionLayers.map { [$0.query, $0.key, $0.value] }
            + language.layers.flatMap { [[$0.query, $0.key, $0.value], [$0.gate, $0.up]] }
    }

    /// AWQ's smooth/balance mappings, per layer in forward order (only the vision layers that run).
    public var smoothingMappings: [(layer: String, mappings: [SmoothingMapping])] {
        let grouped = config.language.kvHeads != config.language.heads
        var out = usedVisionLayers.map { ($0.label, $0.smoothingMappings) }
        out += language.layers.map { ($0.label, $0.smoothingMappings(groupedQueries: grouped)) }
        if !config.language.tiedEmbeddings {
            out.append(("lm_head", [SmoothingMapping(smooth: .norm([language.norm.weight]), balance: [language.head])]))
        }
        return out
    }

    /// A label for the part of the model a tensor belongs to: "vision layer 3", "decoder layer 12",
    /// "projector", "token embeddings", "lm_head" (with the final norm), "vision embeddings".
    public func label(of handle: TensorHandle) -> String { labels[handle.index] }

    private static func labels(
        _ count: Int, _ vision: VisionTower, _ projector: Projector, _ language: LanguageModel,
        tied: Bool
    ) -> [String] {
        var out = [String](repeating: "", count: count)
        func mark(_ handles: [TensorHandle], _ label: String) { for h in handles { out[h.index] = label } }
        for layer in vision.layers {
            mark(layer.linears.flatMap(\.handles) + layer.layerNorm1.handles + layer.layerNorm2.handles, layer.label)
        }
        mark(
            [vision.classEmbedding, vision.patchEmbedding, vision.positionEmbedding] + vision.preLayerNorm.handles
                + vision.postLayerNorm.handles, "vision embeddings")
        mark(
            projector.linears.flatMap(\.handles) + projector.firstNorm.handles + projector.secondNorm.handles,
            "projector")
        for layer in language.layers {
            mark(
                layer.linears.flatMap(\.handles) + [layer.inputNorm.weight, layer.postAttentionNorm.weight], layer.label
            )
        }
        mark([language.embedTokens], "token embeddings")
        mark([language.norm.weight] + (tied ? [] : language.head.handles), "lm_head")
        return out
    }

    struct Builder {
        var tensors: [ExpectedTensor] = []
        var part = ModelPart.vision

        mutating func tensor(_ name: String, _ shape: [Int]) -> TensorHandle {
            tensors.append(ExpectedTensor(name: name, shape: shape, part: part))
            return TensorHandle(index: tensors.count - 1)
        }

        mutating func linear(_ prefix: String, _ outputs: Int, _ inputs: Int, bias: Bool) -> Linear {
            let weight = tensor(prefix + ".weight", [outputs, inputs])
            return Linear(
                weight: weight, bias: bias ? tensor(prefix + ".bias", [outputs]) : nil, outputs: outputs, inputs: inputs
            )
        }

        mutating func layerNorm(_ prefix: String, _ width: Int) -> LayerNorm {
            LayerNorm(weight: tensor(prefix + ".weight", [width]), bias: tensor(prefix + ".bias", [width]))
        }

        mutating func visionTower(_ v: EngineConfig.Vision, naming: CheckpointNaming) -> VisionTower {
            let d = v.hiddenSize
            part = .vision
            let vp = naming.vision
            let classEmbedding = tensor(vp + "embeddings.class_embedding", [d])
            let patchEmbedding = tensor(
                vp + "embeddings.patch_embedding.weight", [d, v.channels, v.patchSize, v.patchSize])
            let positionEmbedding = tensor(vp + "embeddings.position_embedding.weight", [v.patchCount + 1, d])
            let preLayerNorm = layerNorm(vp + "pre_layrnorm", d)
            var visionLayers: [VisionLayer] = []
            for i in 0..<v.layers {
                let p = vp + "encoder.layers.\(i)."
                // Declared in the checkpoint's order (k, v, q, out): the bundle layout follows it.
                let key = linear(p + "self_attn.k_proj", d, d, bias: true)
                let value = linear(p + "self_attn.v_proj", d, d, bias: true)
                let query = linear(p + "self_attn.q_proj", d, d, bias: true)
                let output = linear(p + "self_attn.out_proj", d, d, bias: true)
                let layerNorm1 = layerNorm(p + "layer_norm1", d)
                let fc1 = linear(p + "mlp.fc1", v.intermediateSize, d, bias: true)
                let fc2 = linear(p + "mlp.fc2", d, v.intermediateSize, bias: true)
                let layerNorm2 = layerNorm(p + "layer_norm2", d)
                visionLayers.append(
                    VisionLayer(
                        index: i, layerNorm1: layerNorm1, query: query, key: key, value: value,
                        output: output, layerNorm2: layerNorm2, fc1: fc1, fc2: fc2))
            }
            let postLayerNorm = layerNorm(vp + "post_layernorm", d)
            return VisionTower(
                classEmbedding: classEmbedding, patchEmbedding: patchEmbedding,
                positionEmbedding: positionEmbedding, preLayerNorm: preLayerNorm, layers: visionLayers,
                postLayerNorm: postLayerNorm)
        }

        mutating func projector(_ config: EngineConfig, naming: CheckpointNaming) -> Projector {
            let h = config.language.hiddenSize
            part = .projector
            let names = naming.projectorLayers
            let first = linear(names.first, h, config.projectorInput, bias: true)
            let firstNorm = layerNorm(names.firstNorm, h)
            let second = linear(names.second, h, h, bias: true)
            let secondNorm = layerNorm(names.secondNorm, h)
            return Projector(first: first, firstNorm: firstNorm, second: second, secondNorm: secondNorm)
        }

        mutating func languageModel(_ l: EngineConfig.Language, naming: CheckpointNaming) -> LanguageModel {
            let h = l.hiddenSize
            part = .language
            let lp = naming.language
            let embedTokens = tensor(lp + "embed_tokens.weight", [l.vocabSize, h])
            let attention = l.heads * l.headDim, kv = l.kvHeads * l.headDim
            var decoderLayers: [DecoderLayer] = []
            for i in 0..<l.layers {
                let p = lp + "layers.\(i)."
                let inputNorm = RMSNorm(weight: tensor(p + "input_layernorm.weight", [h]))
                let query = linear(p + "self_attn.q_proj", attention, h, bias: false)
                let key = linear(p + "self_attn.k_proj", kv, h, bias: false)
                let value = linear(p + "self_attn.v_proj", kv, h, bias: false)
                let output = linear(p + "self_attn.o_proj", h, attention, bias: false)
                let postAttentionNorm = RMSNorm(weight: tensor(p + "post_attention_layernorm.weight", [h]))
                let gate = linear(p + "mlp.gate_proj", l.intermediateSize, h, bias: false)
                let up = linear(p + "mlp.up_proj", l.intermediateSize, h, bias: false)
                let down = linear(p + "mlp.down_proj", h, l.intermediateSize, bias: false)
                decoderLayers.append(
                    DecoderLayer(
                        index: i, inputNorm: inputNorm, query: query, key: key, value: value,
                        output: output, postAttentionNorm: postAttentionNorm, gate: gate, up: up,
                        down: down))
            }
            let norm = RMSNorm(weight: tensor(lp + "norm.weight", [h]))
            let head =
                l.tiedEmbeddings
                ? Linear(weight: embedTokens, bias: nil, outputs: l.vocabSize, inputs: h)
                : linear(naming.head, l.vocabSize, h, bias: false)
            return LanguageModel(embedTokens: embedTokens, layers: decoderLayers, norm: norm, head: head)
        }
    }
}

extension Linear {
    var handles: [TensorHandle] { [weight] + (bias.map { [$0] } ?? []) }
}

extension LayerNorm {
    var handles: [TensorHandle] { [weight, bias] }
}
