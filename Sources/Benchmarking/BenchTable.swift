import VLQCore

/// The encodings `vlq bench --encodings` compares: the model as given (bf16), and the int8 and int4 presets
/// quantized from it by round to nearest, as `vlq quantize --preset` writes them.
public enum BenchEncoding: String, CaseIterable, Sendable {
    case bf16, int8, int4
}

/// One encoding's figures: a row of the table `vlq bench` ends with.
public struct BenchRow: Sendable {
    public var encoding: BenchEncoding?
    /// What the row is: the encoding, or what the model as given stores ("f32", a custom recipe).
    public var label: String
    /// The bundle's size (for a Hugging Face folder: its tensors' bytes).
    public var bundleBytes: Int
    public var tokens: Int
    public var prefillSeconds: Double
    public var prefillGFLOPs: Double
    public var sgemmGFLOPs: Double
    public var decodeSecondsPerToken: Double
    /// The bytes of weights a decode step reads, as stored, over the measured read bandwidth.
    public var decodeLimitSeconds: Double
    public var visionSeconds: Double
    /// Round to nearest through the quantize pipeline (reading the source, writing the bundle); nil for
    /// the model as given.
    public var quantizeWeightsPerSecond: Double?
    public var peakResidentBytes: Int
}

/// The table: one row per encoding, as markdown so that it can be pasted into the README. Ratios "vs bf16"
/// compare with the bf16 row when there is one.
public struct BenchTable: Sendable {
    public var rows: [BenchRow]

    public init(rows: [BenchRow]) { self.rows = rows }

    public static let header = [
        "encoding", "bundle GB", "prefill tok/s", "% of sgemm", "prefill vs bf16", "decode ms/token", "limit ms",
        "% of limit", "vision s/image", "vision vs bf16", "quantize M weights/s", "peak RSS MiB",
    ]

    public var markdown: String {
        let reference = rows.first { $0.encoding == .bf16 }
        var lines = [line(Self.header), line(Self.header.map { _ in "---:" })]
        lines += rows.map { line(cells($0, reference: reference)) }
        return lines.joined(separator: "\n")
    }

    func cells(_ row: BenchRow, reference: BenchRow?) -> [String] {
        // Prefill is compared as GFLOP/s, which for the same shapes is the inverse ratio of the times.
        let prefillRatio = reference.map { "\(fixed(100 * row.prefillGFLOPs / $0.prefillGFLOPs, 0))%" } ?? "-"
        let visionRatio = reference.map { "\(fixed(row.visionSeconds / $0.visionSeconds, 2))x" } ?? "-"
        return [
            row.label, fixed(Double(row.bundleBytes) / 1e9, 3), fixed(Double(row.tokens) / row.prefillSeconds, 1),
            "\(fixed(100 * row.prefillGFLOPs / row.sgemmGFLOPs, 0))%", prefillRatio,
            significant(1000 * row.decodeSecondsPerToken, 3), significant(1000 * row.decodeLimitSeconds, 3),
            "\(fixed(100 * row.decodeLimitSeconds / row.decodeSecondsPerToken, 0))%", significant(row.visionSeconds, 3),
            visionRatio, row.quantizeWeightsPerSecond.map { fixed($0 / 1e6, 1) } ?? "-",
            "\(row.peakResidentBytes >> 20)",
        ]
    }

    func line(_ cells: [String]) -> String { "| " + cells.joined(separator: " | ") + " |" }
}
