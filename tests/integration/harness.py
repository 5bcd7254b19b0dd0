"""Runs the real bulwark binary for integration tests, plus byte-level HTTP client helpers.

    with FakeUpstream() as fake, Bulwark([fake], {"timeouts": {"first_byte": "1s"}}) as bw:
        status, headers, body = http_request(bw.port, "GET", "/v1/models")

Binary: $BULWARK_BIN, else <repo>/build/bulwark. Run the tests from tests/integration with
PYTHONPATH=tests (ctest does): `python3 -m unittest -v test_passthrough`.
"""

from __future__ import annotations

import copy
import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

TESTS_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = TESTS_DIR.parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from fake_upstream.fake_upstream import (  # noqa: E402  (after the sys.path fix above)
    DEFAULT_CONTENT, Action, Request, chat_chunk, chat_completion, make_test_pki, openai_error)
from fake_upstream.fake_upstream import FakeUpstream as _FakeUpstream  # noqa: E402

__all__ = [
    "Bulwark", "BulwarkDied", "FakeUpstream", "Action", "Request", "RawConnection",
    "RawResponse", "raw_request", "HttpResult", "http_request", "bulwark_binary", "to_yaml",
    "chat_completion", "chat_chunk", "openai_error", "DEFAULT_CONTENT", "REPO_DIR", "TESTS_DIR",
    "parse_text_log", "TRANSPORT", "test_pki",
]

STARTUP_TIMEOUT = 10.0

# The transport between Bulwark and the fake upstream for this run: "plain" (HTTP/1.1, no
# compression) or "h2" (TLS with a private CA, ALPN h2, gzip/br bodies: what api.openai.com
# speaks). CI runs the integration suite once on each.
TRANSPORT = os.environ.get("BULWARK_TEST_TRANSPORT", "plain")
if TRANSPORT not in ("plain", "h2"):
    raise RuntimeError(f"BULWARK_TEST_TRANSPORT must be plain or h2, not {TRANSPORT!r}")

_pki: dict[str, str] | None = None
_pki_lock = threading.Lock()


def test_pki() -> dict[str, str]:
    """This process's private CA and 127.0.0.1 server certificate ({"ca_file", "cert", "key"}),
    made on first use and removed at exit."""
    global _pki
    with _pki_lock:
        if _pki is None:
            import atexit
            directory = tempfile.mkdtemp(prefix="bulwark-pki-")
            atexit.register(shutil.rmtree, directory, True)
            _pki = make_test_pki(directory)
        return _pki


class FakeUpstream(_FakeUpstream):
    """The fake upstream on this run's transport (TRANSPORT), unless the test picks its own
    TLS certificate (then it speaks HTTP/1.1 over that) or passes transport= explicitly."""

    def __init__(self, *args: Any, transport: str | None = None, **kwargs: Any):
        transport = transport or TRANSPORT
        if transport == "h2" and "tls_cert" not in kwargs:
            pki = test_pki()
            kwargs.update(tls_cert=pki["cert"], tls_key=pki["key"], http2=True, compress=True)
        super().__init__(*args, **kwargs)


def bulwark_binary() -> Path:
    return Path(os.environ.get("BULWARK_BIN") or REPO_DIR / "build" / "bulwark")


# --- YAML (a tiny writer: dicts, lists, scalars; strings always quoted) ----------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*\Z")


def _yaml_scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    if isinstance(value, (list, tuple, dict)) and not value:
        return "[]" if not isinstance(value, dict) else "{}"
    raise TypeError(f"cannot write {type(value).__name__} as YAML")


def _yaml_key(key: Any) -> str:
    key = str(key)
    return key if _PLAIN_KEY.match(key) and key not in ("true", "false", "null", "yes", "no",
                                                         "on", "off", "y", "n") else json.dumps(key)


