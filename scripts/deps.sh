#!/usr/bin/env bash
# Installs everything Bulwark needs to build, run and test, from Debian 12 packages.
# Idempotent: does nothing when every package is already there. Run as root.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git ca-certificates curl
  libevent-dev libcurl4-openssl-dev libhttp-parser-dev rapidjson-dev
  prometheus-cpp-dev libyaml-cpp-dev libhiredis-dev libmimalloc-dev
  libgtest-dev libgmock-dev
  python3 python3-h2 python3-brotli
  prometheus
  clang libclang-rt-14-dev openssl
  nginx wrk gnuplot-nox
  redis-server
)
# python3-h2, python3-brotli: the fake upstream's production transport (h2, br).
# clang + libclang-rt-14-dev: the libFuzzer build; openssl: test certificates for the TLS
# fault tests; nginx, wrk, gnuplot-nox: the benchmark suite (nginx is the yardstick).
# prometheus ships promtool and the server the metrics tests scrape Bulwark with (the
# package's service is not needed: tests start their own server on loopback). libhiredis-dev:
# fleet mode's Redis client; redis-server: the fleet tests start their own on loopback.
# libmimalloc-dev: the allocator the bulwark binary runs on (fewer instructions per
# allocation than the C library's, for libcurl's allocations as much as Bulwark's own).
# Node.js runs the end-to-end tests through the official openai npm package.
command -v node >/dev/null 2>&1 || packages+=(nodejs)
command -v npm >/dev/null 2>&1 || packages+=(npm)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
