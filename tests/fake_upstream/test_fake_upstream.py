"""Self-tests of the fake upstream: if these fail, every integration test is suspect."""

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import unittest

from fake_upstream import DEFAULT_CONTENT, FakeUpstream, RateLimiter, go_duration

HERE = os.path.dirname(os.path.abspath(__file__))


def raw_connect(port: int, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, list]:
    """All bytes until EOF, and (monotonic time, bytes) for each recv."""
    sock.settimeout(timeout)
    data, pieces = b"", []
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        pieces.append((time.monotonic(), piece))
        data += piece
    return data, pieces


def dechunk(body: bytes) -> tuple[bytes, bool]:
    """Decode a chunked body; returns (data, whether the terminating chunk was seen)."""
    out = b""
    while body:
        line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(line, 16)
        if size == 0:
            return out, True
        out += rest[:size]
        body = rest[size + 2:]
    return out, False


class FakeUpstreamTest(unittest.TestCase):
    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)

    def client(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.fake.port, timeout=5)
        self.addCleanup(conn.close)
        return conn

    def test_default_chat_completion(self):
        conn = self.client()
        body = b'{"model": "gpt-4o-mini",  "messages": [{"role":"user","content":"hi"}]}'
        conn.request("POST", "/v1/chat/completions?a=1", body=body,
                     headers={"Authorization": "Bearer sk-x", "X-Mixed-Case": "v"})
        resp = conn.getresponse()
        payload = json.loads(resp.read())
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.getheader("x-request-id"), "req_1")
        self.assertEqual(payload["object"], "chat.completion")
        self.assertEqual(payload["choices"][0]["message"]["content"], DEFAULT_CONTENT)
        self.assertEqual(payload["usage"]["total_tokens"], 16)
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual((req.method, req.target, req.path, req.query),
                         ("POST", "/v1/chat/completions?a=1", "/v1/chat/completions", "a=1"))
        self.assertEqual(req.http_version, "HTTP/1.1")
        self.assertEqual(req.body, body)
        self.assertIn(("X-Mixed-Case", "v"), req.headers)
        self.assertEqual(req.header("authorization"), "Bearer sk-x")
        self.assertTrue(req.complete)
        self.assertIsNone(req.action)

    def test_default_models_and_stream(self):
        conn = self.client()
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        self.assertEqual(json.loads(resp.read())["object"], "list")
        conn.request("POST", "/v1/chat/completions", body=b'{"stream": true}')
        resp = conn.getresponse()
        self.assertEqual(resp.getheader("content-type"), "text/event-stream")
        text = resp.read().decode()
        content = "".join(
            json.loads(line[6:])["choices"][0]["delta"].get("content", "")
            for line in text.split("\n") if line.startswith("data: {"))
        self.assertEqual(content, DEFAULT_CONTENT)
        self.assertTrue(text.endswith("data: [DONE]\n\n"))

    def test_scripted_status_duplicate_headers_and_fifo(self):
        self.fake.script([
            {"status": 429, "headers": [("Retry-After", "1"), ("Set-Cookie", "a=1"),
                                        ("Set-Cookie", "b=2")],
             "body": {"error": {"code": "rate_limit_exceeded"}}},
            {"status": 500, "body": "oops", "content_type": "text/plain"},
        ])
        conn = self.client()
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        self.assertEqual(resp.status, 429)
        self.assertEqual([v for k, v in resp.getheaders() if k == "Set-Cookie"], ["a=1", "b=2"])
        self.assertEqual(json.loads(resp.read())["error"]["code"], "rate_limit_exceeded")
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        self.assertEqual((resp.status, resp.read()), (500, b"oops"))
        self.assertEqual(resp.getheader("content-type"), "text/plain")
        conn.request("GET", "/v1/models")
        self.assertEqual(conn.getresponse().status, 200)  # queue empty: default again
        self.assertEqual(self.fake.requests[0].action["status"], 429)

    def test_match_only_applies_to_its_path(self):
        self.fake.push({"match": "/v1/embeddings", "status": 500})
        conn = self.client()
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 200)
        self.assertEqual(self.fake.queued, 1)
        conn.request("POST", "/v1/embeddings", body=b"{}")
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 500)
        self.assertEqual(self.fake.queued, 0)

    def test_responder_decides_when_the_queue_is_empty(self):
        seen = []

        def responder(request):
            seen.append(request.index)
            if request.header("x-fail") == "yes":
                return {"status": 503, "headers": [("x-decided-by", "responder")]}
            if request.header("x-fail") == "boom":
                raise RuntimeError("bad test")
            return None  # the default

        self.fake.responder = responder
        self.fake.push({"status": 418})  # the queue comes first
        conn = self.client()
        for fail, expected in (("yes", 418), ("yes", 503), ("no", 200), ("boom", 500)):
            conn.request("GET", "/v1/models", headers={"X-Fail": fail})
            resp = conn.getresponse()
            body = resp.read()
            self.assertEqual(resp.status, expected, body)
            if expected == 503:
                self.assertEqual(resp.getheader("x-decided-by"), "responder")
            if expected == 500:
                self.assertIn(b"RuntimeError: bad test", body)
        self.assertEqual(seen, [2, 3, 4])
        actions = [r.action for r in self.fake.requests]
        self.assertEqual([a and a["status"] for a in actions], [418, 503, None, 500])

    def test_outage_window(self):
        conn = self.client()

        def call(method, path, body=None):
            conn.request(method, path, body=None if body is None else json.dumps(body))
            resp = conn.getresponse()
            return resp.status, resp.read()

        status, data = call("POST", "/__fake/outage", {"seconds": 0.4})
        self.assertEqual(status, 200)
        self.assertGreater(json.loads(data)["outage_remaining"], 0.2)
        self.fake.push({"status": 418})  # the queue still comes first
        self.assertEqual([call("GET", "/v1/models")[0] for _ in range(3)], [418, 503, 503])
        self.assertGreater(json.loads(call("GET", "/__fake/stats")[1])["outage_remaining"], 0)
        time.sleep(0.45)  # the window is wall-clock time: nothing to wait on
        self.assertEqual(call("GET", "/v1/models")[0], 200)
        self.assertEqual(self.fake.outage_remaining, 0)

        self.fake.outage(5, {"drop": True})
        with self.assertRaises((http.client.RemoteDisconnected, ConnectionError)):
            call("GET", "/v1/models")
        self.fake.outage(0)  # ends it early
        conn2 = self.client()
        conn2.request("GET", "/v1/models")
        self.assertEqual(conn2.getresponse().status, 200)
        bad = self.client()
        bad.request("POST", "/__fake/outage", body=json.dumps({"secs": 1}))
        self.assertEqual(bad.getresponse().status, 400)
        self.fake.outage(5)
        self.fake.reset()  # forgets the outage too
        self.assertEqual(self.fake.outage_remaining, 0)

    def test_mode_switch_through_the_control_api(self):
        conn = self.client()
        for mode in ("flaky", "ok"):
            conn.request("POST", "/__fake/mode", body=json.dumps({"mode": mode}))
            resp = conn.getresponse()
            self.assertEqual((resp.status, json.loads(resp.read())), (200, {"mode": mode}))
            self.assertEqual(self.fake.mode, mode)
        conn.request("POST", "/__fake/mode", body=json.dumps({"mode": "fast"}))
        resp = conn.getresponse()
        resp.read()
        self.assertEqual(resp.status, 400)
        self.assertEqual(self.fake.mode, "ok")

    def test_delay_and_body_delay(self):
        self.fake.push({"delay": 0.3, "body_delay": 0.2, "body": "x"})
        conn = self.client()
        started = time.monotonic()
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        head_at = time.monotonic()
        self.assertEqual(resp.read(), b"x")
        done_at = time.monotonic()
        self.assertGreaterEqual(head_at - started, 0.28)
        self.assertGreaterEqual(done_at - head_at, 0.15)

    def test_sse_with_gaps_and_complete_ending(self):
        self.fake.push({"sse": ["one", {"n": 2}], "gap": 0.2})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: 2\r\n\r\n{}")
        data, pieces = read_until_closed(sock)
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", head)
        self.assertIn(b"Content-Type: text/event-stream", head)
        events, terminated = dechunk(body)
        self.assertTrue(terminated)
        self.assertEqual(events, b'data: one\n\ndata: {"n": 2}\n\ndata: [DONE]\n\n')
        (req,) = self.fake.requests
        self.assertEqual(len(req.chunks_sent_at), 3)
        gaps = [b - a for a, b in zip(req.chunks_sent_at, req.chunks_sent_at[1:])]
        self.assertTrue(all(g >= 0.18 for g in gaps), gaps)
        # Each event is its own chunk, flushed at once: the client saw them apart in time.
        self.assertGreaterEqual(pieces[-1][0] - pieces[0][0], 0.35)

    def test_sse_cut_after_closes_without_final_chunk(self):
        self.fake.push({"sse": ["a", "b", "c"], "cut_after": 2})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock)
        sock.close()
        events, terminated = dechunk(data.partition(b"\r\n\r\n")[2])
        self.assertEqual(events, b"data: a\n\ndata: b\n\n")
        self.assertFalse(terminated)
        (req,) = self.fake.requests
        self.assertIsNotNone(req.fake_closed_at)
        self.assertIsNone(req.peer_closed_at)

    def test_sse_raw_events(self):
        self.fake.push({"sse": ['event: error\ndata: {"error": {}}\n\n'], "sse_raw": True,
                        "done": False})
        conn = self.client()
        conn.request("GET", "/v1/x")
        self.assertEqual(conn.getresponse().read(), b'event: error\ndata: {"error": {}}\n\n')

    def test_drop_closes_without_response(self):
        self.fake.push({"drop": True})
        conn = self.client()
        conn.request("POST", "/v1/chat/completions", body=b"{}")
        with self.assertRaises(http.client.RemoteDisconnected):
            conn.getresponse()
        (req,) = self.fake.wait_for_requests(1)
        self.assertTrue(req.complete)
        self.assertIsNone(req.status)

    def test_reset_sends_rst(self):
        self.fake.push({"reset": True})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        with self.assertRaises(ConnectionResetError):
            sock.settimeout(5)
            sock.recv(100)
        sock.close()

    def test_truncated_body(self):
        self.fake.push({"body": "0123456789", "truncate": 4})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock)
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Content-Length: 10", head)
        self.assertEqual(body, b"0123")

    def test_peer_closed_detected_while_hanging(self):
        self.fake.push({"hang": True})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        (req,) = self.fake.wait_for_requests(1)
        self.assertFalse(self.fake.wait_peer_closed(req, 0.2))
        left_at = time.monotonic()
        sock.close()
        self.assertTrue(self.fake.wait_peer_closed(req, 1.0))
        self.assertLess(req.peer_closed_at - left_at, 0.5)
        self.assertIsNone(req.status)

    def test_peer_closed_detected_during_delay_and_stream(self):
        for action in ({"delay": 30}, {"sse": ["a"] * 100, "gap": 0.1}):
            with self.subTest(action=action):
                self.fake.reset()
                self.fake.push(action)
                sock = raw_connect(self.fake.port)
                sock.sendall(b"GET /v1/x HTTP/1.1\r\nHost: x\r\n\r\n")
                if "sse" in action:
                    sock.recv(100)  # the stream has started
                (req,) = self.fake.wait_for_requests(1)
                left_at = time.monotonic()
                sock.close()
                self.assertTrue(self.fake.wait_peer_closed(req, 1.0))
                self.assertLess(req.peer_closed_at - left_at, 0.5)

    def test_chunked_request_body(self):
        sock = raw_connect(self.fake.port)
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n")
        (req,) = self.fake.wait_for_requests(1)
        sock.close()
        self.assertEqual(req.body, b"hello, world")
        self.assertTrue(req.chunked)

    def test_expect_100_continue(self):
        sock = raw_connect(self.fake.port)
        sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                     b"Content-Length: 2\r\n\r\n")
        self.assertEqual(sock.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
        sock.sendall(b"{}")
        (req,) = self.fake.wait_for_requests(1)
        sock.close()
        self.assertEqual(req.body, b"{}")

    def test_keep_alive_and_connection_count(self):
        conn = self.client()
        for _ in range(3):
            conn.request("GET", "/v1/models")
            conn.getresponse().read()
        other = self.client()
        other.request("GET", "/v1/models")
        other.getresponse().read()
        reqs = self.fake.wait_for_requests(4)
        self.assertEqual(self.fake.connections_accepted, 2)
        self.assertEqual(len({r.conn_id for r in reqs[:3]}), 1)
        self.assertNotEqual(reqs[0].conn_id, reqs[3].conn_id)

    def test_echo_and_http10(self):
        self.fake.push({"echo": True})
        sock = raw_connect(self.fake.port)
        sock.sendall(b"GET /v1/models?q=1 HTTP/1.0\r\nHost: x\r\n\r\n")
        data, _ = read_until_closed(sock)  # HTTP/1.0 without keep-alive: the fake closes
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        self.assertIn(b"Connection: close", head)
        echoed = json.loads(body)
        self.assertEqual((echoed["target"], echoed["http_version"]), ("/v1/models?q=1", "HTTP/1.0"))

    def test_partial_request_is_recorded(self):
        sock = raw_connect(self.fake.port)
        sock.sendall(b"POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        (req,) = self.fake.wait_for_requests(1, complete=False)
        sock.close()
        self.assertTrue(self.fake.wait_peer_closed(req, 1.0))
        self.assertFalse(req.complete)
        with self.assertRaises(AssertionError):
            self.fake.wait_for_requests(1, timeout=0.1)

    @unittest.skipUnless(shutil.which("openssl"), "openssl not installed")
    def test_tls(self):
        tmp = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, tmp)
        cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", cert],
                       check=True, capture_output=True)
        with FakeUpstream(tls_cert=cert, tls_key=key) as fake:
            self.assertTrue(fake.base_url.startswith("https://"))
            context = ssl.create_default_context(cafile=cert)
            context.check_hostname = False
            conn = http.client.HTTPSConnection("127.0.0.1", fake.port, context=context, timeout=5)
            conn.request("GET", "/v1/models")
            self.assertEqual(conn.getresponse().status, 200)
            conn.close()


