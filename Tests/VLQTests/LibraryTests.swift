import Conversion
import Foundation
import XCTest
import YiVL

@testable import VLQ

/// The VLQ library as an app uses it: one-shot answers and chats over the tiny bundle, checked
/// against transformers' greedy answers and against the same prompts run without the cache.
final class LibraryTests: XCTestCase {
    static let bundlePath: String = {
        let path = NSTemporaryDirectory() + "vlq-library-\(getpid()).vlq"
        _ = try! Converter(options: ConvertOptions()).convert(folder: Repo.tinyModel, output: path)
        // Other test classes use this bundle after this class's tearDown: it goes when the process ends.
        atexit { unlink(NSTemporaryDirectory() + "vlq-library-\(getpid()).vlq") }
        return path
    }()
    static let model = try! VLQModel(contentsOf: bundlePath)

    /// Iterates `reply` to its end: the pieces as streamed, then the finished turn.
    func collect(_ reply: ChatReply) async throws -> (pieces: [String], turn: ChatTurn) {
        var pieces: [String] = []
        for try await piece in reply { pieces.append(piece) }
        return (pieces, try await reply.turn)
    }

    /// The answer the engine gives, without any cache reuse, to the prompt a chat turn ran: the system
    /// text, the image and `turn.promptTextIds` prefilled at once.
    func answerFromScratch(to turn: ChatTurn, image: String, maxTokens: Int) throws -> String {
        let engine = Self.model.engine
        var prompt = engine.prompt(question: "")
        prompt.after = turn.promptTextIds
        let prefill = try engine.forward(
            .image(try engine.pixelValues(imagePath: image), prompt: prompt, reserving: maxTokens),
            capture: .init(lastLogits: true))
        return try engine.generate(continuing: prefill, options: .init(maxTokens: maxTokens)).answer
    }

    func testAnAnswerStreamsTransformersGreedyAnswerForEveryReferenceCase() async throws {
        for c in Reference.cases {
            let (pieces, turn) = try await collect(Self.model.answer(image: c.image, question: c.question))
            XCTAssertEqual(turn.answer, c.greedyAnswer, c.image)
            XCTAssertEqual(pieces.joined(), turn.answer, c.image)
            XCTAssertFalse(pieces.contains(""), "empty pieces are not streamed")
            XCTAssertEqual(turn.finish, .endOfAnswer)
            XCTAssertEqual(turn.stats.reusedTokens, 0)
            XCTAssertEqual(turn.stats.promptTokens, c.ints("input_ids").count - 1 + Self.model.imageTokenCount)
        }
    }

    func testAChatKeepsEarlierTurnsInTheCacheAndPrefillsOnlyNewText() async throws {
        let c = Reference.cases[0]
        let questions = [c.question, "What colour is the square?", "Is the background dark?"]
        // Few tokens per answer: the cache starts small and must grow turn by turn.
        let options = GenerationOptions(maxTokens: 24)
        let chat = try Self.model.chat(image: c.image)
        var turns: [ChatTurn] = []
        for question in questions {
            let (pieces, turn) = try await collect(chat.send(question, options: options))
            XCTAssertEqual(pieces.joined(), turn.answer, question)
            turns.append(turn)
        }
        XCTAssertEqual(turns[0].answer, c.greedyAnswer)
        let allTurns = await chat.turns
        XCTAssertEqual(allTurns, turns)
        let contextTokens = await chat.contextTokens
        XCTAssertEqual(contextTokens, turns[2].stats.contextTokens)
        let tokenizer = Self.model.engine.tokenizer
        for k in 1..<turns.count {
            let stats = turns[k].stats, earlier = turns[k - 1].stats
            // Everything up to the previous answer stays: system text, image, earlier prompts.
            XCTAssertGreaterThanOrEqual(
                stats.reusedTokens, earlier.reusedTokens + earlier.promptTokens,
                "turn \(k + 1)")
            // The prefill ran at most the follow-up text: previous answer, separator, question.
            let followUp = " \(turns[k - 1].answer)\n### Human: \(questions[k])\n### Assistant:"
            let followUpTokens = tokenizer.encode(followUp, dummyPrefix: false).count
            XCTAssertLessThanOrEqual(stats.promptTokens, followUpTokens, "turn \(k + 1)")
            XCTAssertLessThan(stats.promptTokens, turns[0].stats.promptTokens / 4, "turn \(k + 1)")
            let uncached = stats.reusedTokens + stats.promptTokens + stats.generatedTokens - stats.contextTokens
            XCTAssertTrue(
                (0...1).contains(uncached),
                "the cache holds every generated token but one that completed the stop string")
            // The cached keys and values give the answer a full prefill of the same tokens gives.
            let fromScratch = try answerFromScratch(to: turns[k], image: c.image, maxTokens: 24)
            XCTAssertEqual(turns[k].answer, fromScratch, "turn \(k + 1)")
        }
    }

