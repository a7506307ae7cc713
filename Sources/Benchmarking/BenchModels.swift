import Foundation
import VLQCore
import VLQFormat
import YiVL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The model `vlq bench` was given: what it stores, so that its row says what "bf16" stands for.
struct GivenModel {
    /// What a row measures: the model as given, or a preset quantized from it.
    enum Variant {
        case given
        case quantized(BenchEncoding)
    }

    let path: String
    let isFolder: Bool
    let config: EngineConfig
    let isQuantized: Bool
    /// The encoding slot the model fills as given: bf16 for any float model, the preset it was quantized
    /// with, or nil for a custom recipe.
    let own: BenchEncoding?
    /// The row's label: the language model's stored encoding ("bf16", "f32"), or the recipe's name.
    let label: String
    let description: String
    /// Every tensor's size as stored.
    let storedBytes: Int

    init(_ path: String) throws {
        self.path = path
        var st = stat()
        isFolder = stat(path, &st) == 0 && (st.st_mode & S_IFMT) == S_IFDIR
        // Opening maps the files; nothing is read or upcast until a forward pass, and the engine goes
        // before the measurements start.
        let engine = try YiVLEngine.open(path, cacheBudget: 0)
        config = engine.config
        let weights = engine.model.weights, definition = engine.model.definition
        let handles = definition.tensors.compactMap { definition.handle(named: $0.name) }
        storedBytes = handles.reduce(0) { $0 + weights.storedBytes($1) }
        isQuantized = handles.contains { weights.isQuantized($0) }
        let bundle = isFolder ? nil : try VLQFile(path: path)
        func encoding(_ handle: TensorHandle) -> String {
            if let record = bundle?.record(definition.name(handle)) { return record.encoding.name }
            return weights.storedBytes(handle) == 4 * weights.shape(handle).reduce(1, *) ? "f32" : "16-bit"
        }
        let language = encoding(definition.language.layers[0].query.weight)
        let vision = definition.usedVisionLayers.first.map { encoding($0.linears[0].weight) } ?? "none"
        let recipe = bundle?.metadata["quantization"]?["recipe"]?["name"]?.stringValue
        if isQuantized {
            own = recipe.flatMap(BenchEncoding.init(rawValue:))
            label = recipe ?? "quantized"
        } else {
            own = .bf16
            label = language == "16-bit" ? "bf16" : language
        }
        let kind = isFolder ? "Hugging Face folder" : isQuantized ? "\(label) bundle" : "bundle"
        description =
            "\(kind), language model \(language), vision tower \(vision), \(formatBytes(storedBytes)) of tensors"
            + (isQuantized || label == "bf16" ? "" : "; its row stands for bf16 (the model as given)")
    }
}

/// A folder of its own under the temporary directory for the bundles bench writes; removed with all it
/// holds when bench ends, by error or not.
final class BenchWorkspace {
    let path: String
    private var convertedSource: String?

    init(in directory: String) throws {
        var template = Array("\(directory)/vlq-bench.XXXXXX".utf8CString)
        guard template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) != nil else {
            throw VLQError(CoreError.cannotWrite, directory, "cannot create a temporary folder: \(systemError())")
        }
        path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// The bundle to quantize from: the model itself, or its conversion when it is a folder (made once).
    func source(
        _ given: GivenModel, convert: ((String, String) throws -> Void)?, report: (String) -> Void
    ) throws -> String {
        guard given.isFolder else { return given.path }
        if let convertedSource { return convertedSource }
        let output = path + "/source.vlq"
        let started = monotonicSeconds()
        try convert!(given.path, output)
        report(
            "converted \(given.path) to a bundle first in \(fixed(monotonicSeconds() - started, 2)) s (not timed "
                + "as quantizing)")
        convertedSource = output
        return output
    }

    func remove(_ file: String) { unlink(file) }

    func remove() { try? FileManager.default.removeItem(atPath: path) }
}
