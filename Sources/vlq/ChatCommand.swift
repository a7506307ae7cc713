import ArgumentParser
import Foundation
import Logging
import VLQ
import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct Chat: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Talk about an image: several questions in a row, earlier turns kept in the model's cache.",
        discussion: """
            On a terminal: type a question and the answer streams; /image PATH switches to another image, \
            /reset forgets the turns (the image stays), /help lists these, /quit or Ctrl-D ends. From a pipe \
            or file: each line of stdin is one turn (slash commands included) and each answer is one line of \
            stdout; the first failing turn ends the chat with its error (exit 2). Follow-up questions use \
            Yi-VL's multi-round template; only their new tokens are run through the model.
            """
    )

    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(name: .customLong("image"), help: "The image (PNG or JPEG) the conversation is about.")
    var images: [String] = []

    @Option(help: "A system prompt replacing the model's own.")
    var system: String?

    @OptionGroup var generation: GenerationArguments

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var decode: DecodeOptions

    func validate() throws {
        guard images.count == 1 else { throw ValidationError("give one --image (/image PATH switches later)") }
        if images[0] == "-" { throw ValidationError("--image - cannot be used with chat: stdin carries the turns") }
        if let system, system.allSatisfy(\.isWhitespace) { throw ValidationError("--system is empty") }
    }

    func run() async throws {
        compute.apply()
        decode.apply()
        let logger = global.makeLogger("vlq.chat")
        let interactive = isatty(0) == 1
        let opened = try VLQModel(contentsOf: model)
        var state = ChatState(model: opened, image: images[0], chat: try opened.chat(image: images[0], system: system))
        if interactive {
            writeToStandardError("vlq chat: \(model), image \(images[0]); /help for commands, /quit to end\n")
        }
        while true {
            if interactive { writeToStandardError("> ") }
            guard let line = readLine(strippingNewline: true) else { break }
            let text = line.trimmingCharacters(in: .whitespaces)
            if text.isEmpty { continue }
            do {
                if text.hasPrefix("/") {
                    guard try await command(text, &state, logger: logger) else { break }
                } else {
                    try await answer(text, state, logger: logger)
                }
            } catch let error as VLQError where interactive {
                // At a terminal a failed turn is said and the chat goes on; a script stops at it.
                printError(errorLine(error))
            }
        }
    }

    /// The chat and what it is about.
    struct ChatState {
        let model: VLQModel
        var image: String
        var chat: ChatSession
    }

    /// Runs a slash command; false ends the chat.
    func command(_ text: String, _ state: inout ChatState, logger: Logger) async throws -> Bool {
        let parts = text.split(separator: " ", maxSplits: 1).map(String.init)
        let argument = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : ""
        switch parts[0] {
        case "/quit", "/exit", "/bye":
            return false
        case "/reset":
            // The system prompt and the image stay in the cache: the next question runs only its own tokens.
            await state.chat.reset()
            logger.info("turns forgotten; still about \(state.image)")
        case "/image" where !argument.isEmpty:
            state.chat = try state.model.chat(image: argument, system: system)
            state.image = argument
            logger.info("now about \(argument); earlier turns forgotten")
        case "/help":
            writeToStandardError(
                "/image PATH  talk about another image\n/reset       forget the turns\n/quit        end\n")
        default:
            let known = ["/image", "/reset", "/help", "/quit"]
            let hint = Suggestion.nearest(to: parts[0], among: known).map { "; did you mean \($0)?" } ?? ""
            throw VLQError(
                CoreError.cannotRead, "stdin", "unknown chat command \(parts[0])\(hint) (/image PATH, /reset, /quit)")
        }
        return true
    }

    /// Streams one answer to stdout, then one line of what the turn cost on stderr.
    func answer(_ question: String, _ state: ChatState, logger: Logger) async throws {
        let reply = state.chat.send(question, options: generation.options())
        for try await piece in reply { FileHandle.standardOutput.write(Data(piece.utf8)) }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let turn = try await reply.turn
        let stats = turn.stats
        let line =
            "turn: \(stats.reusedTokens) positions reused from the cache, \(stats.promptTokens) prefilled in "
            + "\(fixed(stats.prefillSeconds, 2)) s; \(stats.generatedTokens) tokens at "
            + "\(fixed(stats.tokensPerSecond, 1)) tokens/s; context \(stats.contextTokens) of "
            + "\(state.model.contextLength)"
        logger.info("\(line)")
        if turn.finish == .contextFull {
            logger.warning(
                "the conversation reached the model's context (\(state.model.contextLength) positions): /reset")
        }
    }
}
