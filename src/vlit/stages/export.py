"""The export stage: a sample stage of a run -> a dataset file (LLaVA, ShareGPT, MIMIC-IT,
paper, JSONL, Parquet).

`ExportSettings` holds `vlit export`'s options (export has no recipe section). The format
writers are `vlit.formats`; this module picks the stage, the images and the counts.

Example:
    >>> settings = ExportSettings(format="llava", out=Path("train.json"))
    >>> summary = run(RunDir("runs/demo"), settings)        # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from vlit.errors import ConfigError, InputFileError
from vlit.formats import FORMATS, export_samples
from vlit.formats.export_images import ExportImages
from vlit.generate.generator import ProgressCallback
from vlit.rundir import SAMPLE_STAGES, RunDir
from vlit.runlock import RunLockedError
from vlit.runners.base import Runner
from vlit.stages.base import Settings, Summary

T = TypeVar("T")


class ExportSettings(Settings):
    """What `vlit export` writes: ``stage`` None is ``kept`` if present, else the latest
    sample stage."""

    format: str
    out: Path
    stage: str | None = None
    include_failed: bool = False
    image_root: Path | None = None
    absolute_paths: bool = False
    allow_missing: bool = False
    skip_unsupported: bool = False


class ExportSummary(Summary):
    """The counts of one export (``run.json`` ``export``, ``vlit export --json``): the format
    writer's ``counts`` appear at the top level of the JSON."""

    format: str
    stage: str
    run: str
    counts: dict[str, Any]
    out: str

    def to_json(self) -> dict[str, Any]:
        data = super().to_json()
        counts = data.pop("counts")
        out = data.pop("out")
        return {**data, **counts, "out": out}


def default_sample_stage(run: RunDir) -> str:
    """``kept`` if the run has it, else its latest sample stage."""
    return "kept" if run.has_stage("kept") else run.latest_sample_stage()


def run(
    run: RunDir,
    settings: ExportSettings,
    runner: Runner | None = None,
    *,
    location: str | None = None,
    progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Write the chosen stage's samples to ``settings.out``; return the counts (also noted in
    ``run.json`` when no writer holds the run). Exports run in this process whatever the
    ``runner``. ``location`` names the run in the summary (default: its folder)."""
    chosen = settings.stage or default_sample_stage(run)
    if chosen not in SAMPLE_STAGES:
        raise ConfigError(
            f"unknown sample stage {chosen!r}", fix=f"use one of: {', '.join(SAMPLE_STAGES)}"
        )
    _, writer_class = FORMATS[settings.format]
    images = ExportImages(
        format_name=settings.format,
        image_root=settings.image_root,
        absolute_paths=settings.absolute_paths,
        allow_missing=settings.allow_missing,
        skip_unsupported=settings.skip_unsupported,
    )
    manifest = run.manifest(chosen)
    step = f"exporting {chosen} as {settings.format}"
    counts = export_samples(
        _counted(run.read_samples(chosen), progress, step, manifest.rows if manifest else None),
        settings.out,
        writer=writer_class(),
        include_failed=settings.include_failed,
        images=images,
    )
    summary = ExportSummary(
        format=settings.format,
        stage=chosen,
        run=location or str(run.root.resolve()),
        counts=counts,
        out=str(settings.out.resolve()),
    )
    # A note for later; skipped while a writer runs, or when run.json is damaged (the file is
    # written; the writers refuse that run.json and say how to repair it).
    with contextlib.suppress(RunLockedError, InputFileError), run.lock("vlit export"):
        summary.save(run, "export")
    return summary


def _counted(
    items: Iterable[T], progress: ProgressCallback | None, step: str, total: int | None
) -> Iterator[T]:
    for done, item in enumerate(items, start=1):
        yield item
        if progress is not None:
            progress(step, done, total)
