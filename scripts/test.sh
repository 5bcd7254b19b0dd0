#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite: the shared-state units under
# ThreadSanitizer, then ctest (unit tests, the fake upstream's self-tests, integration tests
# of the real binary against the fake upstream, end-to-end tests through the official openai
# npm package). Extra arguments go to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build.sh

# Circuit breakers, budgets and in-flight counts are shared by every worker thread: their
# tests (including the multi-threaded hammering) also run under ThreadSanitizer.
BUILD_DIR=build-tsan SANITIZE=thread TARGETS=bulwark_resilience_tests bash scripts/build.sh
echo "== ThreadSanitizer: bulwark_resilience_tests"
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
  ./build-tsan/tests/bulwark_resilience_tests --gtest_brief=1

# Node packages for the end-to-end tests (official openai SDK) and the manifest checks.
for dir in tests/e2e tests/deploy; do
  if [ ! -d "$dir/node_modules" ] || [ "$dir/package-lock.json" -nt "$dir/node_modules" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error)
  fi
done
cd build
ctest --output-on-failure --timeout 300 "$@"
