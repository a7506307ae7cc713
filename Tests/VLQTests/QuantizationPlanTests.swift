import Quantization
import VLQCore
import VLQFormat
import XCTest
import YiVL

/// `QuantizationPlan`: what quantization will do, decided from the model definition, the source table
/// and the recipe alone, before any weight is read.
final class QuantizationPlanTests: XCTestCase {
    /// The tiny Yi-VL (vision 128 wide, 4 layers, hidden state 3 selected; language 256 wide, MLP 768,
    /// 4 layers, grouped queries), optionally with other MLP widths.
    func definition(languageIntermediate: Int? = nil) -> ModelDefinition {
        var config = EngineParityTests.folderEngine.config
        if let languageIntermediate { config.language.intermediateSize = languageIntermediate }
        return ModelDefinition(config)
    }

    /// The table of a converted bundle: every tensor in the definition's order, stored as bf16.
    func table(_ definition: ModelDefinition) -> [TensorRecord] {
        definition.tensors.map {
            TensorRecord(
                name: $0.name, encoding: .bf16, component: Component(rawValue: UInt8($0.part.rawValue))!,
                shape: $0.shape, sourceDType: .bf16)
        }
    }

    func recipe(_ preset: String, _ method: QuantizationMethod? = nil) -> Recipe {
        var recipe = Recipe.preset(preset)!
        recipe.method = method
        return recipe
    }

    func plan(
        _ recipe: Recipe, _ definition: ModelDefinition? = nil, gramWindowBudget: Int? = nil,
        keptNonFinite: [String: Int] = [:]
    ) throws -> (QuantizationPlan, ModelDefinition) {
        let d = definition ?? self.definition()
        var kept: [TensorHandle: Int] = [:]
        for (name, count) in keptNonFinite { kept[try XCTUnwrap(d.handle(named: name))] = count }
        let plan = try QuantizationPlan(
            definition: d, table: table(d), recipe: recipe, keptNonFinite: kept,
            gramWindowBudget: gramWindowBudget)
        return (plan, d)
    }

    func tensor(_ plan: QuantizationPlan, _ definition: ModelDefinition, _ name: String) throws -> TensorPlan {
        try XCTUnwrap(plan[XCTUnwrap(definition.handle(named: name))], name)
    }

    func testTheOutputKeepsTheSourceOrderAndTheRecipeDecidesEncodingAndGroup() throws {
        let (plan, d) = try plan(recipe("int4"))
        XCTAssertEqual(plan.output.map(\.name), table(d).map(\.name))
        let down = try tensor(plan, d, "model.layers.0.mlp.down_proj.weight")
        XCTAssertEqual(down.output.encoding, .q4)
        XCTAssertEqual(down.output.groupSize, 128)
        XCTAssertEqual(down.method, .rtn, "a recipe naming no method rounds to nearest")
        XCTAssertNil(down.fallback)
        let fc1 = try tensor(plan, d, "vision_model.encoder.layers.0.mlp.fc1.weight")
        XCTAssertEqual(fc1.output.encoding, .q8, "int4 keeps the vision tower in int8")
        let position = try tensor(plan, d, "vision_model.embeddings.position_embedding.weight")
        XCTAssertEqual(position.output.encoding, .bf16, "kept as stored")
        XCTAssertEqual(position.output.groupSize, 0)
    }

    func testARowNoGroupDividesFallsBackToASmallerGroupThenToF16AsDocumented() throws {
        let narrow = definition(languageIntermediate: 96)
        let (smaller, _) = try plan(recipe("int4", .gptq), narrow)
        let down = try tensor(smaller, narrow, "model.layers.2.mlp.down_proj.weight")
        XCTAssertEqual(down.output.encoding, .q4)
        XCTAssertEqual(down.output.groupSize, 32)
        XCTAssertEqual(down.fallback, "96 columns: group 128 -> 32")
        XCTAssertEqual(down.method, .gptq, "a smaller group keeps the method")

        let odd = definition(languageIntermediate: 200)
        let (f16, _) = try plan(recipe("int4", .gptq), odd)
        let oddDown = try tensor(f16, odd, "model.layers.2.mlp.down_proj.weight")
        XCTAssertEqual(oddDown.output.encoding, .f16)
        XCTAssertEqual(oddDown.output.groupSize, 0)
        XCTAssertEqual(oddDown.fallback, "200 columns: no group divides the row -> f16")
        XCTAssertNil(oddDown.method)
        XCTAssertEqual(oddDown.statistics, .none, "a tensor kept in float reads no statistics")
    }

