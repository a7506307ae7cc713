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

/// `vlq quantize --max-kld X | --target-bits B | --max-size S`: the precision of each unit chosen from
/// measured sensitivity, then checked end to end.
///
/// The units (`Scope`): with `llm` each decoder Linear weight alone, the other tensors stored as the int4
/// preset stores them (their drift measured once, as one more unit's, and counted as fixed); with `all`
/// every tensor the int8 preset quantizes, grouped by layer, the rest kept in float.
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
///    `rounds` times; the smallest bundle that held is written, none when none held. A size goal
///    (`--target-bits`, `--max-size`) takes one round: a held-out figure above or below the sum says the
///    sum is off by a factor, which moves no allocation's rank at a fixed size, so the knapsack would
///    pick the same one again; the held-out figure is recorded.
/// The unit quantizations do not depend on each other (GPTQ's statistics come from the source model),
/// so a unit's tensors in the mixed bundle are the ones whose drift was measured.
public struct MixedPrecisionSearch {
    /// The goal and scope are the ones the bundle records.
    public typealias Goal = AllocationRecord.Goal
    public typealias Scope = AllocationRecord.Scope

    /// One way of storing a unit's tensors.
    public struct Choice: Equatable, Sendable {
        public var target: Recipe.Target

        public init(_ target: Recipe.Target) { self.target = target }

        /// A choice by its name ("q4 g128", "q4g128", "q8 row", "f16"); nil for anything else.
        public init?(name: String) {
            let compact = name.filter { $0 != " " }
            if let e = TensorEncoding(name: compact), !e.isQuantized {
                self.init(.float(e))
                return
            }
            let group: Int?, encoding: Substring
            if compact.hasSuffix("row") {
                (encoding, group) = (compact.dropLast(3), nil)
            } else if let g = compact.lastIndex(of: "g"), let n = Int(compact[compact.index(after: g)...]),
                Recipe.standardGroupSizes.contains(n)
            {
                (encoding, group) = (compact[..<g], n)
            } else {
                return nil
            }
            guard let e = TensorEncoding(name: String(encoding)), e.isQuantized else { return nil }
            self.init(.quantized(e, groupSize: group))
        }

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
        public var scope = Scope.llm
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
        let units = try AllocationUnits(source: source, scope: options.scope)
        let (table, measuredRest) = try measure(
            units, source: source, statistics: statistics, reference: reference, run: sensitivityRun,
            set: sensitivitySet, scratch: scratch)
        var rest = measuredRest
        let images = heldOut.samples.map { lastComponent($0.image) }
        func makeRecord(_ choices: [Int], predicted: Double, heldOut: LogitDrift, round: Int) -> AllocationRecord {
            allocationRecord(
                choices, units, table, rest: rest, predicted: predicted, heldOut: heldOut, images: images,
                sensitivitySamples: sensitivitySet.samples.count, round: round)
        }
        // The written bundle's metadata holds the allocation record too, which the measured bundles lack:
        // a size goal leaves room for it.
        rest.bytes += recordRoom(units, makeRecord)
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
            guard let allocation = solve(allocator, units: units, rest: rest, bound: bound) else {
                if best != nil { break }
                throw VLQError(
                    AllocationError.unreachable, source.path,
                    "no choice of \(options.choices.map(\.name).joined(separator: ", ")) per unit "
                        + "meets \(options.goal.description) (the least summed drift possible is "
                        + "\(scientific(rest.drift + table.reduce(0) { $0 + $1.map(\.drift).min()! })))")
            }
            let predicted = allocation.drift + rest.drift
            // The knapsack came back to an allocation already checked: the search has converged.
            guard measured.insert(allocation.choices).inserted else { break }
            round += 1
            let candidate = scratch + "/round-\(round).vlq"
            try quantize(source, recipe: recipe(allocation, units), statistics: statistics, to: candidate)
            let comparison = try RunComparison.run(
                candidate: try YiVLEngine.open(candidate), reference: heldOutRun, set: heldOut, maxTokens: 1)
            let achieved = comparison.logits.meanKLD
            let record = makeRecord(allocation.choices, predicted: predicted, heldOut: comparison.logits, round: round)
            let line =
                "round \(round): \(fixed(record.bitsPerWeight, 2)) bits per weight, predicted KLD "
                + "\(scientific(predicted)), held out \(scientific(achieved))"
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
                bound = predicted * ratio * (achieved > x ? 0.95 : 1)
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

