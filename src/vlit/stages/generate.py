"""The generate stage: ``RUN/records/`` -> ``RUN/samples/``, with an LLM or by adaptation.

`GenerateSettings` is the recipe's ``generate`` section and the defaults of `vlit generate`'s
options; `LlmSettings` is the recipe's ``llm`` section. One samples shard per records shard,
written once all of its requests are answered; the stage is committed (its manifest written)
when every shard is, so a killed run leaves the previous samples, or none, and never a part of
them. Every answer is committed to ``RUN/journal.sqlite`` as it arrives, so a rerun (after a
crash, a SIGKILL or a spent budget) sends only the requests that have no answer yet and
rebuilds the same samples, in the same order, with the same bytes.

Example:
    >>> settings = GenerateSettings(modes=["conversation"], n=5)
    >>> summary = run(RunDir("runs/demo"), settings, llm=LlmSettings())   # doctest: +SKIP
    >>> summary.samples_ok + sum(summary.samples_failed.values()) == summary.samples
    ... # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Literal

from pydantic import Field, field_validator

from vlit.errors import ConfigError
from vlit.generate.adaptation import ADAPTATION_MODE
from vlit.generate.generator import (
    ConversationGenerator,
    GenerationSettings,
    PlannedRequest,
    ProgressCallback,
)
from vlit.generate.prompts import LLM_MODES
from vlit.generate.regions import RegionRule
from vlit.llm.base import LlmBackend, Outcome
from vlit.llm.config import LLM_CONCURRENCY, LlmConfig, build_backend
from vlit.llm.journal import LlmJournal
from vlit.llm.openai_compatible import DEFAULT_MAX_RESPONSE_BYTES, TokenLimitParam, Transport
from vlit.llm.response_format import structured_summary
from vlit.llm.session import LlmSession, SessionUsage, TokenPrices
from vlit.reasons import BUDGET_SPENT, LLM_REQUEST_FAILED, Reason
from vlit.rundir import RunDir
from vlit.runners.base import Runner
from vlit.schema import ImageRecord, Sample
from vlit.stages.base import Settings, Summary

SAMPLES_STAGE = "samples"
FAILURE_BUDGET = Reason(BUDGET_SPENT, "not generated (rerun with a larger budget)")
ALL_MODES: tuple[str, ...] = (*LLM_MODES, ADAPTATION_MODE)


class AdaptationSettings(Settings):
    """Annotation adaptation (mode ``adaptation``, no LLM)."""

    tasks: list[str] | None = None  # None: every task
    max_per_task: int = Field(default=2, ge=1)
    vqa_style: Literal["brief", "expanded", "mixed"] = "mixed"


class GenerateSettings(Settings):
    """Instruction-response generation (the recipe's ``generate`` section).

    ``modes`` is a list (every image gets every mode) or a mapping of mode to the share of
    images that get it (``{conversation: 1.0, region: 0.5}``; chosen per image with the seed).
    """

    modes: list[str] | dict[str, float] = Field(default_factory=lambda: ["conversation"])
    n: int = Field(default=5, ge=1, description="generations per prompt (rollouts)")
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    max_tokens: int = Field(default=1024, ge=16)
    seed: int = 0
    examples_per_request: int = Field(default=2, ge=0)
    concurrency: int = Field(default=LLM_CONCURRENCY, ge=1, description="requests in flight")
    max_requests: int | None = Field(default=None, ge=0, description="requests sent, at most")
    max_cost: float | None = Field(default=None, gt=0.0, description="needs llm.prices")
    regions_per_image: int = Field(default=1, ge=1)
    min_region_area: float = Field(default=0.01, ge=0.0, lt=1.0, description="share of the image")
    absent_objects: int = Field(
        default=3, ge=1, description="absent objects named per negative request"
    )
    prompts_dir: str | None = None
    structured: Literal["auto", "json_schema", "json_object", "off"] = Field(
        default="auto", description="structured output: constrain answers to the JSON schema"
    )
    adaptation: AdaptationSettings = AdaptationSettings()

    @field_validator("modes")
    @classmethod
    def _known_modes(cls, value: list[str] | dict[str, float]) -> list[str] | dict[str, float]:
        names = list(value)
        unknown = [name for name in names if name not in ALL_MODES]
        if unknown:
            raise ValueError(f"unknown mode(s) {unknown}; use some of: {', '.join(ALL_MODES)}")
        if not names:
            raise ValueError(f"no mode given; use some of: {', '.join(ALL_MODES)}")
        if len(set(names)) != len(names):
            raise ValueError("a mode is listed twice")
        if isinstance(value, dict):
            bad = [name for name, share in value.items() if not 0.0 < share <= 1.0]
            if bad:
                raise ValueError(f"shares must be in (0, 1]; check {bad}")
        return value

    def mode_shares(self) -> dict[str, float]:
        """Mode -> share of images, in recipe order."""
        if isinstance(self.modes, dict):
            return dict(self.modes)
        return {mode: 1.0 for mode in self.modes}

    def generation(self) -> GenerationSettings:
        """What the generator reads from these settings."""
        return GenerationSettings(
            modes=self.mode_shares(),
            n=self.n,
            temperature=self.temperature,
            max_tokens=self.max_tokens,
            seed=self.seed,
            examples_per_request=self.examples_per_request,
            region_rule=RegionRule(
                min_area_fraction=self.min_region_area, per_image=self.regions_per_image
            ),
            absent_objects=self.absent_objects,
            prompts_dir=self.prompts_dir,
            adaptation_tasks=tuple(self.adaptation.tasks) if self.adaptation.tasks else None,
            adaptation_max_per_task=self.adaptation.max_per_task,
            adaptation_vqa_style=self.adaptation.vqa_style,
            structured=self.structured,
        )


class PricesSettings(Settings):
    """Price per 1000 prompt and completion tokens (any currency), for cost and budgets."""

    prompt_per_1k: float = Field(default=0.0, ge=0.0)
    completion_per_1k: float = Field(default=0.0, ge=0.0)

    def token_prices(self) -> TokenPrices:
        return TokenPrices(
            prompt_per_1k=self.prompt_per_1k, completion_per_1k=self.completion_per_1k
        )


class LlmSettings(Settings):
    """The generator LLM (the recipe's ``llm`` section; maps onto `vlit.llm.LlmConfig`).

    ``kind: local`` runs a model in this process (the embedded SmolLM2-135M when ``model`` is
    left out); ``kind: openai`` talks to any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang,
    llama.cpp server, Ollama) at ``base_url``; ``kind: vllm`` runs vLLM in process. The API key
    is read from the environment variable named by ``api_key_env``; its value is never written
    anywhere.
    """

    kind: Literal["openai", "local", "vllm"] = "local"
    base_url: str | None = None
    model: str | None = None
    gguf_file: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    # Extra HTTP headers (Azure's api-key, a gateway's own); a value "$NAME" is read from that
    # environment variable. Values are never written to the run.
    headers: dict[str, str] = Field(default_factory=dict)
    token_limit_param: TokenLimitParam = "max_tokens"
    max_response_bytes: int = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1)
    timeout_s: float = Field(default=120.0, gt=0.0)
    max_retries: int = Field(default=6, ge=0)
    supports_n: bool = True
    # Who speaks HTTP under httpx: auto (httpx's own where HTTP/2 can be used, else aiohttp).
    transport: Transport = "auto"
    prices: PricesSettings | None = None

    def to_config(self, *, concurrency: int) -> LlmConfig:
        return LlmConfig(
            kind=self.kind,
            model=self.model,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            headers=dict(self.headers),
            token_limit_param=self.token_limit_param,
            max_response_bytes=self.max_response_bytes,
            gguf_file=self.gguf_file,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            supports_n=self.supports_n,
            concurrency=concurrency,
            transport=self.transport,
            price_per_1k_prompt=self.prices.prompt_per_1k if self.prices else None,
            price_per_1k_completion=self.prices.completion_per_1k if self.prices else None,
        )


class JournalCounts(Summary):
    """What the run's journal holds."""

    requests: int = 0
    answers: int = 0
    tokens_in: int = 0
    tokens_out: int = 0


class GenerateSummary(Summary):
    """The counts of one generate run (``run.json`` ``generate``, ``vlit generate --json``)."""

    images: int
    modes: list[str]
    model: str | None
    requests: int
    requests_sent: int
    generations_received: int
    from_journal: int
    samples: int
    samples_ok: int
    samples_failed: dict[str, int]  # by failure code (vlit.reasons)
    requests_failed: int
    all_requests_failed: bool
    first_error: str | None
    samples_ok_by_mode: dict[str, int]
    samples_truncated: int
    samples_schema_valid: int
    llm_generations: int
    llm_generations_parsed: int
    structured: dict[str, Any]
    tokens_in: int
    tokens_out: int
    cost: float | None
    retries: int
    rate_limited: int
    budget_exhausted: bool
    journal: JournalCounts


def backend_for(settings: GenerateSettings, llm: LlmSettings) -> LlmBackend | None:
    """The LLM backend ``settings`` need (None when no LLM mode is asked for)."""
    if not settings.generation().llm_modes:
        return None
    return build_backend(llm.to_config(concurrency=settings.concurrency))


def run(
    run: RunDir,
    settings: GenerateSettings,
    runner: Runner | None = None,
    *,
    llm: LlmSettings | None = None,
    backend: LlmBackend | None = None,
    progress: ProgressCallback | None = None,
) -> GenerateSummary:
    """Generate samples for every record of ``run``; write them and return the summary.

    ``backend`` defaults to the one ``llm`` (default: the recipe's default) describes
    (`backend_for`); ``llm`` also gives the token prices. Generation runs in
    this process whatever the ``runner``: its session keeps ``concurrency`` requests in flight.
    The summary is also saved in ``run.json`` under ``generate``.
    """
    llm = llm or LlmSettings()
    if backend is None:
        backend = backend_for(settings, llm)
    return _generate(
        run,
        settings=settings.generation(),
        backend=backend,
        concurrency=settings.concurrency,
        max_requests=settings.max_requests,
        max_cost=settings.max_cost,
        prices=llm.prices.token_prices() if llm.prices else None,
        progress=progress,
    ).save(run, "generate")


def _generate(
    run: RunDir,
    *,
    settings: GenerationSettings,
    backend: LlmBackend | None,
    concurrency: int,
    max_requests: int | None,
    max_cost: float | None,
    prices: TokenPrices | None,
    progress: ProgressCallback | None,
) -> GenerateSummary:
    """``backend`` may be ``None`` only when no LLM mode is asked for (adaptation alone)."""
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
    return GenerateSummary(
        images=counts.images,
        modes=list(settings.modes),
        model=backend.model_name if backend is not None else None,
        requests=counts.requests,
        requests_sent=usage.requests_sent,
        generations_received=usage.generations_received,
        from_journal=usage.answered_from_journal,
        samples=counts.samples,
        samples_ok=counts.ok,
        samples_failed=dict(sorted(counts.failed.items())),
        requests_failed=counts.requests_failed,
        all_requests_failed=0 < counts.requests_failed
        and counts.requests_failed == counts.requests - counts.requests_refused,
        first_error=counts.first_error,
        samples_ok_by_mode=dict(sorted(counts.ok_by_mode.items())),
        samples_truncated=counts.truncated,
        samples_schema_valid=counts.schema_valid,
        llm_generations=counts.generations,
        llm_generations_parsed=counts.generations_parsed,
        structured=structured_summary(backend, settings.structured),
        tokens_in=usage.prompt_tokens,
        tokens_out=usage.completion_tokens,
        cost=usage.cost,
        retries=usage.retries,
        rate_limited=usage.rate_limited,
        budget_exhausted=usage.stopped is not None,
        journal=JournalCounts(
            requests=journal_totals.requests,
            answers=journal_totals.answers,
            tokens_in=journal_totals.prompt_tokens,
            tokens_out=journal_totals.completion_tokens,
        )
        if journal_totals
        else JournalCounts(),
    )


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
        assert session is not None  # run checked that LLM modes have a backend
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
        if outcome.budget_refused:
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
            if sample.failure_reason is None:
                self.ok += 1
                self.ok_by_mode[sample.mode] += 1
                self.truncated += bool(sample.provenance.get("truncated"))
                self.schema_valid += sample.provenance.get("parse_format") == "json-schema"
            else:
                self.failed[sample.failure_reason.code] += 1
                self._count_failed_request(sample.failure_reason.code, sample)

    def _count_failed_request(self, code: str, sample: Sample) -> None:
        """One failed request per failed rollout 0 (its other rollouts share the error)."""
        if sample.provenance.get("rollout") != 0:
            return
        if code == BUDGET_SPENT:
            self.requests_refused += 1
        if code != LLM_REQUEST_FAILED:
            return
        self.requests_failed += 1
        if self.first_error is None:
            self.first_error = str(sample.provenance.get("llm_error"))
