import Tokenizer
import VLQCore
import YiVL

/// One question on its way through a conversation: what a `ChatReply` steps. Touched only on the
/// model's executor (`ModelExecutor`), one step at a time, which makes `@unchecked Sendable` honest.
final class Turn: @unchecked Sendable {
    enum State {
        case waiting
        /// Generating; the turn's record so far (stats, prompt ids) beside the generator.
        case running(AnswerGenerator, ChatTurn)
        case finished(ChatTurn)
        case failed(any Error)
    }

    let question: String
    let options: GenerationOptions
    var state = State.waiting

    init(question: String, options: GenerationOptions) {
        self.question = question
        self.options = options
    }
}

/// A chat about one image: the key/value cache, the tokens it holds and the finished turns. Its
/// methods run only on the model's executor, one at a time, which makes `@unchecked Sendable` honest.
///
/// The cache holds, in order: the system text before the image, the image's positions, the first
/// question's text, then for every turn the answer's generated tokens and the next question's text.
final class Conversation: @unchecked Sendable {
    let engine: YiVLEngine
    let image: VLQImage
    let system: String?
    private(set) var turns: [ChatTurn] = []
    /// Text token ids after the image, in cache order.
    private(set) var textIds: [Int] = []

    private var pixels: [Float]?
    private var cache: YiVLModel.KVCache?
    /// Positions the system text and the image take at the start of the cache; 0 before the first turn.
    private var imageEnd = 0
    /// The turn generating now.
    private var current: Turn?
    /// The previous answer and those of its generated tokens the cache holds: where a follow-up goes on.
    private var previous: (answer: String, cachedIds: [Int])?

    init(engine: YiVLEngine, image: VLQImage, system: String?) {
        self.engine = engine
        self.image = image
        self.system = system
    }

    var contextTokens: Int { cache?.length ?? 0 }

    func loadPixels() throws {
        if pixels == nil { pixels = try image.pixelValues(engine.config.preprocessing) }
    }

    // MARK: Stepping a turn

    /// One step of `turn`: its prefill when it has not begun, else one token. Returns the text that
    /// became final (often empty) or nil once the turn is over.
    func advance(_ turn: Turn) throws -> String? {
        switch turn.state {
        case .finished, .failed:
            return nil
        case .waiting:
            do {
                try begin(turn)
            } catch {
                turn.state = .failed(error)
                throw error
            }
            return ""
        case .running(let generator, var record):
            let started = monotonicSeconds()
            let piece: String?
            do {
                piece = try generator.step()
            } catch {
                // The cache may hold half a step: the conversation cannot go on from it.
                turn.state = .failed(error)
                forgetEverything()
                throw error
            }
            record.stats.decodeSeconds += monotonicSeconds() - started
            turn.state = .running(generator, record)
            if let finish = generator.finish { complete(turn, reason(finish, of: turn)) }
            return piece
        }
    }

    /// Stops `turn` for a cancelled task: a running turn ends with its answer so far; one that has not
    /// begun never joins the conversation.
    func cancel(_ turn: Turn) -> String? {
        switch turn.state {
        case .waiting:
            turn.state = .failed(CancellationError())
        case .running(let generator, _):
            _ = generator.stop()
            complete(turn, .cancelled)
        case .finished, .failed:
            break
        }
        return nil
    }

    /// The finished turn, or the error that ended it.
    func outcome(of turn: Turn) throws -> ChatTurn {
        switch turn.state {
        case .finished(let record): return record
        case .failed(let error): throw error
        case .waiting, .running:
            throw VLQError(ChatError.turnNotFinished, nil, "the turn \"\(turn.question)\" has not finished")
        }
    }

    func reset() {
        if let running = current { interrupt(running) }
        turns = []
        previous = nil
        textIds = []
        cache?.truncate(to: imageEnd)
    }

    // MARK: Prefill

