import Numerics
import XCTest
import YiVL

/// What `vlq bench` divides by: the bytes a decoding step reads, and the machine's read bandwidth.
final class BenchmarkTests: XCTestCase {
    func testADecodeStepReadsEveryDecoderLayerTheFinalNormAndTheHeadButNotTheEmbeddingTable() {
        let model = EngineParityTests.bundleEngine.model
        let language = model.definition.language
        let step = Set(language.decodeStepTensors)
        // Per layer two norms and seven Linears without biases; then the final norm and the head.
        XCTAssertEqual(step.count, language.layers.count * 9 + 2)
        XCTAssertTrue(step.contains(language.head.weight))
        XCTAssertFalse(step.contains(language.embedTokens))
        XCTAssertFalse(step.contains(model.definition.projector.first.weight))
        let bytes = step.reduce(0) { $0 + model.weights.storedBytes($1) }
        let l = model.config.language
        let linearWeights =
            l.layers * l.hiddenSize * (l.heads * l.headDim + 2 * l.kvHeads * l.headDim + l.heads * l.headDim)
            + l.layers * 3 * l.hiddenSize * l.intermediateSize + l.vocabSize * l.hiddenSize
        let norms = (2 * l.layers + 1) * l.hiddenSize
        // The tiny bundle stores its language model, norms included, in bf16 as the checkpoint has it.
        XCTAssertEqual(bytes, 2 * (linearWeights + norms))
    }

    func testTheBandwidthPassSumsEveryValueItReads() {
        let count = 64 * 1000
        let values = FloatBuffer((0..<count).map { Float($0 % 7) })
        let expected = (0..<count).reduce(Float(0)) { $0 + Float($1 % 7) }
        XCTAssertEqual(MemoryBandwidth.sum(values.pointer, count: count), expected)
        let rate = MemoryBandwidth.measureRead(bytes: 8 << 20, repeats: 2)
        XCTAssertTrue(rate.isFinite && rate > 0, "\(rate)")
    }

    /// Bench runs on any bundle, however narrow its layers (micro.vlq's are 32 columns wide, narrower
    /// than the group of 128 the quantizer timings use on real shapes).
    func testBenchWithQuantizerTimingsRunsOnTheSmallestBundle() throws {
        let result = try vlq(
            "bench", Repo.goldenFolder + "/micro.vlq", "--quantization", "--repeats", "1", "--tokens", "16",
            "--decode-tokens", "2")
        XCTAssertEqual(result.status, 0, result.stderr)
        XCTAssertTrue(result.stdout.contains("decode limit:"), result.stdout)
        XCTAssertTrue(result.stdout.contains("GPTQ int4 g32-128"), result.stdout)
    }
}
