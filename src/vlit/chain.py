"""`run_recipe`: the whole chain collect -> generate -> score -> filter -> report.

Each stage reads and writes the run directory, so a rerun resumes: collection is cheap, generation
and the judge answer from the journal, and a stage whose output is current (made from the
current inputs with the recipe's settings, see `vlit.rundir`) is not run again. A later stage
runs when its section is in the recipe; ``LATER_STAGES`` is the one place that lists them.

Example:
    >>> summaries = run_recipe(load_recipe("recipe.yaml"))   # doctest: +SKIP
    >>> summaries["filter"]["kept"]                          # doctest: +SKIP
    212
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vlit.collect import CocoCollector, CollectResult, JsonlCollector
from vlit.generate.generator import ProgressCallback
from vlit.generate.stage import generate_run
from vlit.images import is_url
from vlit.llm.config import build_backend
from vlit.llm.session import TokenPrices
from vlit.recipe import (
    CocoSource,
    CollectSection,
    JsonlSource,
    LlmSection,
    Recipe,
    write_resolved_recipe,
)
from vlit.rundir import RunDir
from vlit.schema import ImageRecord
from vlit.storage import fetch_input, open_run_dir

StageRunner = Callable[[Recipe, RunDir, "ProgressCallback | None"], dict[str, Any]]


def run_recipe(recipe: Recipe, *, progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Run the whole chain: collect -> generate -> later stages; return each stage's summary.

    Writes ``RUN/recipe.resolved.yaml`` first. Rerunning a finished recipe sends no LLM request
    (answers come from the run's journal) and writes the same samples. A ``run_dir`` on a URL
    is staged (`vlit.storage.open_run_dir`): pulled first, pushed after every stage and when a
    stage fails.
    """
    if recipe.runner.kind == "ray":
        from vlit.runners.ray_runner import init_ray

        init_ray(recipe.runner.address)  # before any work: a wrong address fails now
    settings = recipe.generate.to_settings()
    backend = None
    if settings.llm_modes:
        backend = build_backend(recipe.llm.to_config(concurrency=recipe.generate.concurrency))
    with open_run_dir(recipe.run_dir, writer="vlit run") as run:
        write_resolved_recipe(
            recipe, run.root, generator=backend.describe() if backend is not None else None
        )
        run.push()  # a bucket that is missing or not writable fails now, before any work
        summaries: dict[str, Any] = {}
        if recipe.collect is not None:
            summaries["collect"] = collect_into(run, recipe.collect, progress=progress)
            run.push()
        summaries["generate"] = generate_run(
            run,
            settings=settings,
            backend=backend,
            concurrency=recipe.generate.concurrency,
            max_requests=recipe.generate.max_requests,
            max_cost=recipe.generate.max_cost,
            prices=_prices(recipe.llm),
            progress=progress,
        )
        run.push()
        for name, stage in LATER_STAGES.items():
            if getattr(recipe, name, None) is not None:
                summaries[name] = stage(recipe, run, progress)
                run.push()
    return summaries


def collect_into(
    run: RunDir, section: CollectSection, *, progress: ProgressCallback | None = None
) -> dict[str, Any]:
    """Collect every source, write ``RUN/records/`` and return (and save) the counts.

    Records of all sources are concatenated in recipe order; an image id already taken by an
    earlier source is skipped and counted (``duplicate_image_ids_across_sources``).
    """
    records: list[ImageRecord] = []
    seen: set[str] = set()
    duplicates = 0
    source_summaries = []
    for source in section.sources:
        result = collect_source(source, progress=progress)
        source_summaries.append({"kind": source.kind, **result.summary})
        for record in result.records:
            if record.image_id in seen:
                duplicates += 1
                continue
            seen.add(record.image_id)
            records.append(record)
    run.write_records(records, settings=section.model_dump(mode="json"))
    summary = {
        "images": len(records),
        "duplicate_image_ids_across_sources": duplicates,
        "sources": source_summaries,
    }
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


