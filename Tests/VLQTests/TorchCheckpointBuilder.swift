import Foundation

/// Assembles pickles opcode by opcode, as Python's protocol-2 pickler writes them, including bad ones.
struct PickleWriter {
    private(set) var bytes: [UInt8] = []
    private var memoCount = 0
    /// Memo indices of strings and globals already written, reused with BINGET as pickle does.
    private var memoized: [String: Int] = [:]

    init(protocolVersion: UInt8 = 2) {
        bytes = [0x80, protocolVersion]
    }

    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func op(_ code: UInt8) { bytes.append(code) }

    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }

    /// BINPUT (or LONG_BINPUT) of the top of the stack at the next memo index.
    mutating func put() {
        if memoCount < 256 {
            bytes += [0x71, UInt8(memoCount)]
        } else {
            op(0x72)
            u32(UInt32(memoCount))
        }
        memoCount += 1
    }

    mutating func get(_ index: Int) {
        if index < 256 {
            bytes += [0x68, UInt8(index)]
        } else {
            op(0x6a)
            u32(UInt32(index))
        }
    }

    /// Writes or recalls a memoized value, keyed by `key`.
    private mutating func memoizedValue(_ key: String, write: (inout PickleWriter) -> Void) {
        if let index = memoized[key] {
            get(index)
            return
        }
        write(&self)
        memoized[key] = memoCount
        put()
    }

    mutating func string(_ s: String) {
        memoizedValue("s:" + s) { w in
            let utf8 = Array(s.utf8)
            w.op(0x58)
            w.u32(UInt32(utf8.count))
            w.raw(utf8)
        }
    }

    mutating func global(_ module: String, _ name: String) {
        memoizedValue("g:\(module).\(name)") { w in
            w.op(0x63)
            w.raw(Array("\(module)\n\(name)\n".utf8))
        }
    }

    mutating func int(_ v: Int) {
        switch v {
        case 0...255: bytes += [0x4b, UInt8(v)]
        case 256...65535: bytes += [0x4d, UInt8(v & 0xff), UInt8(v >> 8)]
        case Int(Int32.min)...Int(Int32.max):
            op(0x4a)
            withUnsafeBytes(of: Int32(v).littleEndian) { bytes += $0 }
        default:
            // LONG1: the shortest little-endian two's complement, as Python's encode_long.
            var encoded: [UInt8] = []
            withUnsafeBytes(of: Int64(v).littleEndian) { encoded = Array($0) }
            while encoded.count > 1 {
                let last = encoded[encoded.count - 1], previous = encoded[encoded.count - 2]
                guard (last == 0 && previous & 0x80 == 0) || (last == 0xff && previous & 0x80 != 0) else { break }
                encoded.removeLast()
            }
            bytes += [0x8a, UInt8(encoded.count)] + encoded
        }
    }

    mutating func bool(_ v: Bool) { op(v ? 0x88 : 0x89) }
    mutating func mark() { op(0x28) }
    mutating func emptyTuple() { op(0x29) }
    mutating func emptyDict() { op(0x7d) }
    mutating func reduce() { op(0x52) }
    mutating func build() { op(0x62) }
    mutating func setItem() { op(0x73) }
    mutating func setItems() { op(0x75) }
    mutating func persistentID() { op(0x51) }
    mutating func stop() { op(0x2e) }

    /// A tuple of ints the way pickle writes it: TUPLE1..3 or MARK ... TUPLE, then memoized.
    mutating func intTuple(_ values: [Int]) {
        switch values.count {
        case 0: emptyTuple()
        case 1...3:
            values.forEach { int($0) }
            op([0x85, 0x86, 0x87][values.count - 1])
        default:
            mark()
            values.forEach { int($0) }
            op(0x74)
        }
        put()
    }

    /// `collections.OrderedDict()`: what torch.save writes for empty backward hooks and state dicts.
    mutating func orderedDict() {
        global("collections", "OrderedDict")
        emptyTuple()
        reduce()
        put()
    }
}

/// A tensor of a built checkpoint: a view into one of its storages.
struct TorchTensorSpec {
    var name: String
    var storageKey: String
    var storageType = "FloatStorage"
    var storageElements: Int
    var offset = 0
    var shape: [Int]
    var strides: [Int]? = nil
    /// Wrap in `torch._utils._rebuild_parameter`, as torch.save writes an nn.Parameter.
    var parameter = false
}

/// Builds `torch.save` zip archives byte by byte: the pickle as torch's pickler writes a state dict,
/// the zip as torch's writer (miniz) lays it out (64-byte aligned data, data descriptors, optional
/// Zip64 records), with every field reachable for corruption tests.
struct TorchCheckpointBuilder {
    var archiveName = "archive"
    var tensors: [TorchTensorSpec] = []
    /// Storage key -> raw little-endian bytes.
    var storages: [(key: String, bytes: [UInt8])] = []
    var byteorder: String? = "little"
    var version: String? = "3\n"
    var zip64 = false
    /// Entry names (without the archive folder) to mark as deflated (their bytes left as they are).
    var deflatedEntries: Set<String> = []
    /// Entries appended as they are, after the standard ones.
    var extraEntries: [(name: String, bytes: [UInt8])] = []

