"""Task diversity (T) and balance: how many tasks, and how evenly the samples spread over them.

Per-task counts are multi-label (a sample counts once for each of its labels). ``other`` (the
rule labeller's "no rule matched") and unlabelled samples are counted and reported but are not
tasks: they count neither towards T nor towards balance.

**Balance (the paper's figure)**: the population variance of the per-task *shares in percent*
(``100 * count / total``). The paper's values (10.5 to 16.8 for 9 or 10 tasks) cannot be
variances of raw counts of 158K samples (those are of order 10^7); as variances of percentage
shares they mean a standard deviation of 3.2 to 4.1 percentage points around a mean share of
10 to 11 %, which fits datasets of that kind. The figure does not depend on the dataset size,
so datasets of different sizes compare. Beside it we report the sample variance of the shares,
the variance of the raw counts, the coefficient of variation of the counts (std / mean) and the
normalised entropy of the shares (1 = perfectly even, lower is less even).

Example:
    >>> indicator = TaskDistributionIndicator()
    >>> indicator.update([Sample("a", labels=["counting"]), Sample("b", labels=["ocr"])])
    >>> indicator.result()["task_diversity"]
    2
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any, Self

import numpy as np

from vlit.quality.indicators.labels import OTHER
from vlit.schema import Sample


def balance_statistics(counts: dict[str, int]) -> dict[str, float | None]:
    """Balance figures of per-task counts (see the module docstring)."""
    values = np.array([c for c in counts.values() if c > 0], dtype=np.float64)
    if values.size == 0:
        return {
            "share_variance": None,
            "share_variance_sample": None,
            "count_variance": None,
            "coefficient_of_variation": None,
            "normalised_entropy": None,
        }
    shares = 100.0 * values / values.sum()
    probabilities = values / values.sum()
    entropy = float(-(probabilities * np.log(probabilities)).sum())
    return {
        "share_variance": float(shares.var()),
        "share_variance_sample": float(shares.var(ddof=1)) if values.size > 1 else None,
        "count_variance": float(values.var()),
        "coefficient_of_variation": float(values.std() / values.mean()),
        "normalised_entropy": entropy / math.log(values.size) if values.size > 1 else 1.0,
    }


class TaskDistributionIndicator:
    """Per-task sample counts from ``sample.labels``; task diversity T and balance."""

    name = "tasks"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.samples = 0
        self.unlabelled = 0

    def update(self, batch: list[Sample]) -> None:
        for sample in batch:
            self.samples += 1
            if not sample.labels:
                self.unlabelled += 1
            self.counts.update(set(sample.labels))

    def merge(self, other: Self) -> None:
        self.counts.update(other.counts)
        self.samples += other.samples
        self.unlabelled += other.unlabelled

    def task_counts(self) -> dict[str, int]:
        return {task: n for task, n in self.counts.most_common() if task != OTHER}

    def result(self) -> dict[str, Any]:
        tasks = self.task_counts()
        return {
            "task_diversity": len(tasks),
            "task_counts": tasks,
            "other_samples": self.counts.get(OTHER, 0),
            "unlabelled_samples": self.unlabelled,
            "samples": self.samples,
            "balance": balance_statistics(tasks),
        }