def score_stage(recipe: Recipe, run: RunDir, progress: ProgressCallback | None) -> dict[str, Any]:
    """`vlit score` with the recipe's ``score`` section."""
    from vlit.quality.pipeline import ScoreOptions, score_run, score_settings

    section = recipe.score
    assert section is not None
    judge = section.judge if section.judge is not None and section.judge.enabled else None
    llm = (judge.llm or recipe.llm) if judge is not None else None
    options = ScoreOptions(
        clip=section.clip_model,
        clip_mode=section.clip_mode,
        clip_device=section.clip_device,
        clip_batch_size=section.clip_batch_size,
        clip_decode=section.clip_decode,
        judge=judge is not None,
        judge_votes=judge.votes if judge is not None else 3,
        judge_structured=judge.structured if judge is not None else "auto",
        llm=llm.to_config(concurrency=recipe.generate.concurrency) if llm is not None else None,
        grounding=section.grounding,
        spacy_model=section.spacy_model,
        lint=section.lint,
        seed=recipe.generate.seed,
        runner=recipe.runner.kind,
        ray_address=recipe.runner.address,
    )
    done = _up_to_date(run, ("scores",), score_settings(options), "score")
    return done or score_run(run, options, on_batch=_counter(progress, "score"))


def filter_stage(recipe: Recipe, run: RunDir, progress: ProgressCallback | None) -> dict[str, Any]:
    """`vlit filter` with the recipe's ``filter`` section."""
    from vlit.quality.pipeline import FilterOptions, filter_run, filter_settings

    section = recipe.filter
    assert section is not None
    options = FilterOptions(
        min_md=section.min_md,
        min_md_quantile=section.min_md_quantile,
        require_correct=section.require_correct,
        max_hallucination=section.max_hallucination,
        max_count_errors=section.max_count_errors,
        max_false_absent=section.max_false_absent,
        drop_lint=tuple(section.drop_lint),
        min_scores=dict(section.thresholds),
        max_scores=dict(section.maxima),
    )
    done = _up_to_date(run, ("kept", "dropped"), filter_settings(options), "filter")
    return done or filter_run(run, options)


def report_stage(recipe: Recipe, run: RunDir, progress: ProgressCallback | None) -> dict[str, Any]:
    """`vlit report RUN --html RUN/report.html` with the recipe's ``report`` section."""
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.quality.indicators.suite import IndicatorSettings
    from vlit.report.build import report_run, write_html

    section = recipe.report
    assert section is not None
    embedder = None if section.embedder == "none" else load_embedder(section.embedder)
    view = report_run(
        run.root,
        embedder=embedder,
        settings=IndicatorSettings(seed=section.seed),
        runner=recipe.runner.kind,
        ray_address=recipe.runner.address,
    )
    summary: dict[str, Any] = {
        "indicators": view.report.get("table", {}),
        "indicators_file": run.location_of("indicators.json"),
    }
    if section.html:
        write_html([view], run.root / "report.html")
        summary["html"] = run.location_of("report.html")
    return summary


LATER_STAGES: dict[str, StageRunner] = {
    "score": score_stage,
    "filter": filter_stage,
    "report": report_stage,
}
"""The stages after generate, in run order: recipe section name -> runner."""


def _up_to_date(
    run: RunDir, stages: tuple[str, ...], settings: dict[str, Any], name: str
) -> dict[str, Any] | None:
    """The saved summary of stage ``name`` when its output ``stages`` are committed, current and
    made with ``settings`` (`vlit run` refreshes only what is stale); None otherwise."""
    if not all(run.is_up_to_date(stage, settings) for stage in stages):
        return None
    previous = run.load_meta().get("summaries", {}).get(name)
    return {**previous, "up_to_date": True} if isinstance(previous, dict) else None


def _counter(progress: ProgressCallback | None, step: str) -> Callable[[int], None] | None:
    if progress is None:
        return None
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress(step, done, None)

    return advance


def _prices(section: LlmSection) -> TokenPrices | None:
    if section.prices is None:
        return None
    return TokenPrices(
        prompt_per_1k=section.prices.prompt_per_1k,
        completion_per_1k=section.prices.completion_per_1k,
    )
