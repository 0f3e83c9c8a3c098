"""`vlit run RECIPE`: the stages a recipe configures, in order (`vlit.stages.run_all`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlit.cli.common import emit_summary, step_progress, validated
from vlit.cli.generate_commands import report_request_failures
from vlit.recipe import load_recipe
from vlit.runners.base import RunnerSettings
from vlit.stages.generate import GenerateSummary
from vlit.stages.run_all import run_recipe


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
        chosen = validated(
            RunnerSettings,
            {"kind": runner or loaded.runner.kind, "address": address or loaded.runner.address},
            command="run",
        )
        loaded = loaded.model_copy(update={"runner": chosen})
    with step_progress() as progress:
        summaries = run_recipe(loaded, progress=progress)
    as_data = {name: summary.to_json() for name, summary in summaries.items()}
    emit_summary("run", {"run_dir": loaded.run_dir, **as_data}, as_json=as_json)
    generated = summaries.get("generate")
    if isinstance(generated, GenerateSummary):
        endpoint = loaded.llm.base_url or loaded.llm.model or "the local model"
        report_request_failures(generated, endpoint=endpoint)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
    app.command("run")(run_command)
