"""The Ray driver's peak memory for `score` (lint) and the report, at growing run sizes.

Builds, for each size, the run of ``bench_run_dir.py`` (N varied LLaVA conversations about the
50 real COCO images, imported), then in a fresh process each: `vlit.stages.score.run` on a
local Ray cluster (lint only: grounding at 400K takes hours on 2 cores) and `report_run` with
WordLlama on Ray and on the local runner. Prints each one's wall time and the driver's peak RSS
(``VmHWM``, reset before the work through ``/proc/self/clear_refs``, so Linux only), and the
ratio of the peaks between the largest and the smallest size (issue bound: 1.2 at 400K / 100K).

    .venv/bin/python benchmarks/bench_ray_driver.py --sizes 100000 400000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_run_dir import _BUILD, DATA, IMAGES

_MEASURE = """
import json, sys, time
from vlit.quality.indicators.embeddings import StaticEmbedder
from vlit.report.build import report_run
from vlit.rundir import RunDir
from vlit.runners.base import RunnerSettings, build_runner
from vlit.stages.score import ScoreSettings, run

path, work, kind = sys.argv[1:4]
runner = build_runner(RunnerSettings(kind=kind))
with open("/proc/self/clear_refs", "w") as reset:
    reset.write("5")  # the high-water mark starts again from the current RSS
started = time.perf_counter()
if work == "score":
    run(RunDir(path), ScoreSettings(grounding=False), runner)
else:
    report_run(path, embedder=StaticEmbedder(), runner=runner)
peak = next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps([time.perf_counter() - started, peak]))
"""
JOBS = (("score", "ray"), ("report", "ray"), ("report", "local"))


def measure(run: Path, work: str, kind: str) -> tuple[float, float]:
    """(seconds, driver peak RSS MB) of ``work`` on ``kind`` in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(run), work, kind],
        capture_output=True,
        text=True,
        check=True,
    )
    seconds, peak = json.loads(done.stdout.strip().splitlines()[-1])
    return seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    args = parser.parse_args()
    peaks: dict[tuple[str, str], list[float]] = {job: [] for job in JOBS}
    print(f"{'samples':>8} {'work':<7} {'runner':<6} {'seconds':>8} {'driver peak MB':>15}")
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            run = Path(folder) / f"run{size}"
            dataset = f"{run}.json"
            subprocess.run(
                [sys.executable, "-c", _BUILD, str(run), str(size), str(DATA), dataset], check=True
            )
            subprocess.run(
                [sys.executable, "-m", "vlit", "import", dataset, "--out", str(run)]
                + ["--format", "llava", "--images", str(IMAGES), "--json"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            for work, kind in JOBS:
                seconds, peak = measure(run, work, kind)
                peaks[(work, kind)].append(peak)
                print(f"{size:>8} {work:<7} {kind:<6} {seconds:>8.1f} {peak:>15.0f}", flush=True)
    for (work, kind), values in peaks.items():
        print(
            f"{work} on {kind}: peak at {args.sizes[-1]} / at {args.sizes[0]} = "
            f"{values[-1] / values[0]:.2f}"
        )


if __name__ == "__main__":
    main()
