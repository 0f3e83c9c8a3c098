"""Exact and near-duplicate conversations (MinHash over word shingles), image-aware.

The first sample of each group of duplicates is the original; every later one is flagged
``duplicate_exact`` (same normalised text) or ``duplicate_near`` (estimated Jaccard similarity of
word 3-shingles at least ``threshold``), and additionally ``duplicate_same_image`` when the
duplicate also uses the same image as its original: the same conversation about the same image
twice adds nothing to training.

Example:
    >>> finder = DuplicateFinder(threshold=0.8)
    >>> flags = finder.find(samples)   # {sample index: ["duplicate_near", ...]}  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

import numpy as np

from vlit.errors import ConfigError
from vlit.schema import Sample

_WORD = re.compile(r"[0-9a-z]+")


def normalised_conversation(sample: Sample) -> str:
    """Lower-case words of all turns, role-tagged, for duplicate comparison."""
    parts = []
    for turn in sample.turns:
        words = _WORD.findall(turn.text.replace("<image>", " ").lower())
        parts.append(f"{turn.role[0]}: {' '.join(words)}")
    return " | ".join(parts)


def shingles(text: str, size: int = 3) -> set[bytes]:
    words = text.split()
    if len(words) <= size:
        return {" ".join(words).encode()}
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def image_identity(sample: Sample) -> str | None:
    """What makes two samples use 'the same image': image id, else the image reference."""
    if sample.image_id:
        return f"id:{sample.image_id}"
    if sample.image:
        return f"file:{sample.image_path}"
    return None


class DuplicateFinder:
    """Flag exact and near-duplicate conversations over a whole dataset (see module docstring)."""

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(
                f"near-duplicate threshold {threshold} is outside (0, 1]",
                fix="pass a Jaccard similarity such as 0.8",
            )
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed

    def find(self, samples: Iterable[Sample]) -> dict[int, list[str]]:
        """Flags per sample index (only duplicates appear). ``samples`` is read once, in order:
        what is kept per sample is its text digest, image identity, MinHash values (4 bytes per
        permutation) and LSH band keys."""
        from datasketch import MinHash, MinHashLSH

        flags: dict[int, list[str]] = {}
        first_by_hash: dict[bytes, int] = {}
        identities: list[str | None] = []
        lsh = MinHashLSH(threshold=self.threshold, num_perm=self.num_perm)
        permutations = MinHash(num_perm=self.num_perm, seed=self.seed).permutations  # shared
        signatures = _Signatures(self.num_perm)
        for index, sample in enumerate(samples):
            identities.append(image_identity(sample))
            text = normalised_conversation(sample)
            digest = hashlib.sha1(text.encode()).digest()
            if digest in first_by_hash:
                original = first_by_hash[digest]
                flags[index] = ["duplicate_exact", *_same_image(identities, index, original)]
                continue
            first_by_hash[digest] = index
            signature = MinHash(
                num_perm=self.num_perm,
                seed=self.seed,
                permutations=permutations,
                scheme="affine32",
            )
            signature.update_batch(list(shingles(text)))
            rows = [int(key) for key in lsh.query(signature)]
            close = [
                row
                for row in rows
                if signatures.jaccard(row, signature.hashvalues) >= self.threshold
            ]
            if close:
                original = signatures.sample_index[min(close)]  # rows follow sample order
                flags[index] = ["duplicate_near", *_same_image(identities, index, original)]
            lsh.insert(str(len(signatures)), signature)
            signatures.append(signature.hashvalues, index)
        return flags


class _Signatures:
    """MinHash values of the samples seen, one row each in a growing uint32 matrix."""

    def __init__(self, num_perm: int) -> None:
        self.values = np.zeros((1024, num_perm), dtype=np.uint32)
        self.sample_index: list[int] = []

    def __len__(self) -> int:
        return len(self.sample_index)

    def append(self, hashvalues: np.ndarray, index: int) -> None:
        row = len(self.sample_index)
        if row == len(self.values):
            self.values = np.concatenate([self.values, np.zeros_like(self.values)])
        self.values[row] = hashvalues
        self.sample_index.append(index)

    def jaccard(self, row: int, hashvalues: np.ndarray) -> float:
        """Estimated Jaccard similarity, as `MinHash.jaccard` computes it."""
        return float(np.count_nonzero(self.values[row] == hashvalues)) / len(hashvalues)


def _same_image(identities: list[str | None], index: int, original: int) -> list[str]:
    identity = identities[index]
    return (
        ["duplicate_same_image"]
        if identity is not None and identity == identities[original]
        else []
    )
