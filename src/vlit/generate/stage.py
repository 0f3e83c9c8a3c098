"""The generate stage over a run directory: ``RUN/records/`` -> ``RUN/samples/``.

One samples shard per records shard, written once all of its requests are answered; the stage
is committed (its manifest written) when every shard is, so a killed run leaves the previous
samples, or none, and never a part of them. Every answer is committed to
``RUN/journal.sqlite`` as it arrives, so a rerun (after a crash, a SIGKILL or a spent budget)
sends only the requests that have no answer yet and rebuilds the same samples, in the same
order, with the same bytes.

Example:
    >>> settings = GenerationSettings(modes={"conversation": 1.0}, n=5)
    >>> summary = generate_run(RunDir("runs/demo"), settings=settings, backend=backend)
    ... # doctest: +SKIP
    >>> summary["samples_ok"] + sum(summary["samples_failed"].values()) == summary["samples"]
    ... # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from vlit.errors import ConfigError
from vlit.generate.generator import (
    FAILURE_LLM,
    ConversationGenerator,
    GenerationSettings,
    PlannedRequest,
    ProgressCallback,
)
from vlit.llm.base import LlmBackend, Outcome
from vlit.llm.journal import LlmJournal
from vlit.llm.response_format import structured_summary
from vlit.llm.session import LlmSession, SessionUsage, TokenPrices
from vlit.rundir import RunDir
from vlit.schema import ImageRecord, Sample

SAMPLES_STAGE = "samples"
FAILURE_BUDGET = "not generated: the request budget is spent (rerun with a larger budget)"
_BUDGET_ERROR_PREFIX = "budget exhausted"  # how LlmSession words its refusals


def generate_run(
    run: RunDir,
    *,
    settings: GenerationSettings,
    backend: LlmBackend | None,
    concurrency: int = 4,
    max_requests: int | None = None,
    max_cost: float | None = None,
    prices: TokenPrices | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Generate samples for every record of ``run``; write them and return the summary.

    ``backend`` may be ``None`` only when no LLM mode is asked for (adaptation alone).
    The summary is also saved in ``run.json`` under ``generate``.
    """
    records_stage = run.check_current("records")
    if settings.llm_modes and backend is None:
        raise ConfigError(
            f"modes {', '.join(settings.llm_modes)} need an LLM",
            fix="configure llm (or pass --llm-base-url), or use only the adaptation mode",
        )
    generator = ConversationGenerator(
        settings=settings,
        images_dir=run.images_dir.absolute(),
        images_root=run.images_location,
        generator_info=backend.describe() if backend is not None else {},
    )
    settings_record = {
        "generation": settings,
        "model": backend.describe() if backend is not None else None,
        "max_requests": max_requests,
        "max_cost": max_cost,
    }
    journal = LlmJournal(run.journal_path) if backend is not None else None
    counts = _Counts()
    usage = SessionUsage()
    try:
        session = (
            LlmSession(
                backend,
                journal=journal,
                concurrency=concurrency,
                max_requests=max_requests,
                max_cost=max_cost,
                prices=prices,
            )
            if backend is not None
            else None
        )
        writer = run.writer(
            SAMPLES_STAGE, inputs=("records",), settings=settings_record, command="vlit generate"
        )
        with writer:
            shard_count = len(records_stage.shards)
            for index, records in enumerate(run.read_record_shards()):
                step = f"generating (shard {index + 1}/{shard_count})"
                samples, requests = _generate_shard(generator, session, records, step, progress)
                writer.write_shard([sample.to_row() for sample in samples])
                counts.add(records, samples, requests)
            if session is not None:
                usage = session.usage()
            writer.complete = usage.stopped is None
        journal_totals = journal.totals() if journal is not None else None
    finally:
        if journal is not None:
            journal.close()
    summary: dict[str, Any] = {
        "images": counts.images,
        "modes": list(settings.modes),
        "model": backend.model_name if backend is not None else None,
        "requests": counts.requests,
        "requests_sent": usage.requests_sent,
        "generations_received": usage.generations_received,
        "from_journal": usage.answered_from_journal,
        "samples": counts.samples,
        "samples_ok": counts.ok,
        "samples_failed": dict(sorted(counts.failed.items())),
        "requests_failed": counts.requests_failed,
        "all_requests_failed": 0 < counts.requests_failed
        and counts.requests_failed == counts.requests - counts.requests_refused,
        "first_error": counts.first_error,
        "samples_ok_by_mode": dict(sorted(counts.ok_by_mode.items())),
        "samples_truncated": counts.truncated,
        "samples_schema_valid": counts.schema_valid,
        "llm_generations": counts.generations,
        "llm_generations_parsed": counts.generations_parsed,
        "structured": structured_summary(backend, settings.structured),
        "tokens_in": usage.prompt_tokens,
        "tokens_out": usage.completion_tokens,
        "cost": usage.cost,
        "retries": usage.retries,
        "rate_limited": usage.rate_limited,
        "budget_exhausted": usage.stopped is not None,
        "journal": {
            "requests": journal_totals.requests if journal_totals else 0,
            "answers": journal_totals.answers if journal_totals else 0,
            "tokens_in": journal_totals.prompt_tokens if journal_totals else 0,
            "tokens_out": journal_totals.completion_tokens if journal_totals else 0,
        },
    }
    run.save_summary("generate", summary)
    return summary


