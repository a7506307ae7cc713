import PyTorchCheckpoint
import SafeTensors
import VLQCore

/// The format of a weight file, told by its name as transformers tells it.
public enum WeightFormat: String, Sendable {
    case safetensors, pytorch

    public init?(fileName: String) {
        if fileName.hasSuffix(".safetensors") {
            self = .safetensors
        } else if fileName.hasSuffix(".bin") || fileName.hasSuffix(".pt") || fileName.hasSuffix(".pth") {
            self = .pytorch
        } else {
            return nil
        }
    }

    /// Opens a weight file of this format (validated: nothing downstream indexes outside it).
    public func open(_ path: String) throws -> any TensorFile {
        switch self {
        case .safetensors: return try SafeTensorsFile(path: path)
        case .pytorch: return try TorchCheckpointFile(path: path)
        }
    }
}

/// The tensors of one model part, spread over one or more weight files of either format.
///
/// Which files are read follows transformers' loader: a `model.safetensors.index.json` (or any one
/// `*.safetensors.index.json`), else `model.safetensors`, else every `*.safetensors`; only when the
/// folder has no safetensors weights, `pytorch_model.bin.index.json`, else `pytorch_model.bin`, else
/// every `pytorch_model*.bin`. Other weight-like files (an OpenCLIP copy, training state) are left
/// alone and listed in `ignoredFiles`, so a user sees what was not read. A tensor name may occur once.
public final class ShardSet: @unchecked Sendable {
    public let folder: String
    public let indexPath: String?
    public let files: [any TensorFile]
    /// Weight-like files of the folder that were not read.
    public let ignoredFiles: [String]
    private let locations: [String: (file: Int, info: TensorInfo)]

    public var tensorNames: [String] { locations.keys.sorted() }
    public var tensorCount: Int { locations.count }

    /// "pytorch_model.bin" or "2 safetensors shards (model.safetensors.index.json)": what was read.
    public var description: String {
        let names = files.map { ModelFolder.relative($0.path, to: folder) }
        if let indexPath {
            return "\(files.count) \(files.first?.formatName ?? "") shard\(files.count == 1 ? "" : "s") "
                + "(\(ModelFolder.relative(indexPath, to: folder)))"
        }
        return names.joined(separator: ", ")
    }

    public subscript(name: String) -> (file: any TensorFile, info: TensorInfo)? {
        guard let l = locations[name] else { return nil }
        return (files[l.file], l.info)
    }

    /// One weight file on its own.
    public init(file path: String) throws {
        folder = ShardSet.parent(of: path)
        indexPath = nil
        ignoredFiles = []
        guard let format = WeightFormat(fileName: path) else {
            throw VLQError(
                CheckpointError.unknownWeightFormat, path, "not a weight file (.safetensors or PyTorch .bin)")
        }
        let file = try format.open(path)
        files = [file]
        var locations: [String: (Int, TensorInfo)] = [:]
        for t in file.tensors { locations[t.name] = (0, t) }
        self.locations = locations
    }

    /// Opens the weights of a folder. `indexName` picks one index among several.
    public convenience init(folder: String, indexName: String? = nil) throws {
        try self.init(folder: ModelFolder(folder), indexName: indexName)
    }

