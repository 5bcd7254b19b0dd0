#!/usr/bin/env python3
"""A paced SSE upstream for the benchmark: OpenAI-shaped chat.completion.chunk events.

    python3 sse_upstream.py --port 0 [--chunks 50] [--interval-ms 20]

Prints `LISTENING <port>` when ready. Every POST answers 200 text/event-stream (chunked,
keep-alive): the first event at once, then one event every interval (on an absolute schedule,
so a late wake-up does not shift the ones after it), then a finish event and `data: [DONE]`.
Each event's content is `t=<CLOCK_MONOTONIC ns>`, taken just before the event is written, so a
client on the same machine can tell how long the event took to reach it.

Request headers override the defaults per stream: `x-bench-chunks: N` (0 = endless, until
the client goes away) and `x-bench-interval-ms: MS`.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time

CHUNK_TEMPLATE = (
    '{"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{"index":0,'
    '"delta":{%s"content":"t=%d"},"logprobs":null,"finish_reason":null}]}'
)
FINISH_EVENT = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    '"model":"gpt-4o-mini","system_fingerprint":"fp_bench","choices":[{"index":0,"delta":{},'
    '"logprobs":null,"finish_reason":"stop"}]}\n\n'
    'data: [DONE]\n\n'
).encode()


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Server:
    def __init__(self, chunks: int, interval_ms: float):
        self.chunks = chunks
        self.interval = interval_ms / 1000.0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                if headers.get("transfer-encoding", "").lower() == "chunked":
                    while True:
                        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                        await reader.readexactly(size + 2)
                        if size == 0:
                            break
                else:
                    length = int(headers.get("content-length", "0") or 0)
                    if length:
                        await reader.readexactly(length)
                chunks = int(headers.get("x-bench-chunks", self.chunks))
                interval = float(headers.get("x-bench-interval-ms", self.interval * 1000)) / 1000
                keep = headers.get("connection", "").lower() != "close"
                await self.stream(writer, chunks, interval, keep)
                if not keep:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def stream(self, writer: asyncio.StreamWriter, chunks: int, interval: float,
                     keep: bool) -> None:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n"
            b"x-request-id: req_bench\r\nopenai-processing-ms: 1\r\n" +
            (b"" if keep else b"Connection: close\r\n") + b"\r\n")
        loop = asyncio.get_running_loop()
        start = loop.time()
        i = 0
        while chunks == 0 or i < chunks:
            if i:
                delay = start + i * interval - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            role = '"role":"assistant",' if i == 0 else ""
            event = "data: %s\n\n" % (CHUNK_TEMPLATE % (role, time.monotonic_ns()))
            writer.write(chunked(event.encode()))
            if writer.transport.get_write_buffer_size() > 65536:
                await writer.drain()
            if writer.transport.is_closing():
                raise ConnectionError("client gone")
            i += 1
        writer.write(chunked(FINISH_EVENT) + b"0\r\n\r\n")
        await writer.drain()


async def main_async(args: argparse.Namespace) -> None:
    server = Server(args.chunks, args.interval_ms)
    srv = await asyncio.start_server(server.handle, args.host, args.port, backlog=4096,
                                     limit=1 << 20)
    port = srv.sockets[0].getsockname()[1]
    print(f"LISTENING {port}", flush=True)
    async with srv:
        await srv.serve_forever()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=50)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    args = parser.parse_args()
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
