import Numerics
import VLQCore

/// The engine's one entry point: `forward(_:capture:)` runs an input through the stages it needs and
/// returns the ones asked for. Everything that runs the model (answers, chat turns, logits dumps,
/// calibration, reference runs, verification, bench) goes through it.
extension YiVLEngine {
    /// What `forward` runs the model on, and the key/value cache the sequence goes into.
    public struct ForwardInput {
        enum Content {
            case image(pixels: [Float], prompt: Prompt)
            case imageFeatures(projected: [Float], prompt: Prompt)
            case pixels([Float])
            case tokens([Int])
            case embeddings([Float])
        }

        let content: Content
        /// The cache the sequence continues; nil: a fresh one holding the sequence and `reserve` more positions.
        let cache: YiVLModel.KVCache?
        let reserve: Int

        /// Pixel values [3, S, S] and a prompt: the vision tower, the projector, and the decoder over the
        /// prompt with the image features spliced in at its placeholder.
        public static func image(
            _ pixels: [Float], prompt: Prompt, continuing cache: YiVLModel.KVCache? = nil, reserving: Int = 0
        ) -> ForwardInput {
            ForwardInput(content: .image(pixels: pixels, prompt: prompt), cache: cache, reserve: reserving)
        }

        /// Projected image features (an earlier forward's `projectorOutput`) spliced into a prompt: the
        /// decoder alone, the image stages not run again.
        public static func imageFeatures(
            _ projected: [Float], prompt: Prompt, continuing cache: YiVLModel.KVCache? = nil, reserving: Int = 0
        ) -> ForwardInput {
            ForwardInput(
                content: .imageFeatures(projected: projected, prompt: prompt), cache: cache, reserve: reserving)
        }

        /// Pixel values through the vision tower alone, and the projector when its output is captured.
        public static func pixels(_ pixels: [Float]) -> ForwardInput {
            ForwardInput(content: .pixels(pixels), cache: nil, reserve: 0)
        }

        /// Token ids, continuing `cache` (a decoding step, a chat's next question) or from position 0.
        public static func tokens(
            _ ids: [Int], continuing cache: YiVLModel.KVCache? = nil, reserving: Int = 0
        ) -> ForwardInput {
            ForwardInput(content: .tokens(ids), cache: cache, reserve: reserving)
        }

        /// Embedding rows [rows, hidden], continuing `cache` or from position 0.
        public static func embeddings(
            _ rows: [Float], continuing cache: YiVLModel.KVCache? = nil, reserving: Int = 0
        ) -> ForwardInput {
            ForwardInput(content: .embeddings(rows), cache: cache, reserve: reserving)
        }
    }

    /// The stages a forward pass returns; the others are computed (as far as the input goes) and dropped.
    public struct Capture {
        /// The vision tower's features [patches, vision hidden] (the selected hidden state).
        public var visionFeatures: Bool
        /// The projector's output [patches, hidden]: the image's rows of the spliced sequence.
        public var projectorOutput: Bool
        /// The hidden state after every vision layer that runs.
        public var visionLayers: Bool
        /// The hidden state after every decoder layer.
        public var decoderLayers: Bool
        /// The final-norm hidden state of every position of the input.
        public var hidden: Bool
        /// Logit rows from this position of the input's sequence to its end (0: every position), as one
        /// product through the head.
        public var logitsFrom: Int?
        /// The last position's logits alone, as a decoding step computes them: one row through the head,
        /// which takes the matrix-vector path (its bits may differ from that row of a larger product).
        public var lastLogits: Bool
        /// Sees the input of every Linear the pass runs (calibration statistics).
        public var observer: LinearInputObserver?

        public init(
            visionFeatures: Bool = false, projectorOutput: Bool = false, visionLayers: Bool = false,
            decoderLayers: Bool = false, hidden: Bool = false, logitsFrom: Int? = nil, lastLogits: Bool = false,
            observer: LinearInputObserver? = nil
        ) {
            self.visionFeatures = visionFeatures
            self.projectorOutput = projectorOutput
            self.visionLayers = visionLayers
            self.decoderLayers = decoderLayers
            self.hidden = hidden
            self.logitsFrom = logitsFrom
            self.lastLogits = lastLogits
            self.observer = observer
        }
    }

