import CheckpointFiles
import Imaging
import Logging
import SafeTensors
import VLQCore
import VLQFormat
import YiVL

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// What a converted bundle stores its float tensors as.
public enum OutputDType: String, CaseIterable, Sendable {
    /// Each tensor as its source file has it (bf16 LLM and projector, f32 vision tower for Yi-VL).
    case keep, f32, f16, bf16

    var encoding: TensorEncoding? {
        switch self {
        case .keep: return nil
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        }
    }
}

public struct ConvertOptions: Sendable {
    public var dtype: OutputDType = .keep
    /// Overrides `mm_vision_tower` of config.json.
    public var visionTower: String?
    public var compressMetadata = true
    public var alignment = VLQLayout.defaultAlignment

    public init(dtype: OutputDType = .keep, visionTower: String? = nil) {
        self.dtype = dtype
        self.visionTower = visionTower
    }
}

/// How the vision tower copy inside the root shards compares with the vision folder's.
public struct InShardVisionComparison: Sendable {
    public var tensors: Int
    /// Tensors whose values differ from the vision folder's by more than bf16 rounding.
    public var differing: [String]
    /// Vision-folder tensors absent from the copy, or of another shape.
    public var unmatched: [String]
    public var maxAbsDifference: Float
}

public struct ConvertReport: Sendable {
    public var tensorCount: Int
    public var tensorBytes: Int
    public var outputBytes: Int
    public var sourceBytes: Int
    public var inShardVision: InShardVisionComparison?
    public var ignoredTensors: [String]
    public var saturatedValues: Int
    /// Tensors holding NaN or infinite values, with their counts: converted as they are, warned about.
    public var nonFinite: [String: Int]
}

/// Hugging Face Yi-VL folder -> .vlq bundle, streaming.
///
/// Each source file is read once, front to back: its bytes feed the file's provenance digest, and
/// every tensor planned for the bundle is converted in chunks and written at its precomputed place.
/// Pages of the source are released as soon as they are done, so resident memory stays near the
/// chunk size whatever the model size.
public final class Converter {
    public static let chunkBytes = 32 << 20

    let options: ConvertOptions
    let logger: Logger

    public init(options: ConvertOptions, logger: Logger = Logger(label: "vlq.convert")) {
        self.options = options
        self.logger = logger
    }

    public static func encoding(of dtype: DType) -> TensorEncoding? {
        switch dtype {
        case .f32: return .f32
        case .f16: return .f16
        case .bf16: return .bf16
        default: return nil
        }
    }

    /// `progress(done, total)` reports source bytes read.
    public func convert(
        folder: String, output: String, progress: (Int, Int) -> Void = { _, _ in }
    ) throws -> ConvertReport {
        let checkpoint = try YiVLCheckpoint(folder: folder, visionTower: options.visionTower)
        for line in Converter.describeSources(checkpoint) { logger.notice("\(line)") }
        if !checkpoint.inShardVisionCopy.isEmpty {
            let copied = checkpoint.inShardVisionCopy.count
            logger.notice(
                """
                the root shards also carry a vision tower copy (\(copied) tensors); using \(checkpoint.visionFolder) \
                as Yi's loader does
                """)
        }

        let plan = Converter.plan(checkpoint, dtype: options.dtype)
        try Converter.refuseToOverwriteSources(output, checkpoint: checkpoint)
        let writer = try VLQWriter(path: output, plan: plan, alignment: options.alignment)
        do {
            let report = try write(checkpoint, to: writer, progress: progress)
            return report
        } catch {
            writer.abandon()
            throw error
        }
    }

