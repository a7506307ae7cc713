#!/usr/bin/env bash
# Rewrites formats/golden/ from its committed synthetic source. Run only for a deliberate format
# change: the test suite requires that vlq reproduces these bytes exactly.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product vlq
vlq=.build/debug/vlq
$vlq convert formats/golden/micro -o formats/golden/micro.vlq -q
$vlq convert formats/golden/micro -o formats/golden/micro-f16.vlq --dtype f16 --metadata-compression none -q
for b in micro micro-f16; do
  python3 - "$b" <<'PY'
import json, sys
sys.path.insert(0, "tools")
from vlq_reader import VLQBundle
name = sys.argv[1]
b = VLQBundle(f"formats/golden/{name}.vlq")
expected = {
    "file_bytes": b.file_size, "alignment": b.alignment, "tensor_count": b.tensor_count,
    "metadata_compression": b.metadata_compression,
    "tensors": [dict(t.as_dict(), xxh3=f"{t.xxh3:016x}") for t in b.tensors],
}
with open(f"formats/golden/{name}.expected.json", "w") as f:
    json.dump(expected, f, indent=1)
    f.write("\n")
PY
done
echo "golden files rewritten"
