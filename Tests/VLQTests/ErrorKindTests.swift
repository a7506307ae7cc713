import Quantization
import VLQCore
import VLQFormat
import Verification
import XCTest
import YiVL

/// A kind declared here, with a raw value that `BundleError` also has.
private enum ElsewhereError: String, ErrorKind, Equatable {
    case checksumMismatch
}

/// The contract of `VLQError` and its kinds: the kind is what code decides on (the CLI's exit status,
/// a caller's recovery, a test), the one-line message is what a person reads.
final class ErrorKindTests: XCTestCase {
    func testKindsAreEqualByCaseAndType() {
        let error = VLQError(BundleError.checksumMismatch, "b.vlq", "tensor w: checksum mismatch")
        XCTAssertTrue(error.is(BundleError.checksumMismatch))
        XCTAssertFalse(error.is(BundleError.malformedHeader))
        XCTAssertTrue(BundleError.checksumMismatch.isSameKind(as: BundleError.checksumMismatch))
        XCTAssertEqual(error.kind.description, "BundleError.checksumMismatch")
    }

    func testTheSameCaseNameInAnotherEnumIsAnotherKind() {
        XCTAssertEqual(ModelError.tensorMismatch.rawValue, QuantizationError.tensorMismatch.rawValue)
        XCTAssertFalse(ModelError.tensorMismatch.isSameKind(as: QuantizationError.tensorMismatch))
        XCTAssertFalse(VLQError(ModelError.tensorMismatch, nil, "x").is(QuantizationError.tensorMismatch))
        XCTAssertFalse(VLQError(BundleError.checksumMismatch, nil, "x").is(ElsewhereError.checksumMismatch))
        XCTAssertNotEqual(
            VLQError(BundleError.checksumMismatch, nil, "x"), VLQError(ElsewhereError.checksumMismatch, nil, "x"))
    }

    func testTheExitStatusComesFromTheKind() {
        XCTAssertEqual(VLQError(CoreError.cannotOpen, "m.vlq", "cannot open: No such file").exitStatus, .badInput)
        XCTAssertEqual(VLQError(BundleError.checksumMismatch, "m.vlq", "x").exitStatus, .badInput)
        XCTAssertEqual(VLQError(ElsewhereError.checksumMismatch, nil, "x").exitStatus, .badInput, "the default")
        XCTAssertEqual(VLQError(BundleError.nonFiniteValues, "m.vlq", "x").exitStatus, .checkFailed)
        XCTAssertEqual(VLQError(VerificationError.boundBroken, nil, "bound broken: x").exitStatus, .checkFailed)
        XCTAssertEqual(ExitStatus.checkFailed.rawValue, 1)
        XCTAssertEqual(ExitStatus.badInput.rawValue, 2)
    }

    func testAFailingCheckExitsOneAndKeepsItsKindAndMessage() {
        let error = VLQError(BundleError.checksumMismatch, "m.vlq", "tensor w: checksum mismatch")
        let failed = error.failingCheck()
        XCTAssertEqual(failed.exitStatus, .checkFailed)
        XCTAssertEqual(failed.exitStatus.rawValue, 1)
        XCTAssertTrue(failed.is(BundleError.checksumMismatch))
        XCTAssertEqual(failed.description, error.description)
        XCTAssertNotEqual(failed, error, "the exit status is part of the error")
    }

    func testAboutSetsAMissingSubjectAndKeepsTheKind() {
        let error = VLQError(BundleError.invalidLayout, nil, "shape [2, 0] has 0 columns")
        let named = error.about("m.vlq")
        XCTAssertTrue(named.is(BundleError.invalidLayout))
        XCTAssertEqual(named.description, "m.vlq: shape [2, 0] has 0 columns")
        XCTAssertEqual(named.about("other.vlq"), named, "a subject is never replaced")
        XCTAssertEqual(error.failingCheck().about("m.vlq").exitStatus, .checkFailed)
    }

    func testWrapKeepsAVLQErrorsKindAndGivesOtherErrorsTheKindAsked() {
        struct Other: Error, CustomStringConvertible { var description: String { "not JSON" } }
        let wrapped = VLQError.wrap(Other(), subject: "config.json", kind: CoreError.malformedJSON)
        XCTAssertTrue(wrapped.is(CoreError.malformedJSON))
        XCTAssertEqual(wrapped.description, "config.json: not JSON")
        let kept = VLQError.wrap(
            VLQError(ModelError.invalidConfig, nil, "\"x\" must be an integer"), subject: "config.json",
            kind: CoreError.malformedJSON)
        XCTAssertTrue(kept.is(ModelError.invalidConfig))
        XCTAssertEqual(kept.description, "config.json: \"x\" must be an integer")
    }

    func testTheDescriptionIsOneLine() {
        XCTAssertEqual(VLQError(CoreError.cannotWrite, "out.vlq", "write failed").description, "out.vlq: write failed")
        XCTAssertEqual(VLQError(CoreError.cannotWrite, nil, "write failed").description, "write failed")
        let multiLine = VLQError(ModelError.invalidConfig, "config.json", "first\nsecond")
        XCTAssertEqual(multiLine.description, "config.json: first second")
        XCTAssertEqual(multiLine.reason, "first\nsecond", "the reason itself is kept")
    }
}
