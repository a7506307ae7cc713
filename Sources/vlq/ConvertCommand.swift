import ArgumentParser
import Conversion
import VLQCore

struct Convert: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Convert a Hugging Face Yi-VL folder into one .vlq bundle.",
        discussion: """
            Reads config.json, the LLM and projector shards, the vision tower folder named by mm_vision_tower \
            and the tokenizer; writes weights, configs, tokenizer, image preprocessing, chat template and \
            checksums into one memory-mappable file. Nothing appears at the output path unless convert succeeds.
            """
    )

    @Argument(help: "The Hugging Face model folder (holding config.json).")
    var model: String

    @Option(name: .shortAndLong, help: "The .vlq file to write.")
    var output: String

    @Option(help: "Storage type of the weights: keep (each tensor's source dtype), f32, f16 or bf16.")
    var dtype: OutputDType = .keep

    @Option(name: .customLong("vision-tower"), help: "Vision tower folder, instead of config.json's mm_vision_tower.")
    var visionTower: String?

    @Option(
        name: .customLong("metadata-compression"), help: "zstd (default) or none: how the metadata section is stored.")
    var metadataCompression: MetadataCompressionChoice = .zstd

    @OptionGroup var global: GlobalOptions

    func run() throws {
        try OutputPath.check(output, inputs: [model])
        let logger = global.makeLogger("vlq.convert")
        var options = ConvertOptions(dtype: dtype, visionTower: visionTower)
        options.compressMetadata = metadataCompression == .zstd
        let progress = global.progress("convert", logger: logger)
        let started = monotonicSeconds()
        let report = try Converter(options: options, logger: logger).convert(
            folder: model, output: output, progress: progress.update)
        let seconds = monotonicSeconds() - started
        if !report.ignoredTensors.isEmpty {
            let named = report.ignoredTensors.prefix(3).joined(separator: ", ")
            let more = report.ignoredTensors.count > 3 ? ", ..." : ""
            logger.info("skipped \(report.ignoredTensors.count) buffers that hold no weights (\(named)\(more))")
        }
        if let copy = report.inShardVision, copy.differing.isEmpty, copy.unmatched.isEmpty {
            logger.info(
                """
                the in-shard vision copy matches the vision folder within bf16 rounding (\(copy.tensors) tensors, \
                max abs difference \(copy.maxAbsDifference))
                """
            )
        }
        let rate = Double(report.sourceBytes) / max(seconds, 1e-9)
        logger.notice(
            """
            wrote \(output): \(report.tensorCount) tensors, \(formatBytes(report.outputBytes)) in \
            \(fixed(seconds, 2)) s (\(formatBytes(Int(rate)))/s read)
            """
        )
    }
}
