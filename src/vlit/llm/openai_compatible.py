"""A client for any OpenAI-compatible ``/v1/chat/completions`` endpoint, on httpx.

Works with OpenAI, Azure OpenAI, vLLM, SGLang, llama.cpp server, Ollama, ``transformers serve``
and the test servers in ``tests/llm_servers.py``. One call of ``complete`` is one HTTP request
(and its retries): transient failures (429, 5xx, connection errors, timeouts) are retried with
exponential backoff and seeded jitter, honouring ``retry-after-ms``, ``Retry-After`` and
``x-should-retry``; configuration errors (401, 403, 404, 400) fail at once with a message that
says what to change.

Requests go through ``httpx.AsyncClient`` (``trust_env``: ``HTTPS_PROXY``, ``HTTP_PROXY``,
``ALL_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE`` and ``SSL_CERT_DIR`` work as usual). Under it,
``transport`` picks who speaks HTTP: ``aiohttp`` (through ``httpx-aiohttp``, the transport the
OpenAI SDK offers for high concurrency: one client, aiohttp's pool, about 0.6x the CPU per
request of httpx's own) or ``httpx``'s own (HTTP/2 over TLS when the ``h2`` package is
installed, ``pip install "vlit[http2]"``; one client per request in flight, each keeping its one
connection alive).
``auto`` takes httpx's own where HTTP/2 can be spoken (an https endpoint with ``h2``), aiohttp
elsewhere. Without ``SSL_CERT_FILE`` the server's certificate is checked against certifi's CA
bundle.

``base_url`` is kept whole: ``https://NAME.openai.azure.com/openai/deployments/D?api-version=V``
posts to ``.../openai/deployments/D/chat/completions?api-version=V``. Extra ``headers`` are sent
with every request; a value ``$NAME`` is read from the environment variable ``NAME`` when the
client starts. The API key is read from the variable named ``api_key_env`` and sent as
``Authorization: Bearer``. Neither header values nor the key appear in ``describe()``, errors
or the journal.

Example:
    >>> backend = OpenAICompatibleBackend(
    ...     base_url="http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-7B-Instruct"
    ... )
    >>> request = ChatRequest([Message("user", "Hi")], n=4)
    >>> completion = asyncio.run(backend.complete(request))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import importlib.util
import json
import os
import random
import ssl
import time
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import httpx

from vlit.errors import ConfigError, LlmError
from vlit.llm.base import ChatRequest, Choice, Completion
from vlit.llm.response_format import ResponseFormatNegotiation

if TYPE_CHECKING:
    from vlit.llm.config import LlmConfig

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY_CHARS = 300
DEFAULT_MAX_RESPONSE_BYTES = 16 * 1024 * 1024
TOKEN_LIMIT_PARAMS = ("max_tokens", "max_completion_tokens")
TokenLimitParam = Literal["max_tokens", "max_completion_tokens"]
TRANSPORTS = ("auto", "httpx", "aiohttp")
Transport = Literal["auto", "httpx", "aiohttp"]
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


def chat_request_body(
    request: ChatRequest,
    *,
    model: str,
    token_limit_param: TokenLimitParam = "max_tokens",
) -> dict[str, Any]:
    """The JSON body of ``POST /chat/completions`` for ``request`` (one place builds it).

    ``n`` is sent only above 1; ``token_limit_param`` names the field that carries
    ``request.max_tokens`` (newer OpenAI models take only ``max_completion_tokens``).

    >>> from vlit.llm.base import Message
    >>> body = chat_request_body(ChatRequest([Message("user", "Hi")], max_tokens=8), model="m")
    >>> body["max_tokens"], "n" in body
    (8, False)
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "temperature": request.temperature,
        token_limit_param: request.max_tokens,
        "seed": request.seed,
    }
    if request.n > 1:
        body["n"] = request.n
    if request.stop:
        body["stop"] = list(request.stop)
    if request.top_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = request.top_logprobs
    return body


