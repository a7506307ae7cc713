import Numerics
import YiVL

/// A model named by its path (a `.vlq` bundle or a Hugging Face Yi-VL folder), opened on first use
/// and kept open from then on. The tools take models this way, so that their callers (the command
/// line) never handle the engine; two models are in memory together only while both are held.
public final class LazyModel {
    /// The bundle or folder.
    public let path: String
    /// Bytes the weight store may keep upcast copies in (`MemoryBudget.weightCache` by default).
    public let cacheBudget: Int
    private var opened: YiVLEngine?

    public init(_ path: String, cacheBudget: Int = MemoryBudget.weightCache) {
        self.path = path
        self.cacheBudget = cacheBudget
    }

    /// The engine over the model, opened now if it was not yet.
    public func engine() throws -> YiVLEngine {
        if let opened { return opened }
        let engine = try YiVLEngine.open(path, cacheBudget: cacheBudget)
        opened = engine
        return engine
    }
}
