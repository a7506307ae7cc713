import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Kernels {
    /// Splits rows 0..<count over the cores for element-wise work (OpenBLAS is idle meanwhile).
    /// Inlinable: the weight store's and the quantizer's row loops run through it as if it were theirs.
    @inlinable @inline(__always)
    public static func parallelRows(_ count: Int, minimumPerTask: Int = 4096, _ body: (Range<Int>) -> Void) {
        let tasks = min(activeProcessors, max(1, count / minimumPerTask))
        if tasks <= 1 { return body(0..<count) }
        DispatchQueue.concurrentPerform(iterations: tasks) { t in
            body((count * t / tasks)..<(count * (t + 1) / tasks))
        }
    }

    /// Cores online, at least 1.
    @usableFromInline
    static let activeProcessors: Int = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
}
