import Foundation
import XCTest

@testable import VLQ

/// `vlq chat` driven by a script: each stdin line a turn, each answer a stdout line (issue 11, point 13).
final class ChatCommandTests: XCTestCase {
    func chat(_ lines: [String], image: String, extra: [String] = []) throws -> ProcessResult {
        try VLQTests.run(
            Repo.vlqBinary, ["chat", Repo.tinyModel, "--image", image, "--max-tokens", "24"] + extra,
            input: Data((lines.joined(separator: "\n") + "\n").utf8))
    }

    /// "turn: R positions reused from the cache, P prefilled ..." per answered turn.
    func reusedAndPrefilled(_ stderr: String) -> [(reused: Int, prefilled: Int)] {
        stderr.split(separator: "\n").compactMap { line in
            guard line.hasPrefix("vlq: info: turn: ") else { return nil }
            let words = line.split(separator: " ")
            guard let reused = Int(words[3]), let p = words.firstIndex(of: "prefilled"),
                let prefilled = Int(words[p - 1])
            else { return nil }
            return (reused, prefilled)
        }
    }

    func testThreeScriptedTurnsAnswerLikeTransformersFirstAndReuseTheCacheAfter() async throws {
        let c = Reference.cases[0]
        let questions = [c.question, "What colour is the square?", "Is the background dark?"]
        let result = try chat(questions, image: c.image)
        XCTAssertEqual(result.status, 0, result.stderr)
        let answers = result.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast().map(String.init)
        XCTAssertEqual(answers.count, 3, result.stdout)
        XCTAssertEqual(answers.first, c.greedyAnswer, "the first turn is transformers' greedy answer")

        // The same turns through the library (whose cached turns equal a prefill from scratch: LibraryTests).
        let session = try LibraryTests.model.chat(image: c.image)
        for (k, question) in questions.enumerated() {
            let turn = try await session.ask(question, options: GenerationOptions(maxTokens: 24))
            XCTAssertEqual(answers[k], turn.answer, "turn \(k + 1)")
        }
        let stats = reusedAndPrefilled(result.stderr)
        XCTAssertEqual(stats.count, 3, result.stderr)
        XCTAssertEqual(stats[0].reused, 0)
        for k in 1..<3 {
            XCTAssertGreaterThanOrEqual(stats[k].reused, stats[k - 1].reused + stats[k - 1].prefilled, "turn \(k + 1)")
            XCTAssertLessThan(stats[k].prefilled, stats[0].prefilled / 4, "turn \(k + 1) runs only its new text")
        }
    }

    func testSlashCommandsSwitchTheImageAndResetWhileUnknownOnesStopAScript() throws {
        let first = Reference.cases[0], second = Reference.cases[1]
        let result = try chat(
            [first.question, "/reset", first.question, "/image \(second.image)", second.question], image: first.image)
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertEqual(
            result.stdout, [first.greedyAnswer, first.greedyAnswer, second.greedyAnswer].joined(separator: "\n") + "\n")
        let stats = reusedAndPrefilled(result.stderr)
        XCTAssertGreaterThan(stats[1].reused, 0, "after /reset the system prompt and the image stay cached")
        XCTAssertEqual(stats[2].reused, 0, "another image starts afresh")

        let unknown = try chat(["/imag x", "never asked"], image: first.image)
        XCTAssertEqual(unknown.status, 2)
        XCTAssertTrue(unknown.stderr.contains("unknown chat command /imag; did you mean /image?"), unknown.stderr)
        XCTAssertEqual(unknown.stdout, "")
        let twoImages = try vlq("chat", Repo.tinyModel, "--image", first.image, "--image", second.image)
        XCTAssertEqual(twoImages.status, 2)
    }
}
