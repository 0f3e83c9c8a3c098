"""Rule labeller on a table of instructions; TagGPT tagger over a real local HTTP server.

The LLM tests use the shared ``scripted_server`` fixture (``tests/llm_servers.py``) with one
rule that answers like a small, consistent tagging model: the tags depend on what the
conversation asks (with different surface forms per rollout, so normalisation and merging have
work to do), plus one rare tag per rollout that the frequency filter must drop. Complexity
prompts get a first-token distribution over "3", "4" and "7", so the expected score is
checkable by hand.
"""

from __future__ import annotations

import math
import zlib
from pathlib import Path
from typing import Any

import pytest

from llm_servers import Response, ScriptedServer
from vlit.llm.journal import LlmJournal
from vlit.llm.session import LlmSession
from vlit.quality.indicators.complexity import LlmComplexityScorer
from vlit.quality.indicators.embeddings import StaticEmbedder
from vlit.quality.indicators.labels import (
    OTHER,
    RuleTaskLabeller,
    TagGptTagger,
    normalise_tag,
    parse_tags,
)
from vlit.schema import Sample, Turn

INSTRUCTIONS = [
    ("What does the sign above the door say?", "text_reading"),
    ("Can you read the text on the bus?", "text_reading"),
    ("How many people are sitting on the bench?", "counting"),
    ("Count the boats in the harbour.", "counting"),
    ("Why might the man be carrying an umbrella?", "reasoning"),
    ("What could be the purpose of the fence?", "reasoning"),
    ("What is the history of this kind of building?", "knowledge"),
    ("Is there a dog in the picture?", "yes_no"),
    ("Are the lights on?", "yes_no"),
    ("What colour is the car?", "color_attribute"),
    ("What is the man wearing?", "color_attribute"),
    ("Where is the cat sitting?", "location_spatial"),
    ("What is on the left of the table?", "location_spatial"),
    ("What is the woman doing?", "action_interaction"),
    ("What kind of animal is this?", "identity_recognition"),
    ("Who is holding the racket?", "action_interaction"),
    ("Give a short caption of the photo.", "brief_description"),
    ("Describe the image concisely.", "brief_description"),
    ("Describe the scene in detail.", "detailed_description"),
    ("What do you see in this image?", "detailed_description"),
    ("Hello there", OTHER),
]


@pytest.mark.parametrize(("text", "label"), INSTRUCTIONS)
def test_rule_labeller_table(text: str, label: str) -> None:
    assert RuleTaskLabeller().label_text(text) == label


def test_rule_labels_of_a_multi_turn_sample_follow_turn_order() -> None:
    sample = Sample(
        "s",
        turns=[
            Turn("user", "<image>\nHow many cups are there?"),
            Turn("assistant", "Three."),
            Turn("user", "What colour is the cup on the left?"),
            Turn("assistant", "Blue."),
            Turn("user", "How many plates?"),
            Turn("assistant", "Two."),
        ],
    )
    RuleTaskLabeller()([sample])
    assert sample.labels == ["counting", "color_attribute"]


def test_tag_normalisation_and_parsing() -> None:
    assert normalise_tag("  Object-Counting!! ") == "object counting"
    assert normalise_tag("colour_recognition") == "colour recognition"
    assert parse_tags(
        "1. Counting\n- spatial reasoning; a very long tag that is a sentence really", max_tags=5
    ) == ["Counting", "spatial reasoning"]


TAG_FORMS = {
    "how many": ["Counting", "counting", "object counting!"],
    "colour": ["colour recognition", "Colour-Recognition", "attribute"],
    "describe": ["Description", "image description", "describing"],
}
COMPLEXITY_PROBABILITIES = {"3": 0.5, "4": 0.3, "7": 0.2}


def _tag_answer(conversation: str, rollout_seed: int) -> str:
    lowered = conversation.lower()
    tags = [forms[rollout_seed % len(forms)] for key, forms in TAG_FORMS.items() if key in lowered]
    tags.append(f"oddity {zlib.crc32(lowered.encode()) % 1000}-{rollout_seed}")
    return ", ".join(tags)


