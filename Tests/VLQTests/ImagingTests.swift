import Foundation
import Imaging
import SafeTensors
import VLQCore
import XCTest

/// The reference outputs of transformers for the six fixture cases.
enum Reference {
    static let data = Repo.root.appendingPathComponent("Tests/Fixtures/tiny-yivl-data").path

    struct Case {
        var image: String
        var question: String
        var answer: String
        var greedyAnswer: String
        var file: SafeTensorsFile

        func floats(_ name: String) -> [Float] {
            let info = file.info(name)!
            return Array(file.data(info).bindMemory(to: Float.self))
        }

        func ints(_ name: String) -> [Int] {
            let info = file.info(name)!
            return file.data(info).bindMemory(to: Int64.self).map { Int($0) }
        }

        func shape(_ name: String) -> [Int] { file.info(name)!.shape }
    }

    static let cases: [Case] = {
        let json = try! JSONValue.parse(try! readBytes(data + "/reference/cases.json"))
        return json.arrayValue!.map { c in
            Case(
                image: data + "/" + c["image"]!.stringValue!, question: c["question"]!.stringValue!,
                answer: c["answer"]!.stringValue!, greedyAnswer: c["fp32_greedy_answer"]!.stringValue!,
                file: try! SafeTensorsFile(path: data + "/" + c["reference"]!.stringValue!))
        }
    }()

    static let preprocessing: ImagePreprocessing = {
        var p = ImagePreprocessing()
        p.shortestEdge = 84
        p.cropHeight = 84
        p.cropWidth = 84
        return p
    }()
}

func maxAbsDifference(_ a: [Float], _ b: [Float]) -> Float {
    precondition(a.count == b.count, "\(a.count) vs \(b.count)")
    return zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
}

/// Decoding and Yi-VL's preprocessing against transformers + PIL.
final class ImagingTests: XCTestCase {
    func testPNGCasesGiveBitIdenticalPixelValues() throws {
        for c in Reference.cases where c.image.hasSuffix(".png") {
            let pixels = try Reference.preprocessing.pixelValues(path: c.image)
            let reference = c.floats("pixel_values")
            XCTAssertEqual(c.shape("pixel_values"), [3, 84, 84])
            let mismatches = zip(pixels, reference).filter { $0.0.bitPattern != $0.1.bitPattern }.count
            XCTAssertEqual(
                mismatches, 0, "\(c.image): \(mismatches) values differ, max abs \(maxAbsDifference(pixels, reference))"
            )
        }
    }

    func testJPEGCasesAgreeWithinDecoderTolerance() throws {
        for c in Reference.cases where c.image.hasSuffix(".jpg") {
            let pixels = try Reference.preprocessing.pixelValues(path: c.image)
            let reference = c.floats("pixel_values")
            let meanAbs = zip(pixels, reference).reduce(0) { $0 + abs($1.0 - $1.1) } / Float(pixels.count)
            XCTAssertLessThanOrEqual(maxAbsDifference(pixels, reference), 0.03, c.image)
            XCTAssertLessThanOrEqual(meanAbs, 0.004, c.image)
        }
    }

    func testExpandToSquareCentresTheImageOnThePadColour() {
        let p = ImagePreprocessing()
        let wide = RGBImage(width: 4, height: 1, fill: [9, 9, 9])
        let square = p.expandToSquare(wide)
        XCTAssertEqual(square.width, 4)
        XCTAssertEqual(square.height, 4)
        XCTAssertEqual([square[0, 0, 0], square[0, 0, 1], square[0, 0, 2]], [122, 116, 104])
        XCTAssertEqual(square[0, 1, 0], 9, "row (4 - 1) // 2 = 1 holds the image")
        XCTAssertEqual(square[0, 2, 0], 122)
    }

