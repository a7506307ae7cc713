#!/usr/bin/env bash
# The accuracy table of vlq quantize on the tiny Yi-VL: every preset/method against the transformers
# fp32 reference logits of the six reference cases (mean KLD, same top) and greedy exact match on the
# 200-sample eval set, with the bits per weight of the LLM's Linear weights.
#   tools/accuracy_table.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-/tmp/vlq-accuracy}
mkdir -p "$work"
# VLQ_BINARY: a vlq already built (else a release build here).
if [ -z "${VLQ_BINARY:-}" ]; then swift build -c release --product vlq >/dev/null; fi
vlq=${VLQ_BINARY:-.build/release/vlq}
data=Tests/Fixtures/tiny-yivl-data
$vlq convert Tests/Fixtures/tiny-yivl -o "$work/fp.vlq" -q
$vlq calibrate "$work/fp.vlq" --set $data/calibration.jsonl -o "$work/tiny.vlqstats" -q

row() {  # name bundle
  local json="$work/$1.json"
  $vlq verify --reference-dir $data/reference --candidate "$2" --set $data/eval.jsonl --json "$json" -q >/dev/null
  python3 - "$1" "$json" "$2" "$vlq" <<'PY'
import json, subprocess, sys
name, path, bundle, vlq = sys.argv[1:5]
r = json.load(open(path))
inspected = subprocess.run([vlq, "inspect", bundle, "--json"], capture_output=True, text=True, check=True)
listing = json.loads(inspected.stdout)
linear = [t for t in listing["tensors"] if t["name"].startswith("model.layers.") and len(t["shape"]) == 2]
bits = 8 * sum(t["bytes"] for t in linear) / sum(t["shape"][0] * t["shape"][1] for t in linear)
total = listing["totals"]["bits_per_weight"]
l = r["comparisons"][0]["logits"]  # the reference folder's cases (formats/VERIFY-REPORT.md)
print(f"| {name} | {l['mean_kld']:.2e} | {100 * l['same_top']:.2f}% | {100 * r['exact_match']['rate']:.1f}% | {bits:.2f} | {total:.2f} |")
PY
}

echo "| candidate | mean KLD | same top | exact match | bits/LLM-Linear weight | bits/weight (all) |"
echo "| --- | --- | --- | --- | --- | --- |"
row "fp32 bundle (bf16 LLM, as shipped)" "$work/fp.vlq"
for preset in int8 int4 int3 int4-all; do
  for method in rtn imatrix awq gptq; do
    calibration=(--stats "$work/tiny.vlqstats"); [ $method = rtn ] && calibration=()
    $vlq quantize "$work/fp.vlq" -o "$work/$preset-$method.vlq" --preset $preset --method $method "${calibration[@]}" -q
    row "$preset $method" "$work/$preset-$method.vlq"
  done
done
# Precision per decoder Linear chosen by quantize from measured drift (--allocate llm, the default: the rest as
# int4; gptq; every 4th calibration scene held out); --target-bits counts bits per LLM Linear weight.
for goal in "--max-kld 1e-3" "--max-kld 3e-4" "--max-kld 1e-4" "--target-bits 4.5"; do
  name="allocated ${goal#--}"
  file="$work/allocated-$(echo "${goal#--}" | tr ' ' '-').vlq"
  $vlq quantize "$work/fp.vlq" -o "$file" $goal --set $data/calibration.jsonl -q
  row "$name" "$file"
done
for recipe in ${VLQ_EXTRA_RECIPES:-}; do
  name=$(basename "$recipe" .json)
  $vlq quantize "$work/fp.vlq" -o "$work/$name.vlq" --recipe "$recipe" --stats "$work/tiny.vlqstats" -q
  row "$name" "$work/$name.vlq"
done