def _generate_shard(
    generator: ConversationGenerator,
    session: LlmSession | None,
    records: list[ImageRecord],
    step: str,
    progress: ProgressCallback | None,
) -> tuple[list[Sample], int]:
    """The shard's samples in plan order (record, mode, object, rollout), and its request count."""
    planned: list[PlannedRequest | Sample] = []
    for done, record in enumerate(records, start=1):
        planned.extend(generator.plan(record))
        if progress is not None:
            progress("planning requests", done, len(records))
    requests = [item.request for item in planned if isinstance(item, PlannedRequest)]
    outcomes: list[Outcome] = []
    if requests:
        assert session is not None  # generate_run checked that LLM modes have a backend
        if progress is not None:
            session.progress = lambda done, total: progress(step, done, total)
        outcomes = session.run(requests)
    answers = iter(outcomes)
    samples: list[Sample] = []
    for item in planned:
        if isinstance(item, Sample):
            samples.append(item)
            continue
        outcome = next(answers)
        made = generator.samples_from(item, outcome)
        if outcome.error is not None and outcome.error.startswith(_BUDGET_ERROR_PREFIX):
            for sample in made:
                sample.failure_reason = FAILURE_BUDGET
        samples.extend(made)
    return samples, len(requests)


class _Counts:
    def __init__(self) -> None:
        self.images = 0
        self.requests = 0
        self.samples = 0
        self.ok = 0
        self.truncated = 0
        self.schema_valid = 0
        self.generations = 0  # LLM answers received (a sample has the answer's finish_reason)
        self.generations_parsed = 0
        self.failed: Counter[str] = Counter()
        self.ok_by_mode: Counter[str] = Counter()
        self.requests_failed = 0  # requests that got an error (not refused by the budget)
        self.requests_refused = 0  # requests the budget did not let through
        self.first_error: str | None = None

    def add(self, records: list[ImageRecord], samples: list[Sample], requests: int) -> None:
        self.images += len(records)
        self.requests += requests
        self.samples += len(samples)
        for sample in samples:
            if "finish_reason" in sample.provenance:
                self.generations += 1
                self.generations_parsed += sample.ok
            if sample.ok:
                self.ok += 1
                self.ok_by_mode[sample.mode] += 1
                self.truncated += bool(sample.provenance.get("truncated"))
                self.schema_valid += sample.provenance.get("parse_format") == "json-schema"
            else:
                self.failed[str(sample.failure_reason)] += 1
                self._count_failed_request(sample)

    def _count_failed_request(self, sample: Sample) -> None:
        """One failed request per failed rollout 0 (its other rollouts share the error)."""
        if sample.provenance.get("rollout") != 0:
            return
        if sample.failure_reason == FAILURE_BUDGET:
            self.requests_refused += 1
        if sample.failure_reason != FAILURE_LLM:
            return
        self.requests_failed += 1
        if self.first_error is None:
            self.first_error = str(sample.provenance.get("llm_error"))
