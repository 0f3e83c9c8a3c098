"""The paper's validation study end to end, with tiny random models (SPEC §5).

Three datasets made from COCO annotations (captions, object counts, both mixed) are each used to
tune the three model families the paper tuned (LLaVA-style, BLIP-2, OpenFlamingo), every tuned
model answers the same SEED-Bench style questions, and `correlate` relates the datasets'
indicators to the accuracy averaged over the three models, with the ICC of each dataset's
results across the three models. The models are tiny and random: the numbers show the machinery
working, not which data is better.

    python examples/three_model_study.py --coco ../shared/data/coco_tiny --out study/

Needs `vlit[eval,openflamingo]` plus open-flamingo (see README). The CLI equivalent of each
step: `vlit tune RUN --model M --out T`, `vlit bench Q.json --images I --model T --dataset D
--out R.json`, `vlit correlate --indicators D*.json --results R*.json --html study.html`.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

from vlit.evaluate.bench import run_bench
from vlit.evaluate.correlate import (
    correlate,
    load_benchmark_results,
    load_indicator_tables,
    write_html,
)
from vlit.evaluate.models import load_vision_language_model
from vlit.evaluate.tiny import build_tiny_blip2, build_tiny_llava, build_tiny_openflamingo
from vlit.evaluate.tuning import LoraTuner, resolve_preset
from vlit.rundir import RunDir
from vlit.schema import Sample, Turn

# Our questions about COCO images, one per SEED-Bench image dimension (answers from the COCO
# annotations, written before any model ran).
QUESTIONS = [
    ("q1", "000000005802.jpg", 1, "Where was this picture taken?",
     ("in a kitchen", "on a beach", "in a forest", "on a highway"), "A"),
    ("q2", "000000012448.jpg", 2, "Which toy is in the picture?",
     ("a kite", "a teddy bear", "a ball", "a toy train"), "B"),
    ("q3", "000000051191.jpg", 3, "What kind of plant sits in the pot?",
     ("a cactus", "a tree", "a green leafy plant", "a sunflower"), "C"),
    ("q4", "000000060760.jpg", 4, "Where is the toilet in the picture?",
     ("top left", "nowhere", "outside", "in the middle"), "D"),
    ("q5", "000000079841.jpg", 5, "How many bicycles are in the image?",
     ("Two", "One", "Five", "Zero"), "A"),
    ("q6", "000000086408.jpg", 6, "Where is the microwave relative to the oven?",
     ("under it", "above it", "behind the door", "inside the fridge"), "B"),
    ("q7", "000000113588.jpg", 7, "What are the people doing with the computers?",
     ("cooking", "swimming", "working at them", "sleeping"), "C"),
    ("q8", "000000118113.jpg", 8, "Why are there books next to the oven?",
     ("it is a library", "it is a bathroom", "it is a garage", "they are cookbooks"), "D"),
    ("q9", "000000144941.jpg", 9, "What text is written on the sink?",
     ("no text", "EXIT", "STOP", "OPEN"), "A"),
]  # fmt: skip

DATASETS = ("captions", "counts", "mixed")
# family -> (tuning preset, learning rate for the tiny models)
FAMILIES = {
    "llava": ("tiny", None),
    "blip-2": ("blip2", 1e-2),
    "openflamingo": ("openflamingo-3b", 3e-3),
}


def _coco(coco: Path) -> tuple[dict[int, str], dict[int, list[str]], dict[int, Counter[str]]]:
    captions = json.loads((coco / "annotations/captions_train2017.json").read_text("utf-8"))
    instances = json.loads((coco / "annotations/instances_train2017.json").read_text("utf-8"))
    files = {i["id"]: i["file_name"] for i in captions["images"]}
    texts: dict[int, list[str]] = {}
    for a in captions["annotations"]:
        texts.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))
    names = {c["id"]: c["name"] for c in instances["categories"]}
    counts: dict[int, Counter[str]] = {}
    for a in instances["annotations"]:
        counts.setdefault(a["image_id"], Counter())[names[a["category_id"]]] += 1
    return files, texts, counts


def make_runs(coco: Path, out: Path, images: int) -> dict[str, Path]:
    """Three runs whose kept samples differ in what the answers teach."""
    files, texts, counts = _coco(coco)
    ids = [i for i in sorted(counts) if i in texts][:images]
    runs: dict[str, Path] = {}
    for name in DATASETS:
        samples = []
        for n, image_id in enumerate(ids):
            listed = ", ".join(f"{c} {o}" for o, c in sorted(counts[image_id].items()))
            caption = Turn("user", "Describe the picture."), Turn("assistant", texts[image_id][0])
            count = Turn("user", "What objects can you count?"), Turn("assistant", f"{listed}.")
            turns = {"captions": caption, "counts": count, "mixed": caption + count}[name]
            if name == "mixed" and n % 2:
                turns = count
            samples.append(
                Sample(
                    sample_id=f"{name}-{image_id}",
                    image_id=str(image_id),
                    image=files[image_id],
                    image_root=str(coco / "train2017"),
                    turns=list(turns),
                )
            )
        runs[name] = out / "runs" / name
        RunDir(runs[name]).write_samples("kept", samples)
    return runs


def indicator_table(name: str, run: Path) -> dict[str, Any]:
    """Simple indicators of a run's kept samples (use `vlit report`'s indicators.json for the
    paper's Table 4 on real data)."""
    samples = list(RunDir(run).read_samples("kept"))
    answers = [t.text for s in samples for t in s.turns if t.role == "assistant"]
    words = [w.lower().strip(".,") for a in answers for w in a.split()]
    return {
        "dataset": name,
        "indicators": {
            "turns per sample": sum(len(s.turns) for s in samples) / len(samples),
            "answer words": len(words) / len(answers),
            "distinct answer words": len(set(words)),
        },
    }


