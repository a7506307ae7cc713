import VLQCore
import VLQFormat
import YiVL

/// What `vlq inspect` and `vlq check` show for a Hugging Face folder, which run and quantize accept too:
/// the files convert would read and the table it would write, found by opening the checkpoint exactly as
/// convert does (every shard's structure validated, every expected tensor located), writing nothing.
public struct FolderInspection {
    public let folder: String
    public let checkpoint: YiVLCheckpoint
    /// The tensors as convert would write them with `--dtype keep`, byte counts included.
    public let records: [TensorRecord]

    public init(folder: String) throws {
        self.folder = folder
        checkpoint = try YiVLCheckpoint(folder: folder)
        records = Converter.plan(checkpoint, dtype: .keep).map { r in
            var r = r
            r.byteCount = r.elementCount * (r.encoding == .f32 ? 4 : 2)
            return r
        }
    }

    /// Where each part's weights come from, and the files left alone.
    public var sourceLines: [String] { Converter.describeSources(checkpoint) }

    public var shardFiles: Int { checkpoint.rootShards.files.count + checkpoint.visionShards.files.count }

    /// Everything `vlq inspect --json` prints for a folder: the bundle listing's keys that apply.
    public var json: JSONValue {
        let summaries = ComponentSummary.of(records)
        func summary(_ s: ComponentSummary) -> JSONValue {
            [
                "name": .string(s.component.name), "tensors": .int(Int64(s.tensors)),
                "parameters": .int(Int64(s.parameters)), "bytes": .int(Int64(s.bytes)),
                "bits_per_weight": .double(s.bitsPerWeight),
                "encodings": .object(s.encodings.mapValues { .int(Int64($0)) }),
            ]
        }
        let parameters = summaries.reduce(0) { $0 + $1.parameters }, bytes = summaries.reduce(0) { $0 + $1.bytes }
        let totals: JSONValue = [
            "tensors": .int(Int64(records.count)), "parameters": .int(Int64(parameters)), "bytes": .int(Int64(bytes)),
            "bits_per_weight": .double(parameters > 0 ? Double(bytes) * 8 / Double(parameters) : 0),
        ]
        return [
            "folder": .string(folder), "kind": "hugging-face-folder",
            "sources": .array(sourceLines.map { .string($0) }),
            "components": .array(summaries.map(summary)), "totals": totals,
            "tensors": .array(
                zip(records, checkpoint.tensors).map { r, t in
                    [
                        "name": .string(r.name), "component": .string(r.component.name),
                        "encoding": .string(r.encoding.name), "shape": .array(r.shape.map { .int(Int64($0)) }),
                        "bytes": .int(Int64(r.byteCount)), "file": .string(t.file.path),
                    ]
                }),
        ]
    }

    /// Reads every tensor's values and counts the NaN and infinite ones (the structure was validated on
    /// open). `progress(done, total)` in bytes. Returns the tensors holding any, in checkpoint order.
    public func nonFiniteTensors(progress: (Int, Int) -> Void = { _, _ in }) -> [(name: String, nonFinite: Int)] {
        let total = records.reduce(0) { $0 + $1.byteCount }
        var done = 0
        var found: [(name: String, nonFinite: Int)] = []
        for (record, t) in zip(records, checkpoint.tensors) {
            let count = t.file.withContiguousData(t.info) { NonFiniteValues.count($0, encoding: record.encoding) }
            if count > 0 { found.append((record.name, count)) }
            done += record.byteCount
            progress(done, total)
        }
        return found
    }
}
