import Foundation
import VLQCore
import VLQFormat
import XCTest

/// A bundle's bytes with helpers to edit its header and tensor table and then recompute their
/// checksums, so that the edit is the only thing wrong with the file.
struct BundleEditor {
    var bytes: [UInt8]
    /// Where the table was when the bundle was written (edits may move the header's idea of it).
    let tableRange: Range<Int>

    /// Offsets of header fields (formats/VLQ-BUNDLE.md, section 3).
    static let tensorCountField = 64, metadataSizeField = 88, compressionField = 96, tableChecksumField = 104

    init(path: String) throws {
        bytes = try readBytes(path)
        let header = try bytes.withUnsafeBytes { try VLQHeader.decode($0) }
        tableRange = Int(header.tableOffset)..<Int(header.tableOffset + header.tableSize)
    }

    /// Where entry `index` of the tensor table starts (entries are walked by their size field).
    func recordStart(_ index: Int) -> Int {
        var position = tableRange.lowerBound
        for _ in 0..<index { position += Int(load(UInt32.self, at: position)) }
        return position
    }

    func load<T: FixedWidthInteger>(_: T.Type, at offset: Int) -> T {
        bytes.withUnsafeBytes { T(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: T.self)) }
    }

    mutating func store<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        withUnsafeBytes(of: value.littleEndian) { bytes.replaceSubrange(offset..<(offset + $0.count), with: $0) }
    }

    /// Entry fields (formats/VLQ-BUNDLE.md, section 4): encoding u16 at 4, group size u32 at 8, dimensions u64 from 40.
    mutating func setRecord(
        _ index: Int, encoding: TensorEncoding? = nil, groupSize: UInt32? = nil,
        dimensions: [UInt64]? = nil
    ) {
        let start = recordStart(index)
        if let encoding { store(encoding.rawValue, at: start + 4) }
        if let groupSize { store(groupSize, at: start + 8) }
        if let dimensions {
            precondition(dimensions.count == Int(bytes[start + 7]), "the rank stays as written")
            for (i, d) in dimensions.enumerated() { store(d, at: start + 40 + 8 * i) }
        }
    }

    /// Recomputes the table's checksum, then the header's own.
    mutating func reseal() {
        let table = bytes.withUnsafeBytes { XXH3Hasher.hash(UnsafeRawBufferPointer(rebasing: $0[tableRange])) }
        store(table, at: BundleEditor.tableChecksumField)
        resealHeader()
    }

    mutating func resealHeader() {
        store(bytes.withUnsafeBytes { XXH3Hasher.hash(UnsafeRawBufferPointer(rebasing: $0[0..<120])) }, at: 120)
    }

    func write(to path: String) throws { try writeBytes(bytes, to: path) }
}

/// A small bundle written by VLQWriter: "w" q8 [2, 64] in one group per row, "b" f32 [4].
func writeSmallBundle(to path: String) throws {
    let plan = [
        TensorRecord(name: "w", encoding: .q8, component: .language, shape: [2, 64], groupSize: 64, sourceDType: .f32),
        TensorRecord(name: "b", encoding: .f32, component: .language, shape: [4], sourceDType: .f32),
    ]
    let writer = try VLQWriter(path: path, plan: plan)
    for (i, r) in writer.records.enumerated() {
        try writer.writeTensor(i) { sink in
            try (0..<r.byteCount).map { UInt8(truncatingIfNeeded: $0 &* 7) }.withUnsafeBytes { try sink.append($0) }
        }
    }
    try writer.finish(metadata: ["model": "small", "notes": .string(String(repeating: "metadata ", count: 50))])
}

