import VLQCore
#if canImport(Glibc)
import Glibc
#endif

/// Sees the input of every Linear layer as the forward pass runs (calibration statistics).
public protocol LinearInputObserver: AnyObject {
    func observe(linear weightName: String, input: UnsafePointer<Float>, rows: Int, columns: Int)
}

/// The Yi-VL network in fp32: CLIP vision tower, projector, Yi language model.
public final class YiVLModel: @unchecked Sendable {
    public let config: EngineConfig
    public let weights: WeightStore
    public weak var observer: LinearInputObserver?

    public init(config: EngineConfig, weights: WeightStore) {
        self.config = config
        self.weights = weights
    }

    /// out[rows, n] = x[rows, k] W^T + b for the Linear named `prefix` (`prefix.weight`, `prefix.bias`).
    func linear(_ prefix: String, _ x: UnsafePointer<Float>, rows: Int, bias: Bool, into out: UnsafeMutablePointer<Float>) throws {
        let weightName = prefix + ".weight"
        let shape = try weights.shape(weightName)
        guard shape.count == 2 else { throw VLQError(nil, "weight \(weightName) is not a matrix") }
        observer?.observe(linear: weightName, input: x, rows: rows, columns: shape[1])
        if rows == 1, try weights.matrixVector(weightName, x, into: out) {
            if bias {
                try weights.withFloats(prefix + ".bias") { b in Kernels.add(out, b.baseAddress!, count: shape[0]) }
            }
            return
        }
        try weights.withFloats(weightName) { w in
            if bias {
                try weights.withFloats(prefix + ".bias") { b in
                    Kernels.linear(x, rows: rows, inputs: shape[1], weight: w.baseAddress!, outputs: shape[0], bias: b.baseAddress!, into: out)
                }
            } else {
                Kernels.linear(x, rows: rows, inputs: shape[1], weight: w.baseAddress!, outputs: shape[0], bias: nil, into: out)
            }
        }
    }

    func layerNorm(_ prefix: String, _ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float) throws {
        try weights.withFloats(prefix + ".weight") { w in
            try weights.withFloats(prefix + ".bias") { b in
                Kernels.layerNorm(x, rows: rows, cols: cols, weight: w.baseAddress!, bias: b.baseAddress!, eps: eps)
            }
        }
    }

    // MARK: Vision tower

    /// Image features [patches, hidden] from pixel values [3, S, S]: the selected hidden state of the
    /// CLIP encoder with the class token dropped. `layerOutputs`, if given, receives every layer's output.
    public func visionFeatures(pixels: [Float], layerOutputs: (([Float]) -> Void)? = nil) throws -> [Float] {
        let v = config.vision
        let d = v.hiddenSize, p = v.patchSize, side = v.patchesPerSide, n = v.patchCount + 1
        guard pixels.count == v.channels * v.imageSize * v.imageSize else {
            throw VLQError(nil, "pixel values hold \(pixels.count) floats, the tower takes \(v.channels)x\(v.imageSize)x\(v.imageSize)")
        }
        // Patch embedding as one GEMM: each patch flattened in the conv weight's (channel, row, col) order.
        let patchSize = v.channels * p * p
        let patches = FloatBuffer(v.patchCount * patchSize)
        for py in 0..<side {
            for px in 0..<side {
                let base = (py * side + px) * patchSize
                for c in 0..<v.channels {
                    for i in 0..<p {
                        let src = (c * v.imageSize + py * p + i) * v.imageSize + px * p
                        for j in 0..<p { patches.pointer[base + (c * p + i) * p + j] = pixels[src + j] }
                    }
                }
            }
        }
        let x = FloatBuffer(n * d)
        try weights.withFloats("vision_model.embeddings.patch_embedding.weight") { w in
            Kernels.linear(patches.pointer, rows: v.patchCount, inputs: patchSize, weight: w.baseAddress!, outputs: d, bias: nil,
                           into: x.pointer + d)
        }
        try weights.withFloats("vision_model.embeddings.class_embedding") { c in
            x.pointer.update(from: c.baseAddress!, count: d)
        }
        try weights.withFloats("vision_model.embeddings.position_embedding.weight") { pos in
            Kernels.add(x.pointer, pos.baseAddress!, count: n * d)
        }
        try layerNorm("vision_model.pre_layrnorm", x.pointer, rows: n, cols: d, eps: v.layerNormEps)

        let h = FloatBuffer(n * d), qkv = FloatBuffer(3 * n * d), attended = FloatBuffer(n * d), mlp = FloatBuffer(n * v.intermediateSize)
        for layer in 0..<v.selectedHiddenState {
            let pre = "vision_model.encoder.layers.\(layer)."
            h.pointer.update(from: x.pointer, count: n * d)
            try layerNorm(pre + "layer_norm1", h.pointer, rows: n, cols: d, eps: v.layerNormEps)
            let q = qkv.pointer, k = qkv.pointer + n * d, val = qkv.pointer + 2 * n * d
            try linear(pre + "self_attn.q_proj", h.pointer, rows: n, bias: true, into: q)
            try linear(pre + "self_attn.k_proj", h.pointer, rows: n, bias: true, into: k)
            try linear(pre + "self_attn.v_proj", h.pointer, rows: n, bias: true, into: val)
            Kernels.attention(q: q, qStride: d, k: k, kStride: d, v: val, vStride: d, queries: n, keys: n, heads: v.heads,
                              kvHeads: v.heads, headDim: v.headDim, scale: 1 / Float(v.headDim).squareRoot(), causal: false,
                              firstQueryPosition: 0, out: attended.pointer, outStride: d)
            try linear(pre + "self_attn.out_proj", attended.pointer, rows: n, bias: true, into: h.pointer)
            Kernels.add(x.pointer, h.pointer, count: n * d)
            h.pointer.update(from: x.pointer, count: n * d)
            try layerNorm(pre + "layer_norm2", h.pointer, rows: n, cols: d, eps: v.layerNormEps)
            try linear(pre + "mlp.fc1", h.pointer, rows: n, bias: true, into: mlp.pointer)
            if v.quickGELU {
                Kernels.quickGELU(mlp.pointer, count: n * v.intermediateSize)
            } else {
                Kernels.gelu(mlp.pointer, count: n * v.intermediateSize)
            }
            try linear(pre + "mlp.fc2", mlp.pointer, rows: n, bias: true, into: h.pointer)
            Kernels.add(x.pointer, h.pointer, count: n * d)
            layerOutputs?(x.array)
        }
        let skip = v.keepClassToken ? 0 : 1
        return Array(UnsafeBufferPointer(start: x.pointer + skip * d, count: (n - skip) * d))
    }

