"""The HTTP/1.1 transport of OpenAICompatibleBackend against raw servers on 127.0.0.1.

Each server here is a plain ``asyncio.start_server`` (TCP or TLS) that writes exactly the bytes
a test wants, piece by piece, in the same event loop as the client: chunked answers with
extensions and trailers, close-delimited answers, kept-alive connections the server drops,
answers cut in the middle, headers split across writes, and certificates from a private CA.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import trustme

from vlit.llm import ChatRequest, LlmJournal, LlmSession, Message, OpenAICompatibleBackend
from vlit.llm.openai_compatible import RequestFailed

Handler = Callable[["ServerConnection"], Awaitable[None]]


class ServerConnection:
    """One accepted connection: read requests, write the answer's bytes in chosen pieces."""

    def __init__(
        self, server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server, self.reader, self.writer = server, reader, writer

    async def read_request(self) -> dict[str, Any] | None:
        """The next request's JSON body, or ``None`` once the client closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        assert request_line == "POST /v1/chat/completions HTTP/1.1"
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        body = json.loads(await self.reader.readexactly(int(headers["content-length"])))
        self.server.requests.append(body)
        return body

    async def send(self, *pieces: bytes, pause_s: float = 0.0) -> None:
        """Write each piece on its own (a pause between pieces makes each its own TCP write)."""
        for index, piece in enumerate(pieces):
            if index and pause_s:
                await asyncio.sleep(pause_s)
            self.writer.write(piece)
            await self.writer.drain()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass  # the client may have gone first


class RawServer:
    """A TCP (or TLS) server on 127.0.0.1 that runs ``handler`` for each connection it accepts."""

    def __init__(self, handler: Handler, *, tls: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.tls = tls
        self.connections = 0
        self.requests: list[dict[str, Any]] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{port}/v1"

    def backend(self, **options: Any) -> OpenAICompatibleBackend:
        settings: dict[str, Any] = {"timeout_s": 5.0, "backoff_base_s": 0.01, "max_retries": 0}
        settings.update(options)
        return OpenAICompatibleBackend(base_url=self.url, model="raw-model", **settings)

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0, ssl=self.tls)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop accepting, let handlers finish (the client has closed its side), re-raise theirs."""
        assert self._server is not None
        self._server.close()
        try:
            if self._handlers:
                done, stuck = await asyncio.wait(self._handlers, timeout=2.0)
                for task in stuck:
                    task.cancel()
                await asyncio.gather(*stuck, return_exceptions=True)
                assert not stuck, f"{len(stuck)} server connections were still open"
                for task in done:
                    task.result()  # a failed assertion in a handler fails the test
        finally:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections += 1
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = ServerConnection(self, reader, writer)
        try:
            await self.handler(connection)
        finally:
            await connection.close()


def ask(text: str) -> ChatRequest:
    return ChatRequest([Message("user", text)])


def answer_text(body: dict[str, Any]) -> str:
    return "seen: " + body["messages"][-1]["content"]


def completion_json(body: dict[str, Any]) -> bytes:
    """An OpenAI chat completion answering ``body`` (its text names the request it answers)."""
    completion = {
        "id": "chatcmpl-raw",
        "object": "chat.completion",
        "model": "raw-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": answer_text(body)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
    }
    return json.dumps(completion).encode()


def sized_answer(body: dict[str, Any]) -> bytes:
    """A keep-alive answer framed by Content-Length."""
    payload = completion_json(body)
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: keep-alive\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )


async def serve_sized(connection: ServerConnection) -> None:
    """A well-behaved keep-alive server: every request gets a Content-Length answer."""
    while (body := await connection.read_request()) is not None:
        await connection.send(sized_answer(body))


async def complete_all(backend: OpenAICompatibleBackend, texts: Sequence[str]) -> list[Any]:
    """Complete one request per text, one after the other, then close the pool."""
    try:
        return [await backend.complete(ask(text)) for text in texts]
    finally:
        await backend.aclose()