    /// Yi's `Conversation.get_prompt` (style SINGLE, sep "###"), written out for two turns.
    func testTheFollowUpTextContinuesYisConversationFormat() {
        let first = YiVLChat.prompt(question: "Q1", system: "S")
        let followUp = YiVLChat.followUpTemplate.replacing("{answer}", with: "A1").replacing("{question}", with: "Q2")
        XCTAssertEqual(
            first + followUp,
            "S\n\n### Human: <image_placeholder>\nQ1\n### Assistant: A1\n### Human: Q2\n### Assistant:")
    }

    func testAFollowUpKeepsTheAnswerTokensThatSpellTheAnswerAndTokenizesTheRestMidString() {
        let tokenizer = Self.model.engine.tokenizer
        func ids(_ pieces: [String]) -> [Int] { pieces.map { tokenizer.id(of: $0)! } }
        let answer = "A white square on a dark background."
        let generated = ids(["▁A", "▁white", "▁square", "▁on", "▁a", "▁dark", "▁background", "."])
        let separator = "\n### Human: Why?\n### Assistant:"

        // The usual case: every answer token stays; the line break the cache may hold is replaced.
        for cached in [generated, generated + [13]] {
            let (keep, text) = Conversation.followUp(
                answer: answer, cachedIds: cached, question: "Why?",
                tokenizer: tokenizer)
            XCTAssertEqual(keep, generated.count)
            XCTAssertEqual(text, separator)
        }
        // Tokens that do not spell " " + answer (here a doubled leading space) are dropped, and a cut is
        // never left after a space: the answer is tokenized again as Yi's whole-text tokenization has it.
        let doubled = ids(["▁"]) + generated
        let (keep, text) = Conversation.followUp(
            answer: answer, cachedIds: doubled, question: "Why?",
            tokenizer: tokenizer)
        XCTAssertEqual(keep, 0)
        XCTAssertEqual(text, " " + answer + separator)
        XCTAssertEqual(
            Array(tokenizer.encode(text, dummyPrefix: false).prefix(generated.count)), generated,
            "mid-string, without the dummy-prefix space, the answer tokenizes as generated")
        // An answer cut inside a word (the turn was stopped) keeps the tokens before that word.
        let (cutKeep, cutText) = Conversation.followUp(
            answer: "A white squ", cachedIds: Array(generated.prefix(3)),
            question: "Why?", tokenizer: tokenizer)
        XCTAssertEqual(cutKeep, 2)
        XCTAssertEqual(cutText, " squ" + separator)
    }