    mutating func addStorage(_ key: String, _ bytes: [UInt8]) {
        storages.append((key, bytes))
    }

    /// A float32 storage holding 0, 1, 2, ... (count elements), and its bytes.
    @discardableResult
    mutating func addCountingFloats(_ key: String, count: Int) -> [Float] {
        let values = (0..<count).map { Float($0) }
        addStorage(key, values.withUnsafeBytes { Array($0) })
        return values
    }

    mutating func addTensor(_ spec: TorchTensorSpec) { tensors.append(spec) }

    /// data.pkl as torch.save writes a `model.state_dict()`: an OrderedDict of rebuilt tensors, then
    /// its `_metadata` attribute through BUILD.
    func statePickle() -> [UInt8] {
        var w = PickleWriter()
        w.orderedDict()
        w.mark()
        for tensor in tensors {
            w.string(tensor.name)
            if tensor.parameter { w.global("torch._utils", "_rebuild_parameter") }
            writeTensor(tensor, into: &w)
            if tensor.parameter {
                w.bool(true)
                w.orderedDict()
                w.op(0x87)  // TUPLE3 (data, requires_grad, hooks)
                w.put()
                w.reduce()
                w.put()
            }
        }
        w.setItems()
        w.emptyDict()
        w.put()
        w.string("_metadata")
        w.orderedDict()
        w.string("")
        w.emptyDict()
        w.put()
        w.string("version")
        w.int(1)
        w.setItem()
        w.setItem()
        w.setItem()
        w.build()
        w.stop()
        return w.bytes
    }

    /// `_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())`, reduced.
    func writeTensor(_ tensor: TorchTensorSpec, into w: inout PickleWriter) {
        w.global("torch._utils", "_rebuild_tensor_v2")
        w.mark()
        w.mark()
        w.string("storage")
        w.global("torch", tensor.storageType)
        w.string(tensor.storageKey)
        w.string("cpu")
        w.int(tensor.storageElements)
        w.op(0x74)  // TUPLE
        w.put()
        w.persistentID()
        w.int(tensor.offset)
        w.intTuple(tensor.shape)
        w.intTuple(tensor.strides ?? TorchCheckpointBuilder.rowMajorStrides(tensor.shape))
        w.bool(false)
        w.orderedDict()
        w.op(0x74)
        w.put()
        w.reduce()
        w.put()
    }

    /// Wrapping on overflow: tests write absurd shapes on purpose, for the reader to refuse.
    static func rowMajorStrides(_ shape: [Int]) -> [Int] {
        var strides = [Int](repeating: 1, count: shape.count)
        var step = 1
        for axis in shape.indices.reversed() {
            strides[axis] = step
            step = step &* shape[axis]
        }
        return strides
    }

    /// The archive with `statePickle()` as data.pkl, or the given pickle bytes.
    func bytes(pickle: [UInt8]? = nil) -> [UInt8] {
        layout(pickle: pickle).bytes
    }

    func layout(pickle: [UInt8]? = nil) -> ZipLayout {
        var entries: [(name: String, bytes: [UInt8])] = [("data.pkl", pickle ?? statePickle())]
        if let byteorder { entries.append(("byteorder", Array(byteorder.utf8))) }
        for storage in storages { entries.append(("data/" + storage.key, storage.bytes)) }
        if let version { entries.append(("version", Array(version.utf8))) }
        entries += extraEntries
        var zip = ZipWriter(zip64: zip64)
        for entry in entries {
            let method: UInt16 = deflatedEntries.contains(entry.name) ? 8 : 0
            zip.add(archiveName + "/" + entry.name, entry.bytes, method: method)
        }
        return zip.finish()
    }
}

/// Where the parts of a written zip lie, for tests that damage them.
struct ZipLayout {
    var bytes: [UInt8]
    var localHeaders: [Int] = []
    var dataOffsets: [Int] = []
    var centralHeaders: [Int] = []
    var centralDirectory = 0
    var zip64EndRecord: Int?
    var zip64Locator: Int?
    var endRecord = 0

    /// Every byte offset that belongs to a header (not to entry data): what a corruption sweep visits.
    var headerByteRanges: [Range<Int>] {
        var ranges: [Range<Int>] = []
        for (header, data) in zip(localHeaders, dataOffsets) { ranges.append(header..<data) }
        ranges.append(centralDirectory..<bytes.count)
        return ranges
    }
}

/// A zip writer laid out like torch's (miniz in PyTorchStreamWriter): stored entries whose data start
/// on 64-byte boundaries thanks to an "FB" padding extra field, local headers with zero sizes and a
/// data descriptor (flag bit 3), and, when asked, Zip64 extra fields and end records even when small.
struct ZipWriter {
    let zip64: Bool
    private var out = ByteBuffer()
    private var central = ByteBuffer()
    private var layout = ZipLayout(bytes: [])
    private var count = 0

