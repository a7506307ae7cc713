import VLQCore
import VLQFormat

/// `quantization.allocation` of a bundle whose precision per layer was chosen by `vlq quantize --max-kld`,
/// `--target-bits` or `--max-size` (formats/VLQ-BUNDLE.md, section 6): the goal, each unit's choice with
/// the drift measured for it, and the figures achieved on the held-out calibration samples.
public struct AllocationRecord: Equatable, Sendable {
    public enum Goal: Equatable, Sendable {
        case maxKLD(Double)
        case targetBits(Double)
        case maxBytes(Int)

        var key: String {
            switch self {
            case .maxKLD: return "max_kld"
            case .targetBits: return "target_bits"
            case .maxBytes: return "max_bytes"
            }
        }

        public var description: String {
            switch self {
            case .maxKLD(let x): return "mean KLD <= \(scientific(x))"
            case .targetBits(let b): return "\(fixed(b, 2)) bits per weight"
            case .maxBytes(let n): return "at most \(formatBytes(n))"
            }
        }
    }

    /// Which tensors precision is chosen for (`vlq quantize --allocate`).
    public enum Scope: String, CaseIterable, Equatable, Sendable {
        /// The decoder layers' Linear weights, one unit per tensor; the rest as the int4 preset stores it
        /// (vision tower, projector, token embeddings and lm_head in q8 g128). Bits per weight count over
        /// the units: bits per LLM Linear weight.
        case llm
        /// Every tensor the int8 preset quantizes, one unit per layer (the projector, the token
        /// embeddings and lm_head one each); the rest kept in float.
        case all

        public var description: String {
            switch self {
            case .llm: return "decoder Linears, the rest as int4"
            case .all: return "every quantizable layer"
            }
        }
    }

    /// One decoder Linear, or one layer (the projector, lm_head, the token embeddings...), and what it got.
    public struct Unit: Equatable, Sendable {
        public var name: String
        /// "q4 g128", "q8 g128", "f16"...
        public var choice: String
        public var parameters: Int
        public var bytes: Int
        /// The mean KLD this unit alone caused in this choice on the sensitivity samples.
        public var drift: Double

        public init(name: String, choice: String, parameters: Int, bytes: Int, drift: Double) {
            self.name = name
            self.choice = choice
            self.parameters = parameters
            self.bytes = bytes
            self.drift = drift
        }
    }

    public var goal: Goal
    public var scope: Scope
    /// The choices every unit was measured in.
    public var choices: [String]
    public var units: [Unit]
    /// The drift of the tensors outside the units as the scope stores them, measured as one unit's
    /// (0 when they are kept in float).
    public var fixedDrift: Double
    /// The sum of the chosen units' drifts and `fixedDrift`: what the knapsack bounded.
    public var predictedKLD: Double
    /// Mean KLD of the written bundle against the source on the held-out samples, and over how many
    /// logit positions.
    public var heldOutKLD: Double
    public var heldOutPositions: Int
    /// The held-out samples: every `heldOutEvery`-th of the set (their images), never used for statistics
    /// or for measuring the units.
    public var heldOutEvery: Int
    public var heldOutImages: [String]
    public var sensitivitySamples: Int
    /// Solve, quantize and check rounds it took (a bound the sum of drifts underestimated is tightened).
    public var rounds: Int

    public init(
        goal: Goal, scope: Scope, choices: [String], units: [Unit], fixedDrift: Double, predictedKLD: Double,
        heldOutKLD: Double,
        heldOutPositions: Int, heldOutEvery: Int, heldOutImages: [String], sensitivitySamples: Int, rounds: Int
    ) {
        self.goal = goal
        self.scope = scope
        self.choices = choices
        self.units = units
        self.fixedDrift = fixedDrift
        self.predictedKLD = predictedKLD
        self.heldOutKLD = heldOutKLD
        self.heldOutPositions = heldOutPositions
        self.heldOutEvery = heldOutEvery
        self.heldOutImages = heldOutImages
        self.sensitivitySamples = sensitivitySamples
        self.rounds = rounds
    }

    public var parameters: Int { units.reduce(0) { $0 + $1.parameters } }
    public var bytes: Int { units.reduce(0) { $0 + $1.bytes } }
    /// Bits per weight over the units' tensors (with the `llm` scope: bits per LLM Linear weight).
    public var bitsPerWeight: Double { parameters == 0 ? 0 : 8 * Double(bytes) / Double(parameters) }

