import CBLAS
import Calibration
import Foundation
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

/// The engine's speed on one model (`vlq bench`): decoder prefill GFLOP/s next to raw sgemm, vision
/// tower time, decode time per token next to its bandwidth limit, peak RSS; for each encoding asked for,
/// quantized from the model first (timed) and measured alike, then one table of every encoding; and
/// optionally the cost of calibration statistics and of quantizing one decoder layer. Weights may be
/// random: only speed is measured.
public struct EngineBenchmark {
    /// Prompt length for the prefill measurement.
    public var tokens: Int
    /// Tokens decoded after the prefill.
    public var decodeTokens: Int
    /// Repetitions of each measurement; the best is reported.
    public var repeats: Int
    /// Also measure calibration overhead and GPTQ / RTN time per decoder layer.
    public var quantization: Bool
    /// The encodings to compare; empty: the model as given only.
    public var encodings: [BenchEncoding] = []
    /// Where the quantized bundles (and a converted Hugging Face folder) are written, one at a time, and
    /// removed afterwards.
    public var temporaryDirectory = ProcessInfo.processInfo.environment["TMPDIR"] ?? "/tmp"
    /// Converts a Hugging Face folder into a bundle: needed to quantize a model given as a folder.
    public var convert: ((_ folder: String, _ output: String) throws -> Void)?

    public init(tokens: Int = 512, decodeTokens: Int = 16, repeats: Int = 2, quantization: Bool = false) {
        self.tokens = tokens
        self.decodeTokens = decodeTokens
        self.repeats = repeats
        self.quantization = quantization
    }

    /// Measures the model at `path` in each encoding; each line of figures goes to `report` as soon as it
    /// is measured, the table last. Returns the table.
    @discardableResult
    public func run(model path: String, report: (String) -> Void) throws -> BenchTable {
        let given = try GivenModel(path)
        let variants = try plan(given)
        // Measured before any model is loaded, so that its buffer never adds to a peak RSS reported.
        let bandwidth = MemoryBandwidth.measureRead(bytes: 256 << 20)
        report("model: \(path): \(given.description)")
        report(shapes(given.config))
        let sgemmRate = measureSgemm(given.config.language, report: report)
        let workspace = try BenchWorkspace(in: temporaryDirectory)
        defer { workspace.remove() }
        let machine = Machine(bandwidth: bandwidth, sgemmRate: sgemmRate)
        var rows: [BenchRow] = []
        for variant in variants {
            rows += try measure(variant, of: given, in: workspace, machine: machine, report: report)
        }
        var quantizers: String?
        if quantization {
            let engine = try YiVLEngine.open(path)
            let gram = try measureCalibration(
                engine, pixels: pixels(engine.config), embeddings: embeddings(engine.config), report: report)
            quantizers = try measureQuantizers(engine, gram: gram, report: report)
        }
        let table = BenchTable(rows: rows)
        report("")
        report(table.markdown)
        report("")
        report(
            "read bandwidth (256 MiB buffer, at the start) \(fixed(bandwidth / 1e9, 1)) GB/s (decode limits of "
                + "64 MiB and more: the step's own weights read next to it); sgemm \(fixed(sgemmRate, 1)) GFLOP/s; "
                + "OpenBLAS threads \(openblas_get_num_threads()); \(PeakMemory.peak().source.phrase)")
        if let quantizers { report(quantizers) }
        return table
    }

    /// The machine's own limits, measured once.
    struct Machine {
        var bandwidth: Double
        var sgemmRate: Double
    }

    /// What each row measures, checked before any work: encodings other than the model's own are
    /// quantized from it, which an already quantized model cannot be.
    func plan(_ given: GivenModel) throws -> [GivenModel.Variant] {
        var seen: Set<BenchEncoding> = []
        let asked = encodings.filter { seen.insert($0).inserted }
        guard !asked.isEmpty else { return [.given] }
        return try asked.map { encoding in
            if encoding == given.own { return .given }
            guard !given.isQuantized else {
                throw VLQError(
                    QuantizationError.alreadyQuantized, given.path,
                    "is already quantized (\(given.label)): bench quantizes \(encoding.rawValue) only from an "
                        + "unquantized model")
            }
            if given.isFolder && convert == nil {
                throw VLQError(
                    CoreError.cannotOpen, given.path, "a Hugging Face folder must be converted to be quantized")
            }
            return .quantized(encoding)
        }
    }