    /// What a forward pass returns: the captured stages (empty when not captured), and the cache.
    public struct ForwardOutput {
        public var visionFeatures: [Float] = []
        public var projectorOutput: [Float] = []
        public var visionLayers: [[Float]] = []
        public var decoderLayers: [[Float]] = []
        public var hidden: [Float] = []
        /// Rows [positions - logitsFrom, vocab].
        public var logits: [Float] = []
        /// [vocab]
        public var lastLogits: [Float] = []
        /// Positions the decoder ran: the input's sequence (0 when only the image stages ran).
        public var positions = 0
        /// The cache holding the sequence, to continue from (nil when only the image stages ran).
        public var cache: YiVLModel.KVCache?
    }

    /// Runs `input` through the model, returning the stages `capture` asks for. A sequence input goes
    /// into `input`'s cache, or a fresh one sized to it plus the positions reserved.
    public func forward(_ input: ForwardInput, capture: Capture = Capture()) throws -> ForwardOutput {
        let previousObserver = model.observer
        model.observer = capture.observer
        defer { model.observer = previousObserver }
        // Prefill's panel buffers (StoredWeight, up to ~50 MB) are freed after each pass: decode steps
        // use none, and a resident one would add to the peak that decoding's resident weights set.
        defer { PanelBuffers.shared.releaseIdle() }
        var output = ForwardOutput()
        let embeddings: [Float]
        switch input.content {
        case .pixels(let pixels):
            let features = try imageStages(pixels, capture: capture, into: &output)
            if capture.projectorOutput { output.projectorOutput = try model.project(features) }
            return output
        case .image(let pixels, let prompt):
            let features = try imageStages(pixels, capture: capture, into: &output)
            let projected = try model.project(features)
            if capture.projectorOutput { output.projectorOutput = projected }
            embeddings = try splice(projected, into: prompt)
        case .imageFeatures(let projected, let prompt):
            embeddings = try splice(projected, into: prompt)
        case .tokens(let ids):
            embeddings = try model.embed(ids)
        case .embeddings(let rows):
            embeddings = rows
        }
        try decoderStages(embeddings, input: input, capture: capture, into: &output)
        return output
    }

    /// The vision tower, its features and layer states captured as asked.
    private func imageStages(_ pixels: [Float], capture: Capture, into output: inout ForwardOutput) throws -> [Float] {
        var layers: [[Float]] = []
        let features = try model.visionFeatures(
            pixels: pixels, layerOutputs: capture.visionLayers ? { layers.append($0) } : nil)
        output.visionLayers = layers
        if capture.visionFeatures { output.visionFeatures = features }
        return features
    }

    /// The prompt's embeddings with the projected image rows at the placeholder.
    private func splice(_ projected: [Float], into prompt: Prompt) throws -> [Float] {
        var embeddings = try model.embed(prompt.before)
        embeddings += projected
        embeddings += try model.embed(prompt.after)
        return embeddings
    }

    /// The decoder over `embeddings` and the head, captured as asked.
    private func decoderStages(
        _ embeddings: [Float], input: ForwardInput, capture: Capture, into output: inout ForwardOutput
    ) throws {
        let d = config.language.hiddenSize
        let positions = embeddings.count / d
        let cache = input.cache ?? model.makeCache(capacity: positions + input.reserve)
        var layers: [[Float]] = []
        let hidden = try model.decode(
            embeddings, cache: cache, layerOutputs: capture.decoderLayers ? { layers.append($0) } : nil)
        output.decoderLayers = layers
        output.positions = positions
        output.cache = cache
        if capture.hidden { output.hidden = hidden }
        if let from = capture.logitsFrom {
            output.logits = try model.logits(from == 0 ? hidden : Array(hidden[(from * d)...]))
        }
        if capture.lastLogits { output.lastLogits = try model.logits(Array(hidden.suffix(d))) }
    }
}
