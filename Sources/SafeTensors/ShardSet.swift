#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import VLQCore

/// The tensors of one model part, spread over one or more safetensors files.
///
/// Found either through a `*.safetensors.index.json` (whose `weight_map` names each tensor's shard),
/// or, with no index, as every `*.safetensors` file in the folder. A tensor name may occur only once.
public final class ShardSet: @unchecked Sendable {
    public let folder: String
    public let indexPath: String?
    public let files: [SafeTensorsFile]
    private let locations: [String: (file: Int, info: TensorInfo)]

    public var tensorNames: [String] { locations.keys.sorted() }
    public var tensorCount: Int { locations.count }

    public subscript(name: String) -> (file: SafeTensorsFile, info: TensorInfo)? {
        guard let l = locations[name] else { return nil }
        return (files[l.file], l.info)
    }

    public init(file path: String) throws {
        folder = ShardSet.parent(of: path)
        indexPath = nil
        let file = try SafeTensorsFile(path: path)
        files = [file]
        var locations: [String: (Int, TensorInfo)] = [:]
        for t in file.tensors { locations[t.name] = (0, t) }
        self.locations = locations
    }

    /// Opens the shard set of a folder. `indexName` picks one index among several; otherwise the folder
    /// must hold at most one `*.safetensors.index.json`.
    public init(folder: String, indexName: String? = nil) throws {
        self.folder = folder
        let entries = try ShardSet.listFolder(folder)
        let indexes = entries.filter { $0.hasSuffix(".safetensors.index.json") }.sorted()
        var chosenIndex: String?
        if let indexName {
            guard indexes.contains(indexName) else { throw VLQError(folder, "no index named \(indexName)") }
            chosenIndex = indexName
        } else if indexes.count == 1 {
            chosenIndex = indexes[0]
        } else if indexes.count > 1 {
            throw VLQError(folder, "several safetensors indexes (\(indexes.joined(separator: ", "))); name one")
        }

        if let chosenIndex {
            let indexPath = folder + "/" + chosenIndex
            self.indexPath = indexPath
            let weightMap = try ShardSet.readWeightMap(indexPath)
            let shardNames = Array(Set(weightMap.values)).sorted()
            let folderReal = try ShardSet.realPath(folder, subject: folder)
            var files: [SafeTensorsFile] = []
            var fileIndex: [String: Int] = [:]
            for shard in shardNames {
                try ShardSet.checkInside(shard, folder: folder, folderReal: folderReal, index: indexPath)
                let path = folder + "/" + shard
                guard access(path, F_OK) == 0 else {
                    throw VLQError(indexPath, "weight_map names shard \(shard), which does not exist in \(folder)")
                }
                fileIndex[shard] = files.count
                files.append(try SafeTensorsFile(path: path))
            }
            var locations: [String: (Int, TensorInfo)] = [:]
            for (name, shard) in weightMap {
                let i = fileIndex[shard]!
                guard let info = files[i].info(name) else {
                    throw VLQError(indexPath, "weight_map puts tensor \(name) in \(shard), which does not hold it")
                }
                locations[name] = (i, info)
            }
            for (i, file) in files.enumerated() {
                for t in file.tensors where locations[t.name] == nil || locations[t.name]!.0 != i {
                    throw VLQError(indexPath, "tensor \(t.name) in \(shardNames[i]) is not mapped to that shard by weight_map")
                }
            }
            self.files = files
            self.locations = locations
        } else {
            indexPath = nil
            let shards = entries.filter { $0.hasSuffix(".safetensors") }.sorted()
            guard !shards.isEmpty else { throw VLQError(folder, "no .safetensors files and no safetensors index") }
            var files: [SafeTensorsFile] = []
            var locations: [String: (Int, TensorInfo)] = [:]
            for shard in shards {
                let file = try SafeTensorsFile(path: folder + "/" + shard)
                for t in file.tensors {
                    if let previous = locations[t.name] {
                        throw VLQError(file.path, "tensor \(t.name) is also in \(files[previous.0].path)")
                    }
                    locations[t.name] = (files.count, t)
                }
                files.append(file)
            }
            self.files = files
            self.locations = locations
        }
    }

    static func readWeightMap(_ indexPath: String) throws -> [String: String] {
        let file = try MappedFile(path: indexPath)
        let json: JSONValue
        do { json = try JSONValue.parse(file.bytes) } catch { throw VLQError(indexPath, "\(error)") }
        guard let map = json["weight_map"]?.objectValue else {
            throw VLQError(indexPath, "no \"weight_map\" object")
        }
        var result: [String: String] = [:]
        for (name, value) in map {
            guard let shard = value.stringValue, !shard.isEmpty else {
                throw VLQError(indexPath, "weight_map entry for \(name) is not a file name")
            }
            result[name] = shard
        }
        return result
    }

    /// An index must never make vlq read outside the model folder: no absolute paths, no `..`, and no
    /// symbolic link that resolves elsewhere.
    static func checkInside(_ shard: String, folder: String, folderReal: String, index: String) throws {
        let components = shard.split(separator: "/", omittingEmptySubsequences: false)
        if shard.hasPrefix("/") || components.contains("..") {
            throw VLQError(index, "weight_map names \(shard), which is outside the model folder")
        }
        let path = folder + "/" + shard
        if access(path, F_OK) == 0 {
            let real = try realPath(path, subject: index)
            if !(real == folderReal || real.hasPrefix(folderReal == "/" ? "/" : folderReal + "/")) {
                throw VLQError(index, "weight_map names \(shard), which resolves to \(real), outside the model folder")
            }
        }
    }

    static func realPath(_ path: String, subject: String) throws -> String {
        guard let real = FileSystem.realPath(path) else { throw VLQError(subject, "cannot resolve \(path): \(systemError())") }
        return real
    }

    static func listFolder(_ folder: String) throws -> [String] { try FileSystem.list(folder) }

    static func parent(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return String(path[..<slash])
    }
}
