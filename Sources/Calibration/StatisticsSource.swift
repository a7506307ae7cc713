import VLQCore
import YiVL

/// Where the quantizer gets the statistics of a Linear's input.
public protocol StatisticsSource: AnyObject {
    func statistics(for weightName: String) throws -> InputStatistics?
    var hasGram: Bool { get }
    var setDigest: String { get }
    var samples: Int { get }
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
/// per-channel sums of every input; then, when the quantizer asks for an input whose Gram matrix is
/// not at hand, one more pass over the set collects it together with those of the inputs that follow
/// it in execution order, as many as the budget holds; the previous window is dropped. The quantizer
/// asks in execution order, so each input's Gram matrix is computed once.
public final class WindowedStatistics: StatisticsSource {
    let engine: YiVLEngine
    let calibrationSet: CalibrationSet
    let budget: Int
    let diagonal: StatisticsCollector
    var window: StatisticsCollector?
    var windowOwners: Set<String> = []
    public private(set) var passes = 1
    let progress: (String) -> Void

    public init(engine: YiVLEngine, set: CalibrationSet, budget: Int, progress: @escaping (String) -> Void = { _ in }) throws {
        self.engine = engine
        self.calibrationSet = set
        self.budget = budget
        self.progress = progress
        diagonal = try CalibrationRunner.collect(engine: engine, set: set, withGram: false)
    }

    public var hasGram: Bool { true }
    public var setDigest: String { calibrationSet.digest }
    public var samples: Int { calibrationSet.samples.count }

    public func statistics(for weightName: String) throws -> InputStatistics? {
        let owner = diagonal.aliases[weightName] ?? weightName
        guard var stats = diagonal.statistics[owner] else { return nil }
        if !windowOwners.contains(owner) { try load(from: owner) }
        stats.gramMatrix = window?.statistics[owner]?.gramMatrix
        return stats
    }

    func load(from owner: String) throws {
        guard let start = diagonal.order.firstIndex(of: owner) else { return }
        var owners: Set<String> = []
        var bytes = 0
        for name in diagonal.order[start...] {
            let columns = diagonal.statistics[name]!.columns
            let need = 4 * columns * columns
            if !owners.isEmpty && bytes + need > budget { break }
            owners.insert(name)
            bytes += need
        }
        window = nil  // free the previous window before allocating the next
        passes += 1
        progress("calibration pass \(passes): X^T X for \(owners.count) inputs from \(owner) (\(bytes >> 20) MiB)")
        window = try CalibrationRunner.collect(engine: engine, set: calibrationSet, withGram: true, gramFor: { owners.contains($0) })
        windowOwners = owners
    }
}