def _indicator_model(body: dict[str, Any]) -> Response:
    """Complexity prompts (ending in "Score:") get "3" with first-token logprobs; others tags."""
    last = body["messages"][-1]["content"]
    if "Score:" in last:
        logprobs = {token: math.log(p) for token, p in COMPLEXITY_PROBABILITIES.items()}
        return Response.text("3", logprobs=logprobs)
    seed = int(body.get("seed") or 0)
    n = int(body.get("n") or 1)
    return Response.text(*(_tag_answer(last, seed + rollout) for rollout in range(n)))


@pytest.fixture
def indicator_server(scripted_server: ScriptedServer) -> ScriptedServer:
    scripted_server.add_rule(_indicator_model)
    return scripted_server


def _samples() -> list[Sample]:
    questions = [
        "How many birds are on the wire?",
        "How many cars are parked?",
        "How many people wait at the stop?",
        "What colour is the kite?",
        "What colour are the curtains?",
        "Describe the kitchen.",
        "Describe what the children are doing.",
        "Describe the street.",
    ]
    return [
        Sample(f"s{i}", turns=[Turn("user", q), Turn("assistant", "An answer.")])
        for i, q in enumerate(questions)
    ]


@pytest.mark.model
def test_taggpt_through_a_real_server(indicator_server: ScriptedServer, tmp_path: Path) -> None:
    backend = indicator_server.backend(max_retries=0)
    tagger = TagGptTagger(
        session=LlmSession(backend, journal=LlmJournal(tmp_path / "journal.sqlite")),
        embedder=StaticEmbedder(),
        generations=3,
        min_count=2,
        min_share=0.0,
        merge_threshold=0.8,
    )
    samples = _samples()
    result = tagger.label(samples)
    assert result.failed_requests == 0
    assert all(len(sample_tags) == 3 for sample_tags in result.raw_tags)
    # lemmatised and lowercased: "Counting" / "counting" / "object counting!" -> 2 forms
    assert "count" in result.vocabulary.counts or "counting" in result.vocabulary.counts
    # the per-rollout oddities appear once each and are dropped as rare
    assert all(tag.startswith("oddity") for tag in result.vocabulary.dropped_rare)
    assert not any(tag.startswith("oddity") for tag in result.vocabulary.kept)
    counting = [s.labels for s in samples[:3]]
    colour = [s.labels for s in samples[3:5]]
    assert all(labels for labels in counting + colour)
    # the three counting samples share their first label; it differs from the colour ones
    assert len({labels[0] for labels in counting}) == 1
    assert counting[0][0] != colour[0][0]
    assert result.untagged_samples == 0
    # every kept tag is a group head; merged tags point at a kept tag
    assert set(result.vocabulary.merged_into.values()) <= set(result.vocabulary.kept)
    # one call per sample, asking for all rollouts at once
    assert len(indicator_server.requests) == len(samples)
    assert all(body["n"] == 3 for body in indicator_server.requests)
    # a second run is answered from the journal (no new HTTP call), with the same labels
    again = _samples()
    tagger.label(again)
    assert [s.labels for s in again] == [s.labels for s in samples]
    assert len(indicator_server.requests) == len(samples)


@pytest.mark.model
def test_llm_complexity_uses_first_token_probabilities(
    indicator_server: ScriptedServer, tmp_path: Path
) -> None:
    backend = indicator_server.backend(max_retries=0)
    scorer = LlmComplexityScorer(
        session=LlmSession(backend, journal=LlmJournal(tmp_path / "journal.sqlite")),
        max_samples=5,
        seed=1,
    )
    samples = _samples()
    result = scorer.score(samples)
    expected = sum(int(t) * p for t, p in COMPLEXITY_PROBABILITIES.items())  # 4.1
    assert result["scored"] == 5
    assert result["score_sources"] == {"logprobs": 5}
    assert result["mean"] == pytest.approx(expected)
    assert sum("complexity_llm" in s.scores for s in samples) == 5
    assert len(indicator_server.requests) == 5
    assert all(
        body["logprobs"] and body["top_logprobs"] == 20 for body in indicator_server.requests
    )