    func testVectorsAreNeverQuantizedAndOtherRanksAreKeptWithANote() throws {
        let everything = Recipe(
            name: "all", method: nil,
            rules: [
                .init(component: nil, pattern: "*", target: .quantized(.q8, groupSize: 32), method: nil)
            ])
        let (plan, d) = try plan(everything)
        for t in plan.tensors where t.output.shape.count != 2 {
            XCTAssertFalse(t.isQuantized, t.name)
            XCTAssertEqual(t.output.encoding, .bf16, t.name)
            XCTAssertNil(t.method, t.name)
        }
        XCTAssertNil(try tensor(plan, d, "model.norm.weight").fallback, "vectors are not a fallback")
        XCTAssertEqual(
            try tensor(plan, d, "vision_model.embeddings.patch_embedding.weight").fallback,
            "rank 4 is not a matrix: kept")
        XCTAssertTrue(plan.tensors.filter { $0.output.shape.count == 2 }.allSatisfy(\.isQuantized))
    }

    func testStatisticsNeededPerMethodAndOwnedByTheFirstLinearOfASharedInput() throws {
        let needs: [(QuantizationMethod, StatisticsNeed)] = [
            (.rtn, .none), (.imatrix, .sums), (.gptq, .gram),
            (.awq, .gram),
        ]
        for (method, need) in needs {
            let (plan, d) = try plan(recipe("int8", method))
            XCTAssertEqual(try tensor(plan, d, "model.layers.1.mlp.up_proj.weight").statistics, need, method.rawValue)
            XCTAssertEqual(try tensor(plan, d, "model.layers.1.post_attention_layernorm.weight").statistics, .none)
        }
        let (plan, d) = try plan(recipe("int4", .gptq))
        let key = try tensor(plan, d, "vision_model.encoder.layers.1.self_attn.k_proj.weight")
        XCTAssertEqual(d.name(key.statisticsOwner), "vision_model.encoder.layers.1.self_attn.q_proj.weight")
        let up = try tensor(plan, d, "model.layers.1.mlp.up_proj.weight")
        XCTAssertEqual(d.name(up.statisticsOwner), "model.layers.1.mlp.gate_proj.weight")
        let down = try tensor(plan, d, "model.layers.1.mlp.down_proj.weight")
        XCTAssertEqual(down.statisticsOwner, down.handle)
    }

    func testTheRecipeAloneSaysWhetherCalibrationAndGramMatricesAreNeeded() {
        XCTAssertTrue(QuantizationPlan.needs(recipe("int8", .rtn)) == (false, false))
        XCTAssertTrue(QuantizationPlan.needs(recipe("int8", .imatrix)) == (true, false))
        XCTAssertTrue(QuantizationPlan.needs(recipe("int4", .gptq)) == (true, true))
        XCTAssertTrue(QuantizationPlan.needs(recipe("int4", .awq)) == (true, true))
    }

    func testAWQFoldTargetsBecomeF32UnlessQuantizedAndOnlyWhenTheRecipeUsesAWQ() throws {
        let (awq, d) = try plan(recipe("int4", .awq))
        let folded = [
            "vision_model.encoder.layers.0.layer_norm1.weight",
            "vision_model.encoder.layers.0.layer_norm1.bias",
            "vision_model.encoder.layers.2.layer_norm2.bias",
            "vision_model.encoder.layers.1.self_attn.v_proj.bias",
            "model.layers.0.input_layernorm.weight", "model.layers.3.post_attention_layernorm.weight",
            "model.norm.weight",
        ]
        for name in folded {
            let t = try tensor(awq, d, name)
            XCTAssertTrue(t.isAWQFoldTarget, name)
            XCTAssertEqual(t.output.encoding, .f32, name)
        }
        let rows = try tensor(awq, d, "model.layers.0.mlp.up_proj.weight")
        XCTAssertTrue(rows.isAWQFoldTarget, "its rows take the scales of down_proj")
        XCTAssertEqual(rows.output.encoding, .q4, "a quantized fold target stays quantized")
        let unused = try tensor(awq, d, "vision_model.encoder.layers.3.layer_norm1.weight")
        XCTAssertFalse(unused.isAWQFoldTarget, "the vision layer after the selected hidden state never runs")
        XCTAssertEqual(unused.output.encoding, .bf16)

        let (gptq, _) = try plan(recipe("int4", .gptq))
        XCTAssertFalse(gptq.tensors.contains { $0.isAWQFoldTarget })
        XCTAssertFalse(gptq.tensors.contains { $0.output.encoding == .f32 })
    }

