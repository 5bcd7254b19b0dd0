#!/usr/bin/env bash
# Installs dependencies (scripts/deps.sh) and builds Bulwark into build/ (build/bulwark).
# BUILD_DIR, BUILD_TYPE, SANITIZE (e.g. "address,undefined" or "thread"), TARGETS (space
# separated; default: everything) and CMAKE_ARGS (extra cmake options, space separated, e.g.
# -DBULWARK_FUZZ=ON) tune the build. CC and CXX pick the compiler when BUILD_DIR is first made.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
extra=()
for a in ${CMAKE_ARGS:-}; do extra+=("$a"); done
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
  -DBULWARK_SANITIZE="${SANITIZE:-}" "${extra[@]}" >/dev/null
targets=()
for t in ${TARGETS:-}; do targets+=(--target "$t"); done
cmake --build "$BUILD_DIR" -j2 "${targets[@]}"