    func testCancellingTheIteratingTaskStopsGenerationBeforeTheNextToken() async throws {
        let c = Reference.cases[0]
        let chat = try Self.model.chat(image: c.image)
        let reply = chat.send(c.question)
        let consumer = Task { () -> [String] in
            var pieces: [String] = []
            for try await piece in reply {
                pieces.append(piece)
                withUnsafeCurrentTask { $0?.cancel() }
            }
            return pieces
        }
        let pieces = try await consumer.value
        let turn = try await reply.turn
        XCTAssertEqual(pieces, ["A"], "no piece after the task was cancelled")
        XCTAssertEqual(turn.finish, .cancelled)
        XCTAssertEqual(turn.answer, "A")
        XCTAssertLessThanOrEqual(turn.stats.generatedTokens, 2, "the full answer takes 11 tokens")

        // The conversation goes on from the partial answer, and as a full prefill of its tokens would.
        let next = try await chat.ask(c.question)
        XCTAssertGreaterThanOrEqual(next.stats.reusedTokens, turn.stats.promptTokens)
        XCTAssertEqual(next.answer, try answerFromScratch(to: next, image: c.image, maxTokens: 512))

        // A reply cancelled before it began never joins the conversation.
        let unstarted = chat.send("never asked")
        let cancelled = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await unstarted.turn
        }
        do {
            _ = try await cancelled.value
            XCTFail("a turn cancelled before it began has no result")
        } catch is CancellationError {}
        let turnCount = await chat.turns.count
        XCTAssertEqual(turnCount, 2)
    }

    func testATurnBeyondTheContextIsRefusedBeforePrefillAndTheChatGoesOn() async throws {
        let c = Reference.cases[1]
        let chat = try Self.model.chat(image: c.image)
        let first = try await chat.ask(c.question)
        let tooLong = String(repeating: "square ", count: Self.model.contextLength)
        do {
            _ = try await chat.ask(tooLong)
            XCTFail("a question longer than the context was answered")
        } catch let error as VLQError {
            XCTAssertTrue(error.is(ModelError.contextExceeded), "\(error.kind): \(error)")
            let reason = error.description
            XCTAssertTrue(reason.contains("model's context is \(Self.model.contextLength)"), reason)
        }
        let contextTokens = await chat.contextTokens
        XCTAssertEqual(contextTokens, first.stats.contextTokens, "nothing was prefilled")
        let next = try await chat.ask(c.question)
        XCTAssertGreaterThanOrEqual(next.stats.reusedTokens, first.stats.promptTokens)
        XCTAssertEqual(next.answer, try answerFromScratch(to: next, image: c.image, maxTokens: 512))
    }

    func testResetForgetsTheTurnsButNotTheImage() async throws {
        let c = Reference.cases[3]
        let chat = try Self.model.chat(image: c.image)
        let first = try await chat.ask(c.question)
        _ = try await chat.ask("And the other shape?")
        await chat.reset()
        let turnCount = await chat.turns.count
        XCTAssertEqual(turnCount, 0)
        let again = try await chat.ask(c.question)
        XCTAssertEqual(again.answer, first.answer, "the same question after a reset is a first turn again")
        XCTAssertEqual(again.promptTextIds, first.promptTextIds)
        let inputIds = c.ints("input_ids"), imageAt = try XCTUnwrap(inputIds.firstIndex(of: YiVLChat.imageTokenIndex))
        XCTAssertEqual(again.stats.reusedTokens, imageAt + Self.model.imageTokenCount, "system text and image stayed")
        XCTAssertEqual(again.stats.promptTokens, inputIds.count - imageAt - 1, "only the question's text ran")
    }

    func testAnUnreadableImageFailsWhereTheChatOpens() throws {
        let scratch = try Scratch()
        try writeBytes(Array("not an image".utf8), to: scratch.file("x.png"))
        assertVLQError(
            try Self.model.chat(image: scratch.file("x.png")),
            kind: ImageError.notAnImage, contains: ["x.png", "not a PNG or JPEG image"])
    }

    /// The example app: a bundle and an image on its command line, two questions, two streamed answers.
    func testTheExampleAsksTwoQuestionsAndPrintsTwoAnswers() throws {
        let example = URL(fileURLWithPath: Repo.vlqBinary).deletingLastPathComponent()
            .appendingPathComponent("chat-example").path
        let c = Reference.cases[0]
        let result = try VLQTests.run(example, [Self.bundlePath, c.image])
        XCTAssertEqual(result.status, 0, result.stderr)
        let lines = result.stdout.split(separator: "\n")
        let answers = lines.filter { $0.hasPrefix("Assistant: ") }
        XCTAssertEqual(answers.count, 2, result.stdout)
        XCTAssertEqual(answers.first, "Assistant: \(c.greedyAnswer)")
        XCTAssertEqual(lines.filter { $0.hasPrefix("[prefill ") }.count, 2, result.stdout)
        let usage = try VLQTests.run(example, [])
        XCTAssertEqual(usage.status, 2)
    }
}
