#!/usr/bin/env bash
# Installs dependencies (scripts/deps.sh) and builds Bulwark into build/ (build/bulwark).
# BUILD_DIR, BUILD_TYPE, SANITIZE (e.g. "address,undefined" or "thread") and TARGETS (space
# separated; default: everything) tune the build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
  -DBULWARK_SANITIZE="${SANITIZE:-}" >/dev/null
targets=()
for t in ${TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j2 "${targets[@]}"
