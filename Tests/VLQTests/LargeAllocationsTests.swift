import XCTest

@testable import Numerics

/// Arrays first touched on every core (GPTQ's factors and passes): every element written, whatever the
/// count's relation to the 2 MiB slices the cores split.
final class LargeAllocationsTests: XCTestCase {
    let floatsPerSlice = LargeAllocations.hugePageBytes / MemoryLayout<Float>.stride

    func testCopyHoldsEveryElementOfItsSource() {
        for count in [0, 1, 7, floatsPerSlice, floatsPerSlice + 1, 3 * floatsPerSlice + 5] {
            let source = (0..<count).map { Float($0) * 0.5 - 3 }
            XCTAssertEqual(LargeAllocations.copy(of: source), source, "\(count) elements")
        }
    }

    func testRepeatingFillsEveryElement() {
        for count in [0, 1, floatsPerSlice - 1, 2 * floatsPerSlice + 3] {
            let filled = LargeAllocations.array(repeating: Float(-2.25), count: count)
            XCTAssertEqual(filled.count, count)
            XCTAssertTrue(filled.allSatisfy { $0 == -2.25 }, "\(count) elements")
        }
        let bytes = LargeAllocations.array(repeating: Int8(-7), count: 2 * LargeAllocations.hugePageBytes + 1)
        XCTAssertTrue(bytes.allSatisfy { $0 == -7 })
    }

    func testArrayIsWhatItsInitializerWrote() {
        let squares = LargeAllocations.array(count: 1000) { (buffer: UnsafeMutableBufferPointer<Double>) in
            Kernels.parallelRows(buffer.count, minimumPerTask: 10) { rows in
                for i in rows { buffer[i] = Double(i * i) }
            }
        }
        XCTAssertEqual(squares, (0..<1000).map { Double($0 * $0) })
    }
}
