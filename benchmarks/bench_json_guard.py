"""What the hostile-input guards of `vlit.jsonio.loads_json` (BOM, strict UTF-8, nesting depth
checked before parsing, lone surrogates) cost next to a bare ``json.loads``.

Three documents of the shapes vlit reads, built from the real data: the LLaVA slice (2,183
records, replicated with new ids), coco_tiny's captions and its instances (boxes and polygons:
the most brackets per byte), each replicated to about ``--megabytes`` MB. Each row: the best
of ``--repeat`` runs, and the ratio to ``json.loads`` of the same bytes in the same session.

    .venv/bin/python benchmarks/bench_json_guard.py --megabytes 20
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vlit.jsonio import loads_json

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def documents(megabytes: float) -> dict[str, bytes]:
    llava = json.loads((SHARED / "formats" / "llava" / "llava_pretrain_slice_2k.json").read_text())
    captions = json.loads((SHARED / "coco_tiny/annotations/captions_train2017.json").read_text())
    instances = json.loads((SHARED / "coco_tiny/annotations/instances_train2017.json").read_text())
    shapes: dict[str, tuple[Any, str | None]] = {
        "LLaVA records": (llava, None),
        "COCO captions": (captions, "annotations"),
        "COCO instances": (instances, "annotations"),
    }
    built = {}
    for name, (document, key) in shapes.items():
        items = document if key is None else document[key]
        size = len(json.dumps(items))
        copies = max(1, round(megabytes * 1e6 / size))
        grown = items * copies
        built[name] = json.dumps(grown if key is None else {**document, key: grown}).encode()
    return built


def best_of(repeat: int, run: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=20.0)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print("| document | MB | json.loads | loads_json | ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, raw in documents(args.megabytes).items():
        bare = best_of(args.repeat, lambda raw=raw: json.loads(raw))
        guarded = best_of(args.repeat, lambda raw=raw: loads_json(raw, file="bench", what="bench"))
        print(
            f"| {name} | {len(raw) / 1e6:.1f} | {bare:.3f} s | {guarded:.3f} s | "
            f"{guarded / bare:.2f} |"
        )


if __name__ == "__main__":
    main()
