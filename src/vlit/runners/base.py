"""The contract between the stages and the runners: per-sample steps, the runner that maps
them over a stage of a run, and mergeable dataset indicators.

A step loads what it needs in ``setup()`` (never in ``__init__``, so a Ray actor loads its model
once), maps a batch of samples to a batch of samples and counts what it did in ``counts``
(a runner sums its workers' counts into the step it was given). A step that filters marks
samples with ``drop_reason`` instead of removing them, so nothing is lost. Dataset indicators
are computed per batch with ``update``, combined with ``merge`` (partial results from blocks or
workers) and read with ``result``.

Example:
    >>> class Upper:
    ...     name = "upper"
    ...     resources = Resources()
    ...     def setup(self) -> None: ...
    ...     def __call__(self, batch): return batch
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, Self, runtime_checkable

from vlit.rundir import RunDir, StageWriter
from vlit.schema import Sample
from vlit.stages.base import Settings


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the Ray runner maps this to actor options."""

    cpus: float = 1.0
    gpus: float = 0.0
    concurrency: int = 1
    batch_size: int = 64
    uses_model: bool = False


@runtime_checkable
class Step(Protocol):
    """One per-sample transformation of a stage (lint, grounding, matching degree, judge)."""

    name: str
    resources: Resources
    counts: Counter[str]

    def setup(self) -> None: ...

    def __call__(self, batch: list[Sample]) -> list[Sample]: ...


class RunnerSettings(Settings):
    """Where the stages' per-sample steps and the report's streaming indicators run: this
    process, or Ray (the recipe's ``runner`` section)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None


class Feed(Protocol):
    """What a runner folds a stage into, shard by shard: the report's indicators
    (`IndicatorFeed`), its examples of dropped samples (`DroppedExamples`), the dataset
    lint's measures (`DatasetLintFeed`)."""

    def update_shard(self, shard: list[Sample], index: int) -> None: ...

    def merge(self, other: Self) -> None: ...


@runtime_checkable
class Runner(Protocol):
    """What a stage asks of a runner: every sample of stage ``source`` through ``steps``, in
    order, into ``writer``; afterwards each step's ``counts`` holds what every worker counted.
    ``on_batch(n)`` is told about each batch of n samples done (where the runner can tell).

    What the report asks of it: every shard of stage ``stage`` folded into ``feed``, a `Feed`
    that has seen nothing yet (``update_shard`` per shard with the shard's position in the
    stage, or copies updated apart and merged in shard order: the same result either way)."""

    settings: RunnerSettings

    def map_stage(
        self,
        steps: Sequence[Step],
        run: RunDir,
        source: str,
        writer: StageWriter,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None: ...

    def fold(self, feed: Feed, run: RunDir, stage: str) -> None: ...

    def describe(self) -> dict[str, Any] | None: ...


def build_runner(settings: RunnerSettings | None = None) -> Runner:
    """The runner ``settings`` name (default: this process)."""
    settings = settings or RunnerSettings()
    if settings.kind == "ray":
        from vlit.runners.ray_runner import RayRunner

        return RayRunner(settings)
    from vlit.runners.local import LocalRunner

    return LocalRunner(settings)


@runtime_checkable
class DatasetIndicator(Protocol):
    name: str

    def update(self, batch: list[Sample]) -> None: ...

    def merge(self, other: Self) -> None: ...

    def result(self) -> dict[str, Any]: ...
