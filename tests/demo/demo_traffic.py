#!/usr/bin/env python3
"""The traffic and the summary of scripts/demo.sh (standard library only).

demo.sh starts the fake upstream (--mode flaky) and Bulwark, then runs this script, which:
  1. sends a few concurrent clients' worth of chat completions (plain and streamed) through
     Bulwark for --seconds, injecting a stall and a short total outage of the upstream through
     the fake's control API at fixed points of the run;
  2. follows Bulwark's JSON log as it goes and prints each circuit breaker transition live;
  3. prints a summary a newcomer can read: what the clients saw, how many attempts each
     request took, what was retried and why, the breaker's story, tokens counted, and a few
     real log lines — all taken from Bulwark's /metrics and its log, not guessed.

It is not meant to be run on its own (demo.sh passes every address), but can be:
    python3 tests/demo/demo_traffic.py --bulwark-log LOG --fake-url URL --seconds 30
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import http.client
import json
import random
import re
import sys
import threading
import time
import urllib.request

CHAT_PATH = "/v1/chat/completions"
MODELS = ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"]

EXPLAIN_REASON = {
    "429": "rate limited: waited as long as the server asked (retry-after-ms)",
    "503": "upstream overloaded",
    "500": "upstream error",
    "502": "bad gateway",
    "timeout": "no answer within timeouts.first_byte",
    "reset": "the upstream dropped the connection",
    "connect_error": "could not connect",
    "stream_error": "the stream's first event was an error",
}
EXPLAIN_TRANSITION = {
    ("CLOSED", "OPEN"): "too many failures in a row: requests now fail fast (503 circuit_open)",
    ("OPEN", "HALF_OPEN"): "recovery_timeout passed: one probe request may try the upstream",
    ("HALF_OPEN", "CLOSED"): "the probe succeeded: traffic flows again",
    ("HALF_OPEN", "OPEN"): "the probes kept failing: open again, the next wait is twice as long",
}


def say(text: str = "") -> None:
    print(text, flush=True)


# --- Bulwark's log, followed as it is written ------------------------------------------------


class LogFollower:
    """Reads Bulwark's stdout log file as it grows; keeps every JSON line (and its raw text)."""

    def __init__(self, path: str, on_entry=None):
        self.path = path
        self.on_entry = on_entry
        self.entries: list[dict] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "LogFollower":
        self.thread.start()
        return self

    def _run(self) -> None:
        partial = b""
        with open(self.path, "rb") as f:
            while True:
                data = f.read(65536)
                if not data:
                    if self.stop.is_set():
                        return
                    time.sleep(0.05)
                    continue
                partial += data
                *lines, partial = partial.split(b"\n")
                for raw in lines:
                    text = raw.decode("utf-8", "replace")
                    try:
                        entry = json.loads(text)
                    except ValueError:
                        entry = {"msg": text}
                    if not isinstance(entry, dict):
                        continue
                    entry["_raw"] = text
                    with self.lock:
                        self.entries.append(entry)
                    if self.on_entry:
                        self.on_entry(entry)

    def snapshot(self, msg: str | None = None) -> list[dict]:
        with self.lock:
            return [e for e in self.entries if msg is None or e.get("msg") == msg]

    def wait_for(self, msg: str, timeout: float) -> dict | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.snapshot(msg)
            if found:
                return found[0]
            time.sleep(0.05)
        return None

    def close(self) -> None:
        time.sleep(0.15)  # let the reader catch up with the last lines
        self.stop.set()
        self.thread.join(2)


def parse_ts(text: str) -> float:
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except (ValueError, AttributeError):
        return time.time()


# --- /metrics --------------------------------------------------------------------------------


_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def scrape(admin: str) -> list[tuple[str, dict, float]]:
    with urllib.request.urlopen(admin + "/metrics", timeout=5) as resp:
        text = resp.read().decode("utf-8")
    samples = []
    for line in text.splitlines():
        if line and not line.startswith("#"):
            match = _SAMPLE.match(line)
            if match:
                name, labels, value = match.groups()
                samples.append((name, dict(_LABEL.findall(labels or "")), float(value)))
    return samples


