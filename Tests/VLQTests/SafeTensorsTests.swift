import CheckpointFiles
import Foundation
import SafeTensors
import VLQCore
import XCTest

/// The reader validates at least what the safetensors reference crate validates.
final class SafeTensorsTests: XCTestCase {
    func sample() -> SafeTensorsBuilder {
        var b = SafeTensorsBuilder()
        b.add("a", dtype: "F32", shape: [2, 3])
        b.add("b", dtype: "BF16", shape: [4])
        b.add("c", dtype: "F16", shape: [1, 1])
        return b
    }

    func open(_ bytes: [UInt8]) throws -> SafeTensorsFile {
        let scratch = try Scratch()
        let path = scratch.file("x.safetensors")
        try writeBytes(bytes, to: path)
        return try withExtendedLifetime(scratch) { try SafeTensorsFile(path: path) }
    }

    func testReadsTensorsInPlaceWithDtypesShapesAndOffsets() throws {
        let b = sample()
        let file = try open(b.bytes())
        XCTAssertEqual(file.tensors.map(\.name), ["a", "b", "c"])
        let a = try XCTUnwrap(file.info("a"))
        XCTAssertEqual(a.dtype, .f32)
        XCTAssertEqual(a.shape, [2, 3])
        XCTAssertEqual(Array(file.data(a)), b.entries[0].data)
        XCTAssertEqual(Array(file.data(file.info("c")!)), b.entries[2].data)
    }

    func testAcceptsMetadataAndIntegerDtypes() throws {
        var b = sample()
        b.add("ids", dtype: "I64", shape: [3])
        let header = b.headerJSON().dropLast() + #","__metadata__":{"format":"pt"}}"#
        let file = try open(b.bytes(header: String(header)))
        XCTAssertEqual(file.metadata["format"], "pt")
        XCTAssertEqual(file.info("ids")?.dtype, .i64)
    }

    func testRejectsAFileTooShortForTheHeaderLength() {
        assertVLQError(
            try open([1, 2, 3]), kind: SafeTensorsError.truncated, contains: ["x.safetensors", "too short"])
    }

    func testRejectsAHeaderLengthBeyondTheFile() {
        assertVLQError(
            try open(sample().bytes(declaredHeaderLength: 5000)), kind: SafeTensorsError.truncated,
            contains: ["header length 5000", "past the end"])
    }

    func testRejectsAHeaderLengthAboveTheLimit() {
        assertVLQError(
            try open(sample().bytes(declaredHeaderLength: 200_000_000)), kind: SafeTensorsError.malformedHeader,
            contains: ["exceeds the limit"])
    }

    func testRejectsInvalidJSON() {
        var header = sample().headerJSON()
        header.removeLast()
        assertVLQError(
            try open(sample().bytes(header: header)), kind: SafeTensorsError.malformedHeader,
            contains: ["not valid JSON"])
    }