# -- response framing ------------------------------------------------------------------------------
def test_chunked_answer_with_extensions_and_trailers() -> None:
    async def serve_chunked(connection: ServerConnection) -> None:
        while (body := await connection.read_request()) is not None:
            payload = completion_json(body)
            pieces = [
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Transfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
            ]
            for index, start in enumerate(range(0, len(payload), 13)):
                chunk = payload[start : start + 13]
                pieces.append(b'%x;part=%d;note="a;b"\r\n%s\r\n' % (len(chunk), index, chunk))
            pieces.append(b"0;last\r\nX-Checksum: 1234\r\nX-Served-By: raw\r\n\r\n")
            await connection.send(*pieces, pause_s=0.001)

    texts = ["first question", "second question", "a third, longer question" * 5]

    async def scenario() -> tuple[RawServer, list[Any]]:
        async with RawServer(serve_chunked) as server:
            return server, await complete_all(server.backend(), texts)

    server, completions = asyncio.run(scenario())
    assert [c.choices[0].text for c in completions] == [f"seen: {text}" for text in texts]
    assert (completions[0].prompt_tokens, completions[0].completion_tokens) == (7, 3)
    # The trailers were consumed exactly: the same connection served all three answers.
    assert server.connections == 1


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
def test_close_delimited_answer(version: str) -> None:
    async def serve_until_close(connection: ServerConnection) -> None:
        body = await connection.read_request()
        assert body is not None
        payload = completion_json(body)
        head = f"{version} 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
        await connection.send(head.encode(), payload[:20], payload[20:], pause_s=0.002)
        # Returning closes the connection, which is what ends the body.

    async def scenario() -> tuple[RawServer, list[Any]]:
        async with RawServer(serve_until_close) as server:
            return server, await complete_all(server.backend(), ["one", "two", "three"])

    server, completions = asyncio.run(scenario())
    assert [c.choices[0].text for c in completions] == ["seen: one", "seen: two", "seen: three"]
    assert server.connections == 3  # a closed connection is never reused
    assert all(c.retries == 0 for c in completions)


