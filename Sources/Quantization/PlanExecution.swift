import Calibration
import Logging
import VLQCore
import VLQFormat
import YiVL

/// AWQ's channel scales, from the searches done so far, waiting for the tensors they change.
struct AWQScales {
    /// The exponent chosen for the group each Linear leads.
    var alpha: [Float?]
    /// Multiply the weight's columns.
    var columns: [[Float]?]
    /// Divide the weight's rows (the Linear feeding a balanced one).
    var rows: [[Float]?]
    /// Divide every value (a norm's weight or bias, a Linear's bias).
    var values: [[Float]?]

    init(tensorCount: Int) {
        alpha = Array(repeating: nil, count: tensorCount)
        columns = alpha.map { _ in nil }
        rows = columns
        values = columns
    }

    func isFolded(_ h: TensorHandle) -> Bool { rows[h.index] != nil || values[h.index] != nil }
    func changes(_ h: TensorHandle) -> Bool { columns[h.index] != nil || isFolded(h) }

    /// Keeps a search's result: the scales go to the group's Linears and to what precedes them, unless
    /// scaling did not help (alpha 0).
    mutating func keep(_ result: AWQ.Result, for group: AWQGroupPlan) {
        alpha[group.balance[0].index] = result.alpha
        guard result.alpha > 0 else { return }
        for member in group.balance { columns[member.index] = result.scales }
        switch group.smooth {
        case .norm(let handles):
            for h in handles { values[h.index] = result.scales }
        case .linearRows(let linear):
            rows[linear.weight.index] = result.scales
            if let bias = linear.bias { values[bias.index] = result.scales }
        }
    }

    /// Applies the scales of a tensor that is not quantized (a quantized one has its columns scaled
    /// inside `LinearQuantizer`, which also rescales the statistics): columns, then rows, then values.
    func apply(
        to values: UnsafeMutableBufferPointer<Float>, of tensor: TensorPlan, rows: Int, columns: Int, subject: String
    ) throws {
        // Scales come from the Linears this tensor feeds: a bundle whose shapes disagree with each
        // other must stop here, not index out of range.
        func require(_ s: [Float], _ count: Int, _ what: String) throws {
            guard s.count == count else {
                throw VLQError(
                    QuantizationError.statisticsMismatch,
                    subject,
                    "tensor \(tensor.name) has \(count) \(what), "
                        + "but the AWQ scales folded into it have \(s.count)")
            }
        }
        let h = tensor.handle.index
        if let s = self.columns[h], !tensor.isQuantized {
            try require(s, columns, "columns")
            for r in 0..<rows { for j in 0..<columns { values[r * columns + j] *= s[j] } }
        }
        if let s = self.rows[h] {
            try require(s, rows, "rows")
            for r in 0..<rows { for j in 0..<columns { values[r * columns + j] /= s[r] } }
        }
        if let s = self.values[h] {
            try require(s, values.count, "values")
            for j in 0..<values.count { values[j] /= s[j] }
        }
    }
}

/// A `QuantizationPlan` carried out one tensor at a time, in the plan's order: `prepare` computes the
/// calibration window and runs the AWQ searches the plan places at a position, `write` turns the
/// tensor's f32 values into its planned encoding, `record` says what was done.
struct PlanExecution {
    static let noStatisticsNote =
        "no Linear-input statistics (an embedding lookup, or a layer the model never runs): rtn"

    let plan: QuantizationPlan
    let definition: ModelDefinition
    let source: VLQFile
    let weights: WeightStore
    let statistics: StatisticsSource?
    let calibrationSource: String?
    let activationOrder: Bool
    let logger: Logger
    private let windowsByStart: [Int: CalibrationWindow]
    private let searchesByPosition: [Int: AWQLayerPlan]
    private var scales: AWQScales
    /// GPTQ's factor of the last input, for the next Linears fed the same one (q/k/v, gate/up).
    private let gptqFactors = GPTQFactorCache()
    /// What was done to each tensor, by position (nil: copied or converted as planned, nothing to say).
    private var entries: [QuantizationRecord.Tensor?]
    private(set) var quantizedCount = 0
    /// Every quantized tensor's f32 values go through this one buffer (see WeightStore.copyFloats).
    private let valuesBuffer = ReusableFloats()