    public init(folder model: ModelFolder, indexName: String? = nil) throws {
        let folder = model.path
        self.folder = folder
        let entries = try FileSystem.list(folder).sorted()
        let choice = try ShardSet.choose(entries, folder: folder, indexName: indexName)
        var files: [any TensorFile] = []
        var locations: [String: (Int, TensorInfo)] = [:]
        if let index = choice.index {
            let indexPath = folder + "/" + index
            self.indexPath = indexPath
            try model.checkReadable(indexPath)
            let weightMap = try ShardSet.readWeightMap(indexPath)
            let shardNames = Array(Set(weightMap.values)).sorted()
            var fileIndex: [String: Int] = [:]
            for shard in shardNames {
                let components = shard.split(separator: "/", omittingEmptySubsequences: false)
                if shard.hasPrefix("/") || components.contains("..") {
                    throw VLQError(
                        CheckpointError.outsideFolder, indexPath,
                        "weight_map names \(shard), which is outside the model folder")
                }
                let path = folder + "/" + shard
                guard FileSystem.exists(path) else {
                    throw VLQError(
                        CheckpointError.missingFile, indexPath,
                        "weight_map names shard \(shard), which does not exist in \(folder)")
                }
                try model.checkReadable(path, namedBy: indexPath)
                guard let format = WeightFormat(fileName: shard) else {
                    throw VLQError(
                        CheckpointError.unknownWeightFormat, indexPath,
                        "weight_map names \(shard), which is not a .safetensors or .bin file")
                }
                fileIndex[shard] = files.count
                files.append(try format.open(path))
            }
            for (name, shard) in weightMap {
                let i = fileIndex[shard]!
                guard let info = files[i].info(name) else {
                    throw VLQError(
                        CheckpointError.indexMismatch, indexPath,
                        "weight_map puts tensor \(name) in \(shard), which does not hold it")
                }
                locations[name] = (i, info)
            }
            for (i, file) in files.enumerated() {
                for t in file.tensors where locations[t.name] == nil || locations[t.name]!.0 != i {
                    throw VLQError(
                        CheckpointError.indexMismatch,
                        indexPath, "tensor \(t.name) in \(shardNames[i]) is not mapped to that shard by weight_map")
                }
            }
        } else {
            indexPath = nil
            for shard in choice.files {
                let path = folder + "/" + shard
                try model.checkReadable(path)
                let file = try WeightFormat(fileName: shard)!.open(path)
                for t in file.tensors {
                    if let previous = locations[t.name] {
                        throw VLQError(
                            CheckpointError.indexMismatch, file.path,
                            "tensor \(t.name) is also in \(files[previous.0].path)")
                    }
                    locations[t.name] = (files.count, t)
                }
                files.append(file)
            }
        }
        self.files = files
        self.locations = locations
        let read = Set(files.map { ModelFolder.relative($0.path, to: folder) } + [choice.index].compactMap { $0 })
        ignoredFiles = entries.filter { name in
            !read.contains(name) && (WeightFormat(fileName: name) != nil || name.hasSuffix(".index.json"))
        }
    }

    /// Which index or files of a folder hold its weights (see the type's comment).
    static func choose(
        _ entries: [String], folder: String, indexName: String?
    ) throws -> (index: String?, files: [String]) {
        if let indexName {
            guard entries.contains(indexName) else {
                throw VLQError(CheckpointError.missingFile, folder, "no index named \(indexName)")
            }
            return (indexName, [])
        }
        func single(_ indexes: [String], _ preferred: String) throws -> String? {
            if indexes.contains(preferred) { return preferred }
            if indexes.count > 1 {
                throw VLQError(
                    CheckpointError.ambiguousWeights, folder,
                    "several weight indexes (\(indexes.joined(separator: ", "))); name one")
            }
            return indexes.first
        }
        let safetensors = entries.filter { $0.hasSuffix(".safetensors") }
        if let index = try single(
            entries.filter { $0.hasSuffix(".safetensors.index.json") }, "model.safetensors.index.json")
        {
            return (index, [])
        }
        if safetensors.contains("model.safetensors") { return (nil, ["model.safetensors"]) }
        if !safetensors.isEmpty { return (nil, safetensors) }
        if let index = try single(entries.filter { $0.hasSuffix(".bin.index.json") }, "pytorch_model.bin.index.json") {
            return (index, [])
        }
        if entries.contains("pytorch_model.bin") { return (nil, ["pytorch_model.bin"]) }
        let shards = entries.filter { $0.hasPrefix("pytorch_model") && $0.hasSuffix(".bin") }
        if !shards.isEmpty { return (nil, shards) }
        throw VLQError(
            CheckpointError.noWeights, folder,
            "no weights: no .safetensors files, no pytorch_model*.bin and no weight index")
    }

    static func readWeightMap(_ indexPath: String) throws -> [String: String] {
        let file = try MappedFile(path: indexPath)
        let json: JSONValue
        do { json = try JSONValue.parse(file.bytes) } catch {
            throw VLQError(CoreError.malformedJSON, indexPath, "\(error)")
        }
        guard let map = json["weight_map"]?.objectValue else {
            throw VLQError(CheckpointError.malformedIndex, indexPath, "no \"weight_map\" object")
        }
        var result: [String: String] = [:]
        for (name, value) in map {
            guard let shard = value.stringValue, !shard.isEmpty else {
                throw VLQError(
                    CheckpointError.malformedIndex, indexPath, "weight_map entry for \(name) is not a file name")
            }
            result[name] = shard
        }
        return result
    }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}
