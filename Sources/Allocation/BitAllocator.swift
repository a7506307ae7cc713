/// How many bits each part of a model gets: one choice per unit (a layer, the projector, lm_head...)
/// among encodings of known size and measured drift, solved as a multiple-choice knapsack.
///
/// Drifts are taken as additive over units: the drift a unit causes alone (`vlq verify --rank-layers`
/// measures it) summed over the units quantized together. That is the first-order picture (KL divergence
/// is quadratic in small logit errors, and errors of different layers are nearly uncorrelated); the
/// search checks the bundle it builds end to end and tightens the bound when the sum was optimistic.
public struct BitAllocator: Sendable {
    /// One way of storing a unit: its bytes and the drift it causes on its own.
    public struct Option: Sendable, Equatable {
        public var bytes: Int
        public var drift: Double

        public init(bytes: Int, drift: Double) {
            self.bytes = bytes
            self.drift = drift
        }
    }

    /// What to optimise.
    public enum Goal: Sendable, Equatable {
        /// The fewest bytes whose summed drift stays within the bound.
        case smallestWithin(drift: Double)
        /// The least summed drift within a byte budget.
        case leastDriftWithin(bytes: Int)
    }

    /// The choice made: an option index per unit, and its totals.
    public struct Allocation: Sendable, Equatable {
        public var choices: [Int]
        public var bytes: Int
        public var drift: Double
    }

    /// `options[unit]`: the unit's options, in any order.
    public let options: [[Option]]
    /// The byte budget is solved in steps of this many bytes (1: exact). Sizes are rounded up to steps,
    /// so a budget is never exceeded; a smallest size is within one step per unit of the true one.
    public let step: Int
    /// Each option's size in steps (rounded up).
    let sizes: [[Int]]

    /// `resolution`: how many steps the largest possible total spans (a few thousand keeps it exact for
    /// small models and fast for large ones: units x resolution x options operations).
    public init(options: [[Option]], resolution: Int = 20_000) {
        self.options = options
        let most = options.reduce(0) { $0 + ($1.map(\.bytes).max() ?? 0) }
        let step = max(1, (most + resolution - 1) / max(resolution, 1))
        self.step = step
        sizes = options.map { $0.map { ($0.bytes + step - 1) / step } }
    }

    /// The best allocation for `goal`, nil when none meets it (a bound below the smallest drift
    /// possible, a budget below the smallest size possible) or a unit has no option.
    public func solve(_ goal: Goal) -> Allocation? {
        guard !options.isEmpty, options.allSatisfy({ !$0.isEmpty }) else { return nil }
        let table = leastDriftBySize()
        switch goal {
        case .smallestWithin(let bound):
            guard let size = table.drift.indices.first(where: { table.drift[$0] <= bound }) else { return nil }
            return allocation(endingAt: size, table)
        case .leastDriftWithin(let budget):
            let limit = min(budget / step, table.drift.count - 1)
            guard limit >= 0,
                let size = (0...limit).filter({ table.drift[$0].isFinite }).min(by: {
                    table.drift[$0] < table.drift[$1]
                })
            else { return nil }
            return allocation(endingAt: size, table)
        }
    }

    /// `drift[s]`: the least summed drift of every unit at a total of at most `s` steps, and for each unit
    /// and total the option that achieves it (to walk back). Starting from zero drift at every total (no
    /// unit yet) keeps every row "at most s": each is non-increasing in s, so no carrying forward.
    struct SizeTable {
        var drift: [Double]
        var chosen: [[Int32]]
    }

    func leastDriftBySize() -> SizeTable {
        let total = sizes.reduce(0) { $0 + $1.max()! }
        var best = [Double](repeating: 0, count: total + 1)
        var chosen: [[Int32]] = []
        chosen.reserveCapacity(options.count)
        for (unit, unitOptions) in options.enumerated() {
            var next = [Double](repeating: .infinity, count: total + 1)
            var pick = [Int32](repeating: -1, count: total + 1)
            for (k, option) in unitOptions.enumerated() {
                let size = sizes[unit][k]
                guard size <= total else { continue }
                for s in size...total where best[s - size].isFinite {
                    let d = best[s - size] + option.drift
                    // Ties go to the earlier option, whatever the order of the loop: deterministic.
                    if d < next[s] {
                        next[s] = d
                        pick[s] = Int32(k)
                    }
                }
            }
            best = next
            chosen.append(pick)
        }
        return SizeTable(drift: best, chosen: chosen)
    }

    /// Walks back from a total of `size` steps through each unit's pick.
    func allocation(endingAt size: Int, _ table: SizeTable) -> Allocation? {
        var s = size
        var choices = [Int](repeating: 0, count: options.count)
        for unit in options.indices.reversed() {
            let k = Int(table.chosen[unit][s])
            guard k >= 0 else { return nil }
            choices[unit] = k
            s -= sizes[unit][k]
        }
        return Allocation(
            choices: choices,
            bytes: zip(options, choices).reduce(0) { $0 + $1.0[$1.1].bytes },
            drift: zip(options, choices).reduce(0) { $0 + $1.0[$1.1].drift })
    }
}
