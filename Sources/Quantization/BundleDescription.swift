import VLQCore
import VLQFormat
import YiVL

/// What a bundle's metadata says about its model, as `vlq inspect` shows it: name and architecture,
/// the shapes of the tower, projector and language model, and how it was quantized (read through the
/// typed `QuantizationRecord`, which is why it lives here).
public enum BundleDescription {
    /// One line per part, then the quantization (recipe, method, calibration, fallbacks).
    public static func modelLines(of file: VLQFile, source: String) throws -> [String] {
        let m = try BundleMetadata(json: file.metadata, source: source)
        var lines = ["model: \(m.model.name) (\(m.model.architecture))"]
        let v = m.architecture.vision, p = m.architecture.projector, l = m.architecture.language
        lines.append(
            "vision: \(v.layers) layers x \(v.hiddenSize), \(v.imageSize) px / patch \(v.patchSize), "
                + "features from hidden state \(v.selectedHiddenState)")
        lines.append("projector: \(p.type) \(p.inputSize) -> \(p.hiddenSize)")
        lines.append(
            "language: \(l.layers) layers x \(l.hiddenSize), \(l.heads) heads / \(l.kvHeads) kv, vocab \(l.vocabSize)")
        guard m.isQuantized else { return lines + ["quantization: none"] }
        let record = try QuantizationRecord(json: .object(m.quantization), source: source)
        var line = "quantization: recipe \(record.recipe.name), method \(record.method.rawValue)"
        if let c = record.calibration {
            line += ", calibrated on \(c.samples) samples (set \(c.setDigest))"
        }
        lines.append(line)
        for (name, tensor) in record.tensors.sorted(by: { $0.key < $1.key }) {
            if let fallback = tensor.fallback { lines.append("  fallback \(name): \(fallback)") }
        }
        if let allocation = m.quantization["allocation"] {
            lines += try AllocationRecord(json: allocation, source: source).lines
        }
        return lines
    }
}
