#!/usr/bin/env python3
"""Writes a Yi-VL checkpoint with random weights in the exact Hugging Face layout of 01-ai/Yi-VL-6B.

    python3 tools/make_synthetic_yivl.py /data/yi-vl-6b-synthetic --preset 6b
    python3 tools/make_synthetic_yivl.py /tmp/yi-vl-6b-4layers --preset 6b --layers 4 --vision-layers 4
    python3 tools/make_synthetic_yivl.py formats/golden/micro --preset micro

Same names, shapes, dtypes and files as the real checkpoint: config.json with Yi-VL's mm_* keys, bf16
root shards holding the LLM, the projector and a bf16 copy of the vision tower, a
`model.safetensors.index.json` (or none, with --no-index), the vit/ folder with the fp32 CLIP tower,
its config.json and preprocessor_config.json, and the tokenizer files. For scale tests of convert,
quantize and the engine; the weights are N(0, 0.02) (norms 1, biases 0.01 N(0, 1)), so they have
no meaning. Deterministic: the same preset, options and seed give the same bytes. Streams: memory
stays near one row block, whatever the model size (numpy only).
"""

import argparse
import json
import os
import shutil
import struct
import sys
import zlib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_TOKENIZER = os.path.join(HERE, "..", "Tests", "Fixtures", "tiny-yivl", "tokenizer.model")

PRESETS = {
    # Yi-VL-6B: Yi-6B LLM + CLIP ViT-H/14 at 448 px.
    "6b": dict(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=4, vocab=64000,
               v_hidden=1280, v_intermediate=5120, v_layers=32, v_heads=16, image=448, patch=14,
               tower="clip-vit-H-14-laion2B-s32B-b79K-yi-vl-6B-448", shard_bytes=5_000_000_000),
    # Yi-VL-34B: Yi-34B LLM + the same tower.
    "34b": dict(hidden=7168, intermediate=20480, layers=60, heads=56, kv_heads=8, vocab=64000,
                v_hidden=1280, v_intermediate=5120, v_layers=32, v_heads=16, image=448, patch=14,
                tower="clip-vit-H-14-laion2B-s32B-b79K-yi-vl-34B-448", shard_bytes=5_000_000_000),
    # The shapes of Tests/Fixtures/tiny-yivl.
    "tiny": dict(hidden=256, intermediate=768, layers=4, heads=8, kv_heads=2, vocab=1000,
                 v_hidden=128, v_intermediate=512, v_layers=4, v_heads=4, image=84, patch=14,
                 tower="clip-vit-tiny-yivl-84", shard_bytes=8_000_000),
    # Smallest shapes that still exercise every tensor kind: for golden files and unit tests.
    "micro": dict(hidden=32, intermediate=64, layers=2, heads=4, kv_heads=2, vocab=64,
                  v_hidden=16, v_intermediate=32, v_layers=2, v_heads=2, image=28, patch=14,
                  tower="clip-vit-micro-28", shard_bytes=20_000),
}


