import VLQCore

/// The parts of a SentencePiece `ModelProto` (sentencepiece_model.proto) that encoding and decoding use.
public struct SentencePieceModel: Sendable {
    public enum PieceType: Int, Sendable {
        case normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
    }

    public struct Piece: Sendable {
        public var text: String
        public var score: Float
        public var type: PieceType
    }

    public enum Algorithm: Int, Sendable {
        case unigram = 1, bpe = 2, word = 3, char = 4
    }

    public var pieces: [Piece]
    public var algorithm: Algorithm = .unigram
    public var byteFallback = false
    public var addDummyPrefix = true
    public var removeExtraWhitespaces = true
    public var escapeWhitespaces = true
    public var normalizerName = ""
    public var precompiledCharsmapSize = 0

    /// Parses a serialized ModelProto; `source` names it in errors.
    public init(bytes: [UInt8], source: String) throws {
        pieces = []
        do {
            var reader = ProtobufReader(bytes[...])
            while !reader.atEnd {
                let (number, value) = try reader.next()
                switch (number, value) {
                case (1, .bytes(let b)): pieces.append(try SentencePieceModel.piece(b))
                case (2, .bytes(let b)): try readTrainerSpec(b)
                case (3, .bytes(let b)): try readNormalizerSpec(b)
                default: break
                }
            }
        } catch let error as ProtobufReader.Malformed {
            throw VLQError(TokenizerError.notAModel, source, "not a SentencePiece model: \(error.reason)")
        }
        guard !pieces.isEmpty else {
            throw VLQError(TokenizerError.notAModel, source, "not a SentencePiece model: no pieces")
        }
        guard algorithm == .bpe else {
            throw VLQError(
                TokenizerError.unsupportedModel, source,
                "SentencePiece model type \(algorithm) is not supported (Yi uses BPE)")
        }
        guard precompiledCharsmapSize == 0 else {
            throw VLQError(
                TokenizerError.unsupportedModel,
                source,
                "SentencePiece normalizer \"\(normalizerName)\" with a precompiled charsmap is not supported (Yi uses "
                    + "identity)"
            )
        }
    }

    static func piece(_ bytes: ArraySlice<UInt8>) throws -> Piece {
        var reader = ProtobufReader(bytes)
        var piece = Piece(text: "", score: 0, type: .normal)
        while !reader.atEnd {
            switch try reader.next() {
            case (1, .bytes(let b)):
                guard let text = String(validating: Array(b), as: UTF8.self) else {
                    throw ProtobufReader.Malformed(reason: "a piece is not UTF-8")
                }
                piece.text = text
            case (2, .fixed32(let bits)): piece.score = Float(bitPattern: bits)
            case (3, .varint(let t)):
                // A varint is 64 bits on the wire: one past Int.max must be an error, not a trap.
                guard let type = Int(exactly: t).flatMap(PieceType.init(rawValue:)) else {
                    throw ProtobufReader.Malformed(reason: "unknown piece type \(t)")
                }
                piece.type = type
            default: break
            }
        }
        return piece
    }

    mutating func readTrainerSpec(_ bytes: ArraySlice<UInt8>) throws {
        var reader = ProtobufReader(bytes)
        while !reader.atEnd {
            switch try reader.next() {
            case (3, .varint(let t)):
                guard let type = Int(exactly: t).flatMap(Algorithm.init(rawValue:)) else {
                    throw ProtobufReader.Malformed(reason: "unknown model type \(t)")
                }
                algorithm = type
            case (35, .varint(let v)): byteFallback = v != 0
            default: break
            }
        }
    }

    mutating func readNormalizerSpec(_ bytes: ArraySlice<UInt8>) throws {
        var reader = ProtobufReader(bytes)
        while !reader.atEnd {
            switch try reader.next() {
            case (1, .bytes(let b)): normalizerName = String(decoding: b, as: UTF8.self)
            case (2, .bytes(let b)): precompiledCharsmapSize = b.count
            case (3, .varint(let v)): addDummyPrefix = v != 0
            case (4, .varint(let v)): removeExtraWhitespaces = v != 0
            case (5, .varint(let v)): escapeWhitespaces = v != 0
            default: break
            }
        }
    }
}
