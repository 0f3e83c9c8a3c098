"""Real OpenAI-compatible HTTP servers on 127.0.0.1 for tests (a pytest plugin).

Loaded by ``tests/conftest.py`` (``pytest_plugins = ["llm_servers"]``), so every test can ask
for these fixtures. Each server is a small asyncio HTTP/1.1 server (keep-alive, JSON) in a
background thread on a free port, serving ``POST /v1/chat/completions`` and ``GET /v1/models``.
Point any client at ``server.url`` (it ends in ``/v1``).

Fixtures
--------
``scripted_server`` (one per test): answers are scripted by the test::

    def test_retry(scripted_server):
        scripted_server.queue(Response.status(429, retry_after=1), Response.text("fine"))
        backend = scripted_server.backend(backoff_base_s=0.01)
        outcome = LlmSession(backend).run([request])[0]
        assert outcome.choices[0].text == "fine"
        assert len(scripted_server.requests) == 2         # every JSON body received

    Where answers come from, for each call to /v1/chat/completions:
      1. ``queue(*responses)``: queued answers, used once each, in order;
      2. ``add_rule(rule)``: ``rule(body) -> Response | None``, asked in order when the queue
         is empty; the first that returns a Response answers;
      3. ``default`` (settable): ``Response.echo()`` unless changed.
    ``Response.echo()`` answers each of the ``n`` requested choices with
    ``"echo <seed>/<choice>: <last user message>"``, so answers are deterministic and distinct.

    Answers (``Response``): ``text("a", "b", ...)`` (exactly those choices, fewer than n if you
    like), ``echo()``, ``status(500)``, ``status(429, retry_after=2)`` (seconds or an HTTP date
    string), ``sleep(5)`` (answer after 5 s, i.e. past a client timeout), ``malformed()``
    (HTTP 200 whose body is not JSON), ``truncated("cut te")`` (finish_reason "length"),
    ``refusal("I can't help")`` (OpenAI-style refusal field), ``oversized(100_000)`` (a valid
    answer that large), ``status(429, retry_after_ms=250, should_retry=True)`` (OpenAI's retry
    headers), ``text(..., logprobs={"7": -0.1,
    "8": -2.3})`` (first-token top logprobs). Every constructor takes ``delay_s=`` (latency).

    What was received: ``requests`` (JSON bodies), ``headers`` (lower-cased header dicts),
    ``targets`` (path and query), all in arrival order. ``refuse_response_format = True`` (any
    server) answers HTTP 400 naming the parameter to any request that carries
    ``response_format``, as servers without structured output do. ``require_api_key = "sk-..."``
    makes the server answer 401 to any other bearer token. Set ``tls`` (an ``ssl.SSLContext``)
    before ``start()`` to serve HTTPS. ``backend(**options)`` builds an
    ``OpenAICompatibleBackend`` aimed at it.

``indicator_model`` (a rule for ``add_rule``): answers the report's LLM prompts like a small
    consistent model: TagGPT prompts get tags from what the conversation asks (surface forms
    vary by rollout) plus a rare tag per rollout; complexity prompts ("Score:") a score of
    their own conversation (1-9 from its hash) with its first-token log-probability.

``smollm_backend`` (session): ``LocalTransformersBackend`` with the embedded SmolLM2-135M
    (loaded once per test session, ~30-60 s on 2 busy cores; it sets torch to 1 thread, which
    is much faster than 2 on a shared 2-core machine).

``smollm_server`` (session): that model behind the same HTTP API (``n``, ``seed``,
    ``temperature``, ``max_tokens``, ``stop``, ``logprobs``/``top_logprobs``, ``usage``). It
    records ``requests`` too. Generation costs ~0.1 s per token per request on a busy CPU: keep
    ``max_tokens`` small (<= 32) in tests; ``max_tokens_cap`` (default 64) caps what it honours.
    It honours ``response_format`` (``json_schema`` and ``json_object``) by constrained decoding.

A ``ModelServer`` can also wrap any backend (``ModelServer(backend).start()``).
"""

from __future__ import annotations

import asyncio
import collections
import json
import ssl
import threading
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from vlit.llm.base import ChatRequest, Completion, LlmBackend, Message, OutputSchema
from vlit.llm.openai_compatible import OpenAICompatibleBackend

