"""A small forward proxy for the egress-proxy tests: CONNECT tunnels (what an HTTPS upstream
goes through, as with HTTPS_PROXY) and absolute-form requests (a plain http:// upstream),
piped byte for byte. It records what it was asked for, so a test can prove that Bulwark went
through it, and it only ever connects to loopback.

    with ConnectProxy() as proxy:
        ... upstreams[].proxy = proxy.url ...
        proxy.targets   # ["127.0.0.1:PORT", ...] in order (CONNECT or absolute-form)
"""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlsplit

MAX_HEAD = 16 * 1024


class ConnectProxy:
    def __init__(self) -> None:
        self.port: int | None = None
        self.targets: list[str] = []
        self.connects = 0          # CONNECT tunnels opened
        self.forwards = 0          # absolute-form requests forwarded
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "ConnectProxy":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "ConnectProxy":
        self._thread = threading.Thread(target=self._run, name="connect-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the test proxy did not start")
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        self._server = loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_writer = None
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                return
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _version = request_line.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
            else:
                parts = urlsplit(target)
                host, port = parts.hostname or "", str(parts.port or 80)
            if host.strip("[]") not in ("127.0.0.1", "localhost", "::1"):
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            with self._lock:
                self.targets.append(f"{host}:{port}")
            upstream_reader, upstream_writer = await asyncio.open_connection(host.strip("[]"),
                                                                              int(port))
            if method == "CONNECT":
                with self._lock:
                    self.connects += 1
                writer.write(b"HTTP/1.1 200 Connection established\r\n"
                             b"Proxy-Agent: bulwark-test-proxy\r\n\r\n")
                await writer.drain()
            else:
                with self._lock:
                    self.forwards += 1
                # The fake upstream takes absolute-form targets as they are, so the head (and
                # every later request on this connection) passes unchanged.
                upstream_writer.write(head)
            await asyncio.gather(self._pipe(reader, upstream_writer),
                                 self._pipe(upstream_reader, writer))
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    w.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            try:
                writer.close()
            except (ConnectionError, OSError):
                pass