    /// What the bundle records for an allocation (`choices`: an index into the options per unit).
    func allocationRecord(
        _ choices: [Int], _ units: AllocationUnits, _ table: [[BitAllocator.Option]], rest: Fixed, predicted: Double,
        heldOut: LogitDrift, images: [String], sensitivitySamples: Int, round: Int
    ) -> AllocationRecord {
        AllocationRecord(
            goal: options.goal, scope: options.scope, choices: options.choices.map(\.name),
            units: units.names.indices.map { u in
                let k = choices[u]
                return AllocationRecord.Unit(
                    name: units.names[u], choice: options.choices[k].name, parameters: units.parameters[u],
                    bytes: table[u][k].bytes, drift: table[u][k].drift)
            },
            fixedDrift: rest.drift, predictedKLD: predicted, heldOutKLD: heldOut.meanKLD,
            heldOutPositions: heldOut.positions, heldOutEvery: options.heldOutEvery, heldOutImages: images,
            sensitivitySamples: sensitivitySamples, rounds: round)
    }

    /// An upper bound on the allocation record's bytes in a bundle: its JSON uncompressed, with the longest
    /// choice name for every unit and numbers of the most digits.
    func recordRoom(
        _ units: AllocationUnits, _ record: (_ choices: [Int], Double, LogitDrift, Int) -> AllocationRecord
    ) -> Int {
        let longest = options.choices.indices.max { options.choices[$0].name.count < options.choices[$1].name.count }!
        var widest = LogitDrift()
        widest.klDivergences = [1.0 / 3]
        widest.positions = Int.max
        let json = record(units.names.map { _ in longest }, 1.0 / 3, widest, options.rounds).json
        return json.serialized().utf8.count
    }

    /// The knapsack for this round's goal. The tensors outside the units are fixed: their drift comes off
    /// a bound, their bytes off a size.
    func solve(
        _ allocator: BitAllocator, units: AllocationUnits, rest: Fixed, bound: Double
    ) -> BitAllocator.Allocation? {
        switch options.goal {
        case .maxKLD:
            guard bound > rest.drift else { return nil }
            return allocator.solve(.smallestWithin(drift: bound - rest.drift))
        case .targetBits(let bits):
            let parameters = units.parameters.reduce(0, +)
            return allocator.solve(.leastDriftWithin(bytes: Int(bits * Double(parameters) / 8)))
        case .maxBytes(let size):
            return allocator.solve(.leastDriftWithin(bytes: size - rest.bytes))
        }
    }

    /// The tensors outside the units, as the scope stores them: the bundle's bytes besides the units'
    /// (metadata included) and their drift together, measured as one unit's.
    struct Fixed {
        var bytes: Int
        var drift: Double
    }

    static let restName = "(outside the units)"

