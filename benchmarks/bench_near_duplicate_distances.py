"""How far apart are near-copies of a response, and how far apart are different responses?

    .venv/bin/python benchmarks/bench_near_duplicate_distances.py [--embedders minilm,wordllama]

The measurement behind R's near-duplicate rule (``response_diversity``): for captions of the
LLaVA slice and the COCO captions (run from the project root: data from ``../shared/data``),
the cosine distance between a caption and an edited copy of it, per kind of edit, against the
distance from a caption to the nearest *different* caption (another LLaVA image; for COCO,
another person's caption of the same image, and the nearest caption of another image). Distances
are between the texts as R embeds them (their normalised key, ``response_key``), so edits the key
already removes show 0. Prints percentiles per embedder, and the % of pairs within each
candidate merge distance.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlit.quality.indicators import validity
from vlit.quality.indicators.clustering import normalise_rows
from vlit.quality.indicators.embeddings import load_embedder
from vlit.quality.indicators.response_diversity import response_key

DATA = Path("../shared/data")
CAPTIONS = DATA / "coco_tiny/annotations/captions_train2017.json"
LLAVA = DATA / "formats/llava/llava_pretrain_slice_2k.json"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
MERGE_DISTANCES = (0.03, 0.05, 0.08, 0.1)


def _typo(text: str, rng: random.Random) -> str | None:
    """One letter of one word of four or more letters replaced by its neighbour letter."""
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) >= 4 and w.isalpha()]
    if not long:
        return None
    index = rng.choice(long)
    word = words[index]
    at = rng.randrange(1, len(word) - 1)
    words[index] = word[:at] + word[at + 1] + word[at] + word[at + 2 :]  # swapped letters
    return " ".join(words)


def _reordered(text: str, rng: random.Random) -> str | None:
    """The two parts around the first comma (or ' and ', or ' with ') swapped."""
    for joint in (", ", " and ", " with "):
        if joint in text:
            head, tail = text.split(joint, 1)
            return f"{tail.rstrip('.')}{joint}{head[:1].lower()}{head[1:]}"
    return None


EDITS: dict[str, Callable[[str, random.Random], str | None]] = {
    "trailing '.' / '!' / ' .'": lambda t, r: t.rstrip(" .!") + r.choice([".", "!", " .", ""]),
    "case (lower / Upper-first / UPPER)": lambda t, r: r.choice(
        [t.lower(), t[:1].upper() + t[1:], t.upper()]
    ),
    "extra spaces, full-width ,": lambda t, r: "  ".join(t.split()).replace(",", "\uff0c"),
    "'The image shows ' added": lambda t, r: "The image shows " + t[:1].lower() + t[1:],
    "one typo (letters swapped)": _typo,
    "clauses reordered": _reordered,
}


def _unit(embedder: object, texts: list[str]) -> np.ndarray:
    return normalise_rows(embedder.embed([response_key(t) for t in texts]))  # type: ignore[attr-defined]


def _pair_distances(embedder: object, pairs: list[tuple[str, str]]) -> np.ndarray:
    left = _unit(embedder, [a for a, _ in pairs])
    right = _unit(embedder, [b for _, b in pairs])
    return 1.0 - np.einsum("ij,ij->i", left, right)


def _nearest_other(unit: np.ndarray, groups: np.ndarray, same: bool) -> np.ndarray:
    """Distance from each row to its nearest row of the same (or another) group, itself out."""
    distances = 1.0 - unit @ unit.T
    np.fill_diagonal(distances, np.inf)
    mask = groups[:, None] == groups[None, :]
    distances[~mask if same else mask] = np.inf
    nearest = distances.min(axis=1)
    return nearest[np.isfinite(nearest)]


def _row(name: str, values: np.ndarray) -> str:
    cells = " ".join(f"{v:6.3f}" for v in np.percentile(values, PERCENTILES))
    shares = " ".join(f"{100 * np.mean(values <= d):6.1f}" for d in MERGE_DISTANCES)
    return f"  {name:44s} {len(values):5d}  {cells}  {shares}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedders", default="minilm,wordllama")
    parser.add_argument("--captions", type=int, default=600, help="LLaVA captions edited")
    args = parser.parse_args()
    rng = random.Random(0)
    llava = sorted(set(validity.llava_responses(LLAVA)))
    coco = validity.coco_captions(CAPTIONS)
    coco_texts = [text for image in sorted(coco) for text in coco[image]]
    coco_images = np.array([image for image in sorted(coco) for _ in coco[image]])
    edited = rng.sample(llava, args.captions) + coco_texts
    header = " ".join(f"{'p' + str(p):>6s}" for p in PERCENTILES)
    header += "  " + " ".join(f"{'<=' + str(d):>6s}" for d in MERGE_DISTANCES)
    for name in args.embedders.split(","):
        embedder = load_embedder(name)
        print(f"\n{embedder.model_id}: cosine distance between normalised keys")
        print(f"  {'pair':44s} {'n':>5s}  {header}")
        for edit, apply in EDITS.items():
            pairs = [(t, e) for t in edited if (e := apply(t, rng)) is not None and e != t]
            print(_row(f"near-copy: {edit}", _pair_distances(embedder, pairs)))
        unit = _unit(embedder, llava)
        print(_row("different: LLaVA, nearest other caption", _nearest_other(
            unit, np.arange(len(llava)), same=False)))  # fmt: skip
        unit = _unit(embedder, coco_texts)
        print(_row("different: COCO, same image, other person", _nearest_other(
            unit, coco_images, same=True)))  # fmt: skip
        print(_row("different: COCO, nearest other image", _nearest_other(
            unit, coco_images, same=False)))  # fmt: skip


if __name__ == "__main__":
    main()
