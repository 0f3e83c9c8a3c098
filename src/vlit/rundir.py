"""The run directory: Parquet shards per stage, summaries, completion markers.

Layout (see DESIGN.md)::

    RUN/
      run.json              # vlit version, creation time, per-stage summaries
      recipe.resolved.yaml  # the exact configuration of `vlit run`
      records/              # ImageRecord shards  (shard-00000.parquet, ...)
      samples/              # generated or imported samples
      scores/               # samples with their scores filled in
      kept/  dropped/       # filter output; dropped rows carry `drop_reason`
      images/               # images vlit made (region copies with a drawn box, demo photos)
      journal.sqlite        # every LLM request and answer
      completions/          # one marker per finished shard and stage

Example:
    >>> run = RunDir("runs/demo")
    >>> run.write_records(records)          # doctest: +SKIP
    >>> list(run.read_samples("samples"))   # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from vlit import __version__
from vlit.errors import InputFileError
from vlit.fileio import read_parquet_shard, write_parquet_atomic, write_text_atomic
from vlit.schema import RECORD_SCHEMA, SAMPLE_SCHEMA, ImageRecord, Sample

SAMPLE_STAGES = ("samples", "scores", "kept", "dropped")
DEFAULT_SHARD_SIZE = 5000


class RunDir:
    """A run directory on local disk (one on a URL is a `vlit.storage.StagedRunDir`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    @property
    def location(self) -> str:
        """Where the run lives, as a user names it (the URL of a staged run)."""
        return str(self.root)

    def location_of(self, name: str) -> str:
        """Where the run's file ``name`` (``/``-separated, relative to the run) lives."""
        return str(self.root / name)

    def push(self) -> int:
        """Nothing to do: a local run directory is its own home (see `vlit.storage`)."""
        return 0

    # -- paths -------------------------------------------------------------------------------
    @property
    def journal_path(self) -> Path:
        return self.root / "journal.sqlite"

    @property
    def images_dir(self) -> Path:
        return self.root / "images"

    @property
    def images_location(self) -> str:
        """Where samples find the images vlit made: ``images_dir`` made absolute (on a URL for a
        staged run, where other hosts can read them)."""
        return str(self.images_dir.absolute())

    @property
    def completions_dir(self) -> Path:
        return self.root / "completions"

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    def has_stage(self, stage: str) -> bool:
        return any(self.stage_dir(stage).glob("shard-*.parquet"))

    def latest_sample_stage(self) -> str:
        """The most processed stage with samples: ``scores`` if scored, else ``samples``."""
        for stage in ("scores", "samples"):
            if self.has_stage(stage):
                return stage
        raise InputFileError(
            "no samples in this run directory",
            file=self.location,
            fix="run `vlit generate` or `vlit import` into it first",
        )

    # -- shards ------------------------------------------------------------------------------
    def write_records(
        self, records: Iterable[ImageRecord], *, shard_size: int = DEFAULT_SHARD_SIZE
    ) -> int:
        return self._write_stage(
            "records", (r.to_row() for r in records), RECORD_SCHEMA, shard_size
        )

    def read_records(self) -> Iterator[ImageRecord]:
        for row in self._read_stage("records"):
            yield ImageRecord.from_row(row)

    def write_samples(
        self, stage: str, samples: Iterable[Sample], *, shard_size: int = DEFAULT_SHARD_SIZE
    ) -> int:
        return self._write_stage(stage, (s.to_row() for s in samples), SAMPLE_SCHEMA, shard_size)

    def read_samples(self, stage: str = "samples") -> Iterator[Sample]:
        for row in self._read_stage(stage):
            yield Sample.from_row(row)

    def write_shard(self, stage: str, index: int, samples: list[Sample]) -> Path:
        """Write one sample shard atomically (used by stages that resume shard by shard)."""
        directory = self.stage_dir(stage)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"shard-{index:05d}.parquet"
        table = pa.Table.from_pylist([s.to_row() for s in samples], schema=SAMPLE_SCHEMA)
        write_parquet_atomic(table, path)
        return path

    def _write_stage(
        self, stage: str, rows: Iterable[dict[str, Any]], schema: pa.Schema, shard_size: int
    ) -> int:
        directory = self.stage_dir(stage)
        directory.mkdir(parents=True, exist_ok=True)
        for old in directory.glob("shard-*.parquet"):
            old.unlink()
        count, index, batch = 0, 0, []
        for row in rows:
            batch.append(row)
            if len(batch) >= shard_size:
                write_parquet_atomic(
                    pa.Table.from_pylist(batch, schema=schema), _shard(directory, index)
                )
                count, index, batch = count + len(batch), index + 1, []
        if batch or index == 0:  # an empty stage still gets one (empty) shard
            write_parquet_atomic(
                pa.Table.from_pylist(batch, schema=schema), _shard(directory, index)
            )
            count += len(batch)
        return count

    def _read_stage(self, stage: str) -> Iterator[dict[str, Any]]:
        shards = sorted(self.stage_dir(stage).glob("shard-*.parquet"))
        if not shards:
            raise InputFileError(
                f"no '{stage}' shards found",
                file=self.location_of(stage),
                fix=f"check the run directory, or run the stage that writes '{stage}' first",
            )
        for shard in shards:
            fix = "delete the damaged shard and rerun the stage that wrote it"
            yield from read_parquet_shard(shard, fix=fix).to_pylist()

    # -- metadata ----------------------------------------------------------------------------
    def load_meta(self) -> dict[str, Any]:
        path = self.root / "run.json"
        if not path.exists():
            return {}
        return json.loads(path.read_text(encoding="utf-8"))

    def save_summary(self, stage: str, summary: dict[str, Any]) -> None:
        """Record a stage's counts in ``run.json`` (read by reports and by `vlit status`)."""
        meta = self.load_meta()
        meta.setdefault("vlit_version", __version__)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta.setdefault("summaries", {})[stage] = summary
        write_text_atomic(self.root / "run.json", json.dumps(meta, indent=2, sort_keys=True))

    def mark_complete(self, stage: str, shard: int) -> None:
        self.completions_dir.mkdir(parents=True, exist_ok=True)
        (self.completions_dir / f"{stage}-{shard:05d}").touch()

    def is_complete(self, stage: str, shard: int) -> bool:
        return (self.completions_dir / f"{stage}-{shard:05d}").exists()


def _shard(directory: Path, index: int) -> Path:
    return directory / f"shard-{index:05d}.parquet"
