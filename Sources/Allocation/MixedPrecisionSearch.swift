import Calibration
import Logging
import Quantization
import VLQCore
import VLQFormat
import Verification
import YiVL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `vlq quantize --max-kld X | --target-bits B | --max-size S`: the precision of each layer chosen from
/// measured sensitivity, then checked end to end.
///
/// 1. The calibration set is split: every `heldOutEvery`-th sample is held out; statistics (X^T X for
///    GPTQ) come from the rest, and so do the samples each unit's drift is measured on.
/// 2. The model is quantized once per choice (every unit in q3 g128, then every unit in q4 g128...), and
///    each unit's own drift in that choice is measured as `verify --rank-layers` does: the source model
///    with only that unit's tensors taken from the quantized one, mean KL divergence of the logits.
/// 3. `BitAllocator` picks one choice per unit: the fewest bytes whose summed drift stays within the
///    bound, or the least drift within the size.
/// 4. That mixed recipe is quantized and its mean KLD measured against the source on the held-out
///    samples. With a bound, the bound the knapsack sees moves by the ratio of the bound to the held-out
///    figure (down when the sum was optimistic, up when pessimistic) and the round is redone, up to
///    `rounds` times; the smallest bundle that held is written, none when none held.
/// The unit quantizations do not depend on each other (GPTQ's statistics come from the source model),
/// so a unit's tensors in the mixed bundle are the ones whose drift was measured.
public struct MixedPrecisionSearch {
    /// The goal is the one the bundle records.
    public typealias Goal = AllocationRecord.Goal

    /// One way of storing a unit's tensors.
    public struct Choice: Equatable, Sendable {
        public var target: Recipe.Target

        public init(_ target: Recipe.Target) { self.target = target }

        public var name: String {
            switch target {
            case .keep: return "keep"
            case .float(let e): return e.name
            case .quantized(let e, let g): return "\(e.name) " + (g.map { "g\($0)" } ?? "row")
            }
        }

        /// f16 of a 16-bit or f32 weight moves the logits by far less than any quantization: taken as no drift.
        var isFloat: Bool {
            if case .quantized = target { return false }
            return true
        }
    }

    public static let defaultChoices: [Choice] = [
        Choice(.quantized(.q3, groupSize: 128)), Choice(.quantized(.q3, groupSize: 64)),
        Choice(.quantized(.q4, groupSize: 128)), Choice(.quantized(.q4, groupSize: 64)),
        Choice(.quantized(.q4, groupSize: 32)), Choice(.quantized(.q8, groupSize: 128)), Choice(.float(.f16)),
    ]

    public struct Options {
        public var goal: Goal
        public var method: QuantizationMethod = .gptq
        public var activationOrder = false
        public var choices = MixedPrecisionSearch.defaultChoices
        public var heldOutEvery = 4
        /// Samples (from the statistics part) each unit's drift is measured on.
        public var sensitivitySamples = 16
        /// Solve, quantize and check rounds with a bound (fewer when the knapsack converges).
        public var rounds = 6

        public init(goal: Goal) { self.goal = goal }
    }

    public struct Report {
        public var record: AllocationRecord
        public var outputBytes: Int
    }

    let options: Options
    let logger: Logger

    public init(options: Options, logger: Logger = Logger(label: "vlq.allocate")) {
        self.options = options
        self.logger = logger
    }

    /// Every `heldOutEvery`-th sample held out, the rest for statistics and sensitivities; a usage
    /// problem (too few samples) is an error naming the set.
    public func split(_ set: CalibrationSet) throws -> (statistics: CalibrationSet, heldOut: CalibrationSet) {
        let every = options.heldOutEvery
        let held = set.samples.indices.filter { $0 % every == every - 1 }
        let rest = set.samples.indices.filter { $0 % every != every - 1 }
        guard !held.isEmpty, rest.count >= 1 else {
            throw VLQError(
                CalibrationError.invalidSet, set.source,
                "has \(set.samples.count) samples: choosing precision needs at least \(every), one in \(every) "
                    + "held out to check the bound")
        }
        return (
            try set.subset(rest, source: set.source + " (statistics part)"),
            try set.subset(held, source: set.source + " (held out: every \(every)th sample)")
        )
    }

