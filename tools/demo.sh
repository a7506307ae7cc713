#!/usr/bin/env bash
# The main job on the tiny Yi-VL shipped in the repo: convert the Hugging Face folder into one .vlq
# bundle, show what is inside, verify every checksum, and read it back with the Python reader.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/ensure-deps.sh
swift build -c release --product vlq
vlq=.build/release/vlq
out=${VLQ_DEMO_OUT:-out}
mkdir -p "$out"
model=Tests/Fixtures/tiny-yivl

echo "== vlq convert: Hugging Face folder -> one bundle"
$vlq convert "$model" -o "$out/tiny-yivl.vlq"
echo
echo "== vlq inspect"
$vlq inspect "$out/tiny-yivl.vlq" --summary
echo
echo "== vlq check"
$vlq check "$out/tiny-yivl.vlq"
echo
echo "== tools/vlq_reader.py (numpy-only reader, written from formats/VLQ-BUNDLE.md)"
python3 tools/vlq_reader.py check "$out/tiny-yivl.vlq"
echo
echo "== vlq run: the fp32 engine answers about an image (from the bundle, then from the Hugging Face folder)"
data=Tests/Fixtures/tiny-yivl-data
$vlq run "$out/tiny-yivl.vlq" --image $data/cases/cases-003.png --prompt "Where is the yellow triangle?"
$vlq run "$model" --image $data/cases/cases-004.png --prompt "图片里有什么形状？"
echo
echo "== vlq quantize: int8 (vision tower included) and int4, calibrated with the tiny model's calibration scenes"
$vlq quantize "$out/tiny-yivl.vlq" -o "$out/tiny-yivl-int8.vlq" --preset int8 --method imatrix --set $data/calibration.jsonl -q
$vlq quantize "$out/tiny-yivl.vlq" -o "$out/tiny-yivl-int4.vlq" --preset int4 --method gptq --set $data/calibration.jsonl -q
$vlq inspect "$out/tiny-yivl-int4.vlq" --summary
echo
echo "== vlq run on the int4 bundle"
$vlq run "$out/tiny-yivl-int4.vlq" --image $data/cases/cases-003.png --prompt "Where is the yellow triangle?"
echo
echo "== vlq verify: drift of the int4 bundle against the transformers fp32 reference, as a CI gate"
$vlq verify --reference-dir $data/reference --candidate "$out/tiny-yivl-int4.vlq" --set $data/eval.jsonl \
  --max-kld 0.01 --min-same-top 0.97 --html "$out/verify.html" -q
echo "(HTML report: $out/verify.html; tools/render_report.sh $out/verify.html $out/verify.png screenshots it)"
