#!/usr/bin/env bash
# The test suite: unit tests plus end-to-end tests on the tiny Yi-VL fixtures, then every fuzz target
# for a few seconds (tools/fuzz.sh). What CI runs.
#
# VLQ_FUZZ_SECONDS: seconds per fuzz target (default 3, or 0 when arguments for `swift test` such as
# --filter are given; 0 skips the fuzz step, e.g. locally). VLQ_FUZZ_TARGETS: which targets (default
# all). The sanitizer build (~80-110 s from clean on 2 cores) runs in the background, niced, while the
# tests run (they use about half the cores); the fuzzing itself then takes ~5 s per target.
# VLQ_CI_BUDGET_SECONDS (default 600): the fuzz step is skipped, loudly, when the suite has already
# used so much of it that the step would not fit.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$(date +%s)
source tools/ensure-deps.sh
swift build --build-tests

fuzz_seconds=${VLQ_FUZZ_SECONDS:-$(($# ? 0 : 3))}
fuzz_build=
if ((fuzz_seconds > 0)); then
  mkdir -p .fuzz
  nice -n 10 tools/fuzz.sh --build-only >.fuzz/build.log 2>&1 &
  fuzz_build=$!
fi

status=0
swift test --skip-build --disable-swift-testing "$@" || status=$?
if [[ -z $fuzz_build ]]; then exit $status; fi
if ! wait "$fuzz_build"; then
  cat .fuzz/build.log >&2
  echo "test: the fuzz build failed" >&2
  exit 1
fi
cat .fuzz/build.log
((status == 0)) || exit $status

read -r -a targets <<<"${VLQ_FUZZ_TARGETS:-}"
count=${#targets[@]}
((count)) || count=7
needed=$((count * (fuzz_seconds + 4) + 10))
elapsed=$(($(date +%s) - started))
budget=${VLQ_CI_BUDGET_SECONDS:-600}
if ((elapsed + needed > budget)); then
  echo "test: SKIPPED the fuzz step: the suite took ${elapsed} s and the step needs about ${needed} s of the ${budget} s budget" >&2
  exit 0
fi
fuzz_started=$(date +%s)
fuzz_status=0
tools/fuzz.sh --no-build --seconds "$fuzz_seconds" "${targets[@]}" || fuzz_status=$?
echo "test: fuzz step took $(($(date +%s) - fuzz_started)) s (suite: $(($(date +%s) - started)) s)"
exit $fuzz_status
