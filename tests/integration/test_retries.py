"""Retries through the real bulwark binary (retry and timeouts
settings): what is retried and what is not, server delay hints, the commit point for event
streams, deadlines, client coordination headers, cancellation and the attempt log lines.

Every test gets its own fake upstream and bulwark (bulwark starts in ~10 ms). Backoff is made
deterministic and short (jitter none, base_delay 50ms); breaker and retry budget are set out of
reach so that the many failures these tests provoke never trip them.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_retries
"""

from __future__ import annotations

import json
import time
import unittest

from harness import (Bulwark, FakeUpstream, HttpResult, RawConnection, RawResponse, chat_chunk,
                     chat_completion, http_request, openai_error, raw_request)
from harness import CHAT_PATH, closed_port, merged, sse_body  # shared helpers

CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]})
ATTEMPT_FAILED = "upstream attempt failed"

BASE_DELAY = 0.05  # seconds; retry.base_delay below
FAST = {
    "retry": {
        "max_attempts": 3,
        "base_delay": "50ms",
        "jitter": "none",
        "budget": {"ratio": 1.0, "min_per_second": 1000},
    },
    "timeouts": {"first_byte": "300ms"},
    "circuit_breaker": {"failure_threshold": 1000, "min_requests": 1000},
}


def sse_data(body: bytes) -> list[str]:
    """The data payloads of an event stream, in order (a trailing partial event included)."""
    events = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block.strip():
            continue
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        events.append("\n".join(lines))
    return events


def stream_events(label: str) -> list:
    """A small chat stream whose text says which upstream attempt produced it."""
    cid = f"chatcmpl-{label}"
    return ([chat_chunk("", role="assistant", id=cid)] +
            [chat_chunk(piece, id=cid) for piece in (f"{label}:", " hello", " world")] +
            [chat_chunk(finish_reason="stop", id=cid)])


class RetryTestCase(unittest.TestCase):
    """One fake and one bulwark per test, FAST config unless the test starts its own."""

    config: dict = FAST

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.bulwark = self.start_bulwark()

    def start_bulwark(self, extra: dict | None = None, upstreams: list | None = None) -> Bulwark:
        bulwark = Bulwark(upstreams or [self.fake], merged(self.config, extra or {})).start()
        self.addCleanup(bulwark.stop)
        return bulwark

    # -- requests

    def chat(self, headers: dict | None = None, path: str = CHAT_PATH, body: str | None = CHAT_BODY,
             method: str = "POST", bulwark: Bulwark | None = None) -> HttpResult:
        bulwark = bulwark or self.bulwark
        return http_request(bulwark.port, method, path, body, headers=headers, timeout=15)

    def timed_chat(self, **kwargs) -> tuple[HttpResult, float]:
        started = time.monotonic()
        resp = self.chat(**kwargs)
        return resp, time.monotonic() - started

    def stream(self, headers: list | None = None, bulwark: Bulwark | None = None) -> RawResponse:
        """A streamed chat completion read to its end (or until bulwark closes)."""
        bulwark = bulwark or self.bulwark
        with RawConnection(bulwark.port, timeout=15) as conn:
            conn.send(raw_request("POST", CHAT_PATH, STREAM_BODY, headers=[
                ("Content-Type", "application/json"), *(headers or [])]))
            resp = conn.read_response("POST")
            resp.closed = conn.eof  # type: ignore[attr-defined]
        return resp

    # -- assertions

    def assert_bulwark_headers(self, resp, attempts: int, upstream: str = "fake0") -> None:
        self.assertEqual(resp.header_all("x-bulwark-attempts"), [str(attempts)],
                         f"status {resp.status}, headers {resp.headers}")
        self.assertEqual(resp.header_all("x-bulwark-upstream"), [upstream])

    def assert_gave_up(self, resp, attempts: int) -> None:
        """Bulwark's final answer: its attempt count, and no SDK retry on top of it."""
        self.assert_bulwark_headers(resp, attempts)
        self.assertEqual(resp.header_all("x-should-retry"), ["false"], resp.headers)

    def assert_own_error(self, resp, status: int, code: str, attempts: int) -> None:
        self.assertEqual(resp.status, status, resp.body[:300])
        self.assertTrue((resp.header("content-type") or "").startswith("application/json"))
        error = resp.json()
        self.assertEqual(set(error), {"error"})
        self.assertIsInstance(error["error"].get("message"), str)
        self.assertTrue(error["error"]["message"])
        self.assertEqual({k: v for k, v in error["error"].items() if k != "message"},
                         {"type": "bulwark_error", "param": None, "code": code})
        self.assert_gave_up(resp, attempts)

    def arrival_gaps(self, n: int) -> list[float]:
        reqs = self.fake.wait_for_requests(n)
        return [b.arrived_at - a.arrived_at for a, b in zip(reqs, reqs[1:])]

    def request_logs(self, bulwark: Bulwark | None = None, nth: int = 1) -> tuple[dict, list[dict]]:
        """The nth request's access line (waiting for it) and its failed-attempt lines."""
        bulwark = bulwark or self.bulwark
        access = bulwark.wait_for_logs(lambda e: e.get("msg") == "request", nth)[-1]
        attempts = [e for e in bulwark.logs if e.get("msg") == ATTEMPT_FAILED and
                    e.get("request_id") == access["request_id"]]
        return access, attempts

    def assert_requests_settled(self, n: int, bulwark: Bulwark | None = None,
                                nth: int = 1) -> None:
        """Once bulwark has logged the nth request as done, the upstream saw n attempts."""
        access, _ = self.request_logs(bulwark, nth)
        self.assertEqual(access["attempts"], n, access)
        self.assertEqual(len(self.fake.requests), n,
                         [(r.method, r.target, r.status) for r in self.fake.requests])


