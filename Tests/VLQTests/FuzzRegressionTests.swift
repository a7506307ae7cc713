import Calibration
import Foundation
import FuzzTargets
import Imaging
import PyTorchCheckpoint
import SafeTensors
import Tokenizer
import VLQCore
import VLQFormat
import XCTest

/// Inputs the fuzzers (tools/fuzz.sh) found crashing a reader, replayed through the same in-memory
/// entry points (`FuzzTarget.run`): each must now be refused with a VLQError.
///
/// Tests/Fixtures/fuzz-regressions/<target>/ holds the fixed ones. Inputs that still crash code
/// being fixed elsewhere wait in Tests/Fixtures/fuzz-regressions/pending/<target>/, which is not
/// replayed (a crash would end the test process): move a file up once its crash is fixed.
final class FuzzRegressionTests: XCTestCase {
    static let folder = Repo.root.appendingPathComponent("Tests/Fixtures/fuzz-regressions").path

    static func inputs(_ folder: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: folder)) ?? [])
            .filter { !$0.hasPrefix(".") && !$0.hasSuffix(".md") }
            .sorted()
            .map { folder + "/" + $0 }
            .filter {
                var d: ObjCBool = false;
                return FileManager.default.fileExists(atPath: $0, isDirectory: &d) && !d.boolValue
            }
    }

    /// The kinds each target's reader may refuse an input with: its own module's, zstd's where the input is
    /// compressed, and a JSON syntax error for JSON.
    static let kinds: [FuzzTarget: [any ErrorKind.Type]] = [
        .safetensors: [SafeTensorsError.self], .pytorch: [TorchCheckpointError.self],
        .bundle: [BundleError.self, CoreError.self], .tokenizer: [TokenizerError.self], .image: [ImageError.self],
        .json: [CoreError.self], .vlqstats: [SafeTensorsError.self, CalibrationError.self, CoreError.self],
    ]

    func replay(_ target: FuzzTarget) throws {
        for path in FuzzRegressionTests.inputs(FuzzRegressionTests.folder + "/" + target.rawValue) {
            let bytes = [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
            // An input that crashed once but is a valid file (named valid-*) must now go through.
            if (path as NSString).lastPathComponent.hasPrefix("valid-") {
                XCTAssertNoThrow(try target.run(bytes), path)
                continue
            }
            XCTAssertThrowsError(try target.run(bytes), "\(path) was accepted") { error in
                XCTAssert(error is VLQError, "\(path): \(type(of: error)) thrown, not a VLQError: \(error)")
                XCTAssertEqual((error as? VLQError)?.subject, FuzzTarget.source, "\(path): \(error)")
                self.assertVLQError(error, kindIn: FuzzRegressionTests.kinds[target]!)
            }
        }
    }

    func testSafeTensors() throws { try replay(.safetensors) }
    func testPyTorch() throws { try replay(.pytorch) }
    func testBundle() throws { try replay(.bundle) }
    func testTokenizer() throws { try replay(.tokenizer) }
    func testImage() throws { try replay(.image) }
    func testJSON() throws { try replay(.json) }
    func testStatistics() throws { try replay(.vlqstats) }

    /// Every target runs its seeds-like smallest inputs without error where they are valid.
    func testValidInputsPass() throws {
        try FuzzTarget.json.run(Array(#"{"a":[1,2.5,"\u00e9",null,true],"b":{}}"#.utf8))
        let micro = try Data(contentsOf: URL(fileURLWithPath: Repo.goldenFolder + "/micro.vlq"))
        XCTAssertThrowsError(try FuzzTarget.bundle.run([UInt8](micro.prefix(200))))
        try FuzzTarget.bundle.run([UInt8](micro))
        let model = try Data(contentsOf: URL(fileURLWithPath: Repo.tinyModel + "/tokenizer.model"))
        try FuzzTarget.tokenizer.run([UInt8](model))
        let shard = try Data(
            contentsOf: URL(fileURLWithPath: Repo.goldenFolder + "/micro/model-00001-of-00005.safetensors"))
        try FuzzTarget.safetensors.run([UInt8](shard))
        let image = try Data(
            contentsOf: URL(fileURLWithPath: Repo.root.appendingPathComponent("Tests/Fixtures/images/palette.png").path)
        )
        try FuzzTarget.image.run([UInt8](image))
    }

    /// Sizes a header declares are not allocated before the data bears them out (the fuzzers found
    /// 12-byte .vlqstats files declaring gigabytes, and bundles whose metadata declares 1 GiB).
    func testDeclaredSizesAreNotAllocated() throws {
        let frame = Zstd.compress(Array("{}".utf8))
        for declared in [1 << 40, Int.max, 3, 1] {
            assertVLQError(
                try frame.withUnsafeBytes { try Zstd.decompress($0, expectedSize: declared) },
                kind: CoreError.malformedCompression)
        }
        XCTAssertEqual(try frame.withUnsafeBytes { try Zstd.decompress($0, expectedSize: 2) }, Array("{}".utf8))
        let big = [UInt8](repeating: 7, count: 1 << 20) + Array(0..<255)
        let packed = Zstd.compress(big, level: 1)
        XCTAssertEqual(try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: big.count) }, big)
        assertVLQError(
            try (packed + [0]).withUnsafeBytes { try Zstd.decompress($0, expectedSize: big.count) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try Array(packed.dropLast()).withUnsafeBytes { try Zstd.decompress($0, expectedSize: big.count) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: big.count - 1) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: big.count + 1) },
            kind: CoreError.malformedCompression)
        assertVLQError(
            try [UInt8](repeating: 7, count: 64).withUnsafeBytes { try Zstd.decompress($0, expectedSize: 10) },
            kind: CoreError.malformedCompression)
    }

    /// Names the inputs still waiting for a fix elsewhere, so that they are not forgotten.
    func testPendingInputsAreListed() throws {
        let pending = FuzzTarget.allCases.flatMap {
            FuzzRegressionTests.inputs(FuzzRegressionTests.folder + "/pending/" + $0.rawValue)
        }
        if !pending.isEmpty {
            throw XCTSkip(
                "\(pending.count) fuzz inputs still crash code being fixed elsewhere: "
                    + pending.map { $0.replacingOccurrences(of: Repo.root.path + "/", with: "") }.joined(
                        separator: ", "))
        }
    }
}
