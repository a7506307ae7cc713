/// One answer generated a token at a time over a cache that holds its prompt: the loop behind both
/// `YiVLEngine.generate` and chat sessions, so that they pick, stop and stream alike.
///
/// Each `step()` picks a token from the current logits (greedy, or sampled at `options.temperature`),
/// stops at end-of-text or a stop string, and otherwise runs the token through the decoder for the
/// next logits. A caller may stop between steps (cancellation); the cache then holds every token
/// generated so far.
public final class AnswerGenerator {
    /// Why the answer ended.
    public enum Finish: Sendable, Equatable {
        /// A stop string appeared (`###`): the answer is the text before it.
        case stopString
        /// The model produced `<|endoftext|>`.
        case endOfText
        /// `options.maxTokens` tokens were generated.
        case maxTokens
        /// The caller ended it between steps (`stop()`).
        case stopped
    }

    /// The engine whose model and tokenizer generate.
    public let engine: YiVLEngine
    /// Holds the prompt; every generated token is appended to it, but one that completed a stop string.
    public let cache: YiVLModel.KVCache
    /// Token limit, temperature and seed.
    public let options: YiVLEngine.GenerationOptions
    /// Every token picked, the one that completed a stop string included (end-of-text excluded).
    public private(set) var tokenIds: [Int] = []
    /// How many of `tokenIds` the cache holds: all but one that completed a stop string, which is
    /// never run through the decoder.
    public private(set) var cachedTokenCount = 0
    /// The answer so far; once finished, trimmed and cut before the stop string.
    public private(set) var answer = ""
    public private(set) var finish: Finish?

    private var logits: [Float]
    private var random: SplitMix64
    private let endOfText: Int?
    /// Unicode scalars of the answer handed out so far. Scalars, not Characters: a later token can
    /// join the last emitted character (a combining mark) without changing the Character count.
    private var emitted = 0

    /// `logits` are those of the prompt's last position, whose keys and values `cache` holds.
    public init(engine: YiVLEngine, cache: YiVLModel.KVCache, logits: [Float], options: YiVLEngine.GenerationOptions) {
        self.engine = engine
        self.cache = cache
        self.options = options
        self.logits = logits
        random = SplitMix64(seed: options.seed)
        endOfText = engine.tokenizer.id(of: "<|endoftext|>")
    }

    /// Generates one token. Returns the text that became final with it (often empty: white space and
    /// what could still become a stop string are held back), the rest of the answer on the step that
    /// finishes it, and nil once finished.
    public func step() throws -> String? {
        guard finish == nil else { return nil }
        guard tokenIds.count < options.maxTokens else { return finishing(.maxTokens) }
        let next =
            options.temperature > 0
            ? engine.sample(logits, temperature: options.temperature, random: &random) : engine.argmax(logits)
        if next == endOfText { return finishing(.endOfText) }
        tokenIds.append(next)
        let stops = engine.config.stopStrings
        let text = engine.tokenizer.decode(tokenIds)
        if let stop = stops.compactMap({ text.firstRange(of: $0) }).min(by: { $0.lowerBound < $1.lowerBound }) {
            answer = String(text[..<stop.lowerBound])
            return finishing(.stopString)
        }
        answer = text
        let piece = newlyFinal(YiVLEngine.finalPrefix(text, stops: stops))
        logits = try engine.forward(.tokens([next], continuing: cache), capture: .init(lastLogits: true)).lastLogits
        cachedTokenCount = tokenIds.count
        return piece
    }

    /// Ends the answer where it stands (its caller was cancelled, or its chat moved on); returns the
    /// text not handed out yet.
    public func stop() -> String {
        guard finish == nil else { return "" }
        return finishing(.stopped)
    }

    private func finishing(_ reason: Finish) -> String {
        finish = reason
        answer = YiVLEngine.trim(answer)
        return newlyFinal(answer)
    }

    /// What `final` holds beyond the text already handed out.
    private func newlyFinal(_ final: String) -> String {
        let scalars = final.unicodeScalars
        guard scalars.count > emitted else { return "" }
        defer { emitted = scalars.count }
        return String(String.UnicodeScalarView(scalars.dropFirst(emitted)))
    }
}
