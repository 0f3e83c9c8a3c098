"""What generation costs on top of the LLM itself: planning, parsing, writing, and replay.

Three tables, each as multiples of a baseline measured in the same process:

1. parsing: `parse_conversation` over a mix of realistic outputs (clean JSON, the paper's
   repeated keys, speaker lines, cut-off JSON, real SmolLM2 outputs), against ``json.loads``
   of the same bytes (which only handles the clean ones, and loses repeated keys);
2. planning per image: clue + prompt assembly (+ drawing the region copy, + adaptation),
   against `visual_clue` alone;
3. a whole generate stage (`vlit.stages.generate.run`) over the 50 coco_tiny images against an
   in-process scripted endpoint with no latency (so the LLM costs nothing), first run versus
   rerun from the journal.

    .venv/bin/python benchmarks/bench_generate.py [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlit.clue import visual_clue
from vlit.collect import CocoCollector
from vlit.generate.generator import ConversationGenerator
from vlit.generate.parse import parse_conversation
from vlit.rundir import RunDir
from vlit.stages import generate as generate_stage
from vlit.stages.generate import GenerateSettings

ROOT = Path(__file__).resolve().parents[1]
COCO = ROOT.parent / "shared" / "data" / "coco_tiny"
sys.path.insert(0, str(ROOT / "tests"))


def timed(function: Callable[[], Any], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        function()
    return (time.perf_counter() - start) / repeat


def corpus() -> list[tuple[str, str]]:
    turns = [
        {"role": "user", "content": "How many people are on the street?"},
        {"role": "assistant", "content": "There are four people walking past the bakery."},
    ] * 3
    clean = json.dumps(turns)
    paper = "{" + ", ".join(f'"User": "q{i}?", "AI": "answer number {i}."' for i in range(4)) + "}"
    lines = "\n".join(f"User: question {i}?\nAI: answer {i}.\nMore detail." for i in range(4))
    smollm = json.loads((ROOT / "tests/data/generate_smollm2_outputs.json").read_text("utf-8"))
    real = [(o["text"], o["finish_reason"]) for o in smollm["outputs"]]
    return [(clean, "stop"), (paper, "stop"), (lines, "stop"), (clean[:-40], "length"), *real]


def bench_parsing(repeat: int) -> None:
    texts = corpus()

    def baseline() -> None:
        for text, _ in texts:
            try:
                json.loads(text)
            except json.JSONDecodeError:
                pass

    def parse_all() -> None:
        for text, finish in texts:
            parse_conversation(text, finish_reason=finish)

    base = timed(baseline, repeat)
    ours = timed(parse_all, repeat)
    per = ours / len(texts) * 1e6
    print(f"\nparsing ({len(texts)} outputs, {repeat} repeats)")
    print(f"{'method':<28}{'per output':>14}{'x json.loads':>14}")
    print(f"{'json.loads (baseline)':<28}{base / len(texts) * 1e6:>11.1f} us{1.0:>14.1f}")
    print(f"{'parse_conversation':<28}{per:>11.1f} us{ours / base:>14.1f}")


def bench_planning(records: list[Any], work: Path) -> None:
    print(f"\nplanning per image ({len(records)} coco_tiny images)")
    print(f"{'what':<40}{'per image':>12}{'x clue':>10}")
    base = timed(lambda: [visual_clue(r) for r in records], 5) / len(records)
    print(f"{'visual_clue (baseline)':<40}{base * 1e3:>9.2f} ms{1.0:>10.1f}")
    for label, modes in (
        ("conversation (prompt + 2 examples)", {"conversation": 1.0}),
        ("negative (+ absent objects)", {"negative": 1.0}),
        ("region (+ drawing the boxed copy)", {"region": 1.0}),
        ("adaptation (8 tasks, no LLM)", {"adaptation": 1.0}),
    ):
        images = work / label.split()[0]
        generator = ConversationGenerator(
            settings=GenerateSettings(modes=modes).generation(),
            images_dir=images,
            generator_info={},
        )
        per = timed(lambda g=generator: [g.plan(r) for r in records], 1) / len(records)
        print(f"{label:<40}{per * 1e3:>9.2f} ms{per / base:>10.1f}")


def bench_run(records: list[Any], work: Path) -> None:
    from llm_servers import Response, ScriptedServer

    text = json.dumps(
        [{"role": "user", "content": "What?"}, {"role": "assistant", "content": "A bus."}] * 2
    )
    server = ScriptedServer()
    server.add_rule(lambda body: Response.text(*[text] * int(body.get("n") or 1)))
    server.start()
    try:
        run = RunDir(work / "run")
        run.write_records(records)
        settings = GenerateSettings(modes=["conversation", "negative"], n=5, concurrency=8)
        backend = server.backend()
        start = time.perf_counter()
        first = generate_stage.run(run, settings, backend=backend).to_json()
        first_s = time.perf_counter() - start
        start = time.perf_counter()
        again = generate_stage.run(run, settings, backend=backend).to_json()
        again_s = time.perf_counter() - start
    finally:
        server.stop()
    print(f"\nthe generate stage, {first['samples']} samples from {first['requests']} requests")
    print(f"{'run':<34}{'seconds':>10}{'samples/s':>12}{'x first':>10}")
    for label, seconds, summary in (
        ("first (zero-latency endpoint)", first_s, first),
        ("rerun (all from the journal)", again_s, again),
    ):
        rate = summary["samples"] / seconds
        print(f"{label:<34}{seconds:>10.2f}{rate:>12.0f}{seconds / first_s:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    options = parser.parse_args()
    records = (
        CocoCollector(
            images_dir=COCO / "train2017",
            captions=COCO / "annotations" / "captions_train2017.json",
            instances=COCO / "annotations" / "instances_train2017.json",
        )
        .collect()
        .records
    )
    bench_parsing(options.repeat)
    with tempfile.TemporaryDirectory() as folder:
        bench_planning(records, Path(folder))
        bench_run(records, Path(folder))


if __name__ == "__main__":
    main()
