import Numerics
import VLQCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Sees the input of every Linear layer as the forward pass runs (calibration statistics).
public protocol LinearInputObserver: AnyObject {
    func observe(linear: Linear, input: UnsafePointer<Float>, rows: Int)
}

/// The Yi-VL network in fp32: CLIP vision tower, projector, Yi language model, run over the tensor
/// handles of its `ModelDefinition`.
public final class YiVLModel: @unchecked Sendable {
    public let config: EngineConfig
    public let weights: WeightStore
    public var definition: ModelDefinition { weights.definition }
    weak var observer: LinearInputObserver?

    public init(weights: WeightStore) {
        self.config = weights.definition.config
        self.weights = weights
    }

    /// out[rows, outputs] = x[rows, inputs] W^T + b. `language`: a layer of the language model, whose
    /// rows verification may run one at a time (`DecodeActivations.onEveryLanguageRow`).
    func linear(
        _ layer: Linear, _ x: UnsafePointer<Float>, rows: Int, into out: UnsafeMutablePointer<Float>,
        language: Bool = false
    ) {
        observer?.observe(linear: layer, input: x, rows: rows)
        if rowByRow(layer, rows: rows, language: language), weights.matrixVector(layer.weight, x, into: out) {
            for row in 1..<rows {
                _ = weights.matrixVector(layer.weight, x + row * layer.inputs, into: out + row * layer.outputs)
            }
            if let bias = layer.bias {
                weights.withFloats(bias) { b in
                    for row in 0..<rows { Kernels.add(out + row * layer.outputs, b.baseAddress!, count: layer.outputs) }
                }
            }
            return
        }
        withBias(layer) { bias in
            // 16-bit and quantized weights panel by panel, f32 ones (and cached f32 copies) whole.
            if weights.multiplyStored(layer.weight, x, rows: rows, bias: bias, into: out) { return }
            weights.withFloats(layer.weight) { w in
                Kernels.linear(
                    x, rows: rows, inputs: layer.inputs, weight: w.baseAddress!, outputs: layer.outputs, bias: bias,
                    into: out)
            }
        }
    }

    /// Whether the rows go through decode's matrix-vector kernels: one row (a decode step), or every row of
    /// a quantized language-model layer while verification measures int8 activations.
    private func rowByRow(_ layer: Linear, rows: Int, language: Bool) -> Bool {
        if rows == 1 { return true }
        return rows > 1 && language && DecodeActivations.onEveryLanguageRow && weights.isQuantized(layer.weight)
    }

    /// Runs `body` with the layer's bias as f32, or nil when it has none.
    private func withBias(_ layer: Linear, _ body: (UnsafePointer<Float>?) -> Void) {
        guard let bias = layer.bias else { return body(nil) }
        weights.withFloats(bias) { body($0.baseAddress!) }
    }

    func layerNorm(_ norm: LayerNorm, _ x: UnsafeMutablePointer<Float>, rows: Int, cols: Int, eps: Float) {
        weights.withFloats(norm.weight) { w in
            weights.withFloats(norm.bias) { b in
                Kernels.layerNorm(x, rows: rows, cols: cols, weight: w.baseAddress!, bias: b.baseAddress!, eps: eps)
            }
        }
    }

    func rmsNorm(
        _ norm: RMSNorm, _ x: UnsafePointer<Float>, rows: Int, cols: Int, into out: UnsafeMutablePointer<Float>
    ) {
        weights.withFloats(norm.weight) { w in
            Kernels.rmsNorm(
                x, rows: rows, cols: cols, weight: w.baseAddress!, eps: config.language.rmsNormEps, into: out)
        }
    }

    // MARK: Vision tower

    /// Image features [patches, hidden] from pixel values [3, S, S]: the selected hidden state of the
    /// CLIP encoder with the class token dropped. `layerOutputs`, if given, receives every layer's output.
    func visionFeatures(pixels: [Float], layerOutputs: (([Float]) -> Void)? = nil) throws -> [Float] {
        let v = config.vision
        let d = v.hiddenSize, n = v.patchCount + 1
        guard pixels.count == v.channels * v.imageSize * v.imageSize else {
            throw VLQError(
                ModelError.invalidInput,
                nil,
                "pixel values hold \(pixels.count) floats, the tower takes \(v.channels)x\(v.imageSize)x\(v.imageSize)")
        }
        let x = visionEmbeddings(pixels)
        let scratch = VisionScratch(positions: n, width: d, intermediate: v.intermediateSize)
        for layer in definition.usedVisionLayers {
            visionLayer(layer, x, scratch)
            layerOutputs?(x.array)
        }
        let skip = v.keepClassToken ? 0 : 1
        return Array(UnsafeBufferPointer(start: x.pointer + skip * d, count: (n - skip) * d))
    }

