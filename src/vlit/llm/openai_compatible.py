"""A client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with OpenAI, vLLM, SGLang, llama.cpp server, Ollama and the test servers in
``tests/llm_servers.py``. Transient failures (429, 5xx, connection errors, timeouts) are retried
with exponential backoff and seeded jitter, honouring ``Retry-After``; configuration errors (401,
403, 404, 400) fail at once with a message that says what to change.

The API key is read from an environment variable whose *name* is configured; its value is sent
in the ``Authorization`` header and nowhere else (not in ``describe()``, errors or the journal).

The transport is a small HTTP/1.1 client over asyncio: a pool of keep-alive connections, TLS
with the system's CA certificates, ``Content-Length``, chunked and close-delimited answers, and
a request that meets a kept-alive connection the server has just closed is sent again on a new
one. A general-purpose client such as httpx costs ~1.7 ms of CPU per request, which caps one
core near 600 requests/s; this one costs a fraction of that, so a session with many requests in
flight is limited by the server, not by the client. Proxies (``HTTPS_PROXY``) are not used:
point ``base_url`` at the server itself.

To trust a private certificate authority (say, a self-hosted vLLM behind TLS), set the
environment variable ``SSL_CERT_FILE`` to a PEM file holding it, or ``SSL_CERT_DIR`` to a folder
of hashed certificates (``openssl rehash``), before the first request. OpenSSL reads them in
place of its default file or folder, so if the process also talks to public servers, append
your CA to a copy of the system bundle.

Example:
    >>> backend = OpenAICompatibleBackend(
    ...     base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"
    ... )
    >>> request = ChatRequest([Message("user", "Hi")], n=4)
    >>> completion = asyncio.run(backend.complete(request))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlit.errors import ConfigError, LlmError
from vlit.llm.base import ChatRequest, Choice, Completion, rollout_seed
from vlit.llm.response_format import ResponseFormatNegotiation

if TYPE_CHECKING:
    from vlit.llm.config import LlmConfig

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY_CHARS = 300
# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
NAME_MISMATCH_CODES = frozenset({62, 64})


class RequestFailed(LlmError):
    """A request failed for good; carries how many retries and 429s it went through."""

    def __init__(
        self, problem: str, *, fix: str | None = None, retries: int = 0, rate_limited: int = 0
    ) -> None:
        super().__init__(problem, fix=fix)
        self.retries = retries
        self.rate_limited = rate_limited


class _Retryable(Exception):
    """Internal: one attempt failed in a way worth trying again."""

    def __init__(self, reason: str, *, retry_after_s: float | None = None, status: int = 0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.status = status


class OpenAICompatibleBackend:
    """Chat completions over HTTP from an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``.
        model: the model name the server knows.
        api_key_env: name of the environment variable holding the key (may be unset for local
            servers that need none).
        timeout_s: per-attempt timeout.
        max_retries: retries after the first attempt for transient failures.
        supports_n: send ``n`` natively; when false (or when the server returns fewer choices),
            the missing rollouts are asked for one by one with their own seeds.
        backoff_base_s / backoff_max_s: exponential backoff ``base * 2**attempt`` (capped),
            scaled by a seeded jitter factor in [0.5, 1].
        max_retry_after_s: the longest ``Retry-After`` wait honoured before giving up.
        max_connections: most connections (and so requests) open at once; match the session's
            concurrency.
        retry_seed: seed of the jitter, so a rerun waits the same way.
    """

    kind = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        max_retries: int = 6,
        supports_n: bool = True,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        max_connections: int = 64,
        retry_seed: int = 0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        address = urllib.parse.urlsplit(self.base_url)
        if address.scheme not in ("http", "https") or not address.hostname:
            raise ConfigError(
                f"base_url {base_url!r} is not an http:// or https:// address",
                fix="set base_url to the API root, e.g. http://127.0.0.1:8000/v1",
            )
        self._address = address
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.supports_n = supports_n
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.max_connections = max_connections
        self._jitter = random.Random(retry_seed)
        self.response_format = ResponseFormatNegotiation()  # sent until refused under auto
        self._pool: _ConnectionPool | None = None
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def from_config(cls, config: LlmConfig) -> OpenAICompatibleBackend:
        if not config.base_url:
            raise ConfigError(
                "an 'openai' LLM backend needs base_url",
                fix="set llm.base_url, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1",
            )
        return cls(
            base_url=config.base_url,
            model=config.model or "",
            api_key_env=config.api_key_env,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            supports_n=config.supports_n,
            max_connections=max(config.concurrency, 1),
        )

    @property
    def model_name(self) -> str:
        return self.model

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "supports_n": self.supports_n,
        }

    async def aclose(self) -> None:
        if self._pool is not None:
            self._pool.close()
        self._pool = None

    # -- requests -----------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> Completion:
        """Return exactly ``request.n`` choices (rollouts 0..n-1), or raise ``RequestFailed``.

        A server that refuses ``response_format`` (HTTP 400 naming it) under the setting
        ``auto`` is asked again without it, and is never sent it again.
        """
        try:
            return await self._complete_rollouts(request)
        except RequestFailed as failure:
            if not self.response_format.falls_back(request.output, str(failure)):
                raise
            return await self._complete_rollouts(request)

    async def _complete_rollouts(self, request: ChatRequest) -> Completion:
        if self.supports_n and request.n > 1:
            first = await self._call(request, n=request.n, seed=request.seed)
            missing = list(range(len(first.choices), request.n))
            first.choices = first.choices[: request.n]
            parts = [first]
        else:
            missing = list(range(request.n))
            parts = []
        calls = [self._call(request, n=1, seed=rollout_seed(request.seed, i)) for i in missing]
        if len(calls) == 1:
            parts.append(await calls[0])  # the usual n=1 case: no task and no gather
        elif calls:
            parts += await asyncio.gather(*calls)
        if len(parts) == 1:
            return parts[0]
        return Completion(
            choices=[choice for part in parts for choice in part.choices],
            prompt_tokens=sum(part.prompt_tokens for part in parts),
            completion_tokens=sum(part.completion_tokens for part in parts),
            model=parts[0].model,
            retries=sum(part.retries for part in parts),
            rate_limited=sum(part.rate_limited for part in parts),
        )

    async def _call(self, request: ChatRequest, *, n: int, seed: int) -> Completion:
        """One logical call with retries; returns at least one choice."""
        payload = json.dumps(self._body(request, n=n, seed=seed)).encode()
        retries = rate_limited = 0
        while True:
            try:
                completion = await self._attempt(payload)
            except _Retryable as failure:
                if failure.status == 429:
                    rate_limited += 1
                if retries >= self.max_retries:
                    raise RequestFailed(
                        f"{self._where()}: gave up after {retries + 1} attempts; "
                        f"last failure: {failure.reason}",
                        fix="check that the server is up and not overloaded, lower the "
                        "concurrency, or raise max_retries / timeout_s",
                        retries=retries,
                        rate_limited=rate_limited,
                    ) from None
                await asyncio.sleep(self._delay(retries, failure.retry_after_s))
                retries += 1
            except RequestFailed as failure:
                failure.retries, failure.rate_limited = retries, rate_limited
                raise
            else:
                completion.retries, completion.rate_limited = retries, rate_limited
                return completion

    def _body(self, request: ChatRequest, *, n: int, seed: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": seed,
        }
        if n > 1:
            body["n"] = n
        if request.stop:
            body["stop"] = list(request.stop)
        if request.top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = request.top_logprobs
        body.update(self.response_format.fields(request.output))
        return body

    async def _attempt(self, payload: bytes) -> Completion:
        pool = self._get_pool()
        try:
            response = await pool.exchange(payload)
        except TimeoutError:
            raise _Retryable(f"no answer within timeout_s={self.timeout_s:g}") from None
        except ssl.SSLCertVerificationError as error:
            if error.verify_code in NAME_MISMATCH_CODES:
                fix = (
                    "put in base_url a host name that the server's certificate names "
                    "(e.g. localhost instead of 127.0.0.1)"
                )
            else:
                fix = (
                    "install the certificate authority that signed it into the system store, "
                    "or set the environment variable SSL_CERT_FILE to a PEM file with that CA "
                    "(SSL_CERT_DIR for a folder of them) before vlit starts"
                )
            raise RequestFailed(
                f"{self._where()}: the server's TLS certificate was refused "
                f"({error.verify_message})",
                fix=fix,
            ) from None
        except OSError as error:  # refused, reset, DNS, TLS, or an answer that is not HTTP
            raise _Retryable(f"connection error ({type(error).__name__}: {error})") from None
        status = response.status
        if status == 200:
            return self._parse(response)
        detail = self._redact(response.text()[:MAX_ERROR_BODY_CHARS])
        if status in RETRYABLE_STATUS or status >= 500:
            retry_after = parse_retry_after(response.headers.get("retry-after"))
            raise _Retryable(f"HTTP {status}: {detail}", retry_after_s=retry_after, status=status)
        if status in (401, 403):
            raise RequestFailed(
                f"{self._where()}: the server refused the credentials (HTTP {status}): {detail}",
                fix=f"set the environment variable {self.api_key_env} to a valid API key "
                "(or configure api_key_env with the name of the variable that holds it)",
            )
        if status == 404:
            raise RequestFailed(
                f"{self._where()}: not found (HTTP 404): {detail}",
                fix=f"check the model name {self.model!r} (GET {self.base_url}/models lists "
                "what the server serves) and that base_url ends with the API root, e.g. /v1",
            )
        raise RequestFailed(
            f"{self._where()}: the server rejected the request (HTTP {status}): {detail}",
            fix="check the request parameters this server accepts (n, seed, logprobs, stop); "
            "set supports_n=false if it rejects n",
        )

    def _parse(self, response: _HttpResponse) -> Completion:
        try:
            data = json.loads(response.body)
            raw_choices = data["choices"]
            choices = [_parse_choice(raw) for raw in raw_choices]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            snippet = self._redact(response.text()[:MAX_ERROR_BODY_CHARS])
            raise RequestFailed(
                f"{self._where()}: the answer is not an OpenAI chat completion "
                f"({type(error).__name__}: {error}); body starts with {snippet!r}",
                fix="point base_url at the API root of an OpenAI-compatible server (e.g. .../v1)",
            ) from None
        if not choices:
            raise RequestFailed(
                f"{self._where()}: the answer has no choices",
                fix="check the server's logs; it returned an empty completion",
            )
        usage = data.get("usage") or {}
        return Completion(
            choices=choices,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            model=str(data.get("model") or self.model),
        )

    # -- helpers ------------------------------------------------------------------------------
    def _get_pool(self) -> _ConnectionPool:
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool.loop is not loop:
            # Connections belong to the event loop that opened them; each `session.run` has its
            # own loop, so a new loop gets a new pool (and reads the API key again).
            address = self._address
            host = address.netloc.rpartition("@")[2]
            lines = [
                f"POST {address.path}/chat/completions HTTP/1.1",
                f"Host: {host}",
                "User-Agent: vlit",
                "Accept: application/json",
                "Accept-Encoding: identity",
                "Content-Type: application/json",
            ]
            key = os.environ.get(self.api_key_env, "").strip()
            if key:
                lines.append(f"Authorization: Bearer {key}")
            self._pool = _ConnectionPool(
                loop=loop,
                host=address.hostname or "",
                port=address.port or (443 if address.scheme == "https" else 80),
                tls=self._ssl_context(),
                timeout_s=self.timeout_s,
                request_head="\r\n".join(lines).encode() + b"\r\n",
                size=self.max_connections,
            )
        return self._pool

    def _ssl_context(self) -> ssl.SSLContext | None:
        if self._address.scheme != "https":
            return None  # plain HTTP: no TLS, so no CA certificates to load
        # Loading CA certificates takes ~0.1 s: do it once for all pools and loops.
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
            self._ssl.set_alpn_protocols(["http/1.1"])
        return self._ssl

    def _delay(self, attempt: int, retry_after_s: float | None) -> float:
        jitter = self._jitter.random()
        if retry_after_s is not None:
            # Honour the server's wait, plus up to 10% so parallel clients do not return at once.
            return min(retry_after_s, self.max_retry_after_s) * (1.0 + 0.1 * jitter)
        return min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt) * (0.5 + 0.5 * jitter)

    def _where(self) -> str:
        return f"{self.base_url} (model {self.model!r})"

    def _redact(self, text: str) -> str:
        key = os.environ.get(self.api_key_env)
        if key and len(key) >= 4:
            text = text.replace(key, "***")
        return text


# -- HTTP/1.1 transport ----------------------------------------------------------------------------
@dataclass(frozen=True)
class _HttpResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    keep_alive: bool

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class _BrokenResponse(ConnectionError):
    """The server's answer is not a well-formed HTTP/1.x response."""


