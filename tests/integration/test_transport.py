"""The path production takes, as a user would notice it: compressed bodies, egress proxies,
cancellation that reaches the upstream at once, backpressure that holds, multiplexing that
really happens, and early errors (413) that reach every client.

Runs on both test transports (BULWARK_TEST_TRANSPORT=plain | h2); where the two differ (h2
streams, connection sharing) the test says so. Fakes here compress whenever the client
accepts it, also on the plain transport.

Run from tests/integration with PYTHONPATH=tests: python3 -m unittest -v test_transport
"""

from __future__ import annotations

import base64
import json
import math
import os
import shutil
import socket
import subprocess
import threading
import time
import unittest

from connect_proxy import ConnectProxy
from harness import (TESTS_DIR, TRANSPORT, Bulwark, FakeUpstream, RawConnection, chat_chunk,
                     http_request, openai_error, raw_request, test_pki)
from harness import CHAT_PATH, assert_openai_error, rss_kib, scrape, wait_until

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
STREAM = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
SANITIZED = os.environ.get("BULWARK_SANITIZED") == "1"  # ASan's allocator inflates RSS
FAST = {"retry": {"base_delay": "10ms", "max_delay": "10ms", "jitter": "none"}}


def post(port: int, body: dict, headers: list | None = None, timeout: float = 10.0):
    return http_request(port, "POST", CHAT_PATH, body, headers=headers, timeout=timeout)


def tokens(bulwark: Bulwark, kind: str) -> float:
    return scrape(bulwark).value("bulwark_tokens_total", kind=kind)


class CompressionTest(unittest.TestCase):
    """Bulwark reads every body it classifies or taps decoded, and the client gets identity
    bytes whatever the upstream's coding."""

    def setUp(self):
        self.fake = FakeUpstream(compress=True).start()
        self.addCleanup(self.fake.stop)
        self.bulwark = Bulwark([self.fake], FAST).start()
        self.addCleanup(self.bulwark.stop)

    def test_a_compressed_insufficient_quota_429_is_not_retried(self):
        self.fake.script([{"status": 429, "body": openai_error(
            "You exceeded your current quota", "insufficient_quota", "insufficient_quota")},
            {"body": {"unexpected": "retry"}}])
        result = post(self.bulwark.port, CHAT, headers=[("Accept-Encoding", "gzip")])
        self.assertEqual(result.status, 429)
        self.assertEqual(result.header("x-bulwark-attempts"), "1")
        self.assertEqual(result.json()["error"]["code"], "insufficient_quota")
        self.assertIsNone(result.header("content-encoding"))
        request, = self.fake.requests
        self.assertIn(request.encoding, ("gzip", "br"), "the upstream did not compress")
        self.assertIn("gzip", request.header("accept-encoding", ""))

    def test_tokens_are_counted_from_compressed_json(self):
        result = post(self.bulwark.port, CHAT)
        self.assertEqual(result.status, 200)
        self.assertEqual(result.json()["usage"]["prompt_tokens"], 9)
        self.assertIn(self.fake.requests[0].encoding, ("gzip", "br"))
        wait_until(lambda: tokens(self.bulwark, "prompt") == 9, 2.0, what="prompt tokens")
        self.assertEqual(tokens(self.bulwark, "completion"), 7)

    def test_event_streams_are_asked_for_uncompressed(self):
        result = post(self.bulwark.port, STREAM, headers=[("Accept-Encoding", "gzip")])
        self.assertEqual(result.status, 200)
        request, = self.fake.requests
        self.assertEqual(request.header("accept-encoding"), "identity")
        self.assertIsNone(request.encoding)
        self.assertIn(b'"prompt_tokens": 9', result.body)

    def test_tokens_are_counted_from_a_compressed_stream(self):
        # An upstream that compresses a stream although it was asked not to.
        usage = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
        self.fake.push({"sse": [chat_chunk("hi"), chat_chunk(usage=usage)], "encode": "gzip"})
        result = post(self.bulwark.port, STREAM)
        self.assertEqual(result.status, 200)
        self.assertIsNone(result.header("content-encoding"))
        self.assertIn(b'"prompt_tokens": 11', result.body)
        self.assertTrue(result.body.endswith(b"data: [DONE]\n\n"))
        self.assertEqual(self.fake.requests[0].encoding, "gzip")
        wait_until(lambda: tokens(self.bulwark, "completion") == 5, 2.0,
                   what="completion tokens")

    def test_a_compressed_first_event_error_is_retried(self):
        self.fake.script([{"sse": [{"error": {"message": "overloaded", "type": "server_error"}}],
                           "encode": "gzip"},
                          {"sse": [chat_chunk("fine")], "encode": "br"}])
        result = post(self.bulwark.port, STREAM)
        self.assertEqual(result.status, 200)
        self.assertEqual(result.header("x-bulwark-attempts"), "2")
        self.assertIn(b'"fine"', result.body)
        self.assertEqual(self.fake.requests[0].encoding, "gzip")


