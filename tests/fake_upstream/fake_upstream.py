#!/usr/bin/env python3
"""A scriptable fake OpenAI upstream for Bulwark's tests, demo and benchmarks.

It speaks HTTP/1.1 through its own small parser on asyncio streams, so it can misbehave at
byte level: stall before the head, drop or reset the connection, cut an event stream. It
records every request it receives and notices when its client (Bulwark) goes away.

In process (tests):

    with FakeUpstream() as fake:                  # 127.0.0.1, port 0, own thread and loop
        fake.push({"status": 503})                 # next request gets a 503
        fake.push({"sse": ["a", "b"], "gap": 0.5}) # the one after: an event stream
        ...
        req, = fake.wait_for_requests(1, timeout=5)
        fake.wait_peer_closed(req, timeout=1)

From another process:

    python3 fake_upstream.py --port 0 [--mode ok|flaky|fast] [--tls-cert C --tls-key K]

prints one JSON line {"port": N} once listening, then serves until SIGTERM/SIGINT. Control API
(never recorded, never consumes actions): POST /__fake/script (a JSON action or list of them),
GET /__fake/requests, POST /__fake/reset, GET /__fake/stats, POST /__fake/outage
({"seconds": S, "action": {...}}: for the next S seconds every request that finds the queue
empty gets that action, default {"status": 503}; seconds 0 ends it; fake.outage() in process),
POST /__fake/mode ({"mode": "ok"|"flaky"}: switch the default behaviour; fake.mode in process).

Actions (dicts, or Action): see the Action class. With an empty queue, an in-process
`responder` (FakeUpstream(responder=fn) or fake.responder = fn) is asked next (after a
running outage): fn(request)
returns an action for that request, or None for the default; it lets a test decide per
request (by a header, the body, a count of its own) rather than by arrival order. It runs on
the fake's event loop, so it must be quick. Then the default action applies: GET .../models ->
a model list, .../embeddings -> an embedding list, a JSON body with "stream": true -> an SSE
chat stream, anything else -> a chat completion with usage. Every
response carries x-request-id: req_<n> (n counts requests since the last reset) unless the
action sets its own. A request header `X-Fake-Delay: <seconds>` adds to the action's delay, so
a client can make one request of a pipelined or concurrent batch slower than the others.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import dataclasses
import hashlib
import http
import json
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from typing import Any, Callable, Iterable

try:  # Debian's python3-h2 (and python3-brotli): the production transport, TLS + ALPN h2
    import h2.config
    import h2.connection
    import h2.errors
    import h2.events
    import h2.exceptions
    import h2.settings
except ImportError:  # pragma: no cover - the plain transport needs only the stdlib
    h2 = None
try:
    import brotli
except ImportError:  # pragma: no cover
    brotli = None

__all__ = [
    "Action",
    "FakeUpstream",
    "Request",
    "DEFAULT_CONTENT",
    "DEFAULT_MODEL",
    "chat_completion",
    "chat_chunk",
    "openai_error",
    "make_test_pki",
]

DEFAULT_CONTENT = "Hello from the fake upstream."
DEFAULT_MODEL = "gpt-4o-mini"
MAX_HEAD_BYTES = 64 * 1024
CONTROL_PREFIX = "/__fake/"


# --- OpenAI-shaped bodies -------------------------------------------------------------------


def chat_completion(content: str = DEFAULT_CONTENT, model: str = DEFAULT_MODEL,
                    id: str = "chatcmpl-fake", prompt_tokens: int = 9,
                    completion_tokens: int = 7) -> dict:
    return {
        "id": id,
        "object": "chat.completion",
        "created": 1764338400,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
        "system_fingerprint": "fp_fake",
    }


def chat_chunk(content: str | None = None, *, role: str | None = None,
               finish_reason: str | None = None, model: str = DEFAULT_MODEL,
               id: str = "chatcmpl-fake", usage: dict | None = None) -> dict:
    """One `chat.completion.chunk` object, as sent in `data:` lines of a chat stream."""
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    chunk: dict[str, Any] = {
        "id": id,
        "object": "chat.completion.chunk",
        "created": 1764338400,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "logprobs": None,
                     "finish_reason": finish_reason}],
    }
    if usage is not None:
        chunk["choices"] = []
        chunk["usage"] = usage
    return chunk


def openai_error(message: str, type: str = "server_error", code: str | None = None,
                 param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def go_duration(seconds: float) -> str:
    """Seconds as OpenAI's x-ratelimit-reset-* write them: 20ms, 1.5s, 6m0s."""
    if seconds < 1:
        return f"{max(0, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m" + (f"{rest:.3f}".rstrip("0").rstrip(".") or "0") + "s"


