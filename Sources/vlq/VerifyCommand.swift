import ArgumentParser
import Calibration
import Foundation
import Logging
import Numerics
import VLQCore
import Verification

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

    @Option(
        help: ArgumentHelp(
            "The reference: a .vlqref file from vlq reference, "
                + "or a model (bundle or Hugging Face folder) run first on --set."))
    var reference: String?

    @Option(
        name: .customLong("layer-samples"),
        help: "Samples whose per-layer hidden states are compared (with --reference).")
    var layerSamples: Int = 4

    @Option(
        name: .customLong("rank-layers"),
        help: ArgumentHelp(
            "With --reference MODEL: rank the candidate's quantized layers by their own drift, "
                + "each quantized alone, on this many samples."))
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

    @OptionGroup var compute: ComputeOptions

    @OptionGroup var decode: DecodeOptions

    func validate() throws {
        guard referenceDir != nil || set != nil else { throw ValidationError("give --reference-dir, --set, or both") }
        if reference != nil && set == nil { throw ValidationError("--reference needs --set") }
        if let rankSamples, rankSamples < 1 {
            throw ValidationError("--rank-layers needs a positive number of samples")
        }
        // Ranking quantizes each layer into the reference model's weights: a stored run has none.
        if rankSamples != nil, reference == nil || reference!.hasSuffix(".vlqref") {
            throw ValidationError("--rank-layers needs --reference to be a model (bundle or folder), not a .vlqref")
        }
        let bounded = maxKLD != nil || minSameTop != nil || minCosine != nil
        if bounded && referenceDir == nil && reference == nil {
            throw ValidationError("--max-kld, --min-same-top and --min-cosine need --reference-dir or --reference")
        }
        if json == "-" && html == "-" { throw ValidationError("only one of --json and --html can go to stdout") }
    }

    func run() throws {
        let inputs = [candidate] + [referenceDir, reference, set].compactMap { $0 }
        for output in [json, html].compactMap({ $0 }) where output != "-" {
            try OutputPath.check(output, inputs: inputs)
        }
        compute.apply()
        useCandidateActivations()
        let logger = global.makeLogger("vlq.verify")
        let candidateModel = LazyModel(candidate)
        let bounds = VerificationBounds(maxKLD: maxKLD, minSameTop: minSameTop, minCosine: minCosine)
        var report = VerificationReport(candidate: candidate, bounds: bounds)
        say(report.candidateLine)
        if let referenceDir {
            let references = try ReferenceCase.load(folder: referenceDir)
            let comparison = try ReferenceComparison.run(candidate: candidateModel, references: references)
            report.referenceFolder = .init(path: referenceDir, comparison: comparison)
            report.referenceFolder!.lines.forEach { say($0) }
        }
        if let set, let reference {
            try measureRun(reference: reference, set: set, into: &report, candidate: candidateModel, logger: logger)
        } else if let set {
            let evaluation = try CalibrationSet(path: set)
            let progress = global.progress("answers", logger: logger, unit: "samples")
            let result = try ExactMatch.run(
                candidateModel, set: evaluation, maxTokens: maxTokens,
                progress: progress.update)
            report.answers = .init(set: set, result: result)
            report.answers!.lines.forEach { say($0) }
        }
        if let json { try write(report.json.serialized(pretty: true) + "\n", to: json, logger: logger) }
        if let html { try write(report.html, to: html, logger: logger) }
        if let failure = report.failure { throw failure }
        say(report.verdict)
    }

    /// --activations for the candidate's runs, on every row of its language model: the teacher-forced
    /// logits (KLD, same top) then measure what int8 activations cost, as if every position were decoded.
    func useCandidateActivations() {
        DecodeActivations.use(decode.activations, everyLanguageRow: true)
    }

    /// The report's lines: on stdout, unless the JSON or HTML goes there.
    func say(_ line: String) {
        if json == "-" || html == "-" { printError(line) } else { print(line) }
    }

    /// `-` is stdout; a file appears whole or not at all.
    func write(_ text: String, to path: String, logger: Logging.Logger) throws {
        if path == "-" {
            FileHandle.standardOutput.write(Data(text.utf8))
            return
        }
        let file = try AtomicOutputFile(targetPath: path)
        try file.write(Array(text.utf8), at: 0)
        try file.commit()
        logger.info("wrote \(path)")
    }

    /// The candidate against the reference model (run first, or read from a .vlqref) on `set`, and with
    /// --rank-layers each quantized layer's own drift.
    func measureRun(
        reference: String, set: String, into report: inout VerificationReport,
        candidate: LazyModel, logger: Logging.Logger
    ) throws {
        let evaluation = try CalibrationSet(path: set)
        let progress = global.progress("verify", logger: logger, unit: "samples")
        let stored: ReferenceRun
        if reference.hasSuffix(".vlqref") {
            stored = try ReferenceRun.read(reference)
        } else {
            // The reference runs first and is released before the candidate is opened; always exact.
            DecodeActivations.use(.f32)
            stored = try ReferenceRun.run(
                model: LazyModel(reference), set: evaluation, layerSamples: layerSamples, maxTokens: maxTokens,
                progress: progress.update)
            useCandidateActivations()
        }
        let comparison = try RunComparison.run(
            candidate: candidate, reference: stored, set: evaluation,
            maxTokens: maxTokens, progress: progress.update)
        report.run = .init(reference: reference, set: set, setDigest: evaluation.digest, comparison: comparison)
        report.run!.lines.forEach { say($0) }
        guard let rankSamples else { return }
        // Each layer's own drift, quantized into the reference model's weights: f32 activations.
        DecodeActivations.use(.f32)
        let entries = try LayerContribution.rank(
            reference: LazyModel(reference), candidate: candidate, run: stored, set: evaluation,
            samples: rankSamples, progress: progress.update)
        report.layerRanking = .init(samples: rankSamples, entries: entries)
        report.layerRanking!.lines.forEach { say($0) }
    }
}
