import VLQCore

/// The callables and classes a `torch.save`d state dict names, and nothing else. A pickle naming any
/// other global is refused when the name is read, so nothing a hostile pickle names is ever reached.
enum AllowedGlobal: Equatable {
    case rebuildTensorV2
    case rebuildParameter
    case rebuildParameterWithState
    case orderedDict
    case device
    case storage(DType)

    init?(module: String, name: String) {
        switch (module, name) {
        case ("torch._utils", "_rebuild_tensor_v2"): self = .rebuildTensorV2
        case ("torch._utils", "_rebuild_parameter"): self = .rebuildParameter
        case ("torch._utils", "_rebuild_parameter_with_state"): self = .rebuildParameterWithState
        case ("collections", "OrderedDict"): self = .orderedDict
        case ("torch", "device"): self = .device
        case ("torch", _):
            guard let dtype = AllowedGlobal.storageTypes[name] else { return nil }
            self = .storage(dtype)
        default: return nil
        }
    }

    /// torch's legacy typed-storage class names, which torch.save still writes in persistent ids.
    static let storageTypes: [String: DType] = [
        "DoubleStorage": .f64, "FloatStorage": .f32, "HalfStorage": .f16, "BFloat16Storage": .bf16,
        "LongStorage": .i64, "IntStorage": .i32, "ShortStorage": .i16, "CharStorage": .i8,
        "ByteStorage": .u8, "BoolStorage": .bool,
    ]
}

/// A storage of the archive as a persistent id names it: `<archive>/data/<key>`.
struct StorageReference {
    var key: String
    var dtype: DType
    /// Elements the persistent id declares; checked to fit in the entry.
    var elementCount: Int
    /// Absolute offset of the storage's first byte in the file.
    var dataOffset: Int
}

/// A tensor rebuilt by `_rebuild_tensor_v2`, located in the file, not yet named.
struct TensorLocation {
    var dtype: DType
    var shape: [Int]
    var fileOffset: Int
    var byteCount: Int
    var strides: [Int]?
}

/// A value the unpickler built. Containers refer to other values by index into the unpickler's
/// arena: hostile nesting or cycles then cost neither recursion (building, inspecting, freeing)
/// nor more than O(pickle size) memory, since every opcode adds at most one value and one child.
enum PickleValue {
    case none
    case bool(Bool)
    case int(Int)
    case float(Double)
    case text(String)
    case bytes(count: Int)
    case tuple([Int])
    /// Index into the unpickler's lists: appends mutate it in place, shared through the memo as in Python.
    case list(Int)
    /// Index into the unpickler's dicts.
    case dict(Int)
    case global(AllowedGlobal)
    // Boxed: they are rare and large, and every other value stays small.
    indirect case storage(StorageReference)
    indirect case tensor(TensorLocation)
    case device(String)

    var kindName: String {
        switch self {
        case .none: return "None"
        case .bool: return "a bool"
        case .int: return "an int"
        case .float: return "a float"
        case .text: return "a string"
        case .bytes: return "bytes"
        case .tuple: return "a tuple"
        case .list: return "a list"
        case .dict: return "a dict"
        case .global: return "a class or function"
        case .storage: return "a storage"
        case .tensor: return "a tensor"
        case .device: return "a torch.device"
        }
    }
}

/// The pickle virtual machine for what `torch.save` writes (protocols 2 to 5), restricted so that it
/// never executes anything: globals come from `AllowedGlobal`, REDUCE/NEWOBJ only build the values
/// those globals stand for, BUILD is accepted only on dicts (an OrderedDict's `_metadata`) and ignored.
///
/// Every length, index and depth read from the pickle is checked against the bytes that remain or
/// against fixed limits before it is used; nothing is allocated by a declared size.
struct RestrictedUnpickler {
    /// Far above what a state dict needs (torch batches SETITEMS by 1000; a 34B shard has ~10^4 memo
    /// entries, ~15 values per tensor), small enough that a hostile pickle cannot exhaust memory with them.
    static let stackLimit = 1 << 20
    static let memoLimit = 1 << 22
    static let valueLimit = 1 << 22
    static let dimensionLimit = 64

