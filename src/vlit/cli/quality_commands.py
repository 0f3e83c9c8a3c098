"""`vlit score` and `vlit filter`: per-sample quality control of a run directory."""

from __future__ import annotations

from typing import Annotated

import typer

from vlit.cli.common import TokenLimitParamOption, emit_summary, progress_bar, stage_rows
from vlit.errors import ConfigError
from vlit.llm.base import structured_setting
from vlit.llm.config import LlmConfig
from vlit.llm.openai_compatible import TOKEN_LIMIT_PARAMS, parse_header
from vlit.quality.grounding import SPACY_MODEL
from vlit.quality.lint import LINT_FLAGS
from vlit.quality.matching import DECODE_MODES, TEXT_MODES
from vlit.quality.pipeline import FilterOptions, ScoreOptions, filter_run, score_run
from vlit.storage import open_run_dir


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("score")(score_command)
    app.command("filter")(filter_command)


def score_command(
    run: Annotated[
        str, typer.Argument(help="Run directory with samples/ (or scores/); a path or a URL.")
    ],
    clip: Annotated[
        str | None,
        typer.Option(
            "--clip",
            help="Matching-degree model: a local CLIP/SigLIP folder, a hub id (needs the hub), "
            "or open_clip:ARCH/PRETRAINED. Without it MD is not computed.",
        ),
    ] = None,
    clip_mode: Annotated[
        str,
        typer.Option(
            "--clip-mode",
            help="truncate: the conversation cut to the model's token limit (the paper's); "
            "per_turn: each user+assistant pair scored, mean and min kept.",
        ),
    ] = "truncate",
    clip_device: Annotated[
        str | None, typer.Option("--clip-device", help="cpu, cuda, cuda:1 (default: auto).")
    ] = None,
    clip_batch_size: Annotated[
        int | None,
        typer.Option("--clip-batch-size", help="Texts/images per pass (32; 256 on a GPU)."),
    ] = None,
    clip_decode: Annotated[
        str,
        typer.Option(
            "--clip-decode",
            help="auto: on the GPU with nvjpeg when possible, else workers; workers: CPU "
            "processes with reduced-size JPEG decoding; device: where the model runs.",
        ),
    ] = "auto",
    decode_workers: Annotated[
        int, typer.Option("--decode-workers", help="Processes decoding images for MD.")
    ] = 2,
    judge: Annotated[
        bool, typer.Option("--judge", help="Ask an LLM judge for correctness (C).")
    ] = False,
    judge_n: Annotated[int, typer.Option("--judge-n", help="Votes per sample.")] = 3,
    structured: Annotated[
        str,
        typer.Option(
            "--structured",
            help="auto|json_schema|json_object|off: constrain each judge verdict to its JSON "
            "schema (auto: where the endpoint can).",
        ),
    ] = "auto",
    llm_base_url: Annotated[
        str | None,
        typer.Option("--llm-base-url", help="OpenAI-compatible endpoint of the judge."),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option("--llm-model", help="Model name served at that endpoint.")
    ] = None,
    llm_concurrency: Annotated[
        int, typer.Option("--llm-concurrency", help="Judge requests in flight.")
    ] = 8,
    llm_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-header",
            help="Extra HTTP header 'NAME: VALUE' for the judge (repeatable); a VALUE '$VAR' is "
            "read from that environment variable. Never written to the run.",
        ),
    ] = None,
    llm_token_limit_param: TokenLimitParamOption = "max_tokens",
    no_grounding: Annotated[
        bool, typer.Option("--no-grounding", help="Skip the checks against annotations.")
    ] = False,
    spacy_model: Annotated[
        str,
        typer.Option(
            "--spacy-model",
            help="spaCy pipeline for grounding: an installed package's name or a folder.",
        ),
    ] = SPACY_MODEL,
    no_lint: Annotated[bool, typer.Option("--no-lint", help="Skip the structural lint.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Score samples: lint, grounding, matching degree (MD) and correctness (C)."""
    if clip_mode not in TEXT_MODES:
        raise ConfigError(
            f"unknown --clip-mode '{clip_mode}'", fix=f"use one of: {', '.join(TEXT_MODES)}"
        )
    if clip_decode not in DECODE_MODES:
        raise ConfigError(
            f"unknown --clip-decode '{clip_decode}'",
            fix=f"use one of: {', '.join(DECODE_MODES)}",
        )
    llm = None
    if judge:
        if not llm_base_url or not llm_model:
            raise ConfigError(
                "--judge needs --llm-base-url and --llm-model",
                fix="point it at any OpenAI-compatible server, e.g. --llm-base-url "
                "http://127.0.0.1:8000/v1 --llm-model qwen2.5-7b-instruct",
            )
        if llm_token_limit_param not in TOKEN_LIMIT_PARAMS:
            raise ConfigError(
                f"unknown --llm-token-limit-param '{llm_token_limit_param}'",
                fix=f"use one of: {', '.join(TOKEN_LIMIT_PARAMS)}",
            )
        llm = LlmConfig(
            kind="openai",
            base_url=llm_base_url,
            model=llm_model,
            concurrency=llm_concurrency,
            headers=dict(parse_header(header) for header in llm_headers or []),
            token_limit_param=llm_token_limit_param,  # type: ignore[arg-type]
        )
    options = ScoreOptions(
        clip=clip,
        clip_mode=clip_mode,
        clip_device=clip_device,
        clip_batch_size=clip_batch_size,
        clip_decode=clip_decode,
        decode_workers=decode_workers,
        judge=judge,
        judge_votes=judge_n,
        judge_structured=structured_setting(structured),
        llm=llm,
        grounding=not no_grounding,
        spacy_model=spacy_model,
        lint=not no_lint,
    )
    opened = open_run_dir(run, writer="vlit score", must_exist=True)
    with opened as run_dir, progress_bar() as progress:
        task = progress.add_task("scoring", total=stage_rows(run_dir, "samples"))
        summary = score_run(run_dir, options, on_batch=lambda n: progress.advance(task, n))
    emit_summary("vlit score", summary, as_json=as_json)


def _pairs(values: list[str], option: str) -> dict[str, float]:
    pairs: dict[str, float] = {}
    for value in values:
        name, _, number = value.partition("=")
        try:
            pairs[name.strip()] = float(number)
        except ValueError:
            raise ConfigError(
                f"{option} expects NAME=NUMBER, got '{value}'",
                fix=f"e.g. {option} md_min=20",
            ) from None
    return pairs


def filter_command(
    run: Annotated[str, typer.Argument(help="Run directory with scores/; a path or a URL.")],
    min_md: Annotated[
        float | None, typer.Option("--min-md", help="Drop samples with MD (cosine x 100) below.")
    ] = None,
    min_md_quantile: Annotated[
        float | None,
        typer.Option("--min-md-quantile", help="Minimum MD as a quantile of this run's MD."),
    ] = None,
    require_correct: Annotated[
        bool, typer.Option("--require-correct", help="Drop samples the judge found incorrect.")
    ] = False,
    max_hallucination: Annotated[
        float | None,
        typer.Option("--max-hallucination", help="Drop above this hallucinated/mentioned rate."),
    ] = None,
    max_count_errors: Annotated[
        float | None, typer.Option("--max-count-errors", help="Drop above this many.")
    ] = None,
    max_false_absent: Annotated[
        float | None, typer.Option("--max-false-absent", help="Drop above this many.")
    ] = None,
    drop_lint: Annotated[
        str | None,
        typer.Option(
            "--drop-lint",
            help=f"Comma-separated lint flags that drop a sample, or 'all': "
            f"{', '.join(LINT_FLAGS)}.",
        ),
    ] = None,
    min_score: Annotated[
        list[str] | None,
        typer.Option("--min-score", help="NAME=X: drop when scores[NAME] < X (repeatable)."),
    ] = None,
    max_score: Annotated[
        list[str] | None,
        typer.Option("--max-score", help="NAME=X: drop when scores[NAME] > X (repeatable)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Split scored samples into kept/ and dropped/ (each dropped sample with its reason)."""
    flags = tuple(f.strip() for f in (drop_lint or "").split(",") if f.strip())
    options = FilterOptions(
        min_md=min_md,
        min_md_quantile=min_md_quantile,
        require_correct=require_correct,
        max_hallucination=max_hallucination,
        max_count_errors=max_count_errors,
        max_false_absent=max_false_absent,
        drop_lint=flags,
        min_scores=_pairs(min_score or [], "--min-score"),
        max_scores=_pairs(max_score or [], "--max-score"),
    )
    with open_run_dir(run, writer="vlit filter", must_exist=True) as run_dir:
        summary = filter_run(run_dir, options)
    emit_summary("vlit filter", summary, as_json=as_json)
