#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, AddressSanitizer + UndefinedBehaviorSanitizer) into
# build-fuzz/ and runs each for FUZZ_SECONDS (default 20) from its seeds in
# tests/fuzz/corpus/<target>/. Fails on any crash, sanitizer report, leak, timeout or
# out-of-memory, and prints where the input that caused it was saved.
# FUZZ_TARGETS (space separated, e.g. "config sse"; default: all) picks the targets.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-20}
targets=${FUZZ_TARGETS:-"config values retry_hint sse error_body request_parser"}
binaries=()
for target in $targets; do binaries+=("fuzz_$target"); done

CC=${CC:-clang} CXX=${CXX:-clang++} BUILD_DIR=build-fuzz CMAKE_ARGS="-DBULWARK_FUZZ=ON" \
  TARGETS="${binaries[*]}" bash scripts/build.sh
out=build-fuzz/fuzz-out
mkdir -p "$out"

# Limits: a slow input is a finding after 10 s, a big allocation at 512 MiB, a process at
# 1 GiB resident. The resident limit is ASan's rather than libFuzzer's -rss_limit_mb, whose
# report can hang while the heap is still growing and then never saves the input. timeout
# is the last resort against a hang that nothing else catches.
export ASAN_OPTIONS="hard_rss_limit_mb=1024:detect_leaks=1:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:suppressions=$PWD/tests/fuzz/ubsan.supp"

failed=()
for target in $targets; do
  binary=build-fuzz/tests/fuzz/fuzz_$target
  seeds=tests/fuzz/corpus/$target
  [ -x "$binary" ] && [ -d "$seeds" ] || { echo "fuzz: no target or seeds for $target" >&2; exit 2; }
  # New inputs go to a scratch corpus (first directory); the seeds in the repo stay as they are.
  mkdir -p "$out/corpus/$target" "$out/artifacts"
  log=$out/$target.log
  status=0
  timeout -s KILL $((seconds + 120)) "$binary" "$out/corpus/$target" "$seeds" \
    -max_total_time="$seconds" -max_len=4096 -timeout=10 -malloc_limit_mb=512 -rss_limit_mb=0 \
    -print_final_stats=1 -artifact_prefix="$out/artifacts/$target-" >"$log" 2>&1 || status=$?
  if [ "$status" -eq 0 ]; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $target clean, ${runs:-?} inputs in ${seconds}s"
    continue
  fi
  failed+=("$target")
  echo "fuzz: $target FAILED (exit $status); log: $log" >&2
  grep -E 'ERROR:|runtime error:|SUMMARY:|rss limit' "$log" | head -5 >&2 || true
  if artifact=$(sed -n 's/.*Test unit written to //p' "$log" | tail -1) && [ -n "$artifact" ]; then
    echo "fuzz: input saved at $artifact" >&2
    echo "fuzz: reproduce with $binary $artifact; once fixed, add it as $seeds/regress-<what>" >&2
  elif [ "$status" -eq 137 ]; then
    echo "fuzz: $target hung past every limit and was killed; no input was saved" >&2
  fi
done

if [ ${#failed[@]} -ne 0 ]; then
  echo "fuzz: findings in: ${failed[*]}" >&2
  exit 1
fi
