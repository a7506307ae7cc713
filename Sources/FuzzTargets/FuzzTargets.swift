import Calibration
import Imaging
import PyTorchCheckpoint
import SafeTensors
import Tokenizer
import VLQCore
import VLQFormat
import YiVL

/// What each fuzz target does with one input: the in-memory entry point of a reader, then the uses
/// that follow it in vlq. Shared by the libFuzzer executable (`vlq-fuzz`, built by tools/fuzz.sh) and
/// the regression tests, so that a saved crash input replays exactly the code the fuzzer ran.
///
/// The promise under test: for any bytes, a reader returns or throws a `VLQError`; it never traps,
/// reads out of bounds, hangs or allocates by a size the input merely declares.
public enum FuzzTarget: String, CaseIterable, Sendable {
    case safetensors, pytorch, bundle, tokenizer, image, json, vlqstats

    /// The name a reader gives the input in its errors.
    public static let source = "fuzz-input"

    public func run(_ bytes: UnsafeRawBufferPointer) throws {
        switch self {
        case .safetensors: try FuzzTarget.safetensors(bytes)
        case .pytorch: try FuzzTarget.pytorch(bytes)
        case .bundle: try FuzzTarget.bundle(bytes)
        case .tokenizer: try FuzzTarget.tokenizer(bytes)
        case .image: try FuzzTarget.image(bytes)
        case .json: try FuzzTarget.json(bytes)
        case .vlqstats: try FuzzTarget.vlqstats(bytes)
        }
    }

