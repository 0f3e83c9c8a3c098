"""Atomic file writes and checked Parquet reads shared by every part of vlit.

Every writer goes through :func:`atomic_output`: the data lands in ``<name>.tmp`` next to the
target and is renamed over it only once it is complete, so an interrupted run never leaves a
half-written file under the real name (a rerun simply overwrites the leftover ``.tmp``).

Example::

    write_text_atomic(run_root / "notes.txt", "done\\n")
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlit.errors import InputFileError


@contextlib.contextmanager
def atomic_output(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open ``path.tmp`` for writing; on success rename it over ``path``, on error delete it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    encoding = None if "b" in mode else "utf-8"
    try:
        with open(tmp, mode, encoding=encoding) as handle:
            yield handle
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (creating its folder)."""
    with atomic_output(path) as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (creating its folder)."""
    with atomic_output(path, "wb") as handle:
        handle.write(data)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` as one Parquet file at ``path`` atomically (creating its folder)."""
    with atomic_output(path, "wb") as handle:
        pq.write_table(table, handle)


def read_parquet_shard(
    shard: str | Path, *, fix: str, columns: list[str] | None = None, filesystem: Any = None
) -> pa.Table:
    """Read one Parquet shard (or only ``columns`` of it; on the `pyarrow.fs` ``filesystem``,
    local by default); a damaged file raises InputFileError naming it and ``fix``."""
    try:
        return pq.read_table(shard, columns=columns, filesystem=filesystem)
    except (OSError, pa.ArrowInvalid) as error:
        raise InputFileError(
            f"cannot read Parquet shard ({error})", file=str(shard), fix=fix
        ) from error
