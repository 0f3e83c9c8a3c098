"""Rule labeller on a table of instructions; TagGPT tagger over a real local HTTP server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from indicator_llm_server import COMPLEXITY_PROBABILITIES, serve
from vlit.llm.journal import LlmJournal
from vlit.llm.openai_compatible import OpenAICompatibleBackend
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


@pytest.fixture(scope="module")
def llm_url() -> Iterator[str]:
    yield from serve()


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
def test_taggpt_through_a_real_server(llm_url: str, tmp_path: Path) -> None:
    backend = OpenAICompatibleBackend(base_url=llm_url, model="scripted-tagger", max_retries=0)
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
    # a second run is answered from the journal, with the same labels
    again = _samples()
    tagger.label(again)
    assert [s.labels for s in again] == [s.labels for s in samples]


@pytest.mark.model
def test_llm_complexity_uses_first_token_probabilities(llm_url: str, tmp_path: Path) -> None:
    backend = OpenAICompatibleBackend(base_url=llm_url, model="scripted-judge", max_retries=0)
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
