import Imaging
import VLQCore

/// A bundle's metadata (formats/VLQ-BUNDLE.md, section 6) as typed sections, each read by
/// `init(json:)` and written back by `json`. Only this type reads metadata keys; the architecture,
/// preprocessing and chat sections are what `EngineConfig` runs with.
public struct BundleMetadata: Sendable, Equatable {
    public struct Model: Sendable, Equatable {
        public var architecture: String
        public var name: String
        public init(architecture: String, name: String) {
            self.architecture = architecture
            self.name = name
        }
    }

    /// The normalised hyperparameters of the three parts.
    public struct Architecture: Sendable, Equatable {
        public struct Vision: Sendable, Equatable {
            public var hiddenSize, intermediateSize, layers, heads, imageSize, patchSize, channels: Int
            public var layerNormEps: Double
            public var hiddenAct: String
            public var selectLayer: Int
            public var selectFeature: String
            public var selectedHiddenState: Int
        }

        public struct Projector: Sendable, Equatable {
            public var type: String
            public var inputSize, hiddenSize: Int
            public var layerNormEps: Double
        }

        public struct Language: Sendable, Equatable {
            public var hiddenSize, intermediateSize, layers, heads, kvHeads, headDim, vocabSize: Int
            public var rmsNormEps, ropeTheta: Double
            public var maxPositionEmbeddings: Int
            public var hiddenAct: String
            public var tieWordEmbeddings: Bool
        }

        public var vision: Vision
        public var projector: Projector
        public var language: Language
    }

    public struct Chat: Sendable, Equatable {
        public var template, system, imagePlaceholder: String
        public var imageTokenIndex, imageTokens: Int
        public var stop: [String]
    }

    public struct SpecialToken: Sendable, Equatable {
        public var text: String?
        public var id: Int?
    }

    public struct Tokenizer: Sendable, Equatable {
        public var type: String
        /// The `tokenizer.model` file (stored base64).
        public var model: [UInt8]
        public var modelXXH3: String
        public var addBOSToken, addEOSToken: Bool
        public var bos, eos, pad, unk: SpecialToken

        public init(
            type: String, model: [UInt8], modelXXH3: String, addBOSToken: Bool, addEOSToken: Bool,
            bos: SpecialToken, eos: SpecialToken, pad: SpecialToken, unk: SpecialToken
        ) {
            (self.type, self.model, self.modelXXH3) = (type, model, modelXXH3)
            (self.addBOSToken, self.addEOSToken) = (addBOSToken, addEOSToken)
            (self.bos, self.eos, self.pad, self.unk) = (bos, eos, pad, unk)
        }
    }

    /// generation_config.json's settings plus the stop strings and `do_sample`.
    public struct Generation: Sendable, Equatable {
        public var settings: [String: JSONValue]
        public var stop: [String]
        public var doSample: Bool

        public init(settings: [String: JSONValue], stop: [String], doSample: Bool) {
            (self.settings, self.stop, self.doSample) = (settings, stop, doSample)
        }
    }

    public struct SourceFile: Sendable, Equatable {
        public var path: String
        public var bytes: Int
        public var xxh3: String

        public init(path: String, bytes: Int, xxh3: String) {
            (self.path, self.bytes, self.xxh3) = (path, bytes, xxh3)
        }
    }

    public struct Provenance: Sendable, Equatable {
        public var vlqVersion: String
        public var converterDType: String
        public var converterAlignment: Int
        public var visionTower: String
        public var inShardVisionCopy: Bool
        public var ignoredTensors: [String]
        /// Sorted by path.
        public var sourceFiles: [SourceFile]

        public init(
            vlqVersion: String, converterDType: String, converterAlignment: Int, visionTower: String,
            inShardVisionCopy: Bool, ignoredTensors: [String], sourceFiles: [SourceFile]
        ) {
            (self.vlqVersion, self.converterDType, self.converterAlignment) = (
                vlqVersion, converterDType, converterAlignment
            )
            (self.visionTower, self.inShardVisionCopy) = (visionTower, inShardVisionCopy)
            (self.ignoredTensors, self.sourceFiles) = (ignoredTensors, sourceFiles)
        }
    }