    // MARK: Projector

    /// mlp2x_gelu_Norm: Linear, LayerNorm, GELU, Linear, LayerNorm.
    public func project(_ features: [Float]) throws -> [Float] {
        let input = config.projectorInput, hidden = config.language.hiddenSize
        guard features.count % input == 0 else { throw VLQError(nil, "vision features are not a multiple of \(input)") }
        let rows = features.count / input
        let a = FloatBuffer(rows * hidden), b = FloatBuffer(rows * hidden)
        try features.withUnsafeBufferPointer { f in
            try linear("model.mm_projector.0", f.baseAddress!, rows: rows, bias: true, into: a.pointer)
        }
        try layerNorm("model.mm_projector.1", a.pointer, rows: rows, cols: hidden, eps: config.projectorEps)
        Kernels.gelu(a.pointer, count: rows * hidden)
        try linear("model.mm_projector.3", a.pointer, rows: rows, bias: true, into: b.pointer)
        try layerNorm("model.mm_projector.4", b.pointer, rows: rows, cols: hidden, eps: config.projectorEps)
        return b.array
    }

    // MARK: Language model

    /// Keys (after RoPE) and values of every layer for the positions seen so far.
    public final class KVCache {
        public let capacity: Int
        public private(set) var length = 0
        let width: Int
        var keys: [FloatBuffer]
        var values: [FloatBuffer]

        init(layers: Int, capacity: Int, width: Int) {
            self.capacity = capacity
            self.width = width
            keys = (0..<layers).map { _ in FloatBuffer(capacity * width) }
            values = (0..<layers).map { _ in FloatBuffer(capacity * width) }
        }

        func advance(by n: Int) { length += n }
    }

    public func makeCache(capacity: Int) -> KVCache {
        let l = config.language
        return KVCache(layers: l.layers, capacity: capacity, width: l.kvHeads * l.headDim)
    }

    /// Embedding rows for token ids.
    public func embed(_ ids: [Int]) throws -> [Float] {
        let l = config.language
        var out = [Float](repeating: 0, count: ids.count * l.hiddenSize)
        try weights.withFloats("model.embed_tokens.weight") { table in
            for (i, id) in ids.enumerated() {
                guard id >= 0, id < l.vocabSize else { throw VLQError(nil, "token id \(id) is outside the vocabulary of \(l.vocabSize)") }
                for c in 0..<l.hiddenSize { out[i * l.hiddenSize + c] = table[id * l.hiddenSize + c] }
            }
        }
        return out
    }