    /// Runs the search on `source` and writes the bundle to `output`; `scratch` is a folder for the
    /// per-choice bundles (emptied as it goes). `statistics` were collected on `split(set).statistics`.
    public func run(
        source: VLQFile, set: CalibrationSet, statistics: StatisticsSource?, output: String, scratch: String
    ) throws -> Report {
        let (statisticsPart, heldOut) = try split(set)
        let sensitivitySet = try statisticsPart.subset(
            Array(0..<min(options.sensitivitySamples, statisticsPart.samples.count)),
            source: set.source + " (sensitivity samples)")
        let reference = try LazyModel(source.path).engine()
        logger.info("reference logits: \(sensitivitySet.samples.count) sensitivity, \(heldOut.samples.count) held out")
        let sensitivityRun = try ReferenceRun.run(
            engine: reference, set: sensitivitySet, model: source.path, layerSamples: 0, maxTokens: 1)
        let heldOutRun = try ReferenceRun.run(
            engine: reference, set: heldOut, model: source.path, layerSamples: 0, maxTokens: 1)
        let units = try AllocationUnits(source: source)
        let table = try measure(
            units, source: source, statistics: statistics, reference: reference, run: sensitivityRun,
            set: sensitivitySet, scratch: scratch)
        let allocator = BitAllocator(options: table)
        var bound: Double
        switch options.goal {
        case .maxKLD(let x): bound = x
        default: bound = .infinity
        }
        // With a bound, rounds move the knapsack's bound by the ratio of the bound to the held-out figure:
        // down when the sum of single-unit drifts was optimistic, up when it was pessimistic (it counts
        // the worst samples of each unit as if they added up); the smallest bundle that held is kept.
        var best: (record: AllocationRecord, path: String, bytes: Int)?
        var measured = Set<[Int]>()
        var passing: Double?, failing: Double?
        var round = 0
        let rounds = bound.isFinite ? options.rounds : 1
        while round < rounds {
            guard let allocation = solve(allocator, units: units, bound: bound) else {
                if best != nil { break }
                throw VLQError(
                    AllocationError.unreachable, source.path,
                    "no choice of \(options.choices.map(\.name).joined(separator: ", ")) per layer "
                        + "meets \(options.goal.description) (the least summed drift possible is "
                        + "\(scientific(table.reduce(0) { $0 + $1.map(\.drift).min()! })))")
            }
            // The knapsack came back to an allocation already checked: the search has converged.
            guard measured.insert(allocation.choices).inserted else { break }
            round += 1
            let candidate = scratch + "/round-\(round).vlq"
            try quantize(source, recipe: recipe(allocation, units), statistics: statistics, to: candidate)
            let comparison = try RunComparison.run(
                candidate: try YiVLEngine.open(candidate), reference: heldOutRun, set: heldOut, maxTokens: 1)
            let achieved = comparison.logits.meanKLD
            let record = AllocationRecord(
                goal: options.goal, choices: options.choices.map(\.name),
                units: units.names.indices.map { u in
                    let k = allocation.choices[u]
                    return AllocationRecord.Unit(
                        name: units.names[u], choice: options.choices[k].name, parameters: units.parameters[u],
                        bytes: table[u][k].bytes, drift: table[u][k].drift)
                },
                predictedKLD: allocation.drift, heldOutKLD: achieved, heldOutPositions: comparison.logits.positions,
                heldOutEvery: options.heldOutEvery, heldOutImages: heldOut.samples.map { lastComponent($0.image) },
                sensitivitySamples: sensitivitySet.samples.count, rounds: round)
            let line =
                "round \(round): \(fixed(record.bitsPerWeight, 2)) bits per weight, predicted KLD "
                + "\(scientific(allocation.drift)), held out \(scientific(achieved))"
            logger.notice("\(line)")
            guard case .maxKLD(let x) = options.goal else {
                best = (record, candidate, allocation.bytes)
                break
            }
            if achieved <= x, best.map({ allocation.bytes < $0.bytes }) ?? true {
                if let previous = best { unlink(previous.path) }
                best = (record, candidate, allocation.bytes)
            } else {
                unlink(candidate)
            }
            // Knapsack bounds known to pass and to fail bracket the answer: halve the bracket (geometrically)
            // once there is one, else move by the ratio (the sum of drifts overstates or understates).
            if achieved <= x { passing = min(passing ?? bound, bound) } else { failing = max(failing ?? bound, bound) }
            if let passing, let failing, passing < failing {
                bound = (passing * failing).squareRoot()
            } else {
                let ratio = achieved > 0 ? min(max(x / achieved, 0.25), 4) : 4
                bound = allocation.drift * ratio * (achieved > x ? 0.95 : 1)
            }
        }
        guard let kept = best else {
            throw VLQError(
                AllocationError.unreachable, source.path,
                "after \(round) rounds no bundle kept the held-out mean KLD within the bound: loosen the bound "
                    + "or calibrate with more samples")
        }
        var record = kept.record
        let path = kept.path
        record.rounds = round
        try BundleCopy.copy(path, to: output) { metadata in
            guard case .object(var top) = metadata, case .object(var quantization)? = top["quantization"] else {
                return metadata
            }
            quantization["allocation"] = record.json
            top["quantization"] = .object(quantization)
            return .object(top)
        }
        unlink(path)
        return Report(record: record, outputBytes: (try? MappedFile(path: output).size) ?? 0)
    }

