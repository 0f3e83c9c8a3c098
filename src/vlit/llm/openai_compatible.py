"""A client for any OpenAI-compatible ``/v1/chat/completions`` endpoint.

Works with OpenAI, vLLM, SGLang, llama.cpp server, Ollama and the test servers in
``tests/llm_servers.py``. Transient failures (429, 5xx, connection errors, timeouts) are retried
with exponential backoff and seeded jitter, honouring ``Retry-After``; configuration errors (401,
403, 404, 400) fail at once with a message that says what to change.

The API key is read from an environment variable whose *name* is configured; its value is sent
in the ``Authorization`` header and nowhere else (not in ``describe()``, errors or the journal).

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
import os
import random
import ssl
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

from vlit.errors import ConfigError, LlmError
from vlit.llm.base import ChatRequest, Choice, Completion, rollout_seed

if TYPE_CHECKING:
    from vlit.llm.config import LlmConfig

RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
MAX_ERROR_BODY_CHARS = 300


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
        max_connections: size of the HTTP connection pool (match the session's concurrency).
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
        self._lanes: _Lanes | None = None
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
        if self._lanes is not None:
            await self._lanes.aclose()
        self._lanes = None

    # -- requests -----------------------------------------------------------------------------
    async def complete(self, request: ChatRequest) -> Completion:
        """Return exactly ``request.n`` choices (rollouts 0..n-1), or raise ``RequestFailed``."""
        if self.supports_n and request.n > 1:
            first = await self._call(request, n=request.n, seed=request.seed)
            missing = list(range(len(first.choices), request.n))
            first.choices = first.choices[: request.n]
            parts = [first]
        else:
            missing = list(range(request.n))
            parts = []
        if missing:
            parts += await asyncio.gather(
                *(self._call(request, n=1, seed=rollout_seed(request.seed, i)) for i in missing)
            )
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
        body = self._body(request, n=n, seed=seed)
        retries = rate_limited = 0
        while True:
            try:
                completion = await self._attempt(body, request)
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
        return body

    async def _attempt(self, body: dict[str, Any], request: ChatRequest) -> Completion:
        lanes = self._get_lanes()
        client = await lanes.acquire()
        try:
            response = await client.post("/chat/completions", json=body)
        except httpx.TimeoutException:
            raise _Retryable(f"no answer within timeout_s={self.timeout_s:g}") from None
        except httpx.TransportError as error:
            raise _Retryable(f"connection error ({type(error).__name__}: {error})") from None
        finally:
            lanes.release(client)
        status = response.status_code
        if status == 200:
            return self._parse(response)
        detail = self._redact(response.text[:MAX_ERROR_BODY_CHARS])
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

    def _parse(self, response: httpx.Response) -> Completion:
        try:
            data = response.json()
            raw_choices = data["choices"]
            choices = [_parse_choice(raw) for raw in raw_choices]
        except (ValueError, KeyError, TypeError, IndexError, AttributeError) as error:
            snippet = self._redact(response.text[:MAX_ERROR_BODY_CHARS])
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
    def _get_lanes(self) -> _Lanes:
        loop = asyncio.get_running_loop()
        if self._lanes is None or self._lanes.loop is not loop:
            # Clients are bound to the event loop they were first used in; each `session.run`
            # has its own loop, so a new loop gets new clients.
            headers = {"Content-Type": "application/json"}
            key = os.environ.get(self.api_key_env)
            if key:
                headers["Authorization"] = f"Bearer {key}"
            self._lanes = _Lanes(
                loop=loop,
                size=self.max_connections,
                make_client=lambda: httpx.AsyncClient(
                    base_url=self.base_url,
                    headers=headers,
                    timeout=httpx.Timeout(self.timeout_s),
                    limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
                    verify=self._ssl_context(),
                ),
            )
        return self._lanes

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self.base_url.startswith("https:"):
            return False  # plain HTTP: no TLS, so no CA certificates to load
        # Loading CA certificates takes ~0.1 s: do it once for all lanes and loops.
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
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


class _Lanes:
    """HTTP clients of one connection each, lent out one request at a time.

    httpcore's connection pool scans every connection for every request, which costs ~18 ms
    of CPU per request at 64 connections; a free list of single-connection clients costs O(1).
    """

    def __init__(
        self,
        *,
        loop: asyncio.AbstractEventLoop,
        size: int,
        make_client: Callable[[], httpx.AsyncClient],
    ) -> None:
        self.loop = loop
        self._size = max(size, 1)
        self._make_client = make_client
        self._clients: list[httpx.AsyncClient] = []
        self._free: asyncio.Queue[httpx.AsyncClient] = asyncio.Queue()

    async def acquire(self) -> httpx.AsyncClient:
        if self._free.empty() and len(self._clients) < self._size:
            client = self._make_client()
            self._clients.append(client)
            return client
        return await self._free.get()

    def release(self, client: httpx.AsyncClient) -> None:
        self._free.put_nowait(client)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
        self._clients.clear()


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
