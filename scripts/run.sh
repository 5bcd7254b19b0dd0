#!/usr/bin/env bash
# Installs dependencies, builds, and runs Bulwark with ./proxy.yaml (or the file given
# with --config). The upstream API key comes from the client or OPENAI_API_KEY.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/build.sh
exec ./build/bulwark --config proxy.yaml "$@"
