@_exported import TensorSource
import VLQCore

/// A PyTorch `torch.save` checkpoint (`pytorch_model*.bin`): a zip archive holding a pickled state dict.
public final class TorchCheckpointFile: TensorFile, @unchecked Sendable {
    public let path: String
    public let mapped: MappedFile
    public var formatName: String { "pytorch" }
    public let tensors: [TensorInfo]
    private let byName: [String: Int]

    public convenience init(path: String) throws {
        try self.init(mapped: try MappedFile(path: path))
    }

    public init(mapped: MappedFile) throws {
        path = mapped.path
        self.mapped = mapped
        tensors = []
        byName = [:]
        throw VLQError(mapped.path, "PyTorch checkpoints are not read yet")
    }

    public func info(_ name: String) -> TensorInfo? {
        byName[name].map { tensors[$0] }
    }
}
