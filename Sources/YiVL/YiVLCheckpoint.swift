import CheckpointFiles
import SafeTensors
import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A Yi-VL checkpoint in the Hugging Face layout, discovered and checked against its configs.
///
/// The root folder holds config.json, the LLM + projector shards and the tokenizer; the vision tower
/// lives in the folder named by `mm_vision_tower`. Either holds safetensors or PyTorch weights
/// (`CheckpointFiles.ShardSet` picks which); a Hugging Face cache snapshot or repository cache folder
/// works too (`ModelFolder`). Opening maps every weight file and matches its tensors with what the
/// configs imply; any mismatch is reported in one error listing all of them.
public final class YiVLCheckpoint: @unchecked Sendable {
    public static let inShardVisionPrefix = "model.vision_tower.vision_tower."

    public let folder: String
    public let visionFolder: String
    public let model: ModelFolder
    public let config: YiVLConfig
    public let rootShards: ShardSet
    public let visionShards: ShardSet

    /// Every expected tensor with where its data is.
    public let tensors: [(expected: ExpectedTensor, file: any TensorFile, info: TensorInfo)]
    /// Vision-tower tensors also found in the root shards, keyed by their name in the vision folder.
    /// Yi's loader ignores them; so does vlq, after comparing.
    public let inShardVisionCopy: [String: (file: any TensorFile, info: TensorInfo)]
    /// Buffers that hold no weights (rotary inv_freq, CLIP position_ids), skipped.
    public let ignoredTensors: [String]

    public let tokenizerModelPath: String
    /// Small files carried into the bundle when present, by name relative to the root folder.
    public let auxiliaryFiles: [String: String]

    public static let optionalRootFiles = [
        "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
    ]

    public init(folder given: String, visionTower: String? = nil) throws {
        let model = try ModelFolder(given)
        self.model = model
        let folder = model.path
        self.folder = folder

        let rootConfig = try ConfigReader(
            path: try YiVLCheckpoint.requireFile(model, "config.json", what: "model config"))
        let towerSetting = try visionTower ?? rootConfig.string("mm_vision_tower")
        let visionFolder = YiVLCheckpoint.join(folder, towerSetting)
        guard FileSystem.isDirectory(visionFolder) else {
            throw VLQError(
                CheckpointError.missingFile,
                rootConfig.path,
                "mm_vision_tower \"\(towerSetting)\" names a vision folder that does not exist (\(visionFolder))")
        }
        self.visionFolder = visionFolder
        let vision = try ModelFolder(nested: visionFolder, in: model)
        let visionConfig = try ConfigReader(
            path: try YiVLCheckpoint.requireFile(vision, "config.json", what: "vision tower config"))
        let preprocessor = try ConfigReader(
            path: try YiVLCheckpoint.requireFile(vision, "preprocessor_config.json", what: "image preprocessing config")
        )
        config = try YiVLConfig(root: rootConfig, vision: visionConfig, preprocessor: preprocessor)
        tokenizerModelPath = try YiVLCheckpoint.requireFile(model, "tokenizer.model", what: "SentencePiece tokenizer")
        var auxiliary: [String: String] = [:]
        for name in YiVLCheckpoint.optionalRootFiles where FileSystem.exists(folder + "/" + name) {
            try model.checkReadable(folder + "/" + name)
            auxiliary[name] = folder + "/" + name
        }
        auxiliaryFiles = auxiliary

        rootShards = try ShardSet(folder: model)
        visionShards = try ShardSet(folder: vision)

        var match = TensorMatch()
        match.claim(config.expectedTensors, root: rootShards, vision: visionShards)
        match.sortUnclaimed(root: rootShards, vision: visionShards)
        if let message = match.problems.message {
            throw VLQError(ModelError.tensorMismatch, folder, "checkpoint does not match its configs: \(message)")
        }
        self.tensors = match.tensors
        inShardVisionCopy = match.copy
        ignoredTensors = match.ignored.sorted()
    }

