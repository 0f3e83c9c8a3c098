"""LocalTransformersBackend on the embedded SmolLM2-135M-Instruct, in process and over HTTP."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from llm_servers import ModelServer
from vlit.errors import ModelUnavailableError
from vlit.llm import (
    ChatRequest,
    LlmJournal,
    LlmSession,
    LocalTransformersBackend,
    Message,
    rollout_seed,
)

pytestmark = pytest.mark.model

QUESTION = [Message("user", "Name three things you might see in a kitchen.")]


def complete(backend: LocalTransformersBackend, request: ChatRequest) -> list[str]:
    return [choice.text for choice in asyncio.run(backend.complete(request)).choices]


def test_same_seed_same_text_rollouts_differ(smollm_backend: LocalTransformersBackend) -> None:
    request = ChatRequest(QUESTION, temperature=1.0, max_tokens=12, n=3, seed=5)
    first = complete(smollm_backend, request)
    again = complete(smollm_backend, request)
    assert first == again
    assert all(text.strip() for text in first)
    assert len(set(first)) >= 2, first
    other_seed = complete(
        smollm_backend, ChatRequest(QUESTION, temperature=1.0, max_tokens=12, n=3, seed=6)
    )
    assert other_seed != first


def test_a_rollout_asked_alone_matches_the_batch(smollm_backend: LocalTransformersBackend) -> None:
    batch = complete(
        smollm_backend, ChatRequest(QUESTION, temperature=1.0, max_tokens=10, n=3, seed=21)
    )
    alone = complete(
        smollm_backend,
        ChatRequest(QUESTION, temperature=1.0, max_tokens=10, n=1, seed=rollout_seed(21, 2)),
    )
    assert alone == [batch[2]]


def test_first_token_logprobs_and_greedy_start(smollm_backend: LocalTransformersBackend) -> None:
    request = ChatRequest(
        [Message("user", "What is 2 plus 2? Answer with one number.")],
        temperature=0.0,
        max_tokens=4,
        top_logprobs=5,
    )
    [choice] = asyncio.run(smollm_backend.complete(request)).choices
    logprobs = choice.first_token_logprobs
    assert logprobs is not None and len(logprobs) == 5
    assert all(value <= 0.0 for value in logprobs.values())
    assert 0.0 < sum(math.exp(value) for value in logprobs.values()) <= 1.0 + 1e-6
    best = max(logprobs, key=lambda token: logprobs[token])
    # Greedy decoding picks the most likely first token.
    assert choice.text.lstrip().startswith(best.strip())


def test_stop_sequence_cuts_the_text(smollm_backend: LocalTransformersBackend) -> None:
    greedy = ChatRequest(QUESTION, temperature=0.0, max_tokens=20)
    [full] = complete(smollm_backend, greedy)
    words = full.split()
    assert len(words) >= 4, full
    stop = words[3]
    cut = ChatRequest(QUESTION, temperature=0.0, max_tokens=20, stop=[stop])
    [choice] = asyncio.run(smollm_backend.complete(cut)).choices
    assert choice.text == full[: full.find(stop)]
    assert choice.finish_reason == "stop"


def test_over_http_through_the_session_and_journal(
    smollm_server: ModelServer, smollm_backend: LocalTransformersBackend, tmp_path: Path
) -> None:
    request = ChatRequest(QUESTION, temperature=0.9, max_tokens=10, n=2, seed=3)
    sent_before = len(smollm_server.requests)
    with LlmJournal(tmp_path / "journal.sqlite") as journal:
        session = LlmSession(smollm_server.backend(), journal=journal)
        [outcome] = session.run([request])
        assert outcome.ok and len(outcome.choices) == 2
        usage = session.usage()
        assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 20
        # The same answer as the model in process: seeds travel over HTTP unchanged.
        assert [c.text for c in outcome.choices] == complete(smollm_backend, request)
        [again] = LlmSession(smollm_server.backend(), journal=journal).run([request])
    assert again.from_journal and again.choices == outcome.choices
    assert len(smollm_server.requests) == sent_before + 1


def test_hub_id_offline_is_a_clear_error() -> None:
    backend = LocalTransformersBackend(model="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ModelUnavailableError) as failure:
        backend.load()
    message = str(failure.value)
    assert "HuggingFaceTB/SmolLM2-360M-Instruct" in message
    assert "local folder" in message


def test_any_causal_lm_from_a_local_folder(
    smollm_backend: LocalTransformersBackend, tmp_path: Path
) -> None:
    """A user's checkpoint folder (here a tiny random Llama) loads through the same path."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = smollm_backend._tokenizer
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    backend = LocalTransformersBackend(model=str(tmp_path))
    request = ChatRequest(QUESTION, temperature=1.0, max_tokens=6, n=2, seed=1)
    completion = asyncio.run(backend.complete(request))
    assert len(completion.choices) == 2
    assert completion.prompt_tokens == len(backend.prompt_token_ids(request.messages))
    assert 2 <= completion.completion_tokens <= 12
    assert [c.text for c in completion.choices] == complete(backend, request)
    assert backend.describe() == {
        "kind": "local",
        "model": str(tmp_path),
        "device": "cpu",
        "dtype": "float32",
    }
