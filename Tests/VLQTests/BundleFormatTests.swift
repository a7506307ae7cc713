import Conversion
import Foundation
import VLQCore
import VLQFormat
import XCTest

/// The .vlq format as formats/VLQ-BUNDLE.md specifies it: layout, golden files, and damage detection.
final class BundleFormatTests: XCTestCase {
    static let golden = Repo.goldenFolder

    func testConvertReproducesTheGoldenBundlesByteForByte() throws {
        let scratch = try Scratch()
        var options = ConvertOptions()
        _ = try Converter(options: options).convert(folder: Self.golden + "/micro", output: scratch.file("micro.vlq"))
        XCTAssertEqual(
            try readBytes(scratch.file("micro.vlq")), try readBytes(Self.golden + "/micro.vlq"),
            "the writer no longer produces formats/golden/micro.vlq: a format change needs a version bump and "
                + "tools/regenerate_golden.sh"
        )
        options.dtype = .f16
        options.compressMetadata = false
        _ = try Converter(options: options).convert(
            folder: Self.golden + "/micro", output: scratch.file("micro-f16.vlq"))
        XCTAssertEqual(try readBytes(scratch.file("micro-f16.vlq")), try readBytes(Self.golden + "/micro-f16.vlq"))
    }

    func testTheGoldenBundlesReadAsTheirExpectedListingsSay() throws {
        for name in ["micro", "micro-f16"] {
            let bundle = try VLQFile(path: "\(Self.golden)/\(name).vlq")
            let expected = try JSONValue.parse(try readBytes("\(Self.golden)/\(name).expected.json"))
            XCTAssertEqual(expected["file_bytes"]?.intValue, Int(bundle.header.fileSize))
            XCTAssertEqual(expected["metadata_compression"]?.intValue, Int(bundle.header.metadataCompression))
            let tensors = try XCTUnwrap(expected["tensors"]?.arrayValue)
            XCTAssertEqual(tensors.count, bundle.tensors.count)
            for (e, r) in zip(tensors, bundle.tensors) {
                XCTAssertEqual(e["name"]?.stringValue, r.name)
                XCTAssertEqual(e["encoding"]?.stringValue, r.encoding.name)
                XCTAssertEqual(e["component"]?.stringValue, r.component.name)
                XCTAssertEqual(e["shape"]?.arrayValue?.compactMap(\.intValue), r.shape)
                XCTAssertEqual(e["offset"]?.intValue, r.offset)
                XCTAssertEqual(e["size"]?.intValue, r.byteCount)
                XCTAssertEqual(e["xxh3"]?.stringValue, hex64(r.checksum))
            }
            try bundle.verifyChecksums()
        }
    }

    func testEveryTensorIsAlignedAndTheHeaderDescribesTheLayout() throws {
        let bundle = try VLQFile(path: Self.golden + "/micro.vlq")
        let h = bundle.header
        XCTAssertEqual(h.alignment, 64)
        XCTAssertEqual(h.dataOffset, 128)
        XCTAssertEqual(h.tableOffset, h.dataOffset + h.dataSize)
        XCTAssertEqual(h.metadataOffset, h.tableOffset + h.tableSize)
        XCTAssertEqual(h.fileSize, h.metadataOffset + h.metadataStoredSize)
        for r in bundle.tensors {
            XCTAssertEqual(r.offset % 64, 0, r.name)
        }
        XCTAssertEqual(Array(bundle.mapped.bytes[0..<8]), [0x89, 0x56, 0x4C, 0x51, 0x0D, 0x0A, 0x1A, 0x0A])
    }

    func testBadMagicIsRejected() throws {
        let scratch = try Scratch()
        var bytes = try readBytes(Self.golden + "/micro.vlq")
        bytes[1] = UInt8(ascii: "X")
        try writeBytes(bytes, to: scratch.file("b.vlq"))
        assertVLQError(
            try VLQFile(path: scratch.file("b.vlq")), kind: BundleError.notABundle, contains: ["b.vlq", "bad magic"])
    }

    func testATruncatedBundleIsAnErrorAtEveryLength() throws {
        let scratch = try Scratch()
        let bytes = try readBytes(Self.golden + "/micro.vlq")
        let path = scratch.file("t.vlq")
        for length in Set(
            [0, 7, 8, 100, 127, 128, 129, 4096, bytes.count / 2, bytes.count - 1]
                + (0..<40).map { $0 * bytes.count / 40 })
        {
            try writeBytes(Array(bytes.prefix(length)), to: path)
            XCTAssertThrowsError(try VLQFile(path: path), "a \(length)-byte prefix opened") { error in
                self.assertVLQError(error, kindIn: [BundleError.self])
            }
        }
        try writeBytes(Array(bytes.dropLast(10)), to: path)
        assertVLQError(
            try VLQFile(path: path), kind: BundleError.sizeMismatch,
            contains: ["t.vlq", "truncated: the header says \(bytes.count) bytes, the file has \(bytes.count - 10)"])
    }

    /// Header, table and metadata are covered by checksums: any flipped bit there fails the open.
    func testEveryFlippedBitOutsideTensorDataFailsTheOpen() throws {
        let scratch = try Scratch()
        let original = try readBytes(Self.golden + "/micro-f16.vlq")
        let bundle = try VLQFile(path: Self.golden + "/micro-f16.vlq")
        let path = scratch.file("f.vlq")
        let tableStart = Int(bundle.header.tableOffset)
        let positions = Array(0..<128) + Array(stride(from: tableStart, to: original.count, by: 7))
        for position in positions {
            var bytes = original
            bytes[position] ^= 0x10
            try writeBytes(bytes, to: path)
            XCTAssertThrowsError(try VLQFile(path: path), "flipping byte \(position) went unnoticed") { error in
                self.assertVLQError(error, kindIn: [BundleError.self])
            }
        }
    }

    func testAFlippedByteInTensorDataIsFoundByCheckWhichNamesTheTensor() throws {
        let scratch = try Scratch()
        var bytes = try readBytes(Self.golden + "/micro.vlq")
        let bundle = try VLQFile(path: Self.golden + "/micro.vlq")
        let victim = try XCTUnwrap(bundle.record("model.layers.1.mlp.up_proj.weight"))
        bytes[victim.offset + victim.byteCount / 2] ^= 0x01
        try writeBytes(bytes, to: scratch.file("d.vlq"))
        let damaged = try VLQFile(path: scratch.file("d.vlq"))
        assertVLQError(
            try damaged.verifyChecksums(), kind: BundleError.checksumMismatch,
            contains: ["d.vlq", "tensor model.layers.1.mlp.up_proj.weight: checksum mismatch"])
    }

    func testTheWriterRefusesAShortTensorAndLeavesNothingBehind() throws {
        let scratch = try Scratch()
        let plan = [TensorRecord(name: "w", encoding: .f32, component: .language, shape: [4], sourceDType: .f32)]
        let writer = try VLQWriter(path: scratch.file("w.vlq"), plan: plan)
        assertVLQError(
            try writer.writeTensor(0) { sink in
                try [UInt8](repeating: 0, count: 8).withUnsafeBytes { try sink.append($0) }
            }, kind: BundleError.writeMismatch, contains: ["tensor w: 8 bytes written of 16"])
        writer.abandon()
        XCTAssertEqual(scratch.listing(), [])
    }
}
