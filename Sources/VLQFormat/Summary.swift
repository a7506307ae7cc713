import VLQCore

/// Sizes of a bundle's contents per component, for `inspect` and size reports.
public struct ComponentSummary: Equatable, Sendable {
    public var component: Component
    public var tensors: Int
    public var parameters: Int
    public var bytes: Int
    /// Stored bits per parameter, scales and offsets of quantized encodings included.
    public var bitsPerWeight: Double { parameters > 0 ? Double(bytes) * 8 / Double(parameters) : 0 }
    public var encodings: [String: Int]
}

extension ComponentSummary {
    /// Per component (in component order, empty ones left out) of `records`, whose byte counts are set.
    public static func of(_ records: [TensorRecord]) -> [ComponentSummary] {
        Component.allCases.compactMap { component in
            let records = records.filter { $0.component == component }
            guard !records.isEmpty else { return nil }
            var encodings: [String: Int] = [:]
            for r in records { encodings[r.encoding.name, default: 0] += 1 }
            return ComponentSummary(
                component: component, tensors: records.count,
                parameters: records.reduce(0) { $0 + $1.elementCount },
                bytes: records.reduce(0) { $0 + $1.byteCount }, encodings: encodings)
        }
    }
}

extension VLQFile {
    public var componentSummaries: [ComponentSummary] { ComponentSummary.of(tensors) }

    /// Everything `vlq inspect --json` prints.
    public var inspection: JSONValue {
        let summaries = componentSummaries
        let parameters = summaries.reduce(0) { $0 + $1.parameters }
        let bytes = summaries.reduce(0) { $0 + $1.bytes }
        func summary(_ name: String, _ tensors: Int, _ parameters: Int, _ bytes: Int) -> JSONValue {
            [
                "name": .string(name), "tensors": .int(Int64(tensors)), "parameters": .int(Int64(parameters)),
                "bytes": .int(Int64(bytes)),
                "bits_per_weight": .double(parameters > 0 ? Double(bytes) * 8 / Double(parameters) : 0),
            ]
        }
        return [
            "file": .string(path),
            "format_version": .string("\(header.majorVersion).\(header.minorVersion)"),
            "file_bytes": .int(Int64(header.fileSize)),
            "alignment": .int(Int64(header.alignment)),
            "metadata_bytes": .int(Int64(header.metadataSize)),
            "metadata_compression": .string(header.metadataCompression == 1 ? "zstd" : "none"),
            "model": metadata["model"] ?? .null,
            "components": .array(
                summaries.map { s in
                    var o = summary(s.component.name, s.tensors, s.parameters, s.bytes).objectValue!
                    o["encodings"] = .object(s.encodings.mapValues { .int(Int64($0)) })
                    return .object(o)
                }),
            "totals": summary("all", tensors.count, parameters, bytes),
            "tensors": .array(
                tensors.map { r in
                    [
                        "name": .string(r.name), "component": .string(r.component.name),
                        "encoding": .string(r.encoding.name),
                        "shape": .array(r.shape.map { .int(Int64($0)) }), "bytes": .int(Int64(r.byteCount)),
                        "group_size": .int(Int64(r.groupSize)),
                        "offset": .int(Int64(r.offset)), "xxh3": .string(hex64(r.checksum)),
                        "source_dtype": .string(r.sourceDType.name),
                    ]
                }),
            "quantization": metadata["quantization"] ?? .null,
            "provenance": metadata["provenance"] ?? .null,
        ]
    }
}
