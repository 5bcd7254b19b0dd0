"""Pass-through and streaming through the real bulwark binary.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_passthrough
"""

import base64
import hashlib
import json
import random
import threading
import time
import unittest

from harness import (Bulwark, FakeUpstream, RawConnection, chat_chunk, chat_completion,
                     http_request, openai_error, raw_request)
from harness import CHAT_PATH  # shared helpers

MiB = 1024 * 1024
CHAT_BODY = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
# Hop-by-hop request headers that must not reach the upstream (Connection itself may be
# Bulwark's own, so it is checked separately).
HOP_BY_HOP = ("keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection")


def sse_bytes(events: list, done: bool = True) -> bytes:
    out = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def stream_request(path: str = CHAT_PATH) -> bytes:
    body = json.dumps({"model": "gpt-4o-mini", "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})
    return raw_request("POST", path, body, headers=[("Content-Type", "application/json"),
                                                    ("Authorization", "Bearer sk-client")])


def send_quietly(conn: RawConnection, data: bytes) -> None:
    """Send from another thread; the server may close mid-way (that is the point)."""
    try:
        conn.sock.sendall(data)
    except OSError:
        pass


class PassThroughTest(unittest.TestCase):
    """One bulwark (1 worker, header_timeout 1s) in front of one fake, shared by the tests."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeUpstream().start()
        cls.addClassCleanup(cls.fake.stop)
        cls.decoy = FakeUpstream().start()  # somewhere Bulwark must never be steered to
        cls.addClassCleanup(cls.decoy.stop)
        cls.bulwark = Bulwark([cls.fake], {"server": {"header_timeout": "1s"}}).start()
        cls.addClassCleanup(cls.bulwark.stop)
        cls.port = cls.bulwark.port

    def setUp(self):
        self.assertTrue(self.bulwark.alive(), f"bulwark died\n{self.bulwark.output()}")
        self.fake.reset()
        self.decoy.reset()

    def assert_decoy_untouched(self):
        self.assertEqual(self.decoy.connections_accepted, 0, "bulwark connected to the decoy")
        self.assertEqual(self.decoy.requests, [])

    # -- plain requests

    def test_chat_completion_passes_through_unchanged(self):
        upstream_body = json.dumps(chat_completion("Hi there!", id="chatcmpl-passthrough"))
        self.fake.push({"body": upstream_body, "headers": [
            ("x-request-id", "req_7f3a9c"), ("openai-processing-ms", "123"),
            ("openai-version", "2020-10-01"), ("x-ratelimit-remaining-requests", "4999"),
            ("x-ratelimit-reset-tokens", "6m0s")]})
        # Odd spacing and a non-ASCII escape: the body must arrive byte for byte.
        body = (b'{"model": "gpt-4o-mini",\n  "messages": [{"role": "user", '
                b'"content": "Say hi \\u00e9"}],   "temperature": 0.2}')
        target = CHAT_PATH + "?api-version=2024-06-01&tag=a%20b"
        resp = http_request(self.port, "POST", target, body, headers={
            "Authorization": "Bearer sk-client-key", "Content-Type": "application/json",
            "OpenAI-Organization": "org-test", "X-Stainless-Lang": "python"})

        self.assertEqual(resp.status, 200, resp.body[:500])
        self.assertEqual(resp.body, upstream_body.encode())
        self.assertEqual(resp.header("x-request-id"), "req_7f3a9c")
        self.assertEqual(resp.header("openai-processing-ms"), "123")
        self.assertEqual(resp.header("openai-version"), "2020-10-01")
        self.assertEqual(resp.header("x-ratelimit-remaining-requests"), "4999")
        self.assertEqual(resp.header("x-ratelimit-reset-tokens"), "6m0s")
        self.assertEqual(resp.header("content-type"), "application/json")
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake0")
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")

        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual(req.method, "POST")
        self.assertEqual(req.target, target)
        self.assertEqual(req.body, body)
        self.assertEqual(req.header_all("authorization"), ["Bearer sk-client-key"])
        self.assertEqual(req.header("openai-organization"), "org-test")
        self.assertEqual(req.header("x-stainless-lang"), "python")
        self.assertEqual(req.header("content-type"), "application/json")

    def test_upstream_error_passes_through_without_retry(self):
        error = openai_error("The model `gpt-9` does not exist", "invalid_request_error",
                             "model_not_found", "model")
        self.fake.push({"status": 404, "body": error, "headers": [("x-request-id", "req_404")]})
        resp = http_request(self.port, "POST", CHAT_PATH, CHAT_BODY,
                            headers={"Authorization": "Bearer sk-client"})
        self.assertEqual(resp.status, 404)
        self.assertEqual(resp.json(), error)
        self.assertEqual(resp.header("x-request-id"), "req_404")
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        self.assertEqual(len(self.fake.requests), 1)

    def test_get_models(self):
        resp = http_request(self.port, "GET", "/v1/models",
                            headers={"Authorization": "Bearer sk-client"})
        self.assertEqual(resp.status, 200, resp.body[:500])
        self.assertEqual(resp.json()["object"], "list")
        self.assertIn("gpt-4o-mini", [m["id"] for m in resp.json()["data"]])
        self.assertEqual(resp.header("x-request-id"), "req_1")  # the fake's default id
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual((req.method, req.target, req.body), ("GET", "/v1/models", b""))
        self.assertEqual(req.header("authorization"), "Bearer sk-client")
        self.assertIsNone(req.header("transfer-encoding"))

    def test_large_embeddings_body_arrives_intact(self):
        text = base64.b64encode(random.Random(7).randbytes(1_500_000)).decode()
        body = json.dumps({"model": "text-embedding-3-small", "input": text}).encode()
        self.assertGreater(len(body), 2_000_000)
        resp = http_request(self.port, "POST", "/v1/embeddings", body,
                            headers={"Authorization": "Bearer sk-client"}, timeout=30)
        self.assertEqual(resp.status, 200, resp.body[:500])
        self.assertEqual(resp.json()["object"], "list")
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual(len(req.body), len(body))
        self.assertEqual(hashlib.sha256(req.body).hexdigest(), hashlib.sha256(body).hexdigest())

    def test_chunked_request_body_arrives_intact(self):
        body = json.dumps({"model": "text-embedding-3-small", "input": "z" * 200_000}).encode()
        pieces = [body[i:i + 30_000] for i in range(0, len(body), 30_000)]
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
        with RawConnection(self.port) as conn:
            conn.send(raw_request("POST", "/v1/embeddings", headers=[
                ("Transfer-Encoding", "chunked"), ("Content-Type", "application/json")]))
            conn.send(chunked)
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:500])
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual(req.body, body)

    # -- streaming

    def test_sse_chunks_reach_client_as_the_upstream_sends_them(self):
        events = [chat_chunk("Hel", role="assistant"), chat_chunk("lo"), chat_chunk(" world"),
                  chat_chunk(finish_reason="stop")]
        self.fake.push({"sse": events, "gap": 0.5})
        expected = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events]
        expected.append(b"data: [DONE]\n\n")

        received, seen_at = b"", []
        with RawConnection(self.port) as conn:
            conn.send(stream_request())
            resp = conn.read_head()
            self.assertEqual(resp.status, 200)
            self.assertTrue(resp.header("content-type", "").startswith("text/event-stream"))
            for at, data in conn.iter_body(resp, "POST"):
                received += data
                while len(seen_at) < len(expected) and \
                        b"".join(expected[:len(seen_at) + 1]) in received:
                    seen_at.append(at)
        self.assertTrue(resp.complete, "the stream did not end with its final chunk")
        self.assertEqual(received, b"".join(expected))

        (req,) = self.fake.requests
        sent_at = req.chunks_sent_at
        self.assertEqual(len(sent_at), len(expected))
        self.assertLess(seen_at[0], sent_at[1],
                        f"the first event reached the client {seen_at[0] - sent_at[0]:.3f} s after "
                        f"the upstream sent it, not before the second ({sent_at[1] - sent_at[0]:.3f} s)")
        for i, (seen, sent) in enumerate(zip(seen_at, sent_at)):
            self.assertLess(seen - sent, 0.25, f"event {i} was held back {seen - sent:.3f} s")

    def test_client_leaving_mid_stream_closes_the_upstream_connection(self):
        # Gaps longer than the deadline: Bulwark must see the client's EOF itself, not on its
        # next failed write.
        self.fake.push({"sse": [chat_chunk(f"t{i}") for i in range(20)], "gap": 3})
        conn = RawConnection(self.port)
        conn.send(stream_request())
        resp = conn.read_head()
        self.assertEqual(resp.status, 200)
        next(conn.iter_body(resp, "POST"))  # the first event arrived: the stream is live
        (req,) = self.fake.wait_for_requests(1)
        left_at = time.monotonic()
        conn.close()
        self.assertTrue(self.fake.wait_peer_closed(req, 1.0),
                        "the upstream stream was still open 1 s after the client left")
        self.assertLess(req.peer_closed_at - left_at, 1.0)

    def test_client_leaving_while_upstream_thinks_closes_the_upstream_connection(self):
        for action in ({"hang": True}, {"delay": 30}):
            with self.subTest(action=action):
                self.fake.reset()
                self.fake.push(action)
                conn = RawConnection(self.port)
                conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY,
                                      headers=[("Content-Type", "application/json")]))
                (req,) = self.fake.wait_for_requests(1)
                left_at = time.monotonic()
                conn.close()
                self.assertTrue(self.fake.wait_peer_closed(req, 1.0),
                                "the upstream request was still open 1 s after the client left")
                self.assertLess(req.peer_closed_at - left_at, 1.0)

    # -- headers

    def test_many_request_headers_all_arrive_in_order(self):
        # Fifty end-to-end headers (more than a typical request's few dozen), one with an
        # empty value: each reaches the upstream once, in the client's order.
        sent = [(f"X-Custom-{i:02d}", f"value-{i}" * (1 + i % 4)) for i in range(50)]
        sent[7] = ("X-Custom-07", "")
        with RawConnection(self.port) as conn:
            conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY, headers=[
                ("Content-Type", "application/json")] + sent))
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:500])
        (req,) = self.fake.wait_for_requests(1)
        got = [(k.lower(), v) for k, v in req.headers if k.lower().startswith("x-custom-")]
        self.assertEqual(got, [(k.lower(), v) for k, v in sent])
        self.assertEqual(req.body, CHAT_BODY)

    def test_hop_by_hop_headers_are_not_forwarded(self):
        self.fake.push({"body": chat_completion(), "headers": [
            ("Keep-Alive", "timeout=5"), ("Proxy-Foo", "x"), ("Proxy-Authenticate", "Basic"),
            ("X-Upstream-Kept", "1"), ("x-ratelimit-limit-requests", "5000")]})
        with RawConnection(self.port) as conn:
            conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY, host=None, headers=[
                ("Host", "client-chosen.example:1234"),
                ("Connection", "keep-alive, X-Secret-Hop"),
                ("Keep-Alive", "timeout=30"),
                ("TE", "trailers"),
                ("Trailer", "X-Checksum"),
                ("Upgrade", "h2c"),
                ("Proxy-Authorization", "Basic dXNlcjpwYXNz"),
                ("Proxy-Connection", "keep-alive"),
                ("X-Secret-Hop", "hop-only"),
                ("X-End-To-End", "kept"),
                ("Content-Type", "application/json"),
                ("Authorization", "Bearer sk-client")]))
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:500])

        (req,) = self.fake.wait_for_requests(1)
        names = req.header_names()
        for name in HOP_BY_HOP + ("x-secret-hop",):
            self.assertNotIn(name, names, f"{name} reached the upstream: {req.headers}")
        for value in req.header_all("connection"):  # Bulwark's own, if any; never the client's
            self.assertNotIn("x-secret-hop", value.lower())
        self.assertEqual(req.header_all("host"), [f"127.0.0.1:{self.fake.port}"])
        self.assertEqual(req.header("x-end-to-end"), "kept")
        self.assertEqual(req.header("authorization"), "Bearer sk-client")
        self.assertEqual(req.body, CHAT_BODY)

        self.assertIsNone(resp.header("keep-alive"), resp.headers)
        self.assertEqual([k for k, _ in resp.headers if k.lower().startswith("proxy-")], [])
        self.assertEqual(resp.header("x-upstream-kept"), "1")
        self.assertEqual(resp.header("x-ratelimit-limit-requests"), "5000")

    # -- no open proxy

    def test_absolute_form_target_cannot_redirect(self):
        for authority in ("evil.example", f"127.0.0.1:{self.decoy.port}"):
            with self.subTest(authority=authority):
                self.fake.reset()
                with RawConnection(self.port) as conn:
                    conn.send(raw_request("POST", f"http://{authority}{CHAT_PATH}", CHAT_BODY,
                                          host=authority,
                                          headers=[("Content-Type", "application/json")]))
                    resp = conn.read_response("POST")
                self.assert_decoy_untouched()
                if resp.status == 200:  # served from the configured upstream
                    (req,) = self.fake.wait_for_requests(1)
                    self.assertEqual(req.target, CHAT_PATH)
                    self.assertEqual(req.header_all("host"), [f"127.0.0.1:{self.fake.port}"])
                else:  # or refused; a 5xx would mean it tried to go elsewhere
                    self.assertTrue(400 <= resp.status < 500, f"{resp.status} {resp.body[:300]}")
                    self.assertEqual(self.fake.requests, [])

    def test_forged_host_header_cannot_redirect(self):
        with RawConnection(self.port) as conn:
            conn.send(raw_request("POST", CHAT_PATH, CHAT_BODY, host=f"127.0.0.1:{self.decoy.port}",
                                  headers=[("Content-Type", "application/json")]))
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:500])
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual(req.header_all("host"), [f"127.0.0.1:{self.fake.port}"])
        self.assert_decoy_untouched()

    def test_connect_is_refused(self):
        authority = f"127.0.0.1:{self.decoy.port}"
        with RawConnection(self.port) as conn:
            conn.send(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n")
            resp = conn.read_head()
        self.assertTrue(400 <= resp.status < 500, f"CONNECT answered {resp.status}")
        self.assert_decoy_untouched()
        self.assertEqual(self.fake.requests, [])

    # -- slow clients

    def test_slow_header_client_is_dropped(self):
        with RawConnection(self.port) as conn:
            conn.send(f"POST {CHAT_PATH} HTTP/1.1\r\nHost: bulwark.test\r\nContent-")
            started = time.monotonic()
            closed_at = conn.wait_closed(5.0)
        self.assertIsNotNone(closed_at, "a client stalled mid-head was still connected after 5 s")
        self.assertLess(closed_at - started, 3.0)
        self.assertGreater(closed_at - started, 0.5, "dropped before header_timeout (1s)")
        self.assertEqual(self.fake.requests, [])

    def test_trickling_header_client_is_dropped(self):
        # Slowloris: one byte every 200 ms keeps an idle timer happy, not a head deadline.
        head = f"POST {CHAT_PATH} HTTP/1.1\r\nHost: bulwark.test\r\nX-Padding: {'a' * 100}"
        started, closed_at = time.monotonic(), None
        with RawConnection(self.port) as conn:
            for byte in head.encode():
                if time.monotonic() - started > 5:
                    break
                try:
                    conn.send(bytes([byte]))
                except OSError:
                    closed_at = time.monotonic()
                    break
                closed_at = conn.wait_closed(0.2)
                if closed_at is not None:
                    break
        self.assertIsNotNone(closed_at, "a client trickling its head was never dropped")
        self.assertLess(closed_at - started, 3.0)

    # -- connection handling

    def test_keep_alive_serves_two_requests_on_one_connection(self):
        with RawConnection(self.port) as conn:
            for i in range(2):
                conn.send(raw_request("GET", f"/v1/models?i={i}"))
                resp = conn.read_response()
                self.assertEqual(resp.status, 200)
                self.assertEqual(resp.json()["object"], "list")
                self.assertFalse(conn.eof, "bulwark closed a keep-alive connection")
        self.assertEqual([r.target for r in self.fake.wait_for_requests(2)],
                         ["/v1/models?i=0", "/v1/models?i=1"])

    def test_pipelined_requests_are_answered_in_order(self):
        self.fake.script([{"echo": True}, {"echo": True}])
        with RawConnection(self.port) as conn:
            # One write; the first is slower upstream, yet must be answered first.
            conn.send(raw_request("GET", "/v1/models?n=1", headers=[("X-Fake-Delay", "0.3")]) +
                      raw_request("GET", "/v1/models?n=2"))
            first = conn.read_response()
            second = conn.read_response()
        self.assertEqual((first.status, second.status), (200, 200))
        self.assertEqual(first.json()["target"], "/v1/models?n=1")
        self.assertEqual(second.json()["target"], "/v1/models?n=2")

    def test_http10_request(self):
        with RawConnection(self.port) as conn:
            conn.send(b"GET /v1/models HTTP/1.0\r\nHost: bulwark.test\r\n\r\n")
            resp = conn.read_response()
            self.assertEqual(resp.status, 200)
            self.assertIn(resp.framing, ("length", "close"), "an HTTP/1.0 client got chunked")
            self.assertTrue(resp.complete)
            self.assertEqual(resp.json()["object"], "list")
            self.assertIsNotNone(conn.wait_closed(2.0), "HTTP/1.0 without keep-alive: must close")

    def test_upstream_connection_is_reused(self):
        # Its own, so its pool starts empty; one worker, one pool.
        with Bulwark([self.fake], workers=1) as bulwark:
            for _ in range(5):
                self.assertEqual(http_request(bulwark.port, "GET", "/v1/models").status, 200)
            requests = self.fake.wait_for_requests(5)
        self.assertEqual(len({r.conn_id for r in requests}), 1,
                         "5 sequential requests used several upstream connections")
        self.assertEqual(self.fake.connections_accepted, 1)


class ApiKeyTest(unittest.TestCase):
    def test_configured_api_key_and_headers_replace_the_clients(self):
        with FakeUpstream() as fake, Bulwark([{
                "fake": fake, "name": "primary", "api_key": "sk-upstream",
                "headers": {"OpenAI-Organization": "org-from-config"}}]) as bulwark:
            resp = http_request(bulwark.port, "POST", CHAT_PATH, CHAT_BODY,
                                headers={"Authorization": "Bearer sk-client"})
            self.assertEqual(resp.status, 200, resp.body[:500])
            self.assertEqual(resp.header("x-bulwark-upstream"), "primary")
            (req,) = fake.wait_for_requests(1)
        self.assertEqual(req.header_all("authorization"), ["Bearer sk-upstream"])
        self.assertEqual(req.header("openai-organization"), "org-from-config")
        self.assertEqual(req.body, CHAT_BODY)


class RequestSizeLimitTest(unittest.TestCase):
    """server.max_request_body: 1MiB -> 413 request_too_large, nothing sent upstream."""

    @classmethod
    def setUpClass(cls):
        cls.fake = FakeUpstream().start()
        cls.addClassCleanup(cls.fake.stop)
        cls.bulwark = Bulwark([cls.fake], {"server": {"max_request_body": "1MiB"}}).start()
        cls.addClassCleanup(cls.bulwark.stop)

    def setUp(self):
        self.fake.reset()

    def send_oversized(self, head: bytes, payload: bytes):
        with RawConnection(self.bulwark.port) as conn:
            conn.send(head)
            sender = threading.Thread(target=send_quietly, args=(conn, payload), daemon=True)
            sender.start()
            resp = conn.read_response("POST")
        sender.join(10)
        return resp

    def assert_rejected_and_nothing_forwarded(self, resp):
        self.assertEqual(resp.status, 413, resp.body[:300])
        self.assertTrue(resp.header("content-type", "").startswith("application/json"))
        error = resp.json()
        self.assertEqual(set(error), {"error"})
        self.assertIsInstance(error["error"].get("message"), str)
        self.assertEqual({k: v for k, v in error["error"].items() if k != "message"},
                         {"type": "bulwark_error", "param": None, "code": "request_too_large"})
        # A fence: a small request after it must be the first thing the upstream sees.
        self.assertEqual(http_request(self.bulwark.port, "GET", "/v1/models").status, 200)
        self.fake.wait_for_requests(1)
        self.assertEqual([r.target for r in self.fake.requests], ["/v1/models"])

    def test_content_length_over_limit(self):
        body = b"x" * (2 * MiB)
        resp = self.send_oversized(raw_request("POST", "/v1/embeddings", headers=[
            ("Content-Type", "application/json"), ("Content-Length", str(len(body)))]), body)
        self.assert_rejected_and_nothing_forwarded(resp)

    def test_chunked_body_over_limit(self):
        chunk = b"y" * 65536
        payload = b"%x\r\n%s\r\n" % (len(chunk), chunk) * 32 + b"0\r\n\r\n"  # 2 MiB
        resp = self.send_oversized(raw_request("POST", "/v1/embeddings", headers=[
            ("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")]), payload)
        self.assert_rejected_and_nothing_forwarded(resp)

    def test_body_under_limit_is_forwarded(self):
        body = json.dumps({"model": "text-embedding-3-small", "input": "w" * 900_000}).encode()
        resp = http_request(self.bulwark.port, "POST", "/v1/embeddings", body)
        self.assertEqual(resp.status, 200, resp.body[:300])
        (req,) = self.fake.wait_for_requests(1)
        self.assertEqual(req.body, body)


if __name__ == "__main__":
    unittest.main()
