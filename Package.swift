// swift-tools-version:6.0
import PackageDescription

// The numeric modules are compiled with optimisation in debug builds too: the end-to-end tests run
// the engine, and unoptimised SIMD and pixel loops are 50x slower.
let optimizedEvenInDebug: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "vlq",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "vlq", targets: ["vlq"]),
        // Yi-VL for Swift apps: open a bundle, answer questions about an image, chat (Sources/VLQ/README.md).
        .library(name: "VLQ", targets: ["VLQ"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
    ],
    targets: [
        // System libraries, found through pkg-config; the providers name the Debian packages.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng16", providers: [.apt(["libpng-dev"])]),
        .systemLibrary(name: "CJPEG", pkgConfig: "libjpeg", providers: [.apt(["libjpeg62-turbo-dev"])]),
        // libpng/libjpeg report errors by longjmp; this C layer keeps that away from Swift.
        .target(name: "CImageCodecs", dependencies: ["CPNG", "CJPEG"]),
        // Decode's matrix-vector kernels on 16-bit and quantized weights, and the quantizers' group range
        // search (AVX2 chosen at run time, or scalar), optimised in debug builds too: the end-to-end tests
        // decode and quantize with them.
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3"])]),

        // Shared primitives: JSON, mapped files, atomic output, checksums, compression, errors.
        .target(name: "VLQCore", dependencies: ["CZstd", "CXXHash"]),
        // The interface every checkpoint format implements: element types, tensor entries, TensorFile.
        .target(name: "TensorSource", dependencies: ["VLQCore"]),
        // Reading Hugging Face safetensors files over mmap, validated.
        .target(name: "SafeTensors", dependencies: ["VLQCore", "TensorSource"]),
        // Reading PyTorch torch.save checkpoints (zip + pickle) over mmap, with a restricted unpickler.
        .target(
            name: "PyTorchCheckpoint", dependencies: ["VLQCore", "TensorSource"], swiftSettings: optimizedEvenInDebug),
        // A model folder's weight files: which files to read (safetensors or PyTorch, sharded or not),
        // shard indexes, and the Hugging Face cache layout.
        .target(
            name: "CheckpointFiles", dependencies: ["VLQCore", "TensorSource", "SafeTensors", "PyTorchCheckpoint"]),
        // The .vlq bundle format (formats/VLQ-BUNDLE.md): writer, reader, checker.
        .target(name: "VLQFormat", dependencies: ["VLQCore"], swiftSettings: optimizedEvenInDebug),
        // SentencePiece BPE tokenizer read from tokenizer.model.
        .target(name: "Tokenizer", dependencies: ["VLQCore"]),
        // Image decoding (PNG, JPEG) and Yi-VL's preprocessing, PIL-exact.
        .target(name: "Imaging", dependencies: ["VLQCore", "CImageCodecs"], swiftSettings: optimizedEvenInDebug),
        // The engine's numerics: kernels over OpenBLAS, activation buffers, the row-parallel loop, and
        // the memory budgets of weight caches and X^T X statistics.
        .target(name: "Numerics", dependencies: ["CBLAS", "CKernels"], swiftSettings: optimizedEvenInDebug),
        // Yi-VL: configuration, checkpoint layout, expected tensors, and the fp32 engine, whose one entry
        // point is `YiVLEngine.forward`.
        .target(
            name: "YiVL",
            dependencies: [
                "VLQCore", "SafeTensors", "CheckpointFiles", "VLQFormat", "Tokenizer", "Imaging", "Numerics",
                "CKernels",
            ],
            swiftSettings: optimizedEvenInDebug),

        // Calibration with images: sets, statistics of every Linear's inputs, .vlqstats files; LazyModel,
        // the model by path that the tool modules take.
        .target(
            name: "Calibration", dependencies: ["VLQCore", "SafeTensors", "Numerics", "YiVL", "CBLAS"],
            swiftSettings: optimizedEvenInDebug),
        // Group quantization (rtn, imatrix, AWQ, GPTQ), recipes, the quantize pipeline, and what a bundle says
        // about its model and quantization (vlq inspect).
        .target(
            name: "Quantization",
            dependencies: [
                "VLQCore", "VLQFormat", "SafeTensors", "Numerics", "YiVL", "Calibration", "CBLAS", "CKernels",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: optimizedEvenInDebug),
        // Accuracy drift of a candidate against a reference: KL divergence, same-top, feature drift;
        // reference runs and per-stage dumps (vlq logits).
        .target(
            name: "Verification",
            dependencies: ["VLQCore", "SafeTensors", "VLQFormat", "YiVL", "Calibration", "Imaging"],
            swiftSettings: optimizedEvenInDebug),
        // Mixed precision: each layer's encoding chosen from its measured drift and size (a knapsack) for a
        // drift bound or a size, checked end to end on held-out calibration samples (vlq quantize --max-kld).
        .target(
            name: "Allocation",
            dependencies: [
                "VLQCore", "VLQFormat", "YiVL", "Calibration", "Quantization", "Verification",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: optimizedEvenInDebug),
        // The engine's speed on one model (vlq bench): prefill against raw sgemm, vision, decode,
        // calibration and quantizer costs.
        .target(
            name: "Benchmarking",
            dependencies: ["VLQCore", "VLQFormat", "Numerics", "YiVL", "Calibration", "Quantization", "CBLAS"],
            swiftSettings: optimizedEvenInDebug),
        // Hugging Face folder -> .vlq bundle, streaming.
        .target(
            name: "Conversion",
            dependencies: [
                "VLQCore", "SafeTensors", "CheckpointFiles", "VLQFormat", "Imaging", "YiVL",
                .product(name: "Logging", package: "swift-log"),
            ]),
        // What each fuzz target does with one input (tools/fuzz.sh); the regression tests replay saved
        // inputs through it.
        .target(
            name: "FuzzTargets",
            dependencies: [
                "VLQCore", "SafeTensors", "PyTorchCheckpoint", "VLQFormat", "Tokenizer", "Imaging", "YiVL",
                "Calibration",
            ]),
        // The library's public API over the engine: models, streamed answers, chat sessions. Swift 6
        // language mode: its concurrency (Sendable types, one executor per model) is checked strictly.
        .target(
            name: "VLQ", dependencies: ["VLQCore", "Imaging", "Tokenizer", "YiVL"], exclude: ["README.md"],
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // An app's view of the library: two questions about an image, answers streamed.
        .executableTarget(
            name: "chat-example", dependencies: ["VLQ"], path: "Examples/ChatAboutAnImage",
            swiftSettings: [.swiftLanguageMode(.v6)]),
        // The command line: the library (run) and the tool modules, never the engine itself.
        .executableTarget(
            name: "vlq",
            dependencies: [
                "VLQCore", "VLQFormat", "Numerics", "VLQ", "Conversion", "Calibration", "Quantization", "Verification",
                "Allocation", "Benchmarking",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]),
        .testTarget(
            name: "VLQTests",
            dependencies: [
                "VLQCore", "TensorSource", "SafeTensors", "PyTorchCheckpoint", "CheckpointFiles", "VLQFormat",
                "Numerics",
                "YiVL",
                "Conversion", "Tokenizer", "Imaging", "Quantization", "Calibration", "Verification", "FuzzTargets",
                "Allocation",
                "vlq",
                "VLQ", "chat-example",
            ],
            exclude: []
        ),
    ],
    swiftLanguageModes: [.v6]
)

// The libFuzzer driver links libFuzzer, which needs the sanitizer flags tools/fuzz.sh passes, so it is
// part of the package only when VLQ_FUZZ is set: plain `swift build` and `swift test` never see it.
if Context.environment["VLQ_FUZZ"] != nil {
    package.targets.append(.executableTarget(name: "vlq-fuzz", dependencies: ["FuzzTargets", "VLQCore"]))
}
