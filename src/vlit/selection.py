"""Select N samples to a budget: quality first, near-duplicates out, tasks evened out.

1. **Quality**: each sample's quality is the mean of the scores it has, each mapped to [0, 1]:
   matching degree as its rank among the samples that have one, ``correct`` as is (0/1), and
   ``1 - hallucination rate``. A sample with none of them gets 0.5. Ties are broken by a seeded
   random key, so the selection is reproducible.
2. **Near-duplicates**: in quality order, a sample whose conversation's MinHash (word 3-gram
   shingles, 128 permutations, seeded) matches an already kept one above ``dedup_threshold``
   (estimated Jaccard, default 0.8) is skipped; the better sample stays.
3. **Task balance (water-filling)**: each sample's task is its first label (rule labeller). The
   budget is poured evenly over the tasks; a task with fewer samples than its share gives all
   it has and the rest flows to the others. Within a task the best samples are taken.

The selection keeps the input order. ``summary`` says how many were candidates, duplicates,
and the per-task counts before and after.

Example:
    >>> result = select_to_budget(samples, size=1000)    # doctest: +SKIP
    >>> len(result.selected)                             # doctest: +SKIP
    1000
"""

from __future__ import annotations

import math
import re
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlit.errors import ConfigError
from vlit.quality.dedup import band_keys, candidate_pairs, lsh_bands
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.scores import CORRECT_KEY, HALLUCINATION_KEYS, MD_KEY
from vlit.quality.indicators.text import conversation_text
from vlit.schema import Sample

_WORD = re.compile(r"\w+")
_NUM_PERM = 128


@dataclass
class SelectionResult:
    selected: list[Sample]
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class SelectionPlan:
    """Which samples to keep (ascending positions in the input) and the summary."""

    chosen: np.ndarray
    summary: dict[str, Any] = field(default_factory=dict)


class _SampleFacts:
    """What selection keeps per sample: three scores (NaN = absent), the task and, with
    deduplication, one 64-bit key per LSH band (9 at 0.8): 24 + 8 + 72 bytes."""

    def __init__(self, *, dedup_threshold: float | None, seed: int) -> None:
        self.parts = array("d")  # md, correct, 1 - hallucination per sample
        self.tasks = array("l")
        self.task_names: dict[str, int] = {}
        self.keys: list[np.ndarray] = []
        self.seed = seed
        self.bands = lsh_bands(dedup_threshold, _NUM_PERM) if dedup_threshold is not None else None
        self.permutations: np.ndarray | None = None

    def add(self, batch: list[Sample]) -> None:
        for sample in batch:
            self.parts.extend(_score_parts(sample))
            self.tasks.append(self.task_names.setdefault(sample.labels[0], len(self.task_names)))
        if self.bands is not None:
            if self.permutations is None:
                from datasketch import MinHash

                self.permutations = MinHash(num_perm=_NUM_PERM, seed=self.seed).permutations
            permutations = self.permutations
            values = np.array(
                [_minhash(sample, self.seed, permutations) for sample in batch], dtype=np.uint32
            )
            self.keys.append(band_keys(values.reshape(len(batch), _NUM_PERM), *self.bands))

    def quality(self) -> np.ndarray:
        parts = np.frombuffer(self.parts, dtype=np.float64).reshape(-1, 3).copy()
        md = parts[:, 0]
        present = ~np.isnan(md)
        if present.any():
            ranks = md[present].argsort(kind="stable").argsort(kind="stable")
            md[present] = (ranks + 1) / int(present.sum())
        quality = np.full(len(parts), 0.5)
        scored = ~np.isnan(parts).all(axis=1)
        quality[scored] = np.nanmean(parts[scored], axis=1)
        return quality


def quality_scores(samples: list[Sample]) -> np.ndarray:
    """Quality in [0, 1] per sample (see the module docstring)."""
    facts = _SampleFacts(dedup_threshold=None, seed=0)
    for sample in samples:
        facts.parts.extend(_score_parts(sample))
    return facts.quality()


def _score_parts(sample: Sample) -> tuple[float, float, float]:
    """(matching degree, correct, 1 - hallucination rate); NaN where the sample has none."""
    scores = sample.scores
    md = float(scores[MD_KEY]) if MD_KEY in scores else math.nan
    correct = float(np.clip(scores[CORRECT_KEY], 0.0, 1.0)) if CORRECT_KEY in scores else math.nan
    faithful = next(
        (
            1.0 - float(np.clip(scores[key], 0.0, 1.0))
            for key in HALLUCINATION_KEYS
            if key in scores
        ),
        math.nan,
    )
    return md, correct, faithful


def water_fill(available: dict[str, int], budget: int) -> dict[str, int]:
    """Even quotas per task under ``budget``; small tasks give all, the rest share the remainder.

    >>> water_fill({"a": 10, "b": 2, "c": 50}, 20)
    {'b': 2, 'a': 9, 'c': 9}
    """
    quotas: dict[str, int] = {}
    remaining = budget
    tasks = sorted(available, key=lambda t: (available[t], t))
    for position, task in enumerate(tasks):
        left = len(tasks) - position
        share = remaining // left
        # the last tasks get the integer remainder, one each, largest tasks last
        if remaining % left and position >= len(tasks) - remaining % left:
            share += 1
        quotas[task] = min(available[task], share)
        remaining -= quotas[task]
    return quotas


