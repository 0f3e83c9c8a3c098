"""Annotation adaptation on real COCO, VQA v2 and COCO-Text annotations."""

from __future__ import annotations

import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest
import yaml

from vlit.collect import CocoCollector
from vlit.collect.coco_text import load_coco_text
from vlit.collect.vqa import load_vqa
from vlit.errors import ConfigError
from vlit.generate.adaptation import AnnotationAdapter, plural
from vlit.schema import ImageRecord

_WORDS = {
    word: value
    for value, word in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen twenty".split()
    )
}


@pytest.fixture(scope="module")
def records(coco_tiny: Path) -> dict[str, ImageRecord]:
    result = CocoCollector(
        images_dir=coco_tiny / "train2017",
        captions=coco_tiny / "annotations" / "captions_train2017.json",
        instances=coco_tiny / "annotations" / "instances_train2017.json",
    ).collect()
    return {record.image_id: record for record in result.records}


def _by_task(samples: list, task: str) -> list:
    return [s for s in samples if s.provenance["task"] == task]


def _box(text: str) -> list[float]:
    match = re.search(r"\[([0-9.]+), ([0-9.]+), ([0-9.]+), ([0-9.]+)\]", text)
    assert match, text
    return [float(value) for value in match.groups()]


def test_every_task_has_a_pool_of_phrasings() -> None:
    data = yaml.safe_load(
        resources.files("vlit")
        .joinpath("data/prompts/adaptation_templates.yaml")
        .read_text("utf-8")
    )
    adapter = AnnotationAdapter(seed=0)
    for task in adapter.task_names:
        pool = data["tasks"][task]
        phrasings = pool.get("instructions") or pool.get("brief_markers")
        assert len(set(phrasings)) >= 5, task
    for pool in ("expanded_yes", "expanded_no", "expanded_other"):
        assert len(set(data["tasks"]["vqa"][pool])) >= 5


def test_counting_uses_instance_counts_without_crowds(records: dict[str, ImageRecord]) -> None:
    adapter = AnnotationAdapter(seed=0, tasks=("counting",), max_per_task=100)
    checked = 0
    for record in records.values():
        singles = Counter(o.category for o in record.objects if not o.iscrowd)
        crowded = {o.category for o in record.objects if o.iscrowd}
        samples = adapter.adapt(record)
        assert {s.provenance["source"]["category"] for s in samples} == set(singles) - crowded
        for sample in samples:
            category = sample.provenance["source"]["category"]
            response = sample.turns[1].text
            number = next(_WORDS[w] for w in re.findall(r"[a-z]+", response) if w in _WORDS)
            assert number == singles[category], (record.image_id, category, response)
            assert plural(category) in sample.turns[0].text
            checked += 1
    assert checked > 100
    # 184613 has a crowd of people: nobody is asked to count people there.
    crowd_record = records["184613"]
    assert all(s.provenance["source"]["category"] != "person" for s in adapter.adapt(crowd_record))


def test_presence_questions_answer_yes_and_no_correctly(records: dict[str, ImageRecord]) -> None:
    adapter = AnnotationAdapter(seed=1, tasks=("object_presence",), max_per_task=3)
    answers = Counter()
    for record in records.values():
        present = {o.category for o in record.objects}
        for sample in adapter.adapt(record):
            category = sample.provenance["source"]["category"]
            is_present = sample.provenance["source"]["present"]
            assert is_present == (category in present)
            assert category in sample.turns[0].text
            assert sample.turns[1].text.startswith("Yes" if is_present else "No")
            answers[is_present] += 1
    assert answers[True] > 50 and answers[False] > 50
    assert adapter.adapt(records["262284"]) == []  # no objects: absence is unknown


def test_region_caption_and_grounding_boxes_are_normalised(
    records: dict[str, ImageRecord],
) -> None:
    adapter = AnnotationAdapter(seed=2, tasks=("region_caption", "grounding"), max_per_task=3)
    seen = Counter()
    for record in records.values():
        assert record.width and record.height
        for sample in adapter.adapt(record):
            task = sample.provenance["task"]
            obj = record.objects[sample.provenance["source"]["object_index"]]
            assert obj.bbox is not None and not obj.iscrowd
            x, y, w, h = obj.bbox
            expected = [x / record.width, y / record.height, (x + w) / record.width]
            expected.append((y + h) / record.height)
            text = sample.turns[0].text if task == "region_caption" else sample.turns[1].text
            box = _box(text)
            assert all(0.0 <= v <= 1.0 for v in box)
            assert box == pytest.approx([min(1.0, v) for v in expected], abs=0.006)
            assert "fractions of the image width and height" in sample.turns[0].text
            if task == "region_caption":
                assert obj.category in sample.turns[1].text
            else:
                assert obj.category in sample.turns[0].text
                assert sum(o.category == obj.category for o in record.objects) == 1
            seen[task] += 1
    assert seen["region_caption"] > 50 and seen["grounding"] > 20


