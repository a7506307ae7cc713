import Calibration
import Logging
import VLQCore
import VLQFormat
import YiVL

/// Bundle in, quantized bundle out, one tensor at a time.
///
/// For each tensor the recipe decides an encoding; calibrated methods take their statistics from a
/// `.vlqstats` file or from running a calibration set through the fp32 engine. AWQ's channel scales
/// are searched per layer before that layer is written and folded into the op that precedes each
/// group of Linears (norm weights and biases, or the rows of the Linear feeding it), so the float
/// function is unchanged before rounding. Only the tensor in hand is held in f32.
public final class QuantizePipeline {
    public struct Options {
        public var recipe: Recipe
        public var method: QuantizationMethod?
        public var activationOrder = false
        /// Tensors with NaN or infinite values that the recipe would quantize: refused (false), or kept
        /// in their float encoding and recorded as a fallback (true).
        public var keepNonFiniteInFloat = false
        public init(recipe: Recipe, method: QuantizationMethod? = nil) {
            self.recipe = recipe
            self.method = method
        }
    }

    public struct Report {
        public var tensors: Int
        public var quantized: Int
        public var fallbacks: [String: String]
        public var awqAlphas: [String: Float]
        public var outputBytes: Int
    }

    let options: Options
    let logger: Logger

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
    public static func needs(_ recipe: Recipe) -> (statistics: Bool, gram: Bool) {
        let methods = Set(recipe.rules.compactMap { rule -> QuantizationMethod? in
            if case .quantized = rule.target { return rule.method ?? recipe.method ?? .rtn }
            return nil
        })
        return (methods.contains { $0 != .rtn }, methods.contains(.gptq) || methods.contains(.awq))
    }

