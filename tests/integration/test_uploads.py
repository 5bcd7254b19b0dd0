"""Uploads of any size: bodies over server.retry_body_limit stream through with bounded memory.

A body up to the limit is held whole and retried as before. A larger one (by Content-Length,
or a chunked one once it grows past the limit) goes to the upstream as it arrives, through a
fixed window; it is sent again only if the upstream consumed none of it. Runs on both test
transports: a streamed upload always takes HTTP/1.1 (over TLS on the h2 transport).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import TESTS_DIR, TRANSPORT, Bulwark, FakeUpstream, RawConnection, closed_port
from harness import (SANITIZED, assert_openai_error, counter_deltas, rss_kib, scrape,
                       wait_until)

MIB = 1024 * 1024
# The full size runs everywhere but under the sanitizers, where it only measures ASan.
UPLOAD_MIB = 32 if SANITIZED else 300
FILES_PATH = "/v1/files"
FILE_OBJECT = {"id": "file-upload-1", "object": "file", "bytes": 0, "created_at": 1700000000,
               "filename": "train.jsonl", "purpose": "fine-tune", "status": "uploaded"}
CONFIG = {
    "timeouts": {"connect": "2s", "first_byte": "30s", "idle": "10s", "total": "120s"},
    "retry": {"max_attempts": 3, "base_delay": "10ms", "max_delay": "10ms", "jitter": "none",
              "budget": {"ratio": 1.0, "min_per_second": 1000}},
}


def make_file(directory: str, mib: int) -> tuple[Path, str]:
    """A file of `mib` MiB of random bytes, and its sha256."""
    path = Path(directory) / f"upload-{mib}.bin"
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with open(path, "wb") as f:
        for i in range(mib):
            # Every MiB differs (its index is in it), so a reordered or repeated block shows.
            chunk = i.to_bytes(8, "big") + block[8:]
            f.write(chunk)
            digest.update(chunk)
    return path, digest.hexdigest()


def multipart_file_part(body: bytes, content_type: str) -> bytes:
    """The content of the (only) file part of a multipart/form-data body."""
    boundary = content_type.split("boundary=", 1)[1].strip().strip('"').encode()
    start = body.index(b"\r\n\r\n", body.index(b'name="file"')) + 4
    end = body.rindex(b"\r\n--" + boundary)
    return body[start:end]


class RssSampler:
    """Samples a process's resident memory every 10 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.baseline = rss_kib(pid)
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_kib(self.pid))
        return self.peak - self.baseline


def warm_up(bulwark: Bulwark, fake: FakeUpstream) -> None:
    """One small upload, so the connection pools and allocator arenas exist before measuring."""
    with RawConnection(bulwark.port, timeout=10) as conn:
        body = b"w" * (2 * MIB)
        conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/"
                  f"octet-stream\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
        assert conn.read_response("POST").status == 200


class StreamedUploadTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="bulwark-uploads-")
        cls.file, cls.sha256 = make_file(cls.tmp, UPLOAD_MIB)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def start(self, config: dict | None = None) -> tuple[FakeUpstream, Bulwark]:
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        bulwark = Bulwark([fake], {**CONFIG, **(config or {})}).start()
        self.addCleanup(bulwark.stop)
        return fake, bulwark

    def assert_received_whole(self, fake: FakeUpstream, request) -> None:
        part = multipart_file_part(request.body, request.header("content-type"))
        self.assertEqual(len(part), UPLOAD_MIB * MIB)
        self.assertEqual(hashlib.sha256(part).hexdigest(), self.sha256,
                         "the upstream did not get the file byte for byte")

    def test_curl_multipart_upload_streams_byte_for_byte_in_bounded_memory(self):
        curl = shutil.which("curl")
        self.assertIsNotNone(curl, "curl is not installed")
        fake, bulwark = self.start()
        fake.script([{"status": 200, "body": "{}"}, {"status": 200, "body": FILE_OBJECT}])
        warm_up(bulwark, fake)
        before = scrape(bulwark)
        sampler = RssSampler(bulwark.proc.pid)
        started = time.monotonic()
        proc = subprocess.run(
            [curl, "-sS", "-o", "-", "-w", "\n%{http_code} %{size_upload}",
             "-F", "purpose=fine-tune", "-F", f"file=@{self.file};type=application/jsonl",
             f"{bulwark.base_url}{FILES_PATH}"],
            capture_output=True, text=True, timeout=120)
        elapsed = time.monotonic() - started
        growth = sampler.stop()
        *response, status_line = proc.stdout.splitlines()
        code, uploaded = status_line.split()
        self.assertEqual(code, "200", proc.stdout + proc.stderr)
        self.assertEqual(json.loads("".join(response))["id"], "file-upload-1")
        request = fake.requests[-1]
        self.assert_received_whole(fake, request)
        print(f"\n{UPLOAD_MIB} MiB multipart upload through curl ({TRANSPORT}): {elapsed:.1f} s, "
              f"RSS +{growth} KiB")
        if not SANITIZED:
            self.assertLessEqual(growth, 4 * 1024, f"bulwark grew by {growth} KiB")

        # Counted: every body byte sent upstream, and the body's size in the access log.
        sent = counter_deltas(before, scrape(bulwark), "bulwark_request_body_bytes_total",
                              ("upstream",))
        self.assertEqual(sent, {("fake0",): float(uploaded)})
        line = bulwark.wait_for_log(lambda e: e.get("msg") == "request" and
                                    e.get("path") == FILES_PATH and e.get("status") == 200 and
                                    e.get("request_bytes", 0) > MIB * UPLOAD_MIB)
        self.assertEqual(line["request_bytes"], int(float(uploaded)))
        self.assertEqual(line["attempts"], 1)

    def run_sdk(self, bulwark: Bulwark, path: Path, **env: str) -> dict:
        node = shutil.which("node")
        self.assertIsNotNone(node, "node is not installed")
        proc = subprocess.run([node, "upload.mjs"], cwd=TESTS_DIR / "e2e", capture_output=True,
                              text=True, timeout=180,
                              env={**os.environ, "BASE_URL": bulwark.openai_base_url,
                                   "FILE": str(path), **env})
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        self.assertTrue(lines, proc.stderr)
        return json.loads(lines[-1])

    def test_sdk_files_create_streams_byte_for_byte_in_bounded_memory(self):
        fake, bulwark = self.start()
        fake.script([{"status": 200, "body": "{}"}, {"status": 200, "body": FILE_OBJECT}])
        warm_up(bulwark, fake)
        sampler = RssSampler(bulwark.proc.pid)
        summary = self.run_sdk(bulwark, self.file)
        growth = sampler.stop()
        self.assertTrue(summary["ok"], summary)
        self.assertEqual(summary["id"], "file-upload-1")
        request = fake.requests[-1]
        self.assertEqual(request.path, FILES_PATH)
        self.assert_received_whole(fake, request)
        print(f"\n{UPLOAD_MIB} MiB files.create through the SDK ({TRANSPORT}): "
              f"{summary['seconds']:.1f} s, RSS +{growth} KiB")
        if not SANITIZED:
            self.assertLessEqual(growth, 4 * 1024, f"bulwark grew by {growth} KiB")

    def test_sdk_reads_the_413_of_a_600_mb_upload(self):
        # The SDK sends no Expect: it uploads, Bulwark answers 413 at the head, discards the
        # rest (a lingering close) and the SDK reads the answer. The file is sparse: its
        # content does not matter, and it costs no disk.
        fake, bulwark = self.start()
        huge = Path(self.tmp) / "huge.bin"
        with open(huge, "wb") as f:
            f.truncate(600 * 1000 * 1000)
        summary = self.run_sdk(bulwark, huge, EXPECT_STATUS="413",
                               EXPECT_CODE="request_too_large")
        self.assertTrue(summary["ok"], summary)
        self.assertEqual(fake.requests, [])


