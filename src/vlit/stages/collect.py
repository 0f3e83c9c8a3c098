"""The collect stage: annotation files -> ``RUN/records/``.

`CollectSettings` is the recipe's ``collect`` section: a list of sources (`CocoSource`,
`JsonlSource`), whose records are concatenated in order. Annotation files may be URLs (fetched
first); image folders stay where they are.

Example:
    >>> settings = CollectSettings(sources=[JsonlSource(kind="jsonl", jsonl_file="a.jsonl",
    ...                                                 images_dir="images")])
    >>> summary = run(RunDir("runs/mine"), settings)       # doctest: +SKIP
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from vlit.collect import CocoCollector, CollectResult, JsonlCollector
from vlit.generate.generator import ProgressCallback
from vlit.images import is_url
from vlit.rundir import RunDir
from vlit.runners.base import Runner
from vlit.schema import ImageRecord
from vlit.stages.base import Settings, Summary
from vlit.storage import fetch_input


class CocoSource(Settings):
    """COCO-style annotation files joined per image (see `vlit.collect.CocoCollector`)."""

    kind: Literal["coco"]
    images_dir: str
    captions: str
    instances: str | None = None
    vqa_questions: str | None = None
    vqa_annotations: str | None = None
    coco_text: str | None = None
    attributes: str | None = None
    check_images: bool = True


class JsonlSource(Settings):
    """Your own images, one JSON object per line (see `vlit.collect.JsonlCollector`)."""

    kind: Literal["jsonl"]
    jsonl_file: str
    images_dir: str
    check_images: bool = True


Source = Annotated[Union[CocoSource, JsonlSource], Field(discriminator="kind")]  # noqa: UP007


class CollectSettings(Settings):
    """Annotation sources; their records are concatenated in this order."""

    sources: list[Source] = Field(min_length=1)


class CollectSummary(Summary):
    """The counts of one collect run (``run.json`` ``collect``)."""

    images: int
    duplicate_image_ids_across_sources: int
    sources: list[dict[str, Any]]


def run(
    run: RunDir,
    settings: CollectSettings,
    runner: Runner | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> CollectSummary:
    """Collect every source, write ``RUN/records/`` and return (and save) the counts.

    Collection runs in this process whatever the ``runner``. Records of all sources are
    concatenated in recipe order; an image id already taken by an earlier source is skipped
    and counted (``duplicate_image_ids_across_sources``).
    """
    records: list[ImageRecord] = []
    seen: set[str] = set()
    duplicates = 0
    source_summaries = []
    for source in settings.sources:
        result = collect_source(source, progress=progress)
        source_summaries.append({"kind": source.kind, **result.summary})
        for record in result.records:
            if record.image_id in seen:
                duplicates += 1
                continue
            seen.add(record.image_id)
            records.append(record)
    run.write_records(records, settings=settings.model_dump(mode="json"))
    return CollectSummary(
        images=len(records),
        duplicate_image_ids_across_sources=duplicates,
        sources=source_summaries,
    ).save(run, "collect")


def write_source(run: RunDir, result: CollectResult) -> dict[str, Any]:
    """`vlit collect coco|jsonl`: one source's records (`collect_source`) into
    ``RUN/records/``; its collector's counts (also saved in ``run.json``)."""
    run.write_records(result.records, settings={"sources": result.summary.get("sources")})
    summary = {"run_dir": run.location, **result.summary}
    run.save_summary("collect", summary)
    return summary


def collect_source(
    given: CocoSource | JsonlSource, *, progress: ProgressCallback | None = None
) -> CollectResult:
    """Collect one source; annotation files on URLs are fetched first, and the summary names
    them by their URLs."""
    source, urls = _with_local_inputs(given)
    collector: CocoCollector | JsonlCollector
    if isinstance(source, CocoSource):
        collector = CocoCollector(
            images_dir=source.images_dir,
            captions=source.captions,
            instances=source.instances,
            vqa_questions=source.vqa_questions,
            vqa_annotations=source.vqa_annotations,
            coco_text=source.coco_text,
            attributes=source.attributes,
            check_images=source.check_images,
        )
    else:
        collector = JsonlCollector(
            jsonl_file=source.jsonl_file,
            images_dir=source.images_dir,
            check_images=source.check_images,
        )
    result = collector.collect(on_progress=progress)
    files = {role: urls.get(file, file) for role, file in result.summary["sources"].items()}
    result.summary["sources"] = files
    return result


def _with_local_inputs(
    source: CocoSource | JsonlSource,
) -> tuple[CocoSource | JsonlSource, dict[str, str]]:
    """``source`` with each annotation file given as a URL replaced by its fetched local copy,
    and each copy's URL (image folders stay URLs: images are read where they are needed)."""
    fetched: dict[str, str] = {}
    urls: dict[str, str] = {}
    for name in type(source).model_fields:
        value = getattr(source, name)
        if name != "images_dir" and isinstance(value, str) and is_url(value):
            fetched[name] = str(fetch_input(value))
            urls[fetched[name]] = value
    return source.model_copy(update=fetched), urls
