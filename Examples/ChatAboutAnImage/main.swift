// Asks a Yi-VL model two questions about one image and prints the answers as they stream:
//
//     swift run chat-example MODEL IMAGE [QUESTION ...]
//
// MODEL is a .vlq bundle or a Hugging Face Yi-VL folder. The questions form one conversation: the
// second is answered with the first question and answer still in the model's cache, and its prefill
// runs only its own new tokens (the stats line after each answer shows it).

import VLQ

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes to standard error through the file descriptor: C's `stderr` is a global variable, which
/// Swift 6 refuses to touch from concurrent code.
func printError(_ message: String) {
    let line = Array((message + "\n").utf8)
    _ = line.withUnsafeBytes { write(2, $0.baseAddress, $0.count) }
}

let arguments = CommandLine.arguments
guard arguments.count >= 3 else {
    printError("usage: chat-example MODEL IMAGE [QUESTION ...]")
    exit(2)
}
let questions =
    arguments.count > 3
    ? Array(arguments.dropFirst(3)) : ["Describe the image.", "What colour is the background?"]

do {
    let model = try VLQModel(contentsOf: arguments[1])
    let chat = try model.chat(image: arguments[2])
    for question in questions {
        print("Human: \(question)")
        print("Assistant: ", terminator: "")
        let reply = chat.send(question, options: GenerationOptions(maxTokens: 256))
        for try await piece in reply {
            print(piece, terminator: "")
            fflush(nil)  // every stream: pieces show as they come, even through a pipe
        }
        let stats = try await reply.turn.stats
        print("")
        print(
            "[prefill \(stats.promptTokens) new tokens (\(stats.reusedTokens) reused), "
                + "\(stats.generatedTokens) tokens generated, context \(stats.contextTokens) of \(model.contextLength)]"
        )
    }
} catch {
    printError("chat-example: \(error)")
    exit(1)
}
