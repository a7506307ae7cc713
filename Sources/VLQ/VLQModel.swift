// VLQ: Yi-VL as a library.
//
// Open a `.vlq` bundle (memory-mapped) or a Hugging Face Yi-VL folder, then ask about an image:
//
//     let model = try VLQModel(contentsOf: "yi-vl-6b-q4.vlq")
//     for try await piece in model.answer(image: "cat.jpg", question: "What is in the picture?") {
//         print(piece, terminator: "")
//     }
//
// or hold a conversation about one image, whose earlier turns stay in the model's key/value cache so
// that each follow-up runs only its new tokens:
//
//     let chat = try model.chat(image: "cat.jpg")
//     let first = try await chat.ask("What is in the picture?")
//     for try await piece in chat.send("What colour is it?") { print(piece, terminator: "") }
//
// Answers stream as `String` pieces once they are final (text that could still become the stop string
// `###` is held back). Cancelling the task that iterates stops generation before the next token.
// All work on one model runs one step at a time (`ModelExecutor`): sessions and one-shot answers may
// be used from any task, concurrently, and take turns on the engine. See Sources/VLQ/README.md.

import Imaging
import VLQCore
import YiVL

/// A Yi-VL model opened for answering questions about images.
///
/// Opening maps the weights; nothing is read into memory until the first answer needs it. A model is
/// `Sendable`: share one between tasks and sessions; their engine work is serialised.
public final class VLQModel: Sendable {
    /// The bundle or folder the model was opened from.
    public let path: String
    /// Positions the model attends over (`max_position_embeddings`): system prompt, image, every turn
    /// of a conversation and its answers together. A turn that would pass it is refused.
    public var contextLength: Int { engine.config.language.maxPositions }
    /// Positions one image takes in the context (1024 for Yi-VL's 448-pixel tower).
    public var imageTokenCount: Int { engine.imageTokenCount() }
    /// The side of the square the vision tower takes, in pixels (448 for Yi-VL): images are resized to it,
    /// and `VLQImage(pixelValues:)` holds 3 x `imageSize` x `imageSize` values.
    public var imageSize: Int { engine.config.vision.imageSize }
    /// The system prompt a chat uses unless given another (the model's own, from its bundle).
    public var systemPrompt: String { engine.config.systemPrompt }

    let engine: YiVLEngine
    let executor = ModelExecutor()

    /// Positions a first turn's prompt takes (system prompt, image and question) before its answer: the
    /// answer has `contextLength` minus this, which a caller can check before any work.
    public func promptLength(question: String, system: String? = nil) -> Int {
        let prompt = engine.prompt(question: question, system: system)
        return engine.imageEnd(of: prompt) + prompt.after.count
    }

    /// Opens a `.vlq` bundle or a Hugging Face Yi-VL folder; throws a `VLQError` naming what is wrong.
    public init(contentsOf path: String) throws {
        self.path = path
        engine = try YiVLEngine.open(path)
    }

    /// A conversation about `image`. The image is decoded and preprocessed now, so that an unreadable
    /// file fails here; `system` replaces the model's system prompt.
    public func chat(image: VLQImage, system: String? = nil) throws -> ChatSession {
        let conversation = Conversation(engine: engine, image: image, system: system)
        try conversation.loadPixels()
        return ChatSession(executor: executor, conversation: conversation)
    }

    /// A conversation about the PNG or JPEG file at `path` (see `chat(image:system:)`).
    public func chat(image path: String, system: String? = nil) throws -> ChatSession {
        try chat(image: VLQImage(contentsOf: path), system: system)
    }

    /// One question about `image`, answered as a stream of text pieces: the first turn of a fresh chat.
    /// Nothing runs until the reply is iterated (or its `turn` awaited); errors, an unreadable image
    /// included, are thrown from there.
    public func answer(
        image: VLQImage, question: String, system: String? = nil,
        options: GenerationOptions = GenerationOptions()
    ) -> ChatReply {
        let conversation = Conversation(engine: engine, image: image, system: system)
        return ChatSession(executor: executor, conversation: conversation).send(question, options: options)
    }