/// A bundle's header and tensor table decide every later offset and size: crafted values must be
/// refused on open, naming the bundle and the tensor, before anything is computed or allocated.
final class MalformedBundleTests: XCTestCase {
    func testTheSmallBundleOpens() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        var editor = try BundleEditor(path: scratch.file("small.vlq"))
        editor.reseal()
        XCTAssertEqual(editor.bytes, try readBytes(scratch.file("small.vlq")), "resealing changes nothing")
        let file = try VLQFile(path: scratch.file("small.vlq"))
        XCTAssertEqual(file.tensors.map(\.name), ["w", "b"])
        try file.verifyChecksums()
    }

    /// Shapes whose quantization parameters overflow Int: they trapped computing the layout.
    func testQuantizedShapesWhoseSizeOverflowsAreRefused() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        // (encoding, group size, shape): q8 with group 1 has 2^62 values and 2^63 bytes of scales;
        // q4 [7 x 2^40, 2^20] in pairs overflows adding the scales to the values.
        let cases: [(TensorEncoding, UInt32, [UInt64])] = [
            (.q8, 1, [1 << 40, 1 << 22]),
            (.q4, 2, [7 << 40, 1 << 20]),
            (.q4s, 2, [1 << 62, 2]),
            (.q8, 64, [UInt64(Int.max), 64]),
            (.q8, 64, [1 << 32, 1 << 32]),
            (.q3, 32, [1 << 62, 32]),
        ]
        for (encoding, group, shape) in cases {
            var editor = try BundleEditor(path: scratch.file("small.vlq"))
            editor.setRecord(0, encoding: encoding, groupSize: group, dimensions: shape)
            editor.reseal()
            try editor.write(to: scratch.file("big.vlq"))
            assertVLQError(
                try VLQFile(path: scratch.file("big.vlq")),
                kind: BundleError.invalidLayout,
                contains: [scratch.file("big.vlq") + ": tensor w: shape \(shape)", "overflows"])
        }
    }

    func testShapesThatDoNotFitTheEncodingAreRefused() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        let cases: [(TensorEncoding, UInt32, [UInt64], String)] = [
            (.q8, 0, [2, 64], "group size 0"),
            (.q8, 48, [2, 64], "64 columns are not whole groups of 48"),
            (.q4, 63, [2, 63], "group size 63"),
            (.f32, 64, [2, 64], "group size 64"),
            (.q8, 64, [2, 0], "0 columns"),
            (.q3, 48, [2, 96], "group size 48 is not a multiple of 32"),
            (.q3, 16, [2, 64], "group size 16 is not a multiple of 32"),
        ]
        for (encoding, group, shape, phrase) in cases {
            var editor = try BundleEditor(path: scratch.file("small.vlq"))
            editor.setRecord(0, encoding: encoding, groupSize: group, dimensions: shape)
            editor.reseal()
            try editor.write(to: scratch.file("odd.vlq"))
            assertVLQError(
                try VLQFile(path: scratch.file("odd.vlq")), kind: BundleError.invalidLayout,
                contains: ["odd.vlq: tensor w:", phrase])
        }
    }

    /// An encoding id this vlq does not know (36 and up are reserved) is refused naming the tensor, as a
    /// reader that predates q3 refuses id 35 (formats/VLQ-BUNDLE.md, section 5).
    func testAnUnknownEncodingIsRefusedNamingTheTensor() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        var editor = try BundleEditor(path: scratch.file("small.vlq"))
        editor.store(UInt16(36), at: editor.recordStart(0) + 4)
        editor.reseal()
        try editor.write(to: scratch.file("future.vlq"))
        assertVLQError(
            try VLQFile(path: scratch.file("future.vlq")), kind: BundleError.malformedTensorRecord,
            contains: ["future.vlq", "tensor w: unknown encoding 36"])
    }

    func testCountsAndSizesFromTheHeaderAreCappedByTheFile() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        var editor = try BundleEditor(path: scratch.file("small.vlq"))
        editor.store(UInt64(1 << 40), at: BundleEditor.tensorCountField)
        editor.reseal()
        try editor.write(to: scratch.file("count.vlq"))
        assertVLQError(
            try VLQFile(path: scratch.file("count.vlq")),
            kind: BundleError.malformedHeader, contains: ["count.vlq: tensor count 1099511627776 cannot fit"])

        // The metadata's declared size is a claim too: 1 GiB from a few hundred compressed bytes is
        // refused before any allocation.
        editor = try BundleEditor(path: scratch.file("small.vlq"))
        XCTAssertEqual(editor.load(UInt32.self, at: BundleEditor.compressionField), MetadataCompression.zstd.rawValue)
        editor.store(UInt64(1 << 30), at: BundleEditor.metadataSizeField)
        editor.reseal()
        try editor.write(to: scratch.file("meta.vlq"))
        assertVLQError(
            try VLQFile(path: scratch.file("meta.vlq")),
            kind: CoreError.malformedCompression,
            contains: ["meta.vlq: metadata: zstd: the frame claims 1073741824 bytes"])
    }

    /// Random damage to the header and the table, checksums recomputed: every open ends in a bundle
    /// whose tensors can all be read and summarised, or in an error naming the file.
    func testDamagedTablesAndHeadersNeverTrap() throws {
        let scratch = try Scratch()
        try writeSmallBundle(to: scratch.file("small.vlq"))
        let original = try BundleEditor(path: scratch.file("small.vlq"))
        let table = original.tableRange
        var random = SplitMix64(seed: 0xB0D1E)
        var opened = 0, refused = 0
        for round in 0..<600 {
            var editor = original
            let region = round % 3 == 0 ? 8..<120 : table
            for _ in 0..<(1 + random.below(4)) {
                let at = region.lowerBound + random.below(region.count)
                switch random.below(4) {
                case 0: editor.bytes[at] = UInt8(random.below(256))
                case 1: editor.bytes[at] ^= 1 << UInt8(random.below(8))
                case 2: for k in at..<min(at + 8, region.upperBound) { editor.bytes[k] = 0xFF }
                default: for k in at..<min(at + 8, region.upperBound) { editor.bytes[k] = 0 }
                }
            }
            if round % 3 == 0 { editor.resealHeader() } else { editor.reseal() }
            try editor.write(to: scratch.file("damaged.vlq"))
            do {
                let file = try VLQFile(path: scratch.file("damaged.vlq"))
                _ = file.inspection
                for r in file.tensors { _ = file.data(r).reduce(0, &+) }
                try? file.verifyChecksums()
                opened += 1
            } catch let error as VLQError {
                XCTAssertEqual(error.subject, scratch.file("damaged.vlq"))
                // Damage behind the checksums is the format's to name; a damaged metadata frame, zstd's.
                assertVLQError(error, kindIn: [BundleError.self, CoreError.self])
                refused += 1
            }
        }
        XCTAssertGreaterThan(refused, 300)
        XCTAssertGreaterThan(opened, 5)
    }
}
