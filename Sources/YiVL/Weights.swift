import CKernels
import Numerics
import SafeTensors
import VLQCore
import VLQFormat

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Float32 weights by tensor handle (`ModelDefinition`), whatever their storage.
///
/// f32 tensors are used in place from the memory map; bf16 and f16 tensors are upcast when first
/// used and kept while they fit the cache budget, else upcast again on each use. Either way the whole
/// model is never upcast at once: a 13 GB bf16 model runs in 24 GiB. Quantized Linear weights, and
/// 16-bit ones once the cache is full, are multiplied panel by panel in prefill (WeightPanels.swift)
/// instead of being upcast whole on each use.
///
/// The 16-bit matrices a decode step reads (the decoder's Linears and the head) are never cached, as
/// quantized ones: decode streams them as stored (half the bytes of an f32 copy, and decoding is bound
/// by those bytes), and prefill multiplies them panel by panel, which costs an upcast per panel (a few
/// percent of the sgemm beside it) and no first-use upcast of the whole decoder.
public final class WeightStore: @unchecked Sendable {
    public enum Storage {
        case f32, f16, bf16
        case quantized(QuantizedLayout)
    }

    struct Entry {
        var shape: [Int]
        var storage: Storage
        var bytes: UnsafeRawBufferPointer
        var subject: String
        /// Drops the stored bytes' pages from the resident set once an upcast copy exists.
        var release: () -> Void
    }

    public let definition: ModelDefinition
    /// One entry per tensor of the definition, in its order.
    let entries: [Entry]
    private var cache: [[Float]?]
    private var cachedBytes = 0
    /// By handle index: a matrix a decode step streams, never cached (see the type's comment).
    let streamedByDecode: [Bool]
    public let cacheBudget: Int
    private let keepAlive: [AnyObject]
    private let lock = NSLockLike()

    init(definition: ModelDefinition, entries: [Entry], keepAlive: [AnyObject], cacheBudget: Int) {
        precondition(entries.count == definition.tensors.count)
        self.definition = definition
        self.entries = entries
        self.keepAlive = keepAlive
        self.cacheBudget = cacheBudget
        cache = Array(repeating: nil, count: entries.count)
        let streamed = Set(definition.language.decodeStepTensors)
        streamedByDecode = entries.indices.map {
            streamed.contains(TensorHandle(index: $0)) && entries[$0].shape.count == 2
        }
    }

    /// The bundle's table was checked against the definition (`EngineConfig.checkTable`).
    public convenience init(
        bundle: VLQFile, definition: ModelDefinition, cacheBudget: Int = MemoryBudget.weightCache
    ) {
        let entries = definition.tensors.map { tensor -> Entry in
            let r = bundle.record(tensor.name)!
            let storage: Storage
            switch r.encoding {
            case .f32: storage = .f32
            case .f16: storage = .f16
            case .bf16: storage = .bf16
            case .q8, .q4, .q4s, .q3:
                storage = .quantized(QuantizedLayout(encoding: r.encoding, shape: r.shape, groupSize: r.groupSize)!)
            }
            return Entry(
                shape: r.shape, storage: storage, bytes: bundle.data(r), subject: bundle.path,
                release: { bundle.mapped.release(offset: r.offset, count: r.byteCount) })
        }
        self.init(definition: definition, entries: entries, keepAlive: [bundle], cacheBudget: cacheBudget)
    }

    public convenience init(
        checkpoint: YiVLCheckpoint, definition: ModelDefinition,
        cacheBudget: Int = MemoryBudget.weightCache
    ) {
        var byName: [String: Entry] = [:]
        var files: [AnyObject] = []
        for t in checkpoint.tensors {
            let storage: Storage = t.info.dtype == .f32 ? .f32 : t.info.dtype == .f16 ? .f16 : .bf16
            let (file, info) = (t.file, t.info)
            if info.isContiguous {
                byName[t.expected.name] = Entry(
                    shape: info.shape, storage: storage, bytes: file.data(info), subject: file.path,
                    release: { file.mapped.release(offset: info.fileOffset, count: info.byteCount) })
                files.append(t.file)
            } else {
                // A strided view of a PyTorch storage: gathered once into a contiguous copy that lives
                // as long as the store (such views are rare: tied or transposed parameters).
                let copy = MappedFile(bytes: file.contiguousCopy(info), path: file.path)
                byName[t.expected.name] = Entry(
                    shape: info.shape, storage: storage, bytes: copy.bytes, subject: file.path,
                    release: {})
                files.append(copy)
            }
        }
        // The checkpoint matched every expected tensor by name on open.
        self.init(
            definition: definition, entries: definition.tensors.map { byName[$0.name]! },
            keepAlive: files + [checkpoint], cacheBudget: cacheBudget)
    }

