"""Do the indicators move the right way? A table over datasets with a known amount of each property.

    .venv/bin/python benchmarks/bench_indicator_validity.py [--embedders minilm,wordllama]

Datasets from real text (``vlit.quality.indicators.validity``): COCO captions of the tiny COCO
set, the LLaVA slice, VQA v2 questions, our adaptation templates and generation examples (run
from the project root: the data is read from ``../shared/data``). Each row: the property, its
known amount, the indicator's value.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from vlit.collect.coco import CocoCollector
from vlit.demo_data import materialize_demo
from vlit.generate.adaptation import AnnotationAdapter
from vlit.quality.indicators import validity
from vlit.quality.indicators.embeddings import load_embedder
from vlit.quality.indicators.suite import IndicatorSettings, compute_indicators

DATA = Path("../shared/data")
CAPTIONS = DATA / "coco_tiny/annotations/captions_train2017.json"
INSTANCES = DATA / "coco_tiny/annotations/instances_train2017.json"
LLAVA = DATA / "formats/llava/llava_pretrain_slice_2k.json"
VQA = DATA / "formats/vqa_v2/v2_OpenEnded_mscoco_val2014_questions.first100.json"


def demo_template_samples() -> list[Any]:
    """The demo's annotation-adaptation samples (its template answers), without the LLM."""
    with tempfile.TemporaryDirectory() as folder:
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


def table_of(samples: list[Any], embedder: Any, **settings: Any) -> dict[str, Any]:
    report = compute_indicators(samples, embedder=embedder, settings=IndicatorSettings(**settings))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedders", default="minilm,wordllama")
    parser.add_argument("--size", type=int, default=192, help="responses per topic dataset")
    args = parser.parse_args()
    captions = validity.coco_captions(CAPTIONS)
    categories = validity.coco_categories(INSTANCES)
    llava = validity.llava_responses(LLAVA)
    rows: list[tuple[str, str, str, str]] = []
    start = time.perf_counter()
    for name in args.embedders.split(","):
        embedder = load_embedder(name)

        def r_value(samples: list[Any], embedder: Any = embedder, **settings: Any) -> str:
            report = table_of(samples, embedder, **settings)
            response = report["indicators"]["response_diversity"]
            value = response["log_clusters"]
            shown = "none" if value is None else f"{value:.2f}"
            return f"{shown} ({response['clusters']} clusters, eps {response['eps']:.3f})"

        for topics in (1, 2, 4, 8, 16):
            samples = validity.topic_mix(captions, topics=topics, size=args.size, seed=0)
            rows.append((f"R [{name}]", "COCO images mixed", str(topics), r_value(samples)))
        for size in (600, 1200, len(llava)):
            samples = validity.response_samples(llava[:size])
            rows.append(
                (f"R [{name}]", "LLaVA responses (subsample 500)", str(size),
                 r_value(samples, subsample_size=500))
            )  # fmt: skip
        base = llava[:300]
        rows.append((f"R [{name}]", "near-copies per response", "0",
                     r_value(validity.response_samples(base))))  # fmt: skip
        for kind in validity.NEAR_COPY_KINDS:
            for copies in (1, 5):
                copied = validity.with_near_duplicates(base, copies, kind)
                rows.append((f"R [{name}]", f"near-copies per response ({kind.split()[0]})",
                             str(copies), r_value(copied)))  # fmt: skip
        rows.append((f"R [{name}]", "LLaVA slice vs demo templates", "LLaVA slice",
                     r_value(validity.response_samples(llava))))  # fmt: skip
        rows.append((f"R [{name}]", "LLaVA slice vs demo templates", "demo templates",
                     r_value(demo_template_samples())))  # fmt: skip
    for kinds in (1, 2, 3, 5):
        report = table_of(validity.task_mix(categories, kinds=kinds, size=200, seed=0), None)
        rows.append(
            ("T", "adaptation task kinds", str(kinds), str(report["table"]["task_diversity"]))
        )
    for share in (0.25, 0.4, 0.6, 0.8):
        report = table_of(validity.skewed_tasks(categories, share=share, size=200, seed=0), None)
        rows.append(("balance (variance)", "share of one task of 4", f"{share:.2f}",
                     f"{report['table']['balance']:.1f}"))  # fmt: skip
    for phrasings, size in ((1, 120), (2, 120), (3, 120), (6, 120), (6, 480)):
        report = table_of(validity.phrasing_mix(phrasings=phrasings, size=size), None)
        rows.append(("I", "phrasings per task (samples)", f"{phrasings} ({size})",
                     f"{report['table']['instruction_diversity']:.1f}"))  # fmt: skip
    for objects in (1, 2, 3, 4):
        samples = validity.object_questions(categories, objects=objects, size=60, seed=0)
        report = table_of(samples, None)
        elements = report["indicators"]["object_granularity"]["parsed"]["semantic_elements"]
        value = f"{report['table']['object_granularity']:.2f} ({elements['mean']:.2f})"
        rows.append(("O/G (elements)", "objects with attributes", str(objects), value))
    for tier, samples in validity.complexity_tiers(validity.vqa_questions(VQA)).items():
        report = table_of(samples, None)
        rows.append(("complexity proxy", "question kind", tier,
                     f"{report['table']['instruction_complexity_proxy']:.2f}"))  # fmt: skip
    print(f"{'indicator':22s} {'known property':34s} {'amount':>16s}  value")
    for indicator, prop, amount, value in rows:
        print(f"{indicator:22s} {prop:34s} {amount:>16s}  {value}")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
