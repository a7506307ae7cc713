import VLQCore

// MARK: JSON

/// The verify JSON's version: formats/VERIFY-REPORT.md describes this layout.
public let verifyReportSchema = "vlq-verify/1"

extension VerificationReport {
    /// Every figure (`vlq verify --json`), in one layout whatever the mode (formats/VERIFY-REPORT.md): the
    /// verdict and each bound checked; one entry in `comparisons` per reference compared against (the
    /// reference folder's cases, the run on a set), each with the same sections; `exact_match` of the
    /// candidate alone on a set; `layer_ranking`. Absent parts are null, never missing.
    public var json: JSONValue {
        var comparisons: [JSONValue] = []
        if let referenceFolder { comparisons.append(referenceFolder.json) }
        if let run { comparisons.append(run.json) }
        return [
            "schema": .string(verifyReportSchema),
            "candidate": .string(candidate),
            "verdict": .string(outcome),
            "bounds": .array(
                boundChecks.map { c in
                    [
                        "bound": .string(c.figure.bound.rawValue), "limit": .double(c.figure.limit),
                        "measured": .double(c.figure.value), "set": c.figure.set.map { .string($0) } ?? .null,
                        "passed": .bool(c.passed), "message": .string(c.message),
                    ]
                }),
            "failures": .array(failures.map { .string($0.message) }),
            "comparisons": .array(comparisons),
            "exact_match": answers.map { a -> JSONValue in
                [
                    "set": .string(a.set), "correct": .int(Int64(a.result.correct)),
                    "total": .int(Int64(a.result.total)), "rate": .double(a.result.rate),
                ]
            } ?? .null,
            "layer_ranking": layerRanking.map { r -> JSONValue in
                [
                    "samples": .int(Int64(r.samples)),
                    "layers": .array(
                        r.entries.map {
                            [
                                "layer": .string($0.layer), "tensors": .int(Int64($0.tensors)),
                                "mean_kld": .double($0.meanKLD), "parameters": .int(Int64($0.parameters)),
                                "stored_bytes": .int(Int64($0.storedBytes)),
                                "q8_extra_bytes": .int(Int64($0.q8ExtraBytes)),
                            ]
                        }),
                ]
            } ?? .null,
        ]
    }
}

extension LogitDrift {
    /// `positions`: which next-token predictions the figures are over, and why those.
    func summaryJSON(positionSet: String) -> JSONValue {
        [
            "mean_kld": .double(meanKLD), "median_kld": .double(medianKLD), "p99_kld": .double(p99KLD),
            "max_kld": .double(maxKLD), "same_top": .double(sameTopRate),
            "rms_top_probability_delta": .double(rmsTopProbabilityDelta), "positions": .int(Int64(positions)),
            "position_set": .string(positionSet),
        ]
    }
}

extension VerificationReport.ReferenceFolder {
    static let positionSet =
        "every position of each case's spliced sequence (system text, image, question), as the reference's "
        + "per-stage files hold logits for all of them"

    var json: JSONValue {
        let c = comparison
        let samples = c.cases.sorted { $0.logits.meanKLD > $1.logits.meanKLD }.map { r -> JSONValue in
            [
                "name": .string(r.name), "image": .null, "mean_kld": .double(r.logits.meanKLD),
                "same_top": .double(r.logits.sameTopRate), "vision_cosine": .double(r.vision.cosine),
                "vision_relative_l2": .double(r.vision.relativeL2), "projector_cosine": .double(r.projector.cosine),
                "projector_relative_l2": .double(r.projector.relativeL2), "reference_answer": .null,
                "candidate_answer": .null, "expected_answer": .null, "perplexity_ratio": .null,
            ]
        }
        return [
            "reference": ["kind": "reference-dir", "path": .string(path), "set": .null, "set_digest": .null],
            "logits": c.logits.summaryJSON(positionSet: Self.positionSet),
            "stages": [
                "min_projector_cosine": .double(c.minimumProjectorCosine),
                "vision_layer_relative_l2": [], "decoder_layer_relative_l2": [],
            ],
            "answers": ["agreement": .null, "perplexity_ratio": .null, "exact_match": .null],
            "samples": .array(samples),
        ]
    }
}

extension VerificationReport.Run {
    static let positionSet =
        "the text positions from the last image position on (question, and a set's answer teacher-forced): "
        + "the predictions of text tokens; image positions predict no text"

    var json: JSONValue {
        let c = comparison, l = c.logits
        let kind = reference.hasSuffix(".vlqref") ? "vlqref" : "model"
        return [
            "reference": [
                "kind": .string(kind), "path": .string(reference), "set": .string(set),
                "set_digest": .string(setDigest),
            ],
            "logits": l.summaryJSON(positionSet: Self.positionSet),
            "stages": [
                "min_projector_cosine": c.samples.map(\.projector.cosine).min().map { .double($0) } ?? .null,
                "vision_layer_relative_l2": .array(c.visionLayerDrift.map { .double($0) }),
                "decoder_layer_relative_l2": .array(c.decoderLayerDrift.map { .double($0) }),
            ],
            "answers": [
                "agreement": .double(c.answerAgreement),
                "perplexity_ratio": c.meanPerplexityRatio.map { .double($0) } ?? .null,
                "exact_match": c.exactMatch.map {
                    ["reference": .double($0.reference), "candidate": .double($0.candidate)]
                }
                    ?? .null,
            ],
            "samples": .array(c.samples.sorted { $0.logits.meanKLD > $1.logits.meanKLD }.map(\.json)),
        ]
    }
}

extension RunComparison.Sample {
    var json: JSONValue {
        [
            "name": .string(String(image.split(separator: "/").last ?? "")), "image": .string(image),
            "mean_kld": .double(logits.meanKLD), "same_top": .double(logits.sameTopRate),
            "vision_cosine": .double(vision.cosine), "vision_relative_l2": .double(vision.relativeL2),
            "projector_cosine": .double(projector.cosine), "projector_relative_l2": .double(projector.relativeL2),
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
