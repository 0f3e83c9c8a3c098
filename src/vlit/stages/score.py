"""The score stage: ``RUN/samples/`` (and ``RUN/records/``) -> ``RUN/scores/``.

`ScoreSettings` is the recipe's ``score`` section and the defaults of `vlit score`'s options.
`run` checks the samples are current, sends them through the chosen per-sample steps (lint,
grounding against ``RUN/records``, matching degree, correctness judge) on the given runner,
then records the dataset-wide lint (length outliers, duplicates). A scorer that cannot run (no
model weights, no records) does not stop the others: its samples are marked not computed and
the summary says why.

Example:
    >>> settings = ScoreSettings(clip_model="/models/clip-vit-b-32", clip_mode="per_turn")
    >>> summary = run(RunDir("runs/demo"), settings)          # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import Field

from vlit.errors import ConfigError, ModelUnavailableError
from vlit.llm.base import StructuredSetting
from vlit.llm.config import LlmConfig, build_backend
from vlit.quality.grounding import SPACY_MODEL, AnnotationGrounding
from vlit.quality.judge import CorrectnessJudge
from vlit.quality.lint import DatasetLinter, DatasetLintFeed, DatasetLintFlags, SampleLinter
from vlit.quality.matching import ClipMatchingScorer
from vlit.rundir import RunDir
from vlit.runners.base import Resources, Runner, Step, build_runner
from vlit.schema import ImageRecord, Sample
from vlit.stages.base import Settings, Summary
from vlit.stages.generate import LlmSettings


class JudgeSettings(Settings):
    """The LLM correctness judge (paper: 3 votes, majority)."""

    enabled: bool = True
    votes: int = Field(default=3, ge=1)
    structured: StructuredSetting = Field(
        default="auto", description="structured output: constrain verdicts to their schema"
    )
    llm: LlmSettings | None = None  # None: the recipe's `llm`


class ScoreSettings(Settings):
    """Per-sample scoring: lint, grounding against annotations, CLIP matching degree, judge
    (the recipe's ``score`` section)."""

    clip_model: str | None = None  # a local folder or hub id of a CLIP/SigLIP checkpoint
    clip_mode: Literal["truncate", "per_turn"] = "truncate"
    clip_device: str | None = None  # cpu, cuda, cuda:1 (default: a GPU when present)
    clip_batch_size: int | None = Field(default=None, ge=1)  # default: 32 on a CPU, 256 on a GPU
    clip_decode: Literal["auto", "workers", "device"] = "auto"  # device: nvjpeg on a GPU
    decode_workers: int = Field(default=2, ge=0)  # processes decoding images for MD
    lint: bool = True
    grounding: bool = True
    spacy_model: str = SPACY_MODEL  # grounding's spaCy pipeline: name or folder
    judge: JudgeSettings | None = None  # None: no correctness judge

    def recorded(self, judge_llm: LlmConfig | None, seed: int) -> dict[str, Any]:
        """What decides the scores (the stage manifest records it; `vlit run` compares it)."""
        how_fast = {"decode_workers", "clip_batch_size", "clip_decode", "judge"}
        recorded = self.model_dump(mode="json", exclude=how_fast)
        judge = self.judge if self.judge is not None and self.judge.enabled else None
        recorded["judge_votes"] = judge.votes if judge is not None else None
        recorded["judge_structured"] = judge.structured if judge is not None else None
        if judge is not None and judge_llm is not None:
            recorded["llm"] = {"base_url": judge_llm.base_url, "model": judge_llm.model}
        recorded["seed"] = seed
        return recorded


class ScoreSummary(Summary):
    """The counts of one score run (``run.json`` ``score``, ``vlit score --json``)."""

    omitted_when_none = ("lint", "grounding", "md", "correctness", "runner")

    input_stage: str
    samples: int
    lint: dict[str, Any] | None = None
    grounding: dict[str, Any] | None = None
    md: dict[str, Any] | None = None
    correctness: dict[str, Any] | None = None
    runner: dict[str, Any] | None = None
    written: int = 0
    output: str = ""


def _records(run: RunDir) -> dict[str, ImageRecord]:
    if not run.has_stage("records"):
        return {}
    return {record.image_id: record for record in run.read_records()}


def run(
    run: RunDir,
    settings: ScoreSettings,
    runner: Runner | None = None,
    *,
    judge_llm: LlmConfig | None = None,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> ScoreSummary:
    """Score the run's samples into ``RUN/scores``; return (and save) the summary.

    ``judge_llm`` is the judge's LLM (needed when ``settings.judge`` is enabled); ``seed``
    seeds its votes. Samples are read, scored and written shard by shard by ``runner``
    (default: this process; see `vlit.runners.base.Runner`). What stays in memory here is the
    records (one per image, for grounding and the judge) and what the dataset lint keeps per
    sample (answer length, text digest, MinHash signature), gathered in a first pass.
    """
    runner = runner or build_runner()
    source = "samples"
    manifest = run.check_current(source)
    records = _records(run)
    summary = ScoreSummary(input_stage=source, samples=manifest.rows)
    steps: list[Step] = []
    linter = SampleLinter() if settings.lint else None
    if linter is not None:
        steps.append(linter)
    grounding = None
    if settings.grounding and records:
        grounding = AnnotationGrounding(records=records, spacy_model=settings.spacy_model)
        steps.append(grounding)
    elif settings.grounding:
        summary.grounding = {"status": "not_run: this run has no records/ to check against"}
    matcher = None
    md_unavailable: str | None = None
    if settings.clip_model is not None:
        matcher = ClipMatchingScorer(
            model=settings.clip_model,
            text_mode=settings.clip_mode,
            device=settings.clip_device,
            batch_size=settings.clip_batch_size,
            decode=settings.clip_decode,
            decode_workers=settings.decode_workers,
        )
        try:
            matcher.setup()
            steps.append(matcher)
        except ModelUnavailableError as error:
            md_unavailable = str(error)
            summary.md = {"status": "not_computed", "reason": md_unavailable}
            matcher = None
    judge = None
    judge_settings = settings.judge
    if judge_settings is not None and judge_settings.enabled:
        if judge_llm is None:
            raise ConfigError(
                "--judge needs an LLM endpoint",
                fix="pass --llm-base-url URL --llm-model NAME (any OpenAI-compatible server)",
            )
        judge = CorrectnessJudge(
            backend=build_backend(judge_llm),
            journal_path=run.journal_path,
            records=records,
            votes=judge_settings.votes,
            structured=judge_settings.structured,
            seed=seed,
            concurrency=judge_llm.concurrency,
        )
        steps.append(judge)
    if md_unavailable is not None:
        steps.insert(0, _MdNotComputed(settings=settings, reason=md_unavailable))
    lint_flags = None
    if settings.lint:
        lint_flags = DatasetLintFlags(flags=_dataset_lint(run, source, runner))
        steps.append(lint_flags)
    inputs_used = ("samples", "records") if records else ("samples",)
    recorded = settings.recorded(judge_llm if judge is not None else None, seed)
    writer = run.writer("scores", inputs=inputs_used, settings=recorded, command="vlit score")
    with writer:
        try:
            runner.map_stage(steps, run, source, writer, on_batch=on_batch)
        finally:
            if matcher is not None:
                matcher.close()
    means = _Means("ground_hallucination_rate", "md", "correct")
    for columns in run.read_columns("scores", ["scores"]):
        for scores in columns["scores"]:
            means.add(dict(scores or ()))
    if linter is not None and lint_flags is not None:
        summary.lint = {"samples_flagged": _merge(linter.counts, lint_flags.counts)}
    if grounding is not None:
        summary.grounding = grounding.summary() | means.of("ground_hallucination_rate")
    if matcher is not None:
        summary.md = (
            {"status": "computed"}
            | {k: v for k, v in matcher.provenance().items() if k != "prefix"}
            | dict(matcher.counts)
            | means.of("md")
        )
    if judge is not None:
        summary.correctness = dict(judge.counts) | means.of("correct")
        if judge.session is not None:
            summary.correctness["llm"] = judge.session.summary()
    summary.runner = runner.describe()
    summary.written = writer.rows
    summary.output = str(run.stage_dir("scores"))
    return summary.save(run, "score")


def _dataset_lint(run: RunDir, source: str, runner: Runner) -> dict[str, Counter[str]]:
    """The dataset lint's flags of the generated samples of ``source``, by sample id: found
    from the measures of each shard (taken by ``runner``), tied to their ids in a pass over
    two columns."""
    with DatasetLintFeed(DatasetLinter()) as feed:
        runner.fold(feed, run, source)
        by_index = feed.flags()
    by_id: dict[str, Counter[str]] = {}
    index = 0
    for columns in run.read_columns(source, ["sample_id", "failure_reason"]):
        for sample_id, failure in zip(columns["sample_id"], columns["failure_reason"], strict=True):
            if failure is None:
                if index in by_index:
                    by_id[str(sample_id)] = by_index[index]
                index += 1
    return by_id


@dataclass
class _MdNotComputed:
    """Step: records on every sample that MD was not computed (the model did not load)."""

    settings: ScoreSettings
    reason: str
    name: str = "md_not_computed"
    resources: Resources = field(default_factory=Resources)
    counts: Counter[str] = field(default_factory=Counter)

    def setup(self) -> None:
        """Nothing to load."""

    def __call__(self, batch: list[Sample]) -> list[Sample]:
        for sample in batch:
            _mark_md_unavailable(sample, self.settings, self.reason)
        return batch


def _mark_md_unavailable(sample: Sample, settings: ScoreSettings, reason: str) -> None:
    sample.scores.pop("md", None)
    sample.scores.pop("md_min", None)
    sample.provenance.setdefault("quality", {})["md"] = {
        "status": "not_computed: model_unavailable",
        "model": settings.clip_model,
        "text_mode": settings.clip_mode,
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
