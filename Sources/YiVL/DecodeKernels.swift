import CKernels
import Numerics
import VLQFormat

/// y = W x for one input row, straight from 16-bit or quantized storage (CKernels): decoding streams
/// every weight once per token, so these read the stored bytes at the memory's pace instead of an f32
/// copy four (q8), eight (q4) or nine (q3) times larger. Exact for the stored values up to float summation order:
/// the weights are unpacked to f32 and multiplied by float FMA, activations stay f32; each group's scale
/// multiplies its partial sum once (q4, q3: scale * sum(n x) + bias * sum(x)). Rows are split over the
/// cores (Kernels.parallelRows).
public enum DecodeKernels {
    /// Which kernels run on this machine: "avx2", "neon" or "scalar".
    public static var instructionSet: String { String(cString: vlq_kernels_isa()) }

    /// Tests: runs the portable (scalar) kernels instead of the CPU's vector ones, or goes back to them.
    public static func usePortableKernels(_ portable: Bool) { vlq_kernels_use_portable(portable ? 1 : 0) }

    /// Rows per task below which splitting costs more than it saves.
    static let minimumRowsPerTask = 16

    /// `weights` holds `rows` x `columns` bf16 or f16 values, row-major (little-endian bit patterns).
    public static func halves(
        _ weights: UnsafeRawPointer, isBF16: Bool, rows: Int, columns: Int,
        _ x: UnsafePointer<Float>, into y: UnsafeMutablePointer<Float>
    ) {
        let w = weights.assumingMemoryBound(to: UInt16.self)
        Kernels.parallelRows(rows, minimumPerTask: minimumRowsPerTask) { range in
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
        if layout.encoding == .q8 {
            let codes = data.assumingMemoryBound(to: Int8.self)
            Kernels.parallelRows(layout.rows, minimumPerTask: minimumRowsPerTask) { range in
                vlq_matvec_q8(codes, scales, columns, group, x, y, range.lowerBound, range.upperBound)
            }
            return
        }
        // Each group's sum of x is the same for every row: computed once.
        var sums = [Float](repeating: 0, count: layout.groupsPerRow)
        sums.withUnsafeMutableBufferPointer { vlq_group_sums(x, columns, group, $0.baseAddress!) }
        let codes = data.assumingMemoryBound(to: UInt8.self)
        let biases = layout.biasesOffset.map { (data + $0).assumingMemoryBound(to: UInt16.self) }
        sums.withUnsafeBufferPointer { sums in
            let s = sums.baseAddress!
            Kernels.parallelRows(layout.rows, minimumPerTask: minimumRowsPerTask) { range in
                if layout.encoding == .q3 {
                    vlq_matvec_q3(codes, scales, biases, columns, group, x, s, y, range.lowerBound, range.upperBound)
                } else {
                    vlq_matvec_q4(codes, scales, biases, columns, group, x, s, y, range.lowerBound, range.upperBound)
                }
            }
        }
    }
}