def parse_header(text: str) -> tuple[str, str]:
    """``'NAME: VALUE'`` (as ``--llm-header`` takes it) -> ``(NAME, VALUE)``.

    >>> parse_header("api-key: $AZURE_OPENAI_KEY")
    ('api-key', '$AZURE_OPENAI_KEY')
    """
    name, colon, value = text.partition(":")
    name, value = name.strip(), value.strip()
    if not colon or not name or any(c in name for c in " \t\r\n") or "\n" in value:
        raise ConfigError(
            f"header {text!r} is not 'NAME: VALUE'",
            fix="write it as --llm-header 'api-key: $AZURE_OPENAI_KEY' (a $NAME value is read "
            "from that environment variable)",
        )
    return name, value


class OpenAICompatibleBackend:
    """Chat completions over HTTP from an OpenAI-compatible server.

    Args:
        base_url: the API root, e.g. ``https://api.openai.com/v1`` or ``http://127.0.0.1:8000/v1``;
            a query (Azure's ``?api-version=...``) is kept on every request.
        model: the model name the server knows.
        api_key_env: name of the environment variable holding the key (may be unset for local
            servers that need none).
        headers: extra headers for every request; a value ``$NAME`` is read from the
            environment variable ``NAME``.
        token_limit_param: ``max_tokens`` (default) or ``max_completion_tokens``.
        max_response_bytes: an answer larger than this fails its request (not retried).
        timeout_s: per-attempt timeout (connecting, sending and reading the whole answer).
        max_retries: retries after the first attempt for transient failures.
        supports_n: send ``n`` natively; when false the session asks for each rollout in a
            request of its own, with its own seed (it does so too for rollouts a server leaves
            out of a shorter answer).
        backoff_base_s / backoff_max_s: exponential backoff ``base * 2**attempt`` (capped),
            scaled by a seeded jitter factor in [0.5, 1].
        max_retry_after_s: the longest server-requested wait honoured before giving up.
        max_connections: keep-alive connections kept open; match the session's concurrency.
        http2: use HTTP/2 over TLS; default: when the ``h2`` package is installed.
        transport: ``auto``, ``httpx`` or ``aiohttp``: who speaks HTTP under httpx (module doc).
        retry_seed: seed of the jitter, so a rerun waits the same way.
    """

    kind = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        headers: Mapping[str, str] | None = None,
        token_limit_param: TokenLimitParam = "max_tokens",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        timeout_s: float = 120.0,
        max_retries: int = 6,
        supports_n: bool = True,
        backoff_base_s: float = 1.0,
        backoff_max_s: float = 60.0,
        max_retry_after_s: float = 300.0,
        max_connections: int = 64,
        http2: bool | None = None,
        transport: Transport = "auto",
        retry_seed: int = 0,
    ) -> None:
        address = urllib.parse.urlsplit(base_url.strip())
        if address.scheme not in ("http", "https") or not address.hostname:
            raise ConfigError(
                f"base_url {base_url!r} is not an http:// or https:// address",
                fix="set base_url to the API root, e.g. http://127.0.0.1:8000/v1",
            )
        if token_limit_param not in TOKEN_LIMIT_PARAMS:
            raise ConfigError(
                f"unknown token_limit_param {token_limit_param!r}",
                fix=f"use one of: {', '.join(TOKEN_LIMIT_PARAMS)}",
            )
        if transport not in TRANSPORTS:
            raise ConfigError(
                f"unknown transport {transport!r}", fix=f"use one of: {', '.join(TRANSPORTS)}"
            )
        if max_response_bytes < 1:
            raise ConfigError(
                f"max_response_bytes must be at least 1, not {max_response_bytes}",
                fix="e.g. max_response_bytes: 16777216 (16 MiB)",
            )
        self.base_url = urllib.parse.urlunsplit(address._replace(path=address.path.rstrip("/")))
        self.chat_url, self._models_url = (
            urllib.parse.urlunsplit(address._replace(path=address.path.rstrip("/") + endpoint))
            for endpoint in ("/chat/completions", "/models")
        )
        self._chat_address = httpx.URL(self.chat_url)  # parsed once, not per request
        self.model = model
        self.api_key_env = api_key_env
        self.headers = dict(headers or {})
        for name, value in self.headers.items():
            if value.startswith("$") and not os.environ.get(value[1:], "").strip():
                raise ConfigError(
                    f"header {name!r} takes its value from the environment variable "
                    f"{value[1:]}, which is not set",
                    fix=f"export {value[1:]}=... before running vlit",
                )
        self.token_limit_param = token_limit_param
        self.max_response_bytes = max_response_bytes
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.supports_n = supports_n
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.max_retry_after_s = max_retry_after_s
        self.max_connections = max_connections
        self.http2 = importlib.util.find_spec("h2") is not None if http2 is None else http2
        self._jitter = random.Random(retry_seed)
        self.response_format = ResponseFormatNegotiation()  # sent until refused under auto
        self._https = address.scheme == "https"
        self.transport = _pick_transport(transport, http2=self.http2 and self._https)
        self._transport_errors: tuple[type[Exception], ...] = (httpx.RequestError,)
        if self.transport == "aiohttp":  # the errors httpx-aiohttp passes on unmapped
            import aiohttp

            self._transport_errors += (aiohttp.ClientError,)
        self._clients: list[httpx.AsyncClient] = []
        self._idle_clients: list[httpx.AsyncClient] = []
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._ssl: ssl.SSLContext | None = None
        self._secrets: list[str] = []

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
            headers=config.headers,
            token_limit_param=config.token_limit_param,
            max_response_bytes=config.max_response_bytes,
            timeout_s=config.timeout_s,
            max_retries=config.max_retries,
            supports_n=config.supports_n,
            max_connections=max(config.concurrency, 1),
            transport=config.transport,
        )

    @property
    def model_name(self) -> str:
        return self.model

    def describe(self) -> dict[str, Any]:
        """Settings for provenance: header names, never their values."""
        return {
            "kind": self.kind,
            "base_url": self.base_url,
            "model": self.model,
            "api_key_env": self.api_key_env,
            "headers": sorted(self.headers),
            "token_limit_param": self.token_limit_param,
            "timeout_s": self.timeout_s,
            "max_retries": self.max_retries,
            "supports_n": self.supports_n,
            "transport": self.transport,
        }

    async def aclose(self) -> None:
        clients, self._clients, self._client_loop = self._clients, [], None
        self._idle_clients = []
        for client in clients:
            await client.aclose()

    # -- requests -----------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> Completion:
        """One HTTP request (with retries): 1 to ``request.n`` choices, or ``RequestFailed``.

        Without ``supports_n`` only rollout 0 is asked for (``n`` is not sent). A server that
        refuses ``response_format`` (HTTP 400 naming it) under the setting ``auto`` is asked
        again without it, and is never sent it again.
        """
        if not self.supports_n and request.n > 1:
            request = dataclasses.replace(request, n=1)
        try:
            completion = await self._send(self._payload(request))
        except RequestFailed as failure:
            if not self.response_format.falls_back(request.output, str(failure)):
                raise
            completion = await self._send(self._payload(request))
        completion.choices = completion.choices[: request.n]
        return completion

    def _payload(self, request: ChatRequest) -> bytes:
        body = chat_request_body(
            request, model=self.model, token_limit_param=self.token_limit_param
        )
        body.update(self.response_format.fields(request.output))
        return json.dumps(body).encode()

    async def _send(self, payload: bytes) -> Completion:
        """POST ``payload`` to the chat URL, retrying transient failures; the parsed answer."""
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

    async def _attempt(self, payload: bytes) -> Completion:
        client = self._take_client()
        try:
            async with asyncio.timeout(self.timeout_s):
                async with client.stream("POST", self._chat_address, content=payload) as response:
                    status, headers = response.status_code, response.headers
                    body = await self._read_capped(response, status)
        except TimeoutError:
            raise _Retryable(f"no answer within timeout_s={self.timeout_s:g}") from None
        except self._transport_errors as error:
            certificate = _certificate_error(error)
            if certificate is not None:
                raise self._certificate_failure(certificate) from None
            if _timed_out(error):
                raise _Retryable(f"no answer within timeout_s={self.timeout_s:g}") from None
            # refused, reset, DNS, a proxy that failed, or an answer that is not HTTP
            shown = _aiohttp_cause(error) or error
            raise _Retryable(
                f"connection error ({type(shown).__name__}: {shown or 'no detail'})"
            ) from None
        finally:
            if self.transport == "httpx" and not client.is_closed:
                self._idle_clients.append(client)
        if status == 200:
            return self._parse(body)
        detail = self._redact(body.decode("utf-8", errors="replace")[:MAX_ERROR_BODY_CHARS])
        should_retry = headers.get("x-should-retry", "").strip().lower()
        if should_retry == "true" or (
            should_retry != "false" and (status in RETRYABLE_STATUS or status >= 500)
        ):
            raise _Retryable(
                f"HTTP {status}: {detail}", retry_after_s=retry_after_s(headers), status=status
            )
        if status in (401, 403):
            raise RequestFailed(
                f"{self._where()}: the server refused the credentials (HTTP {status}): {detail}",
                fix=f"set the environment variable {self.api_key_env} to a valid API key "
                "(or configure api_key_env with the name of the variable that holds it; "
                "Azure takes the key in an 'api-key' header: --llm-header 'api-key: $VAR')",
            )
        if status == 404:
            raise RequestFailed(
                f"{self._where()}: not found (HTTP 404): {detail}",
                fix=f"check the model name {self.model!r} (GET {self._models_url} lists "
                "what the server serves) and that base_url ends with the API root, e.g. /v1",
            )
        raise RequestFailed(
            f"{self._where()}: the server rejected the request (HTTP {status}): {detail}",
            fix="check the request parameters this server accepts (n, seed, logprobs, stop, "
            f"{self.token_limit_param}); set supports_n=false if it rejects n, or "
            "token_limit_param=max_completion_tokens if it rejects max_tokens",
        )

    async def _read_capped(self, response: httpx.Response, status: int) -> bytes:
        """The answer's body, or ``RequestFailed`` as soon as it passes ``max_response_bytes``."""
        cap = self.max_response_bytes if status == 200 else MAX_ERROR_BODY_CHARS * 4
        declared = response.headers.get("content-length", "")
        if status == 200 and declared.isdigit() and int(declared) > cap:
            raise self._too_large(f"it declares {int(declared)} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > cap:
                if status != 200:
                    break  # an error body is only quoted: its start is enough
                raise self._too_large(f"more than {cap} bytes arrived")
        return bytes(body)

    def _too_large(self, how: str) -> RequestFailed:
        return RequestFailed(
            f"{self._where()}: the answer is larger than max_response_bytes="
            f"{self.max_response_bytes} ({how}); the request is failed",
            fix="lower max_tokens, or raise llm.max_response_bytes if such answers are expected",
        )

    def _parse(self, body: bytes) -> Completion:
        try:
            data = json.loads(body)
            choices = [_parse_choice(raw) for raw in data["choices"]]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            snippet = self._redact(body.decode("utf-8", errors="replace")[:MAX_ERROR_BODY_CHARS])
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
    def _take_client(self) -> httpx.AsyncClient:
        """A client of the running loop: on aiohttp the one client, on httpx's transport one
        that no other request is using (given back after).

        httpcore's pool looks at every connection it holds, and checks each idle one's socket,
        whenever a request starts or ends: one client of 64 connections spent ~6 ms of CPU per
        request on that. A client per request in flight, with its one keep-alive connection,
        makes that look a single one. Connections belong to one loop: a new loop (a new
        ``asyncio.run``) gets new clients, which read the key and headers again.
        """
        loop = asyncio.get_running_loop()
        if self._client_loop is not loop:
            self._clients, self._idle_clients, self._client_loop = [], [], loop
        if self.transport == "aiohttp" and self._clients:
            return self._clients[0]
        if self._idle_clients:
            return self._idle_clients.pop()
        client = self._new_client()
        self._clients.append(client)
        return client

    def _new_client(self) -> httpx.AsyncClient:
        headers = {"User-Agent": "vlit", "Content-Type": "application/json"}
        secrets = []
        key = os.environ.get(self.api_key_env, "").strip()
        if key:
            headers["Authorization"] = f"Bearer {key}"
            secrets.append(key)
        for name, value in self.headers.items():
            headers[name] = self._header_value(name, value)
            secrets.append(headers[name])
        self._secrets = [secret for secret in secrets if len(secret) >= 4]
        options: dict[str, Any] = {
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout_s),
            "verify": self._ssl_context(),
            "trust_env": True,
        }
        if self.transport == "aiohttp":
            from httpx_aiohttp import HttpxAiohttpClient

            # aiohttp's limit 0 is no limit: the session's concurrency is the one limit.
            limits = httpx.Limits(max_connections=0, keepalive_expiry=30.0)
            return HttpxAiohttpClient(limits=limits, **options)
        # One request at a time uses a client (see _take_client).
        limits = httpx.Limits(
            max_connections=None, max_keepalive_connections=1, keepalive_expiry=30.0
        )
        # HTTP/2 is only negotiated over TLS; asking for it on http:// costs CPU.
        return httpx.AsyncClient(limits=limits, http2=self.http2 and self._https, **options)

    def _header_value(self, name: str, value: str) -> str:
        if not value.startswith("$"):
            return value
        variable = value[1:]
        found = os.environ.get(variable, "").strip()
        if not found:  # set when the backend was built, unset since
            raise RequestFailed(
                f"{self._where()}: header {name!r} takes its value from the environment "
                f"variable {variable}, which is not set",
                fix=f"export {variable}=... before running vlit",
            )
        return found

    def _ssl_context(self) -> ssl.SSLContext:
        """The CA certificates, loaded on first use for all clients and loops (~0.05 s of CPU),
        where TLS may be spoken: an https endpoint, or any proxy (httpx reads the same
        variables). A plain http endpoint reached directly gets a context that trusts no
        certificate at all, and never uses it."""
        if self._ssl is None:
            if self._https or urllib.request.getproxies():
                self._ssl = httpx.create_ssl_context(trust_env=True)
            else:
                self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return self._ssl

    def _certificate_failure(self, error: ssl.SSLCertVerificationError) -> RequestFailed:
        if error.verify_code in NAME_MISMATCH_CODES:
            fix = (
                "put in base_url a host name that the server's certificate names "
                "(e.g. localhost instead of 127.0.0.1)"
            )
        else:
            fix = (
                "set the environment variable SSL_CERT_FILE to a PEM file with the certificate "
                "authority that signed it (SSL_CERT_DIR for a folder of them) before vlit starts"
            )
        return RequestFailed(
            f"{self._where()}: the server's TLS certificate was refused ({error.verify_message})",
            fix=fix,
        )

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        jitter = self._jitter.random()
        if retry_after is not None:
            # Honour the server's wait, plus up to 10% so parallel clients do not return at once.
            return min(retry_after, self.max_retry_after_s) * (1.0 + 0.1 * jitter)
        return min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt) * (0.5 + 0.5 * jitter)

    def _where(self) -> str:
        return f"{self.base_url} (model {self.model!r})"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _pick_transport(transport: Transport, *, http2: bool) -> Literal["httpx", "aiohttp"]:
    """``auto``: httpx's own transport where HTTP/2 will be spoken, aiohttp elsewhere (and
    httpx's own when ``httpx-aiohttp`` is not installed)."""
    if transport != "auto":
        return transport
    if http2 or importlib.util.find_spec("httpx_aiohttp") is None:
        return "httpx"
    return "aiohttp"


