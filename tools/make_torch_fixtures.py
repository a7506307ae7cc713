#!/usr/bin/env python3
"""Writes the small genuine torch.save files of Tests/Fixtures/pytorch/ and expected.json.

The Swift tests build most PyTorch inputs themselves (CI has no torch); these files keep them honest
against what torch really writes. Run from the repository root with torch installed:

    python3 tools/make_torch_fixtures.py

Values are fixed patterns, so the files are reproducible apart from torch's random serialization id.
expected.json gives, per file and tensor, the dtype (vlq spelling), shape, whether the view is stored
contiguously, and the tensor's bytes in row-major order (little-endian, hex).
"""
import collections
import json
import os
import zipfile

import torch
from torch import nn

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "Fixtures", "pytorch")

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8",
    torch.uint8: "U8", torch.bool: "BOOL",
}


def row_major_hex(tensor):
    flat = tensor.detach().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes().hex() if flat.numel() else ""


def expectation(state_dict):
    result = {}
    for name, tensor in state_dict.items():
        result[name] = {
            "dtype": DTYPE_NAMES[tensor.dtype],
            "shape": list(tensor.shape),
            "contiguous": tensor.is_contiguous(),
            "storage_offset": tensor.storage_offset(),
            "hex": row_major_hex(tensor),
        }
    return result


class Tiny(nn.Module):
    """A module whose state_dict() is an OrderedDict with the `_metadata` attribute, as real models give."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        with torch.no_grad():
            self.linear.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) * 0.25 - 0.5)
            self.linear.bias.copy_(torch.tensor([1.5, -2.0]))
        self.register_buffer("position_ids", torch.arange(5, dtype=torch.int64).unsqueeze(0))


def main_state_dict():
    state = Tiny().state_dict()
    assert isinstance(state, collections.OrderedDict) and hasattr(state, "_metadata")
    state["f64"] = torch.tensor([1.0 / 3.0, -2.5e-300, 1e300], dtype=torch.float64)
    state["f16"] = (torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7).to(torch.float16)
    state["bf16"] = (torch.arange(8, dtype=torch.float32).reshape(2, 2, 2) * -1.75).to(torch.bfloat16)
    state["i64"] = torch.tensor([0, -1, 2**40 + 3, -(2**62)], dtype=torch.int64)
    state["i32"] = torch.tensor([[7, -8], [2**31 - 1, -(2**31)]], dtype=torch.int32)
    state["i16"] = torch.tensor([-300, 300, 12], dtype=torch.int16)
    state["i8"] = torch.tensor([-128, 127, 0, 5], dtype=torch.int8)
    state["u8"] = torch.tensor([0, 255, 17], dtype=torch.uint8)
    state["bool"] = torch.tensor([True, False, True])
    # One storage, seen whole and as a view starting 4 elements in.
    base = torch.arange(12, dtype=torch.float32) * 1.5
    state["base"] = base
    state["view_at_offset"] = base[4:10].view(2, 3)
    # Tied weights: one tensor object under two keys (the pickle memo refers back to it).
    tied = torch.tensor([[0.5, -0.5], [4.0, 8.0]])
    state["tied_a"] = tied
    state["tied_b"] = tied
    # Two disjoint views of one storage, neither at its start for the second.
    rows = torch.arange(8, dtype=torch.int32).reshape(2, 4)
    state["row0"] = rows[0]
    state["row1"] = rows[1]
    # Non-contiguous views: a transpose, a column, a broadcast (stride 0).
    state["transposed"] = (torch.arange(12, dtype=torch.float32).reshape(3, 4) - 5).t()
    state["column"] = torch.arange(12, dtype=torch.float16).reshape(3, 4)[:, 1]
    state["expanded"] = torch.tensor([1.0, 2.0, 3.0]).expand(2, 3)
    state["scalar"] = torch.tensor(7.25)
    state["empty"] = torch.zeros(0, 3)
    state["parameter"] = nn.Parameter(torch.tensor([[9.0, -9.0]]))
    return state


class RunsACommand:
    """What a hostile checkpoint holds: unpickling it with pickle.load would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch /tmp/pwned-vlq-test",))


def save(name, obj, **options):
    path = os.path.join(OUT, name)
    torch.save(obj, path, **options)
    return path


def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}

    state = main_state_dict()
    save("state_dict.bin", state)
    expected["state_dict.bin"] = expectation(state)

    small = collections.OrderedDict()
    storage = torch.arange(10, dtype=torch.float32) - 4.5
    small["a"] = storage[2:8].view(3, 2)
    small["b"] = (torch.arange(4, dtype=torch.float32) * 0.5).to(torch.bfloat16)
    small["c"] = storage.view(2, 5).t()
    save("protocol4.bin", small, pickle_protocol=4)
    expected["protocol4.bin"] = expectation(small)

    save("malicious.bin", {"weight": torch.ones(2), "payload": RunsACommand()})
    save("legacy.bin", {"weight": torch.ones(2)}, _use_new_zipfile_serialization=False)
    save("nested.bin", {"model": collections.OrderedDict(w=torch.ones(2)), "epoch": 3})

    # The same archive with every entry deflated, as a re-zipping tool would leave it.
    source = zipfile.ZipFile(os.path.join(OUT, "protocol4.bin"))
    with zipfile.ZipFile(os.path.join(OUT, "deflated.bin"), "w", zipfile.ZIP_DEFLATED) as deflated:
        for item in source.infolist():
            deflated.writestr(item.filename, source.read(item.filename))

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
