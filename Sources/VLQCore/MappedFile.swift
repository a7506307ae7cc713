#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only. Tensors are used in place from it; nothing is copied on open.
///
/// Mapped pages count towards resident memory once touched, so streaming readers call `release`
/// on ranges they are done with: that is what keeps convert's RSS flat on a 70 GB model.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    private let base: UnsafeMutableRawPointer?
    private let ownsHeapCopy: Bool

    /// Bytes already in memory (a decompressed file), read through the same interface; `path` names them in errors.
    public init(bytes: [UInt8], path: String) {
        self.path = path
        size = bytes.count
        ownsHeapCopy = true
        if bytes.isEmpty {
            base = nil
        } else {
            let p = UnsafeMutableRawPointer.allocate(byteCount: bytes.count, alignment: 64)
            bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: bytes.count) }
            base = p
        }
    }

    public init(path: String) throws {
        self.path = path
        ownsHeapCopy = false
        // O_NONBLOCK: opening a FIFO for reading would otherwise wait forever for a writer; only
        // regular files pass the check below, for which the flag changes nothing.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw VLQError(CoreError.cannotOpen, path, "cannot open: \(systemError())") }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw VLQError(CoreError.cannotRead, path, "cannot stat: \(systemError())") }
        guard (info.st_mode & S_IFMT) == S_IFREG else {
            throw VLQError(CoreError.notARegularFile, path, "not a regular file (\(MappedFile.kindName(info.st_mode)))")
        }
        size = Int(info.st_size)
        if size == 0 {
            base = nil
            return
        }
        let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0)
        guard let p, p != MAP_FAILED else { throw VLQError(CoreError.cannotRead, path, "cannot map: \(systemError())") }
        base = p
    }

    static func kindName(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a folder"
        case S_IFIFO: return "a FIFO"
        case S_IFCHR, S_IFBLK: return "a device"
        case S_IFSOCK: return "a socket"
        default: return "not a plain file"
        }
    }

    deinit {
        guard let base else { return }
        if ownsHeapCopy { base.deallocate() } else { munmap(base, size) }
    }

    public var bytes: UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(start: base, count: size)
    }

    /// The bytes `offset..<offset+count`, or nil if that range is not inside the file.
    public func slice(offset: Int, count: Int) -> UnsafeRawBufferPointer? {
        guard offset >= 0, count >= 0, let end = Checked.add(offset, count), end <= size else { return nil }
        if count == 0 { return UnsafeRawBufferPointer(start: nil, count: 0) }
        return UnsafeRawBufferPointer(start: base! + offset, count: count)
    }

    /// Tells the kernel the range will be read once, front to back.
    public func adviseSequential() {
        guard let base, !ownsHeapCopy else { return }
        _ = madvise(base, size, MADV_SEQUENTIAL)
    }

    /// Drops the pages fully inside the range from this process's resident set; they stay in the
    /// page cache and are read back transparently if touched again.
    public func release(offset: Int, count: Int) {
        guard let base, count > 0, !ownsHeapCopy else { return }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = (offset + page - 1) / page * page
        let end = min(size, offset + count) / page * page
        guard end > start else { return }
        _ = madvise(base + start, end - start, MADV_DONTNEED)
    }
}

public func systemError(_ code: Int32 = errno) -> String {
    String(cString: strerror(code))
}

/// A file format read over a `MappedFile` (safetensors, PyTorch checkpoints, .vlq bundles): reading from
/// memory is the one initializer to write, and opening a path comes with it, so fuzzers and readers of
/// decompressed bytes go through the same validation as files.
public protocol MappedFileFormat {
    /// Reads and validates the whole structure; errors name `mapped.path`.
    init(mapped: MappedFile) throws
}

extension MappedFileFormat {
    public init(path: String) throws {
        try self.init(mapped: try MappedFile(path: path))
    }
}
