#!/usr/bin/env python3
"""Reader of .vlq bundles (formats/VLQ-BUNDLE.md), written from the spec with numpy only.

    python3 tools/vlq_reader.py check  model.vlq          # structure + every tensor checksum
    python3 tools/vlq_reader.py list   model.vlq          # name, encoding, shape, bytes
    python3 tools/vlq_reader.py metadata model.vlq        # the metadata JSON
    python3 tools/vlq_reader.py dump   model.vlq NAME     # a tensor's values as float32 (--full: all)

As a library (`pip install -e tools/`, then `import vlq_reader`):

    b = VLQBundle("model.vlq")
    x = b.tensor("model.norm.weight")                     # float32 (f32: a view; bf16/f16/quantized: decoded)
    w = b.tensor("model.layers.0.mlp.up_proj.weight", raw=True)   # the stored elements, a view into the mmap

Checksums are XXH3-64. The `xxhash` module is used when installed, else libxxhash through ctypes,
else the pure numpy implementation below (slow on gigabytes, fine for small bundles).
"""

import ctypes
import ctypes.util
import json
import mmap
import os
import shutil
import struct
import subprocess
import sys

import numpy as np

MAGIC = b"\x89VLQ\r\n\x1a\n"
HEADER_SIZE = 128
ENCODINGS = {0: ("f32", "<f4", 4), 1: ("f16", "<f2", 2), 2: ("bf16", "<u2", 2)}
QUANTIZED = {32: "q8", 33: "q4", 34: "q4s", 35: "q3"}  # q3: format 1.1
PLANE_ALIGNMENT = 64
Q3_BLOCK, Q3_BLOCK_BYTES = 32, 12  # q3: 32 codes per 12 bytes (2-bit plane, then 1-bit plane)


def _align(x, a):
    return (x + a - 1) // a * a


