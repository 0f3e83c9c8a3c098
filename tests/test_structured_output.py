"""Structured output: the embedded model under the schema's token mask, response_format on a real
HTTP server, the fallback when a server refuses it, the journal key, and raw text kept."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest

from llm_servers import ModelServer, Response, ScriptedServer
from vlit.collect import CocoCollector
from vlit.errors import ConfigError, LlmError
from vlit.generate.parse import FAILURE_NO_TURNS
from vlit.generate.schemas import (
    complexity_output,
    conversation_shape,
    read_complexity,
    verdict_shape,
)
from vlit.llm.base import ChatRequest, Choice, LlmBackend, Message
from vlit.llm.journal import LlmJournal, request_key
from vlit.llm.session import LlmSession
from vlit.llm.vllm_backend import constraint_fields
from vlit.quality.indicators.complexity import LlmComplexityScorer, expected_score
from vlit.quality.judge import parse_verdict
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn
from vlit.stages import generate as generate_stage
from vlit.stages.generate import GenerateSettings

# Small enough to finish in ~60 tokens: one pair of short texts.
SHAPE = conversation_shape(pairs=(1, 1), answer_chars=80, max_tokens=64)
QUESTION = [
    Message("system", f"You write a question and an answer about a photo.\n{SHAPE.instructions()}"),
    Message("user", "Notes: a red bus stops at a bus stop; two people wait. Write it now."),
]


def _request(setting: Any, *, max_tokens: int = 100, seed: int = 3) -> ChatRequest:
    return ChatRequest(
        QUESTION, max_tokens=max_tokens, seed=seed, n=1, output=SHAPE.output_schema(setting)
    )


def test_embedded_model_writes_the_schema_and_stops_at_its_end(smollm_backend: Any) -> None:
    # The cap is far above what the structure needs: a constrained rollout ends with it.
    completion = asyncio.run(smollm_backend.complete(_request("auto", max_tokens=200)))
    choice = completion.choices[0]
    turns = SHAPE.read(choice.text)
    assert turns is not None, choice.text
    assert [turn.role for turn in turns] == ["user", "assistant"]
    assert choice.finish_reason == "stop" and completion.completion_tokens < 200
    assert len(turns[1].text) <= SHAPE.max_answer_chars


def test_endpoint_gets_the_schema_and_a_model_server_honours_it(
    smollm_backend: LlmBackend,
) -> None:
    server = ModelServer(model="smollm", serving=smollm_backend, max_tokens_cap=100).start()
    try:
        backend = server.backend()
        outcome = LlmSession(backend).run([_request("json_schema")])[0]
    finally:
        server.stop()
    sent = server.requests[0]["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["schema"] == SHAPE.schema()
    assert outcome.ok and SHAPE.read(outcome.choices[0].text) is not None, outcome


def test_off_and_json_object_send_what_they_say(scripted_server: ScriptedServer) -> None:
    backend = scripted_server.backend()
    # One at a time: with requests in flight together, the server's arrival order is a race.
    LlmSession(backend, concurrency=1).run([_request("off"), _request("json_object")])
    bodies = scripted_server.requests
    assert "response_format" not in bodies[0]
    assert bodies[1]["response_format"] == {"type": "json_object"}


def test_a_server_refusing_response_format_auto_falls_back_once(
    scripted_server: ScriptedServer,
) -> None:
    scripted_server.refuse_response_format = True
    backend = scripted_server.backend(max_retries=0)
    requests = [_request("auto", seed=1), _request("auto", seed=2)]
    outcomes = LlmSession(backend, concurrency=1).run(requests)
    assert all(outcome.ok for outcome in outcomes), outcomes
    carried = ["response_format" in body for body in scripted_server.requests]
    assert carried == [True, False, False]  # refused once, then never sent again
    summary = backend.response_format.summary()
    assert summary["refusal"] and "response_format" in summary["refusal"]
    # Asked for explicitly, a refusal is an error that names the parameter.
    strict = scripted_server.backend(max_retries=0)
    failed = LlmSession(strict).run([_request("json_schema")])[0]
    assert not failed.ok and "response_format" in str(failed.error)
    with pytest.raises(LlmError):
        asyncio.run(strict.complete(_request("json_schema")))


def test_journal_key_changes_with_the_setting_and_resume_keeps_it(
    tmp_path: Path, scripted_server: ScriptedServer
) -> None:
    keys = {
        setting: request_key(backend="openai", model="m", request=_request(setting))
        for setting in ("auto", "json_schema", "json_object", "off")
    }
    assert len(set(keys.values())) == 4
    plain = ChatRequest(QUESTION, max_tokens=100, seed=3)
    assert request_key(backend="openai", model="m", request=plain) not in keys.values()
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        backend = scripted_server.backend()
        LlmSession(backend, journal=journal).run([_request("auto")])
        again = LlmSession(backend, journal=journal)
        assert again.run([_request("auto")])[0].from_journal
        assert not again.run([_request("off")])[0].from_journal
    assert len(scripted_server.requests) == 2


def test_generate_keeps_raw_text_and_records_the_fallback(
    tmp_path: Path, scripted_server: ScriptedServer, coco_tiny: Path
) -> None:
    records = (
        CocoCollector(
            images_dir=coco_tiny / "train2017",
            captions=coco_tiny / "annotations" / "captions_train2017.json",
        )
        .collect()
        .records[:2]
    )
    run = RunDir(tmp_path / "run")
    run.write_records(records)
    good = json.dumps({"conversation": [{"user": "What is it?", "assistant": "A photo."}]})
    marker = " ".join(records[0].captions[0].split())[4:36]  # as the visual clue writes it

    def answer(body: dict[str, Any]) -> Response:
        # The first image gets schema-shaped JSON, the second prose that no parser can read.
        texts = good if marker in body["messages"][-1]["content"] else "Lovely weather."
        return Response.text(texts)

    scripted_server.refuse_response_format = True
    scripted_server.add_rule(answer)
    settings = GenerateSettings(modes=["detailed"], n=1, max_tokens=256)
    summary = generate_stage.run(run, settings, backend=scripted_server.backend()).to_json()
    assert summary["structured"]["setting"] == "auto"
    assert summary["structured"]["refusal"] is not None
    assert summary["samples_ok"] + summary["samples_failed"].get(FAILURE_NO_TURNS.code, 0) == 2
    samples = list(run.read_samples("samples"))
    by_text = {s.provenance.get("raw_text"): s for s in samples if not s.ok}
    assert list(by_text) == ["Lovely weather."]
    assert by_text["Lovely weather."].failure_reason == FAILURE_NO_TURNS
    parsed = [s for s in samples if s.ok]
    assert summary["samples_schema_valid"] == len(parsed) == 1
    assert parsed[0].provenance["parse_format"] == "json-schema"


def test_verdict_and_score_shapes_read_only_their_shape() -> None:
    shape = verdict_shape(max_tokens=96)
    assert shape.read('{"verdict": "correct", "reason": "All given."}') == (
        "correct",
        "All given.",
    )
    assert shape.read('{"verdict": "maybe", "reason": "x"}') is None
    assert shape.read("Verdict: correct") is None
    too_long = shape.render("correct", "x" * (shape.max_reason_chars + 1))
    assert shape.read(too_long) is None
    # The reason is bounded so that a constrained verdict ends within max_tokens.
    assert verdict_shape(max_tokens=48).max_reason_chars < shape.max_reason_chars <= 300
    assert read_complexity("10") == 10
    assert read_complexity("11") is None and read_complexity("true") is None
    assert read_complexity('{"score": 8}') is None
    # The judge and the complexity scorer read their shape as well as their old text answers.
    assert parse_verdict('{"verdict": "incorrect", "reason": "No dog."}') == (
        "incorrect",
        "No dog.",
    )
    assert parse_verdict("Verdict: correct\nReason: fine") == ("correct", "fine")
    assert expected_score(Choice("8")) == (8.0, "json")
    assert expected_score(Choice("A solid 8 out of 10")) == (8.0, "text")
    with pytest.raises(ConfigError, match="bare number"):
        complexity_output("json_object")


def test_a_constrained_complexity_score_is_the_logprob_expectation(smollm_backend: Any) -> None:
    """Constraining the first token to the score schema and renormalising the unconstrained
    first-token probabilities over the score tokens give the same expected score."""
    scorer = LlmComplexityScorer(session=LlmSession(smollm_backend))
    sample = Sample("s", turns=[Turn("user", "Why is the man running?"), Turn("assistant", "To.")])
    constrained = scorer.request_for(sample)
    vocabulary = len(smollm_backend._tokenizer)
    unconstrained = dataclasses.replace(constrained, output=None, top_logprobs=vocabulary)
    on = asyncio.run(smollm_backend.complete(constrained)).choices[0]
    off = asyncio.run(smollm_backend.complete(unconstrained)).choices[0]
    # Under the constraint the answer is a score and only score digits could come first.
    assert read_complexity(on.text) is not None, on.text
    assert on.first_token_logprobs is not None
    assert set(on.first_token_logprobs) == {str(digit) for digit in range(1, 10)}
    assert expected_score(on)[1] == expected_score(off)[1] == "logprobs"
    assert expected_score(on)[0] == pytest.approx(expected_score(off)[0], abs=1e-4)
    # Unconstrained, the score digits hold only part of the first token's probability.
    assert off.first_token_logprobs is not None
    digits = sum(math.exp(off.first_token_logprobs[str(digit)]) for digit in range(1, 10))
    assert digits < 0.999


def test_vllm_gets_the_schema_as_its_constraint_fields() -> None:
    # The vLLM backend itself needs a GPU and vllm (not in CI): only the fields it hands to
    # vLLM's StructuredOutputsParams / GuidedDecodingParams are checked here.
    output = SHAPE.output_schema("auto")
    assert constraint_fields(output) == {"json": SHAPE.schema()}
    assert constraint_fields(SHAPE.output_schema("json_object")) == {"json_object": True}
    assert constraint_fields(SHAPE.output_schema("off")) == {}
    assert constraint_fields(None) == {}
