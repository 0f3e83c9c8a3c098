"""The report stage: a run's samples -> ``RUN/indicators.json`` (and ``RUN/report.html``).

`ReportSettings` is the recipe's ``report`` section and the defaults of `vlit report`'s
options it shares. `run` measures one run; `vlit report RUN [RUN2 ...]` compares several runs
with one ruler (`vlit.report.build`).

Example:
    >>> summary = run(RunDir("runs/demo"), ReportSettings(embedder="none"))  # doctest: +SKIP
    >>> summary.indicators_file                                              # doctest: +SKIP
    'runs/demo/indicators.json'
"""

from __future__ import annotations

from typing import Any

from vlit.rundir import RunDir
from vlit.runners.base import Runner, build_runner
from vlit.stages.base import Settings, Summary


class ReportSettings(Settings):
    """The dataset-level indicators and the HTML report (``RUN/report.html``)."""

    embedder: str = "minilm"  # minilm, wordllama, none, or a sentence-transformers folder / id
    html: bool = True
    seed: int = 0


class ReportSummary(Summary):
    """What one report run wrote (``vlit run --json`` ``report``)."""

    omitted_when_none = ("html",)

    indicators: dict[str, Any]
    indicators_file: str
    html: str | None = None


def run(run: RunDir, settings: ReportSettings, runner: Runner | None = None) -> ReportSummary:
    """Measure the run's indicators (``RUN/indicators.json``), and write ``RUN/report.html``
    when ``settings.html``; the streaming indicators are updated on ``runner``'s workers."""
    from vlit.quality.indicators.embeddings import load_embedder
    from vlit.quality.indicators.suite import IndicatorSettings
    from vlit.report.build import report_run, write_html

    runner = runner or build_runner()
    embedder = None if settings.embedder == "none" else load_embedder(settings.embedder)
    view = report_run(
        run,
        embedder=embedder,
        settings=IndicatorSettings(seed=settings.seed),
        runner=runner,
    )
    summary = ReportSummary(
        indicators=view.report.get("table", {}),
        indicators_file=run.location_of("indicators.json"),
    )
    if settings.html:
        write_html([view], run.root / "report.html")
        summary.html = run.location_of("report.html")
    return summary
