import CheckpointFiles
import Foundation
import PyTorchCheckpoint
import VLQCore
import XCTest

/// The PyTorch checkpoint reader: torch.save zip archives read in place, their pickle run by a
/// restricted machine that never executes anything, every field of hostile files checked.
final class PyTorchCheckpointTests: XCTestCase {
    static let fixtures = Repo.root.appendingPathComponent("Tests/Fixtures/pytorch").path

    func fixture(_ name: String) -> String { PyTorchCheckpointTests.fixtures + "/" + name }

    func open(_ bytes: [UInt8], name: String = "model.bin") throws -> TorchCheckpointFile {
        try TorchCheckpointFile(mapped: MappedFile(bytes: bytes, path: name))
    }

    func floats(_ file: TorchCheckpointFile, _ name: String) throws -> [Float] {
        let info = try XCTUnwrap(file.info(name), "no tensor \(name)")
        XCTAssertEqual(info.dtype, .f32)
        return file.withContiguousData(info) { Array($0.bindMemory(to: Float.self)) }
    }

    /// A state dict with one float32 tensor `w` of shape [2, 3] over the storage 0, 1, ..., 5.
    func simpleBuilder() -> TorchCheckpointBuilder {
        var b = TorchCheckpointBuilder()
        b.addCountingFloats("0", count: 6)
        b.addTensor(TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [2, 3]))
        return b
    }

    // MARK: - Genuine torch.save files (tools/make_torch_fixtures.py)

    struct Expected: Decodable {
        var dtype: String
        var shape: [Int]
        var contiguous: Bool
        var storage_offset: Int
        var hex: String
    }

    func expectations() throws -> [String: [String: Expected]] {
        let data = try Data(contentsOf: URL(fileURLWithPath: fixture("expected.json")))
        return try JSONDecoder().decode([String: [String: Expected]].self, from: data)
    }

    static func hex(_ bytes: UnsafeRawBufferPointer) -> String {
        bytes.map { String(format: "%02x", $0) }.joined()
    }

    func testGenuineStateDictsReadWithEveryDtypeShapeAndValueBitExact() throws {
        for (fileName, tensors) in try expectations() {
            let file = try TorchCheckpointFile(path: fixture(fileName))
            XCTAssertEqual(file.formatName, "pytorch")
            XCTAssertEqual(Set(file.tensors.map(\.name)), Set(tensors.keys), fileName)
            for (name, expected) in tensors {
                let info = try XCTUnwrap(file.info(name), "\(fileName): \(name)")
                XCTAssertEqual(info.dtype.rawValue, expected.dtype, "\(fileName): \(name)")
                XCTAssertEqual(info.shape, expected.shape, "\(fileName): \(name)")
                XCTAssertEqual(info.isContiguous, expected.contiguous, "\(fileName): \(name)")
                XCTAssertEqual(info.byteCount, info.elementCount * info.dtype.byteSize)
                let actual = file.withContiguousData(info) { PyTorchCheckpointTests.hex($0) }
                XCTAssertEqual(actual, expected.hex, "\(fileName): \(name) values")
            }
            XCTAssertEqual(file.tensors.map(\.fileOffset), file.tensors.map(\.fileOffset).sorted(), "file order")
        }
    }

    func testGenuineViewsAtOffsetsAndSharedStoragesPointIntoOneStorage() throws {
        let file = try TorchCheckpointFile(path: fixture("state_dict.bin"))
        let info = { (name: String) in try XCTUnwrap(file.info(name)) }
        XCTAssertEqual(try info("view_at_offset").fileOffset, try info("base").fileOffset + 4 * 4)
        XCTAssertEqual(try info("tied_a").fileOffset, try info("tied_b").fileOffset)
        XCTAssertEqual(try info("row1").fileOffset, try info("row0").fileOffset + 4 * 4)
        XCTAssertEqual(try info("transposed").strides, [1, 4])
        XCTAssertEqual(try info("column").strides, [4])
        XCTAssertEqual(try info("column").fileOffset % 64, 2, "a column view starts one f16 into its storage")
        XCTAssertEqual(try info("expanded").strides, [0, 1])
        XCTAssertEqual(try info("parameter").shape, [1, 2])
        XCTAssertEqual(try floats(file, "transposed"), [-5, -1, 3, -4, 0, 4, -3, 1, 5, -2, 2, 6])
        XCTAssertEqual(try floats(file, "expanded"), [1, 2, 3, 1, 2, 3])
    }

    func testGenuinePickleCallingOsSystemIsRefusedAndNothingRuns() throws {
        let marker = "/tmp/pwned-vlq-test"
        try? FileManager.default.removeItem(atPath: marker)
        assertVLQError(
            try TorchCheckpointFile(path: fixture("malicious.bin")),
            kind: TorchCheckpointError.refusedGlobal,
            contains: [
                "malicious.bin", "malicious/data.pkl", "names the global posix.system",
                "refused without running anything",
            ])
        XCTAssertFalse(FileManager.default.fileExists(atPath: marker), "the payload ran")
    }

    func testGenuineLegacyFormatIsRefusedWithAWayOut() {
        assertVLQError(
            try TorchCheckpointFile(path: fixture("legacy.bin")),
            kind: TorchCheckpointError.unsupportedFormat,
            contains: ["legacy.bin", "legacy PyTorch format (torch < 1.6", "re-save", "safetensors"])
    }

    func testGenuineDeflatedArchiveIsRefusedNamingTheEntry() {
        assertVLQError(
            try TorchCheckpointFile(path: fixture("deflated.bin")),
            kind: TorchCheckpointError.unsupportedZip,
            contains: ["zip entry protocol4/data.pkl is compressed (deflate)"])
    }

    func testGenuineNestedCheckpointIsRefusedNamingTheKey() {
        assertVLQError(
            try TorchCheckpointFile(path: fixture("nested.bin")),
            kind: TorchCheckpointError.notAStateDict,
            contains: ["nested/data.pkl", "\"model\" holds a dict, not a tensor", "state_dict()"])
    }

    func testShardSetOpensAPyTorchFile() throws {
        let scratch = try Scratch()
        let path = scratch.file("pytorch_model.bin")
        try FileManager.default.copyItem(atPath: fixture("state_dict.bin"), toPath: path)
        let shards = try ShardSet(file: path)
        let entry = try XCTUnwrap(shards["linear.weight"])
        XCTAssertEqual(entry.file.formatName, "pytorch")
        XCTAssertEqual(entry.info.shape, [2, 3])
    }

    // MARK: - Built archives: what is read

    func testBuiltStateDictReadsEveryDtypeInPlace() throws {
        var b = TorchCheckpointBuilder()
        let types: [(String, DType)] = [
            ("DoubleStorage", .f64), ("FloatStorage", .f32), ("HalfStorage", .f16), ("BFloat16Storage", .bf16),
            ("LongStorage", .i64), ("IntStorage", .i32), ("ShortStorage", .i16), ("CharStorage", .i8),
            ("ByteStorage", .u8), ("BoolStorage", .bool),
        ]
        for (index, (storageType, dtype)) in types.enumerated() {
            let bytes = (0..<(3 * dtype.byteSize)).map { UInt8(truncatingIfNeeded: $0 * 37 + index) }
            b.addStorage("\(index)", bytes)
            b.addTensor(
                TorchTensorSpec(
                    name: dtype.rawValue, storageKey: "\(index)", storageType: storageType,
                    storageElements: 3, shape: [3]))
        }
        let file = try open(b.bytes())
        XCTAssertEqual(file.tensors.count, types.count)
        for (index, (_, dtype)) in types.enumerated() {
            let info = try XCTUnwrap(file.info(dtype.rawValue))
            XCTAssertEqual(info.dtype, dtype)
            XCTAssertTrue(info.isContiguous)
            XCTAssertEqual(info.fileOffset % 64, 0, "torch aligns storages to 64 bytes")
            XCTAssertEqual(Array(file.data(info)), b.storages[index].bytes)
        }
    }

    func testViewsAtAnOffsetAndTensorsSharingAStorage() throws {
        var b = TorchCheckpointBuilder()
        b.addCountingFloats("0", count: 12)
        b.addTensor(TorchTensorSpec(name: "whole", storageKey: "0", storageElements: 12, shape: [12]))
        b.addTensor(TorchTensorSpec(name: "tail", storageKey: "0", storageElements: 12, offset: 8, shape: [2, 2]))
        b.addTensor(TorchTensorSpec(name: "middle", storageKey: "0", storageElements: 12, offset: 3, shape: [4]))
        let file = try open(b.bytes())
        XCTAssertEqual(file.tensors.map(\.name), ["whole", "middle", "tail"], "ordered by file offset")
        XCTAssertEqual(try floats(file, "tail"), [8, 9, 10, 11])
        XCTAssertEqual(try floats(file, "middle"), [3, 4, 5, 6])
        XCTAssertEqual(file.info("tail")!.fileOffset, file.info("whole")!.fileOffset + 32)
    }

    func testNonContiguousViewsAreGatheredInRowMajorOrder() throws {
        var b = TorchCheckpointBuilder()
        b.addCountingFloats("0", count: 12)
        // The transpose of a [3, 4] matrix, a column of it, and a broadcast row.
        b.addTensor(TorchTensorSpec(name: "t", storageKey: "0", storageElements: 12, shape: [4, 3], strides: [1, 4]))
        b.addTensor(
            TorchTensorSpec(
                name: "col", storageKey: "0", storageElements: 12, offset: 2, shape: [3],
                strides: [4]))
        b.addTensor(
            TorchTensorSpec(
                name: "bcast", storageKey: "0", storageElements: 12, offset: 4, shape: [2, 3],
                strides: [0, 1]))
        let file = try open(b.bytes())
        XCTAssertEqual(file.info("t")?.strides, [1, 4])
        XCTAssertEqual(try floats(file, "t"), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11])
        XCTAssertEqual(try floats(file, "col"), [2, 6, 10])
        XCTAssertEqual(try floats(file, "bcast"), [4, 5, 6, 4, 5, 6])
    }

    func testDimensionsOfSizeOneMayHaveAnyStride() throws {
        var b = TorchCheckpointBuilder()
        b.addCountingFloats("0", count: 6)
        b.addTensor(
            TorchTensorSpec(
                name: "row", storageKey: "0", storageElements: 6, shape: [1, 3, 1, 2],
                strides: [999_999_999_999, 2, 7, 1]))
        let file = try open(b.bytes())
        XCTAssertNil(file.info("row")?.strides, "contiguous: size-1 strides never move the address")
        XCTAssertEqual(try floats(file, "row"), [0, 1, 2, 3, 4, 5])
    }

    func testScalarsEmptyTensorsAndParameters() throws {
        var b = TorchCheckpointBuilder()
        b.addCountingFloats("0", count: 4)
        b.addTensor(TorchTensorSpec(name: "scalar", storageKey: "0", storageElements: 4, offset: 3, shape: []))
        b.addTensor(TorchTensorSpec(name: "empty", storageKey: "0", storageElements: 4, offset: 4, shape: [0, 5]))
        b.addTensor(
            TorchTensorSpec(
                name: "param", storageKey: "0", storageElements: 4, shape: [2, 2],
                parameter: true))
        let file = try open(b.bytes())
        XCTAssertEqual(try floats(file, "scalar"), [3])
        XCTAssertEqual(file.info("empty")?.byteCount, 0)
        XCTAssertEqual(try floats(file, "empty"), [])
        XCTAssertEqual(try floats(file, "param"), [0, 1, 2, 3])
    }

    func testZip64ArchivesAndAnyArchiveFolderName() throws {
        var b = simpleBuilder()
        b.zip64 = true
        b.archiveName = "pytorch_model-00001-of-00002"
        let file = try open(b.bytes())
        XCTAssertEqual(try floats(file, "w"), [0, 1, 2, 3, 4, 5])
    }

    func testPickleProtocolFourOpcodesAreRead() throws {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, STACK_GLOBAL, as pickle protocol 4 writes them.
        var w = PickleWriter(protocolVersion: 4)
        w.op(0x95)
        w.u64(0)
        func short(_ s: String, _ w: inout PickleWriter) {
            w.raw([0x8c, UInt8(s.utf8.count)] + Array(s.utf8))  // SHORT_BINUNICODE
            w.op(0x94)  // MEMOIZE
        }
        short("collections", &w)
        short("OrderedDict", &w)
        w.raw([0x93, 0x94, 0x29, 0x52, 0x94])  // STACK_GLOBAL MEMOIZE EMPTY_TUPLE REDUCE MEMOIZE
        short("w", &w)
        let b = simpleBuilder()
        b.writeTensor(b.tensors[0], into: &w)
        w.raw([0x73, 0x2e])  // SETITEM STOP
        let file = try open(b.bytes(pickle: w.bytes))
        XCTAssertEqual(try floats(file, "w"), [0, 1, 2, 3, 4, 5])
    }

    func testAMissingByteorderRecordMeansLittleEndian() throws {
        var b = simpleBuilder()
        b.byteorder = nil
        XCTAssertEqual(try floats(try open(b.bytes()), "w"), [0, 1, 2, 3, 4, 5])
    }

    /// The builder is only a good specification if torch itself reads what it writes.
    func testBuiltArchivesLoadInTorchWhenItIsInstalled() throws {
        let scratch = try Scratch()
        var b = simpleBuilder()
        b.addTensor(
            TorchTensorSpec(
                name: "t", storageKey: "0", storageElements: 6, offset: 1, shape: [2, 2],
                strides: [1, 3], parameter: true))
        var paths: [String] = []
        for zip64 in [false, true] {
            b.zip64 = zip64
            paths.append(scratch.file("built-\(zip64).bin"))
            try writeBytes(b.bytes(), to: paths.last!)
        }
        // One interpreter for both files: importing torch takes seconds.
        let script = """
            import sys
            try:
                import torch
            except ImportError:
                sys.exit(77)
            for path in sys.argv[1:]:
                d = torch.load(path, weights_only=True)
                print(d['w'].flatten().tolist(), d['t'].flatten().tolist(), type(d['t']).__name__, dict(d._metadata))
            """
        let result = try python(["-c", script] + paths)
        if result.status == 77 { throw XCTSkip("torch is not installed") }
        XCTAssertEqual(result.status, 0, result.stderr)
        let line = "[0.0, 1.0, 2.0, 3.0, 4.0, 5.0] [1.0, 4.0, 2.0, 5.0] Parameter {'': {'version': 1}}\n"
        XCTAssertEqual(result.stdout, line + line)
    }

    /// `VLQ_TORCH_CHECKPOINT=/path/to/pytorch_model-00001-of-00002.bin` checks a real (large) file:
    /// every tensor lies inside it; names, types, shapes and offsets are printed.
    func testACheckpointNamedByTheEnvironmentOpens() throws {
        guard let path = ProcessInfo.processInfo.environment["VLQ_TORCH_CHECKPOINT"] else {
            throw XCTSkip("set VLQ_TORCH_CHECKPOINT to a torch.save file to check it")
        }
        let file = try TorchCheckpointFile(path: path)
        for info in file.tensors {
            XCTAssertLessThanOrEqual(info.fileOffset + info.spanBytes, file.mapped.size, info.name)
            print(
                "\(info.name) \(info.dtype.rawValue) \(info.shape) at \(info.fileOffset)"
                    + (info.strides.map { " strides \($0)" } ?? ""))
        }
        print("\(file.tensors.count) tensors")
    }

    // MARK: - Archive-level refusals

    func testBigEndianAndUnknownByteOrdersAreRefused() {
        var b = simpleBuilder()
        b.byteorder = "big"
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedFormat,
            contains: ["model.bin", "big-endian", "archive/byteorder: big"])
        b.byteorder = "middle"
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedFormat,
            contains: ["archive/byteorder is \"middle\""])
    }

    func testVersionRecordIsRequiredAndChecked() {
        var b = simpleBuilder()
        b.version = nil
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.notACheckpoint, contains: ["no archive/version record"])
        b.version = "99\n"
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedFormat, contains: ["archive version \"99\""])
        b.version = "three"
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedFormat, contains: ["archive version \"three\""])
    }

    func testADeflatedEntryIsRefusedNamingIt() {
        var b = simpleBuilder()
        b.deflatedEntries = ["data/0"]
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedZip,
            contains: ["zip entry archive/data/0 is compressed (deflate)"])
        b.deflatedEntries = ["data.pkl"]
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.unsupportedZip,
            contains: ["zip entry archive/data.pkl is compressed"])
    }

    func testEntriesOutsideTheArchiveFolderOrWithoutDataPklAreRefused() {
        // The folder is the first entry's, as torch's reader takes it; every entry must be inside it.
        assertVLQError(
            try open(ZipWriterHelpers.zip(["archive/data.pkl": [0x2e], "other/x": [1]])),
            kind: TorchCheckpointError.notACheckpoint,
            contains: ["zip entry \"other/x\" is outside the archive folder archive/"])
        assertVLQError(
            try open(ZipWriterHelpers.zip(["archive/other": [1]])), kind: TorchCheckpointError.notACheckpoint,
            contains: ["no archive/data.pkl"])
        assertVLQError(
            try open(ZipWriterHelpers.zip(["flat": [1]])), kind: TorchCheckpointError.notACheckpoint,
            contains: ["not inside a folder"])
    }

    func testNotAZipArchiveIsRefused() {
        assertVLQError(
            try open([]), kind: TorchCheckpointError.malformedZip, contains: ["too short to be a zip archive"])
        assertVLQError(
            try open([UInt8](repeating: 0x41, count: 100)), kind: TorchCheckpointError.malformedZip,
            contains: ["no end-of-central-directory"])
    }

    func testDamagedZipStructuresGiveNamedErrors() {
        let layout = simpleBuilder().layout()
        let end = layout.endRecord
        let firstCentral = layout.centralHeaders[0]
        let cases: [(String, (inout [UInt8]) -> Void, String)] = [
            ("central directory offset", { $0.setU32(end + 16, 5_000_000) }, "runs past the end-of-central-directory"),
            ("central directory size", { $0.setU32(end + 12, 0xffff_fff0) }, "runs past the end-of-central-directory"),
            (
                "entry count",
                {
                    $0.setU16(end + 10, 0xffff); $0.setU16(end + 8, 0xffff)
                }, "declares 65535 entries"
            ),
            ("multi-disk", { $0.setU16(end + 4, 1) }, "multi-disk"),
            ("comment length", { $0.setU16(end + 20, 3) }, "no end-of-central-directory"),
            ("central signature", { $0.setU32(firstCentral, 0) }, "no signature"),
            ("name length", { $0.setU16(firstCentral + 28, 0xffff) }, "runs past the directory"),
            ("local header offset", { $0.setU32(firstCentral + 42, 7) }, "no local header at offset 7"),
            ("local name", { $0[layout.localHeaders[0] + 30] ^= 1 }, "local header names another entry"),
            ("local method", { $0.setU16(layout.localHeaders[0] + 8, 8) }, "disagrees with the central directory"),
            ("compressed size", { $0.setU32(firstCentral + 20, 3) }, "stored but declares 3 bytes"),
            (
                "entry size",
                {
                    $0.setU32(firstCentral + 20, 0x7fff_0000); $0.setU32(firstCentral + 24, 0x7fff_0000)
                },
                "runs into the central directory"
            ),
            ("encryption", { $0.setU16(firstCentral + 8, 1) }, "is encrypted"),
            ("bad UTF-8 name", { $0[firstCentral + 46] = 0xff }, "not valid UTF-8"),
            (
                "other local header", { $0.setU32(layout.centralHeaders[1] + 42, UInt32(layout.localHeaders[0])) },
                "local header names another entry"
            ),
            (
                "trailing directory bytes",
                {
                    $0.setU16(end + 10, 3); $0.setU16(end + 8, 3)
                },
                "bytes after its 3 entries"
            ),
        ]
        // Zip features torch.save never writes are unsupported; everything else is damage.
        let unsupported: Set = ["multi-disk", "encryption"]
        for (label, damage, fragment) in cases {
            var bytes = layout.bytes
            damage(&bytes)
            let kind: TorchCheckpointError = unsupported.contains(label) ? .unsupportedZip : .malformedZip
            assertVLQError(try open(bytes), kind: kind, contains: [fragment])
            XCTAssertNotEqual(bytes, layout.bytes, label)
        }
    }

    func testDuplicateEntryNamesAndOverlappingEntriesAreRefused() throws {
        var twice = ZipWriter(zip64: false)
        twice.add("archive/data.pkl", [0x2e])
        twice.add("archive/data.pkm", [0x2e])
        var written = twice.finish()
        // Rename the second entry to the first in both its headers.
        written.bytes[written.localHeaders[1] + 30 + 15] = UInt8(ascii: "l")
        written.bytes[written.centralHeaders[1] + 46 + 15] = UInt8(ascii: "l")
        assertVLQError(
            try open(written.bytes), kind: TorchCheckpointError.malformedZip,
            contains: ["zip entry \"archive/data.pkl\" occurs twice"])

        // A second, valid local header hidden inside the first entry's data, which the second central
        // entry then points at: both entries are well-formed but share bytes.
        var hidden = ByteBuffer()
        hidden.u32(0x0403_4b50)
        [20, 0x0808, 0, 0, 0].forEach { hidden.u16(UInt16($0)) }
        [0, 0, 0].forEach { hidden.u32(UInt32($0)) }
        hidden.u16(3)
        hidden.u16(0)
        hidden.raw(Array("a/y".utf8) + [4])
        var overlapping = ZipWriter(zip64: false)
        overlapping.add("a/x", [1, 2, 3] + hidden.bytes)
        overlapping.add("a/y", [4])
        var overlapped = overlapping.finish()
        overlapped.bytes.setU32(overlapped.centralHeaders[1] + 42, UInt32(overlapped.dataOffsets[0] + 3))
        assertVLQError(
            try open(overlapped.bytes), kind: TorchCheckpointError.malformedZip,
            contains: ["zip entries \"a/x\" and \"a/y\" overlap"])
    }

    func testDamagedZip64RecordsGiveNamedErrors() throws {
        var b = simpleBuilder()
        b.zip64 = true
        let layout = b.layout()
        let record = try XCTUnwrap(layout.zip64EndRecord), locator = try XCTUnwrap(layout.zip64Locator)
        let firstCentral = layout.centralHeaders[0]
        let cases: [((inout [UInt8]) -> Void, String, TorchCheckpointError)] = [
            ({ $0.setU64(locator + 8, UInt64.max) }, "Zip64 end record offset", .malformedZip),
            ({ $0.setU64(locator + 8, 3) }, "no Zip64 end record at offset 3", .malformedZip),
            ({ $0.setU32(locator + 16, 2) }, "multi-disk", .unsupportedZip),
            ({ $0.setU64(record + 4, 1 << 40) }, "Zip64 end record size", .malformedZip),
            (
                {
                    $0.setU64(record + 32, 1 << 62); $0.setU64(record + 24, 1 << 62)
                    $0.setU16(layout.endRecord + 8, 0xffff); $0.setU16(layout.endRecord + 10, 0xffff)
                },
                "declares 4611686018427387904 entries", .malformedZip
            ),
            ({ $0.setU64(record + 48, 1 << 63) }, "beyond 2^63", .malformedZip),
            (
                {
                    $0.setU64(record + 40, UInt64(Int.max)); $0.setU32(layout.endRecord + 12, 0xffff_ffff)
                },
                "runs past", .malformedZip
            ),
            ({ $0.setU16(layout.endRecord + 10, 2) }, "disagrees with the Zip64 end record", .malformedZip),
            ({ $0.setU16(firstCentral + 30, 0) }, "no Zip64 extra field", .malformedZip),
            ({ $0.setU16(firstCentral + 46 + 16 + 2, 8) }, "Zip64 extra field too short", .malformedZip),
            (
                {
                    $0.setU64(firstCentral + 46 + 16 + 4, UInt64(Int.max))
                    $0.setU64(firstCentral + 46 + 16 + 12, UInt64(Int.max))
                },
                "runs into the central directory", .malformedZip
            ),
            ({ $0.setU64(firstCentral + 46 + 16 + 4 + 16, 1 << 63) }, "beyond 2^63", .malformedZip),
            ({ $0.setU64(firstCentral + 46 + 16 + 4 + 16, 1 << 40) }, "no local header", .malformedZip),
        ]
        for (damage, fragment, kind) in cases {
            var bytes = layout.bytes
            damage(&bytes)
            assertVLQError(try open(bytes), kind: kind, contains: [fragment])
        }
    }

    // MARK: - Pickle-level refusals

    /// A pickle that names `module.name`, calls it with one string, and stops.
    func pickleCalling(_ module: String, _ name: String, stackGlobal: Bool) -> [UInt8] {
        var w = PickleWriter()
        if stackGlobal {
            w.string(module)
            w.string(name)
            w.op(0x93)
        } else {
            w.global(module, name)
        }
        w.string("touch /tmp/pwned-vlq-test")
        w.op(0x85)
        w.reduce()
        w.stop()
        return w.bytes
    }

    func testEveryGlobalOutsideTheAllowlistIsRefusedByName() {
        let b = simpleBuilder()
        let forbidden = [
            ("os", "system"), ("posix", "system"), ("builtins", "eval"), ("__builtin__", "exec"),
            ("builtins", "getattr"), ("subprocess", "Popen"), ("torch._utils", "_rebuild_qtensor"),
            ("torch", "load"), ("torch", "UntypedStorage"), ("torch", "ComplexFloatStorage"),
            ("collections", "defaultdict"), ("torch._utils", "_rebuild_tensor"),
            ("numpy.core.multiarray", "_reconstruct"),
        ]
        for (module, name) in forbidden {
            for stackGlobal in [false, true] {
                assertVLQError(
                    try open(b.bytes(pickle: pickleCalling(module, name, stackGlobal: stackGlobal))),
                    kind: TorchCheckpointError.refusedGlobal,
                    contains: [
                        "model.bin", "archive/data.pkl", "names the global \(module).\(name)",
                        "refused without running anything",
                    ])
            }
        }
    }

    func testUnknownAndUnsupportedOpcodesAreRefusedByName() {
        let b = simpleBuilder()
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0xff])),
            kind: TorchCheckpointError.refusedOpcode, contains: ["unknown pickle opcode 0xff (at byte 2)"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0x69] + Array("os\nsystem\n".utf8))),
            kind: TorchCheckpointError.refusedOpcode, contains: ["pickle opcode INST (0x69)"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0x92])), kind: TorchCheckpointError.refusedOpcode,
            contains: ["NEWOBJ_EX"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x09])), kind: TorchCheckpointError.malformedPickle,
            contains: ["pickle protocol 9"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0x4e])), kind: TorchCheckpointError.malformedPickle,
            contains: ["ends without STOP"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0x2e])), kind: TorchCheckpointError.malformedPickle,
            contains: ["STOP on an empty stack"])
        assertVLQError(
            try open(b.bytes(pickle: [0x80, 0x02, 0x68, 0x05])), kind: TorchCheckpointError.malformedPickle,
            contains: ["BINGET 5 of a value never"])
    }

    func testHugeDeclaredLengthsAreRefusedWithoutAllocating() {
        let b = simpleBuilder()
        let u64max: [UInt8] = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]
        let pickles: [([UInt8], String)] = [
            ([0x80, 0x04, 0x8d] + u64max, "BINUNICODE8 declares"),
            ([0x80, 0x04, 0x8e] + u64max, "BINBYTES8 declares"),
            ([0x80, 0x04, 0x95] + u64max, "FRAME declares"),
            ([0x80, 0x02, 0x58, 0xff, 0xff, 0xff, 0xff], "BINUNICODE declares 4294967295 bytes"),
            ([0x80, 0x02, 0x42, 0xff, 0xff, 0xff, 0x7f], "BINBYTES declares"),
            ([0x80, 0x02, 0x54, 0xff, 0xff, 0xff, 0xff], "BINSTRING declares -1 bytes"),
            ([0x80, 0x02, 0x8b, 0xff, 0xff, 0xff, 0x0f], "LONG4 declares"),
            ([0x80, 0x02, 0x8b, 0x09, 0, 0, 0] + [UInt8](repeating: 1, count: 9), "LONG4 integer of 9 bytes"),
            ([0x80, 0x02, 0x8a, 0x20] + [UInt8](repeating: 1, count: 32), "LONG1 integer of 32 bytes"),
            ([0x80, 0x02, 0x4e, 0x72, 0xff, 0xff, 0xff, 0xff, 0x6a, 0xfe, 0xff, 0xff, 0xff], "LONG_BINGET 4294967294"),
            ([0x80, 0x02, 0x63] + Array("os".utf8), "GLOBAL operand has no end of line"),
            ([0x80, 0x02, 0x8c, 0x02, 0xc3, 0x28], "not valid UTF-8"),
        ]
        for (pickle, fragment) in pickles {
            assertVLQError(
                try open(b.bytes(pickle: pickle)), kind: TorchCheckpointError.malformedPickle, contains: [fragment])
        }
    }

    func testDeepNestingAndCyclesNeitherRecurseNorTrap() {
        let b = simpleBuilder()
        // 200,000 nested one-element tuples, then a list that contains itself.
        var pickle: [UInt8] = [0x80, 0x02, 0x29] + [UInt8](repeating: 0x85, count: 200_000)
        pickle += [0x5d, 0x71, 0x00, 0x68, 0x00, 0x61, 0x30]  // EMPTY_LIST BINPUT 0 BINGET 0 APPEND POP
        pickle += [0x2e]
        assertVLQError(
            try open(b.bytes(pickle: pickle)), kind: TorchCheckpointError.notAStateDict,
            contains: ["holds a tuple, not a state dict"])
        // 300,000 MARKs: bounded by the stack limit of open marks, then unclosed at STOP.
        let marks: [UInt8] = [0x80, 0x02] + [UInt8](repeating: 0x28, count: 300_000) + [0x4e, 0x2e]
        assertVLQError(
            try open(b.bytes(pickle: marks)), kind: TorchCheckpointError.malformedPickle,
            contains: ["STOP with an unclosed MARK"])
        // A stack deeper than the limit.
        let deep: [UInt8] = [0x80, 0x02] + [UInt8](repeating: 0x4e, count: (1 << 20) + 1)
        assertVLQError(
            try open(b.bytes(pickle: deep)), kind: TorchCheckpointError.malformedPickle,
            contains: ["pickle stack deeper than"])
    }

    func testPersistentIdsMustNameFittingStoragesOfTheArchive() {
        var b = simpleBuilder()
        b.tensors[0].storageElements = 7
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.malformedTensor,
            contains: [
                "storage 0 declares 7 F32 elements (28 bytes)",
                "its data entry holds 24 bytes",
            ])
        b = simpleBuilder()
        b.tensors[0].storageKey = "9"
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.missingStorage,
            contains: ["names storage 9", "no entry archive/data/9"])
        b = simpleBuilder()
        b.addTensor(
            TorchTensorSpec(
                name: "v", storageKey: "0", storageType: "HalfStorage", storageElements: 12,
                shape: [2]))
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.malformedTensor,
            contains: ["storage 0 is named as 6 F32 and as 12 F16"])
        b = simpleBuilder()
        b.tensors[0].storageElements = Int.max
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.malformedTensor, contains: ["declares \(Int.max) elements"])
    }

    func testTensorsReachingOutsideTheirStorageAreRefused() {
        let outside: [(TorchTensorSpec, String)] = [
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, offset: 1, shape: [2, 3]),
                "reaches past"
            ),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [3, 2], strides: [3, 1]),
                "reaches past"
            ),
            (TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, offset: 7, shape: [0]), "reaches past"),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [2], strides: [-1]),
                "not a non-negative integer"
            ),
            (TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, offset: -1, shape: [2]), "reaches past"),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [2, 2], strides: [Int.max, 1]),
                "overflows"
            ),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [1 << 40, 1 << 40, 0]),
                "overflows"
            ),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [2, 3], strides: [1]),
                "2 dimensions with 1 strides"
            ),
            (
                TorchTensorSpec(name: "w", storageKey: "0", storageElements: 6, shape: [Int](repeating: 1, count: 65)),
                "at most 64"
            ),
            // A broadcast of one element to 2^40 x 2^20: its gathered copy would be 4 PiB.
            (
                TorchTensorSpec(
                    name: "w", storageKey: "0", storageElements: 6, shape: [1 << 40, 1 << 20],
                    strides: [0, 0]), "more than the whole file holds"
            ),
        ]
        for (spec, fragment) in outside {
            var b = simpleBuilder()
            b.tensors = [spec]
            assertVLQError(try open(b.bytes()), kind: TorchCheckpointError.malformedTensor, contains: [fragment])
        }
    }

    func testTheTopLevelMustBeADictOfTensors() {
        var b = simpleBuilder()
        var w = PickleWriter()
        b.writeTensor(b.tensors[0], into: &w)
        w.stop()
        assertVLQError(
            try open(b.bytes(pickle: w.bytes)), kind: TorchCheckpointError.notAStateDict,
            contains: ["holds a tensor, not a state dict"])
        // A non-tensor value: refused with its key (skipping would silently drop weights).
        w = PickleWriter()
        w.emptyDict()
        w.string("epoch")
        w.int(3)
        w.setItem()
        w.stop()
        assertVLQError(
            try open(b.bytes(pickle: w.bytes)), kind: TorchCheckpointError.notAStateDict,
            contains: ["\"epoch\" holds an int, not a tensor"])
        // The same key twice.
        b.addTensor(b.tensors[0])
        assertVLQError(
            try open(b.bytes()), kind: TorchCheckpointError.notAStateDict, contains: ["holds the key \"w\" twice"])
    }

    func testBuildIsOnlyAcceptedOnDicts() {
        let b = simpleBuilder()
        var w = PickleWriter()
        b.writeTensor(b.tensors[0], into: &w)
        w.emptyDict()
        w.build()
        w.stop()
        assertVLQError(
            try open(b.bytes(pickle: w.bytes)), kind: TorchCheckpointError.malformedPickle,
            contains: ["BUILD on a tensor"])
        w = PickleWriter()
        w.emptyDict()
        w.string("state")
        w.build()
        w.stop()
        assertVLQError(
            try open(b.bytes(pickle: w.bytes)), kind: TorchCheckpointError.malformedPickle,
            contains: ["BUILD with a string as state"])
    }

    // MARK: - Robustness: no input traps

    /// Every header byte set to a few values, and every truncation: errors or successful opens, never a trap.
    func testEveryHeaderByteDamagedAndEveryTruncationNeverTraps() throws {
        for zip64 in [false, true] {
            var b = simpleBuilder()
            b.zip64 = zip64
            let layout = b.layout()
            for range in layout.headerByteRanges {
                for offset in range {
                    for value: UInt8 in [0x00, 0xff, 0x7f, layout.bytes[offset] ^ 0x01, layout.bytes[offset] &+ 64] {
                        var bytes = layout.bytes
                        bytes[offset] = value
                        try exerciseNeverTrapping(bytes)
                    }
                }
            }
            for length in 0..<layout.bytes.count {
                try exerciseNeverTrapping(Array(layout.bytes[..<length]))
            }
        }
    }

    /// Seeded random mutations (byte flips, overwrites, truncations, insertions, pickle opcodes) of
    /// genuine and built archives, anywhere or inside data.pkl only (entries are not checksummed, so a
    /// damaged pickle reaches the unpickler). `VLQ_TORCH_MUTATIONS` and `VLQ_TORCH_MUTATION_SEED` set
    /// the count and seed of longer runs.
    func testTenThousandRandomMutationsNeverTrap() throws {
        var seeds: [[UInt8]] = try ["state_dict.bin", "protocol4.bin", "nested.bin", "malicious.bin"]
            .map { try readBytes(fixture($0)) }
        var b = simpleBuilder()
        b.addTensor(
            TorchTensorSpec(
                name: "t", storageKey: "0", storageElements: 6, offset: 1, shape: [2, 2],
                strides: [1, 3], parameter: true))
        seeds.append(b.bytes())
        b.zip64 = true
        seeds.append(b.bytes())
        // data.pkl is the first entry of each: its bytes follow the first local header.
        let pickleRanges: [Range<Int>] = seeds.map { bytes in
            let start = 30 + Int(bytes[26]) + Int(bytes[27]) << 8 + Int(bytes[28]) + Int(bytes[29]) << 8
            return start..<min(bytes.count, start + PyTorchCheckpointTests.pickleLength(bytes))
        }
        let opcodes: [UInt8] = [
            0x80, 0x95, 0x2e, 0x4e, 0x88, 0x89, 0x4a, 0x4b, 0x4d, 0x8a, 0x8b, 0x47, 0x58, 0x8c,
            0x8d, 0x55, 0x54, 0x43, 0x42, 0x8e, 0x29, 0x74, 0x85, 0x86, 0x87, 0x5d, 0x61, 0x65,
            0x7d, 0x73, 0x75, 0x28, 0x30, 0x31, 0x32, 0x71, 0x72, 0x94, 0x68, 0x6a, 0x63, 0x93,
            0x52, 0x81, 0x62, 0x51,
        ]
        let environment = ProcessInfo.processInfo.environment
        let iterations = Int(environment["VLQ_TORCH_MUTATIONS"] ?? "") ?? 10_000
        var random = SplitMix64(seed: UInt64(environment["VLQ_TORCH_MUTATION_SEED"] ?? "") ?? 0x5eed_7042)
        var opened = 0
        for iteration in 0..<iterations {
            let seed = iteration % seeds.count
            var bytes = seeds[seed]
            let region = iteration % 2 == 0 ? 0..<bytes.count : pickleRanges[seed]
            let mutations = 1 + Int(random.next() % 4)
            for _ in 0..<mutations where !bytes.isEmpty {
                let at = min(bytes.count - 1, region.lowerBound + Int(random.next() % UInt64(max(1, region.count))))
                switch random.next() % 10 {
                case 0 where region.count == bytes.count: bytes.removeSubrange(at...)
                case 1 where region.count == bytes.count: bytes.insert(UInt8(truncatingIfNeeded: random.next()), at: at)
                case 2: bytes[at] ^= UInt8(1) << UInt8(random.next() % 8)
                case 3 where region.count == bytes.count: bytes.remove(at: at)
                case 4, 5: bytes[at] = opcodes[Int(random.next() % UInt64(opcodes.count))]
                default:
                    bytes[at] =
                        [0x00, 0xff, 0x7f, 0x80, 0x01, UInt8(truncatingIfNeeded: random.next())][
                            Int(random.next() % 6)]
                }
            }
            if try exerciseNeverTrapping(bytes) { opened += 1 }
        }
        // Many mutations land in tensor data or in fields nobody reads: the readable ones are read through.
        XCTAssertGreaterThan(opened, iterations / 100)
    }

    /// Random opcode sequences with plausible operands (memo indices, allowed globals, storage ids), so
    /// that REDUCE, BUILD, BINPERSID and the containers meet every kind of argument.
    func testRandomPicklesFromTheOpcodeGrammarNeverTrap() throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = Int(environment["VLQ_TORCH_MUTATIONS"] ?? "") ?? 10_000
        var random = SplitMix64(seed: UInt64(environment["VLQ_TORCH_MUTATION_SEED"] ?? "") ?? 0x0dd_c0de)
        let b = simpleBuilder()
        let globals = [
            ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
            ("torch._utils", "_rebuild_parameter_with_state"), ("collections", "OrderedDict"),
            ("torch", "device"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
        ]
        let strings = ["storage", "0", "1", "cpu", "w", "", "_metadata"]
        let simple: [UInt8] = [
            0x4e, 0x88, 0x89, 0x29, 0x74, 0x85, 0x86, 0x87, 0x5d, 0x61, 0x65, 0x7d, 0x73, 0x75,
            0x28, 0x30, 0x31, 0x32, 0x94, 0x52, 0x81, 0x62, 0x51, 0x93, 0x2e,
        ]
        var opened = 0
        for _ in 0..<iterations {
            var w = PickleWriter()
            for _ in 0..<(1 + Int(random.next() % 80)) {
                let pick = Int(random.next() % 100)
                switch pick {
                case 0..<40: w.op(simple[Int(random.next() % UInt64(simple.count))])
                case 40..<55: w.int(Int(random.next() % 16) - 2)
                case 55..<65: w.string(strings[Int(random.next() % UInt64(strings.count))])
                case 65..<75:
                    let (module, name) = globals[Int(random.next() % UInt64(globals.count))]
                    w.global(module, name)
                case 75..<85: w.raw([0x71, UInt8(random.next() % 8)])  // BINPUT
                case 85..<95: w.raw([0x68, UInt8(random.next() % 8)])  // BINGET
                default: w.int([6, 12, 1 << 40, -1][Int(random.next() % 4)])
                }
            }
            w.stop()
            if try exerciseNeverTrapping(b.bytes(pickle: w.bytes)) { opened += 1 }
        }
        XCTAssertGreaterThan(opened, 0, "some random pickles are empty state dicts or better")
    }

    /// Random views (offsets, shapes, strides, element types; some out of range or overflowing) of a
    /// storage: each is refused, or reads back exactly the elements its strides select.
    func testRandomViewsReadBackExactlyOrAreRefused() throws {
        let environment = ProcessInfo.processInfo.environment
        let iterations = Int(environment["VLQ_TORCH_MUTATIONS"] ?? "") ?? 10_000
        var random = SplitMix64(seed: UInt64(environment["VLQ_TORCH_MUTATION_SEED"] ?? "") ?? 0x5712_1de5)
        func pick(_ n: Int) -> Int { Int(random.next() % UInt64(n)) }
        let types: [(String, Int)] = [("FloatStorage", 4), ("HalfStorage", 2), ("LongStorage", 8), ("ByteStorage", 1)]
        var read = 0
        for _ in 0..<iterations {
            let (storageType, elementSize) = types[pick(types.count)]
            let elements = pick(40)
            let storage = (0..<(elements * elementSize)).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) }
            var b = TorchCheckpointBuilder()
            b.addStorage("0", storage)
            var specs: [TorchTensorSpec] = []
            for index in 0..<(1 + pick(3)) {
                let rank = pick(5)
                // Mostly plausible values, sometimes negative or enormous.
                let odd = { (normal: Int) -> Int in [-1, 1 << 40, Int.max, normal][min(3, pick(40))] }
                let spec = TorchTensorSpec(
                    name: "t\(index)", storageKey: "0", storageType: storageType,
                    storageElements: pick(10) == 0 ? elements + 1 : elements, offset: odd(pick(elements + 2)),
                    shape: (0..<rank).map { _ in odd(pick(5)) },
                    strides: pick(4) == 0 ? nil : (0..<rank).map { _ in odd(pick(9)) })
                specs.append(spec)
                b.addTensor(spec)
            }
            guard let file = try? open(b.bytes()) else { continue }
            for spec in specs {
                let info = try XCTUnwrap(file.info(spec.name))
                let strides = spec.strides ?? TorchCheckpointBuilder.rowMajorStrides(spec.shape)
                // The expected bytes, element by element, from the multi-index.
                var expected: [UInt8] = []
                let count = spec.shape.reduce(1, *)
                for element in 0..<count {
                    var remainder = element, source = spec.offset
                    for axis in spec.shape.indices.reversed() {
                        source += (remainder % spec.shape[axis]) * strides[axis]
                        remainder /= spec.shape[axis]
                    }
                    expected += storage[(source * elementSize)..<((source + 1) * elementSize)]
                }
                XCTAssertEqual(
                    file.withContiguousData(info) { Array($0) }, expected,
                    "\(spec.shape) \(strides) at \(spec.offset)")
                read += 1
            }
        }
        XCTAssertGreaterThan(read, iterations / 10)
    }

    /// The stored size of the first entry, from the central directory (the local header's is zero).
    static func pickleLength(_ bytes: [UInt8]) -> Int {
        func u32(_ at: Int) -> Int { (0..<4).reduce(0) { $0 | Int(bytes[at + $1]) << (8 * $1) } }
        var central = u32(bytes.count - 6)
        if central == 0xffff_ffff {
            // Zip64: the end record's offset is in the locator just before the classic record.
            let record = u32(bytes.count - 22 - 20 + 8)
            central = u32(record + 48)
        }
        let size = u32(central + 24)
        if size != 0xffff_ffff { return size }
        return u32(central + 46 + Int(bytes[central + 28]) + 4)
    }

    /// Opens the bytes and, when they open, reads every tensor back: a validation gap would trap here.
    @discardableResult
    func exerciseNeverTrapping(_ bytes: [UInt8]) throws -> Bool {
        let file: TorchCheckpointFile
        do {
            file = try open(bytes)
        } catch {
            assertVLQError(error, kindIn: [TorchCheckpointError.self])
            return false
        }
        for info in file.tensors {
            XCTAssertLessThanOrEqual(info.fileOffset + info.spanBytes, bytes.count)
            XCTAssertEqual(info.byteCount, info.elementCount * info.dtype.byteSize)
            _ = file.withContiguousData(info) { $0.count }
        }
        return true
    }
}

enum ZipWriterHelpers {
    /// A zip of stored entries in the given order (names sorted for determinism).
    static func zip(_ entries: [String: [UInt8]]) -> [UInt8] {
        var writer = ZipWriter(zip64: false)
        for name in entries.keys.sorted() { writer.add(name, entries[name]!) }
        return writer.finish().bytes
    }
}
