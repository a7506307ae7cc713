import Calibration
import Logging
import Numerics
import VLQCore
import VLQFormat
import YiVL

/// Bundle in, quantized bundle out: plan, then per tensor calibrate, apply and record.
///
/// The `QuantizationPlan` decides everything the recipe and the model say before any weight is read.
/// Tensors are then written one at a time in the source's order (`PlanExecution`): the calibration
/// window a tensor reads is computed first, AWQ's channel scales are searched at each layer's first
/// tensor and folded into the op that precedes each group of Linears (norm weights and biases, or the
/// rows of the Linear feeding it), so the float function is unchanged before rounding. Only the tensor
/// in hand is held in f32. What was done is stored as a `QuantizationRecord`.
public final class QuantizePipeline {
    public struct Options {
        public var recipe: Recipe
        public var method: QuantizationMethod?
        public var activationOrder = false
        /// Tensors with NaN or infinite values that the recipe would quantize: refused (false), or kept
        /// in their float encoding and recorded as a fallback (true).
        public var keepNonFiniteInFloat = false
        /// The recipe file, for errors about its rules (nil: a preset).
        public var recipeSource: String?
        public init(recipe: Recipe, method: QuantizationMethod? = nil) {
            self.recipe = recipe
            self.method = method
        }
    }

    public struct Report {
        public var tensors: Int
        public var quantized: Int
        public var outputBytes: Int
        /// What was stored as the bundle's `quantization` metadata.
        public var record: QuantizationRecord

        /// Every tensor whose recipe wish was changed, and why, sorted by name.
        public var fallbacks: [(name: String, reason: String)] {
            record.tensors.compactMap { name, t in t.fallback.map { (name, $0) } }.sorted { $0.name < $1.name }
        }
    }

    let options: Options
    let logger: Logger
    private var scannedNonFinite: [String: Int] = [:]

    public init(options: Options, logger: Logger = Logger(label: "vlq.quantize")) {
        self.options = options
        self.logger = logger
    }

    var recipe: Recipe {
        var r = options.recipe
        if let m = options.method { r.method = m }
        return r
    }

    /// Whether the recipe needs calibration statistics (and whether Gram matrices among them).
    public static func needs(_ recipe: Recipe) -> (statistics: Bool, gram: Bool) { QuantizationPlan.needs(recipe) }

    /// What `run` refuses about the source, found before any calibration: an already quantized bundle,
    /// tensors with non-finite values to quantize.
    public func preflight(source: VLQFile) throws {
        try refuseQuantized(source)
        try recipe.checkEveryRuleApplies(
            to: source.tensors.map { ($0.name, $0.component) }, source: options.recipeSource ?? "recipe \(recipe.name)")
        // Kept tensors are warned about once, by `run`.
        guard !options.keepNonFiniteInFloat else { return }
        let recipe = self.recipe
        let toQuantize = source.tensors.filter {
            recipe.decide(name: $0.name, component: $0.component, shape: $0.shape).encoding?.isQuantized == true
        }
        try refuseNonFinite(source, nonFinite(source, names: toQuantize.map(\.name)))
    }

