import CKernels
import Numerics
import VLQFormat

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// y = W x for one input row, straight from 16-bit or quantized storage (CKernels): decoding streams
/// every weight once per token, so these read the stored bytes at the memory's pace instead of an f32
/// copy four (q8), eight (q4) or nine (q3) times larger. Exact for the stored values up to float summation
/// order: the weights are unpacked to f32 and multiplied by float FMA, activations stay f32 (unless
/// `DecodeActivations` asks for int8: `quantizedInt8`, q8 and q4 only). Where the CPU has AVX-512 VNNI, q4
/// takes x as three int8 slices instead, to f32's precision, and integer dot products (`slicesActivations`).
/// Each group's scale multiplies its partial sum once (q4, q3: scale * sum(n x) + bias * sum(x)). Rows
/// are split over the cores (`splitRows`).
public enum DecodeKernels {
    /// Which kernels run on this machine: "avx512" (the AVX2 ones, and AVX-512 ones where they exist),
    /// "avx2", "neon" or "scalar".
    public static var instructionSet: String { String(cString: vlq_kernels_isa()) }

    /// Tests: runs the portable (scalar) kernels instead of the CPU's vector ones, or goes back to them.
    /// The sliced q4 kernel is left out too while portable ones run.
    public static func usePortableKernels(_ portable: Bool) {
        vlq_kernels_use_portable(portable ? 1 : 0)
        allowSlicedActivations(!portable)
    }

    /// Tests: on a CPU with AVX-512, false keeps to the AVX2 kernels (which other x86-64 machines run);
    /// true (the default) lets the AVX-512 ones run again.
    public static func allowAVX512(_ allowed: Bool) { vlq_kernels_allow_avx512(allowed ? 1 : 0) }

    /// Rows per task below which splitting costs more than it saves.
    static let minimumRowsPerTask = 16

    /// Tasks per core: the cores stream their rows at rates that differ from moment to moment, and with one
    /// half each the faster one waited for the other.
    static let tasksPerProcessor: Int = {
        if let text = getenv("VLQ_DECODE_TASKS"), let n = Int(String(cString: text)), n > 0 { return n }
        return Kernels.balancedTasksPerProcessor
    }()

    /// A product's rows over the cores, as every kernel here splits them.
    @inline(__always)
    static func splitRows(_ rows: Int, _ body: (Range<Int>) -> Void) {
        Kernels.parallelRows(rows, minimumPerTask: minimumRowsPerTask, tasksPerProcessor: tasksPerProcessor, body)
    }

    /// Bytes of a cache line: x and its slices start on one, so that no vector load of them straddles two.
    static let cacheLine = 64