    public var formatVersion: String
    public var model: Model
    public var architecture: Architecture
    /// The source JSON files, verbatim: `language`, `vision`, `preprocessor`, `generation`, `tokenizer`,
    /// `special_tokens_map` (null where the source had none).
    public var configs: [String: JSONValue]
    public var preprocessing: ImagePreprocessing
    public var chat: Chat
    public var tokenizer: Tokenizer
    public var generation: Generation
    public var provenance: Provenance
    /// Empty for an unquantized bundle; the Quantization module's `QuantizationRecord` reads it.
    public var quantization: [String: JSONValue]

    public var isQuantized: Bool { !quantization.isEmpty }

    public init(
        formatVersion: String, model: Model, architecture: Architecture, configs: [String: JSONValue],
        preprocessing: ImagePreprocessing, chat: Chat, tokenizer: Tokenizer, generation: Generation,
        provenance: Provenance, quantization: [String: JSONValue] = [:]
    ) {
        self.formatVersion = formatVersion
        self.model = model
        self.architecture = architecture
        self.configs = configs
        self.preprocessing = preprocessing
        self.chat = chat
        self.tokenizer = tokenizer
        self.generation = generation
        self.provenance = provenance
        self.quantization = quantization
    }
}

// MARK: Reading

/// Reads one section's keys with errors that name the bundle and the key.
struct MetadataFields {
    let json: JSONValue?
    let section: String
    let source: String

    init(_ json: JSONValue?, _ section: String, _ source: String) throws {
        guard json?.objectValue != nil else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata lacks the \(section) section")
        }
        self.json = json
        self.section = section
        self.source = source
    }

    func fail(_ key: String) -> VLQError {
        VLQError(ModelError.invalidMetadata, source, "metadata \(section).\(key) is missing or malformed")
    }
    func int(_ key: String) throws -> Int { guard let v = json?[key]?.intValue else { throw fail(key) }; return v }
    func double(_ key: String) throws -> Double {
        guard let v = json?[key]?.doubleValue else { throw fail(key) }; return v
    }
    func string(_ key: String) throws -> String {
        guard let v = json?[key]?.stringValue else { throw fail(key) }; return v
    }
    func bool(_ key: String) throws -> Bool { guard let v = json?[key]?.boolValue else { throw fail(key) }; return v }
    func strings(_ key: String) throws -> [String] {
        guard let a = json?[key]?.arrayValue else { throw fail(key) }
        return try a.map { v in
            guard let s = v.stringValue else { throw fail(key) }; return s
        }
    }
    func section(_ key: String) throws -> MetadataFields { try MetadataFields(json?[key], section + "." + key, source) }
}

extension BundleMetadata {
    public init(json: JSONValue, source: String) throws {
        guard let top = json.objectValue else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata is not a JSON object")
        }
        let format = try MetadataFields(top["format"], "format", source)
        formatVersion = try format.string("version")
        let m = try MetadataFields(top["model"], "model", source)
        model = Model(architecture: try m.string("architecture"), name: try m.string("name"))
        architecture = try Architecture(try MetadataFields(top["architecture"], "architecture", source))
        guard let configs = top["configs"]?.objectValue else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata lacks the configs section")
        }
        self.configs = configs
        guard let pre = top["preprocessing"] else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata lacks preprocessing")
        }
        preprocessing = try ImagePreprocessing(metadata: pre, source: source)
        let c = try MetadataFields(top["chat"], "chat", source)
        chat = Chat(
            template: try c.string("template"), system: try c.string("system"),
            imagePlaceholder: try c.string("image_placeholder"), imageTokenIndex: try c.int("image_token_index"),
            imageTokens: try c.int("image_tokens"), stop: try c.strings("stop"))
        tokenizer = try Tokenizer(try MetadataFields(top["tokenizer"], "tokenizer", source))
        let g = try MetadataFields(top["generation"], "generation", source)
        var settings = top["generation"]?.objectValue ?? [:]
        settings["stop"] = nil
        settings["do_sample"] = nil
        generation = Generation(settings: settings, stop: try g.strings("stop"), doSample: try g.bool("do_sample"))
        provenance = try Provenance(try MetadataFields(top["provenance"], "provenance", source))
        guard let quantization = top["quantization"]?.objectValue else {
            throw VLQError(ModelError.invalidMetadata, source, "metadata lacks the quantization section")
        }
        self.quantization = quantization
    }
}

