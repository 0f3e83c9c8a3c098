"""Matching-degree throughput: vlit vs Data-Juicer vs a plain PyTorch loop, side by side.

All methods score the same samples (real COCO images from ../shared/data/coco_tiny cycled,
multi-turn conversations of about 200 words) with the same CLIP checkpoint (randomly
initialised, ViT-B/32-shaped, saved locally with its locally built tokenizer), truncating
the text to 77 tokens. Rows:

- ``vlit truncate`` / ``vlit per_turn``: ``ClipMatchingScorer`` (model already loaded);
- ``plain loop``: batch of 32 samples, every image decoded and encoded per sample, HF processor,
  ``torch.inference_mode`` -- what one writes first;
- ``bare forward (full text tower)``: only forward passes, inputs prepared beforehand: each
  distinct image once, every text once through ``get_text_features``;
- ``bare forward (needed work)``: the same with the texts through ``CausalTextTower`` in
  vlit's batch order (by length, then by tokens, so a batch's shared prefix is encoded once;
  the last layer on the end token only): the ceiling for vlit;
- ``data-juicer np=N``: ``image_text_similarity_filter`` of py-data-juicer 1.6.1 run in a
  subprocess of a separate virtualenv (``--dj-python``, default /tmp/dj-venv/bin/python);
  "not installed" when that interpreter is missing. Its model is loaded before timing.

Usage (CI runs a tiny size):
    .venv/bin/python benchmarks/bench_matching_degree.py --samples 500
    .venv/bin/python benchmarks/bench_matching_degree.py --samples 16 --images 4 --shape tiny
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vlit.quality.matching import MD_TEXT_PREFIX, ClipMatchingScorer, conversation_text
from vlit.schema import Sample, Turn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the test builders
COCO_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_tiny" / "train2017"

_QUESTIONS = [
    "What is happening in this picture?",
    "Where might this photo have been taken?",
    "What colours stand out in the scene?",
    "How many people or animals can you see?",
    "What could happen next in this scene?",
    "Why might the objects be arranged this way?",
]
_SENTENCES = [
    "A man in a red jacket stands near the edge of the road while traffic passes behind him.",
    "The kitchen counter holds several bottles, a wooden bowl and a knife beside the sink.",
    "Two dogs rest on the tiled floor next to a white toilet in a small bathroom.",
    "Light from the window falls across a table covered with plates, cups and spoons.",
    "A group of people gathers under umbrellas while cows graze in the field nearby.",
    "The bicycle leans against a wall covered with posters and a faded street sign.",
    "Steam rises from a pot on the stove while someone slices vegetables on a board.",
    "The scene suggests a busy morning, with people hurrying to work in light rain.",
    "Shelves of books line the wall, and a potted plant sits on the corner of the desk.",
    "The motorcycle is parked on a dirt track that winds between green hills and trees.",
]


def make_samples(count: int, images: int, words: int, seed: int = 0) -> list[Sample]:
    """Seeded multi-turn conversations of about ``words`` words over the first ``images``."""
    files = sorted(p.name for p in COCO_IMAGES.glob("*.jpg"))[:images]
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        turns: list[Turn] = []
        total = 0
        while total < words:
            question = rng.choice(_QUESTIONS)
            answer = " ".join(rng.sample(_SENTENCES, 3))
            turns += [Turn("user", question), Turn("assistant", answer)]
            total += len(question.split()) + len(answer.split())
        samples.append(
            Sample(
                sample_id=f"s{index}",
                image=files[index % len(files)],
                image_root=str(COCO_IMAGES),
                turns=turns,
            )
        )
    return samples


def timed(function) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = function()
    return time.perf_counter() - start, result


def bench_vlit(checkpoint: Path, samples: list[Sample], mode: str, workers: int) -> float:
    scorer = ClipMatchingScorer(model=str(checkpoint), text_mode=mode, decode_workers=workers)
    scorer.setup()
    if scorer._pool is not None:  # start the worker processes before timing
        list(scorer._pool.map(abs, range(workers)))
    copies = [Sample.from_row(s.to_row()) for s in samples]
    seconds, _ = timed(lambda: scorer(copies))
    scorer.close()
    return seconds


def bench_plain_loop(checkpoint: Path, samples: list[Sample], batch: int = 32) -> float:
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)

    def run() -> list[float]:
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(samples), batch):
                chunk = samples[start : start + batch]
                texts = [MD_TEXT_PREFIX + conversation_text(s) for s in chunk]
                images = [Image.open(str(s.image_path)).convert("RGB") for s in chunk]
                inputs = processor(
                    text=texts,
                    images=images,
                    return_tensors="pt",
                    truncation=True,
                    max_length=77,
                    padding=True,
                )
                text = _features(model.get_text_features(input_ids=inputs["input_ids"]))
                image = _features(model.get_image_features(pixel_values=inputs["pixel_values"]))
                scores += ((text * image).sum(-1) * 100).tolist()
        return scores

    seconds, _ = timed(run)
    return seconds


def _features(output: object) -> torch.Tensor:
    tensor = output.pooler_output if hasattr(output, "pooler_output") else output  # type: ignore[attr-defined]
    return tensor / tensor.norm(dim=-1, keepdim=True)


def bench_bare_forward(
    checkpoint: Path, samples: list[Sample], batch: int = 32, *, causal_tower: bool = False
) -> float:
    """Forward passes only, inputs prepared beforehand; ``causal_tower``: texts through
    ``CausalTextTower`` (the shared prefix once, the last layer on the end token only)."""
    from transformers import AutoModel, AutoProcessor

    from vlit.quality.clip_text import CausalTextTower

    model = AutoModel.from_pretrained(checkpoint).eval()
    processor = AutoProcessor.from_pretrained(checkpoint)
    distinct = sorted({str(s.image_path) for s in samples})
    pixels = processor(
        images=[Image.open(p).convert("RGB") for p in distinct], return_tensors="pt"
    )["pixel_values"]
    texts = [MD_TEXT_PREFIX + conversation_text(s) for s in samples]
    tokens = processor.tokenizer(
        texts, truncation=True, max_length=77, padding=True, return_tensors="pt"
    )["input_ids"]
    rows = processor.tokenizer(texts, truncation=True, max_length=77)["input_ids"]
    rows.sort(key=lambda ids: (len(ids), ids))  # batches that share prefixes, as vlit orders them
    tower = CausalTextTower(model)

    def run() -> None:
        with torch.inference_mode():
            for start in range(0, len(pixels), batch):
                model.get_image_features(pixel_values=pixels[start : start + batch])
            for start in range(0, len(tokens), batch):
                if causal_tower:
                    tower(rows[start : start + batch])
                else:
                    model.get_text_features(input_ids=tokens[start : start + batch])

    seconds, _ = timed(run)
    return seconds


_DJ_SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    from datasets import Dataset
    from data_juicer.ops.filter.image_text_similarity_filter import ImageTextSimilarityFilter
    from data_juicer.utils.constant import Fields
    from data_juicer.utils.mm_utils import SpecialTokens
    from data_juicer.utils.model_utils import get_model
    checkpoint, rows_file, num_proc = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rows = json.load(open(rows_file))
    op = ImageTextSimilarityFilter(hf_clip=checkpoint, min_score=0.0, max_score=1.0,
                                   batch_size=32, num_proc=num_proc)
    get_model(op.model_key)  # load before timing (forked workers inherit it)
    data = [{"text": f"{SpecialTokens.image} {r['text']} {SpecialTokens.eoc}",
             "images": [r["image"]], Fields.stats: {}} for r in rows]
    dataset = Dataset.from_list(data)
    start = time.perf_counter()
    result = dataset.map(op.compute_stats, num_proc=num_proc, batched=True, batch_size=32,
                         load_from_cache_file=False)
    seconds = time.perf_counter() - start
    stats = [s["image_text_similarity"][0] * 100 for s in result[Fields.stats]]
    print(json.dumps({"seconds": seconds, "scores": stats[:5]}))
    """
)