    /// The table convert writes for `checkpoint`: every expected tensor, in the checkpoint's order, in the
    /// encoding `dtype` asks for (keep: its source type); offsets and checksums are the writer's.
    public static func plan(_ checkpoint: YiVLCheckpoint, dtype: OutputDType) -> [TensorRecord] {
        checkpoint.tensors.map { t -> TensorRecord in
            let source = Converter.encoding(of: t.info.dtype)!
            return TensorRecord(
                name: t.expected.name, encoding: dtype.encoding ?? source,
                component: Component(rawValue: UInt8(t.expected.part.rawValue))!,
                shape: t.expected.shape, sourceDType: SourceDType(rawValue: UInt8(source.rawValue)) ?? .unknown)
        }
    }

    /// Which files hold each part's weights and which weight-like files were left alone: a user of the
    /// official folders, which also hold an OpenCLIP copy of the tower, sees what was read.
    public static func describeSources(_ checkpoint: YiVLCheckpoint) -> [String] {
        var lines: [String] = []
        if let cache = checkpoint.model.resolvedFrom {
            lines.append("\(cache) is a Hugging Face repository cache; reading its snapshot \(checkpoint.folder)")
        }
        let tower =
            checkpoint.visionFolder.hasPrefix(checkpoint.folder + "/")
            ? String(checkpoint.visionFolder.dropFirst(checkpoint.folder.count + 1)) : checkpoint.visionFolder
        for (part, shards) in [
            ("language model and projector", checkpoint.rootShards),
            ("vision tower (\(tower))", checkpoint.visionShards),
        ] {
            var line = "\(part): \(shards.description)"
            if !shards.ignoredFiles.isEmpty { line += "; not read: \(shards.ignoredFiles.joined(separator: ", "))" }
            lines.append(line)
        }
        return lines
    }

    /// The rename at the end would replace a source file given as the output; the source is read-only to vlq.
    static func refuseToOverwriteSources(_ output: String, checkpoint: YiVLCheckpoint) throws {
        guard let target = FileSystem.realPath(output) else { return }
        let sources =
            (checkpoint.rootShards.files + checkpoint.visionShards.files).map(\.path)
            + [checkpoint.folder + "/config.json", checkpoint.tokenizerModelPath]
            + Array(checkpoint.auxiliaryFiles.values)
        for source in sources where FileSystem.realPath(source) == target {
            throw VLQError(
                ConversionError.outputIsSource, output, "is a file of the source checkpoint; choose another output path"
            )
        }
    }

