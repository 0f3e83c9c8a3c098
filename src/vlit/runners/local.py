"""The local runner: the reference semantics every other runner must reproduce."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence

from vlit.runners.base import DatasetIndicator, Stage
from vlit.schema import Sample


def run_stages(
    stages: Sequence[Stage],
    samples: Iterable[Sample],
    *,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[Sample]:
    """Run ``stages`` in order over ``samples``, batch by batch, in this process.

    Each stage's ``setup()`` is called once before the first batch. ``on_batch(n)`` is called
    after each input batch of n samples has gone through every stage (for progress bars).
    """
    for stage in stages:
        stage.setup()
    batch_size = min((stage.resources.batch_size for stage in stages), default=256)
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= batch_size:
            yield from _through(stages, batch, on_batch)
            batch = []
    if batch:
        yield from _through(stages, batch, on_batch)


def _through(
    stages: Sequence[Stage], batch: list[Sample], on_batch: Callable[[int], None] | None
) -> list[Sample]:
    size = len(batch)
    for stage in stages:
        batch = stage(batch)
    if on_batch is not None:
        on_batch(size)
    return batch


def compute_indicators(
    indicators: Sequence[DatasetIndicator], samples: Iterable[Sample], *, batch_size: int = 1024
) -> dict[str, dict[str, object]]:
    """Feed samples to each indicator in batches and return ``{name: result}``."""
    batch: list[Sample] = []
    for sample in samples:
        batch.append(sample)
        if len(batch) >= batch_size:
            for indicator in indicators:
                indicator.update(batch)
            batch = []
    if batch:
        for indicator in indicators:
            indicator.update(batch)
    return {indicator.name: indicator.result() for indicator in indicators}