def prompt_tokens(payload: Any, bytes_per_token: float = 4) -> int:
    """The limiter's estimate of a request's prompt: the bytes of its prompt text (message
    contents and their text parts, input, prompt) over bytes_per_token."""
    if not isinstance(payload, dict):
        return 0
    total = 0

    def text(value: Any) -> int:
        if isinstance(value, str):
            return len(value.encode())
        if isinstance(value, list):
            return sum(text(v.get("text", "") if isinstance(v, dict) else v) for v in value)
        if isinstance(value, dict):
            return text(value.get("content", ""))
        return 0

    for message in payload.get("messages") or []:
        if isinstance(message, dict):
            total += text(message.get("content", ""))
    total += text(payload.get("input", "")) + text(payload.get("prompt", ""))
    return -(-total // int(bytes_per_token)) if total else 0


class RateLimiter:
    """OpenAI's limiter for one model: a request bucket and a token bucket, each refilling
    continuously to its per-minute limit. A request is charged at admission: 1 request, and
    its prompt estimate plus its max_tokens (max_completion_tokens, max_output_tokens; else
    `default_output`). Every answer carries the x-ratelimit-* headers; a request that does
    not fit gets OpenAI's 429 rate_limit_exceeded. `window` is the length of the limiter's
    "minute" in seconds (default 60): a test compresses time with a shorter one (window=6:
    the limits refill per 6 s, ten times faster, and the reset headers and "try again in"
    waits shrink with them).

    `bucket` is the share of the minute the limiter holds at once (default 1: the whole
    minute). OpenAI documents that a limit "may be quantized, meaning it's enforced over a
    shorter period of time" (60,000 requests a minute as 1,000 a second): with bucket=0.1 the
    limiter holds a tenth of its minute, refilling at the same per-minute rate, and reports
    `remaining` as what that short bucket holds and `reset` as the time to refill it; the
    limit headers still say the per-minute limit. What it leaves out: OpenAI does not publish
    its bucket lengths, nor whether its reset speaks of the bucket or of the minute; this
    fake takes the bucket. A compressed window with bucket 1 behaves like a real-time minute
    with a short bucket, except for the limit it reports."""

    def __init__(self, model: str, rpm: float, tpm: float, default_output: int = 1000,
                 clock: Callable[[], float] = time.monotonic, window: float = 60,
                 bucket: float = 1.0):
        if not window > 0:
            raise ValueError(f"window must be a positive number of seconds, not {window!r}")
        if not 0 < bucket <= 1:
            raise ValueError(f"bucket must be a share of the minute in (0, 1], not {bucket!r}")
        self.model, self.rpm, self.tpm = model, float(rpm), float(tpm)
        self.window = window
        self.bucket = float(bucket)
        self.default_output = default_output
        self._clock = clock
        self._requests, self._tokens = self.rpm * self.bucket, self.tpm * self.bucket
        self._at = clock()
        self.accepted = self.rejected = 0
        self.tokens_charged = 0.0
        # When the first and the last admitted request were charged (clock time; None before
        # any): the span over which clients kept the limiter busy.
        self.first_charge_at: float | None = None
        self.last_charge_at: float | None = None

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._requests = min(self.rpm * self.bucket, self._requests + elapsed * self.rpm / self.window)
        self._tokens = min(self.tpm * self.bucket, self._tokens + elapsed * self.tpm / self.window)

    def cost(self, payload: Any) -> int:
        cap = self.default_output
        if isinstance(payload, dict):
            for key in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                if isinstance(payload.get(key), int):
                    cap = payload[key]
                    break
        return prompt_tokens(payload) + cap

    def token_capacity(self) -> float:
        """The tokens the limiter could have admitted between its first and last admitted
        request: the full bucket at the start plus the refill meanwhile (0 before any)."""
        if self.first_charge_at is None:
            return 0.0
        return self.tpm * (self.bucket + (self.last_charge_at - self.first_charge_at) / self.window)

    def headers(self) -> list[tuple[str, str]]:
        return [("x-ratelimit-limit-requests", str(int(self.rpm))),
                ("x-ratelimit-limit-tokens", str(int(self.tpm))),
                ("x-ratelimit-remaining-requests", str(int(self._requests))),
                ("x-ratelimit-remaining-tokens", str(int(self._tokens))),
                ("x-ratelimit-reset-requests",
                 go_duration((self.rpm * self.bucket - self._requests) * self.window / self.rpm)),
                ("x-ratelimit-reset-tokens",
                 go_duration((self.tpm * self.bucket - self._tokens) * self.window / self.tpm))]

    def charge(self, payload: Any) -> "Action | None":
        """None when admitted (the caller adds headers()); else the 429 to send."""
        self._refill()
        tokens = self.cost(payload)
        if self._requests >= 1 and self._tokens >= tokens:
            self._requests -= 1
            self._tokens -= tokens
            self.accepted += 1
            self.tokens_charged += tokens
            if self.first_charge_at is None:
                self.first_charge_at = self._at
            self.last_charge_at = self._at
            return None
        self.rejected += 1
        if self._requests < 1:
            kind, limit, used, wait = ("requests", "RPM", self.rpm - self._requests,
                                       (1 - self._requests) * self.window / self.rpm)
            detail = f"Limit {int(self.rpm)}, Used {int(used)}, Requested 1"
        else:
            kind, limit, used, wait = ("tokens", "TPM", self.tpm - self._tokens,
                                       (tokens - self._tokens) * self.window / self.tpm)
            detail = f"Limit {int(self.tpm)}, Used {int(used)}, Requested {tokens}"
        word = "requests" if kind == "requests" else "tokens"
        message = (f"Rate limit reached for {self.model} in organization org-fake on {word} per "
                   f"min ({limit}): {detail}. Please try again in {go_duration(wait)}. Visit "
                   f"https://platform.openai.com/account/rate-limits to learn more.")
        return Action(status=429, body=openai_error(message, kind, "rate_limit_exceeded"),
                      headers=self.headers())


def _error_for_status(status: int) -> dict:
    if status == 429:
        return openai_error("Rate limit reached (fake upstream).", "requests", "rate_limit_exceeded")
    if status == 401:
        return openai_error("Incorrect API key provided (fake upstream).",
                            "invalid_request_error", "invalid_api_key")
    if 400 <= status < 500:
        return openai_error(f"Fake upstream answered {status}.", "invalid_request_error")
    return openai_error(f"The server had an error while processing your request ({status}).",
                        "server_error")


# --- actions and records --------------------------------------------------------------------


@dataclasses.dataclass
class Action:
    """What the fake does with one request. Timing fields are seconds (float)."""

    status: int = 200
    headers: list = dataclasses.field(default_factory=list)  # [(name, value)], duplicates ok
    body: Any = None            # bytes | str | dict/list (JSON). None: an OpenAI-shaped default
    content_type: str | None = None  # default application/json (text/event-stream for sse)
    delay: float = 0.0          # before the response head (aborted if the peer leaves)
    body_delay: float = 0.0     # between head and body (or first SSE chunk)
    drop: bool = False          # close (FIN) right after reading the request, no response
    reset: bool = False         # like drop but RST; with sse+cut_after/truncate: RST at the cut
    hang: bool = False          # never answer; returns when the peer leaves
    sse: list | None = None     # events: str -> "data: <str>\n\n", dict/list -> data: <json>
    sse_raw: bool = False       # sse items are sent verbatim ("event: error\ndata: ...\n\n")
    gap: float = 0.0            # between SSE chunks (also before the cut, if cut_after is set)
    cut_after: int | None = None  # send this many SSE chunks, then close without the last chunk
    done: bool = True           # append "data: [DONE]\n\n" to sse
    chunked: bool = False       # send a non-SSE body with chunked framing
    truncate: int | None = None  # send only this many body bytes (full Content-Length), close
    close: bool = False         # close the connection after the response
    echo: bool = False          # body = JSON description of the received request
    raw: Any = None             # bytes/str written verbatim instead of a response, then close
    match: str | None = None    # applies only when the request path starts with this
    encode: str | None = None   # gzip | br: compress the body even if the client did not ask
    early: bool = False         # HTTP/1.1: answer at the head, before reading the body (no 100
                                # Continue), then close: an edge refusing an upload
    reset_after: int | None = None  # HTTP/1.1: read this many request body bytes, then RST
    answer_after: int | None = None  # HTTP/1.1: read this many request body bytes, then answer
                                     # (and close): a failure in the middle of an upload

    @classmethod
    def of(cls, spec: "Action | dict") -> "Action":
        if isinstance(spec, Action):
            return dataclasses.replace(spec)
        if not isinstance(spec, dict):
            raise TypeError(f"an action is a dict or Action, not {type(spec).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(spec) - names
        if unknown:
            raise ValueError(f"unknown action keys: {sorted(unknown)}")
        action = cls(**spec)
        action.headers = _header_pairs(action.headers)
        if action.sse is not None and not isinstance(action.sse, list):
            raise ValueError("sse must be a list of events")
        return action

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default and not (f.name == "headers" and not value):
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "replace")
                out[f.name] = value
        return out


def _header_pairs(headers: Any) -> list[tuple[str, str]]:
    if headers is None:
        return []
    if isinstance(headers, dict):
        headers = list(headers.items())
    return [(str(name), str(value)) for name, value in headers]


@dataclasses.dataclass
class Request:
    """One request as the fake received it. Times are time.monotonic()."""

    index: int                     # 1-based arrival order since the last reset
    conn_id: int                   # which accepted connection carried it
    method: str
    target: str                    # request-target as sent (path?query, or absolute form)
    http_version: str              # "HTTP/1.1"
    headers: list[tuple[str, str]]  # as received: original case, order, duplicates
    arrived_at: float              # when the head was parsed
    body: bytes = b""              # de-chunked
    chunked: bool = False          # the body came with Transfer-Encoding: chunked
    complete: bool = False         # the whole body was read
    peer_closed_at: float | None = None  # the client closed the connection carrying it
    fake_closed_at: float | None = None  # the fake closed it (drop/reset/cut/close)
    status: int | None = None      # status sent, None if no head was sent
    head_sent_at: float | None = None
    chunks_sent_at: list[float] = dataclasses.field(default_factory=list)  # body chunks/events
    action: dict | None = None     # the scripted action used, None for the default
    encoding: str | None = None    # the content coding the fake applied (gzip, br), if any
    received: int = 0              # request body bytes read so far (grows while it arrives)

    @property
    def path(self) -> str:
        target = self.target
        if "://" in target:
            rest = target.split("://", 1)[1]
            target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
        return target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def header(self, name: str, default: str | None = None) -> str | None:
        """First value of a header, case-insensitive."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return default

    def header_all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def header_names(self) -> list[str]:
        return [key.lower() for key, _ in self.headers]

    def json(self) -> Any:
        return json.loads(self.body)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["headers"] = [list(pair) for pair in self.headers]
        out["path"] = self.path
        out["query"] = self.query
        out["body_len"] = len(self.body)
        out["body_sha256"] = hashlib.sha256(self.body).hexdigest()
        out["body_base64"] = base64.b64encode(self.body).decode()
        try:
            out["body"] = self.body.decode("utf-8")
        except UnicodeDecodeError:
            out["body"] = None
        return out


class _BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class _Conn:
    """One accepted connection: a pump task keeps reading so the peer's leaving is seen."""

    def __init__(self, conn_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.id = conn_id
        self.reader = reader
        self.writer = writer
        self.buf = bytearray()
        self.eof = False
        self.we_closed = False
        self.changed = asyncio.Event()   # new bytes or EOF
        self.gone = asyncio.Event()      # EOF/reset from the peer
        self.requests: list[Request] = []
        self.task: asyncio.Task | None = None


# --- the server -----------------------------------------------------------------------------


class FakeUpstream:
    """A fake OpenAI upstream on its own thread and event loop.

    Thread-safety: push/script/reset/requests/wait_* may be called from any thread.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, mode: str = "ok",
                 tls_cert: str | None = None, tls_key: str | None = None, seed: int = 1,
                 responder: "Callable[[Request], Action | dict | None] | None" = None,
                 http2: bool = False, compress: bool = False, max_streams: int = 100,
                 rate_limits: "dict[str, dict] | None" = None):
        if mode not in ("ok", "flaky", "fast"):
            raise ValueError(f"unknown mode {mode!r}")
        if http2 and not tls_cert:
            raise ValueError("http2 needs tls_cert and tls_key (h2 is negotiated by ALPN)")
        if http2 and h2 is None:
            raise RuntimeError("http2 needs Debian's python3-h2 (scripts/deps.sh installs it)")
        self.http2 = http2          # offer h2 by ALPN (HTTP/1.1 stays for clients without it)
        self.compress = compress    # gzip/br bodies for clients that accept them, as the edge does
        self.max_streams = max_streams  # SETTINGS_MAX_CONCURRENT_STREAMS on h2 connections
        # {"gpt-4o-mini": {"rpm": 120, "tpm": 20000}}: OpenAI's limiter per model ("*": any);
        # a model's limits may add "window": seconds per limiter minute (default 60).
        self.limiters = {model: RateLimiter(model, **limits)
                         for model, limits in (rate_limits or {}).items()}
        self.host = host
        self.port = port
        self.mode = mode
        self._tls_cert = tls_cert
        self._tls_key = tls_key
        self._rng = random.Random(seed)
        self.responder = responder  # asked when the queue is empty; None -> the default
        # Called on the fake's loop with the HTTP/2 streams a connection reset took with it
        # (another request's "reset" aborted their connection), as (request, ended): ended,
        # the stream's last bytes went out so close to the reset that they may or may not
        # have arrived; otherwise the answer was cut. None: nobody asks.
        self.on_streams_lost: "Callable[[list[tuple[Request, bool]]], None] | None" = None
        self._outage: tuple[float, Action] | None = None  # (until, action): see outage()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: list[Action] = []
        self._requests: list[Request] = []
        self._request_count = 0
        self._connections = 0
        self._conn_ids = 0  # never reset, so ids stay unique across reset()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[_Conn] = set()
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._fast_response: bytes | None = None

    # -- lifecycle

    @property
    def scheme(self) -> str:
        return "https" if self._tls_cert else "http"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}"

    def start(self) -> "FakeUpstream":
        self._thread = threading.Thread(target=self._run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fake upstream did not start within 10 s")
        if self._start_error is not None:
            raise RuntimeError(f"fake upstream failed to start: {self._start_error}")
        return self

    def stop(self) -> None:
        loop = self._loop
        if loop is None or self._thread is None:
            return
        if loop.is_running():
            future = asyncio.run_coroutine_threadsafe(self._close_all(), loop)
            try:
                future.result(5)
            except Exception:
                pass
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
        self._thread = None

    def __enter__(self) -> "FakeUpstream":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            loop.run_until_complete(self._listen())
        except BaseException as error:  # report to start()
            self._start_error = error
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        context = None
        if self._tls_cert:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(self._tls_cert, self._tls_key)
            context.set_alpn_protocols(["h2", "http/1.1"] if self.http2 else ["http/1.1"])
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=context, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close_all(self) -> None:
        if self._server is not None:
            self._server.close()
        # Wake every handler rather than cancelling it: asyncio 3.11's start_server callback
        # logs a spurious traceback for a cancelled handler task.
        tasks = []
        for conn in list(self._conns):
            conn.we_closed = True
            conn.writer.transport.abort()
            conn.gone.set()
            conn.changed.set()
            if conn.task is not None:
                tasks.append(conn.task)
        if tasks:
            await asyncio.wait(tasks, timeout=2)
        if self._server is not None:
            await self._server.wait_closed()

    # -- scripting (any thread)

    def push(self, action: Action | dict) -> None:
        """Queue one action for a future request (FIFO)."""
        parsed = Action.of(action)
        with self._lock:
            self._queue.append(parsed)

    def script(self, actions: Iterable[Action | dict]) -> None:
        """Queue several actions, in order."""
        parsed = [Action.of(action) for action in actions]
        with self._lock:
            self._queue.extend(parsed)

    def reset(self) -> None:
        """Forget queued actions, recorded requests and counters (connections stay open)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._request_count = 0
            self._connections = 0
            self._outage = None

    def outage(self, seconds: float, action: Action | dict | None = None) -> None:
        """For the next `seconds`, answer every request that finds the queue empty with
        `action` (default: a 503), ahead of the responder and the default (flaky) behaviour:
        a time window of total failure. seconds <= 0 ends a running outage."""
        parsed = Action.of(action if action is not None else {"status": 503})
        with self._lock:
            self._outage = (time.monotonic() + seconds, parsed) if seconds > 0 else None

    @property
    def outage_remaining(self) -> float:
        """Seconds left in the current outage window (0 when none)."""
        with self._lock:
            if self._outage is None:
                return 0.0
            return max(0.0, self._outage[0] - time.monotonic())

    def _outage_action(self) -> Action | None:
        with self._lock:
            if self._outage is None:
                return None
            until, action = self._outage
            if time.monotonic() >= until:
                self._outage = None
                return None
            return dataclasses.replace(action)

    @property
    def queued(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def requests(self) -> list[Request]:
        """A snapshot of the recorded requests, in arrival order (partial ones included)."""
        with self._lock:
            return list(self._requests)

    @property
    def connections_accepted(self) -> int:
        with self._lock:
            return self._connections

    def wait_for_requests(self, n: int, timeout: float = 5.0, *,
                          complete: bool = True) -> list[Request]:
        """Wait until n requests (with their whole body, unless complete=False) arrived.

        Returns the recorded requests; raises AssertionError on timeout."""
        def ready() -> bool:
            got = [r for r in self._requests if r.complete or not complete]
            return len(got) >= n
        with self._cond:
            if not self._cond.wait_for(ready, timeout):
                raise AssertionError(
                    f"fake upstream: expected {n} request(s) within {timeout} s, got "
                    f"{len(self._requests)}: {[(r.method, r.target) for r in self._requests]}")
            return list(self._requests)

    def wait_peer_closed(self, request: Request, timeout: float = 1.0) -> bool:
        """Wait until the client closed the connection that carried `request`."""
        with self._cond:
            return self._cond.wait_for(lambda: request.peer_closed_at is not None, timeout)

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _next_action(self, request: Request) -> Action | None:
        with self._lock:
            if self._queue:
                head = self._queue[0]
                if head.match is None or request.path.startswith(head.match):
                    return self._queue.pop(0)
        return None

    # -- connection handling (loop thread)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self._lock:
            self._connections += 1
            self._conn_ids += 1
            conn_id = self._conn_ids
        conn = _Conn(conn_id, reader, writer)
        conn.task = asyncio.current_task()
        self._conns.add(conn)
        tls = writer.get_extra_info("ssl_object")
        if tls is not None and tls.selected_alpn_protocol() == "h2":
            try:
                await _H2Connection(self, conn).serve()
            finally:
                self._conns.discard(conn)
            return
        pump = asyncio.create_task(self._pump(conn))
        try:
            while await self._serve_one(conn):
                pass
        except _BadRequest as error:
            body = json.dumps(openai_error(str(error), "invalid_request_error")).encode()
            await self._write_quietly(conn, _head(error.status, [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                ("Connection", "close")]) + body)
        except (ConnectionError, OSError):
            self._mark_peer_closed(conn)  # a failed write: the peer has gone
        finally:
            await self._close(conn)
            pump.cancel()
            self._conns.discard(conn)

    async def _pump(self, conn: _Conn) -> None:
        try:
            while True:
                data = await conn.reader.read(65536)
                if not data:
                    break
                conn.buf += data
                conn.changed.set()
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        conn.eof = True
        if not conn.we_closed:
            self._mark_peer_closed(conn)
        conn.changed.set()

    def _mark_peer_closed(self, conn: _Conn) -> None:
        now = time.monotonic()
        for request in conn.requests:
            if request.peer_closed_at is None and request.fake_closed_at is None:
                request.peer_closed_at = now
        conn.gone.set()
        self._notify()

    async def _read_until(self, conn: _Conn, delimiter: bytes, limit: int) -> bytes | None:
        start = 0
        while True:
            at = conn.buf.find(delimiter, start)
            if at >= 0:
                end = at + len(delimiter)
                data = bytes(conn.buf[:end])
                del conn.buf[:end]
                return data
            if len(conn.buf) > limit:
                raise _BadRequest(431, "request head too large")
            if conn.eof:
                return None
            start = max(0, len(conn.buf) - len(delimiter) + 1)
            conn.changed.clear()
            await conn.changed.wait()

    async def _read_exact(self, conn: _Conn, n: int, sink: bytearray | None = None,
                          request: Request | None = None) -> bytes | None:
        """Read n bytes; with a sink, append to it as they come (so partial bodies show)."""
        out = sink if sink is not None else bytearray()
        remaining = n
        while remaining > 0:
            if conn.buf:
                take = min(remaining, len(conn.buf))
                out += conn.buf[:take]
                del conn.buf[:take]
                remaining -= take
                if request is not None:
                    request.received += take
                    self._notify()
                continue
            if conn.eof:
                return None
            conn.changed.clear()
            await conn.changed.wait()
        return bytes(out)

    async def _wait_gone(self, conn: _Conn, seconds: float | None) -> bool:
        """Sleep `seconds` (None: forever); True as soon as the peer has left."""
        if conn.gone.is_set():
            return True
        try:
            await asyncio.wait_for(conn.gone.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def _serve_one(self, conn: _Conn) -> bool:
        """Read one request and answer it. Returns whether to keep the connection."""
        while conn.buf[:2] == b"\r\n":  # tolerate blank lines between requests
            del conn.buf[:2]
        head = await self._read_until(conn, b"\r\n\r\n", MAX_HEAD_BYTES)
        if head is None:
            return False
        method, target, version, headers = _parse_head(head)
        lower = [(k.lower(), v) for k, v in headers]
        te = ",".join(v for k, v in lower if k == "transfer-encoding").lower()
        lengths = [v for k, v in lower if k == "content-length"]
        chunked = "chunked" in te
        length = 0
        if not chunked and lengths:
            try:
                length = int(lengths[0].strip())
            except ValueError:
                raise _BadRequest(400, "bad Content-Length")
        path = target.split("?", 1)[0]

        if path.startswith(CONTROL_PREFIX):
            body = await self._read_body(conn, chunked, length, bytearray())
            if body is None:
                return False
            return await self._control(conn, method, path, body)

        request = self._new_request(conn, method, target, version, headers, chunked)
        if conn.eof and not conn.we_closed and request.peer_closed_at is None:
            request.peer_closed_at = time.monotonic()
        self._notify()

        early = self._early_action(request)
        if early is not None and early.early:
            request.action = early.to_dict()
            await self._respond(_H1Wire(self, conn), request, dataclasses.replace(early, close=True),
                                False)
            return False

        expect = next((v for k, v in lower if k == "expect"), "")
        if expect.lower() == "100-continue" and (chunked or length > 0):
            conn.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await conn.writer.drain()

        sink = bytearray()
        if early is not None:  # reset_after, answer_after: part of the body, then the end
            request.action = early.to_dict()
            if early.reset_after is not None:
                await self._read_exact(conn, early.reset_after, sink, request)
                request.body = bytes(sink)
                self._abort(conn, request)
                return False
            await self._read_exact(conn, early.answer_after, sink, request)
            request.body = bytes(sink)
            await self._respond(_H1Wire(self, conn), request, dataclasses.replace(early, close=True),
                                False)
            await self._linger(conn)
            return False
        body = await self._read_body(conn, chunked, length, sink, request)
        if body is None:
            request.body = bytes(sink)
            return False
        request.body = body
        request.complete = True
        self._notify()

        conn_tokens = ",".join(v for k, v in lower if k == "connection").lower()
        tokens = {t.strip() for t in conn_tokens.split(",")}
        keep = ("close" not in tokens) if version == "HTTP/1.1" else ("keep-alive" in tokens)

        return await self._respond(_H1Wire(self, conn), request, self._action_for(request), keep)

    def _new_request(self, conn: _Conn, method: str, target: str, version: str,
                     headers: list[tuple[str, str]], chunked: bool) -> Request:
        with self._lock:
            self._request_count += 1
            request = Request(index=self._request_count, conn_id=conn.id, method=method,
                              target=target, http_version=version, headers=headers,
                              arrived_at=time.monotonic(), chunked=chunked)
            if self.mode != "fast":
                self._requests.append(request)
        conn.requests.append(request)
        return request

    def _action_for(self, request: Request) -> Action:
        limited = self._rate_limited(request)
        if limited is not None:
            return limited
        action = self._action_unlimited(request)
        limiter = self._limiter_for(request)
        if limiter is not None:
            with self._lock:
                action = dataclasses.replace(action, headers=list(action.headers) +
                                             limiter.headers())
        return action

    def _limiter_for(self, request: Request) -> "RateLimiter | None":
        if not self.limiters:
            return None
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            payload = {}
        model = payload.get("model", "") if isinstance(payload, dict) else ""
        return self.limiters.get(model) or self.limiters.get("*")

    def _rate_limited(self, request: Request) -> "Action | None":
        limiter = self._limiter_for(request)
        if limiter is None:
            return None
        try:
            payload = json.loads(request.body or b"{}")
        except ValueError:
            payload = {}
        with self._lock:
            refused = limiter.charge(payload)
        if refused is not None:
            request.action = refused.to_dict()
        return refused

    def _action_unlimited(self, request: Request) -> Action:
        action = self._next_action(request)
        if action is None:
            action = self._outage_action()
        if action is None:
            action = self._responder_action(request)
        if action is not None:
            request.action = action.to_dict()
        else:
            action = self._default_action(request)
        return action

    def _early_action(self, request: Request) -> Action | None:
        """The next scripted action, taken now if it acts before the body is read."""
        with self._lock:
            if self._queue:
                head = self._queue[0]
                if (head.early or head.reset_after is not None or
                        head.answer_after is not None) and (
                        head.match is None or request.path.startswith(head.match)):
                    return self._queue.pop(0)
        return None

    async def _read_body(self, conn: _Conn, chunked: bool, length: int,
                         sink: bytearray, request: Request | None = None) -> bytes | None:
        if not chunked:
            return await self._read_exact(conn, length, sink, request)
        while True:
            line = await self._read_until(conn, b"\r\n", 4096)
            if line is None:
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest(400, "bad chunk size")
            if size == 0:
                while True:  # trailers, up to the empty line
                    trailer = await self._read_until(conn, b"\r\n", MAX_HEAD_BYTES)
                    if trailer is None:
                        return None
                    if trailer == b"\r\n":
                        return bytes(sink)
            if await self._read_exact(conn, size, sink, request) is None:
                return None
            if await self._read_exact(conn, 2) is None:
                return None

    # -- responses

    def _responder_action(self, request: Request) -> Action | None:
        responder = self.responder
        if responder is None:
            return None
        try:
            spec = responder(request)
            return None if spec is None else Action.of(spec)
        except Exception as error:  # the test's bug: answer it visibly rather than hang
            return Action(status=500, body=openai_error(
                f"fake upstream responder raised {type(error).__name__}: {error}"))

    def _default_action(self, request: Request) -> Action:
        if self.mode == "fast":
            return Action(body=_FAST_BODY)
        if self.mode == "flaky":
            roll = self._rng.random()
            if roll < 0.15:
                return Action(status=503)
            if roll < 0.25:
                return Action(status=429, headers=[("retry-after-ms", "250")])
            if roll < 0.30:
                return Action(drop=True)
            if roll < 0.35:
                action = self._ok_action(request)
                action.delay = 2.0
                return action
        return self._ok_action(request)

    def _ok_action(self, request: Request) -> Action:
        path = request.path
        payload: Any = None
        try:
            payload = json.loads(request.body) if request.body else None
        except ValueError:
            payload = None
        model = payload.get("model", DEFAULT_MODEL) if isinstance(payload, dict) else DEFAULT_MODEL
        if request.method == "GET" and path.endswith("/models"):
            return Action(body={"object": "list", "data": [
                {"id": DEFAULT_MODEL, "object": "model", "created": 1721172741, "owned_by": "system"},
                {"id": "text-embedding-3-small", "object": "model", "created": 1705948997,
                 "owned_by": "system"}]})
        if path.endswith("/embeddings"):
            inputs = payload.get("input") if isinstance(payload, dict) else None
            count = len(inputs) if isinstance(inputs, list) else 1
            return Action(body={"object": "list", "model": model, "data": [
                {"object": "embedding", "index": i, "embedding": [0.0023, -0.0091, 0.0154]}
                for i in range(count)], "usage": {"prompt_tokens": 8, "total_tokens": 8}})
        if isinstance(payload, dict) and payload.get("stream") is True:
            cid = f"chatcmpl-fake-{request.index}"
            events: list = [chat_chunk("", role="assistant", model=model, id=cid)]
            events += [chat_chunk(piece, model=model, id=cid)
                       for piece in ("Hello", " from the", " fake upstream.")]
            events.append(chat_chunk(finish_reason="stop", model=model, id=cid))
            options = payload.get("stream_options") or {}
            if isinstance(options, dict) and options.get("include_usage"):
                events.append(chat_chunk(model=model, id=cid, usage={
                    "prompt_tokens": 9, "completion_tokens": 7, "total_tokens": 16}))
            return Action(sse=events)
        return Action(body=chat_completion(model=model, id=f"chatcmpl-fake-{request.index}"))

    async def _respond(self, wire: "_H1Wire | _H2Wire", request: Request, action: Action,
                       keep: bool) -> bool:
        delay = action.delay + _float_or_zero(request.header("x-fake-delay"))
        if delay and await wire.wait_gone(delay):
            return False
        if action.hang:
            await wire.wait_gone(None)
            return False
        if action.reset and action.sse is None and action.truncate is None:
            await wire.break_connection(request)
            return False
        if action.drop:
            await wire.drop(request)
            return False
        if action.raw is not None:
            raw = action.raw.encode() if isinstance(action.raw, str) else bytes(action.raw)
            await wire.raw(raw, request)
            return False

        keep = keep and not action.close
        headers = list(action.headers)
        names = {name.lower() for name, _ in headers}
        if "x-request-id" not in names:
            headers.append(("x-request-id", f"req_{request.index}"))
        if action.sse is not None:
            body = b""
            if "content-type" not in names:
                headers.append(("Content-Type", action.content_type or "text/event-stream"))
            if "cache-control" not in names:
                headers.append(("Cache-Control", "no-cache"))
        else:
            body = self._body_bytes(request, action)
            if "content-type" not in names and body:
                headers.append(("Content-Type", action.content_type or "application/json"))
        streaming = action.sse is not None or action.chunked
        no_body = request.method == "HEAD" or action.status in (204, 304) or action.status < 200
        encoder = None
        if action.encode is not None and not no_body:
            encoder = _Encoder(action.encode)
        elif self.compress and not no_body and "content-encoding" not in names and (
                body or action.sse is not None):
            encoder = _Encoder.choose(request.header("accept-encoding") or "",
                                      stream=action.sse is not None)
        # A large body is compressed on the fly, as an edge does it: chunked, no length, so
        # its head does not wait for the whole body to be compressed.
        encode_as_sent = False
        if encoder is not None:
            request.encoding = encoder.name
            headers += [("Content-Encoding", encoder.name), ("Vary", "Accept-Encoding")]
            if action.sse is None and action.truncate is None:
                if len(body) > _ENCODE_AS_SENT_OVER and "content-length" not in names:
                    encode_as_sent = streaming = True
                else:
                    body = encoder.whole(body)
        if streaming and "transfer-encoding" not in names:
            headers.append(("Transfer-Encoding", "chunked"))
        elif not streaming and "content-length" not in names and action.status not in (204, 304):
            headers.append(("Content-Length", str(len(body))))
        if not keep and "connection" not in names:
            headers.append(("Connection", "close"))

        request.status = action.status
        await wire.head(action.status, headers, chunked=streaming and not no_body)
        request.head_sent_at = time.monotonic()
        self._notify()
        if no_body:
            await wire.end()
            return keep
        if action.body_delay and await wire.wait_gone(action.body_delay):
            return False

        if action.sse is not None:
            return await self._send_events(wire, request, action, keep, encoder)
        if action.truncate is not None:
            # The client's first `truncate` bytes of the body, decodable when it is encoded:
            # the cut falls after what the client can read, on every transport.
            piece = body[:action.truncate]
            await wire.send(encoder.chunk(piece) if encoder else piece, framed=False)
            request.chunks_sent_at.append(time.monotonic())
            await wire.cut(request, action.reset)
            return False
        if encode_as_sent:
            for at in range(0, len(body), _ENCODE_AS_SENT_OVER):
                if wire.gone:
                    return False
                await wire.send(encoder.chunk(body[at:at + _ENCODE_AS_SENT_OVER]))
            tail = encoder.finish()
            if tail:
                await wire.send(tail)
        elif body:
            await wire.send(body)
        await wire.end()
        request.chunks_sent_at.append(time.monotonic())
        self._notify()
        return keep

    async def _send_events(self, wire: "_H1Wire | _H2Wire", request: Request, action: Action,
                           keep: bool, encoder: "_Encoder | None") -> bool:
        events = [_event_bytes(e, action.sse_raw) for e in action.sse or []]
        if action.done:
            events.append(b"data: [DONE]\n\n")
        cut = action.cut_after
        sent = events if cut is None else events[:cut]
        for i, event in enumerate(sent):
            if i > 0 and action.gap and await wire.wait_gone(action.gap):
                return False
            if wire.gone:
                return False
            if encoder is None:
                await wire.send(event)
            else:  # a huge event is encoded and sent in slices, as an edge streams it
                for at in range(0, len(event), 256 * 1024):
                    await wire.send(encoder.chunk(event[at:at + 256 * 1024]))
            request.chunks_sent_at.append(time.monotonic())
            self._notify()
        if cut is not None:
            if sent and action.gap and await wire.wait_gone(action.gap):
                return False
            await wire.cut(request, action.reset)
            return False
        if encoder is not None:
            tail = encoder.finish()
            if tail:
                await wire.send(tail)
        await wire.end()
        return keep

    def _body_bytes(self, request: Request, action: Action) -> bytes:
        body = action.body
        if action.echo:
            described = request.to_dict()
            for key in ("body_base64", "action", "chunks_sent_at"):
                described.pop(key, None)
            body = described
        if body is None:
            if action.status >= 400:
                body = _error_for_status(action.status)
            elif action.status in (204, 304) or action.status < 200:
                return b""
            else:
                body = self._ok_action(request).body
                if body is None:  # a stream request: answer with a plain completion instead
                    body = chat_completion()
        if isinstance(body, bytes):
            return body
        if isinstance(body, str):
            return body.encode()
        return json.dumps(body).encode()

    def _cut(self, conn: _Conn, request: Request, reset: bool) -> None:
        if reset:
            self._abort(conn, request)
        else:
            self._mark_fake_closed(conn, request)
            conn.writer.close()

    def _abort(self, conn: _Conn, request: Request | None = None) -> None:
        """Close with RST (SO_LINGER 0)."""
        sock = conn.writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self._mark_fake_closed(conn, request)
        conn.writer.transport.abort()

    async def _linger(self, conn: _Conn, seconds: float = 5.0) -> None:
        """After answering before the body's end, close the way HTTP servers do (nginx's
        lingering close): send FIN, then read and discard until the peer closes, for a bounded
        time. Closing at once with unread bytes would send a RST, and a RST can reach the peer
        before it has read the answer."""
        try:
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
        except (ConnectionError, OSError):
            return
        deadline = time.monotonic() + seconds
        while not conn.eof and time.monotonic() < deadline:
            conn.buf.clear()
            conn.changed.clear()
            try:
                await asyncio.wait_for(conn.changed.wait(), max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                break
        conn.buf.clear()

    async def _close(self, conn: _Conn, request: Request | None = None) -> None:
        if conn.writer.is_closing():
            return
        self._mark_fake_closed(conn, request)
        conn.writer.close()
        try:
            await asyncio.wait_for(conn.writer.wait_closed(), 2)
        except (ConnectionError, OSError, asyncio.TimeoutError, ssl.SSLError):
            pass

    def _mark_fake_closed(self, conn: _Conn, request: Request | None) -> None:
        if not conn.eof:
            conn.we_closed = True
            now = time.monotonic()
            for r in conn.requests:
                if r.fake_closed_at is None and r.peer_closed_at is None:
                    r.fake_closed_at = now

    async def _write_quietly(self, conn: _Conn, data: bytes) -> None:
        try:
            conn.writer.write(data)
            await conn.writer.drain()
        except (ConnectionError, OSError):
            pass

    # -- control API

    async def _control(self, conn: _Conn, method: str, path: str, body: bytes) -> bool:
        status, data = self._control_reply(method, path, body)
        conn.writer.write(_head(status, [("Content-Type", "application/json"),
                                         ("Content-Length", str(len(data)))]) + data)
        await conn.writer.drain()
        return True

    def _control_reply(self, method: str, path: str, body: bytes) -> tuple[int, bytes]:
        status, payload = 200, None
        try:
            if path == "/__fake/script" and method == "POST":
                actions = json.loads(body or b"[]")
                self.script(actions if isinstance(actions, list) else [actions])
                payload = {"queued": self.queued}
            elif path == "/__fake/requests" and method == "GET":
                payload = [r.to_dict() for r in self.requests]
            elif path == "/__fake/reset" and method == "POST":
                self.reset()
                payload = {"ok": True}
            elif path == "/__fake/stats" and method == "GET":
                payload = {"connections": self.connections_accepted,
                           "requests": self._request_count, "queued": self.queued,
                           "outage_remaining": round(self.outage_remaining, 3)}
            elif path == "/__fake/mode" and method == "POST":
                spec = json.loads(body or b"{}")
                mode = spec.get("mode") if isinstance(spec, dict) else None
                if mode not in ("ok", "flaky") or self.mode == "fast":
                    raise ValueError('mode takes {"mode": "ok"|"flaky"} (not in --mode fast)')
                self.mode = mode
                payload = {"mode": self.mode}
            elif path == "/__fake/outage" and method == "POST":
                spec = json.loads(body or b"{}")
                if not isinstance(spec, dict) or set(spec) - {"seconds", "action"}:
                    raise ValueError('outage takes {"seconds": S, "action": {...}}')
                self.outage(float(spec.get("seconds", 0)), spec.get("action"))
                payload = {"outage_remaining": round(self.outage_remaining, 3)}
            else:
                status, payload = 404, openai_error(f"no control endpoint {method} {path}",
                                                    "invalid_request_error")
        except (ValueError, TypeError) as error:
            status, payload = 400, openai_error(str(error), "invalid_request_error")
        return status, json.dumps(payload, default=_json_default).encode()


# --- transports: how one response goes out -------------------------------------------------


_ENCODE_AS_SENT_OVER = 1024 * 1024


class _Encoder:
    """Content coding of a response body, as the API's edge applies it: br or gzip."""

    def __init__(self, name: str):
        self.name = name
        if name == "br":
            self._br = brotli.Compressor(quality=4)  # what an edge uses on the fly
        else:
            self._z = zlib.compressobj(6, zlib.DEFLATED, 31)  # wbits 31: the gzip wrapper

    @classmethod
    def choose(cls, accept_encoding: str, *, stream: bool) -> "_Encoder | None":
        offered = {token.split(";", 1)[0].strip().lower()
                   for token in accept_encoding.split(",") if token.strip()}
        # Whole bodies prefer br when it is offered; event streams get gzip, so that both
        # codings are exercised by any client that accepts both.
        if not stream and "br" in offered and brotli is not None:
            return cls("br")
        if "gzip" in offered:
            return cls("gzip")
        if "br" in offered and brotli is not None:
            return cls("br")
        return None

    def whole(self, data: bytes) -> bytes:
        return self.chunk(data) + self.finish()

    def chunk(self, data: bytes) -> bytes:
        """Compressed bytes for `data`, flushed so the reader can decode it at once."""
        if self.name == "br":
            return self._br.process(data) + self._br.flush()
        return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)

    def finish(self) -> bytes:
        return self._br.finish() if self.name == "br" else self._z.flush(zlib.Z_FINISH)


class _H1Wire:
    """One response on an HTTP/1.1 connection."""

    def __init__(self, fake: "FakeUpstream", conn: _Conn):
        self.fake = fake
        self.conn = conn
        self.chunked = False

    @property
    def gone(self) -> bool:
        return self.conn.eof

    async def wait_gone(self, seconds: float | None) -> bool:
        return await self.fake._wait_gone(self.conn, seconds)

    async def head(self, status: int, headers: list[tuple[str, str]], *, chunked: bool) -> None:
        self.chunked = chunked
        self.conn.writer.write(_head(status, headers))
        await self.conn.writer.drain()

    async def send(self, data: bytes, *, framed: bool = True) -> None:
        framing = self.chunked and framed
        if framing:
            self.conn.writer.write(b"%x\r\n" % len(data))
        # Written in slices: asyncio's TLS transport encrypts a whole write before any of it
        # reaches the socket, so one 48 MiB write held the first byte back for a second.
        view = memoryview(data)
        for at in range(0, len(view), _WRITE_SLICE):
            self.conn.writer.write(view[at:at + _WRITE_SLICE])
            await self.conn.writer.drain()
        if framing:
            self.conn.writer.write(b"\r\n")
            await self.conn.writer.drain()

    async def end(self) -> None:
        if self.chunked:
            self.conn.writer.write(b"0\r\n\r\n")
            await self.conn.writer.drain()

    async def cut(self, request: Request, reset: bool) -> None:
        self.fake._cut(self.conn, request, reset)

    async def break_connection(self, request: Request) -> None:
        self.fake._abort(self.conn, request)

    async def drop(self, request: Request) -> None:
        await self.fake._close(self.conn, request)

    async def raw(self, data: bytes, request: Request) -> None:
        await self.fake._write_quietly(self.conn, data)
        request.head_sent_at = time.monotonic()
        await self.fake._close(self.conn, request)


class _StreamGone(Exception):
    """The h2 stream was reset (or its connection closed) while the fake was sending."""


class _H2Stream:
    def __init__(self, stream_id: int):
        self.id = stream_id
        self.request: Request | None = None
        self.body = bytearray()
        self.gone = asyncio.Event()     # RST_STREAM from the peer, or the connection closed
        self.window = asyncio.Event()   # the send window may have grown
        self.ended = False              # the fake ended (or reset) the stream itself


# Hop-by-hop headers have no place in HTTP/2 (RFC 9113 §8.2.2); h2 sends lower-case names.
_H2_DROPPED = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
               "te"}


class _H2Connection:
    """One TLS connection that negotiated h2: streams are answered concurrently by tasks."""

    def __init__(self, fake: "FakeUpstream", conn: _Conn):
        self.fake = fake
        self.conn = conn
        config = h2.config.H2Configuration(client_side=False, header_encoding="utf-8",
                                           validate_inbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.streams: dict[int, _H2Stream] = {}
        self.tasks: set[asyncio.Task] = set()
        self.closed = False
        self.pings: dict[bytes, asyncio.Future] = {}
        # Streams whose handlers returned, numbered in order (the latest 256).
        self.finished: collections.deque = collections.deque(maxlen=256)
        self.finished_count = 0

    async def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            try:
                self.conn.writer.write(data)
                await self.conn.writer.drain()
            except (ConnectionError, OSError):
                self._peer_gone()

    async def ping_round_trip(self, timeout: float = 2.0) -> None:
        """Send a PING and wait (bounded) for its ACK."""
        if self.closed:
            return
        opaque = struct.pack(">Q", random.getrandbits(64))
        waiter = asyncio.get_running_loop().create_future()
        self.pings[opaque] = waiter
        self.h2.ping(opaque)
        await self.flush()
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            self.pings.pop(opaque, None)

    async def serve(self) -> None:
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: self.fake.max_streams})
        self.h2.initiate_connection()
        await self.flush()
        try:
            while not self.closed:
                try:
                    data = await self.conn.reader.read(65536)
                except (ConnectionError, OSError, ssl.SSLError):
                    data = b""
                if not data:
                    break
                try:
                    events = self.h2.receive_data(data)
                except h2.exceptions.ProtocolError:
                    break
                for event in events:
                    self._on_event(event)
                await self.flush()
        finally:
            if not self.conn.we_closed:
                self._peer_gone()
            for task in list(self.tasks):
                task.cancel()
            if self.tasks:
                await asyncio.wait(self.tasks, timeout=2)
            self.closed = True
            self.conn.writer.close()

    def _peer_gone(self) -> None:
        self.conn.eof = True
        now = time.monotonic()
        for stream in self.streams.values():
            request = stream.request
            if request is not None and request.peer_closed_at is None and \
                    request.fake_closed_at is None and not stream.ended:
                request.peer_closed_at = now
            stream.gone.set()
            stream.window.set()
        for waiter in self.pings.values():
            if not waiter.done():
                waiter.set_result(None)
        self.fake._notify()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, h2.events.RequestReceived):
            stream = self.streams.setdefault(event.stream_id, _H2Stream(event.stream_id))
            pseudo = {k: v for k, v in event.headers if k.startswith(":")}
            headers = [(k, v) for k, v in event.headers if not k.startswith(":")]
            if ":authority" in pseudo:
                headers.insert(0, ("host", pseudo[":authority"]))
            path = pseudo.get(":path", "/")
            if not path.startswith(CONTROL_PREFIX):
                stream.request = self.fake._new_request(
                    self.conn, pseudo.get(":method", "GET"), path, "HTTP/2", headers, False)
            else:
                stream.request = Request(index=0, conn_id=self.conn.id,
                                         method=pseudo.get(":method", "GET"), target=path,
                                         http_version="HTTP/2", headers=headers,
                                         arrived_at=time.monotonic())
            self.fake._notify()
            if event.stream_ended is not None:
                self._complete(stream)
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.body += event.data
                if stream.request is not None:
                    stream.request.body = bytes(stream.body)
            self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            if event.stream_ended is not None and stream is not None:
                self._complete(stream)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and not (stream.request and stream.request.complete):
                self._complete(stream)
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                request = stream.request
                if request is not None and request.peer_closed_at is None and \
                        request.fake_closed_at is None and not stream.ended:
                    request.peer_closed_at = time.monotonic()
                stream.gone.set()
                stream.window.set()
                self.fake._notify()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            for stream in self.streams.values():
                stream.window.set()
        elif isinstance(event, h2.events.PingAckReceived):
            waiter = self.pings.get(event.ping_data)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closed = True

    def _complete(self, stream: _H2Stream) -> None:
        request = stream.request
        if request is None or request.complete:
            return
        request.body = bytes(stream.body)
        request.complete = True
        self.fake._notify()
        task = asyncio.get_running_loop().create_task(self._answer(stream))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, stream: _H2Stream) -> None:
        request = stream.request
        wire = _H2Wire(self, stream)
        try:
            if request.path.startswith(CONTROL_PREFIX):
                status, data = self.fake._control_reply(request.method, request.path, request.body)
                await wire.head(status, [("content-type", "application/json"),
                                         ("content-length", str(len(data)))], chunked=False)
                await wire.send(data)
                await wire.end()
                return
            await self.fake._respond(wire, request, self.fake._action_for(request), True)
        except (_StreamGone, h2.exceptions.StreamClosedError, ConnectionError, OSError):
            pass
        finally:
            self.streams.pop(stream.id, None)
            self.finished_count += 1
            self.finished.append((self.finished_count, stream))


