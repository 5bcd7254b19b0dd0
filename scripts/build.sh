#!/usr/bin/env bash
# Installs dependencies (scripts/deps.sh) and builds Bulwark into build/ (build/bulwark).
# BUILD_DIR, BUILD_TYPE and SANITIZE (e.g. "address,undefined") tune the build.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
BUILD_DIR=${BUILD_DIR:-build}
BUILD_TYPE=${BUILD_TYPE:-RelWithDebInfo}
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="$BUILD_TYPE" \
  -DBULWARK_SANITIZE="${SANITIZE:-}" >/dev/null
cmake --build "$BUILD_DIR" -j2
