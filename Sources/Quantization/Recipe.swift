import VLQCore
import VLQFormat

/// Which tensors get which encoding: rules by component and name pattern, first match wins.
///
/// JSON form (`--recipe file.json`):
/// ```
/// {"name": "my-recipe", "method": "awq",
///  "rules": [{"match": "*position_embedding*", "encoding": "keep"},
///            {"component": "language", "match": "model.layers.*", "encoding": "q4", "group_size": 128},
///            {"match": "*", "encoding": "q8", "group_size": 128, "method": "rtn"}]}
/// ```
/// `encoding`: keep (the source's float type), f32, f16, bf16, q8, q4, q4s or q3; `group_size`: 32, 64, 128,
/// 256 or "row"; `method` overrides the recipe's for matching tensors. Tensors of rank other than 2
/// are never quantized.
public struct Recipe: Sendable, Equatable {
    public enum Target: Sendable, Equatable {
        case keep
        case float(TensorEncoding)
        case quantized(TensorEncoding, groupSize: Int?)  // nil group size: whole row
    }

    public struct Rule: Sendable, Equatable {
        public var component: Component?
        public var pattern: String
        public var target: Target
        public var method: QuantizationMethod?

        public init(component: Component?, pattern: String, target: Target, method: QuantizationMethod?) {
            self.component = component
            self.pattern = pattern
            self.target = target
            self.method = method
        }
    }

    public var name: String
    public var method: QuantizationMethod?
    public var rules: [Rule]

    public static let standardGroupSizes = [256, 128, 64, 32]

    /// What happens to one tensor, after any fallback.
    public struct Decision: Sendable, Equatable {
        public var encoding: TensorEncoding?  // nil: keep the source encoding
        public var groupSize: Int
        public var method: QuantizationMethod?
        /// Why the recipe's wish was changed (row length not divisible, tensor not a matrix).
        public var fallback: String?
    }

    public func decide(name: String, component: Component, shape: [Int]) -> Decision {
        guard let rule = rules.first(where: { $0.matches(name, component) }) else {
            return Decision(encoding: nil, groupSize: 0, method: nil, fallback: nil)
        }
        switch rule.target {
        case .keep: return Decision(encoding: nil, groupSize: 0, method: nil, fallback: nil)
        case .float(let e): return Decision(encoding: e, groupSize: 0, method: nil, fallback: nil)
        case .quantized(let encoding, let requested):
            let method = rule.method ?? self.method ?? .rtn
            // Vectors (norms, biases) are never quantized; a higher-rank tensor a rule asked for is reported.
            guard shape.count == 2 else {
                return Decision(
                    encoding: nil, groupSize: 0, method: nil,
                    fallback: shape.count > 2 ? "rank \(shape.count) is not a matrix: kept" : nil)
            }
            let columns = shape[1]
            let wanted = requested ?? columns
            if QuantizedLayout(encoding: encoding, shape: shape, groupSize: wanted) != nil {
                return Decision(encoding: encoding, groupSize: wanted, method: method, fallback: nil)
            }
            // A smaller standard group that divides the row, then int8, then f16.
            for g in Recipe.standardGroupSizes
            where g < wanted && QuantizedLayout(encoding: encoding, shape: shape, groupSize: g) != nil {
                return Decision(
                    encoding: encoding, groupSize: g, method: method,
                    fallback: "\(columns) columns: group \(wanted) -> \(g)")
            }
            if encoding != .q8 {
                for g in [wanted] + Recipe.standardGroupSizes
                where g <= wanted && QuantizedLayout(encoding: .q8, shape: shape, groupSize: g) != nil {
                    return Decision(
                        encoding: .q8, groupSize: g, method: method,
                        fallback: "\(columns) columns: \(encoding.name) g\(wanted) -> q8 g\(g)")
                }
            }
            return Decision(
                encoding: .f16, groupSize: 0, method: nil,
                fallback: "\(columns) columns: no group divides the row -> f16")
        }
    }

    /// `*` matches any run of characters, everything else itself.
    static func glob(_ pattern: String, _ text: String) -> Bool {
        let p = Array(pattern), t = Array(text)
        var pi = 0, ti = 0, star = -1, mark = 0
        while ti < t.count {
            if pi < p.count && p[pi] == t[ti] && p[pi] != "*" {
                pi += 1
                ti += 1
            } else if pi < p.count && p[pi] == "*" {
                star = pi
                mark = ti
                pi += 1
            } else if star >= 0 {
                pi = star + 1
                mark += 1
                ti = mark
            } else {
                return false
            }
        }
        while pi < p.count && p[pi] == "*" { pi += 1 }
        return pi == p.count
    }

    // MARK: Presets

