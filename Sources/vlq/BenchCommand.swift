import ArgumentParser
import Benchmarking
import Conversion
import Foundation

extension BenchEncoding: ExpressibleByArgument {}

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure the engine: decoder prefill GFLOP/s next to raw sgemm, decode time per token next "
            + "to its bandwidth limit, vision tower time, quantizing speed, peak RSS; one table per run.",
        discussion: """
            Use a model with real layer shapes, e.g. \
            `python3 tools/make_synthetic_yivl.py DIR --preset 6b --layers 4`. \
            Weights are random; only speed is measured. With --encodings bf16,int8,int4 the model (bf16: as \
            given) is quantized by round to nearest into each preset first, in $TMPDIR (removed afterwards), \
            and every encoding is measured alike. With --activations int8, decode runs with f32 and int8 \
            activations in turn (--repeats times, the best kept), and each encoding gets a second row, "a8". \
            Figures go to stdout; the markdown table comes last.
            """
    )

    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(
        help: ArgumentHelp(
            "Encodings to compare, comma-separated: bf16 (the model as given), int8, int4 (presets, rtn) "
                + "(default: the model's own).", valueName: "list"),
        transform: Bench.encodings)
    var encodings: [BenchEncoding] = []

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

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var decode: DecodeOptions

    static func encodings(_ list: String) throws -> [BenchEncoding] {
        try list.split(separator: ",").map {
            guard let encoding = BenchEncoding(rawValue: String($0)) else {
                let choices = BenchEncoding.allCases.map(\.rawValue).joined(separator: ", ")
                throw ValidationError("unknown encoding \"\($0)\" (choices: \(choices))")
            }
            return encoding
        }
    }

    func validate() throws {
        guard tokens >= 1 else { throw ValidationError("--tokens must be >= 1") }
        guard decodeTokens >= 1 else { throw ValidationError("--decode-tokens must be >= 1") }
        guard repeats >= 1 else { throw ValidationError("--repeats must be >= 1") }
    }

    func run() throws {
        compute.apply()
        decode.apply()
        var benchmark = EngineBenchmark(
            tokens: tokens, decodeTokens: decodeTokens, repeats: repeats, quantization: quantization)
        benchmark.encodings = encodings
        let logger = global.makeLogger("vlq.bench")
        benchmark.convert = { folder, output in
            _ = try Converter(options: ConvertOptions(), logger: logger).convert(folder: folder, output: output)
        }
        // Each line as soon as it is measured, even into a pipe or a file.
        try benchmark.run(model: model) {
            print($0)
            fflush(nil)
        }
    }
}