def expected_tensors(p):
    """(name, shape, kind) of every tensor, vision tower first, in the order configs imply."""
    d, i, n = p["v_hidden"], p["v_intermediate"], (p["image"] // p["patch"]) ** 2 + 1
    vision = [("vision_model.embeddings.class_embedding", [d], "w"),
              ("vision_model.embeddings.patch_embedding.weight", [d, 3, p["patch"], p["patch"]], "w"),
              ("vision_model.embeddings.position_embedding.weight", [n, d], "w"),
              ("vision_model.pre_layrnorm.weight", [d], "norm"), ("vision_model.pre_layrnorm.bias", [d], "bias")]
    for layer in range(p["v_layers"]):
        pre = f"vision_model.encoder.layers.{layer}."
        for proj in ["k_proj", "v_proj", "q_proj", "out_proj"]:
            vision += [(pre + f"self_attn.{proj}.weight", [d, d], "w"), (pre + f"self_attn.{proj}.bias", [d], "bias")]
        vision += [(pre + "layer_norm1.weight", [d], "norm"), (pre + "layer_norm1.bias", [d], "bias"),
                   (pre + "mlp.fc1.weight", [i, d], "w"), (pre + "mlp.fc1.bias", [i], "bias"),
                   (pre + "mlp.fc2.weight", [d, i], "w"), (pre + "mlp.fc2.bias", [d], "bias"),
                   (pre + "layer_norm2.weight", [d], "norm"), (pre + "layer_norm2.bias", [d], "bias")]
    vision += [("vision_model.post_layernorm.weight", [d], "norm"), ("vision_model.post_layernorm.bias", [d], "bias")]

    h, hd = p["hidden"], p["hidden"] // p["heads"]
    projector = [("model.mm_projector.0.weight", [h, d], "w"), ("model.mm_projector.0.bias", [h], "bias"),
                 ("model.mm_projector.1.weight", [h], "norm"), ("model.mm_projector.1.bias", [h], "bias"),
                 ("model.mm_projector.3.weight", [h, h], "w"), ("model.mm_projector.3.bias", [h], "bias"),
                 ("model.mm_projector.4.weight", [h], "norm"), ("model.mm_projector.4.bias", [h], "bias")]
    language = [("model.embed_tokens.weight", [p["vocab"], h], "w")]
    for layer in range(p["layers"]):
        pre = f"model.layers.{layer}."
        language += [(pre + "input_layernorm.weight", [h], "norm"),
                     (pre + "self_attn.q_proj.weight", [p["heads"] * hd, h], "w"),
                     (pre + "self_attn.k_proj.weight", [p["kv_heads"] * hd, h], "w"),
                     (pre + "self_attn.v_proj.weight", [p["kv_heads"] * hd, h], "w"),
                     (pre + "self_attn.o_proj.weight", [h, p["heads"] * hd], "w"),
                     (pre + "post_attention_layernorm.weight", [h], "norm"),
                     (pre + "mlp.gate_proj.weight", [p["intermediate"], h], "w"),
                     (pre + "mlp.up_proj.weight", [p["intermediate"], h], "w"),
                     (pre + "mlp.down_proj.weight", [h, p["intermediate"]], "w")]
    language += [("model.norm.weight", [h], "norm"), ("lm_head.weight", [p["vocab"], h], "w")]
    return vision, projector, language


def values(name, shape, kind, seed, rows):
    """float32 rows [rows.start, rows.stop) of the tensor; the same for a name whatever the chunking."""
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    count = (rows.stop - rows.start) * cols
    if kind == "norm":
        return np.ones(count, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode()), rows.start])
    scale = 0.01 if kind == "bias" else 0.02
    return rng.standard_normal(count, dtype=np.float32) * np.float32(scale)


def to_bf16(x):
    bits = x.view(np.uint32)
    return ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)).astype(np.uint16)