def _shingles(text: str, width: int = 3) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < width:
        return {" ".join(words).encode("utf-8")}
    return {" ".join(words[i : i + width]).encode("utf-8") for i in range(len(words) - width + 1)}


def _minhash(sample: Sample, seed: int, permutations: np.ndarray) -> np.ndarray:
    from datasketch import MinHash

    signature = MinHash(num_perm=_NUM_PERM, seed=seed, permutations=permutations, scheme="affine32")
    signature.update_batch(list(_shingles(conversation_text(sample))))
    return signature.hashvalues


def near_duplicates(keys: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Whether each sample duplicates a better one: in ``order`` (best first), a sample that
    shares an LSH band key (``keys``: one column per band) with an already kept one."""
    pairs = [candidate_pairs(keys[:, band]) for band in range(keys.shape[1])]
    one = np.concatenate([np.zeros(0, np.int64), *(p[0] for p in pairs), *(p[1] for p in pairs)])
    other = np.concatenate([np.zeros(0, np.int64), *(p[1] for p in pairs), *(p[0] for p in pairs)])
    by_sample = np.argsort(one, kind="stable")
    one, other = one[by_sample], other[by_sample]
    starts = np.searchsorted(one, np.arange(len(keys) + 1))
    duplicate = np.zeros(len(keys), dtype=bool)
    kept = np.zeros(len(keys), dtype=bool)
    for index in order[starts[order + 1] > starts[order]].tolist():  # samples sharing a band
        if kept[other[starts[index] : starts[index + 1]]].any():
            duplicate[index] = True
        else:
            kept[index] = True
    return duplicate


def plan_selection(
    batches: Iterable[list[Sample]],
    *,
    size: int,
    dedup_threshold: float | None = 0.8,
    seed: int = 0,
    labeller: RuleTaskLabeller | None = None,
) -> SelectionPlan:
    """Which ``size`` samples to pick (see the module docstring), reading ``batches`` once and
    keeping only a few numbers per sample (`_SampleFacts`); sets ``labels`` on every sample."""
    if size <= 0:
        raise ConfigError(f"selection size must be positive, got {size}", fix="pass --size N > 0")
    labeller = labeller or RuleTaskLabeller()
    facts = _SampleFacts(dedup_threshold=dedup_threshold, seed=seed)
    for batch in batches:
        labeller(batch)
        facts.add(batch)
    quality = facts.quality()
    tasks = np.frombuffer(facts.tasks, dtype=np.int_) if len(facts.tasks) else np.zeros(0, int)
    names = list(facts.task_names)
    tie_break = np.random.default_rng(seed).random(len(quality))
    order = np.lexsort((tie_break, -quality))
    if facts.bands is not None:
        keys = np.concatenate([np.zeros((0, facts.bands[0]), np.uint64), *facts.keys])
        duplicate = near_duplicates(keys, order)
    else:
        duplicate = np.zeros(len(quality), dtype=bool)
    candidates = order[~duplicate[order]]
    available = _task_counts(tasks[candidates], names)
    quotas = water_fill(available, size)
    by_task = {name: candidates[tasks[candidates] == t] for t, name in enumerate(names)}
    chosen = np.sort(
        np.concatenate([np.zeros(0, np.int64), *(by_task[t][: quotas[t]] for t in quotas)]).astype(
            np.int64
        )
    )
    before = Counter(_task_counts(tasks, names))
    after = Counter(_task_counts(tasks[chosen], names))
    return SelectionPlan(
        chosen=chosen,
        summary={
            "requested": size,
            "selected": len(chosen),
            "candidates": len(quality),
            "near_duplicates": int(duplicate.sum()),
            "short_of_budget": max(size - len(chosen), 0),
            "mean_quality_before": float(quality.mean()) if len(quality) else None,
            "mean_quality_after": float(quality[chosen].mean()) if len(chosen) else None,
            "tasks_before": dict(before.most_common()),
            "tasks_after": dict(after.most_common()),
            "quotas": quotas,
            "dedup_threshold": dedup_threshold,
            "seed": seed,
        },
    )


def _task_counts(tasks: np.ndarray, names: list[str]) -> dict[str, int]:
    """Samples per task name, tasks in order of first appearance in the input."""
    ids, counts = np.unique(tasks, return_counts=True)
    return {names[t]: int(n) for t, n in zip(ids.tolist(), counts.tolist(), strict=True)}


def select_to_budget(
    samples: list[Sample],
    *,
    size: int,
    dedup_threshold: float | None = 0.8,
    seed: int = 0,
    labeller: RuleTaskLabeller | None = None,
) -> SelectionResult:
    """`plan_selection` over samples in memory, returning the chosen samples."""
    plan = plan_selection(
        [samples], size=size, dedup_threshold=dedup_threshold, seed=seed, labeller=labeller
    )
    return SelectionResult(
        selected=[samples[i] for i in plan.chosen.tolist()], summary=plan.summary
    )
