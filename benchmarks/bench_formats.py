"""What importing and exporting LLaVA data costs, next to merely parsing the JSON file.

The real LLaVA slice (2,183 records) is replicated to ``--records`` records with new ids; the
records point at the 50 real coco_tiny photos, copied into a temporary image folder, so image
checks touch real files. The baseline is ``json.loads`` of the file, which any tool pays; each
row is a multiple of it and a cost per record.

    .venv/bin/python benchmarks/bench_formats.py --records 150000
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from vlit.formats import DatasetImporter, ImportContext
from vlit.formats.llava import LlavaReader, LlavaWriter
from vlit.rundir import RunDir

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def build(folder: Path, records: int) -> tuple[Path, Path]:
    photos = sorted((SHARED / "coco_tiny" / "train2017").glob("*.jpg"))
    images = folder / "images"
    images.mkdir()
    for photo in photos:
        shutil.copy(photo, images / photo.name)
    source = json.loads((SHARED / "formats" / "llava" / "llava_pretrain_slice_2k.json").read_text())
    data = []
    for index in range(records):
        record = source[index % len(source)]
        data.append({**record, "id": f"{index:09d}", "image": photos[index % len(photos)].name})
    path = folder / "llava.json"
    path.write_text(json.dumps(data, indent=4))
    return path, images


def best_of(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        path, images = build(folder, args.records)
        megabytes = path.stat().st_size / 1e6
        context = ImportContext(images=images, workdir=folder / "work")
        samples = list(LlavaReader().read(path, context))

        def imported(verify: bool) -> list[object]:
            importer = DatasetImporter(
                reader=LlavaReader(), images=images, workdir=folder / "work", verify_images=verify
            )
            return list(importer.samples(path))

        def into_run() -> None:
            importer = DatasetImporter(reader=LlavaReader(), images=images, workdir=folder / "w")
            RunDir(folder / "run").write_samples("samples", importer.samples(path))

        def read() -> list[object]:
            return list(LlavaReader().read(path, context))

        def export() -> None:
            LlavaWriter().write(samples, folder / "out.json")

        rows = [
            ("json.loads (baseline)", best_of(args.runs, lambda: json.loads(path.read_bytes()))),
            ("read (LlavaReader)", best_of(args.runs, read)),
            ("import: read + image existence", best_of(args.runs, lambda: imported(False))),
            ("import + write run dir (Parquet)", best_of(args.runs, into_run)),
            ("import --verify-images", best_of(1, lambda: imported(True))),
            ("export (LlavaWriter)", best_of(args.runs, export)),
        ]
    baseline = rows[0][1]
    print(f"{args.records} LLaVA records, {megabytes:.0f} MB of JSON, 50 real images")
    print(f"{'step':<36} {'seconds':>9} {'x baseline':>11} {'us/record':>10}")
    for step, seconds in rows:
        per_record = seconds / args.records * 1e6
        print(f"{step:<36} {seconds:>9.3f} {seconds / baseline:>11.1f} {per_record:>10.1f}")


if __name__ == "__main__":
    main()
