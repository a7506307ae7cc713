#!/usr/bin/env python3
"""Seed corpora for tools/fuzz.sh, one folder per fuzz target, built from the repository's fixtures
plus small hand-made files that reach branches the fixtures do not (other dtypes, empty tensors,
interlaced PNGs, raw bundle metadata, quantized tensor records ...).

    python3 tools/fuzz/make_seeds.py REPO_ROOT OUT_FOLDER

Seeds larger than 128 KiB are skipped: libFuzzer's speed falls with input size, and mutations reach
what large inputs add. Needs python3 (numpy for tools/vlq_reader.py); the `zstd` tool for the
compressed seeds (skipped without it); libxxhash for valid bundle checksums (zeros without it: the
bundle target fixes checksums up anyway).
"""

import collections
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import types
import zipfile
import zlib

ROOT, OUT = sys.argv[1], sys.argv[2]
MAX_SEED = 128 << 10
sys.path.insert(0, os.path.join(ROOT, "tools"))


def put(target, name, data):
    folder = os.path.join(OUT, target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def copy(target, path, prefix=""):
    if os.path.isfile(path) and os.path.getsize(path) <= MAX_SEED:
        with open(path, "rb") as f:
            put(target, prefix + os.path.basename(path), f.read())


def files(folder, suffixes):
    if not os.path.isdir(folder):
        return []
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(suffixes))


def zstd(data):
    if not shutil.which("zstd"):
        return None
    # --no-check: like vlq's own writer, no content checksum (mutations inside the frame then reach the decoder).
    return subprocess.run(["zstd", "-q", "-c", "--no-check", "-3"], input=data, capture_output=True, check=True).stdout


# The bundle reader's hasher (libxxhash, the xxhash module, or its own numpy XXH3), not a copy of it.
sys.path.insert(0, os.path.join(ROOT, "tools"))
import vlq_reader  # noqa: E402

xxh3 = vlq_reader.pick_hasher()[1]
F = os.path.join
fixtures = F(ROOT, "Tests/Fixtures")
golden = F(ROOT, "formats/golden")

# ---------------------------------------------------------------------------------------------------
# safetensors


def safetensors(tensors, metadata=None, pad=8):
    header, data = {}, b""
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % pad)
    return struct.pack("<Q", len(text)) + text + data


for path in files(F(golden, "micro"), ".safetensors") + files(F(golden, "micro/vit"), ".safetensors"):
    copy("safetensors", path)
put("safetensors", "empty-header", safetensors([]))
put("safetensors", "metadata-only", safetensors([], {"format": "pt", "note": "\u00e9\\u"}))
put("safetensors", "dtypes", safetensors(
    [("f64", "F64", [1], b"\0" * 8), ("f32", "F32", [2, 1], b"\0" * 8), ("f16", "F16", [3], b"\0" * 6),
     ("bf16", "BF16", [1, 1, 1], b"\0" * 2), ("i64", "I64", [1], b"\1" * 8), ("i32", "I32", [1], b"\1" * 4),
     ("i16", "I16", [1], b"\1" * 2), ("i8", "I8", [2], b"\1\2"), ("u64", "U64", [1], b"\2" * 8),
     ("u32", "U32", [1], b"\2" * 4), ("u16", "U16", [1], b"\2" * 2), ("u8", "U8", [1], b"\3"),
     ("bool", "BOOL", [2], b"\0\1"), ("empty", "F32", [0, 4], b""), ("scalar", "F32", [], b"\0" * 4)],
    {"format": "pt"}))
put("safetensors", "one-f32-unpadded", safetensors([("w", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))], pad=1))

# ---------------------------------------------------------------------------------------------------
# PyTorch checkpoints: the fixtures when there are any, and a hand-made torch.save zip.

for path in files(F(fixtures, "pytorch"), (".bin", ".pt", ".pth", ".zip", ".ckpt")):
    copy("pytorch", path)


