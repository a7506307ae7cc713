import VLQCore

/// SentencePiece BPE encoding and decoding, matching `sentencepiece`'s `EncodeAsIds` / `DecodeIds`
/// (which Hugging Face's slow LlamaTokenizer calls): identity normalisation with the dummy-prefix
/// space, greedy merging of the highest-scoring adjacent pair (leftmost first on ties), user-defined
/// symbols kept whole, and unknown symbols broken into `<0xXX>` byte pieces.
public final class Tokenizer: @unchecked Sendable {
    public let model: SentencePieceModel
    /// NORMAL, USER_DEFINED and UNUSED pieces: those merges may produce.
    private let mergeable: [String: Int]
    /// Every piece, for `id(of:)`.
    private let allPieces: [String: Int]
    private let byteIds: [Int]
    private let userDefined: [[UInt8]]
    public let unknownId: Int

    public static let whitespace = "\u{2581}"

    public var vocabularySize: Int { model.pieces.count }

    public init(model: SentencePieceModel, source: String = "tokenizer.model") throws {
        self.model = model
        var mergeable: [String: Int] = [:]
        var all: [String: Int] = [:]
        var bytes = [Int](repeating: -1, count: 256)
        var userDefined: [[UInt8]] = []
        var unknown = -1
        for (id, piece) in model.pieces.enumerated() {
            if all[piece.text] == nil { all[piece.text] = id }
            switch piece.type {
            case .normal, .unused, .userDefined:
                guard mergeable.updateValue(id, forKey: piece.text) == nil else {
                    throw VLQError(TokenizerError.malformedVocabulary, source, "piece \"\(piece.text)\" occurs twice")
                }
                if piece.type == .userDefined { userDefined.append(Array(piece.text.utf8)) }
            case .unknown: unknown = id
            case .byte:
                let t = piece.text
                if t.count == 6, t.hasPrefix("<0x"), t.hasSuffix(">"),
                    let v = UInt8(t.dropFirst(3).prefix(2), radix: 16)
                {
                    bytes[Int(v)] = id
                }
            case .control: break
            }
        }
        guard unknown >= 0 else { throw VLQError(TokenizerError.malformedVocabulary, source, "no <unk> piece") }
        if model.byteFallback, let missing = bytes.firstIndex(of: -1) {
            throw VLQError(
                TokenizerError.malformedVocabulary,
                source, "byte fallback is on but piece <0x\(String(missing, radix: 16, uppercase: true))> is missing")
        }
        self.mergeable = mergeable
        allPieces = all
        byteIds = bytes
        // Longest first, so that prefix matching prefers the longest user-defined symbol.
        self.userDefined = userDefined.sorted { $0.count > $1.count }
        unknownId = unknown
    }

    public convenience init(contentsOf path: String) throws {
        let file = try MappedFile(path: path)
        try self.init(model: try SentencePieceModel(bytes: Array(file.bytes), source: path), source: path)
    }

    public func id(of piece: String) -> Int? { allPieces[piece] }

    public func piece(_ id: Int) -> String? {
        model.pieces.indices.contains(id) ? model.pieces[id].text : nil
    }

    // MARK: Encoding

    /// The normalised form: spaces as U+2581 and, with the dummy prefix, one in front.
    func normalize(_ text: String, dummyPrefix: Bool = true) -> [UInt8] {
        var s = text
        if model.removeExtraWhitespaces {
            // Mid-string (no dummy prefix) a run of spaces collapses to one instead of vanishing.
            let keptSpace = !dummyPrefix && s.hasPrefix(" ") ? " " : ""
            s = keptSpace + s.split(separator: " ", omittingEmptySubsequences: true).joined(separator: " ")
        }
        guard !s.isEmpty else { return [] }
        if model.addDummyPrefix && dummyPrefix { s = " " + s }
        if model.escapeWhitespaces { s = s.replacing(" ", with: Tokenizer.whitespace) }
        return Array(s.utf8)
    }