    /// `folder/relative` without the `./` segments configs like to start with; absolute paths stay.
    static func join(_ folder: String, _ relative: String) -> String {
        if relative.hasPrefix("/") { return relative }
        var rest = Substring(relative)
        while rest.hasPrefix("./") { rest = rest.dropFirst(2) }
        while rest.hasSuffix("/") { rest = rest.dropLast() }
        let base = folder.hasSuffix("/") ? String(folder.dropLast()) : folder
        return rest.isEmpty || rest == "." ? base : base + "/" + rest
    }

    static func requireFile(_ folder: ModelFolder, _ name: String, what: String) throws -> String {
        let path = folder.path + "/" + name
        guard FileSystem.exists(path) else {
            throw VLQError(CheckpointError.missingFile, folder.path, "missing \(name) (\(what))")
        }
        try folder.checkReadable(path)
        return path
    }
}

/// The checkpoint's tensors sorted against the expected ones: matched, copies of vision tensors in the root
/// shards, ignorable buffers, and problems.
struct TensorMatch {
    var tensors: [(expected: ExpectedTensor, file: any TensorFile, info: TensorInfo)] = []
    var copy: [String: (file: any TensorFile, info: TensorInfo)] = [:]
    var ignored: [String] = []
    var problems = TensorProblems()
    private var claimedRoot = Set<String>(), claimedVision = Set<String>()

    /// Finds every expected tensor, the vision tower's in the vision shards, the rest in the root shards.
    mutating func claim(_ expectedTensors: [ExpectedTensor], root rootShards: ShardSet, vision visionShards: ShardSet) {
        for expected in expectedTensors {
            let source = expected.part == .vision ? visionShards : rootShards
            guard let (file, info) = source[expected.name] else {
                problems.missing.append(expected.name)
                continue
            }
            if expected.part == .vision {
                claimedVision.insert(expected.name)
            } else {
                claimedRoot.insert(expected.name)
            }
            if info.shape != expected.shape {
                problems.misshapen.append("\(expected.name) is \(info.shape), config implies \(expected.shape)")
            } else if !info.dtype.isFloatingPoint || info.dtype == .f64 {
                problems.badDType.append("\(expected.name) is \(info.dtype.rawValue)")
            } else {
                tensors.append((expected, file, info))
            }
        }
    }

    /// The tensors no expected one claimed: ignorable buffers, vision copies in the root shards, or unexpected.
    mutating func sortUnclaimed(root rootShards: ShardSet, vision visionShards: ShardSet) {
        for name in visionShards.tensorNames where !claimedVision.contains(name) {
            if IgnorableTensor.matches(name) { ignored.append(name) } else { problems.unexpected.append(name) }
        }
        for name in rootShards.tensorNames where !claimedRoot.contains(name) {
            if name.hasPrefix(YiVLCheckpoint.inShardVisionPrefix) {
                let visionName = String(name.dropFirst(YiVLCheckpoint.inShardVisionPrefix.count))
                if IgnorableTensor.matches(visionName) { ignored.append(name); continue }
                copy[visionName] = rootShards[name]!
            } else if IgnorableTensor.matches(name) {
                ignored.append(name)
            } else {
                problems.unexpected.append(name)
            }
        }
    }
}

/// Collects every mismatch between a checkpoint and its configs, to report them in one line.
struct TensorProblems {
    var missing: [String] = []
    var misshapen: [String] = []
    var badDType: [String] = []
    var unexpected: [String] = []

    var message: String? {
        var parts: [String] = []
        func list(_ items: [String], _ what: String) {
            guard !items.isEmpty else { return }
            let shown = items.prefix(8).joined(separator: ", ")
            let more = items.count > 8 ? ", and \(items.count - 8) more" : ""
            parts.append("\(items.count) \(what) (\(shown)\(more))")
        }
        list(missing, "missing")
        list(misshapen, "with the wrong shape")
        list(badDType, "with an unusable element type")
        list(unexpected, "unexpected")
        return parts.isEmpty ? nil : parts.joined(separator: "; ")
    }
}
