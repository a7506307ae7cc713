import CBLAS

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How many threads the engine's parallel loops and OpenBLAS use: every online core unless a caller
/// (`--threads N`, or an app) asks for fewer, e.g. to leave cores to other work.
public enum ComputeThreads {
    /// The cores online, at least 1.
    public static let available = max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    /// The most threads `use` accepts: far beyond any machine's cores, small enough that per-thread
    /// buffers stay bounded.
    public static let limit = 1024

    /// Set by `use` before any work starts and only read afterwards, hence unsynchronised.
    nonisolated(unsafe) private static var chosen = available

    /// The threads every parallel loop splits its work over.
    public static var count: Int { chosen }

    /// Uses `threads` threads (clamped to 1...limit) from now on, OpenBLAS's included. Call it before
    /// any work starts, not while a computation runs.
    public static func use(_ threads: Int) {
        chosen = min(max(threads, 1), limit)
        openblas_set_num_threads(Int32(chosen))
    }
}
