import Allocation
import ArgumentParser
import Calibration
import Conversion
import Foundation
import Logging
import Numerics
import Quantization
import VLQCore
import VLQFormat

/// A model argument that may be a Hugging Face folder: converted to a temporary bundle beside
/// `scratchBeside` first (removed afterwards), so every later step reads one format.
func openBundle(
    _ model: String, scratchBeside: String,
    logger: Logging.Logger
) throws -> (VLQFile, cleanup: () -> Void) {
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: model, isDirectory: &isDirectory) else {
        throw VLQError(CoreError.cannotOpen, model, "no such file or folder")
    }
    if !isDirectory.boolValue { return (try VLQFile(path: model), {}) }
    let temporary = scratchBeside + ".source-\(getpid()).vlq.tmp"
    logger.info("converting \(model) first (to \(temporary), removed afterwards)")
    _ = try Converter(options: ConvertOptions(), logger: logger).convert(folder: model, output: temporary)
    return (try VLQFile(path: temporary), { try? FileManager.default.removeItem(atPath: temporary) })
}

struct Calibrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a calibration set of images and questions through the fp32 model; "
            + "save the statistics of every Linear's inputs.",
        discussion: """
            The statistics (sums of |x| and x^2 per input channel, and X^T X for gptq and awq) are stored \
            zstd-compressed with the set's digest. They are sums: `--merge a.vlqstats b.vlqstats` adds runs \
            over parts of a large set.
            """
    )

    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder (omit with --merge).")
    var model: String?

    @Option(help: "A JSONL manifest ({\"image\", \"question\"}) or a folder of images.")
    var set: String?

    @Option(name: .shortAndLong, help: "The .vlqstats file to write.")
    var output: String

    @Flag(name: .customLong("diagonal-only"), help: "Skip X^T X: enough for imatrix and much smaller.")
    var diagonalOnly = false

    @Option(parsing: .upToNextOption, help: "Merge these .vlqstats files instead of calibrating.")
    var merge: [String] = []

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    func validate() throws {
        if merge.isEmpty {
            guard model != nil, set != nil else { throw ValidationError("give a model and --set, or --merge FILES") }
        } else {
            guard merge.count >= 2, model == nil, set == nil else {
                throw ValidationError("--merge takes two or more files and no model or set")
            }
        }
    }

    func run() throws {
        try OutputPath.check(output, inputs: merge + [model, set].compactMap { $0 })
        compute.apply()
        let logger = global.makeLogger("vlq.calibrate")
        if !merge.isEmpty {
            var merged = try StatisticsFile.read(merge[0])
            for path in merge.dropFirst() { try merged.merge(try StatisticsFile.read(path), subject: path) }
            try merged.write(to: output)
            logger.notice("wrote \(output): \(merged.samples) samples from \(merge.count) files")
            return
        }
        let calibrationSet = try CalibrationSet(path: set!)
        let progress = global.progress("calibrate", logger: logger, unit: "samples")
        let started = monotonicSeconds()
        let collector = try CalibrationRunner.collect(
            model: LazyModel(model!), set: calibrationSet, withGram: !diagonalOnly,
            gramBudget: MemoryBudget.gramStatistics, progress: progress.update)
        let samples = calibrationSet.samples.count
        let file = StatisticsFile(
            collector: collector, setDigest: calibrationSet.digest, samples: samples,
            model: model!)
        try file.write(to: output)
        let wrote =
            "wrote \(output): \(collector.statistics.count) Linear inputs over \(samples) samples in "
            + "\(fixed(monotonicSeconds() - started, 1)) s (set \(calibrationSet.digest))"
        logger.notice("\(wrote)")
    }
}