    /// Checks that the turn fits the context, then runs its new tokens through the model: the whole
    /// prompt with the image on a first turn, else only the text after what the cache keeps.
    private func begin(_ turn: Turn) throws {
        if let running = current, running !== turn { interrupt(running) }
        try loadPixels()
        let started = monotonicSeconds()
        let context = engine.config.language.maxPositions
        var stats = TurnStats(
            reusedTokens: 0, promptTokens: 0, generatedTokens: 0, prefillSeconds: 0, decodeSeconds: 0,
            contextTokens: 0)
        let logits: [Float]
        if let cache, imageEnd > 0 {
            let (dropped, ids) = continuation(question: turn.question)
            let kept = cache.length - dropped
            try checkContext(kept + ids.count, context: context)
            cache.truncate(to: kept)
            textIds.removeLast(dropped)
            reserve(cache, prompt: kept + ids.count, options: turn.options, context: context)
            do {
                logits = try engine.forward(.tokens(ids, continuing: cache), capture: .init(lastLogits: true))
                    .lastLogits
            } catch {
                forgetEverything()
                throw error
            }
            textIds += ids
            (stats.reusedTokens, stats.promptTokens) = (kept, ids.count)
        } else {
            let prompt = engine.prompt(question: turn.question, system: system)
            let imageEnd = engine.imageEnd(of: prompt), positions = imageEnd + prompt.after.count
            try checkContext(positions, context: context)
            let cache = engine.model.makeCache(capacity: 0)
            reserve(cache, prompt: positions, options: turn.options, context: context)
            logits = try engine.forward(
                .image(pixels!, prompt: prompt, continuing: cache), capture: .init(lastLogits: true)
            ).lastLogits
            (self.cache, self.imageEnd, textIds) = (cache, imageEnd, prompt.after)
            stats.promptTokens = positions
        }
        let cache = self.cache!
        let options = YiVLEngine.GenerationOptions(
            maxTokens: min(turn.options.maxTokens, context - cache.length),
            temperature: turn.options.temperature, seed: turn.options.seed)
        stats.prefillSeconds = monotonicSeconds() - started
        let record = ChatTurn(
            question: turn.question, answer: "", finish: .endOfAnswer, stats: stats,
            promptTextIds: textIds)
        turn.state = .running(AnswerGenerator(engine: engine, cache: cache, logits: logits, options: options), record)
        current = turn
    }

    /// The number of cached positions to drop from the end and the token ids to append for the next
    /// question. After a reset that is the question as a first turn writes it after the image.
    ///
    /// After an answer it is Yi's follow-up text (`YiVLChat.followUpTemplate`), `" {answer}\n### Human:
    /// {question}\n### Assistant:"`. The answer's generated tokens stay as generated as far as their
    /// text spells the recorded answer (stripped, as Yi's cli.py stores it) up to a place where a piece
    /// starts. The rest (what of the answer they do not spell, e.g. after a doubled leading space; the
    /// separator, which the cache may hold part of when a stop string ended the answer; the new
    /// question) is tokenized as one piece WITHOUT the dummy-prefix space: Yi's code re-tokenizes the
    /// whole text after the image as one piece, in which this text sits mid-string, where sentencepiece
    /// adds no space. Yi's tokens and ours then differ only where the kept answer tokens do.
    private func continuation(question: String) -> (dropped: Int, ids: [Int]) {
        guard let previous else { return (0, engine.prompt(question: question, system: system).after) }
        let (keep, text) = Conversation.followUp(
            answer: previous.answer, cachedIds: previous.cachedIds,
            question: question, tokenizer: engine.tokenizer)
        return (previous.cachedIds.count - keep, engine.tokenizer.encode(text, dummyPrefix: false))
    }