def build_models(coco: Path, out: Path) -> dict[str, Path]:
    _, texts, _ = _coco(coco)
    corpus = [t for caps in texts.values() for t in caps]
    corpus += [q[3] + " " + " ".join(q[4]) for q in QUESTIONS]
    corpus += ["Describe the picture.", "What objects can you count?", "Question: Answer:"]
    return {
        "llava": build_tiny_llava(out / "models/llava", texts=corpus),
        "blip-2": build_tiny_blip2(out / "models/blip2", texts=corpus),
        "openflamingo": build_tiny_openflamingo(out / "models/openflamingo", texts=corpus),
    }


def write_questions(path: Path) -> Path:
    keys = ("question_id", "data_id", "question_type_id", "question")
    questions = []
    for spec in QUESTIONS:
        record: dict[str, Any] = dict(zip(keys, spec[:4], strict=True))
        record.update({f"choice_{c}": text for c, text in zip("abcd", spec[4], strict=True)})
        questions.append({**record, "data_type": "image", "answer": spec[5]})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"questions": questions}, indent=1), encoding="utf-8")
    return path


def run_study(coco: Path, out: Path, *, steps: int = 4, images: int = 8) -> dict[str, Any]:
    """Tune, bench and correlate; returns the correlation summary (also in OUT/study.json)."""
    out.mkdir(parents=True, exist_ok=True)
    models = build_models(coco, out)
    runs = make_runs(coco, out, images)
    questions = write_questions(out / "questions.json")
    indicator_files, result_files = [], []
    for dataset, run in runs.items():
        table = out / "indicators" / f"{dataset}.json"
        table.parent.mkdir(parents=True, exist_ok=True)
        table.write_text(json.dumps(indicator_table(dataset, run), indent=1), encoding="utf-8")
        indicator_files.append(table)
        for family, base in models.items():
            preset_name, learning_rate = FAMILIES[family]
            preset = resolve_preset(preset_name, family=family, learning_rate=learning_rate)
            tuned = out / "tuned" / f"{dataset}-{family}"
            LoraTuner(preset=preset, max_steps=steps, seed=0, device="cpu").tune(
                run, model=str(base), out=tuned
            )
            vlm = load_vision_language_model(str(tuned), device="cpu")
            result = run_bench(questions, images=coco / "train2017", model=vlm, dataset=dataset)
            result = replace(result, model=family)  # one rater name per family across datasets
            path = out / "results" / f"{dataset}-{family}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result.to_json(), indent=1), encoding="utf-8")
            result_files.append(path)
    study = correlate(load_indicator_tables(indicator_files), load_benchmark_results(result_files))
    write_html(study, out / "study.html")
    (out / "study.json").write_text(json.dumps(study.to_json(), indent=1), encoding="utf-8")
    return study.summary()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coco", type=Path, default=Path("../shared/data/coco_tiny"))
    parser.add_argument("--out", type=Path, default=Path("study"))
    parser.add_argument("--steps", type=int, default=4, help="tuning steps per model")
    args = parser.parse_args(argv)
    summary = run_study(args.coco, args.out, steps=args.steps)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