extension BundleMetadata.Architecture {
    init(_ a: MetadataFields) throws {
        let v = try a.section("vision"), p = try a.section("projector"), l = try a.section("language")
        vision = Vision(
            hiddenSize: try v.int("hidden_size"), intermediateSize: try v.int("intermediate_size"),
            layers: try v.int("layers"), heads: try v.int("heads"), imageSize: try v.int("image_size"),
            patchSize: try v.int("patch_size"), channels: try v.int("channels"),
            layerNormEps: try v.double("layer_norm_eps"), hiddenAct: try v.string("hidden_act"),
            selectLayer: try v.int("select_layer"), selectFeature: try v.string("select_feature"),
            selectedHiddenState: try v.int("selected_hidden_state"))
        projector = Projector(
            type: try p.string("type"), inputSize: try p.int("input_size"),
            hiddenSize: try p.int("hidden_size"), layerNormEps: try p.double("layer_norm_eps"))
        language = Language(
            hiddenSize: try l.int("hidden_size"), intermediateSize: try l.int("intermediate_size"),
            layers: try l.int("layers"), heads: try l.int("heads"), kvHeads: try l.int("kv_heads"),
            headDim: try l.int("head_dim"), vocabSize: try l.int("vocab_size"),
            rmsNormEps: try l.double("rms_norm_eps"), ropeTheta: try l.double("rope_theta"),
            maxPositionEmbeddings: try l.int("max_position_embeddings"),
            hiddenAct: try l.string("hidden_act"), tieWordEmbeddings: try l.bool("tie_word_embeddings"))
    }
}

extension BundleMetadata.Tokenizer {
    init(_ t: MetadataFields) throws {
        type = try t.string("type")
        guard let bytes = Base64.decode(try t.string("model")), bytes.count == (try t.int("model_bytes")) else {
            throw t.fail("model")
        }
        model = bytes
        modelXXH3 = try t.string("model_xxh3")
        addBOSToken = try t.bool("add_bos_token")
        addEOSToken = try t.bool("add_eos_token")
        let special = try t.section("special_tokens")
        func token(_ key: String) -> BundleMetadata.SpecialToken {
            BundleMetadata.SpecialToken(
                text: special.json?[key]?["text"]?.stringValue, id: special.json?[key]?["id"]?.intValue)
        }
        bos = token("bos")
        eos = token("eos")
        pad = token("pad")
        unk = token("unk")
    }
}

extension BundleMetadata.Provenance {
    init(_ p: MetadataFields) throws {
        vlqVersion = try p.string("vlq_version")
        let converter = try p.section("converter")
        converterDType = try converter.string("dtype")
        converterAlignment = try converter.int("alignment")
        visionTower = try p.string("vision_tower")
        inShardVisionCopy = try p.bool("in_shard_vision_copy")
        ignoredTensors = try p.strings("ignored_tensors")
        guard let files = p.json?["source_files"]?.arrayValue else { throw p.fail("source_files") }
        sourceFiles = try files.map { f in
            guard let path = f["path"]?.stringValue, let bytes = f["bytes"]?.intValue, let xxh3 = f["xxh3"]?.stringValue
            else {
                throw p.fail("source_files")
            }
            return BundleMetadata.SourceFile(path: path, bytes: bytes, xxh3: xxh3)
        }
    }
}