    private func write(
        _ checkpoint: YiVLCheckpoint, to writer: VLQWriter, progress: (Int, Int) -> Void
    ) throws -> ConvertReport {
        let sourceFiles = checkpoint.rootShards.files + checkpoint.visionShards.files
        let total = sourceFiles.reduce(0) { $0 + $1.mapped.size }
        var done = 0
        var saturated = 0
        var nonFinite: [String: Int] = [:]
        var fileDigests: [String: (size: Int, digest: UInt64)] = [:]
        var comparison = InShardVisionComparison(tensors: 0, differing: [], unmatched: [], maxAbsDifference: 0)
        let copyByRootName = Dictionary(
            uniqueKeysWithValues: checkpoint.inShardVisionCopy.map {
                (YiVLCheckpoint.inShardVisionPrefix + $0.key, $0.key)
            })
        // Where each planned tensor comes from: a name can only be taken from one file.
        let sourceOf = Dictionary(
            uniqueKeysWithValues: checkpoint.tensors.map { ($0.expected.name, ObjectIdentifier($0.file)) })
        progress(0, total)

        for file in sourceFiles {
            file.mapped.adviseSequential()
            let hasher = XXH3Hasher()
            // The file digest covers every byte in order. Tensors are visited by offset; the bytes
            // between them (a safetensors header, a zip archive's headers and pickle) are hashed as
            // the cursor passes, and bytes that views share are hashed once.
            var hashed = 0
            func hash(upTo end: Int) {
                while hashed < end {
                    let n = min(Converter.chunkBytes, end - hashed)
                    hasher.update(file.mapped.slice(offset: hashed, count: n)!)
                    file.mapped.release(offset: hashed, count: n)
                    hashed += n
                }
            }
            for info in file.tensors {
                hash(upTo: info.fileOffset)
                let data = file.mapped.slice(offset: info.fileOffset, count: info.spanBytes)!
                // Each chunk is hashed for the file digest and released as soon as it is used, so that
                // not even the largest tensor is resident at once.
                let finished = { (offset: Int, count: Int) in
                    let start = info.fileOffset + offset
                    if start + count > hashed {
                        let from = max(start, hashed)
                        hasher.update(file.mapped.slice(offset: from, count: start + count - from)!)
                        hashed = start + count
                    }
                    file.mapped.release(offset: start, count: count)
                }
                if let index = writer.index(of: info.name), sourceOf[info.name] == ObjectIdentifier(file) {
                    let counts: (saturated: Int, nonFinite: Int)
                    if info.isContiguous {
                        counts = try copy(
                            data, dtype: info.dtype, into: writer, index: index, name: info.name,
                            done: finished)
                    } else {
                        // A strided view: gathered into a contiguous copy (O(tensor)), its span hashed after.
                        counts = try file.withContiguousData(info) { contiguous in
                            try copy(contiguous, dtype: info.dtype, into: writer, index: index, name: info.name) {
                                _, _ in
                            }
                        }
                        finished(0, info.spanBytes)
                    }
                    saturated += counts.saturated
                    if counts.nonFinite > 0 {
                        nonFinite[info.name] = counts.nonFinite
                        logger.warning(
                            """
                            tensor \(info.name): \(counts.nonFinite) of \(info.elementCount) values are NaN or \
                            infinite
                            """)
                    }
                } else {
                    if let visionName = copyByRootName[info.name] {
                        file.withContiguousData(info) { contiguous in
                            compare(copy: contiguous, info: info, with: visionName, in: checkpoint, into: &comparison)
                        }
                    }
                    var offset = 0
                    while offset < data.count {
                        let n = min(Converter.chunkBytes, data.count - offset)
                        finished(offset, n)
                        offset += n
                    }
                }
                done += info.byteCount
                progress(done, total)
            }
            hash(upTo: file.mapped.size)
            done = sourceFiles.prefix { $0 !== file }.reduce(file.mapped.size) { $0 + $1.mapped.size }
            progress(done, total)
            fileDigests[file.path] = (file.mapped.size, hasher.digest())
        }
        if saturated > 0 {
            logger.warning("\(saturated) values beyond the f16 range were saturated to +-65504")
        }
        if !checkpoint.inShardVisionCopy.isEmpty {
            for name in checkpoint.config.expectedTensors.filter({ $0.part == .vision }).map(\.name)
            where checkpoint.inShardVisionCopy[name] == nil {
                comparison.unmatched.append(name)
            }
            comparison.unmatched.sort()
            comparison.differing.sort()
            if !comparison.differing.isEmpty || !comparison.unmatched.isEmpty {
                logger.warning(
                    """
                    the vision tower copy in the root shards differs from \(checkpoint.visionFolder) beyond bf16 \
                    rounding: \(comparison.differing.count) tensors differ (max abs difference \
                    \(comparison.maxAbsDifference)), \(comparison.unmatched.count) missing or reshaped; the \
                    vision folder is used
                    """
                )
            }
        }

        let metadata = try buildMetadata(checkpoint, fileDigests: fileDigests)
        try writer.finish(metadata: metadata, compression: options.compressMetadata ? .zstd : .none)
        let tensorBytes = writer.records.reduce(0) { $0 + $1.byteCount }
        let outputBytes = (try? MappedFile(path: writer.path).size) ?? 0
        return ConvertReport(
            tensorCount: writer.records.count, tensorBytes: tensorBytes, outputBytes: outputBytes,
            sourceBytes: total, inShardVision: checkpoint.inShardVisionCopy.isEmpty ? nil : comparison,
            ignoredTensors: checkpoint.ignoredTensors, saturatedValues: saturated, nonFinite: nonFinite)
    }

