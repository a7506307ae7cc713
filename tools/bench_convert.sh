#!/usr/bin/env bash
# Convert throughput next to a plain copy of the same bytes on the same disk, and convert's peak RSS.
#   tools/bench_convert.sh MODEL_FOLDER WORK_FOLDER [--dtype f16]
# MODEL_FOLDER: e.g. from `python3 tools/make_synthetic_yivl.py DIR --preset 6b`.
# Both runs end with the data on disk (the copy is synced, convert fsyncs), each is run twice and the
# second, warm-cache figure is reported too, since 16 GB of source fit this machine's page cache only
# in part.
set -euo pipefail
model=${1:?model folder}; work=${2:?work folder}; shift 2
cd "$(dirname "$0")/.."
swift build -c release --product vlq >/dev/null
vlq=$PWD/.build/release/vlq
mkdir -p "$work"
mapfile -t sources < <(find "$model" -name '*.safetensors' | sort)
bytes=$(du -cb "${sources[@]}" | tail -1 | cut -f1)

measure() {  # prints "seconds peak_rss_kib" of the command
  /usr/bin/time -f "%e %M" -o "$work/.time" "$@" >/dev/null 2>"$work/.stderr" || { cat "$work/.stderr" >&2; exit 1; }
  cat "$work/.time"
}

echo "source: $model, $(numfmt --to=si "$bytes")B in ${#sources[@]} safetensors files"
for round in 1 2; do
  rm -f "$work/copy.bin" "$work/out.vlq"
  read -r copy_s copy_rss < <(measure sh -c "cat \"\$@\" > '$work/copy.bin' && sync '$work/copy.bin'" sh "${sources[@]}")
  rm -f "$work/copy.bin"
  read -r conv_s conv_rss < <(measure "$vlq" convert "$model" -o "$work/out.vlq" -q "$@")
  python3 - "$bytes" "$copy_s" "$conv_s" "$conv_rss" "$round" <<'PY'
import sys
b, copy_s, conv_s, rss, rnd = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
cg, vg = b / copy_s / 1e9, b / conv_s / 1e9
print(f"round {rnd}: plain copy {copy_s:.1f} s = {cg:.2f} GB/s | convert {conv_s:.1f} s = {vg:.2f} GB/s "
      f"= {vg / cg:.2f}x copy | convert peak RSS {rss / 1024:.0f} MiB")
PY
done
"$vlq" inspect "$work/out.vlq" --summary | sed -n '1,20p'
measure_check=$(measure "$vlq" check "$work/out.vlq")
echo "vlq check: ${measure_check% *} s, peak RSS $(( ${measure_check#* } / 1024 )) MiB"
rm -f "$work/out.vlq" "$work/.time" "$work/.stderr"
