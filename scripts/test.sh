#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite:
#   1. ThreadSanitizer: the shared-state units (their multi-threaded hammering), and the real
#      binary with 2 workers under the integration files that exercise shared state,
#   2. every test under AddressSanitizer + UndefinedBehaviorSanitizer (leak checks on),
#   3. a bounded libFuzzer run of every fuzz target,
#   4. ctest on the release build: unit tests, the fake upstream's self-tests, integration
#      tests of the real binary against the fake upstream, end-to-end tests through the
#      official openai npm package, deployment checks, corpus replays, the bench smoke run.
# QUICK=1 skips stages 1-3 (for a fast local loop). Extra arguments go to the final ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build.sh

# Node packages for the end-to-end tests (official openai SDK) and the manifest checks.
for dir in tests/e2e tests/deploy; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done

if [ "${QUICK:-0}" != "1" ]; then
  echo "== ThreadSanitizer: bulwark_resilience_tests, and bulwark with 2 workers"
  BUILD_DIR=build-tsan SANITIZE=thread TARGETS="bulwark_resilience_tests bulwark" \
    bash scripts/build.sh
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ./build-tsan/tests/bulwark_resilience_tests --gtest_brief=1
  # Workers share the breakers, budgets, quotas, latency histograms, metrics, logger, config
  # and, in fleet mode, the fleet's state (each with its own Redis link);
  # these files drive all of it, on the production transport. A race makes bulwark abort, which fails the test.
  (cd tests/integration &&
    BULWARK_BIN="$PWD/../../build-tsan/bulwark" BULWARK_TEST_WORKERS=2 BULWARK_SANITIZED=1 \
    BULWARK_TEST_TRANSPORT=h2 PYTHONPATH="$PWD/..:/usr/lib/python3/dist-packages" \
    TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    python3 -m unittest test_passthrough test_retries test_breaker test_transport test_routes \
      test_admission test_fleet)

  echo "== AddressSanitizer + UndefinedBehaviorSanitizer: the test suite"
  BUILD_DIR=build-asan SANITIZE=address,undefined bash scripts/build.sh
  # Memory-size assertions are meaningless under ASan's allocator; BULWARK_SANITIZED tells
  # the tests to keep every other check.
  (cd build-asan &&
    BULWARK_SANITIZED=1 \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:halt_on_error=1" \
    UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1" \
    ctest --output-on-failure --timeout 300 -j2 \
      -E '^(bench|deploy)\.|^integration_h2\.test_(passthrough|retries|breaker|fault_matrix|observability|backpressure|openai_sdk|responses_stream|uploads|admission|fleet|soak_short)$')
  # (Under ASan the h2 transport runs its own file only; the release stage runs all of it.)

  echo "== libFuzzer: every target for a bounded time"
  bash scripts/fuzz.sh
fi

echo "== Release build: the whole suite"
cd "${BUILD_DIR:-build}"
ctest --output-on-failure --timeout 300 "$@"
