"""`vlit import`, `vlit export`, `vlit cat`: datasets in and out of a run directory."""

from __future__ import annotations

import itertools
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from vlit.cli.common import console, emit_summary, step_progress, track
from vlit.cli.edge import check_output_file
from vlit.errors import ConfigError, InputFileError
from vlit.formats import (
    FORMAT_NAMES,
    FORMATS,
    DatasetImporter,
    check_format_name,
    detect_format,
)
from vlit.formats.jsonl import sample_to_json
from vlit.images import is_url
from vlit.rundir import SAMPLE_STAGES, RunDir
from vlit.stages import export as export_stage
from vlit.stages.export import ExportSettings, default_sample_stage
from vlit.storage import open_run_dir

_LATER_STAGES = ("scores", "kept", "dropped")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("import")(import_command)
    app.command("export")(export_command)
    app.command("cat")(cat_command)


def import_command(
    file: Annotated[Path, typer.Argument(help="The dataset file to read.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to write samples/ into.")],
    format_name: Annotated[
        str, typer.Option("--format", help=f"auto, or one of: {', '.join(FORMAT_NAMES)}.")
    ] = "auto",
    images: Annotated[
        str | None,
        typer.Option(
            "--images",
            help="Image folder the dataset's image paths are relative to (default: the file's "
            "folder), or its URL on object storage (s3://bucket/coco/train2017, gs://...). For "
            "mimicit: the images Parquet (default: X_images.parquet beside X_instructions.json).",
        ),
    ] = None,
    verify_images: Annotated[
        bool,
        typer.Option("--verify-images", help="Decode every image header (default: existence)."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the samples of a run that has some.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Bring an existing dataset into a run directory (for scoring, filtering, export)."""
    check_format_name(format_name, ("auto", *FORMAT_NAMES))
    name = detect_format(file) if format_name == "auto" else format_name
    run = RunDir(out)
    if run.has_stage("samples") and not overwrite:
        raise ConfigError(
            f"{out} already has samples",
            fix="choose a new --out, or pass --overwrite to replace them",
        )
    if images is not None:
        _check_images_option(images, name, verify_images)
    reader_class, _ = FORMATS[name]
    importer = DatasetImporter(
        reader=reader_class(),
        images=images if images is None or is_url(images) else Path(images).resolve(),
        workdir=(run.images_dir / f"import-{name}").resolve(),
        verify_images=verify_images,
    )
    samples = importer.samples(file)
    first = list(itertools.islice(samples, 1))  # file-level errors surface before writing
    written = run.write_samples(
        "samples",
        track(itertools.chain(first, samples), f"importing {file.name} ({name})"),
        settings={"format": name, "file": str(file.resolve()), "images": str(images)},
    )
    summary: dict[str, Any] = {
        "format": name,
        "file": str(file.resolve()),
        "out": str(run.root.resolve()),
        "verify_images": verify_images,
        **importer.summary(),
    }
    summary["samples"] = written
    stale = [stage for stage in _LATER_STAGES if run.has_stage(stage)]
    if stale:
        summary["stale_stages"] = stale
        console.print(
            f"note: {', '.join(stale)} in {out} came from the samples "
            "replaced now; rerun those stages",
            highlight=False,
        )
    run.save_summary("import", summary)
    emit_summary("vlit import", summary, as_json=as_json)


def export_command(
    run_path: Annotated[
        str, typer.Argument(metavar="RUN", help="The run directory (a path or a URL).")
    ],
    format_name: Annotated[
        str, typer.Option("--format", help=f"One of: {', '.join(FORMAT_NAMES)}.")
    ],
    out: Annotated[Path, typer.Option("--out", help="The file to write.")],
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            help=f"One of: {', '.join(SAMPLE_STAGES)} (default: kept if present, else the "
            "latest sample stage).",
        ),
    ] = None,
    include_failed: Annotated[
        bool,
        typer.Option("--include-failed", help="Also write samples that have a failure reason."),
    ] = False,
    image_root: Annotated[
        Path | None,
        typer.Option(
            "--image-root",
            help="Gather the images under this folder (hard links where possible, one "
            "sub-folder per source folder) and write paths relative to it: the folder to give "
            "LLaVA's --image_folder or LLaMA-Factory's media_dir.",
        ),
    ] = None,
    absolute_paths: Annotated[
        bool,
        typer.Option("--absolute-paths", help="Write absolute image paths (llava, sharegpt)."),
    ] = False,
    allow_missing: Annotated[
        bool,
        typer.Option(
            "--allow-missing",
            help="Write samples whose image is missing without it (counted) instead of failing.",
        ),
    ] = False,
    skip_unsupported: Annotated[
        bool,
        typer.Option(
            "--skip-unsupported",
            help="Leave out (and count) samples the format cannot hold, e.g. several images in "
            "paper, instead of failing.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Write a run's samples as a dataset file.

    Image paths are relative to one folder, named in the summary as image_root; parquet and
    mimicit embed the images. Missing images fail the export (exit 2) unless --allow-missing.
    """
    settings = ExportSettings(
        format=_format(format_name),
        out=out,
        stage=stage,
        include_failed=include_failed,
        image_root=image_root,
        absolute_paths=absolute_paths,
        allow_missing=allow_missing,
        skip_unsupported=skip_unsupported,
    )
    check_output_file(out, "--out")
    if not is_url(run_path):
        _existing_run(Path(run_path))
    with open_run_dir(run_path) as run, step_progress() as progress:
        location = run.location if is_url(run_path) else None
        summary = export_stage.run(run, settings, location=location, progress=progress)
    emit_summary("vlit export", summary.to_json(), as_json=as_json)


def cat_command(
    run_path: Annotated[Path, typer.Argument(metavar="RUN", help="The run directory.")],
    stage: Annotated[
        str | None,
        typer.Option(
            "--stage",
            help=f"records, or one of: {', '.join(SAMPLE_STAGES)} (default: kept if present, "
            "else the latest sample stage, else records).",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", min=0, help="Print at most this many.")
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option("--json", help='Print one JSON object {"stage", "count", "rows"} instead.'),
    ] = False,
) -> None:
    """Print a stage of a run as JSON lines, one record or sample per line."""
    run = _existing_run(run_path)
    chosen = stage or _default_stage(run)
    if chosen != "records" and chosen not in SAMPLE_STAGES:
        raise ConfigError(
            f"unknown stage {chosen!r}", fix=f"use records or one of: {', '.join(SAMPLE_STAGES)}"
        )
    rows: Iterator[dict[str, Any]] = (
        (record.to_row() for record in run.read_records())
        if chosen == "records"
        else (sample_to_json(sample) for sample in run.read_samples(chosen))
    )
    if as_json:
        chosen_rows = list(itertools.islice(rows, limit))
        document = {"stage": chosen, "count": len(chosen_rows), "rows": chosen_rows}
        sys.stdout.write(json.dumps(document, ensure_ascii=False) + "\n")
        return
    try:
        for row in itertools.islice(rows, limit):
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:  # `vlit cat RUN | head`: the reader left, which is fine
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _check_images_option(given: str, name: str, verify_images: bool) -> None:
    if is_url(given):
        if name in ("mimicit", "paper"):
            raise ConfigError(
                f"--images of a {name} import must be a local file or folder, not a URL",
                fix="download it, or pass a mount of the bucket",
            )
        if verify_images:
            raise ConfigError(
                "--verify-images decodes every image here; with images at a URL it is not offered",
                fix="drop --verify-images: `vlit score` decodes the images and records the "
                "unreadable ones",
            )
        return
    images = Path(given)
    if name == "mimicit":
        if not images.is_file():
            raise InputFileError(
                "--images of a MIMIC-IT import must be its images Parquet (or images JSON)",
                file=str(images),
                fix="pass the X_images.parquet that goes with the instructions file",
            )
    elif not images.is_dir():
        raise InputFileError(
            "--images must be the folder the image paths are relative to",
            file=str(images),
            fix="pass an existing folder",
        )


def _format(name: str) -> str:
    return check_format_name(name, FORMAT_NAMES)


def _existing_run(path: Path) -> RunDir:
    if not path.is_dir():
        raise InputFileError(
            "run directory not found", file=str(path), fix="pass the --out of `vlit import`"
        )
    return RunDir(path)


def _default_stage(run: RunDir) -> str:
    if run.has_stage("kept") or run.has_stage("scores") or run.has_stage("samples"):
        return default_sample_stage(run)
    if run.has_stage("records"):
        return "records"
    raise InputFileError(
        "nothing to print: the run directory has no records or samples",
        file=str(run.root),
        fix="run `vlit collect` or `vlit import` into it first",
    )
