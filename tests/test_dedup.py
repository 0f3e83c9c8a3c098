"""The duplicate finder's banded keys: the same flags as datasketch's LSH index on planted
near-duplicates of real COCO captions, the same band parameters, and memory per sample that
does not hold an index of Python objects."""

from __future__ import annotations

import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH
from hypothesis import given, settings
from hypothesis import strategies as st

from vlit.quality.dedup import (
    DuplicateFinder,
    candidate_pairs,
    image_identity,
    lsh_bands,
    ngram_pairs,
    normalised_conversation,
    shingles,
)
from vlit.schema import Sample, Turn


@pytest.fixture(scope="module")
def captions(shared_data: Path) -> list[str]:
    path = shared_data / "coco_tiny" / "annotations" / "captions_train2017.json"
    return [a["caption"].strip() for a in json.loads(path.read_text())["annotations"]]


def planted(captions: list[str], size: int, seed: int = 0) -> tuple[list[Sample], dict, dict]:
    """``size`` conversations of three recombined captions; every 10th (from 100 on) is a
    near-duplicate of an earlier one (two words appended, another image), every 50th an exact one
    (upper case, same image). Returns the samples and the planted {index: original} of each kind."""
    rng = random.Random(seed)
    rows = [
        (f"Describe image {i % 50}.", " ".join(rng.sample(captions, 3)), f"img{i % 50}")
        for i in range(size)
    ]
    near, exact = {}, {}
    for index in range(100, size, 10):
        original = rng.randrange(0, index - 1)
        question, answer, image = rows[original]
        if index % 50 == 0:
            rows[index] = (question.upper(), answer, image)
            exact[index] = original
        else:
            rows[index] = (question, f"{answer} indeed {index}", f"other{index}")
            near[index] = original
    samples = [
        Sample(sample_id=f"s{i}", image_id=image, turns=[Turn("user", q), Turn("assistant", a)])
        for i, (q, a, image) in enumerate(rows)
    ]
    return samples, near, exact


def datasketch_flags(samples: list[Sample], threshold: float = 0.8) -> dict[int, list[str]]:
    """What the finder flagged before the banded keys: datasketch's MinHashLSH index."""
    flags: dict[int, list[str]] = {}
    first: dict[str, int] = {}
    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    signatures: list[MinHash] = []
    for index, sample in enumerate(samples):
        text = normalised_conversation(sample)
        if text in first:
            original = first[text]
            kind = "duplicate_exact"
        else:
            first[text] = index
            signature = MinHash(num_perm=128, seed=1)
            signature.update_batch(list(shingles(text)))
            close = [
                int(key)
                for key in lsh.query(signature)
                if signatures[int(key)].jaccard(signature) >= threshold
            ]
            lsh.insert(str(len(signatures)), signature)
            signatures.append(signature)
            signatures[-1].index = index  # type: ignore[attr-defined]
            if not close:
                continue
            original = signatures[min(close)].index  # type: ignore[attr-defined]
            kind = "duplicate_near"
        same = image_identity(sample) == image_identity(samples[original])
        flags[index] = [kind, *(["duplicate_same_image"] if same else [])]
    return flags


def test_planted_duplicates_are_found_as_datasketch_found_them(captions: list[str]) -> None:
    samples, near, exact = planted(captions, 3000)
    flags = DuplicateFinder().find(iter(samples))
    assert flags == datasketch_flags(samples)
    assert {i for i, f in flags.items() if f[0] == "duplicate_exact"} == set(exact)
    found_near = {i for i, f in flags.items() if f[0] == "duplicate_near"}
    assert set(near) <= found_near and len(found_near - set(near)) <= 3  # chance recombinations
    assert all(flags[i] == ["duplicate_exact", "duplicate_same_image"] for i in exact)
    assert all(flags[i] == ["duplicate_near"] for i in near)  # planted on other images


def test_band_parameters_are_datasketchs() -> None:
    for threshold in (0.5, 0.7, 0.8, 0.9):
        index = MinHashLSH(threshold=threshold, num_perm=128)
        assert lsh_bands(threshold, 128) == (index.b, index.r)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 6), max_size=40))
def test_candidate_pairs_are_all_pairs_of_equal_keys(keys: list[int]) -> None:
    earlier, later = candidate_pairs(np.array(keys, dtype=np.uint64))
    expected = {(i, j) for j in range(len(keys)) for i in range(j) if keys[i] == keys[j]}
    assert sorted(zip(earlier.tolist(), later.tolist(), strict=True)) == sorted(expected)


def test_memory_per_sample_is_a_few_hundred_bytes(captions: list[str]) -> None:
    """Samples are made on the fly, so what grows is what the finder keeps per sample (about
    3.4 KB with datasketch's index, 2.6 KB with its MinHash values in one matrix)."""

    def stream(size: int) -> Iterator[Sample]:
        rng = random.Random(size)
        for i in range(size):
            text = " ".join(rng.sample(captions, 3))
            yield Sample(
                sample_id=f"s{i}", turns=[Turn("user", "Describe."), Turn("assistant", text)]
            )

    DuplicateFinder().find(stream(10))  # imports
    peaks = []
    for size in (2_000, 8_000):
        tracemalloc.start()
        DuplicateFinder().find(stream(size))
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    per_sample = (peaks[1] - peaks[0]) / 6_000
    assert per_sample < 500, per_sample


def test_ngram_pairs_of_near_identical_texts_stay_in_bounded_memory(captions: list[str]) -> None:
    """Template-like texts make every pair a candidate (1,200 texts: 719,400 pairs); their
    n-gram rows are compared a chunk at a time, not all at once (1.3 GB before)."""
    base = max(captions, key=len)
    texts = [f"{base} {index:04d}" for index in range(1_200)]
    tracemalloc.start()
    left, right = ngram_pairs(texts, threshold=0.8)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(set(zip(left.tolist(), right.tolist(), strict=True))) == 1_200 * 1_199 // 2
    assert peak < 200e6, peak
