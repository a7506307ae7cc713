import CZstd

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
        guard size != ZSTD_CONTENTSIZE_ERROR, size != ZSTD_CONTENTSIZE_UNKNOWN, size <= UInt64(Int.max) else {
            return nil
        }
        return Int(size)
    }

    /// Claims up to this size are always believed: small files are never refused.
    public static let unconditionalLimit = 64 << 20
    /// Above `unconditionalLimit`, a frame may claim at most this many times its compressed size.
    /// Everything vlq compresses (f64 sums and Gram matrices, f32 logits, JSON with a base64
    /// tokenizer) shrinks by less than 10; a bigger claim is a damaged or hostile header.
    public static let maximumExpansion = 256

    /// The largest content size a frame of `compressedSize` bytes may claim, capped at this machine's
    /// memory, which could never hold more.
    public static func sizeLimit(compressedSize: Int) -> Int {
        let byRatio = max(unconditionalLimit, Checked.multiply(compressedSize, maximumExpansion) ?? Int.max)
        return min(byRatio, physicalMemory)
    }

    static let physicalMemory: Int = {
        let pages = sysconf(Int32(_SC_PHYS_PAGES)), pageSize = sysconf(Int32(_SC_PAGESIZE))
        guard pages > 0, pageSize > 0 else { return Int.max }
        return Checked.multiply(pages, pageSize) ?? Int.max
    }()

    /// Decompresses one frame that must expand to exactly `expectedSize` bytes and fill `bytes`.
    ///
    /// `expectedSize` usually comes from the frame's own header, so it is not trusted: a claim over
    /// `sizeLimit` is refused before anything is allocated, and the output grows with what the frame
    /// really yields (from a first guess of a few times the compressed size), so a header that lies
    /// costs nothing.
    public static func decompress(_ bytes: UnsafeRawBufferPointer, expectedSize: Int) throws -> [UInt8] {
        let limit = sizeLimit(compressedSize: bytes.count)
        guard expectedSize >= 0, expectedSize <= limit else {
            throw VLQError(
                CoreError.malformedCompression,
                nil,
                "zstd: the frame claims \(expectedSize) bytes from \(bytes.count) compressed, "
                    + "over the limit of \(limit) (at most \(maximumExpansion) times the compressed size)")
        }
        guard let context = ZSTD_createDCtx() else {
            throw VLQError(CoreError.malformedCompression, nil, "zstd: out of memory")
        }
        defer { ZSTD_freeDCtx(context) }
        var out: [UInt8] = []
        // vlq's own files expand by less than 4: they fit the first allocation (bytes.count is the size
        // of a real buffer, far from overflowing).
        out.reserveCapacity(min(expectedSize, 4 * bytes.count + (1 << 20)))
        var chunk = [UInt8](repeating: 0, count: ZSTD_DStreamOutSize())
        var input = ZSTD_inBuffer(src: bytes.baseAddress, size: bytes.count, pos: 0)
        var finished = false
        while !finished {
            let (status, produced) = chunk.withUnsafeMutableBytes { buffer in
                var output = ZSTD_outBuffer(dst: buffer.baseAddress, size: buffer.count, pos: 0)
                let status = ZSTD_decompressStream(context, &output, &input)
                return (status, output.pos)
            }
            if ZSTD_isError(status) != 0 {
                throw VLQError(
                    CoreError.malformedCompression, nil, "zstd: \(String(cString: ZSTD_getErrorName(status)))")
            }
            guard produced <= expectedSize - out.count else {
                throw VLQError(
                    CoreError.malformedCompression, nil, "zstd: expands past the \(expectedSize) bytes expected")
            }
            out.append(contentsOf: chunk[0..<produced])
            finished = status == 0
            // Input used up and the output not filled: the decoder has nothing more to give.
            if !finished && input.pos == input.size && produced < chunk.count {
                throw VLQError(
                    CoreError.malformedCompression, nil, "zstd: truncated frame (\(out.count) of \(expectedSize) bytes)"
                )
            }
        }
        guard input.pos == input.size else {
            throw VLQError(
                CoreError.malformedCompression, nil, "zstd: \(input.size - input.pos) bytes after the end of the frame")
        }
        guard out.count == expectedSize else {
            throw VLQError(
                CoreError.malformedCompression, nil, "zstd: expanded to \(out.count) bytes, expected \(expectedSize)")
        }
        return out
    }
}