    /// Token ids of `text`. `dummyPrefix: false` encodes text that continues a sequence mid-string
    /// (a chat's follow-up turn): sentencepiece would add its dummy-prefix space only at the very start.
    public func encode(_ text: String, dummyPrefix: Bool = true) -> [Int] {
        let normalized = normalize(text, dummyPrefix: dummyPrefix)
        guard !normalized.isEmpty else { return [] }

        // Symbols: user-defined pieces whole (frozen), otherwise one UTF-8 character each.
        struct Symbol {
            var start: Int
            var length: Int
            var prev: Int
            var next: Int
            var frozen: Bool
        }
        var symbols: [Symbol] = []
        var i = 0
        while i < normalized.count {
            var length = 0
            var frozen = false
            for candidate in userDefined where candidate.count <= normalized.count - i {
                if normalized[i..<(i + candidate.count)].elementsEqual(candidate) {
                    length = candidate.count
                    frozen = true
                    break
                }
            }
            if length == 0 { length = Tokenizer.utf8Length(normalized, at: i) }
            symbols.append(Symbol(start: i, length: length, prev: symbols.count - 1, next: -1, frozen: frozen))
            i += length
        }
        for k in 0..<(symbols.count - 1) { symbols[k].next = k + 1 }

        // The agenda: candidate merges by score, leftmost first on ties.
        var agenda = PairHeap()
        // How each UNUSED piece was formed, to split it again at the end as sentencepiece does.
        var unusedMerges: [String: (String, String)] = [:]
        func pieceText(_ start: Int, _ length: Int) -> String {
            String(decoding: normalized[start..<(start + length)], as: UTF8.self)
        }
        func consider(_ left: Int, _ right: Int) {
            guard left >= 0, right >= 0, !symbols[left].frozen, !symbols[right].frozen else { return }
            let length = symbols[left].length + symbols[right].length
            let merged = pieceText(symbols[left].start, length)
            guard let id = mergeable[merged] else { return }
            if model.pieces[id].type == .unused {
                unusedMerges[merged] = (
                    pieceText(symbols[left].start, symbols[left].length),
                    pieceText(symbols[right].start, symbols[right].length)
                )
            }
            agenda.push(PairHeap.Pair(left: left, right: right, score: model.pieces[id].score, length: length))
        }
        for k in 1..<symbols.count { consider(k - 1, k) }
        while let top = agenda.pop() {
            let l = top.left, r = top.right
            // Stale: one side was merged away or grew since this pair was queued.
            guard symbols[l].length > 0, symbols[r].length > 0, symbols[l].length + symbols[r].length == top.length
            else { continue }
            symbols[l].length = top.length
            symbols[l].next = symbols[r].next
            if symbols[r].next >= 0 { symbols[symbols[r].next].prev = l }
            symbols[r].length = 0
            consider(symbols[l].prev, l)
            consider(l, symbols[l].next)
        }

        var ids: [Int] = []
        func emit(_ text: String) {
            if let id = mergeable[text] {
                // UNUSED pieces never appear in output: split into the pair that formed them.
                if model.pieces[id].type == .unused, let (left, right) = unusedMerges[text] {
                    emit(left)
                    emit(right)
                } else {
                    ids.append(id)
                }
            } else if model.byteFallback {
                for byte in text.utf8 { ids.append(byteIds[Int(byte)]) }
            } else {
                ids.append(unknownId)
            }
        }
        var k = 0
        while k >= 0 {
            emit(pieceText(symbols[k].start, symbols[k].length))
            k = symbols[k].next
        }
        return ids
    }

    static func utf8Length(_ bytes: [UInt8], at i: Int) -> Int {
        let lead = bytes[i]
        let n: Int
        switch lead {
        case 0..<0x80: n = 1
        case 0xC2..<0xE0: n = 2
        case 0xE0..<0xF0: n = 3
        case 0xF0..<0xF5: n = 4
        default: return 1
        }
        guard i + n <= bytes.count else { return 1 }
        for k in 1..<n where bytes[i + k] & 0xC0 != 0x80 { return 1 }
        return n
    }

    // MARK: Decoding

    /// Pieces joined, U+2581 back to spaces, byte pieces reassembled into UTF-8 (invalid sequences
    /// become U+FFFD), the dummy-prefix space removed, control pieces dropped.
    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        var first = true
        for id in ids {
            guard model.pieces.indices.contains(id) else { continue }
            let piece = model.pieces[id]
            switch piece.type {
            case .control: continue
            case .byte:
                if let v = byteValue(piece.text) { bytes.append(v) }
            case .unknown:
                bytes.append(contentsOf: Array(" \u{2047} ".utf8))
            default:
                var text = piece.text.replacing(Tokenizer.whitespace, with: " ")
                if first, model.addDummyPrefix, text.hasPrefix(" ") { text.removeFirst() }
                bytes.append(contentsOf: Array(text.utf8))
            }
            first = false
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// Text of one token as it continues a sequence (no dummy-prefix stripping), for streaming.
    public func bytes(of id: Int) -> [UInt8] {
        guard model.pieces.indices.contains(id) else { return [] }
        let piece = model.pieces[id]
        switch piece.type {
        case .control: return []
        case .byte: return byteValue(piece.text).map { [$0] } ?? []
        default: return Array(piece.text.replacing(Tokenizer.whitespace, with: " ").utf8)
        }
    }

    private func byteValue(_ text: String) -> UInt8? {
        guard text.count == 6 else { return nil }
        return UInt8(text.dropFirst(3).prefix(2), radix: 16)
    }
}

/// A binary max-heap of candidate merges: higher score first, then smaller left index.
struct PairHeap {
    struct Pair {
        var left: Int
        var right: Int
        var score: Float
        var length: Int
    }

    private var items: [Pair] = []

    private static func before(_ a: Pair, _ b: Pair) -> Bool {
        a.score > b.score || (a.score == b.score && a.left < b.left)
    }

    mutating func push(_ p: Pair) {
        items.append(p)
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            guard PairHeap.before(items[i], items[parent]) else { break }
            items.swapAt(i, parent)
            i = parent
        }
    }

    mutating func pop() -> Pair? {
        guard !items.isEmpty else { return nil }
        let top = items[0]
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            while true {
                let l = 2 * i + 1, r = l + 1
                var best = i
                if l < items.count, PairHeap.before(items[l], items[best]) { best = l }
                if r < items.count, PairHeap.before(items[r], items[best]) { best = r }
                if best == i { break }
                items.swapAt(i, best)
                i = best
            }
        }
        return top
    }
}
