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
import socket
import subprocess
import tempfile
import threading
import time
import unittest
from pathlib import Path

from harness import TESTS_DIR, TRANSPORT, Bulwark, FakeUpstream, RawConnection
from hardening import (SANITIZED, assert_openai_error, counter_deltas, rss_kib, scrape,
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