    func testResizeKeepsAFlatImageFlatAndMatchesPILOnAKnownRamp() {
        let flat = RGBImage(width: 10, height: 7, fill: [200, 10, 0])
        let small = Resampler.resize(flat, width: 3, height: 5, filter: .bicubic)
        XCTAssertTrue(small.pixels.enumerated().allSatisfy { $0.element == [200, 10, 0][$0.offset % 3] })
        // PIL: Image.frombytes("L", (8, 1), bytes(range(0, 256, 32))).convert("RGB").resize((4, 1), Image.BICUBIC)
        let levels: [UInt8] = (0..<8).map { UInt8($0 * 32) }
        let ramp = RGBImage(width: 8, height: 1, pixels: levels.flatMap { [$0, $0, $0] })
        let resized = Resampler.resize(ramp, width: 4, height: 1, filter: .bicubic)
        XCTAssertEqual((0..<4).map { resized[$0, 0, 0] }, [17, 79, 145, 207])
    }

    func testCorruptAndUnsupportedImagesAreClearErrors() throws {
        let scratch = try Scratch()
        let png = try readBytes(Reference.cases[0].image)
        try writeBytes(Array(png.prefix(png.count / 2)), to: scratch.file("cut.png"))
        assertVLQError(
            try ImageDecoder.decode(path: scratch.file("cut.png")), kind: ImageError.corruptImage,
            contains: ["cut.png", "corrupt or unsupported PNG"])
        let jpeg = try readBytes(Reference.cases[1].image)
        try writeBytes(Array(jpeg.prefix(40)), to: scratch.file("cut.jpg"))
        assertVLQError(
            try ImageDecoder.decode(path: scratch.file("cut.jpg")), kind: ImageError.corruptImage,
            contains: ["cut.jpg", "corrupt or unsupported JPEG"])
        try writeBytes(Array("GIF89a......".utf8), to: scratch.file("x.gif"))
        assertVLQError(
            try ImageDecoder.decode(path: scratch.file("x.gif")), kind: ImageError.notAnImage,
            contains: ["x.gif", "not a PNG or JPEG image"])
        assertVLQError(
            try ImageDecoder.decode(path: scratch.file("missing.png")), kind: CoreError.cannotOpen,
            contains: ["missing.png", "cannot open"])
    }
}

/// Real photographs (calibration/photos: RGB, gray, RGBA, large JPEGs) against transformers + PIL,
/// at the tiny model's 84 px and at Yi-VL's 448 px (tools/pixel_reference.py wrote the reference).
final class PhotographPixelTests: XCTestCase {
    func testPhotographsMatchTransformersBitForBitAsPNGAndCloselyAsJPEG() throws {
        try assertMatchesReference("Tests/Fixtures/pixel-reference.json", images: "calibration/", count: 28)
    }

    /// 16-bit gray (PIL's I;16, clipped at 255 on RGB conversion), 16-bit RGB and RGBA (high bytes),
    /// gray + alpha, 2-bit gray, palette with transparency, grayscale and Adobe CMYK JPEGs.
    func testEveryPixelLayoutConvertsToRGBAsPILDoes() throws {
        try assertMatchesReference(
            "Tests/Fixtures/images/pixel-reference.json", images: "Tests/Fixtures/images/", count: 16)
    }

    func assertMatchesReference(_ file: String, images: String, count: Int) throws {
        let reference = try JSONValue.parse(try readBytes(Repo.root.appendingPathComponent(file).path))
        let entries = try XCTUnwrap(reference["images"]?.arrayValue)
        XCTAssertEqual(entries.count, count)
        for entry in entries {
            let image = entry["image"]!.stringValue!, size = entry["size"]!.intValue!
            var p = ImagePreprocessing()
            p.shortestEdge = size
            p.cropHeight = size
            p.cropWidth = size
            let pixels = try p.pixelValues(path: Repo.root.appendingPathComponent(images + image).path)
            XCTAssertEqual(pixels.count, 3 * size * size)
            if image.hasSuffix(".png") {
                XCTAssertEqual(
                    hex64(pixels.withUnsafeBytes { XXH3Hasher.hash($0) }), entry["xxh3"]!.stringValue!,
                    "\(image) at \(size) px")
            } else {
                let plane = size * size
                for c in 0..<3 {
                    let sum = pixels[(c * plane)..<((c + 1) * plane)].reduce(0.0) { $0 + Double($1) }
                    let expected = entry["channel_sums"]!.arrayValue![c].doubleValue!
                    XCTAssertLessThanOrEqual(
                        abs(sum - expected) / Double(plane), 0.004, "\(image) at \(size) px, channel \(c)")
                }
            }
        }
    }
}
