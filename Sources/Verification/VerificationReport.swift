import VLQCore

/// The limits a verification was asked to check; nil: not checked.
public struct VerificationBounds: Sendable, Equatable {
    /// The mean KL divergence may not exceed it.
    public var maxKLD: Double?
    /// The rate of positions whose top token agrees (0..1) may not fall below it.
    public var minSameTop: Double?
    /// No projector output's cosine similarity may fall below it.
    public var minCosine: Double?

    public init(maxKLD: Double? = nil, minSameTop: Double? = nil, minCosine: Double? = nil) {
        self.maxKLD = maxKLD
        self.minSameTop = minSameTop
        self.minCosine = minCosine
    }

    public var isEmpty: Bool { maxKLD == nil && minSameTop == nil && minCosine == nil }
}

/// A bound a figure broke.
public struct BoundFailure: Sendable, Equatable {
    public enum Bound: String, Sendable {
        case maxKLD = "max-kld", minSameTop = "min-same-top", minCosine = "min-cosine"
    }

    public var bound: Bound
    public var value: Double
    public var limit: Double
    /// The evaluation set the figure was measured on; nil for the reference folder's cases.
    public var set: String?

    public init(bound: Bound, value: Double, limit: Double, set: String?) {
        self.bound = bound
        self.value = value
        self.limit = limit
        self.set = set
    }

    public var message: String {
        let figure: String
        switch bound {
        case .maxKLD: figure = "mean KLD \(scientific(value)) > \(limit)"
        case .minSameTop: figure = "same top \(fixed(value, 4)) < \(limit)"
        case .minCosine: figure = "projector cosine \(fixed(value, 6)) < \(limit)"
        }
        return figure + (set.map { " on \($0)" } ?? "")
    }
}

/// A bound given, the figure it was checked against and whether it held.
public struct BoundCheck: Sendable, Equatable {
    public var figure: BoundFailure
    public var passed: Bool

    init(_ bound: BoundFailure.Bound, value: Double, limit: Double, set: String?, passed: Bool) {
        figure = BoundFailure(bound: bound, value: value, limit: limit, set: set)
        self.passed = passed
    }

    /// What held or broke, e.g. "mean KLD 1.20e-04 <= 0.001 on eval.jsonl".
    public var message: String {
        guard passed else { return figure.message }
        let f = figure
        let held: String
        switch f.bound {
        case .maxKLD: held = "mean KLD \(scientific(f.value)) <= \(f.limit)"
        case .minSameTop: held = "same top \(fixed(f.value, 4)) >= \(f.limit)"
        case .minCosine: held = "projector cosine \(fixed(f.value, 6)) >= \(f.limit)"
        }
        return held + (f.set.map { " on \($0)" } ?? "")
    }
}

/// Everything a verification measured, the bounds it was given and which of them broke. Its parts are
/// filled in as they are measured; `json` and `html` render the whole, the `lines` of each part the
/// text the command prints.
public struct VerificationReport: Sendable {
    /// The candidate on the per-stage files of a reference run (transformers, or the fixtures').
    public struct ReferenceFolder: Sendable {
        public var path: String
        public var comparison: ReferenceComparison
        public init(path: String, comparison: ReferenceComparison) {
            self.path = path
            self.comparison = comparison
        }
    }

    /// The candidate against a stored or freshly run reference model on an evaluation set.
    public struct Run: Sendable {
        /// The .vlqref file or the reference model.
        public var reference: String
        public var set: String
        public var setDigest: String
        public var comparison: RunComparison
        public init(reference: String, set: String, setDigest: String, comparison: RunComparison) {
            self.reference = reference
            self.set = set
            self.setDigest = setDigest
            self.comparison = comparison
        }
    }

    /// The candidate's quantized layers, each alone in the reference model, by the drift it causes.
    public struct LayerRanking: Sendable {
        public var samples: Int
        /// Largest drift first.
        public var entries: [LayerContribution.Entry]
        public init(samples: Int, entries: [LayerContribution.Entry]) {
            self.samples = samples
            self.entries = entries
        }
    }

    /// The candidate's greedy answers scored against a set's answers, without a reference.
    public struct Answers: Sendable {
        public var set: String
        public var result: ExactMatch
        public init(set: String, result: ExactMatch) {
            self.set = set
            self.result = result
        }
    }

    public var candidate: String
    public var bounds: VerificationBounds
    public var referenceFolder: ReferenceFolder?
    public var run: Run?
    public var layerRanking: LayerRanking?
    public var answers: Answers?

    public init(candidate: String, bounds: VerificationBounds) {
        self.candidate = candidate
        self.bounds = bounds
    }

    /// Every bound given, checked against every comparison that measured it: the reference folder's
    /// figures first, then the run's. A bound broken is one that did not pass.
    public var boundChecks: [BoundCheck] {
        var checks: [BoundCheck] = []
        if let c = referenceFolder?.comparison {
            checks += check(
                meanKLD: c.logits.meanKLD, sameTop: c.logits.sameTopRate,
                worstCosine: c.minimumProjectorCosine, on: nil)
        }
        if let run {
            let c = run.comparison
            checks += check(
                meanKLD: c.logits.meanKLD, sameTop: c.logits.sameTopRate,
                worstCosine: c.samples.map(\.projector.cosine).min(), on: run.set)
        }
        return checks
    }

    /// The bounds broken.
    public var failures: [BoundFailure] { boundChecks.filter { !$0.passed }.map(\.figure) }

    private func check(meanKLD: Double, sameTop: Double, worstCosine: Double?, on set: String?) -> [BoundCheck] {
        var checks: [BoundCheck] = []
        if let limit = bounds.maxKLD {
            checks.append(BoundCheck(.maxKLD, value: meanKLD, limit: limit, set: set, passed: meanKLD <= limit))
        }
        if let limit = bounds.minSameTop {
            checks.append(BoundCheck(.minSameTop, value: sameTop, limit: limit, set: set, passed: sameTop >= limit))
        }
        if let limit = bounds.minCosine, let worstCosine {
            checks.append(
                BoundCheck(.minCosine, value: worstCosine, limit: limit, set: set, passed: worstCosine >= limit))
        }
        return checks
    }

    /// KL divergence at every position: the run's when there is one, else the reference folder's.
    public var klDivergences: [Double] {
        run?.comparison.logits.klDivergences ?? referenceFolder?.comparison.logits.klDivergences ?? []
    }

    /// The broken bounds in one line (verify then exits 1); nil when all hold.
    public var failureMessage: String? {
        let failures = failures
        return failures.isEmpty ? nil : "bound broken: " + failures.map(\.message).joined(separator: "; ")
    }

    /// The broken bounds as the error verify throws (`VerificationError.boundBroken`: exit 1); nil when all hold.
    public var failure: VLQError? {
        failureMessage.map { VLQError(VerificationError.boundBroken, candidate, $0) }
    }

    /// The outcome in a word: "pass" (every bound given held), "fail", or "no bounds given".
    public var outcome: String { bounds.isEmpty ? "no bounds given" : failures.isEmpty ? "pass" : "fail" }

    /// The last line when no bound broke: that all hold, or that none were given (nothing was gated);
    /// empty when one broke (verify then exits 1 with `failure`).
    public var verdict: String {
        if bounds.isEmpty { return "no bounds given: nothing gated (--max-kld, --min-same-top, --min-cosine)" }
        return failures.isEmpty ? "all bounds hold" : ""
    }
}
