#!/usr/bin/env bash
# Bulwark vs nginx (and the libcurl ceiling) benchmark. One command, from the repository root or anywhere:
#
#   bash tests/bench/run.sh                 # full run (~6 min): results in tests/bench/results/
#   BENCH_SMOKE=1 bash tests/bench/run.sh   # ~30 s, 1 round: checks the bench works, not the goals
#
# Needs Debian's nginx, wrk and gnuplot-nox (plus cc and python3, already build dependencies)
# and a built bulwark (ninja -C build). Settings (environment): see tests/bench/README.md.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v gnuplot >/dev/null 2>&1 || missing+=(gnuplot-nox)
command -v cc >/dev/null 2>&1 || missing+=(build-essential)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "bench: missing tools; install them with: apt-get install ${missing[*]}" >&2
  echo "       (bash scripts/deps.sh installs them all)" >&2
  exit 2
fi
export PATH="$PATH:/usr/sbin"

export BULWARK_BIN="${BULWARK_BIN:-$repo/build/bulwark}"
if [ ! -x "$BULWARK_BIN" ]; then
  echo "bench: no bulwark binary at $BULWARK_BIN: build it first (cmake -S . -B build -G Ninja && ninja -C build)" >&2
  exit 2
fi

# 1000 held streams need ~3000 descriptors across the client, the proxy and the upstream.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The load generator: compiled fresh into a temp dir on every run (a second, no cache to go stale).
workdir="$(mktemp -d "${TMPDIR:-/tmp}/bulwark-benchclient-XXXXXX")"
trap 'rm -rf "$workdir"' EXIT
cc -O2 -Wall -o "$workdir/benchclient" "$here/benchclient.c"
export BENCH_CLIENT="$workdir/benchclient"
# The libcurl ceiling: the same libraries Bulwark links (Debian's libcurl and libevent), on
# the same allocator (mimalloc, when Bulwark is built with it), so that the allocator's gain
# is not counted as Bulwark's own.
allocator=()
if readelf -d "$BULWARK_BIN" 2>/dev/null | grep -q 'libmimalloc'; then allocator=(-lmimalloc); fi
cc -O2 -Wall -o "$workdir/ceiling" "$here/ceiling.c" "${allocator[@]}" -lcurl -levent
export BENCH_CEILING="$workdir/ceiling"

python3 "$here/bench.py"

if [ -n "${BENCH_SMOKE:-}" ] && [ "${BENCH_SMOKE}" != "0" ]; then
  out="${BENCH_OUT:-$here/results}"
  grep -q '^| Metric | nginx | Bulwark |' "$out/results.md" || { echo "bench: no table in $out/results.md" >&2; exit 1; }
  grep -q "^| Bulwark's own CPU per request\|own CPU per request above the ceiling" "$out/results.md" || { echo "bench: no ceiling table in $out/results.md" >&2; exit 1; }
  [ -s "$out/results.png" ] || { echo "bench: no chart at $out/results.png" >&2; exit 1; }
  [ -s "$out/results.json" ] || { echo "bench: no raw results at $out/results.json" >&2; exit 1; }
  echo "bench: smoke run ok ($out)"
fi
