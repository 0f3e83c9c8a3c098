"""How much collection costs on top of merely parsing the COCO JSON files.

The real coco_tiny annotations are replicated ``--scale`` times (new image and annotation ids,
same image files) into a temporary folder. The baseline is ``json.load`` of the two files, which
any COCO tool pays; the table shows ``CocoCollector`` with and without checking image headers as
a multiple of it, and the image clue time per record.

    .venv/bin/python benchmarks/bench_collect.py --scale 40
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from vlit.clue import visual_clue
from vlit.collect import CocoCollector

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "coco_tiny"


def replicate(source: Path, target: Path, scale: int) -> tuple[Path, Path]:
    captions = json.loads((source / "captions_train2017.json").read_text())
    instances = json.loads((source / "instances_train2017.json").read_text())
    out = {}
    for name, data in (("captions", captions), ("instances", instances)):
        images, annotations = [], []
        for copy in range(scale):
            offset = copy * 10_000_000
            images += [{**image, "id": image["id"] + offset} for image in data["images"]]
            annotations += [
                {**a, "id": a["id"] + offset, "image_id": a["image_id"] + offset}
                for a in data["annotations"]
            ]
        path = target / f"{name}.json"
        path.write_text(json.dumps({**data, "images": images, "annotations": annotations}))
        out[name] = path
    return out["captions"], out["instances"]


def best_of(runs: int, work) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scale", type=int, default=40, help="copies of coco_tiny")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        captions, instances = replicate(SHARED / "annotations", Path(folder), args.scale)

        def parse_only() -> None:
            json.loads(captions.read_bytes())
            json.loads(instances.read_bytes())

        def collector(check: bool) -> CocoCollector:
            return CocoCollector(
                images_dir=SHARED / "train2017",
                captions=captions,
                instances=instances,
                check_images=check,
            )

        baseline = best_of(args.runs, parse_only)
        joined = best_of(args.runs, lambda: collector(False).collect())
        checked = best_of(args.runs, lambda: collector(True).collect())
        records = collector(False).collect().records
        clue = best_of(args.runs, lambda: [visual_clue(r) for r in records])

    images = 50 * args.scale
    print(f"coco_tiny x {args.scale}: {images} images, {250 * args.scale} captions, "
          f"{470 * args.scale} objects; best of {args.runs}")  # fmt: skip
    print(f"{'step':<42}{'seconds':>10}{'x baseline':>12}{'images/s':>12}")
    rows = [
        ("json.load of both files (baseline)", baseline),
        ("collect, no image check", joined),
        ("collect, image headers checked", checked),
        ("visual_clue for every record", clue),
    ]
    for name, seconds in rows:
        print(f"{name:<42}{seconds:>10.3f}{seconds / baseline:>12.2f}{images / seconds:>12.0f}")


if __name__ == "__main__":
    main()