    /// How many of `cachedIds` (the previous answer's generated tokens) to keep, and the text after them:
    /// the kept tokens' text is a prefix of the answer part of the follow-up text, cut before a space
    /// or a line break. Usually every answer token is kept and the text starts at the separator.
    static func followUp(
        answer: String, cachedIds: [Int], question: String,
        tokenizer: Tokenizer
    ) -> (keep: Int, text: String) {
        let template = YiVLChat.followUpTemplate
        // Filled piecewise, so that an answer holding "{question}" stays as written.
        let head = template.split(separator: "{answer}", maxSplits: 1, omittingEmptySubsequences: false)
        let tail = head[1].split(separator: "{question}", maxSplits: 1, omittingEmptySubsequences: false)
        let target = Array((head[0] + answer + tail[0] + question + tail[1]).utf8)
        let answerEnd = head[0].utf8.count + answer.utf8.count
        var keep = 0, matched = 0
        while keep < cachedIds.count {
            let bytes = tokenizer.bytes(of: cachedIds[keep])
            guard matched + bytes.count <= answerEnd,
                target[matched..<(matched + bytes.count)].elementsEqual(bytes)
            else { break }
            matched += bytes.count
            keep += 1
        }
        // Cut only where a piece of Yi's whole-text tokenization starts: before a space (sentencepiece
        // starts a piece at each "▁") or a line break. A cut inside a word, after a space or inside a
        // UTF-8 character backs up to the previous such place, so the rest tokenizes as Yi's text does.
        while keep > 0, matched < target.count, target[matched] != 0x20, target[matched] != 0x0A {
            keep -= 1
            matched -= tokenizer.bytes(of: cachedIds[keep]).count
        }
        return (keep, String(decoding: target[matched...], as: UTF8.self))
    }

    /// Refuses a prompt of `positions` that leaves no room for the answer's first token.
    private func checkContext(_ positions: Int, context: Int) throws {
        guard positions < context else {
            throw VLQError(
                ModelError.contextExceeded,
                engine.source,
                "the conversation would take \(positions) positions before its answer, "
                    + "and the model's context is \(context): reset the chat or start a new one")
        }
    }

    /// Grows `cache` to hold the prompt and the longest answer the options and the context allow;
    /// doubling at least, so that a long chat copies its cache a few times only.
    private func reserve(_ cache: YiVLModel.KVCache, prompt: Int, options: GenerationOptions, context: Int) {
        let needed = min(context, prompt + max(options.maxTokens, 0))
        if needed > cache.capacity { cache.reserve(min(context, max(needed, 2 * cache.capacity))) }
    }

    // MARK: Ending a turn

    private func reason(_ finish: AnswerGenerator.Finish, of turn: Turn) -> FinishReason {
        switch finish {
        case .stopString, .endOfText: return .endOfAnswer
        case .maxTokens:
            guard case .running(let generator, _) = turn.state else { return .maxTokens }
            return generator.tokenIds.count < turn.options.maxTokens ? .contextFull : .maxTokens
        case .stopped: return .cancelled
        }
    }

    /// Ends a running turn because another began.
    private func interrupt(_ turn: Turn) {
        guard case .running(let generator, _) = turn.state else { return }
        _ = generator.stop()
        complete(turn, .interrupted)
    }

    /// Records a turn whose generator finished; the cache keeps the tokens it generated.
    private func complete(_ turn: Turn, _ reason: FinishReason) {
        guard case .running(let generator, var record) = turn.state, let cache else { return }
        let cachedIds = Array(generator.tokenIds.prefix(generator.cachedTokenCount))
        textIds += cachedIds
        record.answer = generator.answer
        record.finish = reason
        record.stats.generatedTokens = generator.tokenIds.count
        record.stats.contextTokens = cache.length
        turns.append(record)
        previous = (record.answer, cachedIds)
        turn.state = .finished(record)
        if current === turn { current = nil }
    }

    /// After an engine error mid-step the cache cannot be trusted: the next turn starts afresh.
    private func forgetEverything() {
        (cache, imageEnd, textIds, turns, previous, current) = (nil, 0, [], [], nil, nil)
    }
}
