#!/usr/bin/env bash
# The test suite: the layout check (tools/format.sh --check: swift-format's layout, no line over 120
# columns), every fuzz target for a few seconds (tools/fuzz.sh), then the unit tests and the
# end-to-end tests on the tiny Yi-VL fixtures. What CI runs. The fuzzers go first so that the test
# runner's summary closes the output.
#
# VLQ_FUZZ_SECONDS: seconds per fuzz target (default 3, or 0 when arguments for `swift test` such as
# --filter are given; 0 skips the fuzz step, e.g. locally). VLQ_FUZZ_TARGETS: which targets (default
# all). The sanitizer build takes ~80-110 s from clean on 2 cores, the fuzzing ~5 s per target.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
source tools/ensure-deps.sh
# Style first: it takes seconds and says exactly which file to run tools/format.sh on.
tools/format.sh --check
swift build --build-tests

fuzz_seconds=${VLQ_FUZZ_SECONDS:-$(($# ? 0 : 3))}
if ((fuzz_seconds > 0)); then
  read -r -a targets <<<"${VLQ_FUZZ_TARGETS:-}"
  tools/fuzz.sh --seconds "$fuzz_seconds" "${targets[@]}"
  echo "test: fuzz step done after $(($(date +%s) - started)) s"
fi
exec swift test --skip-build --disable-swift-testing "$@"