    init(zip64: Bool) {
        self.zip64 = zip64
    }

    mutating func add(_ name: String, _ data: [UInt8], method: UInt16 = 0) {
        let nameBytes = Array(name.utf8)
        let header = out.count
        let crc = crc32(data)
        // The "FB" field pads the local header so that the data starts on a 64-byte boundary.
        var padding = 64 - (header + 30 + nameBytes.count + 4) % 64
        if padding == 64 { padding = 0 }
        out.u32(0x0403_4b50)
        out.u16(zip64 ? 45 : 20)
        out.u16(0x0808)
        out.u16(method)
        out.u16(0)
        out.u16(0x21)
        out.u32(0)
        out.u32(0)
        out.u32(0)
        out.u16(UInt16(nameBytes.count))
        out.u16(UInt16(4 + padding))
        out.raw(nameBytes)
        out.u16(0x4246)
        out.u16(UInt16(padding))
        out.raw([UInt8](repeating: 0x5a, count: padding))
        layout.localHeaders.append(header)
        layout.dataOffsets.append(out.count)
        out.raw(data)
        // Data descriptor, with 8-byte sizes in Zip64 archives.
        out.u32(0x0807_4b50)
        out.u32(crc)
        if zip64 {
            out.u64(UInt64(data.count))
            out.u64(UInt64(data.count))
        } else {
            out.u32(UInt32(data.count))
            out.u32(UInt32(data.count))
        }
        layout.centralHeaders.append(central.count)
        central.u32(0x0201_4b50)
        central.u16(0x031e)
        central.u16(zip64 ? 45 : 20)
        central.u16(0x0808)
        central.u16(method)
        central.u16(0)
        central.u16(0x21)
        central.u32(crc)
        central.u32(zip64 ? 0xffff_ffff : UInt32(data.count))
        central.u32(zip64 ? 0xffff_ffff : UInt32(data.count))
        central.u16(UInt16(nameBytes.count))
        central.u16(zip64 ? 28 : 0)
        central.u16(0)
        central.u16(0)
        central.u16(0)
        central.u32(0)
        central.u32(zip64 ? 0xffff_ffff : UInt32(header))
        central.raw(nameBytes)
        if zip64 {
            central.u16(0x0001)
            central.u16(24)
            central.u64(UInt64(data.count))
            central.u64(UInt64(data.count))
            central.u64(UInt64(header))
        }
        count += 1
    }

    mutating func finish() -> ZipLayout {
        let directory = out.count
        layout.centralDirectory = directory
        layout.centralHeaders = layout.centralHeaders.map { $0 + directory }
        out.raw(central.bytes)
        if zip64 {
            let record = out.count
            layout.zip64EndRecord = record
            out.u32(0x0606_4b50)
            out.u64(44)
            out.u16(0x031e)
            out.u16(45)
            out.u32(0)
            out.u32(0)
            out.u64(UInt64(count))
            out.u64(UInt64(count))
            out.u64(UInt64(central.count))
            out.u64(UInt64(directory))
            layout.zip64Locator = out.count
            out.u32(0x0706_4b50)
            out.u32(0)
            out.u64(UInt64(record))
            out.u32(1)
        }
        layout.endRecord = out.count
        out.u32(0x0605_4b50)
        out.u16(0)
        out.u16(0)
        out.u16(UInt16(count))
        out.u16(UInt16(count))
        out.u32(UInt32(central.count))
        out.u32(zip64 ? 0xffff_ffff : UInt32(directory))
        out.u16(0)
        layout.bytes = out.bytes
        return layout
    }
}

struct ByteBuffer {
    var bytes: [UInt8] = []
    var count: Int { bytes.count }
    mutating func raw(_ b: [UInt8]) { bytes += b }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes += $0 } }
}

/// CRC-32 (IEEE), so that the built archives are valid for other zip readers too.
func crc32(_ data: [UInt8]) -> UInt32 {
    var crc: UInt32 = 0xffff_ffff
    for byte in data {
        crc ^= UInt32(byte)
        for _ in 0..<8 { crc = (crc >> 1) ^ (crc & 1 == 1 ? 0xedb8_8320 : 0) }
    }
    return ~crc
}

/// Little-endian field edits on built bytes.
extension Array where Element == UInt8 {
    mutating func setU16(_ offset: Int, _ v: UInt16) {
        self[offset] = UInt8(v & 0xff)
        self[offset + 1] = UInt8(v >> 8)
    }

    mutating func setU32(_ offset: Int, _ v: UInt32) {
        for i in 0..<4 { self[offset + i] = UInt8((v >> (8 * UInt32(i))) & 0xff) }
    }

    mutating func setU64(_ offset: Int, _ v: UInt64) {
        for i in 0..<8 { self[offset + i] = UInt8((v >> (8 * UInt64(i))) & 0xff) }
    }
}
