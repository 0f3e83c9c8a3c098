"""Filters: each answers keep or drop-with-a-reason; the base class does the counting.

Like datatrove's filters: ``SampleFilter.apply(sample)`` calls ``keep(sample)``, which returns
``True``, ``UNSCORED`` or the drop `Reason`; counts are ``total``, ``kept`` and
``dropped_<reason code>`` (plus ``kept_unscored`` for samples the filter cannot judge, e.g. no
MD score: they are kept, never silently treated as bad). ``FilterSequence`` runs filters in
order; the first drop wins and is written to ``sample.drop_reason``. Thresholds may be fixed or
a quantile of the run's own score distribution (``QuantileThreshold``), resolved on the scored
samples before filtering.

Example:
    >>> filters = FilterSequence([FailedGenerationFilter(), MinScoreFilter(score="md", minimum=9)])
    >>> kept, dropped = filters.split(samples)          # doctest: +SKIP
    >>> filters.summary()["md_min"]["dropped_md_below_min"]  # doctest: +SKIP
    12
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Literal

import numpy as np

from vlit.errors import ConfigError
from vlit.reasons import Reason
from vlit.schema import Sample


class _Unscored(Enum):
    UNSCORED = "unscored"


UNSCORED = _Unscored.UNSCORED
"""What ``keep`` answers for a sample the filter cannot judge (kept, and counted)."""

Verdict = Literal[True] | _Unscored | Reason


class SampleFilter:
    """Base class: subclasses set ``name`` and implement ``keep``."""

    name = "filter"

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def keep(self, sample: Sample) -> Verdict:
        """``True`` to keep, ``UNSCORED`` to keep a sample this filter cannot judge, else the
        drop reason."""
        raise NotImplementedError

    def apply(self, sample: Sample) -> Reason | None:
        """Count and return the drop reason, or None if kept."""
        self.counts["total"] += 1
        verdict = self.keep(sample)
        if not isinstance(verdict, Reason):
            self.counts["kept"] += 1
            if verdict is UNSCORED:
                self.counts["kept_unscored"] += 1
            return None
        self.counts[f"dropped_{verdict.code}"] += 1
        return verdict


class FailedGenerationFilter(SampleFilter):
    """Samples whose generation failed go to ``dropped`` with ``generation_failed: <why>``."""

    name = "generation"

    def keep(self, sample: Sample) -> Verdict:
        return True if sample.ok else Reason("generation_failed", str(sample.failure_reason))


@dataclass(frozen=True)
class QuantileThreshold:
    """A threshold given as the ``quantile`` (0..1) of the run's own values of a score."""

    quantile: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.quantile <= 1.0:
            raise ConfigError(
                f"quantile {self.quantile} is outside [0, 1]",
                fix="pass a share such as 0.1 for the lowest tenth",
            )

    def resolve(self, samples: Iterable[Sample], score: str) -> float:
        """The quantile of ``score`` over the samples generated correctly."""
        return self.of_values(
            [s.scores[score] for s in samples if s.ok and score in s.scores], score
        )

    def of_values(self, values: Sequence[float], score: str) -> float:
        if not values:
            raise ConfigError(
                f"no sample has a '{score}' score, so its quantile is undefined",
                fix="run `vlit score` with the scorer that writes it, or drop this option",
            )
        return float(np.quantile(np.asarray(values), self.quantile))


@dataclass
class ScoreValues:
    """What thresholds are resolved on, gathered in one pass over a stage: the values of the
    ``kept_scores`` over the samples generated correctly, and the names of every score present.
    """

    kept_scores: tuple[str, ...] = ("md",)
    values: dict[str, list[float]] = field(default_factory=dict)
    present: set[str] = field(default_factory=set)

    def add(self, scores: dict[str, float], *, ok: bool) -> None:
        self.present.update(scores)
        if ok:
            for name in self.kept_scores:
                if name in scores:
                    self.values.setdefault(name, []).append(scores[name])

    @classmethod
    def of_samples(cls, samples: Iterable[Sample]) -> ScoreValues:
        gathered = cls()
        for sample in samples:
            gathered.add(sample.scores, ok=sample.ok)
        return gathered


class MinScoreFilter(SampleFilter):
    """Drop samples whose ``score`` is below ``minimum`` (``<score>_below_min``)."""

    def __init__(self, *, score: str, minimum: float) -> None:
        super().__init__()
        self.score, self.minimum = score, minimum
        self.name = f"{score}_min"

    def keep(self, sample: Sample) -> Verdict:
        if self.score not in sample.scores:
            return UNSCORED
        value = sample.scores[self.score]
        return True if value >= self.minimum else Reason(f"{self.score}_below_min", f"{value:.4g}")


class MaxScoreFilter(SampleFilter):
    """Drop samples whose ``score`` is above ``maximum`` (``reason`` names it)."""

    def __init__(self, *, score: str, maximum: float, reason: str | None = None) -> None:
        super().__init__()
        self.score, self.maximum = score, maximum
        self.reason = reason or f"{score}_above_max"
        self.name = f"{score}_max"

    def keep(self, sample: Sample) -> Verdict:
        if self.score not in sample.scores:
            return UNSCORED
        value = sample.scores[self.score]
        return True if value <= self.maximum else Reason(self.reason, f"{value:.4g}")


class RequireCorrectFilter(SampleFilter):
    """Drop samples the judge found incorrect; samples not judged are kept (and counted)."""

    name = "correctness"

    def keep(self, sample: Sample) -> Verdict:
        if "correct" not in sample.scores:
            return UNSCORED
        if sample.scores["correct"] >= 1.0:
            return True
        share = sample.scores.get("correct_share", 0.0)
        return Reason("incorrect", f"{share:.2f} of the valid votes said correct")


class LintFilter(SampleFilter):
    """Drop samples raising any of ``flags`` (``lint_<flag>``); ``all`` means every flag."""

    name = "lint"

    def __init__(self, *, flags: Iterable[str]) -> None:
        from vlit.quality.lint import LINT_FLAGS

        super().__init__()
        wanted = list(flags)
        if wanted == ["all"]:
            wanted = list(LINT_FLAGS)
        unknown = sorted(set(wanted) - set(LINT_FLAGS))
        if unknown:
            raise ConfigError(
                f"unknown lint flag(s): {', '.join(unknown)}",
                fix=f"use 'all' or some of: {', '.join(LINT_FLAGS)}",
            )
        self.flags = tuple(wanted)

    def keep(self, sample: Sample) -> Verdict:
        if "lint_flags" not in sample.scores:
            return UNSCORED
        for flag in self.flags:
            if sample.scores.get(f"lint_{flag}", 0.0) > 0:
                return Reason(f"lint_{flag}")
        return True


class FilterSequence:
    """Filters in order; the first that drops a sample sets its ``drop_reason``."""

    def __init__(self, filters: Sequence[SampleFilter]) -> None:
        self.filters = list(filters)

    def split(self, samples: Iterable[Sample]) -> tuple[list[Sample], list[Sample]]:
        kept: list[Sample] = []
        dropped: list[Sample] = []
        for sample in samples:
            sample.drop_reason = None
            for step in self.filters:
                reason = step.apply(sample)
                if reason is not None:
                    sample.drop_reason = reason
                    break
            (dropped if sample.drop_reason else kept).append(sample)
        return kept, dropped

    def summary(self) -> dict[str, dict[str, int]]:
        return {step.name: dict(step.counts) for step in self.filters}
