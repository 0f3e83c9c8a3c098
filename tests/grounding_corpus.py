"""The hand-labelled grounding corpus (tests/data/grounding) and its scoring.

Used by ``tests/test_grounding_corpus.py`` and ``benchmarks/bench_grounding.py``; only the
public ``AnnotationGrounding`` stage and the provenance it writes are used, so the same code
scores an older vlit tree (the benchmark's baseline).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlit.schema import ImageRecord, ObjectAnnotation, Sample, Turn

CORPUS = Path(__file__).resolve().parent / "data" / "grounding" / "corpus.jsonl"
HELDOUT2 = CORPUS.with_name("heldout2.jsonl")  # written blind, scored on its own
CHECKS = {  # check name -> (corpus label, provenance key)
    "mentions": ("p", "mentioned"),
    "hallucinated": ("h", "hallucinated"),
    "false absent": ("fa", "false_absent"),
    "count errors": ("ce", "count_errors"),
}


def load_corpus(path: Path = CORPUS) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def coco_records(coco_tiny: Path) -> dict[str, ImageRecord]:
    """ImageRecords straight from the official instances JSON (no vlit collector)."""
    data = json.loads((coco_tiny / "annotations" / "instances_train2017.json").read_text())
    categories = {c["id"]: c for c in data["categories"]}
    listed = {}
    if "objects_annotated" in {f.name for f in dataclasses.fields(ImageRecord)}:
        listed = {"objects_annotated": True}  # every image here is listed by the instances file
    records = {
        str(image["id"]): ImageRecord(
            image_id=str(image["id"]),
            file_name=image["file_name"],
            image_root=str(coco_tiny / "train2017"),
            width=image["width"],
            height=image["height"],
            source="coco",
            **listed,
        )
        for image in data["images"]
    }
    for annotation in data["annotations"]:
        category = categories[annotation["category_id"]]
        records[str(annotation["image_id"])].objects.append(
            ObjectAnnotation(
                category=category["name"],
                supercategory=category["supercategory"],
                bbox=annotation["bbox"],
                iscrowd=bool(annotation["iscrowd"]),
                annotation_id=annotation["id"],
            )
        )
    return records


def corpus_samples(items: list[dict[str, Any]]) -> list[Sample]:
    """One sample per answer: the question (if any) as the user turn, then the answer."""
    samples = []
    for item in items:
        turns = [Turn("user", item["q"] or "Describe the image."), Turn("assistant", item["a"])]
        samples.append(Sample(sample_id=item["id"], image_id=item["image"], turns=turns))
    return samples


def predicted(sample: Sample) -> dict[str, set[str]]:
    """The categories vlit reported per check (empty when the sample was not checked)."""
    details = sample.provenance.get("quality", {}).get("grounding", {})
    found: dict[str, set[str]] = {}
    for check, (_, key) in CHECKS.items():
        values = details.get(key) or []
        found[check] = {v["category"] if isinstance(v, dict) else v for v in values}
    return found


@dataclass
class Scores:
    """True/false positives and negatives per check, and mistakes per cause class."""

    tp: Counter[str] = field(default_factory=Counter)
    fp: Counter[str] = field(default_factory=Counter)
    fn: Counter[str] = field(default_factory=Counter)
    errors_by_cause: Counter[tuple[str, str]] = field(default_factory=Counter)
    mistakes: list[str] = field(default_factory=list)

    def precision(self, check: str) -> float:
        found = self.tp[check] + self.fp[check]
        return self.tp[check] / found if found else 1.0

    def recall(self, check: str) -> float:
        wanted = self.tp[check] + self.fn[check]
        return self.tp[check] / wanted if wanted else 1.0


def score(items: list[dict[str, Any]], results: list[Sample]) -> Scores:
    """Compare vlit's findings on ``results`` with the corpus labels of ``items``."""
    scores = Scores()
    for item, sample in zip(items, results, strict=True):
        found = predicted(sample)
        for check, (label, _) in CHECKS.items():
            wanted = set(item[label])
            got = found[check]
            scores.tp[check] += len(wanted & got)
            scores.fp[check] += len(got - wanted)
            scores.fn[check] += len(wanted - got)
            for category in sorted(got - wanted):
                scores.errors_by_cause[(item["cause"], check)] += 1
                scores.mistakes.append(f"{item['id']} {check} +{category}: {item['a']}")
            for category in sorted(wanted - got):
                scores.errors_by_cause[(item["cause"], check)] += 1
                scores.mistakes.append(f"{item['id']} {check} -{category}: {item['a']}")
    return scores
