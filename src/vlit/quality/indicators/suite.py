"""Compute every dataset indicator of one dataset (a run directory or a list of samples).

``compute_indicators`` labels the samples (rules or TagGPT), feeds the mergeable indicators
batch by batch, runs the LLM complexity scorer when given, and returns one JSON-ready dict:
``table`` (the paper's Table 4 row for this dataset, ``None`` = not computed), ``indicators``
(every detail), ``settings`` and ``timings`` (seconds per indicator).

Example:
    >>> samples = [s for batch in usable_batches(RunDir("runs/demo"), "kept") for s in batch]
    ...                                                                   # doctest: +SKIP
    >>> report = compute_indicators(samples, embedder=load_embedder("wordllama"))
    ...                                                                   # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vlit.errors import InputFileError
from vlit.quality.indicators.balance import TaskDistributionIndicator
from vlit.quality.indicators.complexity import (
    ComplexityProxyIndicator,
    LlmComplexityScorer,
    ObjectGranularityIndicator,
)
from vlit.quality.indicators.embeddings import Embedder
from vlit.quality.indicators.instruction_diversity import InstructionDiversityIndicator
from vlit.quality.indicators.labels import (
    AssignedLabels,
    RuleTaskLabeller,
    ShardTagging,
    TagGptTagger,
)
from vlit.quality.indicators.response_diversity import (
    EPS_RULE,
    ResponseDiversityIndicator,
    shared_eps,
)
from vlit.quality.indicators.scores import QualityScoresIndicator
from vlit.rundir import RunDir
from vlit.runners.base import DatasetIndicator
from vlit.schema import ImageRecord, Sample

# (column of the paper's Table 4, key in ``table``)
TABLE_ROWS: tuple[tuple[str, str], ...] = (
    ("MD", "md"),
    ("C", "correctness"),
    ("T", "task_diversity"),
    ("I (instruction diversity)", "instruction_diversity"),
    ("R (response diversity)", "response_diversity"),
    ("O/G", "object_granularity"),
    ("I-complexity (LLM)", "instruction_complexity"),
    ("I-complexity (proxy)", "instruction_complexity_proxy"),
    ("Balance (variance of task shares, %)", "balance"),
)


@dataclass(frozen=True)
class IndicatorSettings:
    """Parameters of the indicators (all recorded in ``indicators.json``)."""

    eps: float | str = "auto"
    eps_source: str | None = None  # how a numeric eps was chosen (e.g. shared by datasets)
    min_samples: int = 5
    subsample_size: int = 5_000
    near_duplicate_distance: float = 0.03
    near_copy_similarity: float = 0.8
    parse_limit: int = 5000
    seed: int = 0


@dataclass
class LoadedRun:
    """The run directory the report looks at, its stage and its records (the samples stay on
    disk: read them with `usable_batches`)."""

    root: Path
    run: RunDir  # the run directory the samples come from (a staged one for a URL)
    name: str
    stage: str
    records: dict[str, ImageRecord]


def load_run(path: str | os.PathLike[str] | RunDir) -> LoadedRun:
    """The run of ``path`` and its report stage: ``RUN/kept`` if present, else the latest sample
    stage, checked current."""
    run, stage = report_stage(path)
    run.check_current(stage)  # a stale stage stops the command before its work
    records = (
        {record.image_id: record for record in run.read_records()}
        if run.has_stage("records")
        else {}
    )
    return LoadedRun(root=run.root, run=run, name=run.root.name, stage=stage, records=records)


def report_stage(path: str | os.PathLike[str] | RunDir) -> tuple[RunDir, str]:
    """The run directory and the stage the report looks at: ``kept`` if present, else the
    latest sample stage."""
    run = path if isinstance(path, RunDir) else RunDir(path)
    if not run.root.is_dir():
        raise InputFileError(
            "run directory not found",
            file=str(run.root),
            fix="pass a directory made by `vlit generate`, `vlit import` or `vlit filter`",
        )
    return run, "kept" if run.has_stage("kept") else run.latest_sample_stage()


def usable_batches(
    run: RunDir, stage: str, excluded: dict[str, int] | None = None
) -> Iterator[list[Sample]]:
    """The stage's samples shard by shard, without the failed and the dropped ones (counted in
    ``excluded``)."""
    excluded = excluded if excluded is not None else {"failed": 0, "dropped": 0}
    for shard in run.read_sample_shards(stage):
        yield usable(shard, excluded)


def usable(shard: list[Sample], excluded: dict[str, int]) -> list[Sample]:
    """The samples of ``shard`` neither failed nor dropped (those are counted in ``excluded``)."""
    kept = []
    for sample in shard:
        if sample.failure_reason is not None or not sample.turns:
            excluded["failed"] += 1
        elif sample.drop_reason is not None:
            excluded["dropped"] += 1
        else:
            kept.append(sample)
    return kept


def tag_stage(tagger: TagGptTagger, run: RunDir, stage: str) -> AssignedLabels:
    """TagGPT labels of the stage's usable samples, the LLM asked shard by shard (only each
    sample's tags are held)."""
    tagging = ShardTagging(tagger)
    for batch in usable_batches(run, stage):
        tagging.add(batch)
    return tagging.labels()