class EgressProxyTest(unittest.TestCase):
    """Through a real forward proxy (CONNECT for https, absolute-form for http), statuses,
    retries and streams are the upstream's, never the proxy's."""

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.proxy = ConnectProxy().start()
        self.addCleanup(self.proxy.stop)

    def check_through_proxy(self, bulwark: Bulwark) -> None:
        self.fake.script([{"status": 503}] * 3)
        result = post(bulwark.port, CHAT)
        self.assertEqual(result.status, 503, "the proxy's 200 was taken for the answer")
        self.assertEqual(result.header("x-bulwark-attempts"), "3")
        self.assertEqual(len(self.fake.requests), 3)
        stream = post(bulwark.port, STREAM)
        self.assertEqual(stream.status, 200)
        self.assertTrue(stream.body.endswith(b"data: [DONE]\n\n"))
        self.assertIn(f"127.0.0.1:{self.fake.port}", self.proxy.targets)
        if self.fake.scheme == "https":
            self.assertGreater(self.proxy.connects, 0)

    def test_upstream_proxy_key(self):
        with Bulwark([{"name": "openai", "fake": self.fake, "proxy": self.proxy.url}],
                     FAST) as bulwark:
            self.check_through_proxy(bulwark)

    def test_environment_proxy(self):
        variable = "https_proxy" if self.fake.scheme == "https" else "http_proxy"
        with Bulwark([self.fake], FAST, env={variable: self.proxy.url, "no_proxy": "",
                                             "NO_PROXY": ""}) as bulwark:
            self.check_through_proxy(bulwark)


class CancellationTest(unittest.TestCase):
    """A client that leaves makes the upstream see its stream reset (h2) or its connection
    close (HTTP/1.1) within 100 ms: while the upstream thinks, mid-stream, and after a
    timeout, on an h2 connection that stays open for the other streams."""

    LIMIT = 0.1

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)

    def leave_and_measure(self, conn: RawConnection, request) -> float:
        left = time.monotonic()
        conn.close()
        self.assertTrue(self.fake.wait_peer_closed(request, timeout=5),
                        "the upstream never learned that the client left")
        return request.peer_closed_at - left

    def test_leaving_while_the_upstream_thinks_resets_only_that_stream(self):
        # One worker, so that the three requests share its connection.
        with Bulwark([self.fake], workers=1) as bulwark:
            self.assertEqual(post(bulwark.port, CHAT).status, 200)  # a warm connection
            self.fake.script([{"delay": 2.0}, {"hang": True}])
            sibling_result = {}
            sibling = threading.Thread(target=lambda: sibling_result.update(
                r=post(bulwark.port, CHAT)))
            sibling.start()
            self.fake.wait_for_requests(2, complete=False)
            with RawConnection(bulwark.port) as conn:
                conn.send(raw_request("POST", CHAT_PATH, json.dumps(CHAT),
                                      headers=[("Content-Type", "application/json")]))
                leaving, = self.fake.wait_for_requests(3, complete=False)[2:]
                seconds = self.leave_and_measure(conn, leaving)
            print(f"\ncancellation while the upstream thinks: {seconds * 1000:.1f} ms")
            self.assertLess(seconds, self.LIMIT)
            sibling.join(10)
            self.assertEqual(sibling_result["r"].status, 200, "the other stream was hurt")
            warm, other, _ = self.fake.requests
            if TRANSPORT == "h2":
                # All three shared one connection, which stayed open for the others.
                self.assertEqual({warm.conn_id, other.conn_id, leaving.conn_id},
                                 {warm.conn_id})
                self.assertIsNone(other.peer_closed_at)
                self.assertEqual(leaving.http_version, "HTTP/2")

    def test_leaving_mid_stream_stops_the_upstream(self):
        with Bulwark([self.fake]) as bulwark:
            self.fake.push({"sse": [chat_chunk(f"token {i}") for i in range(50)], "gap": 0.1})
            with RawConnection(bulwark.port) as conn:
                conn.send(raw_request("POST", CHAT_PATH, json.dumps(STREAM),
                                      headers=[("Content-Type", "application/json")]))
                head = conn.read_head()
                self.assertEqual(head.status, 200)
                next(conn.iter_body(head, "POST"))  # the first chunk
                request, = self.fake.requests
                seconds = self.leave_and_measure(conn, request)
            print(f"\ncancellation mid-stream: {seconds * 1000:.1f} ms")
            self.assertLess(seconds, self.LIMIT)
            self.assertLess(len(request.chunks_sent_at), 10)

    def test_a_first_byte_timeout_resets_the_stream_at_once(self):
        with Bulwark([self.fake], {"timeouts": {"first_byte": "300ms"},
                                   "retry": {"max_attempts": 1}}) as bulwark:
            self.fake.push({"hang": True})
            started = time.monotonic()
            result = post(bulwark.port, CHAT)
            answered = time.monotonic()
            self.assertEqual(result.status, 502)
            request, = self.fake.requests
            self.assertTrue(self.fake.wait_peer_closed(request, timeout=5))
            self.assertLess(request.peer_closed_at - answered, self.LIMIT)
            self.assertGreater(answered - started, 0.25)

    def test_leaving_during_a_backoff_wait_sends_nothing_more(self):
        with Bulwark([self.fake], {"retry": {"base_delay": "2s", "max_delay": "2s",
                                             "jitter": "none"}}) as bulwark:
            self.fake.script([{"status": 503}, {"body": {"too": "late"}}])
            with RawConnection(bulwark.port) as conn:
                conn.send(raw_request("POST", CHAT_PATH, json.dumps(CHAT),
                                      headers=[("Content-Type", "application/json")]))
                self.fake.wait_for_requests(1)
                wait_until(lambda: any(e.get("delay_ms") for e in bulwark.logs), 2.0,
                           what="the retry's wait")
            wait_until(lambda: any(e.get("client_left") for e in bulwark.logs), 2.0,
                       what="the access line of the client that left")
            self.assertEqual(len(self.fake.requests), 1)
            self.assertEqual(self.fake.queued, 1, "a retry was sent for a client that left")


