import ArgumentParser
import Foundation
import SafeTensors
import VLQCore
import YiVL

/// Options shared by the commands that run the model.
struct ModelInput: ParsableArguments {
    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(help: "The image (PNG or JPEG).")
    var image: String?

    @Option(help: "The question about the image.")
    var prompt: String

    @Option(name: .customLong("pixel-values"), help: "A safetensors file whose tensor pixel_values [3,S,S] replaces image decoding and preprocessing.")
    var pixelValues: String?

    func validate() throws {
        guard (image == nil) != (pixelValues == nil) else { throw ValidationError("give exactly one of --image and --pixel-values") }
    }

    func pixels(for engine: YiVLEngine) throws -> [Float] {
        if let image { return try engine.pixelValues(imagePath: image) }
        let file = try SafeTensorsFile(path: pixelValues!)
        let v = engine.config.vision
        guard let info = file.info("pixel_values") else { throw VLQError(pixelValues!, "no tensor named pixel_values") }
        let expected = [v.channels, v.imageSize, v.imageSize]
        guard info.dtype == .f32, info.shape == expected || info.shape == [1] + expected else {
            throw VLQError(pixelValues!, "pixel_values is \(info.dtype.rawValue) \(info.shape), the model takes F32 \(expected)")
        }
        return Array(file.data(info).bindMemory(to: Float.self))
    }
}

struct Run: ParsableCommand {
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

    func validate() throws {
        guard temperature >= 0 else { throw ValidationError("--temperature must be >= 0") }
        guard maxTokens > 0 else { throw ValidationError("--max-tokens must be positive") }
    }

    func run() throws {
        let logger = global.makeLogger("vlq.run")
        let started = monotonicSeconds()
        let engine = try YiVLEngine.open(input.model)
        let pixels = try input.pixels(for: engine)
        logger.debug("loaded \(input.model) in \(fixed(monotonicSeconds() - started, 2)) s")
        let generation = try engine.generate(pixels: pixels, question: input.prompt,
                                             options: .init(maxTokens: maxTokens, temperature: temperature, seed: seed)) { text in
            FileHandle.standardOutput.write(Data(text.utf8))
        }
        FileHandle.standardOutput.write(Data("\n".utf8))
        let rate = Double(generation.tokenIds.count) / max(generation.decodeSeconds, 1e-9)
        logger.info("prefill \(generation.promptTokens) positions in \(fixed(generation.prefillSeconds, 2)) s; \(generation.tokenIds.count) tokens in \(fixed(generation.decodeSeconds, 2)) s (\(fixed(rate, 1)) tokens/s)")
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

    func run() throws {
        let engine = try YiVLEngine.open(input.model)
        let pixels = try input.pixels(for: engine)
        let prompt = engine.prompt(question: input.prompt)
        let stages = try engine.forward(
            .image(pixels, prompt: prompt), capture: .init(visionFeatures: true, projectorOutput: true, logitsFrom: 0))
        let c = engine.config
        let features = stages.visionFeatures.count / c.vision.hiddenSize
        var file = SafeTensorsWriter()
        file.add(.f32("pixel_values", [c.vision.channels, c.vision.imageSize, c.vision.imageSize], pixels))
        file.add(.f32("vision_features", [features, c.vision.hiddenSize], stages.visionFeatures))
        file.add(.f32("projector_output", [features, c.language.hiddenSize], stages.projectorOutput))
        file.add(.i64("input_ids", [prompt.inputIds.count], prompt.inputIds))
        file.add(.f32("logits", [stages.positions, c.language.vocabSize], stages.logits))
        file.metadata = ["producer": "vlq \(VLQVersion.string)", "model": input.model, "prompt": input.prompt]
        try file.write(to: output)
        global.makeLogger("vlq.logits").info("wrote \(output): \(stages.positions) positions x \(c.language.vocabSize) logits")
    }
}
