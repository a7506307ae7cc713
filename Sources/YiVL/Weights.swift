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
/// model is never upcast at once: a 13 GB bf16 model runs in 24 GiB.
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
    private let entries: [Entry]
    private var cache: [[Float]?]
    private var cachedBytes = 0
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
            case .q8, .q4, .q4s:
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

    public func isQuantized(_ handle: TensorHandle) -> Bool {
        if case .quantized = entries[handle.index].storage { return true }
        return false
    }

    public func shape(_ handle: TensorHandle) -> [Int] { entries[handle.index].shape }

    /// The tensor's size as stored (bundle encoding or checkpoint dtype), not as upcast in the cache.
    public func storedBytes(_ handle: TensorHandle) -> Int { entries[handle.index].bytes.count }

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
        // Quantized tensors are decoded anew for each prefill and never cached: a quantized model
        // should also run in less memory, and its decode steps read the packed codes directly.
        if case .quantized = e.storage { return try values.withUnsafeBufferPointer(body) }
        lock.withLock {
            if cachedBytes + size <= cacheBudget {
                cache[handle.index] = values
                cachedBytes += size
            }
        }
        return try values.withUnsafeBufferPointer(body)
    }

    /// y = W x for one input row, straight from 16-bit or quantized storage: decoding is bound by
    /// memory bandwidth, and this streams a half (bf16) or a quarter (q8) of the f32 bytes (measured
    /// at Yi-VL-6B shapes: 194 ms bf16, 164 ms q8, against 327 ms per token for f32). Tensors whose f32
    /// copy is cached use it instead: reading their stored pages again would keep both resident (a
    /// 6B model then reached 24 GB of RSS). The stored pages are released after each use. Returns
    /// false when the caller should use the f32 path.
    public func matrixVector(
        _ handle: TensorHandle, _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) -> Bool {
        let e = entries[handle.index]
        guard e.shape.count == 2, lock.withLock({ cache[handle.index] == nil }) else { return false }
        defer { e.release() }
        let rows = e.shape[0], cols = e.shape[1]
        let halves = e.bytes.bindMemory(to: UInt16.self)
        switch e.storage {
        case .f32:
            return false
        case .bf16, .f16:
            let isBF16: Bool
            if case .bf16 = e.storage { isBF16 = true } else { isBF16 = false }
            Kernels.parallelRows(rows, minimumPerTask: 64) { range in
                for r in range {
                    let row = UnsafeBufferPointer(rebasing: halves[(r * cols)..<((r + 1) * cols)])
                    y[r] = isBF16 ? WeightStore.dotBF16(row, x, cols) : WeightStore.dotF16(row, x, cols)
                }
            }
        case .quantized(let layout):
            // Dot products straight on the packed codes: one byte (q8) or half a byte (q4) streams per
            // weight, and each group's scale multiplies its partial sum once.
            let base = e.bytes.baseAddress!
            Kernels.parallelRows(rows, minimumPerTask: 64) { range in
                for r in range { y[r] = WeightStore.quantizedDot(layout, base, row: r, x) }
            }
        }
        return true
    }

    @inline(__always)
    static func dotBF16(_ w: UnsafeBufferPointer<UInt16>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        let base = UnsafeRawPointer(w.baseAddress!)
        let xs = UnsafeRawPointer(x)
        while i + 8 <= n {
            let bits =
                SIMD8<UInt32>(truncatingIfNeeded: base.loadUnaligned(fromByteOffset: 2 * i, as: SIMD8<UInt16>.self))
                &<< 16
            let wv = unsafeBitCast(bits, to: SIMD8<Float>.self)
            acc += wv * xs.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        var sum = acc.sum()
        while i < n {
            sum += Float(bitPattern: UInt32(w[i]) << 16) * x[i]
            i += 1
        }
        return sum
    }

    @inline(__always)
    static func halfToFloat(_ p: UnsafeRawPointer, _ index: Int) -> Float {
        Float(Float16(bitPattern: UInt16(littleEndian: p.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self))))
    }

    static func quantizedDot(
        _ layout: QuantizedLayout, _ data: UnsafeRawPointer, row r: Int, _ x: UnsafePointer<Float>
    ) -> Float {
        let cols = layout.columns, g = layout.groupSize, groups = layout.groupsPerRow
        let xs = UnsafeRawPointer(x)
        var total: Float = 0
        switch layout.encoding {
        case .q8:
            let codes = data + r * cols
            for k in 0..<groups {
                var acc = SIMD8<Float>(repeating: 0)
                var j = k * g
                let end = j + g
                while j + 8 <= end {
                    let q = SIMD8<Int32>(
                        truncatingIfNeeded: codes.loadUnaligned(fromByteOffset: j, as: SIMD8<Int8>.self))
                    acc += SIMD8<Float>(q) * xs.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
                    j += 8
                }
                var partial = acc.sum()
                while j < end {
                    partial += Float(Int8(bitPattern: codes.load(fromByteOffset: j, as: UInt8.self))) * x[j]
                    j += 1
                }
                total += partial * halfToFloat(data + layout.scalesOffset, r * groups + k)
            }
        default:
            // value = n * scale + bias (q4s: bias = -8 scale): sum = scale * sum(n x) + bias * sum(x).
            let codes = data + r * cols / 2
            for k in 0..<groups {
                var acc = SIMD8<Float>(repeating: 0), xsum = SIMD8<Float>(repeating: 0)
                var j = k * g
                let end = j + g
                while j + 8 <= end {
                    let packed = SIMD4<UInt32>(
                        truncatingIfNeeded: codes.loadUnaligned(fromByteOffset: j / 2, as: SIMD4<UInt8>.self))
                    let low = packed & 0x0F, high = packed &>> 4
                    let n = SIMD8<Float>(
                        Float(low[0]), Float(high[0]), Float(low[1]), Float(high[1]),
                        Float(low[2]), Float(high[2]), Float(low[3]), Float(high[3]))
                    let xv = xs.loadUnaligned(fromByteOffset: 4 * j, as: SIMD8<Float>.self)
                    acc += n * xv
                    xsum += xv
                    j += 8
                }
                var partial = acc.sum(), sumX = xsum.sum()
                while j < end {
                    let byte = codes.load(fromByteOffset: j / 2, as: UInt8.self)
                    partial += Float(j % 2 == 0 ? byte & 0x0F : byte >> 4) * x[j]
                    sumX += x[j]
                    j += 1
                }
                let scale = halfToFloat(data + layout.scalesOffset, r * groups + k)
                let bias = layout.biasesOffset.map { halfToFloat(data + $0, r * groups + k) } ?? -8 * scale
                total += scale * partial + bias * sumX
            }
        }
        return total
    }

    @inline(__always)
    static func dotF32(_ w: UnsafePointer<Float>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var acc = SIMD8<Float>(repeating: 0)
        var i = 0
        let a = UnsafeRawPointer(w), b = UnsafeRawPointer(x)
        while i + 8 <= n {
            acc +=
                a.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
                * b.loadUnaligned(fromByteOffset: 4 * i, as: SIMD8<Float>.self)
            i += 8
        }
        var sum = acc.sum()
        while i < n {
            sum += w[i] * x[i]
            i += 1
        }
        return sum
    }

    @inline(__always)
    static func dotF16(_ w: UnsafeBufferPointer<UInt16>, _ x: UnsafePointer<Float>, _ n: Int) -> Float {
        var sum: Float = 0
        for i in 0..<n { sum += Float(Float16(bitPattern: w[i])) * x[i] }
        return sum
    }

    /// A copy of the tensor as f32. The stored pages are released afterwards: callers of this (the
    /// quantizer, tensor by tensor) do not come back to them, and a 2.5 GB f32 vision tower would
    /// otherwise stay resident.
    public func floats(_ handle: TensorHandle) -> [Float] {
        let values = withFloats(handle) { Array($0) }
        if case .f32 = entries[handle.index].storage { entries[handle.index].release() }
        return values
    }

    static func upcast(_ e: Entry) -> [Float] {
        let count = e.shape.reduce(1, *)
        var out = [Float](repeating: 0, count: count)
        let halves = e.bytes.bindMemory(to: UInt16.self)
        out.withUnsafeMutableBufferPointer { dst in
            switch e.storage {
            case .bf16:
                for i in 0..<count { dst[i] = Float(bitPattern: UInt32(UInt16(littleEndian: halves[i])) << 16) }
            case .f16:
                for i in 0..<count { dst[i] = Float(Float16(bitPattern: UInt16(littleEndian: halves[i]))) }
            case .quantized(let layout):
                Kernels.parallelRows(layout.rows, minimumPerTask: 64) { range in
                    layout.dequantize(e.bytes, rows: range, into: dst.baseAddress! + range.lowerBound * layout.columns)
                }
            case .f32:
                break
            }
        }
        return out
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
