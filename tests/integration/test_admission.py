"""Quota-aware admission: Bulwark learns each (upstream, model) rate limit from the
x-ratelimit-* headers and holds requests that would not fit, instead of sending them into a
429. The fake upstream runs OpenAI's limiter (per-model request and token buckets, refilled
continuously at their limit per minute), of two kinds: one that holds its whole minute, and one
that enforces it in short buckets (`bucket`, a share of the minute) and reports that bucket in
`remaining` and `reset`, as OpenAI documents its "quantized" limits. Tests that must run in
seconds use a large limit in a short bucket: it refills as fast as a small limit's compressed
minute would."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import unittest
from pathlib import Path

from harness import (SANITIZED, Bulwark, FakeUpstream, RawConnection, http_request, scrape)

CHAT_PATH = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
E2E = Path(__file__).resolve().parent.parent / "e2e"


def chat(max_tokens: int, content: str = "hi", model: str = MODEL) -> str:
    return json.dumps({"model": model, "max_tokens": max_tokens,
                       "messages": [{"role": "user", "content": content}]})


def post(bulwark: Bulwark, body: str, headers: dict | None = None, timeout: float = 30):
    return http_request(bulwark.port, "POST", CHAT_PATH, body,
                        headers={"Content-Type": "application/json", **(headers or {})},
                        timeout=timeout)


def health(bulwark: Bulwark) -> dict:
    return http_request(bulwark.admin_port, "GET", "/health/detailed").json()


def burst(bulwark: Bulwark, bodies: list[str], timeout: float = 60) -> list:
    """Sends every body at once, each on its own connection; the responses, in order."""
    results: list = [None] * len(bodies)

    def send(i: int) -> None:
        results[i] = post(bulwark, bodies[i], timeout=timeout)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


class AdmissionTestCase(unittest.TestCase):

    def fake(self, **limits) -> FakeUpstream:
        fake = FakeUpstream(rate_limits={MODEL: limits} if limits else None).start()
        self.addCleanup(fake.stop)
        return fake

    def bulwark(self, upstreams: list, config: dict | None = None) -> Bulwark:
        bulwark = Bulwark(upstreams, {"retry": {"base_delay": "50ms"}, **(config or {})}).start()
        self.addCleanup(bulwark.stop)
        return bulwark

    def wait_until(self, predicate, timeout: float = 5.0, what: str = "condition"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.02)
        self.fail(f"timed out waiting for {what}")

    def assert_own_429(self, resp, code: str) -> int:
        """Bulwark's refusal in OpenAI's shape, telling the SDK to come back: retry-after-ms."""
        self.assertEqual(resp.status, 429, resp.body[:300])
        error = resp.json()["error"]
        self.assertEqual(error["code"], code)
        self.assertEqual(error["type"], "bulwark_error")
        self.assertEqual(resp.header("x-should-retry"), "true")
        retry_after_ms = int(resp.header("retry-after-ms"))
        self.assertGreater(retry_after_ms, 0)
        self.assertEqual(int(resp.header("retry-after")), (retry_after_ms + 999) // 1000)
        return retry_after_ms


class BurstTest(AdmissionTestCase):
    """A burst beyond what the limit has left waits for room instead of colliding with it,
    whichever way the limiter holds its minute."""

    # Each request costs 301 tokens. short: 60,000 a minute (1000 tokens/s) in buckets of a
    # fifteenth of the minute (4000 tokens); whole: 28,000 a minute (467 tokens/s), all of it
    # at once. `burst` requests follow the first; `waiters` of them at least find no room.
    KINDS = {
        "short": {"limits": {"rpm": 15000, "tpm": 60000, "bucket": 1 / 15}, "burst": 30,
                  "waiters": 10},
        "whole": {"limits": {"rpm": 6000, "tpm": 28000}, "burst": 100, "waiters": 5},
    }

    def run_burst(self, kind: str, admission: bool) -> tuple[FakeUpstream, list, float, Bulwark]:
        fake = self.fake(**self.KINDS[kind]["limits"])
        # The headroom (2 % of the limit, at most a quarter of a short bucket) covers the
        # refill a view gains between a request's send and the upstream's count of it: 1.2 s
        # at most. A sanitizer's build can take longer than that to get a request to the fake.
        settings = {"enabled": admission}
        if SANITIZED:
            settings["headroom"] = 0.06
        bulwark = self.bulwark([fake], {"admission": settings})
        self.assertEqual(post(bulwark, chat(300)).status, 200)  # the limit is learned here
        started = time.monotonic()
        results = burst(bulwark, [chat(300) for _ in range(self.KINDS[kind]["burst"])])
        return fake, results, time.monotonic() - started, bulwark

    def expected_wait(self, kind: str) -> float:
        """Seconds of refill the burst needs beyond what the bucket holds after the first."""
        limits = self.KINDS[kind]["limits"]
        capacity = limits["tpm"] * limits.get("bucket", 1)
        keep = min((0.06 if SANITIZED else 0.02) * limits["tpm"], capacity / 4)
        usable = capacity - 301 - keep
        return (self.KINDS[kind]["burst"] * 301 - usable) / (limits["tpm"] / 60)

    def check_burst_waits_for_room(self, kind: str) -> None:
        fake, results, elapsed, bulwark = self.run_burst(kind, admission=True)
        n = self.KINDS[kind]["burst"]
        self.assertEqual([r.status for r in results], [200] * n,
                         [r.body[:200] for r in results if r.status != 200])
        limiter = fake.limiters[MODEL]
        self.assertEqual(limiter.rejected, 0, "the upstream answered 429")
        self.assertEqual(limiter.accepted, n + 1)
        self.assertEqual(len(fake.requests), n + 1)  # one attempt each
        # The requests really waited, no longer than the refill needed (and some scheduling).
        expected = self.expected_wait(kind)
        self.assertGreater(elapsed, 0.7 * expected)
        self.assertLess(elapsed, expected + (9.0 if SANITIZED else 3.0))
        m = scrape(bulwark)
        self.assertEqual(m.value("bulwark_admission_queue_depth", upstream="fake0"), 0)
        waited = (m.value("bulwark_admission_wait_seconds_count", upstream="fake0") -
                  m.value("bulwark_admission_wait_seconds_bucket", upstream="fake0", le="0.01"))
        self.assertGreater(waited, self.KINDS[kind]["waiters"], "few requests waited")
        self.assertEqual(m.value("bulwark_ratelimit_limit", upstream="fake0", model=MODEL,
                                 kind="tokens"), self.KINDS[kind]["limits"]["tpm"])
        self.assertEqual(m.value("bulwark_upstream_attempts_total", upstream="fake0",
                                 outcome="429"), 0)
        # The burst the limiter enforces was learned from its reset headers.
        limits = self.KINDS[kind]["limits"]
        quota = health(bulwark)["services"]["fake0"]["quotas"][MODEL]
        self.assertAlmostEqual(quota["tokens"]["capacity"], limits["tpm"] * limits.get("bucket", 1),
                               delta=0.01 * limits["tpm"])
        self.assertEqual(quota["admission"], "model")
        self.assertEqual(quota["surprises"], 0)

    def test_a_burst_past_a_short_bucket_waits_for_room_and_draws_no_429(self):
        self.check_burst_waits_for_room("short")

    def test_a_burst_past_a_whole_minute_waits_for_room_and_draws_no_429(self):
        self.check_burst_waits_for_room("whole")

    def test_control_without_admission_the_same_bursts_collide(self):
        """The control experiment: the same bursts with admission off draw 429s (and
        Bulwark's retries then wait for the server's hint)."""
        for kind, at_least in (("short", 5), ("whole", 3)):
            with self.subTest(kind=kind):
                fake, _, _, _ = self.run_burst(kind, admission=False)
                self.assertGreater(fake.limiters[MODEL].rejected, at_least)


class QueueTest(AdmissionTestCase):
    """The bounded FIFO: a full queue and a wait past max_wait are refused at once, in
    OpenAI's shape; a client that leaves frees its place."""

    # 1000 tokens a minute (about 17 a second): after one 901-token request, the next waits
    # about 48 s.
    LIMITS = {"rpm": 100, "tpm": 1000}

    def drained(self, admission: dict) -> tuple[FakeUpstream, Bulwark]:
        fake = self.fake(**self.LIMITS)
        bulwark = self.bulwark([fake], {"admission": admission})
        self.assertEqual(post(bulwark, chat(900)).status, 200)
        return fake, bulwark

    def test_a_wait_past_max_wait_is_refused_at_once_with_when_to_come_back(self):
        fake, bulwark = self.drained({"max_wait": "500ms"})
        started = time.monotonic()
        resp = post(bulwark, chat(900))
        self.assertLess(time.monotonic() - started, 2.0 if SANITIZED else 1.0)
        retry_after_ms = self.assert_own_429(resp, "rate_limit_wait_exceeded")
        self.assertGreater(retry_after_ms, 30_000)  # ~48 s of refill
        self.assertLess(retry_after_ms, 60_000)
        self.assertEqual(len(fake.requests), 1, "the refused request reached the upstream")
        m = scrape(bulwark)
        self.assertEqual(m.value("bulwark_admission_rejections_total", upstream="fake0",
                                 reason="wait_exceeded"), 1)

    def test_the_clients_deadline_bounds_the_wait_too(self):
        fake, bulwark = self.drained({"max_wait": "120s"})
        resp = post(bulwark, chat(900), headers={"x-stainless-timeout": "2"})
        self.assert_own_429(resp, "rate_limit_wait_exceeded")
        self.assertEqual(len(fake.requests), 1)

    def test_a_full_queue_refuses_and_a_client_that_leaves_frees_its_place(self):
        fake, bulwark = self.drained({"max_wait": "120s", "max_queue": 1})
        waiting = RawConnection(bulwark.port)
        body = chat(900)
        waiting.send(f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n{body}")
        self.wait_until(lambda: health(bulwark)["services"]["fake0"]["quotas"][MODEL]["queued"]
                        == 1, what="the first request to queue")
        self.assertEqual(scrape(bulwark).value("bulwark_admission_queue_depth",
                                               upstream="fake0"), 1)
        resp = post(bulwark, chat(10))
        self.assert_own_429(resp, "rate_limit_queue_full")
        quota = health(bulwark)["services"]["fake0"]["quotas"][MODEL]
        self.assertEqual(quota["tokens"]["limit"], 1000)
        self.assertLess(quota["tokens"]["remaining"], 200)
        self.assertGreater(quota["tokens"]["reset_ms"], 0)
        # Its client hangs up: the place is free at once, and nothing reached the upstream.
        waiting.close()
        self.wait_until(lambda: scrape(bulwark).value("bulwark_admission_queue_depth",
                                                      upstream="fake0") == 0,
                        timeout=2, what="the queue to empty")
        self.assertEqual(health(bulwark)["services"]["fake0"]["quotas"][MODEL]["queued"], 0)
        self.assertEqual(len(fake.requests), 1)
        log = bulwark.wait_for_log(lambda e: e.get("msg") == "request" and e.get("status") == 499)
        self.assertEqual(log["attempts"], 0)
        m = scrape(bulwark)
        self.assertEqual(m.value("bulwark_admission_rejections_total", upstream="fake0",
                                 reason="queue_full"), 1)


class FailoverTest(AdmissionTestCase):

    def test_a_request_that_does_not_fit_goes_to_the_next_upstream_with_room(self):
        limited = self.fake(rpm=100, tpm=1000)
        spare = self.fake()
        bulwark = self.bulwark([("limited", limited), ("spare", spare)],
                               {"admission": {"max_wait": "120s"}})
        first = post(bulwark, chat(900))
        self.assertEqual(first.header("x-bulwark-upstream"), "limited")
        started = time.monotonic()
        second = post(bulwark, chat(900))
        self.assertEqual(second.status, 200)
        self.assertEqual(second.header("x-bulwark-upstream"), "spare")
        self.assertEqual(second.header("x-bulwark-attempts"), "1")
        self.assertLess(time.monotonic() - started, 2.0 if SANITIZED else 1.0,
                        "it waited instead of failing over")
        self.assertEqual(len(limited.requests), 1)


class CooldownTest(AdmissionTestCase):

    def test_a_429_with_a_wait_pauses_the_model_in_every_worker(self):
        fake = self.fake()
        bulwark = self.bulwark([fake], {"server": {"workers": 2}})
        body429 = {"error": {"message": "Rate limit reached for gpt-4o-mini (fake).",
                             "type": "requests", "param": None, "code": "rate_limit_exceeded"}}
        fake.script([{"status": 429, "body": body429, "headers": [("retry-after-ms", "1500")]}])
        results: list = []
        first = threading.Thread(target=lambda: results.append(post(bulwark, chat(10))))
        first.start()
        # Bulwark has read the 429 (and paused the model) once it logs the failed attempt.
        bulwark.wait_for_log(lambda e: e.get("msg") == "upstream attempt failed")
        paused_at = fake.requests[0].head_sent_at
        # Eight more requests, on their own connections (spread over both workers).
        later = burst(bulwark, [chat(10) for _ in range(8)])
        first.join()
        self.assertEqual([r.status for r in later + results], [200] * 9)
        arrivals = sorted(r.arrived_at for r in fake.requests[1:])
        self.assertEqual(len(arrivals), 9)  # the 429'd request's retry and the eight
        self.assertGreater(arrivals[0] - paused_at, 1.4,
                           "a request reached the upstream during the pause")
        self.assertEqual(fake.requests[0].status, 429)


class SurpriseTest(AdmissionTestCase):
    """429s the quota model did not foresee: when they keep coming, admission falls back to
    plain behaviour for that (upstream, model), and says so."""

    ROOM = [("x-ratelimit-limit-requests", "1000"), ("x-ratelimit-limit-tokens", "100000"),
            ("x-ratelimit-remaining-requests", "999"),
            ("x-ratelimit-remaining-tokens", "99000"),
            ("x-ratelimit-reset-requests", "60ms"), ("x-ratelimit-reset-tokens", "600ms")]
    FULL = [("x-ratelimit-limit-requests", "1000"), ("x-ratelimit-limit-tokens", "100000"),
            ("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-remaining-tokens", "0"),
            ("x-ratelimit-reset-requests", "1m0s"), ("x-ratelimit-reset-tokens", "1m0s")]
    RATE_LIMITED = {"error": {"message": "Rate limit reached for gpt-4o-mini in organization "
                              "org-x on requests per min (RPM): Limit 1000, Used 1000, "
                              "Requested 1. Please try again in 20ms. Visit https://x",
                              "type": "requests", "param": None, "code": "rate_limit_exceeded"}}

    def run_surprises(self, surprises: int) -> tuple[FakeUpstream, Bulwark]:
        """One answer that says there is room, `surprises` 429s on requests the model said
        would fit (another tenant of the account, say), then one answer that says it is
        full."""
        fake = self.fake()
        bulwark = self.bulwark([fake], {"retry": {"max_attempts": 1},
                                        "admission": {"max_wait": "200ms"}})
        fake.script([{"status": 200, "headers": self.ROOM}] +
                    [{"status": 429, "body": self.RATE_LIMITED, "headers": self.ROOM}] * surprises
                    + [{"status": 200, "headers": self.FULL}])
        for _ in range(surprises + 1):
            post(bulwark, chat(10))
        self.assertEqual(post(bulwark, chat(10)).status, 200)  # the FULL answer
        return fake, bulwark

    def test_surprises_that_keep_coming_fall_back_to_plain_retries(self):
        fake, bulwark = self.run_surprises(5)
        log = bulwark.wait_for_log(lambda e: e.get("msg") == "admission falls back")
        self.assertEqual((log["upstream"], log["model"], log["surprises"]), ("fake0", MODEL, 5))
        self.assertGreater(log["fallback_ms"], 50_000)
        quota = health(bulwark)["services"]["fake0"]["quotas"][MODEL]
        self.assertEqual(quota["admission"], "fallback")
        self.assertGreater(quota["fallback_ms"], 50_000)
        # The quota says it is full, but in fallback the request goes out as with admission
        # off, and the upstream judges it.
        seen = len(fake.requests)
        resp = post(bulwark, chat(10))
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(len(fake.requests), seen + 1)

    def test_control_few_surprises_keep_the_model_holding_back(self):
        fake, bulwark = self.run_surprises(4)
        quota = health(bulwark)["services"]["fake0"]["quotas"][MODEL]
        self.assertEqual((quota["admission"], quota["surprises"]), ("model", 4))
        seen = len(fake.requests)
        self.assert_own_429(post(bulwark, chat(10)), "rate_limit_wait_exceeded")
        self.assertEqual(len(fake.requests), seen)
        self.assertFalse(any(e.get("msg") == "admission falls back" for e in bulwark.logs))


class SdkLoadTest(AdmissionTestCase):
    """The measure's small version: the official SDK (its retries off), many clients, a
    limiter far smaller than their demand."""

    def test_many_sdk_clients_at_the_limit_draw_almost_no_429_and_all_succeed(self):
        if not (E2E / "node_modules" / "openai").exists():
            self.skipTest("tests/e2e/node_modules missing (npm ci in tests/e2e)")
        # 400,000 tokens a minute in buckets of 20,000 (a twentieth of the minute: it refills in
        # 3 s); 40 requests of ~110-1500 tokens from 8 clients: about 32,000 tokens, so most of
        # them wait for refill.
        fake = self.fake(rpm=2400, tpm=400000, bucket=0.05)
        bulwark = self.bulwark([fake], {"admission": {"max_wait": "6s"}})
        env = dict(os.environ, BASE_URL=bulwark.openai_base_url, CLIENTS="8", REQUESTS="40",
                   SEED="7", DEADLINE_MS="6000")
        run = subprocess.run(["node", str(E2E / "ratelimit_load.mjs")], env=env,
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(run.returncode, 0, run.stderr[-2000:])
        summary = json.loads(run.stdout.strip().splitlines()[-1])
        self.assertEqual(summary["ok"], 40, summary)
        limiter = fake.limiters[MODEL]
        attempts = limiter.accepted + limiter.rejected
        self.assertGreaterEqual(attempts, 40)
        self.assertLessEqual(limiter.rejected, 0.02 * attempts, (limiter.rejected, attempts))


if __name__ == "__main__":
    unittest.main()
