import CKernels
import Numerics
import VLQFormat

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A weight [outputs, ...] as stored in 16 bits or quantized, multiplied panel by panel: prefill and
/// the vision tower decode a few hundred output rows to f32 (CKernels, vlq_dequantize.h) into a reused
/// buffer that stays in cache, then sgemm fills those output columns. Decoding the whole weight into a
/// fresh array on every call instead cost page faults, zeroing and a slow loop: quantized prefill ran
/// at 59-68% of the 16-bit speed. The values are those of QuantizedLayout.dequantize and of the 16-bit
/// upcast bit for bit, so outputs equal the whole-weight product up to float summation order.
public struct StoredWeight {
    public let storage: WeightStore.Storage
    /// [outputs, ...]: dimensions after the first are folded into inputs (the patch embedding's conv).
    public let shape: [Int]
    public let bytes: UnsafeRawBufferPointer

    public init(storage: WeightStore.Storage, shape: [Int], bytes: UnsafeRawBufferPointer) {
        (self.storage, self.shape, self.bytes) = (storage, shape, bytes)
    }

    public var outputs: Int { shape[0] }
    public var inputs: Int { shape.dropFirst().reduce(1, *) }

    /// Output rows per panel, about: each sgemm call packs all of x again, which costs as much as
    /// multiplying it by ~30 weight rows, so panels are wide; narrower ones measured 7% (512 rows) and
    /// 10-20% (256) slower at 512 x 4096 x 11008 on 2 cores, 1024 as fast as the whole weight.
    /// VLQ_PANEL_ROWS overrides it; 0 goes back to upcasting whole weights (to compare).
    public static let panelRows: Int = {
        if let text = getenv("VLQ_PANEL_ROWS"), let rows = Int(String(cString: text)) { return rows }
        return 1024
    }()

    /// out[rows, outputs] = x[rows, inputs] W^T (+ bias), as Kernels.linear computes it from the f32
    /// weight: bias added after the product. The outputs are split into panels of `panelRows` or a
    /// little more (never a narrow last one).
    public func multiply(
        _ x: UnsafePointer<Float>, rows m: Int, bias: UnsafePointer<Float>?, into out: UnsafeMutablePointer<Float>,
        panelRows: Int = StoredWeight.panelRows
    ) {
        let (n, k) = (outputs, inputs)
        let panels = max(1, n / max(1, panelRows))
        let panel = (n + panels - 1) / panels
        PanelBuffers.shared.with(count: panel * k) { buffer in
            for first in stride(from: 0, to: n, by: panel) {
                let count = min(panel, n - first)
                decode(outputs: first..<(first + count), into: buffer)
                Kernels.linearPanel(
                    x, rows: m, inputs: k, panel: buffer, count: count, firstOutput: first, outputs: n, into: out)
            }
        }
        if let bias {
            for r in 0..<m { Kernels.add(out + r * n, bias, count: n) }
        }
    }

    /// Output rows `range` of the weight as f32 into `out` ([range.count, inputs]), split over the cores.
    public func decode(outputs range: Range<Int>, into out: UnsafeMutablePointer<Float>) {
        // A quantized tensor's rows are its shape without the last dimension: several per output row
        // when the weight has more than two dimensions.
        var (perOutput, columns) = (1, inputs)
        if case .quantized(let layout) = storage { (perOutput, columns) = (layout.rows / outputs, layout.columns) }
        let first = range.lowerBound * perOutput
        Kernels.parallelRows(range.count * perOutput, minimumPerTask: max(1, 16384 / columns)) { rows in
            decode(
                rows: (first + rows.lowerBound)..<(first + rows.upperBound), columns: columns,
                into: out + rows.lowerBound * columns)
        }
    }