    /// One question about the PNG or JPEG file at `path` (see `answer(image:question:system:options:)`).
    public func answer(
        image path: String, question: String, system: String? = nil,
        options: GenerationOptions = GenerationOptions()
    ) -> ChatReply {
        answer(image: VLQImage(contentsOf: path), question: question, system: system, options: options)
    }
}

/// What the library throws: a one-line reason, naming the file it is about (the model, an image).
public typealias VLQError = VLQCore.VLQError

/// How an answer is generated.
public struct GenerationOptions: Sendable, Equatable {
    /// The most tokens one answer may take (fewer when the context runs out first).
    public var maxTokens: Int
    /// 0 picks the most likely token (greedy, reproducible); above 0 samples at that temperature.
    public var temperature: Float
    /// Seeds sampling, so that a sampled answer can be reproduced.
    public var seed: UInt64

    /// Yi-VL's own command line answers with up to 512 tokens.
    public init(maxTokens: Int = 512, temperature: Float = 0, seed: UInt64 = 0) {
        self.maxTokens = maxTokens
        self.temperature = temperature
        self.seed = seed
    }
}

/// An image to ask about: a file, encoded bytes, or RGB pixels. It is resized and normalised as
/// Yi-VL's preprocessing does (padded to a square, bicubic resize, CLIP normalisation).
public struct VLQImage: Sendable {
    enum Source: Sendable {
        case file(String)
        case encoded([UInt8], name: String)
        case rgb(width: Int, height: Int, pixels: [UInt8])
        case pixelValues([Float])
    }

    let source: Source

    /// A PNG or JPEG file.
    public init(contentsOf path: String) { source = .file(path) }

    /// PNG or JPEG bytes in memory; `name` labels errors.
    public init(encoded bytes: [UInt8], name: String = "image") { source = .encoded(bytes, name: name) }

    /// Interleaved 8-bit RGB pixels, row by row: `width * height * 3` bytes.
    public init(width: Int, height: Int, rgb pixels: [UInt8]) {
        source = .rgb(width: width, height: height, pixels: pixels)
    }

    /// Pixel values as the vision tower takes them, already resized and normalised: 3 x `imageSize` x
    /// `imageSize` floats, channel by channel (e.g. a reference implementation's, to compare answers).
    public init(pixelValues: [Float]) { source = .pixelValues(pixelValues) }

    /// The pixel values the vision tower takes.
    func pixelValues(_ preprocessing: ImagePreprocessing) throws -> [Float] {
        switch source {
        case .file(let path):
            return try preprocessing.pixelValues(path: path)
        case .encoded(let bytes, let name):
            let image = try bytes.withUnsafeBytes { try ImageDecoder.decode($0, source: name) }
            return try preprocessing.pixelValues(image, source: name)
        case .rgb(let width, let height, let pixels):
            let (area, overflow) = width.multipliedReportingOverflow(by: height)
            guard width > 0, height > 0, !overflow, area <= Int(ImageDecoder.maxPixels), pixels.count == area * 3 else {
                throw VLQError(
                    ImageError.pixelCountMismatch, "image",
                    "\(pixels.count) bytes are not \(width)x\(height) RGB pixels")
            }
            return try preprocessing.pixelValues(RGBImage(width: width, height: height, pixels: pixels))
        case .pixelValues(let values):
            return values
        }
    }
}

/// Runs a model's engine work one step at a time. The engine and the caches are not thread-safe; an
/// actor lets waiting sessions suspend instead of blocking a thread. Steps are short (one token, or a
/// turn's prefill), so sessions sharing a model interleave token by token.
actor ModelExecutor {
    func run<T: Sendable>(_ body: @Sendable () throws -> T) rethrows -> T { try body() }
}
