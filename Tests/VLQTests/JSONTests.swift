import VLQCore
import XCTest

final class JSONTests: XCTestCase {
    func testParsesNestedValuesAndKeepsIntegersExact() throws {
        let v = try JSONValue.parse(#"{"a": [1, -2.5e3, true, null, "x\u00e9\ud83d\ude00"], "big": 9007199254740993}"#)
        XCTAssertEqual(v["a"]?.arrayValue?.count, 5)
        XCTAssertEqual(v["a"]?.arrayValue?[1].doubleValue, -2500)
        XCTAssertEqual(v["a"]?.arrayValue?[4].stringValue, "xé😀")
        XCTAssertEqual(v["big"], .int(9_007_199_254_740_993))
    }

    func testRejectsDuplicateKeysNamingThem() {
        XCTAssertThrowsError(try JSONValue.parse(#"{"w": 1, "w": 2}"#)) { error in
            XCTAssertTrue("\(error)".contains("duplicate key \"w\""))
        }
    }

    func testRejectsTrailingGarbageAndDeepNesting() {
        XCTAssertThrowsError(try JSONValue.parse("{} x"))
        XCTAssertThrowsError(try JSONValue.parse(String(repeating: "[", count: 10_000)))
        XCTAssertThrowsError(try JSONValue.parse(#"{"a": "\ud800"}"#))
    }

    func testSerializesWithSortedKeysSoEqualValuesGiveEqualBytes() throws {
        let a: JSONValue = ["b": 1, "a": ["z": 0.5, "y": "q\n\"r\""]]
        XCTAssertEqual(a.serialized(), #"{"a":{"y":"q\n\"r\"","z":0.5},"b":1}"#)
        XCTAssertEqual(try JSONValue.parse(a.serialized()), a)
    }

    func testConfigNumbersReadAsIntegersWhenIntegral() throws {
        let v = try JSONValue.parse(#"{"rope_theta": 5000000.0, "eps": 1e-05}"#)
        XCTAssertEqual(v["rope_theta"]?.intValue, 5_000_000)
        XCTAssertNil(v["eps"]?.intValue)
        XCTAssertEqual(v["eps"]?.serialized(), "1e-05")
    }
}

final class PrimitiveTests: XCTestCase {
    func testXXH3MatchesPublishedVectors() {
        // xxhsum -H3 of the empty input and of "a" (xxHash 0.8).
        XCTAssertEqual(hex64(XXH3Hasher.hash([UInt8]())), "2d06800538d394c2")
        XCTAssertEqual(hex64(XXH3Hasher.hash(Array("a".utf8))), "e6c632b61e964e1f")
    }

    func testStreamingXXH3EqualsOneShot() {
        let data = (0..<10_000).map { UInt8(truncatingIfNeeded: $0 * 7) }
        let hasher = XXH3Hasher()
        data.withUnsafeBytes { buffer in
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[0..<333]))
            hasher.update(UnsafeRawBufferPointer(rebasing: buffer[333...]))
        }
        XCTAssertEqual(hasher.digest(), XXH3Hasher.hash(data))
    }

    func testBase64RoundTripsEveryLengthModuloThree() {
        for n in 0..<10 {
            let bytes = (0..<n).map { UInt8($0 * 37 & 255) }
            XCTAssertEqual(Base64.decode(Base64.encode(bytes)), bytes)
        }
        XCTAssertEqual(Base64.encode(Array("Man".utf8)), "TWFu")
        XCTAssertNil(Base64.decode("TW=u"))
    }

    func testZstdRoundTripAndRejectsGarbage() throws {
        let data = Array(String(repeating: "vlq ", count: 1000).utf8)
        let packed = Zstd.compress(data)
        XCTAssertLessThan(packed.count, data.count / 10)
        XCTAssertEqual(try packed.withUnsafeBytes { try Zstd.decompress($0, expectedSize: data.count) }, data)
        assertVLQError(
            try [UInt8](repeating: 7, count: 64).withUnsafeBytes { try Zstd.decompress($0, expectedSize: 10) },
            kind: CoreError.malformedCompression)
    }
}