def torch_zip(tensors, archive="archive"):
    """A torch.save zip (pickle protocol 2, storages in data/N) without torch: fake torch globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):
        return None

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    storages = {}
    for dtype in ["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage"]:
        storages[dtype] = type(dtype, (), {"__module__": "torch"})
        setattr(torch, dtype, storages[dtype])
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils

    class Storage:
        def __init__(self, key, kind, numel):
            self.key, self.kind, self.numel = key, kind, numel

    class Tensor:
        def __init__(self, storage, offset, shape, stride):
            self.args = (storage, offset, tuple(shape), tuple(stride), False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                return ("storage", storages[obj.kind], obj.key, "cpu", obj.numel)
            return None

    state, blobs = collections.OrderedDict(), {}
    for i, (name, kind, shape, stride, offset, raw, size) in enumerate(tensors):
        key = str(i)
        blobs[key] = raw
        state[name] = Tensor(Storage(key, kind, size), offset, shape, stride)
    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump(state)
    for k, v in saved.items():
        if v is None:
            sys.modules.pop(k, None)
        else:
            sys.modules[k] = v
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", buffer.getvalue())
        z.writestr(f"{archive}/byteorder", "little")
        for key, raw in blobs.items():
            z.writestr(f"{archive}/data/{key}", raw)
        z.writestr(f"{archive}/version", "3\n")
        z.writestr(f"{archive}/.data/serialization_id", "0123456789")
    return out.getvalue()


put("pytorch", "handmade.bin", torch_zip([
    ("w", "FloatStorage", [2, 3], [3, 1], 0, struct.pack("<6f", *range(6)), 6),
    ("b", "HalfStorage", [3], [1], 1, b"\0\x3c" * 4, 4),
    ("t", "FloatStorage", [3, 2], [1, 3], 0, struct.pack("<6f", *range(6)), 6),
]))

# ---------------------------------------------------------------------------------------------------
# .vlq bundles: the golden ones, and small hand-made ones (raw and compressed metadata, every encoding).

copy("bundle", F(golden, "micro.vlq"))
copy("bundle", F(golden, "micro-f16.vlq"))
try:
    from vlq_reader import VLQBundle, quantized_layout

    micro_metadata = VLQBundle(F(golden, "micro.vlq")).metadata
except Exception as e:  # noqa: BLE001 - seeds are best effort
    print(f"make_seeds: golden metadata not read ({e}); using a minimal one", file=sys.stderr)
    micro_metadata = {"format": "vlq"}

    def quantized_layout(encoding, shape, group_size):
        return None

ENCODING = {"f32": 0, "f16": 1, "bf16": 2, "q8": 32, "q4": 33, "q4s": 34, "q3": 35}


def bundle(records, metadata, compress):
    """records: (name, encoding, component, shape, group_size, source_dtype)."""
    alignment, data, table = 64, b"", b""
    for name, enc, component, shape, group, source in records:
        if enc in ("f32", "f16", "bf16"):
            n = 1
            for d in shape:
                n *= d
            size = n * (4 if enc == "f32" else 2)
        else:
            size = quantized_layout(enc, shape, group)[3]
        data += b"\0" * (-len(data) % alignment)
        offset = 128 + len(data)
        raw = bytes((i * 7 + 3) & 0xFF for i in range(size))
        data += raw
        nb = name.encode()
        entry_size = (40 + 8 * len(shape) + len(nb) + 7) // 8 * 8
        entry = struct.pack("<IHBBIHBBQQQ", entry_size, ENCODING[enc], component, len(shape), group, len(nb), source, 0,
                            offset, size, xxh3(raw))
        entry += b"".join(struct.pack("<Q", d) for d in shape) + nb
        table += entry + b"\0" * (entry_size - len(entry))
    data += b"\0" * (-len(data) % 8)
    meta = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    stored = zstd(meta) if compress else meta
    if stored is None:
        return None
    data_offset, table_offset = 128, 128 + len(data)
    metadata_offset = table_offset + len(table)
    file_size = metadata_offset + len(stored)
    minor = 1 if any(r[1] == "q3" for r in records) else 0  # q3 is format 1.1
    head = b"\x89VLQ\r\n\x1a\n" + struct.pack("<HHIQII", 1, minor, 128, file_size, alignment, 0)
    head += struct.pack("<QQQQQQQQII", data_offset, len(data), table_offset, len(table), len(records), metadata_offset,
                        len(stored), len(meta), 1 if compress else 0, 0)
    head += struct.pack("<QQ", xxh3(table), xxh3(stored))
    head += struct.pack("<Q", xxh3(head))
    return head + data + table + stored


small = [("model.embed_tokens.weight", "f32", 2, [2, 4], 0, 0), ("model.norm.weight", "f16", 2, [4], 0, 1),
         ("vision.bf16", "bf16", 0, [1, 2], 0, 2), ("mm_projector.0.weight", "q8", 1, [2, 4], 4, 2),
         ("model.layers.0.mlp.up_proj.weight", "q4", 2, [2, 8], 4, 2),
         ("model.layers.0.mlp.down_proj.weight", "q4s", 2, [1, 2, 8], 8, 0),
         ("model.layers.0.self_attn.o_proj.weight", "q3", 2, [2, 64], 32, 2)]
if quantized_layout("q8", [2, 4], 4) is None:
    small = small[:3]
for name, compress in [("small-raw-metadata.vlq", False), ("small-zstd-metadata.vlq", True)]:
    b = bundle(small, micro_metadata, compress)
    if b is not None:
        put("bundle", name, b)
put("bundle", "empty.vlq", bundle([], {}, False))

# ---------------------------------------------------------------------------------------------------
# Tokenizer, JSON

copy("tokenizer", F(fixtures, "tiny-yivl/tokenizer.model"))
copy("tokenizer", F(golden, "micro/tokenizer.model"), prefix="micro-")

for path in (files(F(fixtures, "tiny-yivl"), ".json") + files(F(fixtures, "tiny-yivl/vit/clip-vit-tiny-yivl-84"), ".json")
             + files(golden, ".json") + files(F(fixtures, "images"), ".json") + files(F(ROOT, "formats/recipes"), ".json")
             + [F(fixtures, "tiny-yivl-data/reference/cases.json"), F(fixtures, "tiny-yivl-data/reference/fp32_accuracy.json")]):
    if os.path.isfile(path) and os.path.getsize(path) <= 32 << 10:
        copy("json", path, prefix=os.path.basename(os.path.dirname(path)) + "-")
put("json", "micro-metadata.json", json.dumps(micro_metadata, sort_keys=True).encode())
put("json", "escapes.json", rb'{"a":"\u00e9\ud83d\ude00\n\t\"\\\/","b":[-0,1e-7,-1.5E+300,9223372036854775807,-9223372036854775808],"c":{"d":[true,false,null,{}],"e":[]}}')

# ---------------------------------------------------------------------------------------------------
# Images: the fixtures (small ones), and tiny PNGs of every colour type, bit depth and interlacing.

for path in files(F(fixtures, "images"), (".png", ".jpg")):
    copy("image", path)
for sub in ["cases", "calibration", "eval"]:
    for path in files(F(fixtures, "tiny-yivl-data", sub), (".png", ".jpg"))[:6]:
        if os.path.getsize(path) <= 16 << 10:
            copy("image", path)


def png(width, height, depth, color, interlace=False, palette=None, trns=None):
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color]
    bits_per_pixel = channels * depth

    def scanlines(w, h, seed):
        row_bytes = (w * bits_per_pixel + 7) // 8
        return b"".join(b"\0" + bytes((seed + y * 31 + x * 17) & 0xFF for x in range(row_bytes)) for y in range(h))

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b""
        for i, (x0, y0, dx, dy) in enumerate(passes):
            w, h = (width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy
            if w > 0 and h > 0:
                raw += scanlines(w, h, i)
    else:
        raw = scanlines(width, height, 0)
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 1 if interlace else 0))
    if palette:
        out += chunk(b"PLTE", b"".join(bytes(c) for c in palette))
    if trns is not None:
        out += chunk(b"tRNS", trns)
    return out + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


for depth in [1, 2, 4, 8, 16]:
    put("image", f"gray{depth}.png", png(5, 3, depth, 0))
put("image", "gray8-trns.png", png(3, 3, 8, 0, trns=b"\0\x10"))
put("image", "rgb8.png", png(4, 2, 8, 2))
put("image", "rgb16-interlaced.png", png(9, 9, 16, 2, interlace=True))
put("image", "rgba8-interlaced.png", png(10, 3, 8, 6, interlace=True))
put("image", "gray-alpha16.png", png(2, 5, 16, 4))
for depth in [1, 2, 4, 8]:
    palette = [(i * 37 % 256, i * 91 % 256, i * 13 % 256) for i in range(1 << depth)]
    put("image", f"palette{depth}.png", png(7, 2, depth, 3, palette=palette, trns=b"\x80\x00"))
put("image", "one-pixel.png", png(1, 1, 8, 6))

# ---------------------------------------------------------------------------------------------------
# .vlqstats: zstd frames around safetensors; raw safetensors too (the target compresses inputs that are
# not zstd frames, so that mutations explore the statistics instead of the compressed bytes).


def f64(*values):
    return struct.pack(f"<{len(values)}d", *values)


def stats(layers, gram=True, metadata=None):
    tensors = []
    for name, columns in layers:
        tensors += [(name + ".rows", "F64", [1], f64(3)), (name + ".sum_abs", "F64", [columns], f64(*range(columns))),
                    (name + ".sum_squares", "F64", [columns], f64(*range(columns)))]
        if gram:
            tensors.append((name + ".gram", "F64", [columns, columns], f64(*range(columns * columns))))
    meta = {"format": "vlqstats 1", "aliases": json.dumps({"model.layers.0.self_attn.k_proj": layers[0][0]}),
            "set_digests": "0123456789abcdef,fedcba9876543210", "samples": "2", "model": "tiny", "vlq_version": "0"}
    meta.update(metadata or {})
    return safetensors(tensors, meta)


for name, raw in [("gram", stats([("model.layers.0.self_attn.q_proj", 3), ("model.layers.0.mlp.gate_proj", 2)])),
                  ("diagonal", stats([("model.layers.0.self_attn.q_proj", 4)], gram=False)),
                  ("bad-aliases", stats([("fc1", 1)], metadata={"aliases": "[1,{", "samples": "x"}))]:
    put("vlqstats", name + ".safetensors", raw)
    packed = zstd(raw)
    if packed is not None:
        put("vlqstats", name + ".vlqstats", packed)
for path in files(F(fixtures, "fuzz-seeds/vlqstats"), ".vlqstats"):
    copy("vlqstats", path)