    /// Where storage `key` lies in the file: absolute offset and size of `<archive>/data/<key>`.
    typealias StorageResolver = (_ key: String) throws -> (offset: Int, size: Int)

    private let pickle: UnsafeRawBufferPointer
    private let path: String
    private let entryName: String
    private let resolveStorage: StorageResolver
    /// The file's size. A view reused across elements (stride 0, a broadcast) is gathered into a copy of
    /// its full size when read; one larger than the whole file is refused, so that no declared shape
    /// makes a reader allocate more than the file it came from.
    private let fileSize: Int
    private var position = 0
    private var opcodeOffset = 0

    private(set) var values: [PickleValue] = []
    private(set) var lists: [[Int]] = []
    /// Key and value indices in insertion order (the order torch.save wrote the state dict).
    private(set) var dicts: [[(key: Int, value: Int)]] = []
    private var stack: [Int] = []
    private var marks: [Int] = []
    private var memo: [Int: Int] = [:]
    private var storages: [String: StorageReference] = [:]

    init(
        pickle: UnsafeRawBufferPointer, path: String, entryName: String, fileSize: Int,
        resolveStorage: @escaping StorageResolver
    ) {
        self.pickle = pickle
        self.fileSize = fileSize
        self.path = path
        self.entryName = entryName
        self.resolveStorage = resolveStorage
    }

    private func fail(_ reason: String, _ kind: TorchCheckpointError = .malformedPickle) -> VLQError {
        VLQError(kind, path, "\(entryName): \(reason)")
    }

    private func failHere(_ reason: String, _ kind: TorchCheckpointError = .malformedPickle) -> VLQError {
        fail("\(reason) (at byte \(opcodeOffset))", kind)
    }

    private func tensorFailure(_ reason: String) -> VLQError { failHere(reason, .malformedTensor) }

    // MARK: - Reading operands

    private mutating func take(_ count: Int, for opcode: String) throws -> UnsafeRawBufferPointer {
        guard count >= 0, count <= pickle.count - position else {
            throw failHere("\(opcode) declares \(count) bytes but only \(pickle.count - position) remain")
        }
        defer { position += count }
        return UnsafeRawBufferPointer(rebasing: pickle[position..<(position + count)])
    }

    private mutating func integer<T: FixedWidthInteger>(_: T.Type, for opcode: String) throws -> T {
        let raw = try take(MemoryLayout<T>.size, for: opcode)
        return T(littleEndian: raw.loadUnaligned(as: T.self))
    }

    /// A length operand, which must fit in what remains of the pickle: never trusted for allocation.
    private mutating func length<T: FixedWidthInteger>(_: T.Type, for opcode: String) throws -> Int {
        let declared = try integer(T.self, for: opcode)
        guard declared >= 0, UInt64(declared) <= UInt64(pickle.count - position) else {
            throw failHere("\(opcode) declares \(declared) bytes but only \(pickle.count - position) remain")
        }
        return Int(declared)
    }

    private mutating func text(_ count: Int, for opcode: String) throws -> String {
        let raw = try take(count, for: opcode)
        guard let string = String(validating: raw, as: UTF8.self) else {
            throw failHere("\(opcode) string is not valid UTF-8")
        }
        return string
    }

    /// Steps over the bytes of a bytes object, whose content no state dict value needs.
    private mutating func skip(_ count: Int) throws -> Int {
        try take(count, for: "bytes").count
    }

