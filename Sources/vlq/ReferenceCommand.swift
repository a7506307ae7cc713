import ArgumentParser
import Calibration
import VLQCore
import Verification

struct ReferenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reference",
        abstract: "Run the reference model over a set once and store its outputs for vlq verify (.vlqref).",
        discussion:
            "Stored: vision features, projector output, logits of the text positions, greedy answers, and the hidden "
            + "state after every layer for the first --layer-samples samples; zstd-compressed, with the set's "
            + "and the model's digests."
    )

    @Argument(help: "The reference model: a .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(help: "The evaluation set (JSONL with image, question and optionally answer).")
    var set: String

    @Option(name: .shortAndLong, help: "The .vlqref file to write.")
    var output: String

    @Option(name: .customLong("layer-samples"), help: "Samples whose per-layer hidden states are stored.")
    var layerSamples: Int = 4

    @Option(name: .customLong("max-tokens"), help: "Most tokens per greedy answer.")
    var maxTokens: Int = 64

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        try OutputPath.check(output, inputs: [model, set])
        compute.apply()
        let logger = global.makeLogger("vlq.reference")
        let evaluation = try CalibrationSet(path: set)
        let progress = global.progress("reference", logger: logger, unit: "samples")
        let run = try ReferenceRun.run(
            model: LazyModel(model), set: evaluation, layerSamples: layerSamples, maxTokens: maxTokens,
            progress: progress.update)
        try run.write(to: output)
        logger.notice("wrote \(output): \(run.samples.count) samples (set \(run.setDigest), model \(run.modelDigest))")
    }
}
