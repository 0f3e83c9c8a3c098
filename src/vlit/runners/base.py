"""The stage contract every runner executes, and mergeable dataset indicators.

A stage loads what it needs in ``setup()`` (never in ``__init__``, so a Ray actor loads its model
once) and maps a batch of samples to a batch of samples. A stage that filters marks samples with
``drop_reason`` instead of removing them, so nothing is lost. Dataset indicators are computed
per batch with ``update``, combined with ``merge`` (partial results from blocks or workers) and
read with ``result``.

Example:
    >>> class Upper:
    ...     name = "upper"
    ...     resources = Resources()
    ...     def setup(self) -> None: ...
    ...     def __call__(self, batch): return batch
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, Self, runtime_checkable

from vlit.schema import Sample


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the Ray runner maps this to actor options."""

    cpus: float = 1.0
    gpus: float = 0.0
    concurrency: int = 1
    batch_size: int = 64
    uses_model: bool = False


@runtime_checkable
class Stage(Protocol):
    name: str
    resources: Resources

    def setup(self) -> None: ...

    def __call__(self, batch: list[Sample]) -> list[Sample]: ...


@runtime_checkable
class DatasetIndicator(Protocol):
    name: str

    def update(self, batch: list[Sample]) -> None: ...

    def merge(self, other: Self) -> None: ...

    def result(self) -> dict[str, Any]: ...