struct Quantize: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model to int8 / int4 / int3 groups, calibrated with images, from a preset or a recipe.",
        discussion: """
            Presets: int8 (every Linear and the embeddings in int8, vision tower included), int4 (LLM Linears \
            4-bit affine group 128; vision tower, projector, embeddings and lm_head int8), int3 (as int4 with \
            LLM Linears 3-bit affine group 64), int4-all (the vision tower and projector in 4 bits too, \
            calibrated through the tower with the images). Norms, biases and class/position/patch embeddings \
            stay in float. Methods: rtn, imatrix, awq, gptq; all but rtn need --set (calibrate now) or --stats \
            (from vlq calibrate). Or let quantize choose precision from measured drift: --max-kld, --target-bits \
            or --max-size, with --set; --allocate llm (default) chooses it for each decoder Linear and stores \
            the rest as int4 does (bits counted per LLM Linear weight), all for every quantizable layer.
            """
    )

    @Argument(help: "A .vlq bundle or a Hugging Face Yi-VL folder.")
    var model: String

    @Option(name: .shortAndLong, help: "The quantized .vlq file to write.")
    var output: String

    @Option(help: "int8, int4, int3 or int4-all.")
    var preset: Preset?

    @Option(help: "A recipe JSON file (see formats/RECIPES.md).")
    var recipe: String?

    @Option(help: "rtn, imatrix, awq or gptq (default: the recipe's; else gptq with --set or --stats, rtn without).")
    var method: QuantizationMethod?

    @Option(help: "Calibration set: a JSONL manifest or a folder of images.")
    var set: String?

    @Option(help: "Statistics from vlq calibrate.")
    var stats: String?

    @Flag(
        name: .customLong("keep-non-finite"),
        help: "Keep tensors holding NaN or infinite values in their float encoding instead of refusing them.")
    var keepNonFinite = false

    @Flag(name: .customLong("act-order"), help: "GPTQ: quantize columns in order of decreasing activation energy.")
    var activationOrder = false

    @Option(
        name: .customLong("max-kld"),
        help: ArgumentHelp(
            "Choose each unit's precision: the smallest bundle whose mean KLD against the model, on calibration "
                + "samples held out from --set, stays within this bound."))
    var maxKLD: Double?

    @Option(
        name: .customLong("target-bits"),
        help: ArgumentHelp(
            "Choose each unit's precision: the least drift at this many bits per weight of the units "
                + "(per LLM Linear weight with --allocate llm)."))
    var targetBits: Double?

    @Option(
        name: .customLong("max-size"),
        help: "Choose each unit's precision: the least drift within this bundle size (e.g. 3.2GB, 800MB).")
    var maxSize: ByteSize?

    @Option(
        name: .customLong("allocate"),
        help: ArgumentHelp(
            "With --max-kld, --target-bits or --max-size: llm (the default: each decoder Linear; vision tower, "
                + "projector, embeddings and lm_head as int4 stores them) or all (every quantizable layer).",
            valueName: "scope"))
    var scope: AllocationRecord.Scope?

    @Option(
        help: ArgumentHelp(
            "With --max-kld, --target-bits or --max-size: the encodings to choose among, e.g. q3g64,q4g128,q8g128 "
                + "(default: q3 g128/g64, q4 g128/g64/g32, q8 g128, f16)."))
    var choices: ChoiceList?

    @Option(
        name: .customLong("sensitivity-samples"),
        help: ArgumentHelp(
            "With --max-kld, --target-bits or --max-size: calibration samples each unit's drift is measured on "
                + "(default: 16)."))
    var sensitivitySamples: Int?

    @Option(
        name: .customLong("gram-memory-mb"),
        help: ArgumentHelp(
            "Memory for X^T X statistics with --set (default: a quarter of RAM); "
                + "more layers per calibration pass."))
    var gramBudgetMB: Int?

    @OptionGroup var global: GlobalOptions

    @OptionGroup var compute: ComputeOptions

    /// The allocation goal, when one of --max-kld, --target-bits, --max-size was given.
    var goal: MixedPrecisionSearch.Goal? {
        if let maxKLD { return .maxKLD(maxKLD) }
        if let targetBits { return .targetBits(targetBits) }
        return maxSize.map { .maxBytes($0.bytes) }
    }

    func validate() throws {
        if set != nil && stats != nil { throw ValidationError("give --set or --stats, not both") }
        let goals = [maxKLD != nil, targetBits != nil, maxSize != nil].filter { $0 }.count
        guard goals > 0 else {
            if scope != nil || choices != nil || sensitivitySamples != nil {
                throw ValidationError(
                    "--allocate, --choices and --sensitivity-samples go with --max-kld, --target-bits or --max-size")
            }
            guard (preset == nil) != (recipe == nil) else {
                throw ValidationError("give exactly one of --preset and --recipe")
            }
            return
        }
        guard goals == 1 else { throw ValidationError("give one of --max-kld, --target-bits and --max-size") }
        guard preset == nil && recipe == nil else {
            throw ValidationError(
                "--max-kld, --target-bits and --max-size choose the precision: no --preset or --recipe")
        }
        guard set != nil else {
            throw ValidationError(
                "choosing precision needs --set (calibration images; a part is held out to check the result)")
        }
        if let maxKLD, !(maxKLD > 0 && maxKLD.isFinite) { throw ValidationError("--max-kld must be a positive number") }
        if let targetBits, !(targetBits >= 2 && targetBits <= 32) {
            throw ValidationError("--target-bits must be between 2 and 32")
        }
        if let sensitivitySamples, sensitivitySamples < 1 {
            throw ValidationError("--sensitivity-samples must be at least 1")
        }
        if method == .awq {
            throw ValidationError(
                "awq folds scales across layers, so one layer's precision changes another's: use gptq, imatrix or rtn")
        }
    }

    func run() throws {
        try OutputPath.check(output, inputs: [model, recipe, set, stats].compactMap { $0 })
        compute.apply()
        let logger = global.makeLogger("vlq.quantize")
        if let goal { return try allocate(goal, logger: logger) }
        var chosen: Recipe
        if let preset {
            chosen = Recipe.preset(preset.rawValue)!
        } else {
            let file = try MappedFile(path: recipe!)
            let json: JSONValue
            do { json = try JSONValue.parse(file.bytes) } catch {
                throw VLQError(CoreError.malformedJSON, recipe!, "\(error)")
            }
            chosen = try Recipe(json: json, source: recipe!)
        }
        if let method { chosen.method = method }
        chooseMethodForCalibration(&chosen, logger: logger)
        let need = QuantizationPlan.needs(chosen)
        if need.statistics && set == nil && stats == nil {
            throw ValidationError(
                "method \(chosen.method?.rawValue ?? "") is calibrated: "
                    + "give --set (e.g. calibration/default.jsonl) or --stats")
        }
        let started = monotonicSeconds()
        let (source, cleanup) = try openBundle(model, scratchBeside: output, logger: logger)
        defer { cleanup() }
        var options = QuantizePipeline.Options(recipe: chosen)
        options.activationOrder = activationOrder
        options.keepNonFiniteInFloat = keepNonFinite
        options.recipeSource = recipe
        let pipeline = QuantizePipeline(options: options, logger: logger)
        try pipeline.preflight(source: source)
        let statistics = try statisticsSource(for: source, needs: need, logger: logger)
        let progress = global.progress("quantize", logger: logger, unit: "tensors")
        let report = try pipeline.run(
            source: source, output: output, statistics: statistics,
            calibrationSource: stats ?? set, progress: progress.update)
        logFallbacks(report.fallbacks, logger: logger)
        let wrote =
            "wrote \(output): \(report.quantized) of \(report.tensors) tensors quantized "
            + "(\(chosen.name), \(chosen.method?.rawValue ?? "rtn")), \(formatBytes(report.outputBytes)) "
            + "in \(fixed(monotonicSeconds() - started, 1)) s"
        logger.notice("\(wrote)")
    }

    /// --max-kld / --target-bits / --max-size: the precision of each layer chosen from measured drift.
    func allocate(_ goal: MixedPrecisionSearch.Goal, logger: Logging.Logger) throws {
        let started = monotonicSeconds()
        let (source, cleanup) = try openBundle(model, scratchBeside: output, logger: logger)
        defer { cleanup() }
        var options = MixedPrecisionSearch.Options(goal: goal)
        options.method = method ?? .gptq
        options.activationOrder = activationOrder
        if let scope { options.scope = scope }
        if let choices { options.choices = choices.choices }
        if let sensitivitySamples { options.sensitivitySamples = sensitivitySamples }
        let search = MixedPrecisionSearch(options: options, logger: logger)
        let calibrationSet = try CalibrationSet(path: set!)
        let (statisticsPart, _) = try search.split(calibrationSet)
        let need = (statistics: options.method != .rtn, gram: options.method == .gptq)
        let statistics = try statisticsSource(for: source, set: statisticsPart, needs: need, logger: logger)
        let scratch = output + ".allocate-\(getpid()).tmp"
        guard mkdir(scratch, 0o700) == 0 else {
            throw VLQError(CoreError.cannotWrite, scratch, "cannot create a scratch folder: \(systemError())")
        }
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        let report = try search.run(
            source: source, set: calibrationSet, statistics: statistics, output: output,
            scratch: scratch)
        for line in report.record.lines { logger.info("\(line)") }
        let r = report.record
        let wrote =
            "wrote \(output): \(fixed(r.bitsPerWeight, 2)) bits per weight over \(r.units.count) units "
            + "(\(r.scope.description)), held-out "
            + "mean KLD \(scientific(r.heldOutKLD)) (\(r.goal.description)), \(formatBytes(report.outputBytes)) in "
            + "\(fixed(monotonicSeconds() - started, 1)) s"
        logger.notice("\(wrote)")
    }

    /// One line per reason: the seven Linears of a vision layer the model never runs share one.
    func logFallbacks(_ fallbacks: [(name: String, reason: String)], logger: Logging.Logger) {
        let byReason = Dictionary(grouping: fallbacks, by: \.reason)
        for (reason, tensors) in byReason.sorted(by: { $0.value[0].name < $1.value[0].name }) {
            let names = tensors.map(\.name)
            let listed = names.count <= 2 ? names.joined(separator: ", ") : "\(names.count) tensors (\(names[0]), ...)"
            logger.info("fallback \(listed): \(reason)")
        }
    }

    /// Calibration given without a method gets the calibrated method with the least drift in the README's
    /// table (gptq) rather than rtn, which would ignore it; rtn asked for together with calibration is warned
    /// about (a script may pass the same calibration to every method).
    func chooseMethodForCalibration(_ recipe: inout Recipe, logger: Logging.Logger) {
        guard let given = set.map({ _ in "--set" }) ?? stats.map({ _ in "--stats" }) else { return }
        if recipe.method == nil {
            recipe.method = .gptq
            logger.notice("\(given) given and no --method: quantizing with gptq (--method picks another)")
        }
        if !QuantizationPlan.needs(recipe).statistics {
            logger.warning("method rtn uses no calibration: \(given) is ignored (imatrix, awq and gptq use it)")
        }
    }

    /// The statistics the recipe's methods read: from --stats, or calibrated now with --set.
    func statisticsSource(
        for source: VLQFile, set given: CalibrationSet? = nil, needs need: (statistics: Bool, gram: Bool),
        logger: Logging.Logger
    ) throws -> StatisticsSource? {
        if let stats { return StoredStatistics(try StatisticsFile.read(stats)) }
        guard need.statistics, let set else { return nil }
        let calibrationSet = try given ?? CalibrationSet(path: set)
        // Upcast weights and X^T X windows share the memory: a quarter each.
        let engine = LazyModel(source.path, cacheBudget: MemoryBudget.weightCache / 2)
        if need.gram {
            // X^T X of a large model may not fit at once: the quantization plan divides it into
            // windows, one calibration pass each.
            let budget = gramBudgetMB.map { $0 << 20 } ?? MemoryBudget.gramStatistics
            // A bar per calibration pass: the first collects the sums, each later one a window of X^T X.
            var bar: (pass: Int, progress: ByteProgress)?
            return try WindowedStatistics(
                model: engine, set: calibrationSet, budget: budget, progress: { logger.info("\($0)") },
                sampleProgress: { pass, done, total in
                    if bar?.pass != pass {
                        bar = (pass, global.progress("calibration pass \(pass)", logger: logger, unit: "samples"))
                    }
                    bar!.progress.update(done, total)
                })
        }
        let progress = global.progress("calibrate", logger: logger, unit: "samples")
        let collector = try CalibrationRunner.collect(
            model: engine, set: calibrationSet, withGram: false,
            progress: progress.update)
        return StoredStatistics(
            StatisticsFile(
                collector: collector, setDigest: calibrationSet.digest,
                samples: calibrationSet.samples.count, model: model))
    }
}
