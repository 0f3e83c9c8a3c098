"""The local runner: the reference semantics every other runner must reproduce."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from vlit.rundir import RunDir, StageWriter
from vlit.runners.base import Feed, RunnerSettings, Step
from vlit.schema import Sample


class LocalRunner:
    """The `Runner` of this process: samples are read, mapped and written shard by shard."""

    def __init__(self, settings: RunnerSettings | None = None) -> None:
        self.settings = settings or RunnerSettings()

    def map_stage(
        self,
        steps: Sequence[Step],
        run: RunDir,
        source: str,
        writer: StageWriter,
        *,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        for sample in run_stages(steps, run.read_samples(source), on_batch=on_batch):
            writer.add_rows([sample.to_row()])

    def fold(self, feed: Feed, run: RunDir, stage: str) -> None:
        """Read the stage shard by shard into ``feed``."""
        for index, shard in enumerate(run.read_sample_shards(stage)):
            feed.update_shard(shard, index)

    def describe(self) -> dict[str, Any] | None:
        """Nothing to say: the local runner is the default."""
        return None


def run_stages(
    stages: Sequence[Step],
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
    stages: Sequence[Step], batch: list[Sample], on_batch: Callable[[int], None] | None
) -> list[Sample]:
    size = len(batch)
    for stage in stages:
        batch = stage(batch)
    if on_batch is not None:
        on_batch(size)
    return batch
