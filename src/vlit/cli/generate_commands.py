"""`vlit generate` (records -> samples with an LLM or by adaptation) and `vlit run RECIPE`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError
from rich.progress import TaskID

from vlit.chain import run_recipe
from vlit.cli.common import TokenLimitParamOption, console, emit_summary, progress_bar
from vlit.errors import ConfigError
from vlit.generate.generator import ProgressCallback
from vlit.generate.stage import generate_run
from vlit.llm.config import build_backend
from vlit.llm.openai_compatible import parse_header
from vlit.recipe import ALL_MODES, GenerateSection, LlmSection, RunnerSection, load_recipe
from vlit.storage import open_run_dir


def generate_command(
    run: Annotated[
        str, typer.Argument(help="Run directory with collected records/; a path or a URL.")
    ],
    modes: Annotated[
        str,
        typer.Option("--modes", help=f"Comma-separated modes among: {', '.join(ALL_MODES)}."),
    ] = "conversation",
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
    ] = "OPENAI_API_KEY",
    llm_headers: Annotated[
        list[str] | None,
        typer.Option(
            "--llm-header",
            help="Extra HTTP header 'NAME: VALUE' (repeatable); a VALUE '$VAR' is read from "
            "that environment variable. Never written to the run.",
        ),
    ] = None,
    llm_token_limit_param: TokenLimitParamOption = "max_tokens",
    n: Annotated[int, typer.Option("--n", help="Generations per prompt.")] = 5,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.8,
    max_tokens: Annotated[int, typer.Option("--max-tokens")] = 1024,
    concurrency: Annotated[int, typer.Option("--concurrency", help="Requests in flight.")] = 4,
    max_requests: Annotated[
        int | None,
        typer.Option(
            "--max-requests",
            help="Send at most this many HTTP requests (each asks for up to --n generations; "
            "a server that answers fewer is asked for the rest one request each; retries are "
            "not counted).",
        ),
    ] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    examples_per_request: Annotated[
        int, typer.Option("--examples-per-request", help="In-context examples per request.")
    ] = 2,
    structured: Annotated[
        str,
        typer.Option(
            "--structured",
            help="auto|json_schema|json_object|off: constrain each answer to the "
            "conversation's JSON schema (auto: where the model or endpoint can).",
        ),
    ] = "auto",
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
) -> None:
    """Write conversations for every collected image into RUN/samples/ (resumable)."""
    section = _validated(
        GenerateSection,
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
    llm = _validated(
        LlmSection,
        {
            "kind": "openai" if llm_base_url else "local",
            "base_url": llm_base_url,
            "model": llm_model,
            "api_key_env": llm_api_key_env,
            "headers": dict(parse_header(header) for header in llm_headers or []),
            "token_limit_param": llm_token_limit_param,
        },
    )
    settings = section.to_settings()
    backend = build_backend(llm.to_config(concurrency=concurrency)) if settings.llm_modes else None
    opened = open_run_dir(run, writer="vlit generate", must_exist=True)
    with opened as run_dir, recipe_progress() as progress:
        summary = generate_run(
            run_dir,
            settings=settings,
            backend=backend,
            concurrency=concurrency,
            max_requests=max_requests,
            progress=progress,
        )
    emit_summary("generate", summary, as_json=as_json)
    report_request_failures(summary, endpoint=llm_base_url or llm_model or "the local model")


def run_command(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML (see vlit/recipe.py).")],
    runner: Annotated[
        str | None,
        typer.Option("--runner", help="local or ray (default: the recipe's runner.kind)."),
    ] = None,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Ray cluster address (auto, ray://HOST:10001)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summaries as one JSON object.")
    ] = False,
) -> None:
    """Run a whole recipe: collect, generate, then the later stages it configures."""
    loaded = load_recipe(recipe)
    if runner is not None or address is not None:
        chosen = _validated(
            RunnerSection,
            {"kind": runner or loaded.runner.kind, "address": address or loaded.runner.address},
        )
        loaded = loaded.model_copy(update={"runner": chosen})
    with recipe_progress() as progress:
        summaries = run_recipe(loaded, progress=progress)
    emit_summary("run", {"run_dir": loaded.run_dir, **summaries}, as_json=as_json)
    if "generate" in summaries:
        endpoint = loaded.llm.base_url or loaded.llm.model or "the local model"
        report_request_failures(summaries["generate"], endpoint=endpoint)


def report_request_failures(summary: dict[str, Any], *, endpoint: str) -> None:
    """Say on stderr how many LLM requests failed; exit 1 when every one did."""
    failed = int(summary.get("requests_failed") or 0)
    if not failed:
        return
    first = summary.get("first_error")
    if summary.get("all_requests_failed"):
        console.print(
            f"error: every LLM request failed ({failed} of {failed}) at {endpoint}; "
            f"first error: {first}",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)
    console.print(
        f"warning: {failed} of {summary.get('requests')} LLM requests failed "
        f"at {endpoint} (their samples are kept as failed; a rerun retries them); "
        f"first error: {first}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("generate")(generate_command)
    app.command("run")(run_command)


def _validated(model: type[Any], values: dict[str, Any]) -> Any:
    """Check option values with the recipe's own model, so errors read the same."""
    try:
        return model.model_validate(values)
    except ValidationError as error:
        problems = "; ".join(
            f"--{'-'.join(str(part) for part in item['loc'])}: "
            f"{str(item['msg']).removeprefix('Value error, ')}"
            for item in error.errors()
        )
        raise ConfigError(problems, fix="correct the option (see `vlit generate --help`)") from None


@contextmanager
def recipe_progress() -> Iterator[ProgressCallback]:
    with progress_bar() as bar:
        tasks: dict[str, TaskID] = {}

        def report(step: str, done: int, total: int | None) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done, total=total)

        yield report
