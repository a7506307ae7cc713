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
