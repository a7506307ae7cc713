import Calibration
import Foundation
import Quantization
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// Every calibrated method must beat round-to-nearest on the layer output error, measured on
/// activations held out from calibration (the tiny model's own activations on its calibration scenes).
final class QuantizationMethodTests: XCTestCase {
    nonisolated(unsafe) static let split: (calibration: StatisticsCollector, heldOut: StatisticsCollector) = {
        let engine = EngineParityTests.folderEngine
        let set = try! CalibrationSet(path: Reference.data + "/calibration.jsonl")
        var first = set, second = set
        first.samples = Array(set.samples.prefix(24))
        second.samples = Array(set.samples.suffix(8))
        return (
            try! CalibrationRunner.collect(engine: engine, set: first, withGram: true),
            try! CalibrationRunner.collect(engine: engine, set: second, withGram: true)
        )
    }()

    func heldOutError(_ name: String, _ w: [Float], _ q: [Float], rows: Int, columns: Int) -> Double {
        MatrixQuantizer.outputError(
            w, q, rows: rows, columns: columns, gram: Self.split.heldOut.statistics(for: name)!.gram!)
    }

    func testCollectsStatisticsAtEveryLinearSharingInputs() {
        let c = Self.split.calibration
        XCTAssertNotNil(c.statistics(for: "vision_model.encoder.layers.0.self_attn.q_proj.weight"))
        XCTAssertEqual(
            c.aliases["vision_model.encoder.layers.0.self_attn.k_proj.weight"],
            "vision_model.encoder.layers.0.self_attn.q_proj.weight")
        XCTAssertEqual(c.aliases["model.layers.3.mlp.up_proj.weight"], "model.layers.3.mlp.gate_proj.weight")
        XCTAssertNotNil(c.statistics(for: "model.mm_projector.0.weight"))
        XCTAssertNotNil(c.statistics(for: "lm_head.weight"))
        // Vision layer 3 feeds nothing the model uses (features come from hidden state 3): never run.
        XCTAssertNil(c.statistics(for: "vision_model.encoder.layers.3.mlp.fc1.weight"))
        XCTAssertEqual(c.statistics(for: "model.layers.0.self_attn.o_proj.weight")?.columns, 256)
    }

    func testImatrixAWQAndGPTQEachBeatRoundToNearestOnHeldOutActivations() throws {
        let weights = EngineParityTests.folderEngine.model.weights
        let cases: [(String, TensorEncoding, Int)] = [
            ("model.layers.1.mlp.down_proj.weight", .q4, 128),
            ("model.layers.2.self_attn.q_proj.weight", .q4, 128),
            ("model.layers.0.mlp.gate_proj.weight", .q4s, 32),
            ("vision_model.encoder.layers.1.mlp.fc1.weight", .q4, 64),
            ("model.mm_projector.3.weight", .q8, 128),
        ]
        for (name, encoding, group) in cases {
            let w = try weights.floats(named: name)
            let shape = try weights.shape(named: name)
            let rows = shape[0], columns = shape[1]
            let stats = try XCTUnwrap(Self.split.calibration.statistics(for: name))
            func error(_ method: QuantizationMethod, scales: [Float]? = nil) throws -> Double {
                let out = try LinearQuantizer.quantize(
                    w, rows: rows, columns: columns, encoding: encoding, groupSize: group,
                    method: method, statistics: stats, awqScales: scales)
                return heldOutError(name, w, out.matrix.dequantized, rows: rows, columns: columns)
            }
            let rtn = try error(.rtn)
            let awqScales = AWQ().searchScales(
                weights: [w], rows: [rows], columns: columns, statistics: stats,
                encoding: encoding, groupSize: group
            ).scales
            let results = [
                "imatrix": try error(.imatrix), "gptq": try error(.gptq), "awq": try error(.awq, scales: awqScales),
            ]
            for (method, e) in results {
                XCTAssertLessThan(e, rtn, "\(name) \(encoding.name) g\(group): \(method) \(e) vs rtn \(rtn)")
            }
            print(
                "held-out output error \(name) \(encoding.name) g\(group): rtn \(rtn) "
                    + results.keys.sorted().map { "\($0) \(results[$0]!)" }.joined(separator: " "))
        }
    }

    func testGPTQWithActivationOrderAlsoBeatsRoundToNearest() throws {
        let name = "model.layers.1.mlp.down_proj.weight"
        let weights = EngineParityTests.folderEngine.model.weights
        let w = try weights.floats(named: name), shape = try weights.shape(named: name)
        let stats = try XCTUnwrap(Self.split.calibration.statistics(for: name))
        let rtn = MatrixQuantizer.roundToNearest(w, rows: shape[0], columns: shape[1], encoding: .q4, groupSize: 128)
        let ordered = try GPTQ(activationOrder: true).quantize(
            w, rows: shape[0], columns: shape[1], encoding: .q4, groupSize: 128, gram: stats.gram!)
        XCTAssertLessThan(
            heldOutError(name, w, ordered.dequantized, rows: shape[0], columns: shape[1]),
            heldOutError(name, w, rtn.dequantized, rows: shape[0], columns: shape[1]))
    }

    func testPackedBytesDecodeToTheValuesTheQuantizerReports() throws {
        let w = (0..<(8 * 64)).map { Float(sin(Double($0) * 0.37)) * 0.1 }
        for encoding in [TensorEncoding.q8, .q4, .q4s, .q3] {
            let m = MatrixQuantizer.roundToNearest(w, rows: 8, columns: 64, encoding: encoding, groupSize: 32)
            var decoded = [Float](repeating: 0, count: w.count)
            m.bytes.withUnsafeBytes { m.layout.dequantize($0, rows: 0..<8, into: &decoded) }
            XCTAssertEqual(decoded, m.dequantized, encoding.name)
        }
    }
}
