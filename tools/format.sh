#!/usr/bin/env bash
# Formats every tracked Swift file with .swift-format (swift-format ships with Swift 6 toolchains as
# `swift format`). With --check it changes nothing: it lists the files swift-format would change, the
# lines over 120 columns (long string literals, which swift-format does not break) and the functions
# of the engine, calibration, quantization and verification modules over 60 lines
# (tools/function_lengths.py), and exits 1 when there is any; tools/test.sh runs it that way.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.swift')
if ! swift format --version >/dev/null 2>&1; then
  echo "format: 'swift format' is missing; it ships with Swift 6 toolchains (swift.org/install)" >&2
  exit 2
fi

if [[ ${1:-} != --check ]]; then
  exec swift format --in-place --parallel --configuration .swift-format "${files[@]}"
fi

# Format a copy and compare, so that the check never writes a source file.
copy=$(mktemp -d)
trap 'rm -rf "$copy"' EXIT
tar cf - "${files[@]}" | tar xf - -C "$copy"
swift format --in-place --parallel --configuration .swift-format "${files[@]/#/$copy/}"
status=0
for file in "${files[@]}"; do
  if ! cmp -s "$file" "$copy/$file"; then
    echo "format: $file differs from swift-format's layout (tools/format.sh formats it)"
    status=1
  fi
done
# Bytes, not characters: a line of wide (CJK) characters is wider on screen than its character count.
if LC_ALL=C grep -nP '^.{121,}' "${files[@]}" | sed 's/^\([^:]*:[0-9]*\):.*/format: \1 is over 120 columns/'; then
  status=1
fi
# The engine and the quantization and verification pipelines keep functions short enough to read whole.
if ! python3 tools/function_lengths.py --max 60 Sources/{Numerics,YiVL,Calibration,Quantization,Verification}; then
  status=1
fi
if ((status == 0)); then
  echo "format: ${#files[@]} Swift files formatted, no line over 120 columns, no engine function over 60 lines"
fi
exit $status