    /// One newline-terminated line (GLOBAL's operands), bounded by the pickle.
    private mutating func line(for opcode: String) throws -> String {
        let start = position
        while position < pickle.count, pickle[position] != 0x0a { position += 1 }
        guard position < pickle.count else { throw failHere("\(opcode) operand has no end of line") }
        let raw = UnsafeRawBufferPointer(rebasing: pickle[start..<position])
        position += 1
        guard let string = String(validating: raw, as: UTF8.self) else {
            throw failHere("\(opcode) operand is not valid UTF-8")
        }
        return string
    }

    // MARK: - Stack, memo, arena

    private mutating func push(_ value: PickleValue) throws {
        guard values.count < RestrictedUnpickler.valueLimit else {
            throw failHere("pickle builds more than \(RestrictedUnpickler.valueLimit) values")
        }
        values.append(value)
        try pushIndex(values.count - 1)
    }

    private mutating func pushIndex(_ index: Int) throws {
        guard stack.count < RestrictedUnpickler.stackLimit else {
            throw failHere("pickle stack deeper than \(RestrictedUnpickler.stackLimit)")
        }
        stack.append(index)
    }

    private mutating func pop(for opcode: String) throws -> Int {
        guard let top = stack.last, stack.count > (marks.last ?? 0) else {
            throw failHere("\(opcode) on an empty stack")
        }
        stack.removeLast()
        return top
    }

    private func top(for opcode: String) throws -> Int {
        guard let top = stack.last, stack.count > (marks.last ?? 0) else {
            throw failHere("\(opcode) on an empty stack")
        }
        return top
    }

    /// The items pushed since the last MARK, which is removed.
    private mutating func popToMark(for opcode: String) throws -> [Int] {
        guard let mark = marks.popLast() else { throw failHere("\(opcode) without a MARK") }
        // Copied out before the removal, which then happens in place.
        let items = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return items
    }

    private mutating func memoize(_ key: Int, for opcode: String) throws {
        let value = try top(for: opcode)
        guard memo.count < RestrictedUnpickler.memoLimit || memo[key] != nil else {
            throw failHere("pickle memo larger than \(RestrictedUnpickler.memoLimit) entries")
        }
        memo[key] = value
    }

    private mutating func recall(_ key: Int, for opcode: String) throws {
        guard let index = memo[key] else { throw failHere("\(opcode) \(key) of a value never memoized") }
        try pushIndex(index)
    }

    private mutating func tuple(_ items: some Collection<Int>) throws {
        try push(.tuple(Array(items)))
    }

    // MARK: - The machine