    public func run(source: VLQFile, output: String, statistics: StatisticsSource?, calibrationSource: String?,
                    progress: (Int, Int) -> Void = { _, _ in }) throws -> Report {
        if let q = source.metadata["quantization"]?.objectValue, !q.isEmpty {
            throw VLQError(source.path, "is already quantized; quantize from the unquantized bundle or the Hugging Face folder")
        }
        let recipe = self.recipe
        let need = QuantizePipeline.needs(recipe)
        if need.statistics && statistics == nil { throw VLQError(nil, "method \(recipe.method?.rawValue ?? "") needs calibration: give --set or --stats") }
        if need.gram, let statistics, !statistics.hasGram {
            throw VLQError(nil, "gptq and awq need statistics with Gram matrices; these were collected without (--diagonal-only)")
        }
        let config = try EngineConfig(metadata: source.metadata, source: source.path)
        try config.checkTable(of: source)
        let definition = ModelDefinition(config)
        let weights = WeightStore(bundle: source, definition: definition, cacheBudget: 0)
        func handle(_ name: String) -> TensorHandle { definition.handle(named: name)! }
        // Statistics read from a file may be of another model: they are checked against each weight
        // they are used for, and a mismatch names the file and the tensor.
        func inputStatistics(for name: String, columns: Int) throws -> InputStatistics? {
            guard let stats = try statistics?.statistics(for: name) else { return nil }
            if let problem = stats.inconsistency(columns: columns) {
                throw VLQError(calibrationSource ?? "calibration statistics",
                               "tensor \(name) has \(columns) input columns; its input's \(problem): "
                               + "the statistics are not of this model")
            }
            return stats
        }

        var decisions: [String: Recipe.Decision] = [:]
        var plan: [TensorRecord] = []
        for r in source.tensors {
            let d = recipe.decide(name: r.name, component: r.component, shape: r.shape)
            decisions[r.name] = d
            var record = TensorRecord(name: r.name, encoding: d.encoding ?? r.encoding, component: r.component, shape: r.shape,
                                      groupSize: d.encoding?.isQuantized == true ? d.groupSize : 0, sourceDType: r.sourceDType)
            record.groupSize = record.encoding.isQuantized ? d.groupSize : 0
            plan.append(record)
        }
        try handleNonFinite(source: source, decisions: &decisions, plan: &plan)

        // AWQ: scales per group of Linears sharing an input, folded into what precedes them. Searched
        // per layer when the layer's first tensor is reached (its norms come before its Linears), so
        // only that layer's statistics are needed at a time.
        var columnScales: [String: [Float]] = [:]   // weight *= s per column
        var divideRows: [String: [Float]] = [:]     // weight rows (and bias) /= s
        var divideVector: [String: [Float]] = [:]   // norm weight (and bias) /= s
        var alphas: [String: Float] = [:]
        let awqGroups = QuantizePipeline.awqGroups(definition)
        let groupsByLayer = Dictionary(grouping: awqGroups, by: \.layer).mapValues { $0.map(\.group) }
        var searchedLayers: Set<String> = []
        func prepareAWQ(for name: String) throws {
            let key = definition.label(of: handle(name))
            guard !searchedLayers.contains(key), let groups = groupsByLayer[key] else { return }
            searchedLayers.insert(key)
            for group in groups {
                let members = group.linears.filter { decisions[$0]?.method == .awq && decisions[$0]?.encoding?.isQuantized == true }
                guard members.count == group.linears.count, let first = members.first,
                      let d = decisions[first], let encoding = d.encoding else { continue }
                let shapes = members.map { weights.shape(handle($0)) }
                guard shapes.allSatisfy({ $0.count == 2 && $0[1] == shapes[0][1] }) else {
                    let names = members.joined(separator: ", ")
                    throw VLQError(source.path, "tensors \(names) share an input but have shapes "
                                   + "\(shapes.map { "\($0)" }.joined(separator: ", ")): not one input width")
                }
                guard let stats = try inputStatistics(for: first, columns: shapes[0][1]), stats.gramMatrix != nil else {
                    continue
                }
                let result = AWQ().searchScales(weights: members.map { weights.floats(handle($0)) }, rows: shapes.map { $0[0] },
                                                columns: shapes[0][1], statistics: stats, encoding: encoding, groupSize: d.groupSize)
                alphas[first] = result.alpha
                guard result.alpha > 0 else { continue }
                for m in members { columnScales[m] = result.scales }
                switch group.fold {
                case .vector(let names): for n in names { divideVector[n] = result.scales }
                case .rows(let weight, let bias):
                    divideRows[weight] = result.scales
                    if let bias { divideVector[bias] = result.scales }
                }
            }
        }
        // Tensors AWQ may fold into are stored as f32 unless quantized: decided before the layout is fixed.
        if recipe.rules.contains(where: { ($0.method ?? recipe.method) == .awq }) {
            var foldTargets: Set<String> = []
            for (_, group) in awqGroups {
                switch group.fold {
                case .vector(let names): foldTargets.formUnion(names)
                case .rows(let weight, let bias):
                    foldTargets.insert(weight)
                    if let bias { foldTargets.insert(bias) }
                }
            }
            for i in plan.indices where foldTargets.contains(plan[i].name) && !plan[i].encoding.isQuantized {
                plan[i].encoding = .f32
            }
        }

        let writer = try VLQWriter(path: output, plan: plan)
        var fallbacks: [String: String] = [:]
        var quantizedCount = 0
        var tensorRecords: [String: JSONValue] = [:]
        do {
            // The writer's records carry the byte lengths it laid out.
            for (index, record) in writer.records.enumerated() {
                let d = decisions[record.name]!
                if let f = d.fallback { fallbacks[record.name] = f }
                try prepareAWQ(for: record.name)
                let sourceRecord = source.record(record.name)!
                let changed = columnScales[record.name] != nil || divideRows[record.name] != nil || divideVector[record.name] != nil
                if !record.encoding.isQuantized && !changed && record.encoding == sourceRecord.encoding {
                    // Unchanged float tensors are copied as stored.
                    try writer.writeTensor(index) { try $0.append(source.data(sourceRecord)) }
                    if let f = d.fallback { tensorRecords[record.name] = ["encoding": .string(record.encoding.name), "fallback": .string(f)] }
                    progress(index + 1, plan.count)
                    continue
                }
                var values = weights.floats(handle(record.name))
                let columns = record.shape.last ?? 1, rows = values.count / max(columns, 1)
                // Scales come from the Linears this tensor feeds: a bundle whose shapes disagree with
                // each other must stop here, not index out of range.
                func requireScales(_ s: [Float], _ count: Int, _ what: String) throws {
                    guard s.count == count else {
                        throw VLQError(source.path, "tensor \(record.name) has \(count) \(what), "
                                       + "but the AWQ scales folded into it have \(s.count)")
                    }
                }
                // AWQ's column scaling happens inside LinearQuantizer (it also rescales the statistics).
                if let s = columnScales[record.name], !record.encoding.isQuantized {
                    try requireScales(s, columns, "columns")
                    for r in 0..<rows { for j in 0..<columns { values[r * columns + j] *= s[j] } }
                }
                if let s = divideRows[record.name] {
                    try requireScales(s, rows, "rows")
                    for r in 0..<rows { for j in 0..<columns { values[r * columns + j] /= s[r] } }
                }
                if let s = divideVector[record.name] {
                    try requireScales(s, values.count, "values")
                    for j in 0..<values.count { values[j] /= s[j] }
                }
                if record.encoding.isQuantized {
                    let method = d.method ?? .rtn
                    let stats = method == .rtn ? nil : try inputStatistics(for: record.name, columns: columns)
                    var effective = method
                    var note = d.fallback
                    if method != .rtn && stats == nil {
                        // Calibration never reached it (the vision layers after the selected one): its output
                        // is never used, so round to nearest is all it can get.
                        effective = .rtn
                        note = "no Linear-input statistics (an embedding lookup, or a layer the model never runs): rtn"
                        fallbacks[record.name] = note
                    }
                    let out = try LinearQuantizer.quantize(values, rows: rows, columns: columns, encoding: record.encoding,
                                                           groupSize: record.groupSize, method: effective, statistics: stats,
                                                           awqScales: effective == .awq ? columnScales[record.name] : nil,
                                                           activationOrder: options.activationOrder)
                    try writer.writeTensor(index) { sink in try out.matrix.bytes.withUnsafeBytes { try sink.append($0) } }
                    quantizedCount += 1
                    var entry: [String: JSONValue] = ["encoding": .string(record.encoding.name), "group_size": .int(Int64(record.groupSize)),
                                                      "method": .string(method.rawValue)]
                    if let a = alphas[record.name] { entry["awq_alpha"] = .double(Double(a)) }
                    if columnScales[record.name] != nil { entry["awq_scaled"] = true }
                    if let note { entry["fallback"] = .string(note) }
                    tensorRecords[record.name] = .object(entry)
                } else {
                    var bytes = [UInt8](repeating: 0, count: record.byteCount)
                    precondition(bytes.count == values.count * record.encoding.bitsPerElement / 8)
                    let width = record.encoding.bitsPerElement / 8
                    values.withUnsafeBytes { src in
                        bytes.withUnsafeMutableBytes { dst in
                            for i in 0..<values.count {
                                let v = src.load(fromByteOffset: 4 * i, as: Float.self)
                                switch record.encoding {
                                case .f32: dst.storeBytes(of: v.bitPattern.littleEndian, toByteOffset: 4 * i, as: UInt32.self)
                                case .f16: dst.storeBytes(of: Float16(v).bitPattern.littleEndian, toByteOffset: 2 * i, as: UInt16.self)
                                default:
                                    let b = v.bitPattern
                                    dst.storeBytes(of: UInt16((b &+ 0x7FFF &+ ((b >> 16) & 1)) >> 16).littleEndian, toByteOffset: width * i, as: UInt16.self)
                                }
                            }
                        }
                    }
                    try writer.writeTensor(index) { sink in try bytes.withUnsafeBytes { try sink.append($0) } }
                    if changed { tensorRecords[record.name] = ["encoding": .string(record.encoding.name), "awq_folded": true] }
                    if let f = d.fallback { tensorRecords[record.name] = ["encoding": .string(record.encoding.name), "fallback": .string(f)] }
                }
                progress(index + 1, plan.count)
            }
            var metadata = source.metadata.objectValue!
            var record: [String: JSONValue] = [
                "recipe": recipe.json,
                "method": .string(recipe.method?.rawValue ?? "rtn"),
                "activation_order": .bool(options.activationOrder),
                "tensors": .object(tensorRecords),
                "source_table_xxh3": .string(hex64(source.header.tableChecksum)),
            ]
            if let statistics {
                record["calibration"] = ["set_digest": .string(statistics.setDigest), "samples": .int(Int64(statistics.samples)),
                                         "source": calibrationSource.map { .string($0) } ?? .null, "gram": .bool(statistics.hasGram)]
            }
            // A folded tensor that ended up unchanged (alpha 0) is still stored as f32: say why.
            for r in writer.records where r.encoding == .f32 && tensorRecords[r.name] == nil && source.record(r.name)?.encoding != .f32 {
                tensorRecords[r.name] = ["encoding": "f32", "awq_fold_target": true]
            }
            metadata["quantization"] = .object(record)
            try writer.finish(metadata: .object(metadata))
        } catch {
            writer.abandon()
            throw error
        }
        let size = (try? MappedFile(path: output).size) ?? 0
        return Report(tensors: plan.count, quantized: quantizedCount, fallbacks: fallbacks, awqAlphas: alphas, outputBytes: size)
    }

