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
from typing import Literal

from vlit.errors import ConfigError
from vlit.llm.session import LlmSession
from vlit.quality.indicators.complexity import LlmComplexityScorer
from vlit.quality.indicators.embeddings import Embedder
from vlit.quality.indicators.labels import TagGptTagger
from vlit.quality.indicators.suite import (
    IndicatorSettings,
    LoadedRun,
    compute_indicators,
    load_run,
    without_histograms,
)
from vlit.report.html import DatasetView, render_html


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
    ``loaded``: the run already loaded by ``load_run(path)``.
    """
    settings = settings or IndicatorSettings()
    loaded = loaded or load_run(path)
    tagger = complexity = None
    if session is not None:
        complexity = LlmComplexityScorer(
            session=session, max_samples=complexity_samples, seed=settings.seed
        )
        if use_taggpt:
            if embedder is None:
                raise ConfigError("TagGPT merges tags by embedding", fix="give an embedder")
            tagger = TagGptTagger(session=session, embedder=embedder, seed=settings.seed)
    report = compute_indicators(
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
    dataset = name or loaded.name
    report.update({"dataset": dataset, "run": str(path), "stage": loaded.stage})
    report["excluded"] = loaded.excluded
    (loaded.root / "indicators.json").write_text(
        json.dumps(without_histograms(report), indent=2, sort_keys=True), encoding="utf-8"
    )
    return DatasetView(name=dataset, report=report, samples=loaded.samples, dropped=loaded.dropped)


def write_html(views: Sequence[DatasetView], path: Path) -> None:
    """Write the self-contained HTML report comparing ``views``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(views), encoding="utf-8")