def row_chunks(name, shape, kind, seed, row_bytes=64 << 20):
    """The tensor's float32 values in blocks of whole rows (1-D tensors are rows of one element)."""
    cols = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    step = max(1, row_bytes // (cols * 4))
    for start in range(0, shape[0], step):
        yield values(name, shape, kind, seed, range(start, min(shape[0], start + step)))


def write_safetensors(path, tensors, seed):
    """tensors: (name, shape, kind, dtype, value_name) with dtype 'F32' or 'BF16'. Values are drawn under
    value_name, so the bf16 vision copy holds exactly the rounding of the fp32 tower. Streamed."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape, _, dtype, _ in tensors:
        size = int(np.prod(shape)) * (4 if dtype == "F32" else 2)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for _, shape, kind, dtype, value_name in tensors:
            for chunk in row_chunks(value_name, shape, kind, seed):
                f.write((chunk if dtype == "F32" else to_bf16(chunk)).tobytes())
    return offset


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("output", help="folder to create (must not exist, or be empty)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="6b")
    ap.add_argument("--layers", type=int, help="LLM layers (default: the preset's)")
    ap.add_argument("--vision-layers", type=int, help="vision tower layers (default: the preset's)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-bytes", type=int, help="maximum bytes per root shard")
    ap.add_argument("--no-index", action="store_true", help="write shards without model.safetensors.index.json")
    ap.add_argument("--no-vision-copy", action="store_true", help="leave the bf16 vision copy out of the root shards")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER, help="tokenizer.model to copy in")
    args = ap.parse_args(argv)

    p = dict(PRESETS[args.preset])
    if args.layers is not None:
        p["layers"] = args.layers
    if args.vision_layers is not None:
        p["v_layers"] = args.vision_layers
    shard_bytes = args.shard_bytes or p["shard_bytes"]
    out = args.output
    if os.path.exists(out) and os.listdir(out):
        sys.exit(f"make_synthetic_yivl: {out} exists and is not empty")
    tower_rel = f"vit/{p['tower']}"
    os.makedirs(os.path.join(out, tower_rel), exist_ok=True)

    vision, projector, language = expected_tensors(p)
    config = {
        "architectures": ["LlavaLlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "hidden_act": "silu", "hidden_size": p["hidden"], "image_aspect_ratio": "pad", "image_grid_pinpoints": None,
        "initializer_range": 0.02, "intermediate_size": p["intermediate"], "max_position_embeddings": 4096,
        "mm_hidden_size": p["v_hidden"], "mm_projector_type": "mlp2x_gelu_Norm", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": "./" + tower_rel, "model_type": "llava", "num_attention_heads": p["heads"],
        "num_hidden_layers": p["layers"], "num_key_value_heads": p["kv_heads"], "pad_token_id": 0,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 5000000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.34.0",
        "tune_vision_tower": False, "use_cache": True, "use_mm_proj": True, "vocab_size": p["vocab"],
    }
    vision_config = {
        "architectures": ["CLIPVisionModel"], "attention_dropout": 0.0, "dropout": 0.0, "hidden_act": "gelu",
        "hidden_size": p["v_hidden"], "image_size": p["image"], "initializer_factor": 1.0, "initializer_range": 0.02,
        "intermediate_size": p["v_intermediate"], "layer_norm_eps": 1e-05, "model_type": "clip_vision_model",
        "num_attention_heads": p["v_heads"], "num_channels": 3, "num_hidden_layers": p["v_layers"],
        "patch_size": p["patch"], "projection_dim": 1024, "torch_dtype": "float32", "transformers_version": "4.34.0",
    }
    preprocessor = {
        "crop_size": {"height": p["image"], "width": p["image"]}, "do_center_crop": True, "do_convert_rgb": True,
        "do_normalize": True, "do_rescale": True, "do_resize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_processor_type": "CLIPImageProcessor", "resample": 3, "rescale_factor": 0.00392156862745098,
        "size": {"shortest_edge": p["image"]},
    }
    small_files = {
        "config.json": config,
        "generation_config.json": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "transformers_version": "4.34.0"},
        "tokenizer_config.json": {"add_bos_token": False, "add_eos_token": False, "bos_token": "<|startoftext|>",
                                  "eos_token": "<|endoftext|>", "unk_token": "<unk>", "pad_token": "<unk>", "legacy": True,
                                  "model_max_length": 4096, "sp_model_kwargs": {}, "clean_up_tokenization_spaces": False,
                                  "tokenizer_class": "LlamaTokenizer"},
        "special_tokens_map.json": {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<unk>",
                                    "pad_token": "<unk>"},
        tower_rel + "/config.json": vision_config,
        tower_rel + "/preprocessor_config.json": preprocessor,
    }
    for rel, content in small_files.items():
        with open(os.path.join(out, rel), "w") as f:
            json.dump(content, f, indent=2)
            f.write("\n")
    shutil.copyfile(args.tokenizer, os.path.join(out, "tokenizer.model"))

    write_safetensors(os.path.join(out, tower_rel, "model.safetensors"),
                      [(n, s, k, "F32", n) for n, s, k in vision], args.seed)

    # Root shards in name order, as transformers' save_pretrained sorts its state dict, cut by size.
    root = [(n, s, k, "BF16") for n, s, k in projector + language]
    if not args.no_vision_copy:
        root += [("model.vision_tower.vision_tower." + n, s, k, "BF16") for n, s, k in vision]
    root.sort(key=lambda t: t[0])
    shards, current, size = [], [], 0
    for t in root:
        b = int(np.prod(t[1])) * 2
        if current and size + b > shard_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(t)
        size += b
    shards.append(current)
    weight_map, total = {}, 0
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        total += write_safetensors(os.path.join(out, name),
                                   [(n, s, k, d, n.removeprefix("model.vision_tower.vision_tower.")) for n, s, k, d in shard],
                                   args.seed)
        for n, *_ in shard:
            weight_map[n] = name
    if not args.no_index:
        with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")
    print(f"wrote {out}: {len(shards)} root shards ({total / 1e9:.2f} GB bf16), vision tower {tower_rel}")


if __name__ == "__main__":
    main(sys.argv[1:])