    /// Runs the pickle to its STOP and returns the index of the value it produces.
    mutating func run() throws -> Int {
        while position < pickle.count {
            opcodeOffset = position
            let opcode = pickle[position]
            position += 1
            switch opcode {
            case 0x80:  // PROTO
                let version = try integer(UInt8.self, for: "PROTO")
                guard (2...5).contains(version) else { throw failHere("pickle protocol \(version) (2 to 5 are read)") }
            case 0x95:  // FRAME: a length hint for buffered reading, checked and otherwise ignored
                _ = try length(UInt64.self, for: "FRAME")
            case 0x2e:  // STOP
                guard marks.isEmpty else { throw failHere("STOP with an unclosed MARK") }
                return try pop(for: "STOP")
            case 0x4e: try push(.none)  // NONE
            case 0x88: try push(.bool(true))  // NEWTRUE
            case 0x89: try push(.bool(false))  // NEWFALSE
            case 0x4a: try push(.int(Int(try integer(Int32.self, for: "BININT"))))
            case 0x4b: try push(.int(Int(try integer(UInt8.self, for: "BININT1"))))
            case 0x4d: try push(.int(Int(try integer(UInt16.self, for: "BININT2"))))
            case 0x8a: try push(.int(try long(byteCount: Int(try integer(UInt8.self, for: "LONG1")), for: "LONG1")))
            case 0x8b: try push(.int(try long(byteCount: try length(UInt32.self, for: "LONG4"), for: "LONG4")))
            case 0x47:  // BINFLOAT: big-endian IEEE 754 double
                let bits = UInt64(bigEndian: try take(8, for: "BINFLOAT").loadUnaligned(as: UInt64.self))
                try push(.float(Double(bitPattern: bits)))
            case 0x58: try push(.text(try text(try length(UInt32.self, for: "BINUNICODE"), for: "BINUNICODE")))
            case 0x8c:
                try push(.text(try text(try length(UInt8.self, for: "SHORT_BINUNICODE"), for: "SHORT_BINUNICODE")))
            case 0x8d: try push(.text(try text(try length(UInt64.self, for: "BINUNICODE8"), for: "BINUNICODE8")))
            // Protocol-2 byte strings: torch.load decodes them as UTF-8 text, and so does this reader.
            case 0x55: try push(.text(try text(try length(UInt8.self, for: "SHORT_BINSTRING"), for: "SHORT_BINSTRING")))
            case 0x54: try push(.text(try text(try length(Int32.self, for: "BINSTRING"), for: "BINSTRING")))
            case 0x43: try push(.bytes(count: try skip(try length(UInt8.self, for: "SHORT_BINBYTES"))))
            case 0x42: try push(.bytes(count: try skip(try length(UInt32.self, for: "BINBYTES"))))
            case 0x8e: try push(.bytes(count: try skip(try length(UInt64.self, for: "BINBYTES8"))))
            case 0x29: try tuple([])  // EMPTY_TUPLE
            case 0x74: try tuple(try popToMark(for: "TUPLE"))
            case 0x85:  // TUPLE1
                let a = try pop(for: "TUPLE1")
                try tuple([a])
            case 0x86:  // TUPLE2
                let b = try pop(for: "TUPLE2"), a = try pop(for: "TUPLE2")
                try tuple([a, b])
            case 0x87:  // TUPLE3
                let c = try pop(for: "TUPLE3"), b = try pop(for: "TUPLE3"), a = try pop(for: "TUPLE3")
                try tuple([a, b, c])
            case 0x5d:  // EMPTY_LIST
                lists.append([])
                try push(.list(lists.count - 1))
            case 0x61:  // APPEND
                let item = try pop(for: "APPEND")
                try append([item], for: "APPEND")
            case 0x65: try append(Array(try popToMark(for: "APPENDS")), for: "APPENDS")
            case 0x7d:  // EMPTY_DICT
                dicts.append([])
                try push(.dict(dicts.count - 1))
            case 0x73:  // SETITEM
                let value = try pop(for: "SETITEM"), key = try pop(for: "SETITEM")
                try setItems([key, value], for: "SETITEM")
            case 0x75: try setItems(Array(try popToMark(for: "SETITEMS")), for: "SETITEMS")
            case 0x28:  // MARK
                guard marks.count < RestrictedUnpickler.stackLimit else {
                    throw failHere("more than \(RestrictedUnpickler.stackLimit) open MARKs")
                }
                marks.append(stack.count)
            case 0x30: _ = try pop(for: "POP")
            case 0x31: _ = try popToMark(for: "POP_MARK")
            case 0x32: try pushIndex(try top(for: "DUP"))
            case 0x71: try memoize(Int(try integer(UInt8.self, for: "BINPUT")), for: "BINPUT")
            case 0x72: try memoize(Int(try integer(UInt32.self, for: "LONG_BINPUT")), for: "LONG_BINPUT")
            case 0x94: try memoize(memo.count, for: "MEMOIZE")
            case 0x68: try recall(Int(try integer(UInt8.self, for: "BINGET")), for: "BINGET")
            case 0x6a: try recall(Int(try integer(UInt32.self, for: "LONG_BINGET")), for: "LONG_BINGET")
            case 0x63:  // GLOBAL
                let module = try line(for: "GLOBAL"), name = try line(for: "GLOBAL")
                try push(.global(try allowedGlobal(module: module, name: name)))
            case 0x93:  // STACK_GLOBAL
                let name = try pop(for: "STACK_GLOBAL"), module = try pop(for: "STACK_GLOBAL")
                guard case .text(let moduleText) = values[module], case .text(let nameText) = values[name] else {
                    throw failHere("STACK_GLOBAL operands are not strings")
                }
                try push(.global(try allowedGlobal(module: moduleText, name: nameText)))
            case 0x52:  // REDUCE
                let arguments = try pop(for: "REDUCE"), callable = try pop(for: "REDUCE")
                try push(try call(callable, arguments, for: "REDUCE"))
            case 0x81:  // NEWOBJ: cls.__new__(cls, *args); only an empty OrderedDict is built this way
                let arguments = try pop(for: "NEWOBJ"), cls = try pop(for: "NEWOBJ")
                guard case .global(.orderedDict) = values[cls] else {
                    throw failHere("NEWOBJ of \(values[cls].kindName), not collections.OrderedDict")
                }
                try push(try call(cls, arguments, for: "NEWOBJ"))
            case 0x62:  // BUILD
                let state = try pop(for: "BUILD"), target = try top(for: "BUILD")
                try build(target, state: state)
            case 0x51:  // BINPERSID
                let id = try pop(for: "BINPERSID")
                try push(.storage(try persistentStorage(id)))
            default:
                throw refusedOpcode(opcode)
            }
        }
        throw fail("the pickle ends without STOP")
    }

