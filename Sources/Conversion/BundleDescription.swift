import VLQCore
import VLQFormat
import YiVL

/// What a bundle's metadata says about its model, as `vlq inspect` shows it: name and architecture,
/// the shapes of the tower, projector and language model, and how it was quantized.
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
        let q = m.quantization
        var line =
            "quantization: recipe \(q["recipe"]?["name"]?.stringValue ?? "?"), "
            + "method \(q["method"]?.stringValue ?? "?")"
        if let c = q["calibration"] {
            line +=
                ", calibrated on \(c["samples"]?.intValue ?? 0) samples (set \(c["set_digest"]?.stringValue ?? "?"))"
        }
        lines.append(line)
        let fallbacks = (q["tensors"]?.objectValue ?? [:]).filter { $0.value["fallback"] != nil }
        for (name, t) in fallbacks.sorted(by: { $0.key < $1.key }) {
            lines.append("  fallback \(name): \(t["fallback"]!.stringValue!)")
        }
        return lines
    }
}
