"""The filter stage: ``RUN/scores/`` -> ``RUN/kept/`` and ``RUN/dropped/``.

`FilterSettings` is the recipe's ``filter`` section and the defaults of `vlit filter`'s
options. Every dropped sample carries its ``drop_reason`` (a `vlit.reasons.Reason`); the
summary counts them by code.

Example:
    >>> summary = run(RunDir("runs/demo"), FilterSettings(min_md=25.0))  # doctest: +SKIP
    >>> summary.kept + summary.dropped == summary.total                   # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import Counter

import pyarrow as pa
from pydantic import Field

from vlit.errors import ConfigError
from vlit.quality.filtering import (
    FailedGenerationFilter,
    FilterSequence,
    LintFilter,
    MaxScoreFilter,
    MinScoreFilter,
    QuantileThreshold,
    RequireCorrectFilter,
    SampleFilter,
    ScoreValues,
)
from vlit.rundir import RunDir
from vlit.runners.base import Runner
from vlit.schema import Sample
from vlit.stages.base import Settings, Summary


class FilterSettings(Settings):
    """Keep/drop rules (failed generations are always dropped; the recipe's ``filter``
    section). ``thresholds`` and ``maxima`` map any score name to the minimum / maximum a kept
    sample needs."""

    min_md: float | None = None
    min_md_quantile: float | None = Field(default=None, ge=0.0, le=1.0)
    require_correct: bool = False
    max_hallucination: float | None = Field(default=None, ge=0.0)
    max_count_errors: float | None = Field(default=None, ge=0.0)
    max_false_absent: float | None = Field(default=None, ge=0.0)
    drop_lint: list[str] = Field(default_factory=list)
    thresholds: dict[str, float] = Field(default_factory=dict)
    maxima: dict[str, float] = Field(default_factory=dict)


class FilterSummary(Summary):
    """The counts of one filter run (``run.json`` ``filter``, ``vlit filter --json``)."""

    input_stage: str
    total: int
    kept: int
    dropped: int
    dropped_by_reason: dict[str, int]
    filters: dict[str, dict[str, int]]
    thresholds: dict[str, float | None]


def build_filters(settings: FilterSettings, scores: ScoreValues) -> list[SampleFilter]:
    """The filters ``settings`` ask for, in order; quantile thresholds are resolved on
    ``scores``."""
    filters: list[SampleFilter] = [FailedGenerationFilter()]
    if settings.min_md is not None and settings.min_md_quantile is not None:
        raise ConfigError(
            "--min-md and --min-md-quantile both set a minimum MD",
            fix="pass only one of them",
        )
    minimum = settings.min_md
    if settings.min_md_quantile is not None:
        minimum = QuantileThreshold(settings.min_md_quantile).of_values(
            scores.values.get("md", []), "md"
        )
    if minimum is not None:
        if "md" not in scores.present:
            raise ConfigError(
                "no sample has a matching degree, so --min-md cannot filter",
                fix="run `vlit score RUN --clip MODEL` first",
            )
        filters.append(MinScoreFilter(score="md", minimum=minimum))
    if settings.require_correct:
        if "correct" not in scores.present:
            raise ConfigError(
                "no sample was judged, so --require-correct cannot filter",
                fix="run `vlit score RUN --judge --llm-base-url URL --llm-model NAME` first",
            )
        filters.append(RequireCorrectFilter())
    for score, limit, reason in (
        ("ground_hallucination_rate", settings.max_hallucination, "hallucination"),
        ("ground_count_errors", settings.max_count_errors, "count_errors"),
        ("ground_false_absent", settings.max_false_absent, "false_absent"),
    ):
        if limit is not None:
            filters.append(MaxScoreFilter(score=score, maximum=limit, reason=reason))
    if settings.drop_lint:
        filters.append(LintFilter(flags=settings.drop_lint))
    for score, value in settings.thresholds.items():
        filters.append(MinScoreFilter(score=score, minimum=value))
    for score, value in settings.maxima.items():
        filters.append(MaxScoreFilter(score=score, maximum=value))
    return filters


def run(run: RunDir, settings: FilterSettings, runner: Runner | None = None) -> FilterSummary:
    """Split ``RUN/scores`` into ``RUN/kept`` and ``RUN/dropped``; return (and save) the
    summary.

    Streaming passes in this process whatever the ``runner`` (a split is cheap): a first one,
    only when an MD or correctness rule asks what the stage holds, reads only the score columns
    (for quantile thresholds); the second splits shard by shard, decoding only the columns
    the rules read and passing rows through as Arrow data (a kept row is written as it was
    read). ``dropped`` is committed after
    ``kept`` and lists it as an input, so a filter killed between the two leaves a ``dropped``
    that readers refuse.
    """
    source = "scores" if run.has_stage("scores") else run.latest_sample_stage()
    md_rule = settings.min_md is not None or settings.min_md_quantile is not None
    if md_rule or settings.require_correct:  # they ask what scores the stage holds
        gathered = _score_values(run, source)
    else:
        run.check_current(source)  # a stale stage is refused before the rules are checked
        gathered = ScoreValues()
    filters = build_filters(settings, gathered)
    sequence = FilterSequence(filters)
    recorded = settings.model_dump(mode="json")
    reasons: Counter[str] = Counter()
    total = 0
    kept = run.writer("kept", inputs=(source,), settings=recorded, command="vlit filter")
    dropped = run.writer("dropped", inputs=(source,), settings=recorded, command="vlit filter")
    with dropped:
        with kept:
            for table, shard in run.read_sample_tables(source, _FILTER_COLUMNS):
                sequence.split(shard)
                kept.add_table(_kept_rows(table, shard))
                dropped.add_table(_dropped_rows(table, shard))
                reasons.update(s.drop_reason.code for s in shard if s.drop_reason)
                total += len(shard)
        assert kept.manifest is not None
        dropped.inputs["kept"] = {"id": kept.manifest.id, "rows": kept.manifest.rows}
    pa.default_memory_pool().release_unused()  # Arrow's freed pages, before the next stage
    return FilterSummary(
        input_stage=source,
        total=total,
        kept=kept.rows,
        dropped=dropped.rows,
        dropped_by_reason=dict(sorted(reasons.items())),
        filters=sequence.summary(),
        thresholds={
            f.name: getattr(f, "minimum", getattr(f, "maximum", None))
            for f in filters
            if hasattr(f, "minimum") or hasattr(f, "maximum")
        },
    ).save(run, "filter")


# What the rules read, and what a sample's decoding checks (a damaged JSON column fails it).
_FILTER_COLUMNS = ("sample_id", "scores", "failure_reason", "provenance", "extra")
# The columns a dropped row's decoding may change (its reasons, a damaged column emptied).
_DROPPED_COLUMNS = ("failure_reason", "drop_reason", "provenance", "extra")


def _kept_rows(table: pa.Table, shard: list[Sample]) -> pa.Table:
    """The kept samples' rows as they were read, without a drop reason."""
    chosen = [i for i, sample in enumerate(shard) if sample.drop_reason is None]
    kept = table.take(pa.array(chosen, pa.int64()))
    column = kept.schema.get_field_index("drop_reason")
    return kept.set_column(column, "drop_reason", pa.nulls(kept.num_rows, pa.string()))


def _dropped_rows(table: pa.Table, shard: list[Sample]) -> pa.Table:
    """The dropped samples' rows, with their reasons (and any column their decoding emptied)
    as `Sample.to_row` writes them."""
    chosen = [i for i, sample in enumerate(shard) if sample.drop_reason is not None]
    dropped = table.take(pa.array(chosen, pa.int64()))
    rows = [shard[i].to_row() for i in chosen]
    for name in _DROPPED_COLUMNS:
        column = dropped.schema.get_field_index(name)
        values = pa.array([row[name] for row in rows], pa.string())
        dropped = dropped.set_column(column, name, values)
    return dropped


def _score_values(run: RunDir, stage: str) -> ScoreValues:
    """The stage's scores gathered in one pass over its score columns only."""
    gathered = ScoreValues()
    for columns in run.read_columns(stage, ["scores", "failure_reason"]):
        for scores, failure in zip(columns["scores"], columns["failure_reason"], strict=True):
            gathered.add(dict(scores or ()), ok=failure is None)
    return gathered