    public func run(
        source: VLQFile, output: String, statistics: StatisticsSource?, calibrationSource: String?,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> Report {
        try refuseQuantized(source)
        try checkCalibration(statistics)
        let config = try EngineConfig(metadata: source.metadata, source: source.path)
        try config.checkTable(of: source)
        let definition = ModelDefinition(config)
        let plan = try makePlan(source, definition, gramWindowBudget: statistics?.gramWindowBudget)
        let weights = WeightStore(bundle: source, definition: definition, cacheBudget: 0)
        let writer = try VLQWriter(path: output, plan: plan.output)
        var execution = PlanExecution(
            plan: plan, definition: definition, source: source, weights: weights,
            statistics: statistics, calibrationSource: calibrationSource,
            activationOrder: options.activationOrder, logger: logger)
        let record: QuantizationRecord
        do {
            for position in plan.tensors.indices {
                try execution.prepare(position)
                try execution.write(position, to: writer)
                progress(position + 1, plan.tensors.count)
            }
            record = execution.record(recipe: plan.recipe, sourceTableChecksum: source.header.tableChecksum)
            var metadata = source.metadata.objectValue!
            metadata["quantization"] = record.json
            // The metadata's format version follows the header's, which a q3 tensor raises to 1.1.
            let minor = plan.output.map(\.encoding.minorVersion).max() ?? 0
            if minor > 0, case .object(var format)? = metadata["format"] {
                format["version"] = .string("\(VLQLayout.majorVersion).\(minor)")
                metadata["format"] = .object(format)
            }
            try writer.finish(metadata: .object(metadata))
        } catch {
            writer.abandon()
            throw error
        }
        let size = (try? MappedFile(path: output).size) ?? 0
        return Report(
            tensors: plan.tensors.count, quantized: execution.quantizedCount, outputBytes: size,
            record: record)
    }

    func refuseQuantized(_ source: VLQFile) throws {
        if try BundleMetadata(json: source.metadata, source: source.path).isQuantized {
            throw VLQError(
                QuantizationError.alreadyQuantized,
                source.path,
                "is already quantized; "
                    + "quantize from the unquantized bundle or the Hugging Face folder")
        }
    }

    func checkCalibration(_ statistics: StatisticsSource?) throws {
        let need = QuantizationPlan.needs(recipe)
        if need.statistics && statistics == nil {
            throw VLQError(
                QuantizationError.needsCalibration, nil,
                "method \(recipe.method?.rawValue ?? "") needs calibration: give --set or --stats")
        }
        if need.gram, let statistics, !statistics.hasGram {
            throw VLQError(
                QuantizationError.needsCalibration,
                nil,
                "gptq and awq need statistics with Gram matrices; "
                    + "these were collected without (--diagonal-only)")
        }
    }

    /// The plan for this source; tensors to quantize that hold NaN or infinities are refused, or (with
    /// `keepNonFiniteInFloat`) planned in their stored encoding and warned about.
    func makePlan(_ source: VLQFile, _ definition: ModelDefinition, gramWindowBudget: Int?) throws -> QuantizationPlan {
        let plan = try QuantizationPlan(
            definition: definition, table: source.tensors, recipe: recipe,
            gramWindowBudget: gramWindowBudget)
        let offending = nonFinite(source, names: plan.tensors.filter(\.isQuantized).map(\.name))
        guard !offending.isEmpty else { return plan }
        try refuseNonFinite(source, offending)
        var kept: [TensorHandle: Int] = [:]
        for (name, count) in offending { kept[definition.handle(named: name)!] = count }
        let keeping = try QuantizationPlan(
            definition: definition, table: source.tensors, recipe: recipe,
            keptNonFinite: kept, gramWindowBudget: gramWindowBudget)
        for (name, _) in offending {
            logger.warning("tensor \(name): \(keeping[definition.handle(named: name)!]!.fallback!)")
        }
        return keeping
    }

    /// The named tensors holding NaN or infinite values, with their counts, in the given order. Each
    /// tensor is scanned once per pipeline (`preflight` and `run`).
    func nonFinite(_ source: VLQFile, names: [String]) -> [(name: String, count: Int)] {
        names.compactMap { name in
            if scannedNonFinite[name] == nil, let stored = source.record(name) {
                scannedNonFinite[name] = Self.countNonFinite(source.data(stored), encoding: stored.encoding)
                source.mapped.release(offset: stored.offset, count: stored.byteCount)
            }
            guard let count = scannedNonFinite[name], count > 0 else { return nil }
            return (name, count)
        }
    }

    /// NonFiniteValues.count over the cores, in slices of 8 MiB (a multiple of every element size): on one
    /// core the scan of a 6B model's 13 GB took a tenth of an int8 quantize.
    static func countNonFinite(_ bytes: UnsafeRawBufferPointer, encoding: TensorEncoding) -> Int {
        let slice = 8 << 20
        let slices = (bytes.count + slice - 1) / slice
        let counts = UnsafeMutablePointer<Int>.allocate(capacity: max(1, slices))
        defer { counts.deallocate() }
        Kernels.parallelSlices(bytes.count, slice: slice) { range in
            counts[range.lowerBound / slice] = NonFiniteValues.count(
                UnsafeRawBufferPointer(rebasing: bytes[range]), encoding: encoding)
        }
        return (0..<slices).reduce(0) { $0 + counts[$1] }
    }

    /// Rounding NaN or an infinity into a group's codes poisons the whole group (its scale becomes
    /// NaN): such tensors are refused before any work unless the user said to keep them in float.
    func refuseNonFinite(_ source: VLQFile, _ offending: [(name: String, count: Int)]) throws {
        guard !offending.isEmpty, !options.keepNonFiniteInFloat else { return }
        let listed = offending.prefix(6).map { "\($0.name) (\($0.count))" }.joined(separator: ", ")
        let more = offending.count > 6 ? ", and \(offending.count - 6) more" : ""
        throw VLQError(
            QuantizationError.nonFiniteWeights,
            source.path,
            "\(offending.count) tensors to quantize hold NaN or infinite values: "
                + "\(listed)\(more); keep them in float with --keep-non-finite "
                + "(or a recipe rule with \"encoding\": \"keep\")")
    }
}