Rule = Callable[[dict[str, Any]], "Response | None"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Response:
    """One scripted answer to one HTTP call (build it with the class methods)."""

    code: int = 200
    texts: tuple[str, ...] | None = None
    finish_reason: str = "stop"
    refusal_text: str | None = None
    logprobs: dict[str, float] | None = None
    raw_body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = ()
    delay_s: float = 0.0
    cut_after: int | None = None  # bytes of the answer sent before hanging up (-1: none)

    @classmethod
    def text(
        cls,
        *texts: str,
        finish_reason: str = "stop",
        logprobs: dict[str, float] | None = None,
        delay_s: float = 0.0,
    ) -> Response:
        """Exactly these choices (one per text), whatever ``n`` asked for."""
        return cls(texts=texts, finish_reason=finish_reason, logprobs=logprobs, delay_s=delay_s)

    @classmethod
    def echo(cls, *, delay_s: float = 0.0) -> Response:
        """One deterministic choice per requested ``n``: ``echo <seed>/<choice>: <message>``."""
        return cls(delay_s=delay_s)

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        message: str = "scripted failure",
        delay_s: float = 0.0,
    ) -> Response:
        """An HTTP error with an OpenAI-style error body, and the retry headers given
        (``Retry-After``, ``retry-after-ms``, ``x-should-retry``)."""
        headers: tuple[tuple[str, str], ...] = ()
        if retry_after is not None:
            headers += (("Retry-After", str(retry_after)),)
        if retry_after_ms is not None:
            headers += (("retry-after-ms", f"{retry_after_ms:g}"),)
        if should_retry is not None:
            headers += (("x-should-retry", "true" if should_retry else "false"),)
        body = json.dumps({"error": {"message": message, "code": code}}).encode()
        return cls(code=code, raw_body=body, headers=headers, delay_s=delay_s)

    @classmethod
    def sleep(cls, seconds: float) -> Response:
        """Answer (with an echo) only after ``seconds``: use it to go past a client timeout."""
        return cls(delay_s=seconds)

    @classmethod
    def malformed(cls, body: bytes = b'{"choices": [{"message": ', *, delay_s: float = 0.0):
        """HTTP 200 whose body is not a chat completion."""
        return cls(raw_body=body, delay_s=delay_s)

    @classmethod
    def oversized(cls, size: int, *, delay_s: float = 0.0) -> Response:
        """A valid chat completion of about ``size`` bytes (one choice of ``x`` repeated)."""
        return cls(texts=("x" * size,), delay_s=delay_s)

    @classmethod
    def truncated(cls, text: str, *, delay_s: float = 0.0) -> Response:
        """A choice cut at the token limit (``finish_reason="length"``)."""
        return cls(texts=(text,), finish_reason="length", delay_s=delay_s)

    @classmethod
    def cut(cls, after_bytes: int) -> Response:
        """An echo whose connection closes once ``after_bytes`` bytes of its body are sent
        (the head declares the whole length)."""
        return cls(cut_after=after_bytes)

    @classmethod
    def hang_up(cls) -> Response:
        """The connection closes with no answer at all."""
        return cls(cut_after=-1)

    @classmethod
    def refusal(cls, text: str, *, delay_s: float = 0.0) -> Response:
        """An OpenAI-style refusal: ``content`` null and the text in ``refusal``."""
        return cls(refusal_text=text, delay_s=delay_s)


def echo_text(body: dict[str, Any], choice: int) -> str:
    """The text ``Response.echo()`` gives for choice ``choice`` of a request body."""
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    return f"echo {body.get('seed')}/{choice}: {users[-1] if users else ''}"


def completion_json(
    *,
    model: str,
    texts: list[str | None],
    finish_reasons: list[str],
    prompt_tokens: int,
    completion_tokens: int,
    refusal: str | None = None,
    logprobs: dict[str, float] | None = None,
) -> dict[str, Any]:
    """An OpenAI ``chat.completion`` object."""
    choices = []
    for index, (text, finish) in enumerate(zip(texts, finish_reasons, strict=True)):
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if refusal is not None:
            message["refusal"] = refusal
        choice: dict[str, Any] = {"index": index, "message": message, "finish_reason": finish}
        if logprobs:
            best = max(logprobs, key=lambda token: logprobs[token])
            choice["logprobs"] = {
                "content": [
                    {
                        "token": best,
                        "logprob": logprobs[best],
                        "top_logprobs": [
                            {"token": token, "logprob": value} for token, value in logprobs.items()
                        ],
                    }
                ]
            }
        choices.append(choice)
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": model,
        "choices": choices,
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


TAG_FORMS = {
    "descri": ["Description", "image description", "describing"],
    "summar": ["Summarisation", "summary", "Summarizing"],
    "concise": ["brevity", "Brevity", "conciseness"],
    "what is": ["Identification", "object identification", "identifying"],
    "how many": ["Counting", "counting", "object counting!"],
    "colo": ["colour recognition", "Colour-Recognition", "attribute"],
    "where": ["spatial reasoning", "Location", "spatial"],
}


