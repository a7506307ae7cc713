import Foundation
import VLQCore
import XCTest
import YiVL

/// Paths and helpers shared by the tests.
enum Repo {
    static let root: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let tinyModel = root.appendingPathComponent("Tests/Fixtures/tiny-yivl").path
    static let goldenFolder = root.appendingPathComponent("formats/golden").path
    static let readerScript = root.appendingPathComponent("tools/vlq_reader.py").path

    /// The `vlq` executable built alongside the test bundle.
    static var vlqBinary: String {
        let candidates = [
            URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("vlq")
                .path,
            Bundle.main.bundleURL.appendingPathComponent("vlq").path,
            root.appendingPathComponent(".build/debug/vlq").path,
        ]
        return candidates.first { FileManager.default.isExecutableFile(atPath: $0) } ?? candidates.last!
    }
}

/// A test case with a fresh `Scratch` folder per test. XCTest keeps every test case object until the process
/// ends, so the folder goes in tearDown, with its test, not when the object does.
class ScratchTestCase: XCTestCase {
    var scratch: Scratch!

    override func setUpWithError() throws {
        try super.setUpWithError()
        scratch = try Scratch()
    }

    override func tearDown() {
        scratch = nil
        super.tearDown()
    }
}

/// A fresh temporary folder per test, removed afterwards.
final class Scratch {
    let path: String

    init() throws {
        path = NSTemporaryDirectory() + "vlq-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    func file(_ name: String) -> String { path + "/" + name }

    /// A writable copy of the tiny Yi-VL fixture, to damage.
    func copyOfTinyModel(_ name: String = "model") throws -> String {
        let destination = file(name)
        try FileManager.default.copyItem(atPath: Repo.tinyModel, toPath: destination)
        try makeWritable(destination)
        return destination
    }

    func makeWritable(_ folder: String) throws {
        let enumerator = FileManager.default.enumerator(atPath: folder)!
        try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: folder)
        while let item = enumerator.nextObject() as? String {
            var isDirectory: ObjCBool = false
            _ = FileManager.default.fileExists(atPath: folder + "/" + item, isDirectory: &isDirectory)
            try FileManager.default.setAttributes(
                [.posixPermissions: isDirectory.boolValue ? 0o755 : 0o644], ofItemAtPath: folder + "/" + item)
        }
    }

    /// Names in the folder, hidden temporary files included: what a failed run left behind.
    func listing() -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []).sorted()
    }
}

struct ProcessResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `executable`; `input` is written to its stdin (then closed), `environment` adds variables.
@discardableResult
func run(
    _ executable: String, _ arguments: [String], input: Data? = nil, environment: [String: String] = [:]
) throws -> ProcessResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: executable)
    process.arguments = arguments
    if !environment.isEmpty {
        process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
    }
    let out = Pipe(), err = Pipe(), stdin = Pipe()
    process.standardOutput = out
    process.standardError = err
    if input != nil { process.standardInput = stdin }
    try process.run()
    if let input {
        stdin.fileHandleForWriting.write(input)
        try stdin.fileHandleForWriting.close()
    }
    // Read before waiting: a full pipe would block the child.
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    let errData = err.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return ProcessResult(
        status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData, as: UTF8.self))
}

func vlq(_ arguments: String...) throws -> ProcessResult {
    try run(Repo.vlqBinary, arguments)
}

/// `vlq` with `input` on its stdin.
func vlq(input: Data, _ arguments: String...) throws -> ProcessResult {
    try run(Repo.vlqBinary, arguments, input: input)
}

func python(_ arguments: [String]) throws -> ProcessResult {
    try run("/usr/bin/env", ["python3"] + arguments)
}

/// Builds safetensors files byte by byte, including malformed ones.
struct SafeTensorsBuilder {
    struct Entry {
        var name: String
        var dtype: String
        var shape: [Int]
        var data: [UInt8]
    }

    var entries: [Entry] = []

