#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// How much memory the large optional buffers may take: the weight store's upcast copies and the
/// X^T X accumulators of calibration. A share of the machine's memory unless the environment says
/// otherwise (in MiB).
public enum MemoryBudget {
    /// Budget for upcast weight copies: half the machine's memory unless VLQ_WEIGHT_CACHE_MB says otherwise.
    public static var weightCache: Int {
        if let mb = megabytes("VLQ_WEIGHT_CACHE_MB") { return mb << 20 }
        return physicalMemory.map { $0 / 2 } ?? 8 << 30
    }

    /// Budget for X^T X accumulators: a quarter of the machine's memory unless VLQ_GRAM_BUDGET_MB says
    /// otherwise.
    public static var gramStatistics: Int {
        if let mb = megabytes("VLQ_GRAM_BUDGET_MB") { return mb << 20 }
        return physicalMemory.map { $0 / 4 } ?? 4 << 30
    }

    /// The machine's memory in bytes, nil when the system does not say.
    public static var physicalMemory: Int? {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), size = sysconf(Int32(_SC_PAGESIZE))
        return pages > 0 && size > 0 ? Int(pages) * Int(size) : nil
    }

    static func megabytes(_ variable: String) -> Int? {
        guard let text = getenv(variable) else { return nil }
        return Int(String(cString: text))
    }
}
