"""Compute a run's indicators, write ``RUN/indicators.json``, and the HTML comparison report.

The library side of `vlit report`, also called by `vlit run` and `vlit demo`.

Example:
    >>> views = [report_run("runs/demo", embedder=load_embedder("minilm"))]  # doctest: +SKIP
    >>> write_html(views, Path("runs/demo/report.html"))                      # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vlit.errors import ConfigError
from vlit.llm.session import LlmSession
from vlit.quality.indicators.complexity import LlmComplexityScorer
from vlit.quality.indicators.embeddings import Embedder
from vlit.quality.indicators.labels import TagGptTagger
from vlit.quality.indicators.suite import (
    IndicatorFeed,
    IndicatorSettings,
    LoadedRun,
    load_run,
    samples_at,
    tag_stage,
    timed,
    usable_batches,
    without_histograms,
)
from vlit.report.html import EXAMPLES_PER_GROUP, DatasetView, DroppedExamples, render_html
from vlit.rundir import RunDir
from vlit.runners.base import Runner
from vlit.runners.local import LocalRunner
from vlit.schema import Sample


def report_run(
    path: str | os.PathLike[str] | RunDir,
    *,
    embedder: Embedder | None,
    settings: IndicatorSettings | None = None,
    session: LlmSession | None = None,
    use_taggpt: bool = False,
    complexity_samples: int = 500,
    name: str | None = None,
    on_step: Callable[[str], None] | None = None,
    runner: Runner | None = None,
    loaded: LoadedRun | None = None,
) -> DatasetView:
    """Indicators of one run (``RUN/kept`` if present, else its latest samples).

    With an LLM ``session`` the instruction complexity is also scored by the LLM, and with
    ``use_taggpt`` task labels come from TagGPT instead of the offline rules. ``loaded``: the
    run as `load_run(path)` gives it (its samples are not used). The samples are read shard by
    shard on ``runner`` (default: this process; on Ray, by its workers), the LLM's passes
    (TagGPT's tags before, the complexity's chosen samples after) shard by shard in this
    process, and the view keeps only the examples it shows.
    """
    settings = settings or IndicatorSettings()
    tagger = complexity = None
    if session is not None:
        complexity = LlmComplexityScorer(
            session=session, max_samples=complexity_samples, seed=settings.seed
        )
        if use_taggpt:
            if embedder is None:
                raise ConfigError("TagGPT merges tags by embedding", fix="give an embedder")
            tagger = TagGptTagger(session=session, embedder=embedder, seed=settings.seed)
    loaded = loaded or load_run(path)
    report, shown, dropped = _streamed_report(
        loaded,
        embedder,
        settings,
        on_step or (lambda _step: None),
        runner or LocalRunner(),
        tagger,
        complexity,
    )
    excluded = report.pop("excluded")
    dataset = name or loaded.name
    report.update(
        {
            "dataset": dataset,
            "run": str(loaded.root if isinstance(path, RunDir) else path),
            "stage": loaded.stage,
        }
    )
    report["excluded"] = excluded
    (loaded.root / "indicators.json").write_text(
        json.dumps(without_histograms(report), indent=2, sort_keys=True), encoding="utf-8"
    )
    return DatasetView(name=dataset, report=report, samples=shown, dropped=dropped)


def _streamed_report(
    loaded: LoadedRun,
    embedder: Embedder | None,
    settings: IndicatorSettings,
    step: Callable[[str], None],
    runner: Runner,
    tagger: TagGptTagger | None,
    complexity: LlmComplexityScorer | None,
) -> tuple[dict[str, Any], list[Sample], list[Sample]]:
    """The indicators read shard by shard on ``runner`` (memory: what each indicator keeps,
    README), and the few samples the HTML shows. With ``tagger``, a first pass asks the LLM
    for the tags of each shard's samples; with ``complexity``, a last pass picks the samples
    it scores."""
    run, stage = loaded.run, loaded.stage
    timings: dict[str, float] = {}
    labels = None
    if tagger is not None:
        step("task labels (TagGPT), shard by shard")
        with timed(timings, "task_labels"):
            labels = tag_stage(tagger, run, stage)
    step("indicators, shard by shard")
    feed = IndicatorFeed(
        embedder=embedder,
        cache_dir=loaded.root / "embeddings",
        records=loaded.records,
        settings=settings,
        examples_per_task=EXAMPLES_PER_GROUP,
        labels=labels,
    )
    runner.fold(feed, run, stage)
    more = {}
    if complexity is not None:
        step("instruction complexity (LLM)")
        with timed(timings, "instruction_complexity_llm"):
            chosen = samples_at(usable_batches(run, stage), complexity.choose(feed.samples))
            more["instruction_complexity_llm"] = complexity.score_chosen(chosen)
    for name, seconds in timings.items():
        feed.timings[name] = round(feed.timings.get(name, 0.0) + seconds, 3)
    shown = [s for group in feed.examples.values() for s in group]
    dropped = DroppedExamples()
    if run.has_stage("dropped"):
        runner.fold(dropped, run, "dropped")
    return {**feed.report(more), "excluded": feed.excluded}, shown, dropped.samples()


def write_html(views: Sequence[DatasetView], path: Path) -> None:
    """Write the self-contained HTML report comparing ``views``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(views), encoding="utf-8")
