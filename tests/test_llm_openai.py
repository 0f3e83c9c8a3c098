"""OpenAICompatibleBackend (httpx) against real servers on 127.0.0.1: the scripted server
(retries, faults, n, logprobs, headers, oversized answers), TLS with a private CA, and a real
HTTP proxy (proxy.py)."""

from __future__ import annotations

import asyncio
import email.utils
import math
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from llm_servers import Response, ScriptedServer, echo_text
from vlit.errors import ConfigError
from vlit.llm import ChatRequest, LlmSession, Message, OpenAICompatibleBackend, rollout_seed
from vlit.llm.openai_compatible import (
    RequestFailed,
    parse_header,
    parse_retry_after,
    retry_after_s,
)
from vlit.stages.generate import LlmSettings


@pytest.fixture(autouse=True, params=["aiohttp", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test here runs on both transports under httpx (``auto`` picks per endpoint)."""
    backend = ScriptedServer.backend

    def with_transport(server: ScriptedServer, **options: Any) -> OpenAICompatibleBackend:
        return backend(server, **{"transport": request.param, **options})

    monkeypatch.setattr(ScriptedServer, "backend", with_transport)
    return str(request.param)


def ask(text: str, **parameters: object) -> ChatRequest:
    return ChatRequest([Message("user", text)], **parameters)  # type: ignore[arg-type]


def fast_backend(server: ScriptedServer, **options: object) -> OpenAICompatibleBackend:
    settings: dict[str, object] = {"backoff_base_s": 0.01, "timeout_s": 5.0}
    settings.update(options)
    return server.backend(**settings)


def test_answer_and_request_body(scripted_server: ScriptedServer) -> None:
    backend = fast_backend(scripted_server)
    request = ask("Describe the photo.", temperature=0.3, max_tokens=50, seed=11, stop=["###"])
    [outcome] = LlmSession(backend).run([request])
    assert outcome.ok and not outcome.from_journal
    assert outcome.choices[0].text == "echo 11/0: Describe the photo."
    [body] = scripted_server.requests
    assert body["model"] == "scripted-model"
    assert body["messages"] == [{"role": "user", "content": "Describe the photo."}]
    assert (body["temperature"], body["max_tokens"], body["seed"]) == (0.3, 50, 11)
    assert body["stop"] == ["###"]
    assert "n" not in body and "logprobs" not in body


def test_429_waits_at_least_retry_after_seconds(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.status(429, retry_after=1), Response.text("after the wait"))
    session = LlmSession(fast_backend(scripted_server))
    started = time.perf_counter()
    [outcome] = session.run([ask("hello")])
    elapsed = time.perf_counter() - started
    assert outcome.choices[0].text == "after the wait"
    assert elapsed >= 1.0
    assert len(scripted_server.requests) == 2
    usage = session.usage()
    assert (usage.retries, usage.rate_limited, usage.requests_sent) == (1, 1, 1)


def test_429_with_http_date_retry_after(scripted_server: ScriptedServer) -> None:
    resume_at = math.ceil(time.time()) + 2
    date = email.utils.formatdate(resume_at, usegmt=True)
    scripted_server.queue(Response.status(429, retry_after=date), Response.text("ok"))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("hello")])
    assert outcome.choices[0].text == "ok"
    assert time.time() >= resume_at - 0.05


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("0.5") == 0.5
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == 10.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412490.0) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_500_is_retried_with_growing_backoff(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.status(500), Response.status(503), Response.status(502))
    backend = fast_backend(scripted_server, backoff_base_s=0.1)
    started = time.perf_counter()
    [outcome] = LlmSession(backend).run([ask("hello")])
    elapsed = time.perf_counter() - started
    assert outcome.ok and outcome.choices[0].text.startswith("echo 0/0")
    assert len(scripted_server.requests) == 4
    # Jitter keeps each wait in [0.5, 1] x 0.1 * 2**attempt: at least 0.05 + 0.1 + 0.2.
    assert elapsed >= 0.35


def test_jitter_is_seeded() -> None:
    waits = []
    for _ in range(2):
        backend = OpenAICompatibleBackend(base_url="http://127.0.0.1:9/v1", model="m")
        waits.append([backend._delay(attempt, None) for attempt in range(5)])
    assert waits[0] == waits[1]
    assert all(0.5 * 2**i <= wait <= 2**i for i, wait in enumerate(waits[0]))


def test_timeout_retried_then_failure_recorded(scripted_server: ScriptedServer) -> None:
    scripted_server.add_rule(lambda body: Response.sleep(3))
    backend = fast_backend(scripted_server, timeout_s=0.3, max_retries=1)
    session = LlmSession(backend)
    [outcome] = session.run([ask("slow one")])
    assert not outcome.ok and outcome.choices == []
    assert "gave up after 2 attempts" in outcome.error
    assert "timeout_s=0.3" in outcome.error
    assert len(scripted_server.requests) == 2
    assert session.usage().failures == 1 and session.usage().retries == 1


def test_timeout_then_success(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.sleep(3), Response.text("second try"))
    backend = fast_backend(scripted_server, timeout_s=0.3)
    [outcome] = LlmSession(backend).run([ask("x")])
    assert outcome.choices[0].text == "second try"


def test_malformed_body_gives_error_outcome_and_batch_goes_on(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.add_rule(
        lambda body: Response.malformed() if "broken" in body["messages"][0]["content"] else None
    )
    session = LlmSession(fast_backend(scripted_server), concurrency=3)
    outcomes = session.run([ask("fine 1"), ask("broken"), ask("fine 2")])
    assert [outcome.ok for outcome in outcomes] == [True, False, True]
    assert "not an OpenAI chat completion" in (outcomes[1].error or "")
    assert outcomes[2].choices[0].text == "echo 0/0: fine 2"
    assert session.usage().failures == 1


def test_connection_refused_is_retried_then_fails(transport: str) -> None:
    backend = OpenAICompatibleBackend(
        base_url="http://127.0.0.1:9/v1",
        model="m",
        max_retries=2,
        backoff_base_s=0.01,
        transport=transport,  # type: ignore[arg-type]
    )
    with pytest.raises(RequestFailed, match="connection error") as failure:
        asyncio.run(backend.complete(ask("anyone?")))
    assert failure.value.retries == 2


@pytest.mark.parametrize("fault", [Response.hang_up(), Response.cut(10), Response.cut(0)])
def test_a_server_hanging_up_is_a_connection_error_retried(
    scripted_server: ScriptedServer, fault: Response
) -> None:
    scripted_server.queue(fault, fault, Response.text("third try"))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("x")])
    assert outcome.choices[0].text == "third try" and len(scripted_server.requests) == 3
    scripted_server.add_rule(lambda body: fault)
    [failed] = LlmSession(fast_backend(scripted_server, max_retries=1)).run([ask("y")])
    # Not taken for a timeout: the server went away, and the message says so.
    assert failed.error is not None and "connection error" in failed.error, failed.error
    assert "no answer within" not in failed.error


def test_auto_transport_is_httpx_where_http2_can_be_spoken() -> None:
    def picked(url: str, http2: bool) -> str:
        return OpenAICompatibleBackend(base_url=url, model="m", http2=http2).transport

    assert picked("https://api.example.com/v1", http2=True) == "httpx"
    assert picked("https://api.example.com/v1", http2=False) == "aiohttp"
    assert picked("http://127.0.0.1:8000/v1", http2=True) == "aiohttp"
    backend = OpenAICompatibleBackend(base_url="http://h/v1", model="m", transport="httpx")
    assert backend.describe()["transport"] == "httpx"
    with pytest.raises(ConfigError, match="unknown transport"):
        OpenAICompatibleBackend(base_url="http://h/v1", model="m", transport="curl")  # type: ignore[arg-type]


def test_401_names_the_env_var_and_hides_the_key(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-test-very-secret-0123456789"
    monkeypatch.setenv("VLIT_TEST_LLM_KEY", secret)
    # A server that echoes the bad key back in its error message.
    scripted_server.queue(Response.status(401, message=f"Incorrect API key provided: {secret}"))
    backend = fast_backend(scripted_server, api_key_env="VLIT_TEST_LLM_KEY")
    [outcome] = LlmSession(backend).run([ask("hi")])
    assert outcome.error is not None
    assert "VLIT_TEST_LLM_KEY" in outcome.error and "HTTP 401" in outcome.error
    assert secret not in outcome.error
    assert len(scripted_server.requests) == 1  # not retried
    assert scripted_server.headers[0]["authorization"] == f"Bearer {secret}"


def test_404_names_the_model(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.status(404, message="model not found"))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("hi")])
    assert outcome.error is not None and "'scripted-model'" in outcome.error
    assert "/models" in outcome.error
    assert len(scripted_server.requests) == 1


def test_400_is_not_retried(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.status(400, message="n is not supported"))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("hi", n=2)])
    assert outcome.error is not None and "supports_n" in outcome.error
    assert len(scripted_server.requests) == 1


def test_n_sent_natively(scripted_server: ScriptedServer) -> None:
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("q", n=3, seed=4)])
    assert [c.text for c in outcome.choices] == [f"echo 4/{j}: q" for j in range(3)]
    [body] = scripted_server.requests
    assert body["n"] == 3


def test_fewer_choices_than_n_asks_for_the_rest_one_by_one(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.queue(Response.text("first only"))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("q", n=3, seed=4)])
    assert len(outcome.choices) == 3
    assert outcome.choices[0].text == "first only"
    follow_ups = scripted_server.requests[1:]
    assert len(follow_ups) == 2
    assert all("n" not in body for body in follow_ups)
    assert sorted(body["seed"] for body in follow_ups) == sorted(
        [rollout_seed(4, 1), rollout_seed(4, 2)]
    )
    assert len({c.text for c in outcome.choices}) == 3


def test_supports_n_false_sends_one_request_per_rollout(scripted_server: ScriptedServer) -> None:
    backend = fast_backend(scripted_server, supports_n=False)
    [outcome] = LlmSession(backend).run([ask("q", n=3, seed=9)])
    assert len(scripted_server.requests) == 3
    assert sorted(body["seed"] for body in scripted_server.requests) == sorted(
        rollout_seed(9, j) for j in range(3)
    )
    assert [c.text for c in outcome.choices] == [
        f"echo {rollout_seed(9, j)}/0: q" for j in range(3)
    ]


def test_logprobs_sent_and_parsed(scripted_server: ScriptedServer) -> None:
    scripted_server.queue(Response.text("7", logprobs={"7": -0.2, "8": -1.9, " 7": -3.0}))
    [outcome] = LlmSession(fast_backend(scripted_server)).run([ask("score?", top_logprobs=3)])
    [body] = scripted_server.requests
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert outcome.choices[0].first_token_logprobs == {"7": -0.2, "8": -1.9, " 7": -3.0}


def test_truncated_and_refusal_are_kept_with_their_finish_reason(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.queue(Response.truncated("Q: What is on the ta"), Response.refusal("No."))
    outcomes = LlmSession(fast_backend(scripted_server), concurrency=1).run([ask("a"), ask("b")])
    assert (outcomes[0].choices[0].text, outcomes[0].choices[0].finish_reason) == (
        "Q: What is on the ta",
        "length",
    )
    assert (outcomes[1].choices[0].text, outcomes[1].choices[0].finish_reason) == (
        "No.",
        "refusal",
    )


def test_echo_text_helper_matches_server() -> None:
    body = {"seed": 2, "messages": [{"role": "user", "content": "hi"}]}
    assert echo_text(body, 1) == "echo 2/1: hi"


# -- retry headers -----------------------------------------------------------------------------
def test_429_honours_retry_after_ms_before_retry_after(scripted_server: ScriptedServer) -> None:
    # retry-after-ms (OpenAI's) wins over Retry-After: waiting 0.3 s, not 30 s.
    scripted_server.queue(
        Response.status(429, retry_after=30, retry_after_ms=300), Response.text("soon")
    )
    session = LlmSession(fast_backend(scripted_server, backoff_base_s=5.0))
    started = time.perf_counter()
    [outcome] = session.run([ask("hello")])
    elapsed = time.perf_counter() - started
    assert outcome.choices[0].text == "soon"
    assert 0.3 <= elapsed < 5.0
    assert (session.usage().retries, session.usage().rate_limited) == (1, 1)


def test_x_should_retry_overrides_the_status(scripted_server: ScriptedServer) -> None:
    # false: a 500 is not retried; true: a 400 is.
    scripted_server.queue(Response.status(500, should_retry=False))
    [refused] = LlmSession(fast_backend(scripted_server)).run([ask("a")])
    assert refused.error is not None and "HTTP 500" in refused.error
    assert len(scripted_server.requests) == 1
    scripted_server.queue(Response.status(400, should_retry=True), Response.text("retried"))
    [retried] = LlmSession(fast_backend(scripted_server)).run([ask("b")])
    assert retried.choices[0].text == "retried"
    assert len(scripted_server.requests) == 3


def test_retry_after_s_reads_both_headers() -> None:
    assert retry_after_s({"retry-after-ms": "250"}) == 0.25
    assert retry_after_s({"retry-after-ms": "x", "retry-after": "2"}) == 2.0
    assert retry_after_s({}) is None


# -- endpoints as users have them --------------------------------------------------------------
def test_base_url_query_and_headers_are_sent(
    scripted_server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VLIT_TEST_AZURE_KEY", "azure-secret-123")
    backend = OpenAICompatibleBackend(
        base_url=scripted_server.url.replace("/v1", "/openai/deployments/d1")
        + "?api-version=2024-06-01",
        model="scripted-model",
        headers={"api-key": "$VLIT_TEST_AZURE_KEY", "X-Gateway": "team-a"},
        token_limit_param="max_completion_tokens",
    )
    [outcome] = LlmSession(backend).run([ask("hi", max_tokens=7)])
    assert outcome.ok
    assert scripted_server.targets == [
        "/openai/deployments/d1/chat/completions?api-version=2024-06-01"
    ]
    headers = scripted_server.headers[0]
    assert headers["api-key"] == "azure-secret-123" and headers["x-gateway"] == "team-a"
    body = scripted_server.requests[0]
    assert body["max_completion_tokens"] == 7 and "max_tokens" not in body
    description = str(backend.describe())
    assert "azure-secret-123" not in description and "team-a" not in description


def test_header_from_an_unset_variable_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="VLIT_TEST_NOT_SET"):
        OpenAICompatibleBackend(
            base_url="http://127.0.0.1:9/v1", model="m", headers={"api-key": "$VLIT_TEST_NOT_SET"}
        )


@pytest.mark.parametrize("text", ["no colon", ": empty name", "two words: v"])
def test_bad_header_text_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="NAME: VALUE"):
        parse_header(text)


def test_oversized_answer_fails_that_request_only(scripted_server: ScriptedServer) -> None:
    def big_for_big(body: dict[str, Any]) -> Response | None:
        return Response.oversized(200_000) if "big" in body["messages"][0]["content"] else None

    scripted_server.add_rule(big_for_big)
    backend = fast_backend(scripted_server, max_response_bytes=50_000)
    session = LlmSession(backend, concurrency=2)
    outcomes = session.run([ask("big one"), ask("small one")])
    assert outcomes[0].error is not None and "max_response_bytes=50000" in outcomes[0].error
    assert outcomes[1].choices[0].text == "echo 0/0: small one"
    assert len(scripted_server.requests) == 2  # the oversized answer is not retried


def test_requests_sent_counts_http_requests_and_budget_holds(
    scripted_server: ScriptedServer,
) -> None:
    # A server that ignores n: each request for n=3 takes 3 HTTP requests.
    scripted_server.add_rule(lambda body: Response.text(echo_text(body, 0)))
    session = LlmSession(fast_backend(scripted_server), concurrency=1, max_requests=4)
    outcomes = session.run([ask("one", n=3), ask("two", n=3)])
    usage = session.usage()
    assert outcomes[0].ok and not outcomes[1].ok
    assert usage.requests_sent == 4 == len(scripted_server.requests)
    assert usage.generations_received == 4


# -- TLS -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def private_ca() -> trustme.CA:
    return trustme.CA()


def tls_server(ca: trustme.CA, name: str) -> ScriptedServer:
    server = ScriptedServer()
    server.tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(server.tls)
    return server.start()


def test_https_with_an_untrusted_certificate_fails_at_once_with_the_fix(
    private_ca: trustme.CA,
) -> None:
    server = tls_server(private_ca, "127.0.0.1")
    try:
        backend = server.backend(max_retries=5, backoff_base_s=30.0)
        started = time.perf_counter()
        with pytest.raises(RequestFailed) as failure:
            asyncio.run(backend.complete(ask("secret")))
    finally:
        server.stop()
    message = str(failure.value)
    assert "TLS certificate was refused" in message and "SSL_CERT_FILE" in message
    assert failure.value.retries == 0 and time.perf_counter() - started < 10.0


def test_https_with_the_private_ca_trusted_through_ssl_cert_file(
    private_ca: trustme.CA, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca_file = tmp_path / "private-ca.pem"
    private_ca.cert_pem.write_to_path(str(ca_file))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    server = tls_server(private_ca, "127.0.0.1")
    try:
        outcomes = LlmSession(server.backend(), concurrency=2).run(
            [ask("over tls 1"), ask("over tls 2")]
        )
        wrong_name = tls_server(private_ca, "localhost")
        try:
            with pytest.raises(RequestFailed, match="host name that the server's certificate"):
                asyncio.run(wrong_name.backend(max_retries=3).complete(ask("x")))
        finally:
            wrong_name.stop()
    finally:
        server.stop()
    assert [o.choices[0].text for o in outcomes] == ["echo 0/0: over tls 1", "echo 0/0: over tls 2"]


# -- a real HTTP proxy -----------------------------------------------------------------------------
def test_requests_go_through_the_proxy_named_by_http_proxy(
    scripted_server: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    log = tmp_path / "proxy.log"
    with log.open("w") as output:
        proxy = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy",
                "--hostname",
                "127.0.0.1",
                "--port",
                str(port),
                "--num-workers",
                "1",
                "--num-acceptors",
                "1",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, proxy)
        for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{port}")
        outcomes = LlmSession(fast_backend(scripted_server), concurrency=2).run(
            [ask(f"via proxy {i}") for i in range(3)]
        )
    finally:
        proxy.terminate()
        proxy.wait(timeout=30)
    assert [o.choices[0].text for o in outcomes] == [f"echo 0/0: via proxy {i}" for i in range(3)]
    text = log.read_text()
    # proxy.py logs an access line per proxied connection, naming the server it reached.
    assert f"POST 127.0.0.1:{scripted_server.port}/v1/chat/completions - 200" in text, text[-2000:]
    # And with the proxy gone, the same setting fails: the requests did go through it.
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    [refused] = LlmSession(fast_backend(scripted_server, max_retries=0)).run([ask("x")])
    assert refused.error is not None and "connection error" in refused.error
    assert len(scripted_server.requests) == 3


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "the proxy exited at start"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def test_the_recipe_transport_reaches_the_backend() -> None:
    settings = LlmSettings(kind="openai", base_url="http://127.0.0.1:9/v1", model="m")
    assert settings.transport == "auto"
    chosen = settings.model_copy(update={"transport": "httpx"}).to_config(concurrency=2)
    assert OpenAICompatibleBackend.from_config(chosen).transport == "httpx"
    with pytest.raises(ValidationError, match="transport"):
        LlmSettings(kind="openai", model="m", transport="curl")  # type: ignore[arg-type]
