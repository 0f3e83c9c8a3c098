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
from typing import Any, Literal

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
    usable_batches,
    without_histograms,
)
from vlit.report.html import DatasetView, examples_by_reason, examples_by_task, render_html
from vlit.rundir import RunDir
from vlit.schema import Sample


def report_run(
    path: str | os.PathLike[str],
    *,
    embedder: Embedder | None,
    settings: IndicatorSettings | None = None,
    session: LlmSession | None = None,
    use_taggpt: bool = False,
    complexity_samples: int = 500,
    name: str | None = None,
    on_step: Callable[[str], None] | None = None,
    runner: Literal["local", "ray"] = "local",
    ray_address: str | None = None,
    loaded: LoadedRun | None = None,
) -> DatasetView:
    """Indicators of one run (``RUN/kept`` if present, else its latest samples).

    With an LLM ``session`` the instruction complexity is also scored by the LLM, and with
    ``use_taggpt`` task labels come from TagGPT instead of the offline rules. ``runner="ray"``
    updates the streaming indicators on Ray workers (``ray_address``: an existing cluster).
    ``loaded``: the run already loaded by ``load_run(path)``. Without an LLM and on the local
    runner the samples are read shard by shard; the view keeps only the examples it shows.
    """
    settings = settings or IndicatorSettings()
    if session is None and runner == "local":  # rules and mergeable indicators: stream the run
        loaded = loaded or load_run(path, with_samples=False)
        report, shown, dropped = _streamed_report(loaded, embedder, settings, on_step)
        excluded = report.pop("excluded")
    else:
        loaded = loaded if loaded is not None and loaded.samples else load_run(path)
        shown, dropped, excluded = loaded.samples, loaded.dropped, loaded.excluded
        report = _report_in_memory(
            loaded, embedder, settings, session, use_taggpt, complexity_samples, on_step,
            runner, ray_address,
        )  # fmt: skip
    dataset = name or loaded.name
    report.update({"dataset": dataset, "run": str(path), "stage": loaded.stage})
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
) -> tuple[dict[str, Any], list[Sample], list[Sample]]:
    """The indicators read shard by shard (memory: what each indicator keeps, README), and the
    few samples the HTML shows."""
    if on_step is not None:
        on_step("indicators, shard by shard")
    run = RunDir(loaded.root)
    feed = IndicatorFeed(
        embedder=embedder,
        cache_dir=loaded.root / "embeddings",
        records=loaded.records,
        settings=settings,
    )
    excluded = {"failed": 0, "dropped": 0}
    shown: list[Sample] = []
    for batch in usable_batches(run, loaded.stage, excluded):
        feed.update(batch)
        shown = [s for group in examples_by_task([*shown, *batch]).values() for s in group]
    shards = run.read_sample_shards("dropped") if run.has_stage("dropped") else ()
    by_reason = examples_by_reason(s for shard in shards for s in shard)
    shown_dropped = [s for group in by_reason.values() for s in group]
    return {**feed.report(), "excluded": excluded}, shown, shown_dropped


def _report_in_memory(
    loaded: LoadedRun,
    embedder: Embedder | None,
    settings: IndicatorSettings,
    session: LlmSession | None,
    use_taggpt: bool,
    complexity_samples: int,
    on_step: Callable[[str], None] | None,
    runner: Literal["local", "ray"],
    ray_address: str | None,
) -> dict[str, Any]:
    """The indicators with an LLM (TagGPT labels, LLM complexity) or on Ray: all in memory."""
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
        runner=runner,
        ray_address=ray_address,
    )


def write_html(views: Sequence[DatasetView], path: Path) -> None:
    """Write the self-contained HTML report comparing ``views``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(views), encoding="utf-8")
