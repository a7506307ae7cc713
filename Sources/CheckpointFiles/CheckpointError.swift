import VLQCore

/// The kinds of failure finding a model folder's weight files.
public enum CheckpointError: String, ErrorKind, Equatable {
    /// A model path that does not exist or is not a folder.
    case notAFolder
    /// A file the folder or its index names that does not exist or cannot be resolved.
    case missingFile
    /// A file, link or weight_map entry that leads outside the model folder and its Hugging Face cache.
    case outsideFolder
    /// A Hugging Face cache folder whose refs/main or snapshots do not name one snapshot.
    case badCache
    /// A folder with no weight files and no weight index.
    case noWeights
    /// A folder with several weight indexes and none named.
    case ambiguousWeights
    /// A file or weight_map entry that is neither .safetensors nor a PyTorch .bin.
    case unknownWeightFormat
    /// A weight index without a weight_map object of file names.
    case malformedIndex
    /// A weight index that disagrees with its shards, or a tensor held by two files.
    case indexMismatch
}
