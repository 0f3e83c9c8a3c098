"""Each indicator moves the right way, by a clear margin, on datasets with a known amount of its
property, built from real text (vlit.quality.indicators.validity); R with both embedders."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vlit.collect.coco import CocoCollector
from vlit.demo_data import materialize_demo
from vlit.generate.adaptation import AnnotationAdapter
from vlit.quality.indicators import validity
from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.complexity import (
    ComplexityProxyIndicator,
    ObjectGranularityIndicator,
    spacy_elements,
)
from vlit.quality.indicators.embeddings import load_embedder
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.response_diversity import ResponseDiversityIndicator, response_key
from vlit.schema import Sample

pytestmark = pytest.mark.model


@pytest.fixture(scope="session", params=["minilm", "wordllama"])
def embedder(request: pytest.FixtureRequest) -> Any:
    return load_embedder(request.param)


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embeddings")


def response_diversity(
    samples: list[Sample], embedder: Any, cache: Path, **settings: Any
) -> dict[str, Any]:
    indicator = ResponseDiversityIndicator(embedder=embedder, cache_dir=cache, **settings)
    indicator.update(samples)
    return indicator.result()


def clusters(result: dict[str, Any]) -> int:
    return int(result["clusters"])


def test_r_rises_with_topics_at_equal_size(
    coco_tiny: Path, embedder: Any, embedding_cache: Path
) -> None:
    captions = validity.coco_captions(coco_tiny / "annotations/captions_train2017.json")
    counts = [
        clusters(
            response_diversity(
                validity.topic_mix(captions, topics=topics, size=192, seed=0),
                embedder,
                embedding_cache,
            )
        )
        for topics in (1, 2, 4, 8, 16)
    ]
    assert counts == sorted(counts) and counts[0] <= 1, counts
    assert counts[-1] >= counts[2] + 5, counts
    assert math.log(counts[-1]) - math.log(max(counts[1], 1)) > 1.5


def test_r_on_a_fixed_subsample_does_not_follow_size(
    llava_slice: Path, embedder: Any, embedding_cache: Path
) -> None:
    texts = validity.llava_responses(llava_slice)
    values = [
        response_diversity(
            validity.response_samples(texts[:size]),
            embedder,
            embedding_cache,
            subsample_size=300,
        )
        for size in (400, 800, 1600)
    ]
    assert all(v["subsampled"] == 300 for v in values)
    logs = [v["log_clusters"] for v in values]
    assert None not in logs and max(logs) - min(logs) < 0.6, logs


@pytest.mark.parametrize("kind", [None, *validity.NEAR_COPY_KINDS])
def test_near_duplicates_do_not_change_r(
    llava_slice: Path, embedder: Any, embedding_cache: Path, kind: str | None
) -> None:
    base = validity.llava_responses(llava_slice)[:300]
    alone = response_diversity(validity.response_samples(base), embedder, embedding_cache)
    for copies in (1, 3, 5):
        copied = validity.with_near_duplicates(base, copies, kind)
        texts = {turn for sample in copied for turn in sample.assistant_turns()}
        assert len(texts) > (1 + 0.9 * min(copies, 3)) * len(base)  # the copies are other texts
        result = response_diversity(copied, embedder, embedding_cache)
        measured = ("clusters", "log_clusters", "points", "eps", "cluster_sizes")
        assert {k: result[k] for k in measured} == {k: alone[k] for k in measured}, (kind, copies)


@pytest.mark.parametrize("kind", list(validity.WORDY_COPY_KINDS))
def test_wordier_near_copies_barely_change_r(
    llava_slice: Path, embedder: Any, embedding_cache: Path, kind: str
) -> None:
    """A prefix added ("The image shows ...") or a typo: joined by the character rules before
    embedding, the original standing for its copies (without the rules R rose by 0.3 to 4.0)."""
    base = validity.llava_responses(llava_slice)[:300]
    alone = response_diversity(validity.response_samples(base), embedder, embedding_cache)
    for copies in (1, 3, 5):
        copied = validity.with_near_duplicates(base, copies, kind)
        keys = {response_key(turn) for sample in copied for turn in sample.assistant_turns()}
        assert len(keys) > (1 + 0.9 * copies) * len(base)  # the copies are other keys
        result = response_diversity(copied, embedder, embedding_cache)
        measured = ("clusters", "log_clusters", "points")  # a border point may change cluster
        assert {k: result[k] for k in measured} == {k: alone[k] for k in measured}, (kind, copies)


@settings(max_examples=100, deadline=None)
@given(
    words=st.lists(
        st.from_regex(r"[a-zA-Z0-9\u00e9\u00df]{1,8}", fullmatch=True), min_size=1, max_size=8
    ),
    data=st.data(),
)
def test_a_response_key_ignores_case_punctuation_and_spacing_only(
    words: list[str], data: st.DataObject
) -> None:
    marks = st.sampled_from(
        [" ", "  ", "\t", "\u00a0", "\u3000", ", ", ". ", "! ", " - ", "\uff0c"]
    )
    gaps = [data.draw(marks) for _ in words]
    end = data.draw(st.sampled_from(["", ".", "!", " ?", "...", "\uff0e"]))
    cased = [data.draw(st.sampled_from([w, w.upper(), w.lower(), w.title()])) for w in words]
    copy = "".join(g + w for g, w in zip(gaps, cased, strict=True)) + end
    key = " ".join(words).casefold()
    assert response_key(copy) == response_key(" ".join(words)) == key
    # one letter changed is another response
    changed = [*words[:-1], words[-1] + "x"]
    assert response_key(" ".join(changed)) != key


def _demo_template_samples(folder: Path) -> list[Sample]:
    paths = materialize_demo(folder)
    records = (
        CocoCollector(
            images_dir=paths.images_dir,
            captions=paths.captions,
            instances=paths.instances,
            vqa_questions=paths.vqa_questions,
            vqa_annotations=paths.vqa_annotations,
            coco_text=paths.coco_text,
            attributes=paths.attributes,
        )
        .collect()
        .records
    )
    adapter = AnnotationAdapter(seed=0)
    return [sample for record in records for sample in adapter.adapt(record)]


def test_llava_slice_is_more_diverse_than_the_demo_templates(
    llava_slice: Path, embedder: Any, embedding_cache: Path, tmp_path: Path
) -> None:
    llava = response_diversity(
        validity.response_samples(validity.llava_responses(llava_slice)),
        embedder,
        embedding_cache,
    )
    demo = response_diversity(_demo_template_samples(tmp_path), embedder, embedding_cache)
    assert llava["degenerate"] is None and llava["clusters"] >= 15
    assert llava["log_clusters"] > demo["log_clusters"] + 1.0


def _tasks(samples: list[Sample]) -> dict[str, Any]:
    RuleTaskLabeller()(samples)
    indicator = TaskDistributionIndicator()
    indicator.update(samples)
    return indicator.result()


def test_t_rises_with_task_kinds_and_balance_with_one_tasks_share(coco_tiny: Path) -> None:
    categories = validity.coco_categories(coco_tiny / "annotations/instances_train2017.json")
    kinds = [
        _tasks(validity.task_mix(categories, kinds=k, size=200, seed=0))["task_diversity"]
        for k in (1, 2, 3, 5)
    ]
    assert kinds == sorted(kinds) and len(set(kinds)) == 4 and kinds[0] == 1, kinds
    variances = [
        _tasks(validity.skewed_tasks(categories, share=share, size=200, seed=0))["balance"][
            "share_variance"
        ]
        for share in (0.25, 0.4, 0.6, 0.8)
    ]
    assert all(b > 1.5 * a for a, b in zip(variances, variances[1:], strict=False)), variances


def _instruction_diversity(samples: list[Sample]) -> float:
    RuleTaskLabeller()(samples)
    indicator = InstructionDiversityIndicator()
    indicator.update(samples)
    return float(indicator.result()["mean_clusters"])


def test_i_rises_with_phrasings_not_with_repetition() -> None:
    values = [
        _instruction_diversity(validity.phrasing_mix(phrasings=p, size=120)) for p in (1, 3, 6)
    ]
    assert values[0] < values[1] < values[2] and values[2] - values[0] >= 1.0, values
    repeated = _instruction_diversity(validity.phrasing_mix(phrasings=6, size=480))
    assert repeated == values[2]


def test_og_rises_with_objects_and_attributes(coco_tiny: Path) -> None:
    categories = validity.coco_categories(coco_tiny / "annotations/instances_train2017.json")
    parser = spacy_elements()
    results = []
    for objects in (1, 2, 4):
        indicator = ObjectGranularityIndicator(parser=lambda: parser)
        indicator.update(validity.object_questions(categories, objects=objects, size=40, seed=0))
        results.append(indicator.result())
    values = [r["object_granularity"] for r in results]
    elements = [r["parsed"]["semantic_elements"]["mean"] for r in results]
    assert values[0] + 0.7 < values[1] and values[1] + 1.4 < values[2], values
    assert elements[0] + 1.5 < elements[1] and elements[1] + 3.0 < elements[2], elements


def test_complexity_proxy_rises_from_one_word_to_multi_step_questions(shared_data: Path) -> None:
    questions = validity.vqa_questions(
        shared_data / "formats/vqa_v2/v2_OpenEnded_mscoco_val2014_questions.first100.json"
    )
    means = []
    for samples in validity.complexity_tiers(questions).values():
        indicator = ComplexityProxyIndicator()
        indicator.update(samples)
        means.append(indicator.result()["proxy_complexity"])
    assert means[0] + 1.0 < means[1] and means[1] + 3.0 < means[2], means