    /// LONG1/LONG4: little-endian two's complement; anything wider than 64 bits is not a size or offset.
    private mutating func long(byteCount: Int, for opcode: String) throws -> Int {
        guard byteCount <= 8 else { throw failHere("\(opcode) integer of \(byteCount) bytes (at most 8 are read)") }
        let raw = try take(byteCount, for: opcode)
        guard byteCount > 0 else { return 0 }
        var value: UInt64 = 0
        for (shift, byte) in raw.enumerated() { value |= UInt64(byte) << (8 * UInt64(shift)) }
        let unusedBits = UInt64(64 - 8 * byteCount)
        // Sign-extend from the top byte read.
        return Int(Int64(bitPattern: value << unusedBits) >> Int64(unusedBits))
    }

    private func allowedGlobal(module: String, name: String) throws -> AllowedGlobal {
        guard let global = AllowedGlobal(module: module, name: name) else {
            let shown = "\(module.prefix(200)).\(name.prefix(200))"
            throw VLQError(
                TorchCheckpointError.refusedGlobal,
                path,
                "\(entryName) names the global \(shown), which a checkpoint of tensors never needs; "
                    + "refused without running anything")
        }
        return global
    }

    private func refusedOpcode(_ opcode: UInt8) -> VLQError {
        let hex = "0x" + String(opcode, radix: 16)
        if let name = RestrictedUnpickler.otherOpcodeNames[opcode] {
            return failHere("pickle opcode \(name) (\(hex)), which torch.save does not write; refused", .refusedOpcode)
        }
        return failHere("unknown pickle opcode \(hex)", .refusedOpcode)
    }

    /// Opcodes of the pickle protocols that torch.save does not write, named in refusals.
    private static let otherOpcodeNames: [UInt8: String] = [
        0x49: "INT", 0x4c: "LONG", 0x46: "FLOAT", 0x53: "STRING", 0x56: "UNICODE", 0x50: "PERSID",
        0x67: "GET", 0x70: "PUT", 0x69: "INST", 0x6f: "OBJ", 0x6c: "LIST", 0x64: "DICT",
        0x82: "EXT1", 0x83: "EXT2", 0x84: "EXT4", 0x8f: "EMPTY_SET", 0x90: "ADDITEMS", 0x91: "FROZENSET",
        0x92: "NEWOBJ_EX", 0x96: "BYTEARRAY8", 0x97: "NEXT_BUFFER", 0x98: "READONLY_BUFFER",
    ]