    /// Stored rows `range` (each `columns` values) as f32 into `out`.
    func decode(rows range: Range<Int>, columns: Int, into out: UnsafeMutablePointer<Float>) {
        let base = bytes.baseAddress!
        let (begin, end) = (range.lowerBound, range.upperBound)
        let halves = base.assumingMemoryBound(to: UInt16.self)
        switch storage {
        case .f32:
            out.update(from: base.assumingMemoryBound(to: Float.self) + begin * columns, count: range.count * columns)
        case .bf16:
            vlq_upcast_bf16(halves, columns, out, begin, end)
        case .f16:
            vlq_upcast_f16(halves, columns, out, begin, end)
        case .quantized(let layout):
            let scales = (base + layout.scalesOffset).assumingMemoryBound(to: UInt16.self)
            let group = layout.groupSize
            let biases = layout.biasesOffset.map { (base + $0).assumingMemoryBound(to: UInt16.self) }
            let codes = base.assumingMemoryBound(to: UInt8.self)
            switch layout.encoding {
            case .q8:
                vlq_dequantize_q8(base.assumingMemoryBound(to: Int8.self), scales, columns, group, out, begin, end)
            case .q3:
                vlq_dequantize_q3(codes, scales, biases, columns, group, out, begin, end)
            default:
                vlq_dequantize_q4(codes, scales, biases, columns, group, out, begin, end)
            }
        }
    }

    /// Which decode kernels run on this machine: "avx2" or "scalar".
    public static var instructionSet: String { String(cString: vlq_dequantize_isa()) }

    /// Tests: runs the portable (scalar) decode kernels instead of the CPU's vector ones, or goes back.
    public static func usePortableKernels(_ portable: Bool) { vlq_dequantize_use_portable(portable ? 1 : 0) }
}

extension WeightStore {
    /// The tensor as stored when it is quantized, or 16-bit and neither cached as f32 nor fitting the
    /// cache, and at least 2-D: then prefill multiplies it panel by panel (StoredWeight.multiply). Nil
    /// otherwise (the f32 path). 16-bit weights keep the f32 cache while it has room: on 2 cores bf16
    /// prefill from panels took 5.85 s against 5.57 s from the cached f32 (`vlq bench`, 512 tokens, 4
    /// layers of 6B; q8 panels 6.10 s, q4 5.80 s), though the cache doubles their memory.
    public func storedWeight(_ handle: TensorHandle) -> StoredWeight? {
        let e = entries[handle.index]
        switch e.storage {
        case .f32: return nil
        case .bf16, .f16: if isOrWillBeCached(handle) { return nil }
        case .quantized: if isCached(handle) { return nil }
        }
        guard e.shape.count >= 2, StoredWeight.panelRows > 0 else { return nil }
        return StoredWeight(storage: e.storage, shape: e.shape, bytes: e.bytes)
    }

    /// out[rows, outputs] = x[rows, inputs] W^T (+ bias) panel by panel when the weight is stored in 16
    /// bits or quantized and not cached (`storedWeight`); false, having done nothing, otherwise. The
    /// stored pages are released afterwards, as after a whole-weight upcast (the vision tower's are not
    /// read again until the next image), except those a decode step streams: the first token after the
    /// prompt would only fault them back in from the page cache.
    func multiplyStored(
        _ handle: TensorHandle, _ x: UnsafePointer<Float>, rows: Int, bias: UnsafePointer<Float>?,
        into out: UnsafeMutablePointer<Float>
    ) -> Bool {
        guard rows > 1, let weight = storedWeight(handle) else { return false }
        weight.multiply(x, rows: rows, bias: bias, into: out)
        if !streamedByDecode[handle.index] { entries[handle.index].release() }
        return true
    }
}

/// f32 panel buffers reused across the calls of a forward pass, one per caller running at the same
/// time (they are few: the engine's forward passes), so that no multiplication allocates and faults in
/// its panel.
final class PanelBuffers: @unchecked Sendable {
    static let shared = PanelBuffers()
    private var idle: [UnsafeMutableBufferPointer<Float>] = []
    private let lock = NSLockLike()

    func with<R>(count: Int, _ body: (UnsafeMutablePointer<Float>) -> R) -> R {
        var buffer = lock.withLock { idle.popLast() } ?? .allocate(capacity: count)
        if buffer.count < count {
            buffer.deallocate()
            buffer = .allocate(capacity: count)
        }
        defer { lock.withLock { idle.append(buffer) } }
        return body(buffer.baseAddress!)
    }

    /// Frees the buffers that no caller holds (YiVLEngine.forward, at the end of each pass).
    func releaseIdle() {
        let freed = lock.withLock {
            defer { idle = [] }
            return idle
        }
        for buffer in freed { buffer.deallocate() }
    }
}