    /// Each unit's bytes and own drift in each choice: one quantized bundle per choice, ranked by unit.
    /// The first also stores the tensors outside the units as the scope does, measured as one more part.
    func measure(
        _ units: AllocationUnits, source: VLQFile, statistics: StatisticsSource?, reference: YiVLEngine,
        run: ReferenceRun, set: CalibrationSet, scratch: String
    ) throws -> (table: [[BitAllocator.Option]], fixed: Fixed) {
        var table = units.names.map { _ in [BitAllocator.Option]() }
        var fixed = Fixed(bytes: 0, drift: 0)
        for (k, choice) in options.choices.enumerated() {
            let path = scratch + "/choice-\(k).vlq"
            let withRest = k == 0
            try quantize(
                source, recipe: uniformRecipe(choice, units, withRest: withRest), statistics: statistics, to: path)
            defer { unlink(path) }
            let bundle = try VLQFile(path: path)
            let bytes = units.bytes(in: bundle)
            if withRest { fixed.bytes = bundle.mapped.size - bytes.reduce(0, +) }
            var drift = [String: Double]()
            if !choice.isFloat || withRest {
                let candidate = try YiVLEngine.open(path)
                var groups = units.handles(in: candidate.model.definition)
                if withRest { groups[Self.restName] = units.rest(in: candidate.model.definition) }
                if choice.isFloat { groups = groups.filter { $0.key == Self.restName } }
                let entries = try LayerContribution.rank(
                    reference: reference, candidate: candidate, run: run, set: set, samples: set.samples.count,
                    groups: groups)
                for e in entries { drift[e.layer] = e.meanKLD }
            }
            if withRest { fixed.drift = drift[Self.restName] ?? 0 }
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
        logger.info("the rest (\(formatBytes(fixed.bytes))): drift \(scientific(fixed.drift))")
        return (table, fixed)
    }

    /// Every unit in `choice`; the rest as the scope stores it (`withRest`) or kept as in the source.
    func uniformRecipe(_ choice: Choice, _ units: AllocationUnits, withRest: Bool) -> Recipe {
        Recipe(
            name: "every unit in \(choice.name)", method: options.method,
            rules: units.tensors.map { Recipe.Rule(component: nil, pattern: $0, target: choice.target, method: nil) }
                + (withRest ? restRules : Self.keepRules))
    }

    func recipe(_ allocation: BitAllocator.Allocation, _ units: AllocationUnits) -> Recipe {
        var rules: [Recipe.Rule] = []
        for (u, name) in units.names.enumerated() {
            let target = options.choices[allocation.choices[u]].target
            for tensor in units.tensorsByUnit[name]! {
                rules.append(Recipe.Rule(component: nil, pattern: tensor, target: target, method: nil))
            }
        }
        return Recipe(name: "allocated", method: options.method, rules: rules + restRules)
    }

    static let keepRules = Recipe.floatRules + [Recipe.Rule(component: nil, pattern: "*", target: .keep, method: nil)]

    /// The rules for the tensors outside the units (after the units' exact-name rules): the int4 preset's
    /// with `llm`, float with `all`.
    var restRules: [Recipe.Rule] {
        switch options.scope {
        case .llm: return Recipe.int4().rules
        case .all: return Self.keepRules
        }
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

/// The parts precision is chosen for: with `llm` each decoder Linear weight alone (named by its tensor);
/// with `all` the tensors the int8 preset quantizes (every Linear and the token embeddings and lm_head),
/// grouped by the layer they belong to.
struct AllocationUnits {
    /// Unit names in a fixed order (sorted).
    let names: [String]
    let tensorsByUnit: [String: [String]]
    /// Every unit's tensors, in table order.
    let tensors: [String]
    let parameters: [Int]

    init(source: VLQFile, scope: AllocationRecord.Scope) throws {
        let config = try EngineConfig(metadata: source.metadata, source: source.path)
        let definition = ModelDefinition(config)
        let int8 = Recipe.int8()
        let decoderLinears = Set(definition.language.layers.flatMap(\.linears).map { definition.name($0.weight) })
        var byUnit: [String: [String]] = [:]
        var tensors: [String] = []
        var parametersByUnit: [String: Int] = [:]
        for t in source.tensors
        where int8.decide(name: t.name, component: t.component, shape: t.shape).encoding?.isQuantized == true {
            guard let handle = definition.handle(named: t.name) else { continue }
            let unit: String
            switch scope {
            case .llm:
                guard decoderLinears.contains(t.name) else { continue }
                unit = t.name
            case .all: unit = definition.label(of: handle)
            }
            byUnit[unit, default: []].append(t.name)
            parametersByUnit[unit, default: 0] += t.shape.reduce(1, *)
            tensors.append(t.name)
        }
        names = byUnit.keys.sorted()
        tensorsByUnit = byUnit
        self.tensors = tensors
        parameters = names.map { parametersByUnit[$0]! }
    }

    /// Each unit's tensors in a model's definition, for `LayerContribution.rank`.
    func handles(in definition: ModelDefinition) -> [String: [TensorHandle]] {
        tensorsByUnit.mapValues { $0.compactMap(definition.handle(named:)) }
    }

    /// Every tensor outside the units.
    func rest(in definition: ModelDefinition) -> [TensorHandle] {
        let inUnits = Set(tensors)
        return definition.handles.filter { !inUnits.contains(definition.name($0)) }
    }

    /// Each unit's stored bytes in `bundle`.
    func bytes(in bundle: VLQFile) -> [Int] {
        let byName = Dictionary(uniqueKeysWithValues: bundle.tensors.map { ($0.name, $0.byteCount) })
        return names.map { unit in tensorsByUnit[unit]!.reduce(0) { $0 + (byName[$1] ?? 0) } }
    }
}
