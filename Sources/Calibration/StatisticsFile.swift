import SafeTensors
import VLQCore

/// A `.vlqstats` file: one zstd frame holding a safetensors file with, per Linear input, its row
/// count, sums of |x| and x^2 per column and (optionally) X^T X, all f64, plus metadata naming the
/// calibration set's digest, the model, and the aliases of Linears sharing an input. Sums, so two
/// files of the same model merge by addition.
public struct StatisticsFile {
    public var statistics: [String: InputStatistics]
    public var aliases: [String: String]
    public var setDigests: [String]
    public var samples: Int
    public var model: String

    public init(collector: StatisticsCollector, setDigest: String, samples: Int, model: String) {
        statistics = collector.statistics
        aliases = collector.aliases
        setDigests = [setDigest]
        self.samples = samples
        self.model = model
    }

    public func statistics(for weightName: String) -> InputStatistics? {
        statistics[aliases[weightName] ?? weightName]
    }

    public var hasGram: Bool { statistics.values.allSatisfy { $0.gram != nil } }

    /// A digest of everything the statistics were computed from, for the quantization record.
    public var setDigest: String { setDigests.count == 1 ? setDigests[0] : setDigests.sorted().joined(separator: "+") }

    public func write(to path: String) throws {
        var file = SafeTensorsWriter()
        func doubles(_ v: [Double]) -> [UInt8] { v.map { $0.bitPattern.littleEndian }.withUnsafeBytes { Array($0) } }
        for name in statistics.keys.sorted() {
            let s = statistics[name]!
            file.add(.init(name: name + ".rows", dtype: .f64, shape: [1], bytes: doubles([s.rows])))
            file.add(.init(name: name + ".sum_abs", dtype: .f64, shape: [s.columns], bytes: doubles(s.sumAbs)))
            file.add(.init(name: name + ".sum_squares", dtype: .f64, shape: [s.columns], bytes: doubles(s.sumSquares)))
            if let g = s.gram {
                file.add(.init(name: name + ".gram", dtype: .f64, shape: [s.columns, s.columns], bytes: doubles(g)))
            }
        }
        let aliasJSON = JSONValue.object(aliases.mapValues { .string($0) }).serialized()
        file.metadata = [
            "format": "vlqstats 1", "aliases": aliasJSON, "set_digests": setDigests.joined(separator: ","),
            "samples": String(samples), "model": model, "vlq_version": VLQVersion.string,
        ]
        try CompressedSafeTensors.write(file, to: path)
    }

    public static func read(_ path: String) throws -> StatisticsFile {
        try read(file: CompressedSafeTensors.read(path, format: "vlqstats 1", kind: ".vlqstats"), path: path)
    }

    /// A `.vlqstats` file already in memory; `source` names it in errors.
    public static func read(bytes: UnsafeRawBufferPointer, source: String) throws -> StatisticsFile {
        try read(
            file: CompressedSafeTensors.read(bytes: bytes, source: source, format: "vlqstats 1", kind: ".vlqstats"),
            path: source)
    }

    static func read(file: SafeTensorsFile, path: String) throws -> StatisticsFile {
        func doubles(_ name: String, rank: Int) throws -> [Double] {
            guard let info = file.info(name) else {
                throw VLQError(CalibrationError.invalidStatistics, path, "missing \(name)")
            }
            guard info.dtype == .f64, info.shape.count == rank else {
                throw VLQError(
                    CalibrationError.invalidStatistics, path,
                    "\(name) is \(info.dtype.rawValue) \(info.shape), not a \(rank)-D F64 tensor")
            }
            // Safetensors offsets need not be multiples of 8: read unaligned.
            let data = file.data(info)
            return (0..<(data.count / 8)).map {
                Double(bitPattern: UInt64(littleEndian: data.loadUnaligned(fromByteOffset: 8 * $0, as: UInt64.self)))
            }
        }
        var statistics: [String: InputStatistics] = [:]
        for t in file.tensors where t.name.hasSuffix(".rows") {
            let name = String(t.name.dropLast(".rows".count))
            let rows = try doubles(t.name, rank: 1)
            guard rows.count == 1 else {
                throw VLQError(CalibrationError.invalidStatistics, path, "\(t.name) holds \(rows.count) values, not 1")
            }
            let sumAbs = try doubles(name + ".sum_abs", rank: 1)
            var s = InputStatistics(columns: sumAbs.count, withGram: false)
            s.rows = rows[0]
            s.sumAbs = sumAbs
            s.sumSquares = try doubles(name + ".sum_squares", rank: 1)
            if file.info(name + ".gram") != nil {
                let g = try doubles(name + ".gram", rank: 2)
                guard Checked.multiply(s.columns, s.columns) == g.count else {
                    throw VLQError(
                        CalibrationError.invalidStatistics, path,
                        "\(name).gram holds \(g.count) values, not \(s.columns) x \(s.columns)")
                }
                guard g.allSatisfy(\.isFinite) else {
                    throw VLQError(
                        CalibrationError.invalidStatistics, path, "\(name).gram holds a value that is not finite")
                }
                s.gram = g
            }
            if let problem = s.inconsistency(columns: s.columns) {
                throw VLQError(CalibrationError.invalidStatistics, path, "\(name): \(problem)")
            }
            statistics[name] = s
        }
        var aliases: [String: String] = [:]
        if let text = file.metadata["aliases"], let object = try? JSONValue.parse(text).objectValue {
            for (k, v) in object { if let s = v.stringValue { aliases[k] = s } }
        }
        return StatisticsFile(
            statistics: statistics, aliases: aliases,
            setDigests: (file.metadata["set_digests"] ?? "").split(separator: ",").map(String.init),
            samples: Int(file.metadata["samples"] ?? "0") ?? 0, model: file.metadata["model"] ?? "")
    }

    init(
        statistics: [String: InputStatistics], aliases: [String: String], setDigests: [String], samples: Int,
        model: String
    ) {
        self.statistics = statistics
        self.aliases = aliases
        self.setDigests = setDigests
        self.samples = samples
        self.model = model
    }

    /// Sums two runs over the same model (for example halves of a large set on two machines).
    public mutating func merge(_ other: StatisticsFile, subject: String) throws {
        if let repeated = other.setDigests.first(where: setDigests.contains) {
            throw VLQError(
                CalibrationError.sameSetTwice, subject,
                "holds statistics of set \(repeated), already merged: its samples would count twice")
        }
        guard Set(statistics.keys) == Set(other.statistics.keys) else {
            throw VLQError(
                CalibrationError.statisticsMismatch, subject,
                "the statistics cover different layers; they are not of the same model")
        }
        for (name, s) in other.statistics {
            guard statistics[name]!.columns == s.columns else {
                throw VLQError(
                    CalibrationError.statisticsMismatch, subject,
                    "\(name) has \(s.columns) columns here, \(statistics[name]!.columns) there")
            }
            statistics[name]!.merge(s)
        }
        setDigests += other.setDigests
        samples += other.samples
    }
}
