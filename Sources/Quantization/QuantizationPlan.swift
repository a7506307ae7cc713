import VLQCore
import VLQFormat
import YiVL

/// What calibration a tensor's method reads.
public enum StatisticsNeed: Sendable, Equatable {
    /// Round to nearest, or a tensor kept in float.
    case none
    /// The per-channel sums of its input (imatrix).
    case sums
    /// The sums and X^T X of its input (gptq, awq).
    case gram

    init(_ method: QuantizationMethod) {
        switch method {
        case .rtn: self = .none
        case .imatrix: self = .sums
        case .gptq, .awq: self = .gram
        }
    }
}

/// How one tensor of the source bundle is written.
public struct TensorPlan: Sendable, Equatable {
    public let handle: TensorHandle
    /// The table entry as written: the decided encoding and group size, the rest as stored.
    public internal(set) var output: TensorRecord
    public let storedEncoding: TensorEncoding
    /// The method a quantized tensor is quantized with (nil when it stays in float). The write may
    /// still round to nearest when calibration never reached the tensor.
    public let method: QuantizationMethod?
    /// Why the recipe's wish was changed: a row no group divides, a rank that is not a matrix,
    /// non-finite values kept in float.
    public let fallback: String?
    /// AWQ may divide it by channel scales, so it is stored as f32 unless quantized.
    public internal(set) var isAWQFoldTarget = false
    public let statistics: StatisticsNeed
    /// Whose input statistics it reads: its own, or those of the first Linear of its shared-input group.
    public let statisticsOwner: TensorHandle

    public var name: String { output.name }
    public var isQuantized: Bool { output.encoding.isQuantized }
}

/// One of AWQ's smooth/balance mappings whose Linears are all AWQ-quantized: channel scales are
/// searched for it, multiplied into the Linears' columns and divided out of what precedes them.
public struct AWQGroupPlan: Sendable, Equatable {
    /// The Linears sharing the input; the first one's statistics are the group's.
    public let balance: [TensorHandle]
    public let smooth: Smoothable
    /// Encoding and group size of the first Linear, which the search quantizes with.
    public let encoding: TensorEncoding
    public let groupSize: Int
    public let columns: Int
}

/// AWQ's searches for one layer. They run before the layer's first tensor is written: the norms and
/// rows the scales fold into come before or among the layer's Linears.
public struct AWQLayerPlan: Sendable, Equatable {
    public let label: String
    public let groups: [AWQGroupPlan]
    /// Position in `QuantizationPlan.tensors` of the layer's first tensor.
    public let position: Int
}

/// X^T X of several inputs computed in one calibration pass, for a model whose accumulators do not
/// all fit in memory. Windows follow the write order: each is computed before the first tensor that
/// reads it and dropped when the next one is computed.
public struct CalibrationWindow: Sendable, Equatable {
    /// The inputs, by the Linear owning their statistics, in the order they are first needed.
    public let owners: [TensorHandle]
    public let bytes: Int
    /// The positions in `QuantizationPlan.tensors` it serves, from the first that reads it to the last.
    public let positions: Range<Int>
}

/// Everything quantization will do, decided before a byte of weights is read: per tensor its encoding,
/// group size, method and fallback; the AWQ groups searched per layer and the tensors their scales
/// fold into; which tensors read statistics; and, when X^T X does not fit in memory at once, the
/// calibration windows. Pure: the same definition, table and recipe give the same plan.
public struct QuantizationPlan: Sendable {
    /// The recipe as applied (a method given on the command line already set in it).
    public let recipe: Recipe
    /// In the source table's order, which the output keeps.
    public let tensors: [TensorPlan]
    public let awqLayers: [AWQLayerPlan]
    /// Empty when every input's X^T X is at hand at once.
    public let windows: [CalibrationWindow]
    private let positions: [Int?]

