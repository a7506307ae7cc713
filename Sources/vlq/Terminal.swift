import Logging
import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Log lines on stderr as `vlq: level: message`: short, greppable, one event per line.
struct PlainLogHandler: LogHandler {
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let level = event.level == .notice ? "note" : event.level.rawValue
        printError("vlq: \(level): \(event.message)")
    }
}

/// Progress of bytes or counted items: a redrawn bar (amount, rate, ETA) on a terminal, a log line every
/// 10% otherwise (`--progress` chooses).
final class ByteProgress {
    let label: String
    let logger: Logger
    let interactive: Bool
    let start = monotonicSeconds()
    var lastDraw = 0.0
    var lastLoggedDecile = -1
    var finished = false
    static let loggingThreshold = 256 << 20
    /// "bytes", or a count noun such as "samples" (then totals are shown as counts).
    var unit = "bytes"

    /// How progress shows: a redrawn bar, a log line per tenth, or not at all.
    enum Style { case bar, lines, none }

    init(label: String, logger: Logger, style: Style, unit: String = "bytes") {
        self.label = label
        self.logger = logger
        self.unit = unit
        interactive = style == .bar
        if style == .none { lastLoggedDecile = 100 }
    }

    func update(_ done: Int, _ total: Int) {
        let now = monotonicSeconds()
        let elapsed = max(now - start, 1e-9)
        let rate = Double(done) / elapsed
        if interactive {
            guard now - lastDraw >= 0.1 || done == total else { return }
            lastDraw = now
            let fraction = total > 0 ? Double(done) / Double(total) : 1
            let width = 30
            let filled = Int(fraction * Double(width))
            let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
            let eta = rate > 0 ? Double(total - done) / rate : 0
            let amounts =
                unit == "bytes"
                ? "\(formatBytes(done))/\(formatBytes(total)) \(formatBytes(Int(rate)))/s"
                : "\(done)/\(total) \(unit) \(fixed(rate, 2))/s"
            let line = "\(label) [\(bar)] \(Int(fraction * 100))% \(amounts) ETA \(formatDuration(eta))"
            writeToStandardError("\r\u{1B}[K" + line)
            if done == total && !finished {
                finished = true
                writeToStandardError("\n")
            }
        } else {
            // Log lines for small jobs would only be noise: they finish before anyone reads them.
            guard unit != "bytes" || total >= ByteProgress.loggingThreshold else { return }
            let decile = total > 0 ? done * 10 / total : 10
            guard decile > lastLoggedDecile else { return }
            lastLoggedDecile = decile
            let amount =
                unit == "bytes"
                ? "\(decile * 10)% (\(formatBytes(done)) of \(formatBytes(total)), \(formatBytes(Int(rate)))/s)"
                : "\(done) of \(total) \(unit)"
            logger.info("\(label): \(amount)")
        }
    }
}
