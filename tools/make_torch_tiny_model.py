#!/usr/bin/env python3
"""Writes Tests/Fixtures/tiny-yivl-bin (or any Yi-VL folder given, e.g. a synthetic 6B-shaped one): the tiny Yi-VL of Tests/Fixtures/tiny-yivl as the official
01-ai repositories ship it, PyTorch `torch.save` archives instead of safetensors.

- root: `pytorch_model-0000N-of-00002.bin` + `pytorch_model.bin.index.json` (bf16, with the in-shard
  vision tower copy, as Yi-VL's own shards);
- vit/clip-vit-tiny-yivl-84/: `pytorch_model.bin` (fp32, the transformers CLIPVisionModel keys), plus an
  `open_clip_pytorch_model.bin` + `open_clip_config.json` with OpenCLIP key names that Yi's loader never
  reads (vlq must pick the transformers file and say what it left alone).

The tensors hold exactly the values of the safetensors fixture, but some are stored the way real
checkpoints can store them, so the reader is tested on them: layer 0's q/k/v projections are views at
offsets into one shared (fused) storage; a projection is a transposed, non-contiguous view; the vision
tensors are nn.Parameters (`_rebuild_parameter`); the state dicts carry state_dict()'s `_metadata`.

Needs torch and safetensors (pip install torch safetensors); CI does not run this: its output is
committed. Usage: python3 tools/make_torch_tiny_model.py [SOURCE] [DESTINATION]
"""
import collections
import json
import os
import shutil
import sys

import torch
from safetensors.torch import load_file

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
source = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "Tests/Fixtures/tiny-yivl")
destination = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "Tests/Fixtures/tiny-yivl-bin")
# The tower folder as config.json names it ("./vit/clip-vit-tiny-yivl-84" for the tiny model).
vit = json.load(open(os.path.join(source, "config.json")))["mm_vision_tower"].removeprefix("./").rstrip("/")


def state_dict(tensors):
    """An OrderedDict with the `_metadata` attribute Module.state_dict() attaches."""
    out = collections.OrderedDict(tensors)
    out._metadata = collections.OrderedDict({"": {"version": 1}})
    return out


def with_views(tensors):
    """Rebuilds some tensors as views: the same values, other storage layouts."""
    out = {}
    prefix = "model.layers.0.self_attn."
    if prefix + "q_proj.weight" in tensors:
        parts = [tensors[prefix + p + "_proj.weight"] for p in "qkv"]
        fused = torch.cat(parts).clone()
        start = 0
        for p, t in zip("qkv", parts):
            out[prefix + p + "_proj.weight"] = fused[start:start + t.shape[0]]
            start += t.shape[0]
    name = "model.layers.1.self_attn.o_proj.weight"
    if name in tensors:
        transposed = tensors[name].t().contiguous().t()
        assert not transposed.is_contiguous()
        out[name] = transposed
    for key, value in tensors.items():
        out.setdefault(key, value.clone())
    return out


shutil.rmtree(destination, ignore_errors=True)
os.makedirs(os.path.join(destination, vit))
for name in ["config.json", "generation_config.json", "special_tokens_map.json", "tokenizer.model",
             "tokenizer_config.json", vit + "/config.json", vit + "/preprocessor_config.json"]:
    shutil.copyfile(os.path.join(source, name), os.path.join(destination, name))

index = json.load(open(os.path.join(source, "model.safetensors.index.json")))
renamed = {}
total = 0
for shard in sorted(set(index["weight_map"].values())):
    tensors = load_file(os.path.join(source, shard))
    bin_name = shard.replace("model-", "pytorch_model-").replace(".safetensors", ".bin")
    renamed[shard] = bin_name
    total += sum(t.numel() * t.element_size() for t in tensors.values())
    ordered = sorted(tensors.items())
    torch.save(state_dict(with_views(dict(ordered))), os.path.join(destination, bin_name))
weight_map = {name: renamed[shard] for name, shard in sorted(index["weight_map"].items())}
with open(os.path.join(destination, "pytorch_model.bin.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    f.write("\n")

tower = load_file(os.path.join(source, vit, "model.safetensors"))
parameters = {k: torch.nn.Parameter(v.clone(), requires_grad=False) for k, v in sorted(tower.items())}
torch.save(state_dict(parameters), os.path.join(destination, vit, "pytorch_model.bin"))

# The OpenCLIP copy: other key names, a few tensors; vlq must not read it.
open_clip = {"visual.class_embedding": tower["vision_model.embeddings.class_embedding"].clone(),
             "visual.conv1.weight": tower["vision_model.embeddings.patch_embedding.weight"][:2].clone()}
torch.save(open_clip, os.path.join(destination, vit, "open_clip_pytorch_model.bin"))
with open(os.path.join(destination, vit, "open_clip_config.json"), "w") as f:
    json.dump({"model_cfg": {"embed_dim": 128, "vision_cfg": {"image_size": 84, "layers": 4, "width": 128,
                                                             "patch_size": 14}}}, f, indent=2)
    f.write("\n")
print(f"wrote {destination} with torch {torch.__version__}")