def _aiohttp_cause(error: BaseException) -> BaseException | None:
    """The aiohttp error behind ``error`` (httpx-aiohttp raises httpx's errors from them)."""
    for seen in (error, error.__cause__):
        if seen is not None and type(seen).__module__.startswith("aiohttp"):
            return seen
    return None


def _timed_out(error: BaseException) -> bool:
    """Whether a transport error is a timeout: httpx-aiohttp reports aiohttp's connection
    errors (a reset, a server that hung up) as ``httpx.ConnectTimeout``, so its cause decides."""
    cause = _aiohttp_cause(error)
    if cause is not None:
        return isinstance(cause, TimeoutError)
    return isinstance(error, httpx.TimeoutException)


def _certificate_error(error: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate refusal behind a transport error, if that is what it is (aiohttp's
    subclass of it holds OpenSSL's own in ``certificate_error``)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError) and hasattr(seen, "verify_code"):
            return seen
        seen = getattr(seen, "certificate_error", None) or seen.__cause__ or seen.__context__
    return None


def retry_after_s(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds the server asks to wait: ``retry-after-ms`` first, then ``Retry-After``.

    >>> retry_after_s({"retry-after-ms": "1500", "retry-after": "9"})
    1.5
    """
    milliseconds = headers.get("retry-after-ms")
    if milliseconds is not None:
        try:
            return max(0.0, float(milliseconds) / 1000)
        except ValueError:
            pass
    return parse_retry_after(headers.get("retry-after"), now=now)


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
