#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// An output file that appears at its path only when complete.
///
/// Bytes go to a temporary file beside the target (same file system, so the final rename is atomic);
/// `commit` fsyncs it, renames it over the target and fsyncs the directory. If the writer fails or is
/// dropped without commit, the temporary file is removed: a failed or interrupted run leaves nothing
/// at the target path.
public final class AtomicOutputFile {
    public let targetPath: String
    public let temporaryPath: String
    private var fd: Int32
    private var committed = false
    private var registrySlot: Int?

    public init(targetPath: String) throws {
        self.targetPath = targetPath
        let directory = AtomicOutputFile.directory(of: targetPath)
        let name = targetPath.split(separator: "/").last.map(String.init) ?? targetPath
        var template = Array("\(directory)/.\(name).tmp.XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        guard fd >= 0 else {
            throw VLQError(
                CoreError.cannotWrite, targetPath, "cannot create a temporary file in \(directory): \(systemError())")
        }
        self.fd = fd
        temporaryPath = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        fchmod(fd, 0o644)
        registrySlot = TemporaryFiles.register(temporaryPath)
    }

    deinit {
        if !committed { abandon() }
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        let dir = String(path[..<slash])
        return dir.isEmpty ? "/" : dir
    }

    /// Writes all of `bytes` at `offset`, retrying short writes.
    public func write(_ bytes: UnsafeRawBufferPointer, at offset: Int) throws {
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset + done))
            if n < 0 {
                if errno == EINTR { continue }
                throw VLQError(CoreError.cannotWrite, targetPath, "write failed: \(systemError())")
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8], at offset: Int) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    /// Sets the final length up front so that the file system can allocate it in one piece.
    public func setLength(_ length: Int) throws {
        guard ftruncate(fd, off_t(length)) == 0 else {
            throw VLQError(CoreError.cannotWrite, targetPath, "cannot size the output file: \(systemError())")
        }
    }

    public func commit() throws {
        guard !committed else { return }
        guard fsync(fd) == 0 else {
            throw VLQError(CoreError.cannotWrite, targetPath, "fsync failed: \(systemError())")
        }
        close(fd)
        fd = -1
        guard rename(temporaryPath, targetPath) == 0 else {
            let message = systemError()
            unlink(temporaryPath)
            throw VLQError(CoreError.cannotWrite, targetPath, "cannot rename the finished file into place: \(message)")
        }
        committed = true
        unregister()
        let dirfd = open(AtomicOutputFile.directory(of: targetPath), O_RDONLY | O_DIRECTORY)
        if dirfd >= 0 {
            fsync(dirfd)
            close(dirfd)
        }
    }

    /// Removes the temporary file; the target path is left as it was.
    public func abandon() {
        if fd >= 0 {
            close(fd)
            fd = -1
        }
        if !committed { unlink(temporaryPath) }
        unregister()
    }

    private func unregister() {
        if let slot = registrySlot { TemporaryFiles.unregister(slot) }
        registrySlot = nil
    }
}

/// Temporary files in progress, so that a signal handler can remove them on Ctrl-C.
///
/// The handler may only call async-signal-safe functions, so paths live in C strings in a fixed table.
public enum TemporaryFiles {
    static let capacity = 16
    nonisolated(unsafe) static let table: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?> = {
        let t = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: capacity)
        t.initialize(repeating: nil, count: capacity)
        return t
    }()

    static func register(_ path: String) -> Int? {
        for i in 0..<capacity where table[i] == nil {
            table[i] = strdup(path)
            return i
        }
        return nil
    }

    static func unregister(_ slot: Int) {
        let p = table[slot]
        table[slot] = nil
        free(p)
    }

    /// Installs SIGINT/SIGTERM/SIGHUP handlers that remove registered files, then exit with 128+signal.
    public static func removeOnInterrupt() {
        let handler: @convention(c) (Int32) -> Void = { signal in
            for i in 0..<TemporaryFiles.capacity {
                if let p = TemporaryFiles.table[i] { unlink(p) }
            }
            _exit(128 + signal)
        }
        for s in [SIGINT, SIGTERM, SIGHUP] {
            _ = signal(s, handler)
        }
    }
}
