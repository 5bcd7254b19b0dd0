#!/usr/bin/env bash
# Watch Bulwark work: no OpenAI key, no network. Starts the fake OpenAI upstream in flaky mode
# (random 503s and 429s, dropped connections, slow answers), injects a stall and a short total
# outage, sends ~30 s of chat completions (plain and streamed) through Bulwark, and prints what
# happened — retries, the circuit breaker opening and closing, tokens — from Bulwark's /metrics
# and its JSON log.
#
#   bash scripts/demo.sh                  # builds first if needed (scripts/build.sh)
#   DEMO_SECONDS=10 bash scripts/demo.sh  # shorter
#
# DEMO_SECONDS (default 30), DEMO_CLIENTS (4), DEMO_SEED (random), DEMO_KEEP=1 keeps the
# temporary directory (config, Bulwark's log) for a look afterwards; BULWARK_BIN uses that
# binary instead of building.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${DEMO_SECONDS:-30}
clients=${DEMO_CLIENTS:-4}
seed=${DEMO_SEED:-$RANDOM}

if [ -n "${BULWARK_BIN:-}" ]; then
  bin=$BULWARK_BIN
else
  echo "==> building Bulwark (scripts/build.sh)"
  TARGETS=bulwark bash scripts/build.sh
  bin=build/bulwark
fi
[ -x "$bin" ] || { echo "demo: no bulwark binary at $bin" >&2; exit 1; }

work=$(mktemp -d "${TMPDIR:-/tmp}/bulwark-demo.XXXXXX")
pids=()
cleanup() {
  local code=$?
  trap - EXIT INT TERM
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [ "${DEMO_KEEP:-}" = 1 ]; then
    echo "demo: kept $work (proxy.yaml, bulwark.log, fake.log)"
  else
    rm -rf "$work"
  fi
  exit "$code"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
echo "demo: work dir $work"

wait_for() {  # wait_for <file> <pattern> <what> <pid>: up to 10 s
  for _ in $(seq 100); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    kill -0 "$4" 2>/dev/null || break
    sleep 0.1
  done
  echo "demo: $3 did not start; its output:" >&2
  cat "$1" >&2 || true
  exit 1
}

# 1. The fake OpenAI upstream, flaky.
python3 tests/fake_upstream/fake_upstream.py --port 0 --mode flaky --seed "$seed" \
  >"$work/fake.out" 2>"$work/fake.log" &
pids+=($!)
wait_for "$work/fake.out" '"port"' "the fake upstream" "${pids[-1]}"
fake_port=$(sed -n 's/.*"port": *\([0-9]*\).*/\1/p' "$work/fake.out" | head -n1)

# 2. Bulwark in front of it: quick retries, a breaker that trips after 5 failures in a row
#    and tries again after 3 s.
cat >"$work/proxy.yaml" <<EOF
server:
  listen: 127.0.0.1:0
  admin_listen: 127.0.0.1:0
  workers: 2
  shutdown_grace: 2s
upstreams:
  - name: openai-fake
    base_url: http://127.0.0.1:$fake_port
timeouts:
  connect: 1s
  first_byte: 1s
  idle: 5s
  total: 10s
retry:
  max_attempts: 3
  base_delay: 100ms
  max_delay: 1s
circuit_breaker:
  failure_threshold: 5
  recovery_timeout: 3s
  max_recovery_timeout: 12s
log:
  level: info
  format: json
EOF
"$bin" --config "$work/proxy.yaml" >"$work/bulwark.log" 2>"$work/bulwark.err" &
pids+=($!)
wait_for "$work/bulwark.log" '"listening"' "Bulwark" "${pids[-1]}"

echo "demo: fake upstream on 127.0.0.1:$fake_port (flaky, seed $seed); Bulwark config:"
echo "      retry.max_attempts 3, base_delay 100ms; timeouts.first_byte 1s;"
echo "      circuit_breaker.failure_threshold 5, recovery_timeout 3s"

# 3. Traffic, live breaker events, and the summary.
python3 tests/demo/demo_traffic.py --bulwark-log "$work/bulwark.log" \
  --fake-url "http://127.0.0.1:$fake_port" --seconds "$seconds" --clients "$clients" \
  --seed "$seed"
