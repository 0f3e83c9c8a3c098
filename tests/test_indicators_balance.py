"""Task counts, T and balance against hand computation; O/G and the complexity proxy."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlit.quality.indicators.balance import TaskDistributionIndicator, balance_statistics
from vlit.quality.indicators.complexity import (
    ObjectGranularityIndicator,
    ProxyWeights,
    mentioned_objects,
    proxy_complexity,
)
from vlit.quality.indicators.scores import QualityScoresIndicator
from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn


def test_balance_matches_hand_computation() -> None:
    # counts 50, 30, 20 -> shares 50, 30, 20 %; mean 33.33
    # population variance = ((16.67)^2 + (3.33)^2 + (13.33)^2) / 3 = 155.56
    stats = balance_statistics({"a": 50, "b": 30, "c": 20})
    assert stats["share_variance"] == pytest.approx((16.6667**2 + 3.3333**2 + 13.3333**2) / 3, 1e-4)
    assert stats["share_variance_sample"] == pytest.approx(233.333, 1e-4)
    assert stats["count_variance"] == pytest.approx(155.556, 1e-4)
    assert stats["coefficient_of_variation"] == pytest.approx(math.sqrt(155.556) / 33.3333, 1e-4)
    entropy = -(0.5 * math.log(0.5) + 0.3 * math.log(0.3) + 0.2 * math.log(0.2))
    assert stats["normalised_entropy"] == pytest.approx(entropy / math.log(3))
    even = balance_statistics({"a": 7, "b": 7})
    assert even["share_variance"] == 0.0
    assert even["normalised_entropy"] == pytest.approx(1.0)


def test_share_variance_does_not_depend_on_dataset_size() -> None:
    small = balance_statistics({"a": 5, "b": 3, "c": 2})
    large = balance_statistics({"a": 5000, "b": 3000, "c": 2000})
    assert small["share_variance"] == pytest.approx(large["share_variance"])
    assert small["count_variance"] != large["count_variance"]


def test_task_distribution_is_mergeable_and_excludes_other() -> None:
    samples = [
        Sample("1", labels=["counting"]),
        Sample("2", labels=["counting", "yes_no"]),
        Sample("3", labels=["other"]),
        Sample("4", labels=[]),
    ]
    whole = TaskDistributionIndicator()
    whole.update(samples)
    left, right = TaskDistributionIndicator(), TaskDistributionIndicator()
    left.update(samples[:2])
    right.update(samples[2:])
    left.merge(right)
    assert left.result() == whole.result()
    result = whole.result()
    assert result["task_diversity"] == 2
    assert result["task_counts"] == {"counting": 2, "yes_no": 1}
    assert result["other_samples"] == 1
    assert result["unlabelled_samples"] == 1


def test_objects_mentioned_from_real_coco_annotations(coco_tiny: Path) -> None:
    data = json.loads((coco_tiny / "annotations" / "instances_train2017.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[str, ImageRecord] = {}
    for annotation in data["annotations"]:
        image_id = str(annotation["image_id"])
        record = by_image.setdefault(image_id, ImageRecord(image_id=image_id, file_name="x.jpg"))
        record.objects.append(ObjectAnnotation(category=names[annotation["category_id"]]))
    image_id, record = next((i, r) for i, r in by_image.items() if len(r.objects) >= 2)
    categories = sorted({o.category for o in record.objects})
    text = f"There are two {categories[0]}s and a {categories[1]} here; no unicorns."
    assert mentioned_objects(text, categories) == 2
    assert mentioned_objects("nothing relevant", categories) == 0
    indicator = ObjectGranularityIndicator(records=by_image)
    indicator.update(
        [
            Sample(
                "a",
                image_id=image_id,
                turns=[Turn("user", "What is here?"), Turn("assistant", text)],
            )
        ]
    )
    result = indicator.result()
    assert result["source"] == "annotations"
    assert result["object_granularity"] == 2.0


@pytest.mark.model
def test_objects_from_the_spacy_parse() -> None:
    indicator = ObjectGranularityIndicator(records={})
    indicator.update(
        [
            Sample("a", turns=[Turn("user", "What is the man with the red hat holding?")]),
            Sample("b", turns=[Turn("user", "Describe the image.")]),
        ]
    )
    result = indicator.result()
    assert result["source"] == "parse"
    # man, hat -> 2 objects; "image" only points at the picture -> 0
    assert result["parsed"]["objects"]["mean"] == pytest.approx(1.0)
    assert result["parsed"]["semantic_elements"]["mean"] > 1.0


def test_complexity_proxy_orders_simple_below_demanding() -> None:
    simple = proxy_complexity(["Describe the image."])
    demanding = proxy_complexity(
        [
            "Why might the crowd be gathering here, and what does it suggest about the event?",
            "How could the organisers improve safety?",
        ]
    )
    # "Describe the image." by hand: 3 words, no clause marker, no reasoning word, one turn
    assert simple == pytest.approx(1.0 + 9.0 * (1.0 - math.exp(-3 * ProxyWeights().per_word)))
    assert 7.0 < demanding <= 10.0  # two questions, "why"/"how", a subordinate clause
    # each added demand raises the score: one question less scores lower
    assert (
        proxy_complexity(
            ["Why might the crowd be gathering here, and what does it suggest about the event?"]
        )
        < demanding
    )


def test_quality_scores_md_as_cosine_times_100() -> None:
    indicator = QualityScoresIndicator()
    indicator.update(
        [
            Sample("a", scores={"md": 0.30, "correct": 1.0, "hallucination_rate": 0.2}),
            Sample("b", scores={"md": 0.34, "correct": 0.0}),
            Sample("c"),
        ]
    )
    result = indicator.result()
    assert result["md"] == pytest.approx(32.0)
    assert result["correctness"] == pytest.approx(50.0)
    assert result["hallucination_rate"] == pytest.approx(0.2)
    assert result["scored"] == {"md": 2, "correct": 2, "hallucination": 1}
