import Foundation

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The process's peak resident set size, resettable between measurements where the kernel allows it, so
/// that each encoding `vlq bench` runs gets its own peak rather than the largest so far.
public enum PeakMemory {
    /// Where a peak figure comes from.
    public enum Source: Sendable {
        /// Linux's VmHWM, reset through /proc/self/clear_refs: the peak since the last reset.
        case highWaterMark
        /// getrusage's ru_maxrss: the peak of the whole process so far; it cannot be reset.
        case processMaximum

        /// What a peak RSS figure of this source means, for the reader of a table.
        public var phrase: String {
            switch self {
            case .highWaterMark: return "peak RSS per encoding (VmHWM, reset between encodings)"
            case .processMaximum: return "peak RSS of the process so far (ru_maxrss: this system cannot reset it)"
            }
        }
    }

    /// Starts a new peak at the current resident set size. Returns whether it could: where it cannot,
    /// `peak()` goes on reporting the process's maximum.
    @discardableResult
    public static func reset() -> Bool {
        // Writing "5" to clear_refs sets VmHWM back to the current RSS (Linux 4.0 and later).
        let fd = open("/proc/self/clear_refs", O_WRONLY)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        return write(fd, "5", 1) == 1 && highWaterMark() != nil
    }

    /// The peak resident bytes since the last successful `reset()`, or of the whole process.
    public static func peak() -> (bytes: Int, source: Source) {
        if let bytes = highWaterMark() { return (bytes, .highWaterMark) }
        var usage = rusage()
        #if canImport(Darwin)
        getrusage(RUSAGE_SELF, &usage)
        // Darwin counts ru_maxrss in bytes, Linux in KiB.
        return (Int(usage.ru_maxrss), .processMaximum)
        #else
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return (Int(usage.ru_maxrss) * 1024, .processMaximum)
        #endif
    }

    /// VmHWM from /proc/self/status, where there is one.
    static func highWaterMark() -> Int? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        return highWaterMark(status: status)
    }

    /// VmHWM in bytes from the text of /proc/PID/status.
    static func highWaterMark(status: String) -> Int? {
        for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
            // "VmHWM:\t 123456 kB": a tab, then spaces only while the number is short of 8 digits.
            let fields = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard fields.count >= 3, fields[2] == "kB", let kibibytes = Int(fields[1]) else { return nil }
            return kibibytes * 1024
        }
        return nil
    }
}
