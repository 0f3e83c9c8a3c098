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
import itertools
import re
import tempfile
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.csgraph import connected_components

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
    """Flag exact and near-duplicate conversations over a whole dataset (see module docstring).

    Near-duplicate candidates come from LSH: the MinHash values are cut into ``bands`` bands of
    ``rows`` values (chosen for ``threshold`` as datasketch's ``MinHashLSH`` chooses them), and
    two samples whose values agree on a whole band are compared on all values. Per sample, memory
    keeps a 64-bit key per band, a 64-bit text digest and a 64-bit image identity
    (``bands * 8 + 16`` bytes: 88 at the defaults); the MinHash values go to a temporary file and
    only the rows of candidates are read back.
    """

    def __init__(self, *, threshold: float = 0.8, num_perm: int = 128, seed: int = 1) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(
                f"near-duplicate threshold {threshold} is outside (0, 1]",
                fix="pass a Jaccard similarity such as 0.8",
            )
        self.threshold = threshold
        self.num_perm = num_perm
        self.seed = seed
        self.bands, self.rows = lsh_bands(threshold, num_perm)

    def find(self, samples: Iterable[Sample]) -> dict[int, list[str]]:
        """Flags per sample index (only duplicates appear); ``samples`` is read once, in order.

        A sample's original is the first earlier sample with the same normalised text (exact),
        else the first earlier sample, not itself an exact duplicate, that shares a band and
        whose estimated Jaccard similarity is at least ``threshold`` (near)."""
        stream = iter(samples)
        with self.index() as index:
            while chunk := list(itertools.islice(stream, _READ_CHUNK)):
                index.add(self.fingerprints(chunk))
            return index.flags()

    def fingerprints(self, samples: Sequence[Sample]) -> Fingerprints:
        """What the finder keeps of ``samples``, to be added to a `DuplicateIndex` in order (a
        Ray worker computes its shard's)."""
        from datasketch import MinHash

        permutations = MinHash(num_perm=self.num_perm, seed=self.seed).permutations  # shared
        digests = np.zeros(len(samples), np.uint64)
        identities = np.zeros(len(samples), np.uint64)
        hashvalues = np.zeros((len(samples), self.num_perm), np.uint32)
        for row, sample in enumerate(samples):
            text = normalised_conversation(sample)
            digests[row] = _hash64(text)
            identity = image_identity(sample)
            identities[row] = 0 if identity is None else _hash64(identity)
            signature = MinHash(
                num_perm=self.num_perm,
                seed=self.seed,
                permutations=permutations,
                scheme="affine32",
            )
            signature.update_batch(list(shingles(text)))
            hashvalues[row] = signature.hashvalues
        return Fingerprints(digests, identities, hashvalues)

    def index(self) -> DuplicateIndex:
        """An empty index of this finder's fingerprints; use it as a context manager."""
        return DuplicateIndex(self)

    def _nearest_earlier(self, store: _SignatureStore, rows: np.ndarray) -> np.ndarray:
        """For each of ``rows`` (ascending sample positions), the position in ``rows`` of the
        first earlier row that shares a band and is similar enough; ``len(rows)`` if none."""
        pairs = [candidate_pairs(store.band_column(band)[rows]) for band in range(self.bands)]
        earlier = np.concatenate([p[0] for p in pairs]) if pairs else np.zeros(0, np.int64)
        later = np.concatenate([p[1] for p in pairs]) if pairs else np.zeros(0, np.int64)
        nearest = np.full(len(rows), len(rows), dtype=np.int64)
        if not len(earlier):
            return nearest
        involved = np.unique(np.concatenate([earlier, later]))
        values = store.read(rows[involved])  # only the candidates' MinHash values
        earlier_at = np.searchsorted(involved, earlier)
        later_at = np.searchsorted(involved, later)
        for start in range(0, len(earlier), _PAIR_CHUNK):
            part = slice(start, start + _PAIR_CHUNK)
            agree = np.count_nonzero(values[earlier_at[part]] == values[later_at[part]], axis=1)
            close = agree / self.num_perm >= self.threshold  # as `MinHash.jaccard` estimates it
            np.minimum.at(nearest, later[part][close], earlier[part][close])
        return nearest


@dataclass
class Fingerprints:
    """`DuplicateFinder.fingerprints` of a run of samples, one row each."""

    digests: NDArray[np.uint64]  # of the normalised text
    identities: NDArray[np.uint64]  # of the image; 0: none
    hashvalues: NDArray[np.uint32]  # MinHash values (n, num_perm)