    /// RoPE as transformers' Llama computes it: inverse frequencies and angles in float32, the
    /// rotate-half layout (pairs i and i + d/2).
    func applyRoPE(_ x: UnsafeMutablePointer<Float>, rows: Int, stride: Int, heads: Int, firstPosition: Int) {
        let hd = config.language.headDim, half = hd / 2
        let theta = Float(config.language.ropeTheta)
        var cosines = [Float](repeating: 0, count: half), sines = [Float](repeating: 0, count: half)
        for r in 0..<rows {
            let position = Float(firstPosition + r)
            for i in 0..<half {
                let inverseFrequency = 1 / powf(theta, Float(2 * i) / Float(hd))
                let angle = position * inverseFrequency
                cosines[i] = Float(cos(Double(angle)))
                sines[i] = Float(sin(Double(angle)))
            }
            for h in 0..<heads {
                let v = x + r * stride + h * hd
                for i in 0..<half {
                    let a = v[i], b = v[i + half]
                    v[i] = a * cosines[i] - b * sines[i]
                    v[i + half] = b * cosines[i] + a * sines[i]
                }
            }
        }
    }

    /// Runs the decoder over `embeddings` [rows, hidden] that continue the cached sequence; returns the
    /// final-norm hidden states. `layerOutputs` receives every layer's output.
    public func decode(_ embeddings: [Float], cache: KVCache, layerOutputs: (([Float]) -> Void)? = nil) throws -> [Float] {
        let l = config.language
        let d = l.hiddenSize, rows = embeddings.count / d, kvWidth = l.kvHeads * l.headDim
        let start = cache.length
        guard start + rows <= cache.capacity else {
            throw VLQError(nil, "sequence of \(start + rows) positions exceeds the cache of \(cache.capacity)")
        }
        let x = FloatBuffer(embeddings)
        let h = FloatBuffer(rows * d), q = FloatBuffer(rows * l.heads * l.headDim), attended = FloatBuffer(rows * l.heads * l.headDim)
        let gate = FloatBuffer(rows * l.intermediateSize), up = FloatBuffer(rows * l.intermediateSize)
        for layer in 0..<l.layers {
            let pre = "model.layers.\(layer)."
            try weights.withFloats(pre + "input_layernorm.weight") { w in
                Kernels.rmsNorm(x.pointer, rows: rows, cols: d, weight: w.baseAddress!, eps: l.rmsNormEps, into: h.pointer)
            }
            let keys = cache.keys[layer].pointer + start * kvWidth, values = cache.values[layer].pointer + start * kvWidth
            try linear(pre + "self_attn.q_proj", h.pointer, rows: rows, bias: false, into: q.pointer)
            try linear(pre + "self_attn.k_proj", h.pointer, rows: rows, bias: false, into: keys)
            try linear(pre + "self_attn.v_proj", h.pointer, rows: rows, bias: false, into: values)
            applyRoPE(q.pointer, rows: rows, stride: l.heads * l.headDim, heads: l.heads, firstPosition: start)
            applyRoPE(keys, rows: rows, stride: kvWidth, heads: l.kvHeads, firstPosition: start)
            Kernels.attention(q: q.pointer, qStride: l.heads * l.headDim, k: cache.keys[layer].pointer, kStride: kvWidth,
                              v: cache.values[layer].pointer, vStride: kvWidth, queries: rows, keys: start + rows,
                              heads: l.heads, kvHeads: l.kvHeads, headDim: l.headDim, scale: 1 / Float(l.headDim).squareRoot(),
                              causal: true, firstQueryPosition: start, out: attended.pointer, outStride: l.heads * l.headDim)
            try linear(pre + "self_attn.o_proj", attended.pointer, rows: rows, bias: false, into: h.pointer)
            Kernels.add(x.pointer, h.pointer, count: rows * d)
            try weights.withFloats(pre + "post_attention_layernorm.weight") { w in
                Kernels.rmsNorm(x.pointer, rows: rows, cols: d, weight: w.baseAddress!, eps: l.rmsNormEps, into: h.pointer)
            }
            try linear(pre + "mlp.gate_proj", h.pointer, rows: rows, bias: false, into: gate.pointer)
            try linear(pre + "mlp.up_proj", h.pointer, rows: rows, bias: false, into: up.pointer)
            Kernels.swiGLU(gate.pointer, up.pointer, count: rows * l.intermediateSize)
            try linear(pre + "mlp.down_proj", gate.pointer, rows: rows, bias: false, into: h.pointer)
            Kernels.add(x.pointer, h.pointer, count: rows * d)
            layerOutputs?(x.array)
        }
        cache.advance(by: rows)
        try weights.withFloats("model.norm.weight") { w in
            Kernels.rmsNorm(x.pointer, rows: rows, cols: d, weight: w.baseAddress!, eps: l.rmsNormEps, into: h.pointer)
        }
        return h.array
    }

    /// Logits [rows, vocab] of final hidden states [rows, hidden].
    public func logits(_ hidden: [Float]) throws -> [Float] {
        let l = config.language
        let rows = hidden.count / l.hiddenSize
        let out = FloatBuffer(rows * l.vocabSize)
        let head = l.tiedEmbeddings ? "model.embed_tokens" : "lm_head"
        try hidden.withUnsafeBufferPointer { h in
            try linear(head, h.baseAddress!, rows: rows, bias: false, into: out.pointer)
        }
        return out.array
    }
}
