#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The few file-system questions vlq asks, answered without Foundation.
public enum FileSystem {
    /// Names in a folder (no "." or ".."), unsorted.
    public static func list(_ folder: String) throws -> [String] {
        guard let dir = opendir(folder) else {
            throw VLQError(CoreError.cannotOpen, folder, "cannot read folder: \(systemError())")
        }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(cString: raw.bindMemory(to: CChar.self).baseAddress!)
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names
    }

    /// What a path names, following symbolic links; nil when nothing is there.
    public static func kind(_ path: String) -> mode_t? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return info.st_mode & S_IFMT
    }

    public static func exists(_ path: String) -> Bool { kind(path) != nil }
    public static func isDirectory(_ path: String) -> Bool { kind(path) == S_IFDIR }
    public static func isRegularFile(_ path: String) -> Bool { kind(path) == S_IFREG }

    /// The canonical absolute path (symbolic links resolved), nil when it does not exist.
    public static func realPath(_ path: String) -> String? {
        guard let p = realpath(path, nil) else { return nil }
        defer { free(p) }
        return String(cString: p)
    }
}

/// Seconds on a clock that never jumps, for durations.
public func monotonicSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) * 1e-9
}