    mutating func add(_ name: String, dtype: String = "F32", shape: [Int], data: [UInt8]? = nil) {
        let count = shape.reduce(1, *)
        let size = count * (dtype == "F32" ? 4 : dtype == "I64" ? 8 : 2)
        entries.append(
            Entry(
                name: name, dtype: dtype, shape: shape,
                data: data ?? (0..<size).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }))
    }

    /// The header JSON the entries imply, for tests to edit before `bytes(header:)`.
    func headerJSON() -> String {
        var offset = 0
        var parts: [String] = []
        for e in entries {
            let shape = e.shape.map(String.init).joined(separator: ",")
            let offsets = "[\(offset),\(offset + e.data.count)]"
            parts.append("\"\(e.name)\":{\"dtype\":\"\(e.dtype)\",\"shape\":[\(shape)],\"data_offsets\":\(offsets)}")
            offset += e.data.count
        }
        return "{" + parts.joined(separator: ",") + "}"
    }

    func bytes(header: String? = nil, declaredHeaderLength: UInt64? = nil) -> [UInt8] {
        var json = Array((header ?? headerJSON()).utf8)
        while json.count % 8 != 0 { json.append(0x20) }
        var out: [UInt8] = []
        withUnsafeBytes(of: (declaredHeaderLength ?? UInt64(json.count)).littleEndian) { out += $0 }
        out += json
        for e in entries { out += e.data }
        return out
    }

    func write(to path: String, header: String? = nil) throws {
        try Data(bytes(header: header)).write(to: URL(fileURLWithPath: path))
    }
}

extension XCTestCase {
    /// Asserts that `body` throws a VLQError of `kind`, on one line, whose description contains every
    /// fragment: the kind is what code decides on; the fragments check what a person reads.
    func assertVLQError<T>(
        _ body: @autoclosure () throws -> T, kind: some ErrorKind, contains fragments: [String] = [],
        file: StaticString = #filePath, line: UInt = #line
    ) {
        do {
            _ = try body()
            XCTFail("expected a \(kind) error containing \(fragments)", file: file, line: line)
        } catch let error as VLQError {
            XCTAssertTrue(error.is(kind), "\(error.kind), not \(kind): \(error)", file: file, line: line)
            assertOneLine(error, contains: fragments, file: file, line: line)
        } catch {
            XCTFail("expected a VLQError, got \(error)", file: file, line: line)
        }
    }

    /// Asserts that `error` is a VLQError whose kind is one of `kinds`' cases: input damaged at random
    /// may be refused for several reasons, but by the modules that read it, with their kinds.
    func assertVLQError(
        _ error: Error, kindIn kinds: [any ErrorKind.Type], contains fragments: [String] = [],
        file: StaticString = #filePath, line: UInt = #line
    ) {
        guard let error = error as? VLQError else {
            return XCTFail("expected a VLQError, got \(type(of: error)): \(error)", file: file, line: line)
        }
        let kindType = ObjectIdentifier(type(of: error.kind))
        XCTAssertTrue(
            kinds.contains { ObjectIdentifier($0) == kindType }, "\(error.kind) is not of \(kinds): \(error)",
            file: file, line: line)
        assertOneLine(error, contains: fragments, file: file, line: line)
    }

    private func assertOneLine(_ error: VLQError, contains fragments: [String], file: StaticString, line: UInt) {
        let text = error.description
        XCTAssertFalse(text.contains("\n"), "error is not one line: \(text)", file: file, line: line)
        for fragment in fragments {
            XCTAssertTrue(
                text.contains(fragment), "\"\(text)\" does not contain \"\(fragment)\"", file: file, line: line)
        }
    }
}

func readBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func writeBytes(_ bytes: [UInt8], to path: String) throws {
    try Data(bytes).write(to: URL(fileURLWithPath: path))
}

/// A small seeded generator (SplitMix64) for reproducible random damage in tests.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func below(_ n: Int) -> Int { n <= 0 ? 0 : Int(next() % UInt64(n)) }
}

extension WeightStore {
    /// Tests name weights as checkpoints do; the engine holds them by handle.
    func floats(named name: String) throws -> [Float] { floats(try XCTUnwrap(definition.handle(named: name))) }
    func shape(named name: String) throws -> [Int] { shape(try XCTUnwrap(definition.handle(named: name))) }
}
