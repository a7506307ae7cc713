import YiVL

/// A conversation about one image, in Yi-VL's multi-round format. The system prompt, the image, the
/// earlier questions and the answers stay in the model's key/value cache, so a follow-up's prefill
/// runs only the text that is new since the previous answer.
///
/// Turns run in the order their replies are first iterated. Starting a turn while the previous one is
/// still generating ends that one where it stands (`FinishReason.interrupted`); its partial answer
/// stays in the conversation. A session is `Sendable`; its work runs on its model's executor.
///
/// To ask about another image, open another session; `reset()` forgets the turns but keeps the image.
public final class ChatSession: Sendable {
    let executor: ModelExecutor
    let conversation: Conversation

    init(executor: ModelExecutor, conversation: Conversation) {
        self.executor = executor
        self.conversation = conversation
    }

    /// Asks `question`; the reply streams the answer's text pieces. Nothing runs until the reply is
    /// iterated (or its `turn` awaited).
    public func send(_ question: String, options: GenerationOptions = GenerationOptions()) -> ChatReply {
        ChatReply(executor: executor, conversation: conversation, turn: Turn(question: question, options: options))
    }

    /// Asks `question` and waits for the whole answer.
    public func ask(_ question: String, options: GenerationOptions = GenerationOptions()) async throws -> ChatTurn {
        try await send(question, options: options).turn
    }

    /// The finished turns, oldest first.
    public var turns: [ChatTurn] {
        get async { await executor.run { [conversation] in conversation.turns } }
    }

    /// Positions the conversation holds in the cache (at most the model's `contextLength`).
    public var contextTokens: Int {
        get async { await executor.run { [conversation] in conversation.contextTokens } }
    }

    /// Forgets every turn (a running one ends as interrupted). The system prompt and the image stay in
    /// the cache, so the next question runs only its own tokens.
    public func reset() async {
        await executor.run { [conversation] in conversation.reset() }
    }
}

/// The answer to one question as it is generated: an `AsyncSequence` of text pieces, each final (it
/// will not change), which together make `ChatTurn.answer`.
///
/// Iterate it once. Cancelling the iterating task stops generation before the next token; the
/// iteration then ends and the turn finishes as `FinishReason.cancelled`, its partial answer kept.
public struct ChatReply: AsyncSequence, Sendable {
    /// A piece of the answer's text.
    public typealias Element = String

    let executor: ModelExecutor
    let conversation: Conversation
    let pending: Turn

    init(executor: ModelExecutor, conversation: Conversation, turn: Turn) {
        self.executor = executor
        self.conversation = conversation
        pending = turn
    }

    /// Runs the reply to its end, if it has not run yet, and returns the finished turn with its stats.
    /// Pieces nobody iterated are dropped; throws what generation threw, or `CancellationError` when
    /// cancelled before the turn began.
    public var turn: ChatTurn {
        get async throws {
            while try await nextPiece() != nil {}
            return try await executor.run { [conversation, pending] in try conversation.outcome(of: pending) }
        }
    }

    /// The next piece, possibly empty (a step whose text is held back); nil once the answer is over.
    func nextPiece() async throws -> String? {
        let cancelled = Task.isCancelled
        return try await executor.run { [conversation, pending] in
            cancelled ? conversation.cancel(pending) : try conversation.advance(pending)
        }
    }

    /// Starts iterating; the turn begins with the first `next()`.
    public func makeAsyncIterator() -> Iterator { Iterator(reply: self) }

    /// Steps the generation as pieces are asked for: no token is generated ahead of the consumer.
    public struct Iterator: AsyncIteratorProtocol {
        let reply: ChatReply
        var finished = false

        /// The next non-empty piece of the answer, or nil when it is over (or its task was cancelled).
        public mutating func next() async throws -> String? {
            while !finished {
                do {
                    guard let piece = try await reply.nextPiece() else { break }
                    if !piece.isEmpty { return piece }
                } catch {
                    finished = true
                    throw error
                }
            }
            finished = true
            return nil
        }
    }
}

/// One question and its answer.
public struct ChatTurn: Sendable, Equatable {
    /// The question as asked.
    public var question: String
    /// The answer, white space trimmed and the stop string cut off: what the conversation continues from.
    public var answer: String
    /// Why the answer ended.
    public var finish: FinishReason
    /// What this turn cost.
    public var stats: TurnStats
    /// The text token ids after the image up to the end of this turn's prompt, as the cache holds
    /// them: what a test needs to run the same prompt without the cache.
    var promptTextIds: [Int] = []
}

/// Why an answer ended.
public enum FinishReason: Sendable, Equatable {
    /// The model finished: it wrote the stop string `###` or end-of-text.
    case endOfAnswer
    /// It reached `GenerationOptions.maxTokens`.
    case maxTokens
    /// The conversation reached the model's context length.
    case contextFull
    /// The iterating task was cancelled.
    case cancelled
    /// A later turn (or `reset()`) began before this one finished.
    case interrupted
}

/// Work done by one turn, to show or to check that the cache was reused.
public struct TurnStats: Sendable, Equatable {
    /// Cache positions this turn found and kept: system prompt, image and earlier turns, not run again.
    public var reusedTokens: Int
    /// Positions this turn's prefill ran through the model: the whole prompt with the image on a first
    /// turn; afterwards only the text new since the previous answer.
    public var promptTokens: Int
    /// Tokens the answer generated.
    public var generatedTokens: Int
    /// Seconds of prefill (the image, on a first turn, and the new prompt text).
    public var prefillSeconds: Double
    /// Seconds spent generating the answer's tokens, waiting for the consumer excluded.
    public var decodeSeconds: Double
    /// Positions the conversation holds once this turn is over.
    public var contextTokens: Int

    /// Generated tokens per second of generation.
    public var tokensPerSecond: Double { Double(generatedTokens) / max(decodeSeconds, 1e-9) }
}
