"""OpenAICompatibleBackend against a real scripted HTTP server: retries, faults, n, logprobs."""

from __future__ import annotations

import asyncio
import email.utils
import math
import time

import pytest

from llm_servers import Response, ScriptedServer, echo_text
from vlit.llm import ChatRequest, LlmSession, Message, OpenAICompatibleBackend, rollout_seed
from vlit.llm.openai_compatible import RequestFailed, parse_retry_after


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


def test_connection_refused_is_retried_then_fails() -> None:
    backend = OpenAICompatibleBackend(
        base_url="http://127.0.0.1:9/v1", model="m", max_retries=2, backoff_base_s=0.01
    )
    with pytest.raises(RequestFailed, match="connection error") as failure:
        asyncio.run(backend.complete(ask("anyone?")))
    assert failure.value.retries == 2


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
