"""`vlit report` (dataset indicators, comparison, HTML) and `vlit select` (to a budget)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from vlit.cli.common import console, emit_summary
from vlit.cli.edge import check_output_file
from vlit.errors import ConfigError, InputFileError
from vlit.images import is_url
from vlit.llm.config import LLM_CONCURRENCY
from vlit.quality.indicators.embeddings import embedder_spec, load_embedder
from vlit.quality.indicators.suite import (
    IndicatorFeed,
    IndicatorSettings,
    load_run,
    report_stage,
    shared_settings,
    usable_batches,
)
from vlit.report.build import report_run, write_html
from vlit.report.html import DatasetView
from vlit.report.table import comparison_json, indicator_rows
from vlit.rundir import RunDir
from vlit.selection import plan_selection
from vlit.stages.report import ReportSettings
from vlit.storage import open_run_dir

LABELLER_NAMES = ("rules", "taggpt")
_REPORT = ReportSettings()
_INDICATORS = IndicatorSettings()


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("report")(report_command)
    app.command("select")(select_command)


def _settings(
    eps: str, min_samples: int, subsample: int, parse_limit: int, seed: int
) -> IndicatorSettings:
    if eps != "auto":
        try:
            value: float | str = float(eps)
        except ValueError as error:
            raise ConfigError(
                f"--eps must be a number or 'auto', got '{eps}'", fix="e.g. --eps 0.3"
            ) from error
    else:
        value = "auto"
    return IndicatorSettings(
        eps=value,
        min_samples=min_samples,
        subsample_size=subsample,
        parse_limit=parse_limit,
        seed=seed,
    )


def _reused(
    path: Path, settings: IndicatorSettings, embedder: str | None
) -> tuple[IndicatorSettings, str]:
    """The ruler recorded in an earlier ``indicators.json``, and the embedder it names."""
    try:
        ruler = json.loads(path.read_text(encoding="utf-8"))["ruler"]
        recorded = embedder_spec(str(ruler["embedder"]))
        reused = replace(
            settings,
            eps=float(ruler["eps"]),
            eps_source=f"reused from {path}",
            min_samples=int(ruler["min_samples"]),
            subsample_size=int(ruler["subsample_size"]),
            near_duplicate_distance=float(ruler["near_duplicate_distance"]),
            near_copy_similarity=float(
                ruler.get("near_copy_similarity", settings.near_copy_similarity)
            ),
            seed=int(ruler["seed"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputFileError(
            f"no usable indicator settings ({type(error).__name__}: {error})",
            file=str(path),
            fix="pass the indicators.json that `vlit report` wrote with an embedder",
        ) from error
    if embedder is not None and embedder != recorded:
        raise ConfigError(
            f"--embedder {embedder} differs from the reused settings' {recorded}",
            fix="drop --embedder (the reused one is taken) or drop --reuse-settings",
        )
    return reused, recorded


def _llm_session(run: RunDir, base_url: str, model: str, concurrency: int) -> Any:
    """An LLM session journalled into the run (resume: no request is paid twice)."""
    from vlit.llm.journal import LlmJournal
    from vlit.llm.openai_compatible import OpenAICompatibleBackend
    from vlit.llm.session import LlmSession

    backend = OpenAICompatibleBackend(base_url=base_url, model=model)
    return LlmSession(backend, journal=LlmJournal(run.journal_path), concurrency=concurrency)


EMBEDDER_HELP = (
    "minilm (default, bundled all-MiniLM-L6-v2), wordllama (static, no torch), "
    "'none' (skip response diversity), or a sentence-transformers/transformers folder or "
    "cached hub id (SimCSE ids use CLS pooling)."
)
EmbedderOption = Annotated[str, typer.Option("--embedder", help=EMBEDDER_HELP)]


def report_command(
    runs: Annotated[
        list[str],
        typer.Argument(help="Run directories, paths or URLs (or imported datasets)."),
    ],
    html: Annotated[
        Path | None, typer.Option("--html", help="Write a self-contained HTML report here.")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the comparison table as one JSON object.")
    ] = False,
    llm_base_url: Annotated[
        str | None,
        typer.Option(
            "--llm-base-url",
            help="OpenAI-compatible endpoint for TagGPT and the LLM complexity score.",
        ),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option("--llm-model", help="Model name at --llm-base-url.")
    ] = None,
    labeller: Annotated[
        str, typer.Option("--labeller", help="rules (offline) or taggpt (needs the LLM).")
    ] = "rules",
    embedder: Annotated[
        str | None,
        typer.Option("--embedder", help=EMBEDDER_HELP + " With --reuse-settings: theirs."),
    ] = None,
    eps: Annotated[
        str,
        typer.Option(
            "--eps",
            help="DBSCAN eps (cosine distance), or 'auto': the eps with the most clusters, "
            "chosen once over all the runs given.",
        ),
    ] = str(_INDICATORS.eps),
    min_samples: Annotated[
        int, typer.Option("--min-samples", help="DBSCAN min_samples.")
    ] = _INDICATORS.min_samples,
    subsample: Annotated[
        int, typer.Option("--subsample", help="Distinct responses clustered for R.")
    ] = _INDICATORS.subsample_size,
    reuse_settings: Annotated[
        Path | None,
        typer.Option(
            "--reuse-settings",
            help="indicators.json of an earlier report: measure with its embedder, eps, "
            "min_samples, subsample size and seed.",
        ),
    ] = None,
    parse_limit: Annotated[
        int, typer.Option("--parse-limit", help="Most samples parsed by spaCy for O/G.")
    ] = _INDICATORS.parse_limit,
    complexity_samples: Annotated[
        int, typer.Option("--complexity-samples", help="Samples scored by the LLM (1-10).")
    ] = 500,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="LLM requests at once.")
    ] = LLM_CONCURRENCY,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of every random choice.")
    ] = _REPORT.seed,
) -> None:
    """Compute the dataset indicators of each run, write RUN/indicators.json, compare them."""
    if labeller not in LABELLER_NAMES:
        raise ConfigError(
            f"unknown labeller '{labeller}'", fix=f"use one of: {', '.join(LABELLER_NAMES)}"
        )
    if (llm_base_url is None) != (llm_model is None):
        raise ConfigError("--llm-base-url and --llm-model go together", fix="pass both, or neither")
    if labeller == "taggpt" and llm_base_url is None:
        raise ConfigError(
            "--labeller taggpt needs an LLM", fix="pass --llm-base-url URL --llm-model NAME"
        )
    check_output_file(html, "--html")
    settings = _settings(eps, min_samples, subsample, parse_limit, seed)
    if reuse_settings is not None:
        settings, embedder = _reused(reuse_settings, settings, embedder)
    embedder = embedder or _REPORT.embedder
    embedding_model = None if embedder == "none" else load_embedder(embedder)
    if labeller == "taggpt" and embedding_model is None:
        raise ConfigError("--labeller taggpt merges tags by embedding", fix="drop --embedder none")
    views: list[DatasetView] = []
    names: set[str] = set()
    with contextlib.ExitStack() as staged:  # runs on URLs are pushed (indicators.json) at the end
        paths = [
            staged.enter_context(open_run_dir(given, writer="vlit report", must_exist=True)).root
            for given in runs
        ]
        loaded_runs = [load_run(path) for path in paths]
        if len(loaded_runs) > 1 and embedding_model is not None:
            # one ruler: a data-chosen eps is chosen once over all the runs
            settings = shared_settings(
                [
                    (usable_batches(RunDir(path), loaded.stage), loaded.root / "embeddings")
                    for path, loaded in zip(paths, loaded_runs, strict=True)
                ],
                embedder=embedding_model,
                settings=settings,
            )
        for given, path, loaded in zip(runs, paths, loaded_runs, strict=True):
            base = given.rstrip("/").rsplit("/", 1)[-1] if is_url(given) else Path(given).name
            name = base if base not in names else given
            names.add(name)
            session = None
            if llm_base_url is not None and llm_model is not None:
                session = _llm_session(RunDir(path), llm_base_url, llm_model, concurrency)
            view = report_run(
                path,
                embedder=embedding_model,
                settings=settings,
                session=session,
                use_taggpt=labeller == "taggpt",
                complexity_samples=complexity_samples,
                name=name,
                on_step=_announcer(name),
                loaded=loaded,
            )
            console.print(f"{name}: {view.report['samples']} samples from {view.report['stage']}/")
            views.append(view)
    if html is not None:
        write_html(views, html)
        console.print(f"HTML report: {html}")
    reports = {view.name: view.report for view in views}
    if as_json:
        print(json.dumps(comparison_json(reports), sort_keys=True))
        return
    _print_table(reports)


def _announcer(name: str) -> Callable[[str], None]:
    def announce(step: str) -> None:
        console.print(f"  {name}: {step}", highlight=False)

    return announce


def _print_table(reports: dict[str, dict[str, Any]]) -> None:
    from rich.table import Table

    from vlit.cli.common import stdout

    table = Table(title="Dataset indicators")
    table.add_column("indicator")
    for name in reports:
        table.add_column(name, justify="right")
    for title, cells in indicator_rows(reports):
        table.add_row(title, *cells)
    stdout.print(table)


def select_command(
    run: Annotated[Path, typer.Argument(help="Run directory to select from.")],
    size: Annotated[int, typer.Option("--size", help="How many samples to select.")],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="New run directory for the selection (default RUN/selected)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
    dedup_threshold: Annotated[
        float,
        typer.Option(
            "--dedup-threshold",
            help="MinHash Jaccard for near-duplicates; "
            "1.0 keeps only exact word-shingle matches out.",
        ),
    ] = 0.8,
    embedder: EmbedderOption = "minilm",
    eps: Annotated[str, typer.Option("--eps", help="DBSCAN eps or 'auto'.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of every random choice.")] = 0,
) -> None:
    """Pick N samples: quality first, near-duplicates out, tasks evened out; show indicators
    before and after."""
    (RunDir(run) if out is None else RunDir(out)).load_meta()  # damaged run.json: stop now
    source, source_stage = report_stage(run)
    records = {r.image_id: r for r in source.read_records()} if source.has_stage("records") else {}
    plan = plan_selection(
        usable_batches(source, source_stage),
        size=size,
        dedup_threshold=dedup_threshold,
        seed=seed,
    )
    if out is None:
        target, stage = source, "selected"
    else:
        target, stage = RunDir(out), "samples"
        if target.has_stage("samples"):
            raise ConfigError(f"{out} already has samples", fix="choose a new --out")
        if records:
            target.write_records(records.values())
    inputs = (source_stage,) if out is None else ()
    settings = _settings(eps, 5, 10_000, 5000, seed)
    embedding_model = None if embedder == "none" else load_embedder(embedder)
    feed_before, feed_after = (
        IndicatorFeed(
            embedder=embedding_model,
            cache_dir=source.root / "embeddings",
            records=records,
            settings=settings,
        )
        for _ in range(2)
    )
    with target.writer(stage, inputs=inputs, command="vlit select") as writer:
        offset = 0
        for batch in usable_batches(source, source_stage):  # the second pass, shard by shard
            feed_before.update(batch)  # labels the batch too
            at = plan.chosen[np.searchsorted(plan.chosen, offset) :]
            picked = [batch[i] for i in (at[at < offset + len(batch)] - offset).tolist()]
            if picked:
                feed_after.update(picked)
                writer.add_rows(sample.to_row() for sample in picked)
            offset += len(batch)
    target.save_summary("select", {**plan.summary, "source": str(run)})
    before, after = feed_before.report(), feed_after.report()
    summary = {
        "written_to": str(target.stage_dir(stage)),
        "selection": plan.summary,
        "before": before["table"],
        "after": after["table"],
    }
    if as_json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return
    _print_table({"before": before, "after": after})
    emit_summary(
        "Selection", {k: v for k, v in plan.summary.items() if k != "quotas"}, as_json=False
    )
