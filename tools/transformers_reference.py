#!/usr/bin/env python3
"""Per-stage outputs of Hugging Face transformers for a Yi-VL folder, image and prompt, in the file
layout of `vlq logits`, so that vlq's engine can be checked against transformers on any checkpoint.

    python3 tools/transformers_reference.py path/to/Yi-VL-6B --image cat.jpg --prompt "What is it?" -o ref.safetensors
    python3 tools/transformers_reference.py path/to/Yi-VL-6B --pixel-values px.safetensors --prompt "..." -o ref.safetensors
    python3 tools/transformers_reference.py ... --generate 64        # also the greedy answer (generated_ids)

Then compare with `vlq logits MODEL --image cat.jpg --prompt "What is it?" -o vlq.safetensors` (see
`--compare`). Needs torch, transformers, sentencepiece, pillow and safetensors (pip). Not used by the
test suite.

Everything runs in float32 as Yi-VL's reference does: the vision tower from the `mm_vision_tower`
folder (fp32), the projector and the LLM from the root shards upcast from bf16. Yi's own code is not
needed: the LLM is transformers' LlamaForCausalLM (Yi is the Llama architecture), the projector is
rebuilt from `mm_projector_type: mlp2x_gelu_Norm`, and the prompt is assembled as Yi's
`tokenizer_image_token` does. A 6B model needs about 28 GB in float32; on smaller machines pass
`--dtype bfloat16` (then the figures only approximate fp32).

Written tensors: pixel_values [3,S,S], vision_features [P,Dv] (hidden state mm_vision_select_layer,
class token dropped), projector_output [P,H], input_ids [T] (int64, -200 at the image),
logits [T-1+P, V] over every position of the spliced sequence, and with --generate generated_ids.
"""

import argparse
import json
import os
import sys

SYSTEM = (
    "This is a chat between an inquisitive human and an AI assistant. Assume the role of the AI assistant. "
    "Read all the images carefully, and respond to the human's questions with informative, helpful, detailed "
    "and polite answers. 这是一个好奇的人类和一个人工智能助手之间的对话。假设你扮演这个AI助手的角色。"
    "仔细阅读所有的图像，并对人类的问题做出信息丰富、有帮助、详细的和礼貌的回答。"
)
TEMPLATE = "{system}\n\n### Human: <image_placeholder>\n{question}\n### Assistant:"
PLACEHOLDER = "<image_placeholder>"
IMAGE_TOKEN_INDEX = -200


def load_shards(folder):
    """name -> (file, key) for every tensor of the root shards (index or all *.safetensors)."""
    index = [f for f in os.listdir(folder) if f.endswith(".safetensors.index.json")]
    if index:
        with open(os.path.join(folder, index[0])) as f:
            return {name: os.path.join(folder, shard) for name, shard in json.load(f)["weight_map"].items()}
    from safetensors import safe_open

    mapping = {}
    for shard in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        with safe_open(os.path.join(folder, shard), "pt") as f:
            for name in f.keys():
                mapping[name] = os.path.join(folder, shard)
    return mapping


def read_tensors(mapping, names, dtype):
    import torch
    from safetensors import safe_open

    out, by_file = {}, {}
    for name in names:
        by_file.setdefault(mapping[name], []).append(name)
    for path, keys in by_file.items():
        with safe_open(path, "pt") as f:
            for key in keys:
                out[key] = f.get_tensor(key).to(dtype)
    return out