    func shapes(_ c: EngineConfig) -> String {
        let l = c.language
        return "shapes: language \(l.layers) layers x \(l.hiddenSize) (ffn \(l.intermediateSize), "
            + "\(l.heads)/\(l.kvHeads) heads), vision \(c.vision.selectedHiddenState) of \(c.vision.layers) layers x "
            + "\(c.vision.hiddenSize) at \(c.vision.imageSize) px; OpenBLAS threads \(openblas_get_num_threads())"
    }

    /// One row: the model as given, or quantized from it into the workspace first (timed, removed after).
    func measure(
        _ variant: GivenModel.Variant, of given: GivenModel, in workspace: BenchWorkspace, machine: Machine,
        report: (String) -> Void
    ) throws -> [BenchRow] {
        var path = given.path, label = given.label, encoding = given.own
        var quantizeRate: Double?
        if case .quantized(let chosen) = variant {
            let source = try workspace.source(given, convert: convert, report: report)
            (path, label, encoding) = (workspace.path + "/\(chosen.rawValue).vlq", chosen.rawValue, chosen)
            quantizeRate = try quantize(source, preset: chosen.rawValue, into: path, report: report)
        }
        defer { if path != given.path { workspace.remove(path) } }
        // The peak RSS of running the bundle, not of quantizing it.
        PeakMemory.reset()
        report("\(label):")
        let engine = try YiVLEngine.open(path)
        let embeddings = embeddings(engine.config)
        let prefill = try measurePrefill(engine, embeddings: embeddings, sgemmRate: machine.sgemmRate, report: report)
        let (decode, int8Decode) = try measureDecodes(
            engine, embeddings: embeddings, bandwidth: machine.bandwidth, report: report)
        if let line = try slicedLogitsDifference(engine, embeddings: embeddings) { report(line) }
        let vision = try measureVision(engine, pixels: pixels(engine.config), report: report)
        let peak = PeakMemory.peak()
        report("peak RSS: \(peak.bytes >> 20) MiB")
        let row = BenchRow(
            encoding: encoding, label: label,
            bundleBytes: given.isFolder && path == given.path
                ? given.storedBytes : fileSize(path),
            tokens: tokens, prefillSeconds: prefill.seconds, prefillGFLOPs: prefill.rate,
            sgemmGFLOPs: machine.sgemmRate, decodeSecondsPerToken: decode.perToken,
            decodeLimitSeconds: decode.limit, visionSeconds: vision, quantizeWeightsPerSecond: quantizeRate,
            peakResidentBytes: peak.bytes)
        guard let int8Decode else { return [row] }
        // Prefill and the vision tower keep f32 activations: only decode differs in the "a8" row.
        var int8Row = row
        int8Row.label += " a8"
        int8Row.decodeSecondsPerToken = int8Decode.perToken
        // Each decode has the limit measured next to it: the memory's speed drifts between the two.
        int8Row.decodeLimitSeconds = int8Decode.limit
        return [row, int8Row]
    }

    /// Decode as `measureDecode`; with `--activations int8` on f32 and int8 activations in turn, `repeats`
    /// times each, the best of each kept: alternating in one process compares them under the same load.
    func measureDecodes(
        _ engine: YiVLEngine, embeddings: [Float], bandwidth: Double, report: (String) -> Void
    ) throws -> (f32: (perToken: Double, limit: Double), int8: (perToken: Double, limit: Double)?) {
        guard DecodeActivations.precision == .int8 else {
            return (try measureDecode(engine, embeddings: embeddings, bandwidth: bandwidth, report: report), nil)
        }
        defer { DecodeActivations.use(.int8) }
        var best: [DecodeActivations.Precision: (perToken: Double, limit: Double)] = [:]
        for _ in 0..<repeats {
            for precision in [DecodeActivations.Precision.f32, .int8] {
                DecodeActivations.use(precision)
                report("\(precision.rawValue) activations:")
                let d = try measureDecode(engine, embeddings: embeddings, bandwidth: bandwidth, report: report)
                if d.perToken < best[precision]?.perToken ?? .infinity { best[precision] = d }
            }
        }
        return (best[.f32]!, best[.int8]!)
    }

