#!/usr/bin/env bash
# Metric series shared between two workers vs per-worker series (tests/bench/sharing.cc):
#
#   bash tests/bench/sharing.sh [rounds] [requests]     # ~15 s; results/sharing.md and .json
#
# Needs a C++ compiler and Debian's libprometheus-cpp-dev (build dependencies already).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${BENCH_OUT:-$here/results}"
mkdir -p "$out"
workdir="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-sharing-XXXXXX")"
trap 'rm -rf "$workdir"' EXIT
c++ -std=c++20 -O2 -Wall -o "$workdir/sharing" "$here/sharing.cc" -lprometheus-cpp-core -pthread
"$workdir/sharing" "${1:-7}" "${2:-20000}" > "$workdir/out.txt"
grep -v '^BENCH_JSON ' "$workdir/out.txt" > "$out/sharing.md"
sed -n 's/^BENCH_JSON //p' "$workdir/out.txt" > "$out/sharing.json"
cat "$out/sharing.md"