    func testAWQSearchesEachLayerAtItsFirstTensorOnlyForGroupsWhollyAWQQuantized() throws {
        let (plan, d) = try plan(recipe("int4", .awq))
        XCTAssertEqual(
            plan.awqLayers.map(\.label),
            [
                "vision layer 00", "vision layer 01", "vision layer 02",
                "decoder layer 00", "decoder layer 01", "decoder layer 02",
                "decoder layer 03", "lm_head",
            ])
        for layer in plan.awqLayers {
            XCTAssertEqual(layer.position, plan.tensors.firstIndex { d.label(of: $0.handle) == layer.label })
        }
        let vision = plan.awqLayers[0].groups
        XCTAssertEqual(
            vision.map { $0.balance.map(d.name) },
            [
                [
                    "vision_model.encoder.layers.0.self_attn.q_proj.weight",
                    "vision_model.encoder.layers.0.self_attn.k_proj.weight",
                    "vision_model.encoder.layers.0.self_attn.v_proj.weight",
                ],
                ["vision_model.encoder.layers.0.self_attn.out_proj.weight"],
                ["vision_model.encoder.layers.0.mlp.fc1.weight"],
            ])
        XCTAssertEqual(vision.map(\.encoding), [.q8, .q8, .q8])
        XCTAssertEqual(plan.awqLayers[3].groups.count, 3, "grouped queries: no v_proj -> o_proj mapping")

        var mixed = recipe("int4", .awq)
        let keysByRounding = Recipe.Rule(
            component: nil, pattern: "*k_proj*", target: .quantized(.q8, groupSize: 128),
            method: .rtn)
        mixed.rules.insert(keysByRounding, at: 0)
        let (partial, _) = try self.plan(mixed)
        XCTAssertEqual(partial.awqLayers[0].groups.count, 2, "q/k/v is not searched when k_proj is not AWQ")
        XCTAssertTrue(try self.plan(recipe("int4", .gptq)).0.awqLayers.isEmpty)
    }

    func testCalibrationWindowsFitTheBudgetAndHoldWhatEachTensorReads() throws {
        XCTAssertTrue(try plan(recipe("int4", .gptq)).0.windows.isEmpty, "no budget: every X^T X at once")
        for method in [QuantizationMethod.gptq, .awq] {
            let budget = 3 << 20
            let (plan, d) = try plan(recipe("int4", method), gramWindowBudget: budget)
            XCTAssertGreaterThan(plan.windows.count, 3, method.rawValue)
            for (a, b) in zip(plan.windows, plan.windows.dropFirst()) {
                XCTAssertLessThanOrEqual(
                    a.positions.upperBound, b.positions.lowerBound,
                    "windows follow the write order")
            }
            let run = Set(d.linears.map(\.weight))
            // What the write reads at a position: its AWQ searches' inputs, then its own.
            func reads(at position: Int) -> Set<TensorHandle> {
                let searches = plan.awqLayers.filter { $0.position == position }.flatMap(\.groups)
                var owners = Set(searches.map { $0.balance[0] })
                let t = plan.tensors[position]
                if t.statistics == .gram { owners.insert(t.statisticsOwner) }
                return owners.intersection(run)
            }
            for window in plan.windows {
                let bytes = window.owners.reduce(0) { $0 + 4 * d.shape($1)[1] * d.shape($1)[1] }
                XCTAssertEqual(window.bytes, bytes)
                if window.bytes > budget {
                    XCTAssertEqual(
                        Set(window.owners), reads(at: window.positions.lowerBound),
                        "a window over the budget holds only what one step reads at once")
                }
            }
            let reading = plan.tensors.enumerated().filter {
                $1.statistics == .gram && run.contains($1.statisticsOwner)
            }
            for (position, t) in reading {
                let window = plan.windows.first { $0.positions.contains(position) }
                XCTAssertTrue(window?.owners.contains(t.statisticsOwner) ?? false, "\(t.name) reads its window")
            }
            for layer in plan.awqLayers {
                let window = try XCTUnwrap(plan.windows.first { $0.positions.contains(layer.position) })
                for group in layer.groups { XCTAssertTrue(window.owners.contains(group.balance[0]), layer.label) }
            }
            let unused = try tensor(plan, d, "vision_model.encoder.layers.3.mlp.fc1.weight").handle
            XCTAssertFalse(plan.windows.contains { $0.owners.contains(unused) }, "calibration never reaches it")
        }
    }