    /// Kept in float in every preset: norms, biases, class/position/patch embeddings (as llama.cpp does).
    public static let floatRules: [Rule] = ["*position_embedding*", "*patch_embedding*", "*class_embedding*"].map {
        Rule(component: nil, pattern: $0, target: .keep, method: nil)
    }

    /// Every Linear and the embeddings in int8 (vision tower and projector included).
    public static func int8(groupSize: Int = 128) -> Recipe {
        Recipe(
            name: "int8", method: nil,
            rules: floatRules + [
                Rule(component: nil, pattern: "*", target: .quantized(.q8, groupSize: groupSize), method: nil)
            ])
    }

    /// LLM Linears 4-bit (affine, group 128); vision tower, projector, embeddings and lm_head int8.
    public static func int4(groupSize: Int = 128, int8GroupSize: Int = 128) -> Recipe {
        Recipe(
            name: "int4", method: nil,
            rules: floatRules + [
                Rule(
                    component: .language, pattern: "model.layers.*", target: .quantized(.q4, groupSize: groupSize),
                    method: nil),
                Rule(component: nil, pattern: "*", target: .quantized(.q8, groupSize: int8GroupSize), method: nil),
            ])
    }

    /// LLM Linears 3-bit (affine q3, group 64); vision tower, projector, embeddings and lm_head int8.
    public static func int3(groupSize: Int = 64, int8GroupSize: Int = 128) -> Recipe {
        Recipe(
            name: "int3", method: nil,
            rules: floatRules + [
                Rule(
                    component: .language, pattern: "model.layers.*", target: .quantized(.q3, groupSize: groupSize),
                    method: nil),
                Rule(component: nil, pattern: "*", target: .quantized(.q8, groupSize: int8GroupSize), method: nil),
            ])
    }

    /// Every Linear in 4 bits, the vision tower's and the projector's too (calibrated through the tower
    /// with images: GPTQ's X^T X of each vision Linear comes from the calibration images' patches);
    /// the token embeddings and lm_head int8.
    public static func int4All(groupSize: Int = 128, int8GroupSize: Int = 128) -> Recipe {
        let q4 = Target.quantized(.q4, groupSize: groupSize)
        return Recipe(
            name: "int4-all", method: nil,
            rules: floatRules + [
                Rule(component: .language, pattern: "model.layers.*", target: q4, method: nil),
                Rule(component: .vision, pattern: "*", target: q4, method: nil),
                Rule(component: .projector, pattern: "*", target: q4, method: nil),
                Rule(component: nil, pattern: "*", target: .quantized(.q8, groupSize: int8GroupSize), method: nil),
            ])
    }

    public static func preset(_ name: String) -> Recipe? {
        switch name {
        case "int8": return int8()
        case "int4": return int4()
        case "int4-all": return int4All()
        case "int3": return int3()
        default: return nil
        }
    }

    // MARK: JSON

    public init(name: String, method: QuantizationMethod?, rules: [Rule]) {
        self.name = name
        self.method = method
        self.rules = rules
    }

    public init(json: JSONValue, source: String) throws {
        guard let fields = json.objectValue else {
            throw VLQError(QuantizationError.invalidRecipe, source, "a recipe is a JSON object with \"rules\"")
        }
        try Recipe.refuseUnknownKeys(fields, allowed: ["name", "method", "rules"], at: "the recipe", source: source)
        name = json["name"]?.stringValue ?? "custom"
        if let m = json["method"]?.stringValue {
            guard let method = QuantizationMethod(rawValue: m) else {
                throw VLQError(QuantizationError.invalidRecipe, source, "unknown method \"\(m)\"")
            }
            self.method = method
        } else {
            method = nil
        }
        guard let rules = json["rules"]?.arrayValue, !rules.isEmpty else {
            throw VLQError(QuantizationError.invalidRecipe, source, "a recipe needs a non-empty \"rules\" array")
        }
        self.rules = try rules.enumerated().map { i, r in try Rule(json: r, at: "rule \(i + 1)", source: source) }
    }

    public var json: JSONValue {
        [
            "name": .string(name),
            "method": method.map { .string($0.rawValue) } ?? .null,
            "rules": .array(
                rules.map { r in
                    var o: [String: JSONValue] = ["match": .string(r.pattern)]
                    if let c = r.component { o["component"] = .string(c.name) }
                    switch r.target {
                    case .keep: o["encoding"] = "keep"
                    case .float(let e): o["encoding"] = .string(e.name)
                    case .quantized(let e, let g):
                        o["encoding"] = .string(e.name)
                        o["group_size"] = g.map { .int(Int64($0)) } ?? "row"
                    }
                    if let m = r.method { o["method"] = .string(m.rawValue) }
                    return .object(o)
                }),
        ]
    }
}