    init(
        plan: QuantizationPlan, definition: ModelDefinition, source: VLQFile, weights: WeightStore,
        statistics: StatisticsSource?, calibrationSource: String?, activationOrder: Bool, logger: Logger
    ) {
        self.plan = plan
        self.definition = definition
        self.source = source
        self.weights = weights
        self.statistics = statistics
        self.calibrationSource = calibrationSource
        self.activationOrder = activationOrder
        self.logger = logger
        windowsByStart = Dictionary(uniqueKeysWithValues: plan.windows.map { ($0.positions.lowerBound, $0) })
        searchesByPosition = Dictionary(uniqueKeysWithValues: plan.awqLayers.map { ($0.position, $0) })
        scales = AWQScales(tensorCount: definition.tensors.count)
        entries = Array(repeating: nil, count: plan.tensors.count)
    }

    /// Statistics the tensor at `position` or its layer's AWQ search reads: its calibration window
    /// (when X^T X comes in windows) is computed before it, then the searches run.
    mutating func prepare(_ position: Int) throws {
        if let window = windowsByStart[position] {
            try statistics?.computeGram(for: window.owners.map(definition.name))
        }
        for group in searchesByPosition[position]?.groups ?? [] { try search(group) }
    }

    private mutating func search(_ group: AWQGroupPlan) throws {
        let first = definition.name(group.balance[0])
        guard let stats = try inputStatistics(for: first, columns: group.columns), stats.gramMatrix != nil else {
            return
        }
        let result = AWQ().searchScales(
            weights: group.balance.map(weights.floats),
            rows: group.balance.map { weights.shape($0)[0] }, columns: group.columns,
            statistics: stats, encoding: group.encoding, groupSize: group.groupSize)
        scales.keep(result, for: group)
    }

    /// Statistics read from a file may be of another model: they are checked against each weight they
    /// are used for, and a mismatch names the file and the tensor.
    private func inputStatistics(for name: String, columns: Int) throws -> InputStatistics? {
        guard let stats = try statistics?.statistics(for: name) else { return nil }
        if let problem = stats.inconsistency(columns: columns) {
            throw VLQError(
                QuantizationError.statisticsMismatch,
                calibrationSource ?? "calibration statistics",
                "tensor \(name) has \(columns) input columns; its input's \(problem): "
                    + "the statistics are not of this model")
        }
        return stats
    }

    mutating func write(_ position: Int, to writer: VLQWriter) throws {
        let tensor = plan.tensors[position]
        let stored = source.record(tensor.name)!
        if !tensor.isQuantized && !scales.changes(tensor.handle) && tensor.output.encoding == stored.encoding {
            // Unchanged float tensors are copied as stored.
            try writer.writeTensor(position) { try $0.append(source.data(stored)) }
            if let note = tensor.fallback { entries[position] = recordEntry(tensor, fallback: note) }
            return
        }
        let count = weights.shape(tensor.handle).reduce(1, *)
        let columns = tensor.output.shape.last ?? 1, rows = count / max(columns, 1)
        if tensor.isQuantized {
            let values = valuesBuffer.take(count)
            weights.copyFloats(tensor.handle, into: values)
            try scales.apply(to: values, of: tensor, rows: rows, columns: columns, subject: source.path)
            try quantize(UnsafeBufferPointer(values), rows: rows, columns: columns, at: position, to: writer)
        } else {
            var values = weights.floats(tensor.handle)
            try values.withUnsafeMutableBufferPointer {
                try scales.apply(to: $0, of: tensor, rows: rows, columns: columns, subject: source.path)
            }
            try convert(values, at: position, to: writer)
        }
    }

