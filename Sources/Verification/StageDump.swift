import Calibration
import SafeTensors
import VLQCore
import YiVL

/// Where a run's pixel values come from.
public enum PixelSource: Sendable {
    /// A PNG or JPEG file, decoded and preprocessed as the model's config says.
    case image(String)
    /// A safetensors file whose tensor `pixel_values` [3, S, S] (or [1, 3, S, S]) replaces decoding
    /// and preprocessing: a reference run's own input.
    case pixelValuesFile(String)

    /// The pixel values `engine`'s tower takes.
    public func pixelValues(for engine: YiVLEngine) throws -> [Float] {
        switch self {
        case .image(let path):
            return try engine.pixelValues(imagePath: path)
        case .pixelValuesFile(let path):
            let v = engine.config.vision
            return try PixelSource.readPixelValues(path, shape: [v.channels, v.imageSize, v.imageSize])
        }
    }

    /// The tensor `pixel_values` of the safetensors file at `path`, which must be F32 of shape `expected`
    /// (or `[1] + expected`).
    public static func readPixelValues(_ path: String, shape expected: [Int]) throws -> [Float] {
        let file = try SafeTensorsFile(path: path)
        guard let info = file.info("pixel_values") else {
            throw VLQError(VerificationError.invalidPixelValues, path, "no tensor named pixel_values")
        }
        guard info.dtype == .f32, info.shape == expected || info.shape == [1] + expected else {
            throw VLQError(
                VerificationError.invalidPixelValues, path,
                "pixel_values is \(info.dtype.rawValue) \(info.shape), the model takes F32 \(expected)")
        }
        return Array(file.data(info).bindMemory(to: Float.self))
    }
}

/// Every stage's output for one image and prompt in a safetensors file (`vlq logits`): pixel_values
/// [3,S,S], vision_features [P,Dv], projector_output [P,H], input_ids [T] (i64, -200 where the image
/// features go) and logits [T-1+P, V] over every position of the spliced sequence, the layout of
/// tools/transformers_reference.py.
public enum StageDump {
    /// Runs `model` on the pixels and `question`, writes the stages to `output`; returns the logits' shape.
    public static func write(
        model: LazyModel, pixels source: PixelSource, question: String, to output: String
    ) throws -> (positions: Int, vocabulary: Int) {
        let engine = try model.engine()
        let pixels = try source.pixelValues(for: engine)
        let prompt = engine.prompt(question: question)
        let stages = try engine.forward(
            .image(pixels, prompt: prompt), capture: .init(visionFeatures: true, projectorOutput: true, logitsFrom: 0))
        let c = engine.config
        let features = stages.visionFeatures.count / c.vision.hiddenSize
        var file = SafeTensorsWriter()
        file.add(.f32("pixel_values", [c.vision.channels, c.vision.imageSize, c.vision.imageSize], pixels))
        file.add(.f32("vision_features", [features, c.vision.hiddenSize], stages.visionFeatures))
        file.add(.f32("projector_output", [features, c.language.hiddenSize], stages.projectorOutput))
        file.add(.i64("input_ids", [prompt.inputIds.count], prompt.inputIds))
        file.add(.f32("logits", [stages.positions, c.language.vocabSize], stages.logits))
        file.metadata = ["producer": "vlq \(VLQVersion.string)", "model": model.path, "prompt": question]
        try file.write(to: output)
        return (stages.positions, c.language.vocabSize)
    }
}
