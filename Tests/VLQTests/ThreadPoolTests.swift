import Dispatch
import Foundation
import Numerics
import XCTest

/// `Kernels.concurrently`: every task runs exactly once, on the persistent pool or, when that is busy
/// (a loop inside a loop, or another thread's loop), on libdispatch.
final class ThreadPoolTests: XCTestCase {
    func testEveryTaskRunsOnceAcrossManyShortLoops() {
        for tasks in [1, 2, 3, 7, 64] {
            for _ in 0..<500 {
                var counts = [Int](repeating: 0, count: tasks)
                counts.withUnsafeMutableBufferPointer { c in
                    let base = c.baseAddress!
                    Kernels.concurrently(tasks) { base[$0] += 1 }
                }
                XCTAssertEqual(counts, [Int](repeating: 1, count: tasks), "\(tasks) tasks")
            }
        }
    }

    func testALoopInsideALoopAndLoopsFromSeveralThreadsComplete() {
        var sums = [Int](repeating: 0, count: 4 * 8)
        sums.withUnsafeMutableBufferPointer { s in
            let base = s.baseAddress!
            Kernels.concurrently(4) { outer in
                Kernels.concurrently(8) { inner in base[outer * 8 + inner] += outer * 8 + inner }
            }
        }
        XCTAssertEqual(sums, Array(0..<32))

        let results = UnsafeMutablePointer<Int>.allocate(capacity: 4 * 100)
        defer { results.deallocate() }
        results.initialize(repeating: 0, count: 400)
        let shared = ResultsPointer(results)
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for loop in 0..<100 {
                var total = [Int](repeating: 0, count: 5)
                total.withUnsafeMutableBufferPointer { t in
                    let base = t.baseAddress!
                    Kernels.concurrently(5) { base[$0] = $0 + 1 }
                }
                shared.pointer[thread * 100 + loop] = total.reduce(0, +)
            }
        }
        XCTAssertEqual(Array(UnsafeBufferPointer(start: results, count: 400)), [Int](repeating: 15, count: 400))
    }
}

/// The test's own buffer, written at disjoint places from several threads.
private struct ResultsPointer: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Int>
    init(_ pointer: UnsafeMutablePointer<Int>) { self.pointer = pointer }
}
