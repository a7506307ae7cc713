import VLQCore
import YiVL

/// Accumulates `InputStatistics` for every Linear as the engine runs.
///
/// Linears fed the same input (q/k/v, gate/up: `ModelDefinition.sharedInputGroups`) share one entry:
/// the group's first Linear owns it and the others are recorded as aliases, so the Gram matrix is
/// computed once per distinct input.
public final class StatisticsCollector: LinearInputObserver {
    public private(set) var statistics: [String: InputStatistics] = [:]
    public private(set) var aliases: [String: String] = [:]
    /// Owners of statistics in the order the forward pass first reached them.
    public private(set) var order: [String] = []
    public let withGram: Bool
    /// When set, only inputs whose owner it accepts get X^T X (the rest only sums).
    public let gramFor: ((String) -> Bool)?
    let definition: ModelDefinition
    /// The owner of each Linear's input statistics, for the members of shared-input groups.
    private let owners: [TensorHandle: TensorHandle]

    public init(definition: ModelDefinition, withGram: Bool, gramFor: ((String) -> Bool)? = nil) {
        self.definition = definition
        self.withGram = withGram
        self.gramFor = gramFor
        var owners: [TensorHandle: TensorHandle] = [:]
        for group in definition.sharedInputGroups {
            for member in group.dropFirst() { owners[member.weight] = group[0].weight }
        }
        self.owners = owners
    }

    /// Bytes the X^T X accumulators of all inputs need (float, columns x columns each).
    public var gramBytesIfAll: Int { statistics.values.reduce(0) { $0 + 4 * $1.columns * $1.columns } }

    public func observe(linear: Linear, input: UnsafePointer<Float>, rows: Int) {
        let weightName = definition.name(linear.weight), columns = linear.inputs
        if let owner = owners[linear.weight] {
            aliases[weightName] = definition.name(owner)
            return
        }
        if statistics[weightName] == nil {
            order.append(weightName)
            statistics[weightName] = InputStatistics(
                columns: columns, withGram: withGram && (gramFor?(weightName) ?? true))
        }
        statistics[weightName]!.add(input, rows: rows)
    }

    /// Statistics of the input of `weightName` (through its alias when it shares one).
    public func statistics(for weightName: String) -> InputStatistics? {
        statistics[aliases[weightName] ?? weightName]
    }

}

/// Runs a calibration set through the fp32 engine, collecting statistics at every Linear's input:
/// vision tower and projector included, so the vision side is calibrated by images.
public enum CalibrationRunner {
    /// `gramBudget`: the X^T X accumulators may not need more bytes than this (checked after the first
    /// sample, when every input has been seen); a model too large for one pass is calibrated in windows
    /// by `WindowedStatistics` instead.
    public static func collect(
        model: LazyModel, set: CalibrationSet, withGram: Bool, gramFor: ((String) -> Bool)? = nil,
        gramBudget: Int? = nil, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> StatisticsCollector {
        try collect(
            engine: try model.engine(), set: set, withGram: withGram, gramFor: gramFor, gramBudget: gramBudget,
            progress: progress)
    }

    /// `collect(model:...)` with an engine already open.
    public static func collect(
        engine: YiVLEngine, set: CalibrationSet, withGram: Bool, gramFor: ((String) -> Bool)? = nil,
        gramBudget: Int? = nil, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> StatisticsCollector {
        let collector = StatisticsCollector(definition: engine.model.definition, withGram: withGram, gramFor: gramFor)
        for (i, sample) in set.samples.enumerated() {
            let pixels = try engine.pixelValues(imagePath: sample.image)
            // The language-model head sees the final hidden states too.
            _ = try engine.forward(
                .image(pixels, prompt: sample.prompt(engine)), capture: .init(logitsFrom: 0, observer: collector))
            if i == 0, withGram, gramFor == nil, let budget = gramBudget, collector.gramBytesIfAll > budget {
                throw VLQError(
                    CalibrationError.overBudget,
                    nil,
                    "the X^T X statistics of this model need \(collector.gramBytesIfAll >> 20) MiB, over the budget "
                        + "of \(budget >> 20) MiB: use --diagonal-only (imatrix), or quantize --set directly, which "
                        + "calibrates in windows of layers"
                )
            }
            progress(i + 1, set.samples.count)
        }
        return collector
    }
}

extension CalibrationSet.Sample {
    /// The sample's prompt for `engine`, its answer (when it has one) after the question as
    /// teacher-forced tokens: the sequence calibration and reference runs feed the model.
    public func prompt(_ engine: YiVLEngine) -> YiVLEngine.Prompt {
        var prompt = engine.prompt(question: question)
        if let answer { prompt.after += engine.tokenizer.encode(answer) }
        return prompt
    }
}
