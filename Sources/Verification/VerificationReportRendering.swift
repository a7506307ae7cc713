import VLQCore

// MARK: JSON

extension VerificationReport {
    /// Every figure (`vlq verify --json`): `candidate`, `failures`, and per part measured
    /// `reference_dir` with `logits` and `cases`, `run`, `layer_ranking`, `exact_match`.
    public var json: JSONValue {
        var report: [String: JSONValue] = ["candidate": .string(candidate)]
        if let referenceFolder {
            report["reference_dir"] = .string(referenceFolder.path)
            report["logits"] = referenceFolder.comparison.logits.summaryJSON
            report["cases"] = .array(referenceFolder.comparison.cases.map(\.json))
        }
        if let run { report["run"] = run.json }
        if let layerRanking {
            report["layer_ranking"] = .array(
                layerRanking.entries.map {
                    ["layer": .string($0.layer), "tensors": .int(Int64($0.tensors)), "mean_kld": .double($0.meanKLD)]
                })
        }
        if let answers {
            let r = answers.result
            report["exact_match"] = [
                "correct": .int(Int64(r.correct)), "total": .int(Int64(r.total)),
                "rate": .double(r.rate),
            ]
        }
        report["failures"] = .array(failures.map { .string($0.message) })
        return .object(report)
    }
}

extension LogitDrift {
    var summaryJSON: JSONValue {
        [
            "mean_kld": .double(meanKLD), "median_kld": .double(medianKLD), "p99_kld": .double(p99KLD),
            "max_kld": .double(maxKLD), "same_top": .double(sameTopRate),
            "rms_top_probability_delta": .double(rmsTopProbabilityDelta), "positions": .int(Int64(positions)),
        ]
    }
}

extension ReferenceComparison.CaseResult {
    var json: JSONValue {
        [
            "name": .string(name), "vision_cosine": .double(vision.cosine),
            "vision_relative_l2": .double(vision.relativeL2),
            "projector_cosine": .double(projector.cosine), "projector_relative_l2": .double(projector.relativeL2),
            "mean_kld": .double(logits.meanKLD), "same_top": .double(logits.sameTopRate),
        ]
    }
}

extension VerificationReport.Run {
    var json: JSONValue {
        let c = comparison, l = c.logits
        var section: [String: JSONValue] = [
            "reference": .string(reference), "set": .string(set), "set_digest": .string(setDigest),
            "mean_kld": .double(l.meanKLD), "median_kld": .double(l.medianKLD), "p99_kld": .double(l.p99KLD),
            "max_kld": .double(l.maxKLD), "same_top": .double(l.sameTopRate),
            "rms_top_probability_delta": .double(l.rmsTopProbabilityDelta),
            "answer_agreement": .double(c.answerAgreement),
            "vision_layer_relative_l2": .array(c.visionLayerDrift.map { .double($0) }),
            "decoder_layer_relative_l2": .array(c.decoderLayerDrift.map { .double($0) }),
            "samples": .array(c.samples.map(\.json)),
        ]
        if let p = c.meanPerplexityRatio { section["perplexity_ratio"] = .double(p) }
        if let e = c.exactMatch {
            section["exact_match"] = ["reference": .double(e.reference), "candidate": .double(e.candidate)]
        }
        return .object(section)
    }
}

extension RunComparison.Sample {
    var json: JSONValue {
        [
            "image": .string(image), "vision_cosine": .double(vision.cosine),
            "vision_relative_l2": .double(vision.relativeL2),
            "projector_cosine": .double(projector.cosine), "projector_relative_l2": .double(projector.relativeL2),
            "mean_kld": .double(logits.meanKLD), "same_top": .double(logits.sameTopRate),
            "reference_answer": .string(referenceAnswer), "candidate_answer": .string(candidateAnswer),
            "expected_answer": expectedAnswer.map { .string($0) } ?? .null,
            "perplexity_ratio": perplexityRatio.map { .double($0) } ?? .null,
        ]
    }
}

// MARK: Text

extension VerificationReport {
    public var candidateLine: String { "candidate: \(candidate)" }
}