    private var scannedNonFinite: [String: Int] = [:]

    /// NaN and infinity counts of the named tensors, scanned once per pipeline (`preflight` and `run`).
    func nonFiniteCounts(_ source: VLQFile, names: [String]) -> [String: Int] {
        for name in names where scannedNonFinite[name] == nil {
            guard let stored = source.record(name) else { continue }
            scannedNonFinite[name] = NonFiniteValues.count(source.data(stored), encoding: stored.encoding)
            source.mapped.release(offset: stored.offset, count: stored.byteCount)
        }
        return scannedNonFinite
    }

    /// What `run` refuses about the source, found before any calibration: an already quantized bundle,
    /// tensors with non-finite values to quantize.
    public func preflight(source: VLQFile) throws {
        if let q = source.metadata["quantization"]?.objectValue, !q.isEmpty {
            throw VLQError(source.path, "is already quantized; quantize from the unquantized bundle or the Hugging Face folder")
        }
        var decisions: [String: Recipe.Decision] = [:]
        var plan = source.tensors.map { r -> TensorRecord in
            let d = recipe.decide(name: r.name, component: r.component, shape: r.shape)
            decisions[r.name] = d
            return TensorRecord(name: r.name, encoding: d.encoding ?? r.encoding, component: r.component, shape: r.shape,
                                groupSize: d.groupSize, sourceDType: r.sourceDType)
        }
        // Kept tensors are warned about once, by `run`.
        if !options.keepNonFiniteInFloat { try handleNonFinite(source: source, decisions: &decisions, plan: &plan) }
    }

