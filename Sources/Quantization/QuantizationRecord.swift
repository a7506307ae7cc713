import VLQCore
import VLQFormat

/// The `quantization` metadata of a quantized bundle (formats/VLQ-BUNDLE.md): how it was made, so
/// that a reader can tell what a tensor went through and which calibration and source it came from.
public struct QuantizationRecord: Equatable, Sendable {
    /// What happened to one tensor that was quantized or changed.
    public struct Tensor: Equatable, Sendable {
        public var encoding: TensorEncoding
        /// Quantized tensors only.
        public var groupSize: Int?
        /// The method the recipe asked for (quantized tensors only); `fallback` says when it could not apply.
        public var method: QuantizationMethod?
        /// The scale exponent AWQ chose for the group this Linear leads (0: scaling did not help).
        public var awqAlpha: Float?
        /// AWQ multiplied the weight's columns by per-channel scales.
        public var awqScaled = false
        /// A norm or a Linear's rows divided by AWQ scales, stored as f32.
        public var awqFolded = false
        /// Why the recipe's wish was changed.
        public var fallback: String?

        public init(encoding: TensorEncoding, groupSize: Int? = nil, method: QuantizationMethod? = nil) {
            self.encoding = encoding
            self.groupSize = groupSize
            self.method = method
        }
    }

    /// The statistics a calibrated method used.
    public struct Calibration: Equatable, Sendable {
        public var setDigest: String
        public var samples: Int
        /// The set or .vlqstats file they came from, when known.
        public var source: String?
        /// Whether X^T X was among them.
        public var gram: Bool

        public init(setDigest: String, samples: Int, source: String?, gram: Bool) {
            self.setDigest = setDigest
            self.samples = samples
            self.source = source
            self.gram = gram
        }
    }

    public var recipe: Recipe
    /// The recipe's method (rtn when it names none; rules may override it per tensor).
    public var method: QuantizationMethod
    public var activationOrder: Bool
    /// Only the tensors that were quantized or changed, by name.
    public var tensors: [String: Tensor]
    public var calibration: Calibration?
    /// XXH3-64 of the tensor table of the bundle quantized from.
    public var sourceTableChecksum: UInt64

    public init(
        recipe: Recipe, activationOrder: Bool, tensors: [String: Tensor], calibration: Calibration?,
        sourceTableChecksum: UInt64
    ) {
        self.recipe = recipe
        method = recipe.method ?? .rtn
        self.activationOrder = activationOrder
        self.tensors = tensors
        self.calibration = calibration
        self.sourceTableChecksum = sourceTableChecksum
    }

    public var json: JSONValue {
        var object: [String: JSONValue] = [
            "recipe": recipe.json,
            "method": .string(method.rawValue),
            "activation_order": .bool(activationOrder),
            "tensors": .object(tensors.mapValues(\.json)),
            "source_table_xxh3": .string(hex64(sourceTableChecksum)),
        ]
        if let calibration { object["calibration"] = calibration.json }
        return .object(object)
    }

    /// Reads the record back; errors name `source` (the bundle) and what is wrong.
    public init(json: JSONValue, source: String? = nil) throws {
        func fail(_ what: String) -> VLQError {
            VLQError(QuantizationError.invalidRecord, source, "quantization record: \(what)")
        }
        guard let recipeJSON = json["recipe"] else { throw fail("no recipe") }
        recipe = try Recipe(json: recipeJSON, source: source ?? "quantization record")
        guard let m = json["method"]?.stringValue, let method = QuantizationMethod(rawValue: m) else {
            throw fail("no known method")
        }
        self.method = method
        guard let order = json["activation_order"]?.boolValue else { throw fail("no activation_order") }
        activationOrder = order
        guard let entries = json["tensors"]?.objectValue else { throw fail("no tensors") }
        tensors = try entries.mapValues { entry in
            guard let tensor = Tensor(json: entry) else {
                throw fail("a tensor entry is malformed: \(entry.serialized())")
            }
            return tensor
        }
        if let c = json["calibration"] {
            guard let calibration = Calibration(json: c) else { throw fail("malformed calibration") }
            self.calibration = calibration
        }
        guard let digest = json["source_table_xxh3"]?.stringValue, let checksum = UInt64(digest, radix: 16) else {
            throw fail("no source_table_xxh3")
        }
        sourceTableChecksum = checksum
    }
}

extension QuantizationRecord.Tensor {
    public var json: JSONValue {
        var object: [String: JSONValue] = ["encoding": .string(encoding.name)]
        if let groupSize { object["group_size"] = .int(Int64(groupSize)) }
        if let method { object["method"] = .string(method.rawValue) }
        if let awqAlpha { object["awq_alpha"] = .double(Double(awqAlpha)) }
        if awqScaled { object["awq_scaled"] = true }
        if awqFolded { object["awq_folded"] = true }
        if let fallback { object["fallback"] = .string(fallback) }
        return .object(object)
    }

    init?(json: JSONValue) {
        guard let name = json["encoding"]?.stringValue, let encoding = TensorEncoding(name: name) else { return nil }
        self.init(encoding: encoding, groupSize: json["group_size"]?.intValue)
        if let m = json["method"] {
            guard let method = m.stringValue.flatMap(QuantizationMethod.init(rawValue:)) else { return nil }
            self.method = method
        }
        awqAlpha = json["awq_alpha"]?.doubleValue.map(Float.init)
        awqScaled = json["awq_scaled"]?.boolValue ?? false
        awqFolded = json["awq_folded"]?.boolValue ?? false
        fallback = json["fallback"]?.stringValue
    }
}

extension QuantizationRecord.Calibration {
    public var json: JSONValue {
        [
            "set_digest": .string(setDigest), "samples": .int(Int64(samples)),
            "source": source.map { .string($0) } ?? .null, "gram": .bool(gram),
        ]
    }

    init?(json: JSONValue) {
        guard let digest = json["set_digest"]?.stringValue, let samples = json["samples"]?.intValue,
            let gram = json["gram"]?.boolValue
        else { return nil }
        self.init(setDigest: digest, samples: samples, source: json["source"]?.stringValue, gram: gram)
    }
}
