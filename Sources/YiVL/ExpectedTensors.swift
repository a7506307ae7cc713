import VLQCore
import VLQFormat

/// The part of Yi-VL a tensor belongs to. Mirrors the bundle's components.
public enum ModelPart: Int, Sendable, CaseIterable {
    case vision, projector, language
}

/// A tensor the config says the checkpoint must hold.
public struct ExpectedTensor: Equatable, Sendable {
    public var name: String
    public var shape: [Int]
    public var part: ModelPart
}

extension YiVLConfig {
    /// Every tensor of the three parts, with the shape the configs imply, in the order a bundle lays
    /// them out: vision tower, projector, language model; layers in numeric order.
    public var expectedTensors: [ExpectedTensor] { EngineConfig(self).expectedTensors }
}

extension EngineConfig {
    /// Every tensor of the three parts, with the shape the hyperparameters imply, in the order a bundle
    /// lays them out: vision tower, projector, language model; layers in numeric order. Bounded, since
    /// the hyperparameters passed `validate`.
    public var expectedTensors: [ExpectedTensor] {
        var out: [ExpectedTensor] = []
        let v = vision
        let positions = v.patchCount + 1
        func vis(_ name: String, _ shape: [Int]) { out.append(ExpectedTensor(name: "vision_model." + name, shape: shape, part: .vision)) }
        vis("embeddings.class_embedding", [v.hiddenSize])
        vis("embeddings.patch_embedding.weight", [v.hiddenSize, v.channels, v.patchSize, v.patchSize])
        vis("embeddings.position_embedding.weight", [positions, v.hiddenSize])
        vis("pre_layrnorm.weight", [v.hiddenSize])
        vis("pre_layrnorm.bias", [v.hiddenSize])
        for i in 0..<v.layers {
            let p = "encoder.layers.\(i)."
            for proj in ["k_proj", "v_proj", "q_proj", "out_proj"] {
                vis(p + "self_attn.\(proj).weight", [v.hiddenSize, v.hiddenSize])
                vis(p + "self_attn.\(proj).bias", [v.hiddenSize])
            }
            vis(p + "layer_norm1.weight", [v.hiddenSize])
            vis(p + "layer_norm1.bias", [v.hiddenSize])
            vis(p + "mlp.fc1.weight", [v.intermediateSize, v.hiddenSize])
            vis(p + "mlp.fc1.bias", [v.intermediateSize])
            vis(p + "mlp.fc2.weight", [v.hiddenSize, v.intermediateSize])
            vis(p + "mlp.fc2.bias", [v.hiddenSize])
            vis(p + "layer_norm2.weight", [v.hiddenSize])
            vis(p + "layer_norm2.bias", [v.hiddenSize])
        }
        vis("post_layernorm.weight", [v.hiddenSize])
        vis("post_layernorm.bias", [v.hiddenSize])

        let l = language
        let h = l.hiddenSize
        func proj(_ name: String, _ shape: [Int]) { out.append(ExpectedTensor(name: "model.mm_projector." + name, shape: shape, part: .projector)) }
        proj("0.weight", [h, projectorInput])
        proj("0.bias", [h])
        proj("1.weight", [h])
        proj("1.bias", [h])
        proj("3.weight", [h, h])
        proj("3.bias", [h])
        proj("4.weight", [h])
        proj("4.bias", [h])

        func lm(_ name: String, _ shape: [Int]) { out.append(ExpectedTensor(name: name, shape: shape, part: .language)) }
        let kv = l.kvHeads * l.headDim
        lm("model.embed_tokens.weight", [l.vocabSize, h])
        for i in 0..<l.layers {
            let p = "model.layers.\(i)."
            lm(p + "input_layernorm.weight", [h])
            lm(p + "self_attn.q_proj.weight", [l.heads * l.headDim, h])
            lm(p + "self_attn.k_proj.weight", [kv, h])
            lm(p + "self_attn.v_proj.weight", [kv, h])
            lm(p + "self_attn.o_proj.weight", [h, l.heads * l.headDim])
            lm(p + "post_attention_layernorm.weight", [h])
            lm(p + "mlp.gate_proj.weight", [l.intermediateSize, h])
            lm(p + "mlp.up_proj.weight", [l.intermediateSize, h])
            lm(p + "mlp.down_proj.weight", [h, l.intermediateSize])
        }
        lm("model.norm.weight", [h])
        if !l.tiedEmbeddings { lm("lm_head.weight", [l.vocabSize, h]) }
        return out
    }
}

extension EngineConfig {
    /// A bundle's metadata and its tensor table must agree before anything runs: the engine indexes
    /// weights by the shapes the metadata implies, so a table that disagrees would make it read
    /// outside a tensor. Every mismatch is listed in one error.
    public func checkTable(of bundle: VLQFile) throws {
        var problems = TensorProblems()
        let records = Dictionary(bundle.tensors.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for expected in expectedTensors {
            guard let record = records[expected.name] else {
                problems.missing.append(expected.name)
                continue
            }
            if record.shape != expected.shape {
                problems.misshapen.append("\(expected.name) is \(record.shape), metadata implies \(expected.shape)")
            } else if record.encoding.isQuantized,
                      QuantizedLayout(encoding: record.encoding, shape: record.shape, groupSize: record.groupSize) == nil {
                problems.badDType.append("\(expected.name) is \(record.encoding) with group \(record.groupSize)")
            }
        }
        if let message = problems.message {
            throw VLQError(bundle.path, "tensor table does not match the metadata: \(message)")
        }
    }
}

/// Names that checkpoints carry but that hold no weights: buffers older transformers versions saved.
enum IgnorableTensor {
    static func matches(_ name: String) -> Bool {
        name.hasSuffix("self_attn.rotary_emb.inv_freq") || name.hasSuffix("embeddings.position_ids")
    }
}