class Over512MiBTest(unittest.TestCase):
    """600 MB against the default max_request_body (512 MiB), from a raw client."""

    def test_600_mb_gets_413_before_the_body_with_expect_and_after_it_without(self):
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        bulwark = Bulwark([fake], CONFIG).start()
        self.addCleanup(bulwark.stop)
        size = 600 * 1000 * 1000
        head = (f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
                f"boundary=b\r\nContent-Length: {size}\r\n").encode()
        # With Expect: the 413 comes instead of 100 Continue; nothing is sent.
        with RawConnection(bulwark.port, timeout=10) as conn:
            conn.send(head + b"Expect: 100-continue\r\n\r\n")
            resp = conn.read_response("POST")
            assert_openai_error(self, resp, 413, "request_too_large")
            self.assertIsNotNone(conn.wait_closed(10))
        # Without: the client is sending when the 413 comes; it still reads the answer.
        with RawConnection(bulwark.port, timeout=30) as conn:
            conn.send(head + b"\r\n")
            sent = 0
            chunk = b"z" * MIB
            try:
                while sent < size:
                    conn.sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # Bulwark stopped discarding: the answer is waiting
            resp = conn.read_response("POST")
            assert_openai_error(self, resp, 413, "request_too_large")
        self.assertEqual(fake.requests, [])


class AdmissionBeforeUploadTest(unittest.TestCase):

    def test_an_open_breaker_answers_503_before_the_client_sends_its_body(self):
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        bulwark = Bulwark([fake], {**CONFIG, "retry": {**CONFIG["retry"], "max_attempts": 1},
                                   "circuit_breaker": {"failure_threshold": 2, "min_requests": 100,
                                                       "recovery_timeout": "30s"}}).start()
        self.addCleanup(bulwark.stop)
        fake.script([{"status": 503}, {"status": 503}])
        for _ in range(2):
            with RawConnection(bulwark.port) as conn:
                conn.send(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2"
                          f"\r\nContent-Type: application/json\r\n\r\n{{}}".encode())
                self.assertEqual(conn.read_response("POST").status, 503)
        fake.wait_for_requests(2)
        with RawConnection(bulwark.port, timeout=10) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {500 * MIB}\r\n"
                      "Content-Type: multipart/form-data; boundary=b\r\n"
                      "Expect: 100-continue\r\n\r\n".encode())
            resp = conn.read_response("POST")
            assert_openai_error(self, resp, 503, "circuit_open")
            self.assertEqual(resp.interim, [], "the client was told to send its body")
            # The body was never read: the connection closes after this answer, and says so.
            self.assertEqual(resp.header("connection"), "close")
            self.assertTrue(resp.header("retry-after"))
        self.assertEqual(len(fake.requests), 2, "the upload reached the upstream")

    def test_100_continue_comes_once_the_upstream_is_connected(self):
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        bulwark = Bulwark([fake], {**CONFIG, "server": {"retry_body_limit": "1MiB"}}).start()
        self.addCleanup(bulwark.stop)
        fake.script([{"status": 200, "body": FILE_OBJECT}])
        body = os.urandom(3 * MIB)
        with RawConnection(bulwark.port, timeout=10) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "Expect: 100-continue\r\n\r\n".encode())
            self.assertEqual(conn.read_any_head().status, 100)
            # The upstream was reached before the client was told to go on.
            self.assertEqual(len(fake.wait_for_requests(1, complete=False)), 1)
            conn.send(body)
            resp = conn.read_response("POST")
            self.assertEqual(resp.status, 200, resp.body[:200])
        self.assertEqual(hashlib.sha256(fake.requests[0].body).digest(),
                         hashlib.sha256(body).digest())


    def test_a_small_body_behind_expect_is_held_and_retried(self):
        # Within the retry limit: 100 Continue once an upstream would admit it (no upstream
        # is contacted for that), then the body is read whole and retried like any other.
        fake = FakeUpstream().start()
        self.addCleanup(fake.stop)
        bulwark = Bulwark([fake], CONFIG).start()
        self.addCleanup(bulwark.stop)
        fake.script([{"status": 503}, {"status": 200, "body": FILE_OBJECT}])
        body = os.urandom(100 * 1024)
        with RawConnection(bulwark.port, timeout=10) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                      "Content-Type: application/octet-stream\r\n"
                      "Expect: 100-continue\r\n\r\n".encode())
            self.assertEqual(conn.read_any_head().status, 100)
            self.assertEqual(fake.requests, [])
            conn.send(body)
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:200])
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertEqual([r.body for r in fake.requests], [body, body])


