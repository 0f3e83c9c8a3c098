"""`vlit collect coco`, `vlit collect jsonl` and `vlit clue`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import TaskID

from vlit.cli.common import emit_summary, progress_bar
from vlit.clue import region_clue, visual_clue
from vlit.errors import ConfigError
from vlit.rundir import RunDir
from vlit.schema import ImageRecord
from vlit.stages.collect import CocoSource, JsonlSource, collect_source, write_source
from vlit.storage import open_run_dir

collect_app = typer.Typer(
    help="Collect image records from annotation files into a run directory.",
    no_args_is_help=True,
)

#: Counters always shown in the table for people (the rest only when not zero).
_HEADLINE = ("images", "captions", "objects", "vqa", "ocr", "attributes")
#: Skipped JSONL lines listed in the table for people.
_SHOWN_SKIPS = 5


@collect_app.command("coco")
def collect_coco(
    images: Annotated[
        str, typer.Option("--images", help="Folder holding the image files (or an s3:// URL).")
    ],
    captions: Annotated[str, typer.Option("--captions", help="COCO captions JSON.")],
    out: Annotated[
        str, typer.Option("--out", help="Run directory to write records/ into (or a URL).")
    ],
    instances: Annotated[
        str | None, typer.Option("--instances", help="COCO instances JSON.")
    ] = None,
    vqa_questions: Annotated[
        str | None,
        typer.Option("--vqa-questions", help="VQA v2 questions JSON (with --vqa-annotations)."),
    ] = None,
    vqa_annotations: Annotated[
        str | None,
        typer.Option("--vqa-annotations", help="VQA v2 annotations JSON (with --vqa-questions)."),
    ] = None,
    coco_text: Annotated[
        str | None,
        typer.Option("--coco-text", help="COCO-Text JSON: COCO_Text.json or the results format."),
    ] = None,
    attributes: Annotated[
        str | None,
        typer.Option("--attributes", help="Attributes JSON: COCO Attributes, simple or VG style."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Join COCO captions, instances, VQA v2, COCO-Text and attributes per image id.

    Every file and folder may be a local path or an fsspec URL (s3://, gs://)."""
    source = CocoSource(
        kind="coco",
        images_dir=images,
        captions=captions,
        instances=instances,
        vqa_questions=vqa_questions,
        vqa_annotations=vqa_annotations,
        coco_text=coco_text,
        attributes=attributes,
    )
    _collect(source, out, "collect coco", as_json)


@collect_app.command("jsonl")
def collect_jsonl(
    file: Annotated[str, typer.Argument(help="JSONL file, one image per line (or a URL).")],
    images: Annotated[
        str, typer.Option("--images", help="Folder the file names are relative to (or a URL).")
    ],
    out: Annotated[
        str, typer.Option("--out", help="Run directory to write records/ into (or a URL).")
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Collect your own images described one JSON object per line (docs/collect_jsonl.md)."""
    source = JsonlSource(kind="jsonl", jsonl_file=file, images_dir=images)
    _collect(source, out, "collect jsonl", as_json)


def clue_command(
    run: Annotated[Path, typer.Argument(help="Run directory with collected records.")],
    image_id: Annotated[str, typer.Option("--image-id", help="Image id of the record.")],
    object_index: Annotated[
        int | None,
        typer.Option("--object", help="Index into the record's objects: print the region clue."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"image_id", "object", "clue"} as JSON.')
    ] = False,
) -> None:
    """Print the visual clue of one image (or, with --object, of one object in it)."""
    record = _find_record(RunDir(run), image_id)
    text = visual_clue(record) if object_index is None else region_clue(record, object_index)
    if as_json:
        typer.echo(json.dumps({"image_id": image_id, "object": object_index, "clue": text}))
    else:
        typer.echo(text)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.add_typer(collect_app, name="collect")
    app.command("clue")(clue_command)


# -- helpers -------------------------------------------------------------------------------------
def _collect(source: CocoSource | JsonlSource, out: str, title: str, as_json: bool) -> None:
    with progress_bar() as progress:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = progress.add_task(step, total=total)
            progress.update(tasks[step], completed=done, total=total)

        result = collect_source(source, progress=report)
    with open_run_dir(out, writer="vlit collect") as run:
        summary = write_source(run, result)
    if as_json:
        emit_summary(title, summary, as_json=True)
    else:
        emit_summary(title, _for_people(summary), as_json=False)


def _for_people(summary: dict[str, Any]) -> dict[str, Any]:
    """The table hides counters that are zero (and empty lists), except the headline ones,
    and shows the first few skipped lines only (--json has them all)."""
    shown = {
        key: value
        for key, value in summary.items()
        if key in _HEADLINE or value not in (0, [], {}, None)
    }
    skipped = shown.get("skipped_lines")
    if skipped:
        first = [f"line {entry['line']}: {entry['reason']}" for entry in skipped[:_SHOWN_SKIPS]]
        more = len(skipped) - _SHOWN_SKIPS
        shown["skipped_lines"] = "\n".join(first + ([f"... {more} more"] if more > 0 else []))
    return shown


def _find_record(run: RunDir, image_id: str) -> ImageRecord:
    ids = []
    for record in run.read_records():
        if record.image_id == image_id:
            return record
        ids.append(record.image_id)
    if not ids:
        raise ConfigError(
            "this run has no image records",
            file=str(run.stage_dir("records")),
            fix="run `vlit collect coco` or `vlit collect jsonl` into it first",
        )
    examples = ", ".join(ids[:3]) + (f", ..., {ids[-1]}" if len(ids) > 3 else "")
    raise ConfigError(
        f"image id {image_id!r} is not in this run",
        file=str(run.stage_dir("records")),
        fix=f"pass --image-id with one of its {len(ids)} image ids ({examples})",
    )