    /// The knapsack for this round's goal. A size goal counts the tensors outside the units as fixed.
    func solve(_ allocator: BitAllocator, units: AllocationUnits, bound: Double) -> BitAllocator.Allocation? {
        switch options.goal {
        case .maxKLD: return allocator.solve(.smallestWithin(drift: bound))
        case .targetBits(let bits):
            let parameters = units.parameters.reduce(0, +)
            return allocator.solve(.leastDriftWithin(bytes: Int(bits * Double(parameters) / 8)))
        case .maxBytes(let size):
            return allocator.solve(.leastDriftWithin(bytes: size - units.fixedBytes))
        }
    }

    /// Each unit's bytes and own drift in each choice: one quantized bundle per choice, ranked by unit.
    func measure(
        _ units: AllocationUnits, source: VLQFile, statistics: StatisticsSource?, reference: YiVLEngine,
        run: ReferenceRun, set: CalibrationSet, scratch: String
    ) throws -> [[BitAllocator.Option]] {
        var table = units.names.map { _ in [BitAllocator.Option]() }
        for (k, choice) in options.choices.enumerated() {
            let path = scratch + "/choice-\(k).vlq"
            try quantize(source, recipe: uniformRecipe(choice, units), statistics: statistics, to: path)
            defer { unlink(path) }
            let bundle = try VLQFile(path: path)
            let bytes = units.bytes(in: bundle)
            var drift = [String: Double]()
            if !choice.isFloat {
                let entries = try LayerContribution.rank(
                    reference: reference, candidate: try YiVLEngine.open(path), run: run, set: set,
                    samples: set.samples.count)
                for e in entries { drift[e.layer] = e.meanKLD }
            }
            for u in units.names.indices {
                table[u].append(BitAllocator.Option(bytes: bytes[u], drift: drift[units.names[u]] ?? 0))
            }
            let line =
                "measured \(choice.name): \(units.names.count) units, summed drift "
                + "\(scientific(table.reduce(0) { $0 + $1[k].drift }))"
            logger.notice("\(line)")
        }
        for (u, name) in units.names.enumerated() {
            let options = zip(options.choices, table[u]).map { "\($0.name) \(scientific($1.drift))" }
            logger.info("drift of \(name) alone: \(options.joined(separator: ", "))")
        }
        return table
    }