    /// `done(offset, count)` is told which source bytes are finished with, chunk by chunk, so that a
    /// 500 MB embedding does not stay resident while it is copied.
    private func copy(
        _ data: UnsafeRawBufferPointer, dtype: DType, into writer: VLQWriter, index: Int, name: String,
        done: (Int, Int) -> Void
    ) throws -> (saturated: Int, nonFinite: Int) {
        let from = Converter.encoding(of: dtype)!
        let to = writer.records[index].encoding
        var saturated = 0, nonFinite = 0
        try writer.writeTensor(index) { sink in
            if from == to {
                var offset = 0
                while offset < data.count {
                    let n = min(Converter.chunkBytes, data.count - offset)
                    let chunk = UnsafeRawBufferPointer(rebasing: data[offset..<(offset + n)])
                    nonFinite += NonFiniteValues.count(chunk, encoding: from)
                    try sink.append(chunk)
                    done(offset, n)
                    offset += n
                }
                return
            }
            let count = data.count / (from.bitsPerElement / 8)
            let chunkElements = Converter.chunkBytes / 4
            let buffer = UnsafeMutableRawBufferPointer.allocate(
                byteCount: chunkElements * to.bitsPerElement / 8, alignment: 64)
            defer { buffer.deallocate() }
            var start = 0
            while start < count {
                let n = min(chunkElements, count - start)
                let sourceBytes = from.bitsPerElement / 8
                let slice = UnsafeRawBufferPointer(rebasing: data[(start * sourceBytes)..<((start + n) * sourceBytes)])
                nonFinite += NonFiniteValues.count(slice, encoding: from)
                saturated += ElementConversion.convert(slice, from: from, into: buffer, to: to, count: n)
                try sink.append(UnsafeRawBufferPointer(rebasing: buffer[0..<(n * to.bitsPerElement / 8)]))
                done(start * sourceBytes, n * sourceBytes)
                start += n
            }
        }
        if saturated > 0 { logger.warning("tensor \(name): \(saturated) values saturated to the f16 range") }
        return (saturated, nonFinite)
    }

    /// Compares one tensor of the in-shard vision copy with the vision folder's: equal up to the
    /// rounding of each value to bf16 (one bf16 ulp, which also allows truncation instead of rounding).
    private func compare(
        copy: UnsafeRawBufferPointer, info: TensorInfo, with visionName: String,
        in checkpoint: YiVLCheckpoint, into result: inout InShardVisionComparison
    ) {
        guard let (visionFile, visionInfo) = checkpoint.visionShards[visionName],
            visionInfo.shape == info.shape,
            let copyEncoding = Converter.encoding(of: info.dtype),
            let visionEncoding = Converter.encoding(of: visionInfo.dtype)
        else {
            if checkpoint.config.expectedTensors.contains(where: { $0.name == visionName }) {
                result.unmatched.append(visionName)
            }
            return
        }
        result.tensors += 1
        var beyondRounding = false
        visionFile.withContiguousData(visionInfo) { reference in
            for i in 0..<info.elementCount {
                let a = ElementConversion.value(reference, visionEncoding, i)
                let b = ElementConversion.value(copy, copyEncoding, i)
                let difference = abs(a - b)
                if difference > result.maxAbsDifference { result.maxAbsDifference = difference }
                // One ulp of bf16 at |a|: 8 significant bits.
                let ulp =
                    a == 0 ? Float.leastNormalMagnitude : Float(sign: .plus, exponent: a.exponent - 7, significand: 1)
                if !(difference <= ulp) { beyondRounding = true }
            }
        }
        visionFile.mapped.release(offset: visionInfo.fileOffset, count: visionInfo.spanBytes)
        if beyondRounding { result.differing.append(visionName) }
    }

