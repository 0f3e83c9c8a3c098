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
    compute_indicators,
    load_run,
    without_histograms,
)
from vlit.report.html import EXAMPLES_PER_GROUP, DatasetView, examples_by_reason, render_html
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
    run already loaded by ``load_run(path)``. Without an LLM the samples are read shard by
    shard on ``runner`` (default: this process; on Ray, by its workers) and the view keeps
    only the examples it shows; with one they are all held here.
    """
    settings = settings or IndicatorSettings()
    if session is None:  # rules and mergeable indicators: stream the run
        loaded = loaded or load_run(path, with_samples=False)
        report, shown, dropped = _streamed_report(
            loaded, embedder, settings, on_step, runner or LocalRunner()
        )
        excluded = report.pop("excluded")
    else:
        loaded = loaded if loaded is not None and loaded.samples else load_run(path)
        shown, dropped, excluded = loaded.samples, loaded.dropped, loaded.excluded
        report = _report_in_memory(
            loaded, embedder, settings, session, use_taggpt, complexity_samples, on_step
        )
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
    on_step: Callable[[str], None] | None,
    runner: Runner,
) -> tuple[dict[str, Any], list[Sample], list[Sample]]:
    """The indicators read shard by shard on ``runner`` (memory: what each indicator keeps,
    README), and the few samples the HTML shows."""
    if on_step is not None:
        on_step("indicators, shard by shard")
    run = loaded.run
    feed = IndicatorFeed(
        embedder=embedder,
        cache_dir=loaded.root / "embeddings",
        records=loaded.records,
        settings=settings,
        examples_per_task=EXAMPLES_PER_GROUP,
    )
    runner.fold_indicators(feed, run, loaded.stage)
    shown = [s for group in feed.examples.values() for s in group]
    shards = run.read_sample_shards("dropped") if run.has_stage("dropped") else ()
    by_reason = examples_by_reason(s for shard in shards for s in shard)
    shown_dropped = [s for group in by_reason.values() for s in group]
    return {**feed.report(), "excluded": feed.excluded}, shown, shown_dropped


def _report_in_memory(
    loaded: LoadedRun,
    embedder: Embedder | None,
    settings: IndicatorSettings,
    session: LlmSession | None,
    use_taggpt: bool,
    complexity_samples: int,
    on_step: Callable[[str], None] | None,
) -> dict[str, Any]:
    """The indicators with an LLM (TagGPT labels, LLM complexity): all in memory."""
    tagger = complexity = None
    if session is not None:
        complexity = LlmComplexityScorer(
            session=session, max_samples=complexity_samples, seed=settings.seed
        )
        if use_taggpt:
            if embedder is None:
                raise ConfigError("TagGPT merges tags by embedding", fix="give an embedder")
            tagger = TagGptTagger(session=session, embedder=embedder, seed=settings.seed)
    return compute_indicators(
        loaded.samples,
        embedder=embedder,
        cache_dir=loaded.root / "embeddings",
        records=loaded.records,
        tagger=tagger,
        complexity_scorer=complexity,
        settings=settings,
        on_step=on_step,
    )


def write_html(views: Sequence[DatasetView], path: Path) -> None:
    """Write the self-contained HTML report comparing ``views``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(views), encoding="utf-8")