def expand2square(image, background):
    from PIL import Image

    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, 0) if width < height else (0, (side - height) // 2))
    return result


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="Hugging Face Yi-VL folder")
    ap.add_argument("--image")
    ap.add_argument("--pixel-values", help="safetensors file with pixel_values [3,S,S] instead of --image")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--generate", type=int, default=0, help="also generate up to N tokens greedily")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--compare", help="a `vlq logits` file to compare with: prints max abs difference per stage")
    args = ap.parse_args(argv)
    if (args.image is None) == (args.pixel_values is None):
        ap.error("give exactly one of --image and --pixel-values")

    import torch
    from PIL import Image
    from safetensors.torch import load_file, save_file
    from transformers import CLIPImageProcessor, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlamaTokenizer

    torch.set_grad_enabled(False)
    dtype = getattr(torch, args.dtype)
    with open(os.path.join(args.model, "config.json")) as f:
        config = json.load(f)
    tower = os.path.join(args.model, config["mm_vision_tower"])

    processor = CLIPImageProcessor.from_pretrained(tower)
    if args.image:
        image = Image.open(args.image).convert("RGB")
        image = expand2square(image, tuple(int(x * 255) for x in processor.image_mean))
        pixels = processor.preprocess(image, return_tensors="pt")["pixel_values"][0]
    else:
        given = load_file(args.pixel_values)["pixel_values"]
        pixels = given.reshape(given.shape[-3:])

    vision = CLIPVisionModel.from_pretrained(tower, torch_dtype=torch.float32).eval()
    hidden = vision(pixels[None].to(torch.float32), output_hidden_states=True).hidden_states[config.get("mm_vision_select_layer", -2)]
    features = hidden[:, 1:] if config.get("mm_vision_select_feature", "patch") == "patch" else hidden
    del vision

    if config.get("mm_projector_type") != "mlp2x_gelu_Norm":
        sys.exit(f"transformers_reference: projector {config.get('mm_projector_type')} is not Yi-VL's")
    h, m = config["hidden_size"], config["mm_hidden_size"]
    projector = torch.nn.Sequential(torch.nn.Linear(m, h), torch.nn.LayerNorm(h), torch.nn.GELU(), torch.nn.Linear(h, h),
                                    torch.nn.LayerNorm(h))
    mapping = load_shards(args.model)
    projector_weights = read_tensors(mapping, [n for n in mapping if n.startswith("model.mm_projector.")], torch.float32)
    projector.load_state_dict({k.removeprefix("model.mm_projector."): v for k, v in projector_weights.items()})
    projected = projector(features.to(torch.float32))

    llama_keys = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "hidden_act", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                  "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias"]
    llama_config = LlamaConfig(**{k: config[k] for k in llama_keys if k in config})
    with torch.device("meta"):
        llm = LlamaForCausalLM(llama_config)
    names = [n for n in mapping if n.startswith(("model.layers.", "model.embed_tokens.", "model.norm.", "lm_head."))
             and "rotary_emb.inv_freq" not in n]
    llm.load_state_dict(read_tensors(mapping, names, dtype), strict=True, assign=True)
    llm = llm.eval()
    # Buffers are not in the checkpoint: rebuild the rotary frequencies on the CPU.
    for module in llm.modules():
        if hasattr(module, "inv_freq"):
            base, dim = llama_config.rope_theta, llama_config.hidden_size // llama_config.num_attention_heads
            module.inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))

    tokenizer = LlamaTokenizer(os.path.join(args.model, "tokenizer.model"), add_bos_token=False, add_eos_token=False, legacy=True)
    text = TEMPLATE.format(system=SYSTEM, question=args.prompt)
    before, after = text.split(PLACEHOLDER, 1)
    ids_before, ids_after = tokenizer(before).input_ids, tokenizer(after).input_ids
    embed = llm.get_input_embeddings()
    embeddings = torch.cat([embed(torch.tensor(ids_before)), projected[0].to(dtype), embed(torch.tensor(ids_after))])[None]
    result = llm(inputs_embeds=embeddings, use_cache=bool(args.generate))
    logits = result.logits[0].to(torch.float32)

    tensors = {
        "pixel_values": pixels.to(torch.float32).contiguous(),
        "vision_features": features[0].contiguous(),
        "projector_output": projected[0].contiguous(),
        "input_ids": torch.tensor(ids_before + [IMAGE_TOKEN_INDEX] + ids_after, dtype=torch.int64),
        "logits": logits.contiguous(),
    }
    if args.generate:
        generated, past, next_logits = [], result.past_key_values, result.logits[0, -1]
        for _ in range(args.generate):
            token = int(next_logits.argmax())
            if token == tokenizer.eos_token_id:
                break
            generated.append(token)
            if "###" in tokenizer.decode(generated):
                break
            step = llm(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
            past, next_logits = step.past_key_values, step.logits[0, -1]
        tensors["generated_ids"] = torch.tensor(generated, dtype=torch.int64)
        print(tokenizer.decode(generated).split("###")[0].strip())
    save_file(tensors, args.output, metadata={"producer": "transformers", "model": args.model, "prompt": args.prompt})

    if args.compare:
        ours = load_file(args.compare)
        for name in ["pixel_values", "vision_features", "projector_output", "logits"]:
            a, b = ours[name].to(torch.float32), tensors[name]
            print(f"{name}: max abs difference {float((a.reshape(b.shape) - b).abs().max()):.3e} "
                  f"(bound {1e-3 * (1 + float(b.abs().max())):.3e})")
        print("input_ids equal:", bool(torch.equal(ours["input_ids"], tensors["input_ids"])))


if __name__ == "__main__":
    main(sys.argv[1:])
