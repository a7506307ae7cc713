#!/usr/bin/env python3
"""Reference pixel values of transformers' CLIPImageProcessor (with Yi-VL's expand2square) for a set
of images, stored compactly so the test suite can check vlq's image pipeline on real photographs:
the XXH3-64 of the float32 bytes (PNG: must match bit for bit) and per-channel sums (JPEG: decoders
differ slightly between libjpeg-turbo versions).

    python3 tools/pixel_reference.py calibration/default.jsonl --size 84 --size 448 -o Tests/Fixtures/pixel-reference.json

Needs pillow, numpy, transformers and the xxhash module or libxxhash.
"""
import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vlq_reader import pick_hasher  # noqa: E402

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]


def main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("manifest")
    ap.add_argument("--size", type=int, action="append", required=True)
    ap.add_argument("-o", "--output", required=True)
    args = ap.parse_args(argv)
    from PIL import Image
    from transformers import CLIPImageProcessor

    _, digest = pick_hasher()
    root = os.path.dirname(os.path.abspath(args.manifest))
    out = {"producer": "transformers CLIPImageProcessor + PIL", "mean": MEAN, "std": STD, "images": []}
    with open(args.manifest) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    for row in rows:
        for size in args.size:
            processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                           image_mean=MEAN, image_std=STD, resample=3, do_convert_rgb=True)
            image = Image.open(os.path.join(root, row["image"])).convert("RGB")
            w, h = image.size
            if w != h:
                s = max(w, h)
                canvas = Image.new("RGB", (s, s), tuple(int(x * 255) for x in MEAN))
                canvas.paste(image, ((s - w) // 2, 0) if w < h else (0, (s - h) // 2))
                image = canvas
            pixels = processor.preprocess(image, return_tensors="np")["pixel_values"][0].astype(np.float32)
            out["images"].append({"image": row["image"], "size": size, "xxh3": f"{digest(pixels.tobytes()):016x}",
                                  "channel_sums": [float(pixels[c].astype(np.float64).sum()) for c in range(3)]})
    with open(args.output, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
