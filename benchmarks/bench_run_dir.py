"""Import -> score -> filter -> export over a run directory at growing sizes: time and peak
memory.

Builds a LLaVA file of N varied conversations about the 50 real COCO images in
``../shared/data/coco_tiny`` (questions and answers recombined from the COCO captions, the VQA v2
questions and the LLaVA slice's captions, so no two samples are the same text by construction)
and a run holding those images' records (for grounding), then runs the stages one after
the other in ONE Python process (as `vlit.cli.main` would run each command) and reports each
stage's wall time, CPU seconds (user+sys of the process and of any children it waited for,
from ``getrusage``; steadier than wall time on a shared machine) and peak RSS (the kernel's
high-water mark, reset before each stage through ``/proc/self/clear_refs``, so Linux only);
the last column of a row is the process's peak so
far. With ``--compare SRC`` the same pipeline also runs on another checkout's ``src`` (for
example the commit before a change), alternating, so both come from the same session;
``--repeat`` alternates several times. ``--score-args`` adds flags to the score command (for
example ``--no-grounding`` to time lint-only scoring); ``--report EMBEDDER`` adds the report
(without an LLM) as a fifth stage.

    .venv/bin/python benchmarks/bench_run_dir.py --sizes 10000 40000
    .venv/bin/python benchmarks/bench_run_dir.py --sizes 20000 --compare /tmp/old/src --repeat 2
    .venv/bin/python benchmarks/bench_run_dir.py --sizes 10000 --score-args=--no-grounding
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
IMAGES = DATA / "coco_tiny" / "train2017"
STAGES = {
    "import": ["import", "FILE", "--out", "RUN", "--format", "llava", "--images", "IMAGES"],
    "score": ["score", "RUN", "--json"],
    "filter": ["filter", "RUN", "--drop-lint", "duplicate_exact,empty_turn", "--json"],
    "export": ["export", "RUN", "--format", "llava", "--out", "RUN/export.json", "--json"],
}

_BUILD = """
import dataclasses, json, random, sys
from pathlib import Path
from vlit.collect import CocoCollector
from vlit.rundir import RunDir

root, size, data, dataset = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
coco = data / "coco_tiny"
records = CocoCollector(
    images_dir=str(coco / "train2017"),
    captions=str(coco / "annotations" / "captions_train2017.json"),
    instances=str(coco / "annotations" / "instances_train2017.json"),
).collect().records
# LLaVA names images by file, so the records take the file stems as their ids
records = [dataclasses.replace(r, image_id=Path(r.file_name).stem) for r in records]
captions = [a["caption"].strip() for a in json.loads(
    (coco / "annotations" / "captions_train2017.json").read_text())["annotations"]]
for item in json.loads((data / "formats/llava/llava_pretrain_slice_2k.json").read_text()):
    captions.append(item["conversations"][1]["value"].strip())
questions = [q["question"] for q in json.loads(
    next((data / "formats/vqa_v2").glob("*questions*.json")).read_text())["questions"]]
rng = random.Random(0)

RunDir(root).write_records(records)
with open(dataset, "w") as handle:
    handle.write("[")
    for index in range(size):
        record = records[index % len(records)]
        turns = []
        for turn in range(rng.randint(1, 3)):
            question = ("<image>\\n" if turn == 0 else "") + rng.choice(questions)
            turns.append({"from": "human", "value": question})
            turns.append({"from": "gpt", "value": " ".join(rng.sample(captions, 2))})
        item = {"id": f"s{index}", "image": record.file_name, "conversations": turns}
        handle.write(("," if index else "") + json.dumps(item))
    handle.write("]")
"""


_PIPELINE = """
import json, resource, sys, time
from vlit.cli import main

def cpu_seconds():
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime

def high_water_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024

stages, out = json.loads(sys.argv[1]), sys.argv[2]
rows, peak = [], 0.0
for stage, argv in stages:
    with open("/proc/self/clear_refs", "w") as reset:
        reset.write("5")  # the high-water mark starts again from the current RSS
    started, cpu_started = time.perf_counter(), cpu_seconds()
    main(argv)
    seconds, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    stage_peak = high_water_mb()
    peak = max(peak, stage_peak)
    rows.append([stage, seconds, cpu, stage_peak, peak])
with open(out, "w") as handle:
    json.dump(rows, handle)
"""


def run_pipeline(
    run: Path, env: dict[str, str], stages: dict[str, list[str]], score_args: list[str]
) -> list[tuple[str, float, float, float, float]]:
    """(stage, seconds, CPU seconds, peak RSS MB of the stage, of the process so far) per
    stage, all run in one process."""
    places = {"RUN": str(run), "FILE": str(run) + ".json", "IMAGES": str(IMAGES)}
    commands = [
        (
            stage,
            [places.get(a, a.replace("RUN", str(run))) for a in argv]
            + (score_args if stage == "score" else []),
        )
        for stage, argv in stages.items()
    ]
    out = f"{run}.times.json"
    command = [sys.executable, "-c", _PIPELINE, json.dumps(commands), out]
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0:
        raise SystemExit(f"pipeline on {run} failed: {done.stderr.decode()[-2000:]}")
    return [tuple(row) for row in json.loads(Path(out).read_text())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000])
    parser.add_argument("--compare", type=Path, help="another checkout's src folder")
    parser.add_argument("--repeat", type=int, default=1, help="alternations per size")
    parser.add_argument(
        "--score-args",
        default="",
        help="extra flags for the score command, one string (e.g. --score-args=--no-grounding)",
    )
    parser.add_argument(
        "--report",
        metavar="EMBEDDER",
        help="also run `vlit report RUN --embedder EMBEDDER` after the export (e.g. wordllama)",
    )
    args = parser.parse_args()
    stages = dict(STAGES)
    if args.report:
        stages["report"] = ["report", "RUN", "--embedder", args.report, "--json"]
    versions = {"this": str(REPO / "src")}
    if args.compare is not None:
        versions["compare"] = str(args.compare.resolve())
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            for repeat in range(args.repeat):
                for name, src in versions.items():
                    env = {**os.environ, "PYTHONPATH": src, "HF_HUB_OFFLINE": "1"}
                    run = Path(scratch) / f"{name}-{size}-{repeat}"
                    dataset = f"{run}.json"
                    build = [sys.executable, "-c", _BUILD, str(run), str(size), str(DATA), dataset]
                    subprocess.run(build, env=env, check=True)
                    times = run_pipeline(run, env, stages, args.score_args.split())
                    for stage, seconds, cpu, peak, process_peak in times:
                        row = (name, size, stage, seconds, cpu, size / seconds, peak, process_peak)
                        rows.append(row)
                        print(*row, sep="\t", file=sys.stderr, flush=True)
    print(
        f"{'code':<8} {'samples':>8} {'stage':<7} {'seconds':>8} {'CPU s':>7} {'samples/s':>10} "
        f"{'peak MB':>8} {'so far':>7}"
    )
    for name, size, stage, seconds, cpu, rate, peak, so_far in rows:
        print(
            f"{name:<8} {size:>8} {stage:<7} {seconds:>8.1f} {cpu:>7.2f} {rate:>10.0f} "
            f"{peak:>8.0f} {so_far:>7.0f}"
        )
    print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
