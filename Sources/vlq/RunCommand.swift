import ArgumentParser
import Calibration
import Foundation
import Logging
import VLQ
import VLQCore
import Verification

/// How answers are generated (run, chat).
struct GenerationArguments: ParsableArguments {
    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(help: "Seed for sampling.")
    var seed: UInt64 = 0

    @Option(name: .customLong("max-tokens"), help: "Most tokens per answer.")
    var maxTokens: Int = 256

    func validate() throws {
        guard temperature >= 0 else { throw ValidationError("--temperature must be >= 0") }
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    }

    /// The library's options, with `maxTokens` when the context leaves fewer than asked.
    func options(maxTokens tokens: Int? = nil) -> GenerationOptions {
        GenerationOptions(maxTokens: tokens ?? maxTokens, temperature: temperature, seed: seed)
    }
}

/// Options shared by the commands that run the model.
struct ModelInput: ParsableArguments {
    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(name: .customLong("image"), help: "The image (PNG or JPEG); - reads it from stdin (vlq run).")
    var images: [String] = []

    @Option(help: "The question about the image; - reads it from stdin.")
    var prompt: String

    @Option(
        name: .customLong("pixel-values"),
        help: "A safetensors file whose tensor pixel_values [3,S,S] replaces image decoding and preprocessing.")
    var pixelValues: String?

    /// One image per question: a second --image would otherwise silently replace the first.
    var image: String? { images.first }

    func validate() throws {
        guard images.count <= 1 else {
            throw ValidationError("give one --image (vlq chat switches images with /image)")
        }
        guard (image == nil) != (pixelValues == nil) else {
            throw ValidationError("give exactly one of --image and --pixel-values")
        }
        guard !prompt.allSatisfy(\.isWhitespace) else { throw ValidationError("--prompt is empty") }
        if image == "-" && prompt == "-" { throw ValidationError("only one of --image and --prompt can read stdin") }
    }

    /// The most bytes `--image -` reads: far above any photograph, small enough to hold.
    static let stdinImageLimit = 256 << 20

    /// `--image -`: the encoded image on stdin.
    func imageFromStandardInput() throws -> [UInt8] {
        var bytes: [UInt8] = []
        while let chunk = try FileHandle.standardInput.read(upToCount: 1 << 20), !chunk.isEmpty {
            bytes += chunk
            guard bytes.count <= Self.stdinImageLimit else {
                throw VLQError(CoreError.cannotRead, "stdin", "the image (--image -) is over 256 MiB")
            }
        }
        return bytes
    }

    /// The question: `--prompt -` reads all of stdin (a trailing newline dropped).
    func question() throws -> String {
        guard prompt == "-" else { return prompt }
        let text = String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self)
        let question = text.hasSuffix("\n") ? String(text.dropLast()) : text
        guard !question.allSatisfy(\.isWhitespace) else {
            throw VLQError(CoreError.cannotRead, "stdin", "the question (--prompt -) is empty")
        }
        return question
    }

    var pixelSource: PixelSource { image.map { .image($0) } ?? .pixelValuesFile(pixelValues!) }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Answer a question about an image; prints only the answer on stdout.",
        discussion: "Greedy by default. Progress and timings go to stderr."
    )

    @OptionGroup var input: ModelInput

    @OptionGroup var generation: GenerationArguments

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var decode: DecodeOptions

    /// The answer comes through the library (`VLQModel.answer`), as an app's would.
    func run() async throws {
        compute.apply()
        decode.apply()
        let logger = global.makeLogger("vlq.run")
        let started = monotonicSeconds()
        let question = try input.question()
        let model = try VLQModel(contentsOf: input.model)
        let image = try self.image(for: model)
        logger.debug("loaded \(input.model) in \(fixed(monotonicSeconds() - started, 2)) s")
        let tokens = try answerLength(model, question: question, logger: logger)
        let reply = model.answer(
            image: image, question: question,
            options: generation.options(maxTokens: tokens))
        for try await piece in reply {
            FileHandle.standardOutput.write(Data(piece.utf8))
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let turn = try await reply.turn
        if turn.finish == .contextFull {
            logger.warning("the answer stopped at the model's context (\(model.contextLength) positions)")
        }
        let stats = turn.stats
        let timing =
            "prefill \(stats.promptTokens) positions in \(fixed(stats.prefillSeconds, 2)) s; "
            + "\(stats.generatedTokens) tokens in \(fixed(stats.decodeSeconds, 2)) s "
            + "(\(fixed(stats.tokensPerSecond, 1)) tokens/s)"
        logger.info("\(timing)")
    }

    /// --max-tokens, clipped (with a warning) to what the model's context leaves after the prompt; a prompt
    /// that leaves no room is refused before the image is even encoded.
    func answerLength(_ model: VLQModel, question: String, logger: Logging.Logger) throws -> Int {
        let positions = model.promptLength(question: question), context = model.contextLength
        let maxTokens = generation.maxTokens
        guard positions < context else {
            throw VLQError(
                ModelError.contextExceeded, input.model,
                "the prompt takes \(positions) positions (image and question) and the model's context is \(context)"
                    + ": shorten the question")
        }
        guard maxTokens > context - positions else { return maxTokens }
        let clipped =
            "--max-tokens \(maxTokens) clipped to \(context - positions): the prompt takes \(positions) of the model's "
            + "\(context) positions"
        logger.warning("\(clipped)")
        return context - positions
    }

    func image(for model: VLQModel) throws -> VLQImage {
        switch input.pixelSource {
        case .image("-"):
            return VLQImage(encoded: try input.imageFromStandardInput(), name: "stdin")
        case .image(let path):
            return VLQImage(contentsOf: path)
        case .pixelValuesFile(let path):
            let side = model.imageSize
            return VLQImage(pixelValues: try PixelSource.readPixelValues(path, shape: [3, side, side]))
        }
    }
}

struct Logits: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Write every stage's output for one image and prompt to a safetensors file.",
        discussion: """
            Tensors: pixel_values [3,S,S], vision_features [P,Dv], projector_output [P,H], input_ids [T] (i64, -200 \
            where the image features go) and logits [T-1+P, V] over every position of the spliced sequence: \
            the layout of tools/transformers_reference.py, so the two can be compared.
            """
    )

    @OptionGroup var input: ModelInput

    @Option(name: .shortAndLong, help: "The safetensors file to write.")
    var output: String

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if input.image == "-" { throw ValidationError("--image - is for vlq run; logits takes a file") }
    }

    func run() throws {
        try OutputPath.check(output, inputs: [input.model] + [input.image, input.pixelValues].compactMap { $0 })
        compute.apply()
        let (positions, vocabulary) = try StageDump.write(
            model: LazyModel(input.model), pixels: input.pixelSource, question: try input.question(), to: output)
        global.makeLogger("vlq.logits").info("wrote \(output): \(positions) positions x \(vocabulary) logits")
    }
}
