"""Grounding accuracy on the hand-labelled corpus and throughput, this tree vs a baseline tree.

For each vlit source tree (``--baseline-src``, e.g. ``main`` unpacked by
``git archive main | tar -x -C /tmp/base-13``, and this tree's ``src``) a subprocess with that
tree first on ``PYTHONPATH`` scores tests/data/grounding/corpus.jsonl and heldout2.jsonl with
``AnnotationGrounding`` and prints:

- precision / recall of the four checks (mentions, hallucinated, false absent, count errors)
  on the dev part, the held-out part, the whole corpus, each batch of the corpus README and,
  as its own group, the blind heldout2 file;
- mistakes (false positives + false negatives) per cause class of the corpus;
- throughput: answers grounded per second (the corpus cycled ``--repeat`` times, spaCy loaded
  before timing, best of ``--rounds``).

Usage:
    .venv/bin/python benchmarks/bench_grounding.py --baseline-src /tmp/base-13/src
    .venv/bin/python benchmarks/bench_grounding.py --spacy-model /path/to/unpacked/pipeline
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
COCO_TINY = ROOT.parent / "shared" / "data" / "coco_tiny"


# The corpus splits, and the batches of its README by id prefix (written at different times).
GROUPS = {
    "dev": "split dev (all batches)",
    "heldout": "split heldout",
    "all": "whole corpus",
    "d": "batch 1 dev (d...)",
    "n": "batch 2 (n..., written before vlit ran on it)",
    "m": "batch 3 (m..., written before vlit ran on it)",
    "k": "batch 4 (k..., written before vlit ran on it)",
    "j": "batch 5 (j..., written before vlit ran on it)",
    "g": "batch 6 (g..., written before vlit ran on it)",
    "heldout2": "heldout2.jsonl (written blind, scored on its own)",
}


def in_group(group: str, item: dict[str, str]) -> bool:
    if group == "heldout2" or item["split"] == "heldout2":
        return group == item["split"]
    if group in ("dev", "heldout"):
        return item["split"] == group
    return group == "all" or item["id"].startswith(group)


def measure(repeat: int, rounds: int, spacy_model: str | None) -> dict[str, object]:
    """Run in the subprocess: accuracy and throughput of the vlit found on sys.path."""
    sys.path.insert(0, str(TESTS))
    from grounding_corpus import (
        CHECKS,
        HELDOUT2,
        coco_records,
        corpus_samples,
        load_corpus,
        score,
    )
    from vlit.quality.grounding import AnnotationGrounding

    items = load_corpus() + load_corpus(HELDOUT2)
    options = {"spacy_model": spacy_model} if spacy_model else {}
    stage = AnnotationGrounding(records=coco_records(COCO_TINY), **options)
    stage.setup()
    results = stage(corpus_samples(items))
    figures: dict[str, dict[str, list[float]]] = {}
    for split in GROUPS:
        chosen = [i for i, item in enumerate(items) if in_group(split, item)]
        scores = score([items[i] for i in chosen], [results[i] for i in chosen])
        figures[split] = {c: [scores.precision(c), scores.recall(c)] for c in CHECKS}
    by_cause: Counter[str] = Counter()
    for (cause, _check), count in score(items, results).errors_by_cause.items():
        by_cause[cause] += count
    best = 0.0
    for _ in range(rounds):
        batch = corpus_samples(items * repeat)
        start = time.perf_counter()
        stage(batch)
        best = max(best, len(batch) / (time.perf_counter() - start))
    return {"figures": figures, "by_cause": dict(by_cause), "answers_per_s": best}


def run_tree(src: Path, args: argparse.Namespace) -> dict[str, object]:
    env = dict(os.environ, PYTHONPATH=f"{src}{os.pathsep}{TESTS}")
    command = [sys.executable, __file__, "--measure", "--repeat", str(args.repeat)]
    command += ["--rounds", str(args.rounds)]
    if args.spacy_model and src == ROOT / "src":
        command += ["--spacy-model", args.spacy_model]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-src", type=Path, default=Path("/tmp/base-13/src"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--spacy-model", default=None)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.repeat, args.rounds, args.spacy_model)))
        return
    trees = {"this tree": ROOT / "src"}
    if args.baseline_src.is_dir():
        trees = {"baseline": args.baseline_src, **trees}
    results = {name: run_tree(src, args) for name, src in trees.items()}
    corpus = [json.loads(line) for line in (TESTS / "data/grounding/corpus.jsonl").open()]
    splits = Counter(item["split"] for item in corpus)
    print(f"corpus: {len(corpus)} answers ({splits['dev']} dev, {splits['heldout']} held-out)")
    heldout2 = (TESTS / "data/grounding/heldout2.jsonl").read_text().splitlines()
    print(f"heldout2: {len(heldout2)} answers (the mistakes per cause and throughput include it)")
    for split, title in GROUPS.items():
        print(f"\n{title}: precision / recall")
        print(f"| check | {' | '.join(results)} |")
        print("|---|" + "---|" * len(results))
        checks = next(iter(results.values()))["figures"][split]  # type: ignore[index]
        for check in checks:
            cells = [
                "{:.3f} / {:.3f}".format(*result["figures"][split][check])  # type: ignore[index]
                for result in results.values()
            ]
            print(f"| {check} | {' | '.join(cells)} |")
    causes = sorted({c for r in results.values() for c in r["by_cause"]})  # type: ignore[attr-defined]
    print("\nmistakes per cause class (false positives + false negatives, all checks)")
    print(f"| cause | {' | '.join(results)} |")
    print("|---|" + "---|" * len(results))
    for cause in causes:
        cells = [str(r["by_cause"].get(cause, 0)) for r in results.values()]  # type: ignore[attr-defined]
        print(f"| {cause} | {' | '.join(cells)} |")
    print("\nthroughput (answers grounded per second, best of rounds)")
    speeds = {name: float(r["answers_per_s"]) for name, r in results.items()}  # type: ignore[arg-type]
    for name, speed in speeds.items():
        ratio = f" ({speed / speeds['baseline']:.2f}x baseline)" if "baseline" in speeds else ""
        print(f"  {name}: {speed:.0f}/s{ratio}")


if __name__ == "__main__":
    main()
