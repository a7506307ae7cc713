import ArgumentParser
import Calibration
import Foundation
import VLQCore
import Verification
import YiVL

struct Verify: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure a candidate's accuracy drift against reference outputs; exit 1 when a bound is broken.",
        discussion: """
            --reference-dir: per-stage files of a reference run (tools/transformers_reference.py, or \
            Tests/Fixtures/tiny-yivl-data/reference); the candidate runs on the reference's own pixel values \
            and prompts. --set: a manifest whose rows carry "answer": greedy answers are scored by exact match \
            (with --reference too, the reference model's answers are scored alongside). Exit codes: 0 all \
            bounds hold, 1 a bound is broken, 2 usage or input error.
            """
    )

    @Option(name: .customLong("reference-dir"), help: "Folder of reference per-stage files.")
    var referenceDir: String?

    @Option(help: "The reference: a .vlqref file from vlq reference, or a model (bundle or Hugging Face folder) run first on --set.")
    var reference: String?

    @Option(name: .customLong("layer-samples"), help: "Samples whose per-layer hidden states are compared (with --reference).")
    var layerSamples: Int = 4

    @Option(name: .customLong("rank-layers"), help: "With --reference MODEL: rank the candidate's quantized layers by their own drift, each quantized alone, on this many samples.")
    var rankSamples: Int?

    @Option(help: "The model under test (bundle or Hugging Face folder).")
    var candidate: String

    @Option(help: "Evaluation set (JSONL with image, question, answer).")
    var set: String?

    @Option(name: .customLong("max-kld"), help: "Fail when the mean KL divergence exceeds this.")
    var maxKLD: Double?

    @Option(name: .customLong("min-same-top"), help: "Fail when the same-top-token rate falls below this (0..1).")
    var minSameTop: Double?

    @Option(name: .customLong("min-cosine"), help: "Fail when a projector-output cosine similarity falls below this.")
    var minCosine: Double?

    @Option(help: "Write every figure to this JSON file.")
    var json: String?

    @Option(help: "Write a self-contained HTML report (charts, per-sample table with thumbnails) to this file.")
    var html: String?

    @Option(name: .customLong("max-tokens"), help: "Most tokens per generated answer.")
    var maxTokens: Int = 64

    @OptionGroup var global: GlobalOptions

    func validate() throws {
        guard referenceDir != nil || set != nil else { throw ValidationError("give --reference-dir, --set, or both") }
        if reference != nil && set == nil { throw ValidationError("--reference needs --set") }
        if let rankSamples, rankSamples < 1 {
            throw ValidationError("--rank-layers needs a positive number of samples")
        }
    }

    func run() throws {
        let logger = global.makeLogger("vlq.verify")
        // Opened on first use: with --reference MODEL, the reference runs and is released first, so
        // the two models are never in memory together.
        var opened: YiVLEngine?
        func candidateEngine() throws -> YiVLEngine {
            if let opened { return opened }
            let e = try YiVLEngine.open(candidate)
            opened = e
            return e
        }
        var report: [String: JSONValue] = ["candidate": .string(candidate)]
        var positionKLD: [Double] = []
        var thumbnails: [String: String] = [:]
        var failures: [String] = []
        print("candidate: \(candidate)")
        if let referenceDir {
            let references = try ReferenceCase.load(folder: referenceDir)
            let c = try ReferenceComparison.run(candidate: try candidateEngine(), references: references)
            print("reference: \(referenceDir) (\(references.count) cases, \(c.logits.positions) positions)")
            print("")
            print(padRight("case", 24) + padLeft("vision cos", 12) + padLeft("vision relL2", 14) + padLeft("proj cos", 12) + padLeft("proj relL2", 12) + padLeft("mean KLD", 12) + padLeft("same top", 10))
            for r in c.cases {
                print(padRight(r.name, 24) + padLeft(fixed(r.vision.cosine, 6), 12) + padLeft(sci(r.vision.relativeL2), 14)
                      + padLeft(fixed(r.projector.cosine, 6), 12) + padLeft(sci(r.projector.relativeL2), 12)
                      + padLeft(sci(r.logits.meanKLD), 12) + padLeft(fixed(100 * r.logits.sameTopRate, 2) + "%", 10))
            }
            let l = c.logits
            positionKLD = l.klDivergences
            print("")
            print("logits: mean KLD \(sci(l.meanKLD)), median \(sci(l.medianKLD)), p99 \(sci(l.p99KLD)), max \(sci(l.maxKLD)); same top \(fixed(100 * l.sameTopRate, 2))%; RMS dp(top) \(sci(l.rmsTopProbabilityDelta))")
            report["reference_dir"] = .string(referenceDir)
            report["logits"] = ["mean_kld": .double(l.meanKLD), "median_kld": .double(l.medianKLD), "p99_kld": .double(l.p99KLD),
                                "max_kld": .double(l.maxKLD), "same_top": .double(l.sameTopRate),
                                "rms_top_probability_delta": .double(l.rmsTopProbabilityDelta), "positions": .int(Int64(l.positions))]
            report["cases"] = .array(c.cases.map { r in
                ["name": .string(r.name), "vision_cosine": .double(r.vision.cosine), "vision_relative_l2": .double(r.vision.relativeL2),
                 "projector_cosine": .double(r.projector.cosine), "projector_relative_l2": .double(r.projector.relativeL2),
                 "mean_kld": .double(r.logits.meanKLD), "same_top": .double(r.logits.sameTopRate)]
            })
            if let maxKLD, l.meanKLD > maxKLD { failures.append("mean KLD \(sci(l.meanKLD)) > \(maxKLD)") }
            if let minSameTop, l.sameTopRate < minSameTop { failures.append("same top \(fixed(l.sameTopRate, 4)) < \(minSameTop)") }
            if let minCosine, c.minimumProjectorCosine < minCosine { failures.append("projector cosine \(fixed(c.minimumProjectorCosine, 6)) < \(minCosine)") }
        }
        if let set, let reference {
            let evaluation = try CalibrationSet(path: set)
            let progress = SampleProgress(label: "verify", logger: logger, enabled: !global.quiet)
            let stored: ReferenceRun
            if reference.hasSuffix(".vlqref") {
                stored = try ReferenceRun.read(reference)
            } else {
                // The reference runs first and is released before the candidate is opened.
                stored = try ReferenceRun.run(engine: try YiVLEngine.open(reference), set: evaluation, model: reference,
                                              layerSamples: layerSamples, maxTokens: maxTokens, progress: progress.update)
            }
            let c = try RunComparison.run(candidate: try candidateEngine(), reference: stored, set: evaluation, maxTokens: maxTokens, progress: progress.update)
            printRunComparison(c, reference: reference, set: set)
            positionKLD = c.logits.klDivergences
            if html != nil { for s in c.samples { thumbnails[s.image] = HTMLReport.thumbnail(path: s.image) } }
            if let rankSamples {
                guard !reference.hasSuffix(".vlqref") else { throw ValidationError("--rank-layers needs --reference to be a model, not a .vlqref") }
                let ranking = try LayerContribution.rank(reference: try YiVLEngine.open(reference), candidate: try candidateEngine(), run: stored,
                                                         set: evaluation, samples: rankSamples, progress: progress.update)
                print("")
                print("drift of each quantized layer on its own (\(rankSamples) samples), largest first: keep the top ones in higher precision")
                for e in ranking.prefix(12) { print("  " + padRight(e.layer, 24) + padLeft(sci(e.meanKLD), 12) + "  (\(e.tensors) tensors)") }
                report["layer_ranking"] = .array(ranking.map { ["layer": .string($0.layer), "tensors": .int(Int64($0.tensors)), "mean_kld": .double($0.meanKLD)] })
            }
            let l = c.logits
            var section: [String: JSONValue] = [
                "reference": .string(reference), "set": .string(set), "set_digest": .string(evaluation.digest),
                "mean_kld": .double(l.meanKLD), "median_kld": .double(l.medianKLD), "p99_kld": .double(l.p99KLD), "max_kld": .double(l.maxKLD),
                "same_top": .double(l.sameTopRate), "rms_top_probability_delta": .double(l.rmsTopProbabilityDelta),
                "answer_agreement": .double(c.answerAgreement),
                "vision_layer_relative_l2": .array(c.visionLayerDrift.map { .double($0) }),
                "decoder_layer_relative_l2": .array(c.decoderLayerDrift.map { .double($0) }),
                "samples": .array(c.samples.map { s in
                    ["image": .string(s.image), "vision_cosine": .double(s.vision.cosine), "vision_relative_l2": .double(s.vision.relativeL2),
                     "projector_cosine": .double(s.projector.cosine), "projector_relative_l2": .double(s.projector.relativeL2),
                     "mean_kld": .double(s.logits.meanKLD), "same_top": .double(s.logits.sameTopRate),
                     "reference_answer": .string(s.referenceAnswer), "candidate_answer": .string(s.candidateAnswer),
                     "expected_answer": s.expectedAnswer.map { .string($0) } ?? .null,
                     "perplexity_ratio": s.perplexityRatio.map { .double($0) } ?? .null]
                }),
            ]
            if let p = c.meanPerplexityRatio { section["perplexity_ratio"] = .double(p) }
            if let e = c.exactMatch { section["exact_match"] = ["reference": .double(e.reference), "candidate": .double(e.candidate)] }
            report["run"] = .object(section)
            if let maxKLD, l.meanKLD > maxKLD { failures.append("mean KLD \(sci(l.meanKLD)) > \(maxKLD) on \(set)") }
            if let minSameTop, l.sameTopRate < minSameTop { failures.append("same top \(fixed(l.sameTopRate, 4)) < \(minSameTop) on \(set)") }
            if let minCosine, let worst = c.samples.map(\.projector.cosine).min(), worst < minCosine {
                failures.append("projector cosine \(fixed(worst, 6)) < \(minCosine) on \(set)")
            }
        } else if let set {
            let evaluation = try CalibrationSet(path: set)
            let progress = SampleProgress(label: "answers", logger: logger, enabled: !global.quiet)
            let candidateAnswers = try ExactMatch.run(try candidateEngine(), set: evaluation, maxTokens: maxTokens, progress: progress.update)
            print("exact match on \(set): \(candidateAnswers.correct)/\(candidateAnswers.total) = \(fixed(100 * candidateAnswers.rate, 1))%")
            report["exact_match"] = ["correct": .int(Int64(candidateAnswers.correct)), "total": .int(Int64(candidateAnswers.total)),
                                     "rate": .double(candidateAnswers.rate)]
        }
        report["failures"] = .array(failures.map { .string($0) })
        if let json {
            try Data(JSONValue.object(report).serialized(pretty: true).utf8).write(to: URL(fileURLWithPath: json))
        }
        if let html {
            let page = HTMLReport.render(report: .object(report), klDivergences: positionKLD, thumbnails: thumbnails)
            try Data(page.utf8).write(to: URL(fileURLWithPath: html))
            logger.info("wrote \(html)")
        }
        if !failures.isEmpty {
            throw CheckFailure(message: "vlq: verify: bound broken: " + failures.joined(separator: "; "))
        }
        print(failures.isEmpty && (maxKLD != nil || minSameTop != nil || minCosine != nil) ? "all bounds hold" : "")
    }
}

