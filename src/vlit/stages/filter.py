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
    (for quantile thresholds); the second splits shard by shard. ``dropped`` is committed after
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
            for shard in run.read_sample_shards(source):
                kept_now, dropped_now = sequence.split(shard)
                kept.add_rows(sample.to_row() for sample in kept_now)
                dropped.add_rows(sample.to_row() for sample in dropped_now)
                reasons.update(s.drop_reason.code for s in dropped_now if s.drop_reason)
                total += len(shard)
        assert kept.manifest is not None
        dropped.inputs["kept"] = {"id": kept.manifest.id, "rows": kept.manifest.rows}
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


def _score_values(run: RunDir, stage: str) -> ScoreValues:
    """The stage's scores gathered in one pass over its score columns only."""
    gathered = ScoreValues()
    for columns in run.read_columns(stage, ["scores", "failure_reason"]):
        for scores, failure in zip(columns["scores"], columns["failure_reason"], strict=True):
            gathered.add(dict(scores or ()), ok=failure is None)
    return gathered
