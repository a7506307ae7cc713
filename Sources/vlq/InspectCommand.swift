import ArgumentParser
import Conversion
import Logging
import Quantization
import VLQCore
import VLQFormat

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show what a .vlq bundle holds: model, components, tensors, sizes."
    )

    @Argument(help: "The .vlq bundle, or a Hugging Face Yi-VL folder (what convert would read and write).")
    var bundle: String

    @Flag(help: "Print everything as one JSON document.")
    var json = false

    @Flag(help: "Leave out the per-tensor list (text output).")
    var summary = false

    func run() throws {
        if FileSystem.isDirectory(bundle) { return try inspectFolder() }
        let file = try VLQFile(path: bundle)
        if json {
            print(file.inspection.serialized(pretty: true))
            return
        }
        let modelLines = try BundleDescription.modelLines(of: file, source: bundle)
        print(
            "\(bundle): vlq format \(file.header.majorVersion).\(file.header.minorVersion), "
                + "\(formatBytes(Int(file.header.fileSize))), \(file.tensors.count) tensors, data aligned to "
                + "\(file.header.alignment) bytes"
        )
        modelLines.forEach { print($0) }
        print("")
        printComponents(file.componentSummaries)
        if summary { return }
        print("")
        printTensors(file.tensors)
    }

    /// A folder: the files convert would read, and the table it would write (`--dtype keep`).
    func inspectFolder() throws {
        let folder = try FolderInspection(folder: bundle)
        if json {
            print(folder.json.serialized(pretty: true))
            return
        }
        print("\(bundle): Hugging Face Yi-VL folder, \(folder.shardFiles) weight files; convert would write:")
        folder.sourceLines.forEach { print($0) }
        print("")
        printComponents(ComponentSummary.of(folder.records))
        if summary { return }
        print("")
        printTensors(folder.records)
    }

    func printComponents(_ summaries: [ComponentSummary]) {
        print(
            padRight("component", 11) + padLeft("tensors", 8) + padLeft("parameters", 14) + padLeft("bytes", 13)
                + padLeft("bits/weight", 13) + "  encodings")
        var totals = (tensors: 0, parameters: 0, bytes: 0)
        for s in summaries {
            let encodings = s.encodings.keys.sorted().map { "\($0) x\(s.encodings[$0]!)" }.joined(separator: ", ")
            print(
                padRight(s.component.name, 11) + padLeft("\(s.tensors)", 8) + padLeft("\(s.parameters)", 14)
                    + padLeft(formatBytes(s.bytes), 13) + padLeft(fixed(s.bitsPerWeight, 2), 13) + "  " + encodings)
            totals = (totals.tensors + s.tensors, totals.parameters + s.parameters, totals.bytes + s.bytes)
        }
        let bits = totals.parameters > 0 ? Double(totals.bytes) * 8 / Double(totals.parameters) : 0
        print(
            padRight("total", 11) + padLeft("\(totals.tensors)", 8) + padLeft("\(totals.parameters)", 14)
                + padLeft(formatBytes(totals.bytes), 13) + padLeft(fixed(bits, 2), 13))
    }

    func printTensors(_ tensors: [TensorRecord]) {
        let width = min(72, tensors.map(\.name.count).max() ?? 0)
        for r in tensors {
            let shape = "[" + r.shape.map(String.init).joined(separator: ", ") + "]"
            let encoding = r.encoding.isQuantized ? "\(r.encoding.name) g\(r.groupSize)" : r.encoding.name
            print(
                padRight(r.name, width) + "  " + padRight(encoding, 9) + padRight(shape, 22)
                    + padLeft(formatBytes(r.byteCount), 12))
        }
    }
}

struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Verify a .vlq bundle: structure, metadata and every tensor checksum.",
        discussion: "Exit code 0 when the bundle is intact, 1 when it is damaged (the first bad part is named)."
    )

    @Argument(help: "The .vlq bundle, or a Hugging Face Yi-VL folder (its shards' structure and tensors).")
    var bundle: String

    @Flag(help: "Also scan every value for NaN and infinities (exit 1 when any is found).")
    var values = false

    @OptionGroup var global: GlobalOptions

    func run() throws {
        let logger = global.makeLogger("vlq.check")
        if FileSystem.isDirectory(bundle) { return try checkFolder(logger: logger) }
        let file: VLQFile
        do {
            file = try VLQFile(path: bundle)
        } catch let error as VLQError where error.is(CoreError.cannotOpen) {
            throw error
        } catch let error as VLQError {
            throw error.failingCheck()
        }
        let total = file.tensors.reduce(0) { $0 + $1.byteCount }
        let progress = global.progress("check", logger: logger)
        let started = monotonicSeconds()
        let nonFinite: [(name: String, nonFinite: Int)]
        do {
            nonFinite = try file.verify(scanValues: values) { progress.update($0, total) }
        } catch let error as VLQError {
            throw error.failingCheck()
        }
        let seconds = monotonicSeconds() - started
        try refuse(nonFinite)
        let scanned = values ? ", every value finite" : ""
        print(
            "\(bundle): OK: structure, metadata and \(file.tensors.count) tensor checksums\(scanned) "
                + "(\(formatBytes(total)) in \(fixed(seconds, 2)) s)"
        )
    }

    /// A folder has no checksums: its shards' structure is validated on open (headers, offsets, every
    /// expected tensor present with its shape); --values reads and scans every value.
    func checkFolder(logger: Logger) throws {
        let started = monotonicSeconds()
        let folder: FolderInspection
        do {
            folder = try FolderInspection(folder: bundle)
        } catch let error as VLQError where error.is(CoreError.cannotOpen) {
            throw error
        } catch let error as VLQError {
            throw error.failingCheck()
        }
        if values {
            let progress = global.progress("check", logger: logger)
            try refuse(folder.nonFiniteTensors(progress: progress.update))
        }
        let bytes = folder.records.reduce(0) { $0 + $1.byteCount }
        let scanned = values ? ", every value finite" : " (--values also reads every value)"
        print(
            "\(bundle): OK: \(folder.shardFiles) weight files, \(folder.records.count) tensors (\(formatBytes(bytes)))"
                + "\(scanned) in \(fixed(monotonicSeconds() - started, 2)) s")
    }

    func refuse(_ nonFinite: [(name: String, nonFinite: Int)]) throws {
        guard !nonFinite.isEmpty else { return }
        let listed = nonFinite.prefix(8).map { "\($0.name) (\($0.nonFinite))" }.joined(separator: ", ")
        let more = nonFinite.count > 8 ? ", and \(nonFinite.count - 8) more" : ""
        throw VLQError(
            BundleError.nonFiniteValues, bundle,
            "\(nonFinite.count) tensors hold NaN or infinite values: \(listed)\(more)")
    }
}
