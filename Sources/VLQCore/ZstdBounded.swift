import CZstd

extension Zstd {
    /// Decompresses one zstd frame that must expand to exactly `declaredSize` bytes, the size a file's
    /// header claims. Unlike `decompress(_:expectedSize:)` it does not allocate that size up front:
    /// the output buffer grows with what the frame really produces (at most twice that, never past
    /// `declaredSize`), so a few bytes that declare gigabytes fail when they run dry instead of
    /// allocating gigabytes first. Errors have no subject; the caller names the file.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, declaredSize: Int) throws -> [UInt8] {
        guard declaredSize >= 0 else { throw VLQError(nil, "zstd: negative size \(declaredSize)") }
        guard let context = ZSTD_createDCtx() else { throw VLQError(nil, "zstd: cannot create a decompression context") }
        defer { ZSTD_freeDCtx(context) }
        var out = [UInt8](repeating: 0, count: min(declaredSize, max(1 << 16, bytes.count.multipliedReportingOverflow(by: 4).partialValue)))
        var input = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
        var produced = 0
        while true {
            let result = out.withUnsafeMutableBytes { dst -> Int in
                var output = ZSTD_outBuffer(dst: dst.baseAddress, size: dst.count, pos: produced)
                defer { produced = output.pos }
                return ZSTD_decompressStream(context, &output, &input)
            }
            if ZSTD_isError(result) != 0 {
                throw VLQError(nil, "zstd: \(String(cString: ZSTD_getErrorName(result)))")
            }
            if result == 0 { break }  // the frame is complete and flushed
            if produced == out.count {
                guard out.count < declaredSize else {
                    throw VLQError(nil, "zstd: expands to more than the \(declaredSize) bytes expected")
                }
                out.append(contentsOf: [UInt8](repeating: 0, count: min(max(out.count, 1 << 16), declaredSize - out.count)))
            } else if input.pos == input.size {
                throw VLQError(nil, "zstd: the frame is truncated (\(produced) of \(declaredSize) bytes)")
            }
        }
        guard input.pos == input.size else { throw VLQError(nil, "zstd: \(input.size - input.pos) bytes after the frame") }
        guard produced == declaredSize else {
            throw VLQError(nil, "zstd: expanded to \(produced) bytes, expected \(declaredSize)")
        }
        return out
    }
}
