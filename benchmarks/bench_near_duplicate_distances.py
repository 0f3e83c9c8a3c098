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

First, without embeddings, the character-level rules R applies before embedding
(``vlit.quality.dedup.near_copy_groups``): per rule and n-gram Jaccard threshold, the % of edited
copies joined to their caption, and the % of distinct captions wrongly joined to a different one.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vlit.quality.dedup import near_copy_groups, ngram_pairs, one_edit_pairs, prefix_pairs
from vlit.quality.indicators import validity
from vlit.quality.indicators.clustering import normalise_rows
from vlit.quality.indicators.embeddings import load_embedder
from vlit.quality.indicators.response_diversity import response_key

DATA = Path("../shared/data")
CAPTIONS = DATA / "coco_tiny/annotations/captions_train2017.json"
LLAVA = DATA / "formats/llava/llava_pretrain_slice_2k.json"
PERCENTILES = (1, 5, 25, 50, 75, 95, 99)
MERGE_DISTANCES = (0.03, 0.05, 0.08, 0.1)
SIMILARITIES = (0.6, 0.7, 0.8, 0.9)
EDIT_MAX_LENGTH = 64
PREFIX_WORDS = 4


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


def _rules(similarity: float) -> dict[str, Callable[[list[str]], np.ndarray]]:
    """Group numbers per text, for each character rule alone and for all of them together."""

    def grouped(find: Callable[[list[str]], tuple[np.ndarray, np.ndarray]]) -> Callable:
        def groups(texts: list[str]) -> np.ndarray:
            labels = np.arange(len(texts))  # the rules' pairs join texts; few, so a simple loop
            for a, b in zip(*find(texts), strict=True):
                labels[labels == labels[b]] = labels[a]
            return labels

        return groups

    return {
        f"4-gram Jaccard >= {similarity}": grouped(lambda t: ngram_pairs(t, threshold=similarity)),
        f"one edit (<= {EDIT_MAX_LENGTH} chars)": grouped(
            lambda t: one_edit_pairs(t, max_length=EDIT_MAX_LENGTH)
        ),
        f"<= {PREFIX_WORDS} words put before": grouped(
            lambda t: prefix_pairs(t, words=PREFIX_WORDS)
        ),
        f"all three (R, Jaccard {similarity})": lambda t: near_copy_groups(
            t, similarity=similarity, edit_max_length=EDIT_MAX_LENGTH, prefix_words=PREFIX_WORDS
        ),
    }


def _joined(groups: Callable[[list[str]], np.ndarray], keys: list[str], owners: np.ndarray) -> int:
    """How many keys are grouped with a key of another owner (another image or record)."""
    labels = groups(keys)
    return sum(
        int(members.sum())
        for members in (labels == label for label in np.unique(labels))
        if len(np.unique(owners[members])) > 1
    )


def character_rules(
    edited: list[str], llava: list[str], coco: dict[int, list[str]], rng: random.Random
) -> None:
    """Near-copies joined vs different captions wrongly joined, per character rule."""
    copies = {
        edit: [(response_key(t), response_key(e)) for t in edited if (e := apply(t, rng))]
        for edit, apply in EDITS.items()
        if edit in ("'The image shows ' added", "one typo (letters swapped)", "clauses reordered")
    }
    llava_keys = sorted({response_key(t) for t in llava})
    by_image = {image: sorted({response_key(t) for t in texts}) for image, texts in coco.items()}
    coco_keys = [key for image in sorted(by_image) for key in by_image[image]]
    coco_owner = np.array([image for image in sorted(by_image) for _ in by_image[image]])
    print("character rules on normalised keys: % of pairs joined")
    names = [
        *(f"copy: {e[:16]}" for e in copies),
        "diff: LLaVA",
        "diff: COCO same",
        "diff: COCO other",
    ]
    print(f"  {'rule':36s} " + " ".join(f"{n:>18s}" for n in names))
    for similarity in SIMILARITIES:
        for rule, groups in _rules(similarity).items():
            if similarity != SIMILARITIES[0] and not rule.startswith(("4-gram", "all")):
                continue
            cells = []
            for pairs in copies.values():
                changed = [(a, b) for a, b in pairs if a != b]
                cells.append(100 * np.mean([len(set(groups([a, b]))) == 1 for a, b in changed]))
            cells.append(
                100 * _joined(groups, llava_keys, np.arange(len(llava_keys))) / len(llava_keys)
            )
            same = sum(_joined(groups, keys, np.arange(len(keys))) for keys in by_image.values())
            cells.append(100 * same / len(coco_keys))
            cells.append(100 * _joined(groups, coco_keys, coco_owner) / len(coco_keys))
            print(f"  {rule:36s} " + " ".join(f"{c:18.1f}" for c in cells))


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
    character_rules(edited, llava, coco, rng)
    header = " ".join(f"{'p' + str(p):>6s}" for p in PERCENTILES)
    header += "  " + " ".join(f"{'<=' + str(d):>6s}" for d in MERGE_DISTANCES)
    for name in filter(None, args.embedders.split(",")):
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
