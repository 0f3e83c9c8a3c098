"""Structured output on the demo: how many generations parse, and what an accepted sample costs.

The demo's images and generation settings (whole-image and region conversations, n=2, one
in-context example, ``max_tokens`` 128) with the embedded SmolLM2-135M, generated twice in one
process, side by side: ``--structured off`` (the prompt alone asks for the JSON) and the
setting under test (default ``auto``: the llguidance token mask of the conversation schema).
Both runs use the same model, loaded once, with torch on one thread.

Columns: LLM generations, the share that parse, the share exactly in the schema, completion
tokens per accepted sample and seconds per accepted sample (all generation work: prompt, decode
and mask), and the ratio of the latter two to ``off``.

    .venv/bin/python benchmarks/bench_structured_output.py [--settings off,auto] [--n 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from vlit.demo import demo_recipe
from vlit.llm.local import LocalTransformersBackend
from vlit.rundir import RunDir
from vlit.stages import collect as collect_stage
from vlit.stages import generate as generate_stage


def measure(
    setting: str, folder: Path, backend: LocalTransformersBackend, n: int
) -> dict[str, Any]:
    recipe = demo_recipe(folder)
    run = RunDir(folder)
    assert recipe.collect is not None
    collect_stage.run(run, recipe.collect)
    settings = recipe.generate.model_copy(update={"structured": setting, "n": n, "concurrency": 1})
    started = time.perf_counter()
    summary = generate_stage.run(run, settings, backend=backend).to_json()
    seconds = time.perf_counter() - started
    accepted = summary["llm_generations_parsed"]
    return {
        "setting": setting,
        "generations": summary["llm_generations"],
        "parsed": accepted,
        "schema_valid": summary["samples_schema_valid"],
        "tokens_out": summary["tokens_out"],
        "seconds": seconds,
        "tokens_per_accepted": summary["tokens_out"] / accepted if accepted else float("inf"),
        "seconds_per_accepted": seconds / accepted if accepted else float("inf"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settings", default="off,auto", help="comma-separated; first = base")
    parser.add_argument("--n", type=int, default=2, help="generations per request (demo: 2)")
    args = parser.parse_args()
    backend = LocalTransformersBackend(torch_threads=1)
    backend.load()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for setting in args.settings.split(","):
            rows.append(measure(setting, Path(scratch) / setting, backend, args.n))
    base = rows[0]
    header = (
        f"{'structured':<12}{'generations':>12}{'parse rate':>12}{'in schema':>11}"
        f"{'tokens/acc':>12}{'s/acc':>9}{'tokens x':>10}{'s x':>7}{'total s':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        total = max(row["generations"], 1)
        print(
            f"{row['setting']:<12}{row['generations']:>12}{row['parsed'] / total:>12.0%}"
            f"{row['schema_valid'] / total:>11.0%}{row['tokens_per_accepted']:>12.1f}"
            f"{row['seconds_per_accepted']:>9.2f}"
            f"{row['tokens_per_accepted'] / base['tokens_per_accepted']:>10.2f}"
            f"{row['seconds_per_accepted'] / base['seconds_per_accepted']:>7.2f}"
            f"{row['seconds']:>9.1f}"
        )


if __name__ == "__main__":
    main()
