import VLQCore
import YiVL

/// Where the quantizer gets the statistics of a Linear's input.
public protocol StatisticsSource: AnyObject {
    func statistics(for weightName: String) throws -> InputStatistics?
    var hasGram: Bool { get }
    var setDigest: String { get }
    var samples: Int { get }
    /// Bytes X^T X may take at once, when not every input's fits in memory (nil: all are at hand).
    /// The quantization plan then divides the inputs into windows of this size.
    var gramWindowBudget: Int? { get }
    /// Computes X^T X of these inputs (each named by the Linear owning its statistics), replacing the
    /// previous window's. The quantizer calls it before the tensors that read them.
    func computeGram(for owners: [String]) throws
}

extension StatisticsSource {
    public var gramWindowBudget: Int? { nil }
    public func computeGram(for owners: [String]) throws {}
}

/// Statistics read from a `.vlqstats` file (or collected in one pass).
public final class StoredStatistics: StatisticsSource {
    public let file: StatisticsFile
    public init(_ file: StatisticsFile) { self.file = file }
    public func statistics(for weightName: String) throws -> InputStatistics? { file.statistics(for: weightName) }
    public var hasGram: Bool { file.hasGram }
    public var setDigest: String { file.setDigest }
    public var samples: Int { file.samples }
}

/// X^T X for a model whose accumulators do not fit in memory at once: a first pass collects the
/// per-channel sums of every input; then each window the quantization plan asks for (`computeGram`)
/// is one more pass over the set, collecting X^T X of just those inputs; the previous window is
/// dropped first. Between windows, an input's statistics come without X^T X.
public final class WindowedStatistics: StatisticsSource {
    let engine: YiVLEngine
    let calibrationSet: CalibrationSet
    let budget: Int
    let diagonal: StatisticsCollector
    var window: StatisticsCollector?
    /// The inputs whose X^T X `window` holds.
    var windowOwners: Set<String> = []
    public private(set) var passes = 1
    let progress: (String) -> Void
    /// Samples done in the current pass: (pass, done, total).
    let sampleProgress: (Int, Int, Int) -> Void

    public init(
        engine: YiVLEngine, set: CalibrationSet, budget: Int,
        progress: @escaping (String) -> Void = { _ in },
        sampleProgress: @escaping (Int, Int, Int) -> Void = { _, _, _ in }
    ) throws {
        self.engine = engine
        self.calibrationSet = set
        self.budget = budget
        self.progress = progress
        self.sampleProgress = sampleProgress
        diagonal = try CalibrationRunner.collect(
            engine: engine, set: set, withGram: false, progress: { sampleProgress(1, $0, $1) })
    }

    /// Over `model`, opened now if it was not yet.
    public convenience init(
        model: LazyModel, set: CalibrationSet, budget: Int, progress: @escaping (String) -> Void = { _ in },
        sampleProgress: @escaping (Int, Int, Int) -> Void = { _, _, _ in }
    ) throws {
        try self.init(
            engine: try model.engine(), set: set, budget: budget, progress: progress, sampleProgress: sampleProgress)
    }

    public var hasGram: Bool { true }
    public var setDigest: String { calibrationSet.digest }
    public var samples: Int { calibrationSet.samples.count }
    public var gramWindowBudget: Int? { budget }

    public func statistics(for weightName: String) throws -> InputStatistics? {
        let owner = diagonal.aliases[weightName] ?? weightName
        guard var stats = diagonal.statistics[owner] else { return nil }
        stats.gramMatrix = window?.statistics[owner]?.gramMatrix
        return stats
    }

    public func computeGram(for owners: [String]) throws {
        let known = owners.filter { diagonal.statistics[$0] != nil }
        guard let first = known.first else { return }
        // The window already at hand: a second quantization of the same model (the allocation search
        // quantizes it once per choice) reuses it instead of another pass over the set.
        if window != nil, Set(known).isSubset(of: windowOwners) { return }
        let bytes = known.reduce(0) { total, owner in
            let columns = diagonal.statistics[owner]!.columns
            return total + 4 * columns * columns
        }
        window = nil  // free the previous window before allocating the next
        windowOwners = []
        passes += 1
        progress("calibration pass \(passes): X^T X for \(known.count) inputs from \(first) (\(bytes >> 20) MiB)")
        let wanted = Set(known), pass = passes
        window = try CalibrationRunner.collect(
            engine: engine, set: calibrationSet, withGram: true,
            gramFor: { wanted.contains($0) }, progress: { self.sampleProgress(pass, $0, $1) })
        windowOwners = wanted
    }
}
