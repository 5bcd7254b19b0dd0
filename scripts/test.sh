#!/usr/bin/env bash
# Installs dependencies, builds, and runs the whole test suite (ctest): unit tests,
# the fake upstream's self-tests, integration tests of the real binary against the fake
# upstream, and end-to-end tests through the official openai npm package.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build.sh
BUILD_DIR=${BUILD_DIR:-build}
if [ ! -d tests/e2e/node_modules ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules ]; then
  (cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)
fi
cd "$BUILD_DIR"
ctest --output-on-failure --timeout 300 "$@"
