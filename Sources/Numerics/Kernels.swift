import CBLAS
import Dispatch

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The numeric building blocks of the forward pass. Matrices are row-major f32; products go
/// through OpenBLAS, element-wise work accumulates in double where PyTorch's result depends on it.
public enum Kernels {
    /// y[m, n] = x[m, k] * w[n, k]^T (+ bias[n]): a PyTorch Linear with weight [out, in].
    public static func linear(
        _ x: UnsafePointer<Float>, rows m: Int, inputs k: Int, weight w: UnsafePointer<Float>,
        outputs n: Int, bias: UnsafePointer<Float>?, into y: UnsafeMutablePointer<Float>
    ) {
        if m == 1 {
            // Decoding one token is a matrix-vector product; sgemv streams the weights once.
            cblas_sgemv(CblasRowMajor, CblasNoTrans, Int32(n), Int32(k), 1, w, Int32(k), x, 1, 0, y, 1)
        } else {
            cblas_sgemm(
                CblasRowMajor, CblasNoTrans, CblasTrans, Int32(m), Int32(n), Int32(k), 1, x, Int32(k), w, Int32(k), 0,
                y, Int32(n))
        }
        if let bias {
            for r in 0..<m {
                let row = y + r * n
                for c in 0..<n { row[c] += bias[c] }
            }
        }
    }

    public static func layerNorm(
        _ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, weight: UnsafePointer<Float>,
        bias: UnsafePointer<Float>, eps: Float
    ) {
        parallelRows(rows, minimumPerTask: max(1, 65536 / max(cols, 1))) { range in
            for r in range {
                let row = x + r * cols
                var sum = 0.0
                for c in 0..<cols { sum += Double(row[c]) }
                let mean = sum / Double(cols)
                var squares = 0.0
                for c in 0..<cols {
                    let d = Double(row[c]) - mean
                    squares += d * d
                }
                let inv = 1 / (squares / Double(cols) + Double(eps)).squareRoot()
                for c in 0..<cols { row[c] = Float((Double(row[c]) - mean) * inv) * weight[c] + bias[c] }
            }
        }
    }

    /// Llama's RMSNorm: x * rsqrt(mean(x^2) + eps), then times the weight.
    public static func rmsNorm(
        _ x: UnsafePointer<Float>, rows: Int, cols: Int, weight: UnsafePointer<Float>, eps: Float,
        into y: UnsafeMutablePointer<Float>
    ) {
        for r in 0..<rows {
            let row = x + r * cols, out = y + r * cols
            var squares = 0.0
            for c in 0..<cols { squares += Double(row[c]) * Double(row[c]) }
            let inv = Float(1 / (squares / Double(cols) + Double(eps)).squareRoot())
            for c in 0..<cols { out[c] = weight[c] * (row[c] * inv) }
        }
    }

    /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), in float as PyTorch computes it: what Yi-VL's tower
    /// and projector use (not the tanh approximation).
    public static func gelu(_ x: UnsafeMutablePointer<Float>, count: Int) {
        parallelRows(count) { range in
            for i in range {
                let v = x[i]
                x[i] = 0.5 * v * (1 + erff(v * 0.70710678118654752))
            }
        }
    }

    /// OpenAI CLIP's x * sigmoid(1.702 x), for towers whose config says quick_gelu.
    public static func quickGELU(_ x: UnsafeMutablePointer<Float>, count: Int) {
        for i in 0..<count { x[i] = x[i] / (1 + expf(-1.702 * x[i])) }
    }

    /// gate <- silu(gate) * up: Llama's SwiGLU.
    public static func swiGLU(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, count: Int) {
        parallelRows(count) { range in
            for i in range {
                let g = gate[i]
                gate[i] = g / (1 + expf(-g)) * up[i]
            }
        }
    }

    public static func add(_ x: UnsafeMutablePointer<Float>, _ y: UnsafePointer<Float>, count: Int) {
        for i in 0..<count { x[i] += y[i] }
    }

    /// Scaled dot-product attention for every head, written into `out` (row stride `outStride`).
    /// Query i sits at absolute position `firstQueryPosition + i`; with `causal`, it sees keys up to
    /// that position. Keys and values are shared by `heads / kvHeads` query heads (grouped-query).
    ///
    /// Per-head products are small (one dimension is the head size), where OpenBLAS's threading costs
    /// more than it gains; so heads run in parallel, one per core, each with single-threaded BLAS.
    public static func attention(
        q: UnsafePointer<Float>, qStride: Int, k: UnsafePointer<Float>, kStride: Int,
        v: UnsafePointer<Float>, vStride: Int, queries: Int, keys: Int, heads: Int, kvHeads: Int,
        headDim: Int, scale: Float, causal: Bool, firstQueryPosition: Int,
        out: UnsafeMutablePointer<Float>, outStride: Int
    ) {
        let group = heads / kvHeads
        let workers = min(activeProcessors, heads)
        let threads = openblas_get_num_threads()
        // Heads over the cores once there is about a million multiply-adds to share: a decode step (one
        // query) over a long context has that much at 6B shapes (32 heads x 128 x 512 keys), where one
        // thread spent 7 ms per token on 512 keys.
        let parallel = workers > 1 && queries * keys * heads * headDim >= 1 << 20
        if parallel { openblas_set_num_threads(1) }
        defer { if parallel { openblas_set_num_threads(threads) } }
        func run(_ worker: Int, _ count: Int) {
            let scores = UnsafeMutablePointer<Float>.allocate(capacity: queries * keys)
            defer { scores.deallocate() }
            for h in stride(from: worker, to: heads, by: count) {
                let kvh = h / group
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasTrans, Int32(queries), Int32(keys), Int32(headDim), scale,
                    q + h * headDim, Int32(qStride), k + kvh * headDim, Int32(kStride), 0, scores, Int32(keys))
                for i in 0..<queries {
                    let row = scores + i * keys
                    let visible = causal ? min(keys, firstQueryPosition + i + 1) : keys
                    var maximum = -Float.infinity
                    for j in 0..<visible where row[j] > maximum { maximum = row[j] }
                    var sum = 0.0
                    for j in 0..<visible {
                        let e = expf(row[j] - maximum)
                        row[j] = e
                        sum += Double(e)
                    }
                    let inv = Float(1 / sum)
                    for j in 0..<visible { row[j] *= inv }
                    for j in visible..<keys { row[j] = 0 }
                }
                cblas_sgemm(
                    CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(queries), Int32(headDim), Int32(keys), 1,
                    scores, Int32(keys), v + kvh * headDim, Int32(vStride), 0, out + h * headDim, Int32(outStride))
            }
        }
        if parallel {
            concurrently(workers) { run($0, workers) }
        } else {
            run(0, 1)
        }
    }
}