def test_captions_brief_and_detailed(records: dict[str, ImageRecord]) -> None:
    adapter = AnnotationAdapter(seed=0, tasks=("brief_caption", "detailed_caption"))
    record = records["391895"]
    brief, detailed = adapter.adapt(record)
    captions = [" ".join(c.split()) for c in record.captions]
    assert brief.turns[1].text.rstrip(".").lower() in [c.rstrip(".").lower() for c in captions]
    paragraph = detailed.turns[1].text
    for caption in captions:
        assert caption.rstrip(".")[1:] in paragraph
    assert "  " not in paragraph and "\n" not in paragraph


def test_vqa_brief_or_expanded_on_real_vqa_v2(shared_data: Path) -> None:
    folder = shared_data / "formats" / "vqa_v2"
    pairs = load_vqa(
        folder / "v2_OpenEnded_mscoco_val2014_questions.first100.json",
        folder / "v2_mscoco_val2014_annotations.first100.json",
        Counter(),
    )
    records = [
        ImageRecord(image_id=image_id, file_name=f"{image_id}.jpg", vqa=vqa)
        for image_id, vqa in sorted(pairs.items())
    ]
    templates = yaml.safe_load(
        resources.files("vlit")
        .joinpath("data/prompts/adaptation_templates.yaml")
        .read_text("utf-8")
    )["tasks"]["vqa"]
    styles = Counter()
    for style in ("brief", "expanded", "mixed"):
        adapter = AnnotationAdapter(seed=3, tasks=("vqa",), max_per_task=10, vqa_style=style)
        for record in records:
            by_question = {pair.question_id: pair for pair in record.vqa}
            for sample in adapter.adapt(record):
                source = sample.provenance["source"]
                pair = by_question[source["question_id"]]
                instruction, response = sample.turns[0].text, sample.turns[1].text
                assert instruction.startswith(" ".join(pair.question.split()))
                if source["style"] == "brief":
                    assert response == pair.majority_answer
                    assert any(instruction.endswith(m) for m in templates["brief_markers"])
                elif pair.majority_answer in ("yes", "no"):
                    assert response in templates[f"expanded_{pair.majority_answer}"]
                else:
                    assert pair.majority_answer in response and response != pair.majority_answer
                styles[(style, source["style"])] += 1
    assert styles[("mixed", "brief")] > 10 and styles[("mixed", "expanded")] > 10
    assert styles[("brief", "expanded")] == 0 and styles[("expanded", "brief")] == 0


def test_ocr_reads_legible_text(shared_data: Path) -> None:
    texts = load_coco_text(
        shared_data / "formats" / "coco_text" / "coco_text_results_format_sample.json", Counter()
    )
    adapter = AnnotationAdapter(seed=0, tasks=("ocr",))
    for image_id, ocr in texts.items():
        record = ImageRecord(image_id=image_id, file_name="x.jpg", ocr=ocr)
        (sample,) = adapter.adapt(record)
        legible = [t.text for t in ocr if t.legible]
        for text in legible:
            assert f'"{text}"' in sample.turns[1].text
        assert sample.provenance["source"]["texts"] == len(set(legible))


def test_seeded_phrasing_and_stable_ids(records: dict[str, ImageRecord]) -> None:
    record = records["391895"]
    first = AnnotationAdapter(seed=0).adapt(record)
    again = AnnotationAdapter(seed=0).adapt(record)
    assert [s.to_row() for s in first] == [s.to_row() for s in again]
    assert len({s.sample_id for s in first}) == len(first)
    phrasings = {
        tuple(s.turns[0].text for s in AnnotationAdapter(seed=seed).adapt(record))
        for seed in range(10)
    }
    assert len(phrasings) > 5
    assert all(s.mode == "adaptation" and s.image == record.file_name for s in first)


def test_unknown_task_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError) as error:
        AnnotationAdapter(seed=0, tasks=("captioning",))
    assert "captioning" in str(error.value) and "brief_caption" in str(error.value)


def test_plural() -> None:
    assert [plural(n) for n in ("person", "wine glass", "bus", "sheep", "skis", "teddy bear")] == [
        "people",
        "wine glasses",
        "buses",
        "sheep",
        "skis",
        "teddy bears",
    ]
