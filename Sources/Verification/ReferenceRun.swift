import Calibration
import SafeTensors
import VLQCore
import VLQFormat
import YiVL

/// The reference model's outputs on every sample of a set, stored once (`vlq reference`) and compared
/// against any number of candidates, so that the two models never need to be in memory together.
///
/// Per sample: vision features, projector output, the logits of every position from the last image
/// position on (the prompt's text and, for rows with an answer, the teacher-forced answer), the
/// answer's token ids, the greedy answer, and for the first `layerSamples` samples the hidden state
/// after every vision and decoder layer.
public struct SampleReference: Sendable {
    public var image: String
    public var question: String
    public var answer: String?
    public var answerIds: [Int]
    public var greedyAnswer: String
    public var visionFeatures: [Float]
    public var projectorOutput: [Float]
    /// Rows of logits from position `logitsStart` of the spliced sequence to its end.
    public var logits: [Float]
    public var logitsStart: Int
    public var visionLayers: [[Float]]
    public var decoderLayers: [[Float]]
}

public struct ReferenceRun: Sendable {
    public var samples: [SampleReference]
    public var setDigest: String
    public var model: String
    public var modelDigest: String
    /// The .vlqref file it was read from, named in errors about its content.
    public var source: String?

    /// Runs `model` over `set`; the run names it by its path.
    public static func run(
        model: LazyModel, set: CalibrationSet, layerSamples: Int = 4, maxTokens: Int = 64,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ReferenceRun {
        try run(
            engine: try model.engine(), set: set, model: model.path, layerSamples: layerSamples, maxTokens: maxTokens,
            progress: progress)
    }

    /// Runs `engine` over `set`.
    public static func run(
        engine: YiVLEngine, set: CalibrationSet, model: String, layerSamples: Int = 4, maxTokens: Int = 64,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ReferenceRun {
        var samples: [SampleReference] = []
        for (i, s) in set.samples.enumerated() {
            samples.append(try runSample(engine: engine, sample: s, keepLayers: i < layerSamples, maxTokens: maxTokens))
            progress(i + 1, set.samples.count)
        }
        return ReferenceRun(samples: samples, setDigest: set.digest, model: model, modelDigest: modelDigest(engine))
    }

    /// One sample through `engine`: the same computation for reference and candidate. The image stages
    /// run once. Without an answer the teacher-forced sequence is the question's prompt and the greedy
    /// answer continues its cache; with one, the decoder runs the question's prompt on the same features.
    public static func runSample(
        engine: YiVLEngine, sample: CalibrationSet.Sample, keepLayers: Bool, maxTokens: Int
    ) throws -> SampleReference {
        let pixels = try engine.pixelValues(imagePath: sample.image)
        let question = engine.prompt(question: sample.question)
        let answerIds = sample.answer.map { engine.tokenizer.encode($0) } ?? []
        var teacherForced = question
        teacherForced.after += answerIds
        let start = engine.imageEnd(of: question) - 1
        let promptOnly = answerIds.isEmpty
        let run = try engine.forward(
            .image(pixels, prompt: teacherForced, reserving: promptOnly ? maxTokens : 0),
            capture: .init(
                visionFeatures: true, projectorOutput: true, visionLayers: keepLayers, decoderLayers: keepLayers,
                logitsFrom: start, lastLogits: promptOnly))
        let prompted =
            promptOnly
            ? run
            : try engine.forward(
                .imageFeatures(run.projectorOutput, prompt: question, reserving: maxTokens),
                capture: .init(lastLogits: true))
        let greedy = try engine.generate(continuing: prompted, options: .init(maxTokens: maxTokens)).answer
        return SampleReference(
            image: sample.image, question: sample.question, answer: sample.answer, answerIds: answerIds,
            greedyAnswer: greedy, visionFeatures: run.visionFeatures, projectorOutput: run.projectorOutput,
            logits: run.logits, logitsStart: start, visionLayers: run.visionLayers, decoderLayers: run.decoderLayers)
    }

    /// What a reference file is tied to: the bundle's tensor table checksum, or for a Hugging Face
    /// folder the engine's source path (its files are not hashed again here).
    static func modelDigest(_ engine: YiVLEngine) -> String {
        (try? VLQFile(path: engine.source)).map { hex64($0.header.tableChecksum) } ?? "folder:" + engine.source
    }

    // MARK: File

    public func write(to path: String) throws {
        var file = SafeTensorsWriter()
        var meta: [JSONValue] = []
        for (i, s) in samples.enumerated() {
            let p = "s\(i)."
            file.add(.f32(p + "vision_features", [s.visionFeatures.count], s.visionFeatures))
            file.add(.f32(p + "projector_output", [s.projectorOutput.count], s.projectorOutput))
            file.add(.f32(p + "logits", [s.logits.count], s.logits))
            file.add(.i64(p + "answer_ids", [s.answerIds.count], s.answerIds))
            for (j, h) in s.visionLayers.enumerated() { file.add(.f32(p + "vision_layer.\(j)", [h.count], h)) }
            for (j, h) in s.decoderLayers.enumerated() { file.add(.f32(p + "decoder_layer.\(j)", [h.count], h)) }
            meta.append([
                "image": .string(s.image), "question": .string(s.question),
                "answer": s.answer.map { .string($0) } ?? .null,
                "greedy_answer": .string(s.greedyAnswer), "logits_start": .int(Int64(s.logitsStart)),
                "vision_layers": .int(Int64(s.visionLayers.count)),
                "decoder_layers": .int(Int64(s.decoderLayers.count)),
            ])
        }
        file.metadata = [
            "format": "vlqref 1", "samples": JSONValue.array(meta).serialized(), "set_digest": setDigest,
            "model": model, "model_digest": modelDigest, "vlq_version": VLQVersion.string,
        ]
        try CompressedSafeTensors.write(file, to: path)
    }

    public static func read(_ path: String) throws -> ReferenceRun {
        let file = try CompressedSafeTensors.read(path, format: "vlqref 1", kind: ".vlqref")
        guard let metaText = file.metadata["samples"], let meta = try? JSONValue.parse(metaText).arrayValue else {
            throw VLQError(VerificationError.invalidReference, path, "the .vlqref metadata lacks its samples")
        }
        let reader = TensorReader(file: file, path: path)
        var samples: [SampleReference] = []
        for (i, m) in meta.enumerated() {
            let p = "s\(i)."
            let visionLayers = try reader.count(m, "vision_layers", sample: i)
            let decoderLayers = try reader.count(m, "decoder_layers", sample: i)
            let logitsStart = m["logits_start"]?.intValue ?? 0
            guard logitsStart >= 0 else {
                throw VLQError(
                    VerificationError.invalidReference, path, "sample \(i): logits_start \(logitsStart) is negative")
            }
            samples.append(
                SampleReference(
                    image: m["image"]?.stringValue ?? "", question: m["question"]?.stringValue ?? "",
                    answer: m["answer"]?.stringValue,
                    answerIds: try reader.tokenIds(p + "answer_ids"),
                    greedyAnswer: m["greedy_answer"]?.stringValue ?? "",
                    visionFeatures: try reader.floats(p + "vision_features"),
                    projectorOutput: try reader.floats(p + "projector_output"),
                    logits: try reader.floats(p + "logits"), logitsStart: logitsStart,
                    visionLayers: try (0..<visionLayers).map { try reader.floats(p + "vision_layer.\($0)") },
                    decoderLayers: try (0..<decoderLayers).map { try reader.floats(p + "decoder_layer.\($0)") }))
        }
        return ReferenceRun(
            samples: samples, setDigest: file.metadata["set_digest"] ?? "", model: file.metadata["model"] ?? "",
            modelDigest: file.metadata["model_digest"] ?? "", source: path)
    }

    /// Checks what `read` cannot: that the run fits `set` and a model of `vocab` tokens. A stored run
    /// may have been edited or made for another set or model; that must be an error naming the file,
    /// not an index out of range.
    public func validate(set: CalibrationSet, vocab: Int) throws {
        let subject = source ?? "reference"
        guard samples.count <= set.samples.count else {
            throw VLQError(
                VerificationError.setMismatch, subject,
                "holds \(samples.count) samples, but the set has \(set.samples.count)")
        }
        // Layer drift is summed per layer over the samples that store layer states.
        let layered = samples.filter { !$0.decoderLayers.isEmpty }
        if let first = layered.first,
            layered.contains(where: {
                $0.visionLayers.count != first.visionLayers.count || $0.decoderLayers.count != first.decoderLayers.count
            })
        {
            throw VLQError(
                VerificationError.invalidReference, subject, "samples store the states of different numbers of layers")
        }
        for (i, s) in samples.enumerated() {
            if let id = s.answerIds.first(where: { $0 >= vocab }) {
                throw VLQError(
                    VerificationError.referenceMismatch, subject,
                    "sample \(i): answer token id \(id) is outside the vocabulary of \(vocab)")
            }
            guard s.logits.count % vocab == 0, s.logits.count / vocab > s.answerIds.count else {
                throw VLQError(
                    VerificationError.referenceMismatch,
                    subject,
                    "sample \(i): \(s.logits.count) logits are not whole rows of \(vocab) "
                        + "for the prompt and \(s.answerIds.count) answer tokens")
            }
        }
    }
}

/// A candidate against a stored reference run, sample by sample.
public struct RunComparison: Sendable {
    public struct Sample: Sendable {
        public var image: String
        public var vision: FeatureDrift
        public var projector: FeatureDrift
        public var logits: LogitDrift
        public var referenceAnswer: String
        public var candidateAnswer: String
        public var expectedAnswer: String?
        public var perplexityRatio: Double?
    }

    /// Exact match of greedy answers with the set's answers: (reference, candidate), nil without answers.
    public var exactMatch: (reference: Double, candidate: Double)? {
        let scored = samples.filter { $0.expectedAnswer != nil }
        guard !scored.isEmpty else { return nil }
        let n = Double(scored.count)
        return (
            Double(scored.filter { $0.referenceAnswer == $0.expectedAnswer }.count) / n,
            Double(scored.filter { $0.candidateAnswer == $0.expectedAnswer }.count) / n
        )
    }

    public var samples: [Sample] = []
    public var logits = LogitDrift()
    /// Mean relative L2 error of the hidden state after each vision / decoder layer.
    public var visionLayerDrift: [Double] = []
    public var decoderLayerDrift: [Double] = []

    public var answerAgreement: Double {
        samples.isEmpty
            ? 1 : Double(samples.filter { $0.referenceAnswer == $0.candidateAnswer }.count) / Double(samples.count)
    }

    public var meanPerplexityRatio: Double? {
        let r = samples.compactMap(\.perplexityRatio)
        return r.isEmpty ? nil : r.reduce(0, +) / Double(r.count)
    }

    /// `run(candidate:...)` over `candidate`, opened now if it was not yet.
    public static func run(
        candidate: LazyModel, reference: ReferenceRun, set: CalibrationSet, maxTokens: Int = 64,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> RunComparison {
        try run(
            candidate: try candidate.engine(), reference: reference, set: set, maxTokens: maxTokens, progress: progress)
    }

    public static func run(
        candidate: YiVLEngine, reference: ReferenceRun, set: CalibrationSet, maxTokens: Int = 64,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> RunComparison {
        guard set.digest == reference.setDigest else {
            throw VLQError(
                VerificationError.setMismatch,
                nil, "the reference was computed on another set (digest \(reference.setDigest), this set \(set.digest))"
            )
        }
        var result = RunComparison()
        var visionSums: [Double] = [], decoderSums: [Double] = [], layerCounts = 0
        let vocab = candidate.config.language.vocabSize
        try reference.validate(set: set, vocab: vocab)
        for (i, r) in reference.samples.enumerated() {
            let c = try ReferenceRun.runSample(
                engine: candidate, sample: set.samples[i], keepLayers: !r.decoderLayers.isEmpty, maxTokens: maxTokens)
            guard c.logits.count == r.logits.count else {
                throw VLQError(
                    VerificationError.referenceMismatch,
                    reference.source ?? r.image,
                    "sample \(i): the candidate gives "
                        + "\(c.logits.count / vocab) logit rows, the reference \(r.logits.count / vocab)")
            }
            var drift = LogitDrift()
            drift.add(reference: r.logits, candidate: c.logits, vocab: vocab)
            result.logits.add(reference: r.logits, candidate: c.logits, vocab: vocab)
            var ratio: Double?
            if !r.answerIds.isEmpty {
                // Rows predicting the answer: the last prompt row onwards, one per answer token.
                let firstRow = (r.logits.count / vocab) - r.answerIds.count - 1
                func nll(_ logits: [Float]) -> Double {
                    var total = 0.0
                    for (k, id) in r.answerIds.enumerated() {
                        let row = LogitDrift.logSoftmax(logits, (firstRow + k) * vocab, vocab)
                        total -= row[id]
                    }
                    return total / Double(r.answerIds.count)
                }
                ratio = exp(nll(c.logits) - nll(r.logits))
            }
            if !r.decoderLayers.isEmpty {
                if visionSums.isEmpty {
                    visionSums = Array(repeating: 0, count: r.visionLayers.count)
                    decoderSums = Array(repeating: 0, count: r.decoderLayers.count)
                }
                for (j, h) in r.visionLayers.enumerated() where j < c.visionLayers.count {
                    visionSums[j] += FeatureDrift(reference: h, candidate: c.visionLayers[j]).relativeL2
                }
                for (j, h) in r.decoderLayers.enumerated() where j < c.decoderLayers.count {
                    decoderSums[j] += FeatureDrift(reference: h, candidate: c.decoderLayers[j]).relativeL2
                }
                layerCounts += 1
            }
            result.samples.append(
                Sample(
                    image: r.image, vision: FeatureDrift(reference: r.visionFeatures, candidate: c.visionFeatures),
                    projector: FeatureDrift(reference: r.projectorOutput, candidate: c.projectorOutput),
                    logits: drift, referenceAnswer: r.greedyAnswer, candidateAnswer: c.greedyAnswer,
                    expectedAnswer: r.answer, perplexityRatio: ratio))
            progress(i + 1, reference.samples.count)
        }
        if layerCounts > 0 {
            result.visionLayerDrift = visionSums.map { $0 / Double(layerCounts) }
            result.decoderLayerDrift = decoderSums.map { $0 / Double(layerCounts) }
        }
        return result
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Which quantized layers cost the most: the reference model with one layer at a time taken from the
/// candidate, run on a few samples, its drift measured against the reference's own logits.
public enum LayerContribution {
    public struct Entry: Sendable {
        public var layer: String
        public var tensors: Int
        public var meanKLD: Double
        /// Weights in the layer's quantized tensors, and their bytes as the candidate stores them.
        public var parameters = 0
        public var storedBytes = 0

        /// Bytes the bundle would grow by with this layer in q8 group 128 (8 bits and an f16 scale per
        /// 128 weights) instead: what keeping it in higher precision costs.
        public var q8ExtraBytes: Int { parameters + parameters / 64 - storedBytes }
    }

    /// `rank(reference:candidate:...)` over the two models, opened now (the reference first) if they were not yet.
    public static func rank(
        reference: LazyModel, candidate: LazyModel, run: ReferenceRun, set: CalibrationSet, samples: Int,
        groups: [String: [TensorHandle]]? = nil, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> [Entry] {
        let referenceEngine = try reference.engine()
        return try rank(
            reference: referenceEngine, candidate: try candidate.engine(), run: run, set: set, samples: samples,
            groups: groups, progress: progress)
    }

    /// `groups`: the parts taken from the candidate one at a time, by name (a decoder Linear alone, the
    /// tensors outside an allocation's units...); nil: every layer (`ModelDefinition.label`). Only a
    /// part's quantized tensors are taken, and a part with none is left out.
    public static func rank(
        reference: YiVLEngine, candidate: YiVLEngine, run: ReferenceRun, set: CalibrationSet, samples: Int,
        groups: [String: [TensorHandle]]? = nil, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> [Entry] {
        let definition = candidate.model.definition
        let isQuantized = candidate.model.weights.isQuantized
        let layers =
            groups?.compactMapValues { part in part.contains(where: isQuantized) ? part.filter(isQuantized) : nil }
            ?? Dictionary(grouping: definition.handles.filter(isQuantized), by: definition.label(of:))
        let vocab = reference.config.language.vocabSize
        try run.validate(set: set, vocab: vocab)
        var entries: [Entry] = []
        for (i, key) in layers.keys.sorted().enumerated() {
            let names = Set(layers[key]!)
            let weights = WeightStore(base: reference.model.weights, overlay: candidate.model.weights, handles: names)
            let hybrid = YiVLEngine(
                source: reference.source + "+" + key, model: YiVLModel(weights: weights),
                tokenizer: reference.tokenizer)
            var drift = LogitDrift()
            for (k, r) in run.samples.prefix(samples).enumerated() {
                let c = try ReferenceRun.runLogits(engine: hybrid, sample: set.samples[k])
                guard c.count == r.logits.count else {
                    throw VLQError(
                        VerificationError.referenceMismatch,
                        run.source ?? r.image,
                        "sample \(k): \(key) gives \(c.count / vocab) logit rows, "
                            + "the reference \(r.logits.count / vocab)")
                }
                drift.add(reference: r.logits, candidate: c, vocab: vocab)
            }
            let weightsOf = candidate.model.weights
            entries.append(
                Entry(
                    layer: key, tensors: names.count, meanKLD: drift.meanKLD,
                    parameters: names.reduce(0) { $0 + weightsOf.shape($1).reduce(1, *) },
                    storedBytes: names.reduce(0) { $0 + weightsOf.storedBytes($1) }))
            progress(i + 1, layers.count)
        }
        return entries.sorted { $0.meanKLD > $1.meanKLD }
    }

}

extension ReferenceRun {
    /// Only the logits of one sample (no generation, no layer states): the ranking's unit of work.
    static func runLogits(engine: YiVLEngine, sample: CalibrationSet.Sample) throws -> [Float] {
        let pixels = try engine.pixelValues(imagePath: sample.image)
        let prompt = sample.prompt(engine)
        let start = engine.imageEnd(of: prompt) - 1
        return try engine.forward(.image(pixels, prompt: prompt), capture: .init(logitsFrom: start)).logits
    }
}

/// Reads a .vlqref's tensors, every failure an error naming the file.
private struct TensorReader {
    let file: SafeTensorsFile
    let path: String

    // Safetensors offsets need not be aligned: tensors are read with unaligned loads.
    func floats(_ name: String) throws -> [Float] {
        guard let info = file.info(name), info.dtype == .f32, info.shape.count == 1 else {
            throw VLQError(
                VerificationError.invalidReference, path, "missing \(name), or it is not a 1-D F32 tensor")
        }
        let data = file.data(info)
        return (0..<(data.count / 4)).map {
            Float(bitPattern: UInt32(littleEndian: data.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self)))
        }
    }

    func tokenIds(_ name: String) throws -> [Int] {
        guard let info = file.info(name), info.dtype == .i64, info.shape.count == 1 else {
            throw VLQError(
                VerificationError.invalidReference, path, "missing \(name), or it is not a 1-D I64 tensor")
        }
        let data = file.data(info)
        return try (0..<(data.count / 8)).map {
            let id = Int64(littleEndian: data.loadUnaligned(fromByteOffset: 8 * $0, as: Int64.self))
            guard id >= 0 else {
                throw VLQError(VerificationError.invalidReference, path, "\(name) holds token id \(id)")
            }
            return Int(id)
        }
    }

    /// Counts from the metadata decide how many tensors are read: each must be a count of tensors
    /// the file can hold, not a range to allocate.
    func count(_ m: JSONValue, _ key: String, sample: Int) throws -> Int {
        guard let value = m[key] else { return 0 }
        guard let n = value.intValue, n >= 0, n <= file.tensors.count else {
            throw VLQError(
                VerificationError.invalidReference, path,
                "sample \(sample): \(key) \(value.serialized()) is not a count of its tensors")
        }
        return n
    }
}