class _H2Wire:
    """One response on an h2 stream. A cut resets the stream; a reset aborts the connection."""

    def __init__(self, connection: _H2Connection, stream: _H2Stream):
        self.connection = connection
        self.h2 = connection.h2
        self.stream = stream

    @property
    def gone(self) -> bool:
        return self.stream.gone.is_set()

    async def wait_gone(self, seconds: float | None) -> bool:
        if self.gone:
            return True
        try:
            await asyncio.wait_for(self.stream.gone.wait(), seconds)
            return True
        except asyncio.TimeoutError:
            return False

    async def head(self, status: int, headers: list[tuple[str, str]], *, chunked: bool) -> None:
        if self.gone:
            raise _StreamGone()
        out = [(":status", str(status))]
        out += [(name.lower(), value) for name, value in headers
                if name.lower() not in _H2_DROPPED]
        self.h2.send_headers(self.stream.id, out)
        await self.connection.flush()

    async def send(self, data: bytes, *, framed: bool = True) -> None:
        view = memoryview(data)
        while view:
            if self.gone:
                raise _StreamGone()
            window = self.h2.local_flow_control_window(self.stream.id)
            if window <= 0:
                # The peer has not read what it was sent: wait for its WINDOW_UPDATE.
                self.stream.window.clear()
                await self.stream.window.wait()
                continue
            n = min(len(view), window, self.h2.max_outbound_frame_size)
            self.h2.send_data(self.stream.id, bytes(view[:n]))
            view = view[n:]
            await self.connection.flush()

    async def end(self) -> None:
        if self.gone:
            raise _StreamGone()
        self.stream.ended = True
        self.h2.end_stream(self.stream.id)
        await self.connection.flush()

    async def cut(self, request: Request, reset: bool) -> None:
        if reset:
            await self.break_connection(request)
            return
        self._reset_stream(request)

    async def break_connection(self, request: Request) -> None:
        """The whole connection goes, with RST: every stream on it fails. A PING round trip
        comes first: the client may still be writing frames (SETTINGS ACK, WINDOW_UPDATE),
        and a reset that overtakes them fails its send before it has read what came before
        it; once the PING is answered, all that was sent before it has been read. So the
        streams the reset takes are those not ended when the PING went out, and those that
        started or ended since (on_streams_lost)."""
        connection = self.connection
        ended_before = {id(s) for s in connection.streams.values() if s.ended}
        finished_before = connection.finished_count
        await connection.ping_round_trip()
        taken = {id(s): s for s in connection.streams.values() if id(s) not in ended_before}
        taken.update((id(s), s) for n, s in connection.finished
                     if n > finished_before and id(s) not in ended_before)
        fake = connection.fake
        fake._abort(connection.conn, request)
        lost = [(s.request, s.ended) for s in taken.values()
                if s is not self.stream and s.request is not None]
        if lost and fake.on_streams_lost is not None:
            fake.on_streams_lost(lost)

    async def drop(self, request: Request) -> None:
        self._reset_stream(request)
        await self.connection.flush()

    async def raw(self, data: bytes, request: Request) -> None:
        # Verbatim HTTP/1.1 bytes mean nothing on an h2 stream: the stream is reset instead.
        request.head_sent_at = time.monotonic()
        await self.drop(request)

    def _reset_stream(self, request: Request) -> None:
        self.stream.ended = True
        if request.fake_closed_at is None and request.peer_closed_at is None:
            request.fake_closed_at = time.monotonic()
        try:
            self.h2.reset_stream(self.stream.id, h2.errors.ErrorCodes.INTERNAL_ERROR)
        except h2.exceptions.StreamClosedError:
            pass
        asyncio.get_running_loop().create_task(self.connection.flush())
        self.connection.fake._notify()


