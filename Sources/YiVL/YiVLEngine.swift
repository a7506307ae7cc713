import Imaging
import Numerics
import SafeTensors
import Tokenizer
import VLQCore
import VLQFormat

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Yi-VL end to end: image + question in, per-stage outputs and answers out.
public final class YiVLEngine: @unchecked Sendable {
    public let source: String
    public let model: YiVLModel
    public let tokenizer: Tokenizer
    public var config: EngineConfig { model.config }

    public init(source: String, model: YiVLModel, tokenizer: Tokenizer) {
        self.source = source
        self.model = model
        self.tokenizer = tokenizer
    }

    /// Opens a `.vlq` bundle or a Hugging Face Yi-VL folder.
    public static func open(_ path: String, cacheBudget: Int = MemoryBudget.weightCache) throws -> YiVLEngine {
        var st = stat()
        guard stat(path, &st) == 0 else { throw VLQError(CoreError.cannotOpen, path, "no such file or folder") }
        if (st.st_mode & S_IFMT) == S_IFDIR {
            let checkpoint = try YiVLCheckpoint(folder: path)
            let tokenizer = try Tokenizer(contentsOf: checkpoint.tokenizerModelPath)
            let definition = ModelDefinition(EngineConfig(checkpoint.config))
            let model = YiVLModel(
                weights: WeightStore(checkpoint: checkpoint, definition: definition, cacheBudget: cacheBudget))
            return YiVLEngine(source: path, model: model, tokenizer: tokenizer)
        }
        let bundle = try VLQFile(path: path)
        let metadata = try BundleMetadata(json: bundle.metadata, source: path)
        let config = try EngineConfig(metadata, source: path)
        try config.checkTable(of: bundle)
        let tokenizer = try Tokenizer(
            model: try SentencePieceModel(bytes: metadata.tokenizer.model, source: path + " (tokenizer)"),
            source: path)
        let weights = WeightStore(bundle: bundle, definition: ModelDefinition(config), cacheBudget: cacheBudget)
        return YiVLEngine(source: path, model: YiVLModel(weights: weights), tokenizer: tokenizer)
    }

    // MARK: Prompt

    public struct Prompt: Sendable {
        public var before: [Int]
        public var after: [Int]
        /// The prompt's ids with the image marker (-200) where the features go, as Yi's code builds them.
        public var inputIds: [Int] { before + [YiVLChat.imageTokenIndex] + after }
    }

    /// The chat template split at the image placeholder, each piece tokenized on its own; `system`
    /// replaces the model's system prompt.
    public func prompt(question: String, system: String? = nil) -> Prompt {
        let text = config.template.replacing("{system}", with: system ?? config.systemPrompt)
            .replacing("{question}", with: question)
        let pieces = text.split(separator: YiVLChat.imagePlaceholder, maxSplits: 1, omittingEmptySubsequences: false)
        let after = pieces.count > 1 ? String(pieces[1]) : ""
        return Prompt(before: tokenizer.encode(String(pieces[0])), after: tokenizer.encode(after))
    }

    // MARK: Image

    public func pixelValues(imagePath: String) throws -> [Float] {
        try config.preprocessing.pixelValues(path: imagePath)
    }

    public func imageTokenCount() -> Int { config.vision.patchCount + (config.vision.keepClassToken ? 1 : 0) }

    /// Positions of `prompt`'s sequence up to the end of the image's rows.
    public func imageEnd(of prompt: Prompt) -> Int { prompt.before.count + imageTokenCount() }

    // MARK: Generation

    public struct GenerationOptions: Sendable {
        public var maxTokens = 256
        /// 0 is greedy.
        public var temperature: Float = 0
        public var seed: UInt64 = 0

        public init(maxTokens: Int = 256, temperature: Float = 0, seed: UInt64 = 0) {
            self.maxTokens = maxTokens
            self.temperature = temperature
            self.seed = seed
        }
    }

    public struct Generation: Sendable {
        public var answer: String
        public var tokenIds: [Int]
        public var promptTokens: Int
        public var prefillSeconds: Double
        public var decodeSeconds: Double
    }

    /// Answers `question` about the image; `onText` receives the answer as it becomes final.
    public func generate(
        pixels: [Float], question: String, options: GenerationOptions = GenerationOptions(),
        onText: (String) -> Void = { _ in }
    ) throws -> Generation {
        let prompt = prompt(question: question)
        let started = monotonicSeconds()
        let prefill = try forward(
            .image(pixels, prompt: prompt, reserving: options.maxTokens), capture: Capture(lastLogits: true))
        return try generate(continuing: prefill, options: options, started: started, onText: onText)
    }

    /// Answers from a forward pass that captured `lastLogits`, continuing its cache (which must have room
    /// for `options.maxTokens` more positions); its prefill is not counted in `prefillSeconds`.
    public func generate(
        continuing prefill: ForwardOutput, options: GenerationOptions = GenerationOptions(),
        onText: (String) -> Void = { _ in }
    ) throws -> Generation {
        try generate(continuing: prefill, options: options, started: monotonicSeconds(), onText: onText)
    }

    private func generate(
        continuing prefill: ForwardOutput, options: GenerationOptions, started: Double, onText: (String) -> Void
    ) throws -> Generation {
        let generator = AnswerGenerator(
            engine: self, cache: prefill.cache!, logits: prefill.lastLogits, options: options)
        let prefillDone = monotonicSeconds()
        while let piece = try generator.step() {
            if !piece.isEmpty { onText(piece) }
        }
        return Generation(
            answer: generator.answer, tokenIds: generator.tokenIds, promptTokens: prefill.positions,
            prefillSeconds: prefillDone - started, decodeSeconds: monotonicSeconds() - prefillDone)
    }

    static func trim(_ s: String) -> String {
        String(s.drop(while: { $0.isWhitespace }).reversed().drop(while: { $0.isWhitespace }).reversed())
    }

    /// The part of `text` that no further token can change: leading white space trimmed, and any
    /// suffix that is white space, a prefix of a stop string or U+FFFD (a character whose byte pieces
    /// have not all come yet) held back.
    static func finalPrefix(_ text: String, stops: [String]) -> String {
        var s = Substring(text.drop(while: { $0.isWhitespace }))
        var changed = true
        while changed && !s.isEmpty {
            changed = false
            if s.last!.isWhitespace || s.last == "\u{FFFD}" {
                s = s.dropLast()
                changed = true
                continue
            }
            for stop in stops {
                for k in stride(from: min(stop.count - 1, s.count), through: 1, by: -1)
                where s.hasSuffix(stop.prefix(k)) {
                    s = s.dropLast(k)
                    changed = true
                    break
                }
            }
        }
        return String(s)
    }

    func argmax(_ logits: [Float]) -> Int {
        var best = 0
        for i in 1..<logits.count where logits[i] > logits[best] { best = i }
        return best
    }

    func sample(_ logits: [Float], temperature: Float, random: inout SplitMix64) -> Int {
        let maximum = logits.max() ?? 0
        var weights = logits.map { Double(expf(($0 - maximum) / temperature)) }
        let total = weights.reduce(0, +)
        var u = random.nextDouble() * total
        for i in weights.indices {
            u -= weights[i]
            if u <= 0 { return i }
        }
        weights.removeAll()
        return logits.count - 1
    }
}

/// A small seeded generator, so that `--seed` reproduces a sampled answer.
public struct SplitMix64 {
    var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    public mutating func nextDouble() -> Double { Double(next() >> 11) / Double(1 << 53) }
}