extension Recipe {
    /// A misspelt key ("groupsize") would otherwise be ignored and its rule run with the default.
    static func refuseUnknownKeys(
        _ fields: [String: JSONValue], allowed: [String], at: String, source: String
    ) throws {
        for key in fields.keys.sorted() where !allowed.contains(key) {
            let hint = Suggestion.nearest(to: key, among: allowed).map { "; did you mean \"\($0)\"?" } ?? ""
            throw VLQError(
                QuantizationError.invalidRecipe, source,
                "\(at): unknown key \"\(key)\"\(hint) (known: \(allowed.joined(separator: ", ")))")
        }
    }

    /// Refuses rules that decide no tensor of the model: a pattern matching nothing (a typo such as
    /// "model.layer.*"), or a rule every tensor of which an earlier rule already decides (first match wins,
    /// so it could never apply). `source` names the recipe in the error.
    public func checkEveryRuleApplies(to tensors: [(name: String, component: Component)], source: String) throws {
        var decides = [Bool](repeating: false, count: rules.count)
        var shadowedBy = [Int?](repeating: nil, count: rules.count)
        for tensor in tensors {
            let matching = rules.indices.filter { rules[$0].matches(tensor.name, tensor.component) }
            guard let first = matching.first else { continue }
            decides[first] = true
            for later in matching.dropFirst() where shadowedBy[later] == nil { shadowedBy[later] = first }
        }
        for i in rules.indices where !decides[i] {
            let rule = "rule \(i + 1) (\(rules[i].summary))"
            guard let earlier = shadowedBy[i] else {
                throw VLQError(QuantizationError.invalidRecipe, source, "\(rule) matches no tensor of the model")
            }
            throw VLQError(
                QuantizationError.invalidRecipe, source,
                "\(rule) never applies: rule \(earlier + 1) (\(rules[earlier].summary)) decides every tensor it matches"
            )
        }
    }
}

extension Recipe.Rule {
    func matches(_ name: String, _ component: Component) -> Bool {
        (self.component == nil || self.component == component) && Recipe.glob(pattern, name)
    }

    /// How errors name the rule: its component and pattern.
    var summary: String {
        (component.map { "component \"\($0.name)\", " } ?? "") + "match \"\(pattern)\""
    }

    /// One element of a recipe's "rules"; `at` ("rule 3") names it in errors.
    init(json r: JSONValue, at: String, source: String) throws {
        guard let fields = r.objectValue else {
            throw VLQError(QuantizationError.invalidRecipe, source, "\(at): a rule is a JSON object")
        }
        try Recipe.refuseUnknownKeys(
            fields, allowed: ["match", "component", "encoding", "group_size", "method"], at: at, source: source)
        guard let pattern = r["match"]?.stringValue else {
            throw VLQError(QuantizationError.invalidRecipe, source, "\(at): needs \"match\"")
        }
        var component: Component?
        if let c = r["component"]?.stringValue {
            guard let found = Component.allCases.first(where: { $0.name == c }) else {
                throw VLQError(QuantizationError.invalidRecipe, source, "\(at): unknown component \"\(c)\"")
            }
            component = found
        }
        guard let encodingName = r["encoding"]?.stringValue else {
            throw VLQError(QuantizationError.invalidRecipe, source, "\(at): needs \"encoding\"")
        }
        let target = try Recipe.Target(encodingName: encodingName, json: r, at: at, source: source)
        var method: QuantizationMethod?
        if let m = r["method"]?.stringValue {
            guard let found = QuantizationMethod(rawValue: m) else {
                throw VLQError(QuantizationError.invalidRecipe, source, "\(at): unknown method \"\(m)\"")
            }
            method = found
        }
        self.init(component: component, pattern: pattern, target: target, method: method)
    }
}

extension Recipe.Target {
    /// A rule's "encoding" (with its "group_size" for quantized encodings): keep, a float type, or a code.
    init(encodingName: String, json r: JSONValue, at: String, source: String) throws {
        switch encodingName {
        case "keep", "float": self = .keep
        default:
            guard let e = TensorEncoding(name: encodingName) else {
                throw VLQError(
                    QuantizationError.invalidRecipe, source, "\(at): unknown encoding \"\(encodingName)\"")
            }
            if e.isQuantized {
                var group: Int? = 128
                if let g = r["group_size"] {
                    if g.stringValue == "row" {
                        group = nil
                    } else if let n = g.intValue, Recipe.standardGroupSizes.contains(n) {
                        group = n
                    } else {
                        throw VLQError(
                            QuantizationError.invalidRecipe, source,
                            "\(at): group_size must be 32, 64, 128, 256 or \"row\"")
                    }
                }
                self = .quantized(e, groupSize: group)
            } else {
                self = .float(e)
            }
        }
    }
}
