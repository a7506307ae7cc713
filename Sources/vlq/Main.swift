import ArgumentParser
import Logging
import VLQCore

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
        } catch let failure as CheckFailure {
            printError(failure.message)
            exit(1)
        } catch let error as VLQError {
            printError("vlq: error: \(error)")
            exit(2)
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

/// A check that ran and found the subject wanting: exit code 1, unlike bad input or usage (2).
struct CheckFailure: Error {
    var message: String
}

func printError(_ line: String) {
    var stderr = StandardError()
    print(line, to: &stderr)
}

/// The C stderr stream, named apart from Swift's own `stderr` variables.
var standardErrorStream: UnsafeMutablePointer<FILE> { stderr }

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        fputs(string, standardErrorStream)
    }
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