    private func buildMetadata(
        _ checkpoint: YiVLCheckpoint, fileDigests: [String: (size: Int, digest: UInt64)]
    ) throws -> JSONValue {
        let config = checkpoint.config
        let tokenizerFile = try MappedFile(path: checkpoint.tokenizerModelPath)
        let tokenizerBytes = Array(tokenizerFile.bytes)
        var smallFiles: [String: JSONValue] = [:]
        var digests = fileDigests
        func record(_ path: String) throws -> MappedFile {
            let f = try MappedFile(path: path)
            digests[path] = (f.size, XXH3Hasher.hash(f.bytes))
            return f
        }
        for (name, path) in checkpoint.auxiliaryFiles {
            let f = try record(path)
            do { smallFiles[name] = try JSONValue.parse(f.bytes) } catch {
                throw VLQError(CoreError.malformedJSON, path, "\(error)")
            }
        }
        for path in [
            checkpoint.folder + "/config.json", checkpoint.visionFolder + "/config.json",
            checkpoint.visionFolder + "/preprocessor_config.json", checkpoint.tokenizerModelPath,
        ]
            + [checkpoint.rootShards.indexPath, checkpoint.visionShards.indexPath].compactMap({ $0 })
        {
            _ = try record(path)
        }

        let folderPrefix = checkpoint.folder.hasSuffix("/") ? checkpoint.folder : checkpoint.folder + "/"
        func relative(_ path: String) -> String {
            path.hasPrefix(folderPrefix) ? String(path.dropFirst(folderPrefix.count)) : path
        }
        let sources = digests.keys.map { path in
            BundleMetadata.SourceFile(
                path: relative(path), bytes: digests[path]!.size, xxh3: hex64(digests[path]!.digest))
        }.sorted { $0.path < $1.path }

        let generation = smallFiles["generation_config.json"]?.objectValue ?? [:]
        let tokenizerConfig = smallFiles["tokenizer_config.json"],
            specialTokensMap = smallFiles["special_tokens_map.json"]
        func special(_ key: String, withID: Bool = true) -> BundleMetadata.SpecialToken {
            BundleMetadata.SpecialToken(
                key, config: config, tokenizerConfig: tokenizerConfig, specialTokensMap: specialTokensMap,
                withID: withID)
        }
        let tokenizer = BundleMetadata.Tokenizer(
            type: "sentencepiece", model: tokenizerBytes, modelXXH3: hex64(XXH3Hasher.hash(tokenizerBytes)),
            addBOSToken: tokenizerConfig?["add_bos_token"]?.boolValue ?? false,
            addEOSToken: tokenizerConfig?["add_eos_token"]?.boolValue ?? false,
            bos: special("bos"), eos: special("eos"), pad: special("pad"), unk: special("unk", withID: false))
        let provenance = BundleMetadata.Provenance(
            vlqVersion: VLQVersion.string, converterDType: options.dtype.rawValue,
            converterAlignment: options.alignment,
            visionTower: relative(checkpoint.visionFolder), inShardVisionCopy: !checkpoint.inShardVisionCopy.isEmpty,
            ignoredTensors: checkpoint.ignoredTensors, sourceFiles: sources)
        let metadata = BundleMetadata(
            formatVersion: "\(VLQLayout.majorVersion).\(VLQLayout.minorVersion)",
            model: BundleMetadata.Model(architecture: "yi-vl", name: checkpoint.model.modelName),
            architecture: BundleMetadata.Architecture(config),
            configs: [
                "language": config.rootJSON, "vision": config.visionJSON, "preprocessor": config.preprocessorJSON,
                "generation": smallFiles["generation_config.json"] ?? .null, "tokenizer": tokenizerConfig ?? .null,
                "special_tokens_map": specialTokensMap ?? .null,
            ],
            preprocessing: ImagePreprocessing(config),
            chat: BundleMetadata.Chat(config),
            tokenizer: tokenizer,
            generation: BundleMetadata.Generation(
                settings: generation.filter { $0.key != "stop" && $0.key != "do_sample" },
                stop: YiVLChat.stopStrings,
                doSample: generation["do_sample"]?.boolValue ?? false),
            provenance: provenance)
        return metadata.json
    }
}
