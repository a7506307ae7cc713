import ArgumentParser
import CBLAS
import Calibration
import Numerics
import Quantization
import VLQCore
import VLQFormat
import YiVL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract:
            "Measure the engine: decoder prefill GFLOP/s next to raw sgemm, vision tower time, decode tokens/s, peak RSS.",
        discussion: """
            Use a model with real layer shapes, e.g. `python3 tools/make_synthetic_yivl.py DIR --preset 6b --layers 4`. \
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
        help:
            "Also measure calibration overhead (statistics at every Linear input) and GPTQ / RTN time per decoder layer."
    )
    var quantization = false

    func run() throws {
        let engine = try YiVLEngine.open(model)
        let c = engine.config, l = c.language
        print("model: \(model)")
        print(
            "shapes: language \(l.layers) layers x \(l.hiddenSize) (ffn \(l.intermediateSize), \(l.heads)/\(l.kvHeads) heads), vision \(c.vision.selectedHiddenState) of \(c.vision.layers) layers x \(c.vision.hiddenSize) at \(c.vision.imageSize) px; OpenBLAS threads \(openblas_get_num_threads())"
        )

        // Raw sgemm at the decoder's largest shape: [tokens, hidden] x [hidden, ffn].
        let a = FloatBuffer(randomValues(tokens * l.hiddenSize)),
            b = FloatBuffer(randomValues(l.intermediateSize * l.hiddenSize))
        let out = FloatBuffer(tokens * l.intermediateSize)
        let sgemmSeconds = best(repeats + 1) {
            Kernels.linear(
                a.pointer, rows: tokens, inputs: l.hiddenSize, weight: b.pointer, outputs: l.intermediateSize,
                bias: nil, into: out.pointer)
        }
        let sgemmRate = 2 * Double(tokens * l.hiddenSize * l.intermediateSize) / sgemmSeconds / 1e9
        print(
            "sgemm [\(tokens)x\(l.hiddenSize)] x [\(l.hiddenSize)x\(l.intermediateSize)]: \(fixed(sgemmRate, 1)) GFLOP/s"
        )

        // Decoder prefill; the first run also upcasts bf16 weights into the cache.
        let embeddings = randomValues(tokens * l.hiddenSize)
        let linearParameters =
            l.hiddenSize * (2 * l.heads * l.headDim + 2 * l.kvHeads * l.headDim) + 3 * l.hiddenSize * l.intermediateSize
        let flops =
            Double(l.layers)
            * (2 * Double(tokens) * Double(linearParameters) + 4 * Double(tokens * tokens * l.heads * l.headDim))
        var cold = 0.0
        let prefillSeconds = try bestThrowing(repeats + 1) { first in
            let started = monotonicSeconds()
            _ = try engine.forward(.embeddings(embeddings, reserving: decodeTokens))
            if first { cold = monotonicSeconds() - started }
        }
        let prefillRate = flops / prefillSeconds / 1e9
        print(
            "prefill \(tokens) tokens through \(l.layers) decoder layers: \(fixed(prefillSeconds, 3)) s = \(fixed(prefillRate, 1)) GFLOP/s = \(fixed(100 * prefillRate / sgemmRate, 0))% of sgemm (first run, with bf16 upcast: \(fixed(cold, 3)) s)"
        )

        // Decode: one token at a time after the prefill, logits included.
        let cache = try engine.forward(.embeddings(embeddings, reserving: decodeTokens)).cache
        let started = monotonicSeconds()
        for _ in 0..<decodeTokens {
            _ = try engine.forward(.tokens([1], continuing: cache), capture: .init(lastLogits: true))
        }
        let perToken = (monotonicSeconds() - started) / Double(decodeTokens)
        print(
            "decode after \(tokens) tokens: \(fixed(1 / perToken, 2)) tokens/s (\(fixed(perToken * 1000, 1)) ms/token, \(l.layers) layers + lm_head)"
        )

        // Vision tower on one image.
        let pixels = randomValues(c.vision.channels * c.vision.imageSize * c.vision.imageSize)
        let visionSeconds = try bestThrowing(repeats) { _ in _ = try engine.forward(.pixels(pixels)) }
        print(
            "vision tower, one \(c.vision.imageSize) px image (\(c.vision.selectedHiddenState) layers, \(c.vision.patchCount + 1) positions): \(fixed(visionSeconds, 3)) s"
        )

        if quantization { try benchQuantization(engine, pixels: pixels, embeddings: embeddings) }

        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        print("peak RSS: \(usage.ru_maxrss / 1024) MiB")
    }

    /// One sample's forward (vision tower, projector, decoder prefill) plain, with diagonal statistics
    /// (imatrix), and with X^T X on the decoder (gptq, awq); then RTN and GPTQ on decoder layer 0.
    func benchQuantization(_ engine: YiVLEngine, pixels: [Float], embeddings: [Float]) throws {
        let c = engine.config
        func forward(_ observer: LinearInputObserver?) throws {
            _ = try engine.forward(.pixels(pixels), capture: .init(projectorOutput: true, observer: observer))
            _ = try engine.forward(.embeddings(embeddings), capture: .init(observer: observer))
        }
        let plain = try bestThrowing(repeats) { _ in try forward(nil) }
        let diagonal = StatisticsCollector(definition: engine.model.definition, withGram: false)
        let withDiagonal = try bestThrowing(repeats) { _ in try forward(diagonal) }
        print(
            "calibration, one sample (\(c.vision.patchCount + 1) vision positions, \(tokens) decoder tokens): forward \(fixed(plain, 2)) s; with E[x], E[x^2] statistics \(fixed(withDiagonal, 2)) s (+\(fixed(100 * (withDiagonal / plain - 1), 1))%)"
        )
        let gram = StatisticsCollector(definition: engine.model.definition, withGram: true)
        let decoderOnly = try bestThrowing(2) { _ in
            _ = try engine.forward(.embeddings(embeddings), capture: .init(observer: gram))
        }
        let decoderPlain = try bestThrowing(repeats) { _ in _ = try engine.forward(.embeddings(embeddings)) }
        print(
            "decoder prefill with X^T X statistics (gptq, awq): \(fixed(decoderOnly, 2)) s vs \(fixed(decoderPlain, 2)) s plain (+\(fixed(100 * (decoderOnly / decoderPlain - 1), 1))%)"
        )

        let definition = engine.model.definition
        let layer = definition.language.layers[0]
        var parameters = 0
        var rtnSeconds: [TensorEncoding: Double] = [:]
        var gptqSeconds = 0.0
        for linear in layer.linears {
            let name = definition.name(linear.weight)
            let w = engine.model.weights.floats(linear.weight), shape = engine.model.weights.shape(linear.weight)
            parameters += w.count
            for encoding in [TensorEncoding.q8, .q4] {
                let t = monotonicSeconds()
                _ = MatrixQuantizer.roundToNearest(
                    w, rows: shape[0], columns: shape[1], encoding: encoding, groupSize: 128)
                rtnSeconds[encoding, default: 0] += monotonicSeconds() - t
            }
            guard let stats = gram.statistics(for: name), let g = stats.gram else { continue }
            let t = monotonicSeconds()
            _ = try GPTQ().quantize(w, rows: shape[0], columns: shape[1], encoding: .q4, groupSize: 128, gram: g)
            gptqSeconds += monotonicSeconds() - t
        }
        print(
            "decoder layer 0 (\(parameters / 1_000_000)M weights): RTN int8 \(fixed(rtnSeconds[.q8]!, 2)) s = \(fixed(Double(parameters) / rtnSeconds[.q8]! / 1e6, 1))M weights/s; RTN int4 \(fixed(rtnSeconds[.q4]!, 2)) s = \(fixed(Double(parameters) / rtnSeconds[.q4]! / 1e6, 1))M weights/s; GPTQ int4 g128 \(fixed(gptqSeconds, 1)) s per layer"
        )
    }

    func randomValues(_ n: Int) -> [Float] {
        var random = SplitMix64(seed: 42)
        return (0..<n).map { _ in Float(random.nextDouble() * 2 - 1) * 0.5 }
    }

    func best(_ n: Int, _ body: () -> Void) -> Double {
        (0..<n).map { _ in
            let t = monotonicSeconds()
            body()
            return monotonicSeconds() - t
        }.min()!
    }

    func bestThrowing(_ n: Int, _ body: (Bool) throws -> Void) throws -> Double {
        var times: [Double] = []
        for i in 0..<n {
            let t = monotonicSeconds()
            try body(i == 0)
            times.append(monotonicSeconds() - t)
        }
        return (n > 1 ? Array(times.dropFirst()) : times).min()!
    }
}