    /// `base` with the tensors in `handles` taken from `overlay` instead: the reference model with one
    /// layer quantized, to measure that layer's own contribution to the drift.
    public convenience init(base: WeightStore, overlay: WeightStore, handles: Set<TensorHandle>, cacheBudget: Int = 0) {
        let entries = base.entries.indices.map {
            handles.contains(TensorHandle(index: $0)) ? overlay.entries[$0] : base.entries[$0]
        }
        self.init(definition: base.definition, entries: entries, keepAlive: [base, overlay], cacheBudget: cacheBudget)
    }

    public func isQuantized(_ handle: TensorHandle) -> Bool { quantizedLayout(handle) != nil }

    public func shape(_ handle: TensorHandle) -> [Int] { entries[handle.index].shape }

    /// The tensor's quantized layout as stored, or nil for a float one.
    public func quantizedLayout(_ handle: TensorHandle) -> QuantizedLayout? {
        if case .quantized(let layout) = entries[handle.index].storage { return layout }
        return nil
    }

    /// Whether the tensor's f32 copy may be kept: 16-bit and not streamed by decode (quantized tensors are
    /// decoded anew for each prefill: a quantized model should also run in less memory, and its decode
    /// steps read the packed codes directly).
    func isCacheable(_ handle: TensorHandle) -> Bool {
        switch entries[handle.index].storage {
        case .bf16, .f16: return !streamedByDecode[handle.index]
        case .f32, .quantized: return false
        }
    }

    /// Whether an f32 copy of the tensor is in the cache, or would be put there on its next use.
    func isOrWillBeCached(_ handle: TensorHandle) -> Bool {
        guard isCacheable(handle) else { return false }
        let size = entries[handle.index].shape.reduce(1, *) * 4
        return lock.withLock { cache[handle.index] != nil || cachedBytes + size <= cacheBudget }
    }

    /// Whether an f32 copy of the tensor is in the cache.
    func isCached(_ handle: TensorHandle) -> Bool { lock.withLock { cache[handle.index] != nil } }

    /// The tensor's size as stored (bundle encoding or checkpoint dtype), not as upcast in the cache.
    public func storedBytes(_ handle: TensorHandle) -> Int { entries[handle.index].bytes.count }

    /// The tensor's bytes as stored (mapped from the bundle or checkpoint): what a decode step streams,
    /// for measuring how fast they can be read.
    public func storedRegion(_ handle: TensorHandle) -> UnsafeRawBufferPointer { entries[handle.index].bytes }

    /// Runs `body` with the tensor's values as f32, in place when stored as f32.
    public func withFloats<R>(_ handle: TensorHandle, _ body: (UnsafeBufferPointer<Float>) throws -> R) rethrows -> R {
        let e = entries[handle.index]
        if case .f32 = e.storage {
            return try body(e.bytes.bindMemory(to: Float.self))
        }
        if let cached = lock.withLock({ cache[handle.index] }) {
            return try cached.withUnsafeBufferPointer(body)
        }
        let values = WeightStore.upcast(e)
        e.release()
        let size = values.count * 4
        guard isCacheable(handle) else { return try values.withUnsafeBufferPointer(body) }
        lock.withLock {
            if cachedBytes + size <= cacheBudget {
                cache[handle.index] = values
                cachedBytes += size
            }
        }
        return try values.withUnsafeBufferPointer(body)
    }

    /// Rows `indices` of a 2-D tensor as f32, one after another into `out`: a quantized table (the token
    /// embedding) decodes only those rows, not the whole table on each decode step.
    public func rows(_ handle: TensorHandle, _ indices: [Int], into out: UnsafeMutablePointer<Float>) {
        let e = entries[handle.index]
        if case .quantized(let layout) = e.storage {
            for (i, r) in indices.enumerated() {
                layout.dequantize(e.bytes, rows: r..<(r + 1), into: out + i * layout.columns)
            }
            return
        }
        let columns = e.shape.last ?? 1
        if case .f32 = e.storage {
        } else if lock.withLock({ cache[handle.index] == nil }) {
            // 16-bit and not cached: upcasting only these rows, not the whole table.
            let halves = e.bytes.bindMemory(to: UInt16.self)
            let isBF16: Bool
            if case .bf16 = e.storage { isBF16 = true } else { isBF16 = false }
            for (i, r) in indices.enumerated() {
                for c in 0..<columns {
                    let bits = UInt16(littleEndian: halves[r * columns + c])
                    out[i * columns + c] =
                        isBF16 ? Float(bitPattern: UInt32(bits) << 16) : Float(Float16(bitPattern: bits))
                }
            }
            return
        }
        withFloats(handle) { table in
            for (i, r) in indices.enumerated() {
                (out + i * columns).update(from: table.baseAddress! + r * columns, count: columns)
            }
        }
    }