class UploadFailureTest(unittest.TestCase):
    SIZE = 64 * MIB

    def setUp(self):
        self.fake = FakeUpstream().start()
        self.addCleanup(self.fake.stop)
        self.bulwark = Bulwark([self.fake], CONFIG).start()
        self.addCleanup(self.bulwark.stop)
        self.head = (f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {self.SIZE}\r\n"
                     "Content-Type: application/octet-stream\r\n\r\n").encode()

    def test_a_client_that_leaves_mid_upload_aborts_the_upstream_transfer(self):
        self.fake.script([{"status": 200, "body": FILE_OBJECT}])
        conn = RawConnection(self.bulwark.port, timeout=10)
        conn.send(self.head + os.urandom(self.SIZE // 2))
        request = self.fake.wait_for_requests(1, complete=False)[0]
        # Half of the body has left the client; Bulwark holds only a window of it.
        wait_until(lambda: request.received >= self.SIZE // 2 - 4 * MIB, 10,
                   what="the upstream to have most of the first half")
        left_at = time.monotonic()
        conn.close()
        self.assertTrue(self.fake.wait_peer_closed(request, timeout=5))
        aborted_after = request.peer_closed_at - left_at
        print(f"\nupstream transfer aborted {aborted_after * 1000:.1f} ms after the client left")
        self.assertLess(aborted_after, 0.1)
        self.assertFalse(request.complete)
        line = self.bulwark.wait_for_log(lambda e: e.get("msg") == "request")
        self.assertEqual(line["status"], 499)

    def upload_whole(self) -> tuple[bytes, object]:
        """Uploads SIZE random bytes and reads the answer: (the body, the response)."""
        body = os.urandom(self.SIZE)
        with RawConnection(self.bulwark.port, timeout=30) as conn:
            conn.send(self.head + body)
            return body, conn.read_response("POST")

    def upload_with(self, failing: dict):
        self.fake.script([failing, {"status": 200, "body": FILE_OBJECT}])
        with RawConnection(self.bulwark.port, timeout=30) as conn:
            conn.send(self.head)
            try:
                conn.sock.sendall(os.urandom(self.SIZE))
            except OSError:
                pass  # Bulwark answered and stopped reading: the answer is waiting
            return conn.read_response("POST")

    def test_an_upstream_reset_mid_upload_is_a_502_and_is_not_retried(self):
        resp = self.upload_with({"reset_after": self.SIZE // 2})
        assert_openai_error(self, resp, 502, "upstream_unavailable")
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        self.assertEqual(len(self.fake.requests), 1)
        self.assertGreaterEqual(self.fake.requests[0].received, self.SIZE // 2)
        failed = self.bulwark.wait_for_log(lambda e: e.get("msg") == "upstream attempt failed")
        self.assertEqual(failed["outcome"], "reset")
        self.assertIsNone(failed["delay_ms"])

    def test_a_retryable_error_after_part_of_the_upload_is_not_retried(self):
        # A 503 would be retried, but the upstream read half of a body Bulwark did not keep.
        resp = self.upload_with({"answer_after": self.SIZE // 2, "status": 503})
        self.assertEqual(resp.status, 503)
        self.assertEqual(resp.header("x-bulwark-attempts"), "1")
        self.assertEqual(resp.header("x-should-retry"), "false")
        self.assertEqual(len(self.fake.requests), 1)
        failed = self.bulwark.wait_for_log(lambda e: e.get("msg") == "upstream attempt failed")
        self.assertTrue(failed["retryable"])
        self.assertEqual(failed["not_retried_because"], "body_streamed")

    def test_an_upstream_that_refuses_at_the_head_lets_the_upload_go_again(self):
        # 429 before reading: none of the body was consumed, so the streamed upload is retried.
        self.fake.script([{"early": True, "status": 429, "headers": {"retry-after-ms": "10"}},
                          {"status": 200, "body": FILE_OBJECT}])
        body, resp = self.upload_whole()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertEqual(len(self.fake.requests), 2)
        self.assertEqual(self.fake.requests[0].received, 0)
        self.assertEqual(hashlib.sha256(self.fake.requests[1].body).digest(),
                         hashlib.sha256(body).digest())

    def test_a_connect_failure_fails_over_with_the_whole_body(self):
        # Nothing of the body was consumed by an upstream that could not be reached: the
        # upload goes to the next upstream, whole.
        self.bulwark.stop()
        self.bulwark = Bulwark([{"name": "down", "base_url": f"http://127.0.0.1:{closed_port()}"},
                                self.fake], {**CONFIG, "retry": {**CONFIG["retry"],
                                                                 "failover": True}})
        self.bulwark.start()
        self.fake.script([{"status": 200, "body": FILE_OBJECT}])
        body, resp = self.upload_whole()
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertEqual(resp.header("x-bulwark-upstream"), "fake1")
        self.assertEqual(hashlib.sha256(self.fake.requests[0].body).digest(),
                         hashlib.sha256(body).digest())

    def test_a_chunked_body_that_grows_past_the_limit_streams_whole(self):
        self.bulwark.stop()
        self.bulwark = Bulwark([self.fake], {**CONFIG, "server": {"retry_body_limit": "1MiB"}})
        self.bulwark.start()
        self.fake.script([{"status": 200, "body": FILE_OBJECT}])
        pieces = [os.urandom(300 * 1024) for _ in range(20)]
        with RawConnection(self.bulwark.port, timeout=30) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            for piece in pieces:
                conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            conn.send(b"0\r\n\r\n")
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200, resp.body[:300])
        self.assertEqual(self.fake.requests[0].body, b"".join(pieces))

    def test_a_chunked_body_over_max_request_body_while_streaming_gets_413(self):
        self.bulwark.stop()
        self.bulwark = Bulwark([self.fake], {**CONFIG, "server": {
            "retry_body_limit": "1MiB", "max_request_body": "4MiB"}})
        self.bulwark.start()
        self.fake.script([{"status": 200, "body": FILE_OBJECT}])
        piece = os.urandom(256 * 1024)
        with RawConnection(self.bulwark.port, timeout=30) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
            try:
                for _ in range(24):  # 6 MiB
                    conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
                conn.send(b"0\r\n\r\n")
            except OSError:
                pass
            resp = conn.read_response("POST")
        assert_openai_error(self, resp, 413, "request_too_large")
        request = self.fake.wait_for_requests(1, complete=False)[0]
        self.assertTrue(self.fake.wait_peer_closed(request, timeout=5),
                        "the upstream transfer was not aborted")
        self.assertFalse(request.complete)

    def test_a_1_mib_body_that_fails_with_503_is_still_retried(self):
        self.fake.script([{"status": 503}, {"status": 200, "body": FILE_OBJECT}])
        body = os.urandom(MIB)
        with RawConnection(self.bulwark.port, timeout=10) as conn:
            conn.send(f"POST {FILES_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                      "Content-Type: application/octet-stream\r\n\r\n".encode() + body)
            resp = conn.read_response("POST")
        self.assertEqual(resp.status, 200)
        self.assertEqual(resp.header("x-bulwark-attempts"), "2")
        self.assertEqual([r.body for r in self.fake.requests], [body, body])


if __name__ == "__main__":
    unittest.main()