class DuplicateIndex:
    """The fingerprints of a stream of samples, added in order: digests and image identities in
    memory, MinHash rows in a temporary file; `flags` finds the duplicates among them all."""

    def __init__(self, finder: DuplicateFinder) -> None:
        self.finder = finder
        self.digests = array("Q")
        self.identities = array("Q")
        self.store = _SignatureStore(finder.num_perm, finder.bands, finder.rows)

    def __enter__(self) -> DuplicateIndex:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Delete the temporary file of MinHash rows."""
        self.store.close()

    def add(self, prints: Fingerprints) -> None:
        self.digests.frombytes(prints.digests.tobytes())
        self.identities.frombytes(prints.identities.tobytes())
        self.store.extend(prints.hashvalues)

    def flags(self) -> dict[int, list[str]]:
        """Flags per sample position (see `DuplicateFinder.find`)."""
        digest_values = np.frombuffer(self.digests, dtype=np.uint64)
        _, first, inverse = np.unique(digest_values, return_index=True, return_inverse=True)
        original = first[inverse]  # the first sample with the same text
        flags: dict[int, list[str]] = {}
        same_image = np.frombuffer(self.identities, dtype=np.uint64)
        for index in np.flatnonzero(original != np.arange(len(original))).tolist():
            flags[index] = ["duplicate_exact", *_same_image(same_image, index, original[index])]
        distinct = np.flatnonzero(original == np.arange(len(original)))
        nearest = self.finder._nearest_earlier(self.store, distinct)
        for position in np.flatnonzero(nearest < len(distinct)).tolist():
            index, near = int(distinct[position]), int(distinct[nearest[position]])
            flags[index] = ["duplicate_near", *_same_image(same_image, index, near)]
        return flags


_PAIR_CHUNK = 8192  # candidate pairs compared at once
_READ_CHUNK = 1024  # MinHash rows written and read back at once


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising the sum of the false-positive and false-negative
    areas under the LSH S-curve, as datasketch's ``MinHashLSH`` chooses them (the integrands are
    polynomials of degree at most ``num_perm``; Gauss-Legendre integrates them exactly).

    >>> lsh_bands(0.8, 128)
    (9, 13)
    """
    nodes, weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)

    def area(low: float, high: float, curve: Callable[[np.ndarray], np.ndarray]) -> float:
        points = (high - low) / 2 * nodes + (high + low) / 2
        return float((high - low) / 2 * np.dot(weights, curve(points)))

    best, choice = float("inf"), (0, 0)
    for bands in range(1, num_perm + 1):
        for rows in range(1, num_perm // bands + 1):
            found = area(0.0, threshold, lambda s: 1 - (1 - s**rows) ** bands)  # noqa: B023
            missed = area(threshold, 1.0, lambda s: (1 - s**rows) ** bands)  # noqa: B023
            if found + missed < best:
                best, choice = found + missed, (bands, rows)
    return choice


def band_keys(values: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """A 64-bit key per band of each row of MinHash ``values`` (n, num_perm): equal bands give
    equal keys, different bands collide with probability about 2**-64."""
    parts = values[:, : bands * rows].reshape(len(values), bands, rows).astype(np.uint64)
    keys = np.full((len(values), bands), 0x9E3779B97F4A7C15, dtype=np.uint64)
    for column in range(rows):
        keys = _mix64(keys ^ parts[:, :, column])
    return keys


def candidate_pairs(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(earlier, later) positions of every two entries of ``keys`` that are equal."""
    order = np.argsort(keys, kind="stable")  # equal keys stay in position order
    ordered = keys[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    sizes = np.diff(np.r_[starts, len(keys)])
    rank = np.arange(len(keys)) - np.repeat(starts, sizes)  # place within its group
    earlier: list[np.ndarray] = []
    later: list[np.ndarray] = []
    active = np.flatnonzero(rank >= 1)
    distance = 1
    while len(active):  # pair each entry with the one `distance` places before it
        earlier.append(order[active - distance])
        later.append(order[active])
        distance += 1
        active = active[rank[active] >= distance]
    if not earlier:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(earlier), np.concatenate(later)


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, elementwise (a bijection of uint64)."""
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _hash64(text: str) -> int:
    """A 64-bit digest, never 0 (0 stands for "no image")."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") or 1


class _SignatureStore:
    """MinHash rows written to a temporary file in blocks, with each block's band keys kept."""

    def __init__(self, num_perm: int, bands: int, rows: int) -> None:
        self.num_perm, self.bands, self.rows = num_perm, bands, rows
        self.block = np.zeros((_READ_CHUNK, num_perm), dtype=np.uint32)
        self.filled = 0
        self.keys: list[np.ndarray] = []
        self.file = tempfile.TemporaryFile(prefix="vlit-minhash-")

    def close(self) -> None:
        self.file.close()

    def extend(self, rows: np.ndarray) -> None:
        """Append the MinHash ``rows`` (n, num_perm)."""
        start = 0
        while start < len(rows):
            take = min(len(self.block) - self.filled, len(rows) - start)
            self.block[self.filled : self.filled + take] = rows[start : start + take]
            self.filled += take
            start += take
            if self.filled == len(self.block):
                self._flush()

    def band_column(self, band: int) -> np.ndarray:
        """The keys of ``band`` of all rows appended."""
        self._flush()
        return np.concatenate([np.zeros(0, np.uint64), *(keys[:, band] for keys in self.keys)])

    def read(self, wanted: np.ndarray) -> np.ndarray:
        """The MinHash rows at the ascending positions ``wanted``, reading only their blocks."""
        out = np.zeros((len(wanted), self.num_perm), dtype=np.uint32)
        row_bytes = self.num_perm * 4
        blocks = wanted // _READ_CHUNK
        for block in np.unique(blocks).tolist():
            at = np.flatnonzero(blocks == block)
            self.file.seek(block * _READ_CHUNK * row_bytes)
            data = np.frombuffer(self.file.read(_READ_CHUNK * row_bytes), dtype=np.uint32)
            out[at] = data.reshape(-1, self.num_perm)[wanted[at] - block * _READ_CHUNK]
        return out

    def _flush(self) -> None:
        if self.filled:
            block = self.block[: self.filled]
            self.keys.append(band_keys(block, self.bands, self.rows))
            self.file.write(block.data)  # rows are contiguous: no copy
            self.filled = 0


def _same_image(identities: np.ndarray, index: int, original: int) -> list[str]:
    identity = identities[index]
    return ["duplicate_same_image"] if identity and identity == identities[original] else []


def near_copy_groups(
    texts: list[str],
    *,
    similarity: float,
    edit_max_length: int = 64,
    prefix_words: int = 4,
) -> NDArray[np.int64]:
    """A group number per text, texts joined (transitively) when one is a near-copy of the other:
    they are about as long and their byte 4-gram sets have Jaccard similarity at least
    ``similarity`` (``ngram_pairs``); or,
    both at most ``edit_max_length`` long, one character differs (``one_edit_pairs``: short texts,
    where one typo changes too many n-grams); or one is the other with up to ``prefix_words``
    words put before it (``prefix_pairs``: "the image shows a dog" and "a dog")."""
    found = [
        ngram_pairs(texts, threshold=similarity),
        one_edit_pairs(texts, max_length=edit_max_length),
        prefix_pairs(texts, words=prefix_words),
    ]
    left = np.concatenate([pair[0] for pair in found])
    right = np.concatenate([pair[1] for pair in found])
    graph = coo_matrix(
        (np.ones(left.size, dtype=np.int8), (left, right)), shape=(len(texts), len(texts))
    )
    return connected_components(graph, directed=False)[1].astype(np.int64)


def central_members(texts: list[str], groups: NDArray[np.int64]) -> NDArray[np.int64]:
    """One index per group, sorted: its shortest member; among several, the one whose byte
    4-grams the other members share most (mean over its n-grams of how many members have it),
    so a caption, not one of its typo copies, stands for them; then the earlier index."""
    sizes = np.bincount(groups)
    shared = np.flatnonzero(sizes[groups] > 1)  # only members of a group of several need a score
    score = np.zeros(len(texts))
    if shared.size:
        grams, owner = _byte_ngrams([texts[i] for i in shared], 4)
        distinct = np.unique((owner << 32) | grams)  # each member's distinct n-grams
        member = shared[distinct >> 32]
        in_group = (groups[member] << 32) | (distinct & 0xFFFFFFFF)
        _, slot, popularity = np.unique(in_group, return_inverse=True, return_counts=True)
        total = np.bincount(member, popularity[slot], len(texts)).astype(np.float64)
        score = total / np.maximum(np.bincount(member, minlength=len(texts)), 1)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    order = np.lexsort((np.arange(len(texts)), -score, lengths, groups))
    first = np.r_[True, groups[order][1:] != groups[order][:-1]]
    return np.sort(order[first]).astype(np.int64)


Pairs = tuple[NDArray[np.int64], NDArray[np.int64]]


def _pairs(found: list[tuple[int, int]]) -> Pairs:
    array = np.array(found, dtype=np.int64).reshape(-1, 2)
    return array[:, 0], array[:, 1]


def one_edit_pairs(texts: list[str], *, max_length: int) -> Pairs:
    """Pairs of texts (each at most ``max_length`` long) that become the same when one character
    is deleted from one or from each: a character inserted, dropped, replaced, or two neighbours
    swapped (deletion neighbourhoods, as SymSpell finds them)."""
    first: dict[str, int] = {}
    found: list[tuple[int, int]] = []
    for index, text in enumerate(texts):
        if len(text) > max_length:
            continue
        for variant in {text, *(text[:i] + text[i + 1 :] for i in range(len(text)))}:
            other = first.setdefault(variant, index)
            if other != index:
                found.append((other, index))
    return _pairs(found)


def prefix_pairs(texts: list[str], *, words: int) -> Pairs:
    """Pairs of a text and the same text with 1 to ``words`` words put before it."""
    index_of = {text: index for index, text in enumerate(texts)}
    found = []
    for index, text in enumerate(texts):
        split = text.split(" ", words)
        for drop in range(1, len(split)):
            other = index_of.get(" ".join(split[drop:]))
            if other is not None and other != index:
                found.append((other, index))
    return _pairs(found)


def ngram_pairs(
    texts: list[str],
    *,
    threshold: float,
    length_ratio: float = 0.9,
    size: int = 4,
    bands: int = 12,
    rows: int = 4,
    seed: int = 1,
) -> Pairs:
    """Pairs of texts of about the same length (the shorter at least ``length_ratio`` of the
    longer: not a text and the text with a sentence added) whose sets of ``size``-byte n-grams
    (of their UTF-8) have Jaccard similarity at least ``threshold``. Candidates come from
    MinHash LSH (``bands`` bands of ``rows`` hashes: a pair at Jaccard 0.8 is a candidate with
    probability 1 - (1 - 0.8^4)^12 = 0.998, at 0.9 > 0.9999), and every candidate's exact
    Jaccard is checked, so no pair below ``threshold`` is returned."""
    count = len(texts)
    if count < 2:
        return _pairs([])
    grams, owner = _byte_ngrams(texts, size)
    membership = csr_matrix(
        (np.ones(grams.size, dtype=np.int32), (owner, grams)), shape=(count, 1 << (8 * size))
    )
    membership.sum_duplicates()
    membership.data[:] = 1
    starts = membership.indptr[:-1]
    rng = np.random.default_rng(seed)
    multipliers = rng.integers(1, 1 << 63, size=bands * rows, dtype=np.uint64) | np.uint64(1)
    offsets = rng.integers(0, 1 << 63, size=bands * rows, dtype=np.uint64)
    distinct = membership.indices.astype(np.uint64)  # each row's distinct n-grams, row by row
    values = np.stack(
        [
            np.minimum.reduceat((distinct * multiplier + offset) >> np.uint64(32), starts)
            for multiplier, offset in zip(multipliers, offsets, strict=True)
        ],
        axis=1,
    )
    keys = band_keys(values, bands, rows)
    # each pair as one number (earlier * count + later), so the bands' repeats cost 8 bytes each
    codes = np.unique(
        np.concatenate(
            [
                earlier * count + later
                for earlier, later in (candidate_pairs(keys[:, band]) for band in range(bands))
            ]
        )
    )
    if not codes.size:
        return _pairs([])
    pairs_left, pairs_right = np.divmod(codes, count)
    # shared n-grams per candidate, a chunk of pairs at a time: near-identical texts (templates)
    # give millions of candidates, whose rows all at once would take gigabytes
    shared = np.concatenate(
        [
            np.asarray(
                membership[pairs_left[start : start + _PAIR_CHUNK]]
                .multiply(membership[pairs_right[start : start + _PAIR_CHUNK]])
                .sum(axis=1)
            ).ravel()
            for start in range(0, len(pairs_left), _PAIR_CHUNK)
        ]
    )
    sizes = np.diff(membership.indptr)
    close = shared >= threshold * (sizes[pairs_left] + sizes[pairs_right] - shared)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=count)
    shorter = np.minimum(lengths[pairs_left], lengths[pairs_right])
    close &= shorter >= length_ratio * np.maximum(lengths[pairs_left], lengths[pairs_right])
    return pairs_left[close].astype(np.int64), pairs_right[close].astype(np.int64)


def _byte_ngrams(texts: list[str], size: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """Every ``size``-byte n-gram of each text's UTF-8 as an integer, and the text it is of. A
    text shorter than ``size`` bytes is one n-gram, padded with zero bytes."""
    encoded = [text.encode("utf-8") for text in texts]
    lengths = np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded))
    data = np.frombuffer((b"\0" * size).join([*encoded, b""]), dtype=np.uint8).astype(np.int64)
    starts = np.r_[0, np.cumsum(lengths + size)[:-1]].astype(np.int64)
    counts = np.maximum(lengths - size + 1, 1)
    owner = np.repeat(np.arange(len(texts), dtype=np.int64), counts)
    positions = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(
        counts.sum(), dtype=np.int64
    )
    grams = np.zeros(positions.size, dtype=np.int64)
    for byte in range(size):
        grams |= data[positions + byte] << (8 * byte)
    return grams, owner
