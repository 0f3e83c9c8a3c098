"""A lean OpenAI-compatible endpoint that answers every chat completion after a fixed latency.

Only for benchmarks: it must cost far less CPU per request than the client under test, so it is
a bare ``asyncio.Protocol`` with just enough HTTP/1.1 (keep-alive, ``Content-Length`` bodies)
for ``POST /v1/chat/completions``. Each request is answered with ``n`` choices
``"echo <seed>/<choice>"`` after ``--latency-ms``, without blocking other requests.

Run:  .venv/bin/python benchmarks/latency_server.py --latency-ms 50
It prints its port on the first line of stdout; then, for each line it reads on stdin, the CPU
seconds it has spent serving so far and the number of requests it has answered
(``cpu_s requests``). It stops when stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

HEAD = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
CHOICE = (
    '{{"index":{index},"message":{{"role":"assistant","content":"echo {seed}/{index}"}},'
    '"finish_reason":"stop"}}'
)
COMPLETION = (
    '{{"object":"chat.completion","model":{model},"choices":[{choices}],'
    '"usage":{{"prompt_tokens":8,"completion_tokens":{tokens},"total_tokens":{total}}}}}'
)


class LatencyEndpoint(asyncio.Protocol):
    """One keep-alive connection; answers each request ``latency_s`` after it arrived."""

    answered = 0

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[: head_end + 2].lower()
            marker = head.find(b"content-length:")
            length = int(head[marker + 15 : head.find(b"\r\n", marker)]) if marker >= 0 else 0
            body_end = head_end + 4 + length
            if len(self.buffer) < body_end:
                return
            body, self.buffer = self.buffer[head_end + 4 : body_end], self.buffer[body_end:]
            asyncio.get_running_loop().call_later(self.latency_s, self.answer, body)

    def answer(self, body: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        try:
            request = json.loads(body)
            n, seed = int(request.get("n") or 1), int(request.get("seed") or 0)
            model = json.dumps(str(request["model"]))
        except (ValueError, AttributeError, TypeError, KeyError):
            self.transport.write(BAD_REQUEST)
            self.transport.close()
            return
        # Filled-in templates: json.dumps of the whole answer would cost more CPU per request.
        choices = ",".join(CHOICE.format(index=index, seed=seed) for index in range(n))
        payload = COMPLETION.format(
            model=model, choices=choices, tokens=2 * n, total=8 + 2 * n
        ).encode()
        self.transport.write(HEAD.format(length=len(payload)).encode() + payload)
        LatencyEndpoint.answered += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


async def serve(latency_s: float) -> None:
    """Serve until stdin closes; print CPU time and requests answered for each stdin line."""
    loop = asyncio.get_running_loop()
    cpu_started = time.process_time()
    server = await loop.create_server(
        lambda: LatencyEndpoint(latency_s), "127.0.0.1", 0, backlog=1024
    )
    print(server.sockets[0].getsockname()[1], flush=True)
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(f"{time.process_time() - cpu_started:.6f} {LatencyEndpoint.answered}", flush=True)
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    args = parser.parse_args()
    asyncio.run(serve(args.latency_ms / 1000))


if __name__ == "__main__":
    main()
