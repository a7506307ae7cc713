import CKernels
import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

extension Kernels {
    /// Splits rows 0..<count over the cores for element-wise work (OpenBLAS is idle meanwhile).
    /// Inlinable: the weight store's and the quantizer's row loops run through it as if it were theirs.
    /// `tasksPerProcessor` above 1 cuts the rows finer, so that a core that finishes early takes more
    /// instead of waiting (the pool hands tasks out as cores ask): `balancedTasksPerProcessor` for loops
    /// whose rows cost unequal time (triangular work, memory streams that run at varying rates).
    @inlinable @inline(__always)
    public static func parallelRows(
        _ count: Int, minimumPerTask: Int = 4096, tasksPerProcessor: Int = 1, _ body: (Range<Int>) -> Void
    ) {
        let tasks = min(activeProcessors * tasksPerProcessor, max(1, count / minimumPerTask))
        if tasks <= 1 { return body(0..<count) }
        concurrently(tasks) { t in body((count * t / tasks)..<(count * (t + 1) / tasks)) }
    }

    /// `body` on consecutive ranges of `slice` items (the last shorter) that cover `0..<count`, handed out
    /// to the cores as they ask: for passes over large buffers in fixed slices.
    public static func parallelSlices(_ count: Int, slice: Int, _ body: (Range<Int>) -> Void) {
        guard count > 0 else { return }
        let slice = max(1, slice)
        parallelRows((count + slice - 1) / slice, minimumPerTask: 1, tasksPerProcessor: balancedTasksPerProcessor) {
            for s in $0 { body((s * slice)..<min(count, (s + 1) * slice)) }
        }
    }

    /// Tasks per core for loops whose rows cost unequal time (see `parallelRows`).
    public static let balancedTasksPerProcessor = 8

    /// Runs `body(0..<tasks)` on the cores and returns when all are done. The body writes disjoint parts
    /// of buffers it captures by pointer, which Swift cannot prove: its Sendable check is switched off
    /// here, in one place, instead of at every caller.
    ///
    /// The loop runs on a persistent pool (CKernels' vlq_pool_run: workers poll briefly between loops) so
    /// that decode's ~30 short loops per token do not each wait for parked threads to wake; when the pool
    /// is busy (a nested loop, or another thread's) or VLQ_THREAD_POOL=0, on libdispatch's.
    public static func concurrently(_ tasks: Int, _ body: (Int) -> Void) {
        withoutActuallyEscaping(body) { body in
            let shared = UncheckedSendable(body)
            var boxed = shared
            let ran =
                usePool
                && withUnsafeMutablePointer(to: &boxed) { pointer in
                    vlq_pool_run(Int32(tasks), Int32(activeProcessors), runTask, pointer) == 1
                }
            if !ran { DispatchQueue.concurrentPerform(iterations: tasks) { shared.value($0) } }
        }
    }

    /// VLQ_THREAD_POOL=0 runs every loop on libdispatch instead (to compare).
    static let usePool: Bool = {
        guard let text = getenv("VLQ_THREAD_POOL") else { return true }
        return String(cString: text) != "0"
    }()

    /// The threads loops split over (ComputeThreads: all cores unless `--threads` says fewer).
    @usableFromInline
    static var activeProcessors: Int { ComputeThreads.count }
}

/// A value sent across threads on the caller's word that the threads use it safely.
struct UncheckedSendable<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}

/// The pool's entry: `context` points at the loop's body.
private func runTask(_ context: UnsafeMutableRawPointer?, _ task: Int32) {
    context!.assumingMemoryBound(to: UncheckedSendable<(Int) -> Void>.self).pointee.value(Int(task))
}
