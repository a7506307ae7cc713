import CBLAS

extension Kernels {
    /// Columns `firstOutput ..< firstOutput + count` of y[m, n] = x[m, k] * w[n, k]^T from those rows of
    /// w alone (`panel`, [count, k]): a weight multiplied panel by panel as it is decoded, without an
    /// f32 copy of the whole of it. `y` is the whole output; its row stride is `outputs`.
    public static func linearPanel(
        _ x: UnsafePointer<Float>, rows m: Int, inputs k: Int, panel: UnsafePointer<Float>, count: Int,
        firstOutput: Int, outputs n: Int, into y: UnsafeMutablePointer<Float>
    ) {
        // Computed as y^T = panel * x^T (column-major): with the panel as OpenBLAS's first operand, narrow
        // panels keep its speed on the whole weight (measured at 512 x 4096 x 11008, 2 cores).
        cblas_sgemm(
            CblasColMajor, CblasTrans, CblasNoTrans, Int32(count), Int32(m), Int32(k), 1, panel, Int32(k), x,
            Int32(k), 0, y + firstOutput, Int32(n))
    }
}
