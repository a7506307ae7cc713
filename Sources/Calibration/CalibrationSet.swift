import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Images with questions (and, for evaluation, answers) to run through the model.
///
/// A JSONL manifest of `{"image": path, "question": text, "answer"?: text}` with paths relative to the
/// manifest, or a folder of images, each asked `defaultQuestion`.
public struct CalibrationSet: Sendable {
    public struct Sample: Sendable {
        public var image: String
        public var question: String
        public var answer: String?
    }

    public static let defaultQuestion = "Describe this image in detail."

    public var source: String
    public var samples: [Sample]
    /// XXH3-64 over every sample's question, answer and image bytes: what a statistics or reference
    /// file is tied to.
    public var digest: String

    public init(path: String, defaultQuestion: String = CalibrationSet.defaultQuestion) throws {
        source = path
        var st = stat()
        guard stat(path, &st) == 0 else { throw VLQError(CoreError.cannotOpen, path, "no such file or folder") }
        var samples: [Sample] = []
        if (st.st_mode & S_IFMT) == S_IFDIR {
            let names = try FileSystem.list(path).filter { name in
                let lower = name.lowercased()
                return lower.hasSuffix(".png") || lower.hasSuffix(".jpg") || lower.hasSuffix(".jpeg")
            }
            samples = names.sorted().map { Sample(image: path + "/" + $0, question: defaultQuestion, answer: nil) }
        } else {
            let file = try MappedFile(path: path)
            let base = path.contains("/") ? String(path[..<path.lastIndex(of: "/")!]) : "."
            let text = String(decoding: file.bytes, as: UTF8.self)
            for (number, line) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
                let trimmed = line.drop(while: { $0.isWhitespace })
                if trimmed.allSatisfy({ $0.isWhitespace }) { continue }
                let row: JSONValue
                do { row = try JSONValue.parse(String(trimmed)) } catch {
                    throw VLQError(CoreError.malformedJSON, path, "line \(number + 1): \(error)")
                }
                guard let image = row["image"]?.stringValue, let question = row["question"]?.stringValue else {
                    throw VLQError(
                        CalibrationError.invalidSet, path,
                        "line \(number + 1): needs \"image\" and \"question\" strings")
                }
                samples.append(
                    Sample(
                        image: image.hasPrefix("/") ? image : base + "/" + image, question: question,
                        answer: row["answer"]?.stringValue))
            }
        }
        guard !samples.isEmpty else { throw VLQError(CalibrationError.invalidSet, path, "no samples") }
        self.samples = samples
        digest = try CalibrationSet.digest(of: samples)
    }

    /// The samples at `indices` (in that order) as a set of their own, with their own digest; `source`
    /// names it in errors and records (e.g. "set.jsonl (held out: every 4th)").
    public func subset(_ indices: [Int], source: String) throws -> CalibrationSet {
        precondition(!indices.isEmpty && indices.allSatisfy(samples.indices.contains))
        var copy = self
        copy.source = source
        copy.samples = indices.map { samples[$0] }
        copy.digest = try CalibrationSet.digest(of: copy.samples)
        return copy
    }

    static func digest(of samples: [Sample]) throws -> String {
        let hasher = XXH3Hasher()
        for s in samples {
            let image = try MappedFile(path: s.image)
            var header = Array((s.question + "\u{0}" + (s.answer ?? "") + "\u{0}").utf8)
            withUnsafeBytes(of: UInt64(image.size).littleEndian) { header += $0 }
            header.withUnsafeBytes { hasher.update($0) }
            hasher.update(image.bytes)
        }
        return hex64(hasher.digest())
    }
}
