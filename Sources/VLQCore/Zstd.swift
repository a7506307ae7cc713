import CZstd

public enum Zstd {
    public static func compress(_ bytes: [UInt8], level: Int32 = 19) -> [UInt8] {
        let bound = ZSTD_compressBound(bytes.count)
        var out = [UInt8](repeating: 0, count: bound)
        let n = out.withUnsafeMutableBytes { dst in
            bytes.withUnsafeBytes { src in
                ZSTD_compress(dst.baseAddress, bound, src.baseAddress, src.count, level)
            }
        }
        precondition(ZSTD_isError(n) == 0, "zstd compression cannot fail with a bound-sized buffer")
        out.removeSubrange(n...)
        return out
    }

    /// The decompressed size a frame declares, nil when it is not a zstd frame or does not say.
    public static func frameContentSize(_ bytes: UnsafeRawBufferPointer) -> Int? {
        let size = ZSTD_getFrameContentSize(bytes.baseAddress, bytes.count)
        guard size != ZSTD_CONTENTSIZE_ERROR, size != ZSTD_CONTENTSIZE_UNKNOWN, size <= UInt64(Int.max) else { return nil }
        return Int(size)
    }

    /// Decompresses a frame that must expand to exactly `expectedSize` bytes.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, expectedSize: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: expectedSize)
        let n = out.withUnsafeMutableBytes { dst in
            ZSTD_decompress(dst.baseAddress, expectedSize, bytes.baseAddress, bytes.count)
        }
        if ZSTD_isError(n) != 0 {
            throw VLQError(nil, "zstd: \(String(cString: ZSTD_getErrorName(n)))")
        }
        guard n == expectedSize else {
            throw VLQError(nil, "zstd: expanded to \(n) bytes, expected \(expectedSize)")
        }
        return out
    }
}