    private mutating func append(_ items: [Int], for opcode: String) throws {
        let target = try top(for: opcode)
        guard case .list(let list) = values[target] else {
            throw failHere("\(opcode) to \(values[target].kindName), not a list")
        }
        lists[list].append(contentsOf: items)
    }

    private mutating func setItems(_ items: [Int], for opcode: String) throws {
        let target = try top(for: opcode)
        guard case .dict(let dict) = values[target] else {
            throw failHere("\(opcode) on \(values[target].kindName), not a dict")
        }
        guard items.count % 2 == 0 else { throw failHere("\(opcode) with a key and no value") }
        for pair in stride(from: 0, to: items.count, by: 2) {
            dicts[dict].append((key: items[pair], value: items[pair + 1]))
        }
    }

    /// BUILD sets an object's state. A state dict is an OrderedDict whose `_metadata` attribute (module
    /// versions) comes this way: accepted on dicts and ignored; on anything else it would run code.
    private mutating func build(_ target: Int, state: Int) throws {
        guard case .dict = values[target] else {
            throw failHere("BUILD on \(values[target].kindName); only a state dict's attributes are accepted")
        }
        switch values[state] {
        case .dict, .none: return
        default: throw failHere("BUILD with \(values[state].kindName) as state; only a dict is accepted")
        }
    }

    private func tupleItems(_ index: Int, for opcode: String) throws -> [Int] {
        guard case .tuple(let items) = values[index] else {
            throw failHere("\(opcode) arguments are \(values[index].kindName), not a tuple")
        }
        return items
    }

    /// REDUCE/NEWOBJ: builds the value an allowed global stands for from its arguments.
    private mutating func call(_ callable: Int, _ argumentsIndex: Int, for opcode: String) throws -> PickleValue {
        guard case .global(let global) = values[callable] else {
            throw failHere("\(opcode) calls \(values[callable].kindName)")
        }
        let arguments = try tupleItems(argumentsIndex, for: opcode)
        switch global {
        case .orderedDict:
            guard arguments.isEmpty else { throw failHere("collections.OrderedDict called with arguments") }
            dicts.append([])
            return .dict(dicts.count - 1)
        case .rebuildTensorV2:
            return .tensor(try rebuildTensor(arguments))
        case .rebuildParameter, .rebuildParameterWithState:
            // (data, requires_grad, backward_hooks[, state]): the Parameter is its data tensor.
            let expected = global == .rebuildParameter ? 3 : 4
            guard arguments.count == expected, case .tensor(let tensor) = values[arguments[0]] else {
                throw failHere("_rebuild_parameter needs a tensor and \(expected - 1) more arguments")
            }
            return .tensor(tensor)
        case .device:
            guard (1...2).contains(arguments.count), case .text(let name) = values[arguments[0]] else {
                throw failHere("torch.device needs a device name")
            }
            return .device(name)
        case .storage(let dtype):
            throw failHere("\(opcode) calls the storage class of \(dtype.rawValue), which torch.save never does")
        }
    }

    /// BINPERSID: ('storage', storage class, key, location, element count) names `<archive>/data/<key>`.
    private mutating func persistentStorage(_ id: Int) throws -> StorageReference {
        guard case .tuple(let items) = values[id], items.count == 5,
            case .text("storage") = values[items[0]],
            case .global(.storage(let dtype)) = values[items[1]],
            case .text(let key) = values[items[2]],
            case .text = values[items[3]],
            case .int(let elementCount) = values[items[4]]
        else {
            throw tensorFailure("persistent id is not ('storage', storage class, key, location, element count)")
        }
        if let known = storages[key] {
            guard known.dtype == dtype, known.elementCount == elementCount else {
                throw tensorFailure(
                    "storage \(key) is named as \(known.elementCount) \(known.dtype.rawValue) and as "
                        + "\(elementCount) \(dtype.rawValue)")
            }
            return known
        }
        guard elementCount >= 0, let bytes = Checked.multiply(elementCount, dtype.byteSize) else {
            throw tensorFailure("storage \(key) declares \(elementCount) elements")
        }
        let entry = try resolveStorage(key)
        guard bytes <= entry.size else {
            throw tensorFailure(
                "storage \(key) declares \(elementCount) \(dtype.rawValue) elements (\(bytes) bytes) "
                    + "but its data entry holds \(entry.size) bytes")
        }
        let storage = StorageReference(key: key, dtype: dtype, elementCount: elementCount, dataOffset: entry.offset)
        storages[key] = storage
        return storage
    }

