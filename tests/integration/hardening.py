"""Helpers shared by the hardening tests (issue 7): the fault matrix, hostile clients and the
soak driver. Not a test module itself (the CMake glob takes test_*.py only).

    metrics = scrape(bulwark)                      # parsed /metrics
    metrics.table("bulwark_upstream_attempts_total", ("upstream", "outcome"))
    rss_kib(bulwark.proc.pid), fd_count(bulwark.proc.pid)
    cert, key = self_signed_cert(tmpdir)           # openssl CLI, for a TLS fake upstream
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

from harness import Bulwark, chat_chunk, http_request

CHAT_PATH = "/v1/chat/completions"


# --- /metrics --------------------------------------------------------------------------------


class Metrics:
    """The samples of a Prometheus text exposition (HELP/TYPE lines skipped)."""

    _SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?\Z")
    _LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

    def __init__(self, text: str):
        self.text = text
        self.samples: list[tuple[str, dict, float]] = []
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            match = self._SAMPLE.match(line)
            assert match, f"unparseable /metrics line: {line!r}"
            name, labels, value = match.groups()
            self.samples.append((name, dict(self._LABEL.findall(labels or "")), float(value)))

    def value(self, name: str, **labels: Any) -> float:
        """The sum of the samples of `name` whose labels include `labels` (0 if none)."""
        want = {k: str(v) for k, v in labels.items()}
        return sum(v for n, l, v in self.samples
                   if n == name and all(l.get(k) == w for k, w in want.items()))

    def table(self, name: str, keys: tuple[str, ...], nonzero: bool = True) -> dict:
        """{(label values for keys): value} of the samples of `name`."""
        out = {}
        for n, labels, v in self.samples:
            if n == name and (v or not nonzero):
                key = tuple(labels.get(k, "") for k in keys)
                out[key] = out.get(key, 0) + v
        return out


def scrape(bulwark: Bulwark) -> Metrics:
    resp = http_request(bulwark.admin_port, "GET", "/metrics", timeout=5)
    assert resp.status == 200, (resp.status, resp.body[:200])
    return Metrics(resp.body.decode("utf-8"))


def counter_deltas(before: Metrics, after: Metrics, name: str,
                   keys: tuple[str, ...]) -> dict:
    """How much each series of counter `name` grew between two scrapes (zero deltas left out)."""
    old = before.table(name, keys, nonzero=False)
    new = after.table(name, keys, nonzero=False)
    return {k: v - old.get(k, 0) for k, v in new.items() if v - old.get(k, 0)}


# --- the process -----------------------------------------------------------------------------


SANITIZED = os.environ.get("BULWARK_SANITIZED") == "1"


def rss_kib(pid: int) -> int:
    """Resident memory of a process. Under the sanitizer job (BULWARK_SANITIZED=1) it is 0:
    ASan's allocator and quarantine make sizes meaningless there, so growth bounds hold
    trivially while every other check of those tests still runs; the release run checks them."""
    if SANITIZED:
        return 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_sockets(pid: int) -> dict[str, list[tuple[int, int, str]]]:
    """The process's TCP sockets by inode: (local port, remote port, state hex)."""
    mine = socket_inodes(pid)
    found: dict = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                    if inode in mine:
                        found.setdefault(inode, []).append(
                            (int(local.rsplit(":", 1)[1], 16), int(remote.rsplit(":", 1)[1], 16),
                             state))
        except FileNotFoundError:
            pass
    return found


def fd_census(pid: int, listen_port: int, upstream_ports: set[int]) -> dict[str, int]:
    """Bulwark's open descriptors by kind: accepted client connections ("clients"),
    connections to the upstreams ("upstream"), other sockets (listeners, internal socket
    pairs, and sockets that came or went while /proc was read) and descriptors that are not
    sockets at all ("non_sockets": event loops, pipes, files), which must stay constant however
    much traffic passes."""
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            kinds[fd] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
    tcp = tcp_sockets(pid)
    out = {"total": len(kinds), "clients": 0, "upstream": 0, "other_sockets": 0,
           "non_sockets": 0}
    for target in kinds.values():
        if not target.startswith("socket:["):
            out["non_sockets"] += 1
            continue
        entries = tcp.get(target[8:-1], [])
        if any(local == listen_port and state != "0A" for local, _, state in entries):
            out["clients"] += 1
        elif any(remote in upstream_ports for _, remote, _ in entries):
            out["upstream"] += 1
        else:
            out["other_sockets"] += 1
    return out


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.02,
               what: str = "condition") -> Any:
    """Poll predicate() until truthy (returns it); AssertionError after timeout. For state of
    another process that offers no event to wait on (its /proc files, its /metrics)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


# --- addresses and certificates --------------------------------------------------------------


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def self_signed_cert(directory: str | Path, name: str = "fake") -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1 (openssl CLI). Nothing trusts it:
    Bulwark verifies upstream TLS against the system store, so a handshake with it fails."""
    directory = Path(directory)
    cert, key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    return str(cert), str(key)


# --- OpenAI-shaped bodies and event streams --------------------------------------------------

CHAT_BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
STREAM_BODY = json.dumps({"model": "gpt-4o-mini", "stream": True,
                          "messages": [{"role": "user", "content": "hi"}]})


def stream_events(label: str) -> list:
    """A small chat stream whose text says which upstream answer produced it."""
    cid = f"chatcmpl-{label}"
    return ([chat_chunk("", role="assistant", id=cid)] +
            [chat_chunk(piece, id=cid) for piece in (f"{label}:", " hello", " world")] +
            [chat_chunk(finish_reason="stop", id=cid)])


def sse_event(event: Any) -> bytes:
    """The bytes the fake sends for one event of `{"sse": [...]}`."""
    return b"data: " + json.dumps(event).encode() + b"\n\n"


def sse_body(events: list, done: bool = True) -> bytes:
    """The exact bytes the fake sends for `{"sse": events}`."""
    return b"".join(sse_event(e) for e in events) + (b"data: [DONE]\n\n" if done else b"")


def sse_data(body: bytes) -> list[str]:
    """The data payloads of an event stream, in order (a trailing partial event included)."""
    events = []
    for block in body.decode("utf-8", "replace").split("\n\n"):
        if not block.strip():
            continue
        lines = [line[5:].lstrip(" ") for line in block.split("\n") if line.startswith("data:")]
        events.append("\n".join(lines))
    return events


def assert_openai_error(test, resp, status: int, code: str) -> None:
    """resp (HttpResult or RawResponse) is Bulwark's own error: the status, OpenAI's error
    shape with type bulwark_error, and x-should-retry: false so that the SDKs do not retry on
    top of Bulwark."""
    body = bytes(resp.body)
    test.assertEqual(resp.status, status, body[:300])
    test.assertTrue((resp.header("content-type") or "").startswith("application/json"),
                    resp.headers)
    error = json.loads(body)
    test.assertEqual(set(error), {"error"}, error)
    test.assertIsInstance(error["error"].get("message"), str)
    test.assertTrue(error["error"]["message"])
    test.assertEqual({k: v for k, v in error["error"].items() if k != "message"},
                     {"type": "bulwark_error", "param": None, "code": code})
    test.assertEqual(resp.header_all("x-should-retry"), ["false"], resp.headers)
