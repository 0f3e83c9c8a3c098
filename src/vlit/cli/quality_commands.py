"""`vlit score` and `vlit filter`: per-sample quality control of a run directory
(`vlit.stages.score`, `vlit.stages.filter`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vlit.cli.common import (
    TokenLimitParamOption,
    emit_summary,
    progress_bar,
    stage_rows,
    validated,
)
from vlit.errors import ConfigError
from vlit.llm.config import LLM_CONCURRENCY
from vlit.llm.openai_compatible import parse_header
from vlit.quality.lint import LINT_FLAGS
from vlit.stages import filter as filter_stage
from vlit.stages import score as score_stage
from vlit.stages.filter import FilterSettings
from vlit.stages.generate import LlmSettings
from vlit.stages.score import JudgeSettings, ScoreSettings
from vlit.storage import open_run_dir

_SCORE = ScoreSettings()
_JUDGE = JudgeSettings()
_LLM = LlmSettings()
_FILTER = FilterSettings()


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
    ] = _SCORE.clip_mode,
    clip_device: Annotated[
        str | None, typer.Option("--clip-device", help="cpu, cuda, cuda:1 (default: auto).")
    ] = _SCORE.clip_device,
    clip_batch_size: Annotated[
        int | None,
        typer.Option("--clip-batch-size", help="Texts/images per pass (32; 256 on a GPU)."),
    ] = _SCORE.clip_batch_size,
    clip_decode: Annotated[
        str,
        typer.Option(
            "--clip-decode",
            help="auto: on the GPU with nvjpeg when possible, else workers; workers: CPU "
            "processes with reduced-size JPEG decoding; device: where the model runs.",
        ),
    ] = _SCORE.clip_decode,
    decode_workers: Annotated[
        int, typer.Option("--decode-workers", help="Processes decoding images for MD.")
    ] = _SCORE.decode_workers,
    judge: Annotated[
        bool, typer.Option("--judge", help="Ask an LLM judge for correctness (C).")
    ] = False,
    judge_n: Annotated[int, typer.Option("--judge-n", help="Votes per sample.")] = _JUDGE.votes,
    structured: Annotated[
        str,
        typer.Option(
            "--structured",
            help="auto|json_schema|json_object|off: constrain each judge verdict to its JSON "
            "schema (auto: where the endpoint can).",
        ),
    ] = _JUDGE.structured,
    llm_base_url: Annotated[
        str | None,
        typer.Option("--llm-base-url", help="OpenAI-compatible endpoint of the judge."),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option("--llm-model", help="Model name served at that endpoint.")
    ] = None,
    llm_concurrency: Annotated[
        int, typer.Option("--llm-concurrency", help="Judge requests in flight.")
    ] = LLM_CONCURRENCY,
    llm_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-header",
            help="Extra HTTP header 'NAME: VALUE' for the judge (repeatable); a VALUE '$VAR' is "
            "read from that environment variable. Never written to the run.",
        ),
    ] = None,
    llm_token_limit_param: TokenLimitParamOption = _LLM.token_limit_param,
    no_grounding: Annotated[
        bool, typer.Option("--no-grounding", help="Skip the checks against annotations.")
    ] = False,
    spacy_model: Annotated[
        str,
        typer.Option(
            "--spacy-model",
            help="spaCy pipeline for grounding: an installed package's name or a folder.",
        ),
    ] = _SCORE.spacy_model,
    no_lint: Annotated[bool, typer.Option("--no-lint", help="Skip the structural lint.")] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Score samples: lint, grounding, matching degree (MD) and correctness (C)."""
    judge_llm = None
    if judge:
        if not llm_base_url or not llm_model:
            raise ConfigError(
                "--judge needs --llm-base-url and --llm-model",
                fix="point it at any OpenAI-compatible server, e.g. --llm-base-url "
                "http://127.0.0.1:8000/v1 --llm-model qwen2.5-7b-instruct",
            )
        llm = validated(
            LlmSettings,
            {
                "kind": "openai",
                "base_url": llm_base_url,
                "model": llm_model,
                "headers": dict(parse_header(header) for header in llm_headers or []),
                "token_limit_param": llm_token_limit_param,
            },
            command="score",
        )
        judge_llm = llm.to_config(concurrency=llm_concurrency)
    settings = validated(
        ScoreSettings,
        {
            "clip_model": clip,
            "clip_mode": clip_mode,
            "clip_device": clip_device,
            "clip_batch_size": clip_batch_size,
            "clip_decode": clip_decode,
            "decode_workers": decode_workers,
            "judge": {"votes": judge_n, "structured": structured} if judge else None,
            "grounding": not no_grounding,
            "spacy_model": spacy_model,
            "lint": not no_lint,
        },
        command="score",
    )
    opened = open_run_dir(run, writer="vlit score", must_exist=True)
    with opened as run_dir, progress_bar() as progress:
        task = progress.add_task("scoring", total=stage_rows(run_dir, "samples"))
        summary = score_stage.run(
            run_dir,
            settings,
            judge_llm=judge_llm,
            on_batch=lambda n: progress.advance(task, n),
        )
    emit_summary("vlit score", summary.to_json(), as_json=as_json)


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
    ] = _FILTER.min_md,
    min_md_quantile: Annotated[
        float | None,
        typer.Option("--min-md-quantile", help="Minimum MD as a quantile of this run's MD."),
    ] = _FILTER.min_md_quantile,
    require_correct: Annotated[
        bool, typer.Option("--require-correct", help="Drop samples the judge found incorrect.")
    ] = _FILTER.require_correct,
    max_hallucination: Annotated[
        float | None,
        typer.Option("--max-hallucination", help="Drop above this hallucinated/mentioned rate."),
    ] = _FILTER.max_hallucination,
    max_count_errors: Annotated[
        float | None, typer.Option("--max-count-errors", help="Drop above this many.")
    ] = _FILTER.max_count_errors,
    max_false_absent: Annotated[
        float | None, typer.Option("--max-false-absent", help="Drop above this many.")
    ] = _FILTER.max_false_absent,
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
    flags = [f.strip() for f in (drop_lint or "").split(",") if f.strip()]
    settings = validated(
        FilterSettings,
        {
            "min_md": min_md,
            "min_md_quantile": min_md_quantile,
            "require_correct": require_correct,
            "max_hallucination": max_hallucination,
            "max_count_errors": max_count_errors,
            "max_false_absent": max_false_absent,
            "drop_lint": flags,
            "thresholds": _pairs(min_score or [], "--min-score"),
            "maxima": _pairs(max_score or [], "--max-score"),
        },
        command="filter",
    )
    with open_run_dir(run, writer="vlit filter", must_exist=True) as run_dir:
        summary = filter_stage.run(run_dir, settings)
    emit_summary("vlit filter", summary.to_json(), as_json=as_json)