class RateLimiterTest(unittest.TestCase):
    """OpenAI's limiter: continuous refill, charged at admission, headers on every answer."""

    def test_go_durations_are_written_as_openai_writes_them(self):
        self.assertEqual([go_duration(x) for x in (0.02, 1.5, 1, 360, 61.25)],
                         ["20ms", "1.5s", "1s", "6m0s", "1m1.25s"])

    def test_buckets_refill_continuously_and_refusals_say_how_long(self):
        now = [0.0]
        limiter = RateLimiter("gpt-4o-mini", rpm=2, tpm=10_000, clock=lambda: now[0])
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x" * 40}],
                "max_tokens": 10}
        self.assertEqual(limiter.cost(body), 10 + 10)
        self.assertIsNone(limiter.charge(body))
        self.assertIsNone(limiter.charge(body))
        refused = limiter.charge(body)
        self.assertEqual(refused.status, 429)
        error = refused.body["error"]
        self.assertEqual((error["code"], error["type"]), ("rate_limit_exceeded", "requests"))
        self.assertIn("Rate limit reached for gpt-4o-mini in organization org-fake on requests "
                      "per min (RPM): Limit 2, Used 2, Requested 1. Please try again in 30s.",
                      error["message"])
        now[0] = 30.0  # one request's worth refilled (2 per minute)
        self.assertIsNone(limiter.charge(body))
        headers = dict(limiter.headers())
        self.assertEqual(headers["x-ratelimit-remaining-requests"], "0")
        self.assertEqual(headers["x-ratelimit-reset-requests"], "1m0s")

    def test_a_shorter_window_compresses_time(self):
        now = [0.0]
        limiter = RateLimiter("gpt-4o-mini", rpm=2, tpm=10_000, clock=lambda: now[0], window=6)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 10}
        self.assertIsNone(limiter.charge(body))
        self.assertIsNone(limiter.charge(body))
        refused = limiter.charge(body)
        self.assertIn("Please try again in 3s.", refused.body["error"]["message"])
        self.assertEqual(dict(refused.headers)["x-ratelimit-reset-requests"], "6s")
        now[0] = 3.0  # a limiter minute is 6 s: one request's worth refilled
        self.assertIsNone(limiter.charge(body))
        self.assertEqual((limiter.accepted, limiter.rejected, limiter.tokens_charged), (3, 1, 33))
        # Admitted at 0 and at 3: a full bucket plus half a limiter minute's refill.
        self.assertEqual((limiter.first_charge_at, limiter.last_charge_at), (0.0, 3.0))
        self.assertEqual(limiter.token_capacity(), 15_000)
        now[0] = 4.0
        self.assertIsNotNone(limiter.charge(body))  # refused: the span does not grow
        self.assertEqual(limiter.token_capacity(), 15_000)
        with FakeUpstream(rate_limits={"m": {"rpm": 1, "tpm": 100, "window": 2}}) as fake:
            self.assertEqual(fake.limiters["m"].window, 2)

    def test_a_short_bucket_holds_a_share_of_the_minute_and_reports_it(self):
        now = [0.0]
        limiter = RateLimiter("gpt-4o-mini", rpm=600, tpm=10_000, clock=lambda: now[0],
                              bucket=0.1)
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 399}
        self.assertIsNone(limiter.charge(body))
        self.assertIsNone(limiter.charge(body))
        headers = dict(limiter.headers())
        # The limit is per minute; remaining and reset speak of the 1000-token bucket.
        self.assertEqual(headers["x-ratelimit-limit-tokens"], "10000")
        self.assertEqual(headers["x-ratelimit-remaining-tokens"], "200")
        self.assertEqual(headers["x-ratelimit-reset-tokens"], "4.8s")
        self.assertEqual(headers["x-ratelimit-remaining-requests"], "58")
        refused = limiter.charge(body)
        self.assertEqual(refused.status, 429)
        self.assertIn("Please try again in 1.2s.", refused.body["error"]["message"])
        now[0] = 60.0  # a minute later the bucket is full: a tenth of the minute, no more
        self.assertEqual(dict(limiter.headers())["x-ratelimit-remaining-tokens"], "200")
        limiter._refill()
        self.assertEqual(dict(limiter.headers())["x-ratelimit-remaining-tokens"], "1000")
        self.assertEqual(limiter.token_capacity(), 1000)  # both admitted at 0: one bucket
        with self.assertRaises(ValueError):
            RateLimiter("m", rpm=1, tpm=1, bucket=0)

    def test_the_fake_charges_tokens_and_answers_429_with_headers(self):
        limits = {"gpt-4o-mini": {"rpm": 60, "tpm": 2000}}
        with FakeUpstream(rate_limits=limits) as fake:
            body = json.dumps({"model": "gpt-4o-mini", "max_tokens": 900,
                               "messages": [{"role": "user", "content": "hi"}]})
            answers = []
            for _ in range(3):
                conn = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
                conn.request("POST", "/v1/chat/completions", body,
                             {"Content-Type": "application/json"})
                resp = conn.getresponse()
                answers.append((resp.status, dict(resp.getheaders()), json.loads(resp.read())))
                conn.close()
            self.assertEqual([a[0] for a in answers], [200, 200, 429])
            self.assertEqual(answers[0][1]["x-ratelimit-limit-tokens"], "2000")
            # 2000 - 901, plus what refilled meanwhile (33 tokens a second).
            self.assertIn(int(answers[0][1]["x-ratelimit-remaining-tokens"]), range(1099, 1110))
            self.assertRegex(answers[2][2]["error"]["message"],
                             r"on tokens per min \(TPM\): Limit 2000, Used 1[78]\d\d, "
                             r"Requested 901\. Please try again in [\d.]+s\.")
            self.assertIn("x-ratelimit-reset-tokens", answers[2][1])
            # Another model has no limiter here: it is never refused.
            other = http.client.HTTPConnection("127.0.0.1", fake.port, timeout=5)
            other.request("POST", "/v1/chat/completions",
                          json.dumps({"model": "gpt-4o", "max_tokens": 99999}))
            self.assertEqual(other.getresponse().status, 200)