extension LogitDrift {
    var summaryLine: String {
        "logits: mean KLD \(scientific(meanKLD)), median \(scientific(medianKLD)), p99 \(scientific(p99KLD)), "
            + "max \(scientific(maxKLD)); same top \(fixed(100 * sameTopRate, 2))%; "
            + "RMS dp(top) \(scientific(rmsTopProbabilityDelta))"
    }
}

extension VerificationReport.ReferenceFolder {
    /// A row per case, then the logits over all of them.
    public var lines: [String] {
        let c = comparison
        var lines = ["reference: \(path) (\(c.cases.count) cases, \(c.logits.positions) positions)", ""]
        lines.append(
            padRight("case", 24) + padLeft("vision cos", 12) + padLeft("vision relL2", 14)
                + padLeft("proj cos", 12) + padLeft("proj relL2", 12) + padLeft("mean KLD", 12)
                + padLeft("same top", 10))
        for r in c.cases {
            lines.append(
                padRight(r.name, 24) + padLeft(fixed(r.vision.cosine, 6), 12)
                    + padLeft(scientific(r.vision.relativeL2), 14) + padLeft(fixed(r.projector.cosine, 6), 12)
                    + padLeft(scientific(r.projector.relativeL2), 12) + padLeft(scientific(r.logits.meanKLD), 12)
                    + padLeft(fixed(100 * r.logits.sameTopRate, 2) + "%", 10))
        }
        return lines + ["", c.logits.summaryLine]
    }
}

extension VerificationReport.Run {
    /// A row per sample, then the logits, answers and layer drift over all of them.
    public var lines: [String] {
        let c = comparison
        var lines = [
            "reference: \(reference) on \(set) "
                + "(\(c.samples.count) samples, \(c.logits.positions) text positions)", "",
        ]
        lines.append(
            padRight("sample", 28) + padLeft("vision cos", 12) + padLeft("proj cos", 12)
                + padLeft("mean KLD", 12) + padLeft("same top", 10) + padLeft("ppl ratio", 11) + "  answers")
        for s in c.samples {
            let name = String(s.image.split(separator: "/").last ?? "")
            let answers = s.referenceAnswer == s.candidateAnswer ? "same" : "differ: \"\(s.candidateAnswer)\""
            lines.append(
                padRight(name, 28) + padLeft(fixed(s.vision.cosine, 6), 12)
                    + padLeft(fixed(s.projector.cosine, 6), 12) + padLeft(scientific(s.logits.meanKLD), 12)
                    + padLeft(fixed(100 * s.logits.sameTopRate, 1) + "%", 10)
                    + padLeft(s.perplexityRatio.map { fixed($0, 4) } ?? "-", 11) + "  " + answers)
        }
        lines += ["", c.logits.summaryLine]
        if let p = c.meanPerplexityRatio { lines.append("perplexity ratio on the answers: \(fixed(p, 4))") }
        lines.append("greedy answers identical to the reference's: \(fixed(100 * c.answerAgreement, 1))%")
        if let e = c.exactMatch {
            lines.append(
                "exact match: reference \(fixed(100 * e.reference, 1))%, "
                    + "candidate \(fixed(100 * e.candidate, 1))%")
        }
        if !c.visionLayerDrift.isEmpty {
            lines.append(
                "hidden-state relative L2 after each vision layer: "
                    + c.visionLayerDrift.map(scientific).joined(separator: " "))
            lines.append(
                "hidden-state relative L2 after each decoder layer: "
                    + c.decoderLayerDrift.map(scientific).joined(separator: " "))
        }
        return lines
    }
}

extension VerificationReport.LayerRanking {
    /// The twelve layers that drift most.
    public var lines: [String] {
        [
            "",
            "drift of each quantized layer on its own (\(samples) samples), largest first: "
                + "keep the top ones in higher precision",
        ]
            + entries.prefix(12).map {
                "  " + padRight($0.layer, 24) + padLeft(scientific($0.meanKLD), 12) + "  (\($0.tensors) tensors)"
            }
    }
}

extension VerificationReport.Answers {
    public var lines: [String] {
        ["exact match on \(set): \(result.correct)/\(result.total) = \(fixed(100 * result.rate, 1))%"]
    }
}