_FAST_BODY = json.dumps(chat_completion()).encode()


def make_test_pki(directory: str) -> dict[str, str]:
    """A private CA and a server certificate it signed for 127.0.0.1, localhost and ::1, made
    with the openssl CLI in `directory`: what a TLS upstream needs, and what Bulwark's
    `upstreams[].ca_file` trusts. Returns {"ca_file", "cert", "key"} paths."""
    import os
    import subprocess
    paths = {"ca_file": os.path.join(directory, "ca.pem"),
             "cert": os.path.join(directory, "server.pem"),
             "key": os.path.join(directory, "server.key")}
    ca_key = os.path.join(directory, "ca.key")
    csr = os.path.join(directory, "server.csr")
    ext = os.path.join(directory, "server.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
            ["openssl", "req", "-x509", *ec, "-keyout", ca_key, "-out", paths["ca_file"],
             "-days", "2", "-subj", "/CN=Bulwark test CA",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
            ["openssl", "req", *ec, "-keyout", paths["key"], "-out", csr,
             "-subj", "/CN=127.0.0.1"],
            ["openssl", "x509", "-req", "-in", csr, "-CA", paths["ca_file"], "-CAkey", ca_key,
             "-CAcreateserial", "-out", paths["cert"], "-days", "2", "-extfile", ext]):
        subprocess.run(command, check=True, capture_output=True)
    return paths


def _float_or_zero(text: str | None) -> float:
    try:
        return max(0.0, float(text)) if text else 0.0
    except ValueError:
        return 0.0


def _json_default(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    try:
        reason = http.HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _parse_head(head: bytes) -> tuple[str, str, str, list[tuple[str, str]]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes anything; kept for clarity
        raise _BadRequest(400, "undecodable head")
    lines = text[:-4].split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _BadRequest(400, f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"bad header line {line!r}")
        headers.append((name, value.strip(" \t")))
    return method, target, version, headers


_WRITE_SLICE = 256 * 1024  # bytes per transport write of a large body


def _event_bytes(event: Any, raw: bool) -> bytes:
    if isinstance(event, bytes):
        return event
    if isinstance(event, str):
        return event.encode() if raw else b"data: " + event.encode() + b"\n\n"
    return b"data: " + json.dumps(event).encode() + b"\n\n"


# --- command line ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A scriptable fake OpenAI upstream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = any free port (default)")
    parser.add_argument("--mode", choices=["ok", "flaky", "fast"], default="ok",
                        help="default behaviour with an empty queue: ok = OpenAI-shaped "
                             "answers; flaky = ~35%% 503/429/drops/slow answers (demo); "
                             "fast = one fixed answer, nothing recorded (benchmarks)")
    parser.add_argument("--seed", type=int, default=1, help="random seed for --mode flaky")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    parser.add_argument("--h2", action="store_true",
                        help="offer HTTP/2 by ALPN (needs --tls-cert/--tls-key)")
    parser.add_argument("--compress", action="store_true",
                        help="gzip/br response bodies for clients that accept them")
    parser.add_argument("--max-streams", type=int, default=100,
                        help="SETTINGS_MAX_CONCURRENT_STREAMS on h2 connections")
    args = parser.parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        parser.error("--tls-cert and --tls-key go together")

    fake = FakeUpstream(args.host, args.port, mode=args.mode, seed=args.seed,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, http2=args.h2,
                        compress=args.compress, max_streams=args.max_streams)
    fake.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"port": fake.port}), flush=True)
    while not stop.wait(3600):
        pass
    fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