def test_headers_and_body_split_across_many_writes() -> None:
    async def serve_in_pieces(connection: ServerConnection) -> None:
        while (body := await connection.read_request()) is not None:
            whole = sized_answer(body)
            head_end = whole.index(b"\r\n\r\n")
            # Cut inside the status line, inside a header name, between "\r" and "\n", inside
            # the blank line that ends the head, and inside the body.
            cuts = sorted(
                {3, 11, 30, 45, head_end + 1, head_end + 3, head_end + 10, len(whole) - 2}
            )
            bounds = [0, *cuts, len(whole)]
            pieces = [whole[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]
            await connection.send(*pieces, pause_s=0.002)

    async def scenario() -> tuple[RawServer, list[Any]]:
        async with RawServer(serve_in_pieces) as server:
            return server, await complete_all(server.backend(), ["split one", "split two"])

    server, completions = asyncio.run(scenario())
    assert [c.choices[0].text for c in completions] == ["seen: split one", "seen: split two"]
    assert server.connections == 1


def test_interim_100_continue_is_skipped() -> None:
    async def serve_with_interim(connection: ServerConnection) -> None:
        while (body := await connection.read_request()) is not None:
            interim = b"HTTP/1.1 100 Continue\r\n\r\n"
            await connection.send(interim, sized_answer(body), pause_s=0.002)

    async def scenario() -> list[Any]:
        async with RawServer(serve_with_interim) as server:
            return await complete_all(server.backend(), ["after interim"])

    [completion] = asyncio.run(scenario())
    assert completion.choices[0].text == "seen: after interim"


# -- connection reuse ------------------------------------------------------------------------------
def test_keep_alive_connections_are_reused() -> None:
    async def scenario() -> tuple[RawServer, list[Any]]:
        async with RawServer(serve_sized) as server:
            backend = server.backend(max_connections=4)
            texts = [f"request {i}" for i in range(40)]
            # 20 requests at once (at most 4 connections open), then 20 one after the other.
            at_once = await asyncio.gather(*(backend.complete(ask(t)) for t in texts[:20]))
            return server, [*at_once, *await complete_all(backend, texts[20:])]

    server, completions = asyncio.run(scenario())
    # Each answer went back to the request it answers.
    assert [c.choices[0].text for c in completions] == [f"seen: request {i}" for i in range(40)]
    # the 20 at once fill the 4 allowed connections; the other 36 requests reuse them
    assert server.connections == 4


@pytest.mark.parametrize("closes_when", ["after_answer", "on_next_request"])
def test_server_closing_a_kept_alive_connection_is_retried_transparently(
    closes_when: str,
) -> None:
    """A pooled connection the server dropped must not fail the request, nor count a retry."""
    stale_closes = 0

    async def serve_one_per_connection(connection: ServerConnection) -> None:
        nonlocal stale_closes
        body = await connection.read_request()
        assert body is not None
        # Says keep-alive, yet serves only one answer per connection (an idle timeout).
        await connection.send(sized_answer(body))
        if closes_when == "on_next_request":  # the close races the client's next request
            if await connection.read_request() is not None:
                stale_closes += 1

    async def scenario() -> tuple[RawServer, list[Any]]:
        async with RawServer(serve_one_per_connection) as server:
            texts = [f"turn {i}" for i in range(6)]
            return server, await complete_all(server.backend(max_retries=0), texts)

    server, completions = asyncio.run(scenario())
    assert [c.choices[0].text for c in completions] == [f"seen: turn {i}" for i in range(6)]
    assert all(c.retries == 0 for c in completions)
    assert server.connections == 6
    if closes_when == "on_next_request":
        # Requests 2..6 each met a connection the server closed on receipt, and were re-sent.
        assert stale_closes == 5 and len(server.requests) == 11


CUT_ANSWERS = {
    "content_length_cut": b"HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n"
    + b'{"choices": [{"message": ',
    "chunked_cut": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b'10\r\n{"choices": [{"m\r\n8\r\nessage"',
    "head_cut": b"HTTP/1.1 200 OK\r\nContent-Le",
}


@pytest.mark.parametrize("cut", sorted(CUT_ANSWERS))
def test_answer_cut_mid_way_is_an_error_outcome_not_a_hang(cut: str) -> None:
    async def serve_then_cut(connection: ServerConnection) -> None:
        body = await connection.read_request()
        if body is not None and body["messages"][0]["content"] == "fine":
            await connection.send(sized_answer(body))  # keep-alive: the next request reuses it
            body = await connection.read_request()
        if body is not None:
            await connection.send(CUT_ANSWERS[cut])

    async def scenario() -> tuple[RawServer, list[Any], LlmSession]:
        async with RawServer(serve_then_cut) as server:
            backend = server.backend(max_retries=1, timeout_s=30.0)
            session = LlmSession(backend, concurrency=1)
            try:
                outcomes = await session.arun([ask("fine"), ask("cut")])
            finally:
                await backend.aclose()
            return server, outcomes, session

    started = time.perf_counter()
    server, outcomes, session = asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    assert outcomes[0].ok and outcomes[0].choices[0].text == "seen: fine"
    assert not outcomes[1].ok
    assert "gave up after 2 attempts" in (outcomes[1].error or "")
    assert "closed in the middle of the answer" in (outcomes[1].error or "")
    # Bytes of an answer had arrived, so the cut is a counted retry, not a silent re-send.
    assert len(server.requests) == 3 and session.usage().retries == 1
    assert elapsed < 10.0  # far below timeout_s: the cut is seen at once


def test_answer_stalled_mid_way_times_out() -> None:
    async def serve_half_then_stall(connection: ServerConnection) -> None:
        while (body := await connection.read_request()) is not None:
            whole = sized_answer(body)
            await connection.send(whole[: len(whole) // 2])
            # Send nothing more; the client's watchdog must give up and close the connection.

    async def scenario() -> None:
        async with RawServer(serve_half_then_stall) as server:
            await complete_all(server.backend(timeout_s=0.3, max_retries=1), ["stall"])

    started = time.perf_counter()
    with pytest.raises(RequestFailed, match="no answer within timeout_s=0.3") as failure:
        asyncio.run(scenario())
    assert failure.value.retries == 1
    assert time.perf_counter() - started < 10.0


BROKEN_FRAMING = {
    "chunk_size_not_hex": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
    "chunk_longer_than_declared": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"2\r\n{}}\r\n0\r\n\r\n",
    "not_http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
}


@pytest.mark.parametrize("framing", sorted(BROKEN_FRAMING))
def test_broken_framing_is_a_clear_error(framing: str) -> None:
    async def serve_broken(connection: ServerConnection) -> None:
        if await connection.read_request() is not None:
            await connection.send(BROKEN_FRAMING[framing])
            # Keep the connection open (the client must not wait for more) until the client,
            # having given up on it, closes it.
            assert await connection.reader.read() == b""

    async def scenario() -> None:
        async with RawServer(serve_broken) as server:
            await complete_all(server.backend(max_retries=0, timeout_s=30.0), ["x"])

    started = time.perf_counter()
    with pytest.raises(RequestFailed, match="the answer is not HTTP/1.1") as failure:
        asyncio.run(scenario())
    assert time.perf_counter() - started < 10.0  # far below timeout_s: not waited out
    assert "\n" not in str(failure.value)


# -- TLS ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_ca() -> trustme.CA:
    return trustme.CA()


def tls_server_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


def test_https_with_an_untrusted_certificate_fails_at_once_with_the_fix(
    private_ca: trustme.CA,
) -> None:
    async def scenario() -> None:
        tls = tls_server_context(private_ca, "127.0.0.1")
        async with RawServer(serve_sized, tls=tls) as server:
            await complete_all(server.backend(max_retries=5, backoff_base_s=30.0), ["secret"])

    started = time.perf_counter()
    with pytest.raises(RequestFailed) as failure:
        asyncio.run(scenario())
    elapsed = time.perf_counter() - started
    message = str(failure.value)
    assert "\n" not in message
    assert "TLS certificate was refused" in message
    assert "unable to get local issuer certificate" in message
    assert "SSL_CERT_FILE" in message
    assert failure.value.retries == 0 and elapsed < 10.0  # not retried: retrying cannot help


def test_https_certificate_for_another_name_says_to_use_that_name(
    private_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file = tmp_path / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))

    async def scenario() -> None:
        async with RawServer(serve_sized, tls=tls_server_context(private_ca, "localhost")) as srv:
            await complete_all(srv.backend(max_retries=3), ["x"])

    with pytest.raises(RequestFailed, match="mismatch") as failure:
        asyncio.run(scenario())
    assert "host name that the server's certificate names" in str(failure.value)


def test_https_with_the_private_ca_trusted_through_ssl_cert_file(
    private_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file = tmp_path / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    tls_versions: list[str] = []

    async def serve_sized_then_close(connection: ServerConnection) -> None:
        tls_versions.append(connection.writer.get_extra_info("ssl_object").version())
        for _ in range(2):  # two Content-Length answers, then one close-delimited
            body = await connection.read_request()
            if body is None:
                return
            await connection.send(sized_answer(body))
        body = await connection.read_request()
        if body is not None:
            payload = completion_json(body)
            await connection.send(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", payload[:9], payload[9:]
            )

    async def scenario() -> tuple[RawServer, list[Any]]:
        tls = tls_server_context(private_ca, "127.0.0.1")
        async with RawServer(serve_sized_then_close, tls=tls) as server:
            texts = ["over tls 1", "over tls 2", "over tls 3", "over tls 4"]
            return server, await complete_all(server.backend(), texts)

    server, completions = asyncio.run(scenario())
    assert [c.choices[0].text for c in completions] == [f"seen: over tls {i}" for i in range(1, 5)]
    assert server.connections == 2  # three answers on the first connection, one on the second
    assert tls_versions and all(version.startswith("TLSv1.") for version in tls_versions)


# -- session key locks -----------------------------------------------------------------------------
def test_session_drops_key_locks_and_still_sends_identical_requests_once(tmp_path: Path) -> None:
    async def slow_sized(connection: ServerConnection) -> None:
        while (body := await connection.read_request()) is not None:
            await asyncio.sleep(0.02)  # identical requests overlap while this one is in flight
            await connection.send(sized_answer(body))

    lock_counts: list[int] = []
    requests = [ask(f"distinct {i}") for i in range(120)] + [ask("same")] * 8

    async def scenario() -> tuple[RawServer, list[Any], LlmSession]:
        async with RawServer(slow_sized) as server:
            backend = server.backend(max_connections=8)
            with LlmJournal(tmp_path / "journal.sqlite") as journal:
                session = LlmSession(
                    backend,
                    journal=journal,
                    concurrency=8,
                    progress=lambda done, total: lock_counts.append(len(session._key_locks)),
                )
                try:
                    outcomes = await session.arun(requests)
                finally:
                    await backend.aclose()
            return server, outcomes, session

    server, outcomes, session = asyncio.run(scenario())
    assert all(outcome.ok for outcome in outcomes)
    assert session._key_locks == {}  # nothing left behind once the run is over
    assert max(lock_counts) <= 8  # never more than the requests in flight
    same = outcomes[120:]
    assert [o.from_journal for o in same].count(False) == 1
    assert len({o.choices[0].text for o in same}) == 1
    assert len(server.requests) == 121 and session.usage().requests_sent == 121