    /// Rounding NaN or an infinity into a group's codes poisons the whole group (its scale becomes
    /// NaN): such tensors are refused before any work, or kept as stored when the user says so.
    func handleNonFinite(source: VLQFile, decisions: inout [String: Recipe.Decision], plan: inout [TensorRecord]) throws {
        var offending: [(name: String, count: Int)] = []
        let counts = nonFiniteCounts(source, names: plan.filter(\.encoding.isQuantized).map(\.name))
        for i in plan.indices where plan[i].encoding.isQuantized {
            guard let stored = source.record(plan[i].name), let count = counts[plan[i].name], count > 0 else { continue }
            offending.append((plan[i].name, count))
            if options.keepNonFiniteInFloat {
                let note = "\(count) NaN or infinite values: kept in \(stored.encoding.name)"
                decisions[plan[i].name] = Recipe.Decision(encoding: nil, groupSize: 0, method: nil, fallback: note)
                plan[i].encoding = stored.encoding
                plan[i].groupSize = 0
                logger.warning("tensor \(plan[i].name): \(note)")
            }
        }
        if !offending.isEmpty && !options.keepNonFiniteInFloat {
            let listed = offending.prefix(6).map { "\($0.name) (\($0.count))" }.joined(separator: ", ")
            let more = offending.count > 6 ? ", and \(offending.count - 6) more" : ""
            throw VLQError(source.path, "\(offending.count) tensors to quantize hold NaN or infinite values: \(listed)\(more); "
                + "keep them in float with --keep-non-finite (or a recipe rule with \"encoding\": \"keep\")")
        }
    }

    enum Fold {
        /// Divide these 1-D tensors (norm weight, norm bias) by the scales.
        case vector([String])
        /// Divide the rows of this Linear (and its bias) by the scales.
        case rows(weight: String, bias: String?)
    }

    struct AWQGroup {
        var linears: [String]
        var fold: Fold
    }

    /// AWQ's smooth/balance mappings of the model (`ModelDefinition.smoothingMappings`) by tensor name,
    /// with the layer each belongs to.
    static func awqGroups(_ definition: ModelDefinition) -> [(layer: String, group: AWQGroup)] {
        definition.smoothingMappings.flatMap { layer, mappings in
            mappings.map { mapping -> (layer: String, group: AWQGroup) in
                let fold: Fold
                switch mapping.smooth {
                case .norm(let handles): fold = .vector(handles.map(definition.name))
                case .linearRows(let linear):
                    fold = .rows(weight: definition.name(linear.weight), bias: linear.bias.map(definition.name))
                }
                return (layer, AWQGroup(linears: mapping.balance.map { definition.name($0.weight) }, fold: fold))
            }
        }
    }
}
