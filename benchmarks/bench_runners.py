"""Samples/s of the per-sample pipeline without an LLM on the local runner vs the Ray runner.

    .venv/bin/python benchmarks/bench_runners.py                 # 2000 samples
    .venv/bin/python benchmarks/bench_runners.py --samples 200   # CI size, under 2 minutes
    .venv/bin/python benchmarks/bench_runners.py --declared-concurrency   # one more Ray row

The pipeline is lint (``SampleLinter``) then grounding against the COCO annotations
(``AnnotationGrounding``, spaCy). The input is real: ../shared/data/coco_tiny collected with
``CocoCollector``, conversations made by annotation adaptation (no LLM), repeated up to
``--samples`` with distinct sample ids. The local runner runs in this process; every Ray
configuration runs in its own subprocess (Ray can be initialised once per process) with
``ray.init(num_cpus=N)`` and ``parallelism=N``. Each Ray output is compared with the local
runner's, row by row.

What is timed, per runner: the start-up (``init_ray``, Ray only); a first run on
``SMALL_RUN`` samples (cold: worker processes, imports); a second small run and the full run.
Every run builds fresh stages, so it loads spaCy again (Ray: once per actor). "run s" and
"samples/s" are the full run, fixed costs included; "steady/s" is the marginal rate
(N - SMALL_RUN) / (full - small), which cancels the per-run fixed cost (actor start, spaCy
load) and shows the throughput once everything is up.

The grounding stage declares ``Resources(concurrency=1)``: one actor, whatever the CPU count.
The scaling rows therefore set its concurrency to the worker count; ``--declared-concurrency``
adds a row that keeps the stage as declared, to show what a user gets by default.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vlit.collect import CocoCollector
from vlit.quality.grounding import AnnotationGrounding, load_spacy
from vlit.quality.lint import SampleLinter
from vlit.rundir import RunDir
from vlit.runners.base import Step
from vlit.runners.local import run_stages
from vlit.schema import Sample
from vlit.stages import generate as generate_stage
from vlit.stages.generate import GenerateSettings

SMALL_RUN = 32
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny"


@dataclasses.dataclass(frozen=True)
class RayConfig:
    label: str
    cpus: int
    grounding_concurrency: int | None  # None: the stage's declared Resources


RAY_CONFIGS = (
    RayConfig("ray, 1 CPU", 1, 1),
    RayConfig("ray, 2 CPUs", 2, 2),
    RayConfig("ray, 2 CPUs, declared concurrency", 2, None),
)


def build_run(root: Path, data: Path, samples: int) -> tuple[RunDir, int]:
    """Collect coco_tiny, adapt its annotations into samples and repeat them to ``samples``."""
    run = RunDir(root)
    result = CocoCollector(
        images_dir=data / "train2017",
        captions=data / "annotations" / "captions_train2017.json",
        instances=data / "annotations" / "instances_train2017.json",
    ).collect()
    run.write_records(result.records)
    generate_stage.run(run, GenerateSettings(modes=["adaptation"]))
    base = list(run.read_samples("samples"))
    if not base:
        raise SystemExit(f"no samples were generated from {data}")
    repeated = []
    for index in range(samples):
        sample = dataclasses.replace(base[index % len(base)])
        copy_number = index // len(base)
        if copy_number:
            sample.sample_id = f"{sample.sample_id}#{copy_number}"
        repeated.append(sample)
    run.write_samples("bench", repeated)
    return run, len(base)


def make_stages(run: RunDir, grounding_concurrency: int | None) -> list[Step]:
    records = {record.image_id: record for record in run.read_records()}
    grounding = AnnotationGrounding(records=records)
    if grounding_concurrency is not None:
        grounding.resources = dataclasses.replace(
            grounding.resources, concurrency=grounding_concurrency
        )
    return [SampleLinter(), grounding]


def ray_worker(run_root: Path, cpus: int, concurrency: int | None, output: Path) -> None:
    """Subprocess body: time ray.init and the runs; write rows and timings to ``output``."""
    from vlit.runners.ray_runner import init_ray, run_stages_ray

    run = RunDir(run_root)
    samples = list(run.read_samples("bench"))
    started = time.perf_counter()
    ray = init_ray(num_cpus=cpus)
    init_seconds = time.perf_counter() - started

    def timed(count: int) -> tuple[float, list[Sample]]:
        # Fresh stages and fresh samples each time: a run starts its own actors (spaCy load).
        batch = [Sample.from_row(sample.to_row()) for sample in samples[:count]]
        started = time.perf_counter()
        scored = run_stages_ray(make_stages(run, concurrency), batch, parallelism=cpus)
        return time.perf_counter() - started, scored

    first_seconds, _ = timed(SMALL_RUN)
    small_seconds, _ = timed(SMALL_RUN)
    run_seconds, scored = timed(len(samples))
    ray.shutdown()
    result = {
        "init": init_seconds,
        "first": first_seconds,
        "small": small_seconds,
        "run": run_seconds,
        "rows": [sample.to_row() for sample in scored],
    }
    output.write_bytes(pickle.dumps(result))


def run_ray_config(run_root: Path, config: RayConfig, scratch: Path) -> dict[str, Any]:
    output = scratch / f"ray_{config.cpus}_{config.grounding_concurrency}.pickle"
    command = [sys.executable, __file__, "--ray-worker", str(config.cpus)]
    command += ["--run", str(run_root), "--output", str(output)]
    if config.grounding_concurrency is not None:
        command += ["--grounding-concurrency", str(config.grounding_concurrency)]
    started = time.perf_counter()
    # Ray's own logging is kept out of the table; it is shown if the subprocess fails.
    finished = subprocess.run(command, capture_output=True, text=True)
    if finished.returncode != 0:
        sys.stderr.write(finished.stdout + finished.stderr)
        raise SystemExit(f"{config.label} failed with exit code {finished.returncode}")
    result: dict[str, Any] = pickle.loads(output.read_bytes())
    result["process"] = time.perf_counter() - started
    return result


def run_local(run: RunDir, samples: list[Sample]) -> dict[str, Any]:
    """The same three runs as a Ray worker, in this process."""

    def timed(count: int) -> tuple[float, list[Sample]]:
        batch = [Sample.from_row(sample.to_row()) for sample in samples[:count]]
        started = time.perf_counter()
        scored = list(run_stages(make_stages(run, None), batch))
        return time.perf_counter() - started, scored

    first_seconds, _ = timed(SMALL_RUN)
    small_seconds, _ = timed(SMALL_RUN)
    run_seconds, scored = timed(len(samples))
    return {
        "first": first_seconds,
        "small": small_seconds,
        "run": run_seconds,
        "rows": [sample.to_row() for sample in scored],
    }


def steady_rate(result: dict[str, Any], samples: int) -> float:
    extra = result["run"] - result["small"]
    return (samples - SMALL_RUN) / extra if samples > SMALL_RUN and extra > 0 else float("nan")


def load_text() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} (1/5/15 min; {os.cpu_count()} CPUs)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="samples to score")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="coco_tiny folder")
    parser.add_argument(
        "--declared-concurrency",
        action="store_true",
        help="also run Ray on 2 CPUs with the grounding stage's declared concurrency (1)",
    )
    parser.add_argument("--ray-worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--grounding-concurrency", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ray_worker is not None:
        ray_worker(args.run, args.ray_worker, args.grounding_concurrency, args.output)
        return

    print(f"load average before: {load_text()}")
    with tempfile.TemporaryDirectory(prefix="bench_runners_") as scratch_name:
        scratch = Path(scratch_name)
        started = time.perf_counter()
        run, distinct = build_run(scratch / "run", args.data, args.samples)
        print(
            f"input: {args.samples} samples ({distinct} distinct, adapted from {args.data}), "
            f"built in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        load_spacy()
        print(
            f"spaCy import + load, cold (every run loads it again, per process or actor): "
            f"{time.perf_counter() - started:.2f} s"
        )
        local = run_local(run, list(run.read_samples("bench")))
        rows = local["rows"]
        flagged = sum(1 for row in rows if dict(row["scores"]).get("lint_flags"))
        grounded = sum(1 for row in rows if any(k.startswith("ground_") for k, _ in row["scores"]))
        print(f"local output: {grounded} samples grounded, {flagged} with lint flags")
        configs = [c for c in RAY_CONFIGS if c.grounding_concurrency or args.declared_concurrency]
        results = [(config, run_ray_config(run.root, config, scratch)) for config in configs]

    header = (
        f"{'runner':<34}{'ray.init s':>11}{'1st small s':>12}{'small s':>9}{'run s':>8}"
        f"{'samples/s':>10}{'vs local':>9}{'steady/s':>9}{'vs local':>9}  identical"
    )
    print(f"\n{header}\n{'-' * len(header)}")
    local_rate = args.samples / local["run"]
    local_steady = steady_rate(local, args.samples)
    rates: dict[str, tuple[float, float]] = {}
    for label, result in [("local", local)] + [(c.label, r) for c, r in results]:
        rate = args.samples / result["run"]
        steady = steady_rate(result, args.samples)
        rates[label] = (rate, steady)
        init = f"{result['init']:.2f}" if "init" in result else "-"
        identical = "-" if label == "local" else ("yes" if result["rows"] == rows else "no")
        print(
            f"{label:<34}{init:>11}{result['first']:>12.2f}{result['small']:>9.2f}"
            f"{result['run']:>8.2f}{rate:>10.1f}{rate / local_rate:>9.2f}{steady:>9.1f}"
            f"{steady / local_steady:>9.2f}  {identical}"
        )
    if "ray, 1 CPU" in rates and "ray, 2 CPUs" in rates:
        (one, one_steady), (two, two_steady) = rates["ray, 1 CPU"], rates["ray, 2 CPUs"]
        print(
            f"\nRay 1 -> 2 workers: x{two / one:.2f} samples/s (full run), "
            f"x{two_steady / one_steady:.2f} steady"
        )
    print(f"load average after: {load_text()}")


if __name__ == "__main__":
    main()
