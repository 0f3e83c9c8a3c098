"""The run directory: stages committed by a manifest, their lineage, and run summaries.

Layout (see DESIGN.md)::

    RUN/
      run.json              # vlit version, creation time, per-stage summaries
      recipe.resolved.yaml  # the exact configuration of `vlit run`
      records/              # ImageRecord shards + _manifest.json
      samples/              # generated or imported samples
      scores/               # samples with their scores filled in
      kept/  dropped/       # filter output; dropped rows carry `drop_reason`
      images/               # images vlit made (region copies with a drawn box, demo photos)
      journal.sqlite        # every LLM request and answer

**A stage is committed or absent.** A stage is written by a `StageWriter`: its shards get new
names (``shard-<write token>-00000.parquet``), and the stage changes only when its manifest
(``_manifest.json``: shards, row counts, schema version, the command and settings that made it,
the ids of the stages it was made from) is written, last and atomically. Readers read only what
a manifest lists, so a write killed midway leaves the previous version (or no stage) in place;
shards no manifest lists are deleted by the next commit. No folder is ever renamed, so this
holds on object storage too. Plain Parquet readers (pyarrow, pandas, duckdb) reading a committed
stage folder see exactly its shards (they skip files starting with ``_``).

**Lineage.** A stage's id is a digest of its content. Each manifest records the ids of the
stages it was made from; `RunDir.check_current` refuses a stage whose inputs have changed since,
naming both stages and the command that refreshes it.

Example:
    >>> run = RunDir("runs/demo")
    >>> run.write_samples("scores", scored, inputs=("samples",), settings={...})  # doctest: +SKIP
    >>> list(run.read_samples("scores"))     # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import os
import secrets
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlit import __version__
from vlit.errors import InputFileError, VlitError
from vlit.fileio import read_parquet_shard, write_parquet_atomic, write_text_atomic
from vlit.reasons import UNDECODABLE_ROW, Reason
from vlit.runlock import RunLock
from vlit.schema import RECORD_SCHEMA, SAMPLE_SCHEMA, ImageRecord, Sample

SAMPLE_STAGES = ("samples", "scores", "kept", "dropped", "selected")
DEFAULT_SHARD_SIZE = 5000
MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "vlit.stage/1"
#: Bumped when the columns of records or samples change incompatibly.
SCHEMA_VERSION = 1

#: The command that (re)writes each stage, for messages about missing or stale stages.
REFRESH_COMMAND = {
    "records": "vlit collect",
    "samples": "vlit generate (or vlit import)",
    "scores": "vlit score",
    "kept": "vlit filter",
    "dropped": "vlit filter",
    "selected": "vlit select",
}


class StaleStageError(InputFileError):
    """A stage was made from an older version of a stage it depends on."""


@dataclass(frozen=True)
class StageManifest:
    """What a committed stage holds and how it was made (``RUN/<stage>/_manifest.json``)."""

    stage: str
    id: str
    rows: int
    shards: list[dict[str, Any]]
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    command: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    complete: bool = True
    created: str = ""
    schema_version: int = SCHEMA_VERSION
    vlit_version: str = __version__

    def to_json(self) -> str:
        data = {"format": MANIFEST_FORMAT, **self.__dict__}
        return json.dumps(data, indent=1, sort_keys=True, default=str)

    @classmethod
    def from_file(cls, path: Path, stage: str) -> StageManifest:
        fix = f"run `{REFRESH_COMMAND.get(stage, 'the stage')}` again to rewrite the stage"
        data = _read_json(path, "the stage manifest", fix)
        if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
            raise InputFileError("not a vlit stage manifest", file=str(path), fix=fix)
        if data.get("schema_version") != SCHEMA_VERSION:
            raise InputFileError(
                f"stage written with schema version {data.get('schema_version')}, this vlit "
                f"reads version {SCHEMA_VERSION}",
                file=str(path),
                fix=fix,
            )
        known = set(cls.__dataclass_fields__)
        try:
            return cls(**{key: value for key, value in data.items() if key in known})
        except TypeError as error:
            raise InputFileError(
                f"damaged stage manifest ({error})", file=str(path), fix=fix
            ) from error


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

    def fetch(self, names: Sequence[str]) -> None:
        """Nothing to do: files another process wrote into a local run are already here."""

    def lock(self, command: str) -> RunLock:
        """The writer's lock of this run (see `vlit.runlock`); use it as a context manager.

        A damaged ``run.json`` is refused here, before the command does its work (every
        writer records its summary there at the end)."""
        self.load_meta()
        return RunLock(self.root, command=command, location=self.location)

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

    def stage_dir(self, stage: str) -> Path:
        return self.root / stage

    # -- committed stages ----------------------------------------------------------------------
    def manifest(self, stage: str) -> StageManifest | None:
        """The stage's manifest, or None when the stage was never committed."""
        path = self.stage_dir(stage) / MANIFEST_NAME
        if not path.exists():
            return None
        return StageManifest.from_file(path, stage)

    def has_stage(self, stage: str) -> bool:
        return self.manifest(stage) is not None

    def check_current(self, stage: str) -> StageManifest:
        """The stage's manifest, after checking that it and every stage it was made from were
        made from the current versions of their inputs; `StaleStageError` otherwise."""
        manifest = self._require(stage)
        pending, seen = [manifest], {stage}
        while pending:
            made = pending.pop()
            for name, used in made.inputs.items():
                current = self.manifest(name)
                if current is None or current.id != used.get("id"):
                    now = "is gone" if current is None else "has been rewritten since"
                    raise StaleStageError(
                        f"'{made.stage}' is stale: it was made from '{name}', which {now}",
                        file=self.location_of(made.stage),
                        fix=f"run `{REFRESH_COMMAND.get(made.stage, 'the stage')}` to refresh "
                        f"'{made.stage}' (or `vlit run RECIPE`, which refreshes what is stale)",
                    )
                if name not in seen:
                    seen.add(name)
                    pending.append(current)
        return manifest

    def is_up_to_date(self, stage: str, settings: dict[str, Any]) -> bool:
        """True when the stage is committed, complete, current, and made with ``settings``."""
        manifest = self.manifest(stage)
        if manifest is None or not manifest.complete:
            return False
        if manifest.settings != _plain(settings):
            return False
        try:
            self.check_current(stage)
        except StaleStageError:
            return False
        return True

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

    def _require(self, stage: str) -> StageManifest:
        manifest = self.manifest(stage)
        if manifest is not None:
            return manifest
        leftovers = list(self.stage_dir(stage).glob("shard-*.parquet"))
        problem = (
            f"'{stage}' holds {len(leftovers)} shard file(s) but no manifest: a write that did "
            "not finish, or a run directory made by an older vlit"
            if leftovers
            else f"no committed '{stage}' stage"
        )
        raise InputFileError(
            problem,
            file=self.location_of(stage),
            fix=f"run `{REFRESH_COMMAND.get(stage, 'the stage that writes it')}` first",
        )

    # -- writing -------------------------------------------------------------------------------
    def writer(
        self,
        stage: str,
        *,
        schema: pa.Schema = SAMPLE_SCHEMA,
        inputs: Sequence[str] = (),
        settings: dict[str, Any] | None = None,
        command: str | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> StageWriter:
        """A writer of a new version of ``stage`` made from the current ``inputs`` stages.

        It holds the run's lock (`vlit.runlock`) until it commits or aborts.
        """
        command = command if command is not None else _command_line()
        lock = self.lock(command)
        lock.acquire()
        try:
            used = {}
            for name in inputs:
                manifest = self._require(name)
                used[name] = {"id": manifest.id, "rows": manifest.rows}
        except BaseException:
            lock.release()
            raise
        return StageWriter(
            self,
            stage,
            schema=schema,
            inputs=used,
            settings=settings or {},
            command=command,
            shard_size=shard_size,
            lock=lock,
        )

    def write_records(
        self,
        records: Iterable[ImageRecord],
        *,
        settings: dict[str, Any] | None = None,
        command: str | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> int:
        writer = self.writer(
            "records",
            schema=RECORD_SCHEMA,
            settings=settings,
            command=command,
            shard_size=shard_size,
        )
        with writer:
            writer.add_rows(record.to_row() for record in records)
        return writer.rows

    def write_samples(
        self,
        stage: str,
        samples: Iterable[Sample],
        *,
        inputs: Sequence[str] = (),
        settings: dict[str, Any] | None = None,
        command: str | None = None,
        shard_size: int = DEFAULT_SHARD_SIZE,
    ) -> int:
        writer = self.writer(
            stage, inputs=inputs, settings=settings, command=command, shard_size=shard_size
        )
        with writer:
            writer.add_rows(sample.to_row() for sample in samples)
        return writer.rows

    # -- reading -------------------------------------------------------------------------------
    def read_records(self) -> Iterator[ImageRecord]:
        """The records; a row that cannot be decoded is a record with that problem noted."""
        for records in self.read_record_shards():
            yield from records

    def read_record_shards(self) -> Iterator[list[ImageRecord]]:
        """The records one shard at a time (as `read_records` decodes them)."""
        for path, table in self._checked_tables("records", _RECORD_COLUMNS):
            with _collector_paused():
                records = [
                    _record_from_row(row, path, i) for i, row in enumerate(table.to_pylist())
                ]
            yield records

    def read_samples(self, stage: str = "samples") -> Iterator[Sample]:
        """The stage's samples; a row that cannot be decoded is a failed sample saying why."""
        for samples in self.read_sample_shards(stage):
            yield from samples

    def read_sample_shards(self, stage: str) -> Iterator[list[Sample]]:
        """The stage's samples one shard at a time (memory bounded by the shard size)."""
        for shard in self.check_current(stage).shards:
            yield self.read_sample_shard(stage, shard["file"])

    def read_sample_shard(self, stage: str, file: str) -> list[Sample]:
        """The samples of ``file``, a shard the stage's manifest lists (not checked current
        here: a Ray worker reads its shard this way after the driver checked the stage)."""
        path, table = self._checked_table(stage, file, _SAMPLE_COLUMNS)
        return _decoded_samples(table, path)

    def read_sample_tables(
        self, stage: str, columns: Sequence[str]
    ) -> Iterator[tuple[pa.Table, list[Sample]]]:
        """Each shard as its Arrow table (``SAMPLE_SCHEMA``), with its samples decoded from
        ``columns`` only (the rest keep their defaults), for a stage that passes rows through
        without decoding what it does not read. A shard of another schema (an older vlit) is
        decoded whole and given back in ``SAMPLE_SCHEMA``."""
        for path, table in self._checked_tables(stage, _SAMPLE_COLUMNS):
            if not table.schema.equals(SAMPLE_SCHEMA):
                samples = self.read_sample_shard(stage, path.name)
                yield pa.Table.from_pylist([s.to_row() for s in samples], SAMPLE_SCHEMA), samples
                continue
            with _collector_paused():
                rows = table.select(list(columns)).to_pylist()
                yield table, [_sample_from_row(row, path, i) for i, row in enumerate(rows)]

    def _checked_tables(
        self, stage: str, required: tuple[str, ...]
    ) -> Iterator[tuple[Path, pa.Table]]:
        """(path, table) of each shard; a shard without the ``required`` columns is an
        `InputFileError` naming it."""
        for shard in self.check_current(stage).shards:
            yield self._checked_table(stage, shard["file"], required)

    def _checked_table(
        self, stage: str, file: str, required: tuple[str, ...]
    ) -> tuple[Path, pa.Table]:
        path = self.stage_dir(stage) / file
        table = self._shard_table(stage, file, None)
        _require_columns(table, required, str(path), stage)
        return path, table

    def read_columns(self, stage: str, columns: list[str]) -> Iterator[dict[str, list[Any]]]:
        """Only ``columns`` of the stage, one shard at a time (column name -> values)."""
        for table in self._tables(stage, columns):
            yield table.to_pydict()

    def read_shards(self, stage: str) -> Iterator[list[dict[str, Any]]]:
        """The rows of each shard the stage's manifest lists, after `check_current`."""
        for table in self._tables(stage, None):
            yield table.to_pylist()

    def _tables(self, stage: str, columns: list[str] | None) -> Iterator[pa.Table]:
        for shard in self.check_current(stage).shards:
            yield self._shard_table(stage, shard["file"], columns)

    def _shard_table(self, stage: str, file: str, columns: list[str] | None) -> pa.Table:
        path = self.stage_dir(stage) / file
        if not path.exists():
            raise InputFileError(
                "a shard the stage's manifest lists is missing", file=str(path), fix=_rerun(stage)
            )
        return read_parquet_shard(path, fix=_rerun(stage), columns=columns)

    # -- metadata ----------------------------------------------------------------------------
    def load_meta(self) -> dict[str, Any]:
        """``run.json``; a damaged one is an `InputFileError` naming it."""
        path = self.root / "run.json"
        if not path.exists():
            return {}
        fix = f"move {path} aside (it holds only summaries; the stages stay usable)"
        meta = _read_json(path, "the run's metadata", fix)
        if not isinstance(meta, dict) or not isinstance(meta.get("summaries", {}), dict):
            raise InputFileError("run.json is not a vlit run summary", file=str(path), fix=fix)
        return meta

    def save_summary(self, stage: str, summary: dict[str, Any]) -> None:
        """Record a stage's counts in ``run.json`` (read by reports and by `vlit status`)."""
        meta = self.load_meta()
        meta.setdefault("vlit_version", __version__)
        meta.setdefault("created", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        meta.setdefault("summaries", {})[stage] = summary
        write_text_atomic(self.root / "run.json", json.dumps(meta, indent=2, sort_keys=True))


class StageWriter:
    """Writes one new version of a stage: shards under new names, then the manifest.

    Use as a context manager: it commits when the block ends normally, and deletes its own
    shards when the block raises (the previous version of the stage stays as it was).
    `add_rows` (and `add_table`, for rows already in Arrow form) cut shards of ``shard_size``
    rows; `write_shard` writes one shard as given (a
    stage that maps input shards to output shards one to one).
    """

    def __init__(
        self,
        run: RunDir,
        stage: str,
        *,
        schema: pa.Schema,
        inputs: dict[str, dict[str, Any]],
        settings: dict[str, Any],
        command: str,
        shard_size: int,
        lock: RunLock,
    ) -> None:
        self.run = run
        self._lock = lock
        self.stage = stage
        self.schema = schema
        self.inputs = inputs
        self.settings = _plain(settings)
        self.command = command
        self.shard_size = shard_size
        self.complete = True
        self.rows = 0
        self.token = secrets.token_hex(4)
        self.directory = run.stage_dir(stage)
        self._shards: list[dict[str, Any]] = []
        self._pending: list[dict[str, Any]] = []
        self._tables: list[pa.Table] = []  # added by add_table, not yet written
        self._table_rows = 0
        self.manifest: StageManifest | None = None

    def add_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        self._flush_tables()  # tables added before keep their place
        for row in rows:
            self._pending.append(row)
            if len(self._pending) >= self.shard_size:
                self._flush()

    def add_table(self, table: pa.Table) -> None:
        """Rows already in the stage's schema, cut into shards like `add_rows`'s."""
        self._flush()
        self._tables.append(table)
        self._table_rows += table.num_rows
        if self._table_rows >= self.shard_size:
            whole = pa.concat_tables(self._tables)
            start = 0
            while whole.num_rows - start >= self.shard_size:
                self._write_table(whole.slice(start, self.shard_size))
                start += self.shard_size
            rest = whole.slice(start)
            self._tables, self._table_rows = [rest], rest.num_rows

    def write_shard(self, rows: list[dict[str, Any]]) -> None:
        self._flush()
        self._write(rows)

    def commit(self) -> StageManifest:
        """Write the manifest (the stage now exists) and delete shards it does not list."""
        self._flush()
        if not self._shards:  # an empty stage still has one (empty) shard for plain readers
            self._write([])
        digest = hashlib.blake2b(digest_size=12)
        for shard in self._shards:
            digest.update(f"{shard['rows']}:{shard['digest']};".encode())
        manifest = StageManifest(
            stage=self.stage,
            id=digest.hexdigest(),
            rows=self.rows,
            shards=self._shards,
            inputs=self.inputs,
            command=self.command,
            settings=self.settings,
            complete=self.complete,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        )
        write_text_atomic(self.directory / MANIFEST_NAME, manifest.to_json())
        listed = {shard["file"] for shard in self._shards}
        for path in self.directory.glob("shard-*.parquet"):
            if path.name not in listed:
                path.unlink(missing_ok=True)
        self.manifest = manifest
        self._lock.release()
        return manifest

    def adopt(self, name: str) -> None:
        """Add a shard that another process (a Ray worker) wrote into the stage folder, named
        ``shard-<this writer's token>-...``; shards are listed in the order adopted."""
        path = self.directory / name
        rows = pq.ParquetFile(path).metadata.num_rows
        self._shards.append({"file": name, "rows": rows, "digest": _file_digest(path)})
        self.rows += rows

    def abort(self) -> None:
        """Delete the shards this writer wrote; the committed version is untouched."""
        for shard in self._shards:
            (self.directory / shard["file"]).unlink(missing_ok=True)
        self._shards, self._pending, self._tables, self._table_rows = [], [], [], 0
        self._lock.release()

    def _flush(self) -> None:
        if self._pending:
            rows, self._pending = self._pending, []
            self._write(rows)
        self._flush_tables()

    def _flush_tables(self) -> None:
        if self._table_rows:
            self._write_table(pa.concat_tables(self._tables))
        self._tables, self._table_rows = [], 0

    def _write(self, rows: list[dict[str, Any]]) -> None:
        self._write_table(pa.Table.from_pylist(rows, schema=self.schema))

    def _write_table(self, table: pa.Table) -> None:
        name = f"shard-{self.token}-{len(self._shards):05d}.parquet"
        path = self.directory / name
        write_parquet_atomic(table.cast(self.schema), path)
        self._shards.append({"file": name, "rows": table.num_rows, "digest": _file_digest(path)})
        self.rows += table.num_rows

    def __enter__(self) -> StageWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


_RECORD_COLUMNS = ("image_id", "file_name")
_SAMPLE_COLUMNS = ("sample_id", "turns")


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """No cyclic garbage collection inside the block. Decoding a shard makes thousands of
    objects in no cycle, and each collection they would trigger walks every object alive."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def read_sample_file(path: str, stage: str, *, filesystem: Any = None) -> list[Sample]:
    """The samples of ``path``, one shard file of ``stage`` on the `pyarrow.fs` ``filesystem``
    (local by default): a Ray worker reads its shard this way, after the driver checked the
    stage current. A row that cannot be decoded is a failed sample saying why."""
    table = read_parquet_shard(path, fix=_rerun(stage), filesystem=filesystem)
    _require_columns(table, _SAMPLE_COLUMNS, path, stage)
    return _decoded_samples(table, Path(path))


def _rerun(stage: str) -> str:
    return f"rerun `{REFRESH_COMMAND.get(stage, 'the stage that wrote it')}`"


def _require_columns(table: pa.Table, required: tuple[str, ...], path: str, stage: str) -> None:
    """`InputFileError` naming ``path`` unless ``table`` has every ``required`` column."""
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise InputFileError(
            f"the shard lacks the column(s) {', '.join(missing)}: it is not a vlit {stage} shard",
            file=path,
            fix=_rerun(stage),
        )


def _decoded_samples(table: pa.Table, path: Path) -> list[Sample]:
    with _collector_paused():
        return [_sample_from_row(row, path, i) for i, row in enumerate(table.to_pylist())]


def _sample_from_row(row: dict[str, Any], path: Path, index: int) -> Sample:
    try:
        return Sample.from_row(row)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        sample_id = row.get("sample_id")
        return Sample(
            sample_id=str(sample_id) if sample_id is not None else f"{path.stem}-{index}",
            failure_reason=Reason(
                UNDECODABLE_ROW,
                f"stored row {index} of {path.name} cannot be decoded "
                f"({type(error).__name__}: {error})",
            ),
        )


def _record_from_row(row: dict[str, Any], path: Path, index: int) -> ImageRecord:
    try:
        return ImageRecord.from_row(row)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        image_id, file_name = row.get("image_id"), row.get("file_name")
        return ImageRecord(
            image_id=str(image_id) if image_id is not None else f"{path.stem}-{index}",
            file_name=str(file_name or ""),
            problems=[
                f"undecodable_row: row {index} of {path.name} ({type(error).__name__}: {error})"
            ],
        )


def _read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON value in ``path``; an unreadable file is an `InputFileError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as error:
        raise InputFileError(
            f"cannot read {what} ({type(error).__name__})", file=str(path), fix=fix
        ) from error


def _file_digest(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _plain(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` as JSON would give them back (tuples as lists, paths as strings)."""
    try:
        text = json.dumps(settings, sort_keys=True, default=_json_default)
        plain: dict[str, Any] = json.loads(text)
    except (TypeError, ValueError) as error:
        raise VlitError(f"stage settings are not JSON-serialisable ({error})") from error
    return plain


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def _command_line() -> str:
    """The command being run, by name only (``vlit score``): its options may hold secrets such
    as header values, and the settings are recorded apart."""
    name = next((word for word in sys.argv[1:] if not word.startswith("-")), "")
    return f"vlit {name}".strip()