    private func dimensions(_ index: Int, what: String) throws -> [Int] {
        guard case .tuple(let items) = values[index], items.count <= RestrictedUnpickler.dimensionLimit else {
            throw tensorFailure(
                "tensor \(what) is not a tuple of at most \(RestrictedUnpickler.dimensionLimit) integers")
        }
        return try items.map { item in
            guard case .int(let value) = values[item], value >= 0 else {
                throw tensorFailure("tensor \(what) holds \(values[item].kindName) that is not a non-negative integer")
            }
            return value
        }
    }

    /// `_rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])`:
    /// a view of `storage`, checked to lie inside it, contiguous (strides nil) when its strides are the
    /// row-major ones of its shape, ignoring dimensions of size 1, whose stride never moves the address.
    private func rebuildTensor(_ arguments: [Int]) throws -> TensorLocation {
        guard arguments.count == 6 || arguments.count == 7, case .storage(let storage) = values[arguments[0]],
            case .int(let storageOffset) = values[arguments[1]], case .bool = values[arguments[4]]
        else {
            throw tensorFailure(
                "_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, requires_grad, "
                    + "hooks[, metadata])")
        }
        let shape = try dimensions(arguments[2], what: "size")
        var strides = try dimensions(arguments[3], what: "stride")
        guard strides.count == shape.count else {
            throw tensorFailure("tensor of \(shape.count) dimensions with \(strides.count) strides")
        }
        // Also with the empty dimensions taken as 1, so that no product over the shape can overflow.
        guard let elementCount = Checked.product(shape), Checked.product(shape.map { max($0, 1) }) != nil,
            let byteCount = Checked.multiply(elementCount, storage.dtype.byteSize)
        else {
            throw tensorFailure("tensor size \(shape) overflows")
        }
        let contiguous = TensorInfo.contiguousStrides(shape)
        var lastElement = storageOffset
        if elementCount > 0 {
            for axis in shape.indices {
                guard let reach = Checked.multiply(shape[axis] - 1, strides[axis]),
                    let sum = Checked.add(lastElement, reach)
                else {
                    throw tensorFailure("tensor size \(shape) with stride \(strides) overflows")
                }
                lastElement = sum
            }
        }
        guard storageOffset >= 0,
            lastElement < storage.elementCount
                || (elementCount == 0
                    && lastElement
                        <= storage.elementCount)
        else {
            throw tensorFailure(
                "tensor at offset \(storageOffset) of size \(shape) and stride \(strides) reaches past "
                    + "its storage \(storage.key) of \(storage.elementCount) elements")
        }
        for axis in shape.indices where shape[axis] == 1 { strides[axis] = contiguous[axis] }
        let isContiguous = elementCount == 0 || strides == contiguous
        guard isContiguous || byteCount <= fileSize else {
            throw tensorFailure(
                "tensor view of size \(shape) and stride \(strides) would gather \(byteCount) bytes, "
                    + "more than the whole file holds")
        }
        return TensorLocation(
            dtype: storage.dtype, shape: shape,
            fileOffset: storage.dataOffset + storageOffset * storage.dtype.byteSize,
            byteCount: byteCount, strides: isContiguous ? nil : strides)
    }
}