    private mutating func quantize(
        _ values: UnsafeBufferPointer<Float>, rows: Int, columns: Int, at position: Int,
        to writer: VLQWriter
    ) throws {
        let tensor = plan.tensors[position], method = tensor.method ?? .rtn
        let stats = method == .rtn ? nil : try inputStatistics(for: tensor.name, columns: columns)
        // Calibration never reached it (the vision layers after the selected one): its output is never
        // used, so round to nearest is all it can get.
        let calibrated = method == .rtn || stats != nil
        let effective = calibrated ? method : .rtn
        let columnScales = scales.columns[tensor.handle.index]
        let out = try LinearQuantizer.quantize(
            values, rows: rows, columns: columns, encoding: tensor.output.encoding,
            groupSize: tensor.output.groupSize, method: effective, statistics: stats,
            awqScales: effective == .awq ? columnScales : nil,
            activationOrder: activationOrder, keepValues: false, gptqFactors: gptqFactors)
        // Written while the next tensor is read and quantized.
        try writer.writeTensorInBackground(position, bytes: out.matrix.bytes)
        quantizedCount += 1
        entries[position] = recordEntry(tensor, fallback: calibrated ? tensor.fallback : PlanExecution.noStatisticsNote)
    }

    /// Float tensors go through the one element conversion the converter uses too.
    private mutating func convert(_ values: [Float], at position: Int, to writer: VLQWriter) throws {
        let tensor = plan.tensors[position]
        let (bytes, saturated) = ElementConversion.encode(values, as: tensor.output.encoding)
        precondition(bytes.count == writer.records[position].byteCount)
        if saturated > 0 { logger.warning("tensor \(tensor.name): \(saturated) values saturated to the f16 range") }
        try writer.writeTensor(position) { sink in try bytes.withUnsafeBytes { try sink.append($0) } }
        if scales.changes(tensor.handle) || tensor.fallback != nil {
            entries[position] = recordEntry(tensor, fallback: tensor.fallback)
        }
    }

    private func recordEntry(_ tensor: TensorPlan, fallback: String?) -> QuantizationRecord.Tensor {
        let h = tensor.handle.index
        var entry = QuantizationRecord.Tensor(encoding: tensor.output.encoding)
        if tensor.isQuantized {
            entry.groupSize = tensor.output.groupSize
            entry.method = tensor.method
            entry.awqAlpha = scales.alpha[h]
            entry.awqScaled = scales.columns[h] != nil
        } else {
            entry.awqFolded = scales.changes(tensor.handle)
        }
        entry.fallback = fallback
        return entry
    }

    /// The record of everything written. Tensors stored as f32 only because AWQ might have folded
    /// scales into them get no entry when none were (alpha 0): the plan says why they are f32.
    func record(recipe: Recipe, sourceTableChecksum: UInt64) -> QuantizationRecord {
        var tensors: [String: QuantizationRecord.Tensor] = [:]
        for (position, tensor) in plan.tensors.enumerated() {
            if let entry = entries[position] { tensors[tensor.name] = entry }
        }
        let calibration = statistics.map {
            QuantizationRecord.Calibration(
                setDigest: $0.setDigest, samples: $0.samples, source: calibrationSource,
                gram: $0.hasGram)
        }
        return QuantizationRecord(
            recipe: recipe, activationOrder: activationOrder, tensors: tensors,
            calibration: calibration, sourceTableChecksum: sourceTableChecksum)
    }
}

/// A float buffer reused for values of different sizes, grown to the largest asked for: pages touched
/// once stay mapped, where a fresh allocation per tensor has the kernel zero them again.
final class ReusableFloats {
    private var pointer: UnsafeMutablePointer<Float>?
    private var capacity = 0

    /// `count` floats, valid until the next call; their values are whatever the last user left.
    func take(_ count: Int) -> UnsafeMutableBufferPointer<Float> {
        if count > capacity {
            pointer?.deallocate()
            pointer = .allocate(capacity: count)
            capacity = count
        }
        return UnsafeMutableBufferPointer(start: pointer, count: count)
    }

    deinit { pointer?.deallocate() }
}
