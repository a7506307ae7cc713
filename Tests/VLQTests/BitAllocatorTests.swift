import XCTest

@testable import Allocation

final class BitAllocatorTests: XCTestCase {
    typealias Option = BitAllocator.Option

    /// Every combination, for checking the solver on small tables.
    func bruteForce(_ options: [[Option]], _ goal: BitAllocator.Goal) -> (bytes: Int, drift: Double)? {
        var best: (bytes: Int, drift: Double)?
        func visit(_ unit: Int, _ bytes: Int, _ drift: Double) {
            if unit == options.count {
                switch goal {
                case .smallestWithin(let bound):
                    if drift <= bound, best == nil || bytes < best!.bytes { best = (bytes, drift) }
                case .leastDriftWithin(let budget):
                    if bytes <= budget, best == nil || drift < best!.drift { best = (bytes, drift) }
                }
                return
            }
            for o in options[unit] { visit(unit + 1, bytes + o.bytes, drift + o.drift) }
        }
        visit(0, 0, 0)
        return best
    }

    /// A model-like table: each unit's options from 3 to 16 bits, drift falling ~4x per extra bit and
    /// scaled by the unit's own sensitivity (one layer far more sensitive than the others).
    func syntheticTable(units: Int, seed: UInt64) -> [[Option]] {
        var state = seed
        func next() -> Double {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            return Double(state >> 11) / Double(1 << 53)
        }
        let bits = [3.5, 4.25, 4.5, 5.0, 8.125, 16]
        return (0..<units).map { u in
            let parameters = 1000 * (1 + Int(next() * 9))
            let sensitivity = (u == 0 ? 40 : 1) * (0.5 + next())
            return bits.map { b in
                Option(bytes: Int(Double(parameters) * b / 8), drift: b >= 16 ? 0 : sensitivity * pow(4, -b) * 1e-1)
            }
        }
    }

    func testTheSmallestBundleWithinABoundIsTheBruteForceOptimum() throws {
        for seed in 1...6 as ClosedRange<UInt64> {
            let table = syntheticTable(units: 6, seed: seed)
            let allocator = BitAllocator(options: table, resolution: 1_000_000)
            XCTAssertEqual(allocator.step, 1, "small tables are solved exactly")
            for bound in [1e-5, 1e-4, 1e-3] {
                let expected = try XCTUnwrap(bruteForce(table, .smallestWithin(drift: bound)))
                let found = try XCTUnwrap(allocator.solve(.smallestWithin(drift: bound)))
                XCTAssertEqual(found.bytes, expected.bytes, "seed \(seed), bound \(bound)")
                XCTAssertLessThanOrEqual(found.drift, bound)
            }
        }
    }

    func testTheLeastDriftWithinABudgetIsTheBruteForceOptimum() throws {
        for seed in 1...6 as ClosedRange<UInt64> {
            let table = syntheticTable(units: 6, seed: seed)
            let allocator = BitAllocator(options: table, resolution: 1_000_000)
            let smallest = table.reduce(0) { $0 + $1.map(\.bytes).min()! }
            let largest = table.reduce(0) { $0 + $1.map(\.bytes).max()! }
            for fraction in [0.0, 0.1, 0.3, 0.6] {
                let budget = smallest + Int(Double(largest - smallest) * fraction)
                let expected = try XCTUnwrap(bruteForce(table, .leastDriftWithin(bytes: budget)))
                let found = try XCTUnwrap(allocator.solve(.leastDriftWithin(bytes: budget)))
                XCTAssertEqual(found.drift, expected.drift, accuracy: 1e-15 * max(1, expected.drift))
                XCTAssertLessThanOrEqual(found.bytes, budget)
            }
        }
    }

    func testTheSensitiveLayerGetsTheBitsAsAHandMadeRecipeWould() throws {
        // Layer 0 drifts ten times more than the others in 4 bits: within a bound that 4 bits everywhere
        // misses, the cheapest fix is layer 0 in 8 bits, not every layer in 5.
        let q4 = 1000 * 17 / 32, q5 = 1000 * 5 / 8, q8 = 1000 * 65 / 64
        let table: [[Option]] = (0..<4).map { u in
            let s = u == 0 ? 10.0 : 1.0
            return [
                Option(bytes: q4, drift: s * 1e-4), Option(bytes: q5, drift: s * 4e-5),
                Option(bytes: q8, drift: s * 1e-6),
            ]
        }
        let found = try XCTUnwrap(BitAllocator(options: table).solve(.smallestWithin(drift: 5e-4)))
        XCTAssertEqual(found.choices, [2, 0, 0, 0])
        XCTAssertEqual(found.bytes, q8 + 3 * q4)
    }

    func testImpossibleGoalsAreNil() {
        let table: [[Option]] = [[Option(bytes: 10, drift: 1e-3), Option(bytes: 20, drift: 1e-4)]]
        let allocator = BitAllocator(options: table)
        XCTAssertNil(allocator.solve(.smallestWithin(drift: 1e-5)), "below the least drift possible")
        XCTAssertNil(allocator.solve(.leastDriftWithin(bytes: 9)), "below the smallest size possible")
        XCTAssertNil(BitAllocator(options: [[]]).solve(.smallestWithin(drift: 1)), "a unit without options")
        XCTAssertEqual(allocator.solve(.leastDriftWithin(bytes: 20))?.choices, [1])
    }

    func testCoarseStepsNeverExceedTheBudget() throws {
        let table = syntheticTable(units: 30, seed: 9)
        let allocator = BitAllocator(options: table, resolution: 500)
        XCTAssertGreaterThan(allocator.step, 1)
        let smallest = table.reduce(0) { $0 + $1.map(\.bytes).min()! }
        for extra in [0, 5_000, 20_000] {
            let budget = smallest + extra + allocator.step * table.count
            let found = try XCTUnwrap(allocator.solve(.leastDriftWithin(bytes: budget)))
            XCTAssertLessThanOrEqual(found.bytes, budget)
        }
    }
}
