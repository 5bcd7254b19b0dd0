#!/usr/bin/env python3
"""Soak test for Bulwark: mixed traffic with random upstream faults, for a
configurable time, checking that

  * every request gets exactly one answer, in time, and a well-formed one, and that the answer
    is the right one for what the upstream did: the fake records which fault it served to
    each attempt of each request (x-soak-id), so a 502 must follow a transport fault, a cut
    stream a fault after the commit point, x-bulwark-attempts must match the attempts the
    upstream saw, and a success must carry that request's own id;
  * Bulwark's resident memory and open file descriptors do not grow after warm-up: the
    samples after warm-up are split into halves and the second may not exceed the first by
    more than a tolerance; descriptors that are not sockets must not grow at all, and once
    the traffic stops every client socket is closed;
  * /metrics and the logs agree: bulwark_requests_total grew by exactly the number of
    requests sent, and there is one access log line per request.

    python3 tests/soak/soak.py --seconds 600      # the documented 10-minute run
    python3 tests/soak/soak.py --seconds 20       # what CI runs (test_soak_short.py)

It runs over the transport BULWARK_TEST_TRANSPORT picks (plain HTTP/1.1, or h2: TLS with a
test CA, ALPN h2, compressed bodies). Over h2 a "reset" breaks the whole connection, and the
fake reports the other requests' attempts it broke (SoakUpstream.lost, judge()).

The fake upstream runs in a process of its own (this script with --serve-upstream), so that
its timing does not depend on the client threads; it reports each attempt's behaviour through
a pipe. Binary: $BULWARK_BIN, else build/bulwark. Prints a summary; exits 0 when all checks
pass, 1 otherwise (2 for bad arguments).
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
for path in (TESTS_DIR, TESTS_DIR / "integration"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness import (Bulwark, FakeUpstream, RawConnection, RawResponse,  # noqa: E402
                     chat_chunk, chat_completion, openai_error, raw_request)
from harness import fd_census, rss_kib, scrape, sse_data, test_pki  # noqa: E402
from harness import TRANSPORT as HARNESS_TRANSPORT  # noqa: E402

CHAT_PATH = "/v1/chat/completions"
TOTAL_TIMEOUT = 8.0
CONFIG = {
    "timeouts": {"connect": "500ms", "first_byte": "1s", "idle": "1s", "total": "8s"},
    "retry": {"max_attempts": 3, "base_delay": "20ms", "max_delay": "200ms", "jitter": "full",
              "budget": {"ratio": 0.3, "min_per_second": 20, "window": "5s"}},
    "circuit_breaker": {"failure_threshold": 8, "recovery_timeout": "500ms",
                        "max_recovery_timeout": "2s", "window": "10s", "min_requests": 50,
                        "failure_rate_threshold": 0.6},
}

# Upstream behaviours, with their share of the faulty attempts. A kind's class says what the
# client may see when it is the request's last attempt.
FAULTS = {
    "status:503": 16, "status:429": 10, "status:500": 6, "status:400": 3,
    "drop": 10, "reset": 6, "hang": 6, "head_stall": 4,
    "stream_error": 8, "cut": 12, "stall_mid": 6, "slow": 13,
}
GOOD = {"ok", "slow"}
TRANSPORT = {"drop", "reset", "hang", "head_stall", "lost"}
# Over HTTP/2 a reset that breaks the connection under a response whose 200 head was sent may
# reach Bulwark before or after that head (and a cut, a stream reset, may overtake the bytes
# before it): the answer is then either the cut or what a transport fault gives. So may an
# attempt whose answer ended just before the reset ("<kind>?": as drawn, or lost).
AMBIGUOUS_ON_H2 = {"lost_after_head", "cut"}
# Over the h2 transport (BULWARK_TEST_TRANSPORT=h2) requests without "stream": true share
# connections (streamed ones go over HTTP/1.1, a connection each): see judge().
MULTIPLEXED = HARNESS_TRANSPORT == "h2"
COMMITTED = {"cut", "stall_mid", "lost_after_head"}


# --- the upstream ----------------------------------------------------------------------------


class SoakUpstream:
    """A fake upstream whose responder draws a behaviour per attempt and reports it."""

    def __init__(self, seed: int, fault_rate: float, report):
        self.rng = random.Random(seed)
        self.fault_rate = fault_rate
        self.kinds = list(FAULTS)
        self.weights = [FAULTS[k] for k in self.kinds]
        self.report = report  # report(sid, kind), on the fake's event loop: must not block
        self.fake = FakeUpstream(responder=self.respond)
        self.fake.on_streams_lost = self.lost

    def draw(self, stream: bool) -> str:
        if self.rng.random() >= self.fault_rate:
            return "ok"
        kind = self.rng.choices(self.kinds, self.weights)[0]
        if kind == "stream_error" and not stream:
            return "status:503"
        return kind

    def respond(self, req):
        sid = req.header("x-soak-id")
        if sid is None:
            return None
        stream = b'"stream": true' in req.body
        kind = self.draw(stream)
        self.report(sid, kind)
        req.soak_sid = sid
        cid = f"chatcmpl-soak-{sid}"
        events = ([chat_chunk("", role="assistant", id=cid)] +
                  [chat_chunk(piece, id=cid) for piece in ("soak", " says", " hello")] +
                  [chat_chunk(finish_reason="stop", id=cid)])
        body = chat_completion(f"soak answer {sid}", id=cid)
        if kind.startswith("status:"):
            status = int(kind[7:])
            headers = [("retry-after-ms", "30")] if status == 429 else []
            return {"status": status, "headers": headers,
                    "body": openai_error(f"soak fault {status} for {sid}", "server_error")}
        if kind == "drop":
            return {"drop": True}
        if kind == "reset":
            return {"reset": True}
        if kind == "hang":
            return {"hang": True}
        if kind == "head_stall":
            return {"sse": events, "body_delay": 30} if stream else {"body": body,
                                                                     "body_delay": 30}
        if kind == "stream_error":
            return {"sse": [openai_error("soak stream error", "server_error")], "done": False}
        if kind == "cut":
            return ({"sse": events, "cut_after": 2, "reset": self.rng.random() < 0.5} if stream
                    else {"body": body, "truncate": 30})
        if kind == "stall_mid":
            return ({"sse": events, "gap": 30} if stream else
                    {"sse": [json.dumps(body)[:30], json.dumps(body)[30:]], "sse_raw": True,
                     "done": False, "gap": 30, "content_type": "application/json"})
        if kind == "slow":
            return ({"sse": events, "gap": 0.05} if stream else {"body": body, "delay": 0.2})
        return {"sse": events} if stream else {"body": body}


    def lost(self, streams) -> None:
        """Over HTTP/2: attempts whose connection another request's reset broke (see
        FakeUpstream.on_streams_lost). Cut before its end, an attempt failed as a transport
        fault would ("lost"), or, after a 200 head, possibly once Bulwark had committed the
        answer ("lost_after_head"). Ended just before the reset, it may also have arrived
        whole: then it is what was drawn, or lost ("maybe_lost")."""
        for req, ended in streams:
            sid = getattr(req, "soak_sid", None)
            if sid is None:
                continue
            if ended:
                self.report(sid, "maybe_lost")
            else:
                self.report(sid, "lost_after_head" if req.status == 200 else "lost")


def serve_upstream(seed: int, fault_rate: float) -> int:
    """The fake upstream's own process (soak.py --serve-upstream): its event loop must not
    compete for a GIL with the clients, or its stalls would look like Bulwark's. Prints
    {"port": N}, then one "<soak id> <kind>" line per attempt; exits when stdin closes."""
    import queue
    lines: queue.SimpleQueue = queue.SimpleQueue()
    upstream = SoakUpstream(seed, fault_rate, lambda sid, kind: lines.put(f"{sid} {kind}\n"))
    upstream.fake.start()
    # Over TLS (BULWARK_TEST_TRANSPORT=h2) the driver's Bulwark must trust this process's CA.
    tls = {"base_url": upstream.fake.base_url}
    if upstream.fake.base_url.startswith("https://"):
        tls["ca_file"] = test_pki()["ca_file"]
    sys.stdout.write(json.dumps({"port": upstream.fake.port, **tls}) + "\n")
    sys.stdout.flush()

    def write():  # off the event loop: a full pipe must not stall the fake
        while True:
            batch = [lines.get()]
            while not lines.empty() and len(batch) < 1000:
                batch.append(lines.get())
            sys.stdout.write("".join(line for line in batch if line))
            sys.stdout.flush()
            if None in batch:
                return
    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    sys.stdin.read()  # until the driver closes it (or exits)
    upstream.fake.stop()
    lines.put(None)
    writer.join(5)
    return 0


class UpstreamProcess:
    """The driver's handle on the fake upstream process and the attempts it reports."""

    def __init__(self, seed: int, fault_rate: float):
        import subprocess
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve-upstream", "--seed", str(seed),
             "--fault-rate", str(fault_rate)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        first = self.proc.stdout.readline()
        if not first:
            raise RuntimeError("the fake upstream process did not start")
        started = json.loads(first)
        self.port = started["port"]
        # The upstream's entry in Bulwark's configuration: its URL (https over the h2
        # transport) and the CA that signed its certificate, if any.
        self.entry = {"base_url": started["base_url"]}
        if "ca_file" in started:
            self.entry["ca_file"] = started["ca_file"]
        self.cond = threading.Condition()
        self.attempts: dict[str, list[str]] = collections.defaultdict(list)
        self.lost = 0  # attempts the fake saw that another request's reset broke (HTTP/2)
        self.reader = threading.Thread(target=self._read, name="soak-upstream-reader",
                                       daemon=True)
        self.reader.start()


    def _read(self) -> None:
        for line in self.proc.stdout:
            sid, _, kind = line.strip().partition(" ")
            with self.cond:
                if kind in ("lost", "lost_after_head", "maybe_lost") and self.attempts[sid]:
                    # Its latest attempt (see SoakUpstream.lost): "maybe_lost" keeps the kind
                    # drawn, marked with "?" (either that, or lost).
                    last = self.attempts[sid][-1]
                    self.attempts[sid][-1] = last.rstrip("?") + "?" if kind == "maybe_lost" \
                        else kind
                    self.lost += 1
                else:
                    self.attempts[sid].append(kind)
                self.cond.notify_all()

    def attempts_of(self, sid: str, at_least: int = 0, timeout: float = 2.0) -> list[str]:
        """The kinds served to request `sid`, waiting (briefly) for `at_least` of them: the
        report travels through a pipe and may trail the answer."""
        with self.cond:
            self.cond.wait_for(lambda: len(self.attempts.get(sid, ())) >= at_least, timeout)
            return list(self.attempts.get(sid, []))

    def stop(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(10)
        except Exception:
            self.proc.kill()
            self.proc.wait(5)
        self.reader.join(5)


# --- the clients -----------------------------------------------------------------------------


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.sent = 0
        self.classes: collections.Counter = collections.Counter()
        self.failures: list[str] = []
        self.failure_count = 0
        self.latencies: list[float] = []
        self.lost_attempts = 0  # over HTTP/2: attempts lost with another request's connection

    def add_lost(self, n: int) -> None:
        with self.lock:
            self.lost_attempts += n

    def record(self, klass: str, latency: float, problem: str | None) -> None:
        with self.lock:
            self.classes[klass] += 1
            self.latencies.append(latency)
            if problem:
                self.failure_count += 1
                if len(self.failures) < 20:
                    self.failures.append(problem)


def judge(sid: str, stream: bool, resp: RawResponse, closed: bool,
          attempts: list[str]) -> tuple[str, str | None]:
    """Classify one answer and say what is wrong with it (None: nothing)."""
    if MULTIPLEXED and not stream:
        try:
            claimed = int(resp.header("x-bulwark-attempts") or -1)
        except ValueError:
            claimed = -1  # judge_as reports it
        if claimed > len(attempts):
            # Over HTTP/2 a "reset" breaks the whole connection, and with it the other
            # requests' attempts that were on it before the fake read them: Bulwark made those
            # attempts, the fake never saw them, and each failed as a transport fault. Where
            # they fell in the request's sequence is not known; in front of the attempts the
            # fake saw is the one place that never changes what the answer must be (a retry
            # always follows them).
            attempts = ["lost"] * (claimed - len(attempts)) + attempts
    as_drawn = [k.rstrip("?") for k in attempts]
    verdict = judge_as(sid, stream, resp, closed, as_drawn)
    if verdict[1] is not None and MULTIPLEXED and not stream:
        transport = [("lost" if k in AMBIGUOUS_ON_H2 or k.endswith("?") else k)
                     for k in attempts]
        if transport != as_drawn:
            other = judge_as(sid, stream, resp, closed, transport)
            if other[1] is None:
                return other
    return verdict


def judge_as(sid: str, stream: bool, resp: RawResponse, closed: bool,
             attempts: list[str]) -> tuple[str, str | None]:
    body = bytes(resp.body)
    last = attempts[-1] if attempts else None
    # Giving up, Bulwark hands over the last response the upstream gave: after
    # [503, drop, drop] that is the 503. Only when no attempt got one is the answer its 502.
    responses = [k for k in attempts if k.startswith("status:") or k == "stream_error"]
    if last in TRANSPORT and responses:
        last = responses[-1]
    try:
        header_attempts = int(resp.header("x-bulwark-attempts") or -1)
    except ValueError:
        return "malformed", f"{sid}: x-bulwark-attempts {resp.header('x-bulwark-attempts')!r}"
    content_type = resp.header("content-type") or ""
    error_type = None
    if content_type.startswith("application/json") and resp.complete:
        try:
            parsed = json.loads(body)
        except ValueError:
            return "malformed", f"{sid}: {resp.status} with a JSON body that does not parse"
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            error_type = parsed["error"].get("type")
            error_code = parsed["error"].get("code")

    if error_type == "bulwark_error":
        klass = f"bulwark {resp.status} {error_code}"
        if resp.header("x-should-retry") != "false":
            return klass, f"{sid}: Bulwark's own {resp.status} without x-should-retry: false"
        if resp.status == 502 and (last not in TRANSPORT or responses):
            return klass, f"{sid}: 502 {error_code} after upstream attempts {attempts}"
        if resp.status == 503 and error_code not in ("circuit_open", "overloaded"):
            return klass, f"{sid}: unexpected 503 {error_code}"
        if resp.status not in (502, 503, 504):
            return klass, f"{sid}: unexpected own error {resp.status} {error_code}"
        if resp.status == 504:
            return klass, None  # the deadline may cut an attempt before the fake records it
        if header_attempts != len(attempts):
            return klass, (f"{sid}: x-bulwark-attempts {header_attempts}, the upstream saw "
                           f"{len(attempts)}: {attempts}")
        return klass, None

    if header_attempts != len(attempts):
        return "mismatch", (f"{sid}: x-bulwark-attempts {header_attempts}, the upstream saw "
                            f"{len(attempts)}: {attempts}")
    if resp.status != 200:
        if last != f"status:{resp.status}":
            return "mismatch", f"{sid}: the client got {resp.status} after {attempts}"
        if error_type is None:
            return "malformed", (f"{sid}: the upstream's {resp.status} arrived mangled: "
                                 f"{body[:80]!r}")
        return "upstream error", None

    cid = f"chatcmpl-soak-{sid}"
    if not stream:
        if not resp.complete:
            if last not in COMMITTED or not closed:
                return "mismatch", f"{sid}: a cut JSON body after {attempts} (closed: {closed})"
            return "interrupted", None
        if last not in GOOD:
            return "mismatch", f"{sid}: a 200 after {attempts}"
        try:
            answer = json.loads(body)
        except ValueError:
            return "malformed", f"{sid}: a complete 200 whose JSON does not parse"
        if answer.get("id") != cid:
            return "mismatch", f"{sid}: got the answer for {answer.get('id')}"
        return "ok", None

    if not content_type.startswith("text/event-stream"):
        return "malformed", f"{sid}: a stream answered with {content_type!r}"
    try:
        data = sse_data(body)
        events = [json.loads(d) if d != "[DONE]" else d for d in data]
    except ValueError:
        return "malformed", f"{sid}: an event that is not JSON: {body[-200:]!r}"
    if last == "stream_error":
        if resp.complete and [e.get("error", {}).get("type") for e in events] == ["server_error"]:
            return "stream error", None
        return "mismatch", f"{sid}: stream_error attempts {attempts} gave {body[:200]!r}"
    if not resp.complete:
        error = events[-1].get("error") if events and isinstance(events[-1], dict) else None
        if last not in COMMITTED or not closed or not error or \
                error.get("code") != "stream_interrupted" or not body.endswith(b"\n\n"):
            return "mismatch", (f"{sid}: a cut stream after {attempts} (closed: {closed}) ending "
                                f"{body[-160:]!r}")
        if any(isinstance(e, dict) and e.get("id") not in (None, cid) for e in events):
            return "mismatch", f"{sid}: another request's events in its stream"
        return "interrupted", None
    if last not in GOOD or events[-1] != "[DONE]":
        return "mismatch", f"{sid}: a complete stream after {attempts} ending {body[-80:]!r}"
    if any(e.get("id") != cid for e in events[:-1]):
        return "mismatch", f"{sid}: another request's events in its stream"
    return "ok", None


class Client(threading.Thread):
    def __init__(self, index: int, port: int, upstream: UpstreamProcess, tally: Tally,
                 until: float, seed: int, ids):
        super().__init__(name=f"soak-client-{index}", daemon=True)
        self.port, self.upstream, self.tally, self.until = port, upstream, tally, until
        self.rng = random.Random(seed * 7919 + index)
        self.ids = ids
        self.conn: RawConnection | None = None

    def run(self) -> None:
        try:
            while time.monotonic() < self.until:
                self.one()
                time.sleep(self.rng.random() * 0.01)
        finally:
            if self.conn is not None:
                self.conn.close()

    def one(self) -> None:
        sid = f"{next(self.ids)}"
        stream = self.rng.random() < 0.4
        abandon = stream and self.rng.random() < 0.03
        close = self.rng.random() < 0.1
        if self.conn is None or self.rng.random() < 0.15:
            if self.conn is not None:
                self.conn.close()
            self.conn = RawConnection(self.port, timeout=TOTAL_TIMEOUT + 5)
        conn = self.conn
        body = json.dumps({"model": "gpt-4o-mini", "stream": stream,
                           "messages": [{"role": "user", "content": f"soak {sid}"}]})
        headers = [("Content-Type", "application/json"), ("x-soak-id", sid)]
        if close:
            headers.append(("Connection", "close"))
        with self.tally.lock:
            self.tally.sent += 1
        started = time.monotonic()
        try:
            conn.send(raw_request("POST", CHAT_PATH, body, headers=headers))
            resp = conn.read_head()
            if abandon:  # a client that leaves mid-stream
                for _ in conn.iter_body(resp, "POST"):
                    break
                conn.close()
                self.conn = None
                self.tally.record("abandoned", time.monotonic() - started, None)
                return
            for _ in conn.iter_body(resp, "POST"):
                pass
        except (socket.timeout, TimeoutError):
            self.conn.close()
            self.conn = None
            self.tally.record("hang", time.monotonic() - started,
                              f"{sid}: no answer within {TOTAL_TIMEOUT + 5} s "
                              f"(attempts {self.upstream.attempts_of(sid)})")
            return
        except (ConnectionError, OSError, ValueError) as error:
            self.conn.close()
            self.conn = None
            self.tally.record("no answer", time.monotonic() - started,
                              f"{sid}: {type(error).__name__}: {error}")
            return
        latency = time.monotonic() - started
        closed = conn.eof or bool(resp.header("connection", "").lower() == "close")
        if closed:
            if conn.buf:
                self.tally.record("extra bytes", latency, f"{sid}: bytes after the response "
                                  f"before the close: {bytes(conn.buf)[:80]!r}")
                return
            conn.close()
            self.conn = None
        try:
            claimed = int(resp.header("x-bulwark-attempts") or 0)
        except ValueError:
            claimed = 0
        seen = self.upstream.attempts_of(sid, claimed)
        if MULTIPLEXED and not stream and claimed > len(seen):
            self.tally.add_lost(claimed - len(seen))
        klass, problem = judge(sid, stream, resp, closed, seen)
        if latency > TOTAL_TIMEOUT + 2 and not problem:
            problem = f"{sid}: answered after {latency:.1f} s (timeouts.total {TOTAL_TIMEOUT} s)"
        self.tally.record(klass, latency, problem)


# --- sampling and the verdict ----------------------------------------------------------------


class Sampler(threading.Thread):
    def __init__(self, bulwark: Bulwark, upstream_port: int, interval: float):
        super().__init__(name="soak-sampler", daemon=True)
        self.bulwark, self.upstream_port, self.interval = bulwark, upstream_port, interval
        self.samples: list[dict] = []
        self.stop = threading.Event()
        self.started = time.monotonic()
        self.access_lines = 0
        self.error_lines: collections.Counter = collections.Counter()

    def take(self) -> dict:
        pid = self.bulwark.proc.pid
        sample = fd_census(pid, self.bulwark.port, {self.upstream_port})
        sample["rss"] = rss_kib(pid)
        sample["t"] = time.monotonic() - self.started
        return sample

    def trim_logs(self) -> None:
        """Count and drop Bulwark's log lines as they come (a long run makes many)."""
        with self.bulwark._cond:  # the harness's lock around its log list
            lines, self.bulwark.logs[:] = list(self.bulwark.logs), []
        for entry in lines:
            if entry.get("msg") == "request":
                self.access_lines += 1
            elif entry.get("level") == "error":
                self.error_lines[entry.get("msg", "?")] += 1

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.samples.append(self.take())
            self.trim_logs()


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Soak test: mixed traffic with random upstream faults through Bulwark; "
                    "checks every answer and that memory and descriptors stay flat.")
    parser.add_argument("--seconds", type=float, default=600.0,
                        help="how long to drive traffic (default 600: the 10-minute soak)")
    parser.add_argument("--concurrency", type=int, default=16, help="client threads")
    parser.add_argument("--workers", type=int, default=2, help="bulwark server.workers")
    parser.add_argument("--fault-rate", type=float, default=0.3,
                        help="share of upstream attempts that misbehave (default 0.3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of samples ignored (default: 25%% of --seconds, 5-60 s)")
    parser.add_argument("--sample-interval", type=float, default=0.5)
    parser.add_argument("--rss-tolerance-mib", type=float, default=4.0,
                        help="allowed RSS growth, second half over first half (median)")
    parser.add_argument("--fd-tolerance", type=int, default=0,
                        help="allowed growth of descriptors that are not sockets (default 0)")
    parser.add_argument("--summary-json", help="also write the summary here")
    parser.add_argument("--serve-upstream", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        return serve_upstream(args.seed, args.fault_rate)
    if args.seconds <= 0 or args.concurrency <= 0:
        parser.error("--seconds and --concurrency must be positive")
    warmup = args.warmup if args.warmup is not None else min(60.0, max(5.0, args.seconds / 4))

    upstream = UpstreamProcess(args.seed, args.fault_rate)
    tally = Tally()
    problems: list[str] = []
    bulwark = Bulwark([upstream.entry], CONFIG, workers=args.workers)
    try:
        bulwark.start()
        before = scrape(bulwark)
        sampler = Sampler(bulwark, upstream.port, args.sample_interval)
        sampler.samples.append(sampler.take())
        sampler.start()
        until = time.monotonic() + args.seconds
        locked_ids = _Locked(iter(range(1, 1 << 62)))
        clients = [Client(i, bulwark.port, upstream, tally, until, args.seed, locked_ids)
                   for i in range(args.concurrency)]
        for client in clients:
            client.start()
        for client in clients:
            client.join(args.seconds + TOTAL_TIMEOUT + 30)
            if client.is_alive():
                problems.append(f"{client.name} is stuck")
        traffic_end = time.monotonic()

        # Settle: every client socket closed, /metrics counted every request once.
        deadline = time.monotonic() + 15
        while True:
            census = sampler.take()
            if census["clients"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        sampler.stop.set()
        sampler.join()
        sampler.trim_logs()
        if census["clients"]:
            problems.append(f"{census['clients']} client sockets still open 15 s after the "
                            "traffic stopped")
        after = scrape(bulwark)
        counted = (after.value("bulwark_requests_total") -
                   before.value("bulwark_requests_total"))
        if counted != tally.sent:
            problems.append(f"bulwark_requests_total grew by {counted:.0f}; {tally.sent} "
                            "requests were sent")
        if sampler.access_lines != tally.sent:
            problems.append(f"{sampler.access_lines} access log lines for {tally.sent} requests")
        if not bulwark.alive():
            problems.append("bulwark died")

        # Growth after warm-up: second half against the first.
        steady = [s for s in sampler.samples if warmup <= s["t"] <= args.seconds]
        half = len(steady) // 2
        first, second = steady[:half], steady[half:]
        growth = {}
        if half >= 2:
            growth["rss_kib"] = (median([s["rss"] for s in second]) -
                                 median([s["rss"] for s in first]))
            growth["non_socket_fds"] = (max(s["non_sockets"] for s in second) -
                                        max(s["non_sockets"] for s in first))
            growth["total_fds"] = (max(s["total"] for s in second) -
                                   max(s["total"] for s in first))
            if growth["rss_kib"] > args.rss_tolerance_mib * 1024:
                problems.append(f"RSS grew by {growth['rss_kib']:.0f} KiB after warm-up "
                                f"(tolerance {args.rss_tolerance_mib} MiB)")
            if growth["non_socket_fds"] > args.fd_tolerance:
                problems.append(f"non-socket descriptors grew by {growth['non_socket_fds']} "
                                "after warm-up")
            fd_slack = args.fd_tolerance + 2 * args.concurrency + 8  # sockets come and go
            if growth["total_fds"] > fd_slack:
                problems.append(f"open descriptors grew by {growth['total_fds']} after warm-up "
                                f"(tolerance {fd_slack})")
        else:
            problems.append(f"too few samples after the {warmup:.0f} s warm-up to compare "
                            "halves: run longer")
        baseline = sampler.samples[0]
        if census["non_sockets"] > baseline["non_sockets"] + args.fd_tolerance:
            problems.append(f"descriptors other than sockets: {baseline['non_sockets']} at the "
                            f"start, {census['non_sockets']} at the end")
    finally:
        try:
            bulwark.stop()
        except AssertionError as error:  # BulwarkDied: crashed, or did not exit cleanly
            problems.append(str(error).splitlines()[0])
        upstream.stop()

    latencies = sorted(tally.latencies)
    pct = lambda p: latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0
    summary = {
        "seconds": round(traffic_end - (until - args.seconds), 1),
        "concurrency": args.concurrency,
        "requests": tally.sent,
        "requests_per_second": round(tally.sent / max(0.001, args.seconds), 1),
        "answers": dict(tally.classes.most_common()),
        "latency_p50_ms": round(pct(0.5) * 1000),
        "latency_p99_ms": round(pct(0.99) * 1000),
        "latency_max_ms": round((latencies[-1] if latencies else 0) * 1000),
        "upstream_attempts": sum(len(v) for v in upstream.attempts.values()),
        "transport": HARNESS_TRANSPORT,
        "attempts_lost_with_a_shared_connection": {"unseen": tally.lost_attempts,
                                                    "seen": upstream.lost},
        "upstream_attempt_kinds": dict(collections.Counter(
            k for v in upstream.attempts.values() for k in v).most_common()),
        "bulwark_error_log_lines": dict(sampler.error_lines),
        "warmup_s": warmup,
        "rss_kib": {"start": sampler.samples[0]["rss"],
                    "end": sampler.samples[-1]["rss"],
                    "max": max(s["rss"] for s in sampler.samples)},
        "fds": {"start": sampler.samples[0], "end": census},
        "growth_after_warmup": growth,
        "failures": tally.failure_count,
        "failure_examples": tally.failures,
        "problems": problems,
    }
    ok = not problems and tally.failure_count == 0
    summary["ok"] = ok
    print_summary(summary)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if ok else 1


class _Locked:
    """A thread-safe view of an iterator."""

    def __init__(self, it):
        self.it, self.lock = it, threading.Lock()

    def __iter__(self):
        return self

    def __next__(self):
        with self.lock:
            return next(self.it)


def print_summary(s: dict) -> None:
    out = sys.stdout
    out.write(f"\nBulwark soak: {s['seconds']} s, {s['concurrency']} clients, {s['requests']} "
              f"requests ({s['requests_per_second']}/s), {s['upstream_attempts']} upstream "
              f"attempts\n")
    out.write("  answers:   " + ", ".join(f"{k} {v}" for k, v in s["answers"].items()) + "\n")
    out.write("  upstream:  " + ", ".join(f"{k} {v}" for k, v in
                                         s["upstream_attempt_kinds"].items()) + "\n")
    if s["transport"] == "h2":
        lost = s["attempts_lost_with_a_shared_connection"]
        out.write(f"  over h2:   {lost['seen'] + lost['unseen']} attempts lost with a connection "
                  f"another request's reset broke ({lost['unseen']} before the fake read them)\n")
    out.write(f"  latency:   p50 {s['latency_p50_ms']} ms, p99 {s['latency_p99_ms']} ms, max "
              f"{s['latency_max_ms']} ms\n")
    g = s["growth_after_warmup"]
    out.write(f"  memory:    RSS {s['rss_kib']['start']} KiB at start, {s['rss_kib']['end']} KiB "
              f"at end, max {s['rss_kib']['max']} KiB; after the {s['warmup_s']:.0f} s warm-up "
              f"the second half's median is {g.get('rss_kib', 0):+.0f} KiB over the first's\n")
    start, end = s["fds"]["start"], s["fds"]["end"]
    out.write(f"  fds:       {start['total']} at start ({start['non_sockets']} non-socket), "
              f"{end['total']} at end ({end['non_sockets']} non-socket, {end['clients']} client, "
              f"{end['upstream']} upstream sockets); growth after warm-up: "
              f"{g.get('total_fds', 0):+d} total, {g.get('non_socket_fds', 0):+d} non-socket\n")
    if s["bulwark_error_log_lines"]:
        out.write("  bulwark error lines: " + ", ".join(
            f"{k} {v}" for k, v in s["bulwark_error_log_lines"].items()) + "\n")
    for example in s["failure_examples"]:
        out.write(f"  FAILED ANSWER: {example}\n")
    for problem in s["problems"]:
        out.write(f"  PROBLEM: {problem}\n")
    out.write(f"  verdict:   {'PASS' if s['ok'] else 'FAIL'} ({s['failures']} bad answers, "
              f"{len(s['problems'])} problems)\n")
    out.flush()


if __name__ == "__main__":
    sys.exit(main())
