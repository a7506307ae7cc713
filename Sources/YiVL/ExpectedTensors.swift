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
    /// Every tensor of the three parts, with the shape the hyperparameters imply, in bundle order (see
    /// `ModelDefinition`). Bounded, since the hyperparameters passed `validate`.
    public var expectedTensors: [ExpectedTensor] { ModelDefinition(self).tensors }
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
                QuantizedLayout(encoding: record.encoding, shape: record.shape, groupSize: record.groupSize) == nil
            {
                problems.badDType.append("\(expected.name) is \(record.encoding) with group \(record.groupSize)")
            }
        }
        let expected = Set(expectedTensors.map(\.name))
        problems.unexpected = bundle.tensors.map(\.name).filter { !expected.contains($0) }
        if let message = problems.message {
            throw VLQError(
                ModelError.tensorMismatch, bundle.path, "tensor table does not match the metadata: \(message)")
        }
    }
}

/// Names that checkpoints carry but that hold no weights: buffers older transformers versions saved.
enum IgnorableTensor {
    static func matches(_ name: String) -> Bool {
        name.hasSuffix("self_attn.rotary_emb.inv_freq") || name.hasSuffix("embeddings.position_ids")
    }
}