def indicator_model(body: dict[str, Any]) -> Response:
    """TagGPT tags or a complexity score for the report's prompts (see the module docstring)."""
    last = body["messages"][-1]["content"]
    conversation = last.rsplit("Conversation:", 1)[-1].lower()
    digest = zlib.crc32(conversation.encode())
    if last.endswith("Score:"):
        score = str(1 + digest % 9)
        return Response.text(score, logprobs={score: 0.0})
    seed, n = int(body.get("seed") or 0), int(body.get("n") or 1)
    answers = []
    for rollout in range(seed, seed + n):
        tags = [forms[rollout % 3] for key, forms in TAG_FORMS.items() if key in conversation]
        answers.append(", ".join([*tags, f"oddity {digest % 1000}-{rollout}"]))
    return Response.text(*answers)


@dataclass
class _Reply:
    code: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    cut_after: int | None = None


@dataclass
class _OpenAICompatibleServer:
    """Shared HTTP plumbing: an asyncio server in its own thread, and request recording."""

    model: str = "test-model"
    require_api_key: str | None = None
    refuse_response_format: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)  # request paths with their query

    def __post_init__(self) -> None:
        self.tls: ssl.SSLContext | None = None  # set before start() to serve HTTPS
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._record_lock = threading.Lock()
        self.port = 0
        self.in_flight = 0
        self.peak_in_flight = 0  # most chat requests the server was answering at once

    @property
    def url(self) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    def start(self) -> _OpenAICompatibleServer:
        self._thread.start()
        started = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(
                self._serve_connection, "127.0.0.1", 0, backlog=1024, ssl=self.tls
            ),
            self._loop,
        )
        self._server = started.result(timeout=10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            current = asyncio.current_task()
            connections = [task for task in asyncio.all_tasks() if task is not current]
            for task in connections:
                task.cancel()
            await asyncio.gather(*connections, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def backend(self, **options: Any) -> OpenAICompatibleBackend:
        """An ``OpenAICompatibleBackend`` pointed at this server (options pass through)."""
        return OpenAICompatibleBackend(base_url=self.url, model=self.model, **options)

    def received(self) -> int:
        with self._record_lock:
            return len(self.requests)

    # -- HTTP ---------------------------------------------------------------------------------
    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                request_line = await reader.readline()
                if not request_line.strip():
                    break
                method, target, _version = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                body = await reader.readexactly(length) if length else b""
                try:
                    reply = await self._route(method, target, headers, body)
                except Exception as error:  # noqa: BLE001 - report a broken script as HTTP 500
                    reply = _error(500, f"test server error: {type(error).__name__}: {error}")
                head = [f"HTTP/1.1 {reply.code} {_REASONS.get(reply.code, 'Status')}"]
                head += ["Content-Type: application/json", f"Content-Length: {len(reply.body)}"]
                head += [f"{name}: {value}" for name, value in reply.headers]
                head_bytes = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
                if reply.cut_after is not None:  # hang up mid-answer (or before it)
                    if reply.cut_after >= 0:
                        writer.write(head_bytes + reply.body[: reply.cut_after])
                        await writer.drain()
                    break
                writer.write(head_bytes + reply.body)
                await writer.drain()
                if headers.get("connection", "").lower() == "close":
                    break
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass  # the client went away (e.g. it timed out): nothing to answer
        except asyncio.CancelledError:
            pass  # the server is stopping
        finally:
            writer.close()

    async def _route(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> _Reply:
        path = target.split("?", 1)[0]
        if method == "GET" and path == "/v1/models":
            data = {"object": "list", "data": [{"id": self.model, "object": "model"}]}
            return _Reply(200, json.dumps(data).encode())
        if method != "POST" or not path.endswith("/chat/completions"):  # Azure's paths too
            return _error(404, f"no route {method} {path}")
        try:
            body = json.loads(raw)
        except ValueError:
            return _error(400, "request body is not JSON")
        with self._record_lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.targets.append(target)
        if self.require_api_key is not None:
            if headers.get("authorization") != f"Bearer {self.require_api_key}":
                return _error(401, "invalid API key")
        if self.refuse_response_format and "response_format" in body:
            return _error(400, "Unrecognized request argument supplied: response_format")
        self.in_flight += 1  # only the server's loop touches these two
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._chat(body)
        finally:
            self.in_flight -= 1

    async def _chat(self, body: dict[str, Any]) -> _Reply:
        raise NotImplementedError


def _error(code: int, message: str) -> _Reply:
    return _Reply(code, json.dumps({"error": {"message": message, "code": code}}).encode())


@dataclass
class ScriptedServer(_OpenAICompatibleServer):
    """A server whose answers each test scripts (see the module docstring)."""

    model: str = "scripted-model"
    default: Response = field(default_factory=Response.echo)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._queue: collections.deque[Response] = collections.deque()
        self._rules: list[Rule] = []

    def queue(self, *responses: Response) -> None:
        """Answer the next calls with these, in order, once each."""
        with self._record_lock:
            self._queue.extend(responses)

    def add_rule(self, rule: Rule) -> None:
        """``rule(body) -> Response | None``; asked when the queue is empty."""
        self._rules.append(rule)

    def _pick(self, body: dict[str, Any]) -> Response:
        with self._record_lock:
            if self._queue:
                return self._queue.popleft()
        for rule in self._rules:
            response = rule(body)
            if response is not None:
                return response
        return self.default

    async def _chat(self, body: dict[str, Any]) -> _Reply:
        response = self._pick(body)
        if response.delay_s:
            await asyncio.sleep(response.delay_s)
        if response.raw_body is not None:
            return _Reply(response.code, response.raw_body, response.headers)
        n = int(body.get("n") or 1)
        texts: list[str | None]
        if response.refusal_text is not None:
            texts = [None]
        elif response.texts is not None:
            texts = list(response.texts)
        else:
            texts = [echo_text(body, choice) for choice in range(n)]
        prompt_words = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        data = completion_json(
            model=str(body.get("model", self.model)),
            texts=texts,
            finish_reasons=[response.finish_reason] * len(texts),
            prompt_tokens=prompt_words,
            completion_tokens=sum(len((text or "").split()) for text in texts),
            refusal=response.refusal_text,
            logprobs=response.logprobs if body.get("logprobs") else None,
        )
        return _Reply(
            response.code, json.dumps(data).encode(), response.headers, response.cut_after
        )


@dataclass
class ModelServer(_OpenAICompatibleServer):
    """A real model (any ``LlmBackend``) behind the OpenAI chat-completions API."""

    serving: LlmBackend | None = None
    max_tokens_cap: int = 64

    async def _chat(self, body: dict[str, Any]) -> _Reply:
        assert self.serving is not None
        try:
            stop = body.get("stop") or ()
            request = ChatRequest(
                [Message(m["role"], m["content"]) for m in body["messages"]],
                temperature=float(body.get("temperature", 1.0)),
                max_tokens=min(int(body.get("max_tokens") or 16), self.max_tokens_cap),
                n=int(body.get("n") or 1),
                seed=int(body.get("seed") or 0),
                top_logprobs=int(body.get("top_logprobs") or 1) if body.get("logprobs") else None,
                stop=[stop] if isinstance(stop, str) else list(stop),
                output=_output_schema(body.get("response_format")),
            )
        except (KeyError, TypeError, ValueError) as error:
            return _error(400, f"bad request: {error}")
        completion: Completion = await self.serving.complete(request)
        first = completion.choices[0].first_token_logprobs if completion.choices else None
        data = completion_json(
            model=self.model,
            texts=[choice.text for choice in completion.choices],
            finish_reasons=[choice.finish_reason for choice in completion.choices],
            prompt_tokens=completion.prompt_tokens,
            completion_tokens=completion.completion_tokens,
            logprobs=first,
        )
        return _Reply(200, json.dumps(data).encode())


def _output_schema(response_format: dict[str, Any] | None) -> OutputSchema | None:
    """The constraint a ``response_format`` asks for."""
    if not response_format:
        return None
    if response_format["type"] == "json_object":
        return OutputSchema.of("json_object", {"type": "object"}, "json_object")
    spec = response_format["json_schema"]
    return OutputSchema.of(spec["name"], spec["schema"], "json_schema")


@pytest.fixture
def scripted_server() -> Iterator[ScriptedServer]:
    """A fresh scripted OpenAI-compatible server for one test."""
    server = ScriptedServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def smollm_backend() -> Any:
    """The embedded SmolLM2-135M-Instruct, loaded once per test session."""
    from vlit.llm.local import LocalTransformersBackend

    backend = LocalTransformersBackend(torch_threads=1)
    backend.load()
    return backend


@pytest.fixture(scope="session")
def smollm_server(smollm_backend: LlmBackend) -> Iterator[ModelServer]:
    """SmolLM2-135M-Instruct behind a real OpenAI-compatible HTTP endpoint."""
    server = ModelServer(model="smollm2-135m-instruct", serving=smollm_backend)
    server.start()
    yield server
    server.stop()