    /// `body` on x at a cache-line boundary: x itself when it is on one, else a copy (a few microseconds for
    /// a product that takes a millisecond or more; FloatBuffer's activations are on one already). An x that
    /// was not (Swift arrays' elements start 32 bytes into a 16-byte-aligned block) split one load of x in
    /// two every other block: q8 streamed 13% slower and q4 on slices 17% slower (tools/decode_kernel_bench.c
    /// with x and the slices placed 16 or 32 bytes off a line, two at once, 11008 x 4096).
    public static func withCacheLineAligned<R>(
        _ x: UnsafePointer<Float>, count: Int, _ body: (UnsafePointer<Float>) -> R
    ) -> R {
        if Int(bitPattern: x) % cacheLine == 0 { return body(x) }
        let copy = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * 4, alignment: cacheLine)
        defer { copy.deallocate() }
        let aligned = copy.bindMemory(to: Float.self, capacity: max(count, 1))
        aligned.update(from: x, count: count)
        return body(aligned)
    }

    /// `weights` holds `rows` x `columns` bf16 or f16 values, row-major (little-endian bit patterns).
    public static func halves(
        _ weights: UnsafeRawPointer, isBF16: Bool, rows: Int, columns: Int,
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) {
        let w = weights.assumingMemoryBound(to: UInt16.self)
        splitRows(rows) { range in
            let (begin, end) = (range.lowerBound, range.upperBound)
            if isBF16 {
                vlq_matvec_bf16(w, columns, x, y, begin, end)
            } else {
                vlq_matvec_f16(w, columns, x, y, begin, end)
            }
        }
    }

    /// `data` is a tensor's bytes in `layout` (formats/VLQ-BUNDLE.md, section 5).
    public static func quantized(
        _ layout: QuantizedLayout, _ data: UnsafeRawPointer,
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) {
        let (columns, group) = (layout.columns, layout.groupSize)
        let scales = (data + layout.scalesOffset).assumingMemoryBound(to: UInt16.self)
        // q3 has no int8-activation kernel: it stays exact.
        if DecodeActivations.precision == .int8 && layout.encoding != .q3 {
            if group % activationBlock == 0 { return quantizedInt8(layout, data, x, into: y) }
            noteExactFallback(group: group)
        }
        if layout.encoding == .q8 {
            let codes = data.assumingMemoryBound(to: Int8.self)
            splitRows(layout.rows) { range in
                vlq_matvec_q8(codes, scales, columns, group, x, y, range.lowerBound, range.upperBound)
            }
            return
        }
        // Each group's sum of x is the same for every row: computed once.
        var sums = [Float](repeating: 0, count: layout.groupsPerRow)
        sums.withUnsafeMutableBufferPointer { vlq_group_sums(x, columns, group, $0.baseAddress!) }
        let codes = data.assumingMemoryBound(to: UInt8.self)
        let biases = layout.biasesOffset.map { (data + $0).assumingMemoryBound(to: UInt16.self) }
        if slices(layout) && slicedQ4(layout, codes, scales, biases, x, sums, into: y) { return }
        sums.withUnsafeBufferPointer { sums in
            let s = sums.baseAddress!
            splitRows(layout.rows) { range in
                if layout.encoding == .q3 {
                    vlq_matvec_q3(codes, scales, biases, columns, group, x, s, y, range.lowerBound, range.upperBound)
                } else {
                    vlq_matvec_q4(codes, scales, biases, columns, group, x, s, y, range.lowerBound, range.upperBound)
                }
            }
        }
    }

    // MARK: sliced activations (q4 and q4s, where the CPU has AVX-512 VNNI)

    /// Elements of x per block of slices, one f32 scale each (vlq_slice_activations).
    public static let sliceBlock = 128

    /// Whether q4 and q4s products (groups of a multiple of 128) run on sliced x here: x as three int8
    /// slices per block of 128 (within 2^-24 of the block's largest |x|, the size of an f32 rounding) and
    /// exact integer dot products, 1.35x the float kernel's speed from memory (Sources/CKernels/sliced.c).
    /// True on x86-64 with AVX-512 VNNI; elsewhere the float kernel runs.
    public static var slicesActivations: Bool { vlq_sliced_vector_available() != 0 }

    /// Tests and benchmarks: false keeps q4 on the float kernel (what machines without AVX-512 VNNI run),
    /// true lets the sliced one run again where the CPU has it. Not while products run.
    public static func allowSlicedActivations(_ allowed: Bool) { vlq_kernels_allow_sliced_vector(allowed ? 1 : 0) }

    /// Whether a product with these weights (and f32 activations) runs on sliced x here: q4 or q4s in groups
    /// of a multiple of 128, where the CPU has AVX-512 VNNI.
    public static func slices(_ layout: QuantizedLayout) -> Bool {
        slicesActivations && [.q4, .q4s].contains(layout.encoding) && layout.groupSize % sliceBlock == 0
    }

    /// q4 through the sliced kernel (`slices(layout)`); false leaves it to the float kernel (x not finite,
    /// whose infinities and NaNs that kernel carries through as every other does).
    static func slicedQ4(
        _ layout: QuantizedLayout, _ codes: UnsafePointer<UInt8>, _ scales: UnsafePointer<UInt16>,
        _ biases: UnsafePointer<UInt16>?, _ x: UnsafePointer<Float>, _ sums: [Float],
        into y: UnsafeMutablePointer<Float>
    ) -> Bool {
        let (columns, group) = (layout.columns, layout.groupSize)
        // On a cache line, as x (withCacheLineAligned): each block reads six 64-byte loads of slices.
        let slices = UnsafeMutableRawPointer.allocate(byteCount: 3 * columns, alignment: cacheLine)
        defer { slices.deallocate() }
        let s = slices.bindMemory(to: Int8.self, capacity: 3 * columns)
        var blockScales = [Float](repeating: 0, count: columns / sliceBlock)
        let sliced = blockScales.withUnsafeMutableBufferPointer {
            vlq_slice_activations(x, columns, s, $0.baseAddress!)
        }
        guard sliced != 0 else { return false }
        blockScales.withUnsafeBufferPointer { d in
            sums.withUnsafeBufferPointer { sums in
                let (d, sums) = (d.baseAddress!, sums.baseAddress!)
                splitRows(layout.rows) { range in
                    vlq_matvec_q4_sliced(
                        codes, scales, biases, columns, group, s, d, sums, y, range.lowerBound, range.upperBound)
                }
            }
        }
        return true
    }

    // MARK: int8 activations (DecodeActivations)

    /// Elements of x per int8 block, one f32 scale each (vlq_quantize_activations).
    public static let activationBlock = 32

    /// x (a multiple of 32 long) as int8 per block of 32 and each block's scale, as the int8 kernels take it.
    public static func quantizeActivations(_ x: [Float]) -> (codes: [Int8], scales: [Float]) {
        var codes = [Int8](repeating: 0, count: x.count)
        var scales = [Float](repeating: 0, count: x.count / activationBlock)
        codes.withUnsafeMutableBufferPointer { q in
            scales.withUnsafeMutableBufferPointer {
                vlq_quantize_activations(x, x.count, q.baseAddress!, $0.baseAddress!)
            }
        }
        return (codes, scales)
    }

    /// `quantized` with x as int8 per block of 32, quantized once for every row; q4's bias term takes
    /// the float x's group sums, so only the scale term sees x's rounding.
    static func quantizedInt8(
        _ layout: QuantizedLayout, _ data: UnsafeRawPointer,
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) {
        let (columns, group) = (layout.columns, layout.groupSize)
        let scales = (data + layout.scalesOffset).assumingMemoryBound(to: UInt16.self)
        let (xq, blockScales) = quantizeActivations(Array(UnsafeBufferPointer(start: x, count: columns)))
        var sums = [Float](repeating: 0, count: layout.encoding == .q8 ? 0 : layout.groupsPerRow)
        if !sums.isEmpty { sums.withUnsafeMutableBufferPointer { vlq_group_sums(x, columns, group, $0.baseAddress!) } }
        xq.withUnsafeBufferPointer { q in
            blockScales.withUnsafeBufferPointer { d in
                sums.withUnsafeBufferPointer { s in
                    let (xq, xs) = (q.baseAddress!, d.baseAddress!)
                    if layout.encoding == .q8 {
                        let codes = data.assumingMemoryBound(to: Int8.self)
                        splitRows(layout.rows) { range in
                            vlq_matvec_q8_a8(
                                codes, scales, columns, group, xq, xs, y, range.lowerBound, range.upperBound)
                        }
                        return
                    }
                    let codes = data.assumingMemoryBound(to: UInt8.self)
                    let biases = layout.biasesOffset.map { (data + $0).assumingMemoryBound(to: UInt16.self) }
                    splitRows(layout.rows) { range in
                        vlq_matvec_q4_a8(
                            codes, scales, biases, columns, group, xq, xs, s.baseAddress!, y, range.lowerBound,
                            range.upperBound)
                    }
                }
            }
        }
    }

    nonisolated(unsafe) private static var exactFallbackNoted = false

    /// Said once per process: layers whose groups do not split into blocks of 32 keep f32 activations.
    static func noteExactFallback(group: Int) {
        guard !exactFallbackNoted else { return }
        exactFallbackNoted = true
        let line =
            "vlq: int8 activations need groups of a multiple of \(activationBlock); tensors with groups of "
            + "\(group) (and any others like them) use f32 activations\n"
        _ = line.withCString { write(2, $0, strlen($0)) }
    }
}
