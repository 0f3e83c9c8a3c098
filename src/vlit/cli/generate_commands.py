"""`vlit generate`: records -> samples with an LLM or by adaptation (`vlit.stages.generate`)."""

from __future__ import annotations

from typing import Annotated

import typer

from vlit.cli.common import (
    TokenLimitParamOption,
    console,
    emit_summary,
    step_progress,
    validated,
)
from vlit.llm.openai_compatible import parse_header
from vlit.stages import generate as generate_stage
from vlit.stages.generate import ALL_MODES, GenerateSettings, GenerateSummary, LlmSettings
from vlit.storage import open_run_dir

_DEFAULTS = GenerateSettings()
_LLM_DEFAULTS = LlmSettings()
_DEFAULT_MODES = ",".join(_DEFAULTS.modes)


def generate_command(
    run: Annotated[
        str, typer.Argument(help="Run directory with collected records/; a path or a URL.")
    ],
    modes: Annotated[
        str,
        typer.Option("--modes", help=f"Comma-separated modes among: {', '.join(ALL_MODES)}."),
    ] = _DEFAULT_MODES,
    llm_base_url: Annotated[
        str | None,
        typer.Option(
            "--llm-base-url",
            help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1. "
            "Without it the embedded SmolLM2-135M runs in this process.",
        ),
    ] = None,
    llm_model: Annotated[
        str | None, typer.Option("--llm-model", help="Model name (or local model path).")
    ] = None,
    llm_api_key_env: Annotated[
        str,
        typer.Option("--llm-api-key-env", help="Environment variable that holds the API key."),
    ] = _LLM_DEFAULTS.api_key_env,
    llm_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-header",
            help="Extra HTTP header 'NAME: VALUE' (repeatable); a VALUE '$VAR' is read from "
            "that environment variable. Never written to the run.",
        ),
    ] = None,
    llm_token_limit_param: TokenLimitParamOption = _LLM_DEFAULTS.token_limit_param,
    n: Annotated[int, typer.Option("--n", help="Generations per prompt.")] = _DEFAULTS.n,
    temperature: Annotated[float, typer.Option("--temperature")] = _DEFAULTS.temperature,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = _DEFAULTS.max_tokens,
    concurrency: Annotated[
        int, typer.Option("--concurrency", help="Requests in flight.")
    ] = _DEFAULTS.concurrency,
    max_requests: Annotated[
        int | None,
        typer.Option(
            "--max-requests",
            help="Send at most this many HTTP requests (each asks for up to --n generations; "
            "a server that answers fewer is asked for the rest one request each; retries are "
            "not counted).",
        ),
    ] = _DEFAULTS.max_requests,
    seed: Annotated[int, typer.Option("--seed")] = _DEFAULTS.seed,
    examples_per_request: Annotated[
        int, typer.Option("--examples-per-request", help="In-context examples per request.")
    ] = _DEFAULTS.examples_per_request,
    structured: Annotated[
        str,
        typer.Option(
            "--structured",
            help="auto|json_schema|json_object|off: constrain each answer to the "
            "conversation's JSON schema (auto: where the model or endpoint can).",
        ),
    ] = _DEFAULTS.structured,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Write conversations for every collected image into RUN/samples/ (resumable)."""
    settings = validated(
        GenerateSettings,
        {
            "modes": [mode.strip() for mode in modes.split(",") if mode.strip()],
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "concurrency": concurrency,
            "max_requests": max_requests,
            "seed": seed,
            "examples_per_request": examples_per_request,
            "structured": structured,
        },
    )
    llm = validated(
        LlmSettings,
        {
            "kind": "openai" if llm_base_url else "local",
            "base_url": llm_base_url,
            "model": llm_model,
            "api_key_env": llm_api_key_env,
            "headers": dict(parse_header(header) for header in llm_headers or []),
            "token_limit_param": llm_token_limit_param,
        },
    )
    backend = generate_stage.backend_for(settings, llm)
    opened = open_run_dir(run, writer="vlit generate", must_exist=True)
    with opened as run_dir, step_progress() as progress:
        summary = generate_stage.run(run_dir, settings, llm=llm, backend=backend, progress=progress)
    emit_summary("generate", summary.to_json(), as_json=as_json)
    report_request_failures(summary, endpoint=llm_base_url or llm_model or "the local model")


def report_request_failures(summary: GenerateSummary, *, endpoint: str) -> None:
    """Say on stderr how many LLM requests failed; exit 1 when every one did."""
    failed = summary.requests_failed
    if not failed:
        return
    first = summary.first_error
    if summary.all_requests_failed:
        console.print(
            f"error: every LLM request failed ({failed} of {failed}) at {endpoint}; "
            f"first error: {first}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        f"warning: {failed} of {summary.requests} LLM requests failed "
        f"at {endpoint} (their samples are kept as failed; a rerun retries them); "
        f"first error: {first}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("generate")(generate_command)
