#!/usr/bin/env bash
# Fuzzes vlq's readers with libFuzzer (Swift's -sanitize=fuzzer, with the address sanitizer).
#
#   tools/fuzz.sh [--seconds N] [--no-build | --build-only] [--release] [target ...]
#
# Targets (Sources/FuzzTargets): safetensors pytorch bundle tokenizer image json vlqstats; default all.
# Each runs single-core for N seconds (default 30) in libFuzzer's fork mode, which goes on after a
# crash, out-of-memory or timeout, so one run collects every distinct failure it meets.
#
# The default debug build (.build-fuzz) builds faster from clean and keeps the standard library's
# debug checks (unsafe-buffer bounds, alignment); --release (.build-fuzz-release) runs 1.5-3x more
# executions per second, for long runs.
#
#   .fuzz/corpus/<target>/    the growing corpus, kept between runs (gitignored)
#   .fuzz/seeds/<target>/     seeds rebuilt from the fixtures each run (tools/fuzz/make_seeds.py)
#   .fuzz/crashes/<target>/   crash-*, oom-*, timeout-* inputs found
#   .fuzz/logs/<target>.log   libFuzzer's output
#
# Saved regression inputs (Tests/Fixtures/fuzz-regressions/<target>) are seeds too. Prints per target
# the executions, executions per second and new failures, then a summary; exits 1 if any target found
# one. Replay one input:  SWIFT_BACKTRACE=enable=no .build-fuzz/debug/vlq-fuzz <target> FILE
# Minimise one:           ... vlq-fuzz <target> -minimize_crash=1 -runs=20000 -exact_artifact_path=OUT FILE
#
# Environment: VLQ_FUZZ_MALLOC_MB (default 256): any single allocation above it is a failure; inputs
# are kilobytes, so only a size the input declares gets there.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=30
build=1
build_only=0
config=debug
targets=()
all_targets=(safetensors pytorch bundle tokenizer image json vlqstats)
while (($#)); do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --seconds=*) seconds=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    --build-only) build_only=1; shift ;;
    --release) config=release; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
((${#targets[@]})) || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [[ " ${all_targets[*]} " == *" $t "* ]] || { echo "fuzz: unknown target $t (targets: ${all_targets[*]})" >&2; exit 2; }
done

source tools/ensure-deps.sh
scratch=.build-fuzz
[[ $config == release ]] && scratch=.build-fuzz-release
bin=$scratch/$config/vlq-fuzz
if ((build)); then
  started=$(date +%s)
  # -use-ld=lld: gold fails on the sanitizer objects' debug info. The linker's "Cannot export local
  # symbol __asan_*" warnings are harmless and filtered out.
  log=$(mktemp)
  if ! VLQ_FUZZ=1 swift build -c "$config" --scratch-path "$scratch" --product vlq-fuzz \
      -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xswiftc -use-ld=lld \
      -Xcc -fsanitize=fuzzer-no-link,address >"$log" 2>&1; then
    grep -v "Cannot export local symbol" "$log" >&2
    rm -f "$log"
    echo "fuzz: build failed" >&2
    exit 2
  fi
  rm -f "$log"
  echo "fuzz: built $bin in $(($(date +%s) - started)) s"
fi
[[ -x $bin ]] || { echo "fuzz: $bin is missing (run without --no-build)" >&2; exit 2; }
((build_only)) && exit 0

rm -rf .fuzz/seeds
python3 tools/fuzz/make_seeds.py . .fuzz/seeds

export SWIFT_BACKTRACE=enable=no
malloc_mb=${VLQ_FUZZ_MALLOC_MB:-256}
total_failures=0
total_runs=0
failed_targets=()
for t in "${targets[@]}"; do
  corpus=.fuzz/corpus/$t crashes=.fuzz/crashes/$t logfile=.fuzz/logs/$t.log
  mkdir -p "$corpus" "$crashes" .fuzz/logs .fuzz/seeds/$t
  before=$(ls "$crashes" | sort)
  inputs=("$corpus" ".fuzz/seeds/$t")
  [[ -d Tests/Fixtures/fuzz-regressions/$t ]] && inputs+=("Tests/Fixtures/fuzz-regressions/$t")
  status=0
  VLQ_FUZZ_TARGET=$t "$bin" "$t" -fork=1 -ignore_crashes=1 -ignore_ooms=1 -ignore_timeouts=1 \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb="$malloc_mb" \
    -dict="tools/fuzz/$t.dict" -artifact_prefix="$crashes/" "${inputs[@]}" >"$logfile" 2>&1 || status=$?
  new=$(comm -13 <(echo "$before") <(ls "$crashes" | sort) | grep -E '^(crash|oom|timeout|leak)-' || true)
  count=$(grep -c . <<<"$new" || true)
  # Fork mode's progress lines: "#RUNS: cov: .. exec/s: N oom/timeout/crash: a/b/c time: Ts job: ..".
  last=$(grep -E '^#[0-9]+: ' "$logfile" | tail -1 || true)
  if [[ -z $last ]]; then
    echo "fuzz: $t: no fuzzing statistics (exit $status); see $logfile" >&2
    tail -20 "$logfile" >&2
    failed_targets+=("$t")
    continue
  fi
  runs=$(sed -E 's/^#([0-9]+):.*/\1/' <<<"$last")
  # libFuzzer's exec/s there is the last job's; this one is over the whole run, merges included.
  took=$(sed -nE 's/.* time: ([0-9]+)s.*/\1/p' <<<"$last")
  rate=$((runs / (${took:-0} > 0 ? took : 1)))
  total_runs=$((total_runs + runs))
  total_failures=$((total_failures + count))
  printf 'fuzz: %-12s %10s executions  %7s exec/s  %3s new failures%s\n' "$t" "$runs" "${rate:-?}" "$count" \
    "$( ((count)) && echo " -> $crashes/" )"
  if ((count)); then
    failed_targets+=("$t")
    sed 's/^/      /' <<<"$new" | head -10
  fi
done

if ((${#failed_targets[@]})); then
  echo "fuzz: FAILED: ${#targets[@]} targets, $total_runs executions in ${seconds} s each, $total_failures new failures (${failed_targets[*]})"
  exit 1
fi
echo "fuzz: OK: ${#targets[@]} targets, $total_runs executions in ${seconds} s each, no failures"