def by_label(samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = collections.Counter()
    for n, labels, value in samples:
        if n == name:
            out[labels.get(label, "")] += value
    return dict(out)


# --- the clients -----------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    started: float
    kind: str            # "chat" | "stream"
    model: str
    status: int          # 0: no HTTP response at all
    attempts: int | None
    code: str            # Bulwark's own error code, "upstream" for an upstream error, "" if ok
    seconds: float
    interrupted: bool = False


class Traffic:
    def __init__(self, host: str, port: int, seed: int):
        self.host = host
        self.port = port
        self.results: list[Result] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.sent = 0

    def one(self, kind: str | None = None) -> Result:
        with self.lock:
            kind = kind or ("stream" if self.rng.random() < 0.35 else "chat")
            model = self.rng.choice(MODELS)
            self.sent += 1
            n = self.sent
        body: dict = {"model": model,
                      "messages": [{"role": "user", "content": f"demo request {n}"}]}
        if kind == "stream":
            body.update(stream=True, stream_options={"include_usage": True})
        started = time.monotonic()
        status, attempts, code, interrupted = 0, None, "no response", False
        conn = http.client.HTTPConnection(self.host, self.port, timeout=20)
        try:
            conn.request("POST", CHAT_PATH, json.dumps(body),
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            status = resp.status
            attempts = int(resp.getheader("x-bulwark-attempts") or 0)
            try:
                data = resp.read()
            except http.client.IncompleteRead as error:
                data, interrupted = error.partial, True
            code = ""
            if status >= 400:
                code = "upstream"
                try:
                    error = json.loads(data)["error"]
                    if error.get("type") == "bulwark_error":
                        code = error.get("code") or "bulwark_error"
                except (ValueError, KeyError, TypeError):
                    pass
            elif b"stream_interrupted" in data:
                interrupted = True
        except (OSError, http.client.HTTPException) as error:
            code = f"client error: {type(error).__name__}"
        finally:
            conn.close()
        result = Result(started, kind, model, status, attempts, code,
                        time.monotonic() - started, interrupted)
        with self.lock:
            self.results.append(result)
        return result

    def client_loop(self, stop: threading.Event, seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            self.one()
            stop.wait(rng.uniform(0.05, 0.35))


def control(fake: str, path: str, payload) -> None:
    request = urllib.request.Request(fake + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="POST")
    with urllib.request.urlopen(request, timeout=5) as resp:
        resp.read()


# --- the run ---------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bulwark-log", required=True, help="Bulwark's stdout (JSON lines)")
    parser.add_argument("--fake-url", required=True, help="the fake upstream (control API)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    duration = max(3.0, args.seconds)

    t0_wall = time.time()
    follower = LogFollower(args.bulwark_log)

    def on_entry(entry: dict) -> None:
        if entry.get("msg") == "circuit breaker transition":
            rel = parse_ts(entry.get("ts", "")) - t0_wall
            why = EXPLAIN_TRANSITION.get((entry.get("from"), entry.get("to")), "")
            say(f"  {rel:+6.1f}s  breaker {entry.get('upstream')}: {entry.get('from')} -> "
                f"{entry.get('to'):<9} {why}")
    follower.on_entry = on_entry
    follower.start()
    listening = follower.wait_for("listening", 10)
    if listening is None:
        say("demo: Bulwark did not start (no 'listening' line in its log)")
        return 1
    host, port = listening["listen"].rsplit(":", 1)
    admin = "http://" + listening["admin_listen"].replace("0.0.0.0", "127.0.0.1")
    say(f"Bulwark listens on http://{host}:{port}/v1 (OPENAI_BASE_URL), admin on {admin}")

    traffic = Traffic(host, int(port), args.seed)
    stop = threading.Event()
    stall_at = 0.15 * duration
    outage_at = 0.35 * duration
    outage_for = min(5.0, max(2.0, 0.15 * duration))
    say(f"Sending traffic for {duration:.0f} s from {args.clients} clients "
        f"(65% chat completions, 35% streamed with usage). The fake upstream is flaky "
        f"(random 503s, 429s, dropped connections, slow answers); on top of that, at "
        f"{stall_at:.0f} s one answer stalls for 3 s and at {outage_at:.0f} s the upstream "
        f"goes down completely for {outage_for:.0f} s.")
    say("Breaker transitions are printed as they happen, with a progress line every "
        f"{'second' if duration <= 10 else '2 seconds'}.")
    say()
    t0 = time.monotonic()
    t0_wall = time.time()
    threads = [threading.Thread(target=traffic.client_loop, args=(stop, args.seed * 100 + i),
                                daemon=True) for i in range(args.clients)]
    for thread in threads:
        thread.start()

    events = [(stall_at, "stall"), (outage_at, "outage")]
    outage_started = 0.0

    def closed_since(wall: float) -> bool:
        return any(e.get("to") == "CLOSED" and parse_ts(e.get("ts", "")) >= wall
                   for e in follower.snapshot("circuit breaker transition"))
    tick = 1.0 if duration <= 10 else 2.0
    next_tick = tick
    while True:
        elapsed = time.monotonic() - t0
        if elapsed >= duration:
            break
        if events and elapsed >= events[0][0]:
            _, what = events.pop(0)
            if what == "stall":
                control(args.fake_url, "/__fake/script", [{"delay": 3.0}])
                say(f"  {elapsed:+6.1f}s  >> injected: the next upstream answer stalls for 3 s")
            else:
                # After the outage the upstream comes back healthy until the breaker has
                # closed again, so that its probe tells the story (not the dice).
                control(args.fake_url, "/__fake/outage", {"seconds": outage_for})
                control(args.fake_url, "/__fake/mode", {"mode": "ok"})
                outage_started = time.time()
                say(f"  {elapsed:+6.1f}s  >> injected: upstream outage, every request gets "
                    f"a 503 for {outage_for:.0f} s; then it comes back healthy")
        if outage_started and closed_since(outage_started):
            control(args.fake_url, "/__fake/mode", {"mode": "flaky"})
            outage_started = 0.0
            say(f"  {elapsed:+6.1f}s  >> the upstream is back to its usual flakiness")
        if elapsed >= next_tick:
            next_tick += tick
            say(progress_line(elapsed, traffic, follower))
        time.sleep(0.05)
    stop.set()

    # A breaker still open at the end would leave the story unfinished: a trickle of requests
    # until it closes again (bounded).
    def breaker_open() -> bool:
        moves = follower.snapshot("circuit breaker transition")
        return bool(moves) and moves[-1].get("to") != "CLOSED"
    if breaker_open():
        say(f"  {time.monotonic() - t0:+6.1f}s  time is up but the breaker is not closed yet: "
            f"one request every 0.5 s until it closes (at most 20 s)")
        deadline = time.monotonic() + 20
        while breaker_open() and time.monotonic() < deadline:
            traffic.one("chat")
            time.sleep(0.5)
    for thread in threads:
        thread.join(25)
    # Every request's access line, then the final numbers.
    deadline = time.monotonic() + 5
    while (len(follower.snapshot("request")) < len(traffic.results) and
           time.monotonic() < deadline):
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    samples = scrape(admin)
    follower.close()
    # The outage, and the breaker's recovery after it: [start, end] seconds into the run.
    window_end = outage_at + outage_for
    for e in follower.snapshot("circuit breaker transition"):
        rel = parse_ts(e.get("ts", "")) - t0_wall
        if e.get("to") == "CLOSED" and rel >= outage_at:
            window_end = max(window_end, rel)
            break
    summarize(traffic.results, follower.snapshot(), samples, elapsed, t0, t0_wall,
              (outage_at, window_end))
    return 0


def progress_line(elapsed: float, traffic: Traffic, follower: LogFollower) -> str:
    with traffic.lock:
        results = list(traffic.results)
    ok = sum(1 for r in results if r.status == 200 and not r.interrupted)
    failed = len(results) - ok
    retried = sum(1 for r in results if (r.attempts or 0) > 1)
    moves = follower.snapshot("circuit breaker transition")
    state = moves[-1].get("to") if moves else "CLOSED"
    return (f"  {elapsed:+6.1f}s  done {len(results):4d}   ok {ok:4d}   failed {failed:3d}   "
            f"needed a retry {retried:3d}   breaker {state}")


# --- the summary -----------------------------------------------------------------------------


def bar(count: int, total: int, width: int = 30) -> str:
    return "#" * max(1 if count else 0, round(width * count / total)) if total else ""


def summarize(results: list[Result], logs: list[dict], samples, elapsed: float, t0: float,
              t0_wall: float, window: tuple[float, float]) -> None:
    total = len(results)
    say()
    say("=" * 78)
    say(f" What happened: {total} requests in {elapsed:.1f} s")
    say("=" * 78)

    say()
    say("Final status seen by the clients")
    statuses = collections.Counter((r.status, r.code, r.interrupted) for r in results)
    for (status, code, interrupted), count in sorted(statuses.items(),
                                                     key=lambda kv: (-kv[1], kv[0][0])):
        if status == 200 and not interrupted:
            what = "success"
        elif interrupted:
            what = "stream interrupted after it had started (the SDK would raise)"
        elif code == "circuit_open":
            what = "breaker open: Bulwark answered at once, no upstream call"
        elif code == "upstream":
            what = "the upstream's own error, handed over after the last attempt"
        elif status == 0:
            what = code
        else:
            what = f"Bulwark's error: {code}"
        say(f"  {status or '---':>3}  {count:4d}  {100 * count / total:5.1f}%  {what}")

    say()
    say("Attempts per request (the x-bulwark-attempts response header)")
    attempts = collections.Counter(r.attempts for r in results if r.attempts is not None)
    for n in sorted(attempts):
        label = "0 (rejected by the open breaker)" if n == 0 else \
            f"{n} attempt{'s' if n > 1 else ''}"
        say(f"  {label:<33} {attempts[n]:4d}  {bar(attempts[n], total)}")

    attempts_by_outcome = by_label(samples, "bulwark_upstream_attempts_total", "outcome")
    upstream_attempts = int(sum(attempts_by_outcome.values()))
    upstream_failed = int(sum(v for k, v in attempts_by_outcome.items()
                              if not k.startswith("2")))
    client_failed = sum(1 for r in results if r.status != 200 or r.interrupted)
    fail_fast = sum(1 for r in results if r.code == "circuit_open")
    say()
    say(f"The upstream failed {upstream_failed} of {upstream_attempts} attempts "
        f"({100 * upstream_failed / max(1, upstream_attempts):.0f}%); the clients saw "
        f"{client_failed} failed requests out of {total} "
        f"({100 * client_failed / max(1, total):.1f}%), {fail_fast} of them instant 503s "
        f"while the breaker was open.")
    say("  upstream attempts by outcome (bulwark_upstream_attempts_total): " +
        ", ".join(f"{k} {int(v)}" for k, v in sorted(attempts_by_outcome.items(),
                                                      key=lambda kv: -kv[1])))
    # Outside the outage the upstream is merely flaky: that is where retries shine.
    start, end = window

    def outside(rel_end: float, seconds: float) -> bool:
        return rel_end < start or rel_end - seconds > end
    calm = [r for r in results if outside(r.started - t0 + r.seconds, r.seconds)]
    calm_failed = sum(1 for r in calm if r.status != 200 or r.interrupted)
    calm_attempts = sum(e.get("attempts", 0) for e in logs if e.get("msg") == "request" and
                        outside(parse_ts(e.get("ts", "")) - t0_wall,
                                e.get("duration_ms", 0) / 1000))
    calm_attempt_failures = sum(1 for e in logs if e.get("msg") == "upstream attempt failed"
                                and outside(parse_ts(e.get("ts", "")) - t0_wall, 0))
    if calm and calm_attempts:
        say(f"  Outside the outage and the breaker's recovery ({start:.0f}-{end:.0f} s), the "
            f"upstream failed {100 * calm_attempt_failures / calm_attempts:.0f}% of attempts, "
            f"yet only {calm_failed} of {len(calm)} requests "
            f"({100 * calm_failed / len(calm):.1f}%) failed: that is what the retries buy.")

    say()
    say("Retries by reason (bulwark_retries_total)")
    retries = by_label(samples, "bulwark_retries_total", "reason")
    for reason, count in sorted(retries.items(), key=lambda kv: -kv[1]):
        say(f"  {reason:<14} {int(count):4d}  {EXPLAIN_REASON.get(reason, '')}")
    if not retries:
        say("  (none)")
    delays = {labels.get("source"): value for name, labels, value in samples
              if name == "bulwark_retry_delay_seconds_count"}
    exhausted = sum(by_label(samples, "bulwark_retry_budget_exhausted_total",
                             "upstream").values())
    say(f"  waits chosen by exponential backoff: {int(delays.get('backoff', 0))}, by the "
        f"server's retry-after hint: {int(delays.get('server', 0))}; retries refused by the "
        f"retry budget: {int(exhausted)}")

    say()
    say("Circuit breaker (from the log: \"circuit breaker transition\")")
    moves = [e for e in logs if e.get("msg") == "circuit breaker transition"]
    for e in moves:
        rel = parse_ts(e.get("ts", "")) - t0_wall
        why = EXPLAIN_TRANSITION.get((e.get("from"), e.get("to")), "")
        say(f"  {rel:+6.1f}s  {e.get('from'):>9} -> {e.get('to'):<9} {why}")
    if not moves:
        say("  (no transitions)")
    transitions = by_label(samples, "bulwark_circuit_breaker_transitions_total", "to")
    rejections = sum(by_label(samples, "bulwark_circuit_breaker_rejections_total",
                              "upstream").values())
    state = {labels.get("upstream"): value for name, labels, value in samples
             if name == "bulwark_circuit_breaker_state"}
    names = {0: "closed", 1: "open", 2: "half-open"}
    say("  /metrics: bulwark_circuit_breaker_transitions_total " +
        (", ".join(f"to={k} {int(v)}" for k, v in sorted(transitions.items())) or "none") +
        f"; rejections {int(rejections)}; state now " +
        ", ".join(f"{u}={int(v)} ({names.get(int(v), '?')})" for u, v in state.items()))

    say()
    say("Tokens counted from the responses' usage (bulwark_tokens_total)")
    tokens: dict[str, dict[str, float]] = collections.defaultdict(dict)
    for name, labels, value in samples:
        if name == "bulwark_tokens_total":
            tokens[labels.get("model", "?")][labels.get("kind", "?")] = value
    for model, kinds in sorted(tokens.items()):
        say(f"  {model:<14} prompt {int(kinds.get('prompt', 0)):6d}   "
            f"completion {int(kinds.get('completion', 0)):6d}")
    if not tokens:
        say("  (none)")
    interruptions = sum(by_label(samples, "bulwark_stream_interruptions_total",
                                 "upstream").values())
    say(f"  stream interruptions (bulwark_stream_interruptions_total): {int(interruptions)}")

    say()
    say("Some requests that needed retries (from the log, by request_id)")
    failed_attempts: dict[str, list[dict]] = collections.defaultdict(list)
    for e in logs:
        if e.get("msg") == "upstream attempt failed":
            failed_attempts[e.get("request_id")].append(e)
    shown, seen_shapes = 0, set()
    for e in logs:
        if e.get("msg") != "request" or e.get("attempts", 0) < 2:
            continue
        story = failed_attempts.get(e.get("request_id"), [])
        shape = tuple(a.get("outcome") for a in story) + (e.get("status"),)
        if shape in seen_shapes or not story:
            continue
        seen_shapes.add(shape)
        steps = []
        for a in story:
            if a.get("delay_ms") is not None:
                src = " (server's hint)" if a.get("delay_source") == "server" else ""
                steps.append(f"{a.get('outcome')} -> wait {a.get('delay_ms')} ms{src}")
            else:
                steps.append(f"{a.get('outcome')} (not retried: "
                             f"{a.get('not_retried_because') or 'policy'})")
        say(f"  {e.get('request_id', '')[:8]}  " + " -> ".join(steps) +
            f" -> client got {e.get('status')}  ({e.get('duration_ms')} ms)")
        shown += 1
        if shown == 5:
            break
    if not shown:
        say("  (none)")

    say()
    say("A few of Bulwark's log lines (one JSON object per line on stdout)")
    picks = [
        ("a failed attempt", lambda e: e.get("msg") == "upstream attempt failed"),
        ("the breaker opening", lambda e: e.get("msg") == "circuit breaker transition"
         and e.get("to") == "OPEN"),
        ("the breaker closing", lambda e: e.get("msg") == "circuit breaker transition"
         and e.get("to") == "CLOSED"),
        ("a request that needed retries", lambda e: e.get("msg") == "request"
         and e.get("attempts", 0) >= 2 and e.get("status") == 200),
        ("a request the open breaker turned away", lambda e: e.get("msg") == "request"
         and e.get("attempts") == 0),
    ]
    for label, match in picks:
        found = next((e for e in logs if match(e)), None)
        if found is not None:
            say(f"  {label}:")
            say(f"    {found['_raw']}")

    opened = int(transitions.get("OPEN", 0))
    closed = int(transitions.get("CLOSED", 0))
    say()
    say(f"In short: {total} requests, {upstream_attempts} upstream attempts, "
        f"{int(sum(retries.values()))} retries, breaker opened {opened}x and closed "
        f"{closed}x, {client_failed} requests failed ({100 * client_failed / max(1, total):.1f}%).")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