func printRunComparison(_ c: RunComparison, reference: String, set: String) {
    print("reference: \(reference) on \(set) (\(c.samples.count) samples, \(c.logits.positions) text positions)")
    print("")
    print(padRight("sample", 28) + padLeft("vision cos", 12) + padLeft("proj cos", 12) + padLeft("mean KLD", 12) + padLeft("same top", 10) + padLeft("ppl ratio", 11) + "  answers")
    for s in c.samples {
        let name = String(s.image.split(separator: "/").last ?? "")
        let answers = s.referenceAnswer == s.candidateAnswer ? "same" : "differ: \"\(s.candidateAnswer)\""
        print(padRight(name, 28) + padLeft(fixed(s.vision.cosine, 6), 12) + padLeft(fixed(s.projector.cosine, 6), 12)
              + padLeft(sci(s.logits.meanKLD), 12) + padLeft(fixed(100 * s.logits.sameTopRate, 1) + "%", 10)
              + padLeft(s.perplexityRatio.map { fixed($0, 4) } ?? "-", 11) + "  " + answers)
    }
    let l = c.logits
    print("")
    print("logits: mean KLD \(sci(l.meanKLD)), median \(sci(l.medianKLD)), p99 \(sci(l.p99KLD)), max \(sci(l.maxKLD)); same top \(fixed(100 * l.sameTopRate, 2))%; RMS dp(top) \(sci(l.rmsTopProbabilityDelta))")
    if let p = c.meanPerplexityRatio { print("perplexity ratio on the answers: \(fixed(p, 4))") }
    print("greedy answers identical to the reference's: \(fixed(100 * c.answerAgreement, 1))%")
    if let e = c.exactMatch { print("exact match: reference \(fixed(100 * e.reference, 1))%, candidate \(fixed(100 * e.candidate, 1))%") }
    if !c.visionLayerDrift.isEmpty {
        print("hidden-state relative L2 after each vision layer: " + c.visionLayerDrift.map { sci($0) }.joined(separator: " "))
        print("hidden-state relative L2 after each decoder layer: " + c.decoderLayerDrift.map { sci($0) }.joined(separator: " "))
    }
}

/// Scientific notation with three significant digits, for small drift figures.
func sci(_ v: Double) -> String {
    guard v != 0, v.isFinite else { return v == 0 ? "0" : String(v) }
    var exponent = 0
    var m = abs(v)
    while m >= 10 { m /= 10; exponent += 1 }
    while m < 1 { m *= 10; exponent -= 1 }
    return (v < 0 ? "-" : "") + fixed(m, 2) + "e" + (exponent < 0 ? "-" : "+") + (abs(exponent) < 10 ? "0" : "") + String(abs(exponent))
}
