#!/usr/bin/env python3
"""Does the circuit breaker tell noise from an outage? Runs the real bulwark binary (shipped
breaker and retry defaults unless --config says otherwise) against the fake upstream, which
answers a given share of attempts with a 503 at random, under concurrent client load; then
prints how often the breaker opened, what the clients got and the attempt rate it saw.

    python3 tests/soak/breaker_noise.py --failure-rate 0.2 --seconds 150 --clients 10
    python3 tests/soak/breaker_noise.py --failure-rate 0.1 --seconds 600 --clients 10
    python3 tests/soak/breaker_noise.py --failure-rate 0.2 --seconds 30 --outage-after 20
    python3 tests/soak/breaker_noise.py --failure-rate 0 --clients 1 --rate 1 \\
        --seconds 60 --outage-after 40          # one request a second, then an outage

--outage-after S: from S seconds on, every attempt fails (503); the run reports how long the
breaker took to open and how many failed attempts it saw first, and ends a moment after it
opened. --rate R paces the clients to R requests a second in all (0: each client sends its next
request as soon as it has the last answer; with a rate, a client does not wait for its last
answer, up to 8 requests in flight). --latency adds a delay to every upstream answer.

Not run in CI (it takes minutes); tests/integration/test_breaker.py runs short versions.
Binary: $BULWARK_BIN, else build/bulwark. Prints one summary line and one JSON line.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import random
import sys
import threading
import time
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent.parent
for path in (TESTS_DIR, TESTS_DIR / "integration"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from harness import Bulwark, FakeUpstream, http_request  # noqa: E402
from harness import scrape  # noqa: E402

CHAT_PATH = "/v1/chat/completions"
TRANSITION = "circuit breaker transition"
BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})


class NoisyUpstream:
    """A responder for the fake: each attempt fails with probability `share`, drawn in arrival
    order from a seeded generator; after outage() every attempt fails. Counts what it served."""

    def __init__(self, share: float, seed: int, latency: float):
        self.share = share
        self.random = random.Random(seed)
        self.latency = latency
        self.lock = threading.Lock()
        self.down = False
        self.served = 0
        self.failed = 0
        self.failed_in_outage = 0

    def outage(self) -> None:
        with self.lock:
            self.down = True

    def __call__(self, request) -> dict | None:
        with self.lock:
            self.served += 1
            fail = self.down or self.random.random() < self.share
            if fail:
                self.failed += 1
                if self.down:
                    self.failed_in_outage += 1
        action: dict = {"status": 503} if fail else {}
        if self.latency:
            action["delay"] = self.latency
        return action or None


def run(args: argparse.Namespace) -> dict:
    upstream = NoisyUpstream(args.failure_rate, args.seed, args.latency)
    config = json.loads(args.config) if args.config else {}
    stop = threading.Event()
    statuses: dict[int, int] = {}
    count_lock = threading.Lock()
    outage_at: list[float] = []

    with FakeUpstream(responder=upstream) as fake, \
            Bulwark([fake], config, workers=args.workers) as bulwark:

        def one_request() -> None:
            try:
                status = http_request(bulwark.port, "POST", CHAT_PATH, BODY, timeout=30).status
            except OSError:
                status = 0
            with count_lock:
                statuses[status] = statuses.get(status, 0) + 1

        # With --rate, each client sends on its own schedule, like an app whose users do not
        # wait for each other: a request in its retry backoff does not hold up the next one
        # (up to 8 in flight per client).
        pool = concurrent.futures.ThreadPoolExecutor(8 * args.clients)
        in_flight = [threading.Semaphore(8) for _ in range(args.clients)]

        def paced(index: int) -> None:
            try:
                one_request()
            finally:
                in_flight[index].release()

        def client(index: int) -> None:
            interval = args.clients / args.rate if args.rate > 0 else 0.0
            next_at = time.monotonic() + interval * index / args.clients
            while not stop.is_set():
                if not interval:
                    one_request()
                    continue
                if stop.wait(max(0.0, next_at - time.monotonic())):
                    return
                next_at = max(next_at + interval, time.monotonic() - interval)
                while not in_flight[index].acquire(timeout=0.1):
                    if stop.is_set():
                        return
                pool.submit(paced, index)

        threads = [threading.Thread(target=client, args=(i,), daemon=True)
                   for i in range(args.clients)]
        started = time.monotonic()
        for thread in threads:
            thread.start()

        def opened(entry: dict) -> bool:
            return entry.get("msg") == TRANSITION and entry.get("to") == "OPEN"

        open_seen = None
        failures_before_open = None
        if args.outage_after is not None:
            if stop.wait(args.outage_after):
                pass
            trips_before = sum(1 for e in list(bulwark.logs) if opened(e))
            upstream.outage()
            outage_at.append(time.monotonic())
            try:
                bulwark.wait_for_logs(opened, trips_before + 1,
                                      timeout=max(1.0, args.seconds - args.outage_after))
                open_seen = time.monotonic()
                # Attempts after the trip are turned away without reaching the upstream; what
                # it answered since the outage began is what the breaker saw before opening
                # (plus attempts already in flight when it opened).
                time.sleep(0.2)
                failures_before_open = upstream.failed_in_outage
            except AssertionError:
                pass
            stop.set()
        else:
            stop.wait(args.seconds)
            stop.set()
        for thread in threads:
            thread.join(35)
        pool.shutdown(wait=True)
        elapsed = time.monotonic() - started
        metrics = scrape(bulwark)
        transitions = [(e.get("from"), e.get("to")) for e in list(bulwark.logs)
                       if e.get("msg") == TRANSITION]

    requests = sum(statuses.values())
    result = {
        "failure_rate": args.failure_rate,
        "clients": args.clients,
        "seconds": round(elapsed, 1),
        "requests": requests,
        "attempts": upstream.served,
        "attempts_per_second": round(upstream.served / elapsed, 1),
        "attempts_failed": upstream.failed,
        "client_success": round(statuses.get(200, 0) / requests, 4) if requests else None,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "opens": int(metrics.value("bulwark_circuit_breaker_transitions_total", to="OPEN")),
        "reopens_from_half_open": transitions.count(("HALF_OPEN", "OPEN")),
        "closes": int(metrics.value("bulwark_circuit_breaker_transitions_total", to="CLOSED")),
        "circuit_open_rejections": int(metrics.value(
            "bulwark_circuit_breaker_rejections_total")),
    }
    if args.outage_after is not None:
        result["outage_after"] = args.outage_after
        result["seconds_to_open"] = (round(open_seen - outage_at[0], 2)
                                     if open_seen is not None and outage_at else None)
        result["failures_before_open"] = failures_before_open
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--failure-rate", type=float, default=0.2,
                        help="share of attempts the upstream answers with 503 (default 0.2)")
    parser.add_argument("--seconds", type=float, default=150)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rate", type=float, default=0,
                        help="requests per second over all clients; 0 = back to back")
    parser.add_argument("--latency", type=float, default=0.0,
                        help="seconds the upstream takes for every answer")
    parser.add_argument("--outage-after", type=float, default=None)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--config", default="",
                        help="extra bulwark config as JSON, merged over the shipped defaults")
    args = parser.parse_args()
    if not 0 <= args.failure_rate <= 1 or args.clients < 1 or args.seconds <= 0:
        parser.error("need 0 <= failure-rate <= 1, clients >= 1, seconds > 0")

    result = run(args)
    line = (f"failure rate {100 * args.failure_rate:.0f}% x {args.clients} clients x "
            f"{result['seconds']} s: {result['attempts_per_second']} attempts/s, "
            f"opens {result['opens']} (reopens {result['reopens_from_half_open']}), "
            f"client success {100 * (result['client_success'] or 0):.2f}%")
    if args.outage_after is not None:
        line += (f"; outage at {args.outage_after} s: open after "
                 f"{result['seconds_to_open']} s, {result['failures_before_open']} failures")
    print(line)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