def bench_data_juicer(
    python: Path, checkpoint: Path, samples: list[Sample], num_proc: int, workdir: Path
) -> tuple[float | None, str]:
    if not python.exists():
        return None, f"not installed ({python} not found)"
    rows = [
        {"text": MD_TEXT_PREFIX + conversation_text(s), "image": str(s.image_path)} for s in samples
    ]
    rows_file = workdir / "dj_rows.json"
    rows_file.write_text(json.dumps(rows))
    script = workdir / "dj_bench.py"
    script.write_text(_DJ_SCRIPT)
    completed = subprocess.run(
        [str(python), str(script), str(checkpoint), str(rows_file), str(num_proc)],
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=workdir,
    )
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-3:]
        return None, "failed: " + " | ".join(tail)
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    return float(result["seconds"]), "ok"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--words", type=int, default=200)
    parser.add_argument("--shape", choices=["vit-b-32", "tiny"], default="vit-b-32")
    parser.add_argument("--decode-workers", type=int, default=1)
    parser.add_argument("--dj-python", type=Path, default=Path("/tmp/dj-venv/bin/python"))
    parser.add_argument("--dj-np", default="1,2", help="Data-Juicer process counts to run.")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_md_"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = workdir / f"clip-{args.shape}"
    if not (checkpoint / "config.json").exists():
        from random_models import save_random_clip

        save_random_clip(checkpoint, shape=args.shape, seed=0)
    samples = make_samples(args.samples, args.images, args.words)
    words = np.mean([sum(len(t.text.split()) for t in s.turns) for s in samples])
    print(
        f"{len(samples)} samples, {args.images} distinct images, {words:.0f} words each, "
        f"CLIP {args.shape}, torch threads {torch.get_num_threads()}",
        file=sys.stderr,
    )

    rows: list[tuple[str, float | None, str]] = []
    rows.append(("bare forward (full text tower)", bench_bare_forward(checkpoint, samples), "ok"))
    tower = bench_bare_forward(checkpoint, samples, causal_tower=True)
    rows.append(("bare forward (needed work)", tower, "ok"))
    rows.append(("plain loop (batch 32)", bench_plain_loop(checkpoint, samples), "ok"))
    for mode in ("truncate", "per_turn"):
        seconds = bench_vlit(checkpoint, samples, mode, args.decode_workers)
        rows.append((f"vlit {mode}", seconds, "ok"))
    for num_proc in [int(n) for n in args.dj_np.split(",") if n]:
        seconds, status = bench_data_juicer(args.dj_python, checkpoint, samples, num_proc, workdir)
        rows.append((f"data-juicer np={num_proc}", seconds, status))

    rates = {name: len(samples) / seconds for name, seconds, _ in rows if seconds}
    dj_best = max((r for n, r in rates.items() if n.startswith("data-juicer")), default=None)
    bare = rates["bare forward (needed work)"]
    print(f"{'method':30} {'seconds':>9} {'samples/s':>10} {'x DJ best':>10} {'/ bare':>8}")
    for name, seconds, status in rows:
        if seconds is None:
            print(f"{name:30} {status}")
            continue
        rate = rates[name]
        versus_dj = f"{rate / dj_best:.2f}" if dj_best else "-"
        print(f"{name:30} {seconds:9.2f} {rate:10.2f} {versus_dj:>10} {rate / bare:8.2f}")


if __name__ == "__main__":
    main()