    func uniformRecipe(_ choice: Choice, _ units: AllocationUnits) -> Recipe {
        Recipe(
            name: "every layer in \(choice.name)", method: options.method,
            rules: Recipe.floatRules
                + units.tensors.map { Recipe.Rule(component: nil, pattern: $0, target: choice.target, method: nil) }
                + [Recipe.Rule(component: nil, pattern: "*", target: .keep, method: nil)])
    }

    func recipe(_ allocation: BitAllocator.Allocation, _ units: AllocationUnits) -> Recipe {
        var rules = Recipe.floatRules
        for (u, name) in units.names.enumerated() {
            let target = options.choices[allocation.choices[u]].target
            for tensor in units.tensorsByUnit[name]! {
                rules.append(Recipe.Rule(component: nil, pattern: tensor, target: target, method: nil))
            }
        }
        rules.append(Recipe.Rule(component: nil, pattern: "*", target: .keep, method: nil))
        return Recipe(name: "allocated", method: options.method, rules: rules)
    }

    func quantize(_ source: VLQFile, recipe: Recipe, statistics: StatisticsSource?, to path: String) throws {
        var pipelineOptions = QuantizePipeline.Options(recipe: recipe)
        pipelineOptions.activationOrder = options.activationOrder
        let pipeline = QuantizePipeline(options: pipelineOptions, logger: logger)
        try pipeline.preflight(source: source)
        _ = try pipeline.run(source: source, output: path, statistics: statistics, calibrationSource: nil)
    }

    func lastComponent(_ path: String) -> String {
        path.split(separator: "/").last.map(String.init) ?? path
    }
}

/// The parts precision is chosen for: the tensors the int8 preset quantizes (every Linear and the token
/// embeddings and lm_head), grouped by the layer they belong to.
struct AllocationUnits {
    /// Unit names in a fixed order (sorted).
    let names: [String]
    let tensorsByUnit: [String: [String]]
    /// Every unit's tensors, in table order.
    let tensors: [String]
    let parameters: [Int]
    /// Bytes of the bundle outside the units' tensors (the rest of the table, metadata and padding as in
    /// the source): what a size goal cannot change.
    let fixedBytes: Int

    init(source: VLQFile) throws {
        let config = try EngineConfig(metadata: source.metadata, source: source.path)
        let definition = ModelDefinition(config)
        let int8 = Recipe.int8()
        var byUnit: [String: [String]] = [:]
        var tensors: [String] = []
        var parametersByUnit: [String: Int] = [:]
        var unitBytes = 0
        for t in source.tensors
        where int8.decide(name: t.name, component: t.component, shape: t.shape).encoding?.isQuantized == true {
            guard let handle = definition.handle(named: t.name) else { continue }
            let unit = definition.label(of: handle)
            byUnit[unit, default: []].append(t.name)
            parametersByUnit[unit, default: 0] += t.shape.reduce(1, *)
            tensors.append(t.name)
            unitBytes += t.byteCount
        }
        names = byUnit.keys.sorted()
        tensorsByUnit = byUnit
        self.tensors = tensors
        parameters = names.map { parametersByUnit[$0]! }
        fixedBytes = source.mapped.size - unitBytes
    }

    /// Each unit's stored bytes in `bundle`.
    func bytes(in bundle: VLQFile) -> [Int] {
        let byName = Dictionary(uniqueKeysWithValues: bundle.tensors.map { ($0.name, $0.byteCount) })
        return names.map { unit in tensorsByUnit[unit]!.reduce(0) { $0 + (byName[$1] ?? 0) } }
    }
}
