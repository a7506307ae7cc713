import ArgumentParser
import Benchmarking

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the engine: decoder prefill GFLOP/s next to raw sgemm, vision tower time, "
            + "decode tokens/s, peak RSS.",
        discussion: """
            Use a model with real layer shapes, e.g. \
            `python3 tools/make_synthetic_yivl.py DIR --preset 6b --layers 4`. \
            Weights are random; only speed is measured. Figures go to stdout.
            """
    )

    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(help: "Prompt length for the prefill measurement.")
    var tokens: Int = 512

    @Option(name: .customLong("decode-tokens"), help: "Tokens to decode after the prefill.")
    var decodeTokens: Int = 16

    @Option(help: "Repetitions of each measurement; the best is reported.")
    var repeats: Int = 2

    @Flag(
        help: ArgumentHelp(
            "Also measure calibration overhead (statistics at every Linear input) "
                + "and GPTQ / RTN time per decoder layer."))
    var quantization = false

    @OptionGroup var compute: ComputeOptions

    func run() throws {
        compute.apply()
        let benchmark = EngineBenchmark(
            tokens: tokens, decodeTokens: decodeTokens, repeats: repeats, quantization: quantization)
        try benchmark.run(model: model) { print($0) }
    }
}