class Http2BackpressureTest(unittest.TestCase):
    """One client reads a fast 8 MiB stream at 20 KB/s while other requests flow: Bulwark
    grows by at most 1 MiB and the others do not stall."""

    def test_a_slow_stream_reader_costs_little_and_blocks_nobody(self):
        noise = base64.b64encode(os.urandom(64 * 1024)).decode()
        events = [f"{i:06d}" + noise[:64 * 1024 - 6] for i in range(128)]  # 8 MiB

        def respond(request):
            return {"sse": events} if b'"stream": true' in request.body else None

        with FakeUpstream(responder=respond) as fake, Bulwark([fake]) as bulwark:
            for _ in range(4):  # warm: connections, allocator
                self.assertEqual(post(bulwark.port, CHAT).status, 200)
            # One full-speed read of the same stream first: the allocator keeps the pages that
            # stream's buffers touched (mimalloc keeps them where glibc hands large chunks
            # back at once), and that is not what the slow reader costs.
            warm = post(bulwark.port, {**CHAT, "stream": True}, timeout=30)
            self.assertEqual((warm.status, len(warm.body) > 8 * 1024 * 1024), (200, True))
            baseline = rss_kib(bulwark.proc.pid)
            with RawConnection(bulwark.port, timeout=30) as slow:
                slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
                slow.send(raw_request("POST", CHAT_PATH, json.dumps({**CHAT, "stream": True}),
                                      headers=[("Content-Type", "application/json")]))
                latencies, peak = [], baseline
                read, started = 0, time.monotonic()
                while time.monotonic() - started < 5.0:
                    # 20 KB/s: 2 KB every 100 ms, with an ordinary request in between.
                    slow.sock.settimeout(5)
                    read += len(slow.sock.recv(2048))
                    t = time.monotonic()
                    self.assertEqual(post(bulwark.port, CHAT).status, 200)
                    latencies.append(time.monotonic() - t)
                    peak = max(peak, rss_kib(bulwark.proc.pid))
                    time.sleep(max(0.0, 0.1 - (time.monotonic() - t)))  # the reader's pace
            grown = peak - baseline
            # (What the kernel's loopback socket buffers absorb, several MiB, is not Bulwark's
            # memory: RSS is what is measured.)
            print(f"\nslow reader: read {read} B in 5 s, RSS +{grown} KiB, others' worst "
                  f"latency {max(latencies) * 1000:.0f} ms over {len(latencies)} requests")
            self.assertLess(read, 200 * 1024)
            self.assertLess(max(latencies), 1.0, "other requests stalled")
            if not SANITIZED:
                self.assertLessEqual(grown, 1024, f"RSS grew by {grown} KiB")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class MultiplexedSlowReaderTest(unittest.TestCase):
    """A client that stops reading a large JSON answer (embeddings over h2) holds only its own
    stream: the requests that share its connection still flow, and the worker does not spin."""

    def test_a_stalled_json_reader_does_not_stall_its_connection(self):
        noise = base64.b64encode(os.urandom(3 * 1024 * 1024)).decode()
        big = {"object": "list", "data": [{"object": "embedding", "index": 0,
                                           "embedding": noise}], "usage": {"prompt_tokens": 1}}

        def respond(request):
            return {"body": big} if request.path.endswith("/embeddings") else None

        with FakeUpstream(responder=respond) as fake, Bulwark([fake], workers=1) as bulwark:
            self.assertEqual(post(bulwark.port, CHAT).status, 200)  # warm
            with RawConnection(bulwark.port, timeout=30) as stalled:
                stalled.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
                stalled.send(raw_request("POST", "/v1/embeddings",
                                         json.dumps({"model": "e", "input": "x"}),
                                         headers=[("Content-Type", "application/json")]))
                self.assertEqual(stalled.read_head().status, 200)
                cpu_before, started = cpu_seconds(bulwark.proc.pid), time.monotonic()
                latencies = []
                for _ in range(20):
                    t = time.monotonic()
                    self.assertEqual(post(bulwark.port, CHAT, timeout=5).status, 200)
                    latencies.append(time.monotonic() - t)
                time.sleep(1.0)  # idle, apart from the stalled reader: the worker must rest
                busy = (cpu_seconds(bulwark.proc.pid) - cpu_before) / (time.monotonic() - started)
            conns = {r.conn_id for r in fake.requests}
            print(f"\nstalled JSON reader: others' worst latency {max(latencies) * 1000:.0f} ms, "
                  f"worker busy {busy * 100:.0f} %, {len(conns)} upstream connection(s)")
            self.assertLess(max(latencies), 1.0, "requests sharing the connection stalled")
            self.assertLess(busy, 0.5, "the worker spun while a stream was paused")