def samples_at(batches: Iterable[list[Sample]], positions: list[int]) -> list[Sample]:
    """The samples at ``positions`` (increasing) of the samples of ``batches``, in order."""
    chosen: list[Sample] = []
    start = 0
    for batch in batches:
        end = start + len(batch)
        while len(chosen) < len(positions) and positions[len(chosen)] < end:
            chosen.append(batch[positions[len(chosen)] - start])
        start = end
    if len(chosen) < len(positions):
        raise ValueError(f"position {positions[len(chosen)]} is past the {start} samples")
    return chosen


def add_task_examples(
    by_task: dict[str, list[Sample]], samples: Iterable[Sample], per_task: int
) -> None:
    """Add to ``by_task`` the first samples of each task (first label), ``per_task`` at most."""
    add_group_examples(by_task, samples, lambda s: s.labels[0] if s.labels else None, per_task)


def add_group_examples(
    groups: dict[str, list[Sample]],
    samples: Iterable[Sample],
    group_of: Callable[[Sample], str | None],
    per_group: int,
) -> None:
    """Add to ``groups`` the first samples of each group (``group_of``; ``None``: in none),
    ``per_group`` at most."""
    if per_group <= 0:
        return
    for sample in samples:
        name = group_of(sample)
        if name is not None:
            group = groups.setdefault(name, [])
            if len(group) < per_group:
                group.append(sample)