    /// y = W x for one input row, straight from 16-bit or quantized storage (DecodeKernels): decoding
    /// is bound by memory bandwidth, and this streams a half (bf16) or a quarter (q8) of the f32 bytes.
    /// A tensor whose f32 copy is cached (one a decode step does not stream, read through here by a
    /// caller of its own) uses it instead: reading its stored pages again would keep both resident.
    /// The stored pages are not released here:
    /// each decode step reads them again, and releasing them made every step fault the whole model in
    /// from the page cache (they are clean file pages, which the kernel reclaims under pressure).
    /// Returns false when the caller should use the f32 path.
    public func matrixVector(
        _ handle: TensorHandle, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) -> Bool {
        let e = entries[handle.index]
        guard e.shape.count == 2, !isCacheable(handle) || lock.withLock({ cache[handle.index] == nil }) else {
            return false
        }
        let base = e.bytes.baseAddress!
        if case .f32 = e.storage { return false }
        DecodeKernels.withCacheLineAligned(x, count: e.shape[1]) { x in
            switch e.storage {
            case .f32:
                break
            case .bf16:
                DecodeKernels.halves(base, isBF16: true, rows: e.shape[0], columns: e.shape[1], x, into: y)
            case .f16:
                DecodeKernels.halves(base, isBF16: false, rows: e.shape[0], columns: e.shape[1], x, into: y)
            case .quantized(let layout):
                DecodeKernels.quantized(layout, base, x, into: y)
            }
        }
        return true
    }

    /// A copy of the tensor as f32. The stored pages are released afterwards: callers of this (the
    /// quantizer, tensor by tensor) do not come back to them, and a 2.5 GB f32 vision tower would
    /// otherwise stay resident.
    public func floats(_ handle: TensorHandle) -> [Float] {
        if let cached = lock.withLock({ cache[handle.index] }) { return cached }
        let count = entries[handle.index].shape.reduce(1, *)
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            copyFloats(handle, into: buffer)
            initialized = count
        }
    }

    /// The tensor as f32 into `out` (exactly its element count), its stored pages released afterwards,
    /// as `floats` does. The quantizer passes one buffer for every tensor: a fresh array per tensor
    /// costs the kernel zeroing its pages, which took a quarter of an int8 quantize's time.
    public func copyFloats(_ handle: TensorHandle, into out: UnsafeMutableBufferPointer<Float>) {
        let e = entries[handle.index]
        precondition(out.count == e.shape.reduce(1, *), "copyFloats: the buffer is not the tensor's size")
        WeightStore.upcast(e, into: out)
        e.release()
    }

    static func upcast(_ e: Entry) -> [Float] {
        let count = e.shape.reduce(1, *)
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            upcast(e, into: buffer)
            initialized = count
        }
    }

    /// Rows spread over the cores; the C conversions (vlq_dequantize.h) are bit-identical to Float's.
    static func upcast(_ e: Entry, into out: UnsafeMutableBufferPointer<Float>) {
        guard let dst = out.baseAddress, !out.isEmpty else { return }
        let columns = max(e.shape.last ?? 1, 1), rows = out.count / columns
        switch e.storage {
        case .f32:
            dst.update(from: e.bytes.bindMemory(to: Float.self).baseAddress!, count: out.count)
        case .bf16, .f16:
            let halves = e.bytes.bindMemory(to: UInt16.self).baseAddress!
            var isBF16 = false
            if case .bf16 = e.storage { isBF16 = true }
            Kernels.parallelRows(rows, minimumPerTask: 64) { range in
                let (begin, end) = (range.lowerBound, range.upperBound)
                if isBF16 {
                    vlq_upcast_bf16(halves, columns, dst + begin * columns, begin, end)
                } else {
                    vlq_upcast_f16(halves, columns, dst + begin * columns, begin, end)
                }
            }
        case .quantized(let layout):
            Kernels.parallelRows(layout.rows, minimumPerTask: 64) { range in
                layout.dequantize(e.bytes, rows: range, into: dst + range.lowerBound * layout.columns)
            }
        }
    }
}

/// A tiny mutex over pthread, to avoid Foundation in the engine's hot path.
final class NSLockLike: @unchecked Sendable {
    private var mutex = pthread_mutex_t()

    init() { pthread_mutex_init(&mutex, nil) }
    deinit { pthread_mutex_destroy(&mutex) }

    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        pthread_mutex_lock(&mutex)
        defer { pthread_mutex_unlock(&mutex) }
        return try body()
    }
}
