import Calibration
import SafeTensors
import VLQCore
import YiVL

/// Per-stage outputs of a reference run (transformers through tools/transformers_reference.py, or
/// the fixture's reference folder), one file per case.
public struct ReferenceCase: Sendable {
    public var name: String
    public var question: String
    public var pixelValues: [Float]
    public var visionFeatures: [Float]
    public var projectorOutput: [Float]
    public var inputIds: [Int]
    public var logits: [Float]
    public var logitsShape: [Int]

    /// Every case of a folder: from its `cases.json` (`reference`, `question` per case), else every
    /// `*.safetensors` whose metadata carries the prompt (`prompt`).
    public static func load(folder: String) throws -> [ReferenceCase] {
        var entries: [(file: String, question: String?)] = []
        if let index = try? MappedFile(path: folder + "/cases.json") {
            let json: JSONValue
            do { json = try JSONValue.parse(index.bytes) } catch {
                throw VLQError(CoreError.malformedJSON, index.path, "\(error)")
            }
            guard let cases = json.arrayValue else {
                throw VLQError(VerificationError.invalidReference, index.path, "not a list of cases")
            }
            for c in cases {
                guard let file = c["reference"]?.stringValue, let question = c["question"]?.stringValue else {
                    throw VLQError(
                        VerificationError.invalidReference, index.path, "each case needs \"reference\" and \"question\""
                    )
                }
                let name = file.split(separator: "/").last.map(String.init) ?? file
                entries.append((folder + "/" + name, question))
            }
        } else {
            let names = try FileSystem.list(folder).filter { $0.hasSuffix(".safetensors") }.sorted()
            entries = names.map { (folder + "/" + $0, nil) }
        }
        guard !entries.isEmpty else { throw VLQError(VerificationError.invalidReference, folder, "no reference cases") }
        return try entries.map { entry in
            let file = try SafeTensorsFile(path: entry.file)
            func floats(_ n: String) throws -> ([Float], [Int]) {
                guard let info = file.info(n), info.dtype == .f32 else {
                    throw VLQError(VerificationError.invalidReference, entry.file, "no f32 tensor \(n)")
                }
                return (Array(file.data(info).bindMemory(to: Float.self)), info.shape)
            }
            guard let question = entry.question ?? file.metadata["prompt"] else {
                throw VLQError(
                    VerificationError.invalidReference, entry.file,
                    "no question: neither cases.json nor a \"prompt\" in the metadata")
            }
            guard let ids = file.info("input_ids"), ids.dtype == .i64 else {
                throw VLQError(VerificationError.invalidReference, entry.file, "no i64 tensor input_ids")
            }
            let logits = try floats("logits")
            let inputIds = file.data(ids).bindMemory(to: Int64.self).map { Int(Int64(littleEndian: $0)) }
            return ReferenceCase(
                name: entry.file.split(separator: "/").last.map(String.init) ?? entry.file,
                question: question, pixelValues: try floats("pixel_values").0,
                visionFeatures: try floats("vision_features").0,
                projectorOutput: try floats("projector_output").0, inputIds: inputIds,
                logits: logits.0, logitsShape: logits.1)
        }
    }
}

/// The candidate run on the reference's own pixel values and prompts, compared stage by stage.
public struct ReferenceComparison: Sendable {
    public struct CaseResult: Sendable {
        public var name: String
        public var vision: FeatureDrift
        public var projector: FeatureDrift
        public var logits: LogitDrift

        public init(name: String, vision: FeatureDrift, projector: FeatureDrift, logits: LogitDrift) {
            self.name = name
            self.vision = vision
            self.projector = projector
            self.logits = logits
        }
    }

    public var cases: [CaseResult] = []
    public var logits = LogitDrift()

    public init() {}

    public var minimumVisionCosine: Double { cases.map(\.vision.cosine).min() ?? 1 }
    public var minimumProjectorCosine: Double { cases.map(\.projector.cosine).min() ?? 1 }

    /// `run(candidate:references:)` over `candidate`, opened now if it was not yet.
    public static func run(candidate: LazyModel, references: [ReferenceCase]) throws -> ReferenceComparison {
        try run(candidate: try candidate.engine(), references: references)
    }

    public static func run(candidate: YiVLEngine, references: [ReferenceCase]) throws -> ReferenceComparison {
        var result = ReferenceComparison()
        let vocab = candidate.config.language.vocabSize
        for r in references {
            let prompt = candidate.prompt(question: r.question)
            guard prompt.inputIds == r.inputIds else {
                throw VLQError(
                    VerificationError.referenceMismatch,
                    r.name,
                    "the candidate tokenizes the prompt differently from the reference "
                        + "(\(prompt.inputIds.count) vs \(r.inputIds.count) ids)")
            }
            let stages = try candidate.forward(
                .image(r.pixelValues, prompt: prompt),
                capture: .init(visionFeatures: true, projectorOutput: true, logitsFrom: 0))
            let logits = stages.logits
            guard logits.count == r.logits.count, r.logitsShape.last == vocab else {
                throw VLQError(
                    VerificationError.referenceMismatch,
                    r.name,
                    "reference logits are \(r.logitsShape), "
                        + "the candidate gives [\(logits.count / vocab), \(vocab)]")
            }
            var drift = LogitDrift()
            drift.add(reference: r.logits, candidate: logits, vocab: vocab)
            result.logits.add(reference: r.logits, candidate: logits, vocab: vocab)
            result.cases.append(
                CaseResult(
                    name: r.name, vision: FeatureDrift(reference: r.visionFeatures, candidate: stages.visionFeatures),
                    projector: FeatureDrift(reference: r.projectorOutput, candidate: stages.projectorOutput),
                    logits: drift))
        }
        return result
    }
}

/// Greedy answers against the expected ones of a set whose rows carry `answer`.
public struct ExactMatch: Sendable {
    public var correct = 0
    public var total = 0
    public var answers: [String] = []
    public var rate: Double { total == 0 ? 0 : Double(correct) / Double(total) }

    /// `run(_:set:...)` over `model`, opened now if it was not yet.
    public static func run(
        _ model: LazyModel, set: CalibrationSet, maxTokens: Int = 64, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ExactMatch {
        try run(try model.engine(), set: set, maxTokens: maxTokens, progress: progress)
    }

    public static func run(
        _ engine: YiVLEngine, set: CalibrationSet, maxTokens: Int = 64,
        progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ExactMatch {
        var result = ExactMatch()
        for (i, sample) in set.samples.enumerated() {
            guard let expected = sample.answer else { continue }
            let pixels = try engine.pixelValues(imagePath: sample.image)
            let g = try engine.generate(pixels: pixels, question: sample.question, options: .init(maxTokens: maxTokens))
            result.total += 1
            if g.answer == expected { result.correct += 1 }
            result.answers.append(g.answer)
            progress(i + 1, set.samples.count)
        }
        return result
    }
}