class IndicatorFeed:
    """The mergeable indicators of one dataset fed batch by batch, with rule task labels or
    the ``labels`` an earlier pass assigned (TagGPT's, `tag_stage`); what each indicator keeps
    per sample is in the README. `report` has `compute_indicators`' shape.

    Feeds updated on separate parts of a dataset and merged in the parts' order report what
    one feed updated on the whole would (timings are summed). ``examples_per_task``: how many
    of the first samples of each task (first label) ``examples`` keeps, for the HTML report.
    Pickled, a feed leaves its embedder behind (a Ray worker only updates it).
    """

    def __init__(
        self,
        *,
        embedder: Embedder | None,
        cache_dir: str | os.PathLike[str] | None = None,
        records: dict[str, ImageRecord] | None = None,
        settings: IndicatorSettings = IndicatorSettings(),
        examples_per_task: int = 0,
        labels: AssignedLabels | None = None,
    ) -> None:
        self.labeller = RuleTaskLabeller()
        self.assigned = labels
        self.indicators = _streaming_indicators(embedder, cache_dir, records, settings)
        self.settings = settings
        self.samples = 0
        self.timings: dict[str, float] = {}
        self.excluded = {"failed": 0, "dropped": 0}
        self.examples_per_task = examples_per_task
        self.examples: dict[str, list[Sample]] = {}

    def update_shard(self, shard: list[Sample], index: int = 0) -> None:
        """Update with the usable samples of ``shard``, the stage's shard ``index`` (where
        the assigned labels are looked up); count the failed and dropped ones."""
        batch = usable(shard, self.excluded)
        if self.assigned is not None:
            with timed(self.timings, "task_labels"):
                self.assigned.apply(index, batch)
        self.update(batch)

    def update(self, batch: list[Sample]) -> None:
        """Update with ``batch`` (rule-labelled here, unless the feed has assigned labels: then
        labelled already)."""
        if self.assigned is None:
            with timed(self.timings, "task_labels"):
                self.labeller(batch)
        for indicator in self.indicators:
            with timed(self.timings, indicator.name):
                indicator.update(batch)
        self.samples += len(batch)
        add_task_examples(self.examples, batch, self.examples_per_task)

    def merge(self, other: IndicatorFeed) -> None:
        """Add what ``other`` (a feed of the same settings, on the samples after this one's)
        has seen."""
        for indicator, theirs in zip(self.indicators, other.indicators, strict=True):
            indicator.merge(theirs)
        self.samples += other.samples
        for name, seconds in other.timings.items():
            self.timings[name] = round(self.timings.get(name, 0.0) + seconds, 3)
        for reason, count in other.excluded.items():
            self.excluded[reason] = self.excluded.get(reason, 0) + count
        examples = (sample for group in other.examples.values() for sample in group)
        add_task_examples(self.examples, examples, self.examples_per_task)

    def report(self, more: dict[str, Any] | None = None) -> dict[str, Any]:
        """The report; ``more``: details computed beside the feed (the LLM complexity)."""
        details: dict[str, Any] = {
            "task_labels": (
                self.assigned.details
                if self.assigned is not None
                else {"labeller": "rules", "rules": self.labeller.label_names}
            ),
            **(more or {}),
        }
        for indicator in self.indicators:
            with timed(self.timings, indicator.name):
                details[indicator.name] = indicator.result()
        return _report(details, self.settings, self.timings, self.samples)


def _streaming_indicators(
    embedder: Embedder | None,
    cache_dir: str | os.PathLike[str] | None,
    records: dict[str, ImageRecord] | None,
    settings: IndicatorSettings,
) -> list[DatasetIndicator]:
    indicators: list[DatasetIndicator] = [
        TaskDistributionIndicator(),
        InstructionDiversityIndicator(),
        ObjectGranularityIndicator(
            records=records, parse_limit=settings.parse_limit, seed=settings.seed
        ),
        ComplexityProxyIndicator(),
        QualityScoresIndicator(),
    ]
    if embedder is not None:
        indicators.append(_response_diversity(embedder, cache_dir, settings))
    return indicators


def _response_diversity(
    embedder: Embedder, cache_dir: str | os.PathLike[str] | None, settings: IndicatorSettings
) -> ResponseDiversityIndicator:
    return ResponseDiversityIndicator(
        embedder=embedder,
        cache_dir=cache_dir,
        eps=settings.eps,
        eps_source=settings.eps_source,
        min_samples=settings.min_samples,
        subsample_size=settings.subsample_size,
        near_duplicate_distance=settings.near_duplicate_distance,
        near_copy_similarity=settings.near_copy_similarity,
        seed=settings.seed,
    )


def _report(
    details: dict[str, Any], settings: IndicatorSettings, timings: dict[str, float], count: int
) -> dict[str, Any]:
    return {
        "samples": count,
        "table": _table(details),
        "flags": _flags(details),
        "ruler": (details.get("response_diversity") or {}).get("ruler"),
        "indicators": details,
        "settings": asdict(settings),
        "timings": timings,
    }