@unittest.skipIf(TRANSPORT != "h2", "multiplexing needs the h2 transport")
class MultiplexingTest(unittest.TestCase):
    """A cold burst shares connections instead of opening one TLS connection per request."""

    def test_a_burst_of_300_requests_uses_few_connections(self):
        with FakeUpstream(max_streams=100) as fake, Bulwark([fake]) as bulwark:
            workers = bulwark.config["server"]["workers"]
            fake.responder = lambda request: {"delay": 0.5}
            results = []
            lock = threading.Lock()

            def one():
                r = post(bulwark.port, CHAT, timeout=30)
                with lock:
                    results.append(r.status)

            threads = [threading.Thread(target=one) for _ in range(300)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            self.assertEqual(results, [200] * 300)
            limit = (math.ceil(300 / 100) + 1) * workers  # connection pools are per worker
            print(f"\nburst of 300: {fake.connections_accepted} upstream connections")
            self.assertLessEqual(fake.connections_accepted, limit)


class Http1OverTlsTest(unittest.TestCase):
    """An https upstream that offers only HTTP/1.1 (an OpenAI-compatible server, say) gets
    as many connections as requests in flight: nothing queues behind the h2 lane's cap."""

    def test_concurrent_requests_do_not_queue(self):
        pki = test_pki()
        with FakeUpstream(tls_cert=pki["cert"], tls_key=pki["key"]) as fake, \
                Bulwark([fake], workers=1) as bulwark:
            self.assertEqual(post(bulwark.port, CHAT).status, 200)  # its first answer
            self.assertEqual(fake.requests[0].http_version, "HTTP/1.1")
            fake.responder = lambda request: {"delay": 1.0}
            results = []
            threads = [threading.Thread(target=lambda: results.append(post(bulwark.port, CHAT)))
                       for _ in range(12)]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            elapsed = time.monotonic() - started
            self.assertEqual([r.status for r in results], [200] * 12)
            self.assertLess(elapsed, 1.9, "requests waited for each other's connections")


class StreamMemoryTest(unittest.TestCase):
    """Memory per concurrent stream, measured by holding 300 streams open. Event streams go
    over HTTP/1.1, one connection each; over TLS each costs libcurl 7.88 an OpenSSL context
    and session of its own (about 60 KiB more than plain), so the bound is per transport."""

    STREAMS = 300
    LIMIT_KIB = {"plain": 30.0, "h2": 90.0}

    def test_300_concurrent_streams_stay_within_their_memory_bound(self):
        with FakeUpstream() as fake, Bulwark([fake]) as bulwark:
            fake.responder = lambda request: (
                {"sse": [chat_chunk("first"), chat_chunk("last")], "gap": 30}
                if b'"stream"' in request.body else None)
            self.assertEqual(post(bulwark.port, CHAT).status, 200)  # warm
            baseline = rss_kib(bulwark.proc.pid)
            conns = []
            try:
                for _ in range(self.STREAMS):
                    conn = RawConnection(bulwark.port, timeout=30)
                    conn.send(raw_request("POST", CHAT_PATH, json.dumps(STREAM),
                                          headers=[("Content-Type", "application/json")]))
                    conns.append(conn)
                for conn in conns:
                    head = conn.read_head()
                    self.assertEqual(head.status, 200)
                    next(conn.iter_body(head, "POST"))
                grown = rss_kib(bulwark.proc.pid) - baseline
            finally:
                for conn in conns:
                    conn.close()
            per_stream = grown / self.STREAMS
            print(f"\n{self.STREAMS} concurrent streams: {per_stream:.1f} KiB each "
                  f"({TRANSPORT} transport)")
            if not SANITIZED:
                self.assertLessEqual(per_stream, self.LIMIT_KIB[TRANSPORT])


class EarlyErrorTest(unittest.TestCase):
    """An answer given before the body is read (413) reaches the client: the SDK, which sends
    no Expect, reads it; curl, which sends Expect: 100-continue, gets it before uploading."""

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.bulwark = Bulwark([self.fake], {"server": {"max_request_body": "1MiB"}}).start()
        self.addCleanup(self.bulwark.stop)

    def test_the_sdk_reads_the_413_of_a_40_mib_body(self):
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed")
        e2e = TESTS_DIR / "e2e"
        proc = subprocess.run([node, "large_body.mjs"], cwd=e2e, capture_output=True,
                              text=True, timeout=120,
                              env={**os.environ, "BASE_URL": self.bulwark.openai_base_url,
                                   "BODY_MIB": "40"})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        self.assertTrue(lines, proc.stderr)
        summary = json.loads(lines[-1])
        self.assertTrue(summary["ok"], summary)
        self.assertEqual(self.fake.requests, [])

    def test_curl_with_expect_gets_the_413_before_sending(self):
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is not installed")
        body = TESTS_DIR / "integration" / "__big_body.bin"
        body.write_bytes(b"a" * (8 * 1024 * 1024))
        self.addCleanup(body.unlink)
        proc = subprocess.run(
            [curl, "-sS", "-o", "-", "-w", "\n%{http_code} %{size_upload}",
             "-H", "Content-Type: application/json", "-H", "Expect: 100-continue",
             "--data-binary", f"@{body}", f"{self.bulwark.base_url}{CHAT_PATH}"],
            capture_output=True, text=True, timeout=30)
        *response, status_line = proc.stdout.splitlines()
        code, uploaded = status_line.split()
        self.assertEqual(code, "413", proc.stdout + proc.stderr)
        self.assertEqual(json.loads("".join(response))["error"]["code"], "request_too_large")
        self.assertLess(float(uploaded), 1024 * 1024, "curl uploaded the body anyway")

    def test_a_client_that_sends_anyway_still_reads_the_413(self):
        with RawConnection(self.bulwark.port, timeout=30) as conn:
            size = 16 * 1024 * 1024
            conn.send(f"POST {CHAT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      f"\r\nContent-Length: {size}\r\n\r\n")
            chunk = b"a" * 65536
            sent = 0
            try:
                while sent < size:
                    conn.sock.sendall(chunk)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError) as error:
                self.fail(f"the connection broke after {sent} bytes: {error}")
            resp = conn.read_response("POST")
        assert_openai_error(self, resp, 413, "request_too_large")


if __name__ == "__main__":
    unittest.main()