def to_yaml(value: Any, indent: int = 0) -> str:
    """Block-style YAML for nested dicts/lists of scalars."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list, tuple)) and item:
                lines.append(f"{pad}{_yaml_key(key)}:")
                lines.append(to_yaml(item, indent + 2))
            else:
                lines.append(f"{pad}{_yaml_key(key)}: {_yaml_scalar(item)}")
    elif isinstance(value, (list, tuple)):
        for item in value:
            if isinstance(item, dict) and item:
                block = to_yaml(item, indent + 2)
                lines.append(f"{pad}- " + block[indent + 2:])
            elif isinstance(item, (list, tuple)) and item:
                lines.append(f"{pad}- " + json.dumps(list(item)))  # flow style
            else:
                lines.append(f"{pad}- {_yaml_scalar(item)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return "\n".join(lines)


def merged(base: dict, extra: dict) -> dict:
    """`base` with `extra` merged in, recursively for nested mappings (neither is changed)."""
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _with_test_ca(config: dict) -> dict:
    """Every https upstream on loopback trusts this run's test CA (upstreams[].ca_file), as a
    user of a private CA would configure it, unless the test set its own ca_file."""
    if _pki is None or not isinstance(config.get("upstreams"), list):
        return config
    out = dict(config)
    out["upstreams"] = []
    for entry in config["upstreams"]:
        if isinstance(entry, dict) and "ca_file" not in entry and \
                str(entry.get("base_url", "")).startswith(("https://127.0.0.1", "https://localhost")):
            entry = {**entry, "ca_file": _pki["ca_file"]}
        out["upstreams"].append(entry)
    return out


# --- the bulwark process --------------------------------------------------------------------


class BulwarkDied(AssertionError):
    pass


class Bulwark:
    """The real bulwark binary on 127.0.0.1 port 0, configured against fake upstreams.

    upstreams: FakeUpstream objects (named fake0, fake1, ... in order), (name, FakeUpstream)
    pairs, base URL strings, or full dicts ({"name":..., "base_url":..., "api_key":...};
    a "fake" key stands for its base_url). config: extra YAML as a dict, deep-merged over the
    defaults below (an "upstreams" key there replaces the list).
    """

    def __init__(self, upstreams: list | None = None, config: dict | None = None, *,
                 workers: int | None = None, env: dict | None = None,
                 startup_timeout: float = STARTUP_TIMEOUT, stop_timeout: float = 10.0,
                 check_exit: bool = True):
        if workers is None:  # the ThreadSanitizer stage runs the suite with 2 workers
            workers = int(os.environ.get("BULWARK_TEST_WORKERS", "1"))
        base: dict = {
            "server": {
                "listen": "127.0.0.1:0",
                "admin_listen": "127.0.0.1:0",
                "workers": workers,
                "shutdown_grace": "2s",
            },
        }
        if upstreams:  # none given: Bulwark's default upstream list applies
            base["upstreams"] = [self._upstream_entry(i, u) for i, u in enumerate(upstreams)]
        self.config = merged(base, config or {})
        self.env = env or {}
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.check_exit = check_exit
        self.proc: subprocess.Popen | None = None
        self.logs: list[dict] = []          # stdout lines, parsed (non-JSON: {"_raw": line})
        self.stderr_lines: list[str] = []
        self.port: int | None = None
        self.admin_port: int | None = None
        self.returncode: int | None = None
        self.config_path: Path | None = None
        self.config_text = ""
        self._cond = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._tmpdir: str | None = None
        self._stopping = False

    @staticmethod
    def _upstream_entry(index: int, upstream: Any) -> dict:
        if isinstance(upstream, FakeUpstream):
            return {"name": f"fake{index}", "base_url": upstream.base_url}
        if isinstance(upstream, tuple):
            name, target = upstream
            url = target.base_url if isinstance(target, FakeUpstream) else str(target)
            return {"name": name, "base_url": url}
        if isinstance(upstream, str):
            return {"name": f"fake{index}", "base_url": upstream}
        if isinstance(upstream, dict):
            entry = dict(upstream)
            fake = entry.pop("fake", None)
            if fake is not None:
                entry["base_url"] = fake.base_url
            entry.setdefault("name", f"fake{index}")
            return entry
        raise TypeError(f"unsupported upstream {upstream!r}")

    # -- addresses

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """What an app puts in OPENAI_BASE_URL."""
        return f"{self.base_url}/v1"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    # -- lifecycle

    def __enter__(self) -> "Bulwark":
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        failure = None
        try:
            self.stop()
        except BulwarkDied as error:
            failure = error
        if exc_type is not None:
            sys.stderr.write(f"\n--- bulwark output (test failed) ---\n{self.output(tail=80)}\n")
        elif failure is not None:
            raise failure

    def start(self) -> "Bulwark":
        binary = bulwark_binary()
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise AssertionError(
                f"bulwark binary not found or not executable at {binary}: build it first "
                f"(cmake -S . -B build && cmake --build build) or set BULWARK_BIN")
        self._tmpdir = tempfile.mkdtemp(prefix="bulwark-it-")
        self.config_path = Path(self._tmpdir) / "proxy.yaml"
        self.write_config(self.config)
        env = dict(os.environ)
        env.pop("OPENAI_API_KEY", None)  # hermetic: keys come from the test's config only
        env.update(self.env)
        self.proc = subprocess.Popen(
            [str(binary), "--config", str(self.config_path)], cwd=self._tmpdir, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True, name="bulwark-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="bulwark-stderr"),
        ]
        for reader in self._readers:
            reader.start()

        line = self._wait_for(lambda: self._listening_line(), self.startup_timeout)
        if line is None:
            died = self.proc.poll() is not None
            self._kill()
            self._stopping = True
            self._release()
            raise BulwarkDied(
                ("bulwark exited during startup" if died else
                 f"bulwark did not print its listening line within {self.startup_timeout} s") +
                f" (exit code {self.proc.returncode})\n{self.output()}")
        self.port = _port_of(line["listen"])
        self.admin_port = _port_of(line["admin_listen"]) if line.get("admin_listen") else None
        return self

    def write_config(self, config: dict) -> None:
        """(Re)write proxy.yaml; send SIGHUP afterwards to make a running bulwark reload it."""
        self.config = config
        self.config_text = to_yaml(_with_test_ca(config)) + "\n"
        assert self.config_path is not None
        self.config_path.write_text(self.config_text)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        """After the test signalled it to stop: wait up to timeout for the process to exit on
        its own. Returns the exit code (output collected, tmpdir removed; a later stop() is a
        no-op returning it), or None if it is still running (stop() then kills it as usual)."""
        assert self.proc is not None
        if self._stopping:
            return self.returncode
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._stopping = True
        self._release()
        return self.returncode

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL after stop_timeout. Raises BulwarkDied if it had crashed
        before being asked to stop, or exited badly (check_exit)."""
        if self.proc is None or self._stopping:
            return self.returncode
        self._stopping = True
        died_early = self.proc.poll() is not None
        killed = False
        if not died_early:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                killed = True
                self._kill()
        self._release()
        if not self.check_exit:
            return self.returncode
        code = self.returncode
        if died_early:
            raise BulwarkDied(f"bulwark died during the test (exit code {code})\n{self.output()}")
        if killed:
            raise BulwarkDied(f"bulwark did not exit within {self.stop_timeout} s of SIGTERM; "
                              f"killed\n{self.output()}")
        if code not in (0, -signal.SIGTERM):
            raise BulwarkDied(f"bulwark exited with code {code} after SIGTERM\n{self.output()}")
        return code

    def _release(self) -> None:
        """After the process ended: collect its last output, close pipes, remove the tmpdir."""
        assert self.proc is not None
        self.returncode = self.proc.returncode
        for reader in self._readers:
            reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def _kill(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)

    # -- output

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            text = raw.decode("utf-8", "replace").rstrip("\r\n")
            try:
                entry = json.loads(text)
                if not isinstance(entry, dict):
                    entry = {"_raw": text}
            except ValueError:
                entry = {"_raw": text}
            with self._cond:
                self.logs.append(entry)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._cond:
                self.stderr_lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                self._cond.notify_all()

    def _listening_line(self) -> dict | None:
        for entry in self.logs:
            if "_raw" in entry:  # log.format: text
                entry = parse_text_log(entry["_raw"]) or {}
            if entry.get("msg") == "listening" and entry.get("listen"):
                return entry
        return None

    def _wait_for(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """Wait until predicate() is truthy (returns it), the process dies, or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                result = predicate()
                if result:
                    return result
                if self.proc is not None and self.proc.poll() is not None:
                    self._cond.wait(0.2)  # let the readers drain the last lines
                    return predicate() or None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.1))

    def wait_for_log(self, predicate: Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """The first stdout log entry matching predicate; AssertionError on timeout."""
        found = self._wait_for(lambda: next((e for e in self.logs if predicate(e)), None), timeout)
        if found is None:
            raise AssertionError(f"no matching bulwark log line within {timeout} s\n"
                                 f"{self.output(tail=40)}")
        return found

    def wait_for_logs(self, predicate: Callable[[dict], bool], count: int,
                      timeout: float = 5.0) -> list[dict]:
        """The first `count` stdout log entries matching predicate; AssertionError on timeout."""
        def enough() -> list[dict] | None:
            found = [e for e in self.logs if predicate(e)]
            return found[:count] if len(found) >= count else None
        found = self._wait_for(enough, timeout)
        if found is None:
            raise AssertionError(f"fewer than {count} matching bulwark log lines within "
                                 f"{timeout} s\n{self.output(tail=40)}")
        return found

    def output(self, tail: int | None = None) -> str:
        with self._cond:
            out = [e.get("_raw") or json.dumps(e) for e in self.logs]
            err = list(self.stderr_lines)
        if tail:
            out, err = out[-tail:], err[-tail:]
        return (f"--- proxy.yaml ---\n{self.config_text}--- stdout ---\n" + "\n".join(out) +
                "\n--- stderr ---\n" + "\n".join(err))


_TEXT_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")


def parse_text_log(line: str) -> dict | None:
    """A `log.format: text` line ("<ts> <level> <msg words> key=value ...") as a dict like the
    JSON lines (values stay strings). Values are unquoted, so a space inside one is kept by
    joining words up to the next key=. None if the line does not look like one."""
    words = line.split(" ")
    if len(words) < 3 or not re.match(r"\d{4}-\d\d-\d\dT", words[0]):
        return None
    entry: dict = {"ts": words[0], "level": words[1]}
    msg: list[str] = []
    key = None
    for word in words[2:]:
        if _TEXT_FIELD.match(word):
            key, _, value = word.partition("=")
            entry[key] = value
        elif key is None:
            msg.append(word)
        else:
            entry[key] += " " + word
    entry["msg"] = " ".join(msg)
    return entry


def _port_of(address: str) -> int:
    return int(str(address).rsplit(":", 1)[1])


# --- simple requests (http.client) ----------------------------------------------------------


@dataclasses.dataclass
class HttpResult:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def http_request(port: int, method: str, path: str, body: bytes | str | dict | None = None,
                 headers: dict | list | None = None, timeout: float = 10.0) -> HttpResult:
    """One request on a fresh connection (http.client adds Host and Content-Length)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        names = {k.lower() for k, _ in pairs}
        for key, value in pairs:
            conn.putheader(key, value)
        if body is not None and "content-length" not in names:
            conn.putheader("Content-Length", str(len(body)))
        if body is not None and "content-type" not in names:
            conn.putheader("Content-Type", "application/json")
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return HttpResult(resp.status, resp.getheaders(), data)
    finally:
        conn.close()


# --- a byte-level client (raw sockets) ------------------------------------------------------


@dataclasses.dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    head_at: float                      # monotonic time the head was complete
    body: bytearray = dataclasses.field(default_factory=bytearray)  # grows in place
    pieces: list[tuple[float, bytes]] = dataclasses.field(default_factory=list)  # as received
    framing: str = ""                   # "length" | "chunked" | "close" | "none"
    complete: bool = False              # the body ended properly (length met / last chunk)
    interim: list[int] = dataclasses.field(default_factory=list)  # 1xx statuses skipped

    def header(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def json(self) -> Any:
        return json.loads(self.body)


def parse_head(head: bytes) -> RawResponse:
    """A response head (status line and header lines, without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return RawResponse(version, int(code), reason, headers, time.monotonic())


class RawConnection:
    """A TCP client that sends exact bytes and parses responses itself, timing each piece.

    Keeps unread bytes between responses, so pipelined answers can be read one by one.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False

    def __enter__(self) -> "RawConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes | str) -> None:
        self.sock.sendall(data.encode("latin-1") if isinstance(data, str) else data)

    def _fill(self, deadline: float | None = None) -> bytes:
        """One recv into the buffer; b"" on EOF (or reset)."""
        if self.eof:
            return b""
        timeout = self.timeout if deadline is None else max(0.001, deadline - time.monotonic())
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except ConnectionResetError:
            data = b""
        if not data:
            self.eof = True
        self.buf += data
        return data

    def _take_until(self, delimiter: bytes, limit: int = 1 << 20) -> bytes:
        while True:
            at = self.buf.find(delimiter)
            if at >= 0:
                data = bytes(self.buf[:at + len(delimiter)])
                del self.buf[:at + len(delimiter)]
                return data
            if len(self.buf) > limit:
                raise AssertionError(f"no {delimiter!r} within {limit} bytes")
            if not self._fill():
                raise ConnectionError(f"connection closed while waiting for {delimiter!r}; "
                                      f"got {bytes(self.buf)[:200]!r}")

    def read_any_head(self) -> RawResponse:
        """The next response head, interim (1xx) or final."""
        return parse_head(self._take_until(b"\r\n\r\n")[:-4])

    def read_head(self) -> RawResponse:
        """The next final response head (1xx interim responses are skipped and noted)."""
        interim = []
        while True:
            resp = self.read_any_head()
            if 100 <= resp.status < 200 and resp.status != 101:
                interim.append(resp.status)
                continue
            resp.interim = interim
            return resp

    def iter_body(self, resp: RawResponse, method: str = "GET") -> Iterator[tuple[float, bytes]]:
        """Yield (monotonic time, bytes) for body data as it arrives (chunk framing removed).

        Sets resp.body / framing / complete as it goes. Chunked bodies yield one piece per
        chunk, timed when the chunk's last byte arrived."""
        te = ",".join(resp.header_all("transfer-encoding")).lower()
        length = resp.header("content-length")
        if method == "HEAD" or resp.status in (204, 304):
            resp.framing, resp.complete = "none", True
            return
        if "chunked" in te:
            resp.framing = "chunked"
            while True:
                try:
                    line = self._take_until(b"\r\n")
                except ConnectionError:
                    return
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self._take_until(b"\r\n") != b"\r\n":
                        pass  # trailers
                    resp.complete = True
                    return
                while len(self.buf) < size + 2:
                    if not self._fill():
                        return
                data = bytes(self.buf[:size])
                del self.buf[:size + 2]
                piece = (time.monotonic(), data)
                resp.pieces.append(piece)
                resp.body += data
                yield piece
        elif length is not None:
            resp.framing = "length"
            remaining = int(length)
            while remaining > 0:
                if not self.buf and not self._fill():
                    return
                data = bytes(self.buf[:remaining])
                del self.buf[:len(data)]
                remaining -= len(data)
                piece = (time.monotonic(), data)
                resp.pieces.append(piece)
                resp.body += data
                yield piece
            resp.complete = True
        else:
            resp.framing = "close"
            while True:
                if self.buf:
                    data = bytes(self.buf)
                    self.buf.clear()
                    piece = (time.monotonic(), data)
                    resp.pieces.append(piece)
                    resp.body += data
                    yield piece
                if not self._fill():
                    resp.complete = True
                    return

    def read_response(self, method: str = "GET") -> RawResponse:
        resp = self.read_head()
        for _ in self.iter_body(resp, method):
            pass
        return resp

    def wait_closed(self, timeout: float) -> float | None:
        """Read (and discard) until the server closes; monotonic time of EOF/RST or None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if not self._fill(deadline):
                    return time.monotonic()
            except (socket.timeout, TimeoutError):
                return None
        return None


def raw_request(method: str, target: str, body: bytes | str | None = None,
                headers: list[tuple[str, str]] | None = None, host: str | None = "bulwark.test",
                version: str = "HTTP/1.1") -> bytes:
    """Request bytes for RawConnection.send: Host first (unless given or None), then headers,
    Content-Length added for a body unless a length or transfer-encoding header is given."""
    if isinstance(body, str):
        body = body.encode()
    pairs = list(headers or [])
    names = {k.lower() for k, _ in pairs}
    lines = [f"{method} {target} {version}"]
    if "host" not in names and host:
        lines.append(f"Host: {host}")
    lines += [f"{k}: {v}" for k, v in pairs]
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


# --- shared by the test files: metrics, the process, addresses, OpenAI-shaped bodies --------

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