    func testTensorsWithNonFiniteValuesKeptInFloatAreNotQuantizedNorSearched() throws {
        let name = "model.layers.1.mlp.up_proj.weight"
        let (plan, d) = try plan(recipe("int4", .awq), keptNonFinite: [name: 4])
        let kept = try tensor(plan, d, name)
        XCTAssertFalse(kept.isQuantized)
        XCTAssertEqual(kept.fallback, "4 NaN or infinite values: kept in bf16")
        XCTAssertEqual(kept.output.encoding, .f32, "still a fold target of down_proj's scales")
        let layer = try XCTUnwrap(plan.awqLayers.first { $0.label == "decoder layer 01" })
        XCTAssertEqual(
            layer.groups.map { $0.balance.map(d.name) },
            [
                [
                    "model.layers.1.self_attn.q_proj.weight", "model.layers.1.self_attn.k_proj.weight",
                    "model.layers.1.self_attn.v_proj.weight",
                ], ["model.layers.1.mlp.down_proj.weight"],
            ])
    }

    func testATableThatIsNotOfTheModelIsRefused() throws {
        let d = definition()
        var renamed = table(d)
        renamed[5].name = "vision_model.something_else.weight"
        assertVLQError(
            try QuantizationPlan(definition: d, table: renamed, recipe: recipe("int8")),
            kind: QuantizationError.tensorMismatch,
            contains: ["vision_model.something_else.weight is not part of the model"])
    }
}

/// `QuantizationRecord`, the `quantization` metadata, read back as written.
final class QuantizationRecordTests: XCTestCase {
    func testTheRecordRoundTripsThroughJSON() throws {
        var folded = QuantizationRecord.Tensor(encoding: .f32)
        folded.awqFolded = true
        folded.fallback = "4 NaN or infinite values: kept in bf16"
        var scaled = QuantizationRecord.Tensor(encoding: .q4, groupSize: 128, method: .awq)
        scaled.awqAlpha = 0.35
        scaled.awqScaled = true
        let record = QuantizationRecord(
            recipe: Recipe.int4(), activationOrder: true,
            tensors: ["model.layers.1.mlp.up_proj.weight": folded, "model.layers.1.mlp.gate_proj.weight": scaled],
            calibration: .init(setDigest: "0123456789abcdef", samples: 32, source: nil, gram: true),
            sourceTableChecksum: 0x00ab_cdef_0123_4567)
        let text = record.json.serialized()
        let read = try QuantizationRecord(json: try JSONValue.parse(text))
        XCTAssertEqual(read, record)
        XCTAssertEqual(read.json.serialized(), text)
        XCTAssertTrue(text.contains("\"source_table_xxh3\":\"00abcdef01234567\""), text)
        XCTAssertTrue(
            text.contains("\"awq_folded\":true,\"encoding\":\"f32\",\"fallback\""),
            "a fold and a fallback, both")
        XCTAssertEqual(read.method, .rtn, "the int4 preset names no method")
    }

    func testAMalformedRecordIsAnErrorNamingTheBundle() throws {
        let broken: JSONValue = [
            "recipe": Recipe.int8().json, "method": "rtn", "activation_order": false,
            "tensors": ["x": ["encoding": "q5"]], "source_table_xxh3": "00",
        ]
        assertVLQError(
            try QuantizationRecord(json: broken, source: "b.vlq"), kind: QuantizationError.invalidRecord,
            contains: ["b.vlq", "a tensor entry is malformed"])
    }
}