    /// `keptNonFinite`: tensors holding that many NaN or infinite values, kept in their stored float
    /// encoding instead of being quantized. `gramWindowBudget`: bytes X^T X may take at once (nil: all).
    public init(
        definition: ModelDefinition, table: [TensorRecord], recipe: Recipe,
        keptNonFinite: [TensorHandle: Int] = [:], gramWindowBudget: Int? = nil
    ) throws {
        self.recipe = recipe
        let owners = StatisticsOwners(definition)
        var tensors = try table.map { record -> TensorPlan in
            guard let handle = definition.handle(named: record.name) else {
                throw VLQError(QuantizationError.tensorMismatch, nil, "tensor \(record.name) is not part of the model")
            }
            guard record.shape == definition.shape(handle) else {
                throw VLQError(
                    QuantizationError.tensorMismatch,
                    nil,
                    "tensor \(record.name) is \(record.shape), "
                        + "the model has \(definition.shape(handle))")
            }
            return QuantizationPlan.decide(
                record, handle: handle, recipe: recipe, owner: owners.owner(of: handle),
                nonFinite: keptNonFinite[handle])
        }
        var positions = [Int?](repeating: nil, count: definition.tensors.count)
        for (i, t) in tensors.enumerated() { positions[t.handle.index] = i }
        if QuantizationPlan.mayFold(recipe) {
            for handle in QuantizationPlan.foldTargets(definition) {
                guard let i = positions[handle.index] else { continue }
                tensors[i].isAWQFoldTarget = true
                if !tensors[i].isQuantized { tensors[i].output.encoding = .f32 }
            }
        }
        self.tensors = tensors
        self.positions = positions
        awqLayers = QuantizationPlan.awqSearches(definition, tensors, positions)
        let searches = awqLayers
        windows =
            gramWindowBudget.map {
                QuantizationPlan.calibrationWindows(tensors, searches, owners, budget: $0)
            } ?? []
    }

    public func position(of handle: TensorHandle) -> Int? { positions[handle.index] }
    public subscript(handle: TensorHandle) -> TensorPlan? { position(of: handle).map { tensors[$0] } }
    /// The output bundle's table, before the writer lays out offsets.
    public var output: [TensorRecord] { tensors.map(\.output) }

    /// Whether a recipe needs calibration statistics, and whether X^T X among them: known from the
    /// recipe alone, before a model or calibration set is opened.
    public static func needs(_ recipe: Recipe) -> (statistics: Bool, gram: Bool) {
        let methods = Set(
            recipe.rules.compactMap { rule -> QuantizationMethod? in
                if case .quantized = rule.target { return rule.method ?? recipe.method ?? .rtn }
                return nil
            })
        return (methods.contains { $0 != .rtn }, methods.contains(.gptq) || methods.contains(.awq))
    }

    /// Whether any rule may use AWQ: then the tensors its scales could fold into are stored as f32
    /// (the layout is fixed before any scale is searched).
    static func mayFold(_ recipe: Recipe) -> Bool {
        recipe.rules.contains { ($0.method ?? recipe.method) == .awq }
    }

    static func decide(
        _ record: TensorRecord, handle: TensorHandle, recipe: Recipe, owner: TensorHandle,
        nonFinite: Int?
    ) -> TensorPlan {
        var decision = recipe.decide(name: record.name, component: record.component, shape: record.shape)
        if let count = nonFinite {
            // Rounding NaN or an infinity poisons its whole group's scale: kept as stored instead.
            let note = "\(count) NaN or infinite values: kept in \(record.encoding.name)"
            decision = Recipe.Decision(encoding: nil, groupSize: 0, method: nil, fallback: note)
        }
        let encoding = decision.encoding ?? record.encoding
        let output = TensorRecord(
            name: record.name, encoding: encoding, component: record.component,
            shape: record.shape, groupSize: encoding.isQuantized ? decision.groupSize : 0,
            sourceDType: record.sourceDType)
        let method = output.encoding.isQuantized ? decision.method ?? .rtn : nil
        return TensorPlan(
            handle: handle, output: output, storedEncoding: record.encoding, method: method,
            fallback: decision.fallback, statistics: method.map(StatisticsNeed.init) ?? .none,
            statisticsOwner: owner)
    }

    /// Every tensor an AWQ scale may be divided out of: the norms before groups of Linears, and the
    /// rows (and bias) of Linears feeding another.
    static func foldTargets(_ definition: ModelDefinition) -> [TensorHandle] {
        definition.smoothingMappings.flatMap(\.mappings).flatMap { mapping -> [TensorHandle] in
            switch mapping.smooth {
            case .norm(let handles): return handles
            case .linearRows(let linear): return [linear.weight] + (linear.bias.map { [$0] } ?? [])
            }
        }
    }