class _ConnectionPool:
    """Keep-alive connections to one server; at most ``size`` open, one request each at a time.

    Connecting and each request/answer exchange must finish within ``timeout_s`` (waiting for a
    free connection does not count). Exchanges are timed by one watchdog that wakes a few times
    per ``timeout_s``, which costs far less than a timer per request.
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        host: str,
        port: int,
        tls: ssl.SSLContext | None,
        timeout_s: float,
        request_head: bytes,
        size: int,
    ) -> None:
        self.loop = loop
        self._host, self._port, self._tls = host, port, tls
        self._timeout_s = timeout_s
        self._request_head = request_head
        self._slots = asyncio.Semaphore(max(size, 1))
        self._idle: list[_Connection] = []
        self._busy: dict[_Connection, float] = {}  # exchanges in flight -> their deadlines
        self._watchdog: asyncio.TimerHandle | None = None

    async def exchange(self, payload: bytes) -> _HttpResponse:
        """POST ``payload`` (JSON) and return the answer; raises ``OSError`` on transport errors."""
        request = self._request_head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        async with self._slots:
            connection = None
            while self._idle and connection is None:
                candidate = self._idle.pop()
                connection = candidate if candidate.reusable else None
            if connection is not None:
                try:
                    return await self._exchange_on(connection, request)
                except TimeoutError:
                    raise
                except OSError:
                    if connection.answer_started:
                        raise
                    # A kept-alive connection the server closed while it sat idle (its idle
                    # timeout raced our request): nothing was answered, so send the request
                    # again on a new connection instead of failing it or counting a retry.
            async with asyncio.timeout(self._timeout_s):
                _, connection = await self.loop.create_connection(
                    _Connection, self._host, self._port, ssl=self._tls
                )
            return await self._exchange_on(connection, request)

    async def _exchange_on(self, connection: _Connection, request: bytes) -> _HttpResponse:
        """One request/answer on ``connection``; keeps it for reuse when it can serve another."""
        self._busy[connection] = self.loop.time() + self._timeout_s
        if self._watchdog is None:
            self._watchdog = self.loop.call_later(self._timeout_s / 8, self._expire)
        try:
            response = await connection.exchange(request)
        except BaseException:  # timed out, cancelled or broken: its state is unknown
            connection.close()
            raise
        finally:
            del self._busy[connection]
        if connection.reusable:
            self._idle.append(connection)
        else:
            connection.close()
        return response

    def close(self) -> None:
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def _expire(self) -> None:
        """Fail the exchanges past their deadline; look again later while any are in flight."""
        now = self.loop.time()
        for connection, deadline in list(self._busy.items()):
            if deadline <= now:
                connection.fail(TimeoutError(f"no answer within {self._timeout_s:g} s"))
        self._watchdog = (
            self.loop.call_later(self._timeout_s / 8, self._expire) if self._busy else None
        )


class _Connection(asyncio.Protocol):
    """One HTTP/1.1 connection: writes a request, then parses the answer as bytes arrive."""

    def __init__(self) -> None:
        self._transport: asyncio.BaseTransport | None = None
        self._buffer = bytearray()
        self._answer: asyncio.Future[_HttpResponse] | None = None
        self._keep_alive = True
        self.answer_started = False  # whether any byte of the current answer has arrived

    @property
    def reusable(self) -> bool:
        """Open, idle, with nothing unread, and the server did not ask to close it."""
        transport = self._transport
        return (
            self._keep_alive
            and transport is not None
            and not transport.is_closing()
            and self._answer is None
            and not self._buffer
        )

    async def exchange(self, request: bytes) -> _HttpResponse:
        assert isinstance(self._transport, asyncio.WriteTransport)
        self._answer = asyncio.get_running_loop().create_future()
        self.answer_started = False
        try:
            self._transport.write(request)
            return await self._answer
        finally:
            self._answer = None

    def close(self) -> None:
        self._keep_alive = False
        if self._transport is not None:
            self._transport.close()

    def fail(self, error: Exception) -> None:
        """End the exchange in flight with ``error``."""
        if self._answer is not None and not self._answer.done():
            self._answer.set_exception(error)

    # asyncio.Protocol callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        self.answer_started = True
        self._deliver(at_eof=False)

    def eof_received(self) -> bool:
        self._deliver(at_eof=True)
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._keep_alive = False
        answer = self._answer
        if answer is not None and not answer.done():
            if isinstance(exc, OSError):
                answer.set_exception(exc)
            else:
                reason = f": {exc}" if exc is not None else ""
                answer.set_exception(
                    ConnectionResetError(
                        f"the server closed the connection before answering{reason}"
                    )
                )

    def _deliver(self, *, at_eof: bool) -> None:
        answer = self._answer
        if answer is None or answer.done():
            return  # bytes nobody asked for: `reusable` is now false, so it will be closed
        if at_eof and not self._buffer:
            self._keep_alive = False
            answer.set_exception(
                ConnectionResetError("the server closed the connection before answering")
            )
            return
        try:
            parsed = _parse_response(self._buffer, at_eof=at_eof)
        except ValueError as error:
            self._keep_alive = False
            answer.set_exception(_BrokenResponse(f"the answer is not HTTP/1.1: {error}"))
            return
        if parsed is not None:
            response, length = parsed
            del self._buffer[:length]
            self._keep_alive = response.keep_alive
            answer.set_result(response)


def _parse_response(data: bytearray, *, at_eof: bool) -> tuple[_HttpResponse, int] | None:
    """The response at the start of ``data`` and its length in bytes; ``None`` if incomplete.

    Raises ``ValueError`` when the bytes are not HTTP/1.x or the connection ended too early.
    """
    start = 0
    while True:  # skip interim answers (1xx)
        head_end = data.find(b"\r\n\r\n", start)
        if head_end < 0:
            return _incomplete(at_eof)
        status_line, *header_lines = bytes(data[start:head_end]).decode("latin-1").split("\r\n")
        version, _, rest = status_line.partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise ValueError(f"status line {status_line[:80]!r}")
        status = int(rest[:3])
        start = head_end + 4
        if status >= 200:
            break
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = _dechunk(data, start)
        if chunks is None:
            return _incomplete(at_eof)
        body, end = chunks
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length < 0:
            raise ValueError(f"negative Content-Length {length}")
        end = start + length
        if len(data) < end:
            return _incomplete(at_eof)
        body = bytes(data[start:end])
    elif status in (204, 304):
        body, end = b"", start
    elif at_eof:  # no length given: the body is everything up to the end of the connection
        body, end, keep_alive = bytes(data[start:]), len(data), False
    else:
        return None
    return _HttpResponse(status, headers, body, keep_alive), end


def _incomplete(at_eof: bool) -> tuple[_HttpResponse, int] | None:
    """``None`` (wait for more bytes), unless no more can come."""
    if at_eof:
        raise ValueError("the connection closed in the middle of the answer")
    return None


def _dechunk(data: bytearray, position: int) -> tuple[bytes, int] | None:
    """A chunked body starting at ``position``: its bytes and where it ends; ``None`` if cut."""
    parts: list[bytes] = []
    while True:
        line_end = data.find(b"\r\n", position)
        if line_end < 0:
            return None
        size_field = bytes(data[position:line_end]).split(b";", 1)[0].strip()  # drop extensions
        if not size_field or size_field.strip(b"0123456789abcdefABCDEF"):
            raise ValueError(f"chunk size {size_field[:20]!r} is not a hexadecimal number")
        size = int(size_field, 16)
        position = line_end + 2
        if size == 0:
            while True:  # optional trailer lines, then an empty line
                line_end = data.find(b"\r\n", position)
                if line_end < 0:
                    return None
                if line_end == position:
                    return b"".join(parts), position + 2
                position = line_end + 2
        if len(data) < position + size + 2:
            return None
        if data[position + size : position + size + 2] != b"\r\n":
            raise ValueError(f"a chunk is longer than its declared size {size}")
        parts.append(bytes(data[position : position + size]))
        position += size + 2


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta seconds or an HTTP date).

    >>> parse_retry_after("2")
    2.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _parse_choice(raw: dict[str, Any]) -> Choice:
    message = raw.get("message") or {}
    text = message.get("content")
    finish_reason = raw.get("finish_reason") or "stop"
    if text is None:
        # OpenAI puts a refusal in its own field and leaves content empty.
        refusal = message.get("refusal")
        text = refusal or ""
        if refusal:
            finish_reason = "refusal"
    if not isinstance(text, str):
        raise TypeError(f"message content is {type(text).__name__}, not text")
    return Choice(
        text=text,
        finish_reason=str(finish_reason),
        first_token_logprobs=_first_token_logprobs(raw.get("logprobs")),
    )


def _first_token_logprobs(logprobs: dict[str, Any] | None) -> dict[str, float] | None:
    if not logprobs or not logprobs.get("content"):
        return None
    first = logprobs["content"][0]
    candidates = first.get("top_logprobs") or [first]
    result: dict[str, float] = {}
    for candidate in candidates:
        token, value = str(candidate["token"]), float(candidate["logprob"])
        # Two token ids can print the same; keep the more likely one.
        result[token] = max(value, result.get(token, float("-inf")))
    return result