class FakeUpstreamCliTest(unittest.TestCase):
    def test_cli_and_control_api(self):
        proc = subprocess.Popen([sys.executable, os.path.join(HERE, "fake_upstream.py"), "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def stop():
            proc.terminate()
            proc.communicate(timeout=5)
        self.addCleanup(stop)
        port = json.loads(proc.stdout.readline())["port"]

        def call(method, path, body=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(method, path, body=None if body is None else json.dumps(body))
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            return resp.status, data

        status, data = call("POST", "/__fake/script", [{"status": 503}, {"status": 429}])
        self.assertEqual((status, json.loads(data)), (200, {"queued": 2}))
        self.assertEqual(call("POST", "/v1/chat/completions", {"model": "m"})[0], 503)
        self.assertEqual(call("GET", "/v1/models")[0], 429)
        status, data = call("GET", "/__fake/requests")
        recorded = json.loads(data)
        self.assertEqual([r["path"] for r in recorded], ["/v1/chat/completions", "/v1/models"])
        self.assertEqual(json.loads(recorded[0]["body"]), {"model": "m"})
        self.assertEqual(json.loads(call("GET", "/__fake/stats")[1])["requests"], 2)
        call("POST", "/__fake/reset")
        self.assertEqual(json.loads(call("GET", "/__fake/requests")[1]), [])
        self.assertEqual(call("POST", "/__fake/script", [{"bogus": 1}])[0], 400)


if __name__ == "__main__":
    unittest.main()