class StatusRetryTest(RetryTestCase):
    """Which upstream statuses are retried (§3.4) and what the client gets when not (§3.10)."""

    def test_503_503_200_succeeds_on_the_third_attempt(self):
        self.fake.script([
            {"status": 503, "headers": [("x-request-id", "req_a1")]},
            {"status": 503, "headers": [("x-request-id", "req_a2")]},
            {"body": chat_completion("third time lucky", id="chatcmpl-3rd"),
             "headers": [("x-request-id", "req_a3")]},
        ])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.json(), chat_completion("third time lucky", id="chatcmpl-3rd"))
        self.assertEqual(resp.header("x-request-id"), "req_a3")
        self.assert_bulwark_headers(resp, 3)
        self.assertIsNone(resp.header("x-should-retry"))

        reqs = self.fake.wait_for_requests(3)
        self.assertEqual([r.body for r in reqs], [CHAT_BODY.encode()] * 3)
        gaps = self.arrival_gaps(3)
        # jitter none: base_delay * 2^(n-1) -> 50 ms, then 100 ms
        self.assertGreaterEqual(gaps[0], BASE_DELAY)
        self.assertGreaterEqual(gaps[1], 2 * BASE_DELAY)
        self.assert_requests_settled(3)

    def test_500_three_times_gives_the_client_the_last_500(self):
        for i in (1, 2):
            self.fake.push({"status": 500, "body": openai_error(f"boom {i}"),
                            "headers": [("x-request-id", f"req_500_{i}")]})
        self.fake.push({"status": 500, "body": openai_error("boom 3 (the last)"),
                        "headers": [("x-request-id", "req_500_3"), ("x-should-retry", "true"),
                                    ("openai-processing-ms", "17")]})
        resp = self.chat()
        self.assertEqual(resp.status, 500)
        self.assertEqual(resp.json(), openai_error("boom 3 (the last)"))
        self.assertEqual(resp.header("x-request-id"), "req_500_3")
        self.assertEqual(resp.header("openai-processing-ms"), "17")
        # The upstream's own "x-should-retry: true" must not reach the client: Bulwark is done.
        self.assert_gave_up(resp, 3)
        self.assert_requests_settled(3)

    def test_client_errors_are_not_retried(self):
        for status in (400, 401, 403, 404):
            with self.subTest(status=status):
                self.fake.reset()
                error = openai_error(f"nope {status}", "invalid_request_error", f"code_{status}")
                self.fake.script([{"status": status, "body": error},
                                  {"body": chat_completion("must not be reached")}])
                resp = self.chat()
                self.assertEqual(resp.status, status)
                self.assertEqual(resp.json(), error)
                self.assert_bulwark_headers(resp, 1)
                self.assertEqual(len(self.fake.requests), 1)
                self.assertEqual(self.fake.queued, 1)

    def test_x_should_retry_false_on_a_503_is_respected(self):
        self.fake.script([{"status": 503, "headers": [("x-should-retry", "false")],
                           "body": openai_error("overloaded, do not retry")},
                          {"body": chat_completion("must not be reached")}])
        resp = self.chat()
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.json(), openai_error("overloaded, do not retry"))
        self.assert_gave_up(resp, 1)
        self.assert_requests_settled(1)

    def test_x_should_retry_true_on_a_400_is_retried(self):
        self.fake.script([{"status": 400, "headers": [("x-should-retry", "true")]},
                          {"body": chat_completion("retried as the upstream asked")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.json()["choices"][0]["message"]["content"],
                         "retried as the upstream asked")
        self.assert_bulwark_headers(resp, 2)
        self.assert_requests_settled(2)

    def test_insufficient_quota_429_is_not_retried(self):
        cases = {
            "type and code": openai_error("You exceeded your current quota.", "insufficient_quota",
                                          "insufficient_quota"),
            "code only": openai_error("You exceeded your current quota.", "requests",
                                      "insufficient_quota"),
            "type only": openai_error("You exceeded your current quota.", "insufficient_quota"),
            "billing limit": openai_error("Billing hard limit has been reached.",
                                          "invalid_request_error", "billing_hard_limit_reached"),
        }
        for name, error in cases.items():
            with self.subTest(name):
                self.fake.reset()
                raw = json.dumps(error, indent=1)  # the body must come back byte for byte
                self.fake.script([{"status": 429, "body": raw,
                                   "headers": [("retry-after-ms", "20")]},
                                  {"body": chat_completion("must not be reached")}])
                resp, elapsed = self.timed_chat()
                self.assertEqual(resp.status, 429)
                self.assertEqual(resp.body, raw.encode())
                self.assert_gave_up(resp, 1)
                self.assertEqual(len(self.fake.requests), 1)
                self.assertLess(elapsed, 1.0)

    def test_rate_limit_429_without_quota_code_is_retried(self):
        self.fake.script([{"status": 429}, {"body": chat_completion("after the rate limit")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2)
        self.assert_requests_settled(2)


class ServerHintTest(RetryTestCase):
    """Server delay hints replace the backoff (§3.6); too long a hint: no retry."""

    def hinted_retry(self, headers: list, status: int = 429) -> float:
        """Upstream: `status` with headers, then 200. Returns the gap between the attempts."""
        self.fake.script([{"status": status, "headers": headers},
                          {"body": chat_completion("after the hint")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2)
        (gap,) = self.arrival_gaps(2)
        _, attempts = self.request_logs()
        self.assertEqual(attempts[0]["delay_source"], "server", attempts[0])
        return gap

    def test_retry_after_ms_is_honoured(self):
        gap = self.hinted_retry([("retry-after-ms", "700")])
        self.assertGreaterEqual(gap, 0.7)
        self.assertLess(gap, 1.5, "waited far longer than the hint")

    def test_retry_after_seconds_is_honoured(self):
        gap = self.hinted_retry([("retry-after", "1")], status=503)
        self.assertGreaterEqual(gap, 1.0)
        self.assertLess(gap, 1.8, "waited far longer than the hint")

    def test_x_ratelimit_reset_go_durations_are_honoured_on_429(self):
        # The larger of the two wins: 0.8s (requests) over 20ms (tokens).
        gap = self.hinted_retry([("x-ratelimit-reset-requests", "0.8s"),
                                 ("x-ratelimit-reset-tokens", "20ms")])
        self.assertGreaterEqual(gap, 0.8)
        self.assertLess(gap, 1.6, "waited far longer than the hint")

    def test_x_ratelimit_reset_is_not_a_hint_for_other_statuses(self):
        self.fake.script([{"status": 503, "headers": [("x-ratelimit-reset-requests", "5s")]},
                          {"body": chat_completion("after the backoff")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2)
        (gap,) = self.arrival_gaps(2)
        self.assertLess(gap, 1.0, "a 503's x-ratelimit-reset-requests was taken as a delay")
        _, attempts = self.request_logs()
        self.assertEqual((attempts[0]["delay_source"], attempts[0]["delay_ms"]), ("backoff", 50))

    def test_hint_above_max_retry_after_is_handed_to_the_client_at_once(self):
        cases = {  # max_retry_after: 60s (default)
            "retry-after": [("retry-after", "120")],
            "retry-after-ms": [("retry-after-ms", "90000")],
            "x-ratelimit-reset-tokens": [("x-ratelimit-reset-tokens", "6m0s")],
        }
        for name, headers in cases.items():
            with self.subTest(name):
                self.fake.reset()
                # A fresh process: a 429's explicit wait pauses its model's admission, which
                # would hold the next case's request back.
                bulwark = self.start_bulwark()
                body = openai_error(f"Rate limit reached ({name}).", "requests",
                                    "rate_limit_exceeded")
                self.fake.script([{"status": 429, "body": body, "headers": headers},
                                  {"body": chat_completion("must not be reached")}])
                resp, elapsed = self.timed_chat(bulwark=bulwark)
                self.assertEqual(resp.status, 429)
                self.assertEqual(resp.json(), body)
                for key, value in headers:  # the hint itself reaches the client
                    self.assertEqual(resp.header(key), value)
                self.assert_gave_up(resp, 1)
                self.assertLess(elapsed, 1.0, "the 429 was not handed over at once")
                self.assertEqual(len(self.fake.requests), 1)


class TransportRetryTest(RetryTestCase):
    """Failures without a response: reset, timeout, connect_error (§3.4, §3.11)."""

    def test_dropped_connection_is_retried(self):
        for action in ({"drop": True}, {"reset": True}):
            with self.subTest(action=action):
                self.fake.reset()
                bulwark = self.start_bulwark()  # a fresh connection: see the next test
                self.fake.script([action, {"body": chat_completion("after the drop")}])
                resp = self.chat(bulwark=bulwark)
                self.assertEqual(resp.status, 200, resp.body[:300])
                self.assertEqual(resp.json()["choices"][0]["message"]["content"], "after the drop")
                self.assert_bulwark_headers(resp, 2)
                self.assert_requests_settled(2, bulwark)
                _, attempts = self.request_logs(bulwark)
                self.assertEqual([a["outcome"] for a in attempts], ["reset"])

    def test_dropped_reused_connection_is_retried_and_counted(self):
        # The drop comes on a pooled keep-alive connection. Every request the upstream sees
        # is an attempt: counted in x-bulwark-attempts and logged, backoff respected.
        self.assertEqual(self.chat(method="GET", path="/v1/models", body=None).status, 200)
        self.fake.reset()
        self.fake.script([{"drop": True}, {"body": chat_completion("after the drop")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        first, second = self.fake.wait_for_requests(2)
        self.assert_bulwark_headers(resp, 2)
        self.assertGreaterEqual(second.arrived_at - first.arrived_at, BASE_DELAY)
        _, attempts = self.request_logs(nth=2)
        self.assertEqual([a["outcome"] for a in attempts], ["reset"])

    def test_hung_upstream_is_retried_after_first_byte_timeout(self):
        self.fake.script([{"hang": True}, {"body": chat_completion("after the hang")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.json()["choices"][0]["message"]["content"], "after the hang")
        self.assert_bulwark_headers(resp, 2)
        hung, retried = self.fake.wait_for_requests(2)
        # first_byte (300 ms) + backoff (50 ms), measured from when bulwark sent the request;
        # the fake's clock starts a little later, hence the slack.
        self.assertGreaterEqual(retried.arrived_at - hung.arrived_at, 0.3)
        self.assertTrue(self.fake.wait_peer_closed(hung, 1.0),
                        "bulwark kept the hung attempt's connection open")
        _, attempts = self.request_logs()
        self.assertEqual([a["outcome"] for a in attempts], ["timeout"])

    def test_head_without_body_then_silence_is_a_first_byte_timeout(self):
        # The head arrived but no body byte: still before the commit point, still retryable.
        self.fake.script([{"body_delay": 5}, {"body": chat_completion("after the stall")}])
        resp = self.chat()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.json()["choices"][0]["message"]["content"], "after the stall")
        self.assert_bulwark_headers(resp, 2)

    def test_unreachable_upstream_gives_502_after_all_attempts(self):
        port = closed_port()
        bulwark = self.start_bulwark(upstreams=[f"http://127.0.0.1:{port}"])
        resp, elapsed = self.timed_chat(bulwark=bulwark)
        self.assert_own_error(resp, 502, "upstream_unavailable", 3)
        self.assertLess(elapsed, 3.0)
        _, attempts = self.request_logs(bulwark)
        self.assertEqual([a["outcome"] for a in attempts], ["connect_error"] * 3)
        self.assertEqual([a["attempt"] for a in attempts], [1, 2, 3])
        self.assertEqual([a["delay_ms"] for a in attempts], [50, 100, None])


class StreamRetryTest(RetryTestCase):
    """The commit point for event streams (§3.3)."""

    def assert_clean_stream(self, resp: RawResponse, events: list, attempts: int) -> None:
        self.assertEqual(resp.status, 200, bytes(resp.body[:300]))
        self.assertTrue((resp.header("content-type") or "").startswith("text/event-stream"))
        self.assert_bulwark_headers(resp, attempts)
        self.assertEqual(bytes(resp.body), sse_body(events),
                         "the client did not get exactly the good attempt's stream")
        self.assertEqual(sse_data(bytes(resp.body)).count("[DONE]"), 1)
        self.assertTrue(resp.complete, "the stream did not end with its terminating chunk")

    def test_stream_failing_before_its_first_event_is_retried_cleanly(self):
        good = stream_events("second")
        failures = {
            "head then close": {"sse": stream_events("first"), "cut_after": 0},
            "head then reset": {"sse": stream_events("first"), "cut_after": 0, "reset": True},
            "half an event then close": {
                "sse": ['data: {"id":"chatcmpl-first","choices":[{"delta":{"content":"par'],
                "sse_raw": True, "done": False, "cut_after": 1},
            "head then silence": {"sse": stream_events("first"), "body_delay": 5},
            "no head": {"drop": True},
        }
        for name, failure in failures.items():
            with self.subTest(name):
                self.fake.reset()
                self.fake.script([failure, {"sse": good, "gap": 0.02}])
                resp = self.stream(bulwark=self.start_bulwark())  # fresh upstream connection
                self.assert_clean_stream(resp, good, 2)
                self.assertEqual(len(self.fake.requests), 2)

    def test_stream_whose_first_event_is_an_error_is_retried(self):
        good = stream_events("clean")
        error = openai_error("The server had an error while processing your request.",
                             "server_error")
        failures = {
            "data error": {"sse": [error], "done": False},
            "event: error": {"sse": ["event: error\ndata: " + json.dumps(error) + "\n\n"],
                             "sse_raw": True, "done": False},
            "error then more": {"sse": [error, chat_chunk("after the error")]},
        }
        for name, failure in failures.items():
            with self.subTest(name):
                self.fake.reset()
                self.fake.script([failure, {"sse": good}])
                resp = self.stream()
                self.assert_clean_stream(resp, good, 2)
                self.assertEqual(len(self.fake.requests), 2)
        for nth in (1, 2, 3):
            _, attempts = self.request_logs(nth=nth)
            self.assertEqual([a["outcome"] for a in attempts], ["stream_error"])

    def test_stream_error_on_every_attempt_reaches_the_client(self):
        errors = [openai_error(f"stream failure {i}", "server_error") for i in (1, 2, 3)]
        self.fake.script([{"sse": [e], "done": False} for e in errors])
        resp = self.stream()
        self.assertEqual(resp.status, 200)
        self.assert_gave_up(resp, 3)
        self.assertEqual([json.loads(d) for d in sse_data(bytes(resp.body))], [errors[2]])
        self.assert_requests_settled(3)

    def test_stream_cut_after_two_chunks_is_not_replayed(self):
        events = stream_events("cut")
        for reset in (False, True):
            with self.subTest(reset=reset):
                self.fake.reset()
                self.fake.script([{"sse": events, "cut_after": 2, "gap": 0.02, "reset": reset},
                                  {"sse": stream_events("replayed")}])
                resp = self.stream()
                self.assertEqual(resp.status, 200)
                self.assert_bulwark_headers(resp, 1)
                self.assertFalse(resp.complete,
                                 "an interrupted stream ended with a terminating chunk")
                self.assertTrue(resp.closed, "bulwark kept the interrupted connection open")
                data = sse_data(bytes(resp.body))
                self.assertEqual(len(data), 3, data)
                self.assertEqual([json.loads(d) for d in data[:2]], events[:2])
                error = json.loads(data[2])["error"]
                self.assertEqual(error["type"], "bulwark_error")
                self.assertEqual(error["code"], "stream_interrupted")
                self.assertIsInstance(error["message"], str)
                self.assertNotIn("[DONE]", data)
                self.assertTrue(bytes(resp.body).endswith(b"\n\n"), "a partial error event")
                self.assert_requests_settled(1, nth=1 + reset)  # not replayed
        self.assertEqual(self.fake.queued, 1)

    def test_json_body_cut_after_the_first_byte_is_not_retried(self):
        body = json.dumps(chat_completion("a complete answer that gets cut")).encode()
        self.fake.script([{"body": body, "truncate": 40}, {"body": chat_completion("replayed")}])
        with RawConnection(self.bulwark.port) as conn:
            conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY,
                                  headers=[("Content-Type", "application/json")]))
            resp = conn.read_response("POST")
            self.assertTrue(conn.eof, "bulwark kept the connection of a cut response open")
        self.assertEqual(resp.status, 200)
        self.assert_bulwark_headers(resp, 1)
        if self.fake.compress:  # decoded by Bulwark: framed anew, without a length
            self.assertIsNone(resp.header("content-length"))
        else:
            self.assertEqual(resp.header("content-length"), str(len(body)))
        self.assertFalse(resp.complete, "a cut body looked complete to the client")
        self.assertEqual(bytes(resp.body), body[:40])
        self.assert_requests_settled(1)

    def test_stream_stalling_after_commit_is_interrupted_by_idle_timeout(self):
        bulwark = self.start_bulwark({"timeouts": {"idle": "300ms"}})
        events = stream_events("stall")
        self.fake.script([{"sse": events, "gap": 5}, {"sse": stream_events("replayed")}])
        started = time.monotonic()
        resp = self.stream(bulwark=bulwark)
        self.assertLess(time.monotonic() - started, 2.0)
        self.assertEqual(resp.status, 200)
        self.assert_bulwark_headers(resp, 1)
        self.assertFalse(resp.complete)
        data = sse_data(bytes(resp.body))
        self.assertEqual([json.loads(d) for d in data[:1]], events[:1])
        self.assertEqual(json.loads(data[-1])["error"]["code"], "stream_interrupted")
        self.assertEqual(len(data), 2, data)
        self.assert_requests_settled(1, bulwark)


class SafeRetryTest(RetryTestCase):
    """Non-inference POSTs are retried only when the upstream provably did not process them
    (§3.5)."""

    FILE_BODY = ('--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
                 '--XyZ\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n'
                 'Content-Type: application/jsonl\r\n\r\n{"custom_id": "1"}\n\r\n--XyZ--\r\n')
    FILE_HEADERS = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    FILE_OK = {"id": "file-abc123", "object": "file", "bytes": 18, "purpose": "batch",
               "filename": "a.jsonl", "created_at": 1764338400}

    def upload(self) -> HttpResult:
        return self.chat(path="/v1/files", body=self.FILE_BODY, headers=self.FILE_HEADERS)

    def test_files_post_with_500_is_not_retried(self):
        self.fake.script([{"status": 500, "body": openai_error("upload failed")},
                          {"body": self.FILE_OK}])
        resp = self.upload()
        self.assertEqual(resp.status, 500)
        self.assertEqual(resp.json(), openai_error("upload failed"))
        self.assert_gave_up(resp, 1)
        self.assert_requests_settled(1)

    def test_files_post_dropped_after_sending_is_not_retried(self):
        self.fake.script([{"drop": True}, {"body": self.FILE_OK}])
        resp = self.upload()
        self.assert_own_error(resp, 502, "upstream_unavailable", 1)
        self.assert_requests_settled(1)

    def test_files_post_dropped_on_a_reused_connection_is_not_resent(self):
        # A pooled keep-alive connection this time: the upload reached the upstream, which
        # may have stored it; sending it again could create a second file.
        self.assertEqual(self.chat(method="GET", path="/v1/models", body=None).status, 200)
        self.fake.reset()
        self.fake.script([{"drop": True}, {"body": self.FILE_OK}])
        resp = self.upload()
        self.assertEqual([(r.method, r.path) for r in self.fake.requests], [("POST", "/v1/files")],
                         "the upload was sent twice")
        self.assert_own_error(resp, 502, "upstream_unavailable", 1)

    def test_files_post_with_503_or_429_is_retried(self):
        for status in (503, 429):
            with self.subTest(status=status):
                self.fake.reset()
                self.fake.script([{"status": status}, {"body": self.FILE_OK}])
                resp = self.upload()
                self.assertEqual(resp.status, 200, resp.body[:300])
                self.assertEqual(resp.json(), self.FILE_OK)
                self.assert_bulwark_headers(resp, 2)
                first, second = self.fake.wait_for_requests(2)
                self.assertEqual(second.body, self.FILE_BODY.encode())
                self.assertEqual(second.header("content-type"), self.FILE_HEADERS["Content-Type"])

    def test_idempotent_get_with_500_is_retried(self):
        self.fake.script([{"status": 500}, {"body": self.FILE_OK}])
        resp = self.chat(method="GET", path="/v1/files/file-abc123", body=None)
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2)


class DeadlineTest(RetryTestCase):
    """timeouts.total across attempts and waits, x-stainless-timeout (§2, §3.6, §3.7)."""

    config = merged(FAST, {"timeouts": {"first_byte": "5s", "total": "30s"}})

    def test_total_timeout_gives_504(self):
        bulwark = self.start_bulwark({"timeouts": {"total": "500ms"}})
        self.fake.script([{"hang": True}, {"body": chat_completion("must not be reached")}])
        resp, elapsed = self.timed_chat(bulwark=bulwark)
        self.assert_own_error(resp, 504, "deadline_exceeded", 1)
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 1.5)
        (hung,) = self.fake.requests
        self.assertTrue(self.fake.wait_peer_closed(hung, 1.0),
                        "bulwark kept the timed-out attempt's connection open")
        self.assert_requests_settled(1, bulwark)

    def test_x_stainless_timeout_lowers_the_deadline(self):
        self.fake.script([{"hang": True}, {"body": chat_completion("must not be reached")}])
        resp, elapsed = self.timed_chat(headers={"x-stainless-timeout": "0.5"})
        self.assert_own_error(resp, 504, "deadline_exceeded", 1)
        self.assertGreaterEqual(elapsed, 0.45)
        self.assertLess(elapsed, 1.5, "x-stainless-timeout did not lower timeouts.total (30s)")

    def test_no_retry_whose_wait_would_pass_the_deadline(self):
        self.fake.script([{"status": 503, "headers": [("retry-after-ms", "1500")]},
                          {"body": chat_completion("must not be reached")}])
        resp, elapsed = self.timed_chat(headers={"x-stainless-timeout": "1"})
        self.assertEqual(resp.status, 503)
        self.assert_gave_up(resp, 1)
        self.assertLess(elapsed, 0.8, "bulwark waited although the retry could not finish")
        self.assert_requests_settled(1)

    def test_deadline_across_attempts(self):
        # Attempt 1 times out at 300 ms, attempt 2 starts at 350 ms and is cut by the deadline.
        bulwark = self.start_bulwark({"timeouts": {"first_byte": "300ms", "total": "600ms"}})
        self.fake.script([{"hang": True}, {"hang": True}, {"body": chat_completion("late")}])
        resp, elapsed = self.timed_chat(bulwark=bulwark)
        self.assert_own_error(resp, 504, "deadline_exceeded", 2)
        self.assertLess(elapsed, 1.5)
        self.assert_requests_settled(2, bulwark)


class ClientCoordinationTest(RetryTestCase):
    """x-stainless-retry-count (§3.7) and a client that leaves (cancellation)."""

    def test_sdk_retry_count_above_zero_gets_a_single_attempt(self):
        self.fake.script([{"status": 503}, {"body": chat_completion("must not be reached")}])
        resp = self.chat(headers={"x-stainless-retry-count": "1"})
        self.assertEqual(resp.status, 503)
        self.assert_gave_up(resp, 1)
        self.assert_requests_settled(1)

    def test_sdk_retry_count_zero_is_retried(self):
        self.fake.script([{"status": 503}, {"body": chat_completion("retried")}])
        resp = self.chat(headers={"x-stainless-retry-count": "0"})
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2)

    def test_client_leaving_during_backoff_cancels_the_retry(self):
        bulwark = self.start_bulwark({"retry": {"base_delay": "1s"}})
        self.fake.script([{"status": 503}, {"body": chat_completion("must not be reached")}])
        conn = RawConnection(bulwark.port)
        conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY,
                              headers=[("Content-Type", "application/json")]))
        self.fake.wait_for_requests(1)
        failed = bulwark.wait_for_log(lambda e: e.get("msg") == ATTEMPT_FAILED)
        self.assertEqual(failed["delay_ms"], 1000, failed)  # now in the backoff wait
        conn.close()
        with self.assertRaises(AssertionError, msg="a retry was sent for a client that left"):
            self.fake.wait_for_requests(2, timeout=1.5)  # past the 1 s backoff
        # bulwark still serves, and the next request is the upstream's second.
        self.fake.reset()
        resp = self.chat(bulwark=bulwark, headers={"x-probe": "after"})
        self.assertEqual(resp.status, 200, resp.body[:300])
        (probe,) = self.fake.requests
        self.assertEqual(probe.header("x-probe"), "after")

    def test_client_leaving_during_an_attempt_cancels_the_retry(self):
        self.fake.script([{"hang": True}, {"body": chat_completion("must not be reached")}])
        conn = RawConnection(self.bulwark.port)
        conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY,
                              headers=[("Content-Type", "application/json")]))
        (hung,) = self.fake.wait_for_requests(1)
        conn.close()
        self.assertTrue(self.fake.wait_peer_closed(hung, 1.0))
        with self.assertRaises(AssertionError, msg="a retry was sent for a client that left"):
            # the first-byte timeout (300 ms) plus backoff (50 ms) have long passed by then
            self.fake.wait_for_requests(2, timeout=0.8)
        self.assertEqual(self.fake.queued, 1)


class AttemptLogTest(RetryTestCase):
    """Failed attempts are logged with the documented fields; secrets never are."""

    CLIENT_KEY = "sk-secret-XYZ"
    UPSTREAM_KEY = "sk-upstream-secret-ABC"

    def test_attempt_and_access_lines_for_503_then_200(self):
        bulwark = self.start_bulwark(upstreams=[{"fake": self.fake, "name": "primary",
                                                 "api_key": self.UPSTREAM_KEY}])
        self.fake.script([{"status": 503, "headers": [("x-request-id", "req_first_503")]},
                          {"body": chat_completion("logged"),
                           "headers": [("x-request-id", "req_second_200")]}])
        resp = self.chat(bulwark=bulwark, headers={"Authorization": f"Bearer {self.CLIENT_KEY}"})
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assert_bulwark_headers(resp, 2, upstream="primary")
        for req in self.fake.wait_for_requests(2):
            self.assertEqual(req.header_all("authorization"), [f"Bearer {self.UPSTREAM_KEY}"])

        access, attempts = self.request_logs(bulwark)
        self.assertEqual(len(attempts), 1, attempts)
        (failed,) = attempts
        self.assertEqual(failed["level"], "warn")
        self.assertIsInstance(failed["request_id"], str)
        self.assertTrue(failed["request_id"])
        expected = {"upstream": "primary", "attempt": 1, "max_attempts": 3, "outcome": "503",
                    "retryable": True, "breaker_counted": True, "delay_ms": 50,
                    "delay_source": "backoff", "upstream_request_id": "req_first_503"}
        self.assertEqual({k: failed.get(k) for k in expected}, expected, failed)
        self.assertFalse(failed.get("not_retried_because"), failed)
        self.assertIn("detail", failed)

        self.assertEqual(access["level"], "info")
        expected = {"method": "POST", "path": CHAT_PATH, "status": 200, "attempts": 2,
                    "upstream": "primary", "bytes": len(resp.body),
                    "upstream_request_id": "req_second_200"}
        self.assertEqual({k: access.get(k) for k in expected}, expected, access)
        self.assertIsInstance(access["duration_ms"], (int, float))
        self.assertGreaterEqual(access["duration_ms"], 50)

        output = json.dumps(bulwark.logs) + "\n".join(bulwark.stderr_lines)  # not proxy.yaml
        for secret in (self.CLIENT_KEY, self.UPSTREAM_KEY, "Bearer "):
            self.assertNotIn(secret, output, f"{secret!r} appears in bulwark's output")

    def test_last_failed_attempt_is_logged_with_the_reason_it_was_not_retried(self):
        self.fake.script([{"status": 500}, {"status": 500}, {"status": 500}])
        resp = self.chat()
        self.assertEqual(resp.status, 500)
        _, attempts = self.request_logs()
        self.assertEqual([a["outcome"] for a in attempts], ["500"] * 3)
        self.assertEqual([a["delay_ms"] for a in attempts], [50, 100, None])
        self.assertEqual([a["retryable"] for a in attempts], [True, True, True])
        self.assertTrue(attempts[2]["not_retried_because"], attempts[2])

    def test_not_retryable_attempt_is_logged(self):
        self.fake.push({"status": 401, "headers": [("x-request-id", "req_401")]})
        resp = self.chat()
        self.assertEqual(resp.status, 401)
        _, (failed,) = self.request_logs()
        expected = {"attempt": 1, "outcome": "401", "retryable": False, "breaker_counted": False,
                    "delay_ms": None, "upstream_request_id": "req_401"}
        self.assertEqual({k: failed.get(k) for k in expected}, expected, failed)
        self.assertTrue(failed["not_retried_because"], failed)


if __name__ == "__main__":
    unittest.main()