    func testRejectsDuplicateTensorNames() {
        let header =
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#
            + #""a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}"#
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.malformedHeader, contains: ["duplicate key \"a\""]
        )
    }

    func testRejectsOverlappingOffsets() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        b.add("b", shape: [2])
        let header =
            #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#
            + #""b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.badDataOffsets, contains: ["tensor b", "overlap"])
    }

    func testRejectsAHoleBetweenTensors() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        b.add("b", shape: [2])
        let header =
            #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"#
            + #""b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}}"#
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.badDataOffsets, contains: ["tensor b", "hole"])
    }

    func testRejectsOffsetsBeyondTheData() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        let header = #"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#
        assertVLQError(try open(b.bytes(header: header)), kind: SafeTensorsError.truncated, contains: ["truncated"])
    }

    func testRejectsABytesLengthThatDisagreesWithShapeAndDtype() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        let header = #"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.malformedEntry,
            contains: ["tensor a", "8 bytes", "needs 12"])
    }

    func testRejectsTrailingBytesAfterTheData() {
        assertVLQError(
            try open(sample().bytes() + [0, 0, 0, 0]), kind: SafeTensorsError.badDataOffsets,
            contains: ["4 bytes after the last tensor"])
    }

    func testRejectsUnknownDtypesAndNegativeDimensions() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        assertVLQError(
            try open(b.bytes(header: #"{"a":{"dtype":"F8_E4M3","shape":[8],"data_offsets":[0,8]}}"#)),
            kind: SafeTensorsError.unsupportedDType, contains: ["unsupported dtype F8_E4M3"])
        assertVLQError(
            try open(b.bytes(header: #"{"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#)),
            kind: SafeTensorsError.malformedEntry, contains: ["non-natural"])
    }

    func testRejectsShapesWhoseProductOverflows() {
        var b = SafeTensorsBuilder()
        b.add("a", shape: [2])
        let header = #"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}}"#
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.malformedEntry, contains: ["overflows"])
    }

    func testShardSetWithoutIndexTakesEverySafetensorsFileOfTheFolder() throws {
        let scratch = try Scratch()
        var one = SafeTensorsBuilder(), two = SafeTensorsBuilder()
        one.add("x", shape: [1])
        two.add("y", shape: [2])
        try one.write(to: scratch.file("a.safetensors"))
        try two.write(to: scratch.file("b.safetensors"))
        let set = try ShardSet(folder: scratch.path)
        XCTAssertEqual(set.tensorNames, ["x", "y"])
        try one.write(to: scratch.file("c.safetensors"))
        assertVLQError(
            try ShardSet(folder: scratch.path), kind: CheckpointError.indexMismatch, contains: ["tensor x is also in"])
    }

    func testIndexMustMapEveryTensorToTheShardHoldingIt() throws {
        let scratch = try Scratch()
        var one = SafeTensorsBuilder()
        one.add("x", shape: [1])
        one.add("y", shape: [1])
        try one.write(to: scratch.file("a.safetensors"))
        let index = scratch.file("model.safetensors.index.json")
        try #"{"weight_map": {"x": "a.safetensors"}}"#.write(toFile: index, atomically: true, encoding: .utf8)
        assertVLQError(
            try ShardSet(folder: scratch.path), kind: CheckpointError.indexMismatch,
            contains: ["tensor y", "not mapped"])
        try #"{"weight_map": {"x": "a.safetensors", "y": "a.safetensors", "z": "a.safetensors"}}"#.write(
            toFile: index, atomically: true, encoding: .utf8)
        assertVLQError(
            try ShardSet(folder: scratch.path), kind: CheckpointError.indexMismatch,
            contains: ["tensor z", "does not hold it"])
    }

    func testIndexMayNotReachOutsideTheModelFolderEvenThroughASymlink() throws {
        let scratch = try Scratch()
        try FileManager.default.createDirectory(atPath: scratch.file("model"), withIntermediateDirectories: true)
        var one = SafeTensorsBuilder()
        one.add("x", shape: [1])
        try one.write(to: scratch.file("outside.safetensors"))
        try FileManager.default.createSymbolicLink(
            atPath: scratch.file("model/link.safetensors"), withDestinationPath: scratch.file("outside.safetensors"))
        let index = scratch.file("model/model.safetensors.index.json")
        try #"{"weight_map": {"x": "../outside.safetensors"}}"#.write(toFile: index, atomically: true, encoding: .utf8)
        assertVLQError(
            try ShardSet(folder: scratch.file("model")), kind: CheckpointError.outsideFolder,
            contains: ["index.json", "outside the model folder"])
        try #"{"weight_map": {"x": "link.safetensors"}}"#.write(toFile: index, atomically: true, encoding: .utf8)
        assertVLQError(
            try ShardSet(folder: scratch.file("model")), kind: CheckpointError.outsideFolder,
            contains: ["outside the model folder"])
    }
}

extension SafeTensorsTests {
    func testDataOffsetsWhoseSumWithTheHeaderWouldOverflowAreRefused() {
        var b = SafeTensorsBuilder()
        b.add("a", dtype: "I64", shape: [1])
        let header = #"{"a":{"dtype":"U8","shape":[8],"data_offsets":[9223372036854775799,9223372036854775807]}}"#
        assertVLQError(
            try open(b.bytes(header: header)), kind: SafeTensorsError.badDataOffsets,
            contains: ["tensor a", "beyond the file"])
    }
}