// MARK: Writing

extension BundleMetadata {
    public var json: JSONValue {
        var generation = self.generation.settings
        generation["stop"] = .array(self.generation.stop.map { .string($0) })
        generation["do_sample"] = .bool(self.generation.doSample)
        return [
            "format": ["name": "vlq", "version": .string(formatVersion)],
            "model": ["architecture": .string(model.architecture), "name": .string(model.name)],
            "architecture": architecture.json,
            "configs": .object(configs),
            "preprocessing": preprocessing.json,
            "chat": [
                "template": .string(chat.template), "system": .string(chat.system),
                "image_placeholder": .string(chat.imagePlaceholder),
                "image_token_index": .int(Int64(chat.imageTokenIndex)), "image_tokens": .int(Int64(chat.imageTokens)),
                "stop": .array(chat.stop.map { .string($0) }),
            ],
            "tokenizer": tokenizer.json,
            "generation": .object(generation),
            "provenance": provenance.json,
            "quantization": .object(quantization),
        ]
    }
}

extension BundleMetadata.Architecture {
    var json: JSONValue {
        func int(_ v: Int) -> JSONValue { .int(Int64(v)) }
        let v = vision, p = projector, l = language
        return [
            "vision": [
                "hidden_size": int(v.hiddenSize), "intermediate_size": int(v.intermediateSize), "layers": int(v.layers),
                "heads": int(v.heads), "image_size": int(v.imageSize), "patch_size": int(v.patchSize),
                "channels": int(v.channels), "layer_norm_eps": .double(v.layerNormEps),
                "hidden_act": .string(v.hiddenAct),
                "select_layer": int(v.selectLayer), "select_feature": .string(v.selectFeature),
                "selected_hidden_state": int(v.selectedHiddenState),
            ],
            "projector": [
                "type": .string(p.type), "input_size": int(p.inputSize), "hidden_size": int(p.hiddenSize),
                "layer_norm_eps": .double(p.layerNormEps),
            ],
            "language": [
                "hidden_size": int(l.hiddenSize), "intermediate_size": int(l.intermediateSize), "layers": int(l.layers),
                "heads": int(l.heads), "kv_heads": int(l.kvHeads), "head_dim": int(l.headDim),
                "vocab_size": int(l.vocabSize), "rms_norm_eps": .double(l.rmsNormEps),
                "rope_theta": .double(l.ropeTheta),
                "max_position_embeddings": int(l.maxPositionEmbeddings), "hidden_act": .string(l.hiddenAct),
                "tie_word_embeddings": .bool(l.tieWordEmbeddings),
            ],
        ]
    }
}

extension BundleMetadata.Tokenizer {
    var json: JSONValue {
        func token(_ t: BundleMetadata.SpecialToken) -> JSONValue {
            ["text": t.text.map { .string($0) } ?? .null, "id": t.id.map { .int(Int64($0)) } ?? .null]
        }
        return [
            "type": .string(type), "model": .string(Base64.encode(model)), "model_bytes": .int(Int64(model.count)),
            "model_xxh3": .string(modelXXH3), "add_bos_token": .bool(addBOSToken), "add_eos_token": .bool(addEOSToken),
            "special_tokens": ["bos": token(bos), "eos": token(eos), "pad": token(pad), "unk": token(unk)],
        ]
    }
}

extension BundleMetadata.Provenance {
    var json: JSONValue {
        [
            "vlq_version": .string(vlqVersion),
            "converter": ["dtype": .string(converterDType), "alignment": .int(Int64(converterAlignment))],
            "vision_tower": .string(visionTower),
            "in_shard_vision_copy": .bool(inShardVisionCopy),
            "ignored_tensors": .array(ignoredTensors.map { .string($0) }),
            "source_files": .array(
                sourceFiles.map {
                    ["path": .string($0.path), "bytes": .int(Int64($0.bytes)), "xxh3": .string($0.xxh3)]
                }),
        ]
    }
}