    /// The mappings whose Linears are all AWQ-quantized, per layer, placed at the layer's first tensor.
    static func awqSearches(
        _ definition: ModelDefinition, _ tensors: [TensorPlan],
        _ positions: [Int?]
    ) -> [AWQLayerPlan] {
        definition.smoothingMappings.compactMap { layer, mappings -> AWQLayerPlan? in
            let groups = mappings.compactMap { mapping -> AWQGroupPlan? in
                let members = mapping.balance.compactMap { positions[$0.weight.index].map { tensors[$0] } }
                guard members.count == mapping.balance.count,
                    members.allSatisfy({ $0.method == .awq && $0.isQuantized })
                else { return nil }
                return AWQGroupPlan(
                    balance: members.map(\.handle), smooth: mapping.smooth,
                    encoding: members[0].output.encoding, groupSize: members[0].output.groupSize,
                    columns: mapping.balance[0].inputs)
            }
            guard !groups.isEmpty,
                let first = tensors.firstIndex(where: { definition.label(of: $0.handle) == layer })
            else {
                return nil
            }
            return AWQLayerPlan(label: layer, groups: groups, position: first)
        }
    }
}

/// Which Linear's statistics each weight reads: calibration keeps one set per shared input, owned by
/// the group's first Linear; weights the forward pass never runs have none.
struct StatisticsOwners {
    private var owners: [TensorHandle: TensorHandle] = [:]
    /// Input width of each Linear the forward pass runs, by weight.
    private var columns: [TensorHandle: Int] = [:]

    init(_ definition: ModelDefinition) {
        for linear in definition.linears { columns[linear.weight] = linear.inputs }
        for group in definition.sharedInputGroups {
            for member in group.dropFirst() { owners[member.weight] = group[0].weight }
        }
    }

    func owner(of handle: TensorHandle) -> TensorHandle { owners[handle] ?? handle }

    /// Bytes of the owner's X^T X accumulator (float), nil when calibration never reaches it.
    func gramBytes(_ owner: TensorHandle) -> Int? { columns[owner].map { 4 * $0 * $0 } }
}

extension QuantizationPlan {
    /// Packs the X^T X each write step reads into windows of at most `budget` bytes, in write order.
    /// A step is one tensor: the inputs of its AWQ searches (at a layer's first tensor) and its own
    /// input when its method reads X^T X. A step's inputs are always in one window, even when they
    /// alone exceed the budget; an input needed again after its window closed is computed again.
    static func calibrationWindows(
        _ tensors: [TensorPlan], _ awqLayers: [AWQLayerPlan], _ owners: StatisticsOwners,
        budget: Int
    ) -> [CalibrationWindow] {
        let searchesAt = Dictionary(uniqueKeysWithValues: awqLayers.map { ($0.position, $0) })
        var windows: [CalibrationWindow] = []
        var open: (owners: [TensorHandle], bytes: Int, first: Int, last: Int)?
        for (position, tensor) in tensors.enumerated() {
            var step: [TensorHandle] = []
            for group in searchesAt[position]?.groups ?? [] { step.append(owners.owner(of: group.balance[0])) }
            if tensor.statistics == .gram { step.append(tensor.statisticsOwner) }
            var needed: [TensorHandle] = []
            for owner in step where owners.gramBytes(owner) != nil && !needed.contains(owner) { needed.append(owner) }
            if needed.isEmpty { continue }
            let missing = needed.filter { !(open?.owners.contains($0) ?? false) }
            let missingBytes = missing.reduce(0) { $0 + owners.gramBytes($1)! }
            if let current = open, missing.isEmpty || current.bytes + missingBytes <= budget {
                open = (current.owners + missing, current.bytes + missingBytes, current.first, position)
                continue
            }
            if let current = open {
                windows.append(
                    CalibrationWindow(
                        owners: current.owners, bytes: current.bytes,
                        positions: current.first..<(current.last + 1)))
            }
            open = (needed, needed.reduce(0) { $0 + owners.gramBytes($1)! }, position, position)
        }
        if let current = open {
            windows.append(
                CalibrationWindow(
                    owners: current.owners, bytes: current.bytes,
                    positions: current.first..<(current.last + 1)))
        }
        return windows
    }
}
