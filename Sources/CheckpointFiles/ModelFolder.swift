import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A model folder as a user names it, and the rule for which files vlq may read from it.
///
/// Files are read only when their real path lies inside the folder, or inside the Hugging Face
/// repository cache the folder belongs to: `huggingface-cli download` stores every file of a
/// snapshot (`models--org--name/snapshots/<rev>/<file>`) as a symbolic link to
/// `../../blobs/<sha>`, and older versions made `--local-dir` folders of such links too. An index or
/// config naming a file through a link that leaves both is refused: a checkpoint's own text must
/// never make vlq read elsewhere on the machine.
public final class ModelFolder: @unchecked Sendable {
    /// The folder as given (a repository cache folder is replaced by its `refs/main` snapshot).
    public let path: String
    public let realPath: String
    /// The Hugging Face repository cache (`.../models--org--name`) this folder's files live in, if any.
    public private(set) var repositoryCache: String?
    /// How the folder was found, for a notice: nil for a plain folder.
    public let resolvedFrom: String?

    public init(_ given: String) throws {
        var folder = given.count > 1 && given.hasSuffix("/") ? String(given.dropLast()) : given
        guard FileSystem.isDirectory(folder) else {
            throw VLQError(
                CheckpointError.notAFolder, given,
                FileSystem.exists(folder) ? "not a folder" : "model folder does not exist")
        }
        var resolvedFrom: String?
        if let snapshot = try ModelFolder.snapshotOfRepositoryCache(folder) {
            resolvedFrom = folder
            folder = snapshot
        }
        path = folder
        self.resolvedFrom = resolvedFrom
        guard let real = FileSystem.realPath(folder) else {
            throw VLQError(CoreError.cannotOpen, folder, "cannot resolve: \(systemError())")
        }
        realPath = real
        repositoryCache = ModelFolder.repositoryCache(containing: real)
    }

    /// A folder nested in this one (the vision tower's), under the same rule.
    public init(nested folder: String, in parent: ModelFolder) throws {
        guard FileSystem.isDirectory(folder) else { throw VLQError(CheckpointError.notAFolder, folder, "not a folder") }
        path = folder
        resolvedFrom = nil
        guard let real = FileSystem.realPath(folder) else {
            throw VLQError(CoreError.cannotOpen, folder, "cannot resolve: \(systemError())")
        }
        realPath = real
        repositoryCache = ModelFolder.repositoryCache(containing: real) ?? parent.repositoryCache
    }

    /// Checks that `file` (a path inside this folder) may be read, and that it is a regular file.
    /// `subject` is what named the file (an index, a config), for the error.
    public func checkReadable(_ file: String, namedBy subject: String? = nil) throws {
        guard let real = FileSystem.realPath(file) else {
            throw VLQError(CheckpointError.missingFile, subject ?? file, "\(file) cannot be resolved: \(systemError())")
        }
        if ModelFolder.isInside(real, realPath) { return }
        let blobs = ModelFolder.repositoryCache(ofBlob: real)
        if let blobs, repositoryCache == nil || repositoryCache == blobs {
            // The first link into a cache's blobs/ fixes which repository this folder's files may come from.
            repositoryCache = blobs
            return
        }
        let which =
            repositoryCache.map { "outside the model folder and its Hugging Face cache \($0)" }
            ?? "outside the model folder"
        throw VLQError(
            CheckpointError.outsideFolder, subject ?? file,
            "\(ModelFolder.relative(file, to: path)) resolves to \(real), \(which)")
    }

    /// The snapshot a Hugging Face repository cache folder (`models--org--name`) stands for: the one
    /// `refs/main` names, or the only one there is. nil when `folder` is not such a cache.
    static func snapshotOfRepositoryCache(_ folder: String) throws -> String? {
        let snapshots = folder + "/snapshots"
        guard FileSystem.isDirectory(snapshots), !FileSystem.exists(folder + "/config.json") else { return nil }
        let refPath = folder + "/refs/main"
        if FileSystem.exists(refPath) {
            let file = try MappedFile(path: refPath)
            guard file.size <= 4096 else {
                throw VLQError(CheckpointError.badCache, refPath, "is \(file.size) bytes, not a commit hash")
            }
            let text = withExtendedLifetime(file) { String(decoding: file.bytes, as: UTF8.self) }
            let revision = text.trimmingWhitespace()
            guard !revision.isEmpty, revision.allSatisfy({ $0.isHexDigit }) else {
                throw VLQError(CheckpointError.badCache, refPath, "does not hold a commit hash")
            }
            let snapshot = snapshots + "/" + revision
            guard FileSystem.isDirectory(snapshot) else {
                throw VLQError(
                    CheckpointError.badCache, refPath, "names snapshot \(revision), which is not in \(snapshots)")
            }
            return snapshot
        }
        let names = try FileSystem.list(snapshots).filter { FileSystem.isDirectory(snapshots + "/" + $0) }.sorted()
        guard names.count == 1 else {
            throw VLQError(
                CheckpointError.badCache,
                folder,
                names.isEmpty
                    ? "Hugging Face cache folder without snapshots"
                    : "no refs/main and \(names.count) snapshots (\(names.joined(separator: ", "))); name one")
        }
        return snapshots + "/" + names[0]
    }

    /// `.../models--org--name` when `real` lies in its `snapshots/<rev>/`.
    static func repositoryCache(containing real: String) -> String? {
        let parts = real.split(separator: "/", omittingEmptySubsequences: false)
        guard
            let i = parts.indices.last(where: { i in
                parts[i].hasPrefix("models--") && i + 2 < parts.count && parts[i + 1] == "snapshots"
            })
        else { return nil }
        return parts[...i].joined(separator: "/")
    }

    /// `.../models--org--name` when `real` is a file in its `blobs/`.
    static func repositoryCache(ofBlob real: String) -> String? {
        let parts = real.split(separator: "/", omittingEmptySubsequences: false)
        guard parts.count >= 3, parts[parts.count - 2] == "blobs", parts[parts.count - 3].hasPrefix("models--") else {
            return nil
        }
        return parts.dropLast(2).joined(separator: "/")
    }

    static func isInside(_ real: String, _ folderReal: String) -> Bool {
        real == folderReal || real.hasPrefix(folderReal == "/" ? "/" : folderReal + "/")
    }

    static func relative(_ file: String, to folder: String) -> String {
        file.hasPrefix(folder + "/") ? String(file.dropFirst(folder.count + 1)) : file
    }

    /// The repository's name for a folder inside a Hugging Face cache (`models--01-ai--Yi-VL-6B` ->
    /// `Yi-VL-6B`), else the folder's own name.
    public var modelName: String {
        if let cache = repositoryCache ?? ModelFolder.repositoryCache(containing: realPath),
            let last = cache.split(separator: "/").last
        {
            // models--org--name: repository names cannot hold "--", so the name is the last part.
            let parts = last.split(separator: "-", omittingEmptySubsequences: false)
            if let i = parts.lastIndex(where: \.isEmpty), i + 1 < parts.count {
                return parts[(i + 1)...].joined(separator: "-")
            }
        }
        return path.split(separator: "/").last.map(String.init) ?? path
    }
}

extension String {
    func trimmingWhitespace() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\n" || $0 == "\r" || $0 == "\t" }
        guard let start = firstIndex(where: { !isSpace($0) }), let end = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[start...end])
    }
}