    /// `vlq quantize --preset` through the library, round to nearest. Returns quantized weights per second.
    func quantize(_ source: String, preset: String, into output: String, report: (String) -> Void) throws -> Double {
        PeakMemory.reset()
        let started = monotonicSeconds()
        let bundle = try VLQFile(path: source)
        let pipeline = QuantizePipeline(options: QuantizePipeline.Options(recipe: Recipe.preset(preset)!))
        try pipeline.preflight(source: bundle)
        let written = try pipeline.run(source: bundle, output: output, statistics: nil, calibrationSource: nil)
        let seconds = monotonicSeconds() - started
        let quantized = try VLQFile(path: output).tensors.filter(\.encoding.isQuantized)
            .reduce(0) { $0 + $1.shape.reduce(1, *) }
        let rate = Double(quantized) / seconds
        report(
            "quantize \(preset) (rtn): \(written.quantized) of \(written.tensors) tensors, \(quantized / 1_000_000)M "
                + "weights in \(fixed(seconds, 2)) s = \(fixed(rate / 1e6, 1))M weights/s; "
                + "\(formatBytes(written.outputBytes)); peak RSS \(PeakMemory.peak().bytes >> 20) MiB")
        return rate
    }

    func fileSize(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    func embeddings(_ c: EngineConfig) -> [Float] { randomValues(tokens * c.language.hiddenSize) }

    func pixels(_ c: EngineConfig) -> [Float] {
        randomValues(c.vision.channels * c.vision.imageSize * c.vision.imageSize)
    }

    /// Raw sgemm at the decoder's largest shape: [tokens, hidden] x [hidden, ffn]. Returns GFLOP/s.
    func measureSgemm(_ l: EngineConfig.Language, report: (String) -> Void) -> Double {
        let a = FloatBuffer(randomValues(tokens * l.hiddenSize)),
            b = FloatBuffer(randomValues(l.intermediateSize * l.hiddenSize))
        let out = FloatBuffer(tokens * l.intermediateSize)
        let sgemmSeconds = best(repeats + 1) {
            Kernels.linear(
                a.pointer, rows: tokens, inputs: l.hiddenSize, weight: b.pointer, outputs: l.intermediateSize,
                bias: nil, into: out.pointer)
        }
        let sgemmRate = 2 * Double(tokens * l.hiddenSize * l.intermediateSize) / sgemmSeconds / 1e9
        report(
            "sgemm [\(tokens)x\(l.hiddenSize)] x [\(l.hiddenSize)x\(l.intermediateSize)]: "
                + "\(fixed(sgemmRate, 1)) GFLOP/s")
        return sgemmRate
    }

    /// Decoder prefill; the first run also faults the weights in from the file (the cold figure).
    func measurePrefill(
        _ engine: YiVLEngine, embeddings: [Float], sgemmRate: Double, report: (String) -> Void
    ) throws -> (seconds: Double, rate: Double) {
        let l = engine.config.language
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
        report(
            "prefill \(tokens) tokens through \(l.layers) decoder layers: \(fixed(prefillSeconds, 3)) s = "
                + "\(fixed(prefillRate, 1)) GFLOP/s = \(fixed(100 * prefillRate / sgemmRate, 0))% of sgemm "
                + "(first run, reading the weights from the file: \(fixed(cold, 3)) s)")
        return (prefillSeconds, prefillRate)
    }

    /// Decode steps reading at least this many bytes get a limit measured on their own weights.
    static let adjacentBandwidthBytes = 64 << 20

    /// Decode: one token at a time after the prefill, logits included; next to its limit, the bytes of
    /// weights a step reads (as stored) over the read `bandwidth`.
    func measureDecode(
        _ engine: YiVLEngine, embeddings: [Float], bandwidth: Double, report: (String) -> Void
    ) throws -> (perToken: Double, limit: Double) {
        let cache = try engine.forward(.embeddings(embeddings, reserving: decodeTokens)).cache
        // The token embedding table is upcast on its first use: a throwaway step does that before the
        // timing starts, as a real answer's prompt does before its decode.
        _ = try engine.forward(.tokens([1]))
        // The limit a step that reads its weights once, as stored, could reach on this machine: the step's
        // own bytes read on every core just before and just after the steps (the faster of the two), since
        // this machine's memory speed drifts by a third over minutes and a figure taken once at the start
        // made the ratio follow the drift rather than the kernels.
        let weights = engine.model.weights
        let regions = Set(weights.definition.language.decodeStepTensors).map { weights.storedRegion($0) }
        let stepBytes = regions.reduce(0) { $0 + $1.count }
        // Steps that fit in the caches (the tiny model's) would measure the caches and the call overhead
        // instead: those keep the 256 MiB buffer's figure.
        let adjacent = stepBytes >= Self.adjacentBandwidthBytes
        let before = adjacent ? MemoryBandwidth.measureRead(regions: regions) : bandwidth
        let started = monotonicSeconds()
        for _ in 0..<decodeTokens {
            _ = try engine.forward(.tokens([1], continuing: cache), capture: .init(lastLogits: true))
        }
        let perToken = (monotonicSeconds() - started) / Double(decodeTokens)
        let stepBandwidth = adjacent ? max(before, MemoryBandwidth.measureRead(regions: regions)) : bandwidth
        report(
            "decode after \(tokens) tokens: \(fixed(1 / perToken, 2)) tokens/s (\(fixed(perToken * 1000, 1)) ms/token, "
                + "\(engine.config.language.layers) layers + lm_head)")
        let limit = Double(stepBytes) / stepBandwidth
        report(
            "decode limit: \(formatBytes(stepBytes)) of weights per token as stored / their read bandwidth "
                + "\(fixed(stepBandwidth / 1e9, 1)) GB/s (the 256 MiB buffer at the start: "
                + "\(fixed(bandwidth / 1e9, 1)) GB/s) = \(fixed(limit * 1000, 1)) ms/token; measured "
                + "\(fixed(100 * limit / perToken, 0))% of the limit")
        return (perToken, limit)
    }

    /// Where q4 products run on sliced activations (DecodeKernels.slices), what that does to a decode
    /// step's logits, once per bundle: the same step after a 16-token prefill with f32 activations, with the
    /// sliced and then the float q4 kernel, as the largest difference next to the largest logit. Nil where
    /// no product of the step slices.
    func slicedLogitsDifference(_ engine: YiVLEngine, embeddings: [Float]) throws -> String? {
        let weights = engine.model.weights
        let sliced = weights.definition.language.decodeStepTensors.contains {
            weights.quantizedLayout($0).map(DecodeKernels.slices) ?? false
        }
        guard sliced else { return nil }
        let precision = DecodeActivations.precision
        DecodeActivations.use(.f32)
        defer { DecodeActivations.use(precision) }
        let prompt = Array(embeddings.prefix(16 * engine.config.language.hiddenSize))
        func step() throws -> [Float] {
            let cache = try engine.forward(.embeddings(prompt, reserving: 1)).cache
            return try engine.forward(.tokens([1], continuing: cache), capture: .init(lastLogits: true)).lastLogits
        }
        let withSlices = try step()
        DecodeKernels.allowSlicedActivations(false)
        defer { DecodeKernels.allowSlicedActivations(true) }
        let withFloats = try step()
        // For scale, what float summation order alone moves: the AVX2 float kernels against the AVX-512 ones.
        DecodeKernels.allowAVX512(false)
        let withAVX2 = try step()
        DecodeKernels.allowAVX512(true)
        func largestDifference(_ a: [Float], _ b: [Float]) -> String {
            String(format: "%.2e", zip(a, b).map { abs($0 - $1) }.max() ?? 0)
        }
        let largest = withFloats.map(abs).max() ?? 0
        return "q4 products on sliced activations (AVX-512 VNNI): a decode step's logits within "
            + "\(largestDifference(withSlices, withFloats)) of the float kernel's (AVX2 float kernels: within "
            + "\(largestDifference(withAVX2, withFloats)); largest |logit| \(fixed(Double(largest), 2)))"
    }

    /// The vision tower on one image.
    func measureVision(_ engine: YiVLEngine, pixels: [Float], report: (String) -> Void) throws -> Double {
        let v = engine.config.vision
        let visionSeconds = try bestThrowing(repeats) { _ in _ = try engine.forward(.pixels(pixels)) }
        report(
            "vision tower, one \(v.imageSize) px image (\(v.selectedHiddenState) layers, "
                + "\(v.patchCount + 1) positions): \(fixed(visionSeconds, 3)) s")
        return visionSeconds
    }

    /// One sample's forward (vision tower, projector, decoder prefill) plain, with diagonal statistics
    /// (imatrix), and the decoder prefill with X^T X (gptq, awq). Returns the X^T X statistics.
    func measureCalibration(
        _ engine: YiVLEngine, pixels: [Float], embeddings: [Float], report: (String) -> Void
    ) throws -> StatisticsCollector {
        let c = engine.config
        func forward(_ observer: LinearInputObserver?) throws {
            _ = try engine.forward(.pixels(pixels), capture: .init(projectorOutput: true, observer: observer))
            _ = try engine.forward(.embeddings(embeddings), capture: .init(observer: observer))
        }
        let plain = try bestThrowing(repeats) { _ in try forward(nil) }
        let diagonal = StatisticsCollector(definition: engine.model.definition, withGram: false)
        let withDiagonal = try bestThrowing(repeats) { _ in try forward(diagonal) }
        report(
            "calibration, one sample (\(c.vision.patchCount + 1) vision positions, \(tokens) decoder tokens): "
                + "forward \(fixed(plain, 2)) s; with E[x], E[x^2] statistics \(fixed(withDiagonal, 2)) s "
                + "(+\(fixed(100 * (withDiagonal / plain - 1), 1))%)")
        let gram = StatisticsCollector(definition: engine.model.definition, withGram: true)
        let decoderOnly = try bestThrowing(2) { _ in
            _ = try engine.forward(.embeddings(embeddings), capture: .init(observer: gram))
        }
        let decoderPlain = try bestThrowing(repeats) { _ in _ = try engine.forward(.embeddings(embeddings)) }
        report(
            "decoder prefill with X^T X statistics (gptq, awq): \(fixed(decoderOnly, 2)) s vs "
                + "\(fixed(decoderPlain, 2)) s plain (+\(fixed(100 * (decoderOnly / decoderPlain - 1), 1))%)")
        return gram
    }

    /// RTN (int8, int4) and GPTQ (int4, with `gram`'s statistics) on decoder layer 0.
    /// Returns the line reported.
    @discardableResult
    func measureQuantizers(
        _ engine: YiVLEngine, gram: StatisticsCollector, report: (String) -> Void
    ) throws -> String {
        let definition = engine.model.definition
        let layer = definition.language.layers[0]
        var parameters = 0
        var rtnSeconds: [TensorEncoding: Double] = [:]
        var gptqSeconds = 0.0
        var smallestGroup = 128
        // As quantize does: one factor of each input's Hessian for the Linears it feeds (q/k/v, gate/up).
        let factors = GPTQFactorCache()
        for linear in layer.linears {
            let name = definition.name(linear.weight)
            let w = engine.model.weights.floats(linear.weight), shape = engine.model.weights.shape(linear.weight)
            // Groups of 128 as the presets use, or the largest that fits a narrower layer (small models).
            guard let groupSize = [128, 64, 32, 16, 8, 2].first(where: { shape[1] % $0 == 0 }) else { continue }
            smallestGroup = min(smallestGroup, groupSize)
            parameters += w.count
            for encoding in [TensorEncoding.q8, .q4] {
                let t = monotonicSeconds()
                // The bytes only, as vlq quantize asks (the dequantized values would add an f32 copy).
                _ = MatrixQuantizer.roundToNearest(
                    w, rows: shape[0], columns: shape[1], encoding: encoding, groupSize: groupSize,
                    keepValues: false)
                rtnSeconds[encoding, default: 0] += monotonicSeconds() - t
            }
            guard let stats = gram.statistics(for: name), let g = stats.gramMatrix else { continue }
            let t = monotonicSeconds()
            let gptq = GPTQ()
            _ = try gptq.quantize(
                w, rows: shape[0], columns: shape[1], encoding: .q4, groupSize: groupSize,
                factor: factors.factor(of: g, for: gptq))
            gptqSeconds += monotonicSeconds() - t
        }
        let int8 = rtnSeconds[.q8, default: 0], int4 = rtnSeconds[.q4, default: 0]
        let millions = Double(parameters) / 1e6
        let groups = smallestGroup == 128 ? "128" : "\(smallestGroup)-128"
        let line =
            "decoder layer 0 (\(parameters / 1_000_000)M weights): RTN int8 \(fixed(int8, 2)) s = "
            + "\(fixed(millions / int8, 1))M weights/s; RTN int4 \(fixed(int4, 2)) s = "
            + "\(fixed(millions / int4, 1))M weights/s; GPTQ int4 g\(groups) \(fixed(gptqSeconds, 1)) s per layer "
            + "(one factorisation per distinct input, as quantize does)"
        report(line)
        return line
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
