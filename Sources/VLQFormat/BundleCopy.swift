import VLQCore

/// A bundle copied tensor by tensor, as stored, under new metadata: how a writer adds what it learnt
/// only after the tensors were written (the allocation search's held-out figures).
public enum BundleCopy {
    public static func copy(
        _ source: String, to output: String, metadata transform: (JSONValue) throws -> JSONValue
    ) throws {
        let file = try VLQFile(path: source)
        let plan = file.tensors.map {
            TensorRecord(
                name: $0.name, encoding: $0.encoding, component: $0.component, shape: $0.shape,
                groupSize: $0.groupSize, sourceDType: $0.sourceDType)
        }
        let writer = try VLQWriter(path: output, plan: plan)
        do {
            for (i, record) in file.tensors.enumerated() {
                try writer.writeTensor(i) { try $0.append(file.data(record)) }
            }
            try writer.finish(metadata: try transform(file.metadata))
        } catch {
            writer.abandon()
            throw error
        }
    }
}
