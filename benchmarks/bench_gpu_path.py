"""Matching degree from JPEG files at real model shapes: the GPU path against the bare model.

Random weights of the real shapes (``save_random_clip``: ViT-B/32, ViT-L/14), real 640x480 JPEG
files (COCO photos from ../shared/data/coco_tiny, cropped to 640x480, each file distinct). Rows:

- ``bare image tower, sdpa|eager``: ``get_image_features`` on ready pixel batches (no decoding),
  bf16 on a GPU, fp32 on a CPU: the ceiling every other row is divided by;
- ``decode+resize, CPU workers``: ``preprocess_file`` (PIL, reduced-size JPEG decoding) in
  ``--workers`` processes, images/s;
- ``decode+resize, device``: ``DeviceImages`` (nvjpeg on a GPU when torchvision can; PIL in this
  process otherwise), images/s;
- ``vlit MD end to end, decode=...``: ``ClipMatchingScorer`` on one-turn conversations, every
  sample its own image, no image cache: files in, scores out, samples/s.

Every figure is printed with its ratio to the bare image tower (sdpa) measured in the same run.
On a machine without CUDA it runs on the CPU (small sizes, for a check that it works).

Usage:
    python benchmarks/bench_gpu_path.py                         # on an H100: both shapes
    python benchmarks/bench_gpu_path.py --shapes vit-b-32 --images 128 --workers 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from PIL import Image

from vlit.quality.device_images import DeviceImages, nvjpeg_decoder, nvjpeg_unavailable_reason
from vlit.quality.image_preprocess import PreprocessSpec, preprocess_file
from vlit.quality.matching import ClipMatchingScorer
from vlit.schema import Sample, Turn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test builders
COCO_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "train2017"
CLIP_SPEC = PreprocessSpec(resize_shortest_edge=224, crop=(224, 224))


def write_jpegs(folder: Path, count: int) -> list[str]:
    """``count`` distinct 640x480 JPEGs: COCO photos, shifted crops of a 2x enlargement."""
    folder.mkdir(parents=True, exist_ok=True)
    photos = [
        Image.open(path).convert("RGB").resize((1280, 960))
        for path in sorted(COCO_IMAGES.glob("*.jpg"))
    ]
    paths = []
    for index in range(count):
        photo = photos[index % len(photos)]
        shift = (index // len(photos)) % 640
        path = folder / f"{index:06d}.jpg"
        photo.crop((shift, shift * 480 // 640, shift + 640, shift * 480 // 640 + 480)).save(
            path, quality=90
        )
        paths.append(str(path))
    return paths


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_bare_tower(
    checkpoint: Path,
    device: torch.device,
    dtype: torch.dtype,
    attention: str,
    count: int,
    batch: int,
) -> float:
    """Images/s of the image tower alone on ready pixels."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(checkpoint, attn_implementation=attention)
    model = model.to(device=device, dtype=dtype).eval()
    pixels = torch.randn(batch, 3, 224, 224, device=device, dtype=dtype)
    steps = max(1, count // batch)
    with torch.inference_mode():
        model.get_image_features(pixel_values=pixels)  # warm-up (kernels, allocator)
        synchronise(device)
        start = time.perf_counter()
        for _ in range(steps):
            model.get_image_features(pixel_values=pixels)
        synchronise(device)
    del model
    return steps * batch / (time.perf_counter() - start)


def bench_cpu_decode(paths: list[str], workers: int) -> float:
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        list(pool.map(preprocess_file, paths[:workers], [CLIP_SPEC] * workers))  # start them
        start = time.perf_counter()
        list(pool.map(preprocess_file, paths, [CLIP_SPEC] * len(paths), chunksize=16))
        return len(paths) / (time.perf_counter() - start)


def bench_device_decode(paths: list[str], device: torch.device, batch: int) -> tuple[float, str]:
    usable = nvjpeg_unavailable_reason(str(device)) is None
    images = DeviceImages(
        CLIP_SPEC, device=str(device), jpeg_decoder=nvjpeg_decoder(str(device)) if usable else None
    )
    files = images.read(paths)  # reading is timed in the end-to-end rows
    images.prepare(files[:batch])  # warm-up
    synchronise(device)
    start = time.perf_counter()
    for offset in range(0, len(files), batch):
        images.prepare(files[offset : offset + batch])
    synchronise(device)
    seconds = time.perf_counter() - start
    images.close()
    return len(paths) / seconds, "nvjpeg" if usable else "PIL in this process"


def bench_scorer(
    checkpoint: Path, paths: list[str], decode: str, workers: int, device: torch.device
) -> tuple[float, str]:
    turns = [Turn("user", "What is in the picture?"), Turn("assistant", "A photo of a scene.")]
    samples = [
        Sample(sample_id=str(i), turns=turns, image=Path(p).name, image_root=str(Path(p).parent))
        for i, p in enumerate(paths)
    ]
    with ClipMatchingScorer(
        model=str(checkpoint),
        device=str(device),
        decode=decode,  # type: ignore[arg-type]
        decode_workers=workers,
        cache_images=False,
    ) as scorer:
        scorer(samples[: scorer.batch_size])  # warm-up
        synchronise(device)
        start = time.perf_counter()
        for offset in range(0, len(samples), 4 * scorer.batch_size):
            scorer(samples[offset : offset + 4 * scorer.batch_size])
        synchronise(device)
        return len(samples) / (time.perf_counter() - start), scorer.decoder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="vit-b-32,vit-l-14")
    parser.add_argument("--images", type=int, default=None, help="JPEG files (20,000 on a GPU)")
    parser.add_argument("--batch", type=int, default=None, help="default 256 on a GPU, 32 on CPU")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    dtype = torch.bfloat16 if on_gpu else torch.float32
    count = args.images or (20_000 if on_gpu else 128)
    batch = args.batch or (256 if on_gpu else 32)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    paths = write_jpegs(workdir / "jpegs", count)
    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({os.cpu_count()} cores)"
    print(f"{name}, {str(dtype).removeprefix('torch.')}, {count} JPEGs 640x480, batch {batch}")
    print(f"nvjpeg: {nvjpeg_unavailable_reason(str(device)) or 'available'}\n")
    print("| shape | row | per s | x bare image tower (sdpa) |")
    print("|---|---|---|---|")
    from random_models import save_random_clip

    for shape in args.shapes.split(","):
        checkpoint = save_random_clip(workdir / shape, shape=shape)  # type: ignore[arg-type]
        bare = bench_bare_tower(checkpoint, device, dtype, "sdpa", count, batch)
        rows = [("bare image tower, sdpa", bare)]
        rows.append(
            (
                "bare image tower, eager",
                bench_bare_tower(checkpoint, device, dtype, "eager", count, batch),
            )
        )
        rows.append(
            (f"decode+resize, {args.workers} CPU workers", bench_cpu_decode(paths, args.workers))
        )
        rate, how = bench_device_decode(paths, device, batch)
        rows.append((f"decode+resize, device ({how})", rate))
        for decode in ("auto", "workers"):
            rate, decoder = bench_scorer(checkpoint, paths, decode, args.workers, device)
            rows.append((f"vlit MD end to end, decode={decode} ({decoder})", rate))
        for row, rate in rows:
            print(f"| {shape} | {row} | {rate:,.0f} | {rate / bare:.2f} |")


if __name__ == "__main__":
    main()