    public var json: JSONValue {
        let goalValue: JSONValue
        switch goal {
        case .maxKLD(let x): goalValue = .double(x)
        case .targetBits(let b): goalValue = .double(b)
        case .maxBytes(let n): goalValue = .int(Int64(n))
        }
        return .object([
            "goal": .object([goal.key: goalValue]),
            "scope": .string(scope.rawValue),
            "choices": .array(choices.map { .string($0) }),
            "units": .array(
                units.map {
                    .object([
                        "name": .string($0.name), "choice": .string($0.choice),
                        "parameters": .int(Int64($0.parameters)),
                        "bytes": .int(Int64($0.bytes)), "drift": .double($0.drift),
                    ])
                }),
            "fixed_drift": .double(fixedDrift),
            "predicted_kld": .double(predictedKLD),
            "held_out": .object([
                "mean_kld": .double(heldOutKLD), "positions": .int(Int64(heldOutPositions)),
                "every": .int(Int64(heldOutEvery)), "images": .array(heldOutImages.map { .string($0) }),
            ]),
            "bits_per_weight": .double(bitsPerWeight),
            "sensitivity_samples": .int(Int64(sensitivitySamples)),
            "rounds": .int(Int64(rounds)),
        ])
    }

    public init(json: JSONValue, source: String?) throws {
        func fail(_ what: String) -> VLQError {
            VLQError(QuantizationError.invalidRecord, source, "quantization.allocation: \(what)")
        }
        func number(_ v: JSONValue?, _ what: String) throws -> Double {
            guard let x = v?.doubleValue, x.isFinite else { throw fail("\(what) is not a finite number") }
            return x
        }
        func count(_ v: JSONValue?, _ what: String) throws -> Int {
            guard let n = v?.intValue, n >= 0 else { throw fail("\(what) is not a count") }
            return n
        }
        guard let goal = json["goal"]?.objectValue, goal.count == 1, let (key, value) = goal.first else {
            throw fail("goal is not an object with one key")
        }
        switch key {
        case "max_kld": self.goal = .maxKLD(try number(value, "goal max_kld"))
        case "target_bits": self.goal = .targetBits(try number(value, "goal target_bits"))
        case "max_bytes": self.goal = .maxBytes(try count(value, "goal max_bytes"))
        default: throw fail("unknown goal \"\(key)\"")
        }
        // Bundles from before --allocate chose over every quantizable layer.
        let scopeName = json["scope"]?.stringValue ?? Scope.all.rawValue
        guard let scope = Scope(rawValue: scopeName) else { throw fail("unknown scope \"\(scopeName)\"") }
        self.scope = scope
        guard let choices = json["choices"]?.arrayValue?.compactMap(\.stringValue) else { throw fail("no choices") }
        self.choices = choices
        guard let units = json["units"]?.arrayValue else { throw fail("no units") }
        self.units = try units.enumerated().map { i, u in
            guard let name = u["name"]?.stringValue, let choice = u["choice"]?.stringValue else {
                throw fail("unit \(i + 1) lacks a name or a choice")
            }
            return Unit(
                name: name, choice: choice, parameters: try count(u["parameters"], "unit \(name): parameters"),
                bytes: try count(u["bytes"], "unit \(name): bytes"),
                drift: try number(u["drift"], "unit \(name): drift"))
        }
        fixedDrift = try json["fixed_drift"].map { try number($0, "fixed_drift") } ?? 0
        predictedKLD = try number(json["predicted_kld"], "predicted_kld")
        let held = json["held_out"]
        heldOutKLD = try number(held?["mean_kld"], "held_out.mean_kld")
        heldOutPositions = try count(held?["positions"], "held_out.positions")
        heldOutEvery = try count(held?["every"], "held_out.every")
        heldOutImages = held?["images"]?.arrayValue?.compactMap(\.stringValue) ?? []
        sensitivitySamples = try count(json["sensitivity_samples"], "sensitivity_samples")
        rounds = try count(json["rounds"], "rounds")
    }

    /// What `vlq inspect` prints: the goal and what was achieved, then one line per unit.
    public var lines: [String] {
        var out = [
            "allocation for \(goal.description) over \(scope.rawValue) (\(scope.description)): "
                + "\(fixed(bitsPerWeight, 2)) bits per weight over \(units.count) units (\(formatBytes(bytes))); "
                + "held-out mean KLD \(scientific(heldOutKLD)) on \(heldOutImages.count) "
                + "samples (every \(heldOutEvery)th of the set, \(heldOutPositions) positions), predicted "
                + "\(scientific(predictedKLD))"
                + (fixedDrift > 0 ? " (\(scientific(fixedDrift)) of it outside the units)" : "")
                + "; \(rounds) round\(rounds == 1 ? "" : "s")"
        ]
        for u in units {
            out.append("  \(u.name): \(u.choice), \(formatBytes(u.bytes)), alone \(scientific(u.drift))")
        }
        return out
    }
}
