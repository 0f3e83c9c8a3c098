"""Score and filter a run directory: the library side of `vlit score` and `vlit filter`.

``score_run`` reads ``RUN/samples`` (after checking it is current), runs the chosen
per-sample stages (lint, grounding against ``RUN/records``, matching degree, correctness judge)
through the local runner, then the dataset-wide lint (length outliers, duplicates), and writes
``RUN/scores/``. A scorer that cannot run (no model weights, no records) does not stop the
others: its samples are marked not computed and the summary says why.

``filter_run`` reads ``RUN/scores/`` and writes ``RUN/kept/`` and ``RUN/dropped/``; every
dropped sample carries its ``drop_reason``.

Example:
    >>> options = ScoreOptions(clip="/models/clip-vit-b-32", clip_mode="per_turn")
    >>> summary = score_run(RunDir("runs/demo"), options)          # doctest: +SKIP
    >>> summary = filter_run(RunDir("runs/demo"), FilterOptions(min_md=25.0))  # doctest: +SKIP
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.images import is_url
from vlit.llm.base import StructuredSetting
from vlit.llm.config import LlmConfig, build_backend
from vlit.quality.filtering import (
    FailedGenerationFilter,
    FilterChain,
    LintFilter,
    MaxScoreFilter,
    MinScoreFilter,
    QuantileThreshold,
    RequireCorrectFilter,
    SampleFilter,
    ScoreValues,
)
from vlit.quality.grounding import SPACY_MODEL, AnnotationGrounding
from vlit.quality.judge import CorrectnessJudge
from vlit.quality.lint import DatasetLinter, DatasetLintFlags, SampleLinter
from vlit.quality.matching import ClipMatchingScorer, DecodeMode, TextMode
from vlit.rundir import RunDir
from vlit.runners.base import Resources, Stage
from vlit.runners.local import run_stages
from vlit.schema import ImageRecord, Sample


@dataclass(frozen=True, kw_only=True)
class ScoreOptions:
    """What `vlit score` computes. ``clip=None`` skips MD; ``judge`` needs ``llm``."""

    clip: str | None = None
    clip_mode: TextMode = "truncate"
    clip_device: str | None = None
    clip_batch_size: int | None = None  # None: 32 on a CPU, 256 on a GPU
    clip_decode: DecodeMode = "auto"
    decode_workers: int = 2
    judge: bool = False
    judge_votes: int = 3
    judge_structured: StructuredSetting = "auto"
    llm: LlmConfig | None = None
    grounding: bool = True
    spacy_model: str = SPACY_MODEL  # grounding's parser: a pipeline's name or folder
    lint: bool = True
    duplicate_threshold: float = 0.8
    seed: int = 0
    runner: Literal["local", "ray"] = "local"
    ray_address: str | None = None


@dataclass(frozen=True, kw_only=True)
class FilterOptions:
    """Thresholds of `vlit filter`; ``None`` switches a filter off."""

    min_md: float | None = None
    min_md_quantile: float | None = None
    require_correct: bool = False
    max_hallucination: float | None = None
    max_count_errors: float | None = None
    max_false_absent: float | None = None
    drop_lint: tuple[str, ...] = ()
    min_scores: dict[str, float] = field(default_factory=dict)
    max_scores: dict[str, float] = field(default_factory=dict)


def _records(run: RunDir) -> dict[str, ImageRecord]:
    if not run.has_stage("records"):
        return {}
    return {record.image_id: record for record in run.read_records()}


def score_settings(options: ScoreOptions) -> dict[str, Any]:
    """What decides the scores (the stage manifest records it; `vlit run` compares it)."""
    ignored = {"runner", "ray_address", "decode_workers", "clip_batch_size", "clip_decode"}
    settings = {k: v for k, v in options.__dict__.items() if k not in ignored}
    if options.llm is not None:
        settings["llm"] = {"base_url": options.llm.base_url, "model": options.llm.model}
    return settings


def score_run(
    run: RunDir, options: ScoreOptions, *, on_batch: Callable[[int], None] | None = None
) -> dict[str, Any]:
    """Score the run's samples into ``RUN/scores``; return the summary.

    Samples are read, scored and written shard by shard: in this process by the local runner;
    on Ray the workers read the input shards and write the output shards themselves (for a run
    directory on object storage the samples pass through this process instead). What stays in
    memory here is the records (one per image, for grounding and the judge) and what the
    dataset lint keeps per sample (answer length, text digest, MinHash signature), gathered in
    a first pass over the samples.
    """
    source = "samples"
    manifest = run.check_current(source)
    records = _records(run)
    summary: dict[str, Any] = {"input_stage": source, "samples": manifest.rows}
    stages: list[Stage] = []
    linter = SampleLinter() if options.lint else None
    if linter is not None:
        stages.append(linter)
    grounding = None
    if options.grounding and records:
        grounding = AnnotationGrounding(records=records, spacy_model=options.spacy_model)
        stages.append(grounding)
    elif options.grounding:
        summary["grounding"] = {"status": "not_run: this run has no records/ to check against"}
    matcher = None
    md_unavailable: str | None = None
    if options.clip is not None:
        matcher = _matcher(options)
        try:
            matcher.setup()
            stages.append(matcher)
        except ModelUnavailableError as error:
            md_unavailable = str(error)
            summary["md"] = {"status": "not_computed", "reason": md_unavailable}
            matcher = None
    judge = None
    if options.judge:
        if options.llm is None:
            raise ConfigError(
                "--judge needs an LLM endpoint",
                fix="pass --llm-base-url URL --llm-model NAME (any OpenAI-compatible server)",
            )
        judge = CorrectnessJudge(
            backend=build_backend(options.llm),
            journal_path=run.journal_path,
            records=records,
            votes=options.judge_votes,
            structured=options.judge_structured,
            seed=options.seed,
            concurrency=options.llm.concurrency,
        )
        stages.append(judge)
    if md_unavailable is not None:
        stages.insert(0, _MdNotComputed(options=options, reason=md_unavailable))
    lint_flags = None
    if options.lint:
        lint_flags = DatasetLintFlags(flags=_dataset_lint(run, source, options))
        stages.append(lint_flags)
    inputs_used = ("samples", "records") if records else ("samples",)
    writer = run.writer(
        "scores", inputs=inputs_used, settings=score_settings(options), command="vlit score"
    )
    with writer:
        try:
            if options.runner == "ray" and _files_on_ray(stages, run, options):
                for name in _score_files_on_ray(stages, run, source, writer.token, options):
                    writer.adopt(name)
            else:
                for sample in _scored(stages, run.read_samples(source), options, run, on_batch):
                    writer.add_rows([sample.to_row()])
        finally:
            if matcher is not None:
                matcher.close()
    means = _Means("ground_hallucination_rate", "md", "correct")
    for columns in run.read_columns("scores", ["scores"]):
        for scores in columns["scores"]:
            means.add(dict(scores or ()))
    if linter is not None and lint_flags is not None:
        summary["lint"] = {"samples_flagged": _merge(linter.counts, lint_flags.counts)}
    if grounding is not None:
        summary["grounding"] = grounding.summary() | means.of("ground_hallucination_rate")
    if matcher is not None:
        summary["md"] = (
            {"status": "computed"}
            | {k: v for k, v in matcher.provenance().items() if k != "prefix"}
            | dict(matcher.counts)
            | means.of("md")
        )
    if judge is not None:
        summary["correctness"] = dict(judge.counts) | means.of("correct")
        if judge.session is not None:
            summary["correctness"]["llm"] = judge.session.summary()
    if options.runner == "ray":
        summary["runner"] = {"kind": "ray", "address": options.ray_address or "local"}
    summary["written"] = writer.rows
    summary["output"] = str(run.stage_dir("scores"))
    run.save_summary("score", summary)
    return summary


def _dataset_lint(run: RunDir, source: str, options: ScoreOptions) -> dict[str, Counter[str]]:
    """The dataset lint's flags of the generated samples of ``source``, by sample id: found in
    one pass over the samples, tied to their ids in a second pass over two columns."""
    linter = DatasetLinter(duplicate_threshold=options.duplicate_threshold)
    by_index = linter.find(sample for sample in run.read_samples(source) if sample.ok)
    by_id: dict[str, Counter[str]] = {}
    index = 0
    for columns in run.read_columns(source, ["sample_id", "failure_reason"]):
        for sample_id, failure in zip(columns["sample_id"], columns["failure_reason"], strict=True):
            if failure is None:
                if index in by_index:
                    by_id[str(sample_id)] = by_index[index]
                index += 1
    return by_id


def _scored(
    stages: list[Stage],
    samples: Iterator[Sample],
    options: ScoreOptions,
    run: RunDir,
    on_batch: Callable[[int], None] | None,
) -> Iterator[Sample]:
    """``samples`` through ``stages`` in this process (streamed), or on Ray when its workers
    cannot use the stage files themselves (`_files_on_ray`), so the samples travel."""
    if options.runner != "ray":
        yield from run_stages(stages, samples, on_batch=on_batch)
        return
    from vlit.runners.ray_runner import run_stages_ray

    remote = [_for_ray(stage, options, run) for stage in stages]
    try:
        scored = run_stages_ray(remote, list(samples), address=options.ray_address)
    finally:
        _stop_journal_servers(remote)
    _add_worker_counts(stages, remote)
    yield from scored


def _files_on_ray(stages: list[Stage], run: RunDir, options: ScoreOptions) -> bool:
    """Whether Ray's workers can read and write the stage files themselves: the run is on a
    file system they share, and the cluster has room for the read and write tasks."""
    from vlit.runners.ray_runner import files_fit_cluster

    return not is_url(run.location) and files_fit_cluster(stages, options.ray_address)


def _score_files_on_ray(
    stages: list[Stage], run: RunDir, source: str, token: str, options: ScoreOptions
) -> list[str]:
    """Score on Ray, the workers reading ``source``'s shards and writing the scores' shards
    (``shard-<token>-<task>.parquet``) themselves; the names written, in order."""
    from vlit.runners.ray_runner import run_stages_ray_on_files

    manifest = run.check_current(source)
    folder = run.stage_dir(source).absolute()
    remote = [_for_ray(stage, options, run) for stage in stages]
    try:
        written = run_stages_ray_on_files(
            remote,
            [str(folder / shard["file"]) for shard in manifest.shards],
            output_dir=str(run.stage_dir("scores").absolute()),
            prefix=f"shard-{token}",
            address=options.ray_address,
        )
    finally:
        _stop_journal_servers(remote)
    _add_worker_counts(stages, remote)
    return written


def _stop_journal_servers(remote: list[Stage]) -> None:
    from vlit.runners.ray_journal import JournalClient

    for used in remote:
        if isinstance(used, CorrectnessJudge) and isinstance(used.journal, JournalClient):
            used.journal.stop_server()


def _add_worker_counts(stages: list[Stage], remote: list[Stage]) -> None:
    for stage, used in zip(stages, remote, strict=True):
        if used is not stage:  # the workers' counts were summed into the copy they used
            stage.counts.update(used.counts)  # type: ignore[attr-defined]


@dataclass
class _MdNotComputed:
    """Stage: records on every sample that MD was not computed (the model did not load)."""

    options: ScoreOptions
    reason: str
    name: str = "md_not_computed"
    resources: Resources = field(default_factory=Resources)

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            _mark_md_unavailable(sample, self.options, self.reason)
        return batch


def _matcher(options: ScoreOptions) -> ClipMatchingScorer:
    assert options.clip is not None
    return ClipMatchingScorer(
        model=options.clip,
        text_mode=options.clip_mode,
        device=options.clip_device,
        batch_size=options.clip_batch_size,
        decode=options.clip_decode,
        decode_workers=options.decode_workers,
    )


def _for_ray(stage: Stage, options: ScoreOptions, run: RunDir) -> Stage:
    """The copy of ``stage`` that Ray workers run: a matcher not set up yet (actors load their
    own model), a judge whose journal is served from this node to every worker."""
    if isinstance(stage, ClipMatchingScorer):
        return _matcher(options)
    if isinstance(stage, CorrectnessJudge):
        from vlit.runners.ray_journal import JournalClient, start_journal_server

        server = start_journal_server(run.journal_path, address=options.ray_address)
        remote = copy.copy(stage)
        remote.journal, remote.counts = JournalClient(server), Counter()
        return remote
    return stage


def _mark_md_unavailable(sample: Sample, options: ScoreOptions, reason: str) -> None:
    sample.scores.pop("md", None)
    sample.scores.pop("md_min", None)
    sample.provenance.setdefault("quality", {})["md"] = {
        "status": "not_computed: model_unavailable",
        "model": options.clip,
        "text_mode": options.clip_mode,
        "detail": reason,
    }


def _merge(*counters: Counter[str]) -> dict[str, int]:
    total: Counter[str] = Counter()
    for counter in counters:
        total.update(counter)
    return dict(sorted(total.items()))


class _Means:
    """Running means of some scores over a stream of samples."""

    def __init__(self, *scores: str) -> None:
        self.totals = dict.fromkeys(scores, 0.0)
        self.counts = dict.fromkeys(scores, 0)

    def add(self, scores: dict[str, float]) -> None:
        for score in self.totals:
            if score in scores:
                self.totals[score] += scores[score]
                self.counts[score] += 1

    def of(self, score: str) -> dict[str, float]:
        count = self.counts[score]
        if not count:
            return {}
        mean = round(self.totals[score] / count, 4)
        return {f"mean_{score}": mean, f"scored_{score}": count}


def build_filters(options: FilterOptions, scores: ScoreValues) -> list[SampleFilter]:
    """The filter chain for ``options``; quantile thresholds are resolved on ``scores``."""
    filters: list[SampleFilter] = [FailedGenerationFilter()]
    if options.min_md is not None and options.min_md_quantile is not None:
        raise ConfigError(
            "--min-md and --min-md-quantile both set a minimum MD",
            fix="pass only one of them",
        )
    minimum = options.min_md
    if options.min_md_quantile is not None:
        minimum = QuantileThreshold(options.min_md_quantile).of_values(
            scores.values.get("md", []), "md"
        )
    if minimum is not None:
        if "md" not in scores.present:
            raise ConfigError(
                "no sample has a matching degree, so --min-md cannot filter",
                fix="run `vlit score RUN --clip MODEL` first",
            )
        filters.append(MinScoreFilter(score="md", minimum=minimum))
    if options.require_correct:
        if "correct" not in scores.present:
            raise ConfigError(
                "no sample was judged, so --require-correct cannot filter",
                fix="run `vlit score RUN --judge --llm-base-url URL --llm-model NAME` first",
            )
        filters.append(RequireCorrectFilter())
    for score, limit, reason in (
        ("ground_hallucination_rate", options.max_hallucination, "hallucination"),
        ("ground_count_errors", options.max_count_errors, "count_errors"),
        ("ground_false_absent", options.max_false_absent, "false_absent"),
    ):
        if limit is not None:
            filters.append(MaxScoreFilter(score=score, maximum=limit, reason=reason))
    if options.drop_lint:
        filters.append(LintFilter(flags=options.drop_lint))
    for score, value in options.min_scores.items():
        filters.append(MinScoreFilter(score=score, minimum=value))
    for score, value in options.max_scores.items():
        filters.append(MaxScoreFilter(score=score, maximum=value))
    return filters


def filter_settings(options: FilterOptions) -> dict[str, Any]:
    """What decides the split (the stage manifests record it; `vlit run` compares it)."""
    return dict(options.__dict__)


def filter_run(run: RunDir, options: FilterOptions) -> dict[str, Any]:
    """Split ``RUN/scores`` into ``RUN/kept`` and ``RUN/dropped``; return the summary.

    Two streaming passes: the first reads only the score columns (for quantile thresholds),
    the second splits shard by shard. ``dropped`` is committed after ``kept`` and lists it as
    an input, so a filter killed between the two leaves a ``dropped`` that readers refuse.
    """
    source = "scores" if run.has_stage("scores") else run.latest_sample_stage()
    gathered = ScoreValues()
    for columns in run.read_columns(source, ["scores", "failure_reason"]):
        for scores, failure in zip(columns["scores"], columns["failure_reason"], strict=True):
            gathered.add(dict(scores or ()), ok=failure is None)
    filters = build_filters(options, gathered)
    chain = FilterChain(filters)
    settings = filter_settings(options)
    reasons: Counter[str] = Counter()
    total = 0
    kept = run.writer("kept", inputs=(source,), settings=settings, command="vlit filter")
    dropped = run.writer("dropped", inputs=(source,), settings=settings, command="vlit filter")
    with dropped:
        with kept:
            for shard in run.read_sample_shards(source):
                kept_now, dropped_now = chain.split(shard)
                kept.add_rows(sample.to_row() for sample in kept_now)
                dropped.add_rows(sample.to_row() for sample in dropped_now)
                reasons.update(str(s.drop_reason).split(":")[0] for s in dropped_now)
                total += len(shard)
        assert kept.manifest is not None
        dropped.inputs["kept"] = {"id": kept.manifest.id, "rows": kept.manifest.rows}
    summary: dict[str, Any] = {
        "input_stage": source,
        "total": total,
        "kept": kept.rows,
        "dropped": dropped.rows,
        "dropped_by_reason": dict(sorted(reasons.items())),
        "filters": chain.summary(),
        "thresholds": {
            f.name: getattr(f, "minimum", getattr(f, "maximum", None))
            for f in filters
            if hasattr(f, "minimum") or hasattr(f, "maximum")
        },
    }
    run.save_summary("filter", summary)
    return summary
