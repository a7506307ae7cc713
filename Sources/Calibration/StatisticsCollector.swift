import VLQCore
import YiVL

/// Accumulates `InputStatistics` for every Linear as the engine runs.
///
/// Linears fed the same input (q/k/v, gate/up) share one entry: the first name seen owns it and the
/// others are recorded as aliases, so the Gram matrix is computed once per distinct input.
public final class StatisticsCollector: LinearInputObserver {
    public private(set) var statistics: [String: InputStatistics] = [:]
    public private(set) var aliases: [String: String] = [:]
    public let withGram: Bool
    private var last: (pointer: UnsafePointer<Float>, rows: Int, columns: Int, key: String)?

    public init(withGram: Bool) { self.withGram = withGram }

    public func observe(linear weightName: String, input: UnsafePointer<Float>, rows: Int, columns: Int) {
        if let last, last.pointer == input, last.rows == rows, last.columns == columns, weightName != last.key {
            aliases[weightName] = last.key
            return
        }
        last = (input, rows, columns, weightName)
        statistics[weightName, default: InputStatistics(columns: columns, withGram: withGram)].add(input, rows: rows)
    }

    /// Statistics of the input of `weightName` (through its alias when it shares one).
    public func statistics(for weightName: String) -> InputStatistics? {
        statistics[aliases[weightName] ?? weightName]
    }

    /// A new sample starts: inputs never alias across samples.
    public func nextSample() { last = nil }
}

/// Runs a calibration set through the fp32 engine, collecting statistics at every Linear's input:
/// vision tower and projector included, so the vision side is calibrated by images.
public enum CalibrationRunner {
    public static func collect(engine: YiVLEngine, set: CalibrationSet, withGram: Bool,
                               progress: (Int, Int) -> Void = { _, _ in }) throws -> StatisticsCollector {
        let collector = StatisticsCollector(withGram: withGram)
        engine.model.observer = collector
        defer { engine.model.observer = nil }
        for (i, sample) in set.samples.enumerated() {
            collector.nextSample()
            let pixels = try engine.pixelValues(imagePath: sample.image)
            var prompt = engine.prompt(question: sample.question)
            if let answer = sample.answer { prompt.after += engine.tokenizer.encode(answer) }
            let positions = prompt.before.count + engine.imageTokenCount() + prompt.after.count
            let stages = try engine.prefill(pixels: pixels, prompt: prompt, cache: engine.model.makeCache(capacity: positions))
            // The language-model head sees the final hidden states too.
            _ = try engine.model.logits(stages.hidden)
            progress(i + 1, set.samples.count)
        }
        return collector
    }
}