@contextmanager
def timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - start, 3)


def _feed(indicator: Any, samples: list[Sample], batch_size: int = 4096) -> None:
    for start in range(0, len(samples), batch_size):
        indicator.update(samples[start : start + batch_size])


def compute_indicators(
    samples: list[Sample],
    *,
    embedder: Embedder | None,
    cache_dir: str | os.PathLike[str] | None = None,
    records: dict[str, ImageRecord] | None = None,
    tagger: TagGptTagger | None = None,
    complexity_scorer: LlmComplexityScorer | None = None,
    settings: IndicatorSettings = IndicatorSettings(),
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Every dataset indicator of ``samples`` (labels are written into ``sample.labels``).

    ``embedder=None`` skips response diversity (reported as not computed); ``tagger=None``
    uses the rule labeller; ``complexity_scorer=None`` leaves the LLM complexity not computed.
    """
    timings: dict[str, float] = {}
    step = on_step or (lambda _name: None)
    details: dict[str, Any] = {}

    step("task labels")
    with timed(timings, "task_labels"):
        if tagger is not None:
            details["task_labels"] = tagger.label(samples).details()
        else:
            labeller = RuleTaskLabeller()
            labeller(samples)
            details["task_labels"] = {"labeller": "rules", "rules": labeller.label_names}

    streaming = _streaming_indicators(embedder, cache_dir, records, settings)
    for indicator in streaming:
        step(indicator.name)
        with timed(timings, indicator.name):
            _feed(indicator, samples)
            details[indicator.name] = indicator.result()
    if complexity_scorer is not None:
        step("instruction complexity (LLM)")
        with timed(timings, "instruction_complexity_llm"):
            details["instruction_complexity_llm"] = complexity_scorer.score(samples)

    return _report(details, settings, timings, len(samples))


def _table(details: dict[str, Any]) -> dict[str, float | int | None]:
    response = details.get("response_diversity") or {}
    llm = details.get("instruction_complexity_llm") or {}
    return {
        "md": details["quality_scores"]["md"],
        "correctness": details["quality_scores"]["correctness"],
        "task_diversity": details["tasks"]["task_diversity"],
        "instruction_diversity": details["instruction_diversity"]["mean_clusters"],
        "response_diversity": response.get("log_clusters"),
        "object_granularity": details["object_granularity"]["object_granularity"],
        "instruction_complexity": llm.get("mean"),
        "instruction_complexity_proxy": details["instruction_complexity_proxy"]["proxy_complexity"],
        "balance": details["tasks"]["balance"]["share_variance"],
    }


def _flags(details: dict[str, Any]) -> dict[str, str]:
    """Table keys whose value must be read with a warning, and the warning."""
    response = details.get("response_diversity") or {}
    return {"response_diversity": response["degenerate"]} if response.get("degenerate") else {}


def shared_settings(
    datasets: list[tuple[Iterable[list[Sample]], str | os.PathLike[str] | None]],
    *,
    embedder: Embedder,
    settings: IndicatorSettings,
) -> IndicatorSettings:
    """``settings`` with one eps for all ``datasets`` ((batches of samples, embedding cache
    folder)): where they together have the most response clusters. A given eps is kept."""
    if not isinstance(settings.eps, str):
        return settings
    indicators = []
    for batches, cache_dir in datasets:
        indicator = _response_diversity(embedder, cache_dir, settings)
        for batch in batches:
            indicator.update(batch)
        indicators.append(indicator)
    return replace(
        settings,
        eps=shared_eps(indicators),
        eps_source=f"{EPS_RULE} over {len(datasets)} datasets together",
    )


def without_histograms(report: dict[str, Any]) -> dict[str, Any]:
    """The report without per-sample value lists (for ``indicators.json`` and ``--json``)."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "histogram_values"}
        return value

    result: dict[str, Any] = strip(report)
    return result
