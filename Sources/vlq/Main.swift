import ArgumentParser
import Foundation
import Logging
import Numerics
import VLQCore
import Verification

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct Main {
    static func main() async {
        TemporaryFiles.removeOnInterrupt()
        do {
            var command = try VLQ.parseAsRoot()
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let error as VLQError {
            printError(errorLine(error))
            exit(error.exitStatus.rawValue)
        } catch {
            // Usage errors (and --help, whose "error" exits 0) are ArgumentParser's to print.
            let code = VLQ.exitCode(for: error)
            if code == .success || code.rawValue == 0 {
                VLQ.exit(withError: error)
            }
            let message = VLQ.fullMessage(for: error)
            if !message.isEmpty { printError(message) }
            exit(code == .validationFailure ? 2 : code.rawValue)
        }
    }
}

/// The one line printed for an error: a broken bound as verify's verdict, a check that found a problem
/// as the check's, anything else as an error. The exit status is the error's own.
func errorLine(_ error: VLQError) -> String {
    if error.is(VerificationError.boundBroken) { return "vlq: verify: \(error)" }
    if error.exitStatus == .checkFailed { return "vlq: check failed: \(error)" }
    return "vlq: error: \(error)"
}

func printError(_ line: String) {
    var stderr = StandardError()
    print(line, to: &stderr)
}

/// Writes to stderr unbuffered, so that log lines, progress and errors keep their order.
func writeToStandardError(_ string: String) {
    FileHandle.standardError.write(Data(string.utf8))
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) { writeToStandardError(string) }
}

struct VLQ: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vlq",
        abstract: "Convert, quantize and verify Yi-VL vision-language checkpoints.",
        discussion: "Exit codes: 0 success, 1 a check found a problem, 2 bad input or usage.",
        version: VLQVersion.string,
        subcommands: [
            Convert.self, Inspect.self, Check.self, Run.self, Logits.self, Calibrate.self, Quantize.self,
            ReferenceCommand.self, Verify.self, Bench.self,
        ]
    )
}

/// Options every command shares.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log details to stderr.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Log only warnings and errors; no progress bar.")
    var quiet = false

    func makeLogger(_ label: String) -> Logger {
        var logger = Logger(label: label) { _ in PlainLogHandler() }
        logger.logLevel = quiet ? .warning : (verbose ? .debug : .info)
        return logger
    }
}

/// Options of the commands that compute (run the model, calibrate, quantize, verify, bench).
struct ComputeOptions: ParsableArguments {
    @Option(help: "Threads for the engine, calibration and quantizers (default: every core).")
    var threads: Int?

    func validate() throws {
        if let threads, !(1...ComputeThreads.limit).contains(threads) {
            throw ValidationError("--threads must lie in 1...\(ComputeThreads.limit)")
        }
    }

    /// Applies the choice before any work starts.
    func apply() {
        if let threads { ComputeThreads.use(threads) }
    }
}