def quantized_layout(encoding, shape, group_size):
    """(values bytes, scales offset, biases offset or None, total bytes) per the spec, or None if invalid."""
    if not shape or group_size <= 0:
        return None
    columns = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    if columns <= 0 or columns % group_size or (encoding in ("q4", "q4s") and group_size % 2):
        return None
    if encoding == "q3" and group_size % Q3_BLOCK:
        return None
    elements = rows * columns
    values = {"q8": elements, "q3": elements // Q3_BLOCK * Q3_BLOCK_BYTES}.get(encoding, elements // 2)
    parameters = rows * (columns // group_size) * 2
    scales = _align(values, PLANE_ALIGNMENT)
    if encoding in ("q4", "q3"):
        biases = _align(scales + parameters, PLANE_ALIGNMENT)
        return values, scales, biases, biases + parameters
    return values, scales, None, scales + parameters


def q3_codes(raw):
    """The codes 0..7 of q3 blocks, in element order: element e of a block has its low two bits at bits 2 (e // 8)
    of byte e % 8 and its high bit at bit e % 8 of byte 8 + e // 8."""
    blocks = raw.reshape(-1, Q3_BLOCK_BYTES)
    low = (blocks[:, None, 0:8] >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3  # [block, e // 8, e % 8]
    high = (blocks[:, 8:12, None] >> np.arange(8, dtype=np.uint8)[None, None, :]) & 1  # [block, e // 8, e % 8]
    return (low | high << 2).reshape(-1)


def dequantize(data, encoding, shape, group_size):
    """Decodes a quantized tensor's bytes (q8, q4, q4s, q3) to float32 of `shape` (formats/VLQ-BUNDLE.md, section 5)."""
    layout = quantized_layout(encoding, shape, group_size)
    if layout is None or len(data) != layout[3]:
        raise VLQFormatError(f"{encoding} data of {len(data)} bytes does not fit shape {shape} group {group_size}")
    values_bytes, scales_offset, biases_offset, _ = layout
    columns = shape[-1]
    rows = 1
    for d in shape[:-1]:
        rows *= d
    groups = columns // group_size
    raw = np.frombuffer(data, dtype=np.uint8, count=values_bytes)
    scales = np.frombuffer(data, dtype="<f2", count=rows * groups, offset=scales_offset).astype(np.float32).reshape(rows, groups, 1)
    if encoding == "q8":
        codes = raw.view(np.int8).astype(np.float32).reshape(rows, groups, group_size)
        out = codes * scales
    else:
        if encoding == "q3":
            nibbles = q3_codes(raw).astype(np.float32)
        else:
            nibbles = np.empty(rows * columns, dtype=np.float32)
            nibbles[0::2] = raw & 0x0F
            nibbles[1::2] = raw >> 4
        nibbles = nibbles.reshape(rows, groups, group_size)
        if encoding in ("q4", "q3"):
            biases = np.frombuffer(data, dtype="<f2", count=rows * groups, offset=biases_offset).astype(np.float32).reshape(rows, groups, 1)
        else:
            biases = np.float32(-8) * scales
        out = nibbles * scales + biases
    return out.astype(np.float32).reshape(shape)
COMPONENTS = {0: "vision", 1: "projector", 2: "language"}
SOURCE_DTYPES = {0: "f32", 1: "f16", 2: "bf16", 255: "unknown"}
MASK64 = (1 << 64) - 1


class VLQFormatError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# XXH3-64, seed 0, default secret (xxHash 0.8)

_SECRET = bytes.fromhex(
    "b8fe6c3923a44bbe7c01812cf721ad1cded46de9839097db7240a4a4b7b3671f"
    "cb79e64eccc0e578825ad07dccff7221b8084674f743248ee03590e6813a264c"
    "3c2852bb91c300cb88d0658b1b532ea371644897a20df94e3819ef46a9deacd8"
    "a8fa763fe39c343ff9dcbbc7c70b4f1d8a51e04bcdb45931c89f7ec9d9787364"
    "eac5ac8334d3ebc3c581a0fffa1363eb170ddd51b7f0da49d316552629d4689e"
    + "2b16be587d47a1fc8ff8b8d17ad031ce45cb3a8f95160428afd7fbcabb4b407e"
)
P32_1, P32_2, P32_3 = 0x9E3779B1, 0x85EBCA77, 0xC2B2AE3D
P64_1, P64_2, P64_3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P64_4, P64_5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5
PMX1, PMX2 = 0x165667919E3779F9, 0x9FB21C651E98DF25


def _r64(b, o):
    return int.from_bytes(b[o:o + 8], "little")


def _r32(b, o):
    return int.from_bytes(b[o:o + 4], "little")


def _fold(a, b):
    p = a * b
    return (p & MASK64) ^ (p >> 64)


def _avalanche(h):
    h ^= h >> 37
    h = (h * PMX1) & MASK64
    return h ^ (h >> 32)


def _xxh64_avalanche(h):
    h ^= h >> 33
    h = (h * P64_2) & MASK64
    h ^= h >> 29
    h = (h * P64_3) & MASK64
    return h ^ (h >> 32)


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & MASK64


def _mix16(b, o, so):
    return _fold(_r64(b, o) ^ _r64(_SECRET, so), _r64(b, o + 8) ^ _r64(_SECRET, so + 8))


def _xxh3_short(b):
    n = len(b)
    s = _SECRET
    if n == 0:
        return _xxh64_avalanche(_r64(s, 56) ^ _r64(s, 64))
    if n <= 3:
        combined = (b[0] << 16) | (b[n >> 1] << 24) | b[n - 1] | (n << 8)
        return _xxh64_avalanche(combined ^ (_r32(s, 0) ^ _r32(s, 4)))
    if n <= 8:
        keyed = ((_r32(b, n - 4) + (_r32(b, 0) << 32)) ^ (_r64(s, 8) ^ _r64(s, 16))) & MASK64
        h = keyed ^ _rotl(keyed, 49) ^ _rotl(keyed, 24)
        h = (h * PMX2) & MASK64
        h ^= (h >> 35) + n
        h = (h * PMX2) & MASK64
        return h ^ (h >> 28)
    if n <= 16:
        lo = _r64(b, 0) ^ (_r64(s, 24) ^ _r64(s, 32))
        hi = _r64(b, n - 8) ^ (_r64(s, 40) ^ _r64(s, 48))
        swapped = int.from_bytes(lo.to_bytes(8, "little"), "big")
        return _avalanche((n + swapped + hi + _fold(lo, hi)) & MASK64)
    if n <= 128:
        acc = (n * P64_1) & MASK64
        if n > 32:
            if n > 64:
                if n > 96:
                    acc += _mix16(b, 48, 96) + _mix16(b, n - 64, 112)
                acc += _mix16(b, 32, 64) + _mix16(b, n - 48, 80)
            acc += _mix16(b, 16, 32) + _mix16(b, n - 32, 48)
        acc += _mix16(b, 0, 0) + _mix16(b, n - 16, 16)
        return _avalanche(acc & MASK64)
    acc = (n * P64_1) & MASK64
    for i in range(8):
        acc += _mix16(b, 16 * i, 16 * i)
    acc = _avalanche(acc & MASK64)
    for i in range(8, n // 16):
        acc += _mix16(b, 16 * i, 16 * (i - 8) + 3)
    acc += _mix16(b, n - 16, 136 - 17)
    return _avalanche(acc & MASK64)


_SECRET_WORDS = np.array([_r64(_SECRET, 8 * i) for i in range(24)], dtype=np.uint64)
# Stripe s of a block reads the secret at byte 8*s: lane i uses secret word s+i.
_BLOCK_KEYS = np.array([[_SECRET_WORDS[s + i] for i in range(8)] for s in range(16)], dtype=np.uint64)
_SWAP = np.array([1, 0, 3, 2, 5, 4, 7, 6])
_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _stripe_sums(data_words, keys):
    """Sum over stripes of one accumulate step, for every block at once (wrapping uint64)."""
    keyed = data_words ^ keys
    product = (keyed & _M32) * (keyed >> _S32)
    return product.sum(axis=-2, dtype=np.uint64) + data_words.sum(axis=-2, dtype=np.uint64)[..., _SWAP]


def _accumulate_py(acc, b, offset, secret_offset):
    for i in range(8):
        v = _r64(b, offset + 8 * i)
        k = v ^ _r64(_SECRET, secret_offset + 8 * i)
        acc[i ^ 1] = (acc[i ^ 1] + v) & MASK64
        acc[i] = (acc[i] + (k & 0xFFFFFFFF) * (k >> 32)) & MASK64


def _xxh3_long(b):
    n = len(b)
    acc = [P32_3, P64_1, P64_2, P64_3, P64_4, P32_2, P64_5, P32_1]
    scramble_keys = [_r64(_SECRET, 192 - 64 + 8 * i) for i in range(8)]
    nb_blocks = (n - 1) // 1024
    words = np.frombuffer(b, dtype="<u8", count=nb_blocks * 128) if nb_blocks else None
    chunk = 1 << 14
    with np.errstate(over="ignore"):
        for start in range(0, nb_blocks, chunk):
            stop = min(nb_blocks, start + chunk)
            sums = _stripe_sums(words[start * 128:stop * 128].reshape(-1, 16, 8), _BLOCK_KEYS).tolist()
            for block in sums:
                for i in range(8):
                    a = (acc[i] + block[i]) & MASK64
                    a ^= a >> 47
                    a ^= scramble_keys[i]
                    acc[i] = (a * P32_1) & MASK64
    base = nb_blocks * 1024
    for s in range(((n - 1) - base) // 64):
        _accumulate_py(acc, b, base + 64 * s, 8 * s)
    _accumulate_py(acc, b, n - 64, 192 - 64 - 7)
    result = (n * P64_1) & MASK64
    for i in range(4):
        result += _fold(acc[2 * i] ^ _r64(_SECRET, 11 + 16 * i), acc[2 * i + 1] ^ _r64(_SECRET, 11 + 16 * i + 8))
    return _avalanche(result & MASK64)


def xxh3_64_numpy(data):
    b = memoryview(data).cast("B")
    return _xxh3_short(b) if len(b) <= 240 else _xxh3_long(b)


def _libxxhash():
    name = ctypes.util.find_library("xxhash")
    for candidate in [name, "libxxhash.so.0"]:
        if not candidate:
            continue
        try:
            lib = ctypes.CDLL(candidate)
            lib.XXH3_64bits.restype = ctypes.c_uint64
            lib.XXH3_64bits.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
            return lib
        except OSError:
            continue
    return None


def pick_hasher(implementation="auto"):
    """Returns (name, function bytes-like -> int)."""
    if implementation in ("auto", "xxhash"):
        try:
            import xxhash  # noqa: PLC0415

            return "xxhash", lambda data: xxhash.xxh3_64_intdigest(data)
        except ImportError:
            if implementation == "xxhash":
                raise
    if implementation in ("auto", "libxxhash"):
        lib = _libxxhash()
        if lib is not None:
            def digest(data):
                array = np.frombuffer(data, dtype=np.uint8)
                return lib.XXH3_64bits(array.ctypes.data, array.size) if array.size else lib.XXH3_64bits(None, 0)
            return "libxxhash", digest
        if implementation == "libxxhash":
            raise VLQFormatError("libxxhash not found")
    return "numpy", xxh3_64_numpy


# ---------------------------------------------------------------------------------------------
# The bundle


class TensorEntry:
    __slots__ = ("name", "encoding", "component", "shape", "group_size", "source_dtype", "offset", "size", "xxh3")

    def __init__(self, **kw):
        for k, v in kw.items():
            setattr(self, k, v)

    def as_dict(self):
        return {k: getattr(self, k) for k in self.__slots__}


def _decompress_zstd(data, expected):
    try:
        from compression import zstd  # Python 3.14+

        return zstd.decompress(data)
    except ImportError:
        pass
    try:
        import zstandard  # noqa: PLC0415

        return zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except ImportError:
        pass
    if shutil.which("zstd"):
        return subprocess.run(["zstd", "-d", "-c", "-q"], input=bytes(data), capture_output=True, check=True).stdout
    raise VLQFormatError("metadata is zstd-compressed and no zstd decoder is available (install zstandard or the zstd tool)")


class VLQBundle:
    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise VLQFormatError(f"{path}: not a .vlq bundle (empty file)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self.buffer = memoryview(self._map)
        self._parse_header(size)
        self._parse_table()
        self._metadata = None

    def _fail(self, reason):
        raise VLQFormatError(f"{self.path}: {reason}")

    def _parse_header(self, size):
        b = self.buffer
        if len(b) < 8 or bytes(b[:8]) != MAGIC:
            self._fail("not a .vlq bundle (bad magic)")
        if len(b) < HEADER_SIZE:
            self._fail("truncated header")
        (self.major, self.minor, self.header_size, self.file_size, self.alignment, self.flags,
         self.data_offset, self.data_size, self.table_offset, self.table_size, self.tensor_count,
         self.metadata_offset, self.metadata_stored_size, self.metadata_size, self.metadata_compression,
         _reserved, self.table_xxh3, self.metadata_xxh3, header_xxh3) = struct.unpack_from("<HHIQIIQQQQQQQQIIQQQ", b, 8)
        self.hasher_name, self._hash = pick_hasher()
        if header_xxh3 != self._hash(b[:120]):
            self._fail("header checksum mismatch: the header is corrupted")
        if self.major != 1:
            self._fail(f"format version {self.major}.{self.minor} is not supported")
        if self.file_size != size:
            self._fail(f"truncated: the header says {self.file_size} bytes, the file has {size}"
                       if self.file_size > size else "unexpected bytes after the end the header gives")
        if self.alignment < 64 or self.alignment & (self.alignment - 1) or self.alignment > 1 << 20:
            self._fail(f"alignment {self.alignment} is out of range")
        sections = [("data region", self.data_offset, self.data_size), ("tensor table", self.table_offset, self.table_size),
                    ("metadata", self.metadata_offset, self.metadata_stored_size)]
        for name, off, n in sections:
            if off < self.header_size or off + n > size:
                self._fail(f"{name} lies outside the file")
        for i, (na, oa, sa) in enumerate(sections):
            for nb, ob, sb in sections[i + 1:]:
                if sa and sb and oa < ob + sb and ob < oa + sa:
                    self._fail(f"{na} and {nb} overlap")

    def _parse_table(self):
        table = self.buffer[self.table_offset:self.table_offset + self.table_size]
        if self._hash(table) != self.table_xxh3:
            self._fail("tensor table checksum mismatch: the table is corrupted")
        pos = 0
        self.tensors = []
        self._by_name = {}
        for index in range(self.tensor_count):
            if pos + 40 > len(table):
                self._fail(f"tensor table entry {index} runs past the end of the table")
            (entry_size, encoding, component, rank, group_size, name_length, source, _r,
             offset, size, digest) = struct.unpack_from("<IHBBIHBBQQQ", table, pos)
            if rank > 8 or name_length == 0 or entry_size % 8 or entry_size < 40 + 8 * rank + name_length \
                    or pos + entry_size > len(table):
                self._fail(f"tensor table entry {index} is malformed")
            shape = list(struct.unpack_from(f"<{rank}Q", table, pos + 40))
            name = bytes(table[pos + 40 + 8 * rank:pos + 40 + 8 * rank + name_length]).decode("utf-8")
            if encoding not in ENCODINGS and encoding not in QUANTIZED:
                self._fail(f"tensor {name}: unknown encoding {encoding}")
            if component not in COMPONENTS:
                self._fail(f"tensor {name}: unknown component {component}")
            if name in self._by_name:
                self._fail(f"tensor {name} appears twice")
            count = 1
            for d in shape:
                count *= d
            if encoding in QUANTIZED:
                layout = quantized_layout(QUANTIZED[encoding], shape, group_size)
                expected = layout[3] if layout else None
            else:
                expected = count * ENCODINGS[encoding][2] if group_size == 0 else None
            if expected != size:
                self._fail(f"tensor {name}: {size} bytes do not match shape {shape}")
            if offset % self.alignment or offset < self.data_offset or offset + size > self.data_offset + self.data_size:
                self._fail(f"tensor {name}: data lies outside the data region or is misaligned")
            entry = TensorEntry(name=name, encoding=QUANTIZED.get(encoding) or ENCODINGS[encoding][0], component=COMPONENTS[component], shape=shape,
                                group_size=group_size, source_dtype=SOURCE_DTYPES.get(source, "unknown"),
                                offset=offset, size=size, xxh3=digest)
            self._by_name[name] = entry
            self.tensors.append(entry)
            pos += entry_size
        if pos != len(table):
            self._fail("unused bytes at the end of the tensor table")
        ordered = sorted(self.tensors, key=lambda t: (t.offset, t.size))
        for a, b in zip(ordered, ordered[1:]):
            if b.size and a.offset + a.size > b.offset:
                self._fail(f"tensors {a.name} and {b.name} overlap")

    @property
    def metadata(self):
        if self._metadata is None:
            stored = self.buffer[self.metadata_offset:self.metadata_offset + self.metadata_stored_size]
            if self._hash(stored) != self.metadata_xxh3:
                self._fail("metadata checksum mismatch: the metadata is corrupted")
            if self.metadata_compression == 0:
                raw = bytes(stored)
            elif self.metadata_compression == 1:
                raw = _decompress_zstd(stored, self.metadata_size)
            else:
                self._fail(f"unknown metadata compression {self.metadata_compression}")
            if len(raw) != self.metadata_size:
                self._fail("metadata size mismatch")
            self._metadata = json.loads(raw.decode("utf-8"))
        return self._metadata

    def entry(self, name):
        if name not in self._by_name:
            raise KeyError(f"{self.path}: no tensor named {name}")
        return self._by_name[name]

    def raw(self, name):
        t = self.entry(name)
        return self.buffer[t.offset:t.offset + t.size]

    def tensor(self, name, raw=False):
        """The tensor's values as float32 (f32 tensors: a read-only view into the mmap; bf16, f16 and
        quantized ones: decoded, a copy). raw=True gives the stored elements as a view instead, no copy:
        bf16 as uint16 bit patterns, quantized encodings as their bytes (uint8)."""
        if not raw:
            return self.tensor_f32(name)
        t = self.entry(name)
        if t.encoding in QUANTIZED.values():
            return np.frombuffer(self.buffer, dtype=np.uint8, count=t.size, offset=t.offset)
        _, dtype, width = next(v for v in ENCODINGS.values() if v[0] == t.encoding)
        return np.frombuffer(self.buffer, dtype=dtype, count=t.size // width, offset=t.offset).reshape(t.shape)

    def tensor_f32(self, name):
        """The tensor decoded to float32 (a view for f32 tensors)."""
        t = self.entry(name)
        if t.encoding in QUANTIZED.values():
            return dequantize(self.raw(name), t.encoding, t.shape, t.group_size)
        values = self.tensor(name, raw=True)
        if t.encoding == "f32":
            return values
        if t.encoding == "bf16":
            return (values.astype(np.uint32) << 16).view(np.float32)
        return values.astype(np.float32)

    def verify(self):
        """Checks every tensor's checksum in data order; raises on the first mismatch."""
        for t in sorted(self.tensors, key=lambda t: t.offset):
            digest = self._hash(self.raw(t.name))
            if digest != t.xxh3:
                self._fail(f"tensor {t.name}: checksum mismatch (stored {t.xxh3:016x}, computed {digest:016x})")
        self.metadata
        return len(self.tensors)


def main(argv):
    import argparse
    import signal

    # `| head` closes the pipe early: end quietly as other command-line tools do, not with a traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    def command(name, help):
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("bundle", help="the .vlq file")
        return sub

    check = command("check", "verify the structure and every tensor checksum")
    check.add_argument("--hash", default="auto", choices=["auto", "xxhash", "libxxhash", "numpy"],
                       help="XXH3 implementation (default: the fastest available)")
    command("list", "one JSON line per tensor: name, encoding, shape, bytes, xxh3")
    command("metadata", "the metadata JSON")
    dump = command("dump", "a tensor's values as float32")
    dump.add_argument("name", help="the tensor's name (see list)")
    dump.add_argument("--full", action="store_true", help="print every value instead of the first and last")
    dump.add_argument("--raw", action="store_true", help="the stored elements (bf16 bits, quantized bytes)")
    args = parser.parse_args(argv)
    try:
        global pick_hasher
        if getattr(args, "hash", "auto") != "auto":
            chosen = pick_hasher(args.hash)
            pick_hasher = lambda implementation="auto": chosen  # noqa: E731
        bundle = VLQBundle(args.bundle)
        if args.command == "check":
            n = bundle.verify()
            print(f"{args.bundle}: OK: {n} tensors verified (xxh3 by {bundle.hasher_name})")
        elif args.command == "list":
            for t in bundle.tensors:
                print(json.dumps({k: v for k, v in t.as_dict().items() if k != "xxh3"} | {"xxh3": f"{t.xxh3:016x}"}))
        elif args.command == "metadata":
            print(json.dumps(bundle.metadata, indent=2, ensure_ascii=False, sort_keys=True))
        elif args.command == "dump":
            np.set_printoptions(threshold=sys.maxsize if args.full else 64)
            values = bundle.tensor(args.name, raw=args.raw)
            print(values)
            if not args.full and values.size > 64:
                print(f"({values.size} values, {values.dtype}; --full prints every one)", file=sys.stderr)
    except (VLQFormatError, KeyError, UnicodeDecodeError, struct.error, OSError) as error:
        if isinstance(error, OSError):
            message = f"{error.filename}: {error.strerror}"
        else:
            message = error.args[0] if isinstance(error, KeyError) else str(error)
        print(f"vlq_reader: error: {message}", file=sys.stderr)
        return 1
    return 0


def _entry():
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    _entry()
