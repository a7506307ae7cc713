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
        let arguments = Array(CommandLine.arguments.dropFirst())
        if let unknown = UnknownSubcommand(arguments) {
            printError("vlq: error: \(unknown)")
            exit(2)
        }
        do {
            var command = try VLQ.parseAsRoot(arguments)
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
        } catch let error as VLQError {
            printError(errorLine(error))
            exit(error.exitStatus.rawValue)
        } catch {
            // --help and --version arrive as "errors" that exit 0: ArgumentParser prints them.
            let code = VLQ.exitCode(for: error)
            if code == .success || code.rawValue == 0 {
                VLQ.exit(withError: error)
            }
            printError(usageErrorLine(VLQ.message(for: error), arguments: arguments))
            exit(2)
        }
    }
}

/// The one line printed for an error, `vlq: error: <file>: <what is wrong>`, whatever its kind; the exit
/// status tells a failed check (1) from bad input (2).
func errorLine(_ error: VLQError) -> String {
    "vlq: error: \(error)"
}

/// ArgumentParser's message (it may span lines, e.g. a list of choices) on one line, with where to look.
func usageErrorLine(_ message: String, arguments: [String]) -> String {
    let oneLine = message.split(whereSeparator: \.isNewline).map { $0.trimmingCharacters(in: .whitespaces) }
        .filter { !$0.isEmpty }.joined(separator: " ")
    let subcommand = arguments.first.flatMap { VLQ.subcommandNames.contains($0) ? $0 : nil }
    let help = subcommand.map { "vlq \($0) --help" } ?? "vlq --help"
    let text = oneLine.first.map { $0.lowercased() + oneLine.dropFirst() } ?? "invalid usage"
    return "vlq: error: \(text) (see \(help))"
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
            Convert.self, Inspect.self, Check.self, Run.self, Chat.self, Logits.self, Calibrate.self, Quantize.self,
            ReferenceCommand.self, Verify.self, Bench.self,
        ]
    )
}

/// Options every command shares.
struct GlobalOptions: ParsableArguments {
    @Flag(name: .shortAndLong, help: "Log details to stderr.")
    var verbose = false

    @Flag(name: .shortAndLong, help: "Log only warnings and errors; no progress.")
    var quiet = false

    @Option(help: "auto (a bar on a terminal, a line per tenth when piped), always (a bar) or never.")
    var progress: ProgressChoice = .auto

    /// Progress of one long step, as --progress and --quiet ask.
    func progress(_ label: String, logger: Logger, unit: String = "bytes") -> ByteProgress {
        let style: ByteProgress.Style
        switch (quiet, progress) {
        case (true, _), (_, .never): style = .none
        case (_, .always): style = .bar
        case (_, .auto): style = isatty(2) == 1 ? .bar : .lines
        }
        return ByteProgress(label: label, logger: logger, style: style, unit: unit)
    }

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

extension DecodeActivations.Precision: ExpressibleByArgument {}

/// The decode path's options (run, chat, bench, verify).
struct DecodeOptions: ParsableArguments {
    @Option(
        help: ArgumentHelp(
            "Decode's activations over q8/q4 weights: f32 (exact, the default) or int8 (quantized per block of 32, "
                + "as llama.cpp does: faster, results change slightly). Prefill and the vision tower keep f32."))
    var activations: DecodeActivations.Precision = .f32

    /// Applies the choice before any work starts.
    func apply() { DecodeActivations.use(activations) }
}

extension VLQ {
    /// Every subcommand's name, as typed.
    static var subcommandNames: [String] {
        configuration.subcommands.map { $0._commandName }
    }
}

/// A first argument that names no subcommand, with the nearest name when one is close: ArgumentParser
/// would otherwise read it as the root command's argument and complain about the options after it
/// ("Unknown option '-o'" for `vlq conver M -o x`).
struct UnknownSubcommand: CustomStringConvertible {
    let typed: String
    let suggestion: String?

    init?(_ arguments: [String]) {
        guard let first = arguments.first, !first.hasPrefix("-"), first != "help",
            !VLQ.subcommandNames.contains(first)
        else { return nil }
        typed = first
        suggestion = Suggestion.nearest(to: first, among: VLQ.subcommandNames)
    }

    var description: String {
        let known = VLQ.subcommandNames.joined(separator: ", ")
        if let suggestion {
            return "unknown subcommand '\(typed)'; did you mean '\(suggestion)'? (subcommands: \(known))"
        }
        return "unknown subcommand '\(typed)' (subcommands: \(known))"
    }
}