    public func run(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try run($0) }
    }

    /// Touches the first and last byte every tensor can reach (a strided view's whole span), so that
    /// a range the reader accepted but got wrong shows up under the address sanitizer; a range
    /// outside the file is a failure of the reader's validation.
    static func touch(_ file: TensorFile) -> Int {
        var sum = 0
        for t in file.tensors {
            let count = t.spanBytes
            guard let span = file.mapped.slice(offset: t.fileOffset, count: count) else {
                preconditionFailure(
                    "\(t.name): [\(t.fileOffset), +\(count)) lies outside the \(file.mapped.size)-byte file")
            }
            if let first = span.first, let last = span.last { sum &+= Int(first) &+ Int(last) }
        }
        return sum
    }

    static func safetensors(_ bytes: UnsafeRawBufferPointer) throws {
        let file = try SafeTensorsFile(mapped: MappedFile(bytes: Array(bytes), path: source))
        _ = touch(file)
        for t in file.tensors { precondition(file.info(t.name) != nil) }
    }

    static func pytorch(_ bytes: UnsafeRawBufferPointer) throws {
        let file = try TorchCheckpointFile(mapped: MappedFile(bytes: Array(bytes), path: source))
        _ = touch(file)
        for t in file.tensors where t.byteCount <= 1 << 16 { _ = file.contiguousCopy(t) }
    }

    /// Open (header, sections, tensor table, metadata), then what `vlq check`, `vlq inspect` and the
    /// engine do with it: every checksum, the summary, and the engine configuration.
    ///
    /// The header, the table and the metadata carry XXH3 checksums, which mutations never get right:
    /// so each input runs twice, as it is (the checks themselves), and with its checksums and file
    /// size recomputed (what lies behind them). The first error is what is thrown.
    static func bundle(_ bytes: UnsafeRawBufferPointer) throws {
        var first: Error?
        for input in [Array(bytes), fixingBundleChecksums(Array(bytes))] {
            guard let input else { continue }
            do { try openAndCheckBundle(input) } catch { if first == nil { first = error } }
        }
        if let first { throw first }
    }

    static func openAndCheckBundle(_ input: [UInt8]) throws {
        let file = try VLQFile(mapped: MappedFile(bytes: input, path: source))
        _ = file.inspection.serialized()
        for r in file.tensors { precondition(file.record(r.name) != nil); _ = file.data(r).first }
        do { _ = try EngineConfig(metadata: file.metadata, source: source) } catch let e as VLQError { _ = e }
        try file.verifyChecksums()
    }

    /// The bundle with `file_size`, `table_xxh3` and `metadata_xxh3` (where their sections lie inside
    /// it) and `header_xxh3` recomputed; nil when that changes nothing or it has no header.
    static func fixingBundleChecksums(_ original: [UInt8]) -> [UInt8]? {
        guard original.count >= 128, original.starts(with: [0x89, 0x56, 0x4C, 0x51, 0x0D, 0x0A, 0x1A, 0x0A]) else {
            return nil
        }
        var b = original
        func u64(_ at: Int) -> UInt64 { (0..<8).reduce(UInt64(0)) { $0 | UInt64(b[at + $1]) << (8 * UInt64($1)) } }
        func set(_ at: Int, _ v: UInt64) {
            for i in 0..<8 { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
        }
        func hash(_ offset: UInt64, _ size: UInt64) -> UInt64? {
            guard offset <= UInt64(b.count), size <= UInt64(b.count) - offset else { return nil }
            return b.withUnsafeBytes {
                XXH3Hasher.hash(UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<Int(offset + size)]))
            }
        }
        set(16, UInt64(b.count))
        if let h = hash(u64(48), u64(56)) { set(104, h) }
        if let h = hash(u64(72), u64(80)) { set(112, h) }
        set(120, b.withUnsafeBytes { XXH3Hasher.hash(UnsafeRawBufferPointer(rebasing: $0[0..<120])) })
        return b == original ? nil : b
    }

    static let sampleText = "Hello, world!  <image>\n\tYi-VL 你好 😀 \u{2581}x"

    static func tokenizer(_ bytes: UnsafeRawBufferPointer) throws {
        let model = try SentencePieceModel(bytes: Array(bytes), source: source)
        let tokenizer = try Tokenizer(model: model, source: source)
        let ids = tokenizer.encode(sampleText)
        _ = tokenizer.decode(ids)
        _ = tokenizer.decode([0, 1, 2, -1, tokenizer.vocabularySize - 1, tokenizer.vocabularySize])
        for id in ids.prefix(8) { _ = tokenizer.bytes(of: id); _ = tokenizer.piece(id) }
    }

    /// Decode, then Yi-VL's pipeline (pad to square, bicubic resize, centre crop, normalise) to 16x16.
    /// PNG chunk CRCs are recomputed first, so that mutated headers and palettes reach the decoder.
    /// Images are limited to `imagePixelLimit`: well-formed ones up to `ImageDecoder.maxPixels` can come
    /// from a few kilobytes (a blank 1-bit PNG: 31 KB for 16000x16000), and would trip the fuzzer's
    /// allocation limit and timeout while being as they should; ImageLimitTests cover the real limit.
    static func image(_ bytes: UnsafeRawBufferPointer) throws {
        let input = fixingPNGChecksums(Array(bytes))
        let image = try input.withUnsafeBytes {
            try ImageDecoder.decode($0, source: source, pixelLimit: imagePixelLimit)
        }
        var p = ImagePreprocessing()
        p.shortestEdge = 16
        p.cropHeight = 16
        p.cropWidth = 16
        let pixels = try p.pixelValues(image, source: source)
        precondition(pixels.count == 3 * 16 * 16)
    }

    static let imagePixelLimit: UInt64 = 1 << 20

    static let crcTable: [UInt32] = (0..<256).map { n in
        (0..<8).reduce(UInt32(n)) { c, _ in c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
    }

    /// The PNG with the CRC of every whole chunk recomputed (anything else is returned as it is).
    static func fixingPNGChecksums(_ original: [UInt8]) -> [UInt8] {
        guard original.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]) else { return original }
        var b = original
        var at = 8
        while at + 12 <= b.count {
            let length = Int(b[at]) << 24 | Int(b[at + 1]) << 16 | Int(b[at + 2]) << 8 | Int(b[at + 3])
            guard length <= b.count - at - 12 else { break }
            var crc: UInt32 = 0xFFFF_FFFF
            for byte in b[(at + 4)..<(at + 8 + length)] {
                crc = crcTable[Int((crc ^ UInt32(byte)) & 0xFF)] ^ (crc >> 8)
            }
            crc ^= 0xFFFF_FFFF
            for i in 0..<4 { b[at + 8 + length + i] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(i))) }
            at += 12 + length
        }
        return b
    }

    /// Parse; what parses must serialise and parse back to the same value.
    static func json(_ bytes: UnsafeRawBufferPointer) throws {
        let value: JSONValue
        do { value = try JSONValue.parse(bytes) } catch let e as JSONSyntaxError {
            throw VLQError(CoreError.malformedJSON, source, e.reason)
        }
        for pretty in [false, true] {
            let text = value.serialized(pretty: pretty)
            guard let again = try? JSONValue.parse(text) else {
                preconditionFailure("serialised JSON does not parse: \(text)")
            }
            precondition(again == value, "JSON does not round-trip: \(text)")
        }
    }

    /// Reads a `.vlqstats` file. Inputs that are not a zstd frame are compressed first, so that most
    /// mutations land in the safetensors and statistics inside rather than in the compressed bytes.
    static func vlqstats(_ bytes: UnsafeRawBufferPointer) throws {
        let isFrame = bytes.count >= 4 && bytes.prefix(4).elementsEqual([0x28, 0xB5, 0x2F, 0xFD])
        let packed = isFrame ? Array(bytes) : Zstd.compress(Array(bytes), level: 1)
        let stats = try packed.withUnsafeBytes { try StatisticsFile.read(bytes: $0, source: source) }
        _ = stats.hasGram
        _ = stats.setDigest
        for name in stats.statistics.keys { _ = stats.statistics(for: name) }
    }
}