    /// The tower's input [patches + 1, hidden]: class token and patch embeddings, plus positions, pre-norm.
    private func visionEmbeddings(_ pixels: [Float]) -> FloatBuffer {
        let v = config.vision
        let d = v.hiddenSize, p = v.patchSize, side = v.patchesPerSide, n = v.patchCount + 1
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
        let tower = definition.vision
        let x = FloatBuffer(n * d)
        if !weights.multiplyStored(
            tower.patchEmbedding, patches.pointer, rows: v.patchCount, bias: nil, into: x.pointer + d)
        {
            weights.withFloats(tower.patchEmbedding) { w in
                Kernels.linear(
                    patches.pointer, rows: v.patchCount, inputs: patchSize, weight: w.baseAddress!, outputs: d,
                    bias: nil, into: x.pointer + d)
            }
        }
        weights.withFloats(tower.classEmbedding) { c in x.pointer.update(from: c.baseAddress!, count: d) }
        weights.withFloats(tower.positionEmbedding) { pos in Kernels.add(x.pointer, pos.baseAddress!, count: n * d) }
        layerNorm(tower.preLayerNorm, x.pointer, rows: n, cols: d, eps: v.layerNormEps)
        return x
    }

    /// Activations one vision layer works in, allocated once per image.
    private struct VisionScratch {
        let h, qkv, attended, mlp: FloatBuffer

        init(positions n: Int, width d: Int, intermediate: Int) {
            h = FloatBuffer(n * d)
            qkv = FloatBuffer(3 * n * d)
            attended = FloatBuffer(n * d)
            mlp = FloatBuffer(n * intermediate)
        }
    }

    /// One CLIP encoder layer over `x` [patches + 1, hidden], in place: pre-norm attention, pre-norm MLP.
    private func visionLayer(_ layer: VisionLayer, _ x: FloatBuffer, _ scratch: VisionScratch) {
        let v = config.vision
        let d = v.hiddenSize, n = v.patchCount + 1
        let h = scratch.h, qkv = scratch.qkv, attended = scratch.attended, mlp = scratch.mlp
        h.pointer.update(from: x.pointer, count: n * d)
        layerNorm(layer.layerNorm1, h.pointer, rows: n, cols: d, eps: v.layerNormEps)
        let q = qkv.pointer, k = qkv.pointer + n * d, val = qkv.pointer + 2 * n * d
        linear(layer.query, h.pointer, rows: n, into: q)
        linear(layer.key, h.pointer, rows: n, into: k)
        linear(layer.value, h.pointer, rows: n, into: val)
        Kernels.attention(
            q: q, qStride: d, k: k, kStride: d, v: val, vStride: d, queries: n, keys: n, heads: v.heads,
            kvHeads: v.heads, headDim: v.headDim, scale: 1 / Float(v.headDim).squareRoot(), causal: false,
            firstQueryPosition: 0, out: attended.pointer, outStride: d)
        linear(layer.output, attended.pointer, rows: n, into: h.pointer)
        Kernels.add(x.pointer, h.pointer, count: n * d)
        h.pointer.update(from: x.pointer, count: n * d)
        layerNorm(layer.layerNorm2, h.pointer, rows: n, cols: d, eps: v.layerNormEps)
        linear(layer.fc1, h.pointer, rows: n, into: mlp.pointer)
        if v.quickGELU {
            Kernels.quickGELU(mlp.pointer, count: n * v.intermediateSize)
        } else {
            Kernels.gelu(mlp.pointer, count: n * v.intermediateSize)
        }
        linear(layer.fc2, mlp.pointer, rows: n, into: h.pointer)
        Kernels.add(x.pointer, h.pointer, count: n * d)
    }

    // MARK: Projector

    /// mlp2x_gelu_Norm: Linear, LayerNorm, GELU, Linear, LayerNorm.
    func project(_ features: [Float]) throws -> [Float] {
        let input = config.projectorInput, hidden = config.language.hiddenSize
        guard features.count % input == 0 else {
            throw VLQError(ModelError.invalidInput, nil, "vision features are not a multiple of \(input)")
        }
        let rows = features.count / input
        let a = FloatBuffer(rows * hidden), b = FloatBuffer(rows * hidden)
        let projector = definition.projector
        features.withUnsafeBufferPointer { f in linear(projector.first, f.baseAddress!, rows: rows, into: a.pointer) }
        layerNorm(projector.firstNorm, a.pointer, rows: rows, cols: hidden, eps: config.projectorEps)
        Kernels.gelu(a.pointer, count: rows * hidden)
        linear(projector.second, a.pointer, rows: rows, into: b.pointer)
        layerNorm(projector.secondNorm, b.pointer, rows: rows, cols: hidden, eps: config.projectorEps)
        return b.array
    }

    // MARK: Language model

    /// Keys (after RoPE) and values of every layer for the positions seen so far.
    public final class KVCache {
        public private(set) var capacity: Int
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

