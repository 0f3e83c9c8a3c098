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

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlit.errors import ConfigError
from vlit.quality.indicators.labels import RuleTaskLabeller
from vlit.quality.indicators.scores import CORRECT_KEY, HALLUCINATION_KEYS, MD_KEY
from vlit.quality.indicators.text import conversation_text
from vlit.schema import Sample

_WORD = re.compile(r"\w+")


@dataclass
class SelectionResult:
    selected: list[Sample]
    summary: dict[str, Any] = field(default_factory=dict)


def quality_scores(samples: list[Sample]) -> np.ndarray:
    """Quality in [0, 1] per sample (see the module docstring)."""
    md_positions = [i for i, s in enumerate(samples) if MD_KEY in s.scores]
    md_rank = np.zeros(len(samples))
    if md_positions:
        values = np.array([samples[i].scores[MD_KEY] for i in md_positions])
        ranks = values.argsort(kind="stable").argsort(kind="stable")
        md_rank[md_positions] = (ranks + 1) / len(md_positions)
    md_present = set(md_positions)
    quality = np.full(len(samples), 0.5)
    for i, sample in enumerate(samples):
        parts = []
        if i in md_present:
            parts.append(md_rank[i])
        if CORRECT_KEY in sample.scores:
            parts.append(float(np.clip(sample.scores[CORRECT_KEY], 0.0, 1.0)))
        for key in HALLUCINATION_KEYS:
            if key in sample.scores:
                parts.append(1.0 - float(np.clip(sample.scores[key], 0.0, 1.0)))
                break
        if parts:
            quality[i] = float(np.mean(parts))
    return quality


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


def near_duplicates(
    samples: list[Sample], order: np.ndarray, *, threshold: float, seed: int
) -> set[int]:
    """Indices of samples that duplicate a better one (``order`` = best first)."""
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    duplicates: set[int] = set()
    for index in order.tolist():
        signature = MinHash(num_perm=128, seed=seed)
        signature.update_batch(list(_shingles(conversation_text(samples[index]))))
        if lsh.query(signature):
            duplicates.add(index)
        else:
            lsh.insert(str(index), signature)
    return duplicates


def select_to_budget(
    samples: list[Sample],
    *,
    size: int,
    dedup_threshold: float | None = 0.8,
    seed: int = 0,
    labeller: RuleTaskLabeller | None = None,
) -> SelectionResult:
    """Pick ``size`` samples (see the module docstring); sets ``labels`` on every sample."""
    if size <= 0:
        raise ConfigError(f"selection size must be positive, got {size}", fix="pass --size N > 0")
    (labeller or RuleTaskLabeller())(samples)
    quality = quality_scores(samples)
    tie_break = np.random.default_rng(seed).random(len(samples))
    order = np.lexsort((tie_break, -quality))
    duplicates = (
        near_duplicates(samples, order, threshold=dedup_threshold, seed=seed)
        if dedup_threshold is not None
        else set()
    )
    by_task: dict[str, list[int]] = {}
    for index in order.tolist():
        if index not in duplicates:
            by_task.setdefault(samples[index].labels[0], []).append(index)
    available = {task: len(indices) for task, indices in by_task.items()}
    quotas = water_fill(available, size)
    chosen = sorted(i for task, indices in by_task.items() for i in indices[: quotas[task]])
    selected = [samples[i] for i in chosen]
    before = Counter(s.labels[0] for s in samples)
    after = Counter(s.labels[0] for s in selected)
    return SelectionResult(
        selected=selected,
        summary={
            "requested": size,
            "selected": len(selected),
            "candidates": len(samples),
            "near_duplicates": len(duplicates),
            "short_of_budget": max(size - len(selected), 0),
            "mean_quality_before": float(quality.mean()) if len(samples) else None,
            "mean_quality_after": float(quality[chosen].mean()) if chosen else None,
            "tasks_before": dict(before.most_common()),
            "tasks_after": dict(after.most_common()),
            "quotas": quotas,
            "dedup_threshold": dedup_threshold,
            "seed": seed,
        },
    )
