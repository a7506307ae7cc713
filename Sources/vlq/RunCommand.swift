import ArgumentParser
import Calibration
import Foundation
import VLQ
import VLQCore
import Verification

/// Options shared by the commands that run the model.
struct ModelInput: ParsableArguments {
    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(help: "The image (PNG or JPEG).")
    var image: String?

    @Option(help: "The question about the image.")
    var prompt: String

    @Option(
        name: .customLong("pixel-values"),
        help: "A safetensors file whose tensor pixel_values [3,S,S] replaces image decoding and preprocessing.")
    var pixelValues: String?

    func validate() throws {
        guard (image == nil) != (pixelValues == nil) else {
            throw ValidationError("give exactly one of --image and --pixel-values")
        }
    }

    var pixelSource: PixelSource { image.map { .image($0) } ?? .pixelValuesFile(pixelValues!) }
}

struct Run: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Answer a question about an image; prints only the answer on stdout.",
        discussion: "Greedy by default. Progress and timings go to stderr."
    )

    @OptionGroup var input: ModelInput

    @Option(help: "Sampling temperature; 0 is greedy.")
    var temperature: Float = 0

    @Option(help: "Seed for sampling.")
    var seed: UInt64 = 0

    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate.")
    var maxTokens: Int = 256

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        guard temperature >= 0 else { throw ValidationError("--temperature must be >= 0") }
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    }

    /// The answer comes through the library (`VLQModel.answer`), as an app's would.
    func run() async throws {
        compute.apply()
        let logger = global.makeLogger("vlq.run")
        let started = monotonicSeconds()
        let model = try VLQModel(contentsOf: input.model)
        let image = try self.image(for: model)
        logger.debug("loaded \(input.model) in \(fixed(monotonicSeconds() - started, 2)) s")
        let reply = model.answer(
            image: image, question: input.prompt,
            options: GenerationOptions(maxTokens: maxTokens, temperature: temperature, seed: seed))
        for try await piece in reply {
            FileHandle.standardOutput.write(Data(piece.utf8))
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let stats = try await reply.turn.stats
        let timing =
            "prefill \(stats.promptTokens) positions in \(fixed(stats.prefillSeconds, 2)) s; "
            + "\(stats.generatedTokens) tokens in \(fixed(stats.decodeSeconds, 2)) s "
            + "(\(fixed(stats.tokensPerSecond, 1)) tokens/s)"
        logger.info("\(timing)")
    }

    func image(for model: VLQModel) throws -> VLQImage {
        switch input.pixelSource {
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

    func run() throws {
        try OutputPath.check(output, inputs: [input.model] + [input.image, input.pixelValues].compactMap { $0 })
        compute.apply()
        let (positions, vocabulary) = try StageDump.write(
            model: LazyModel(input.model), pixels: input.pixelSource, question: input.prompt, to: output)
        global.makeLogger("vlq.logits").info("wrote \(output): \(positions) positions x \(vocabulary) logits")
    }
}