        /// Makes room for `newCapacity` positions, keeping the cached ones: a chat's cache grows turn by
        /// turn instead of holding the model's whole context from the start.
        public func reserve(_ newCapacity: Int) {
            guard newCapacity > capacity else { return }
            func grown(_ old: FloatBuffer) -> FloatBuffer {
                let buffer = FloatBuffer(newCapacity * width)
                buffer.pointer.update(from: old.pointer, count: length * width)
                return buffer
            }
            keys = keys.map(grown)
            values = values.map(grown)
            capacity = newCapacity
        }

        /// Forgets the positions from `newLength` on; the next decode continues from there (a chat
        /// drops generated tokens its transcript re-tokenises differently).
        public func truncate(to newLength: Int) {
            precondition(newLength >= 0 && newLength <= length, "truncating a cache of \(length) to \(newLength)")
            length = newLength
        }
    }

    public func makeCache(capacity: Int) -> KVCache {
        let l = config.language
        return KVCache(layers: l.layers, capacity: capacity, width: l.kvHeads * l.headDim)
    }

    /// Embedding rows for token ids.
    func embed(_ ids: [Int]) throws -> [Float] {
        let l = config.language
        for id in ids where id < 0 || id >= l.vocabSize {
            throw VLQError(
                ModelError.tokenOutOfVocabulary, nil, "token id \(id) is outside the vocabulary of \(l.vocabSize)")
        }
        var out = [Float](repeating: 0, count: ids.count * l.hiddenSize)
        out.withUnsafeMutableBufferPointer { weights.rows(definition.language.embedTokens, ids, into: $0.baseAddress!) }
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
    func decode(
        _ embeddings: [Float], cache: KVCache, layerOutputs: (([Float]) -> Void)? = nil
    ) throws -> [Float] {
        let l = config.language
        let d = l.hiddenSize, rows = embeddings.count / d, kvWidth = l.kvHeads * l.headDim
        let start = cache.length
        guard start + rows <= cache.capacity else {
            throw VLQError(
                ModelError.contextExceeded, nil,
                "sequence of \(start + rows) positions exceeds the cache of \(cache.capacity)")
        }
        let x = FloatBuffer(embeddings)
        let h = FloatBuffer(rows * d), q = FloatBuffer(rows * l.heads * l.headDim),
            attended = FloatBuffer(rows * l.heads * l.headDim)
        let gate = FloatBuffer(rows * l.intermediateSize), up = FloatBuffer(rows * l.intermediateSize)
        for layer in definition.language.layers {
            rmsNorm(layer.inputNorm, x.pointer, rows: rows, cols: d, into: h.pointer)
            let cachedKeys = cache.keys[layer.index].pointer, cachedValues = cache.values[layer.index].pointer
            let keys = cachedKeys + start * kvWidth, values = cachedValues + start * kvWidth
            linear(layer.query, h.pointer, rows: rows, into: q.pointer, language: true)
            linear(layer.key, h.pointer, rows: rows, into: keys, language: true)
            linear(layer.value, h.pointer, rows: rows, into: values, language: true)
            applyRoPE(q.pointer, rows: rows, stride: l.heads * l.headDim, heads: l.heads, firstPosition: start)
            applyRoPE(keys, rows: rows, stride: kvWidth, heads: l.kvHeads, firstPosition: start)
            Kernels.attention(
                q: q.pointer, qStride: l.heads * l.headDim, k: cachedKeys, kStride: kvWidth,
                v: cachedValues, vStride: kvWidth, queries: rows, keys: start + rows,
                heads: l.heads, kvHeads: l.kvHeads, headDim: l.headDim, scale: 1 / Float(l.headDim).squareRoot(),
                causal: true, firstQueryPosition: start, out: attended.pointer, outStride: l.heads * l.headDim)
            linear(layer.output, attended.pointer, rows: rows, into: h.pointer, language: true)
            Kernels.add(x.pointer, h.pointer, count: rows * d)
            rmsNorm(layer.postAttentionNorm, x.pointer, rows: rows, cols: d, into: h.pointer)
            linear(layer.gate, h.pointer, rows: rows, into: gate.pointer, language: true)
            linear(layer.up, h.pointer, rows: rows, into: up.pointer, language: true)
            Kernels.swiGLU(gate.pointer, up.pointer, count: rows * l.intermediateSize)
            linear(layer.down, gate.pointer, rows: rows, into: h.pointer, language: true)
            Kernels.add(x.pointer, h.pointer, count: rows * d)
            layerOutputs?(x.array)
        }
        cache.advance(by: rows)
        rmsNorm(definition.language.norm, x.pointer, rows: rows, cols: d, into: h.pointer)
        return h.array
    }

    /// Logits [rows, vocab] of final hidden states [rows, hidden].
    func logits(_ hidden: [Float]) throws -> [Float] {
        let l = config.language
        let rows = hidden.count / l.hiddenSize
        let out = FloatBuffer(rows * l.vocabSize)
        hidden.withUnsafeBufferPointer { h in
            linear(definition.language.head, h.baseAddress!, rows: rows, into: out.pointer, language: true)
        }
        return out.array
    }
}
